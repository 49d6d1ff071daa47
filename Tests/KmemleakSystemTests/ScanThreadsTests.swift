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
        let pool = ScanThreads.pool(count: 3)
        let counts = TaskCounts(3)
        var ok = true
        for step in 1...20_000 {
            pool.run { k in counts.add(k) }
            if step % 1000 == 0 { ok = ok && counts.all == [step, step, step] }
        }
        #expect(ok)
        #expect(counts.all == [20_000, 20_000, 20_000])
    }

    /// Several threads calling one pool at once: each call still runs its tasks once (a second caller
    /// runs its own), and none waits forever.
    @Test func concurrentCallers() async {
        let pool = ScanThreads.pool(count: 2)
        let counts = TaskCounts(2)
        await withTaskGroup(of: Void.self) { group in
            for _ in 0..<4 {
                group.addTask { for _ in 0..<2000 { pool.run { k in counts.add(k) } } }
            }
        }
        #expect(counts.all == [8000, 8000])
    }

    /// The pool of a count is made once per process.
    @Test func onePoolPerCount() {
        #expect(ScanThreads.pool(count: 2) === ScanThreads.pool(count: 2))
        #expect(ScanThreads.pool(count: 2).count == 2)
    }
}
