// The table fuzzer: every byte of a client's table is hostile input to the root daemon. Random,
// boundary and bit-flipped values over the header and every section go through what the daemon does
// with a client (open, ClientSession, sync, scan, report, dump=); none of it may trap.
//
// Iterations: KMEMLEAK_FUZZ_ITERATIONS (default 300, the `make test` run); seed: KMEMLEAK_FUZZ_SEED
// (default fixed, so a failure reproduces). By hand, longer:
//   KMEMLEAK_FUZZ_ITERATIONS=100000 swift test --skip-build --filter HostileTableFuzzTests
// A trap kills the test process: the last "fuzz iteration" line printed names the case.
import CKmemleakABI
import CKmemleakSys
import Glibc
@testable import KmemleakDaemon
import KmemleakEngine
@testable import KmemleakSystem
import Testing

/// SplitMix64: small, seedable, good enough to pick mutations.
struct SplitMix64: RandomNumberGenerator {
    var state: UInt64
    mutating func next() -> UInt64 {
        state &+= 0x9e37_79b9_7f4a_7c15
        var z = state
        z = (z ^ (z >> 30)) &* 0xbf58_476d_1ce4_e5b9
        z = (z ^ (z >> 27)) &* 0x94d0_49bb_1331_11eb
        return z ^ (z >> 31)
    }
}

/// No report context needed beyond what the session has; reads nothing.
struct NoMemory: MemoryReader {
    func read(_ ranges: UnsafeBufferPointer<MemoryRange>, into buffer: UnsafeMutableRawBufferPointer,
              bytesRead: UnsafeMutableBufferPointer<Int>) {
        for i in bytesRead.indices { bytesRead[i] = 0 }
    }
}

@Suite(.serialized) struct HostileTableFuzzTests {
    static func environment(_ name: String) -> UInt64? { getenv(name).flatMap { UInt64(String(cString: $0)) } }
    static let iterations = Int(environment("KMEMLEAK_FUZZ_ITERATIONS") ?? 300)
    static let seed = environment("KMEMLEAK_FUZZ_SEED") ?? 0x6b6d_656d_6c65_616b

    /// Values at the edges of every width a field can have.
    static let boundaries: [UInt64] = [
        0, 1, 2, 7, 8, 15, 16, 17, 63, 64, 4095, 4096, 65535, 65536, 1 << 24, 1 << 30, (1 << 30) + 1,
        UInt64(Int32.max), UInt64(UInt32.max) - 1, UInt64(UInt32.max), 1 << 32, 1 << 40, (1 << 40) + 1,
        UInt64(Int64.max), 1 << 63, UInt64.max - 4096, UInt64.max - 63, UInt64.max - 1, UInt64.max,
    ]

    /// Field offsets and widths of the header (every numeric field the client writes).
    static let headerFields: [(offset: Int, width: Int)] = {
        typealias H = kml_header
        func f<T>(_ k: KeyPath<H, T>) -> (Int, Int) { (MemoryLayout<H>.offset(of: k)!, MemoryLayout<T>.size) }
        return [
            f(\H.magic), f(\H.version), f(\H.header_size), f(\H.total_size), f(\H.pid), f(\H.flags), f(\H.start_time),
            f(\H.nr_cpu_ids), f(\H.clk_tck), f(\H.created_ns),
            f(\H.objects_offset), f(\H.objects_capacity), f(\H.object_size), f(\H.objects_used),
            f(\H.traces_offset), f(\H.traces_capacity), f(\H.trace_size), f(\H.traces_used),
            f(\H.threads_offset), f(\H.threads_capacity), f(\H.thread_size), f(\H.threads_used),
            f(\H.comms_offset), f(\H.comms_capacity), f(\H.comm_size), f(\H.comms_used),
            f(\H.regions_offset), f(\H.regions_capacity), f(\H.region_size), f(\H.regions_used),
            f(\H.areas_offset), f(\H.areas_capacity), f(\H.area_size), f(\H.areas_used),
            f(\H.alloc_seq), f(\H.live_objects), f(\H.daemon_pid), f(\H.daemon_scans),
        ].map { (offset: $0.0, width: $0.1) }
    }()

    /// A plausible table: live objects pointing into `heap` (real memory of this process) and beyond,
    /// traces with frames in this process's code, comms, threads, a per-CPU layout, scan areas.
    static func validTable(heap: UnsafeMutableRawPointer, _ rng: inout SplitMix64) throws -> SyntheticTable {
        let s = try SyntheticTable(.init(objects: 64, traces: 16, threads: 8, comms: 8, regions: 4, areas: 4))
        let base = UInt64(UInt(bitPattern: heap))
        let code = UInt64(UInt(bitPattern: unsafeBitCast(getpid as @convention(c) () -> pid_t, to: UnsafeRawPointer.self)))
        s.setComm(1, "main")
        s.setComm(2, "worker")
        s.setTrace(1, [code + 4, code + 16, 0x1234])
        s.setTrace(2, (0..<16).map { code &+ UInt64($0) * 8 })
        for slot in UInt32(0)..<UInt32(40) {
            let kind: UInt32 = slot % 9 == 0 ? KML_KIND_PERCPU : (slot % 7 == 0 ? KML_KIND_MMAP : KML_KIND_MALLOC)
            let flags = kind | (slot % 5 == 0 ? KML_OBJ_HAS_AREAS : 0) | (slot % 11 == 0 ? KML_OBJ_NO_SCAN : 0)
            let pointer = kind == KML_KIND_PERCPU ? 0x10_0000 + UInt64(slot) * 64 : base + UInt64(slot) * 64
            s.setObject(slot, pointer: pointer, size: 48, seq: UInt64(slot) + 1, trace: slot % 3, comm: slot % 3,
                        minCount: slot % 13 == 0 ? 0 : 1, flags: flags)
        }
        s.setThread(0, tid: getpid(), stack: (0, 0), tls: (base, base + 64), comm: "main")
        s.setThread(1, tid: 4242, stack: (base, base + 4096), tls: (0, 0), comm: "worker")
        s.setRegion(0, kind: KML_REGION_PERCPU, start: 0x10_0000, size: 0x1_0000, cpu0: base, stride: 0x400, nrCpus: 4)
        s.setRegion(1, kind: KML_REGION_SHIM_PRIVATE, start: base + 0x800, size: 0x100)
        s.setArea(0, object: 5, seq: 6, start: base + 5 * 64 + 8, size: 16)
        s.setArea(1, object: 10, seq: 11, start: base + 10 * 64, size: UInt64.max)
        s.header.live_objects = 40
        s.header.alloc_seq = 41
        s.writeHeader()
        _ = rng.next()
        return s
    }

    /// One mutation of the table: a header field set to a boundary or random value, random bytes or a
    /// boundary value anywhere in the file, or bit flips.
    static func mutate(_ s: SyntheticTable, _ rng: inout SplitMix64) -> String {
        func value() -> UInt64 {
            rng.next() % 3 == 0 ? rng.next() : boundaries[Int(rng.next() % UInt64(boundaries.count))]
        }
        func write(_ v: UInt64, width: Int, at offset: UInt64) {
            var v = v
            _ = withUnsafeBytes(of: &v) { pwrite(s.fd, $0.baseAddress, width, off_t(offset)) }
        }
        let size = s.totalSize
        switch rng.next() % 10 {
        case 0, 1:
            let field = headerFields[Int(rng.next() % UInt64(headerFields.count))]
            let v = value()
            write(v, width: field.width, at: UInt64(field.offset))
            return "header+\(field.offset) = \(v)"
        case 2, 3, 4:
            // A record field: an aligned word anywhere in the sections.
            let offset = (512 + rng.next() % (size - 512)) & ~7
            let width = [4, 8][Int(rng.next() % 2)]
            let v = value()
            write(v, width: width, at: offset)
            return "word@\(offset) = \(v)"
        case 5, 6:
            let offset = rng.next() % size
            let count = Int(1 + rng.next() % 64)
            let bytes = (0..<count).map { _ in UInt8(truncatingIfNeeded: rng.next()) }
            _ = bytes.withUnsafeBytes { pwrite(s.fd, $0.baseAddress, min(count, Int(size - offset)), off_t(offset)) }
            return "random \(count) bytes@\(offset)"
        case 7, 8:
            let offset = rng.next() % size
            var byte: UInt8 = 0
            _ = pread(s.fd, &byte, 1, off_t(offset))
            byte ^= UInt8(1) << (rng.next() % 8)
            _ = pwrite(s.fd, &byte, 1, off_t(offset))
            return "bit flip@\(offset)"
        default:
            // The file itself: shrunk, grown (sparse), or cut inside the header.
            let lengths: [UInt64] = [0, 100, 511, 4096, size / 2, size - 1, size + 4096, 1 << 30]
            let length = lengths[Int(rng.next() % UInt64(lengths.count))]
            _ = ftruncate(s.fd, off_t(length))
            return "ftruncate \(length)"
        }
    }

    static func configuration() -> KmemleakConfiguration {
        var config = KmemleakConfiguration()
        config.minimumAge = 0
        config.confirmationPasses = 1
        config.logNewLeaks = false
        config.replacesStaleObjects = true
        config.log = { _ in }
        return config
    }

    /// Shared like the daemon's: this process's ELF files are parsed once, not per case.
    static let elfCache = ELFCache()

    /// How far a case got: opened, adopted (ClientSession), synced at least once.
    enum Depth: Int { case rejected, opened, adopted, synced }

    /// What the daemon does with a client, minus the ptrace freeze: every error is fine, a trap is not.
    @discardableResult
    static func exercise(_ s: SyntheticTable, budget: ClientBudget, mutateBetween: () -> Void) -> Depth {
        guard let table = try? s.open() else { return .rejected }
        _ = try? table.loadTraces()
        _ = try? table.readThreads()
        _ = try? table.roots(includeStacks: true, cache: elfCache)
        guard let session = try? ClientSession(table: table, configuration: configuration(), elfCache: elfCache,
                                               budget: budget) else { return .opened }
        var depth = Depth.adopted
        for round in 0..<3 {
            guard (try? session.sync()) != nil else { return depth }
            depth = .synced
            _ = session.engine.scan(now: UInt64.max / 2, memory: NoMemory(), shouldStop: { false }, confirmation: nil)
            _ = session.engine.scan(now: UInt64.max / 2, memory: session.memory, shouldStop: { false }, confirmation: nil)
            for entry in session.engine.reportSnapshot(memory: session.memory) {
                _ = Kmemleak.renderBytes(entry, context: session.context)
                _ = session.engine.dump(address: entry.pointer, context: session.context)
            }
            for address in boundaries { _ = session.engine.dump(address: address, context: session.context) }
            if round == 0 { mutateBetween() }
        }
        return depth
    }

    @Test func hostileTablesNeverTrap() throws {
        var rng = SplitMix64(state: Self.seed)
        let heap = UnsafeMutableRawPointer.allocate(byteCount: 1 << 16, alignment: 4096)
        defer { heap.deallocate() }
        // Pointers to each other in the heap: scans find references and non-references.
        for i in 0..<(1 << 13) {
            heap.storeBytes(of: UInt64(UInt(bitPattern: heap)) &+ UInt64(i * 64 % (1 << 16)), toByteOffset: i * 8, as: UInt64.self)
        }
        var depths = [Int](repeating: 0, count: 4)
        for iteration in 0..<Self.iterations {
            let s = try Self.validTable(heap: heap, &rng)
            for _ in 0..<(1 + rng.next() % 4) { _ = Self.mutate(s, &rng) }
            if Self.iterations > 1000 && iteration % 1000 == 0 { print("fuzz iteration \(iteration)") }
            // Mostly room for the 40 objects; sometimes a budget they exceed.
            let budget = ClientBudget(maxObjects: rng.next() % 8 == 0 ? 20 : 64)
            depths[Self.exercise(s, budget: budget) { _ = Self.mutate(s, &rng) }.rawValue] += 1
        }
        print("fuzz: \(Self.iterations) tables (seed \(Self.seed)): rejected \(depths[0]), opened \(depths[1]), adopted \(depths[2]), synced \(depths[3])")
        // The mutations must leave enough tables valid to reach the engine, else the fuzzer tests nothing.
        #expect(depths[3] * 4 >= Self.iterations)
    }

    /// Each header field at each boundary value, one at a time (no randomness): the cases a reviewer
    /// names first (live_objects 2^64-1, capacities, offsets, counts) are all covered deterministically.
    @Test func everyHeaderFieldAtEveryBoundary() throws {
        var rng = SplitMix64(state: Self.seed)
        let heap = UnsafeMutableRawPointer.allocate(byteCount: 1 << 16, alignment: 4096)
        defer { heap.deallocate() }
        for field in Self.headerFields {
            for v in Self.boundaries {
                let s = try Self.validTable(heap: heap, &rng)
                var value = v
                _ = withUnsafeBytes(of: &value) { pwrite(s.fd, $0.baseAddress, field.width, off_t(field.offset)) }
                Self.exercise(s, budget: ClientBudget()) {}
            }
        }
    }

    @Test func liveObjectsAtMaxIsAdopted() throws {
        // Issue 9 item 2: live_objects 2^64-1 trapped in ClientSession.init.
        var rng = SplitMix64(state: 1)
        let heap = UnsafeMutableRawPointer.allocate(byteCount: 1 << 16, alignment: 4096)
        defer { heap.deallocate() }
        let s = try Self.validTable(heap: heap, &rng)
        s.header.live_objects = UInt64.max
        s.writeHeader()
        let session = try ClientSession(table: try s.open(), configuration: Self.configuration(), elfCache: ELFCache())
        try session.sync()
        #expect(session.engine.objectCount == 40)
    }

    @Test func objectsOverBudgetDropTheClient() throws {
        var rng = SplitMix64(state: 2)
        let heap = UnsafeMutableRawPointer.allocate(byteCount: 1 << 16, alignment: 4096)
        defer { heap.deallocate() }
        let s = try Self.validTable(heap: heap, &rng)
        let session = try ClientSession(table: try s.open(), configuration: Self.configuration(), elfCache: ELFCache(),
                                        budget: ClientBudget(maxObjects: 39))
        #expect { try session.sync() } throws: { "\($0)".contains("over budget: more than 39 live objects") }

        // A live record at a slot far beyond the budget (2 x maxObjects): dropped, no 2^24-slot arrays.
        let sparse = try SyntheticTable(.init(objects: 1 << 24))
        sparse.setObject(1 << 23, pointer: 0x1000, size: 8, seq: 1)
        let far = try ClientSession(table: try sparse.open(), configuration: Self.configuration(), elfCache: ELFCache(),
                                    budget: ClientBudget(maxObjects: 1000))
        #expect { try far.sync() } throws: { "\($0)".contains("over budget: live object in slot 8388608") }
    }

    /// A slot's object replaced by a newer overlapping one in another slot (the address was reused before
    /// the free showed): its engine id, reused later for a third slot's object, is not freed with the
    /// first slot.
    @Test func replacedObjectsIDIsNotFreedWithItsOldSlot() throws {
        let s = try SyntheticTable(.init(objects: 64))
        s.setObject(0, pointer: 0x1000, size: 64, seq: 1)
        s.writeHeader()
        let session = try ClientSession(table: try s.open(), configuration: Self.configuration(), elfCache: ELFCache())
        try session.sync()
        #expect(session.engine.objectInfo(at: 0x1000)?.metadata.seq == 1)
        // Slot 0 still shows seq 1 (visited first, kept); slot 1's newer block at the same address replaces it.
        s.setObject(1, pointer: 0x1000, size: 64, seq: 5)
        try session.sync()
        #expect(session.engine.objectCount == 1)
        #expect(session.engine.objectInfo(at: 0x1000)?.metadata.seq == 5)
        // Slot 0 is freed, slot 2 gets a new block (possibly the replaced object's id): every sync keeps it.
        s.setObject(0, pointer: 0x1000, size: 64, seq: 1, state: SyntheticTable.state(live: false, version: 2))
        s.setObject(2, pointer: 0x2000, size: 64, seq: 6)
        for _ in 0..<2 {
            try session.sync()
            #expect(session.engine.objectCount == 2)
            #expect(session.engine.objectInfo(at: 0x1000)?.metadata.seq == 5)
            #expect(session.engine.objectInfo(at: 0x2000)?.metadata.seq == 6)
        }
    }

    @Test func sparseClaimsCostNoSlotMemory() throws {
        // 2^24 slots claimed used (a 1 GiB sparse memfd), two live records: per-slot state follows the
        // highest live slot (100), not objects_used.
        let s = try SyntheticTable(.init(objects: 1 << 24))
        s.setObject(3, pointer: 0x1000, size: 8, seq: 1)
        s.setObject(100, pointer: 0x2000, size: 8, seq: 2)
        s.header.objects_used = 1 << 24
        s.header.live_objects = 1 << 24
        s.writeHeader()
        let session = try ClientSession(table: try s.open(), configuration: Self.configuration(), elfCache: ELFCache())
        try session.sync()
        #expect(session.engine.objectCount == 2)
        #expect(session.trackedSlots == 101)
    }
}
