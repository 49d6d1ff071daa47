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
        #expect(frozen.stackPointers.count == 4)
        // General-purpose registers and the XSAVE area (at least its 512-byte legacy region).
        for tid in threads { #expect(frozen.vectorStateBytes[tid].map { $0 >= 512 } ?? false) }
        #expect(frozen.registers.count >= 4 * (27 + 64))
        for tid in threads { #expect(threadState(client.pid, tid) == "t") }
        frozen.thaw()
        for tid in threads {
            #expect(threadState(client.pid, tid) != "t")
            #expect(Proc.tracerPid(client.pid, tid: tid) == 0)
        }
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

/// Stacks are scanned from the stack pointer where it is known: a thread blocked in the kernel shows it.
@Suite(.enabled(if: getuid() == 0))
struct StackPointerTests {
    @Test func blockedThreadsTellTheirStackPointerAndStacksAreTrimmedToIt() throws {
        let holder = Shim.root + "/.build/clients/stack-holder"
        try #require(access(holder, X_OK) == 0, "run `make clients` first")
        let client = try ChildProcess(holder)
        defer { client.terminate() }
        _ = try client.waitFor("READY")
        let stack = try #require(try Proc.maps(client.pid).first { $0.path == "[stack]" })
        // The main thread is blocked reading stdin: its stack pointer lies in [stack].
        var sp: UInt64?
        for _ in 0..<1000 where sp == nil { sp = Proc.stackPointer(client.pid, tid: client.pid); if sp == nil { usleep(1000) } }
        let pointer = try #require(sp)
        #expect(pointer >= stack.start && pointer < stack.end)
        let root = RootRange(start: stack.start, length: stack.length, kind: .stack, label: "main", tid: client.pid)
        let data = RootRange(start: 0x1000, length: 0x1000, kind: .data, label: "data")
        let trimmed = Roots.trimStacks([root, data], stackPointers: [client.pid: pointer])
        #expect(trimmed[0].start == pointer - Roots.redZone && trimmed[0].end == stack.end)
        #expect(trimmed[1] == data)
        // Unknown stack pointer, or one outside the stack: the whole stack stays.
        #expect(Roots.trimStacks([root], stackPointers: [:]) == [root])
        #expect(Roots.trimStacks([root], stackPointers: [client.pid: stack.end + 8]) == [root])
    }
}
