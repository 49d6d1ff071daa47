import Testing
@testable import KmemleakEngine

/// The confirmation's written-ranges filter (`ConfirmationHooks.unchangedMemory`): what the caller vouches
/// unchanged since before the main pass is not re-read; everything else is, as before.
@Suite struct UnchangedMemoryTests {
    static let heap = MemoryRange(address: 0x10000, length: 0x30000)
    static let rootPage = MemoryRange(address: World.root, length: 0x100)

    /// A pointer to A moves from G into the root while the main pass reads G (as in ConfirmationTests);
    /// A points to B. The confirmation is given `unchanged` and, frozen, registers `young` objects.
    func run(unchanged: [MemoryRange], young: ((World) -> Void)? = nil) -> (reported: [UInt64], result: ScanResult) {
        let w = World(minAge: 25 * sec, passes: 1)
        let G = D
        w.obj(G)
        w.obj(A)
        w.obj(B)
        w.root(0, G)
        w.ptr(A, B)
        w.scan()
        w.scan()
        w.ptr(G, A)
        w.movePointer(whenReading: G, from: G, to: World.root + 8, target: A)
        let hooks = ConfirmationHooks(begin: { young?(w); return [] }, end: {},
                                      unchangedMemory: { UnchangedMemory(unchanged) })
        w.now += 10 * sec
        let r = w.e.scan(now: w.now, memory: w.mem, confirmation: hooks)
        return (w.e.reported(w.mem), r)
    }

    @Test func aPointerMovedIntoChangedMemoryIsFoundReadingOnlyThat() {
        let (reported, r) = run(unchanged: [Self.heap])
        #expect(reported == [])
        #expect(r.filteredConfirmation && r.sparedByConfirmation == 2)
        // The root (256 bytes) and the spared candidates A and B (64 each): not the gray object G.
        #expect(r.bytesConfirmed == 0x100 + 64 + 64)
    }

    @Test func memoryVouchedUnchangedIsNotReRead() {
        // The caller's word is taken: the root is not re-read, the move is not seen.
        let (reported, r) = run(unchanged: [Self.heap, Self.rootPage])
        #expect(reported == [A, B])
        #expect(r.filteredConfirmation && r.bytesConfirmed == 0)
    }

    @Test func theChangedPartOfAGrayObjectIsReRead() {
        // The pointer to A moves from H (read in a later batch: G points to it) into G (already read):
        // only G's first 16 bytes are declared changed, and they are what the confirmation reads (then
        // the spared A).
        let w = World(minAge: 25 * sec, passes: 1)
        let G = D, H = C
        w.obj(G)
        w.obj(H)
        w.obj(A)
        w.root(0, G)
        w.ptr(G + 48, H)
        w.scan()
        w.scan()
        w.ptr(H + 32, A)
        w.movePointer(whenReading: H, from: H + 32, to: G + 8, target: A)
        let unchanged = [Self.rootPage, MemoryRange(address: 0x10000, length: Int(G - 0x10000)),
                         MemoryRange(address: G + 16, length: 0x40000 - Int(G) - 16)]
        let hooks = ConfirmationHooks(begin: { [] }, end: {}, unchangedMemory: { UnchangedMemory(unchanged) })
        w.now += 10 * sec
        let r = w.e.scan(now: w.now, memory: w.mem, confirmation: hooks)
        #expect(w.e.reported(w.mem) == [])
        #expect(r.filteredConfirmation && r.sparedByConfirmation == 1)
        #expect(r.bytesConfirmed == 16 + 64)
    }

    @Test func anObjectRegisteredWhileFrozenIsReadWhole() {
        // C appears while frozen (the daemon's re-sync), in memory vouched unchanged, and holds the only
        // pointer to the candidate A: it was never read by the main pass, so it is read whole.
        let (reported, r) = run(unchanged: [Self.heap, Self.rootPage]) { w in
            w.ptr(C, A)
            w.obj(C)
        }
        #expect(reported == [])
        #expect(r.filteredConfirmation && r.sparedByConfirmation == 2)
    }

    @Test func aCandidateTurnedGrayWhileFrozenIsReadWhole() {
        // not_leak(A) arrives with the frozen re-sync: A, never read by the main pass, is read whole and
        // keeps B, though all the memory is vouched unchanged.
        let w = World(minAge: 25 * sec, passes: 1)
        w.obj(A)
        w.obj(B)
        w.ptr(A, B)
        w.scan()
        w.scan()
        let hooks = ConfirmationHooks(begin: { w.e.notLeak(A); return [] }, end: {},
                                      unchangedMemory: { UnchangedMemory([Self.heap, Self.rootPage]) })
        w.now += 10 * sec
        let r = w.e.scan(now: w.now, memory: w.mem, confirmation: hooks)
        #expect(w.e.reported(w.mem) == [])
        #expect(r.filteredConfirmation && r.bytesConfirmed == 64 + 64)
    }

    @Test func aCandidateCountedOnceWithMinCountTwoFallsBackToAFullReRead() {
        let w = World(minAge: 25 * sec, passes: 1)
        w.obj(A, minCount: 2)
        w.root(0, A)
        w.scan()
        w.scan()
        let hooks = ConfirmationHooks(begin: { [] }, end: {}, unchangedMemory: { UnchangedMemory([Self.heap, Self.rootPage]) })
        w.now += 10 * sec
        let r = w.e.scan(now: w.now, memory: w.mem, confirmation: hooks)
        #expect(!r.filteredConfirmation && r.bytesConfirmed > 0)
        #expect(w.e.reported(w.mem) == [A])  // one reference, min_count 2: a leak by the kernel's rule
    }

    @Test func unchangedRangesAreMergedAndSubtracted() {
        let u = UnchangedMemory([MemoryRange(address: 0x3000, length: 0x1000), MemoryRange(address: 0x1000, length: 0x1000),
                                 MemoryRange(address: 0x2000, length: 0x800), MemoryRange(address: 0x9000, length: 0)])
        #expect(u.ranges == [MemoryRange(address: 0x1000, length: 0x1800), MemoryRange(address: 0x3000, length: 0x1000)])
        let parts = u.changedParts(0x800, 0x5000)
        #expect(parts.map { [$0.start, $0.end] } == [[0x800, 0x1000], [0x2800, 0x3000], [0x4000, 0x5000]])
    }
}
