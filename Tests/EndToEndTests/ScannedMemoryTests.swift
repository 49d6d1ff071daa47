import Foundation
import Glibc
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

    /// A thread looping on vfork (its parent waiting uninterruptibly) cannot be frozen in time: after
    /// every scan no thread of the client is stopped or traced, and nothing is reported.
    @Test func aVforkingClientIsNeverLeftTracedAndGetsNoFalseReport() throws {
        let d = try Detection()
        defer { d.tearDown() }
        let client = try d.client(rootsClient, ["vfork"])
        #expect(printed(client, ["KEEP"]).count == 1)
        for scan in 1...8 {
            d.scan()
            for (tid, state, tracer) in threadStates(client.pid) {
                #expect(state != "t" && tracer == 0, "scan \(scan): thread \(tid) state \(state) tracer \(tracer)")
            }
            #expect(d.report.isEmpty, "scan \(scan) reported:\n\(d.report.prefix(2000))")
        }
        #expect(d.daemon.stderr.contains("cannot freeze pid \(client.pid) in time"))
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
