import Glibc
import Testing
@testable import KmemleakSystem

/// Freezing must stop every thread (tracing stop), expose registers, and resume the client intact.
@Suite(.enabled(if: getuid() == 0))
struct ThreadFreezeTests {
    @Test func freezeStopsEveryThreadAndThawResumes() throws {
        let churn = Shim.root + "/.build/clients/pointer-churn"
        try #require(access(churn, X_OK) == 0, "run `make clients` first")
        let client = try ChildProcess(churn, ["3", "64"])
        defer { client.terminate() }
        _ = try client.waitFor("READY")
        let threads = FrozenProcess.threadIDs(of: client.pid)
        #expect(threads.count == 4)

        let frozen = try FrozenProcess(pid: client.pid)
        #expect(frozen.registers.count == 4 * 27)
        for tid in threads { #expect(threadState(client.pid, tid) == "t") }
        frozen.thaw()
        for tid in threads { #expect(threadState(client.pid, tid) != "t") }
        // It still works: it answers on stdin after the stop.
        client.closeStdin()
        _ = try client.waitFor("MOVES")
        #expect(client.wait() == 0)
    }

    private func threadState(_ pid: Int32, _ tid: Int32) -> String {
        guard let file = fopen("/proc/\(pid)/task/\(tid)/stat", "r") else { return "?" }
        defer { fclose(file) }
        var buffer = [CChar](repeating: 0, count: 512)
        guard fgets(&buffer, 512, file) != nil else { return "?" }
        let line = String(cString: buffer)
        guard let close = line.lastIndex(of: ")") else { return "?" }
        return String(line[line.index(close, offsetBy: 2)])
    }
}
