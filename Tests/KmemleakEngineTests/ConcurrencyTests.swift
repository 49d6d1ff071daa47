import Synchronization
import Testing
@testable import KmemleakEngine

@Suite struct ConcurrencyTests {
    /// An object registered during a scan (with an old creation time) is not reported by that scan.
    @Test func registeredDuringScanNotReported() {
        let w = World()
        w.obj(A)
        w.root(0, A)
        let e = w.e
        var done = false
        w.mem.beforeRead = { _, _ in
            if !done {
                done = true
                e.alloc(B, size: 64, metadata: meta(9, at: 0))
            }
        }
        #expect(w.scan().newLeaks == 0)
        #expect(w.e.objectCount == 2)
        #expect(w.scan().newLeaks == 1)
        #expect(w.e.reported(w.mem) == [B])
    }

    /// Objects freed while they wait on the gray list are skipped; allocations and frees from other
    /// threads proceed while a scan runs.
    @Test func freeDuringScan() {
        let w = World()
        w.obj(A); w.obj(B); w.obj(C)
        w.root(0, A)
        w.ptr(A, B)
        w.ptr(B, C)
        let e = w.e
        w.mem.beforeRead = { _, ranges in
            if ranges.contains(where: { $0.address == B }) { e.free(C) }
        }
        let r = w.scan()
        #expect(!r.interrupted)
        #expect(e.objectInfo(at: C) == nil)
        #expect(w.settle() == [])
        // Slots freed during the scan are reused afterwards.
        w.obj(C)
        #expect(e.objectCount == 3)
    }

    @Test func parallelCallersDuringScans() async {
        let heap: UInt64 = 0x100_0000
        let mem = SyntheticMemory()
        mem.map(0x1000, 0x1000)
        mem.map(heap, 0x40_0000)
        let e = makeEngine(cpus: 2)
        e.setRoots([RootRegion(start: 0x1000, length: 0x1000, kind: .data)])
        for i in 0..<20_000 { e.alloc(heap + UInt64(i) * 128, size: 128, metadata: meta(UInt64(i))) }
        let scans = Task.detached { () -> Int in
            var n = 0
            for k in 0..<5 { n += e.scan(now: UInt64(k + 1) * 10 * sec, memory: mem).newLeaks }
            return n
        }
        let churn = Task.detached { () -> Int in
            for round in 0..<5 {
                for i in stride(from: round, to: 20_000, by: 7) { e.free(heap + UInt64(i) * 128) }
                for i in stride(from: round, to: 20_000, by: 7) {
                    e.alloc(heap + UInt64(i) * 128, size: 128, metadata: meta(UInt64(100_000 + i)))
                }
                e.notLeak(heap + UInt64(round) * 128)
            }
            return e.objectCount
        }
        let leaks = await scans.value
        let count = await churn.value
        #expect(count == 20_000)
        #expect(e.isEnabled)
        // Each object is reported at most once; re-registered objects are new objects (5 rounds of 2858).
        #expect(leaks <= 20_000 + 5 * 2_858)
        // Everything is eventually reported exactly once (zero contents), except the not_leak ones.
        _ = e.scan(now: 100 * sec, memory: mem)
        #expect(e.reportSnapshot(memory: mem).count == 20_000 - 5)
    }
}

@Suite struct LifecycleTests {
    /// `off` while a scan runs: the scan stops at its next chunk, reports nothing, and nothing crashes
    /// although the metadata is freed under it.
    @Test func disableDuringScan() {
        let w = World()
        for i in 0..<50 { w.obj(A + UInt64(i) * 64) }
        w.root(0, A)
        let e = w.e
        w.mem.beforeRead = { _, ranges in
            if ranges.contains(where: { $0.address == A }) { e.disable() }
        }
        let r = w.scan()
        #expect(r.interrupted)
        #expect(r.newLeaks == 0)
        #expect(!e.isEnabled)
        #expect(e.objectCount == 0)
        #expect(e.reportSnapshot(memory: w.mem) == [])
    }

    @Test func queriesAndSwitches() {
        let log = LogBox()
        let e = Kmemleak(configuration: KmemleakConfiguration(minimumAge: 0, log: { log.append($0) }, logNewLeaks: false))
        let mem = SyntheticMemory()
        mem.map(0x10000, 0x1000)
        e.reserveCapacity(10_000)
        #expect(e.memoryBytes >= 10_000 * MemoryLayout<ObjectRecord>.stride)
        e.alloc(0x10000, size: 64, metadata: meta(1))
        e.alloc(0x10040, size: 64, minCount: 0, metadata: meta(2))
        var seen: [UInt64] = []
        e.forEachObject { seen.append($0.pointer) }
        #expect(seen.sorted() == [0x10000, 0x10040])
        #expect(e.scan(now: sec, memory: mem).newLeaks == 1)
        #expect(!log.all.contains { $0.contains("new suspected memory leaks") })
        #expect(e.memoryBreakdown().map { $0.name }.contains("records"))
        // NULL and error pointers are ignored by every hook, as in the kernel.
        e.alloc(0, size: 8, metadata: meta(3))
        e.alloc(UInt64.max - 10, size: 8, metadata: meta(3))
        e.ignore(0)
        #expect(e.objectCount == 2)
        #expect(log.all.isEmpty)
    }

    @Test func dumpFindsBothSpaces() {
        let w = World()
        w.e.setPercpuLayouts([PercpuLayout(handleStart: A, handleLength: 0x1000, copies: .offsets([0x100_0000]))])
        w.obj(A)
        w.e.allocPercpu(A, size: 32, metadata: meta(5))  // same number, other space: no overlap
        #expect(w.e.isEnabled)
        let lines = w.e.dump(address: A + 8, context: TestContext())!
        #expect(lines.filter { $0.hasPrefix("kmemleak: Object") } == [
            "kmemleak: Object 0x00010000 (size 64):", "kmemleak: Object (percpu) 0x00010000 (size 32):",
        ])
    }
}

@Suite struct VerboseTests {
    @Test func verboseLogsEachNewLeak() {
        let log = LogBox()
        let ctx = TestContext(traces: [4: [0x40_1000]], symbols: [0x40_1000: "main+0x0/0x10"])
        let e = Kmemleak(configuration: KmemleakConfiguration(
            minimumAge: 0, controlFilePath: "/mnt/kmemleak", log: { log.append($0) }, verbose: true, logContext: ctx))
        let mem = SyntheticMemory()
        mem.map(0x10000, 0x100)
        mem.write(0x10000, Array("leak".utf8))
        e.alloc(0x10000, size: 8, metadata: ObjectMetadata(pid: 7, comm: 2, creationTime: 0, trace: 4, seq: 1))
        _ = e.scan(now: sec, memory: mem)  // changed checksum: another chance
        #expect(e.scan(now: 2 * sec, memory: mem).newLeaks == 1)
        let crc = String(CRC32.le(0, Array("leak".utf8) + [0, 0, 0, 0]), radix: 16)
        #expect(log.all == [
            "kmemleak: unreferenced object 0x00010000 (size 8):",
            "kmemleak:   comm \"cat\", pid 7, jiffies 0",
            "kmemleak:   hex dump (first 8 bytes):",
            "kmemleak:     6c 65 61 6b 00 00 00 00                          leak....",
            "kmemleak:   backtrace (crc \(crc)):",
            "kmemleak:     [<0000000000401000>] main+0x0/0x10",
            "kmemleak: 1 new suspected memory leaks (see /mnt/kmemleak)",
        ])
    }
}
