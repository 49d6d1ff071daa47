import Testing
@testable import KmemleakEngine

/// SyntheticMemory that tells the engine its holes (as the daemon's reader does from /proc/PID/maps).
struct HoleAwareMemory: MemoryReader {
    let mem: SyntheticMemory

    func read(_ ranges: UnsafeBufferPointer<MemoryRange>, into buffer: UnsafeMutableRawBufferPointer,
              bytesRead: UnsafeMutableBufferPointer<Int>) {
        mem.read(ranges, into: buffer, bytesRead: bytesRead)
    }

    func scannablePart(of range: MemoryRange) -> MemoryRange? {
        let end = range.address + UInt64(range.length)
        let mapped = mem.regions.map { (start: $0.start, end: $0.start + UInt64($0.bytes.count)) }
            .filter { $0.end > range.address && $0.start < end }.sorted { $0.start < $1.start }
        guard let first = mapped.first else { return nil }
        let start = max(first.start, range.address)
        return MemoryRange(address: start, length: Int(min(first.end, end) - start))
    }
}

/// What the engine reads, and whether it may report what it read.
@Suite struct ReadingTests {
    /// An object with an unmapped page in its middle and a pointer after it: a reader that only reads
    /// short loses the rest of the object; one that shows the hole skips only the hole.
    @Test func aHoleInsideAnObjectSkipsOnlyTheHole() {
        func reported(holeAware: Bool) -> [UInt64] {
            let mem = SyntheticMemory()
            mem.map(0x1000, 0x100)                      // root
            mem.map(0x100000, 0x1000)                   // object, first page
            mem.map(0x102000, 0x1000)                   // object, third page (the second is a hole)
            mem.map(0x10000, 0x1000)                    // heap
            let e = makeEngine()
            e.setRoots([RootRegion(start: 0x1000, length: 0x100, kind: .data)])
            e.alloc(0x100000, size: 0x3000, minCount: 1, metadata: meta(1))
            e.alloc(0x10000, size: 64, minCount: 1, metadata: meta(2))
            mem.write64(0x1000, 0x100000)
            mem.write64(0x102010, 0x10000)
            for _ in 0..<2 {
                if holeAware { _ = e.scan(now: 10 * sec, memory: HoleAwareMemory(mem: mem)) }
                else { _ = e.scan(now: 10 * sec, memory: mem) }
            }
            return e.reported(mem)
        }
        #expect(reported(holeAware: false) == [0x10000])
        #expect(reported(holeAware: true) == [])
    }

    /// `begin` returning nil (the client could not be frozen in time): nothing is reported, the
    /// candidates wait; the next scan that can confirm reports them.
    @Test func aConfirmationThatCannotBeginPostponesTheReport() {
        let w = World(passes: 1)
        w.obj(A)
        var canFreeze = false
        var ends = 0
        let hooks = ConfirmationHooks(begin: { canFreeze ? [] : nil }, end: { ends += 1 })
        w.now += 10 * sec
        let first = w.e.scan(now: w.now, memory: w.mem, confirmation: hooks)
        #expect(first.postponed && first.newLeaks == 0 && ends == 1)
        #expect(w.e.reported(w.mem).isEmpty)
        #expect(!w.log.all.contains { $0.contains("new suspected memory leaks") })
        canFreeze = true
        w.now += 10 * sec
        let second = w.e.scan(now: w.now, memory: w.mem, confirmation: hooks)
        #expect(!second.postponed && second.newLeaks == 1)
        #expect(w.e.reported(w.mem) == [A])
    }

    /// `mayReport` false (the client exited while we read it): the scan's new leaks are discarded,
    /// with no "new suspected memory leaks" line.
    @Test func aScanOfAnExitingClientReportsNothing() {
        let w = World(passes: 1)
        w.obj(A)
        w.obj(B)
        let hooks = ConfirmationHooks(begin: { [] }, end: {}, mayReport: { false })
        w.now += 10 * sec
        let r = w.e.scan(now: w.now, memory: w.mem, confirmation: hooks)
        #expect(r.postponed && r.newLeaks == 0)
        #expect(w.e.reported(w.mem).isEmpty)
        #expect(!w.log.all.contains { $0.contains("new suspected memory leaks") })
    }
}
