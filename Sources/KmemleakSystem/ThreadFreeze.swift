import CKmemleakSys
import Glibc

/// All threads of a client held in a ptrace stop for a moment, with their registers.
///
/// Scans never stop a client. Only when a scan has new leak candidates does the daemon freeze the
/// client for one re-read of the candidates' possible referrers (and the registers), so a pointer that
/// a thread was moving while we read cannot make a reachable object look leaked. `thaw()` resumes every
/// thread and re-delivers any signal that arrived during the stop.
///
/// Every ptrace call is made on a tracer thread of our own (`ckml_tracer_*`), which `thaw()` ends: the
/// kernel then detaches whatever that thread still traces, even a thread that never reached the stop
/// (one in an uninterruptible wait: vfork, slow exec, disk or NFS I/O), which `PTRACE_DETACH` cannot
/// release. So no client thread stays stopped or traced after a freeze, whatever happened during it.
/// If the daemon dies meanwhile, the kernel detaches the tracees the same way.
public final class FrozenProcess {
    public let pid: Int32
    /// Every register word of every stopped thread: its general-purpose registers (CKML_NREGS words)
    /// followed by its x87/SSE/AVX/AVX-512 state (XSAVE layout without the XSAVE header), thread by
    /// thread. Only the words matter: the engine scans them as one root.
    public private(set) var registers: [UInt64] = []
    /// Each stopped thread's stack pointer (rsp).
    public private(set) var stackPointers: [Int32: UInt64] = [:]
    /// Vector-state bytes read per thread (0 when the kernel gave none).
    public private(set) var vectorStateBytes: [Int32: Int] = [:]
    private var stopped: [(tid: Int32, pendingSignal: Int32)] = []
    /// Threads seized that did not stop in time: released when the tracer thread ends.
    private var unstopped: [Int32] = []
    private var tracer: OpaquePointer?

    /// Stops every thread of `pid`; threads created while we stop the others are stopped too.
    /// - Throws: `ThreadFreezeError` when a thread cannot be seized (for example, it is already traced
    ///   by a debugger: EPERM) or does not stop within `timeoutMilliseconds` (ETIMEDOUT); nothing stays
    ///   stopped or traced then.
    public init(pid: Int32, timeoutMilliseconds: Int32 = 200) throws(ThreadFreezeError) {
        self.pid = pid
        guard let tracer = ckml_tracer_start() else {
            throw ThreadFreezeError(call: "pthread_create(tracer)", tid: pid, errno: errno)
        }
        self.tracer = tracer
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
                if ckml_tracer_seize_and_stop(tracer, tid, timeoutMilliseconds, &pending) != 0 {
                    let code = errno
                    // A thread that exited between the listing and the seize is simply gone.
                    if code == ESRCH { continue }
                    if code == ETIMEDOUT { unstopped.append(tid) }
                    thaw()
                    throw ThreadFreezeError(call: "ptrace(PTRACE_SEIZE/INTERRUPT)", tid: tid, errno: code)
                }
                stopped.append((tid, pending))
                readRegisters(tracer, tid)
            }
        }
    }

    private func readRegisters(_ tracer: OpaquePointer, _ tid: Int32) {
        var regs = [UInt64](repeating: 0, count: Int(CKML_NREGS))
        guard ckml_tracer_get_regs(tracer, tid, &regs) == 0 else { return }
        registers.append(contentsOf: regs)
        stackPointers[tid] = regs[Self.rspIndex]
        var vector = [UInt64](repeating: 0, count: Self.vectorStateBytes / 8)
        let got = vector.withUnsafeMutableBytes { ckml_tracer_get_vector_state(tracer, tid, $0.baseAddress, $0.count) }
        guard got > 0 else { vectorStateBytes[tid] = 0; return }
        let words = min(Int(got), Self.vectorStateBytes) / 8
        vectorStateBytes[tid] = words * 8
        // The XSAVE header (bytes 512..<576) holds feature bitmaps, not registers.
        registers.append(contentsOf: vector[0..<min(words, 64)])
        if words > 72 { registers.append(contentsOf: vector[72..<words]) }
    }

    /// Resumes every stopped thread and lets go of every seized one (idempotent). A thread that never
    /// stopped is released by the tracer thread's exit; this waits (bounded) until the kernel shows it
    /// untraced.
    public func thaw() {
        guard let tracer else { return }
        for thread in stopped { _ = ckml_tracer_detach(tracer, thread.tid, thread.pendingSignal) }
        stopped.removeAll()
        ckml_tracer_end(tracer)
        self.tracer = nil
        let clock = ContinuousClock()
        let deadline = clock.now + .seconds(2)
        for tid in unstopped {
            while Proc.tracerPid(pid, tid: tid).map({ $0 != 0 }) ?? false, clock.now < deadline { usleep(200) }
        }
        unstopped.removeAll()
    }

    deinit { thaw() }

    /// rsp in x86-64's struct user_regs_struct.
    static let rspIndex = 19
    /// Room for the whole XSAVE area (AVX-512 needs ~2.7 KiB, AMX tiles ~11 KiB).
    static let vectorStateBytes = 16384

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
    /// The thread did not reach the stop in time (it may be in an uninterruptible wait).
    public var timedOut: Bool { errno == ETIMEDOUT }
    public var description: String {
        "\(call) on thread \(tid) failed: \(String(cString: strerror(errno))) (errno \(errno))"
    }
}
