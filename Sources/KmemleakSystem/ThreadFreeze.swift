import CKmemleakSys
import Glibc

/// All threads of a client held in a ptrace stop for a moment, with their registers.
///
/// Scans never stop a client. Only when a scan has new leak candidates does the daemon freeze the
/// client for one re-read of the candidates' possible referrers (and the registers), so a pointer that
/// a thread was moving while we read cannot make a reachable object look leaked. `thaw()` resumes every
/// thread and re-delivers any signal that arrived during the stop. If the daemon dies meanwhile, the
/// kernel detaches the tracees and they simply run on.
public final class FrozenProcess {
    public let pid: Int32
    /// The general-purpose registers of every stopped thread, CKML_NREGS words each.
    public private(set) var registers: [UInt64] = []
    /// Each stopped thread's stack pointer (rsp).
    public private(set) var stackPointers: [Int32: UInt64] = [:]
    private var stopped: [(tid: Int32, pendingSignal: Int32)] = []

    /// Stops every thread of `pid`; threads created while we stop the others are stopped too.
    /// - Throws: `ThreadFreezeError` when a thread cannot be seized (for example, it is already traced
    ///   by a debugger) or does not stop within `timeoutMilliseconds`; nothing stays stopped then.
    public init(pid: Int32, timeoutMilliseconds: Int32 = 200) throws(ThreadFreezeError) {
        self.pid = pid
        var seen = Set<Int32>()
        // Re-list until a pass finds no new thread: a running thread may have created one meanwhile.
        for _ in 0..<16 {
            let tids = Self.threadIDs(of: pid)
            if tids.isEmpty {
                thaw()
                throw ThreadFreezeError(call: "opendir(/proc/\(pid)/task)", tid: pid, errno: ESRCH)
            }
            let fresh = tids.filter { !seen.contains($0) }
            if fresh.isEmpty { break }
            for tid in fresh {
                seen.insert(tid)
                var pending: Int32 = 0
                if ckml_ptrace_seize_and_stop(tid, timeoutMilliseconds, &pending) != 0 {
                    let code = errno
                    // A thread that exited between the listing and the seize is simply gone.
                    if code == ESRCH { continue }
                    thaw()
                    throw ThreadFreezeError(call: "ptrace(PTRACE_SEIZE/INTERRUPT)", tid: tid, errno: code)
                }
                stopped.append((tid, pending))
                var regs = [UInt64](repeating: 0, count: Int(CKML_NREGS))
                if ckml_ptrace_get_regs(tid, &regs) == 0 {
                    registers.append(contentsOf: regs)
                    stackPointers[tid] = regs[Self.rspIndex]
                }
            }
        }
    }

    /// Resumes every stopped thread (idempotent).
    public func thaw() {
        for thread in stopped { _ = ckml_ptrace_detach(thread.tid, thread.pendingSignal) }
        stopped.removeAll()
    }

    deinit { thaw() }

    /// rsp in x86-64's struct user_regs_struct.
    static let rspIndex = 19

    static func threadIDs(of pid: Int32) -> [Int32] {
        guard let dir = opendir("/proc/\(pid)/task") else { return [] }
        defer { closedir(dir) }
        var tids: [Int32] = []
        while let entry = readdir(dir) {
            let name = withUnsafeBytes(of: entry.pointee.d_name) { raw in
                String(decoding: raw.prefix(while: { $0 != 0 }), as: UTF8.self)
            }
            if let tid = Int32(name) { tids.append(tid) }
        }
        return tids
    }
}

/// A thread of a client could not be stopped for the confirmation read.
public struct ThreadFreezeError: Error, CustomStringConvertible {
    public let call: String
    public let tid: Int32
    public let errno: Int32
    public var description: String {
        "\(call) on thread \(tid) failed: \(String(cString: strerror(errno))) (errno \(errno))"
    }
}
