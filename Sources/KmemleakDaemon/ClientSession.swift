import CKmemleakABI
import Glibc
import KmemleakEngine
import KmemleakSystem

/// What one client's table may make the daemon hold. A table's header claims cost the client nothing
/// (sparse memory), so the daemon's memory follows the live records it actually read, up to these bounds;
/// past them the client is dropped.
public struct ClientBudget: Sendable, Equatable {
    /// Live object records one client may have (each costs an engine object).
    public var maxObjects: Int
    /// The highest object slot index the daemon keeps per-slot state for (2 bytes a slot). Slots are
    /// reused by the shim, so the highest live slot stays near the peak live count; twice the object
    /// budget leaves room for the per-thread slot caches.
    public var maxSlots: Int { maxObjects > Int.max / 2 ? Int.max : maxObjects * 2 }

    public static let defaultMaxObjects = 1 << 22

    public init(maxObjects: Int = ClientBudget.defaultMaxObjects) { self.maxObjects = max(1, maxObjects) }
}

/// A client is dropped from the daemon: it exited, turned tracking off, or its table is invalid.
struct ClientDropped: Error, CustomStringConvertible {
    let reason: String
    var description: String { reason }
}

/// One adopted client process: its table, its engine (one address space), its memory and symbols.
///
/// Before every scan the engine is brought in line with the client's table (`sync`): objects whose slot
/// now holds another allocation (or nothing) are freed, new allocations are registered, and annotation
/// changes (the record's version moved) are applied. The engine's id of a slot's object is the slot
/// (`KmemleakConfiguration.idsChosenByCaller`); what the daemon remembers per slot is 2 bytes: the
/// record's version. The engine holds the seq that tells the slot's object from a later allocation in
/// the same slot.
final class ClientSession {
    let table: ClientTable
    let id: ClientID
    let engine: Kmemleak
    let memory: ClientMemory
    let context: ClientReportContext
    private let elfCache: ELFCache
    private let budget: ClientBudget

    // Per table slot up to the highest live slot seen (not objects_used: a claim), what the engine's
    // object of that slot (engine id = slot) was registered or last annotated with. No copy of the
    // record's transient_gen: a version change resets the checksum whatever its cause (see
    // `applyAnnotations`).
    private var slotVersion = SlotPages<UInt16>(fill: 0)
    /// The table chunks whose records the engine holds as they are (a full sync skips them while their
    /// bytes stay the same).
    private let chunkDigests = ObjectChunkDigests()

    /// Comm of the process (for logs).
    let comm: String
    /// Scans run over this client by this daemon (mirrored into the table's daemon_scans).
    private var scans: UInt64 = 0

    init(table: ClientTable, configuration: KmemleakConfiguration, elfCache: ELFCache,
         budget: ClientBudget = ClientBudget()) throws {
        self.table = table
        self.id = table.id
        self.elfCache = elfCache
        self.budget = budget
        var config = configuration
        config.idsChosenByCaller = true
        // The header's nr_cpu_ids is a claim (up to 2^16, each a copy of every per-CPU object to scan):
        // no more than this kernel's possible CPUs.
        config.possibleCPUs = max(1, min(Int(table.openedHeader.nrCpuIds), HostCPUs.possible))
        config.ticksPerSecond = UInt64(max(1, table.openedHeader.clkTck))
        engine = Kmemleak(configuration: config)
        memory = ClientMemory(pid: table.pid)
        context = ClientReportContext(table: table, symbolizer: try Symbolizer(pid: table.pid, cache: elfCache))
        comm = (try? Proc.stat(table.pid).comm) ?? "?"
        // No reserveCapacity from the header's live_objects or capacities: they are claims. The engine
        // grows with the records actually registered.
    }

    var pid: Int32 { table.pid }

    /// Slots the daemon keeps state for (the highest live slot seen + 1).
    var trackedSlots: Int { slotVersion.count }

    // MARK: - sync

    /// Brings the engine in line with the table. Throws `ClientDropped` when the client must be dropped.
    /// `onlySlots`: the object slots that may have changed since the last sync (the others are known
    /// not to have); nil reads every slot.
    func sync(onlySlots: [Range<UInt32>]? = nil) throws {
        let header: TableHeader
        do { header = try table.header() } catch { throw ClientDropped(reason: "invalid table: \(error)") }
        if header.isDisabled {
            throw ClientDropped(reason: "tracking disabled in the client (\(header.disabledReason))")
        }
        do {
            let regions = try table.readRegions()
            engine.setPercpuLayouts(regions.filter(\.isPerCPU).map {
                PercpuLayout(handleStart: $0.start, handleLength: $0.size,
                             copies: .stride(cpu0Base: $0.cpu0Base, stride: $0.stride, cpus: Int($0.nrCpus)))
            })
            // Registered while streaming: an object that overlaps one not yet released is resolved by
            // allocation sequence number in the engine, so the order of slots does not matter.
            var seen = SlotBits(count: slotVersion.count)
            var withAreas: [ObjectRecord] = []
            var slotOverBudget: UInt32? = nil
            // Answers whether the record is settled: the engine holds it as the table has it, and nothing
            // about it is redone while it stays the same (see `ObjectChunkDigests`).
            let visit = { [self] (record: ObjectRecord) -> Bool in
                let slot = Int(record.slot)
                guard slot < budget.maxSlots, slot < Int(Kmemleak.chosenIDLimit) else {
                    slotOverBudget = slotOverBudget ?? record.slot
                    return false
                }
                if slot >= slotVersion.count { growSlots(to: slot + 1, seen: &seen) }
                seen.set(slot)
                var settled = true
                if engine.seq(of: ObjectID(slot)) == record.seq {
                    guard slotVersion[slot] != UInt16(truncatingIfNeeded: record.version) else {
                        return !(record.hasAreas && !record.fullScan)
                    }
                    applyAnnotations(record)
                } else {
                    // The slot's earlier object goes, whether or not the new one registers.
                    if let earlier = engine.seq(of: ObjectID(slot)) { engine.free(object: ObjectID(slot), ifSeq: earlier) }
                    settled = register(record)
                }
                // Scan areas are read from their own section every sync: an added area need not touch the record.
                if record.hasAreas && !record.fullScan {
                    withAreas.append(record)
                    settled = false
                }
                return settled
            }
            if let ranges = onlySlots {
                for range in ranges {
                    // Handled outside the chunked read: those chunks are read in full next time.
                    chunkDigests.forget(slots: range)
                    try table.readObjects(slots: range) { _ = visit($0) }
                    let known = Int(range.lowerBound)..<Int(range.upperBound)
                    engine.freeObjects(in: known.clamped(to: 0..<slotVersion.count)) { seen[Int($0)] }
                }
            } else {
                // Chunks unchanged since they were settled hold the engine's objects of their slots as they
                // are: neither decoded nor freed from. Everything else the table no longer holds is freed.
                var unchangedSlots: [Range<Int>] = []
                try table.readObjects(maxLive: budget.maxObjects, digests: chunkDigests, unchanged: { range in
                    let r = Int(range.lowerBound)..<Int(range.upperBound)
                    if let last = unchangedSlots.last, last.upperBound == r.lowerBound {
                        unchangedSlots[unchangedSlots.count - 1] = last.lowerBound..<r.upperBound
                    } else {
                        unchangedSlots.append(r)
                    }
                }, visit)
                let tracked = 0..<slotVersion.count
                var from = 0
                for r in unchangedSlots {
                    engine.freeObjects(in: (from..<max(from, r.lowerBound)).clamped(to: tracked)) { seen[Int($0)] }
                    from = max(from, r.upperBound)
                }
                engine.freeObjects(in: (from..<max(from, tracked.upperBound)).clamped(to: tracked)) { seen[Int($0)] }
                engine.compactIndex()
            }
            if let slot = slotOverBudget {
                throw ClientDropped(reason: "over budget: live object in slot \(slot) (limit \(budget.maxSlots) slots, 2 x --max-objects)")
            }
            if !withAreas.isEmpty { try applyScanAreas(withAreas) }
        } catch let error as ClientDropped {
            throw error
        } catch TableError.tooManyRecords(let section, let limit) where section == "objects" {
            throw ClientDropped(reason: "over budget: more than \(limit) live objects (--max-objects)")
        } catch {
            throw ClientDropped(reason: "invalid table: \(error)")
        }
    }

    /// Extends the per-slot state to `count` slots (page by page: nothing is copied).
    private func growSlots(to count: Int, seen: inout SlotBits) {
        slotVersion.grow(to: count)
        seen.grow(to: count)
    }

    /// Returns whether the engine registered it.
    @discardableResult
    private func register(_ record: ObjectRecord) -> Bool {
        let slot = Int(record.slot)
        let metadata = ObjectMetadata(pid: record.tid, comm: record.commId, creationTime: record.timeNs,
                                      trace: record.traceId, seq: record.seq)
        // Registered at the slot's id, replacing the slot's earlier object. Not registered (a newer
        // overlapping object holds the range): the slot stays empty and is tried again at the next sync.
        guard engine.register(id: ObjectID(slot), record.pointer, size: record.size, minCount: max(record.minCount, 0),
                                       percpu: record.isPerCPU, mallocChunk: record.kind == KML_KIND_MALLOC,
                                       metadata: metadata) else { return false }
        if record.isPerCPU {
            if record.minCount < 0 { engine.ignorePercpu(record.pointer) }
        } else {
            if record.minCount < 0 { engine.ignore(record.pointer) }
            if record.noScan { engine.noScan(record.pointer) }
        }
        slotVersion[slot] = UInt16(truncatingIfNeeded: record.version)
        return true
    }

    /// The record's version moved: an annotation was made. Apply the ones that changed, leaving what the
    /// daemon did itself (`clear` turning a reported object grey) alone unless the client annotated again.
    ///
    /// Whether `kmemleak_transient_leak` was among them is not known (the daemon keeps no copy of the
    /// record's transient_gen: 1 byte per slot, issue 10 goal 5), so every version change resets the
    /// checksum as it would. A reset only makes the next scan treat the object as modified: gray for
    /// that scan, so its report waits one scan more; an object is never reported because of it, and
    /// it is reported a scan later if it stays unreferenced and unchanged.
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
            if info != nil { engine.transientLeak(pointer) }
        }
        slotVersion[slot] = UInt16(truncatingIfNeeded: record.version)
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
                if info.scanAreas.contains(where: { $0.start == area.start && $0.size == area.size }) { continue }
                engine.scanArea(area.start, size: area.size)
            }
        }
    }

    // MARK: - scan

    /// Thread-root claims already logged as refused (once each per client).
    private var refusedLogged = Set<String>()
    private var cannotTraceLogged = false

    /// Syncs, computes the roots and runs one engine scan. The confirmation of new candidates happens with
    /// the client frozen (see `Detector`); `freeze` decides whether that is possible. A scan that takes
    /// longer than `budget` stops (with a log line): its candidates wait for the next scan.
    func scan(stackScanning: Bool, shouldStop: () -> Bool, freeze: Bool, budget: Duration,
              log: @escaping (String) -> Void) throws -> ScanResult {
        guard table.isAlive else { throw ClientDropped(reason: "exited") }
        // The table's pages first: frozen, only the records written since this sync are read again.
        let trackedTable = freeze ? writeProtectTable(log: log) : nil
        // Whatever the outcome, the client leaves the scan with no registration of ours.
        defer { if let trackedTable { writeTracker?.unprotect([trackedTable]) } }
        try sync()
        let (maps, roots, refused) = try currentRoots()
        logRefused(refused, dataRoots: roots.filter { $0.kind == .data }, log: log)
        restrictMemory(maps: maps, roots: roots, log: log)
        engine.stackScanning = stackScanning
        // A thread blocked in the kernel tells its stack pointer: its stack counts from there. A running
        // thread's stack below its (unknown) stack pointer holds dead frames, whose stale pointers would
        // hide leaks: with the freeze, it is read only by the confirmation, from the exact stack pointer;
        // the main pass leaves it out (objects held only there become candidates).
        var blocked: [Int32: UInt64] = [:]
        var mainRoots: [RootRange] = []
        for root in roots {
            if root.kind == .stack, let tid = root.tid {
                if let sp = blocked[tid] ?? Proc.stackPointer(pid, tid: tid) {
                    blocked[tid] = sp
                } else if freeze {
                    continue
                }
            }
            mainRoots.append(root)
        }
        engine.setRoots(Roots.trimStacks(mainRoots, stackPointers: blocked).map(\.engineRegion))
        try? context.symbolizer.refresh()
        // From here on the kernel notes what the client writes: frozen, only that is re-read.
        let tracked = freeze ? writeProtect(maps: maps, roots: roots, log: log) : []
        defer { writeTracker?.unprotect(tracked) }

        var frozen: FrozenProcess?
        let hooks = ConfirmationHooks(
            begin: { [self] () -> [RootRegion]? in
                guard freeze else { return [] }
                let stopped: FrozenProcess
                do throws(ThreadFreezeError) { stopped = try FrozenProcess(pid: pid) } catch {
                    if error.errno == ETIMEDOUT || error.errno == ESRCH {
                        // A thread in an uninterruptible wait (vfork, I/O), or the process going away.
                        log("cannot freeze pid \(pid) in time (\(error)); its candidates wait for the next scan")
                        return nil
                    }
                    // Not traceable at all (a debugger holds it, or no permission): confirm while it
                    // runs, whole stacks counted.
                    if !cannotTraceLogged {
                        cannotTraceLogged = true
                        log("cannot freeze pid \(pid) for confirmation (\(error)); confirming while it runs")
                    }
                    return stackScanning ? roots.filter { $0.kind == .stack }.map(\.engineRegion) : []
                }
                frozen = stopped
                frozenAt = ContinuousClock.now
                lastFreeze = FreezeTimes()
                // An exec since the scan began replaced the program (same pid and start time): what
                // was read is the old program's memory, and its table is gone.
                guard table.isStillMapped else { return nil }
                // The client is still: pick up what it allocated, freed and mapped since the scan began.
                let syncStart = ContinuousClock.now
                try? sync(onlySlots: trackedTable.flatMap { changedSlots(tableMapping: $0) })
                lastFreeze?.sync = ContinuousClock.now - syncStart
                if let (maps, now, _) = try? currentRoots() { restrictMemory(maps: maps, roots: now, log: log) }
                // Registers are task state like the stack: `stack=off` leaves both out. The stacks
                // of the stopped threads count from their exact stack pointers.
                guard stackScanning else { return [] }
                let stacks = Roots.trimStacks(roots.filter { $0.kind == .stack },
                                              stackPointers: stopped.stackPointers).map(\.engineRegion)
                return stacks + (memory.showRegisters(stopped.registers).map { [$0] } ?? [])
            },
            end: { [self] in
                memory.hideRegisters()
                frozen?.thaw()
                if let frozenAt, frozen != nil { lastFreeze?.total = ContinuousClock.now - frozenAt }
                frozen = nil
            },
            mayReport: { [self] in
                // What a scan read from a process that exited (or is exiting) meanwhile is not its
                // program's memory any more (torn down, or read as nothing): report none of it.
                // An exec keeps the pid and start time but maps a new table: the same holds.
                !memory.process.stats.processGone
                    && Proc.isRunningProgram(pid, startTime: table.openedHeader.startTime)
                    && table.isStillMapped
            },
            unchangedMemory: tracked.isEmpty ? nil : { [self] in
                guard frozen != nil else { return nil }
                let start = ContinuousClock.now
                defer { lastFreeze?.writtenPages = ContinuousClock.now - start }
                return unchangedMemory(tracked)
            })
        lastFreeze = nil
        let clock = ContinuousClock()
        let deadline = clock.now + budget
        var overBudget = false
        let result = engine.scan(now: bootTimeNanoseconds(), memory: memory, shouldStop: {
            if shouldStop() { return true }
            if clock.now < deadline { return false }
            overBudget = true
            return true
        }, confirmation: hooks)
        if overBudget && result.interrupted {
            log("scan of pid \(pid) (\(comm)) exceeded its time budget of \(budget); its candidates wait for the next scan")
        }
        scans += 1
        try? table.setDaemonScans(scans)
        return result
    }

    /// How long the last scan's freeze took, and its parts (nil: it did not freeze).
    struct FreezeTimes {
        var total: Duration = .zero
        var sync: Duration = .zero
        var writtenPages: Duration = .zero
    }
    private(set) var lastFreeze: FreezeTimes?
    private var frozenAt: ContinuousClock.Instant?

    // MARK: write tracking

    /// The client's write tracking, from the table's userfaultfd (nil: none, or not usable).
    private var writeTracker: WriteTracker?
    private var writeTrackingRefused = false

    /// Write-protects the client's anonymous private mappings that are not thread stacks (those are
    /// read whole, frozen, from the exact stack pointer): returns the mappings tracked from now on.
    /// Files' private mappings are left out (a write-protected MAP_PRIVATE file page hung a writer in
    /// the probe), and so is shared memory.
    private func writeProtect(maps: [MapEntry], roots: [RootRange], log: (String) -> Void) -> [AddressInterval] {
        guard let tracker = writeTracker(log: log) else { return [] }
        let stacks = roots.filter { $0.kind == .stack }
        // A private table is anonymous private memory too: `writeProtectTable` tracks it on its own.
        let table = table.rendezvous.map { AddressInterval(start: $0.address, end: $0.address &+ $0.size) }
        let mappings = maps.filter { m in
            m.readable && m.writable && !m.shared && m.inode == 0 && !m.path.hasPrefix("[v")
                && !stacks.contains { $0.start < m.end && m.start < $0.end }
                && !(table.map { $0.start < m.end && m.start < $0.end } ?? false)
        }
        do throws(WriteTrackingError) {
            return try tracker.protect(mappings.map { AddressInterval(start: $0.start, end: $0.end) })
        } catch {
            refuseWriteTracking(error, log: log)
            return []
        }
    }

    /// The tracker, made from the table's userfaultfd on first use (nil: none, or refused).
    private func writeTracker(log: (String) -> Void) -> WriteTracker? {
        if writeTracker == nil && !writeTrackingRefused {
            guard let fd = (try? table.header())?.userfaultfd else { return nil }
            do throws(WriteTrackingError) { writeTracker = try WriteTracker(pid: pid, clientFD: fd) } catch {
                refuseWriteTracking(error, log: log)
            }
        }
        return writeTracker
    }

    private func refuseWriteTracking(_ error: WriteTrackingError, log: (String) -> Void) {
        writeTracker = nil
        writeTrackingRefused = true
        log("pid \(pid): no write tracking (\(error)); confirmation re-reads everything")
    }

    /// Write-protects the client's mapping of its table (the whole mapping: registering a part would
    /// split it, and the mapping is found by its exact range): returns it when tracked.
    private func writeProtectTable(log: (String) -> Void) -> AddressInterval? {
        guard let r = table.rendezvous, let tracker = writeTracker(log: log),
              !r.address.addingReportingOverflow(r.size).overflow else { return nil }
        let mapping = AddressInterval(start: r.address, end: r.address + r.size)
        do throws(WriteTrackingError) {
            return try tracker.protect([mapping]).first
        } catch {
            refuseWriteTracking(error, log: log)
            return nil
        }
    }

    /// The client frozen: the object slots whose records lie in table pages written since
    /// `writeProtectTable` (nil: cannot tell, read them all).
    private func changedSlots(tableMapping: AddressInterval) -> [Range<UInt32>]? {
        guard let written = writeTracker?.writtenPages(in: tableMapping) else { return nil }
        let objects = table.openedHeader.objects
        let size = UInt64(objects.entrySize)
        guard size > 0, objects.offset <= tableMapping.end - tableMapping.start else { return nil }
        let first = tableMapping.start + objects.offset
        let end = first + min(UInt64(objects.capacity) * size, tableMapping.end - first)
        var slots: [Range<UInt32>] = []
        for w in written {
            let lo = max(w.start, first), hi = min(w.end, end)
            guard lo < hi else { continue }
            let from = UInt32((lo - first) / size), to = UInt32(min((hi - first + size - 1) / size, UInt64(objects.capacity)))
            if let last = slots.last, last.upperBound >= from { slots[slots.count - 1] = last.lowerBound..<max(last.upperBound, to) }
            else { slots.append(from..<to) }
        }
        return slots
    }

    /// The client frozen: the tracked mappings but the pages written since `writeProtect` (a mapping
    /// that cannot tell is left out: read whole).
    private func unchangedMemory(_ tracked: [AddressInterval]) -> UnchangedMemory? {
        guard let tracker = writeTracker else { return nil }
        var unchanged: [MemoryRange] = []
        for range in tracked {
            guard let written = tracker.writtenPages(in: range) else { continue }
            var at = range.start
            for w in written {
                if w.start > at { unchanged.append(MemoryRange(address: at, length: Int(clamping: w.start - at))) }
                at = max(at, w.end)
            }
            if at < range.end { unchanged.append(MemoryRange(address: at, length: Int(clamping: range.end - at))) }
        }
        return UnchangedMemory(unchanged)
    }

    /// The client's mappings and roots now, stack and TLS claims confined to anonymous private memory.
    private func currentRoots() throws -> (maps: [MapEntry], roots: [RootRange], refused: [RootRange]) {
        do {
            let maps = try Proc.maps(pid)
            let (roots, refused) = try table.roots(maps: maps, includeStacks: true, cache: elfCache)
            return (maps, roots, refused)
        } catch {
            guard table.isAlive else { throw ClientDropped(reason: "exited") }
            throw ClientDropped(reason: "cannot compute roots: \(error)")
        }
    }

    /// From now on the client's memory is read only where its pointers can be (see ScannableMemory).
    private func restrictMemory(maps: [MapEntry], roots: [RootRange], log: (String) -> Void) {
        do {
            try memory.process.restrict(to: ScannableMemory(maps: maps, dataRoots: roots.filter { $0.kind == .data }))
        } catch {
            log("cannot map the scannable memory of pid \(pid): \(error)")
        }
    }

    private func logRefused(_ refused: [RootRange], dataRoots: [RootRange], log: (String) -> Void) {
        for part in refused {
            // A claim inside an ELF data segment (the main thread's TLS may be there) is read as data anyway.
            if dataRoots.contains(where: { $0.start <= part.start && part.end <= $0.end }) { continue }
            guard refusedLogged.insert(part.description).inserted else { continue }
            log("pid \(pid): thread root \(part) is not anonymous private memory; not scanned")
        }
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
