// Real Debian programs under the shim, reporting to a real kmemleakd on a temporary mount (issue 8,
// "Real programs in the test suite"): leak-free programs give 0 reports idle and after a bounded load on
// 127.0.0.1, planted leaks give exactly the planted set, every process of a multi-process server is
// adopted. Every process is ended by pid; every mount goes with the Detection's tear-down.
import Foundation
import Glibc
import KmemleakSystem
import Testing

/// Debian's python3: the one on PATH may be pyenv's.
private let python3 = "/usr/bin/python3"
private let nginx = "/usr/sbin/nginx"
private let redisServer = "/usr/bin/redis-server"
private let sqlite3 = "/usr/bin/sqlite3"
private let gcc = "/usr/bin/gcc"
private let leakSanitizer = "/usr/lib/x86_64-linux-gnu/liblsan.so.0"
private let pythonClient = repositoryRoot + "/Tests/clients/python-server.py"

/// The load loops: bounded in count, on 127.0.0.1 only.
private let requests = 200

/// A Detection (kmemleakd + temp mount) plus the real programs it watches, which are not READY-line
/// clients: each is started under the shim here and ended by pid in `tearDown`.
private final class RealPrograms {
    let detection: Detection
    private var programs: [ChildProcess] = []
    /// Processes the programs started themselves (server workers), ended by pid if still there.
    private var descendants: [pid_t] = []

    init() throws {
        detection = try Detection()
    }

    var shimEnvironment: [String: String] {
        ["LD_PRELOAD": shimPath, "KMEMLEAK_RUN_DIR": detection.runDirectory]
    }

    /// Starts `path` under the shim: stdin a pipe, stdout a pipe (or a file), stderr to NAME.stderr.
    func start(_ path: String, _ arguments: [String], name: String, stdoutPipe: Bool = true) throws -> ChildProcess {
        let child = try ChildProcess(
            path, arguments, env: shimEnvironment, stdinPipe: true,
            stdout: stdoutPipe ? .pipe : .file(detection.temp.sub("\(name).stdout")),
            stderr: .file(detection.temp.sub("\(name).stderr")))
        programs.append(child)
        return child
    }

    func own(_ pids: [pid_t]) { descendants += pids }

    /// Debian's python3 running Tests/clients/python-server.py under the shim, adopted.
    func startPython(_ env: [String: String]) throws -> ChildProcess {
        try #require(access(python3, X_OK) == 0, "apt-get install python3 (make deps)")
        let python = try detection.client(python3, [pythonClient], environment: env)
        #expect(waitUntilAdopted([python.pid]), "daemon log:\n\(detection.daemon.stderr)")
        return python
    }

    /// The python client's bounded request loop against its own server, every answer checked.
    func load(_ python: ChildProcess) throws {
        let loaded = try python.request("load \(requests)", expect: "LOADED", timeout: 300)
        #expect(loaded.hasPrefix("LOADED \(requests) "), "\(python.transcript)")
        #expect(!python.transcript.contains("ERROR"), "\(python.transcript)")
    }

    /// Scans (each scan adopts what announced itself) until the daemon logged every pid as adopted.
    func waitUntilAdopted(_ pids: [pid_t], timeout: Double = 60) -> Bool {
        let deadline = ChildProcess.now() + timeout
        while true {
            let log = detection.daemon.stderr
            if pids.allSatisfy({ log.contains("kmemleak: adopted client pid \($0) ") }) { return true }
            if ChildProcess.now() >= deadline { return false }
            detection.scan()
        }
    }

    /// The reported addresses after two scans (an object is reported once its checksum held for a scan).
    func reportAfterTwoScans() -> (addresses: Set<UInt64>, text: String) {
        detection.scan(times: 2)
        let text = detection.report
        return (addresses(in: text), text)
    }

    func tearDown() {
        for program in programs { program.terminate() }
        for pid in descendants where isProcess(pid, named: nil) { kill(pid, SIGKILL) }
        // Not our children: wait until init has reaped them, or at least they are gone.
        _ = waitUntil(timeout: .seconds(20)) { descendants.allSatisfy { !isProcess($0, named: nil) } }
        // A process that lost KMEMLEAK_RUN_DIR (setproctitle) announces itself in `/`: leave nothing there.
        for pid in programs.map(\.pid) + descendants { unlink("/\(pid).client") }
        detection.tearDown()
    }
}

/// A RESP array of bulk strings (what redis-cli sends).
private func resp(_ words: String...) -> String {
    "*\(words.count)\r\n" + words.map { "$\($0.utf8.count)\r\n\($0)\r\n" }.joined()
}

/// Each record of a report in a few lines: its header and its first backtrace frames.
private func digest(_ report: String, frames: Int = 4, limit: Int = 12000) -> String {
    var lines: [Substring] = []
    var framesLeft = 0
    for line in report.split(separator: "\n") {
        if line.hasPrefix("unreferenced object") {
            lines.append(line)
            framesLeft = frames
        } else if line.hasPrefix("    [<"), framesLeft > 0 {
            lines.append(line)
            framesLeft -= 1
        }
    }
    return String(lines.joined(separator: "\n").prefix(limit))
}

/// The shim's own memory in client `pid`, which the daemon never scans: its table (from the rendezvous
/// file in `runDirectory`) and its KML_REGION_SHIM_PRIVATE regions (the object index, ...). Empty if the
/// table cannot be read.
private func shimMemory(_ pid: pid_t, runDirectory: String) -> [(start: UInt64, end: UInt64, what: String)] {
    guard let r = try? Rendezvous.read(path: "\(runDirectory)/\(pid).client") else { return [] }
    let regions = ((try? ClientTable.open(r).readRegions()) ?? []).filter(\.isShimPrivate)
    return [(r.address, r.address + r.size, "the shim's table")]
        + regions.map { ($0.start, $0.start + $0.size, "shim-private region") }
}

/// Where the client's memory holds an aligned word pointing into one of `blocks` (its start or inside it):
/// "0x<word> at 0x<addr> in <mapping>", with the stack pointers of the threads blocked in that mapping.
/// For a missed leak: what a conservative scan took for a reference. Words in the shim's own memory
/// (`shim`), which the daemon does not scan, are marked "not scanned".
private func whereHeld(_ pid: pid_t, _ blocks: [(start: UInt64, size: UInt64)],
                       shim: [(start: UInt64, end: UInt64, what: String)]) -> [String] {
    guard let lo = blocks.map(\.start).min(), let hi = blocks.map({ $0.start + $0.size }).max(),
          let maps = try? Proc.maps(pid) else { return [] }
    let pointers = ((try? Proc.tasks(pid)) ?? []).compactMap { tid in Proc.stackPointer(pid, tid: tid).map { (tid, $0) } }
    let fd = open("/proc/\(pid)/mem", O_RDONLY)
    guard fd >= 0 else { return ["open /proc/\(pid)/mem: errno \(errno)"] }
    defer { close(fd) }
    var found: [String] = []
    var buffer = [UInt64](repeating: 0, count: 1 << 16)
    for m in maps where m.readable && m.path != "[vvar]" && m.path != "[vsyscall]" {
        let name = "0x\(String(m.start, radix: 16))-0x\(String(m.end, radix: 16)) \(m.path)"
        var at = m.start
        while at < m.end {
            let want = Int(min(UInt64(buffer.count * 8), m.end - at))
            let got = buffer.withUnsafeMutableBytes { pread(fd, $0.baseAddress, want, off_t(Int64(bitPattern: at))) }
            guard got > 0 else { break }
            for i in 0..<(got / 8) where buffer[i] >= lo && buffer[i] < hi
                && blocks.contains(where: { buffer[i] &- $0.start < $0.size }) {
                let sps = pointers.filter { $0.1 >= m.start && $0.1 < m.end }
                    .map { "tid \($0.0) sp 0x\(String($0.1, radix: 16))" }
                let word = at + UInt64(i * 8)
                let own = shim.first { word >= $0.start && word < $0.end }.map { " [\($0.what): not scanned]" } ?? ""
                found.append("0x\(String(buffer[i], radix: 16)) at 0x\(String(word, radix: 16)) in \(name)"
                             + (sps.isEmpty ? "" : " (\(sps.joined(separator: ", ")))") + own)
            }
            at += UInt64(got)
        }
    }
    return found
}

private func expectNoReports(_ report: (addresses: Set<UInt64>, text: String), _ when: String,
                             sourceLocation: SourceLocation = #_sourceLocation) {
    #expect(report.addresses.isEmpty, "\(when): \(report.addresses.count) reports:\n\(digest(report.text))",
            sourceLocation: sourceLocation)
}

/// One leaked object as a detector names it: its size (nil when LeakSanitizer merged objects of one
/// stack) and its first allocation sites as "module+0xoffset", each a call's own address (return
/// address - 1, as LeakSanitizer prints them).
private struct LeakSite: Hashable {
    var size: Int?
    var frames: [String]
}

private let siteFrames = 4

/// "(/path/module+0x1a2b)" in a frame line: the module and its offset.
private func moduleOffset(_ line: Substring) -> (module: Substring, offset: UInt64)? {
    guard let open = line.lastIndex(of: "("), let close = line.lastIndex(of: ")"), open < close,
          let plus = line[open..<close].lastIndex(of: "+"),
          let offset = hexArgument(line[line.index(after: plus)..<close]) else { return nil }
    return (line[line.index(after: open)..<plus], offset)
}

private func hexArgument(_ s: Substring) -> UInt64? {
    s.hasPrefix("0x") ? UInt64(s.dropFirst(2), radix: 16) : nil
}

/// The objects of process `pid` in a kmemleak report; a frame the daemon symbolized (no module+offset)
/// is kept as printed, so it matches nothing.
private func reportedSites(_ report: String, pid: pid_t) -> [LeakSite] {
    var sites: [LeakSite] = []
    var current: LeakSite?
    var ours = false
    for line in report.split(separator: "\n") {
        if line.hasPrefix("unreferenced object") {
            if let c = current, ours { sites.append(c) }
            let size = line.split(separator: " ").last.flatMap { Int($0.dropLast(2)) } // "88):"
            current = LeakSite(size: size, frames: [])
            ours = false
        } else if line.hasPrefix("  comm ") {
            ours = line.hasSuffix(", pid \(pid)") || line.contains(", pid \(pid),")
        } else if line.hasPrefix("    [<"), var c = current, c.frames.count < siteFrames {
            if let (module, offset) = moduleOffset(line) {
                c.frames.append("\(module)+0x\(String(offset &- 1, radix: 16))")
            } else {
                c.frames.append(String(line))
            }
            current = c
        }
    }
    if let c = current, ours { sites.append(c) }
    return sites
}

/// The leaks in a LeakSanitizer log written with symbolize=0 and fast_unwind_on_malloc=0, the sanitizer's
/// own frames left out; a record of several objects gives that many sites of unknown size.
private func leakSanitizerSites(_ log: String) -> [LeakSite] {
    var sites: [LeakSite] = []
    var count = 0, bytes = 0
    var frames: [String] = []
    func flush() {
        for _ in 0..<count { sites.append(LeakSite(size: count == 1 ? bytes : nil, frames: frames)) }
        count = 0
        frames = []
    }
    for line in log.split(separator: "\n") {
        let words = line.split(separator: " ")
        if line.hasPrefix("Direct leak of ") || line.hasPrefix("Indirect leak of ") {
            flush()
            bytes = Int(words[3]) ?? 0 // "Direct leak of 88 byte(s) in 1 object(s) allocated from:"
            count = Int(words[6]) ?? 0
        } else if line.hasPrefix("    #"), count > 0, frames.count < siteFrames,
                  let (module, offset) = moduleOffset(line), !module.contains("liblsan") {
            frames.append("\(module)+0x\(String(offset, radix: 16))")
        }
    }
    flush()
    return sites
}

@Suite(.enabled(if: canMount, "needs root and /dev/fuse"))
struct RealProgramTests {
    /// Threads (20 joined, a thread pool) and a ThreadingHTTPServer under 200 requests: no report idle or
    /// after the load. PYTHONMALLOC=malloc makes every Python object a malloc block the daemon tracks.
    @Test(arguments: ["pymalloc", "malloc"])
    func python3ThreadsAndHTTPServerAreLeakFree(allocator: String) throws {
        let programs = try RealPrograms()
        defer { programs.tearDown() }
        let python = try programs.startPython(["PYTHONMALLOC": allocator])
        expectNoReports(programs.reportAfterTwoScans(), "idle")
        try programs.load(python)
        expectNoReports(programs.reportAfterTwoScans(), "after \(requests) requests")
        try python.send("exit")
        #expect(python.exitCode(timeout: 60) == 0)
    }

    /// After the same threads and load, 16 blocks malloc'ed through ctypes and dropped are reported,
    /// exactly those, with either allocator. They were made at start-up in a new malloc arena, each at an
    /// address the arena never handed out before (see python-server.py): a conservative scan, the
    /// kernel's kmemleak and LeakSanitizer alike, cannot tell a stale copy of a reused address from a
    /// live one. (Planted in memory that the thread's start had used and freed, one block in about 50
    /// runs was missed: freed Python objects still held pointers into it.)
    @Test(arguments: ["pymalloc", "malloc"])
    func python3CtypesLeakIsReportedExactly(allocator: String) throws {
        let programs = try RealPrograms()
        defer { programs.tearDown() }
        let python = try programs.startPython(["PYTHONMALLOC": allocator])
        try programs.load(python)
        let before = printed(python, ["LEAK"])
        _ = try python.request("leak", expect: "LEAKED 16", timeout: 60)
        let leaks = printed(python, ["LEAK"]).subtracting(before)
        #expect(leaks.count == 16)
        let report = programs.reportAfterTwoScans()
        // The script's i-th block has 8 + (i * 997) % 4089 bytes: name the sizes of the missed ones.
        let order = python.transcript.split(separator: "\n").filter { $0.hasPrefix("LEAK 0x") }
            .compactMap { UInt64($0.dropFirst(7), radix: 16) }.filter(leaks.contains)
        let missedBlocks = order.enumerated().filter { !report.addresses.contains($0.element) }
            .map { (start: $0.element, size: UInt64(8 + ($0.offset * 997) % 4089)) }
        let missed = missedBlocks.map { "0x\(String($0.start, radix: 16)) (size \($0.size))" }
        let extra = report.addresses.subtracting(leaks).count
        var why = ""
        if report.addresses != leaks {
            // What the daemon knows of each missed block, what still points into it, and whether two more
            // scans report it.
            let d = programs.detection
            for b in missedBlocks {
                let line = "kmemleak: Object 0x\(String(b.start, radix: 16))"
                _ = d.write("dump=0x\(String(b.start, radix: 16))\n")
                _ = waitUntil(timeout: .seconds(10)) { d.daemon.stderr.contains(line) }
            }
            let dumps = d.daemon.stderr.split(separator: "\n").filter { l in
                missedBlocks.contains { l.contains("Object 0x\(String($0.start, radix: 16))") } || l.contains("  count ")
                    || l.contains("  checksum ") || l.contains("  flags ") || l.contains("  min_count ")
            }
            let third = programs.reportAfterTwoScans().addresses
            why = "held at:\n" + whereHeld(python.pid, missedBlocks, shim: shimMemory(python.pid, runDirectory: d.runDirectory)).joined(separator: "\n")
                + "\ndumps:\n" + dumps.joined(separator: "\n")
                + "\nreported by two more scans: \(missedBlocks.filter { third.contains($0.start) }.map { String($0.start, radix: 16) })"
        }
        #expect(report.addresses == leaks, "missed \(missed), extra \(extra); \(why)\n\(digest(report.text))")
        try python.send("exit")
        #expect(python.exitCode(timeout: 60) == 0)
    }

    /// nginx with a master and two workers: all three adopted, no report idle or after 200 requests.
    @Test func nginxMasterAndTwoWorkersAreAdoptedAndLeakFree() throws {
        try #require(access(nginx, X_OK) == 0, "apt-get install nginx-light (make deps)")
        let programs = try RealPrograms()
        defer { programs.tearDown() }
        let d = programs.detection
        let port = try freeLoopbackPort()
        let prefix = try d.temp.makeDirectory("nginx")
        let configuration = nginxConfiguration(prefix: prefix, port: port, errorLog: "stderr notice",
                                               location: "return 200 \"hello $uri\\n\";")
        try configuration.write(toFile: prefix + "/nginx.conf", atomically: true, encoding: .utf8)
        let master = try programs.start(nginx, ["-p", prefix, "-c", prefix + "/nginx.conf", "-e", "stderr"],
                                        name: "nginx", stdoutPipe: false)
        var workers: [pid_t] = []
        let started = waitUntil(timeout: .seconds(60)) {
            workers = children(of: master.pid).filter { isProcess($0, named: "nginx") }
            return workers.count == 2 || !master.isRunning
        }
        programs.own(workers)
        try #require(started && master.isRunning, "nginx did not start 2 workers: \(master.stderr)")
        try #require(waitUntil(timeout: .seconds(60)) { (try? httpGet(port: port, path: "/up")) != nil },
                     "nginx does not answer on 127.0.0.1:\(port): \(master.stderr)")

        #expect(programs.waitUntilAdopted([master.pid] + workers),
                "master \(master.pid), workers \(workers); daemon log:\n\(d.daemon.stderr)")
        expectNoReports(programs.reportAfterTwoScans(), "idle")

        var bad: [String] = []
        for i in 0..<requests {
            let response = try httpGet(port: port, path: "/r\(i)")
            if !(response.hasPrefix("HTTP/1.1 200") && response.hasSuffix("\r\n\r\nhello /r\(i)\n")) { bad.append(response) }
        }
        #expect(bad.isEmpty, "\(bad.count) bad responses, first: \(bad.first ?? "")")
        expectNoReports(programs.reportAfterTwoScans(), "after \(requests) requests")

        // Graceful stop: the master waits for its workers, then exits 0.
        master.signal(SIGQUIT)
        #expect(master.exitCode(timeout: 60) == 0, "\(master.stderr)")
        #expect(waitUntil(timeout: .seconds(30)) { workers.allSatisfy { !isProcess($0, named: nil) } })
    }

    /// redis-server (Debian's is linked with jemalloc): starts under the shim, answers PING/SET/GET, no
    /// report after the load, shuts down cleanly.
    @Test func redisServerAnswersAndIsLeakFree() throws {
        try #require(access(redisServer, X_OK) == 0, "apt-get install redis-server (make deps)")
        let programs = try RealPrograms()
        defer { programs.tearDown() }
        let d = programs.detection
        let port = try freeLoopbackPort()
        let redis = try programs.start(
            redisServer,
            ["--port", "\(port)", "--bind", "127.0.0.1", "--save", "", "--appendonly", "no", "--daemonize", "no",
             "--dir", d.temp.path],
            name: "redis", stdoutPipe: false)
        let pong = "+PONG\r\n"
        let answered = waitUntil(timeout: .seconds(60)) {
            guard redis.isRunning, let connection = try? LoopbackConnection(port: port) else { return !redis.isRunning }
            return (try? connection.send(resp("PING"))) != nil && (try? connection.receive(exactly: pong.utf8.count)) == pong
        }
        let status = String(describing: redis.wait(timeout: 0))
        try #require(answered && redis.isRunning,
                     "redis-server did not answer PING (wait status \(status)): \(redis.stdout)\(redis.stderr)")
        #expect(programs.waitUntilAdopted([redis.pid]), "daemon log:\n\(d.daemon.stderr)")
        expectNoReports(programs.reportAfterTwoScans(), "idle")

        let connection = try LoopbackConnection(port: port)
        var wrong: [String] = []
        for i in 0..<requests {
            let value = "value-\(i)-" + String(repeating: "x", count: i)
            try connection.send(resp("SET", "key:\(i)", value))
            let ok = try connection.receive(exactly: 5)
            try connection.send(resp("GET", "key:\(i)"))
            let expected = "$\(value.utf8.count)\r\n\(value)\r\n"
            let got = try connection.receive(exactly: expected.utf8.count)
            if ok != "+OK\r\n" || got != expected { wrong.append("\(i): \(ok) \(got)") }
        }
        #expect(wrong.isEmpty, "\(wrong.count) wrong replies, first: \(wrong.first ?? "")")
        expectNoReports(programs.reportAfterTwoScans(), "after \(requests) SET/GET pairs")

        try connection.send(resp("SHUTDOWN", "NOSAVE"))
        #expect(redis.exitCode(timeout: 60) == 0, "\(redis.stdout)\(redis.stderr)")
    }

    /// sqlite3 reading a script from a pipe the test holds open: a table of 10,000 rows built and queried,
    /// then scanned while the shell waits for more: no report.
    @Test func sqlite3TenThousandRowsIsLeakFree() throws {
        try #require(access(sqlite3, X_OK) == 0, "apt-get install sqlite3 (make deps)")
        let programs = try RealPrograms()
        defer { programs.tearDown() }
        let d = programs.detection
        let sqlite = try programs.start(sqlite3, ["-batch", d.temp.sub("rows.db")], name: "sqlite3")
        try sqlite.send("CREATE TABLE t(a INTEGER PRIMARY KEY, b TEXT, c BLOB);")
        try sqlite.send("CREATE INDEX t_b ON t(b);")
        try sqlite.send("""
            WITH RECURSIVE n(x) AS (SELECT 1 UNION ALL SELECT x + 1 FROM n WHERE x < 10000) \
            INSERT INTO t SELECT x, 'row ' || x, randomblob(x % 200) FROM n;
            """)
        let counted = try sqlite.request("SELECT 'ROWS', count(*), sum(a), count(DISTINCT b) FROM t;", expect: "ROWS",
                                         timeout: 120)
        #expect(counted == "ROWS|10000|50005000|10000")
        let queried = try sqlite.request("SELECT 'QUERY', count(*) FROM t WHERE b LIKE 'row 9%' AND length(c) > 10;",
                                         expect: "QUERY", timeout: 120)
        #expect(queried.hasPrefix("QUERY|"))
        #expect(programs.waitUntilAdopted([sqlite.pid]), "daemon log:\n\(d.daemon.stderr)")
        expectNoReports(programs.reportAfterTwoScans(), "with 10000 rows")
        _ = try sqlite.request("SELECT 'AGAIN', max(a) FROM t;", expect: "AGAIN|10000", timeout: 60)
        expectNoReports(programs.reportAfterTwoScans(), "after another query")
        try sqlite.send(".quit")
        #expect(sqlite.exitCode(timeout: 60) == 0, "\(sqlite.stderr)")
    }

    /// gcc's driver leaks option strings by design (it exits soon after). While cc1 waits for its input,
    /// every object the daemon reports in the driver is one LeakSanitizer reports at the driver's exit in
    /// the same command, by size and by its first four allocation sites. LeakSanitizer may report more:
    /// what the driver leaks after the scans, and what is still held then.
    @Test func gccDriversReportsAreLeaksLeakSanitizerReportsAtItsExit() throws {
        try #require(access(gcc, X_OK) == 0, "apt-get install gcc (make deps)")
        try #require(access(leakSanitizer, R_OK) == 0, "apt-get install liblsan0 (make deps)")
        let programs = try RealPrograms()
        defer { programs.tearDown() }
        let d = programs.detection
        let source = "int answer(void) { return 42; }\n"
        let driver = try programs.start(gcc, ["-S", "-x", "c", "-", "-o", d.temp.sub("ours.s")], name: "gcc")
        // cc1 reads the source from the driver's stdin: until it is closed, the driver waits for cc1.
        var compilers: [pid_t] = []
        #expect(waitUntil(timeout: .seconds(60)) {
            compilers = children(of: driver.pid).filter { isProcess($0, named: "cc1") }
            return !compilers.isEmpty || !driver.isRunning
        }, "no cc1 under gcc: \(driver.stderr)")
        programs.own(compilers)
        #expect(programs.waitUntilAdopted([driver.pid]), "daemon log:\n\(d.daemon.stderr)")
        let report = programs.reportAfterTwoScans().text
        let ours = reportedSites(report, pid: driver.pid)
        try driver.send(source)
        driver.closeStdin()
        #expect(driver.exitCode(timeout: 120) == 0, "\(driver.stderr)")

        let logs = try d.temp.makeDirectory("lsan")
        let checked = try ChildProcess(gcc, ["-S", "-x", "c", "-", "-o", d.temp.sub("lsan.s")],
                                       env: ["LD_PRELOAD": leakSanitizer,
                                             "LSAN_OPTIONS": "log_path=\(logs)/log:exitcode=0:symbolize=0:fast_unwind_on_malloc=0"],
                                       stdinPipe: true, stdout: .file(d.temp.sub("lsan.stdout")),
                                       stderr: .file(d.temp.sub("lsan.stderr")))
        try checked.send(source)
        checked.closeStdin()
        #expect(checked.exitCode(timeout: 120) == 0, "\(checked.stderr)")
        let log = (try? String(contentsOfFile: "\(logs)/log.\(checked.pid)", encoding: .utf8)) ?? ""
        var theirs = leakSanitizerSites(log)

        // Debian 12's gcc 12 leaks ten strings and option records before it starts cc1.
        #expect(ours.count >= 10, "\(ours.count) reports in the driver:\n\(digest(report))")
        var unmatched: [LeakSite] = []
        for site in ours {
            if let i = theirs.firstIndex(where: { $0.frames == site.frames && ($0.size == nil || $0.size == site.size) }) {
                theirs.remove(at: i)
            } else {
                unmatched.append(site)
            }
        }
        #expect(unmatched.isEmpty, "reported, not in LeakSanitizer's report: \(unmatched)\nLeakSanitizer's:\n\(log)")
    }

    /// A threaded C program leaking blocks of 1..4096 bytes through malloc, calloc, realloc and strdup,
    /// and a whole linked list whose head it lost, next to blocks it keeps: exactly the leaked set.
    @Test func cProgramWithLeaksOfManySizesFromThreadsIsReportedExactly() throws {
        let programs = try RealPrograms()
        defer { programs.tearDown() }
        let d = programs.detection
        let client = try d.client(clientPath("many-leaks"))
        let leaks = printed(client, ["LEAK"])
        let kept = printed(client, ["KEEP"])
        #expect(leaks.count == 4 * 58 + 32 && kept.count == 4 * 58)
        let report = programs.reportAfterTwoScans()
        let missed = leaks.subtracting(report.addresses).sorted().map { "0x" + String($0, radix: 16) }
        #expect(report.addresses == leaks,
                "missed \(missed.count): \(missed), extra: \(report.addresses.subtracting(leaks).count):\n\(digest(report.text))")
        #expect(report.addresses.isDisjoint(with: kept))
        try client.send("exit")
        #expect(client.exitCode(timeout: 60) == 0)
    }
}
