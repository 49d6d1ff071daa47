import CKmemleakABI
import Glibc
import KmemleakEngine
import KmemleakSystem

/// A client is dropped from the daemon: it exited, turned tracking off, or its table is invalid.
struct ClientDropped: Error, CustomStringConvertible {
    let reason: String
    var description: String { reason }
}

/// One adopted client process: its table, its engine (one address space), its memory and symbols.
///
/// Before every scan the engine is brought in line with the client's table (`sync`): objects whose slot
/// now holds another allocation (or nothing) are freed, new allocations are registered, and annotation
/// changes (the record's version moved) are applied. What the daemon remembers per slot is 11 bytes.
final class ClientSession {
    let table: ClientTable
    let id: ClientID
    let engine: Kmemleak
    let memory: ClientMemory
    let context: ClientReportContext
    private let elfCache: ELFCache

    // Per table slot, what the engine holds for it (struct of arrays: no padding). The low 32 bits of
    // the allocation sequence number tell a slot's object from a later one in the same slot, and guard
    // against an engine id that was reused after its object was replaced.
    private static let noObject = ObjectID.max
    private var slotObject: [ObjectID] = []  // noObject = nothing registered for this slot
    private var slotSeq: [UInt32] = []
    private var slotVersion: [UInt16] = []
    private var slotBits: [UInt8] = []       // bit 0: per-CPU; bits 1...7: transient_gen low bits

    /// Comm of the process (for logs).
    let comm: String
    /// Scans run over this client by this daemon (mirrored into the table's daemon_scans).
    private var scans: UInt64 = 0

    init(table: ClientTable, configuration: KmemleakConfiguration, elfCache: ELFCache) throws {
        self.table = table
        self.id = table.id
        self.elfCache = elfCache
        var config = configuration
        config.possibleCPUs = max(1, Int(table.openedHeader.nrCpuIds))
        config.ticksPerSecond = UInt64(max(1, table.openedHeader.clkTck))
        engine = Kmemleak(configuration: config)
        memory = ClientMemory(pid: table.pid)
        context = ClientReportContext(table: table, symbolizer: try Symbolizer(pid: table.pid, cache: elfCache))
        comm = (try? Proc.stat(table.pid).comm) ?? "?"
        let capacity = Int(table.openedHeader.objects.capacity)
        engine.reserveCapacity(Int(min(UInt64(capacity), table.openedHeader.liveObjects + 1024)))
    }

    var pid: Int32 { table.pid }

    // MARK: - sync

    /// Brings the engine in line with the table. Throws `ClientDropped` when the client must be dropped.
    func sync() throws {
        let header: TableHeader
        do { header = try table.header() } catch { throw ClientDropped(reason: "invalid table: \(error)") }
        if header.isDisabled {
            throw ClientDropped(reason: "tracking disabled in the client (\(header.disabledReason))")
        }
        let used = Int(header.objects.used)
        if slotSeq.count < used {
            let grow = used - slotSeq.count
            slotObject.append(contentsOf: repeatElement(Self.noObject, count: grow))
            slotSeq.append(contentsOf: repeatElement(0, count: grow))
            slotVersion.append(contentsOf: repeatElement(0, count: grow))
            slotBits.append(contentsOf: repeatElement(0, count: grow))
        }
        do {
            let regions = try table.readRegions()
            engine.setPercpuLayouts(regions.filter(\.isPerCPU).map {
                PercpuLayout(handleStart: $0.start, handleLength: $0.size,
                             copies: .stride(cpu0Base: $0.cpu0Base, stride: $0.stride, cpus: Int($0.nrCpus)))
            })
            // Registered while streaming: an object that overlaps one not yet released is resolved by
            // allocation sequence number in the engine, so the order of slots does not matter.
            var seen = [Bool](repeating: false, count: slotSeq.count)
            var withAreas: [ObjectRecord] = []
            try table.readObjects { record in
                let slot = Int(record.slot)
                guard slot < slotSeq.count else { return }
                seen[slot] = true
                if slotObject[slot] != Self.noObject && slotSeq[slot] == UInt32(truncatingIfNeeded: record.seq) {
                    guard slotVersion[slot] != UInt16(truncatingIfNeeded: record.version) else { return }
                    applyAnnotations(record)
                } else {
                    releaseSlot(slot)
                    register(record)
                }
                if record.hasAreas && !record.fullScan { withAreas.append(record) }
            }
            for slot in 0..<slotSeq.count where !seen[slot] && slotObject[slot] != Self.noObject { releaseSlot(slot) }
            if !withAreas.isEmpty { try applyScanAreas(withAreas) }
        } catch {
            throw ClientDropped(reason: "invalid table: \(error)")
        }
    }

    private func releaseSlot(_ slot: Int) {
        let id = slotObject[slot]
        guard id != Self.noObject else { return }
        if let seq = engine.seq(of: id), UInt32(truncatingIfNeeded: seq) == slotSeq[slot] {
            engine.free(object: id, ifSeq: seq)
        }
        slotObject[slot] = Self.noObject
    }

    private func register(_ record: ObjectRecord) {
        let slot = Int(record.slot)
        let metadata = ObjectMetadata(pid: record.tid, comm: record.commId, creationTime: record.timeNs,
                                      trace: record.traceId, seq: record.seq)
        // Not registered (a newer overlapping object holds the range): the slot stays empty and is
        // tried again at the next sync.
        guard let id = engine.register(record.pointer, size: record.size, minCount: max(record.minCount, 0),
                                       percpu: record.isPerCPU, mallocChunk: record.kind == KML_KIND_MALLOC,
                                       metadata: metadata) else { return }
        if record.isPerCPU {
            if record.minCount < 0 { engine.ignorePercpu(record.pointer) }
        } else {
            if record.minCount < 0 { engine.ignore(record.pointer) }
            if record.noScan { engine.noScan(record.pointer) }
        }
        slotObject[slot] = id
        slotSeq[slot] = UInt32(truncatingIfNeeded: record.seq)
        slotVersion[slot] = UInt16(truncatingIfNeeded: record.version)
        slotBits[slot] = (record.isPerCPU ? 1 : 0) | UInt8(truncatingIfNeeded: record.transientGen << 1)
    }

    /// The record's version moved: an annotation was made. Apply the ones that changed, leaving what the
    /// daemon did itself (`clear` turning a reported object grey) alone unless the client annotated again.
    private func applyAnnotations(_ record: ObjectRecord) {
        let slot = Int(record.slot)
        let pointer = record.pointer
        let info = engine.objectInfo(at: pointer, percpu: record.isPerCPU)
        if record.isPerCPU {
            if record.minCount < 0, info?.minCount != -1 { engine.ignorePercpu(pointer) }
        } else {
            if record.minCount < 0, info?.minCount != -1 {
                engine.ignore(pointer)
            } else if record.minCount == 0, let info, info.minCount > 0 {
                engine.notLeak(pointer)
            }
            if record.noScan, let info, info.flags & ObjectFlags.noScan == 0 { engine.noScan(pointer) }
            if let info, info.metadata.trace != record.traceId { engine.updateTrace(pointer, trace: record.traceId) }
            let generation = UInt8(truncatingIfNeeded: record.transientGen << 1)
            if slotBits[slot] & 0xfe != generation { engine.transientLeak(pointer) }
        }
        slotVersion[slot] = UInt16(truncatingIfNeeded: record.version)
        slotBits[slot] = (record.isPerCPU ? 1 : 0) | UInt8(truncatingIfNeeded: record.transientGen << 1)
    }

    private func applyScanAreas(_ records: [ObjectRecord]) throws {
        let wanted = Dictionary(records.map { ($0.slot, $0.seq) }, uniquingKeysWith: { a, _ in a })
        let areas = try table.readAreas()
        var bySlot: [UInt32: [AreaRecord]] = [:]
        for area in areas where wanted[area.objectIndex] == area.objectSeq { bySlot[area.objectIndex, default: []].append(area) }
        for record in records {
            guard let list = bySlot[record.slot],
                  let info = engine.objectInfo(at: record.pointer, percpu: false) else { continue }
            for area in list {
                let size = area.size == UInt64.max ? UInt64.max : area.size
                if info.scanAreas.contains(where: { $0.start == area.start && $0.size == size }) { continue }
                engine.scanArea(area.start, size: size)
            }
        }
    }

    // MARK: - scan

    /// Syncs, computes the roots and runs one engine scan. The confirmation of new candidates happens with
    /// the client frozen (see `Detector`); `freeze` decides whether that is possible.
    func scan(stackScanning: Bool, shouldStop: () -> Bool, freeze: Bool, log: @escaping (String) -> Void) throws -> ScanResult {
        guard table.isAlive else { throw ClientDropped(reason: "exited") }
        try sync()
        let roots: [RootRange]
        do { roots = try table.roots(includeStacks: true, cache: elfCache) } catch {
            guard table.isAlive else { throw ClientDropped(reason: "exited") }
            throw ClientDropped(reason: "cannot compute roots: \(error)")
        }
        engine.stackScanning = stackScanning
        // Threads blocked in the kernel tell their stack pointer: scan their stacks from there.
        var blocked: [Int32: UInt64] = [:]
        for root in roots where root.kind == .stack {
            if let tid = root.tid, let sp = Proc.stackPointer(pid, tid: tid) { blocked[tid] = sp }
        }
        engine.setRoots(Roots.trimStacks(roots, stackPointers: blocked).map(\.engineRegion))
        try? context.symbolizer.refresh()

        var frozen: FrozenProcess?
        let hooks = ConfirmationHooks(
            begin: { [self] () -> [RootRegion] in
                guard freeze else { return [] }
                do {
                    let stopped = try FrozenProcess(pid: pid)
                    frozen = stopped
                    // The client is still: pick up what it allocated and freed since the scan began.
                    try? sync()
                    // Registers are task state like the stack: `stack=off` leaves both out. The stacks
                    // of the stopped threads count from their exact stack pointers.
                    guard stackScanning else { return [] }
                    let stacks = Roots.trimStacks(roots.filter { $0.kind == .stack },
                                                  stackPointers: stopped.stackPointers).map(\.engineRegion)
                    return stacks + (memory.showRegisters(stopped.registers).map { [$0] } ?? [])
                } catch {
                    log("cannot freeze pid \(pid) for confirmation (\(error)); confirming while it runs")
                    return []
                }
            },
            end: { [self] in
                memory.hideRegisters()
                frozen?.thaw()
                frozen = nil
            })
        let result = engine.scan(now: bootTimeNanoseconds(), memory: memory, shouldStop: shouldStop,
                                 confirmation: hooks)
        scans += 1
        try? table.setDaemonScans(scans)
        return result
    }
}

extension RootRange {
    var engineRegion: RootRegion {
        let engineKind: RootRegion.Kind
        switch kind {
        case .data: engineKind = .data
        case .stack: engineKind = .stack
        case .tls: engineKind = .tls
        }
        return RootRegion(start: start, length: length, kind: engineKind, isAllocatorData: isAllocatorData)
    }
}
