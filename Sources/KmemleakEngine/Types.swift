// Public value types of the engine: configuration, object metadata, roots, per-CPU layouts,
// scan results, report entries.

/// The kernel's object flag values (`OBJECT_*` in mm/kmemleak.c), as shown by `dump=` (`flags = 0x%x`).
public enum ObjectFlags {
    /// `OBJECT_ALLOCATED`: the object is live (registered and not freed).
    public static let allocated: UInt32 = 0x1
    /// `OBJECT_REPORTED`: the object was reported as a leak (sticky).
    public static let reported: UInt32 = 0x2
    /// `OBJECT_NO_SCAN`: the object's contents are not scanned.
    public static let noScan: UInt32 = 0x4
    /// `OBJECT_FULL_SCAN`: scan the whole object although it has scan areas.
    public static let fullScan: UInt32 = 0x8
    /// `OBJECT_PHYS`: physical-address object (never created by this engine; kept for the value).
    public static let phys: UInt32 = 0x10
    /// `OBJECT_PERCPU`: a per-CPU object (its pointer is a per-CPU handle).
    public static let percpu: UInt32 = 0x20
}

/// The kernel's colour values for `min_count`: `KMEMLEAK_GREY` (0) and `KMEMLEAK_BLACK` (-1).
public enum MinCount {
    /// `KMEMLEAK_GREY`: always gray (scanned, never reported).
    public static let grey: Int32 = 0
    /// `KMEMLEAK_BLACK`: ignored (not scanned, not reported).
    public static let black: Int32 = -1
}

/// Engine configuration (one engine = one scanned address space).
public struct KmemleakConfiguration: Sendable {
    /// Number of possible CPUs (every per-CPU object has this many copies at most).
    public var possibleCPUs: Int
    /// Minimum object age in nanoseconds before it can be reported (kernel: MSECS_MIN_AGE = 5000 ms),
    /// measured against the start of the scan.
    public var minimumAge: UInt64
    /// Ticks per second used to print `jiffies` (USER_HZ, 100): jiffies = creationTime * hz / 1e9.
    public var ticksPerSecond: UInt64
    /// Extra confirmation passes run when a scan has new leak candidates (0 = the kernel's behaviour).
    /// See `Kmemleak.scan(now:memory:shouldStop:)`.
    public var confirmationPasses: Int
    /// Which CPU's copy of a per-CPU object the report's hex dump shows (`on cpu N`).
    public var reportCPU: Int
    /// Page size used to round up the size of `vmalloc` twins (PAGE_ALIGN).
    public var pageSize: UInt64
    /// Path printed in the log line "N new suspected memory leaks (see PATH)" and in the
    /// "echo clear > PATH" hint, e.g. "/mnt/kmemleak/kmemleak".
    public var controlFilePath: String
    /// Sink for the kernel's log lines (each already prefixed with "kmemleak: " where the kernel's
    /// pr_fmt would add it; one line per call, no trailing newline). Never called with the state lock
    /// held, so it may call object operations; it may run inside `scan`/`clear`, so it must not call
    /// `scan`, `clear` or `reportSnapshot` (they would wait for themselves).
    public var log: @Sendable (String) -> Void
    /// Whether `scan` logs "kmemleak: N new suspected memory leaks (see PATH)" itself (default true).
    /// A daemon running one engine per client may turn it off and log one summed line with
    /// `Kmemleak.newLeaksLine`.
    public var logNewLeaks: Bool
    /// Daemon mode: objects are registered from a client's table some time after the fact, so an
    /// overlap with a registered object means that object is stale (freed, address reused). When set,
    /// an insert replaces overlapping objects of a lower `seq` (and is dropped if one has a higher
    /// `seq`) instead of disabling the detector as the kernel does. Default false (the kernel's rule).
    public var replacesStaleObjects: Bool = false
    /// Object ids are the caller's: every object is registered with `Kmemleak.register(id:_:size:...)`
    /// (a daemon passes the table slot: it keeps no id per slot), ids below `Kmemleak.chosenIDLimit`. A
    /// freed or replaced object's id holds nothing until the caller registers there again, during a scan
    /// too (the scan does not report the new object). The kernel's calls that make objects (`alloc`,
    /// `allocPercpu`, `vmalloc`, the remainders of `freePart`) register nothing then. Default false: the
    /// engine picks ids.
    public var idsChosenByCaller: Bool = false
    /// Whether `disable()` logs the kernel's "Kernel memory leak detector disabled" lines (default true).
    /// A daemon that disables one engine per client turns it off and logs them once itself.
    public var logDisable: Bool = true
    /// The kernel's `kmemleak.verbose=1`: each new leak found by a scan is also logged as its report record,
    /// every line prefixed "kmemleak: " (comm and frames resolved through `logContext`).
    public var verbose: Bool
    /// Optional context used to print comm and frames in log-only object dumps (alias and overlap warnings).
    public var logContext: (any ReportContext & Sendable)?
    /// Threads for the scan's lookups and reads (see `ScanWorkers`); nil or a count of 1: the serial scan.
    /// The results are the same either way.
    public var scanWorkers: (any ScanWorkers)? = nil
    /// Drop, before the lookup, the words that land in a 16-byte granule wholly inside an object already
    /// done this scan (see `DoneGranules`; at most 4 bytes of bits per object while a scan runs). The
    /// results are the same either way.
    public var skipsDoneGranules: Bool = true
    /// Read scan_gray_list's batches as windows of memory around their objects, not object by object,
    /// and scan from them the objects they hold that turn gray meanwhile (see `Scanner.readWindows`):
    /// real heaps keep an object's referents near it, which would otherwise be read again a level later.
    /// Only where the reader tells plain windows (`MemoryReader.plainWindow`). The objects reported are
    /// the same either way, but for excess_ref forwarding, which counts the hits an object gets once it
    /// is gray and so, as in the kernel, follows the scan order.
    public var readsGrayWindows: Bool = true

    /// Creates a configuration; the defaults are the kernel's (1 CPU, 5 s minimum age, HZ 100, no
    /// confirmation passes, report CPU 0, 4 KiB pages, debugfs path, no logging).
    public init(
        possibleCPUs: Int = 1,
        minimumAge: UInt64 = 5_000_000_000,
        ticksPerSecond: UInt64 = 100,
        confirmationPasses: Int = 0,
        reportCPU: Int = 0,
        pageSize: UInt64 = 4096,
        controlFilePath: String = "/sys/kernel/debug/kmemleak",
        log: @escaping @Sendable (String) -> Void = { _ in },
        logNewLeaks: Bool = true,
        verbose: Bool = false,
        logContext: (any ReportContext & Sendable)? = nil
    ) {
        self.logNewLeaks = logNewLeaks
        self.verbose = verbose
        self.possibleCPUs = max(1, possibleCPUs)
        self.minimumAge = minimumAge
        self.ticksPerSecond = ticksPerSecond
        self.confirmationPasses = max(0, confirmationPasses)
        self.reportCPU = max(0, reportCPU)
        self.pageSize = max(1, pageSize)
        self.controlFilePath = controlFilePath
        self.log = log
        self.logContext = logContext
    }
}

/// Who allocated an object, and when: the kernel's `pid`, `comm`, `jiffies` and `trace_handle`,
/// plus the allocation sequence number that defines the report order.
public struct ObjectMetadata: Sendable, Equatable, Hashable {
    /// Allocating thread id (the kernel's `current->pid`).
    public var pid: Int32
    /// Comm id, resolved through `ReportContext.comm`.
    public var comm: UInt32
    /// Creation time, CLOCK_BOOTTIME nanoseconds.
    public var creationTime: UInt64
    /// Stack-depot id of the allocation trace, resolved through `ReportContext.frames`; 0 = none.
    public var trace: UInt32
    /// Allocation sequence number: the report lists objects in ascending `seq`.
    public var seq: UInt64

    /// Creates metadata.
    public init(pid: Int32 = 0, comm: UInt32 = 0, creationTime: UInt64 = 0, trace: UInt32 = 0, seq: UInt64 = 0) {
        self.pid = pid
        self.comm = comm
        self.creationTime = creationTime
        self.trace = trace
        self.seq = seq
    }
}

/// A root region: memory scanned at every scan like the kernel's data sections, per-CPU sections
/// and task stacks. Root regions are their own space: they may overlap each other (merged before
/// each scan so no byte is scanned twice) and may overlap tracked objects.
public struct RootRegion: Sendable, Equatable {
    /// What the region is.
    public enum Kind: Sendable, Equatable {
        /// Writable data of a loaded ELF object (.data/.bss).
        case data
        /// A thread stack (skipped when `stackScanning` is off).
        case stack
        /// Static TLS block of a thread.
        case tls
        /// A region registered by the program.
        case registered
    }
    /// First byte.
    public var start: Address
    /// Length in bytes.
    public var length: UInt64
    /// Kind of root.
    public var kind: Kind
    /// The writable data of the C library that implements malloc (glibc's libc.so.6, where `main_arena`
    /// lives). Its words that point exactly at the header of the chunk after a malloc block are the
    /// allocator's bookkeeping (top, bins, last_remainder), not references to that block; see
    /// `Kmemleak.register(_:size:minCount:percpu:mallocChunk:metadata:)`.
    public var isAllocatorData: Bool

    /// Creates a root region.
    public init(start: Address, length: UInt64, kind: Kind, isAllocatorData: Bool = false) {
        self.start = start
        self.length = length
        self.kind = kind
        self.isAllocatorData = isAllocatorData
    }
}

/// Where the CPU copies of the per-CPU objects whose handles lie in
/// `[handleStart, handleStart + handleLength)` are.
public struct PercpuLayout: Sendable, Equatable {
    /// How CPU copies are found.
    public enum Copies: Sendable, Equatable {
        /// Kernel style: CPU c's copy of handle h is at `offsets[c] + h` (wrapping; one offset per CPU).
        case offsets([UInt64])
        /// Foreign allocators (librseq mempool): CPU c's copy of handle h is at
        /// `cpu0Base + (h - handleStart) + c * stride`, for c < cpus.
        case stride(cpu0Base: Address, stride: UInt64, cpus: Int)
    }
    /// First handle covered.
    public var handleStart: Address
    /// Number of handle bytes covered.
    public var handleLength: UInt64
    /// The copy rule.
    public var copies: Copies

    /// Creates a layout.
    public init(handleStart: Address, handleLength: UInt64, copies: Copies) {
        self.handleStart = handleStart
        self.handleLength = handleLength
        self.copies = copies
    }

    /// True if `handle` lies in the covered handle range.
    public func covers(_ handle: Address) -> Bool {
        handle >= handleStart && handle - handleStart < handleLength
    }

    /// The address of CPU `cpu`'s copy of `handle`, or nil if this layout has no such CPU.
    public func address(of handle: Address, cpu: Int) -> Address? {
        guard cpu >= 0 else { return nil }
        switch copies {
        case .offsets(let offsets):
            guard cpu < offsets.count else { return nil }
            return offsets[cpu] &+ handle
        case .stride(let base, let stride, let cpus):
            guard cpu < cpus else { return nil }
            return base &+ (handle &- handleStart) &+ UInt64(cpu) &* stride
        }
    }
}

/// The outcome of one scan.
public struct ScanResult: Sendable, Equatable {
    /// Objects newly marked REPORTED by this scan (0 when interrupted).
    public var newLeaks: Int
    /// True when the scan stopped early (shouldStop, or the detector was disabled): nothing was reported.
    public var interrupted: Bool
    /// Objects whose contents were scanned (gray-list entries, counted once per scan of the object).
    public var objectsScanned: Int
    /// Bytes handed to scan_block (roots and objects, every CPU copy), as read.
    public var bytesScanned: Int
    /// Bytes read for the checksum pass.
    public var bytesChecksummed: Int
    /// Candidates spared by confirmation passes.
    public var sparedByConfirmation: Int
    /// True when the confirmation hooks withheld the report (`begin` returned nil or `mayReport`
    /// false): nothing was reported, the candidates wait for the next scan.
    public var postponed: Bool = false
    /// True when the confirmation re-read only what changed (`ConfirmationHooks.unchangedMemory`).
    public var filteredConfirmation: Bool = false
    /// Bytes read by the confirmation passes (part of `bytesScanned`).
    public var bytesConfirmed: Int = 0
    /// Objects scanned from a window already read for other gray objects (part of `objectsScanned`;
    /// see `KmemleakConfiguration.readsGrayWindows`).
    public var objectsScannedInWindows: Int = 0

    /// Creates a result.
    public init(newLeaks: Int = 0, interrupted: Bool = false, objectsScanned: Int = 0, bytesScanned: Int = 0,
                bytesChecksummed: Int = 0, sparedByConfirmation: Int = 0) {
        self.newLeaks = newLeaks
        self.interrupted = interrupted
        self.objectsScanned = objectsScanned
        self.bytesScanned = bytesScanned
        self.bytesChecksummed = bytesChecksummed
        self.sparedByConfirmation = sparedByConfirmation
    }
}

/// Everything needed to render one report record (KMEMLEAK-SPEC §8), captured at snapshot time.
public struct ReportEntry: Sendable, Equatable {
    /// The object's pointer (for a per-CPU object: its handle).
    public var pointer: Address
    /// The object's size.
    public var size: UInt64
    /// True for a per-CPU object (` (percpu)` tag, `on cpu N` hex-dump header).
    public var isPercpu: Bool
    /// The CPU whose copy `contents` holds (per-CPU objects only).
    public var cpu: Int
    /// Allocating thread id.
    public var pid: Int32
    /// Comm id (resolve with `ReportContext.comm`).
    public var comm: UInt32
    /// Creation tick (`jiffies`).
    public var jiffies: UInt64
    /// The first min(size, 32) bytes, read at snapshot time (fewer if the read came back short).
    public var contents: [UInt8]
    /// The object's content checksum (crc32_le) at the last scan.
    public var checksum: UInt32
    /// Trace id (resolve with `ReportContext.frames`).
    public var trace: UInt32
    /// Allocation sequence number (report order within one engine).
    public var seq: UInt64
    /// Creation time (CLOCK_BOOTTIME ns): a global order when merging the reports of several engines.
    public var creationTime: UInt64

    /// Creates an entry.
    public init(pointer: Address, size: UInt64, isPercpu: Bool = false, cpu: Int = 0, pid: Int32, comm: UInt32,
                jiffies: UInt64, contents: [UInt8], checksum: UInt32, trace: UInt32, seq: UInt64 = 0,
                creationTime: UInt64 = 0) {
        self.creationTime = creationTime
        self.pointer = pointer
        self.size = size
        self.isPercpu = isPercpu
        self.cpu = cpu
        self.pid = pid
        self.comm = comm
        self.jiffies = jiffies
        self.contents = contents
        self.checksum = checksum
        self.trace = trace
        self.seq = seq
    }
}

/// A tracked object as the engine sees it (for diffing with a client's table, and for tests).
public struct ObjectInfo: Sendable, Equatable {
    /// Pointer (per-CPU objects: handle).
    public var pointer: Address
    /// Size in bytes.
    public var size: UInt64
    /// `ObjectFlags` bits.
    public var flags: UInt32
    /// min_count (-1 black, 0 grey).
    public var minCount: Int32
    /// count (references found in the current/last scan).
    public var count: Int32
    /// Content checksum at the last update.
    public var checksum: UInt32
    /// excess_ref (0 = none).
    public var excessRef: Address
    /// Metadata given at creation (trace possibly replaced by `updateTrace`).
    public var metadata: ObjectMetadata
    /// Scan areas (absolute start, size), most recently added first (the kernel's hlist order).
    public var scanAreas: [(start: Address, size: UInt64)]

    /// True for per-CPU objects.
    public var isPercpu: Bool { flags & ObjectFlags.percpu != 0 }

    /// Field-wise equality (scan areas compared by start and size, in order).
    public static func == (a: ObjectInfo, b: ObjectInfo) -> Bool {
        a.pointer == b.pointer && a.size == b.size && a.flags == b.flags && a.minCount == b.minCount
            && a.count == b.count && a.checksum == b.checksum && a.excessRef == b.excessRef
            && a.metadata == b.metadata && a.scanAreas.map { $0.start } == b.scanAreas.map { $0.start }
            && a.scanAreas.map { $0.size } == b.scanAreas.map { $0.size }
    }
}
