// The object search "tree" of one address space: a sorted sequence of object ids (by pointer) kept in
// fixed-capacity blocks (a two-level B-tree: a sorted array of block minima over blocks of ids), plus the
// kernel's grow-only min/max filters. Objects of one space never overlap; a zero-size object occupies
// one byte for lookup purposes (see `extent`).

/// One tracked object, packed in 40 bytes. Rare data (scan areas, excess_ref, sizes >= 4 GiB) lives in
/// `EngineState.extras`.
struct ObjectRecord {
    /// Object pointer (per-CPU objects: handle).
    var pointer: UInt64
    /// seq << seqShift | flags (kernel flags in the low 6 bits, `hasExtras` in bit 6, `newDuringScan` in
    /// bit 7, `mallocChunk` in bit 8).
    var seqFlags: UInt64
    /// Creation time (CLOCK_BOOTTIME ns).
    var created: UInt64
    /// Size, or UInt32.max when the size lives in extras.
    var size32: UInt32
    /// checksum (crc32_le of the contents at the last update).
    var checksum: UInt32
    /// Interned (pid, comm, trace).
    var context: UInt32
    /// min_count (clamped to Int16).
    var minCount: Int16
    /// count.
    var count: Int16

    static let hasExtras: UInt64 = 0x40
    /// Registered while a scan was running: not reported by that scan (it may have missed its references).
    static let newDuringScan: UInt64 = 0x80
    /// A block of glibc's malloc (the table's KML_KIND_MALLOC): glibc's chunk layout applies to it.
    static let mallocChunk: UInt64 = 0x100
    static let seqShift: UInt64 = 9

    @inline(__always) var isMallocChunk: Bool { seqFlags & Self.mallocChunk != 0 }

    @inline(__always) var flags: UInt32 { UInt32(truncatingIfNeeded: seqFlags & 0xff) }
    @inline(__always) var seq: UInt64 { seqFlags >> Self.seqShift }
    @inline(__always) func has(_ f: UInt32) -> Bool { UInt32(truncatingIfNeeded: seqFlags) & f != 0 }
    @inline(__always) mutating func set(_ f: UInt32) { seqFlags |= UInt64(f) }
    @inline(__always) mutating func clear(_ f: UInt32) { seqFlags &= ~UInt64(f) }
    @inline(__always) var allocated: Bool { seqFlags & 1 != 0 }

    // Colours (mm/kmemleak.c color_white / color_gray / color_black).
    @inline(__always) var isWhite: Bool { count != -1 && count < minCount }
    @inline(__always) var isGray: Bool { minCount != -1 && count >= minCount }
    @inline(__always) var isBlack: Bool { minCount == -1 }
}

struct IntervalIndex {
    static let blockCapacity = 256
    /// Logical block order: minimum pointer of each block.
    var mins: [UInt64] = []
    /// Logical block -> physical block.
    var phys: [Int32] = []
    /// Entries used in each physical block.
    var counts: [Int32] = []
    /// Physical storage: block p holds ids[p*B ..< p*B + counts[p]], sorted by pointer.
    var ids: [UInt32] = []
    /// The pointers of `ids`, side by side: a lookup searches one block's keys (2 KiB, contiguous)
    /// instead of chasing each probe into the records (a cache miss per probe on large heaps).
    var keys: [UInt64] = []
    var freeBlocks: [Int32] = []
    var count = 0
    /// Grow-only filters: values outside [minAddr, maxAddr) skip the lookup.
    var minAddr: UInt64 = .max
    var maxAddr: UInt64 = 0

    var memoryBytes: Int {
        mins.capacity * 8 + phys.capacity * 4 + counts.capacity * 4 + ids.capacity * 4 + keys.capacity * 8
            + freeBlocks.capacity * 4
    }

    @inline(__always) static func extent(_ r: ObjectRecord, _ size: UInt64) -> UInt64 { max(size, 1) }

    /// The last index i < n with sorted[i] <= addr, or -1. Branchless (the comparison becomes a
    /// conditional move): a scan's lookups go to random blocks, where a branchy search mispredicts
    /// about every other step.
    @inline(__always) static func lastAtMost(_ addr: UInt64, _ sorted: UnsafePointer<UInt64>, _ n: Int) -> Int {
        if n == 0 { return -1 }
        var base = 0
        var len = n
        while len > 1 {
            let half = len >> 1
            base = sorted[base &+ half] <= addr ? base &+ half : base
            len &-= half
        }
        return sorted[base] <= addr ? base : base &- 1
    }

    /// Last logical block whose minimum is <= addr, or -1.
    @inline(__always) func blockIndex(_ addr: UInt64) -> Int {
        mins.withUnsafeBufferPointer { m in
            guard let base = m.baseAddress else { return -1 }
            return Self.lastAtMost(addr, base, m.count)
        }
    }

    /// In logical block b: the last position whose pointer is <= addr (or -1).
    @inline(__always) func position(_ b: Int, _ addr: UInt64) -> Int {
        let p = Int(phys[b])
        let n = Int(counts[p])
        return keys.withUnsafeBufferPointer { kp in
            Self.lastAtMost(addr, kp.baseAddress! + p * Self.blockCapacity, n)
        }
    }

    @inline(__always) func idAt(_ b: Int, _ pos: Int) -> UInt32 {
        ids[Int(phys[b]) * Self.blockCapacity + pos]
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

    /// Moves `n` entries (id and key) from physical index `src` to `dst` (overlapping ranges allowed).
    private mutating func moveEntries(from src: Int, to dst: Int, count n: Int) {
        guard n > 0, src != dst else { return }
        ids.withUnsafeMutableBufferPointer { b in
            (b.baseAddress! + dst).update(from: b.baseAddress! + src, count: n)
        }
        keys.withUnsafeMutableBufferPointer { b in
            (b.baseAddress! + dst).update(from: b.baseAddress! + src, count: n)
        }
    }

    /// Inserts `id` (whose record has pointer `key`) after position (b, pos) as found by `predecessor`
    /// (b = -1: before everything).
    mutating func insert(_ id: UInt32, key: UInt64, afterBlock b0: Int, pos pos0: Int) {
        let B = Self.blockCapacity
        count += 1
        if mins.isEmpty {
            let p = newBlock()
            ids[p * B] = id
            keys[p * B] = key
            counts[p] = 1
            mins.append(key)
            phys.append(Int32(p))
            return
        }
        var b = b0
        var pos = pos0 + 1
        if b < 0 { b = 0; pos = 0 }
        var p = Int(phys[b])
        if Int(counts[p]) == B && b + 1 < mins.count && Int(counts[Int(phys[b + 1])]) < B - 1 {
            // B*-tree style: shift the tail of the full block into the next block (better fill, less memory).
            let q = Int(phys[b + 1])
            let m = Int(counts[q])
            let k = (B - m) / 2
            moveEntries(from: q * B, to: q * B + k, count: m)
            moveEntries(from: p * B + B - k, to: q * B, count: k)
            counts[p] = Int32(B - k)
            counts[q] = Int32(m + k)
            mins[b + 1] = keys[q * B]
            if pos > B - k {
                b += 1
                pos -= B - k
                p = q
            }
        } else if Int(counts[p]) == B && b > 0 && Int(counts[Int(phys[b - 1])]) < B - 1 {
            // Or shift the head of the full block into the previous block.
            let q = Int(phys[b - 1])
            let m = Int(counts[q])
            let k = (B - m) / 2
            moveEntries(from: p * B, to: q * B + m, count: k)
            moveEntries(from: p * B + k, to: p * B, count: B - k)
            counts[q] = Int32(m + k)
            counts[p] = Int32(B - k)
            mins[b] = keys[p * B]
            if pos < k {
                b -= 1
                pos += m
                p = q
            } else {
                pos -= k
            }
        } else if Int(counts[p]) == B {
            // Split. Appending at the very end keeps the full block full (sequential registration).
            let q = newBlock()
            let n = Int(counts[p])
            let keep = (b == mins.count - 1 && pos == n) ? n : n / 2
            let moved = n - keep
            moveEntries(from: p * B + keep, to: q * B, count: moved)
            counts[p] = Int32(keep)
            counts[q] = Int32(moved)
            mins.insert(moved > 0 ? keys[q * B] : key, at: b + 1)
            phys.insert(Int32(q), at: b + 1)
            if pos > keep {
                b += 1
                pos -= keep
                p = q
            } else if pos == keep && moved == 0 {
                b += 1
                pos = 0
                p = q
            }
        }
        let n = Int(counts[p])
        moveEntries(from: p * B + pos, to: p * B + pos + 1, count: n - pos)
        ids[p * B + pos] = id
        keys[p * B + pos] = key
        counts[p] = Int32(n + 1)
        if pos == 0 { mins[b] = key }
    }

    private mutating func newBlock() -> Int {
        if let p = freeBlocks.popLast() { counts[Int(p)] = 0; return Int(p) }
        let p = counts.count
        counts.append(0)
        if ids.capacity < ids.count + Self.blockCapacity {
            // Grow by 1/8 rather than doubling: these arrays are most of the index's memory.
            let capacity = ids.count + max(16 * Self.blockCapacity, ids.count / 8)
            ids.reserveCapacity(capacity)
            keys.reserveCapacity(capacity)
        }
        ids.append(contentsOf: repeatElement(0, count: Self.blockCapacity))
        keys.append(contentsOf: repeatElement(0, count: Self.blockCapacity))
        return p
    }

    /// Removes the entry at (b, pos).
    mutating func remove(b: Int, pos: Int) {
        let B = Self.blockCapacity
        count -= 1
        let p = Int(phys[b])
        let n = Int(counts[p])
        moveEntries(from: p * B + pos + 1, to: p * B + pos, count: n - 1 - pos)
        counts[p] = Int32(n - 1)
        if n - 1 == 0 {
            mins.remove(at: b)
            phys.remove(at: b)
            freeBlocks.append(Int32(p))
            return
        }
        if pos == 0 { mins[b] = keys[p * B] }
        // Merge with the next block when both are sparse.
        if b + 1 < mins.count {
            let q = Int(phys[b + 1])
            let m = Int(counts[q])
            if n - 1 + m <= B / 2 {
                moveEntries(from: q * B, to: p * B + n - 1, count: m)
                counts[p] = Int32(n - 1 + m)
                counts[q] = 0
                mins.remove(at: b + 1)
                phys.remove(at: b + 1)
                freeBlocks.append(Int32(q))
            }
        }
    }

    mutating func removeAll() {
        self = IntervalIndex()
    }
}

/// Object records in fixed pages of 4096 (160 KiB): growing never copies the existing records (no stall
/// under the lock at millions of objects), and ids stay stable. Reference type: owned by one EngineState.
final class RecordStore {
    static let pageShift = 12
    static let pageSize = 1 << pageShift
    private(set) var pages: [UnsafeMutablePointer<ObjectRecord>] = []
    private(set) var count = 0

    var capacity: Int { pages.count * Self.pageSize }
    var indices: Range<Int> { 0..<count }

    deinit { removeAll() }

    @inline(__always) subscript(i: Int) -> ObjectRecord {
        get { pages[i >> Self.pageShift][i & (Self.pageSize - 1)] }
        set { pages[i >> Self.pageShift][i & (Self.pageSize - 1)] = newValue }
    }

    private func addPage() {
        let p = UnsafeMutablePointer<ObjectRecord>.allocate(capacity: Self.pageSize)
        p.initialize(repeating: ObjectRecord(pointer: 0, seqFlags: 0, created: 0, size32: 0, checksum: 0, context: 0,
                                             minCount: 0, count: 0), count: Self.pageSize)
        pages.append(p)
    }

    func append(_ r: ObjectRecord) {
        if count == capacity { addPage() }
        self[count] = r
        count += 1
    }

    func reserveCapacity(_ n: Int) {
        while capacity < n { addPage() }
    }

    func removeAll() {
        for p in pages { p.deallocate() }
        pages = []
        count = 0
    }

    /// Raw access for hot loops (no append may happen inside `body`).
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
