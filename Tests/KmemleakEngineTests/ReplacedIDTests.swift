import Testing
@testable import KmemleakEngine

/// A daemon registers each object at its table slot (`idsChosenByCaller`): the engine's id is the
/// slot, so an object a newer overlapping registration replaced leaves its id empty (the daemon keeps no
/// id to forget), and an id freed and registered again while a scan runs names a young object.
@Suite struct ReplacedIDTests {
    func slotEngine(passes: Int = 0) -> Kmemleak {
        var config = KmemleakConfiguration(minimumAge: 0, confirmationPasses: passes)
        config.replacesStaleObjects = true
        config.idsChosenByCaller = true
        return Kmemleak(configuration: config)
    }

    @Test func aReplacedObjectLeavesItsIDEmpty() {
        let e = slotEngine()
        #expect(e.register(id: 7, 0x10000, size: 64, minCount: 1, percpu: false, metadata: meta(1)))
        #expect(e.register(id: 3, 0x10000, size: 64, minCount: 1, percpu: false, metadata: meta(2)))
        #expect(e.seq(of: 7) == nil)
        #expect(e.seq(of: 3) == 2)
        // The older allocation comes back at its slot: the newer one holds the range.
        #expect(!e.register(id: 7, 0x10000, size: 64, minCount: 1, percpu: false, metadata: meta(1)))
        #expect(e.seq(of: 7) == nil)
        #expect(e.objectCount == 1)
    }

    @Test func registeringAtAnIDThatHoldsAnObjectReplacesIt() {
        let e = slotEngine()
        #expect(e.register(id: 5, 0x10000, size: 64, minCount: 1, percpu: false, metadata: meta(1)))
        #expect(e.register(id: 5, 0x20000, size: 8, minCount: 1, percpu: false, metadata: meta(2)))
        #expect(e.seq(of: 5) == 2)
        #expect(e.pointer(of: 5)?.pointer == 0x20000)
        #expect(e.objectCount == 1)
        #expect(e.objectInfo(at: 0x10000, percpu: false) == nil)
    }

    @Test func theKernelCallsAndOutOfRangeIDsRegisterNothing() {
        let e = slotEngine()
        e.alloc(0x10000, size: 64, metadata: meta(1))
        #expect(e.objectCount == 0)
        #expect(!e.register(id: Kmemleak.chosenIDLimit, 0x10000, size: 64, minCount: 1, percpu: false, metadata: meta(1)))
        #expect(e.objectCount == 0)
        // And an engine that picks its ids refuses a caller's.
        let picking = Kmemleak(configuration: KmemleakConfiguration(minimumAge: 0))
        #expect(!picking.register(id: 1, 0x10000, size: 64, minCount: 1, percpu: false, metadata: meta(1)))
        #expect(picking.objectCount == 0)
    }

    /// Sparse slots cost no record memory for the pages no live object uses, and a page whose last
    /// object goes gives its memory back.
    @Test func recordPagesFollowTheLiveObjects() {
        let e = slotEngine()
        #expect(e.register(id: 1 << 20, 0x10000, size: 64, minCount: 1, percpu: false, metadata: meta(1)))
        #expect(e.register(id: 1 << 20 + 1, 0x20000, size: 64, minCount: 1, percpu: false, metadata: meta(2)))
        let records = { e.memoryBreakdown().first { $0.name == "records" }?.bytes ?? -1 }
        #expect(records() == RecordStore.pageSize * MemoryLayout<ObjectRecord>.stride)
        e.free(object: 1 << 20, ifSeq: 1)
        #expect(records() == RecordStore.pageSize * MemoryLayout<ObjectRecord>.stride)
        e.free(object: 1 << 20 + 1, ifSeq: 2)
        #expect(records() == 0)
        #expect(e.seq(of: 1 << 20 + 1) == nil)
        #expect(e.register(id: 1 << 20 + 1, 0x30000, size: 64, minCount: 1, percpu: false, metadata: meta(3)))
        #expect(e.seq(of: 1 << 20 + 1) == 3)
    }

    /// The client frozen for confirmation, the daemon's sync frees a candidate and registers a new
    /// allocation at the same id: the new object is young (not reported by this scan), the other
    /// candidate is, and the next scan reports the new object if nothing points to it.
    @Test func anIDReusedDuringAScanNamesAYoungObject() {
        let e = slotEngine(passes: 1)
        let mem = SyntheticMemory()
        mem.map(0x10000, 0x1000)
        #expect(e.register(id: 0, 0x10000, size: 64, minCount: 1, percpu: false, metadata: meta(1)))
        #expect(e.register(id: 1, 0x10100, size: 64, minCount: 1, percpu: false, metadata: meta(2)))
        var synced = false
        let hooks = ConfirmationHooks(begin: {
            // The sync: slot 0's object was freed, the slot holds a later allocation.
            e.free(object: 0, ifSeq: 1)
            synced = e.register(id: 0, 0x10200, size: 64, minCount: 1, percpu: false, metadata: meta(3))
            return []
        }, end: {})
        let first = e.scan(now: 10 * sec, memory: mem, confirmation: hooks)
        #expect(synced)
        #expect(first.newLeaks == 1)
        #expect(e.reported(mem) == [0x10100])
        let second = e.scan(now: 20 * sec, memory: mem)
        #expect(second.newLeaks == 1)
        #expect(e.reported(mem) == [0x10100, 0x10200])
    }
}
