import Testing
@testable import KmemleakEngine

/// A reader whose plain window is one fixed range, whatever is mapped in it: as a live client's reader
/// is when a mapping goes away after it answered.
final class FixedWindowMemory: MemoryReader, @unchecked Sendable {
    let mem: SyntheticMemory
    let window: PlainWindow
    init(_ mem: SyntheticMemory, window: PlainWindow) {
        self.mem = mem
        self.window = window
    }

    func read(_ ranges: UnsafeBufferPointer<MemoryRange>, into buffer: UnsafeMutableRawBufferPointer,
              bytesRead: UnsafeMutableBufferPointer<Int>) {
        mem.read(ranges, into: buffer, bytesRead: bytesRead)
    }

    func plainWindow(at address: Address) -> PlainWindow? { window.covers(address, 0) ? window : nil }
}

/// scan_gray_list read as windows (`KmemleakConfiguration.readsGrayWindows`).
@Suite struct GrayWindowTests {
    struct Rng: RandomNumberGenerator {
        var s: UInt64
        mutating func next() -> UInt64 { s ^= s << 13; s ^= s >> 7; s ^= s << 17; return s }
    }

    func engine(windows: Bool, workers: Int = 1) -> Kmemleak {
        var c = KmemleakConfiguration(minimumAge: 0, controlFilePath: "/mnt/kmemleak")
        c.readsGrayWindows = windows
        if workers > 1 { c.scanWorkers = DispatchScanWorkers(count: workers) }
        return Kmemleak(configuration: c)
    }

    /// A heap laid out as an interpreter's is (records of nearby objects pointing at each other, each
    /// record found from the root or from a record far away, min_count 1 and 2, a NO_SCAN object, every
    /// tenth record unreachable): read as windows, most objects are scanned from a window read for
    /// another, each exactly once (the same objects and bytes scanned as object by object), and the same
    /// objects are reported: the unreachable records' heads and no reachable one's. With scan workers
    /// sharing the lookups too.
    @Test func windowsScanEachObjectOnceAndReportTheSame() {
        struct Outcome: Equatable {
            var leaks: [UInt64]
            var objects: Int
            var bytes: Int
        }
        func run(windows: Bool, workers: Int = 1) -> (Outcome, inWindows: Int, heads: [UInt64]) {
            var rng = Rng(s: 4242)
            let mem = SyntheticMemory()
            mem.map(0x1000, 0x1000)                      // root
            mem.map(0x1000_0000, 0x20_0000)              // heap
            let e = engine(windows: windows, workers: workers)
            e.setRoots([RootRegion(start: 0x1000, length: 0x1000, kind: .data)])
            var records: [[UInt64]] = []
            var at: UInt64 = 0x1000_0000
            var seq: UInt64 = 1
            while at < 0x1000_0000 + 0x1f_0000 {
                var record: [UInt64] = []
                for k in 0..<Int.random(in: 1...5, using: &rng) {
                    let size = UInt64.random(in: 4...40, using: &rng) * 16
                    let minCount: Int32 = k > 0 && Int.random(in: 0..<8, using: &rng) == 0 ? 2 : 1
                    e.alloc(at, size: size, minCount: minCount, metadata: meta(seq))
                    seq += 1
                    record.append(at)
                    at += size + 16 * UInt64.random(in: 0...2, using: &rng)
                }
                records.append(record)
            }
            // Words 8-32 of a head point at its record's other objects, word 48 at the head of the record
            // 200 later; each other object points into itself (no count), and the last at the second.
            for (r, record) in records.enumerated() {
                let head = record[0]
                for (k, o) in record.dropFirst().enumerated() {
                    mem.write64(head + 8 * UInt64(k + 1), o)
                    mem.write64(o, o &+ 0x10)
                }
                if record.count > 2 { mem.write64(record.last! + 16, record[1]) }
                if r + 200 < records.count && (r + 200) % 10 != 9 { mem.write64(head + 48, records[r + 200][0]) }
                if r < 200 && r % 10 != 9 { mem.write64(0x1000 + 8 * UInt64(r), head) }
            }
            e.noScan(records.first { $0.count > 1 }![1])
            let reader = WindowedMemory(mem, maxLength: 0x10000, tellsWindows: true)
            var last = ScanResult()
            for _ in 0..<2 { last = e.scan(now: 10 * sec, memory: reader) }
            let unreachableHeads = records.enumerated().filter { $0.offset % 10 == 9 }.map { $0.element[0] }
            let reachableHeads = records.enumerated().filter { $0.offset % 10 != 9 }.map { $0.element[0] }
            let leaks = e.reported(mem)
            #expect(Set(unreachableHeads).isSubset(of: leaks) && Set(reachableHeads).isDisjoint(with: leaks))
            return (Outcome(leaks: leaks, objects: last.objectsScanned, bytes: last.bytesScanned),
                    last.objectsScannedInWindows, reachableHeads)
        }
        let byObject = run(windows: false), windowed = run(windows: true), shared = run(windows: true, workers: 2)
        #expect(windowed.0 == byObject.0)
        #expect(shared.0 == byObject.0 && shared.inWindows == windowed.inWindows)
        #expect(byObject.inWindows == 0)
        #expect(windowed.inWindows > windowed.0.objects / 2,
                "most objects scanned from windows: \(windowed.inWindows) of \(windowed.0.objects)")
        #expect(windowed.0.objects > 2 * windowed.heads.count, "their other objects scanned too: \(windowed.0.objects)")
    }

    /// A window whose gap was unmapped after the reader called it plain reads short: the objects past
    /// the hole are read again alone and scanned, so what they point to is not reported.
    @Test func aHoleInAWindowRereadsThePiecesPastIt() {
        let mem = SyntheticMemory()
        mem.map(0x1000, 0x100)                           // root
        mem.map(0x10_0000, 0x200)                        // A, then a hole of 0x200 bytes
        mem.map(0x10_0400, 0x200)                        // B
        mem.map(0x20_0000, 0x100)                        // C, D
        let e = engine(windows: true)
        e.setRoots([RootRegion(start: 0x1000, length: 0x100, kind: .data)])
        e.alloc(0x10_0000, size: 0x100, minCount: 1, metadata: meta(1))  // A
        e.alloc(0x10_0400, size: 0x100, minCount: 1, metadata: meta(2))  // B
        e.alloc(0x20_0000, size: 0x40, minCount: 1, metadata: meta(3))   // C, from B
        e.alloc(0x20_0040, size: 0x40, minCount: 1, metadata: meta(4))   // D, from nothing
        mem.write64(0x1000, 0x10_0000)
        mem.write64(0x1008, 0x10_0400)
        mem.write64(0x10_0410, 0x20_0000)
        let reader = FixedWindowMemory(mem, window: PlainWindow(start: 0x10_0000, end: 0x10_1000, maxLength: 0x10000))
        for _ in 0..<2 { _ = e.scan(now: 10 * sec, memory: reader) }
        #expect(e.reported(mem) == [0x20_0040])
    }

    /// Objects that turn gray inside a window are taken off the gray list: an object with min_count 2
    /// pointed to once from its window and once from far away is scanned once, after its second
    /// reference, and what it points to is found.
    @Test func anObjectGrayedLaterIsStillScannedOnce() {
        let mem = SyntheticMemory()
        mem.map(0x1000, 0x100)
        mem.map(0x10_0000, 0x1000)
        mem.map(0x30_0000, 0x1000)
        let e = engine(windows: true)
        e.setRoots([RootRegion(start: 0x1000, length: 0x100, kind: .data)])
        e.alloc(0x10_0000, size: 0x40, minCount: 1, metadata: meta(1))   // A, from the root
        e.alloc(0x10_0040, size: 0x40, minCount: 2, metadata: meta(2))   // B, from A and from F
        e.alloc(0x10_0080, size: 0x40, minCount: 1, metadata: meta(3))   // C, from B only
        e.alloc(0x30_0000, size: 0x40, minCount: 1, metadata: meta(4))   // F, from the root
        mem.write64(0x1000, 0x10_0000)
        mem.write64(0x1008, 0x30_0000)
        mem.write64(0x10_0008, 0x10_0040)
        mem.write64(0x30_0008, 0x10_0040)
        mem.write64(0x10_0048, 0x10_0080)
        let reader = WindowedMemory(mem, maxLength: 0x10000, tellsWindows: true)
        var last = ScanResult()
        for _ in 0..<2 { last = e.scan(now: 10 * sec, memory: reader) }
        #expect(e.reported(mem).isEmpty)
        #expect(last.objectsScanned == 4)
    }
}
