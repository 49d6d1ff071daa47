import Foundation
import Glibc
import KmemleakTestSupport
import Testing

/// A stream connection to a Unix socket; -1 if nobody listens (yet).
private func connectUnix(_ path: String) -> Int32 {
    let fd = socket(AF_UNIX, Int32(SOCK_STREAM.rawValue) | Int32(SOCK_CLOEXEC.rawValue), 0)
    guard fd >= 0 else { return -1 }
    var address = sockaddr_un()
    address.sun_family = sa_family_t(AF_UNIX)
    let bytes = Array(path.utf8)
    guard bytes.count < MemoryLayout.size(ofValue: address.sun_path) else { close(fd); return -1 }
    withUnsafeMutableBytes(of: &address.sun_path) { raw in
        for (i, b) in bytes.enumerated() { raw[i] = b }
        raw[bytes.count] = 0
    }
    let connected = withUnsafePointer(to: &address) {
        $0.withMemoryRebound(to: sockaddr.self, capacity: 1) { connect(fd, $0, socklen_t(MemoryLayout<sockaddr_un>.size)) }
    }
    guard connected == 0 else { close(fd); return -1 }
    var timeout = timeval(tv_sec: 20, tv_usec: 0)
    setsockopt(fd, SOL_SOCKET, SO_RCVTIMEO, &timeout, socklen_t(MemoryLayout<timeval>.size))
    return fd
}

/// Sends one RESP command and reads until `expected.count` bytes came back (or EOF / the 20 s timeout).
private func redisCommand(_ fd: Int32, _ words: [String], expecting expected: String) throws -> String {
    var request = "*\(words.count)\r\n"
    for w in words { request += "$\(w.utf8.count)\r\n\(w)\r\n" }
    let out = Array(request.utf8)
    guard out.withUnsafeBytes({ write(fd, $0.baseAddress, $0.count) }) == out.count else {
        throw TestFailure("write to redis: errno \(errno)")
    }
    var reply: [UInt8] = []
    var buffer = [UInt8](repeating: 0, count: 4096)
    while reply.count < expected.utf8.count {
        let n = buffer.withUnsafeMutableBytes { read(fd, $0.baseAddress, $0.count) }
        if n < 0 && errno == EINTR { continue }
        guard n > 0 else { break }
        reply += buffer[0..<n]
    }
    return String(decoding: reply, as: UTF8.self)
}

/// Whether `pid` (our child) has exited within `timeout`, without reaping it.
private func exits(_ pid: pid_t, within timeout: Duration) -> Bool {
    waitUntil(timeout: timeout) {
        var info = siginfo_t()
        return waitid(P_PID, id_t(pid), &info, WEXITED | WNOHANG | WNOWAIT) == 0 && info._sifields._sigchld.si_pid == pid
    }
}

/// Debian's redis-server is linked with jemalloc: the shim must forward the malloc family to it (and
/// track through it), with and without tracking.
@Suite(.enabled(if: canMount && access("/usr/bin/redis-server", X_OK) == 0, "needs root, /dev/fuse and redis-server"))
struct ForeignAllocatorTests {
    @Test(arguments: ["on", "off"])
    func redisServerWithJemallocAnswersAndShutsDownCleanly(_ kmemleak: String) throws {
        let d = try Detection()
        defer { d.tearDown() }
        let socketPath = d.temp.sub("redis.sock")
        let redis = try ChildProcess(
            "/usr/bin/redis-server",
            ["--port", "0", "--unixsocket", socketPath, "--save", "", "--appendonly", "no", "--dir", d.temp.path],
            env: ["LD_PRELOAD": shimPath, "KMEMLEAK_RUN_DIR": d.runDirectory, "KMEMLEAK": kmemleak],
            stderrFile: d.temp.sub("redis.stderr"))
        defer { redis.terminate() }
        var fd: Int32 = -1
        let listening = waitUntil(timeout: .seconds(30)) {
            fd = connectUnix(socketPath)
            return fd >= 0
        }
        try #require(listening, "redis-server did not listen; stderr: \(redis.stderr)")
        defer { close(fd) }
        #expect(try redisCommand(fd, ["PING"], expecting: "+PONG\r\n") == "+PONG\r\n")
        #expect(try redisCommand(fd, ["SET", "key", "value"], expecting: "+OK\r\n") == "+OK\r\n")
        #expect(try redisCommand(fd, ["GET", "key"], expecting: "$5\r\nvalue\r\n") == "$5\r\nvalue\r\n")
        let notice = "kmemleak: client pid \(redis.pid) (redis-server): malloc is not glibc's, tracked through it"
        if kmemleak == "on" {
            d.scan()
            #expect(waitUntil { d.daemon.stderr.contains(notice) }, "daemon log:\n\(d.daemon.stderr)")
            d.scan()
            #expect(d.daemon.stderr.components(separatedBy: notice).count == 2, "logged once")
        }
        // SHUTDOWN closes the connection without a reply.
        #expect(try redisCommand(fd, ["SHUTDOWN", "NOSAVE"], expecting: "") == "")
        try #require(exits(redis.pid, within: .seconds(30)), "redis-server did not exit")
        #expect(redis.wait() == 0, "redis stderr: \(redis.stderr)")
        let shimLines = redis.stderr.split(separator: "\n").filter { $0.hasPrefix("kmemleak: ") }
        if kmemleak == "on" {
            #expect(shimLines.count == 1 && shimLines[0].hasPrefix("kmemleak: malloc is not glibc's ("), "\(shimLines)")
        } else {
            #expect(shimLines.isEmpty, "\(shimLines)")
        }
    }

    /// tcmalloc preloaded after the shim (it defines __libc_malloc too): python3 with 20 threads is
    /// tracked through it, with one line on stderr and one in the daemon's log, and gets no report.
    @Test(.enabled(if: access(tcmalloc, R_OK) == 0 && access("/usr/bin/python3", X_OK) == 0,
                   "needs libtcmalloc-minimal4 and /usr/bin/python3"))
    func pythonWithTcmallocAfterTheShimIsTrackedThroughIt() throws {
        let d = try Detection()
        defer { d.tearDown() }
        let script = """
            import sys, threading
            blocks = [bytearray(i) for i in range(1, 2000)]
            threads = [threading.Thread(target=lambda: sum(range(5000))) for _ in range(20)]
            for t in threads: t.start()
            for t in threads: t.join()
            print("READY", flush=True)
            sys.stdin.read()
            """
        let client = try d.client("/usr/bin/python3", ["-c", script], environment: ["LD_PRELOAD": shimPath + ":" + tcmalloc])
        d.scan(times: 2)
        #expect(d.daemon.stderr.contains("kmemleak: adopted client pid \(client.pid) "), "daemon log:\n\(d.daemon.stderr)")
        #expect(d.daemon.stderr.contains("kmemleak: client pid \(client.pid) (python3): malloc is not glibc's, tracked through it"))
        #expect(d.reportedAddresses.isEmpty, "report:\n\(d.report.prefix(3000))")
        #expect(client.stderr == "kmemleak: malloc is not glibc's (\(tcmalloc)): tracking through it\n")
    }
}

private let tcmalloc = "/usr/lib/x86_64-linux-gnu/libtcmalloc_minimal.so.4"
