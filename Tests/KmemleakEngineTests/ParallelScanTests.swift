import Dispatch
import Synchronization
import Testing
@testable import KmemleakEngine

/// A flat memory image read with memcpy, safe to read from several threads (it counts nothing).
final class ConcurrentMemory: MemoryReader, @unchecked Sendable {
    let base: UInt64
    let bytes: UnsafeMutableRawBufferPointer
    var allowsConcurrentReads: Bool { true }

    init(base: UInt64, size: Int) {
        self.base = base
        bytes = UnsafeMutableRawBufferPointer.allocate(byteCount: size, alignment: 16)
        bytes.initializeMemory(as: UInt8.self, repeating: 0)
    }

    deinit { bytes.deallocate() }

    func store(_ address: UInt64, _ value: UInt64) {
        bytes.storeBytes(of: value, toByteOffset: Int(address - base), as: UInt64.self)
    }

    func read(_ ranges: UnsafeBufferPointer<MemoryRange>, into buffer: UnsafeMutableRawBufferPointer,
              bytesRead: UnsafeMutableBufferPointer<Int>) {
        var offset = 0
        for (i, r) in ranges.enumerated() {
            var n = 0
            if r.address >= base && r.address - base < UInt64(bytes.count) {
                let o = Int(r.address - base)
                n = min(r.length, bytes.count - o)
                (buffer.baseAddress! + offset).copyMemory(from: bytes.baseAddress! + o, byteCount: n)
            }
            bytesRead[i] = n
            offset += r.length
        }
    }
}

/// Workers on Dispatch's thread pool: the parallel scan with real threads.
struct DispatchScanWorkers: ScanWorkers {
    let count: Int
    func run(_ task: @Sendable (Int) -> Void) -> Int? {
        DispatchQueue.concurrentPerform(iterations: count, execute: task)
        return nil
    }
}

/// Runs every task on the calling thread and reports that other threads ran `helped` of them: how a pool
/// whose threads come late (or early) looks to the scan. Counts its steps.
final class ReportingScanWorkers: ScanWorkers, @unchecked Sendable {
    let count: Int
    let helped: Int
    private let steps = Mutex(0)
    var stepsRun: Int { steps.withLock { $0 } }

    init(count: Int, helped: Int) {
        self.count = count
        self.helped = helped
    }

    func run(_ task: @Sendable (Int) -> Void) -> Int? {
        steps.withLock { $0 += 1 }
        for k in 0..<count { task(k) }
        return helped
    }
}

/// `memory` read on the scanning thread only: the workers' steps are then the groups' lookups alone.
struct ReadsOnTheScanningThread: MemoryReader {
    let memory: ConcurrentMemory
    var allowsConcurrentReads: Bool { false }
    func read(_ ranges: UnsafeBufferPointer<MemoryRange>, into buffer: UnsafeMutableRawBufferPointer,
              bytesRead: UnsafeMutableBufferPointer<Int>) {
        memory.read(ranges, into: buffer, bytesRead: bytesRead)
    }
}

/// A heap with what a word of a real one may be: exact and interior pointers, words inside the heap that
/// start no object, pointers just past an object, glibc chunk headers, array cookies (`new T[0]`), and
/// objects of every colour: min_count 0 (grey), 1, 2 and -1 (black), NO_SCAN, a vmalloc block with its
/// excess_ref, scan areas. Deterministic for a seed.
struct MixedHeap {
    static let rootBase: UInt64 = 0x7000_0000
    static let rootWords = 512
    static let heapBase: UInt64 = 0x7000_4000
    var addresses: [UInt64] = []
    var sizes: [Int] = []
    let memory: ConcurrentMemory
    let end: UInt64
    var seed: UInt64

    mutating func next() -> UInt64 { seed ^= seed << 13; seed ^= seed >> 7; seed ^= seed << 17; return seed }

    init(objects: Int, seed: UInt64) {
        self.seed = seed | 1
        var top = Self.heapBase + 16
        var sizes: [Int] = []
        var addresses: [UInt64] = []
        var s = self.seed
        func rnd() -> UInt64 { s ^= s << 13; s ^= s >> 7; s ^= s << 17; return s }
        for i in 0..<objects {
            let r = rnd() % 100
            let size = i % 97 == 5 ? 8 : r < 60 ? 16 + Int(rnd() % 48) : r < 95 ? 64 + Int(rnd() % 448) : 512 + Int(rnd() % 3584)
            sizes.append(size)
            addresses.append(top)
            top += UInt64(max(32, (size + 8 + 15) & ~15))
        }
        self.seed = s
        self.sizes = sizes
        self.addresses = addresses
        end = top
        memory = ConcurrentMemory(base: Self.rootBase, size: Int(top - Self.rootBase) + 4096)
        let lo = addresses[0], hi = top
        for i in 0..<objects {
            // Array-cookie blocks: first word 0 or 1.
            if sizes[i] == 8 { memory.store(addresses[i], UInt64(i & 1)); continue }
            for w in 0..<(sizes[i] / 8) {
                let r = next() % 100
                var v: UInt64 = 0
                let target = Int(next() % UInt64(objects))
                // Objects 0, 7, 14, ... are referenced by no pointer: the leaks (bar a rare random word).
                let referable = target % 7 == 0 ? max(1, target - 1) : target
                if r < 12 { v = addresses[referable] }
                else if r < 15 { v = addresses[referable] + 8 * (next() % 3) }
                else if r < 17 { v = addresses[target] + UInt64(sizes[target]) }  // just past the end
                else if r < 19 { v = addresses[target] &- 16 }  // a chunk header
                else if r < 30 { v = addresses[target] + UInt64(sizes[target]) + 1 + next() % 7 }  // no object's
                else if r < 50 { v = next() % 100_000 }
                else if next() % 2000 == 0 { v = lo + next() % (hi - lo) }
                memory.store(addresses[i] + UInt64(w * 8), v)
            }
        }
        for k in 0..<Self.rootWords {
            let r = next() % 4
            memory.store(Self.rootBase + UInt64(k * 8), r == 0 ? 0 : addresses[Int(next() % UInt64(objects))])
        }
    }

    /// An engine over this heap with `workers`.
    func engine(workers: (any ScanWorkers)?, skipsDoneGranules: Bool = true) -> Kmemleak {
        var config = KmemleakConfiguration(possibleCPUs: 1, minimumAge: 0, confirmationPasses: 1)
        config.scanWorkers = workers
        config.skipsDoneGranules = skipsDoneGranules
        let e = Kmemleak(configuration: config)
        e.setRoots([RootRegion(start: Self.rootBase, length: UInt64(Self.rootWords * 8), kind: .data),
                    // Allocator data: the first heap objects, where glibc's chunk-header words are skipped.
                    RootRegion(start: addresses[0], length: 4096, kind: .data, isAllocatorData: true)])
        for (i, a) in addresses.enumerated() {
            let minCount: Int32 = i % 53 == 7 ? 0 : i % 41 == 3 ? 2 : i % 67 == 9 ? -1 : 1
            e.alloc(a, size: UInt64(sizes[i]), minCount: minCount, mallocChunk: i % 3 != 0, metadata: meta(UInt64(i)))
            if i % 89 == 11 { e.noScan(a) }
            if i % 101 == 13 && sizes[i] >= 64 { e.scanArea(a + 16, size: 32) }
        }
        // A vmalloc block whose vm_struct twin is an ordinary object: surplus references to the twin count
        // for the block.
        e.vmalloc(area: addresses[20], pointer: end + 0x10_0000, size: 100, metadata: meta(UInt64(addresses.count)))
        return e
    }
}

/// Everything the engine knows of each object after a scan (counts, flags, checksums), by pointer.
func objectStates(_ e: Kmemleak) -> [ObjectInfo] {
    var all: [ObjectInfo] = []
    e.forEachObject { all.append($0) }
    return all.sorted { $0.pointer < $1.pointer }
}

@Suite struct ParallelScanTests {
    /// The same heap scanned serially and with 2, 3 and 4 tasks (run inline, one after the other, and on
    /// real threads): after every scan each object has the same count, flags and checksum, the same
    /// objects are reported, and the scans read the same bytes.
    @Test(arguments: [
        InlineScanWorkers(count: 2) as any ScanWorkers, InlineScanWorkers(count: 3), DispatchScanWorkers(count: 2),
        DispatchScanWorkers(count: 4),
    ])
    func sameResultsAsSerial(workers: any ScanWorkers) {
        let heap = MixedHeap(objects: 12_000, seed: 0x9e37_79b9_7f4a_7c15)
        let serial = heap.engine(workers: nil)
        let parallel = heap.engine(workers: workers)
        var leaks = 0
        for k in 1...3 {
            let now = UInt64(k) * 10 * sec
            let a = serial.scan(now: now, memory: heap.memory)
            let b = parallel.scan(now: now, memory: heap.memory)
            #expect(a == b, "scan \(k)")
            let x = objectStates(serial), y = objectStates(parallel)
            #expect(x.count == y.count && zip(x, y).filter { $0 != $1 }.isEmpty,
                    "scan \(k): \(zip(x, y).filter { $0 != $1 }.count) objects differ, first \(zip(x, y).first { $0 != $1 }.map { "\($0)" } ?? "-")")
            #expect(serial.reportSnapshot(memory: heap.memory).map(\.pointer)
                == parallel.reportSnapshot(memory: heap.memory).map(\.pointer), "scan \(k)")
            leaks += a.newLeaks
            if k == 1 {
                // The heap is one where the scan has work: referenced objects, and several groups.
                #expect(a.bytesScanned > 8 * parallelScanSize)
                #expect(objectStates(serial).contains { $0.count > 1 })
            }
        }
        #expect(leaks > 1000)
        // The array-cookie rule and the chunk-header rule had words to judge.
        let states = objectStates(serial)
        #expect(states.contains { $0.size == 8 && $0.count > 0 })
    }

    /// Workers that take under a third of a step's tasks get most of the scan back on the scanning thread
    /// (`StepSplitting`): far fewer steps are split than with workers that take their half, and the results
    /// are still the serial scan's.
    @Test func workersThatComeLateGetFewerSplitSteps() {
        let heap = MixedHeap(objects: 60_000, seed: 7)
        let memory = ReadsOnTheScanningThread(memory: heap.memory)
        let serial = heap.engine(workers: nil)
        let late = ReportingScanWorkers(count: 8, helped: 1)
        let helping = ReportingScanWorkers(count: 8, helped: 4)
        let withLate = heap.engine(workers: late)
        let withHelp = heap.engine(workers: helping)
        for k in 1...2 {
            let now = UInt64(k) * 10 * sec
            let a = serial.scan(now: now, memory: memory)
            #expect(withLate.scan(now: now, memory: memory) == a, "scan \(k)")
            #expect(withHelp.scan(now: now, memory: memory) == a, "scan \(k)")
            #expect(a.bytesScanned > 2 * StepSplitting.pauseBytes, "scan \(k): the heap outlasts two pauses")
            let x = objectStates(serial)
            #expect(objectStates(withLate) == x && objectStates(withHelp) == x, "scan \(k)")
            #expect(serial.reportSnapshot(memory: heap.memory).map(\.pointer)
                == withLate.reportSnapshot(memory: heap.memory).map(\.pointer), "scan \(k)")
        }
        #expect(late.stepsRun > 0)
        #expect(late.stepsRun * 3 < helping.stepsRun, "late \(late.stepsRun) steps, helping \(helping.stepsRun)")
    }

    /// With per-CPU objects no step can be split, so a scan with workers holds the state lock for the serial
    /// scan's MAX_SCAN_SIZE groups (one `shouldStop` check each), not for split steps' larger ones that it
    /// would then scan whole. Without per-CPU objects the same heap takes fewer, larger holds.
    @Test func unsplittableGroupsAreMaxScanSize() {
        let heap = MixedHeap(objects: 20_000, seed: 11)
        func holds(workers: (any ScanWorkers)?, percpu: Bool) -> (holds: Int, result: ScanResult) {
            let e = heap.engine(workers: workers)
            if percpu { e.allocPercpu(heap.end + 0x10_0000, size: 64, metadata: meta(900_000)) }
            var checks = 0
            let r = e.scan(now: 10 * sec, memory: heap.memory, shouldStop: { checks += 1; return false })
            return (checks, r)
        }
        let serial = holds(workers: nil, percpu: true)
        let parallel = holds(workers: InlineScanWorkers(count: 2), percpu: true)
        #expect(parallel.result == serial.result)
        #expect(parallel.holds == serial.holds, "with workers \(parallel.holds) checks, serial \(serial.holds)")
        let split = holds(workers: InlineScanWorkers(count: 2), percpu: false)
        #expect(split.holds < serial.holds, "split steps \(split.holds) checks, serial \(serial.holds)")
    }

    /// Leaks planted in a heap (unreferenced blocks) are all found by the parallel scan, and nothing else
    /// that the serial scan does not report.
    @Test func plantedLeaksFound() {
        let heap = MixedHeap(objects: 6000, seed: 42)
        let planted = (0..<50).map { heap.end + 0x1000 + UInt64($0) * 256 }
        let e = heap.engine(workers: DispatchScanWorkers(count: 2))
        for (k, p) in planted.enumerated() { e.alloc(p, size: 128, metadata: meta(UInt64(100_000 + k))) }
        let s = heap.engine(workers: nil)
        for (k, p) in planted.enumerated() { s.alloc(p, size: 128, metadata: meta(UInt64(100_000 + k))) }
        _ = e.scan(now: 10 * sec, memory: heap.memory)
        _ = s.scan(now: 10 * sec, memory: heap.memory)
        let found = Set(e.reportSnapshot(memory: heap.memory).map(\.pointer))
        #expect(found.isSuperset(of: planted))
        #expect(found == Set(s.reportSnapshot(memory: heap.memory).map(\.pointer)))
    }

    /// A reader that does not allow concurrent reads is read on the scanning thread only, even with
    /// workers (the lookups are still shared): SyntheticMemory counts its calls unsynchronised.
    @Test func serialReaderWithWorkers() {
        let mem = SyntheticMemory()
        mem.map(World.root, 0x100)
        mem.map(0x10000, 0x30000)
        var config = KmemleakConfiguration(possibleCPUs: 1, minimumAge: 0)
        config.scanWorkers = DispatchScanWorkers(count: 2)
        let e = Kmemleak(configuration: config)
        e.setRoots([RootRegion(start: World.root, length: 0x100, kind: .data)])
        for (k, p) in [A, B, C].enumerated() { e.alloc(p, size: 64, metadata: meta(UInt64(k))) }
        mem.write64(World.root, A)
        mem.write64(A, B)
        #expect(e.scan(now: 10 * sec, memory: mem).newLeaks == 1)
        #expect(e.reported(mem) == [C])
    }
}

/// The scan skips the lookup of a word that points into the chunk being scanned (into the scanned object
/// itself: a self-reference, which a lookup would find and ignore). What must still count, serially and
/// with the lookups shared among workers: the addresses just outside the scanned block (the end of the
/// block before, the start of the block after), and a root region's word pointing into a block that lies
/// inside the region (a thread stack in a malloc'd block).
@Suite struct OwnRangeTests {
    static let workerChoices: [(any ScanWorkers)?] = [nil, InlineScanWorkers(count: 2)]

    /// An engine over memory with World's root, the extra `roots`, and `workers`.
    func engine(_ workers: (any ScanWorkers)?, roots: [RootRegion] = []) -> (Kmemleak, SyntheticMemory) {
        let mem = SyntheticMemory()
        mem.map(World.root, 0x100)
        mem.map(0xf000, 0x1000)
        mem.map(0x10000, 0x30000)
        var config = KmemleakConfiguration(possibleCPUs: 1, minimumAge: 0)
        config.scanWorkers = workers
        let e = Kmemleak(configuration: config)
        e.setRoots([RootRegion(start: World.root, length: 0x100, kind: .data)] + roots)
        return (e, mem)
    }

    func settle(_ e: Kmemleak, _ mem: SyntheticMemory) -> [UInt64] {
        _ = e.scan(now: 10 * sec, memory: mem)
        _ = e.scan(now: 20 * sec, memory: mem)
        return e.reported(mem)
    }

    @Test(arguments: workerChoices)
    func neighboursOfTheScannedBlockCount(workers: (any ScanWorkers)?) {
        let (e, mem) = engine(workers)
        e.alloc(A - 64, size: 64, metadata: meta(1))  // ends where A starts
        e.alloc(A, size: 64, metadata: meta(2))
        e.alloc(A + 64, size: 64, metadata: meta(3))  // starts where A ends
        e.alloc(B, size: 64, metadata: meta(4))
        mem.write64(World.root, A)
        mem.write64(A, A + 32)  // into A itself
        mem.write64(A + 8, A &- 1)  // the last byte of the block before
        mem.write64(A + 16, A + 63)  // A's own last byte
        mem.write64(A + 24, A + 64)  // A's end: the block after
        mem.write64(B, B + 8)  // B's only reference is its own
        #expect(settle(e, mem) == [B])
    }

    @Test(arguments: workerChoices)
    func rootRegionOverABlockReferencesIt(workers: (any ScanWorkers)?) {
        let (e, mem) = engine(workers, roots: [RootRegion(start: C, length: 64, kind: .data)])
        e.alloc(C, size: 64, metadata: meta(1))
        e.alloc(D, size: 64, metadata: meta(2))
        mem.write64(C + 8, C + 16)  // the region's word, into the block inside the region
        mem.write64(D, D)
        #expect(settle(e, mem) == [D])
    }
}

/// A ConcurrentMemory that calls `beforeRead` first (from the reading thread, with no engine lock held).
final class HookedMemory: MemoryReader, @unchecked Sendable {
    let inner: ConcurrentMemory
    var beforeRead: ([MemoryRange]) -> Void = { _ in }
    init(_ inner: ConcurrentMemory) { self.inner = inner }
    func read(_ ranges: UnsafeBufferPointer<MemoryRange>, into buffer: UnsafeMutableRawBufferPointer,
              bytesRead: UnsafeMutableBufferPointer<Int>) {
        beforeRead(Array(ranges))
        inner.read(ranges, into: buffer, bytesRead: bytesRead)
    }
}

/// The words dropped before their lookup because they land in a granule wholly inside an object already
/// done (`DoneGranules`) are words on which the scan would do nothing.
@Suite struct DoneGranulesTests {
    /// The mixed heap scanned with and without the granules, serially and with workers: every scan has
    /// the same result, every object the same count, flags and checksum, the same report; and the granules
    /// were in use (some set while the scan ran).
    @Test(arguments: [nil, InlineScanWorkers(count: 2) as (any ScanWorkers)?])
    func sameResultsWithoutThem(workers: (any ScanWorkers)?) {
        let heap = MixedHeap(objects: 12_000, seed: 0x2545_f491_4f6c_dd1d)
        let with = heap.engine(workers: workers)
        let without = heap.engine(workers: workers, skipsDoneGranules: false)
        let hooked = HookedMemory(heap.memory)
        var setSeen = 0
        hooked.beforeRead = { _ in
            setSeen += with.withState { s in s.done.words.reduce(0) { $0 + $1.nonzeroBitCount } } > 0 ? 1 : 0
        }
        for k in 1...3 {
            let now = UInt64(k) * 10 * sec
            let a = with.scan(now: now, memory: hooked)
            let b = without.scan(now: now, memory: heap.memory)
            #expect(a == b, "scan \(k)")
            let x = objectStates(with), y = objectStates(without)
            #expect(x.count == y.count && zip(x, y).allSatisfy { $0 == $1 },
                    "scan \(k): \(zip(x, y).filter { $0 != $1 }.count) objects differ")
            #expect(with.reportSnapshot(memory: heap.memory).map(\.pointer)
                == without.reportSnapshot(memory: heap.memory).map(\.pointer), "scan \(k)")
        }
        #expect(setSeen > 0)
        // Released after the scan.
        #expect(with.withState { $0.done.words.isEmpty })
    }

    /// The word that turns an object gray sets its granules at once, as the next word on it would: an
    /// object referenced once from the roots is done before the first gray batch is read. One that needs
    /// two references is not done after one, nor is a gray object with an excess_ref (a word on it still
    /// counts for its excess_ref's object), and each is reported as the kernel would.
    @Test func theWordThatGraysAnObjectMarksItDone() {
        let rootBase: UInt64 = 0x7000_0000, heapBase: UInt64 = 0x7010_0000
        let memory = ConcurrentMemory(base: rootBase, size: 0x20_0000)
        let once = heapBase, twice = heapBase + 0x100, twiceSeen = heapBase + 0x200
        let withExcess = heapBase + 0x300, excessTarget = heapBase + 0x400
        memory.store(rootBase, once)
        memory.store(rootBase + 8, twice)  // one of two references: stays white, reported
        memory.store(rootBase + 16, twiceSeen)
        memory.store(rootBase + 24, twiceSeen + 8)  // two: gray after the second
        memory.store(rootBase + 32, withExcess)
        memory.store(rootBase + 40, withExcess)  // forwarded to excessTarget
        // Enough objects for the index's page -> block table, over which the granules lie.
        let fillers = 4096
        for i in 0..<fillers { memory.store(rootBase + 48 + UInt64(8 * i), heapBase + 0x1000 + UInt64(64 * i)) }
        let e = Kmemleak(configuration: KmemleakConfiguration(possibleCPUs: 1, minimumAge: 0))
        e.setRoots([RootRegion(start: rootBase, length: 48 + UInt64(8 * fillers), kind: .data)])
        for i in 0..<fillers { e.alloc(heapBase + 0x1000 + UInt64(64 * i), size: 64, metadata: meta(UInt64(10 + i))) }
        e.alloc(once, size: 64, metadata: meta(0))
        e.alloc(twice, size: 64, minCount: 2, metadata: meta(1))
        e.alloc(twiceSeen, size: 64, minCount: 2, metadata: meta(2))
        e.alloc(withExcess, size: 64, metadata: meta(3))
        e.alloc(excessTarget, size: 64, metadata: meta(4))
        e.setExcessRef(withExcess, to: excessTarget)
        let hooked = HookedMemory(memory)
        var seen: [Bool]? = nil
        hooked.beforeRead = { ranges in
            // The first batch of gray objects (the roots were read before).
            guard seen == nil, ranges.contains(where: { $0.address >= heapBase }) else { return }
            seen = e.withState { s in [once, twice, twiceSeen, withExcess].map { s.done.isSet($0 + 16) } }
        }
        _ = e.scan(now: 10 * sec, memory: hooked)
        #expect(seen == [true, false, true, false])
        #expect(e.reportSnapshot(memory: memory).map(\.pointer) == [twice])
        #expect(e.objectInfo(at: excessTarget)?.count == 1)
    }

    /// An object done (its granules set) and freed while the scan runs leaves no set granule behind, nor
    /// does one registered at its place; the newcomer's reference still counts.
    @Test func freedAndReplacedDuringAScanAreCleared() {
        let rootBase: UInt64 = 0x7000_0000, heapBase: UInt64 = 0x7010_0000
        let objects = 4096
        let memory = ConcurrentMemory(base: rootBase, size: 0x20_0000)
        // The root points at every object twice: all are done once the roots are scanned.
        for i in 0..<objects {
            memory.store(rootBase + UInt64(16 * i), heapBase + UInt64(64 * i))
            memory.store(rootBase + UInt64(16 * i + 8), heapBase + UInt64(64 * i))
        }
        let x = heapBase + 640          // object 10: freed and replaced during the scan
        let w = heapBase + 64 * 4000    // scanned after that: points at x's place
        let z = heapBase + 64 * UInt64(objects) + 4096  // referenced only by the newcomer at x's place
        memory.store(w, x)
        let e = Kmemleak(configuration: KmemleakConfiguration(possibleCPUs: 1, minimumAge: 0))
        e.setRoots([RootRegion(start: rootBase, length: UInt64(16 * objects), kind: .data)])
        for i in 0..<objects { e.alloc(heapBase + UInt64(64 * i), size: 64, metadata: meta(UInt64(i))) }
        e.alloc(z, size: 64, metadata: meta(UInt64(objects)))
        let hooked = HookedMemory(memory)
        var replaced = false
        var before = false, afterFree = true, afterAlloc = true
        hooked.beforeRead = { ranges in
            // The first batch of gray objects (the roots were read before).
            guard !replaced, ranges.contains(where: { $0.address >= heapBase && $0.address < z }) else { return }
            replaced = true
            before = e.withState { $0.done.isSet(x + 16) }
            e.free(x)
            afterFree = e.withState { $0.done.isSet(x + 16) || $0.done.isSet(x) }
            memory.store(x, z)
            e.alloc(x, size: 64, metadata: meta(UInt64(objects + 1)))
            afterAlloc = e.withState { $0.done.isSet(x + 16) || $0.done.isSet(x) }
        }
        _ = e.scan(now: 10 * sec, memory: hooked)
        #expect(replaced)
        #expect(before)
        #expect(!afterFree)
        #expect(!afterAlloc)
        // w's word reached the newcomer, which was scanned: z is referenced.
        #expect(e.objectInfo(at: x)?.count == 1)
        #expect(e.reportSnapshot(memory: memory).isEmpty)
    }
}
