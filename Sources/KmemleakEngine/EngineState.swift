// The detector's state behind the engine's mutex: objects, the two object search trees, rare side data,
// the gray list, and the annotation operations (create_object, delete_object_*, paint_ptr, ...).

/// Interned per-object data that most objects share with many others: who allocated them (pid, comm,
/// trace) and the high bits of their sequence number and creation time (the record keeps the low bits).
/// One call site's objects created within one 2^39 ns window (about 9 minutes) and one run of 2^32
/// sequence numbers share a key. Reference-counted: a key goes when its last object does, so a client
/// that keeps making new ones (thread ids, traces, forged times) costs at most one key per live object.
struct ContextKey: Hashable {
    var pid: Int32
    var comm: UInt32
    var trace: UInt32
    /// seq >> 32.
    var seqHigh: UInt32
    /// creationTime >> ObjectRecord.createdLowBits (25 bits: every UInt64 time fits).
    var createdHigh: UInt32

    init(pid: Int32, comm: UInt32, trace: UInt32, seq: UInt64, created: UInt64) {
        self.pid = pid
        self.comm = comm
        self.trace = trace
        seqHigh = UInt32(truncatingIfNeeded: seq >> 32)
        createdHigh = UInt32(truncatingIfNeeded: created >> ObjectRecord.createdLowBits)
    }
}

/// Rare per-object data (the kernel's area_list and excess_ref, and sizes that do not fit 32 bits).
struct ObjectExtras {
    var excessRef: UInt64 = 0
    /// Most recently added first (hlist_add_head).
    var areas: [(start: UInt64, size: UInt64)] = []
    var bigSize: UInt64 = 0
}

/// The gray list (the kernel's gray_list): the ids of the objects still to scan, as a set of bits, one
/// per id, with summary levels above it (a bit per non-zero word of the level below, up to one word);
/// `pop` takes the smallest id. The kernel's list is FIFO, but what a scan finds does not depend on the
/// order: an object is scanned once when it turns gray, whatever turned it, and colours only darken
/// during a scan. A FIFO over a real heap's reference graph holds a large part of its ids at once (4
/// bytes each: the scans' largest transient, issue 10 goal 5); the bits take 1/8 byte per id at most,
/// and the summary levels keep `pop` at one word per level (a flat bit set's wrapping search costs
/// O(ids / 64) a pop in the worst case). An id may name a newer, young object by the time it is popped:
/// scanning it only adds references. Pushing an id already queued does nothing.
struct GrayQueue {
    /// All levels in one array: level k's words start at `starts[k]` (level 0: one bit per id; level
    /// k + 1: one bit per non-zero word of level k; the last level is one word), so that a pop or push
    /// checks the array's uniqueness once, not once per level.
    private var words: [UInt64] = []
    private var starts: [Int] = []
    /// Every word of level 0 below this one is zero: a pop whose smallest id lies in that word (the
    /// common case while a scan drains one region of ids) reads one word, not one per level.
    private var lowestWord = 0
    /// Ids queued.
    private(set) var count = 0
    /// While set, every id newly queued is also appended to `pushed` (see `Scanner.claimInWindows`).
    var logsPushes = false
    var pushed: [UInt32] = []

    init() {}

    /// Room for ids below `ids` from the start (no growth while the scan pushes them).
    init(capacity ids: Int) { if ids > 0 { grow(to: ids - 1) } }

    private var bitWords: Int { starts.count > 1 ? starts[1] : words.count }

    @inline(__always) mutating func push(_ id: UInt32) {
        var i = Int(id)
        if starts.isEmpty || i >> 6 >= bitWords { grow(to: i) }
        let levels = starts.count
        let added: Bool = starts.withUnsafeBufferPointer { st in
            words.withUnsafeMutableBufferPointer { w in
                let old = w[i >> 6]
                let bit: UInt64 = 1 << UInt64(i & 63)
                if old & bit != 0 { return false }
                w[i >> 6] = old | bit
                var k = 1
                var wasEmpty = old == 0
                while wasEmpty && k < levels {
                    i >>= 6
                    let at = st[k] &+ (i >> 6)
                    let above = w[at]
                    w[at] = above | 1 << UInt64(i & 63)
                    wasEmpty = above == 0
                    k += 1
                }
                return true
            }
        }
        if added {
            count += 1
            if Int(id) >> 6 < lowestWord { lowestWord = Int(id) >> 6 }
            if logsPushes { pushed.append(id) }
        }
    }

    /// Removes `id` if it is queued; answers whether it was.
    mutating func remove(_ id: UInt32) -> Bool {
        var i = Int(id)
        guard count > 0, i >> 6 < bitWords else { return false }
        let levels = starts.count
        let removed: Bool = starts.withUnsafeBufferPointer { st in
            words.withUnsafeMutableBufferPointer { w in
                let old = w[i >> 6]
                let bit: UInt64 = 1 << UInt64(i & 63)
                if old & bit == 0 { return false }
                var v = old & ~bit
                w[i >> 6] = v
                // A summary bit is cleared when the word below it became empty.
                var k = 1
                while v == 0 && k < levels {
                    i >>= 6
                    let at = st[k] &+ (i >> 6)
                    v = w[at] & ~(1 << UInt64(i & 63))
                    w[at] = v
                    k += 1
                }
                return true
            }
        }
        if removed { count -= 1 }
        return removed
    }

    /// The smallest id queued, removed.
    @inline(__always) mutating func pop() -> UInt32? {
        guard count > 0 else { return nil }
        count -= 1
        let levels = starts.count
        let low = lowestWord
        let (id, word): (Int, Int) = starts.withUnsafeBufferPointer { st in
            words.withUnsafeMutableBufferPointer { w in
                var i: Int
                if w[low] != 0 {
                    i = low << 6 | w[low].trailingZeroBitCount
                } else {
                    i = 0
                    var k = levels - 1
                    while k >= 0 {
                        i = i << 6 | w[st[k] &+ i].trailingZeroBitCount
                        k -= 1
                    }
                }
                var j = i
                var k = 0
                while k < levels {
                    let at = st[k] &+ (j >> 6)
                    let v = w[at] & ~(1 << UInt64(j & 63))
                    w[at] = v
                    if v != 0 { break }
                    j >>= 6
                    k += 1
                }
                return (i, i >> 6)
            }
        }
        lowestWord = word
        return UInt32(truncatingIfNeeded: id)
    }

    var isEmpty: Bool { count == 0 }
    mutating func reset() { self = GrayQueue() }

    /// Room for id `i`: the bits grow to at least twice their words (a hostile client's sparse ids cost a
    /// copy per doubling, not per id), and the summary levels are rebuilt over them.
    private mutating func grow(to i: Int) {
        let n = max((i >> 6) + 1, bitWords * 2)
        var level = Array(words.prefix(starts.isEmpty ? 0 : bitWords))
        level.append(contentsOf: repeatElement(0, count: n - level.count))
        words = []
        starts = []
        while true {
            starts.append(words.count)
            words.append(contentsOf: level)
            if level.count <= 1 { break }
            var above = [UInt64](repeating: 0, count: (level.count + 63) >> 6)
            for (w, v) in level.enumerated() where v != 0 { above[w >> 6] |= 1 << UInt64(w & 63) }
            level = above
        }
    }
}

/// The granules no word needs to be looked up in (issue 10 goal 1): while a scan runs, one bit per
/// 16-byte granule of the plain index's hot range, set once the granule lies wholly inside an object on
/// which no word can do anything more until the next scan (gray or black without excess_ref: the moment
/// its `mayTakeReference` bit is cleared, by the word that turns it gray or by a later one; colours only
/// darken during a scan). Every word in such a granule finds that object, so the scan drops it before the
/// lookup. malloc blocks start 16-aligned, so a pointer to a block's start lands in a granule wholly inside
/// it: on the realistic C heap 90 % of the in-range words point at objects already done, and each of their
/// lookups was a DRAM miss on an index group where the granule's bit is a load from a few MiB. Where an object is freed or registered while
/// the scan runs, its granules are cleared (their words find another object then). The bits cost a
/// 128th of the range: at most `maxBytesPerObject` per plain object, else there are none.
struct DoneGranules {
    static let shift: UInt64 = 4
    static let maxBytesPerObject: UInt64 = 4
    private(set) var start: UInt64 = 0
    /// Bytes of the range covered; 0: no filter.
    private(set) var span: UInt64 = 0
    /// The bits (taken out by the word loop while it runs).
    var words: [UInt64] = []

    /// All clear over [start, start + span), or none when that would cost more than allowed for `objects`.
    mutating func reset(start: UInt64, span: UInt64, objects: Int) {
        let granules = span >> Self.shift
        guard span > 0, granules >> 3 <= UInt64(objects) &* Self.maxBytesPerObject else {
            release()
            return
        }
        let n = Int((granules + 63) >> 6)
        // In place: a new array would be held with the old one.
        words.removeLast(max(0, words.count - n))
        for i in words.indices { words[i] = 0 }
        words.append(contentsOf: repeatElement(0, count: n - words.count))
        self.start = start
        self.span = granules << Self.shift
    }

    /// Whether the granule of `address` is set (outside the word loop, which holds the bits meanwhile).
    func isSet(_ address: UInt64) -> Bool {
        let o = address &- start
        guard o < span, !words.isEmpty else { return false }
        let (word, mask) = Self.bit(o)
        return words[word] & mask != 0
    }

    /// The word and mask of the granule at byte offset `o` of the range.
    @inline(__always) static func bit(_ o: UInt64) -> (word: Int, mask: UInt64) {
        (Int(truncatingIfNeeded: o >> (shift + 6)), 1 << ((o >> shift) & 63))
    }

    /// Calls `body` with each word and mask of the granules [first, end), a word at a time.
    @inline(__always) static func forEachMask(_ first: UInt64, _ end: UInt64, _ body: (Int, UInt64) -> Void) {
        var g = first
        while g < end {
            let b = g & 63
            let n = min(64 - b, end - g)
            body(Int(g >> 6), n == 64 ? ~0 : ((1 << n) - 1) << b)
            g &+= n
        }
    }

    /// No filter, no memory.
    mutating func release() {
        self = DoneGranules()
    }

    /// Clears every granule that overlaps [pointer, pointer + size) (at least one byte).
    mutating func clear(_ pointer: UInt64, _ size: UInt64) {
        guard span > 0, !words.isEmpty else { return }
        let lo = pointer &- start
        guard lo < span else { return }
        let last = (min(span &- 1, lo &+ max(size, 1) &- 1)) >> Self.shift
        Self.forEachMask(lo >> Self.shift, last &+ 1) { w, mask in words[w] &= ~mask }
    }
}

/// The word loop's view of the `DoneGranules` bits (read by scan workers while the scanning thread waits
/// for them; written only by the scanning thread).
struct DoneFilter {
    let bits: UnsafeMutablePointer<UInt64>?
    let start: UInt64
    let span: UInt64

    init(bits: UnsafeMutablePointer<UInt64>? = nil, start: UInt64 = 0, span: UInt64 = 0) {
        self.bits = bits
        self.start = start
        self.span = bits == nil ? 0 : span
    }

    @inline(__always) func contains(_ w: UInt64) -> Bool {
        let o = w &- start
        guard o < span, let bits else { return false }
        let (word, mask) = DoneGranules.bit(o)
        return bits[word] & mask != 0
    }

    /// Sets the granules wholly inside [pointer, pointer + size), an object no word can change now.
    @inline(__always) func markInside(_ pointer: UInt64, _ size: UInt64) {
        guard let bits else { return }
        let lo = pointer &- start
        guard lo < span, size >= 1 << DoneGranules.shift else { return }
        let unit: UInt64 = 1 << DoneGranules.shift
        let hi = lo.addingReportingOverflow(size).overflow ? span : min(lo &+ size, span)
        DoneGranules.forEachMask((lo &+ unit &- 1) >> DoneGranules.shift, hi >> DoneGranules.shift) { w, mask in
            bits[w] |= mask
        }
    }
}

/// Which object search tree.
enum Space { case plain, percpu }

/// Candidate set of a confirmation pass (sorted intervals per space).
struct ConfirmState {
    var starts: [[UInt64]] = [[], []]
    var ends: [[UInt64]] = [[], []]
    var ids: [[UInt32]] = [[], []]
    var slotOf: [UInt32: (space: Int, index: Int)] = [:]
    var passCount: [[Int32]] = [[], []]
    var spared: [[Bool]] = [[], []]
    var minCounts: [[Int32]] = [[], []]
    var queue = GrayQueue()
    var sparedIDs: [UInt32] = []
    var filterMin: [UInt64] = [.max, .max]
    var filterMax: [UInt64] = [0, 0]
}

let rootID = UInt32.max
/// The scanned id of allocator-data roots (`RootRegion.isAllocatorData`); every other root is `rootID`.
let allocatorRootID = UInt32.max - 1
/// Whether a scanned id is a root's rather than an object's.
@inline(__always) func isRootID(_ id: UInt32) -> Bool { id >= allocatorRootID }

struct EngineState {
    var possibleCPUs: Int
    var minimumAge: UInt64
    var controlFilePath: String
    var logContext: (any ReportContext & Sendable)?
    var pageSize: UInt64

    var records = RecordStore()
    /// `KmemleakConfiguration.idsChosenByCaller`: ids are the caller's (`register(id:...)`), never
    /// handed out by the engine; a freed id holds nothing until the caller registers it again.
    var idsChosenByCaller = false
    var freeSlots: [UInt32] = []
    var deferredFree: [UInt32] = []
    var plain = IntervalIndex()
    var percpu = IntervalIndex()
    var extras: [UInt32: ObjectExtras] = [:]
    /// update_checksum's last value of each object whose checksum is not 0: only objects a scan found
    /// white get one (the leaks and the briefly unreferenced), so a dense 4 B per object would mostly
    /// hold zeros. Dropped with the object.
    var checksums: [UInt32: UInt32] = [:]
    var contextKeys: [ContextKey] = []
    /// Objects holding each context (0: the id is free, in `freeContexts`).
    var contextRefs: [UInt32] = []
    var freeContexts: [UInt32] = []
    var contextIDs: [ContextKey: UInt32] = [:]
    var roots: [RootRegion] = []
    var layouts: [PercpuLayout] = []

    var enabled = true
    var stackScan = true
    var foundLeaks = false
    var scanning = false
    var epoch = 0
    var lastScanStart: UInt64 = 0
    var objectCount = 0
    /// Sum of the live objects' sizes (wrapping: sizes are the client's word).
    var objectBytes: UInt64 = 0
    var gray = GrayQueue()
    /// While a scan runs: the granules whose words need no lookup (see `DoneGranules`).
    var done = DoneGranules()
    var confirm: ConfirmState? = nil
    /// One bit per id, set at each scan's prepare step and for each new object: a word that points into
    /// the object may still change something in this scan. The scan clears it once it has seen the
    /// object gray or black without excess_ref (colours only darken during a scan), so later words that
    /// land on it skip the record (a cache miss per word on large heaps).
    var mayTakeReference: [UInt64] = []
    /// Words of this batch that pointed at the end of an 8-byte malloc block (see `newArrayCookie`): they
    /// count once the block's first word has been read as 0.
    var cookieRefs: [UInt32] = []
    var logs: [String] = []
    var replacesStaleObjects = false
    var logDisable = true
    /// The id given to the last object `createObject` registered (nil when it registered none).
    var lastCreatedID: UInt32? = nil
    /// The objects registered while a scan runs (`ObjectRecord.newDuringScan`), in order.
    var createdDuringScan: [UInt32] = []

    init(_ c: KmemleakConfiguration) {
        replacesStaleObjects = c.replacesStaleObjects
        idsChosenByCaller = c.idsChosenByCaller
        logDisable = c.logDisable
        possibleCPUs = c.possibleCPUs
        minimumAge = c.minimumAge
        controlFilePath = c.controlFilePath
        logContext = c.logContext
        pageSize = c.pageSize
        hz = c.ticksPerSecond
    }

    // MARK: object fields

    @inline(__always) func size(_ id: UInt32) -> UInt64 {
        let r = records[Int(id)]
        return r.size32 == UInt32.max ? extras[id]?.bigSize ?? UInt64(UInt32.max) : UInt64(r.size32)
    }

    func context(_ id: UInt32) -> ContextKey { contextKeys[Int(records[Int(id)].context)] }

    /// The full allocation sequence number of a live record.
    @inline(__always) func seq(_ r: ObjectRecord) -> UInt64 {
        UInt64(contextKeys[Int(r.context)].seqHigh) << 32 | UInt64(r.seqLow)
    }

    /// The full creation time (CLOCK_BOOTTIME ns) of a live record.
    @inline(__always) func created(_ r: ObjectRecord) -> UInt64 {
        UInt64(contextKeys[Int(r.context)].createdHigh) << ObjectRecord.createdLowBits | r.createdLow
    }

    /// The context id for `k`, with one more reference.
    mutating func intern(_ k: ContextKey) -> UInt32 {
        if let v = contextIDs[k] {
            contextRefs[Int(v)] += 1
            return v
        }
        let v: UInt32
        if let f = freeContexts.popLast() {
            v = f
            contextKeys[Int(v)] = k
            contextRefs[Int(v)] = 1
        } else {
            v = UInt32(contextKeys.count)
            contextKeys.append(k)
            contextRefs.append(1)
        }
        contextIDs[k] = v
        return v
    }

    /// Drops one reference to context `v` (the last one frees it).
    mutating func release(context v: UInt32) {
        let i = Int(v)
        guard i < contextRefs.count, contextRefs[i] > 0 else { return }
        contextRefs[i] -= 1
        if contextRefs[i] == 0 {
            contextIDs[contextKeys[i]] = nil
            freeContexts.append(v)
        }
    }

    func info(_ id: UInt32) -> ObjectInfo {
        let r = records[Int(id)]
        let c = context(id)
        let e = r.bits & ObjectRecord.hasExtras != 0 ? extras[id] : nil
        return ObjectInfo(
            pointer: r.pointer, size: size(id), flags: r.flags & 0x3f, minCount: Int32(r.minCount),
            count: Int32(r.count), checksum: checksums[id] ?? 0, excessRef: e?.excessRef ?? 0,
            metadata: ObjectMetadata(pid: c.pid, comm: c.comm, creationTime: created(r), trace: c.trace, seq: seq(r)),
            scanAreas: e?.areas ?? [])
    }

    mutating func withExtras(_ id: UInt32, _ body: (inout ObjectExtras) -> Void) {
        records[Int(id)].bits |= ObjectRecord.hasExtras
        body(&extras[id, default: ObjectExtras()])
    }

    /// `unreferenced_object`: white, allocated and old enough at the start of the last scan.
    @inline(__always) func unreferenced(_ r: ObjectRecord) -> Bool {
        guard r.isWhite && r.allocated else { return false }
        let t = created(r)
        return lastScanStart >= t && lastScanStart - t >= minimumAge
    }

    // MARK: lookup


    /// `__lookup_object`: the object whose interval contains `ptr`. Without `alias`, an interior hit
    /// logs "Found object by alias" and returns nil.
    mutating func lookup(_ ptr: UInt64, alias: Bool, _ space: Space) -> (id: UInt32, b: Int, pos: Int)? {
        let hit: (id: UInt32, b: Int, pos: Int)?
        do {
            let idx = space == .plain ? plain : percpu
            hit = idx.predecessor(ptr)
        }
        guard let h = hit else { return nil }
        let r = records[Int(h.id)]
        guard ptr - r.pointer < max(size(h.id), 1) else { return nil }
        if r.pointer == ptr || alias { return h }
        warn("Found object by alias at \(KFormat.address(ptr))")
        logs.append(contentsOf: dumpObjectInfo(h.id, context: logContext))
        return nil
    }

    // MARK: logging

    mutating func warn(_ s: String) { logs.append("kmemleak: " + s) }

    func jiffiesOf(_ r: ObjectRecord, hz: UInt64) -> UInt64 { KFormat.jiffies(created(r), hz: hz) }

    var hz: UInt64 = 100

    /// dump_object_info's lines ("kmemleak: " prefix; frames " %pS" without prefix).
    func dumpObjectInfo(_ id: UInt32, context rc: (any ReportContext)?) -> [String] {
        KFormat.objectInfoLines(info(id), hz: hz, context: rc)
    }

    static func commName(_ ctx: some ReportContext, _ id: UInt32) -> String? { ctx.comm(id) }
    static func frames(_ ctx: some ReportContext, _ t: UInt32) -> [Address] { Array(ctx.frames(t).prefix(16)) }

    // MARK: lifetime

    /// create_object / __link_object. `chosenID`: the caller's id for the object (`idsChosenByCaller`,
    /// required then); nil: the engine picks one.
    mutating func createObject(_ ptr: UInt64, size: UInt64, minCount: Int32, percpuObject: Bool,
                               mallocChunk: Bool = false, chosenID: UInt32? = nil, _ m: ObjectMetadata) {
        // Caller-chosen ids and engine-picked ones never mix: an engine-picked id could be one the
        // caller chooses later.
        guard (chosenID != nil) == idsChosenByCaller else { return }
        if let id = chosenID, Int(id) < records.count, records[Int(id)].allocated {
            // The caller's id holds an object still (its caller frees first): that one goes.
            let r = records[Int(id)]
            let sp: Space = r.has(ObjectFlags.percpu) ? .percpu : .plain
            guard let h = lookup(r.pointer, alias: true, sp), h.id == id else { return }
            deleteObject(h, sp)
        }
        let space: Space = percpuObject ? .percpu : .plain
        let ext = max(size, 1)
        let end = ptr.addingReportingOverflow(ext).overflow ? UInt64.max : ptr + ext
        // Filters are updated before the overlap check, as in the kernel.
        if percpuObject {
            percpu.minAddr = min(percpu.minAddr, ptr)
            percpu.maxAddr = max(percpu.maxAddr, end)
        } else {
            plain.minAddr = min(plain.minAddr, ptr)
            plain.maxAddr = max(plain.maxAddr, end)
        }
        let pred: (id: UInt32, b: Int, pos: Int)?
        let succ: UInt32?
        do {
            let idx = space == .plain ? plain : percpu
            pred = idx.predecessor(ptr)
            succ = idx.successor(pred?.b ?? -1, pred?.pos ?? -1)
        }
        var parent: UInt32? = nil
        if let p = pred {
            let r = records[Int(p.id)]
            if r.pointer == ptr || ptr - r.pointer < max(self.size(p.id), 1) { parent = p.id }
        }
        if parent == nil, let s = succ {
            if records[Int(s)].pointer < end { parent = s }
        }
        if let parent, replacesStaleObjects {
            // Daemon mode: the older of two overlapping registrations is stale.
            guard seq(records[Int(parent)]) < m.seq,
                  let h = lookup(records[Int(parent)].pointer, alias: false, space) else { return }
            deleteObject(h, space)
            createObject(ptr, size: size, minCount: minCount, percpuObject: percpuObject, mallocChunk: mallocChunk,
                         chosenID: chosenID, m)
            return
        }
        if let parent {
            warn("Cannot insert 0x\(KFormat.hex(ptr)) into the object search tree (overlaps existing)")
            logs.append(contentsOf: dumpObjectInfo(parent, context: logContext))
            disable()
            return
        }
        let id: UInt32
        if let chosenID { id = chosenID } else if let f = freeSlots.popLast() { id = f } else { id = UInt32(records.count) }
        records.grow(to: Int(id) + 1)
        records.materialize(Int(id))
        var flags: UInt64 = UInt64(ObjectFlags.allocated | (percpuObject ? ObjectFlags.percpu : 0))
        if scanning { flags |= ObjectRecord.newDuringScan }
        if mallocChunk && !percpuObject { flags |= ObjectRecord.mallocChunk }
        let ctx = intern(ContextKey(pid: m.pid, comm: m.comm, trace: m.trace, seq: m.seq, created: m.creationTime))
        var record = ObjectRecord(
            pointer: ptr, bits: flags | (m.creationTime & ObjectRecord.createdLowMask) << ObjectRecord.createdShift,
            seqLow: UInt32(truncatingIfNeeded: m.seq), size32: size >= UInt64(UInt32.max) ? UInt32.max : UInt32(size),
            context: ctx)
        record.minCount = Int8(clamping: minCount)
        records[Int(id)] = record
        if size >= UInt64(UInt32.max) { withExtras(id) { $0.bigSize = size } }
        if percpuObject {
            percpu.insert(id, key: ptr, afterBlock: pred?.b ?? -1, pos: pred?.pos ?? -1)
        } else {
            plain.insert(id, key: ptr, afterBlock: pred?.b ?? -1, pos: pred?.pos ?? -1)
            if scanning { done.clear(ptr, ext) }
        }
        objectCount += 1
        objectBytes &+= size
        lastCreatedID = id
        if scanning { createdDuringScan.append(id) }
        let word = Int(id >> 6)
        if word >= mayTakeReference.count {
            mayTakeReference.append(contentsOf: repeatElement(0, count: word + 1 - mayTakeReference.count))
        }
        mayTakeReference[word] |= 1 << UInt64(id & 63)
    }

    /// Removes an object found by `lookup` (the kernel's __delete_object). An engine-picked id is given
    /// out again (after the running scan); a caller-chosen one waits for its caller.
    mutating func deleteObject(_ hit: (id: UInt32, b: Int, pos: Int), _ space: Space) {
        if space == .plain {
            if scanning { done.clear(records[Int(hit.id)].pointer, size(hit.id)) }
            plain.remove(b: hit.b, pos: hit.pos)
        } else {
            percpu.remove(b: hit.b, pos: hit.pos)
        }
        let id = hit.id
        objectBytes &-= size(id)
        if records[Int(id)].bits & ObjectRecord.hasExtras != 0 { extras[id] = nil }
        checksums[id] = nil
        release(context: records[Int(id)].context)
        records[Int(id)].bits = 0
        records[Int(id)].pointer = 0
        records.release(Int(id))
        if idsChosenByCaller {
            // The scan tolerates the id's reuse while it runs: the new object is young (not reported).
        } else if scanning { deferredFree.append(id) } else { freeSlots.append(id) }
        objectCount -= 1
    }

    /// delete_object_full.
    mutating func free(_ ptr: UInt64, _ space: Space) {
        guard let h = lookup(ptr, alias: false, space) else { return }
        deleteObject(h, space)
    }

    /// delete_object_part: split into the remainders, with the freeing context's metadata.
    mutating func freePart(_ ptr: UInt64, size: UInt64, _ m: ObjectMetadata) {
        guard let h = lookup(ptr, alias: true, .plain) else { return }
        let start = records[Int(h.id)].pointer
        let end = start &+ self.size(h.id)
        let minCount = Int32(records[Int(h.id)].minCount)
        deleteObject(h, .plain)
        if ptr > start { createObject(start, size: ptr - start, minCount: minCount, percpuObject: false, m) }
        if ptr &+ size < end { createObject(ptr &+ size, size: end - ptr &- size, minCount: minCount, percpuObject: false, m) }
    }

    /// paint_ptr: min_count = colour; black also sets NO_SCAN.
    mutating func paint(_ ptr: UInt64, _ color: Int32, _ space: Space) {
        guard let h = lookup(ptr, alias: false, space) else {
            warn("Trying to color unknown object at \(KFormat.address(ptr)) as \(color == MinCount.grey ? "Grey" : color == MinCount.black ? "Black" : "Unknown")")
            return
        }
        records[Int(h.id)].minCount = Int8(clamping: color)
        if color == MinCount.black { records[Int(h.id)].set(ObjectFlags.noScan) }
    }

    /// reset_checksum (kmemleak_transient_leak).
    mutating func resetChecksum(_ ptr: UInt64) {
        guard let h = lookup(ptr, alias: false, .plain) else {
            warn("Not resetting the checksum of an unknown object at \(KFormat.address(ptr))")
            return
        }
        checksums[h.id] = nil
    }

    /// object_no_scan.
    mutating func noScan(_ ptr: UInt64) {
        guard let h = lookup(ptr, alias: false, .plain) else {
            warn("Not scanning unknown object at \(KFormat.address(ptr))")
            return
        }
        records[Int(h.id)].set(ObjectFlags.noScan)
    }

    /// add_scan_area.
    mutating func addScanArea(_ ptr: UInt64, size sz: UInt64) {
        guard let h = lookup(ptr, alias: true, .plain) else {
            warn("Adding scan area to unknown object at \(KFormat.address(ptr))")
            return
        }
        let objp = records[Int(h.id)].pointer
        let objEnd = objp &+ self.size(h.id)
        var size = sz
        if size == UInt64.max {
            size = objEnd &- ptr
        } else if ptr.addingReportingOverflow(size).overflow || ptr + size > objEnd {
            warn("Scan area larger than object \(KFormat.address(ptr))")
            logs.append(contentsOf: dumpObjectInfo(h.id, context: logContext))
            return
        }
        withExtras(h.id) { $0.areas.insert((start: ptr, size: size), at: 0) }
    }

    /// object_set_excess_ref.
    mutating func setExcessRef(_ ptr: UInt64, _ excess: UInt64) {
        guard let h = lookup(ptr, alias: false, .plain) else {
            warn("Setting excess_ref on unknown object at \(KFormat.address(ptr))")
            return
        }
        withExtras(h.id) { $0.excessRef = excess }
    }

    /// kmemleak_update_trace.
    mutating func updateTrace(_ ptr: UInt64, _ trace: UInt32) {
        guard let h = lookup(ptr, alias: true, .plain) else { return }
        let old = records[Int(h.id)].context
        var c = contextKeys[Int(old)]
        guard c.trace != trace else { return }
        c.trace = trace
        records[Int(h.id)].context = intern(c)
        release(context: old)
    }

    // MARK: lifecycle

    /// kmemleak_disable + kmemleak_do_cleanup.
    mutating func disable() {
        guard enabled else { return }
        enabled = false
        if logDisable { logs.append("kmemleak: Kernel memory leak detector disabled") }
        if !foundLeaks {
            freeAll()
        } else if logDisable {
            logs.append("kmemleak: Kmemleak disabled without freeing internal data. Reclaim the memory with \"echo clear > \(controlFilePath)\".")
        }
    }

    /// __kmemleak_do_cleanup: drop all metadata.
    mutating func freeAll() {
        records = RecordStore()
        freeSlots = []
        deferredFree = []
        plain.removeAll()
        percpu.removeAll()
        extras = [:]
        checksums = [:]
        contextKeys = []
        contextRefs = []
        freeContexts = []
        contextIDs = [:]
        objectCount = 0
        objectBytes = 0
        gray.reset()
        confirm = nil
        epoch += 1
    }

    /// kmemleak_clear (enabled), over slots [from, from+count); returns the next slot or -1 when done
    /// (found_leaks is reset at the end).
    mutating func clearReported(from: Int, count: Int) -> Int {
        let end = min(from + count, records.count)
        for i in from..<max(from, end) where records[i].allocated {
            if records[i].has(ObjectFlags.reported) && unreferenced(records[i]) {
                records[i].minCount = Int8(MinCount.grey)
            }
        }
        if end >= records.count {
            foundLeaks = false
            return -1
        }
        return end
    }

    /// A report entry for object `id` (contents not read yet) and the address its hex dump is read from.
    func reportItem(_ id: UInt32, cpu: Int, hz: UInt64) -> (entry: ReportEntry, read: UInt64?) {
        let r = records[Int(id)]
        let c = context(id)
        let percpu = r.has(ObjectFlags.percpu)
        let addr: UInt64? = percpu ? layout(for: r.pointer)?.address(of: r.pointer, cpu: cpu) : r.pointer
        return (ReportEntry(
            pointer: r.pointer, size: size(id), isPercpu: percpu, cpu: cpu, pid: c.pid, comm: c.comm,
            jiffies: KFormat.jiffies(created(r), hz: hz), contents: [], checksum: checksums[id] ?? 0,
            trace: c.trace, seq: seq(r), creationTime: created(r)), addr)
    }

    // MARK: per-CPU copies

    func layout(for handle: UInt64) -> PercpuLayout? {
        layouts.first { $0.covers(handle) }
    }

    /// CPU copies of a per-CPU object: (cpu, address).
    func copies(_ handle: UInt64) -> [(cpu: Int, address: UInt64)] {
        guard let l = layout(for: handle) else { return [] }
        var out: [(cpu: Int, address: UInt64)] = []
        for c in 0..<possibleCPUs {
            if let a = l.address(of: handle, cpu: c) { out.append((c, a)) }
        }
        return out
    }

    // MARK: memory accounting

    var memoryBytes: Int {
        var n = records.capacity * MemoryLayout<ObjectRecord>.stride
        n += freeSlots.capacity * 4 + deferredFree.capacity * 4 + done.words.capacity * 8 + records.pages.capacity * 8
        n += plain.memoryBytes + percpu.memoryBytes + mayTakeReference.capacity * 8
        n += extras.capacity * (MemoryLayout<UInt32>.stride + MemoryLayout<ObjectExtras>.stride + 1)
        n += checksumMemoryBytes
        for e in extras.values { n += e.areas.capacity * 16 }
        return n + contextMemoryBytes
    }

    var checksumMemoryBytes: Int { checksums.capacity * (2 * MemoryLayout<UInt32>.stride + 1) }

    var contextMemoryBytes: Int {
        contextKeys.capacity * MemoryLayout<ContextKey>.stride + contextRefs.capacity * 4 + freeContexts.capacity * 4
            + contextIDs.capacity * (MemoryLayout<ContextKey>.stride + 4 + 1)
    }
}
