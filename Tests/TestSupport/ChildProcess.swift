// Test support shared by the test targets: child processes started with posix_spawn and a clean signal
// state (Foundation's Process started from a test thread inherits blocked SIGTERM), line-based pipes
// with timeouts (poll, never sleep-and-hope).
import CKmemleakSys
import Glibc

public struct TestError: Error, CustomStringConvertible {
    public var description: String
    public init(_ d: String) { description = d }
}

/// A child with stdin/stdout pipes. Killed (SIGKILL) and reaped by `terminate()` or on deinit.
public final class ChildProcess {
    public let pid: Int32
    private var stdinFD: Int32
    private var stdoutFD: Int32
    private var buffered: [UInt8] = []
    public private(set) var reaped = false
    /// Everything read from stdout so far (for failure messages).
    public private(set) var transcript = ""

    /// Starts `path` with `args` (argv[0] = path) and `env` added to (or replacing in) our environment.
    /// Where stderr went when `stderrFile` was given.
    public let stderrPath: String?

    public init(_ path: String, _ args: [String] = [], env: [String: String] = [:], stderrToStdout: Bool = false,
         stderrFile: String? = nil) throws {
        stderrPath = stderrFile
        var inPipe: [Int32] = [0, 0], outPipe: [Int32] = [0, 0]
        guard ckml_pipe_cloexec(&inPipe) == 0, ckml_pipe_cloexec(&outPipe) == 0 else { throw TestError("pipe: \(errno)") }
        var actions = posix_spawn_file_actions_t()
        posix_spawn_file_actions_init(&actions)
        defer { posix_spawn_file_actions_destroy(&actions) }
        posix_spawn_file_actions_adddup2(&actions, inPipe[0], 0)
        posix_spawn_file_actions_adddup2(&actions, outPipe[1], 1)
        if stderrToStdout { posix_spawn_file_actions_adddup2(&actions, outPipe[1], 2) }
        if let f = stderrFile { posix_spawn_file_actions_addopen(&actions, 2, f, O_WRONLY | O_CREAT | O_TRUNC, 0o644) }
        var attr = posix_spawnattr_t()
        posix_spawnattr_init(&attr)
        defer { posix_spawnattr_destroy(&attr) }
        var empty = sigset_t(); sigemptyset(&empty)
        var all = sigset_t(); sigfillset(&all)
        posix_spawnattr_setsigmask(&attr, &empty)
        posix_spawnattr_setsigdefault(&attr, &all)
        posix_spawnattr_setflags(&attr, Int16(POSIX_SPAWN_SETSIGMASK | POSIX_SPAWN_SETSIGDEF))

        var environment: [String: String] = [:]
        var e = environ
        while let p = e.pointee {
            let s = String(cString: p)
            if let eq = s.firstIndex(of: "=") { environment[String(s[..<eq])] = String(s[s.index(after: eq)...]) }
            e += 1
        }
        for (k, v) in env { environment[k] = v }
        let argv = ([path] + args).map { strdup($0) } + [nil]
        let envp = environment.map { strdup("\($0.key)=\($0.value)") } + [nil]
        defer { argv.forEach { free($0) }; envp.forEach { free($0) } }
        var pid: pid_t = 0
        let rc = posix_spawn(&pid, path, &actions, &attr, argv, envp)
        close(inPipe[0]); close(outPipe[1])
        guard rc == 0 else {
            close(inPipe[1]); close(outPipe[0])
            throw TestError("posix_spawn \(path): \(String(cString: strerror(rc)))")
        }
        self.pid = pid
        self.stdinFD = inPipe[1]
        self.stdoutFD = outPipe[0]
    }

    deinit { terminate() }

    /// Writes one line to the child's stdin.
    public func send(_ line: String) throws {
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
            guard r >= 0 else { throw TestError("poll: \(errno)") }
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

    /// What the child wrote to stderr (with `stderrFile`).
    public func stderrText() -> String {
        guard let p = stderrPath, let file = fopen(p, "r") else { return "" }
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

    /// Waits for the child to exit (after it was told to); returns the wait status.
    @discardableResult
    public func wait() -> Int32 {
        guard !reaped else { return 0 }
        var status: Int32 = 0
        while waitpid(pid, &status, 0) < 0 && errno == EINTR {}
        reaped = true
        closeFDs()
        return status
    }

    /// SIGKILL and reap (idempotent).
    public func terminate() {
        guard !reaped else { return }
        kill(pid, SIGKILL)
        wait()
    }

    private func closeFDs() {
        if stdinFD >= 0 { close(stdinFD); stdinFD = -1 }
        if stdoutFD >= 0 { close(stdoutFD); stdoutFD = -1 }
    }

    public static func now() -> Double {
        var ts = timespec()
        clock_gettime(CLOCK_MONOTONIC, &ts)
        return Double(ts.tv_sec) + Double(ts.tv_nsec) / 1e9
    }
}

