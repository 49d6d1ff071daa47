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

/// HoleAwareMemory that also tells its mapped regions as plain windows (ranges under `maxLength` inside
/// one are scannable whole), and counts the questions the engine asks.
final class WindowedMemory: MemoryReader, @unchecked Sendable {
    let inner: HoleAwareMemory
    let maxLength: UInt64
    let tellsWindows: Bool
    var partQuestions = 0
    var windowQuestions = 0

    init(_ mem: SyntheticMemory, maxLength: UInt64 = 0x1000, tellsWindows: Bool) {
        inner = HoleAwareMemory(mem: mem)
        self.maxLength = maxLength
        self.tellsWindows = tellsWindows
    }

    func read(_ ranges: UnsafeBufferPointer<MemoryRange>, into buffer: UnsafeMutableRawBufferPointer,
              bytesRead: UnsafeMutableBufferPointer<Int>) {
        inner.read(ranges, into: buffer, bytesRead: bytesRead)
    }

    func scannablePart(of range: MemoryRange) -> MemoryRange? {
        partQuestions += 1
        return inner.scannablePart(of: range)
    }

    func plainWindow(at address: Address) -> PlainWindow? {
        windowQuestions += 1
        guard tellsWindows,
              let r = inner.mem.regions.first(where: { $0.start <= address && address < $0.start + UInt64($0.bytes.count) })
        else { return nil }
        return PlainWindow(start: r.start, end: r.start + UInt64(r.bytes.count), maxLength: maxLength)
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

    /// A reader's plain window spares the per-object questions for the small objects inside it, and
    /// changes nothing in what is found: a chain of 2000 small objects (every other one leaked), a big
    /// object (asked about: at least maxLength) with a hole, and an object outside every window.
    @Test func plainWindowsSpareQuestionsAndChangeNoResult() {
        func run(tellsWindows: Bool) -> (leaks: [UInt64], parts: Int, windows: Int) {
            let mem = SyntheticMemory()
            mem.map(0x1000, 0x100)                      // root
            mem.map(0x100000, 0x40000)                  // heap: 2000 objects of 64 bytes
            mem.map(0x200000, 0x1000)                   // big object, first page
            mem.map(0x202000, 0x1000)                   // big object, third page (the second is a hole)
            mem.map(0x300000, 0x1000)                   // heap 2
            let e = makeEngine()
            e.setRoots([RootRegion(start: 0x1000, length: 0x100, kind: .data)])
            for i in 0..<2000 { e.alloc(0x100000 + UInt64(i) * 64, size: 64, minCount: 1, metadata: meta(UInt64(i + 1))) }
            e.alloc(0x200000, size: 0x3000, minCount: 1, metadata: meta(3000))
            e.alloc(0x300000, size: 64, minCount: 1, metadata: meta(3001))
            e.alloc(0x300040, size: 64, minCount: 1, metadata: meta(3002))
            mem.write64(0x1000, 0x100000)
            mem.write64(0x1008, 0x200000)
            // Object i points to object i + 2: the even ones are reachable, the odd ones leak.
            for i in 0..<1998 { mem.write64(0x100000 + UInt64(i) * 64 + 8, 0x100000 + UInt64(i + 2) * 64) }
            mem.write64(0x202010, 0x300000)             // after the hole
            let reader = WindowedMemory(mem, tellsWindows: tellsWindows)
            for _ in 0..<2 { _ = e.scan(now: 10 * sec, memory: reader) }
            return (e.reported(mem), reader.partQuestions, reader.windowQuestions)
        }
        let asked = run(tellsWindows: false), windowed = run(tellsWindows: true)
        #expect(windowed.leaks == asked.leaks)
        #expect(asked.leaks.count == 1000 + 1 && asked.leaks.contains(0x300040) && !asked.leaks.contains(0x300000))
        #expect(asked.parts >= 2 * 1000, "every scanned object asked: \(asked.parts)")
        #expect(windowed.parts < asked.parts / 10, "windows spared the small objects' questions: \(windowed.parts)")
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
