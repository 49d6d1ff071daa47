// The word loop's lookups in batches (issue 10 goal 1). A lookup's cost is one DRAM miss on its index
// group, then often a second on the hit's record; word by word, the branches that depend on those loads
// (is the `mayTakeReference` bit set? is the word inside the object? which colour?) mispredict, and the
// core discards what it had started on the next words: about one miss in flight. In batches, the words'
// lookups run in passes over up to `wordBatchCapacity` in-range words, each pass short and free of
// branches on the previous pass's misses, so that the core has many loads in flight: (1) the filter and
// the page -> block table, (2) the block and the group (cached data: minima, fences), (3) each group's
// two lines, (4) the id, counted in the one line that holds it, (5) the hit's record, picked without a
// branch (a cleared bit picks record 0, a hot line), (6) the serial scan's decisions in word order, on
// cached lines. The engine imports nothing (no prefetch intrinsic): each pass loads what a later pass
// consumes.

/// Words looked up per batch: enough groups to keep the core's line-fill buffers busy, small enough to
/// stay in L1 (each word brings two group lines and a record line: 12 KiB). 64 took 8 % less CPU than
/// 32 in the engine bench (realistic heap, 1 worker, medians of 8 scans at load 9-17).
let wordBatchCapacity = 64

/// Half an index group: one 64-byte line of entries.
let halfGroup = IntervalIndex.groupSize / 2

/// One in-range word of a batch.
struct WordCandidate {
    var word: UInt64
    /// The word's index among the words scanned (what the parallel scan's hits name).
    var index: Int
    /// The object (or root) the word was read from.
    var scanned: UInt32
    /// Pass 2: the index group to count in (see `IntervalIndex.groupOf`). Pass 1: `tableStart`.
    var tableStart: Int
    var group: UnsafePointer<UInt64>
    var probe: UInt64
    var limit: Int
    /// Pass 3: the group's entries 0 and `halfGroup`, the first of each of its two lines.
    var first: UInt64
    var ninth: UInt64
    /// Pass 4: the id of the object with the greatest pointer <= word.
    var id: UInt32
    /// Pass 5: the hit's record as read then (record 0 when its `mayTakeReference` bit was clear). Its
    /// pointer, size and malloc-chunk flag do not change while the state lock is held; its colour does.
    var shape: ObjectRecord
}

/// Up to `wordBatchCapacity` candidates, in word order, in caller-provided storage.
struct WordBatch {
    let candidates: UnsafeMutablePointer<WordCandidate>
    var count = 0

    init(_ storage: UnsafeMutablePointer<WordCandidate>) { candidates = storage }

    /// Pass 1 for word `w`: kept when it may hit an object of `index` and does not point into `own`, the
    /// scanned chunk's own range (see `EngineState.ownRange`: the lookup would ignore it), nor into a
    /// granule of `done` (the object there needs no more words this scan). Returns true when the batch
    /// is full.
    @inline(__always)
    mutating func add(
        _ w: UInt64, index i: Int, scanned: UInt32, own: (start: UInt64, length: UInt64) = (0, 0), _ index: IntervalIndex,
        _ done: DoneFilter = DoneFilter()
    ) -> Bool {
        if w &- own.start < own.length { return false }
        if w < index.minAddr || w >= index.maxAddr { return false }
        if done.contains(w) { return false }
        let c = candidates + count
        c.pointee.word = w
        c.pointee.index = i
        c.pointee.scanned = scanned
        c.pointee.tableStart = index.tableBlock(w)
        count &+= 1
        return count == wordBatchCapacity
    }

    /// Resolves the batch, gives `body` each candidate left in word order (pass 6), and empties it.
    @inline(__always)
    mutating func drain(
        _ index: IntervalIndex, _ rec: Rec, _ bits: UnsafeMutableBufferPointer<UInt64>, _ body: (WordCandidate) -> Void
    ) {
        resolve(index, rec, bits)
        for j in 0..<count { body(candidates[j]) }
        count = 0
    }

    /// Passes 2 to 5: each candidate's group (dropping those below every object), id, then record.
    /// Reads only; the bits may be cleared after, never set.
    @inline(__always)
    mutating func resolve(_ index: IntervalIndex, _ rec: Rec, _ bits: UnsafeMutableBufferPointer<UInt64>) {
        let c = candidates
        var kept = 0
        for j in 0..<count {
            guard let g = index.groupOf(c[j].word, from: c[j].tableStart) else { continue }
            if kept != j { c[kept] = c[j] }
            c[kept].group = g.group
            c[kept].probe = g.probe
            c[kept].limit = g.limit
            kept &+= 1
        }
        count = kept
        for j in 0..<count {
            // In bounds whatever the limit: a group starts at most 16 entries before its block's end.
            c[j].first = c[j].group[0]
            c[j].ninth = c[j].group[halfGroup]
        }
        for j in 0..<count {
            // Entries are sorted: when entry `halfGroup` counts, so do all before it, and the rest lie in
            // the second line.
            let probe = c[j].probe
            let limit = UInt64(c[j].limit)
            let half = (IntervalIndex.atMost(c[j].ninth, probe) & IntervalIndex.atMost(UInt64(halfGroup &+ 1), limit)) &* halfGroup
            let line = c[j].group + half
            var n = half &+ (IntervalIndex.atMost(half == 0 ? c[j].first : c[j].ninth, probe)
                & IntervalIndex.atMost(UInt64(half &+ 1), limit))
            for k in 1..<halfGroup { n &+= IntervalIndex.atMost(line[k], probe) & IntervalIndex.atMost(UInt64(half &+ k &+ 1), limit) }
            // n >= 1: a group's first entry is <= its probe (`groupOf`).
            c[j].id = UInt32(truncatingIfNeeded: c[j].group[max(n &- 1, 0)])
        }
        let nb = bits.count
        for j in 0..<count {
            let id = c[j].id
            let word = Int(id >> 6)
            // Untracked ids (registered after the bits were sized) always need their record.
            let set = word < nb ? (bits[word] >> UInt64(id & 63)) & 1 : 1
            let pick = id & UInt32(truncatingIfNeeded: 0 &- set)
            c[j].shape = rec[Int(pick)].pointee
        }
    }
}

extension EngineState {
    /// The serial word loop of one lock hold (no per-CPU objects): `updateRefsOfHit` for each hit, in
    /// word order, the lookups batched.
    static func scanChunksBatched(
        _ bufferBase: Int, _ group: [(off: Int, addr: UInt64, len: Int, id: UInt32)], _ nrec: Int,
        _ idx: IntervalIndex, _ rec: Rec, _ g: inout GrayQueue, _ ex: [UInt32: ObjectExtras],
        _ aliases: inout [UInt64], _ cookies: inout [UInt32], _ bits: UnsafeMutableBufferPointer<UInt64>,
        _ done: DoneFilter
    ) {
        withUnsafeTemporaryAllocation(of: WordCandidate.self, capacity: wordBatchCapacity) { storage in
            var batch = WordBatch(storage.baseAddress!)
            func apply() {
                batch.drain(idx, rec, bits) { c in
                    updateRefsOfHit(c.word, c.id, shape: c.shape, rec, c.scanned, &g, ex, idx, &aliases, &cookies, bits, done)
                }
            }
            for c in group {
                var own = (start: UInt64(0), length: UInt64(0))
                if !isRootID(c.id) {
                    guard Int(c.id) < nrec, rec[Int(c.id)].pointee.allocated else { continue }
                    own = ownRange(c, rec[Int(c.id)].pointee)
                }
                guard let (base, n) = alignedWords(bufferBase, c) else { continue }
                for i in 0..<n {
                    let w = base.loadUnaligned(fromByteOffset: i &* 8, as: UInt64.self)
                    if batch.add(w, index: i, scanned: c.id, own: own, idx, done) { apply() }
                }
            }
            if batch.count > 0 { apply() }
        }
    }
}
