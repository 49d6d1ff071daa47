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
    /// block and never call into the engine. Returns how many tasks threads other than the caller ran
    /// (nil: not known), which tells the scan whether splitting its steps pays (see `StepSplitting`).
    @discardableResult
    func run(_ task: @Sendable (Int) -> Void) -> Int?
}

/// Runs every task on the calling thread, one after the other: the parallel scan's code path without
/// threads (deterministic, for tests).
public struct InlineScanWorkers: ScanWorkers {
    public let count: Int

    public init(count: Int) { self.count = max(1, count) }

    /// Unknown help (nil): the scan keeps splitting every step, so that tests take the parallel path.
    @discardableResult
    public func run(_ task: @Sendable (Int) -> Void) -> Int? {
        for k in 0..<count { task(k) }
        return nil
    }
}

/// Whether a scan's next group is split among the workers. A split step pays only when the other threads
/// take their part of it in time. Woken from sleep for every short step, they may come when the scanning
/// thread has done most tasks itself: then the split costs the wake-up and the moves of cache lines between
/// cores for little help. On python3's heap (batches of 1024 small objects, one step each, read in between)
/// two threads took 15-25 % more wall time than one, and the second ran about a quarter of the tasks. So
/// after `window` split steps in which the others ran under a third of the tasks, the next
/// `pauseBytes` are scanned on the scanning thread alone, in groups of MAX_SCAN_SIZE as without workers (a
/// whole 64 KiB group scanned serially was slower still); then splitting is tried again. The results are
/// the same either way (see ScanWorkers).
struct StepSplitting {
    static let window = 8
    static let pauseBytes = 56 * parallelScanSize
    private var splitSteps = 0
    private var tasksRun = 0
    private var tasksHelped = 0
    private var wholeBytesLeft = 0

    /// Whether the next group is split.
    var splits: Bool { wholeBytesLeft <= 0 }

    /// A group of `bytes` scanned on the scanning thread alone.
    mutating func scannedWhole(bytes: Int) { wholeBytesLeft -= bytes }

    /// A split step's help: `helped` of its `tasks` ran on other threads (nil: not known, or the group was
    /// scanned whole after all).
    mutating func record(helped: Int?, tasks: Int) {
        guard let helped, tasks > 0 else { return }
        splitSteps += 1
        tasksRun += tasks
        tasksHelped += helped
        guard splitSteps == Self.window else { return }
        if tasksHelped * 3 < tasksRun { wholeBytesLeft = Self.pauseBytes }
        splitSteps = 0
        tasksRun = 0
        tasksHelped = 0
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
