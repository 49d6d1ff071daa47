// The one child-process helper of every test target: processes started with posix_spawn and a clean signal
// state (Foundation's Process started from a test thread inherits blocked SIGTERM), in their own process
// group, with stdin/stdout as pipes (clients: line-based, with timeouts; poll, never sleep-and-hope) or
// files (daemons and tools), killed and reaped by pid.
import CKmemleakSys
import Glibc

public struct TestError: Error, CustomStringConvertible {
    public var description: String
    public init(_ d: String) { description = d }
}

/// A child process. Killed (SIGKILL) and reaped by `terminate()` or on deinit.
public final class ChildProcess {
    /// Where one of the child's output streams goes.
    public enum Output {
        /// A pipe read by `readLine`/`waitFor` (stdout only).
        case pipe
        /// Same place as stdout (stderr only).
        case stdout
        /// A file, created or truncated.
        case file(String)
        /// The test runner's own stream.
        case inherit
    }

    public let pid: Int32
    /// Where stdout / stderr went when they went to a file.
    public let stdoutPath: String?
    public let stderrPath: String?
    private var stdinFD: Int32 = -1
    private var stdoutFD: Int32 = -1
    private var buffered: [UInt8] = []
    private var status: Int32?
    /// Everything read from the stdout pipe so far (for failure messages).
    public private(set) var transcript = ""

    /// Starts `path` with `args` (argv[0] = path) and `env` added to (or replacing in) our environment,
    /// less the service manager's variables (NOTIFY_SOCKET, JOURNAL_STREAM). stdin is a pipe (`send`,
    /// `closeStdin`) unless `stdinPipe` is false (then /dev/null). `blockedSignals` stay blocked in the
    /// child; every other signal starts unblocked with its default action.
    public init(_ path: String, _ args: [String] = [], env: [String: String] = [:], stdinPipe: Bool = true,
                stdout: Output = .pipe, stderr: Output = .inherit, blockedSignals: [Int32] = []) throws {
        if case .stdout = stdout { throw TestError("stdout cannot go to stdout") }
        if case .pipe = stderr { throw TestError("stderr goes to a file, to stdout or is inherited") }
        if case .file(let p) = stdout { stdoutPath = p } else { stdoutPath = nil }
        if case .file(let p) = stderr { stderrPath = p } else { stderrPath = nil }

        var inPipe: [Int32] = [-1, -1], outPipe: [Int32] = [-1, -1]
        if stdinPipe, ckml_pipe_cloexec(&inPipe) != 0 { throw TestError("pipe: errno \(errno)") }
        if case .pipe = stdout, ckml_pipe_cloexec(&outPipe) != 0 {
            let e = errno
            if inPipe[0] >= 0 { close(inPipe[0]); close(inPipe[1]) }
            throw TestError("pipe: errno \(e)")
        }
        var actions = posix_spawn_file_actions_t()
        posix_spawn_file_actions_init(&actions)
        defer { posix_spawn_file_actions_destroy(&actions) }
        if stdinPipe {
            posix_spawn_file_actions_adddup2(&actions, inPipe[0], 0)
        } else {
            posix_spawn_file_actions_addopen(&actions, 0, "/dev/null", O_RDONLY, 0)
        }
        switch stdout {
        case .pipe: posix_spawn_file_actions_adddup2(&actions, outPipe[1], 1)
        case .file(let p): posix_spawn_file_actions_addopen(&actions, 1, p, O_WRONLY | O_CREAT | O_TRUNC, 0o644)
        case .stdout, .inherit: break
        }
        switch stderr {
        case .stdout: posix_spawn_file_actions_adddup2(&actions, 1, 2)
        case .file(let p): posix_spawn_file_actions_addopen(&actions, 2, p, O_WRONLY | O_CREAT | O_TRUNC, 0o644)
        case .pipe, .inherit: break
        }
        var attr = posix_spawnattr_t()
        posix_spawnattr_init(&attr)
        defer { posix_spawnattr_destroy(&attr) }
        var mask = sigset_t(); sigemptyset(&mask)
        for signal in blockedSignals { sigaddset(&mask, signal) }
        var all = sigset_t(); sigfillset(&all)
        posix_spawnattr_setsigmask(&attr, &mask)
        posix_spawnattr_setsigdefault(&attr, &all)
        // Own process group: a test's kill never reaches the test runner.
        posix_spawnattr_setpgroup(&attr, 0)
        posix_spawnattr_setflags(&attr, Int16(POSIX_SPAWN_SETSIGMASK | POSIX_SPAWN_SETSIGDEF | POSIX_SPAWN_SETPGROUP))

        var environment: [String: String] = [:]
        var e = environ
        while let p = e.pointee {
            let s = String(cString: p)
            if let eq = s.firstIndex(of: "=") { environment[String(s[..<eq])] = String(s[s.index(after: eq)...]) }
            e += 1
        }
        environment.removeValue(forKey: "NOTIFY_SOCKET")
        environment.removeValue(forKey: "JOURNAL_STREAM")
        for (k, v) in env { environment[k] = v }
        let argv = ([path] + args).map { strdup($0) } + [nil]
        let envp = environment.map { strdup("\($0.key)=\($0.value)") } + [nil]
        defer { argv.forEach { free($0) }; envp.forEach { free($0) } }
        var pid: pid_t = 0
        let rc = posix_spawn(&pid, path, &actions, &attr, argv, envp)
        if inPipe[0] >= 0 { close(inPipe[0]) }
        if outPipe[1] >= 0 { close(outPipe[1]) }
        guard rc == 0 else {
            if inPipe[1] >= 0 { close(inPipe[1]) }
            if outPipe[0] >= 0 { close(outPipe[0]) }
            throw TestError("posix_spawn \(path): \(String(cString: strerror(rc)))")
        }
        self.pid = pid
        self.stdinFD = inPipe[1]
        self.stdoutFD = outPipe[0]
    }

    /// A client: stdin and stdout pipes, stderr to `stderrFile` (or merged into stdout, or inherited).
    public convenience init(_ path: String, _ args: [String] = [], env: [String: String] = [:],
                            stderrToStdout: Bool = false, stderrFile: String? = nil) throws {
        let stderr: Output = stderrToStdout ? .stdout : stderrFile.map { .file($0) } ?? .inherit
        try self.init(path, args, env: env, stdinPipe: true, stdout: .pipe, stderr: stderr)
    }

    /// A daemon or tool: stdin from /dev/null, stdout and stderr into `NAME.stdout` / `NAME.stderr` in
    /// `directory` (read them with `stdout` / `stderr`).
    public static func withOutputFiles(_ arguments: [String], env: [String: String] = [:], blockedSignals: [Int32] = [],
                                       in directory: String, name: String = "child") throws -> ChildProcess {
        guard let path = arguments.first else { throw TestError("no program to start") }
        return try ChildProcess(path, Array(arguments.dropFirst()), env: env, stdinPipe: false,
                                stdout: .file(directory + "/\(name).stdout"), stderr: .file(directory + "/\(name).stderr"),
                                blockedSignals: blockedSignals)
    }

    deinit { terminate() }

    /// Writes one line to the child's stdin.
    public func send(_ line: String) throws {
        guard stdinFD >= 0 else { throw TestError("child \(pid) has no stdin pipe (closed or never made)") }
        let data = Array((line + "\n").utf8)
        var done = 0
        while done < data.count {
            let n = data[done...].withUnsafeBytes { Glibc.write(stdinFD, $0.baseAddress!, $0.count) }
            if n < 0 && errno == EINTR { continue }
            guard n > 0 else { throw TestError("write to child \(pid): errno \(errno)") }
            done += n
        }
    }

    /// The next stdout line, waiting at most `timeout` seconds (poll, no sleeping).
    public func readLine(timeout: Double = 10) throws -> String {
        guard stdoutFD >= 0 else { throw TestError("child \(pid) has no stdout pipe") }
        let deadline = Self.now() + timeout
        while true {
            if let nl = buffered.firstIndex(of: UInt8(ascii: "\n")) {
                let line = String(decoding: buffered[..<nl], as: UTF8.self)
                buffered.removeSubrange(...nl)
                transcript += line + "\n"
                return line
            }
            let left = deadline - Self.now()
            guard left > 0 else { throw TestError("timeout waiting for a line from \(pid); so far: \(transcript)\(String(decoding: buffered, as: UTF8.self))") }
            var pfd = pollfd(fd: stdoutFD, events: Int16(POLLIN), revents: 0)
            let r = poll(&pfd, 1, Int32(min(left * 1000, 1000)) + 1)
            if r < 0 && errno == EINTR { continue }
            guard r >= 0 else { throw TestError("poll: errno \(errno)") }
            if r == 0 { continue }
            var chunk = [UInt8](repeating: 0, count: 4096)
            let n = chunk.withUnsafeMutableBytes { Glibc.read(stdoutFD, $0.baseAddress!, 4096) }
            if n < 0 && errno == EINTR { continue }
            guard n > 0 else { throw TestError("child \(pid) closed stdout; so far: \(transcript)\(String(decoding: buffered, as: UTF8.self))") }
            buffered += chunk[0..<n]
        }
    }

    /// Reads lines until one starts with `prefix`; returns it.
    public func waitFor(_ prefix: String, timeout: Double = 10) throws -> String {
        let deadline = Self.now() + timeout
        while true {
            let line = try readLine(timeout: max(0.001, deadline - Self.now()))
            if line.hasPrefix(prefix) { return line }
        }
    }

    /// Sends a command and returns the first reply line starting with `prefix` (default: any).
    public func request(_ line: String, expect prefix: String = "", timeout: Double = 10) throws -> String {
        try send(line)
        return try waitFor(prefix, timeout: timeout)
    }

    /// Closes the child's stdin (EOF).
    public func closeStdin() {
        if stdinFD >= 0 { close(stdinFD); stdinFD = -1 }
    }

    /// What the child wrote to stdout / stderr so far, when it went to a file ("" otherwise).
    public var stdout: String { stdoutPath.map(Self.contents) ?? "" }
    public var stderr: String { stderrPath.map(Self.contents) ?? "" }

    /// Waits up to `timeout` seconds for the exit and reaps; returns the raw wait status, or nil if the
    /// child is still running then.
    @discardableResult
    public func wait(timeout: Double = 60) -> Int32? {
        if let status { return status }
        let deadline = Self.now() + timeout
        while true {
            var raw: Int32 = 0
            let result = waitpid(pid, &raw, WNOHANG)
            if result == pid {
                status = raw
                closeFDs()
                return raw
            }
            if result < 0 && errno != EINTR {
                // Not our child any more (reaped elsewhere): nothing left to wait for.
                status = -1
                closeFDs()
                return status
            }
            if Self.now() >= deadline { return nil }
            usleep(2_000)
        }
    }

    /// The exit code if the child exited normally within `timeout` seconds.
    public func exitCode(timeout: Double = 60) -> Int32? {
        guard let status = wait(timeout: timeout), status & 0x7f == 0 else { return nil }
        return (status >> 8) & 0xff
    }

    public var isRunning: Bool { wait(timeout: 0) == nil }

    /// Sends `signal` to the child (only while it has not been reaped: the pid is still ours).
    public func signal(_ signal: Int32) {
        if status == nil { kill(pid, signal) }
    }

    /// SIGKILL and reap (idempotent).
    public func terminate() {
        guard status == nil else { return }
        kill(pid, SIGKILL)
        // SIGKILL cannot be caught; a child in uninterruptible sleep (a FUSE request) may take a moment.
        if wait(timeout: 60) == nil {
            var raw: Int32 = 0
            while waitpid(pid, &raw, 0) < 0 && errno == EINTR {}
            status = raw
            closeFDs()
        }
    }

    private func closeFDs() {
        if stdinFD >= 0 { close(stdinFD); stdinFD = -1 }
        if stdoutFD >= 0 { close(stdoutFD); stdoutFD = -1 }
    }

    private static func contents(_ path: String) -> String {
        guard let file = fopen(path, "r") else { return "" }
        defer { fclose(file) }
        var bytes: [UInt8] = []
        var chunk = [UInt8](repeating: 0, count: 4096)
        while true {
            let n = fread(&chunk, 1, chunk.count, file)
            if n <= 0 { break }
            bytes += chunk[0..<n]
        }
        return String(decoding: bytes, as: UTF8.self)
    }

    public static func now() -> Double {
        var ts = timespec()
        clock_gettime(CLOCK_MONOTONIC, &ts)
        return Double(ts.tv_sec) + Double(ts.tv_nsec) / 1e9
    }
}

/// A new directory from a mkdtemp template (`/tmp/NAME.XXXXXX`), for a test's files.
public func makeTemporaryDirectory(_ template: String) throws -> String {
    var bytes = Array(template.utf8CString)
    guard let made = mkdtemp(&bytes) else { throw TestError("mkdtemp \(template): errno \(errno)") }
    return String(cString: made)
}
