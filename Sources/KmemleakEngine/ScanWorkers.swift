// Parallel scanning (issue 10 goal 1). The engine starts no thread (it makes no syscalls): a caller that
// wants the scan on several cores passes `KmemleakConfiguration.scanWorkers`, a small pool of its own.
//
// What runs in parallel is read-only: the batch's reads (when the reader allows concurrent reads) and,
// with the state lock held by the scanning thread, the index lookups of a group's words, cut into one
// contiguous run of words per task. Each task writes the words that may change something (pointer_update_refs
// would reach the hit object's colour) into a hit buffer of its own, in word order; the scanning thread
// then applies them one by one in the serial scan's order, with the serial scan's code. So a parallel scan
// counts, colours and reports exactly what the serial scan does. A word dropped by a task is one on which
// the serial code does nothing but, at most, clear the object's `mayTakeReference` bit: that bit is a
// cache of "gray or black without excess_ref", which a later word sets again just the same.

/// Threads for the parallel part of a scan.
public protocol ScanWorkers: Sendable {
    /// How many tasks each parallel step is cut into (1: the serial scan).
    var count: Int { get }
    /// Calls `task(k)` once for every k in 0..<count, concurrently where threads are free (the calling
    /// thread may run some or all of them itself), and returns once all have returned. The tasks never
    /// block and never call into the engine.
    func run(_ task: @Sendable (Int) -> Void)
}

/// Runs every task on the calling thread, one after the other: the parallel scan's code path without
/// threads (deterministic, for tests).
public struct InlineScanWorkers: ScanWorkers {
    public let count: Int

    public init(count: Int) { self.count = max(1, count) }

    public func run(_ task: @Sendable (Int) -> Void) {
        for k in 0..<count { task(k) }
    }
}

/// Lets a task read what the scanning thread owns while it waits for the tasks (`ScanWorkers.run` returns
/// only once they are done), and write only into its own part of a buffer.
struct Shared<T>: @unchecked Sendable {
    let value: T
}

/// Bytes of words one lock hold scans with workers: 16 times MAX_SCAN_SIZE, so that a step (about 0.1 ms
/// of lookups per task) outweighs the waking of the tasks.
let parallelScanSize = 64 << 10
/// A batch smaller than this is read on the calling thread.
let parallelReadMinimum = 64 << 10
