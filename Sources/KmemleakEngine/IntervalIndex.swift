// The object search "tree" of one address space: a sorted sequence of object ids (by pointer) kept in
// fixed-capacity blocks (a two-level B-tree: a sorted array of block minima over blocks of (pointer delta,
// id) entries, each block spanning less than 4 GiB), plus the
// kernel's grow-only min/max filters. Objects of one space never overlap; a zero-size object occupies
// one byte for lookup purposes (see `extent`).

/// One tracked object, packed in 28 bytes (seven 32-bit words, so that records pack without padding).
/// Rare data (scan areas, excess_ref, sizes >= 4 GiB) lives in `EngineState.extras`, the checksum of an
/// object a scan found white in `EngineState.checksums`; the high bits of the allocation sequence number
/// and of the creation time live in the interned context (`ContextKey`): they are shared by the objects
/// one call site allocates close together, so every value stays exact (see `EngineState.seq(_:)` and
/// `EngineState.created(_:)`).
struct ObjectRecord {
    private var pointerLow: UInt32
    private var pointerHigh: UInt32
    private var bitsLow: UInt32
    private var bitsHigh: UInt32
    /// The allocation sequence number's low 32 bits (the high 32 are the context's `seqHigh`).
    var seqLow: UInt32
    /// Size, or UInt32.max when the size lives in extras.
    var size32: UInt32
    /// Interned (pid, comm, trace, seq >> 32, creation time >> createdLowBits), reference-counted.
    var context: UInt32

    init(pointer: UInt64, bits: UInt64, seqLow: UInt32, size32: UInt32, context: UInt32) {
        pointerLow = UInt32(truncatingIfNeeded: pointer)
        pointerHigh = UInt32(truncatingIfNeeded: pointer >> 32)
        bitsLow = UInt32(truncatingIfNeeded: bits)
        bitsHigh = UInt32(truncatingIfNeeded: bits >> 32)
        self.seqLow = seqLow
        self.size32 = size32
        self.context = context
    }

    /// Object pointer (per-CPU objects: handle).
    @inline(__always) var pointer: UInt64 {
        get { UInt64(pointerHigh) << 32 | UInt64(pointerLow) }
        set {
            pointerLow = UInt32(truncatingIfNeeded: newValue)
            pointerHigh = UInt32(truncatingIfNeeded: newValue >> 32)
        }
    }

    /// Kernel flags in bits 0...5, `hasExtras` in bit 6, `newDuringScan` in bit 7, `mallocChunk` in bit 8;
    /// min_count in bits 9...16 and count in bits 17...24 (two's complement Int8 each); the creation
    /// time's low `createdLowBits` bits in bits 25...63.
    @inline(__always) var bits: UInt64 {
        get { UInt64(bitsHigh) << 32 | UInt64(bitsLow) }
        set {
            bitsLow = UInt32(truncatingIfNeeded: newValue)
            bitsHigh = UInt32(truncatingIfNeeded: newValue >> 32)
        }
    }

    static let empty = ObjectRecord(pointer: 0, bits: 0, seqLow: 0, size32: 0, context: 0)

    static let hasExtras: UInt64 = 0x40
    /// Registered while a scan was running: not reported by that scan (it may have missed its references).
    static let newDuringScan: UInt64 = 0x80
    /// A block of glibc's malloc (the table's KML_KIND_MALLOC): glibc's chunk layout applies to it.
    static let mallocChunk: UInt64 = 0x100
    static let minCountShift: UInt64 = 9
    static let countShift: UInt64 = 17
    static let createdShift: UInt64 = 25
    /// The creation time's low bits kept here: 2^39 ns is about 9 minutes, so the objects of one call
    /// site created within one such window share a context.
    static let createdLowBits: UInt64 = 64 - createdShift
    static let createdLowMask: UInt64 = (1 << createdLowBits) - 1

    @inline(__always) var isMallocChunk: Bool { bits & Self.mallocChunk != 0 }

    @inline(__always) var flags: UInt32 { UInt32(truncatingIfNeeded: bits & 0xff) }
    @inline(__always) func has(_ f: UInt32) -> Bool { UInt32(truncatingIfNeeded: bits) & f != 0 }
    @inline(__always) mutating func set(_ f: UInt32) { bits |= UInt64(f) }
    @inline(__always) mutating func clear(_ f: UInt32) { bits &= ~UInt64(f) }
    @inline(__always) var allocated: Bool { bits & 1 != 0 }

    /// min_count, clamped to Int8 when set: -1 black, 0 grey, 1...127 references needed (a client's
    /// larger min_count needs 127, which no heap block gets: the same as never gray by count alone).
    @inline(__always) var minCount: Int8 {
        get { Int8(truncatingIfNeeded: bits >> Self.minCountShift) }
        set { bits = bits & ~(0xff << Self.minCountShift) | UInt64(UInt8(bitPattern: newValue)) << Self.minCountShift }
    }
    /// count: references found by the current scan; it only grows while the object is white, so it
    /// never passes min_count.
    @inline(__always) var count: Int8 {
        get { Int8(truncatingIfNeeded: bits >> Self.countShift) }
        set { bits = bits & ~(0xff << Self.countShift) | UInt64(UInt8(bitPattern: newValue)) << Self.countShift }
    }
    @inline(__always) var createdLow: UInt64 { bits >> Self.createdShift }

    // Colours (mm/kmemleak.c color_white / color_gray / color_black).
    @inline(__always) var isWhite: Bool { count != -1 && count < minCount }
    @inline(__always) var isGray: Bool { minCount != -1 && count >= minCount }
    @inline(__always) var isBlack: Bool { minCount == -1 }
}

struct IntervalIndex {
    static let blockCapacity = 256
    /// Entries per group: 16 of 8 bytes, two 64-byte lines in the aligned pages. Groups of 8 (one line,
    /// 32 fences per block) cost more in the fence count than they saved: +14 % CPU per serial scan.
    static let groupSize = 16
    static let groupsPerBlock = blockCapacity / groupSize
    /// Every key of a block lies less than this above the block's minimum: entries hold 32-bit deltas.
    static let maxSpan: UInt64 = 1 << 32
    /// Logical block order: minimum pointer of each block (the key of its first entry).
    var mins: [UInt64] = []
    /// Logical block -> physical block.
    var phys: [Int32] = []
    /// Entries used in each physical block.
    var counts: [Int32] = []
    /// Physical storage: block p holds block(p)[0 ..< counts[p]], sorted by pointer, each
    /// (pointer - the block's minimum) << 32 | id. A lookup finds the id in the line that holds the key
    /// (separate id and key arrays cost a second cache miss per word), and an entry takes 8 bytes.
    var entries = BlockPages()
    /// Per physical block, the delta of every `groupSize`-th entry (valid below the block's count): a
    /// lookup counts the fences <= addr, then the entries <= addr in that one group. Both counts load
    /// independent words (one 64-byte line of fences, which stays in L2, then the group's two lines),
    /// where a binary search over the block chained five or six cache misses.
    var fences: [UInt32] = []
    var freeBlocks: [Int32] = []
    var count = 0
    /// Grow-only filters: values outside [minAddr, maxAddr) skip the lookup.
    var minAddr: UInt64 = .max
    var maxAddr: UInt64 = 0
    /// Blocks inserted or removed (logical block numbers shifted) so far: `blockTable` was built at
    /// `blockTable.builtAt`.
    var layoutChanges = 0
    /// The hot address range's page -> block table (see `BlockTable`); a lookup elsewhere searches `mins`.
    var blockTable = BlockTable()

    var memoryBytes: Int {
        mins.capacity * 8 + phys.capacity * 4 + counts.capacity * 4 + entries.memoryBytes + fences.capacity * 4
            + freeBlocks.capacity * 4 + blockTable.firsts.capacity * 4
    }

    @inline(__always) static func extent(_ r: ObjectRecord, _ size: UInt64) -> UInt64 { max(size, 1) }

    /// 1 if `a <= b`, else 0, without a branch.
    @inline(__always) static func atMost(_ a: UInt64, _ b: UInt64) -> Int {
        Int(truncatingIfNeeded: unsafeBitCast(a <= b, to: UInt8.self))
    }

    /// The last index i < n with sorted[i] <= addr, or -1. Branchless (the step is masked, not chosen by
    /// a jump): a scan's lookups go to random blocks, where a branchy search mispredicts about every
    /// other step.
    @inline(__always) static func lastAtMost(_ addr: UInt64, _ sorted: UnsafePointer<UInt64>, _ n: Int) -> Int {
        if n == 0 { return -1 }
        var base = 0
        var len = n
        while len > 1 {
            let half = len >> 1
            base &+= half & (0 &- atMost(sorted[base &+ half], addr))
            len &-= half
        }
        return base &- 1 &+ atMost(sorted[base], addr)
    }

    /// Last logical block whose minimum is <= addr, or -1.
    @inline(__always) func blockIndex(_ addr: UInt64) -> Int { blockIndex(addr, from: tableBlock(addr)) }

    /// The page -> block table's block for addr (a start for `blockIndex(_:from:)`), or -1 outside it.
    @inline(__always) func tableBlock(_ addr: UInt64) -> Int {
        let offset = addr &- blockTable.start
        if offset < blockTable.span { return Int(blockTable.firsts[Int(truncatingIfNeeded: offset >> blockTable.shift)]) }
        return -1
    }

    /// `blockIndex(addr)`, from `tableBlock(addr)` (-1: a search over the minima).
    @inline(__always) func blockIndex(_ addr: UInt64, from tableStart: Int) -> Int {
        mins.withUnsafeBufferPointer { m in
            guard let base = m.baseAddress else { return -1 }
            if tableStart >= 0 {
                // From the table's block, a step or two at most while it is fresh; any block number is a
                // correct start, a stale one only costs steps.
                var b = min(tableStart, m.count &- 1)
                while b &+ 1 < m.count && base[b &+ 1] <= addr { b &+= 1 }
                while b >= 0 && base[b] > addr { b &-= 1 }
                return b
            }
            return Self.lastAtMost(addr, base, m.count)
        }
    }

    /// Rebuilds `blockTable` if more than `staleness` blocks were inserted or removed since it was built.
    mutating func refreshBlockTable(ifStaleBy staleness: Int = 0) {
        if layoutChanges &- blockTable.builtAt <= staleness && blockTable.builtAt >= 0 { return }
        blockTable = BlockTable(mins: mins, entries: count)
        blockTable.builtAt = layoutChanges
    }

    /// In logical block b: the last position whose pointer is <= addr (or -1).
    @inline(__always) func position(_ b: Int, _ addr: UInt64) -> Int {
        let p = Int(phys[b])
        let n = Int(counts[p])
        let base = mins[b]
        if n == 0 || addr < base { return -1 }
        let d = addr &- base
        if d >= Self.maxSpan { return n &- 1 }  // the whole block lies below addr
        let start = groupStart(p, n, d)
        return start &+ Self.entriesAtMost(entries.block(p) + start, d << 32 | 0xffff_ffff, min(Self.groupSize, n &- start)) &- 1
    }

    /// In physical block p of n entries: the first entry of the group that holds the last delta <= d.
    @inline(__always) func groupStart(_ p: Int, _ n: Int, _ d: UInt64) -> Int {
        let G = Self.groupSize
        var g = 0
        fences.withUnsafeBufferPointer { fp in
            let f = fp.baseAddress! + p &* Self.groupsPerBlock
            for k in 1..<Self.groupsPerBlock {
                g &+= Self.atMost(UInt64(f[k]), d) & Self.atMost(UInt64(k &* G &+ 1), UInt64(n))
            }
        }
        return g &* G
    }

    /// How many of the group's first `limit` entries (at `group`) are <= probe, without branches.
    @inline(__always) static func entriesAtMost(_ group: UnsafePointer<UInt64>, _ probe: UInt64, _ limit: Int) -> Int {
        var c = 0
        for k in 0..<groupSize { c &+= atMost(group[k], probe) & atMost(UInt64(k &+ 1), UInt64(limit)) }
        return c
    }

    /// A batched lookup's second step (see `WordBatch`): where the predecessor of `addr` lies, as the
    /// group to count in (`entriesAtMost(group, probe, limit)` entries are <= addr, at least one), or
    /// nil when no object starts at or below `addr`. `tableStart` is `tableBlock(addr)`. Reads the block
    /// minima and a line of fences; the group itself, the likely DRAM miss, is loaded by the next step.
    @inline(__always) func groupOf(_ addr: UInt64, from tableStart: Int) -> (group: UnsafePointer<UInt64>, probe: UInt64, limit: Int)? {
        let b = blockIndex(addr, from: tableStart)
        if b < 0 { return nil }
        let p = Int(phys[b])
        let n = Int(counts[p])
        let base = mins[b]
        if n == 0 || addr < base { return nil }
        let d = addr &- base
        let G = Self.groupSize
        // The whole block lies below addr: its last entry, counted as the last of its group.
        let start = d >= Self.maxSpan ? (n &- 1) & ~(G &- 1) : groupStart(p, n, d)
        let probe = d >= Self.maxSpan ? UInt64.max : d << 32 | 0xffff_ffff
        return (UnsafePointer(entries.block(p) + start), probe, min(G, n &- start))
    }

    @inline(__always) func idAt(_ b: Int, _ pos: Int) -> UInt32 {
        UInt32(truncatingIfNeeded: entries.block(Int(phys[b]))[pos])
    }

    /// The id of the object with the greatest pointer <= addr, with its logical block and position.
    @inline(__always) func predecessor(_ addr: UInt64) -> (id: UInt32, b: Int, pos: Int)? {
        let b = blockIndex(addr)
        if b < 0 { return nil }
        let pos = position(b, addr)
        if pos < 0 { return nil }  // cannot happen: mins[b] <= addr
        return (idAt(b, pos), b, pos)
    }

    /// The id of the object with the smallest pointer > the entry at (b, pos), if any.
    func successor(_ b: Int, _ pos: Int) -> UInt32? {
        if b < 0 {
            return mins.isEmpty ? nil : idAt(0, 0)
        }
        let p = Int(phys[b])
        if pos + 1 < Int(counts[p]) { return idAt(b, pos + 1) }
        if b + 1 < mins.count { return idAt(b + 1, 0) }
        return nil
    }

    // MARK: changes

    /// The entries of logical block b as (key, id), in order.
    private func decode(_ b: Int) -> [(key: UInt64, id: UInt32)] {
        let p = Int(phys[b])
        let base = mins[b]
        let at = entries.block(p)
        return (0..<Int(counts[p])).map { i in
            let e = at[i]
            return (base &+ (e >> 32), UInt32(truncatingIfNeeded: e))
        }
    }

    /// Whether `list` (sorted, non-empty) fits one block.
    private static func fits(_ list: ArraySlice<(key: UInt64, id: UInt32)>) -> Bool {
        list.count <= blockCapacity && list.last!.key &- list.first!.key < maxSpan
    }

    /// Stores `list` (sorted, non-empty, `fits`) as logical block b.
    private mutating func write(_ b: Int, _ list: ArraySlice<(key: UInt64, id: UInt32)>) {
        let p = Int(phys[b])
        let base = list.first!.key
        let at = entries.block(p)
        var i = 0
        for e in list {
            at[i] = (e.key &- base) << 32 | UInt64(e.id)
            i += 1
        }
        counts[p] = Int32(list.count)
        mins[b] = base
        refreshFences(p)
    }

    /// Recomputes physical block p's fences (after any change to its entries).
    private mutating func refreshFences(_ p: Int) {
        let n = Int(counts[p])
        let at = entries.block(p)
        for g in 0..<Self.groupsPerBlock where g * Self.groupSize < n {
            fences[p * Self.groupsPerBlock + g] = UInt32(truncatingIfNeeded: at[g * Self.groupSize] >> 32)
        }
    }

    /// Inserts `id` (whose record has pointer `key`) after position (b, pos) as found by `predecessor`
    /// (b = -1: before everything).
    mutating func insert(_ id: UInt32, key: UInt64, afterBlock b0: Int, pos pos0: Int) {
        let B = Self.blockCapacity
        count += 1
        if mins.isEmpty {
            let p = newBlock()
            mins.append(key)
            layoutChanges &+= 1
            phys.append(Int32(p))
            write(0, [(key: key, id: id)][...])
            return
        }
        var b = b0
        var pos = pos0 + 1
        if b < 0 { b = 0; pos = 0 }
        let p = Int(phys[b])
        let n = Int(counts[p])
        if n < B && pos > 0 && key &- mins[b] < Self.maxSpan {
            // The common case: room in the block, its minimum unchanged.
            let entry = (key &- mins[b]) << 32 | UInt64(id)
            let at = entries.block(p)
            (at + pos + 1).update(from: at + pos, count: n - pos)
            at[pos] = entry
            counts[p] = Int32(n + 1)
            refreshFences(p)
            return
        }
        var list = decode(b)
        list.insert((key: key, id: id), at: pos)
        if list.count > B {
            // B*-tree style: shift the tail of the full block into the next block, or its head into the
            // previous one (better fill, less memory), when the spans allow.
            if b + 1 < mins.count && Int(counts[Int(phys[b + 1])]) < B - 1 {
                let next = decode(b + 1)
                let k = (B - next.count) / 2
                let moved = list.suffix(k) + next
                if Self.fits(moved[...]) && Self.fits(list.dropLast(k)) {
                    write(b, list.dropLast(k))
                    write(b + 1, moved[...])
                    return
                }
            }
            if b > 0 && Int(counts[Int(phys[b - 1])]) < B - 1 {
                let prev = decode(b - 1)
                let k = (B - prev.count) / 2
                let moved = prev + list.prefix(k)
                if Self.fits(moved[...]) && Self.fits(list.dropFirst(k)) {
                    write(b - 1, moved[...])
                    write(b, list.dropFirst(k))
                    return
                }
            }
        }
        // Split into blocks that fit. Appending at the very end keeps the full block full (sequential
        // registration).
        var chunks: [ArraySlice<(key: UInt64, id: UInt32)>] = []
        var halves: [ArraySlice<(key: UInt64, id: UInt32)>] = [list[...]]
        if list.count > B {
            let keep = (b == mins.count - 1 && pos == n) ? n : list.count / 2
            halves = [list[0..<keep], list[keep...]]
        }
        for h in halves {
            var start = h.startIndex
            while start < h.endIndex {
                var end = start + 1
                while end < h.endIndex && end - start < B && h[end].key &- h[start].key < Self.maxSpan { end += 1 }
                chunks.append(h[start..<end])
                start = end
            }
        }
        write(b, chunks[0])
        for (k, c) in chunks.dropFirst().enumerated() {
            let q = newBlock()
            mins.insert(c.first!.key, at: b + 1 + k)
            layoutChanges &+= 1
            phys.insert(Int32(q), at: b + 1 + k)
            write(b + 1 + k, c)
        }
    }

    private mutating func newBlock() -> Int {
        if let p = freeBlocks.popLast() { counts[Int(p)] = 0; return Int(p) }
        let p = counts.count
        counts.append(0)
        fences.append(contentsOf: repeatElement(0, count: Self.groupsPerBlock))
        entries.reserve(blocks: p + 1)
        return p
    }

    /// Removes the entry at (b, pos).
    mutating func remove(b: Int, pos: Int) {
        let B = Self.blockCapacity
        count -= 1
        let p = Int(phys[b])
        let n = Int(counts[p])
        if n - 1 == 0 {
            counts[p] = 0
            mins.remove(at: b)
            layoutChanges &+= 1
            phys.remove(at: b)
            freeBlocks.append(Int32(p))
            return
        }
        let at = entries.block(p)
        (at + pos).update(from: at + pos + 1, count: n - 1 - pos)
        // A new minimum: the deltas are measured from it.
        let shift: UInt64 = pos == 0 ? at[0] >> 32 : 0
        if shift != 0 { for i in 0..<(n - 1) { at[i] &-= shift << 32 } }
        mins[b] &+= shift
        counts[p] = Int32(n - 1)
        refreshFences(p)
        // Merge with the next block when both are sparse.
        if b + 1 < mins.count {
            let q = Int(phys[b + 1])
            let m = Int(counts[q])
            if n - 1 + m <= B / 2 {
                let merged = decode(b) + decode(b + 1)
                if Self.fits(merged[...]) {
                    write(b, merged[...])
                    counts[q] = 0
                    mins.remove(at: b + 1)
                    layoutChanges &+= 1
                    phys.remove(at: b + 1)
                    freeBlocks.append(Int32(q))
                }
            }
        }
    }

    mutating func removeAll() {
        self = IntervalIndex()
    }

    /// Entries held over entries that would fit the blocks in use: splits leave half-full blocks
    /// (registering a heap out of address order fills them to about 80 %).
    var fill: Double { mins.isEmpty ? 1 : Double(count) / Double(mins.count * Self.blockCapacity) }

    /// Packs the entries into as few blocks as fit them (full, each spanning less than `maxSpan`), in
    /// physical order, and frees the pages left over. In place: the blocks are first put in logical
    /// order (one block's swap at a time), then a writer refills them from the front; greedy packing
    /// never puts an entry in a later block than it had, nor further into the same one, so the writer
    /// only ever overwrites what it has read. Logical block numbers change (`layoutChanges`).
    mutating func compact() {
        let L = mins.count
        guard L > 0 else { return }
        let B = Self.blockCapacity
        let G = Self.groupsPerBlock
        // 1. Physical block b holds logical block b.
        var owner = [Int32](repeating: -1, count: counts.count)
        for b in 0..<L { owner[Int(phys[b])] = Int32(b) }
        for b in 0..<L {
            let p = Int(phys[b])
            if p == b { continue }
            let q = owner[b]  // the logical block at physical b (or -1: free)
            let x = entries.block(b), y = entries.block(p)
            for i in 0..<B { let t = x[i]; x[i] = y[i]; y[i] = t }
            counts.swapAt(b, p)
            for g in 0..<G { fences.swapAt(b * G + g, p * G + g) }
            phys[b] = Int32(b)
            owner[b] = Int32(b)
            owner[p] = q
            if q >= 0 { phys[Int(q)] = Int32(p) }
        }
        // 2. Refill from the front.
        var wb = 0, wpos = 0
        var wmin: UInt64 = 0
        for b in 0..<L {
            let n = Int(counts[b])
            let base = mins[b]
            let at = entries.block(b)
            for i in 0..<n {
                let e = at[i]
                let key = base &+ (e >> 32)
                if wpos == B || (wpos > 0 && key &- wmin >= Self.maxSpan) {
                    counts[wb] = Int32(wpos)
                    mins[wb] = wmin
                    refreshFences(wb)
                    wb += 1
                    wpos = 0
                }
                if wpos == 0 { wmin = key }
                entries.block(wb)[wpos] = (key &- wmin) << 32 | (e & 0xffff_ffff)
                wpos += 1
            }
        }
        counts[wb] = Int32(wpos)
        mins[wb] = wmin
        refreshFences(wb)
        let used = wb + 1
        mins.removeLast(L - used)
        phys = (0..<used).map { Int32($0) }
        // 3. What is left over goes: whole pages of blocks freed, the blocks of the last page kept.
        let keptBlocks = min(entries.truncate(blocks: used), counts.count)
        counts.removeLast(counts.count - keptBlocks)
        for p in used..<keptBlocks { counts[p] = 0 }
        fences.removeLast(fences.count - keptBlocks * G)
        freeBlocks = Array((used..<keptBlocks).reversed().map { Int32($0) })
        mins.shrinkToFit()
        phys.shrinkToFit()
        counts.shrinkToFit()
        fences.shrinkToFit()
        freeBlocks.shrinkToFit()
        layoutChanges &+= 1
    }
}

extension Array {
    /// Gives back the capacity beyond `count` (a copy when there is any).
    mutating func shrinkToFit() {
        if capacity > count { self = Array(self) }
    }
}

/// A direct page -> block table over the index's hot address range (issue 10 goal 1: the search over
/// the block minima was a tenth of a scan's lookups): for each page (2^shift bytes) of [start, start +
/// span), the last logical block whose minimum is <= the page's start. The range is the longest run of
/// blocks without a gap over `maxGap` (glibc's main heap), and the page grows until the table has at most
/// one entry per `entriesPerPage` index entries (at most a quarter byte per object; a page still holds
/// far fewer entries than a block, so a lookup starts in its block or a step before it).
struct BlockTable {
    static let maxGap: UInt64 = 64 << 20
    /// One entry per 4 made the table 0.9 byte per object of the realistic C heap (issue 10 goal 5).
    static let entriesPerPage = 16
    var start: UInt64 = 0
    /// 0: no table (every offset is out of range).
    var span: UInt64 = 0
    var shift: UInt64 = 12
    var firsts: [Int32] = []
    var builtAt = -1

    init() {}

    init(mins: [UInt64], entries: Int) {
        guard mins.count >= 8 else { return }
        // The run with the most blocks, consecutive minima at most maxGap apart.
        var best = (first: 0, last: 0)
        var first = 0
        for b in 1...mins.count {
            if b == mins.count || mins[b] &- mins[b - 1] > Self.maxGap {
                if b - 1 - first > best.last - best.first { best = (first, b - 1) }
                first = b
            }
        }
        let lo = mins[best.first], hi = mins[best.last]
        guard hi > lo, best.last - best.first >= 4 else { return }
        while (hi - lo) >> shift >= UInt64(max(entries / Self.entriesPerPage, 16)) { shift += 1 }
        let pages = Int((hi - lo) >> shift) + 1
        start = lo
        span = UInt64(pages) << shift
        firsts = [Int32](repeating: 0, count: pages)
        var b = best.first
        for p in 0..<pages {
            let at = lo &+ UInt64(p) << shift
            while b + 1 < mins.count && mins[b + 1] <= at { b += 1 }
            firsts[p] = Int32(b)
        }
    }
}

/// The index's blocks (256 entries of 8 bytes each) in fixed pages of 64 blocks (128 KiB: at the daemon's
/// fixed mmap threshold, each page is its own mapping, so the pages `compact` frees go back to the
/// system at once; the mapping's malloc header costs a 33rd 4 KiB page per 32): growing never
/// copies the blocks there (a growing array holds its old and its new copy at once, the peak of
/// registering a large client). A value type over pages owned by `BlockPagesOwner`: the page list is an
/// array in the struct, so a lookup reads it without the run-time exclusivity check of a class's
/// property (one more load, from a list that stays in L1). Copies share the pages: one `IntervalIndex`
/// owns them, copies only read while it does not change.
struct BlockPages {
    static let pageShift = 6
    static let blocksPerPage = 1 << pageShift
    static let pageEntries = blocksPerPage * IntervalIndex.blockCapacity
    private(set) var pages: [UnsafeMutablePointer<UInt64>] = []
    private let owner = BlockPagesOwner()

    var memoryBytes: Int { pages.count * Self.pageEntries * 8 }

    /// The first entry of physical block p.
    @inline(__always) func block(_ p: Int) -> UnsafeMutablePointer<UInt64> {
        pages[p &>> Self.pageShift] + (p & (Self.blocksPerPage - 1)) &* IntervalIndex.blockCapacity
    }

    /// Frees the pages wholly above physical blocks 0 ..< n; returns the blocks the pages kept hold.
    mutating func truncate(blocks n: Int) -> Int {
        let keep = (n + Self.blocksPerPage - 1) / Self.blocksPerPage
        while pages.count > keep {
            pages.removeLast().deallocate()
            owner.pages.removeLast()
        }
        return pages.count * Self.blocksPerPage
    }

    /// Room for physical blocks 0 ..< n (zeroed when new).
    mutating func reserve(blocks n: Int) {
        while pages.count * Self.blocksPerPage < n {
            // Cache-line aligned: a lookup's group of 16 entries is then exactly two lines (malloc's
            // 16-byte alignment made every group span three).
            let page = UnsafeMutableRawPointer.allocate(byteCount: Self.pageEntries * 8, alignment: 64)
                .bindMemory(to: UInt64.self, capacity: Self.pageEntries)
            page.initialize(repeating: 0, count: Self.pageEntries)
            pages.append(page)
            owner.pages.append(page)
        }
    }
}

/// Frees the pages of the `BlockPages` that made it.
final class BlockPagesOwner {
    var pages: [UnsafeMutablePointer<UInt64>] = []
    deinit { for p in pages { p.deallocate() } }
}

/// Object records in fixed pages of 2048 (56 KiB: below the daemon's mmap threshold, a page is not its
/// own mapping, whose malloc header would cost a 33rd 4 KiB page per 32, as 128 KiB pages did):
/// growing never copies the existing records (no stall
/// under the lock at millions of objects), and ids stay stable. A page holds memory only while one of its
/// records is live (`materialize` .. `release`); the others all point at one shared page of empty
/// records, which is only ever read: ids chosen by a caller (table slots) may be sparse, and a client's
/// slots then cost 8 bytes per 2048 unused ones, not 56 KiB. Reference type: owned by one EngineState.
final class RecordStore {
    static let pageShift = 11
    static let pageSize = 1 << pageShift
    // Read on every record access of the slot passes (millions a scan): no run-time exclusivity check.
    // Written only by `grow`, `makePage`, `release` and `removeAll`, under the engine's state lock, never
    // during an access.
    @exclusivity(unchecked) private(set) var pages: [UnsafeMutablePointer<ObjectRecord>] = []
    /// Live records per page (0: the page is `emptyPage`, or reserved by `reserveCapacity`).
    private var pageLive: [UInt16] = []
    /// Ids below `count` may be read (the highest id ever used + 1).
    @exclusivity(unchecked) private(set) var count = 0
    /// Pages with memory of their own.
    private(set) var materializedPages = 0
    /// Read-only page of empty records: every page no live record needs.
    private let emptyPage: UnsafeMutablePointer<ObjectRecord> = {
        let p = UnsafeMutablePointer<ObjectRecord>.allocate(capacity: RecordStore.pageSize)
        p.initialize(repeating: .empty, count: RecordStore.pageSize)
        return p
    }()

    /// Bytes of records held (the pages with live records).
    var capacity: Int { materializedPages * Self.pageSize }
    var indices: Range<Int> { 0..<count }

    deinit {
        removeAll()
        emptyPage.deallocate()
    }

    /// Reads any id below `count`; writes only to a live record (`materialize`d, not yet `release`d).
    @inline(__always) subscript(i: Int) -> ObjectRecord {
        get { pages[i >> Self.pageShift][i & (Self.pageSize - 1)] }
        set { pages[i >> Self.pageShift][i & (Self.pageSize - 1)] = newValue }
    }

    /// Ids below `n` may be read (as empty records until materialized).
    func grow(to n: Int) {
        while pages.count << Self.pageShift < n {
            pages.append(emptyPage)
            pageLive.append(0)
        }
        count = max(count, n)
    }

    /// Record `i` (below `count`) is about to become live: its page gets memory of its own.
    func materialize(_ i: Int) {
        let k = i >> Self.pageShift
        if pages[k] == emptyPage { makePage(k) }
        pageLive[k] += 1
    }

    /// Live record `i` was emptied: the last one of a page gives the page's memory back.
    func release(_ i: Int) {
        let k = i >> Self.pageShift
        guard pageLive[k] > 0 else { return }
        pageLive[k] -= 1
        if pageLive[k] == 0 {
            pages[k].deallocate()
            pages[k] = emptyPage
            materializedPages -= 1
        }
    }

    /// Gives ids below `n` memory now (adopting a large client: no page is made under the lock later).
    /// Such a page goes back when the last of its live records does.
    func reserveCapacity(_ n: Int) {
        var k = 0
        while k << Self.pageShift < n {
            if k == pages.count {
                pages.append(emptyPage)
                pageLive.append(0)
            }
            if pages[k] == emptyPage { makePage(k) }
            k += 1
        }
    }

    /// Page `k` (the shared empty page now) gets memory of its own.
    private func makePage(_ k: Int) {
        let p = UnsafeMutablePointer<ObjectRecord>.allocate(capacity: Self.pageSize)
        p.initialize(repeating: .empty, count: Self.pageSize)
        pages[k] = p
        materializedPages += 1
    }

    func removeAll() {
        for p in pages where p != emptyPage { p.deallocate() }
        pages = []
        pageLive = []
        count = 0
        materializedPages = 0
    }

    /// Raw access for hot loops (no record may be made live or released inside `body`).
    @inline(__always) func withRecords<R>(_ body: (Rec) -> R) -> R {
        pages.withUnsafeBufferPointer { pt in body(Rec(pt: UnsafePointer(pt.baseAddress ?? UnsafePointer(bitPattern: 8)!))) }
    }
}

/// A page-table view of a RecordStore.
struct Rec {
    let pt: UnsafePointer<UnsafeMutablePointer<ObjectRecord>>
    @inline(__always) subscript(i: Int) -> UnsafeMutablePointer<ObjectRecord> {
        pt[i >> RecordStore.pageShift] + (i & (RecordStore.pageSize - 1))
    }
}
