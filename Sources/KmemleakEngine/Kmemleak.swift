// The kmemleak algorithm (issue 2): the public engine type and its allocator/annotation API.
import Synchronization

/// One kmemleak detector over ONE address space (one client process): the kernel's mm/kmemleak.c
/// object tracking, annotations, scan and report, in pure Swift over a `MemoryReader`.
///
/// Thread safety: every method may be called from any thread. Object operations take an internal
/// mutex for a short time. `scan`, `clear`, `reportSnapshot` are serialised by a second mutex (the
/// kernel's `scan_mutex`), so a report read waits for a running scan, while allocations and frees only
/// ever wait for one chunk of work: at most 4096 bytes of words (MAX_SCAN_SIZE; 64 KiB shared among the
/// threads with `KmemleakConfiguration.scanWorkers`) or 8192 object slots. Memory is read with no lock held.
///
/// Memory: about 41 bytes per tracked object (a 32-byte packed record and the index's 8-byte entries,
/// both in pages that never move), see BENCHMARKS.md.
///
/// Typical use by a daemon, one engine per client process: `alloc`/`free`/... as the client's table
/// changes (`seq` = allocation order), `setRoots` and `setPercpuLayouts` before each `scan`, then
/// `reportSnapshot` + `render` for the control file's read side, and `ControlCommand.parse` for its
/// write side.
///
/// Addresses of plain objects, per-CPU handles and root regions are three separate spaces.
/// Calls on a disabled detector are ignored (as in the kernel), except `clear` and the read side.
public final class Kmemleak: Sendable {
    /// The configuration the engine was created with.
    public let configuration: KmemleakConfiguration
    let state: Mutex<EngineState>
    let scanMutex = Mutex<Int>(0)

    /// Creates an enabled detector with `stack=on` and no objects.
    public init(configuration: KmemleakConfiguration = KmemleakConfiguration()) {
        self.configuration = configuration
        self.state = Mutex(EngineState(configuration))
    }

    /// Runs `body` under the state mutex, then hands the queued log lines to the sink (outside the lock).
    @discardableResult
    func withState<R: Sendable>(_ body: (inout EngineState) -> R) -> R {
        let (r, logs): (R, [String]) = state.withLock { s in
            let r = body(&s)
            let l = s.logs
            if !l.isEmpty { s.logs = [] }
            return (r, l)
        }
        for line in logs { configuration.log(line) }
        return r
    }

    // MARK: - State

    /// False once the detector was disabled (`off`, or an internal error such as an overlapping insert).
    public var isEnabled: Bool { state.withLock { $0.enabled } }

    /// `stack=on|off`: whether `.stack` root regions are scanned (default on).
    public var stackScanning: Bool {
        get { state.withLock { $0.stackScan } }
        set { state.withLock { $0.stackScan = newValue } }
    }

    /// Number of tracked objects (plain and per-CPU).
    public var objectCount: Int { state.withLock { $0.objectCount } }

    /// Bytes of the tracked objects (the sum of their sizes), kept as objects come and go.
    public var objectBytes: UInt64 { state.withLock { $0.objectBytes } }

    /// True when the last scans found leaks not yet cleared (`kmemleak_found_leaks`).
    public var foundLeaks: Bool { state.withLock { $0.foundLeaks } }

    /// Reserves room for `objects` tracked objects (no record page is made under the lock later).
    public func reserveCapacity(_ objects: Int) {
        state.withLock { $0.records.reserveCapacity(objects) }
    }

    /// Approximate bytes of engine memory used by object metadata and the search trees
    /// (array capacities, side tables, interned contexts).
    public var memoryBytes: Int { state.withLock { $0.memoryBytes } }

    /// Diagnostics: `memoryBytes` split by structure (records, plain index, per-CPU index, interned
    /// contexts, checksums, free-id lists, the rest).
    public func memoryBreakdown() -> [(name: String, bytes: Int)] {
        state.withLock { s in
            let parts = [("records", s.records.capacity * MemoryLayout<ObjectRecord>.stride),
                         ("plain index", s.plain.memoryBytes), ("percpu index", s.percpu.memoryBytes),
                         ("contexts", s.contextMemoryBytes), ("checksums", s.checksumMemoryBytes),
                         ("free slots", s.freeSlots.capacity * 4 + s.deferredFree.capacity * 4)]
            return parts + [("other", s.memoryBytes - parts.reduce(0) { $0 + $1.1 })]
        }
    }

    /// Interned allocation contexts (pid, comm, trace and the high bits of seq and creation time) now.
    public var contextCount: Int { state.withLock { $0.contextIDs.count } }

    // MARK: - Allocator hooks (KMEMLEAK-SPEC §3)

    /// The kernel's `ptr && !IS_ERR(ptr)` guard of every hook: NULL and the last 4095 addresses are ignored.
    @inline(__always) static func valid(_ p: Address) -> Bool { p != 0 && p < UInt64.max - 4094 }

    /// `kmemleak_alloc(ptr, size, min_count)`: registers a block. min_count 1 for heap blocks, 0 = never
    /// reported (grey), -1 = ignored (black). NULL and error pointers are ignored. An overlap with a
    /// registered object disables the detector (kernel log message).
    /// A zero-size object occupies one byte for lookups (so `malloc(0)` blocks can be referenced).
    /// `mallocChunk`: a block of glibc's malloc (see `register(_:size:minCount:percpu:mallocChunk:metadata:)`).
    public func alloc(_ pointer: Address, size: UInt64, minCount: Int32 = 1, mallocChunk: Bool = false,
                      metadata: ObjectMetadata) {
        guard Self.valid(pointer) else { return }
        withState { s in
            guard s.enabled else { return }
            s.createObject(pointer, size: size, minCount: minCount, percpuObject: false, mallocChunk: mallocChunk,
                           metadata)
        }
    }

    /// `kmemleak_alloc_percpu(ptr, size)`: registers a per-CPU object by its handle, min_count 1
    /// (6.12+). Its CPU copies are found through the layouts given to `setPercpuLayouts`.
    public func allocPercpu(_ handle: Address, size: UInt64, metadata: ObjectMetadata) {
        guard Self.valid(handle) else { return }
        withState { s in
            guard s.enabled else { return }
            s.createObject(handle, size: size, minCount: 1, percpuObject: true, metadata)
        }
    }

    /// `kmemleak_vmalloc(area, size)`: registers the block at `pointer` with min_count 2 and size rounded
    /// up to the page size, and sets the excess_ref of the object at `area` (the vm_struct twin, which
    /// always holds one reference) to `pointer`, so surplus references to that already-gray owner count
    /// for the block.
    public func vmalloc(area: Address, pointer: Address, size: UInt64, metadata: ObjectMetadata) {
        guard Self.valid(pointer) else { return }
        withState { s in
            guard s.enabled else { return }
            let ps = s.pageSize
            let aligned = size.addingReportingOverflow(ps - 1).overflow ? size : (size + ps - 1) / ps * ps
            s.createObject(pointer, size: aligned, minCount: 2, percpuObject: false, metadata)
            if s.enabled { s.setExcessRef(area, pointer) }
        }
    }

    /// `kmemleak_free(ptr)`: unregisters the object starting exactly at `pointer` (unknown: silent; an
    /// interior pointer logs "Found object by alias").
    public func free(_ pointer: Address) {
        guard Self.valid(pointer) else { return }
        withState { s in
            guard s.enabled else { return }
            s.free(pointer, .plain)
        }
    }

    /// `kmemleak_free_percpu(ptr)`.
    public func freePercpu(_ handle: Address) {
        guard Self.valid(handle) else { return }
        withState { s in
            guard s.enabled else { return }
            s.free(handle, .percpu)
        }
    }

    /// `kmemleak_free_part(ptr, size)`: frees [pointer, pointer+size) inside an object (interior pointer
    /// allowed); the left and right remainders are re-registered with the same min_count and with
    /// `metadata` (the freeing context: pid, comm, time, trace, and the seq that orders them).
    public func freePart(_ pointer: Address, size: UInt64, metadata: ObjectMetadata) {
        guard Self.valid(pointer) else { return }
        withState { s in
            guard s.enabled else { return }
            s.freePart(pointer, size: size, metadata)
        }
    }

    /// `kmemleak_update_trace(ptr)`: replaces the trace of the object containing `pointer`.
    public func updateTrace(_ pointer: Address, trace: UInt32) {
        guard Self.valid(pointer) else { return }
        withState { s in
            guard s.enabled else { return }
            s.updateTrace(pointer, trace)
        }
    }

    // MARK: - Annotations

    /// `kmemleak_not_leak(ptr)`: grey forever (scanned, never reported).
    public func notLeak(_ pointer: Address) {
        guard Self.valid(pointer) else { return }
        withState { s in
            guard s.enabled else { return }
            s.paint(pointer, MinCount.grey, .plain)
        }
    }

    /// `kmemleak_transient_leak(ptr)`: checksum = 0, so the next scan treats it as modified.
    public func transientLeak(_ pointer: Address) {
        guard Self.valid(pointer) else { return }
        withState { s in
            guard s.enabled else { return }
            s.resetChecksum(pointer)
        }
    }

    /// `kmemleak_ignore(ptr)`: black (not scanned, not reported).
    public func ignore(_ pointer: Address) {
        guard Self.valid(pointer) else { return }
        withState { s in
            guard s.enabled else { return }
            s.paint(pointer, MinCount.black, .plain)
        }
    }

    /// `kmemleak_ignore_percpu(ptr)`: black, for a per-CPU object.
    public func ignorePercpu(_ handle: Address) {
        guard Self.valid(handle) else { return }
        withState { s in
            guard s.enabled else { return }
            s.paint(handle, MinCount.black, .percpu)
        }
    }

    /// `kmemleak_no_scan(ptr)`: do not scan the contents; references to it still count.
    public func noScan(_ pointer: Address) {
        guard Self.valid(pointer) else { return }
        withState { s in
            guard s.enabled else { return }
            s.noScan(pointer)
        }
    }

    /// `kmemleak_scan_area(ptr, size)`: scan only the given sub-ranges of the object containing `pointer`.
    /// `size == UInt64.max` (SIZE_MAX) means "to the end of the object". An area past the end logs
    /// "Scan area larger than object 0x%08lx" and is ignored.
    public func scanArea(_ pointer: Address, size: UInt64) {
        guard Self.valid(pointer), size != 0 else { return }
        withState { s in
            guard s.enabled else { return }
            s.addScanArea(pointer, size: size)
        }
    }

    /// `object_set_excess_ref(ptr, excess_ref)`: references to the object at `pointer` found while it is
    /// already gray are forwarded to the object starting at `excessRef`.
    public func setExcessRef(_ pointer: Address, to excessRef: Address) {
        guard Self.valid(pointer) else { return }
        withState { s in
            guard s.enabled else { return }
            s.setExcessRef(pointer, excessRef)
        }
    }

    // MARK: - Roots and per-CPU layouts

    /// Replaces the whole root set (used by the next scans). Roots may overlap each other; they are merged
    /// before each scan so that no byte is scanned twice. `.stack` roots are skipped when `stackScanning`
    /// is off.
    public func setRoots(_ roots: [RootRegion]) {
        state.withLock { $0.roots = roots }
    }

    /// Replaces the per-CPU layouts (how CPU copies of per-CPU handles are found).
    public func setPercpuLayouts(_ layouts: [PercpuLayout]) {
        state.withLock { $0.layouts = layouts }
    }

    // MARK: - Queries

    /// The object starting exactly at `pointer` in the plain space (or the per-CPU space), or nil.
    public func objectInfo(at pointer: Address, percpu: Bool = false) -> ObjectInfo? {
        withState { s -> ObjectInfo? in
            let sp: Space = percpu ? .percpu : .plain
            let saved = s.logs.count
            guard let h = s.lookup(pointer, alias: true, sp), s.records[Int(h.id)].pointer == pointer else {
                s.logs.removeSubrange(saved...)
                return nil
            }
            return s.info(h.id)
        }
    }

    /// Calls `body` for every tracked object (slot order) under the engine lock: `body` must not call
    /// back into the engine.
    public func forEachObject(_ body: (ObjectInfo) -> Void) {
        state.withLock { s in
            for i in s.records.indices where s.records[i].allocated { body(s.info(UInt32(i))) }
        }
    }

    // MARK: - Lifecycle

    /// `clear` (§2.5): when enabled, every REPORTED and still unreferenced object gets min_count 0 (grey:
    /// still scanned, never reported again) and found_leaks is reset; when disabled, all metadata is
    /// freed. Waits for a running scan.
    public func clear() {
        scanMutex.withLock { _ in
            var slot = 0
            while slot >= 0 {
                let from = slot
                slot = withState { s in
                    guard s.enabled else {
                        s.freeAll()
                        return -1
                    }
                    return s.clearReported(from: from, count: slotChunk)
                }
            }
        }
    }

    /// `off` / kmemleak_disable (§2.6): irreversible. Logs "Kernel memory leak detector disabled"; frees
    /// all metadata unless leaks were found, in which case the reported objects stay readable until
    /// `clear` and the "Kmemleak disabled without freeing internal data..." line is logged. A running
    /// scan stops at its next chunk and reports nothing.
    public func disable() {
        withState { s in s.disable() }
    }

    /// The log line after a scan with new leaks: "kmemleak: N new suspected memory leaks (see PATH)".
    public static func newLeaksLine(_ count: Int, controlFilePath: String) -> String {
        "kmemleak: \(count) new suspected memory leaks (see \(controlFilePath))"
    }
}
