import Foundation
import Glibc
import KmemleakFS
import Testing

/// The repository root (the shim, kmemleak-test and the test clients are built there by `make`).
let repositoryRoot: String = {
    var url = URL(fileURLWithPath: #filePath)
    for _ in 0..<3 { url.deleteLastPathComponent() }
    return url.path
}()

let shimPath = repositoryRoot + "/.build/release/libkmemleak.so"
let kmemleakTestPath = repositoryRoot + "/.build/release/kmemleak-test"
func clientPath(_ name: String) -> String { repositoryRoot + "/.build/clients/" + name }

/// A real kmemleakd on a temporary mount, and clients under LD_PRELOAD reporting to it.
final class Detection {
    let temp: TemporaryDirectory
    let mountpoint: String
    let runDirectory: String
    private(set) var daemons: [ChildProcess] = []
    private var clients: [ChildProcess] = []

    /// More kmemleakd options (e.g. `--allow-other`), for every daemon this harness starts.
    let daemonArguments: [String]
    /// Its environment (e.g. `KMEMLEAKD_LOG_LEVEL`).
    let daemonEnvironment: [String: String]

    init(startDaemon: Bool = true, daemonArguments: [String] = [], daemonEnvironment: [String: String] = [:]) throws {
        self.daemonArguments = daemonArguments
        self.daemonEnvironment = daemonEnvironment
        try #require(access(shimPath, R_OK) == 0 && access(kmemleakTestPath, X_OK) == 0, "run `make shim clients`")
        temp = try TemporaryDirectory()
        mountpoint = try temp.makeDirectory("mnt")
        runDirectory = try temp.makeDirectory("run")
        if startDaemon { try self.startDaemon() }
    }

    var controlFile: String { mountpoint + "/kmemleak" }
    var daemon: ChildProcess { daemons[daemons.count - 1] }

    /// Starts kmemleakd (no automatic scans, no minimum age) and waits until the control file is served.
    func startDaemon() throws {
        let child = try ChildProcess.withOutputFiles(
            [try daemonPath(), "--run-dir", runDirectory, "--min-age", "0", "--scan-period", "0",
             "--first-scan-delay", "3600"] + daemonArguments + [mountpoint],
            env: daemonEnvironment, in: temp.path, name: "kmemleakd\(daemons.count)")
        daemons.append(child)
        let served = waitUntil(timeout: .seconds(30)) {
            !child.isRunning || (statErrno(controlFile) == 0 && MountPoint.mounts(at: mountpoint).count == 1)
        }
        guard served, child.isRunning else { throw TestFailure("kmemleakd did not start: \(child.stderr)") }
    }

    /// Starts `path` under the shim (`environment` added last); waits for its READY line.
    func client(_ path: String, _ arguments: [String] = [], environment: [String: String] = [:],
                readyTimeout: Double = 30) throws -> ChildProcess {
        let client = try ChildProcess(
            path, arguments,
            env: ["LD_PRELOAD": shimPath, "KMEMLEAK_RUN_DIR": runDirectory].merging(environment) { $1 },
            stderrFile: temp.sub("client\(clients.count).stderr"))
        clients.append(client)
        _ = try client.waitFor("READY", timeout: readyTimeout)
        return client
    }

    /// Starts a client this harness did not spawn itself (e.g. as another user); it is terminated at
    /// tear-down like the others. Waits for its READY line.
    func adopt(_ client: ChildProcess) throws -> ChildProcess {
        clients.append(client)
        _ = try client.waitFor("READY", timeout: 30)
        return client
    }

    /// Lets clients of another user register in the run directory and reach the binaries (tests with
    /// `--allow-other`).
    func openToOtherUsers() {
        chmod(temp.path, 0o755)
        chmod(runDirectory, 0o1777)
    }

    /// Starts `path` as `user` under the shim; waits for its READY line.
    func client(_ path: String, as user: UnprivilegedUser, name: String = "user-client") throws -> ChildProcess {
        try adopt(try user.spawn(path, env: ["LD_PRELOAD": shimPath, "KMEMLEAK_RUN_DIR": runDirectory],
                                 stderrFile: temp.sub("\(name).stderr")))
    }

    /// Scans until the report holds exactly `expected` (objects with changing contents wait a scan
    /// more); false if it never does within the timeout.
    func scanUntilReported(_ expected: Set<UInt64>, timeout: Duration = .seconds(60)) -> Bool {
        scan(times: 2)
        return waitUntil(timeout: timeout) {
            if reportedAddresses == expected { return true }
            scan()
            return false
        }
    }

    /// One write to the control file; returns 0 or the errno the write failed with.
    @discardableResult
    func write(_ command: String) -> Int32 {
        let (result, error) = writeOnce(controlFile, Array(command.utf8))
        return result < 0 ? error : 0
    }

    func scan(times: Int = 1) {
        for _ in 0..<times { #expect(write("scan\n") == 0) }
    }

    var report: String {
        (try? readAll(controlFile)).map { String(decoding: $0, as: UTF8.self) } ?? "<unreadable>"
    }

    /// The addresses in the report's record headers.
    var reportedAddresses: Set<UInt64> { addresses(in: report) }

    func tearDown() {
        for client in clients { client.terminate() }
        for daemon in daemons {
            daemon.signal(SIGTERM)
            if daemon.wait(timeout: 20) == nil { daemon.terminate() }
        }
        temp.remove()
    }
}

/// Addresses of `unreferenced object[ (percpu)] 0x... (size N):` lines.
func addresses(in report: String) -> Set<UInt64> {
    var result = Set<UInt64>()
    for line in report.split(separator: "\n") where line.hasPrefix("unreferenced object") {
        guard let token = line.split(separator: " ").first(where: { $0.hasPrefix("0x") }),
              let value = UInt64(token.dropFirst(2), radix: 16) else { continue }
        result.insert(value)
    }
    return result
}

/// Addresses the client printed after `tags` (e.g. "LEAK", "PCPU-LEAK").
func printed(_ client: ChildProcess, _ tags: Set<String>) -> Set<UInt64> {
    var result = Set<UInt64>()
    for line in client.transcript.split(separator: "\n") {
        let parts = line.split(separator: " ")
        guard parts.count == 2, tags.contains(String(parts[0])), parts[1].hasPrefix("0x"),
              let value = UInt64(parts[1].dropFirst(2), radix: 16) else { continue }
        result.insert(value)
    }
    return result
}

@Suite(.enabled(if: canMount, "needs root and /dev/fuse"))
struct DetectionTests {
    @Test func kmemleakTestLeaksAreReportedExactlyBeforeAndAfterUnload() throws {
        let d = try Detection()
        defer { d.tearDown() }
        let client = try d.client(kmemleakTestPath)
        let leaks = printed(client, ["LEAK", "PCPU-LEAK"])
        let kept = printed(client, ["KEEP"])
        #expect(leaks.count == 14)
        d.scan(times: 2)
        #expect(d.reportedAddresses == leaks, "report:\n\(d.report)")
        #expect(d.daemon.stderr.contains("kmemleak: 14 new suspected memory leaks (see \(d.controlFile))"))

        try client.send("unload")
        _ = try client.waitFor("UNLOADED")
        let afterUnload = printed(client, ["LEAK", "PCPU-LEAK"])
        #expect(afterUnload.count == 24)
        d.scan(times: 2)
        let reported = d.reportedAddresses
        #expect(reported == afterUnload, "report:\n\(d.report)")
        #expect(reported.isDisjoint(with: kept.subtracting(afterUnload)))
        #expect(!d.report.contains("(size 129)"))
    }

    @Test func perCPULeakIsReportedInTheKernelsFormat() throws {
        let d = try Detection()
        defer { d.tearDown() }
        let client = try d.client(kmemleakTestPath)
        let handle = try #require(printed(client, ["PCPU-LEAK"]).first)
        d.scan(times: 2)
        let lines = d.report.split(separator: "\n", omittingEmptySubsequences: false).map(String.init)
        let header = "unreferenced object (percpu) 0x\(String(handle, radix: 16)) (size 64):"
        let start = try #require(lines.firstIndex(of: header), "report:\n\(d.report)")
        #expect(lines[start + 1].hasPrefix("  comm \"kmemleak-test\", pid \(client.pid), jiffies "))
        #expect(lines[start + 2] == "  hex dump (first 32 bytes on cpu 0):")
        let zeros = "    00 00 00 00 00 00 00 00 00 00 00 00 00 00 00 00  ................"
        #expect(lines[start + 3] == zeros && lines[start + 4] == zeros)
        #expect(lines[start + 5] == "  backtrace (crc 0):")
        let frames = lines[(start + 6)...].prefix { $0.hasPrefix("    [<") }
        #expect(!frames.isEmpty)
        for frame in frames {
            #expect(frame.range(of: #"^    \[<[0-9a-f]{16}>\] \S+"#, options: .regularExpression) != nil, "\(frame)")
        }
        #expect(frames.contains { $0.contains("main+0x") })
    }

    @Test func everyCommandGetsTheKernelsErrno() throws {
        let d = try Detection()
        defer { d.tearDown() }
        _ = try d.client(kmemleakTestPath)
        _ = try d.client(kmemleakTestPath)
        #expect(d.write("scan=on\n") == 0)
        #expect(waitUntil { d.daemon.stderr.contains("kmemleak: Automatic memory scanning thread started") })
        #expect(d.write("scan=off\n") == 0)
        #expect(d.write("scan=600\n") == 0)
        #expect(d.write("scan=0\n") == 0)
        #expect(d.write("scan=abc\n") == EINVAL)
        #expect(d.write("scan=99999999999\n") == ERANGE)
        #expect(d.write("stack=off\n") == 0)
        #expect(d.write("stack=on\n") == 0)
        #expect(d.write("stack=maybe\n") == EINVAL)
        #expect(d.write("dump=0xbad\n") == EINVAL)
        #expect(waitUntil { d.daemon.stderr.contains("kmemleak: Unknown object at 0x00000bad") })
        #expect(d.write("dump=nonsense\n") == EINVAL)
        #expect(d.write("bogus\n") == EINVAL)
        #expect(d.write("\u{1}\u{2}\u{3}") == EINVAL)
        #expect(d.write("scan" + String(repeating: "x", count: 200)) == 0)  // "scanXYZ" scans; 63 bytes kept
        #expect(d.write("clear\n") == 0)
        #expect(d.write("off\n") == 0)
        #expect(waitUntil { d.daemon.stderr.contains("kmemleak: Kernel memory leak detector disabled") })
        #expect(d.daemon.stderr.components(separatedBy: "Kernel memory leak detector disabled").count == 2)
        #expect(d.write("scan\n") == EPERM)
        #expect(d.write("stack=on\n") == EPERM)
        #expect(d.write("bogus\n") == EPERM)
        #expect(d.write("clear\n") == 0)
        #expect(d.report.isEmpty)
        #expect(d.daemon.isRunning)
    }

    @Test func clearHidesReportedLeaksAndOnlyNewOnesAppear() throws {
        let d = try Detection()
        defer { d.tearDown() }
        let client = try d.client(kmemleakTestPath)
        d.scan(times: 2)
        #expect(d.reportedAddresses.count == 14)
        #expect(d.write("clear\n") == 0)
        #expect(d.report.isEmpty)
        d.scan(times: 2)
        #expect(d.report.isEmpty, "cleared objects are grey now")
        let before = printed(client, ["LEAK", "PCPU-LEAK"])
        try client.send("unload")
        _ = try client.waitFor("UNLOADED")
        let nodes = printed(client, ["LEAK"]).subtracting(before)
        #expect(nodes.count == 10)
        d.scan(times: 2)
        #expect(d.reportedAddresses == nodes, "report:\n\(d.report)")
    }

    /// kmemleak_transient_leak on a block the daemon already tracks and reports: the next scan treats
    /// it as modified (checksum reset: gray for that scan, not listed), the one after reports it again.
    /// The daemon keeps no copy of the record's transient_gen: the record's version change says it.
    @Test func transientLeakAfterAdoptionDelaysTheReportByOneScan() throws {
        let d = try Detection()
        defer { d.tearDown() }
        let client = try d.client(clientPath("annotate-later"))
        let leak = printed(client, ["LEAK"])
        try #require(leak.count == 1)
        #expect(d.scanUntilReported(leak), "report:\n\(d.report)")
        #expect(try client.request("transient", expect: "OK") == "OK")
        d.scan()
        #expect(d.reportedAddresses.isEmpty, "the scan after the annotation treats the block as modified:\n\(d.report)")
        d.scan()
        #expect(d.reportedAddresses == leak, "report:\n\(d.report)")
    }

    @Test func dumpLogsTheObjectInTheKernelsWords() throws {
        let d = try Detection()
        defer { d.tearDown() }
        let client = try d.client(kmemleakTestPath)
        d.scan()
        let leak = try #require(printed(client, ["LEAK"]).sorted().first)
        let hex = String(leak, radix: 16)
        #expect(d.write("dump=0x\(hex)\n") == 0)
        #expect(waitUntil { d.daemon.stderr.contains("kmemleak: Object 0x\(hex) (size ") })
        let log = d.daemon.stderr
        #expect(log.contains("kmemleak:   comm \"kmemleak-test\", pid \(client.pid), jiffies "))
        #expect(log.contains("kmemleak:   min_count = 1"))
        #expect(log.contains("kmemleak:   backtrace:"))
        // Frames follow with one leading space and no prefix, as stack_trace_print prints them.
        #expect(log.split(separator: "\n").contains { $0.hasPrefix(" leak_malloc+0x") || $0.hasPrefix(" main+0x") })
        // Decimal and interior addresses work too (kstrtoul base 0, lookup with aliasing).
        #expect(d.write("dump=\(leak + 8)\n") == 0)
    }

    @Test func stackOffReportsObjectsHeldOnlyOnThreadStacks() throws {
        let d = try Detection()
        defer { d.tearDown() }
        let client = try d.client(clientPath("stack-holder"))
        let held = printed(client, ["STACK"])
        #expect(held.count == 2)
        d.scan(times: 2)
        #expect(d.reportedAddresses.isDisjoint(with: held), "report:\n\(d.report)")
        #expect(d.write("stack=off\n") == 0)
        d.scan(times: 2)
        #expect(d.reportedAddresses.isSuperset(of: held), "report:\n\(d.report)")
    }

    @Test func twoClientsAtOnceAreReportedTogether() throws {
        let d = try Detection()
        defer { d.tearDown() }
        let first = try d.client(kmemleakTestPath)
        let second = try d.client(kmemleakTestPath)
        d.scan(times: 2)
        let expected = printed(first, ["LEAK", "PCPU-LEAK"]).union(printed(second, ["LEAK", "PCPU-LEAK"]))
        let report = d.report
        #expect(report.components(separatedBy: "unreferenced object").count - 1 == 28)
        #expect(addresses(in: report) == expected)
        #expect(report.contains("pid \(first.pid),") && report.contains("pid \(second.pid),"))
    }

    @Test func clientStartedBeforeTheDaemonIsAdoptedWithItsHistory() throws {
        let d = try Detection(startDaemon: false)
        defer { d.tearDown() }
        let client = try d.client(kmemleakTestPath)
        try d.startDaemon()
        d.scan(times: 2)
        #expect(d.reportedAddresses == printed(client, ["LEAK", "PCPU-LEAK"]), "report:\n\(d.report)")
    }

    @Test func daemonKilledAndRestartedReportsTheSameLeaks() throws {
        let d = try Detection()
        defer { d.tearDown() }
        let client = try d.client(kmemleakTestPath)
        d.scan(times: 2)
        let before = d.reportedAddresses
        #expect(before == printed(client, ["LEAK", "PCPU-LEAK"]))
        d.daemon.signal(SIGKILL)
        #expect(d.daemon.wait() != nil)
        try d.startDaemon()   // clears the stale mount of the killed daemon
        d.scan(times: 2)
        #expect(d.reportedAddresses == before, "report:\n\(d.report)")
    }

    @Test func aClientThatExitsLeavesTheReport() throws {
        let d = try Detection()
        defer { d.tearDown() }
        let client = try d.client(kmemleakTestPath)
        d.scan(times: 2)
        #expect(d.reportedAddresses.count == 14)
        client.closeStdin()
        #expect(client.wait() == 0)
        #expect(d.report.isEmpty)
        #expect(d.daemon.stderr.contains("kmemleak: dropped client pid \(client.pid)"))
        d.scan()
        #expect(d.report.isEmpty)
    }

    @Test func aClientWithACorruptedTableIsDroppedWithALogLine() throws {
        let d = try Detection()
        defer { d.tearDown() }
        let sane = try d.client(kmemleakTestPath)
        let hostile = try d.client(kmemleakTestPath)
        d.scan()
        // Overwrite the hostile client's table magic (its private memory or its memfd), as a buggy or
        // hostile client could.
        let table = try #require(ClientTableFile(pid: hostile.pid, runDirectory: d.runDirectory))
        #expect(table.write(UInt64(0xdead_beef), at: 0))
        table.close()
        d.scan(times: 2)
        #expect(waitUntil { d.daemon.stderr.contains("kmemleak: dropped client pid \(hostile.pid)") })
        #expect(d.daemon.stderr.contains("invalid table"))
        #expect(d.daemon.isRunning)
        #expect(d.reportedAddresses == printed(sane, ["LEAK", "PCPU-LEAK"]), "report:\n\(d.report)")
    }

    /// Threads move every pointer between slots nonstop while we scan: nothing may ever be reported.
    @Test func pointerChurnGivesNoReportInTwentyScans() throws {
        let d = try Detection()
        defer { d.tearDown() }
        let client = try d.client(clientPath("pointer-churn"), ["2", "1024"])
        #expect(printed(client, ["OBJ"]).count == 1024)
        for scan in 1...20 {
            d.scan()
            let report = d.report
            #expect(report.isEmpty, "scan \(scan) reported:\n\(report.prefix(2000))")
            if !report.isEmpty { break }
        }
        #expect(d.daemon.stderr.contains("kmemleak: adopted client pid \(client.pid)"))
        try client.send("exit")
        let moves = try client.waitFor("MOVES")
        #expect((UInt64(moves.dropFirst(6)) ?? 0) > 0)
    }
}

/// The allocator's own words: glibc's bookkeeping never keeps a leak alive, C++'s array cookie does
/// keep `new T[0]` blocks (issue 8, items 5 and 9).
@Suite(.enabled(if: canMount, "needs root and /dev/fuse"))
struct AllocatorReferenceTests {
    /// main_arena points at the chunk header after many blocks; for size mod 16 in 1...8 it lies
    /// inside the block. Every one of the 4096 leaks is reported, none of the 4096 kept blocks.
    @Test func leaksOfEverySizeFromOneTo4096AreAllReported() throws {
        let d = try Detection()
        defer { d.tearDown() }
        let client = try d.client(clientPath("every-size"))
        let leaks = printed(client, ["LEAK"])
        let kept = printed(client, ["KEEP"])
        #expect(leaks.count == 4096 && kept.count == 4096)
        d.scan(times: 2)
        let reported = d.reportedAddresses
        let missing = leaks.subtracting(reported), extra = reported.subtracting(leaks)
        #expect(missing.isEmpty && extra.isEmpty,
                "missing \(missing.count), extra \(extra.count) (kept: \(extra.intersection(kept).count)): \(String(d.report.prefix(3000)))\n\(d.daemon.stderr.suffix(3000))")
    }

    @Test func pointersToTheEndOfNewArrayCookiesKeepTheirBlocks() throws {
        let d = try Detection()
        defer { d.tearDown() }
        let client = try d.client(clientPath("new-array-zero"))
        let leaks = printed(client, ["LEAK"])
        #expect(leaks.count == 1 && printed(client, ["KEEP"]).count == 4)
        d.scan(times: 2)
        #expect(d.reportedAddresses == leaks, "report:\n\(d.report)")
    }
}
