import Testing
@testable import KmemleakEngine

/// glibc's malloc bookkeeping (main_arena's top/bins/last_remainder point at chunk headers) and the
/// array cookie of C++ `new T[0]` (LeakSanitizer's IsSpecialCaseOfOperatorNew0).
@Suite struct AllocatorRuleTests {
    /// A data root at 0x1000 (the program's), allocator data at 0x2000 (libc.so.6's), a heap at 0x10000.
    final class Heap {
        let mem = SyntheticMemory()
        let e: Kmemleak
        var seq: UInt64 = 0
        var now: UInt64 = 0
        static let programData: UInt64 = 0x1000
        static let allocatorData: UInt64 = 0x2000
        static let rootLength = 0x1000

        init(passes: Int = 0, minAge: UInt64 = 0) {
            e = makeEngine(minAge: minAge, passes: passes)
            mem.map(Self.programData, Self.rootLength)
            mem.map(Self.allocatorData, Self.rootLength)
            mem.map(0x10000, 0x40000)
            e.setRoots([
                RootRegion(start: Self.programData, length: UInt64(Self.rootLength), kind: .data),
                RootRegion(start: Self.allocatorData, length: UInt64(Self.rootLength), kind: .data, isAllocatorData: true),
            ])
        }

        func malloc(_ p: UInt64, _ size: UInt64, mallocChunk: Bool = true) {
            seq += 1
            e.alloc(p, size: size, mallocChunk: mallocChunk, metadata: meta(seq, at: now))
        }

        func scan() -> ScanResult {
            now += 10 * sec
            return e.scan(now: now, memory: mem)
        }

        func settle() -> Set<UInt64> {
            _ = scan()
            _ = scan()
            return Set(e.reported(mem))
        }
    }

    /// glibc x86-64: a block of `size` bytes at p has its chunk at p - 16, of max(32, (size + 23) & ~15) bytes.
    static func nextHeader(_ p: UInt64, _ size: UInt64) -> UInt64 { p - 16 + max(32, (size + 23) & ~15) }

    static let sizes: [UInt64] = Array(1...200)
    static func block(_ i: Int) -> UInt64 { 0x10000 + UInt64(i) * 0x200 }

    /// Every block leaked, main_arena-like words pointing at each next chunk header.
    static func leakedBlocksWithArenaWords(in area: UInt64, passes: Int = 0) -> Set<UInt64> {
        let h = Heap(passes: passes)
        for (i, size) in sizes.enumerated() {
            h.malloc(block(i), size)
            h.mem.write64(area + UInt64(i) * 8, nextHeader(block(i), size))
        }
        return h.settle()
    }

    @Test func chunkHeaderWordsInAllocatorDataDoNotHideLeaks() {
        let all = Set(Self.sizes.indices.map(Self.block))
        #expect(Self.leakedBlocksWithArenaWords(in: Heap.allocatorData) == all)
        #expect(Self.leakedBlocksWithArenaWords(in: Heap.allocatorData, passes: 2) == all)
    }

    /// The same words in the program's own data are references: the header lies inside the blocks whose
    /// size mod 16 is 1...8 (above 16), which are kept.
    @Test func chunkHeaderWordsElsewhereAreReferences() {
        let inside = Set(Self.sizes.indices.filter { Self.sizes[$0] > 16 && (1...8).contains(Self.sizes[$0] % 16) }
            .map(Self.block))
        #expect(inside.count == 12 * 8)
        let all = Set(Self.sizes.indices.map(Self.block))
        #expect(Self.leakedBlocksWithArenaWords(in: Heap.programData) == all.subtracting(inside))
    }

    @Test func allocatorDataStillReferencesOtherWords() {
        let h = Heap()
        let a = Self.block(0), b = Self.block(1), c = Self.block(2)
        h.malloc(a, 24)
        h.malloc(b, 24, mallocChunk: false)  // a custom allocator's object: glibc's layout says nothing
        h.malloc(c, 24)
        h.mem.write64(Heap.allocatorData, a)  // a pointer to the block itself
        h.mem.write64(Heap.allocatorData + 8, Self.nextHeader(b, 24))
        h.mem.write64(Heap.allocatorData + 16, Self.nextHeader(c, 24))
        #expect(h.settle() == [c])
    }

    /// A byte that is also another root's (a region the program registered) counts as that root's.
    @Test func allocatorDataCoveredByAnotherRootCountsFully() {
        let h = Heap()
        let a = Self.block(0), b = Self.block(1)
        h.malloc(a, 24)
        h.malloc(b, 24)
        h.mem.write64(Heap.allocatorData + 0x100, Self.nextHeader(a, 24))
        h.mem.write64(Heap.allocatorData + 0x800, Self.nextHeader(b, 24))
        h.e.setRoots([
            RootRegion(start: Heap.allocatorData, length: UInt64(Heap.rootLength), kind: .data, isAllocatorData: true),
            RootRegion(start: Heap.allocatorData + 0x80, length: 0x100, kind: .registered),
        ])
        #expect(h.settle() == [b])
        #expect(EngineState.rootSpans([
            RootRegion(start: 0x1000, length: 0x1000, kind: .data, isAllocatorData: true),
            RootRegion(start: 0x1080, length: 0x100, kind: .registered),
            RootRegion(start: 0x1f00, length: 0x200, kind: .tls),
        ]).map { [$0.id == allocatorRootID ? 1 : 0, $0.start, $0.remaining] } == [
            [1, 0x1000, 0x80], [0, 0x1080, 0x100], [1, 0x1180, 0xd80], [0, 0x1f00, 0x200],
        ])
    }

    /// The shim's tracked blocks carry a 16-byte header and ask glibc for at least 25 bytes (libkmemleak's
    /// README): a block of `size` bytes at p has its chunk at p - 32, of request2size(max(size, 9) + 16)
    /// bytes, so the chunk after it starts where a plain block's would: the rule needs no second form.
    @Test func theShimsHeaderBlocksEndWherePlainBlocksDo() {
        for size: UInt64 in 0...4096 {
            let shimChunkEnd = 0x10010 - 32 + max(32, (max(size, 9) + 16 + 23) & ~15)
            #expect(EngineState.nextChunkHeader(0x10010, size) == shimChunkEnd, "size \(size)")
        }
    }

    @Test func nextChunkHeaderFollowsRequest2size() {
        for size: UInt64 in [0, 1, 8, 9, 24, 25, 40, 41, 4096, 131_072] {
            #expect(EngineState.nextChunkHeader(0x10010, size) == Self.nextHeader(0x10010, size))
        }
        #expect(EngineState.nextChunkHeader(0x10010, .max) != 0)  // wraps, never traps
    }

    // MARK: new T[0]

    @Test func pointerToTheEndOfAZeroArrayCookieKeepsTheBlock() {
        let h = Heap()
        let kept = Self.block(0), nonzeroCookie = Self.block(1), sixteen = Self.block(2), custom = Self.block(3)
        let viaObject = Self.block(4), holder = Self.block(5)
        h.malloc(kept, 8)
        h.malloc(nonzeroCookie, 8)
        h.mem.write64(nonzeroCookie, 3)
        h.malloc(sixteen, 16)
        h.malloc(custom, 8, mallocChunk: false)
        h.malloc(viaObject, 8)
        h.malloc(holder, 64)
        h.mem.write64(Heap.programData, kept + 8)
        h.mem.write64(Heap.programData + 8, nonzeroCookie + 8)
        h.mem.write64(Heap.programData + 16, sixteen + 16)
        h.mem.write64(Heap.programData + 24, custom + 8)
        h.mem.write64(Heap.programData + 32, holder)
        h.mem.write64(holder + 8, viaObject + 8)  // found while scanning the gray list
        #expect(h.settle() == [nonzeroCookie, sixteen, custom])
    }

    /// The pointer moves into the root while the main pass reads: the confirmation pass finds it, and
    /// counts it once it has read the cookie.
    @Test func confirmationCountsPointersToTheEndOfAZeroArrayCookie() {
        for cookie: UInt64 in [0, 1] {
            let h = Heap(passes: 1, minAge: 25 * sec)
            let g = Self.block(0), a = Self.block(1)
            h.malloc(g, 64)
            h.malloc(a, 8)
            h.mem.write64(a, cookie)
            h.mem.write64(Heap.programData, g)
            _ = h.scan()
            _ = h.scan()
            h.mem.write64(g, a + 8)
            var armed = true
            h.mem.beforeRead = { m, ranges in
                if armed && ranges.contains(where: { $0.address == g }) {
                    armed = false
                    m.write64(g, 0)
                    m.write64(Heap.programData + 8, a + 8)
                }
            }
            let r = h.scan()
            #expect(r.sparedByConfirmation == (cookie == 0 ? 1 : 0))
            #expect(Set(h.e.reported(h.mem)) == (cookie == 0 ? [] : [a]))
        }
    }
}
