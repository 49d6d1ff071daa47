import Foundation
import CKmemleakSys
import Glibc
import KmemleakEngine
@testable import KmemleakSystem
import Testing

@Suite struct ProcParseTests {
    @Test func mapsLines() {
        let text = """
        55d0c0a00000-55d0c0a02000 r--p 00000000 08:01 1234567                    /usr/bin/true
        7f0000000000-7f0000001000 rw-p 00002000 fd:00 42 /path with spaces/lib (deleted)
        7ffd1000-7ffd2000 rw-p 00000000 00:00 0                          [stack]
        7f1000000000-7f1000001000 ---s 00000000 00:05 99 /memfd:kmemleak-table (deleted)
        ffffffffff600000-ffffffffff601000 --xp 00000000 00:00 0                  [vsyscall]
        7f2000000000-7f2000001000 rw-p 00000000 00:00 0
        """
        let (e, skipped) = ProcParse.parseMaps(Array(text.utf8))
        #expect(skipped == 0)
        #expect(e.count == 6)
        #expect(e[0].start == 0x55d0c0a00000 && e[0].end == 0x55d0c0a02000 && e[0].readable && !e[0].writable)
        #expect(e[0].devMajor == 8 && e[0].devMinor == 1 && e[0].inode == 1234567 && e[0].path == "/usr/bin/true")
        #expect(e[1].offset == 0x2000 && e[1].devMajor == 0xfd && e[1].path == "/path with spaces/lib (deleted)")
        #expect(e[1].filePath == "/path with spaces/lib")
        #expect(e[2].path == "[stack]" && !e[2].isFileBacked)
        #expect(e[3].shared && !e[3].readable && e[3].mapFilesName == "7f1000000000-7f1000001000")
        #expect(e[4].end == 0xffffffffff601000 && e[4].executable)
        #expect(e[5].isAnonymous && e[5].path == "")
    }

    @Test func hostileMapsLines() {
        let bad = [
            "", "garbage", "1000-", "1000-2000", "2000-1000 rw-p 0 00:00 0", "1000-2000 rwzp 0 00:00 0",
            "1000-2000 rw-p", "1000-2000 rw-p 0 00:00", "1000-2000 rw-p 0 0000 0", "1000-2000 rw-p 0 00:00 x",
            "11112222333344445-2000 rw-p 0 00:00 0", "1000-2000 rw-p 0 00:00 99999999999999999999999",
            "g000-2000 rw-p 0 00:00 0", "1000-2000 rw-pX0 00:00 0",
        ]
        for line in bad {
            let bytes = Array(line.utf8)
            let r = bytes.withUnsafeBufferPointer { ProcParse.parseMapsLine($0) }
            #expect(r == nil, "accepted: \(line)")
        }
        // Mixed good/bad text: good lines survive.
        let (e, skipped) = ProcParse.parseMaps(Array("junk\n1000-2000 r-xp 0 00:00 0 x\n\n\u{0}\u{1}\n".utf8))
        #expect(e.count == 1 && skipped == 2)
    }

    /// FUSE mounts (by type, with or without tags) are user-space served; so may be an anonymous device
    /// listed nowhere (a detached mount), a junk line's or a cut line's; an unlisted block device is not.
    @Test func mountInfoSeparatesFUSEMounts() {
        let text = """
        22 1 8:1 / / rw,relatime shared:1 - ext4 /dev/sda1 rw
        44 27 0:41 / /tmp/a\\040b rw,nosuid,nodev,relatime shared:7 master:2 - fuse.slow-fuse slow-fuse rw,user_id=0
        45 27 0:42 / /mnt/plain rw - fuse plain rw
        46 27 8:17 / /mnt/ntfs rw - fuseblk /dev/sdb1 rw
        47 27 0:43 / /tmp rw - tmpfs tmpfs rw
        junk - fuse
        48 27 0:44 / /cut rw - fu
        """
        let mounts = ProcParse.parseMountInfo(Array(text.utf8))
        #expect(mounts.isSafeToRead(DeviceNumber(major: 8, minor: 1)))
        #expect(mounts.isSafeToRead(DeviceNumber(major: 0, minor: 43)))
        for minor: UInt32 in [41, 42, 44, 99] { #expect(!mounts.isSafeToRead(DeviceNumber(major: 0, minor: minor)), "0:\(minor)") }
        #expect(!mounts.isSafeToRead(DeviceNumber(major: 8, minor: 17)))
        #expect(mounts.isSafeToRead(DeviceNumber(major: 254, minor: 3)))
        #expect(mounts.userSpaceServed == [DeviceNumber(major: 0, minor: 41), DeviceNumber(major: 0, minor: 42),
                                           DeviceNumber(major: 8, minor: 17)])
    }

    @Test func statWithHostileComm() {
        let line = "1234 (a) b (c)) R 1 1234 1234 0 -1 4194560 100 0 0 0 1 2 0 0 20 0 1 0 987654 1000 10 18446744073709551615\n"
        let s = ProcParse.parseStat(Array(line.utf8))
        #expect(s?.pid == 1234 && s?.comm == "a) b (c)" && s?.state == "R" && s?.ppid == 1 && s?.startTime == 987654)
        #expect(s?.flags == 4194560 && s?.isExiting == false)
        // PF_EXITING (0x4) in field 9, or a zombie: the program is gone.
        let exiting = ProcParse.parseStat(Array(line.replacingOccurrences(of: "4194560", with: "4194564").utf8))
        #expect(exiting?.isExiting == true)
        #expect(ProcParse.parseStat(Array(line.replacingOccurrences(of: ") R 1", with: ") Z 1").utf8))?.isExiting == true)
        #expect(ProcParse.parseStat(Array("1234 (x R 1".utf8)) == nil)
        #expect(ProcParse.parseStat(Array("1234 (x) R 1 2 3".utf8)) == nil)
        #expect(ProcParse.parseStat([]) == nil)
    }

    @Test func selfProc() throws {
        let me = getpid()
        let st = try Proc.stat(me)
        #expect(st.pid == me && st.startTime > 0)
        #expect(Proc.isAlive(me, startTime: st.startTime))
        #expect(!Proc.isAlive(me, startTime: st.startTime + 1))
        #expect(try Proc.tasks(me).contains(me))
        let maps = try Proc.maps(me)
        #expect(maps.contains { $0.path == "[stack]" })
        #expect(maps.contains { $0.path.contains("libc.so") })
        #expect(throws: SystemError.self) { try Proc.stat(0x7fff_fff0) }
        do { _ = try Proc.maps(0x7fff_fff0) } catch { #expect(error.errno == ENOENT && error.call == "open") }
    }

    /// A plain window answers as `scannablePart` does for the ranges it covers: a heap block's interval,
    /// ranges under the pagemap threshold; nothing for file-backed memory; everything unrestricted.
    @Test func plainWindowAgreesWithScannablePart() throws {
        let me = getpid()
        let mem = ProcessMemory(pid: me)
        #expect(mem.plainWindow(at: 0x1000) == PlainWindow(start: 0, end: .max, maxLength: .max))
        try mem.restrict(to: ScannableMemory(maps: try Proc.maps(me), dataRoots: []))
        let block = UnsafeMutableRawPointer.allocate(byteCount: 4096, alignment: 64)
        defer { block.deallocate() }
        memset(block, 1, 4096)
        let address = UInt64(UInt(bitPattern: block))
        let window = try #require(mem.plainWindow(at: address))
        #expect(window.start <= address && address + 4096 <= window.end && window.maxLength == ProcessMemory.pagemapThreshold)
        for (offset, length) in [(0, 8), (64, 100), (0, 4096)] {
            let range = MemoryRange(address: address + UInt64(offset), length: length)
            #expect(mem.scannablePart(of: range) == range)
        }
        // The window's own first and last bytes.
        #expect(mem.scannablePart(of: MemoryRange(address: window.start, length: 8)) == MemoryRange(address: window.start, length: 8))
        #expect(mem.scannablePart(of: MemoryRange(address: window.end - 8, length: 8)) == MemoryRange(address: window.end - 8, length: 8))
        // Program text is file-backed: no window.
        let text = unsafeBitCast(getpid as @convention(c) () -> pid_t, to: UInt.self)
        #expect(mem.plainWindow(at: UInt64(text)) == nil)
    }

    @Test func deadChildIsNotAlive() throws {
        let (c, pid) = try Helper.start()
        let st = try Proc.stat(pid)
        #expect(Proc.isAlive(pid, startTime: st.startTime))
        c.terminate()
        #expect(!Proc.isAlive(pid, startTime: st.startTime))
    }
}

@Suite struct ProcessMemoryTests {
    func readRanges(_ mem: ProcessMemory, _ ranges: [MemoryRange]) -> ([UInt8], [Int]) {
        let total = ranges.reduce(0) { $0 + $1.length }
        var buf = [UInt8](repeating: 0xee, count: total)
        var got = [Int](repeating: -1, count: ranges.count)
        ranges.withUnsafeBufferPointer { r in
            buf.withUnsafeMutableBytes { b in
                got.withUnsafeMutableBufferPointer { g in mem.read(r, into: b, bytesRead: g) }
            }
        }
        return (buf, got)
    }

    @Test func readsChildPattern() throws {
        let (c, pid) = try Helper.start()
        defer { c.terminate() }
        let a = try addrs(try c.request("alloc 100000", expect: "addr"))[0]
        let mem = ProcessMemory(pid: pid)
        let bytes = mem.read(a, length: 100000)
        #expect(bytes.count == 100000)
        #expect(bytes.enumerated().allSatisfy { $0.element == UInt8(truncatingIfNeeded: $0.offset * 7 + 3) })
        #expect(mem.stats.syscalls == 1 && mem.stats.bytesRead == 100000)
    }

    @Test func manyRangesInBatches() throws {
        let (c, pid) = try Helper.start()
        defer { c.terminate() }
        let a = try addrs(try c.request("alloc 65536", expect: "addr"))[0]
        // 3000 ranges of 16 bytes (3 syscalls of at most 1024 iovecs).
        let ranges = (0..<3000).map { MemoryRange(address: a + UInt64($0 % 4000) * 16, length: 16) }
        let mem = ProcessMemory(pid: pid)
        let (buf, got) = readRanges(mem, ranges)
        #expect(got.allSatisfy { $0 == 16 })
        // Adjacent ranges are coalesced into one remote iovec, scattered by at most 1024 local ones a call.
        #expect(mem.stats.syscalls == 3)
        for (i, r) in ranges.enumerated() {
            let off = Int(r.address - a)
            #expect(buf[i * 16] == UInt8(truncatingIfNeeded: off * 7 + 3))
        }
    }

    @Test func nearbyRangesLandInPlaceAndTheirGapsNowhere() throws {
        let (c, pid) = try Helper.start()
        defer { c.terminate() }
        let a = try addrs(try c.request("alloc 65536", expect: "addr"))[0]
        // 600 ranges of 16 bytes, 48 apart: one remote span; 600 places and 599 gaps = 1199 local iovecs,
        // two calls.
        let ranges = (0..<600).map { MemoryRange(address: a + UInt64($0) * 48, length: 16) }
        let mem = ProcessMemory(pid: pid)
        let (buf, got) = readRanges(mem, ranges)
        #expect(got.allSatisfy { $0 == 16 })
        #expect(mem.stats.syscalls == 2)
        for (i, r) in ranges.enumerated() {
            let off = Int(r.address - a)
            #expect((0..<16).allSatisfy { buf[i * 16 + $0] == UInt8(truncatingIfNeeded: (off + $0) * 7 + 3) })
        }
    }

    /// Ranges asked for out of address order (a scan's gray list) are read in address order: nearby
    /// ones still coalesce into one remote span, and each lands in its own place.
    @Test func shuffledNearbyRangesCoalesce() throws {
        let (c, pid) = try Helper.start()
        defer { c.terminate() }
        let a = try addrs(try c.request("alloc 65536", expect: "addr"))[0]
        // 300 ranges of 16 bytes, 48 apart, in a shuffled order (fixed seed): one remote span.
        var order = Array(0..<300)
        var seed: UInt64 = 0x9e37_79b9_7f4a_7c15
        for i in stride(from: order.count - 1, to: 0, by: -1) {
            seed ^= seed << 13; seed ^= seed >> 7; seed ^= seed << 17
            order.swapAt(i, Int(seed % UInt64(i + 1)))
        }
        let ranges = order.map { MemoryRange(address: a + UInt64($0) * 48, length: 16) }
        let mem = ProcessMemory(pid: pid)
        let (buf, got) = readRanges(mem, ranges)
        #expect(got.allSatisfy { $0 == 16 })
        #expect(mem.stats.remoteSpans == 1)
        #expect(mem.stats.syscalls == 1)
        for (i, r) in ranges.enumerated() {
            let off = Int(r.address - a)
            #expect((0..<16).allSatisfy { buf[i * 16 + $0] == UInt8(truncatingIfNeeded: (off + $0) * 7 + 3) })
        }
    }

    /// The packed-key sort orders ranges as the comparison sort does: by address, ties in position order,
    /// and addresses above 2^48 (no packing) too.
    @Test func addressOrderIsTheStableSortByAddress() {
        var seed: UInt64 = 0x2545_f491_4f6c_dd1d
        func next() -> UInt64 { seed ^= seed << 13; seed ^= seed >> 7; seed ^= seed << 17; return seed }
        for high in [false, true] {
            // Few distinct addresses: many ties.
            let ranges = (0..<1024).map { i in
                MemoryRange(address: (high && i == 700 ? 1 << 56 : 0x7f00_0000_0000) + next() % 64 * 16, length: 16)
            }
            let expected = (0..<ranges.count).sorted {
                ranges[$0].address != ranges[$1].address ? ranges[$0].address < ranges[$1].address : $0 < $1
            }
            ranges.withUnsafeBufferPointer { #expect(MemoryRange.addressOrder($0, $0.count) == expected) }
        }
    }

    @Test func partialReadsAcrossAHole() throws {
        let (c, pid) = try Helper.start()
        defer { c.terminate() }
        let v = try addrs(try c.request("hole", expect: "addr"))
        let (base, page) = (v[0], v[1])
        let mem = ProcessMemory(pid: pid)
        let ranges = [
            MemoryRange(address: base, length: 64),                    // page 0: a1
            MemoryRange(address: base + page - 32, length: 64),        // straddles into the hole: 32
            MemoryRange(address: base + page + 8, length: 64),         // in the hole: 0
            MemoryRange(address: base + 2 * page, length: 64),         // page 2: a3
            MemoryRange(address: 0, length: 0),                        // empty
            MemoryRange(address: 8, length: 8),                        // NULL page: 0
            MemoryRange(address: base + 2 * page + 64, length: 128),   // a3
            MemoryRange(address: base, length: Int(3 * page)),         // leading page only
        ]
        let (buf, got) = readRanges(mem, ranges)
        #expect(got == [64, 32, 0, 64, 0, 0, 128, Int(page)])
        #expect(buf[0..<64].allSatisfy { $0 == 0xa1 })
        #expect(buf[64..<96].allSatisfy { $0 == 0xa1 })
        #expect(buf[192..<256].allSatisfy { $0 == 0xa3 })
        #expect(buf[264..<392].allSatisfy { $0 == 0xa3 })
        #expect(mem.stats.faults == 4)
    }

    @Test func deadProcessReadsZero() throws {
        let (c, pid) = try Helper.start()
        let a = try addrs(try c.request("alloc 64", expect: "addr"))[0]
        c.terminate()
        let mem = ProcessMemory(pid: pid)
        let (_, got) = readRanges(mem, [MemoryRange(address: a, length: 64), MemoryRange(address: a, length: 8)])
        #expect(got == [0, 0])
        #expect(mem.stats.processGone)
        #expect(mem.read(a, length: 64).isEmpty)
    }

    @Test func bufferTooSmallReadsNothingPastIt() throws {
        let (c, pid) = try Helper.start()
        defer { c.terminate() }
        let a = try addrs(try c.request("alloc 64", expect: "addr"))[0]
        let mem = ProcessMemory(pid: pid)
        var buf = [UInt8](repeating: 0, count: 80)
        var got = [Int](repeating: -1, count: 2)
        let ranges = [MemoryRange(address: a, length: 64), MemoryRange(address: a, length: 64)]
        ranges.withUnsafeBufferPointer { r in buf.withUnsafeMutableBytes { b in got.withUnsafeMutableBufferPointer { mem.read(r, into: b, bytesRead: $0) } } }
        #expect(got == [64, 0])
    }

    @Test func batchedReadSpeed() throws {
        let (c, pid) = try Helper.start()
        defer { c.terminate() }
        let size = 16 << 20
        let a = try addrs(try c.request("alloc \(size)", expect: "addr", timeout: 60))[0]
        let mem = ProcessMemory(pid: pid)
        // 262144 objects of 64 bytes: 256 syscalls of 1024 iovecs.
        let ranges = (0..<(size / 64)).map { MemoryRange(address: a + UInt64($0 * 64), length: 64) }
        let t0 = ChildProcess.now()
        let (buf, got) = readRanges(mem, ranges)
        let dt = ChildProcess.now() - t0
        // One big range, for comparison.
        let t1 = ChildProcess.now()
        let whole = mem.read(a, length: size)
        let dt1 = ChildProcess.now() - t1
        print("process_vm_readv: \(ranges.count) x 64 B in \(dt) s (\(dt / Double(ranges.count) * 1e9) ns/range, \(mem.stats.syscalls - 1) syscalls); 16 MiB in one range \(dt1) s")
        #expect(got.allSatisfy { $0 == 64 })
        #expect(whole.count == size)
        #expect(buf[64 * 1000] == UInt8(truncatingIfNeeded: 64 * 1000 * 7 + 3))
    }

    @Test func farApartRangesUseOneIovecEach() throws {
        let (c, pid) = try Helper.start()
        defer { c.terminate() }
        let a = try addrs(try c.request("alloc \(4 << 20)", expect: "addr", timeout: 30))[0]
        // 2048 ranges 2 KiB apart (gap > coalesceGap): two syscalls of 1024 iovecs.
        let ranges = (0..<2048).map { MemoryRange(address: a + UInt64($0) * 2048, length: 24) }
        let mem = ProcessMemory(pid: pid)
        let (buf, got) = readRanges(mem, ranges)
        #expect(got.allSatisfy { $0 == 24 })
        #expect(mem.stats.syscalls == 2)
        #expect(buf[24 * 5] == UInt8(truncatingIfNeeded: 5 * 2048 * 7 + 3))
        // Unsorted and overlapping ranges are fine too.
        let mixed = [MemoryRange(address: a + 4096, length: 8), MemoryRange(address: a, length: 4096), MemoryRange(address: a + 8, length: 8)]
        let (b2, g2) = readRanges(mem, mixed)
        #expect(g2 == [8, 4096, 8])
        #expect(b2[0] == UInt8(truncatingIfNeeded: 4096 * 7 + 3) && b2[8 + 4096] == UInt8(truncatingIfNeeded: 8 * 7 + 3))
    }

    @Test func coalescedGroupWithAHoleFallsBackPerRange() throws {
        let (c, pid) = try Helper.start()
        defer { c.terminate() }
        let v = try addrs(try c.request("hole", expect: "addr"))
        let (base, page) = (v[0], v[1])
        let mem = ProcessMemory(pid: pid)
        // Nearby ranges spanning the hole: one group, read short, then retried one by one.
        let ranges = [
            MemoryRange(address: base + page - 128, length: 64),
            MemoryRange(address: base + page - 48, length: 64),   // 48 readable
            MemoryRange(address: base + page + 512, length: 64),  // in the hole
            MemoryRange(address: base + 2 * page - 200, length: 64), // hole
            MemoryRange(address: base + 2 * page + 16, length: 64),  // a3
        ]
        let (buf, got) = readRanges(mem, ranges)
        #expect(got == [64, 48, 0, 0, 64])
        #expect(buf[0..<64].allSatisfy { $0 == 0xa1 } && buf[64..<112].allSatisfy { $0 == 0xa1 })
        #expect(buf[256..<320].allSatisfy { $0 == 0xa3 })
    }
}
