import Foundation
import Glibc
import KmemleakTestSupport
import Testing

/// glibc's threads and loader bookkeeping under a real daemon (issue 8, items 1-3): Tests/clients/thread-life.c
/// prints the planted leaks; the report must be exactly that set, before and after each state change.
@Suite(.enabled(if: canMount, "needs root and /dev/fuse"))
struct ThreadLifetimeTests {
    private let threadLife = clientPath("thread-life")

    /// Scans twice (new objects are reported from their second scan) and returns the reported addresses,
    /// after checking that the daemon did adopt `client` (an empty report must not mean "not scanned").
    private func reportAfterTwoScans(_ d: Detection, _ client: ChildProcess) -> Set<UInt64> {
        d.scan(times: 2)
        #expect(d.daemon.stderr.contains("kmemleak: adopted client pid \(client.pid) "), "daemon log:\n\(d.daemon.stderr)")
        return d.reportedAddresses
    }

    @Test func joinedThreadsAPoolAndDlopenedTLSLeaveOnlyThePlantedLeak() throws {
        let d = try Detection()
        defer { d.tearDown() }
        let client = try d.client(threadLife, ["pool", clientPath("libloader-tls.so")])
        let planted = printed(client, ["LEAK"])
        #expect(planted.count == 1)
        #expect(reportAfterTwoScans(d, client) == planted, "report:\n\(d.report)")
    }

    /// Runs thread-life in `mode`: no report while it is in the state it announced with `marker`, nor
    /// after `command` (answered by `reply`) ended that state.
    private func expectNoReport(mode: String, marker: String, command: String, reply: String) throws {
        let d = try Detection()
        defer { d.tearDown() }
        let client = try d.client(threadLife, [mode])
        #expect(client.transcript.contains(marker + "\n"), "transcript: \(client.transcript)")
        #expect(reportAfterTwoScans(d, client).isEmpty, "\(marker):\n\(d.report)")
        _ = try client.request(command, expect: reply, timeout: 60)
        #expect(reportAfterTwoScans(d, client).isEmpty, "\(reply):\n\(d.report)")
    }

    /// A joinable thread's TSD destructor holds the only pointer to a block on its stack, and detached
    /// threads that failed a dlsym keep glibc's dlerror state in their TLS, while their destructors wait.
    @Test func destructorsStillUsingTheirThreadAndDlerrorStateAreNotLeaks() throws {
        try expectNoReport(mode: "tsd", marker: "DTORS-WAITING", command: "release", reply: "ALL-GONE")
    }

    /// The block a thread returned is only in its struct pthread (TCB) until pthread_join.
    @Test func theValueOfAnExitedThreadIsReachableUntilItIsJoined() throws {
        try expectNoReport(mode: "result", marker: "EXITED", command: "join", reply: "JOINED")
    }

    /// pthread_create's argument, before the new thread's start routine has run.
    @Test func theArgumentIsReachableBeforeTheThreadRuns() throws {
        try expectNoReport(mode: "arg", marker: "ARG-WAITING", command: "release", reply: "ARG-FREED")
    }

    /// Debian's python3: 20 short `threading` threads, joined.
    @Test(.enabled(if: access("/usr/bin/python3", X_OK) == 0, "needs /usr/bin/python3"))
    func pythonThreadingGivesNoReport() throws {
        let d = try Detection()
        defer { d.tearDown() }
        let script = """
            import sys, threading
            def work(i):
                return sum(range(i * 100))
            threads = [threading.Thread(target=work, args=(i,)) for i in range(20)]
            for t in threads: t.start()
            for t in threads: t.join()
            print("READY", flush=True)
            sys.stdin.read()
            """
        let client = try d.client("/usr/bin/python3", ["-c", script])
        #expect(reportAfterTwoScans(d, client).isEmpty, "report:\n\(d.report)")
    }
}
