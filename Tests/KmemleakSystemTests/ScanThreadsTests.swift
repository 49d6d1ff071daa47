import Glibc
import Synchronization
import Testing
import KmemleakEngine
@testable import KmemleakSystem

final class TaskCounts: Sendable {
    let counts: Mutex<[Int]>
    init(_ n: Int) { counts = Mutex(Array(repeating: 0, count: n)) }
    func add(_ k: Int) { counts.withLock { $0[k] += 1 } }
    var all: [Int] { counts.withLock { $0 } }
}

@Suite struct ScanThreadsTests {
    /// Step after step, every task runs exactly once before `run` returns.
    @Test func everyTaskOncePerStep() {
        let pool = ScanThreads.pool(threads: 3)
        let counts = TaskCounts(pool.count)
        var ok = true
        for step in 1...20_000 {
            pool.run { k in counts.add(k) }
            if step % 1000 == 0 { ok = ok && counts.all == Array(repeating: step, count: pool.count) }
        }
        #expect(ok)
        #expect(counts.all == Array(repeating: 20_000, count: pool.count))
    }

    /// One step of tasks that note whether they ran on the calling thread: what `run` answered, and how
    /// many ran elsewhere.
    static func step(_ pool: ScanThreads) -> (answered: Int?, elsewhere: Int) {
        let caller = pthread_self()
        let elsewhere = Atomic<Int>(0)
        let answered = pool.run { _ in
            var x = 0
            for i in 0..<2000 { x &+= i }  // long enough that the other thread may take some
            if pthread_equal(pthread_self(), caller) == 0 { elsewhere.add(1, ordering: .relaxed) }
            _ = x
        }
        return (answered, elsewhere.load(ordering: .relaxed))
    }

    /// `run` answers how many of the step's tasks ran on threads other than the caller's, exactly (the scan
    /// splits its steps only while they help), with one caller and with several at once.
    @Test func runCountsTheTasksOtherThreadsRan() async {
        let pool = ScanThreads.pool(threads: 2)
        var wrong: [(Int?, Int)] = []
        for _ in 0..<2000 {
            let r = Self.step(pool)
            if r.answered != r.elsewhere { wrong.append(r) }
        }
        #expect(wrong.isEmpty, "\(wrong.count) wrong answers, first \(String(describing: wrong.first))")
        let wrongConcurrent = TaskCounts(1)
        await withTaskGroup(of: Void.self) { group in
            for _ in 0..<3 {
                group.addTask {
                    for _ in 0..<500 {
                        let r = Self.step(pool)
                        if r.answered != r.elsewhere { wrongConcurrent.add(0) }
                    }
                }
            }
        }
        #expect(wrongConcurrent.all == [0])
    }

    /// Several threads calling one pool at once: each call still runs its tasks once (a second caller
    /// runs its own), and none waits forever.
    @Test func concurrentCallers() async {
        let pool = ScanThreads.pool(threads: 2)
        let counts = TaskCounts(pool.count)
        await withTaskGroup(of: Void.self) { group in
            for _ in 0..<4 {
                group.addTask { for _ in 0..<2000 { pool.run { k in counts.add(k) } } }
            }
        }
        #expect(counts.all == Array(repeating: 8000, count: pool.count))
    }

    /// The pool of a thread count is made once per process; it cuts a step into 4 tasks per thread (1
    /// thread: the serial scan).
    @Test func onePoolPerThreadCount() {
        #expect(ScanThreads.pool(threads: 2) === ScanThreads.pool(threads: 2))
        #expect(ScanThreads.pool(threads: 2).count == 8)
        #expect(ScanThreads.pool(threads: 1).count == 1)
    }
}
