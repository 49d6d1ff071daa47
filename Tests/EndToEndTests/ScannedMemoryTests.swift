import Foundation
import Glibc
import KmemleakFS
import KmemleakTestSupport
import Synchronization
import Testing

/// What memory is read, and when: dead stack frames, vector registers, guard pages, untouched and
/// file-backed mappings, a client that cannot be frozen, a client that exits while we scan.
/// Each test runs a real kmemleakd and `roots-client` under the shim, and compares exact address sets.
@Suite(.enabled(if: canMount, "needs root and /dev/fuse"))
struct ScannedMemoryTests {
    private var rootsClient: String { clientPath("roots-client") }

    /// A stale pointer 128 KiB below the stack pointer of a spinning thread, and of a blocked one,
    /// hides neither leak; a pointer in a live frame of the spinning thread keeps its object.
    @Test func deadStackFramesOfRunningAndBlockedThreadsHideNoLeak() throws {
        let d = try Detection()
        defer { d.tearDown() }
        let client = try d.client(rootsClient, ["deadstack"])
        let leaks = printed(client, ["LEAK"])
        #expect(leaks.count == 2 && printed(client, ["KEEP"]).count == 1)
        // The KEEP (live frame of the running thread) is spared only by the frozen confirmation.
        d.scan(times: 3)
        #expect(d.reportedAddresses == leaks, "report:\n\(d.report)")
    }

    /// The only copy of a pointer in xmm0 of a spinning thread keeps its object; once xmm0 is
    /// cleared, the object is a leak.
    @Test func aPointerHeldOnlyInXMM0IsAReferenceUntilErased() throws {
        let d = try Detection()
        defer { d.tearDown() }
        let client = try d.client(rootsClient, ["xmm"])
        let held = printed(client, ["KEEP"])
        #expect(held.count == 1)
        d.scan(times: 3)
        #expect(d.reportedAddresses.isEmpty, "report:\n\(d.report)")
        _ = try client.request("erase", expect: "ERASED")
        d.scan(times: 2)
        #expect(d.reportedAddresses == held, "report:\n\(d.report)")
    }

    /// A PROT_NONE page in the middle of a tracked mmap object skips that page only: the pointer after
    /// it keeps its block.
    @Test func aGuardPageInsideAnObjectSkipsOnlyThatPage() throws {
        let d = try Detection()
        defer { d.tearDown() }
        let client = try d.client(rootsClient, ["guard"])
        #expect(printed(client, ["KEEP"]).count == 1)
        d.scan(times: 2)
        #expect(d.reportedAddresses.isEmpty, "report:\n\(d.report)")
    }

    /// A tracked 4 GiB MAP_NORESERVE object that is untouched but for one page: only that page is
    /// read (its pointer keeps a block), the client's leaks are exact, and scans end (hang guard only).
    @Test func anUntouchedHugeMappingIsSkippedAndItsTouchedPageStillCounts() throws {
        let d = try Detection()
        defer { d.tearDown() }
        let client = try d.client(rootsClient, ["noreserve"])
        let leaks = printed(client, ["LEAK"])
        #expect(leaks.count == 3)
        let clock = ContinuousClock()
        let elapsed = clock.measure { d.scan(times: 2) }
        #expect(elapsed < .seconds(120), "hang guard")
        #expect(d.reportedAddresses == leaks, "report:\n\(d.report)")
    }

    /// A JIT's heap (V8's): pages made writable by mprotect inside a PROT_NONE reservation are scanned (their
    /// pointer keeps its block), and a reservation nothing points to is not reported. The leaks are exact.
    /// `reserve-move`: the same pages then moved elsewhere by mremap stay part of the reservation: scanned,
    /// and not reported though nothing points to their new address.
    @Test(arguments: ["reserve", "reserve-move"])
    func pagesMadeWritableInsideAReservationAreScanned(mode: String) throws {
        let d = try Detection()
        defer { d.tearDown() }
        let client = try d.client(rootsClient, [mode])
        let leaks = printed(client, ["LEAK"])
        #expect(leaks.count == 2 && printed(client, ["KEEP"]).count == 1)
        d.scan(times: 2)
        #expect(d.reportedAddresses == leaks, "report:\n\(d.report)")
    }

    /// A thread record that claims a shared file mapping as its stack is not read there (a file can be
    /// served by anyone, forever): the pointer in that mapping keeps nothing, and the daemon says so.
    @Test func aStackClaimOutsideAnonymousPrivateMemoryIsNotRead() throws {
        let d = try Detection()
        defer { d.tearDown() }
        let client = try d.client(rootsClient, ["fakestack", d.temp.sub("claimed-stack")])
        let leaks = printed(client, ["LEAK"])
        #expect(leaks.count == 1)
        d.scan(times: 2)
        #expect(d.reportedAddresses == leaks, "report:\n\(d.report)")
        #expect(d.daemon.stderr.contains("is not anonymous private memory; not scanned"))
    }

    /// The same claim on a PROT_READ mapping of a file whose FUSE server never answers a read: two
    /// scans and a read of the report end (a hang guard only: each would wait on that server for as long
    /// as it lives if the daemon read the file), the server is asked for no read, an ordinary client's
    /// leaks are exact and the refusal is logged once.
    @Test func aStackClaimOnASlowFUSEFileStallsNoScanAndNoReader() throws {
        let d = try Detection()
        defer { d.tearDown() }
        let (server, leaks) = try slowFUSEServerAndOrdinaryClient(d)
        defer { server.stop() }
        let claimer = try d.client(rootsClient, ["fakestack-ro", server.file])
        #expect(server.reads.isEmpty, "mapping the file read it: \(server.reads)")

        try expectTwoScansAndTheReportAreExact(d, leaks: leaks, server: server)
        let refusals = d.daemon.stderr.split(separator: "\n").filter {
            $0.contains("pid \(claimer.pid): thread root") && $0.contains("is not anonymous private memory; not scanned")
        }
        #expect(refusals.count == 1, "log:\n\(d.daemon.stderr.suffix(2000))")
        #expect(refusals.first?.contains(server.file) == true)
    }

    /// A client maps a file of a FUSE server that never answers a read over its whole (private)
    /// table after adoption: the daemon never reads the file (pagemap shows none of its pages
    /// present): the table is no longer mapped, so the client is dropped and its rendezvous file then
    /// names no private anonymous mapping (said once); the ordinary client is scanned and reported
    /// exactly (a hang guard only: a read of the file would wait for as long as the server lives).
    @Test func aFUSEFileMappedOverATableIsNeverRead() throws {
        let d = try Detection()
        defer { d.tearDown() }
        let (server, leaks) = try slowFUSEServerAndOrdinaryClient(d)
        defer { server.stop() }
        let coverer = try d.client(rootsClient, ["table-cover", server.file])
        defer { coverer.terminate() }
        d.scan()
        #expect(d.daemon.stderr.contains("kmemleak: adopted client pid \(coverer.pid)"))
        #expect(try coverer.request("cover", expect: "COVERED") == "COVERED")
        try expectTwoScansAndTheReportAreExact(d, leaks: leaks, server: server)
        #expect(waitUntil { d.daemon.stderr.contains("kmemleak: dropped client pid \(coverer.pid)") }, "\(d.daemon.stderr.suffix(2000))")
        #expect(d.daemon.stderr.contains("is not one private anonymous mapping (") && d.daemon.stderr.contains(server.file))
    }

    /// A FUSE server whose files never answer a read, and an ordinary client with its 14 leaks printed.
    private func slowFUSEServerAndOrdinaryClient(_ d: Detection) throws -> (server: SlowFUSEServer, leaks: Set<UInt64>) {
        let server = try SlowFUSEServer(mountpoint: d.temp.makeDirectory("slow-fuse"), logDirectory: d.temp.path)
        do {
            let ordinary = try d.client(kmemleakTestPath)
            let leaks = printed(ordinary, ["LEAK", "PCPU-LEAK"])
            #expect(leaks.count == 14)
            return (server, leaks)
        } catch {
            server.stop()
            throw error
        }
    }

    /// Two scans and a read of the report, off this thread: they end (a hang guard only: each would wait
    /// on the FUSE server for as long as it lives if the daemon read its file), the report is `leaks`
    /// exactly and the server was asked for no read.
    private func expectTwoScansAndTheReportAreExact(_ d: Detection, leaks: Set<UInt64>, server: SlowFUSEServer,
                                                    sourceLocation: SourceLocation = #_sourceLocation) throws {
        let controlFile = d.controlFile
        let outcome = OffThread { () -> (scans: [Int], report: String) in
            let scans = (1...2).map { _ in writeOnce(controlFile, Array("scan\n".utf8)).result }
            let report = (try? readAll(controlFile)).map { String(decoding: $0, as: UTF8.self) } ?? "<unreadable>"
            return (scans, report)
        }
        let result = outcome.wait(timeout: .seconds(120))
        try #require(result != nil, "hang guard: the scans or the read of the report waited on the FUSE server, asked for \(server.reads)",
                     sourceLocation: sourceLocation)
        #expect(result?.scans == [5, 5], sourceLocation: sourceLocation)
        #expect(addresses(in: result?.report ?? "") == leaks, "report:\n\(result?.report ?? "")", sourceLocation: sourceLocation)
        #expect(server.reads.isEmpty, "the daemon read the FUSE file: \(server.reads)", sourceLocation: sourceLocation)
    }

    /// A thread looping on vfork (its parent waiting uninterruptibly) cannot be frozen in time: after
    /// every scan no thread of the client is stopped or traced, and nothing is reported.
    @Test func aVforkingClientIsNeverLeftTracedAndGetsNoFalseReport() throws {
        let d = try Detection()
        defer { d.tearDown() }
        let client = try d.client(rootsClient, ["vfork"])
        #expect(printed(client, ["KEEP"]).count == 1)
        // A freeze fails only when it lands in the parent's vfork wait (300 ms of each round; exec and
        // the wait for /bin/true take the rest, longer under load): at least 8 scans, and more until one
        // did, every one checked alike.
        let cannotFreeze = "cannot freeze pid \(client.pid) in time"
        let clock = ContinuousClock()
        let deadline = clock.now + .seconds(180)
        var scan = 0
        while scan < 8 || (!d.daemon.stderr.contains(cannotFreeze) && clock.now < deadline) {
            scan += 1
            d.scan()
            for (tid, state, tracer) in threadStates(client.pid) {
                #expect(state != "t" && tracer == 0, "scan \(scan): thread \(tid) state \(state) tracer \(tracer)")
            }
            #expect(d.report.isEmpty, "scan \(scan) reported:\n\(d.report.prefix(2000))")
        }
        #expect(d.daemon.stderr.contains(cannotFreeze), "\(scan) scans")
        // Still alive and answering.
        client.closeStdin()
        #expect(client.wait() == 0)
    }

    /// A client whose scan takes longer than `--client-scan-budget` is stopped with a log line and
    /// reports nothing (its candidates wait); the budget is per client: the next scan tries again.
    @Test func aScanOverItsTimeBudgetStopsWithALogLineAndReportsNothing() throws {
        let d = try Detection(daemonArguments: ["--client-scan-budget", "0.000001"])
        defer { d.tearDown() }
        let client = try d.client(kmemleakTestPath)
        #expect(printed(client, ["LEAK", "PCPU-LEAK"]).count == 14)
        d.scan(times: 2)
        #expect(d.report.isEmpty, "report:\n\(d.report)")
        #expect(waitUntil { d.daemon.stderr.contains("scan of pid \(client.pid) (kmemleak-test) exceeded its time budget") })
        #expect(!d.daemon.stderr.contains("new suspected memory leaks"))
    }

    /// A client that exits (200k objects, 256 MiB touched, nothing freed) while scans run back to back
    /// gets no report and no "new suspected memory leaks" line. (Whether a scan reads it in the few
    /// milliseconds of its exit is up to timing; ConfirmationTests pins the engine's side exactly.)
    @Test func aClientExitingWhileScansRunGetsNoReport() throws {
        let d = try Detection()
        defer { d.tearDown() }
        for _ in 1...2 {
            let client = try d.client(rootsClient, ["exit", "200000"], readyTimeout: 120)
            d.scan()
            let scanner = BackgroundScans(controlFile: d.controlFile)
            #expect(waitUntil(timeout: .seconds(120)) { scanner.completed >= 1 })
            try client.send("exit")
            #expect(client.wait() == 0)
            let after = scanner.completed
            #expect(waitUntil(timeout: .seconds(120)) { scanner.completed >= after + 2 })
            scanner.stop()
            #expect(!d.report.contains("pid \(client.pid),"), "report:\n\(d.report.prefix(2000))")
        }
        #expect(!d.daemon.stderr.contains("new suspected memory leaks"), "log:\n\(d.daemon.stderr.suffix(2000))")
    }
}

extension ScannedMemoryTests {
    /// A client that execs a program without the shim while scans run (the same pid and start time, a
    /// new address space and no table) gets no report and no count line: what was read is the old
    /// program's memory, or nothing.
    @Test func aClientExecingWhileScansRunGetsNoReport() throws {
        let d = try Detection()
        defer { d.tearDown() }
        for _ in 1...2 {
            let client = try d.client(rootsClient, ["exit", "200000"], readyTimeout: 120)
            d.scan()
            let scanner = BackgroundScans(controlFile: d.controlFile)
            #expect(waitUntil(timeout: .seconds(120)) { scanner.completed >= 1 })
            try client.send("exec")
            #expect(waitUntil(timeout: .seconds(60)) { processComm(client.pid) == "sleep" })
            let after = scanner.completed
            #expect(waitUntil(timeout: .seconds(120)) { scanner.completed >= after + 2 })
            scanner.stop()
            #expect(!d.report.contains("pid \(client.pid),"), "report:\n\(d.report.prefix(2000))")
            client.terminate()
        }
        #expect(!d.daemon.stderr.contains("new suspected memory leaks"), "log:\n\(d.daemon.stderr.suffix(2000))")
    }
}

/// The comm of `pid` (/proc/PID/comm), or nil once it is gone.
private func processComm(_ pid: Int32) -> String? {
    (try? String(contentsOfFile: "/proc/\(pid)/comm", encoding: .utf8))?.trimmingCharacters(in: .whitespacesAndNewlines)
}

/// Writes `scan` to the control file back to back on a thread of its own until stopped.
private final class BackgroundScans: Sendable {
    private let state = Mutex((running: true, completed: 0))
    private let done = Mutex(false)

    init(controlFile: String) {
        let thread = Thread { [self] in
            while state.withLock({ $0.running }) {
                _ = writeOnce(controlFile, Array("scan\n".utf8))
                state.withLock { $0.completed += 1 }
            }
            done.withLock { $0 = true }
        }
        thread.start()
    }

    var completed: Int { state.withLock { $0.completed } }

    func stop() {
        state.withLock { $0.running = false }
        waitUntil(timeout: .seconds(120)) { done.withLock { $0 } }
    }
}

/// Each thread of `pid` with its state letter and TracerPid (/proc/PID/task/TID/status).
private func threadStates(_ pid: Int32) -> [(tid: Int32, state: String, tracer: Int32)] {
    let tasks = (try? FileManager.default.contentsOfDirectory(atPath: "/proc/\(pid)/task")) ?? []
    return tasks.compactMap { name -> (Int32, String, Int32)? in
        guard let tid = Int32(name),
              let status = try? String(contentsOfFile: "/proc/\(pid)/task/\(tid)/status", encoding: .utf8) else { return nil }
        var state = "?", tracer: Int32 = -1
        for line in status.split(separator: "\n") {
            if line.hasPrefix("State:") { state = String(line.dropFirst(6).trimmingCharacters(in: .whitespaces).prefix(1)) }
            if line.hasPrefix("TracerPid:") { tracer = Int32(line.dropFirst(10).trimmingCharacters(in: .whitespaces)) ?? -1 }
        }
        return (tid, state, tracer)
    }
}

/// `body` run on a thread of its own; `wait` gives up after a timeout (the thread may stay blocked).
private final class OffThread<Result: Sendable>: Sendable {
    private let outcome = Mutex<Result?>(nil)

    init(_ body: @escaping @Sendable () -> Result) {
        Thread { [self] in
            let result = body()
            outcome.withLock { $0 = result }
        }.start()
    }

    func wait(timeout: Duration) -> Result? {
        var result: Result?
        _ = waitUntil(timeout: timeout) {
            result = outcome.withLock { $0 }
            return result != nil
        }
        return result
    }
}

/// A running `slow-fuse` (Tests/clients/slow-fuse.c) on `mountpoint`: its file never answers a read.
private final class SlowFUSEServer {
    let mountpoint: String
    var file: String { mountpoint + "/slow" }
    private let process: ChildProcess

    init(mountpoint: String, logDirectory: String) throws {
        self.mountpoint = mountpoint
        process = try ChildProcess.withOutputFiles([clientPath("slow-fuse"), mountpoint], in: logDirectory, name: "slow-fuse")
        let mounted = waitUntil(timeout: .seconds(30)) {
            !process.isRunning || (process.stdout.contains("MOUNTED") && MountPoint.mounts(at: mountpoint).count == 1)
        }
        guard mounted, process.isRunning else {
            stop()
            throw TestFailure("slow-fuse did not mount: \(process.stderr)")
        }
    }

    /// The reads the server was asked for ("READ offset size" lines).
    var reads: [String] { process.stdout.split(separator: "\n").filter { $0.hasPrefix("READ ") }.map(String.init) }

    /// Detaches the mount (a blocked request fails once the server is gone) and ends the server.
    func stop() {
        if let unmount = try? ChildProcess("/usr/bin/fusermount3", ["-u", "-z", mountpoint], stdinPipe: false,
                                           stdout: .inherit, stderr: .inherit) {
            unmount.wait(timeout: 30)
            unmount.terminate()
        }
        process.signal(SIGTERM)
        if process.wait(timeout: 20) == nil { process.terminate() }
        #expect(MountPoint.mounts(at: mountpoint).isEmpty, "slow-fuse left its mount")
    }
}
