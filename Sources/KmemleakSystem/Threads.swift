import CKmemleakSys
import Dispatch
import Glibc
import KmemleakEngine

private final class ThreadBody {
    let name: String
    let body: @Sendable () -> Void
    init(_ name: String, _ body: @escaping @Sendable () -> Void) { self.name = name; self.body = body }
}

/// Starts a detached pthread named `name` (at most 15 bytes are kept) running `body`.
public func startThread(name: String, _ body: @escaping @Sendable () -> Void) {
    let context = Unmanaged.passRetained(ThreadBody(name, body)).toOpaque()
    var thread = pthread_t()
    let result = pthread_create(&thread, nil, { context in
        let body = Unmanaged<ThreadBody>.fromOpaque(context!).takeRetainedValue()
        ckml_set_thread_name(body.name)
        body.body()
        return nil
    }, context)
    precondition(result == 0, "pthread_create failed: \(result)")
    pthread_detach(thread)
}

/// The scan's workers (`KmemleakConfiguration.scanWorkers`): each parallel step of a scan is cut into
/// `count` tasks, run on Dispatch's thread pool and the scanning thread.
public struct ScanThreads: ScanWorkers {
    public let count: Int

    public init(count: Int) { self.count = max(1, count) }

    public func run(_ task: @Sendable (Int) -> Void) {
        DispatchQueue.concurrentPerform(iterations: count, execute: task)
    }

    /// The online CPUs, at most 4 (a scan's lookups stop scaling at memory bandwidth), at least 1.
    public static var defaultCount: Int {
        let online = sysconf(Int32(_SC_NPROCESSORS_ONLN))
        return max(1, min(online > 0 ? online : 1, 4))
    }
}
