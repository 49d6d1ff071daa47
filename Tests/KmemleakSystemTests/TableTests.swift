import CKmemleakABI
import CKmemleakSys
import Glibc
@testable import KmemleakSystem
import Synchronization
import Testing

func allObjects(_ t: ClientTable) throws(TableError) -> ([ObjectRecord], ReadStats) {
    var out: [ObjectRecord] = []
    let stats = try t.readObjects { out.append($0) }
    return (out, stats)
}

@Suite struct SyntheticTableTests {
    @Test func validTable() throws {
        let s = try SyntheticTable()
        s.setComm(1, "main")
        s.setComm(2, "worker 1")
        s.setTrace(1, [0x1000, 0x2000, 0x3000])
        s.setTrace(2, Array(1...16).map { UInt64($0) })
        s.setObject(0, pointer: 0x10000, size: 32, seq: 1, trace: 1, comm: 1)
        s.setObject(1, pointer: 0x20000, size: 64, seq: 2, trace: 2, comm: 2, state: SyntheticTable.state(live: false, version: 2))
        s.setObject(2, pointer: 0x30000, size: 4096, seq: 3, trace: 0, comm: 0, minCount: 0, flags: KML_KIND_MMAP | KML_OBJ_NO_SCAN)
        s.setObject(5, pointer: 0x40000, size: 64, seq: 9, trace: 2, comm: 2, minCount: -1, flags: KML_KIND_PERCPU | KML_OBJ_HAS_AREAS, state: SyntheticTable.state(version: 77))
        s.setThread(0, tid: 100, stack: (0, 0), tls: (0x7000, 0x7100), comm: "main")
        s.setThread(1, tid: 101, stack: (0x9000, 0xa000), tls: (0xb000, 0xb100), comm: "worker 1")
        s.setRegion(0, kind: KML_REGION_PERCPU, start: 0x100000, size: 0x10000, cpu0: 0x200000, stride: 0x10000, nrCpus: 4)
        s.setRegion(1, kind: KML_REGION_SHIM_PRIVATE, start: 0x300000, size: 0x1000)
        s.setArea(0, object: 5, seq: 9, start: 0x40008, size: 16)
        s.header.flags = KML_TABLE_DISABLED
        withUnsafeMutableBytes(of: &s.header.disabled_reason) { b in for (i, c) in "out of slots".utf8.enumerated() { b[i] = c } }
        s.header.live_objects = 3
        s.writeHeader()

        let t = try s.open(expectedPid: getpid())
        let h = try t.header()
        #expect(h.pid == getpid() && h.nrCpuIds == 4 && h.clkTck == 100 && h.liveObjects == 3)
        #expect(h.isDisabled && h.disabledReason == "out of slots")
        let (objs, stats) = try allObjects(t)
        #expect(objs.map(\.slot) == [0, 2, 5])
        #expect(objs.map(\.pointer) == [0x10000, 0x30000, 0x40000])
        #expect(objs[0].size == 32 && objs[0].seq == 1 && objs[0].traceId == 1 && objs[0].commId == 1 && objs[0].tid == 7)
        #expect(objs[1].kind == KML_KIND_MMAP && objs[1].noScan && objs[1].minCount == 0)
        #expect(objs[2].isPerCPU && objs[2].hasAreas && objs[2].minCount == -1 && objs[2].version == 77)
        #expect(stats.slots == 6 && stats.live == 3 && stats.skipped == 0)
        #expect(try t.frames(1) == [0x1000, 0x2000, 0x3000])
        #expect(try t.frames(2).count == 16)
        #expect(try t.frames(0) == [] && t.frames(3) == [] && t.frames(1000) == [])
        #expect(try t.loadTraces() == 2)
        #expect(try t.comm(1) == "main" && t.comm(2) == "worker 1" && t.comm(3) == nil && t.comm(0) == nil)
        let threads = try t.readThreads()
        #expect(threads.count == 2 && threads[1].tid == 101 && threads[1].stackLo == 0x9000 && threads[1].comm == "worker 1")
        let regions = try t.readRegions()
        #expect(regions.count == 2 && regions[0].isPerCPU && regions[0].nrCpus == 4 && regions[1].isShimPrivate)
        let areas = try t.readAreas()
        #expect(areas == [AreaRecord(slot: 0, objectIndex: 5, objectSeq: 9, start: 0x40008, size: 16)])
        #expect(try t.readObject(slot: 5)?.seq == 9)
        #expect(try t.readObject(slot: 1) == nil)
        #expect(try t.readObject(slot: 1_000_000) == nil)
        // Daemon-owned fields.
        try t.setDaemonPid(4242)
        try t.setDaemonScans(3)
        let h2 = try t.header()
        #expect(h2.daemonPid == 4242 && h2.daemonScans == 3)
    }

    @Test func hugeIdsDoNotAllocate() throws {
        // A sparse 2^22-trace, 2^22-comm table: looking up the last ids reads one record, caches one.
        let s = try SyntheticTable(.init(objects: 64, traces: 1 << 22, comms: 1 << 22))
        s.setTrace(1 << 22, [42])
        s.setComm(1 << 22, "last")
        let t = try s.open()
        #expect(try t.frames(1 << 22) == [42])
        #expect(try t.comm(1 << 22) == "last")
        #expect(try t.frames((1 << 22) - 1) == [])
        #expect(try t.frames(UInt32.max) == [])
        #expect(try t.loadTraces() == 0) // beyond the bulk-load bound: read on demand (above)
    }

    @Test func sparseTableIsSkippedByHoles() throws {
        // 16M slots claimed used (a 1 GiB sparse memfd), two live objects: holes are not read.
        let n: UInt32 = 1 << 24
        let s = try SyntheticTable(.init(objects: n))
        s.setObject(10, pointer: 0x1000, size: 8, seq: 1)
        s.setObject(n - 5, pointer: 0x2000, size: 8, seq: 2)
        s.header.objects_used = n
        s.writeHeader()
        let (objs, stats) = try allObjects(try s.open())
        #expect(objs.map(\.pointer) == [0x1000, 0x2000])
        #expect(stats.bytes < 8 << 20, "read \(stats.bytes) bytes")
    }

    @Test func busySlotIsSkippedNotHung() throws {
        let s = try SyntheticTable()
        s.setObject(0, pointer: 0x1000, size: 8, seq: 1)
        s.setObject(1, pointer: 0x2000, size: 8, seq: 2, state: SyntheticTable.state(busy: true))
        s.setObject(2, pointer: 0x3000, size: 8, seq: 3)
        let (objs, stats) = try allObjects(try s.open())
        #expect(objs.map(\.seq) == [1, 3])
        #expect(stats.retried == 1 && stats.skipped == 1)
    }

    /// One chunked read (`readObjects(digests:)`): the slots streamed and the unchanged ranges.
    private func chunkedRead(_ t: ClientTable, _ digests: ObjectChunkDigests, maxLive: Int = .max,
                             settled: (ObjectRecord) -> Bool = { _ in true }) throws(TableError)
        -> (streamed: [UInt32], unchanged: [Range<UInt32>], stats: ReadStats) {
        var streamed: [UInt32] = []
        var unchanged: [Range<UInt32>] = []
        let stats = try t.readObjects(maxLive: maxLive, digests: digests, unchanged: { unchanged.append($0) }) {
            streamed.append($0.slot)
            return settled($0)
        }
        return (streamed, unchanged, stats)
    }

    @Test func unchangedChunksAreReadOnceAndNotStreamed() throws {
        let s = try SyntheticTable(.init(objects: 4096))
        let slots: [UInt32] = [0, 5, 1023, 1024, 2000, 2500, 3000]
        for (i, slot) in slots.enumerated() { s.setObject(slot, pointer: 0x10000 + UInt64(i) * 0x100, size: 32, seq: UInt64(i + 1)) }
        let t = try s.open()
        let digests = ObjectChunkDigests()
        let first = try chunkedRead(t, digests)
        #expect(first.streamed == slots && first.unchanged.isEmpty && first.stats.unchangedChunks == 0)
        #expect(digests.known == 3)
        // Nothing changed: each chunk read once, no record streamed, the live count still counted.
        let second = try chunkedRead(t, digests)
        #expect(second.streamed.isEmpty && second.unchanged == [0..<1024, 1024..<2048, 2048..<3001])
        #expect(second.stats.live == slots.count && second.stats.preads == 3 && second.stats.unchangedChunks == 3)
        // The budget counts the unchanged chunks' records too.
        #expect(throws: TableError.tooManyRecords(section: "objects", limit: 6)) { try chunkedRead(t, digests, maxLive: 6) }
        // A new allocation in slot 1024's place: only its chunk is streamed.
        s.setObject(1024, pointer: 0x20000, size: 32, seq: 100, state: SyntheticTable.state(version: 3))
        let third = try chunkedRead(t, digests)
        #expect(third.streamed == [1024, 2000] && third.unchanged == [0..<1024, 2048..<3001])
        // A freed slot changes its chunk.
        s.setObject(5, pointer: 0x10100, size: 32, seq: 2, state: SyntheticTable.state(live: false, version: 2))
        let fourth = try chunkedRead(t, digests)
        #expect(fourth.streamed == [0, 1023] && fourth.unchanged == [1024..<2048, 2048..<3001])
    }

    @Test(arguments: ["pointer", "size", "time", "trace", "tid", "minCount", "flags", "comm", "transientGen"])
    func anyChangedFieldMakesItsChunkStreamed(_ field: String) throws {
        let s = try SyntheticTable(.init(objects: 2048))
        s.setObject(7, pointer: 0x1000, size: 32, seq: 1, trace: 1, comm: 1)
        s.setObject(1500, pointer: 0x2000, size: 32, seq: 2)
        s.setTrace(2, [1]); s.setComm(2, "x")
        let t = try s.open()
        let digests = ObjectChunkDigests()
        _ = try chunkedRead(t, digests)
        // One field rewritten in place, state untouched (what a reader must not trust the state alone for).
        let offset = s.header.objects_offset + 7 * 64
        var o = kml_object()
        _ = withUnsafeMutableBytes(of: &o) { pread(s.fd, $0.baseAddress, 64, off_t(offset)) }
        switch field {
        case "pointer": o.pointer += 16
        case "size": o.size += 1
        case "time": o.time_ns += 1
        case "trace": o.trace_id = 2
        case "tid": o.tid += 1
        case "minCount": o.min_count = 0
        case "flags": o.flags |= KML_OBJ_NO_SCAN
        case "comm": o.comm_id = 2
        default: o.transient_gen += 1
        }
        s.pwriteValue(o, at: offset)
        let again = try chunkedRead(t, digests)
        #expect(again.streamed == [7] && again.unchanged == [1024..<1501])
    }

    @Test func shimPrivateLinkIsNoChange() throws {
        let s = try SyntheticTable(.init(objects: 1024))
        s.setObject(3, pointer: 0x1000, size: 32, seq: 1)
        let t = try s.open()
        let digests = ObjectChunkDigests()
        _ = try chunkedRead(t, digests)
        s.pwriteValue(UInt32(12345), at: s.header.objects_offset + 3 * 64 + 4)     // hash_next
        #expect(try chunkedRead(t, digests).unchanged == [0..<4])
    }

    @Test func unsettledBusyAndForgottenChunksAreStreamedAgain() throws {
        let s = try SyntheticTable(.init(objects: 4096))
        s.setObject(1, pointer: 0x1000, size: 8, seq: 1)
        s.setObject(1100, pointer: 0x2000, size: 8, seq: 2)
        s.setObject(2100, pointer: 0x3000, size: 8, seq: 3)
        s.setObject(2101, pointer: 0x4000, size: 8, seq: 4, state: SyntheticTable.state(busy: true))
        let t = try s.open()
        let digests = ObjectChunkDigests()
        // Slot 1100 unsettled (e.g. its registration failed); chunk 2 has a busy slot.
        let first = try chunkedRead(t, digests) { $0.slot != 1100 }
        #expect(first.streamed == [1, 1100, 2100] && first.stats.skipped == 1)
        #expect(digests.known == 1)
        let second = try chunkedRead(t, digests)
        #expect(second.streamed == [1100, 2100] && second.unchanged == [0..<1024])
        // Chunk 1 is settled now; forgetting a slot of chunk 0 reads chunk 0 in full again.
        digests.forget(slots: 1000..<1001)
        let third = try chunkedRead(t, digests)
        #expect(third.streamed == [1, 2100] && third.unchanged == [1024..<2048])
    }

    @Test func digestsAreKeyedPerInstance() throws {
        let s = try SyntheticTable(.init(objects: 1024))
        s.setObject(0, pointer: 0x1000, size: 8, seq: 1)
        let t = try s.open()
        let one = ObjectChunkDigests(), other = ObjectChunkDigests()
        _ = try chunkedRead(t, one)
        #expect(try chunkedRead(t, other).streamed == [0])   // a fresh reader knows nothing
        #expect(try chunkedRead(t, one).streamed.isEmpty)
    }

    /// One corruption, how to apply it, and the error it must give (from open or from reads).
    struct Corruption: Sendable, CustomTestStringConvertible {
        var name: String
        var apply: @Sendable (SyntheticTable) -> Void
        var check: @Sendable (TableError) -> Bool
        var testDescription: String { name }
    }

    static let corruptions: [Corruption] = [
        .init(name: "bad magic", apply: { $0.header.magic = 0x1234; $0.writeHeader() }, check: { $0 == .badMagic(0x1234) }),
        .init(name: "version", apply: { $0.header.version = KML_ABI_VERSION + 1; $0.writeHeader() }, check: { $0 == .badVersion(KML_ABI_VERSION + 1) }),
        .init(name: "header_size", apply: { $0.header.header_size = 100; $0.writeHeader() }, check: { $0 == .badHeaderSize(100) }),
        .init(name: "total_size small", apply: { $0.header.total_size = 10; $0.writeHeader() }, check: { $0 == .badTotalSize(10) }),
        .init(name: "total_size > file", apply: { $0.header.total_size += 4096; $0.writeHeader() }, check: { if case .truncated = $0 { true } else { false } }),
        .init(name: "truncated file", apply: { _ = ftruncate($0.fd, 4096) }, check: { if case .truncated = $0 { true } else { false } }),
        .init(name: "empty file", apply: { _ = ftruncate($0.fd, 0) }, check: { if case .truncated = $0 { true } else { false } }),
        .init(name: "section past end", apply: { $0.header.areas_offset = $0.header.total_size - 8; $0.writeHeader() }, check: { if case .badSection("areas", _) = $0 { true } else { false } }),
        .init(name: "section offset overflow", apply: { $0.header.objects_offset = UInt64.max - 63; $0.writeHeader() }, check: { if case .badSection("objects", _) = $0 { true } else { false } }),
        .init(name: "section inside header", apply: { $0.header.traces_offset = 64; $0.writeHeader() }, check: { if case .badSection("traces", _) = $0 { true } else { false } }),
        .init(name: "misaligned section", apply: { $0.header.comms_offset += 4; $0.writeHeader() }, check: { if case .badSection("comms", _) = $0 { true } else { false } }),
        .init(name: "huge capacity", apply: { $0.header.objects_capacity = UInt32.max; $0.writeHeader() }, check: { if case .badSection("objects", _) = $0 { true } else { false } }),
        .init(name: "entry size", apply: { $0.header.object_size = 48; $0.writeHeader() }, check: { if case .badSection("objects", _) = $0 { true } else { false } }),
        .init(name: "overlapping sections", apply: { $0.header.threads_offset = $0.header.traces_offset + 64; $0.writeHeader() }, check: { if case .overlappingSections = $0 { true } else { false } }),
        .init(name: "used > capacity", apply: { $0.header.objects_used = $0.header.objects_capacity + 1; $0.writeHeader() }, check: { $0 == .usedOverCapacity(section: "objects", used: 65, capacity: 64) }),
        .init(name: "nr_cpu_ids 0", apply: { $0.header.nr_cpu_ids = 0; $0.writeHeader() }, check: { if case .badSection("header", _) = $0 { true } else { false } }),
        .init(name: "trace len > 16", apply: { $0.setTrace(1, [1, 2], len: 17) }, check: { $0 == .traceTooLong(id: 1, length: 17) }),
        .init(name: "object trace id out of range", apply: { $0.setObject(3, pointer: 0x1000, size: 8, seq: 1, trace: 17) }, check: { if case .badRecord("objects", 3, _) = $0 { true } else { false } }),
        .init(name: "object comm id out of range", apply: { $0.setObject(0, pointer: 0x1000, size: 8, seq: 1, comm: 9) }, check: { if case .badRecord("objects", 0, _) = $0 { true } else { false } }),
        .init(name: "object kind", apply: { $0.setObject(0, pointer: 0x1000, size: 8, seq: 1, flags: 0xf) }, check: { if case .badRecord("objects", 0, _) = $0 { true } else { false } }),
        .init(name: "object size overflow", apply: { $0.setObject(0, pointer: UInt64.max - 4, size: 8, seq: 1) }, check: { if case .badRecord("objects", 0, _) = $0 { true } else { false } }),
        .init(name: "comm without NUL", apply: { $0.setComm(1, "", raw: Array(repeating: 0x41, count: 16)) }, check: { $0 == .commNotTerminated(id: 1) }),
        .init(name: "thread comm without NUL", apply: { $0.setThread(0, tid: 1, stack: (0, 0), tls: (0, 0), comm: "", rawComm: Array(repeating: 0x41, count: 16)) }, check: { if case .badRecord("threads", 0, _) = $0 { true } else { false } }),
        .init(name: "thread inverted stack", apply: { $0.setThread(0, tid: 1, stack: (0x2000, 0x1000), tls: (0, 0), comm: "x") }, check: { if case .badRecord("threads", 0, _) = $0 { true } else { false } }),
        .init(name: "region kind", apply: { $0.setRegion(0, kind: 9, start: 0x1000, size: 0x1000) }, check: { if case .badRecord("regions", 0, _) = $0 { true } else { false } }),
        .init(name: "region nr_cpus > nr_cpu_ids", apply: { $0.setRegion(0, kind: KML_REGION_PERCPU, start: 0x1000, size: 0x1000, cpu0: 0x10000, stride: 0x1000, nrCpus: 5) }, check: { if case .badRecord("regions", 0, _) = $0 { true } else { false } }),
        .init(name: "region layout overflow", apply: { $0.setRegion(0, kind: KML_REGION_PERCPU, start: 0x1000, size: 0x1000, cpu0: UInt64.max - 0x100, stride: 0x1000, nrCpus: 4) }, check: { if case .badRecord("regions", 0, _) = $0 { true } else { false } }),
        .init(name: "area object index", apply: { $0.setArea(0, object: 64, seq: 1, start: 0, size: 8) }, check: { if case .badRecord("areas", 0, _) = $0 { true } else { false } }),
    ]

    @Test(arguments: corruptions)
    func corruptTableGivesTypedError(_ c: Corruption) throws {
        let s = try SyntheticTable()
        s.setObject(0, pointer: 0x1000, size: 8, seq: 1)
        c.apply(s)
        var caught: TableError? = nil
        do {
            let t = try s.open()
            _ = try allObjects(t)
            _ = try t.readThreads()
            _ = try t.readRegions()
            _ = try t.readAreas()
            _ = try t.loadTraces()
            for id in 1...8 { _ = try t.comm(UInt32(id)) }
        } catch {
            caught = error
        }
        let e = try #require(caught, "\(c.name): no error")
        #expect(c.check(e), "\(c.name): got \(e)")
    }

    @Test func truncatedAfterOpen() throws {
        let s = try SyntheticTable()
        s.setObject(0, pointer: 0x1000, size: 8, seq: 1)
        s.setTrace(1, [1])
        let t = try s.open()
        _ = try allObjects(t)
        ftruncate(s.fd, 1024)
        #expect { try allObjects(t) } throws: { e in if case .truncated = e as? TableError { true } else { false } }
        #expect { try t.frames(1) } throws: { _ in true }
        ftruncate(s.fd, 0)
        #expect { try t.header() } throws: { e in if case .truncated = e as? TableError { true } else { false } }
        #expect { try t.setDaemonPid(1) } throws: { e in if case .truncated = e as? TableError { true } else { false } }
        var st = stat()
        fstat(s.fd, &st)
        #expect(st.st_size == 0) // the daemon never extended it
    }

    @Test func geometryChangeAfterOpenIsRejected() throws {
        let s = try SyntheticTable()
        let t = try s.open()
        s.header.objects_capacity = 32
        s.writeHeader()
        #expect(throws: TableError.geometryChanged) { try t.header() }
    }

    @Test func pidMismatch() throws {
        let s = try SyntheticTable(pid: 1)
        #expect(throws: TableError.pidMismatch(header: 1, expected: getpid())) { try s.open(expectedPid: getpid()) }
    }

    /// A writer rewrites slots with the seqlock protocol while we read: every record we accept is
    /// internally consistent (pointer = seq * 16, size = seq, time = seq * 1000).
    @Test func concurrentWriterNeverGivesTornRecords() throws {
        let s = try SyntheticTable(.init(objects: 256))
        for i in 0..<256 { s.setObject(UInt32(i), pointer: UInt64(i + 1) * 16, size: UInt64(i + 1), seq: UInt64(i + 1)) }
        let base = try s.map()
        let objects = base + Int(s.header.objects_offset)
        let stop = Atomic<Bool>(false)
        let writes = Atomic<Int>(0)
        nonisolated(unsafe) let objs = objects
        let writer = SpinThread {
            var seq: UInt64 = 1000
            while !stop.load(ordering: .relaxed) {
                for slot in 0..<256 {
                    let p = objs + slot * 64
                    let old = kml_load_acquire_u32(p)
                    let busy = (old | KML_STATE_BUSY) & ~KML_STATE_KIND_MASK | KML_STATE_LIVE
                    kml_store_release_i32(p, Int32(bitPattern: busy))
                    kml_acquire_fence() // compiler barrier; x86 keeps store order
                    seq += 1
                    p.storeBytes(of: seq * 16, toByteOffset: 8, as: UInt64.self)
                    p.storeBytes(of: seq, toByteOffset: 16, as: UInt64.self)
                    p.storeBytes(of: seq, toByteOffset: 24, as: UInt64.self)
                    p.storeBytes(of: seq * 1000, toByteOffset: 32, as: UInt64.self)
                    let version = ((old >> KML_STATE_VERSION_SHIFT) &+ 1) << KML_STATE_VERSION_SHIFT
                    kml_store_release_i32(p, Int32(bitPattern: version | KML_STATE_LIVE))
                }
                writes.add(256, ordering: .relaxed)
            }
        }
        defer { munmap(base, Int(s.totalSize)) }
        let t = try s.open()
        var accepted = 0, skipped = 0, retried = 0
        let deadline = ChildProcess.now() + 1.0
        var passes = 0
        while ChildProcess.now() < deadline || passes < 5 {
            let stats = try t.readObjects { o in
                #expect(o.pointer == o.seq * 16 && o.size == o.seq && o.timeNs == o.seq * 1000, "torn record \(o)")
                accepted += 1
            }
            skipped += stats.skipped
            retried += stats.retried
            passes += 1
        }
        stop.store(true, ordering: .relaxed)
        writer.join()
        print("seqlock: \(passes) passes, \(accepted) accepted, \(retried) retried, \(skipped) skipped, \(writes.load(ordering: .relaxed)) writes")
        #expect(accepted > 0)
    }

    @Test func readSpeedOneMillionObjects() throws {
        let n: UInt32 = 1 << 20
        let s = try SyntheticTable(.init(objects: n, traces: 1024))
        let base = try s.map()
        defer { munmap(base, Int(s.totalSize)) }
        let objs = base + Int(s.header.objects_offset)
        for i in 0..<Int(n) {
            let p = objs + i * 64
            p.storeBytes(of: SyntheticTable.state(live: i % 8 != 0), as: UInt32.self)
            p.storeBytes(of: UInt64(0x10000 + i * 64), toByteOffset: 8, as: UInt64.self)
            p.storeBytes(of: UInt64(48), toByteOffset: 16, as: UInt64.self)
            p.storeBytes(of: UInt64(i + 1), toByteOffset: 24, as: UInt64.self)
        }
        s.header.objects_used = n
        s.writeHeader()
        let t = try s.open()
        let t0 = ChildProcess.now()
        var count = 0
        var sum: UInt64 = 0
        let stats = try t.readObjects { o in count += 1; sum &+= o.pointer }
        let dt = ChildProcess.now() - t0
        print("table read: \(n) slots, \(count) live in \(dt) s (\(dt / Double(n) * 1e9) ns/slot), \(stats.preads) preads, \(stats.bytes >> 20) MiB")
        #expect(count == Int(n) - Int(n) / 8)
        #expect(stats.skipped == 0)
    }
}

@Suite struct RendezvousTests {
    @Test func parse() {
        let r = Rendezvous.parse("pid=123 fd=5 addr=7f0000000000 size=65536 start=999\n")
        #expect(r == Rendezvous(pid: 123, fd: 5, address: 0x7f00_0000_0000, size: 65536, startTime: 999))
        #expect(Rendezvous.parse(r!.line) == r)
        #expect(Rendezvous.parse("pid=123 fd=5 addr=0x7f0000000000 size=65536 start=999")?.address == 0x7f00_0000_0000)
        for bad in ["", "pid=123", "pid=123 fd=5 addr=7f0000000000 size=65536", "pid=-1 fd=5 addr=1000 size=1 start=1",
                    "pid=1 fd=5 addr=1001 size=1 start=1", "pid=1 fd=5 addr=zz size=1 start=1", "pid=1 fd=5 addr=1000 size=0 start=1",
                    "pid=1 fd=5 addr=fffffffffffff000 size=8192 start=1", "pid=1 pid=1 fd=5 addr=1000 size=1 start=1",
                    "pid=1 fd=5 addr=1000 size=1 start=1 extra=2", "pid=1 fd=5 addr=1000 size=1 start=1\nsecond line",
                    "pid=99999999999 fd=5 addr=1000 size=1 start=1"] {
            #expect(Rendezvous.parse(bad) == nil, "\(bad)")
        }
    }

    /// Announces a synthetic table of this very process through a rendezvous file, like a client.
    func announce(_ dir: TempDir, pid: Int32 = getpid(), start: UInt64? = nil) throws -> (SyntheticTable, UnsafeMutableRawPointer, Rendezvous) {
        let me = try Proc.stat(getpid())
        let s = try SyntheticTable(pid: pid, startTime: start ?? me.startTime)
        s.setObject(0, pointer: 0x1234000, size: 16, seq: 1)
        let p = try s.map()
        let r = Rendezvous(pid: pid, fd: s.fd, address: UInt64(UInt(bitPattern: p)), size: s.totalSize,
                           startTime: start ?? me.startTime, path: dir.path + "/\(pid).client")
        try writeFile(r.path, r.line)
        return (s, p, r)
    }

    @Test func openThroughMapFilesAndFd() throws {
        let dir = try TempDir()
        let (s, p, r) = try announce(dir)
        defer { munmap(p, Int(s.totalSize)) }
        let t = try ClientTable.open(try Rendezvous.read(path: r.path))
        #expect(t.pid == getpid() && t.isAlive)
        #expect(try allObjects(t).0.map(\.pointer) == [0x1234000])
        // A wrong address: map_files fails, /proc/PID/fd/<fd> works.
        var r2 = r
        r2.address += 0x1000_0000_0000
        #expect(try ClientTable.open(r2).pid == getpid())
        // Roots exclude the table mapping.
        let roots = try t.roots(cache: ELFCache())
        #expect(!roots.contains { $0.start < r.address + r.size && r.address < $0.end })
    }

    @Test func staleAndForeign() throws {
        let dir = try TempDir()
        let (s, p, r) = try announce(dir)
        defer { munmap(p, Int(s.totalSize)) }
        var wrongStart = r
        wrongStart.startTime += 1
        #expect { try ClientTable.open(wrongStart) } throws: { e in if case .stale = e as? TableError { true } else { false } }
        let (c, pid) = try Helper.start()
        let childStart = try Proc.stat(pid).startTime
        c.terminate()
        let dead = Rendezvous(pid: pid, fd: 3, address: 0x10000, size: 4096, startTime: childStart)
        #expect(dead.isStale)
        #expect { try ClientTable.open(dead) } throws: { e in if case .stale = e as? TableError { true } else { false } }
        // fd pointing to something that is not the table, nothing mapped at the address: the live
        // process has no table there, so the file is stale.
        let other = try SyntheticTable(name: "something-else")
        var foreign = r
        foreign.fd = other.fd
        foreign.address = 0x1000
        #expect { try ClientTable.open(foreign) } throws: { e in if case .stale = e as? TableError { true } else { false } }
        // The right address but a foreign fd: map_files finds the table (the fd is not needed).
        var wrongFd = r
        wrongFd.fd = other.fd
        #expect(try ClientTable.open(wrongFd).pid == getpid())
        // Right memfd name, wrong identity: another process's pid in the header.
        let (s2, p2, _) = try announce(dir, pid: getpid())
        defer { munmap(p2, Int(s2.totalSize)) }
        s2.header.pid = 1
        s2.writeHeader()
        let r3 = Rendezvous(pid: getpid(), fd: s2.fd, address: UInt64(UInt(bitPattern: p2)), size: s2.totalSize, startTime: r.startTime)
        #expect(throws: TableError.pidMismatch(header: 1, expected: getpid())) { try ClientTable.open(r3) }
    }

    /// A process that maps a table of our run directory whose header is not published yet (magic 0:
    /// the shim stores it last) is looked at again at the next pass, not rejected; a table with a
    /// wrong magic still is.
    @Test(.enabled(if: access("/usr/bin/python3", X_OK) == 0, "needs /usr/bin/python3"))
    func processDiscoveryWaitsForAnUnpublishedHeader() throws {
        let dir = try TempDir()
        let script = """
            import mmap, os, sys
            st = os.stat(sys.argv[1])
            fd = os.memfd_create("kmemleak-table:%x:%x" % (st.st_dev, st.st_ino), 0)
            os.ftruncate(fd, 65536)
            m = mmap.mmap(fd, 65536, mmap.MAP_SHARED)
            m[0:8] = int(sys.argv[2]).to_bytes(8, "little")
            print("READY", flush=True)
            sys.stdin.readline()
            """
        let discovery = ProcessDiscovery(runDirectory: dir.path)
        discovery.settleTicks = 0
        for magic in [0, 0x1234] as [UInt64] {
            let child = try ChildProcess("/usr/bin/python3", ["-c", script, dir.path, String(magic)])
            defer { child.terminate() }
            _ = try child.waitFor("READY")
            for _ in 0..<2 {
                let result = discovery.scan(known: [])
                #expect(!result.adopted.contains { $0.pid == child.pid })
                let failed = result.failed.filter { $0.client?.pid == child.pid }
                if magic == 0 {
                    #expect(failed.isEmpty, "\(failed.map(\.error))")
                } else {
                    #expect(failed.map(\.error) == [.badMagic(magic)])
                    break
                }
            }
        }
    }

    @Test func discoveryAdoptsAndRemovesStale() throws {
        let dir = try TempDir()
        let (s, p, r) = try announce(dir)
        defer { munmap(p, Int(s.totalSize)) }
        let (c, pid) = try Helper.start()
        let childStart = try Proc.stat(pid).startTime
        c.terminate()
        try writeFile(dir.path + "/\(pid).client", Rendezvous(pid: pid, fd: 3, address: 0x10000, size: 4096, startTime: childStart).line)
        try writeFile(dir.path + "/\(pid + 100000).client", "garbage\n") // malformed, dead pid
        try writeFile(dir.path + "/\(getpid()).tmp", "ignored")
        let result = ClientDiscovery.scan(runDirectory: dir.path, known: [])
        #expect(result.adopted.map(\.pid) == [getpid()])
        #expect(Set(result.removedStale) == [dir.path + "/\(pid).client", dir.path + "/\(pid + 100000).client"])
        #expect(result.failed.isEmpty)
        #expect(!fileExists(dir.path + "/\(pid).client") && fileExists(r.path))
        let again = ClientDiscovery.scan(runDirectory: dir.path, known: [result.adopted[0].id])
        #expect(again.adopted.isEmpty && again.removedStale.isEmpty)
        let missing = ClientDiscovery.scan(runDirectory: dir.path + "/nope", known: [])
        #expect(missing.failed.count == 1)
    }

    @Test func hostileRendezvousFilesDoNotBlock() throws {
        let dir = try TempDir()
        let fifo = dir.path + "/\(getpid()).client"
        #expect(mkfifo(fifo, 0o644) == 0)
        #expect { try Rendezvous.read(path: fifo) } throws: { e in if case .badRendezvous = e as? TableError { true } else { false } }
        unlink(fifo)
        // A symlink to a valid-looking file elsewhere is not followed.
        let other = try TempDir()
        try writeFile(other.path + "/x", "pid=\(getpid()) fd=3 addr=1000 size=4096 start=1\n")
        #expect(symlink(other.path + "/x", fifo) == 0)
        #expect { try Rendezvous.read(path: fifo) } throws: { e in if case .system(let s) = e as? TableError { s.errno == ELOOP } else { false } }
        // Oversized file.
        unlink(fifo)
        try writeFile(fifo, String(repeating: "x", count: 5000))
        #expect { try Rendezvous.read(path: fifo) } throws: { e in if case .badRendezvous = e as? TableError { true } else { false } }
        // Name/pid mismatch.
        try writeFile(dir.path + "/1.client", "pid=\(getpid()) fd=3 addr=1000 size=4096 start=1\n")
        #expect { try Rendezvous.read(path: dir.path + "/1.client") } throws: { e in if case .badRendezvous = e as? TableError { true } else { false } }
    }

    @Test func rendezvousNames() {
        #expect(Rendezvous.pid(fromName: "123.client") == 123)
        #expect(Rendezvous.pid(fromName: "123.00ff00ff00ff00ff.client") == 123)
        #expect(Rendezvous.pid(fromTemporaryName: ".123.00ff00ff00ff00ff.tmp") == 123)
        for junk in [".123.tmp", "123.00ff00ff00ff00ff.tmp", ".123.client.tmp", ".123.00ff00ff00ff00ff.client", "..tmp"] {
            #expect(Rendezvous.pid(fromTemporaryName: junk) == nil, "\(junk)")
        }
        for junk in [".123.client", "123.client.tmp", ".123.00ff00ff00ff00ff.tmp", "123.0ff.client", "123.00ff00ff00ff00fg.client",
                     "-1.client", "+1.client", "0.client", "99999999999.client", "1.2.3.client", "client", ".client", "a.client"] {
            #expect(Rendezvous.pid(fromName: junk) == nil, "\(junk)")
        }
    }

    /// A file that is not root's nor the process's was written by someone else (a squatter): it is
    /// not adopted, and removed, while the process's own (random) name is adopted. Links, FIFOs and
    /// directories under rendezvous names are never removed.
    @Test func squattedFilesAreForeignAndRemovedOthersKept() throws {
        let dir = try TempDir()
        let (s, p, r) = try announce(dir)
        defer { munmap(p, Int(s.totalSize)) }
        #expect(chown(r.path, 65534, 65534) == 0)
        #expect {
            try ClientTable.open(try Rendezvous.read(path: r.path))
        } throws: { e in if case .foreignRendezvous(_, 65534, _) = e as? TableError { true } else { false } }
        let own = dir.path + "/\(getpid()).0123456789abcdef.client"
        try writeFile(own, r.line)
        let (c, dead) = try Helper.start()
        c.terminate()
        #expect(symlink("/etc/passwd", dir.path + "/\(dead).client") == 0)
        #expect(mkfifo(dir.path + "/\(dead).0000000000000000.client", 0o644) == 0)
        #expect(mkdir(dir.path + "/\(dead).1111111111111111.client", 0o755) == 0)
        let deadTemporary = dir.path + "/.\(dead).2222222222222222.tmp", liveTemporary = dir.path + "/.\(getpid()).3333333333333333.tmp"
        try writeFile(deadTemporary, "pid=")
        try writeFile(liveTemporary, "pid=")
        let result = ClientDiscovery.scan(runDirectory: dir.path, known: [])
        #expect(result.adopted.map(\.rendezvous?.path) == [own])
        #expect(result.removedStale == [deadTemporary, r.path] && !fileExists(r.path) && !fileExists(deadTemporary))
        #expect(fileExists(liveTemporary))
        #expect(result.failed.count == 3 && result.failed.allSatisfy { $0.client == nil })
        var st = stat()
        #expect(lstat(dir.path + "/\(dead).client", &st) == 0 && (st.st_mode & S_IFMT) == S_IFLNK)
        #expect(fileExists(dir.path + "/\(dead).0000000000000000.client") && fileExists(dir.path + "/\(dead).1111111111111111.client"))
        #expect(fileExists("/etc/passwd"))
    }

    /// A live client whose table is invalid is reported with its identity, so that the daemon does
    /// not open it again at every scan (it passes it in `known`); its file is not removed.
    @Test func invalidTableIsReportedWithItsClient() throws {
        let dir = try TempDir()
        let (s, p, r) = try announce(dir)
        defer { munmap(p, Int(s.totalSize)) }
        s.header.magic = 0x1234
        s.writeHeader()
        let result = ClientDiscovery.scan(runDirectory: dir.path, known: [])
        #expect(result.adopted.isEmpty && result.removedStale.isEmpty)
        let failure = try #require(result.failed.first)
        #expect(failure.error == .badMagic(0x1234) && failure.path == r.path)
        let client = try #require(failure.client)
        #expect(client == ClientID(pid: getpid(), startTime: r.startTime, tableAddress: r.address))
        let again = ClientDiscovery.scan(runDirectory: dir.path, known: [client])
        #expect(again.adopted.isEmpty && again.failed.isEmpty && again.removedStale.isEmpty)
        #expect(fileExists(r.path))
    }

    /// A run directory that is a symlink is not used.
    @Test func runDirectoryIsNotFollowed() throws {
        let dir = try TempDir()
        let (s, p, _) = try announce(dir)
        defer { munmap(p, Int(s.totalSize)) }
        let link = dir.path + ".link"
        #expect(symlink(dir.path, link) == 0)
        defer { unlink(link) }
        let result = ClientDiscovery.scan(runDirectory: link, known: [])
        #expect(result.adopted.isEmpty)
        #expect(result.failed.count == 1)
        guard case .system(let e)? = result.failed.first?.error else { Issue.record("\(result.failed)"); return }
        #expect(e.call == "open" && (e.errno == ENOTDIR || e.errno == ELOOP))
    }

}

@Suite struct TableFuzzTests {
    /// Random byte mutations of a valid table (header and records): only typed errors, no traps,
    /// and never more records than the capacity.
    @Test func randomMutations() throws {
        var rng = SystemRandomNumberGenerator()
        var errors: [String: Int] = [:]
        var ok = 0
        for _ in 0..<1500 {
            let s = try SyntheticTable()
            s.setComm(1, "main")
            s.setTrace(1, [1, 2, 3])
            for i in 0..<8 { s.setObject(UInt32(i), pointer: UInt64(0x1000 * (i + 1)), size: 64, seq: UInt64(i), trace: 1, comm: 1) }
            s.setThread(0, tid: 1, stack: (0x1000, 0x2000), tls: (0x3000, 0x3100), comm: "main")
            s.setRegion(0, kind: KML_REGION_PERCPU, start: 0x10000, size: 0x1000, cpu0: 0x20000, stride: 0x1000, nrCpus: 2)
            s.setArea(0, object: 1, seq: 1, start: 0x2000, size: 8)
            // 1-8 random bytes, in the header or anywhere in the used sections.
            let limit = Int(s.header.areas_offset) + 64
            for _ in 0..<Int.random(in: 1...8, using: &rng) {
                var b = UInt8.random(in: 0...255, using: &rng)
                let off = Bool.random(using: &rng) ? Int.random(in: 0..<360, using: &rng) : Int.random(in: 0..<limit, using: &rng)
                pwrite(s.fd, &b, 1, off_t(off))
            }
            if Int.random(in: 0..<20, using: &rng) == 0 { ftruncate(s.fd, off_t(Int.random(in: 0..<Int(s.totalSize), using: &rng))) }
            do {
                let t = try s.open()
                var n = 0
                try t.readObjects { _ in n += 1 }
                #expect(n <= Int(t.openedHeader.objects.capacity))
                _ = try t.readThreads(); _ = try t.readRegions(); _ = try t.readAreas()
                _ = try t.loadTraces()
                for id in 1...3 { _ = try t.comm(UInt32(id)); _ = try t.frames(UInt32(id)) }
                ok += 1
            } catch {
                errors[Mirror(reflecting: error).children.first?.label ?? "\(error)", default: 0] += 1
            }
        }
        print("fuzz: \(ok) still valid, errors: \(errors.sorted { $0.value > $1.value }.map { "\($0.key)=\($0.value)" }.joined(separator: " "))")
        #expect(ok + errors.values.reduce(0, +) == 1500)
    }
}
