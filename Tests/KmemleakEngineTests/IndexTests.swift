import Testing
@testable import KmemleakEngine

@Suite struct IndexTests {
    struct Rng: RandomNumberGenerator {
        var s: UInt64
        mutating func next() -> UInt64 { s ^= s << 13; s ^= s >> 7; s ^= s << 17; return s }
    }

    /// The page -> block table gives every lookup the answer of the search over the block minima: built
    /// over two heaps far apart (the table covers the larger), then stale after inserts that split blocks
    /// and removes that merge them, then rebuilt.
    @Test func blockTableLookups() {
        var index = IntervalIndex()
        var keys: [UInt64] = []  // sorted: the reference
        var rng = Rng(s: 777)
        /// The number of keys <= addr (a plain binary search).
        func rank(_ addr: UInt64) -> Int {
            var lo = 0, hi = keys.count
            while lo < hi {
                let mid = (lo + hi) / 2
                if keys[mid] <= addr { lo = mid + 1 } else { hi = mid }
            }
            return lo
        }
        func insert(_ key: UInt64, _ id: UInt32) {
            let at = rank(key)
            guard at == 0 || keys[at - 1] != key else { return }
            let h = index.predecessor(key)
            index.insert(id, key: key, afterBlock: h?.b ?? -1, pos: h?.pos ?? -1)
            keys.insert(key, at: at)
        }
        func check(_ label: String) {
            var bad = 0
            for _ in 0..<5000 {
                let k = keys[Int(rng.next() % UInt64(keys.count))]
                for addr in [k, k &+ rng.next() % 300, k &- 1, k &- rng.next() % 5000] {
                    let r = rank(addr)
                    let want: Int? = r > 0 ? r - 1 : nil
                    let got = index.predecessor(addr)
                    let gotKey = got.map { index.mins[$0.b] &+ (index.entries.block(Int(index.phys[$0.b]))[$0.pos] >> 32) }
                    if gotKey != want.map({ keys[$0] }) { bad += 1 }
                }
            }
            #expect(bad == 0, "\(label)")
        }
        var id: UInt32 = 0
        for _ in 0..<30_000 { insert(0x5555_0000_0000 + (rng.next() % (256 << 20)) & ~15, id); id += 1 }
        for _ in 0..<3000 { insert(0x7f00_0000_0000 + (rng.next() % (64 << 20)) & ~15, id); id += 1 }
        check("no table")
        index.refreshBlockTable()
        #expect(index.blockTable.span > 0 && index.blockTable.start >= 0x5555_0000_0000 && index.blockTable.start < 0x7f00_0000_0000)
        #expect(index.blockTable.firsts.count <= max(index.count / 4, 16) + 1)
        check("fresh table")
        for _ in 0..<20_000 { insert(0x5555_0000_0000 + (rng.next() % (300 << 20)) & ~15, id); id += 1 }
        #expect(index.layoutChanges - index.blockTable.builtAt > 64)
        check("stale after inserts")
        for _ in 0..<30_000 {
            let at = Int(rng.next() % UInt64(keys.count))
            guard let h = index.predecessor(keys[at]) else { continue }
            index.remove(b: h.b, pos: h.pos)
            keys.remove(at: at)
        }
        check("stale after removes")
        index.refreshBlockTable(ifStaleBy: 64)
        #expect(index.blockTable.builtAt == index.layoutChanges)
        check("rebuilt")
    }

    /// The word loop's batched lookups (`WordBatch`: table block, block and group, the group's line,
    /// record) find for every word what `predecessor` finds, in word order: addresses on and between
    /// keys, in gaps over 4 GiB above a block (its last entry counts), below every key, outside the
    /// filter; with the page -> block table absent, fresh and stale; batches full and partial. A record
    /// whose `mayTakeReference` bit is clear is not read (record 0 stands in), a set or untracked one is.
    @Test func batchedLookupsMatchPredecessor() {
        var index = IntervalIndex()
        var rng = Rng(s: 31337)
        var keys = Set<UInt64>()
        let store = RecordStore()
        var nextID: UInt32 = 0
        func insert(_ key: UInt64) {
            guard keys.insert(key).inserted else { return }
            let h = index.predecessor(key)
            index.insert(nextID, key: key, afterBlock: h?.b ?? -1, pos: h?.pos ?? -1)
            index.minAddr = min(index.minAddr, key)
            index.maxAddr = max(index.maxAddr, key + 64)
            store.grow(to: Int(nextID) + 1)
            store.materialize(Int(nextID))
            store[Int(nextID)] = ObjectRecord(pointer: key, bits: 1, seqLow: 0, size32: 48, context: 0)
            nextID += 1
        }
        // Clusters far apart: the gaps between them exceed a block's 4 GiB span.
        let clusters: [UInt64] = [0x1000_0000, 0x5555_0000_0000, 0x5556_0000_0000, 0x7f00_0000_0000]
        for i in 0..<40_000 { insert(clusters[i % 4] + (rng.next() % (64 << 20)) & ~15) }
        let sorted = keys.sorted()
        // Bits: every third id's cleared; the last ids untracked (beyond the bits).
        var bitWords = [UInt64](repeating: ~0, count: (Int(nextID) - 100) / 64)
        for i in stride(from: 0, to: bitWords.count * 64, by: 3) { bitWords[i / 64] &= ~(1 << UInt64(i % 64)) }
        func check(_ label: String) {
            var words: [UInt64] = []
            for _ in 0..<20_000 {
                let k = sorted[Int(rng.next() % UInt64(sorted.count))]
                words += [k, k &+ rng.next() % 300, k &- 1, k &+ (5 << 30), k &+ rng.next() % (1 << 34), rng.next(), rng.next() % 0x2000_0000]
            }
            var want: [(index: Int, id: UInt32)] = []
            for (i, w) in words.enumerated() where w >= index.minAddr && w < index.maxAddr {
                if let h = index.predecessor(w) { want.append((i, h.id)) }
            }
            var got: [(index: Int, id: UInt32, shape: UInt64)] = []
            bitWords.withUnsafeMutableBufferPointer { bits in
                store.withRecords { rec in
                    withUnsafeTemporaryAllocation(of: WordCandidate.self, capacity: wordBatchCapacity) { storage in
                        var batch = WordBatch(storage.baseAddress!)
                        func drain() { batch.drain(index, rec, bits) { c in got.append((c.index, c.id, c.shape.pointer)) } }
                        for (i, w) in words.enumerated() where batch.add(w, index: i, scanned: 0, index) { drain() }
                        drain()
                    }
                }
            }
            #expect(got.count == want.count, "\(label)")
            var wrongIDs = 0, wrongShapes = 0
            for (g, w) in zip(got, want) {
                if g.index != w.index || g.id != w.id { wrongIDs += 1 }
                let id = Int(g.id)
                let read = id / 64 >= bitWords.count || bitWords[id / 64] & (1 << UInt64(id % 64)) != 0
                if g.shape != (read ? store[id].pointer : store[0].pointer) { wrongShapes += 1 }
            }
            #expect(wrongIDs == 0, "\(label)")
            #expect(wrongShapes == 0, "\(label)")
        }
        check("no table")
        index.refreshBlockTable()
        #expect(index.blockTable.span > 0)
        check("fresh table")
        for _ in 0..<20_000 { insert(0x5555_0000_0000 + (rng.next() % (80 << 20)) & ~15) }
        check("stale table")
    }

    /// `WordBatch.add` drops the words that point into the scanned chunk's own range (the self-reference
    /// skip both batched word loops share) and those outside the filter, and keeps the rest in word order.
    @Test func batchAddSkipsOwnRange() {
        var index = IntervalIndex()
        index.minAddr = 0x1000
        index.maxAddr = 0x9000
        let own = (start: UInt64(0x4000), length: UInt64(0x100))
        let words: [UInt64] = [0x0fff, 0x1000, 0x3ff8, 0x4000, 0x40f8, 0x40ff, 0x4100, 0x8fff, 0x9000, 0]
        withUnsafeTemporaryAllocation(of: WordCandidate.self, capacity: wordBatchCapacity) { storage in
            var batch = WordBatch(storage.baseAddress!)
            for (i, w) in words.enumerated() { _ = batch.add(w, index: i, scanned: 7, own: own, index) }
            let kept = (0..<batch.count).map { storage[$0].index }
            #expect(kept == [1, 2, 6, 7])
            #expect((0..<batch.count).allSatisfy { storage[$0].scanned == 7 && storage[$0].word == words[storage[$0].index] })
        }
    }

    /// Packing the blocks (`compact`) keeps every lookup's answer and every entry's id, frees the pages
    /// left over, and the packed index takes inserts and removes as before: clusters more than 4 GiB
    /// apart (blocks may not span 4 GiB), registered in random order (blocks about 80 % full).
    @Test func compactionKeepsLookupsAndFreesBlocks() {
        var index = IntervalIndex()
        var keys: [UInt64: UInt32] = [:]
        var rng = Rng(s: 4242)
        func insert(_ key: UInt64, _ id: UInt32) {
            guard keys[key] == nil else { return }
            let h = index.predecessor(key)
            index.insert(id, key: key, afterBlock: h?.b ?? -1, pos: h?.pos ?? -1)
            keys[key] = id
        }
        func check(_ label: String) {
            let sorted = keys.keys.sorted()
            var bad = 0
            for (i, k) in sorted.enumerated() {
                if index.predecessor(k)?.id != keys[k] { bad += 1 }
                if index.predecessor(k &+ 15)?.id != keys[k] { bad += 1 }
                if i > 0, index.predecessor(k &- 1)?.id != keys[sorted[i - 1]] { bad += 1 }
            }
            if let first = sorted.first, index.predecessor(first &- 1) != nil { bad += 1 }
            #expect(bad == 0, "\(label)")
            #expect(index.count == keys.count, "\(label)")
        }
        var id: UInt32 = 0
        for _ in 0..<40_000 {
            let base: UInt64 = [0x5555_0000_0000, 0x5556_0000_0000, 0x7f00_0000_0000][Int(rng.next() % 3)]
            insert(base + (rng.next() % (64 << 20)) & ~15, id)
            id += 1
        }
        let before = index.memoryBytes
        #expect(index.fill < 0.9)
        index.compact()
        #expect(index.fill > 0.99)
        #expect(index.memoryBytes < before)
        #expect(index.phys == (0..<index.mins.count).map { Int32($0) })
        check("packed")
        index.refreshBlockTable()
        check("packed, fresh table")
        for _ in 0..<10_000 { insert(0x5555_0000_0000 + (rng.next() % (64 << 20)) & ~15, id); id += 1 }
        for _ in 0..<20_000 {
            guard let k = keys.keys.randomElement(using: &rng), let h = index.predecessor(k) else { continue }
            index.remove(b: h.b, pos: h.pos)
            keys[k] = nil
        }
        check("inserts and removes after packing")
        index.compact()
        check("packed again")
    }

    /// Many objects registered in random order, some freed: exact and interior lookups stay right
    /// (block splits and merges of the two-level index).
    @Test func randomInsertLookupRemove() {
        let e = makeEngine()
        let n = 20_000
        var rng = Rng(s: 12345)
        var order = Array(0..<n)
        for i in stride(from: n - 1, to: 0, by: -1) { order.swapAt(i, Int(rng.next() % UInt64(i + 1))) }
        func a(_ i: Int) -> UInt64 { 0x100_0000 + UInt64(i) * 64 }
        for i in order { e.alloc(a(i), size: 48, metadata: meta(UInt64(i))) }
        #expect(e.isEnabled)
        #expect(e.objectCount == n)
        var bad = 0
        for i in 0..<n where e.objectInfo(at: a(i))?.metadata.seq != UInt64(i) { bad += 1 }
        #expect(bad == 0)
        let mem = SyntheticMemory()
        // Lookups stay right after a scan, and for addresses in the gaps between objects.
        _ = e.scan(now: sec, memory: mem)
        bad = 0
        for i in 0..<n where e.objectInfo(at: a(i))?.metadata.seq != UInt64(i) { bad += 1 }
        for i in stride(from: 0, to: n, by: 13) where e.dump(address: a(i) + 50, context: TestContext()) != nil { bad += 1 }
        #expect(e.dump(address: a(0) - 1, context: TestContext()) == nil)
        #expect(bad == 0)
        // Interior lookups through dump=.
        var badDump = 0
        for i in stride(from: 0, to: n, by: 97) {
            if e.dump(address: a(i) + 47, context: TestContext()) == nil { badDump += 1 }
            if e.dump(address: a(i) + 48, context: TestContext()) != nil { badDump += 1 }
        }
        #expect(badDump == 0)
        // Free two thirds in random order, then check again.
        var freed = Set<Int>()
        for i in order where i % 3 != 0 {
            e.free(a(i))
            freed.insert(i)
        }
        #expect(e.objectCount == n - freed.count)
        _ = e.scan(now: 2 * sec, memory: mem)
        bad = 0
        for i in 0..<n {
            let found = e.objectInfo(at: a(i)) != nil
            if found == freed.contains(i) { bad += 1 }
        }
        #expect(bad == 0)
        // Re-register the freed ones (slot reuse, inserts into sparse/merged blocks).
        for i in order where freed.contains(i) {
            e.alloc(a(i), size: 48, metadata: meta(UInt64(i)))
            if i % 1000 == 0 { _ = e.scan(now: 3 * sec, memory: mem) }  // scans interleaved with inserts
        }
        #expect(e.isEnabled)
        bad = 0
        for i in 0..<n where e.objectInfo(at: a(i))?.metadata.seq != UInt64(i) { bad += 1 }
        #expect(bad == 0)
        _ = mem
    }

    /// Clusters of objects more than 4 GiB apart (index blocks hold 32-bit pointer deltas, so no block
    /// may span 4 GiB), one near the top of the address space, registered in random and in descending
    /// order, some freed and registered again: exact, interior and gap lookups stay right, and a scan
    /// counts references into every cluster.
    @Test func clustersFarApart() {
        let clusters: [UInt64] = [0x1000_0000, 0x1_2000_0000, 0x3_0000_0000, 0x3_ffff_0000, 0x7f00_0000_0000,
                                  0xffff_8880_0000_0000, 0xffff_ffff_fff0_0000]
        let perCluster = 1500
        let n = clusters.count * perCluster
        func a(_ i: Int) -> UInt64 { clusters[i % clusters.count] + UInt64(i / clusters.count) * 64 }
        for descending in [false, true] {
            let e = makeEngine()
            var rng = Rng(s: 777)
            var order = Array(0..<n)
            if descending {
                order.sort { a($0) > a($1) }
            } else {
                for i in stride(from: n - 1, to: 0, by: -1) { order.swapAt(i, Int(rng.next() % UInt64(i + 1))) }
            }
            for i in order { e.alloc(a(i), size: 48, metadata: meta(UInt64(i))) }
            #expect(e.isEnabled)
            #expect(e.objectCount == n)
            func misses(freed: Set<Int>) -> Int {
                var bad = 0
                for i in 0..<n {
                    let seq = e.objectInfo(at: a(i))?.metadata.seq
                    if freed.contains(i) ? seq != nil : seq != UInt64(i) { bad += 1 }
                    if !freed.contains(i) && e.dump(address: a(i) + 47, context: TestContext()) == nil { bad += 1 }
                    if e.dump(address: a(i) + 48, context: TestContext()) != nil { bad += 1 }
                }
                for c in clusters where c >= 0x1000 {
                    if e.dump(address: c - 1, context: TestContext()) != nil { bad += 1 }
                    if c < 0xffff_ffff_0000_0000,
                       e.dump(address: c + UInt64(perCluster) * 64 + 0x1_0000_0000, context: TestContext()) != nil { bad += 1 }
                }
                return bad
            }
            #expect(misses(freed: []) == 0)
            var freed = Set<Int>()
            for i in order where i % 3 != 1 {
                e.free(a(i))
                freed.insert(i)
            }
            #expect(e.objectCount == n - freed.count)
            #expect(misses(freed: freed) == 0)
            // A root pointing at (or into) every remaining object of even index: exactly the odd ones leak.
            let mem = SyntheticMemory()
            let root: UInt64 = 0x100_0000
            let kept = (0..<n).filter { !freed.contains($0) }
            mem.map(root, kept.count * 8)
            for (k, i) in kept.enumerated() where i % 2 == 0 { mem.write64(root + UInt64(k * 8), a(i) + UInt64(k % 48)) }
            e.setRoots([RootRegion(start: root, length: UInt64(kept.count * 8), kind: .data)])
            #expect(e.scan(now: sec, memory: mem).newLeaks == kept.filter { $0 % 2 == 1 }.count)
            for i in order where freed.contains(i) { e.alloc(a(i), size: 48, metadata: meta(UInt64(i))) }
            #expect(e.isEnabled)
            #expect(misses(freed: []) == 0)
        }
    }
}

@Suite struct GrayListTests {
    /// The gray list as a set: every pushed id pops exactly once, smallest first, a second push of a
    /// queued id does nothing, and pushes beyond its capacity (sparse ids, up to 2^22) grow it, against
    /// a sorted set as the reference, through several fill-and-drain rounds of interleaved pushes and pops.
    @Test func popsEveryQueuedIDOnceSmallestFirst() {
        var rng = IndexTests.Rng(s: 4242)
        for capacity in [0, 1, 64, 5000] {
            var gray = GrayQueue(capacity: capacity)
            var reference: [UInt32] = []  // sorted, no duplicates
            var mismatches = 0
            for round in 0..<4 {
                let limit: UInt64 = round == 3 ? 1 << 22 : UInt64(max(capacity, 1)) * 3
                for _ in 0..<3000 {
                    if rng.next() % 3 != 0 {
                        let id = UInt32(rng.next() % limit)
                        gray.push(id)
                        var lo = 0, hi = reference.count
                        while lo < hi { let mid = (lo + hi) / 2; if reference[mid] < id { lo = mid + 1 } else { hi = mid } }
                        if lo == reference.count || reference[lo] != id { reference.insert(id, at: lo) }
                    } else if gray.pop() != (reference.isEmpty ? nil : reference.removeFirst()) {
                        mismatches += 1
                    }
                    if gray.count != reference.count { mismatches += 1 }
                }
                var drained: [UInt32] = []
                while let id = gray.pop() { drained.append(id) }
                #expect(drained == reference)
                #expect(gray.isEmpty)
                reference = []
            }
            #expect(mismatches == 0)
        }
    }

    /// A binary tree of 3000 objects (more than one read batch of ranges): a single scan must reach
    /// every node through the gray list, without help from the checksum pass.
    @Test func treeInOneScan() {
        let mem = SyntheticMemory()
        let heap: UInt64 = 0x7f00_0000_0000
        let root = heap - 0x1000
        let n = 3000
        mem.map(root, 0x1000 + n * 48)
        let e = makeEngine(cpus: 2)
        e.setRoots([RootRegion(start: root, length: 0x1000, kind: .data)])
        for i in 0..<n { e.alloc(heap + UInt64(i * 48), size: 48, metadata: meta(UInt64(i))) }
        mem.write64(root, heap)
        for i in 0..<n {
            if 2 * i + 1 < n { mem.write64(heap + UInt64(i * 48), heap + UInt64((2 * i + 1) * 48)) }
            if 2 * i + 2 < n { mem.write64(heap + UInt64(i * 48 + 8), heap + UInt64((2 * i + 2) * 48)) }
        }
        let r = e.scan(now: 10 * sec, memory: mem)
        #expect(r.objectsScanned == n)
        #expect(r.bytesChecksummed == 0)
        #expect(r.newLeaks == 0)
        #expect(e.scan(now: 20 * sec, memory: mem).newLeaks == 0)
        #expect(mem.readCalls >= 3)
    }
}
