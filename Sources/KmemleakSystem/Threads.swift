import CKmemleakSys
import Glibc
import KmemleakEngine
import Synchronization

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

/// The scan's workers (`KmemleakConfiguration.scanWorkers`): `count - 1` threads of its own plus the
/// scanning thread. A step's tasks are claimed one by one from a shared counter, by the caller too, so the
/// caller never waits for a thread that has not started: on a loaded machine a step costs at most what
/// the serial scan does, plus the wait for tasks that a thread already runs. (Dispatch's concurrentPerform
/// waits for every thread it woke: at load 18 a scan of thousands of steps took 3x the serial wall time.)
/// One caller at a time: a second concurrent caller runs its tasks itself.
// @unchecked: the pthread mutex and condition (at fixed addresses) are made for use from several threads.
public final class ScanThreads: ScanWorkers, @unchecked Sendable {
    /// Tasks per step: `tasksPerThread` per thread, so that a thread preempted in a task holds up the
    /// step for a small part of it only (the others claim the rest).
    public let count: Int
    /// Threads (the caller included).
    public let threads: Int
    static let tasksPerThread = 4
    /// generation << 32 | the next task to claim in it.
    private let claim = Atomic<UInt64>(0)
    /// Tasks of the current generation that have returned.
    private let finished = Atomic<Int>(0)
    /// The current generation's task; nil between steps.
    private let task = Mutex<(@Sendable (Int) -> Void)?>(nil)
    private let caller = Mutex<Void>(())
    private let sleep: UnsafeMutablePointer<pthread_mutex_t>
    private let wake: UnsafeMutablePointer<pthread_cond_t>
    /// Checks of `claim` before a thread sleeps (a scan's steps follow each other within microseconds).
    static let spinsBeforeSleep = 256

    private static let pools = Mutex<[Int: ScanThreads]>([:])

    /// The process's pool of `threads` threads, the caller included (they are started once and never end).
    public static func pool(threads: Int) -> ScanThreads {
        pools.withLock { pools in
            if let p = pools[threads] { return p }
            let p = ScanThreads(threads: threads)
            pools[threads] = p
            return p
        }
    }

    private init(threads: Int) {
        self.threads = max(1, min(threads, 64))
        count = self.threads == 1 ? 1 : self.threads * Self.tasksPerThread
        sleep = .allocate(capacity: 1)
        wake = .allocate(capacity: 1)
        pthread_mutex_init(sleep, nil)
        pthread_cond_init(wake, nil)
        for k in 1..<self.threads {
            startThread(name: "kmemleak-scan\(k)") { [self] in self.work() }
        }
    }

    @discardableResult
    public func run(_ task: @Sendable (Int) -> Void) -> Int? {
        if count == 1 {
            task(0)
            return 0
        }
        // The tasks this thread ran itself; nil when another caller had the pool (all ran here).
        let ran: Int? = caller.withLockIfAvailable { _ in
            withoutActuallyEscaping(task) { task in
                self.task.withLock { $0 = task }
                finished.store(0, ordering: .sequentiallyConsistent)
                let generation = (claim.load(ordering: .acquiring) >> 32) &+ 1
                claim.store(generation << 32, ordering: .releasing)
                pthread_mutex_lock(sleep)
                pthread_cond_broadcast(wake)
                pthread_mutex_unlock(sleep)
                var mine = 0
                while let k = claimTask(generation) {
                    task(k)
                    mine += 1
                    finished.add(1, ordering: .releasing)
                }
                var spins = 0
                while finished.load(ordering: .acquiring) < count {
                    spins += 1
                    if spins > 1000 { sched_yield() }
                }
                self.task.withLock { $0 = nil }
                return mine
            }
        }
        guard let ran else {
            for k in 0..<count { task(k) }
            return 0
        }
        return count - ran
    }

    /// The next task of `generation`, claimed, or nil when it has none left (or a later one began).
    private func claimTask(_ generation: UInt64) -> Int? {
        var current = claim.load(ordering: .acquiring)
        while current >> 32 == generation, Int(current & 0xffff_ffff) < count {
            let (exchanged, original) = claim.compareExchange(
                expected: current, desired: current &+ 1, ordering: .acquiringAndReleasing)
            if exchanged { return Int(current & 0xffff_ffff) }
            current = original
        }
        return nil
    }

    /// Runs claimed task k; the task is released before this returns (the caller's closure must not
    /// outlive its step: withoutActuallyEscaping checks it).
    @inline(never)
    private func runTask(_ k: Int) {
        let body = task.withLock { $0 }
        body?(k)
    }

    private func work() {
        var seen: UInt64 = 0
        while true {
            var spins = 0
            while claim.load(ordering: .acquiring) >> 32 == seen {
                spins += 1
                if spins < Self.spinsBeforeSleep { continue }
                pthread_mutex_lock(sleep)
                while claim.load(ordering: .acquiring) >> 32 == seen { pthread_cond_wait(wake, sleep) }
                pthread_mutex_unlock(sleep)
            }
            seen = claim.load(ordering: .acquiring) >> 32
            while let k = claimTask(seen) {
                runTask(k)
                finished.add(1, ordering: .releasing)
            }
        }
    }

    /// The online CPUs, at most 4 (a scan's lookups stop scaling at memory bandwidth), at least 1.
    public static var defaultCount: Int {
        let online = sysconf(Int32(_SC_NPROCESSORS_ONLN))
        return max(1, min(online > 0 ? online : 1, 4))
    }
}
