import Testing
@testable import KmemleakEngine

@Suite struct IndexTests {
    struct Rng {
        var s: UInt64
        mutating func next() -> UInt64 { s ^= s << 13; s ^= s >> 7; s ^= s << 17; return s }
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
    /// The chunked FIFO: order kept across chunk boundaries, with pops interleaved (a chunk being
    /// consumed while the last one fills) and after the queue ran empty in the middle of a chunk.
    @Test func fifoAcrossChunks() {
        var q = GrayQueue()
        #expect(q.isEmpty && q.pop() == nil)
        let n = UInt32(GrayQueue.chunkSize * 3 + 17)
        var next: UInt32 = 0
        for i in 0..<n {
            q.push(i)
            if i % 3 == 0 {
                #expect(q.pop() == next)
                next += 1
            }
        }
        while let v = q.pop() {
            #expect(v == next)
            next += 1
        }
        #expect(next == n && q.isEmpty)
        // Empty mid-chunk, then filled again: still in order.
        for i in 0..<UInt32(5) { q.push(n + i) }
        for i in 0..<UInt32(5) { #expect(q.pop() == n + i) }
        #expect(q.isEmpty)
    }

    /// A binary tree of 3000 objects (more than one read batch of ranges): a single scan must reach
    /// every node through the FIFO gray list, without help from the checksum pass.
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
