import Testing
@testable import KmemleakSystem

/// Which parts of a client's address space may be read (pure functions over /proc/PID/maps).
@Suite struct ScannableMemoryTests {
    private func map(_ start: UInt64, _ end: UInt64, _ perms: String = "rw-p", inode: UInt64 = 0, _ path: String = "") -> MapEntry {
        let p = Array(perms)
        return MapEntry(start: start, end: end, readable: p[0] == "r", writable: p[1] == "w", executable: p[2] == "x",
                        shared: p[3] == "s", offset: 0, devMajor: inode == 0 ? 0 : 8, devMinor: 1, inode: inode, path: path)
    }

    @Test func onlyAnonymousMemoryAndWrittenDataPagesAreScannable() {
        let maps = [
            map(0x1000, 0x3000, "rw-p", inode: 7, "/usr/lib/libx.so"),   // ELF data (file pages)
            map(0x3000, 0x4000),                                         // its .bss
            map(0x10000, 0x20000, "rw-s", inode: 9, "/mnt/fuse/slow"),   // a shared file
            map(0x20000, 0x30000, "rw-p", inode: 9, "/mnt/fuse/slow"),   // a private file, not data
            map(0x30000, 0x31000, "---p"),                               // a guard page
            map(0x40000, 0x50000, "rw-p", inode: 0, "[heap]"),
            map(0x50000, 0x51000, "r--p", inode: 0, "[vvar]"),
            map(0x60000, 0x61000, "rw-s", inode: 5, "/dev/zero (deleted)"),
        ]
        let data = RootRange(start: 0x2000, length: 0x2000, kind: .data, label: "/usr/lib/libx.so")
        let memory = ScannableMemory(maps: maps, dataRoots: [data])
        #expect(memory.intervals == [
            ScannableMemory.Interval(start: 0x2000, end: 0x3000, copiedOnly: true),
            ScannableMemory.Interval(start: 0x3000, end: 0x4000, copiedOnly: false),
            ScannableMemory.Interval(start: 0x40000, end: 0x50000, copiedOnly: false),
            ScannableMemory.Interval(start: 0x60000, end: 0x61000, copiedOnly: false),
        ])
        #expect(memory.isPlain(0x40000, 0x48000) && !memory.isPlain(0x2000, 0x2100) && !memory.isPlain(0x3f00, 0x40100))
    }

    @Test func aHintedIntervalSearchAnswersAsTheBinarySearchWhateverTheHint() {
        let maps = (0..<20).map { k in map(0x10000 * UInt64(k + 1), 0x10000 * UInt64(k + 1) + 0x8000) }
        let memory = ScannableMemory(maps: maps, dataRoots: [])
        #expect(memory.intervals.count == 20)
        for address in stride(from: UInt64(0), to: 0x160000, by: 0x1800) {
            let expected = memory.firstInterval(endingAfter: address)
            for hint in [-1, 0, 1, 5, expected - 1, expected, expected + 1, 19, 20, 1000, Int.min, Int.max] {
                #expect(memory.firstInterval(endingAfter: address, hint: hint) == expected)
            }
            var hint = 7
            #expect(memory.isPlain(address, address + 8, hint: &hint) == memory.isPlain(address, address + 8))
            #expect(hint == expected)
        }
    }

    @Test func threadRootsAreConfinedToAnonymousPrivateMemory() {
        let maps = [
            map(0x10000, 0x11000, "---p"),                               // stack guard
            map(0x11000, 0x20000),                                       // the stack
            map(0x20000, 0x30000, "rw-s", inode: 9, "/mnt/fuse/slow"),
        ]
        let claim = RootRange(start: 0x10000, length: 0x20000, kind: .stack, label: "tid 5", tid: 5)
        let data = RootRange(start: 0x20000, length: 0x1000, kind: .data, label: "x")
        let (roots, refused) = Roots.confineThreadRoots([claim, data], maps: maps)
        #expect(roots == [RootRange(start: 0x11000, length: 0xf000, kind: .stack, label: "tid 5", tid: 5), data])
        #expect(refused.map(\.start) == [0x20000] && refused[0].length == 0x10000)
        #expect(refused[0].label.contains("/mnt/fuse/slow"))
    }
}
