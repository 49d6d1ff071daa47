// kmemleak_scan (KMEMLEAK-SPEC §2.4): whiten and seed gray objects, scan roots, scan_gray_list (by id, see GrayQueue),
// checksum pass, scan_gray_list again, optional confirmation passes, report.
//
// Memory is read in batches (up to `maxBatchRanges` ranges / `maxBatchBytes` bytes per MemoryReader call)
// with no lock held; the words are then scanned in FIFO order under the state lock, at most 4096 bytes
// (MAX_SCAN_SIZE) per lock hold, or 64 KiB whose lookups are shared among scan workers while they help (see ScanWorkers,
// StepSplitting). Slots are not reused while a scan runs, so a gray-list entry whose object
// was freed in between is recognised (not ALLOCATED) and skipped. scan_gray_list's batches are read as
// windows of memory around their objects; an object that turns gray inside a window is taken off the
// gray list and scanned from it (see `readWindows`, `EngineState.claimInWindows`).

/// The batch buffer is resident while a scan runs (1 MiB was a byte per object of the realistic 1 M-object
/// C heap at the daemon's peak); 1024 of that heap's objects average about 430 KB.
let maxBatchBytes = 1 << 19
let maxBatchRanges = 1024
let maxScanSize = 4096
let slotChunk = 8192

/// scan_gray_list's batches read as windows (`KmemleakConfiguration.readsGrayWindows`): pieces at most
/// `windowGap` bytes apart share one, and each is rounded out to `windowAlign` (the pages it touches, which
/// the kernel pins whole anyway). A window stays under `windowMaxBytes` (below the reader's plain-window
/// limit, 64 KiB for a live client), and a batch's gaps and roundings take at most `windowSlackBytes` of
/// buffer. On python3's heap a batch's objects lie 288-672 bytes apart and the objects they point to
/// between them: read object by object, the same spans came back once per graph level. A gap of 4 KiB
/// scanned it fastest (512 B-16 KiB measured), and whole pages beat exact ends.
let windowGap: UInt64 = 4096
let windowAlign: UInt64 = 4096
let windowMaxBytes: UInt64 = 60 << 10
let windowSlackBytes = 1 << 20

/// A window of a gray batch: `length` bytes at `start`, at `offset` in the batch buffer, `got` of them read.
struct ReadWindow {
    var start: UInt64
    var length: Int
    var offset: Int
    var got: Int
}

/// A run of bytes in the batch buffer to scan as part of object (or root) `id`: at `off`, read from `addr`.
typealias ScanChunk = (off: Int, addr: UInt64, len: Int, id: UInt32)

/// The chunks of the next lock hold, at most `limit` bytes.
struct ChunkGroup {
    var chunks: [ScanChunk] = []
    var bytes = 0
    var limit: Int
}

/// A piece of memory to read: part of an object (or root), at most `maxBatchBytes` (+7) long.
struct Piece {
    var id: UInt32
    var start: UInt64
    var length: Int
    /// 1: first piece of a CPU copy, 2: last piece of a copy, 4: last piece of the object.
    var tags: UInt8
}

/// A range still to be read: an object (or CPU copy, scan area, root) not yet fully cut into pieces.
struct Span {
    var id: UInt32
    var start: UInt64
    var remaining: UInt64
    /// Nothing of it was cut yet.
    var first: Bool
    /// The last range of its object (checksum pass: apply the crc after it).
    var lastOfObject: Bool
}

extension EngineState {
    /// Appends the range [start, start+len) (clamped at the top of the address space). Ranges are cut into
    /// pieces lazily, one batch at a time (see Scanner.fill), so a bogus huge size costs nothing up front.
    static func addSpan(_ id: UInt32, _ start: UInt64, _ len: UInt64, into out: inout [Span]) {
        guard len > 0 else { return }
        out.append(Span(id: id, start: start, remaining: min(len, UInt64.max - start), first: true, lastOfObject: false))
    }

    /// scan_object's ranges: nothing if NO_SCAN or freed; every CPU copy of a per-CPU object; the scan
    /// areas unless FULL_SCAN; else the whole object.
    func expandForScan(_ id: UInt32, into out: inout [Span]) {
        let r = records[Int(id)]
        guard r.allocated, !r.has(ObjectFlags.noScan) else { return }
        let sz = size(id)
        if r.has(ObjectFlags.percpu) {
            for c in copies(r.pointer) { Self.addSpan(id, c.address, sz, into: &out) }
        } else if r.bits & ObjectRecord.hasExtras != 0, let e = extras[id], !e.areas.isEmpty,
            !r.has(ObjectFlags.fullScan)
        {
            for a in e.areas { Self.addSpan(id, a.start, a.size, into: &out) }
        } else {
            Self.addSpan(id, r.pointer, sz, into: &out)
        }
    }

    /// update_checksum's ranges: the whole object, or every CPU copy.
    func expandForChecksum(_ id: UInt32, into out: inout [Span]) {
        let r = records[Int(id)]
        let sz = size(id)
        let first = out.count
        if r.has(ObjectFlags.percpu) {
            for c in copies(r.pointer) { Self.addSpan(id, c.address, sz, into: &out) }
        } else {
            Self.addSpan(id, r.pointer, sz, into: &out)
        }
        if out.count > first { out[out.count - 1].lastOfObject = true }
    }

    /// Applies a recomputed checksum (kmemleak_scan step 4): a white, allocated object whose checksum
    /// changed is painted gray temporarily (count = min_count) and appended to the gray list.
    mutating func applyChecksum(_ id: UInt32, _ crc: UInt32) {
        guard Int(id) < records.count, records[Int(id)].allocated, records[Int(id)].isWhite else { return }
        let old = checksums[id] ?? 0
        checksums[id] = crc == 0 ? nil : crc
        if crc != old {
            records[Int(id)].count = records[Int(id)].minCount
            gray.push(id)
        }
    }

    /// The root regions of this scan: `.stack` dropped when stack=off.
    func scanRootRegions() -> [RootRegion] {
        roots.filter { stackScan || $0.kind != .stack }
    }

    /// The spans that scan `regions` with no byte scanned twice, in address order: allocator data as
    /// `allocatorRootID` where no other root covers it (a byte that is also another root's counts fully),
    /// everything else as `rootID`.
    static func rootSpans(_ regions: [RootRegion]) -> [Span] {
        let other = merge(regions.filter { !$0.isAllocatorData }, into: [])
        let allocator = subtract(merge(regions.filter { $0.isAllocatorData }, into: []), other)
        var tagged = other.map { (start: $0.start, end: $0.end, id: rootID) }
        tagged += allocator.map { (start: $0.start, end: $0.end, id: allocatorRootID) }
        tagged.sort { $0.start < $1.start }
        var spans: [Span] = []
        for t in tagged { addSpan(t.id, t.start, t.end - t.start, into: &spans) }
        return spans
    }

    /// The parts of `a` outside every interval of `b` (both sorted and non-overlapping).
    static func subtract(_ a: [(start: UInt64, end: UInt64)], _ b: [(start: UInt64, end: UInt64)])
        -> [(start: UInt64, end: UInt64)]
    {
        var out: [(start: UInt64, end: UInt64)] = []
        var k = 0
        for var r in a {
            while k < b.count && b[k].end <= r.start { k += 1 }
            var j = k
            while j < b.count && b[j].start < r.end {
                if b[j].start > r.start { out.append((r.start, b[j].start)) }
                r.start = max(r.start, b[j].end)
                j += 1
            }
            if r.start < r.end { out.append(r) }
        }
        return out
    }

    /// The header of the chunk after a glibc malloc block of `size` bytes at `pointer` (x86-64, glibc 2.36
    /// malloc.c: the chunk starts 16 bytes before the block and spans request2size(size) =
    /// max(MINSIZE 32, (size + SIZE_SZ 8 + MALLOC_ALIGN_MASK 15) & ~15) bytes). A chunk may be up to 32
    /// bytes longer (a remainder too small to split stays in it, memalign, realloc in place); its next
    /// header then lies beyond the block, so only this address can be one inside it.
    @inline(__always) static func nextChunkHeader(_ pointer: UInt64, _ size: UInt64) -> UInt64 {
        let padded = size &+ 23
        let chunk = padded < 32 || padded < size ? 32 : padded & ~15
        return pointer &- 16 &+ chunk
    }

    /// Whether word `w`, read from the scanned range `scanned` and pointing into object `r`, is glibc's
    /// own bookkeeping rather than a reference: a word of allocator data pointing exactly at the header
    /// of the chunk after a malloc block.
    @inline(__always) static func isChunkHeaderWord(_ w: UInt64, _ r: ObjectRecord, _ size: UInt64, _ scanned: UInt32) -> Bool {
        scanned == allocatorRootID && r.isMallocChunk && w == nextChunkHeader(r.pointer, size)
    }

    /// LeakSanitizer's IsSpecialCaseOfOperatorNew0: `new T[0]` for a T with a destructor allocates an
    /// 8-byte block holding the element count 0 (the array cookie) and returns its end. A word pointing
    /// just past an 8-byte malloc block is such a reference if the block's first word is 0 (checked by
    /// the scanner once read: `cookieRefs`).
    @inline(__always) static func mayBeNewArrayCookieEnd(_ offset: UInt64, _ r: ObjectRecord, _ size: UInt64) -> Bool {
        offset == 8 && size == 8 && r.isMallocChunk
    }

    /// `regions` as sorted, non-overlapping intervals, merged with `intervals` (already such intervals).
    static func merge(_ regions: [RootRegion], into intervals: [(start: UInt64, end: UInt64)]) -> [(start: UInt64, end: UInt64)] {
        var rs = intervals
        for r in regions where r.length > 0 {
            let end = r.start.addingReportingOverflow(r.length).overflow ? UInt64.max : r.start + r.length
            rs.append((r.start, end))
        }
        rs.sort { $0.start < $1.start }
        var out: [(start: UInt64, end: UInt64)] = []
        for r in rs {
            if let last = out.last, r.start <= last.end {
                out[out.count - 1].end = max(last.end, r.end)
            } else {
                out.append(r)
            }
        }
        return out
    }

    /// The objects queued gray since the last call (`GrayQueue.pushed`) whose one scanned range lies in
    /// what was read of `windows` (sorted by start): taken off the gray list and appended to `out`, where
    /// they are in the batch buffer. Answers how many.
    mutating func claimInWindows(_ windows: [ReadWindow], into out: inout [ScanChunk]) -> Int {
        guard !gray.pushed.isEmpty, !windows.isEmpty else {
            gray.pushed.removeAll(keepingCapacity: true)
            return 0
        }
        var ids: [UInt32] = []
        swap(&ids, &gray.pushed)
        defer {
            ids.removeAll(keepingCapacity: true)
            swap(&ids, &gray.pushed)
        }
        var spans: [Span] = []
        var n = 0
        for id in ids where Int(id) < records.count {
            let r = records[Int(id)]
            let sp: Span
            if r.bits & ObjectRecord.hasExtras == 0 && !r.has(ObjectFlags.percpu) {
                // expandForScan's answer for a plain object without scan areas, without building it.
                guard r.allocated, !r.has(ObjectFlags.noScan) else { continue }
                let size = size(id)
                guard size > 0 else { continue }
                sp = Span(id: id, start: r.pointer, remaining: min(size, UInt64.max - r.pointer), first: true,
                          lastOfObject: false)
            } else {
                spans.removeAll(keepingCapacity: true)
                expandForScan(id, into: &spans)
                guard spans.count == 1 else { continue }
                sp = spans[0]
            }
            // The last window starting at or before the range.
            var lo = 0
            var hi = windows.count
            while lo < hi {
                let mid = (lo + hi) >> 1
                if windows[mid].start <= sp.start { lo = mid + 1 } else { hi = mid }
            }
            guard lo > 0 else { continue }
            let w = windows[lo - 1]
            let into = sp.start - w.start
            guard into <= UInt64(w.got), sp.remaining <= UInt64(w.got) - into, gray.remove(id) else { continue }
            out.append((w.offset + Int(into), sp.start, Int(sp.remaining), id))
            n += 1
        }
        return n
    }

    // MARK: scan_block

    /// Confirmation-pass scan_block over the aligned words fully inside [addr, addr+len), whose bytes start
    /// at `p` (the main passes use `scanGroup`).
    mutating func scanBlock(_ p: UnsafeRawPointer, addr: UInt64, len: Int, scanned: UInt32) {
        guard len >= 8 else { return }
        let first = (addr &+ 7) & ~7
        let end = addr &+ UInt64(len)
        guard first >= addr, first &+ 8 <= end else { return }
        let n = Int((end - first) / 8)
        let base = p + Int(first - addr)
        confirmWords(base, n, scanned)
    }

    /// One lock hold: scan_block over each chunk whose object is still allocated (roots always).
    mutating func scanGroup(_ bufferBase: Int, _ group: [(off: Int, addr: UInt64, len: Int, id: UInt32)]) {
        if confirm != nil {
            for c in group {
                if !isRootID(c.id) {
                    guard Int(c.id) < records.count, records[Int(c.id)].allocated else { continue }
                }
                scanBlock(UnsafeRawPointer(bitPattern: bufferBase + c.off)!, addr: c.addr, len: c.len, scanned: c.id)
            }
            return
        }
        let pl = plain
        let pc = percpu
        let ex = extras
        let nrec = records.count
        withWordScanState { rec, bits, done, g, aliases, cookies in
            if pc.count == 0 {
                Self.scanChunksBatched(bufferBase, group, nrec, pl, rec, &g, ex, &aliases, &cookies, bits, done)
                return
            }
            for c in group {
                var own = (start: UInt64(0), length: UInt64(0))
                if !isRootID(c.id) {
                    guard Int(c.id) < nrec, rec[Int(c.id)].pointee.allocated else { continue }
                    own = Self.ownRange(c, rec[Int(c.id)].pointee)
                }
                guard let (base, n) = Self.alignedWords(bufferBase, c) else { continue }
                for i in 0..<n {
                    let w = base.loadUnaligned(fromByteOffset: i &* 8, as: UInt64.self)
                    if w &- own.start >= own.length {
                        Self.pointerUpdateRefs(w, pl, rec, c.id, &g, ex, pl, &aliases, &cookies, bits, done)
                    }
                    if pc.count > 0 { Self.pointerUpdateRefs(w, pc, rec, c.id, &g, ex, pl, &aliases, &cookies, bits, done) }
                }
            }
        }
    }

    /// The range of chunk `c` of object `r`: a word pointing into it points into the scanned object itself,
    /// which its plain lookup would find and ignore (scan_block's "self referenced"), so the scan skips that
    /// lookup. The chunk lies inside the object (an object's scanned ranges are the object or its scan
    /// areas); the range is empty for a per-CPU object, whose chunks are copies elsewhere. 29 % of the
    /// in-range words of perl's SV arenas are such (a bodyless scalar's head points into its own arena).
    @inline(__always)
    static func ownRange(_ c: (off: Int, addr: UInt64, len: Int, id: UInt32), _ r: ObjectRecord) -> (start: UInt64, length: UInt64) {
        r.has(ObjectFlags.percpu) ? (0, 0) : (c.addr, UInt64(c.len))
    }

    /// The aligned words fully inside chunk `c` of the batch buffer at `bufferBase`: where they start, how many.
    @inline(__always)
    static func alignedWords(_ bufferBase: Int, _ c: (off: Int, addr: UInt64, len: Int, id: UInt32)) -> (UnsafeRawPointer, Int)? {
        guard c.len >= 8 else { return nil }
        let first = (c.addr &+ 7) & ~7
        let end = c.addr &+ UInt64(c.len)
        guard first >= c.addr, first &+ 8 <= end else { return nil }
        return (UnsafeRawPointer(bitPattern: bufferBase + c.off + Int(first - c.addr))!, Int((end - first) / 8))
    }

    /// Runs `body` over what a group's words update (the records, the `mayTakeReference` bits, the done
    /// granules, the gray list, aliases to resolve, array-cookie references), taken out of the state
    /// meanwhile so that the word loop goes through no `self`; then puts them back and resolves the aliases.
    mutating func withWordScanState(
        _ body: (Rec, UnsafeMutableBufferPointer<UInt64>, DoneFilter, inout GrayQueue, inout [UInt64], inout [UInt32]) -> Void
    ) {
        var g = gray
        gray = GrayQueue()
        var aliases: [UInt64] = []
        var cookies = cookieRefs
        cookieRefs = []
        var bits = mayTakeReference
        mayTakeReference = []
        var doneWords = done.words
        done.words = []
        let store = records
        let (start, span) = (done.start, done.span)
        bits.withUnsafeMutableBufferPointer { bits in
            doneWords.withUnsafeMutableBufferPointer { d in
                let filter = DoneFilter(bits: span > 0 ? d.baseAddress : nil, start: start, span: span)
                store.withRecords { rec in body(rec, bits, filter, &g, &aliases, &cookies) }
            }
        }
        done.words = doneWords
        mayTakeReference = bits
        cookieRefs = cookies
        gray = g
        for a in aliases { _ = lookup(a, alias: false, .plain) }
    }

    /// A parallel scan's lookup of word `w` (read-only): the id `updateRefsOfHit` must see, or nil when
    /// the serial scan would do nothing with the word but clear a `mayTakeReference` bit (see ScanWorkers).
    /// `id` is the object with the greatest pointer <= w; `shape` is its record, or any record when its
    /// bit is clear (see `WordBatch`).
    @inline(__always)
    static func hitToApply(
        _ w: UInt64, _ id: UInt32, shape r: ObjectRecord, _ scanned: UInt32, _ ex: [UInt32: ObjectExtras],
        _ bits: UnsafeMutableBufferPointer<UInt64>
    ) -> UInt32? {
        let word = Int(id >> 6)
        if word < bits.count && bits[word] & (1 << UInt64(id & 63)) == 0 { return nil }
        let size = objectSize(r, id, ex)
        let offset = w &- r.pointer
        if offset >= max(size, 1) { return mayBeNewArrayCookieEnd(offset, r, size) && id != scanned ? id : nil }
        if id == scanned || isChunkHeaderWord(w, r, size, scanned) { return nil }
        return id
    }

    /// Whether `scanGroupParallel` may cut a group's lookups among workers: not in a confirmation pass
    /// (its counts are the pass's own), nor with per-CPU objects (their lookups are not shared).
    var groupsSplittable: Bool { confirm == nil && percpu.count == 0 }

    /// `scanGroup` with the lookups cut among `workers`: each task looks up one run of the group's words
    /// and keeps its hits in `hits` (`hitCapacity` entries per task, word index << 32 | id); then this
    /// thread applies them in word order, as the serial scan would (see ScanWorkers). Returns how many
    /// tasks other threads ran (nil: not known, or the group was scanned whole here).
    @discardableResult
    mutating func scanGroupParallel(
        _ bufferBase: Int, _ group: [(off: Int, addr: UInt64, len: Int, id: UInt32)], _ workers: any ScanWorkers,
        _ hits: UnsafeMutablePointer<UInt64>, _ hitCounts: UnsafeMutablePointer<Int>, tasks: Int, hitCapacity: Int
    ) -> Int? {
        if !groupsSplittable || tasks < 2 {
            scanGroup(bufferBase, group)
            return nil
        }
        // The chunks still to scan (the serial scan's checks), and the index of each one's first word.
        var chunks: [(words: UnsafeRawPointer, count: Int, id: UInt32, own: (start: UInt64, length: UInt64))] = []
        var firstWord: [Int] = []
        chunks.reserveCapacity(group.count)
        firstWord.reserveCapacity(group.count + 1)
        var total = 0
        for c in group {
            var own = (start: UInt64(0), length: UInt64(0))
            if !isRootID(c.id) {
                guard Int(c.id) < records.count, records[Int(c.id)].allocated else { continue }
                own = Self.ownRange(c, records[Int(c.id)])
            }
            guard let (base, n) = Self.alignedWords(bufferBase, c) else { continue }
            chunks.append((base, n, c.id, own))
            firstWord.append(total)
            total += n
        }
        firstWord.append(total)
        // Each task's share is at most ceil(total / tasks) words.
        guard total > 0, total <= hitCapacity * tasks, total < Int(UInt32.max) else {
            scanGroup(bufferBase, group)
            return nil
        }
        for k in 0..<tasks { hitCounts[k] = 0 }
        let pl = plain
        let ex = extras
        var helped: Int? = nil
        withWordScanState { rec, bits, done, g, aliases, cookies in
            let job = Shared(value: ParallelLookup(
                index: pl, extras: ex, records: rec, bits: bits, done: done, chunks: chunks, firstWord: firstWord, tasks: tasks,
                hits: hits, hitCounts: hitCounts, hitCapacity: hitCapacity))
            helped = workers.run { k in job.value.lookUp(k) }
            // In word order: task k's hits all precede task k+1's.
            var ci = 0
            for k in 0..<tasks {
                let from = hits + k * hitCapacity
                for j in 0..<hitCounts[k] {
                    let e = from[j]
                    let i = Int(e >> 32)
                    while firstWord[ci + 1] <= i { ci += 1 }
                    let c = chunks[ci]
                    let w = c.words.loadUnaligned(fromByteOffset: (i - firstWord[ci]) * 8, as: UInt64.self)
                    Self.updateRefsOfHit(w, UInt32(truncatingIfNeeded: e), rec, c.id, &g, ex, pl, &aliases, &cookies, bits, done)
                }
            }
        }
        return helped
    }

    /// Task k of `scanGroupParallel`: the hits among words [words*k/tasks, words*(k+1)/tasks) of `chunks`.
    struct ParallelLookup {
        let index: IntervalIndex
        let extras: [UInt32: ObjectExtras]
        let records: Rec
        let bits: UnsafeMutableBufferPointer<UInt64>
        let done: DoneFilter
        let chunks: [(words: UnsafeRawPointer, count: Int, id: UInt32, own: (start: UInt64, length: UInt64))]
        /// The index of each chunk's first word, and the total at the end.
        let firstWord: [Int]
        let tasks: Int
        let hits: UnsafeMutablePointer<UInt64>
        let hitCounts: UnsafeMutablePointer<Int>
        let hitCapacity: Int

        func lookUp(_ k: Int) {
            guard k < tasks else { return }
            let words = firstWord[chunks.count]
            let lo = words * k / tasks
            let hi = words * (k + 1) / tasks
            let out = hits + k * hitCapacity
            var m = 0
            // The chunk holding word `lo`: the last one starting at or before it.
            var ci = 0
            var span = chunks.count
            while span > 1 {
                let half = span >> 1
                if firstWord[ci + half] <= lo { ci += half }
                span -= half
            }
            var at = lo
            withUnsafeTemporaryAllocation(of: WordCandidate.self, capacity: wordBatchCapacity) { storage in
                var batch = WordBatch(storage.baseAddress!)
                func apply() {
                    batch.drain(index, records, bits) { c in
                        if let id = EngineState.hitToApply(c.word, c.id, shape: c.shape, c.scanned, extras, bits) {
                            out[m] = UInt64(c.index) << 32 | UInt64(id)
                            m &+= 1
                        }
                    }
                }
                while at < hi {
                    let c = chunks[ci]
                    let stop = min(hi, firstWord[ci + 1])
                    let base = firstWord[ci]
                    for i in at..<stop {
                        let w = c.words.loadUnaligned(fromByteOffset: (i &- base) &* 8, as: UInt64.self)
                        if batch.add(w, index: i, scanned: c.id, own: c.own, index, done) { apply() }
                    }
                    at = stop
                    ci += 1
                }
                if batch.count > 0 { apply() }
            }
            hitCounts[k] = m
        }
    }

    @inline(__always)
    static func objectSize(_ r: ObjectRecord, _ id: UInt32, _ ex: [UInt32: ObjectExtras]) -> UInt64 {
        r.size32 == UInt32.max ? (ex[id]?.bigSize ?? UInt64(UInt32.max)) : UInt64(r.size32)
    }

    /// pointer_update_refs: filter, look up with aliasing, ignore self-references, forward hits on gray
    /// objects to their excess_ref (exact lookup, plain tree only), else update_refs.
    @inline(__always)
    static func pointerUpdateRefs(
        _ w: UInt64, _ idx: IntervalIndex, _ rec: Rec, _ scanned: UInt32,
        _ g: inout GrayQueue, _ ex: [UInt32: ObjectExtras], _ plainIdx: IntervalIndex, _ aliases: inout [UInt64],
        _ cookies: inout [UInt32], _ bits: UnsafeMutableBufferPointer<UInt64>, _ done: DoneFilter
    ) {
        if w < idx.minAddr || w >= idx.maxAddr { return }
        guard let h = idx.predecessor(w) else { return }
        updateRefsOfHit(w, h.id, rec, scanned, &g, ex, plainIdx, &aliases, &cookies, bits, done)
    }

    /// pointer_update_refs once the lookup found `id`, the object with the greatest pointer <= w.
    @inline(__always)
    static func updateRefsOfHit(
        _ w: UInt64, _ id: UInt32, _ rec: Rec, _ scanned: UInt32,
        _ g: inout GrayQueue, _ ex: [UInt32: ObjectExtras], _ plainIdx: IntervalIndex, _ aliases: inout [UInt64],
        _ cookies: inout [UInt32], _ bits: UnsafeMutableBufferPointer<UInt64>, _ done: DoneFilter
    ) {
        updateRefsOfHit(w, id, shape: rec[Int(id)].pointee, rec, scanned, &g, ex, plainIdx, &aliases, &cookies, bits, done)
    }

    /// `updateRefsOfHit` with `shape`, the hit's record as read before this lock hold's updates (any
    /// record when its bit was clear): its pointer, size and flags hold, its colour is read afresh.
    @inline(__always)
    static func updateRefsOfHit(
        _ w: UInt64, _ id: UInt32, shape: ObjectRecord, _ rec: Rec, _ scanned: UInt32,
        _ g: inout GrayQueue, _ ex: [UInt32: ObjectExtras], _ plainIdx: IntervalIndex, _ aliases: inout [UInt64],
        _ cookies: inout [UInt32], _ bits: UnsafeMutableBufferPointer<UInt64>, _ done: DoneFilter
    ) {
        let word = Int(id >> 6)
        let bit: UInt64 = 1 << UInt64(id & 63)
        let tracked = word < bits.count
        if tracked && bits[word] & bit == 0 { return }
        var r = shape
        r.bits = rec[Int(id)].pointee.bits
        if tracked && !r.isWhite && r.bits & ObjectRecord.hasExtras == 0 {
            // Gray or black, no excess_ref: nothing a word can do to it until the next scan.
            markDone(word, bit, r, objectSize(r, id, ex), bits, done)
            return
        }
        let size = objectSize(r, id, ex)
        let offset = w &- r.pointer
        if offset >= max(size, 1) {
            if mayBeNewArrayCookieEnd(offset, r, size) && id != scanned && r.isWhite { cookies.append(id) }
            return
        }
        if id == scanned { return }
        if isChunkHeaderWord(w, r, size, scanned) { return }
        var excess: UInt64 = 0
        if r.isGray {
            if r.bits & ObjectRecord.hasExtras != 0 { excess = ex[id]?.excessRef ?? 0 }
        } else {
            updateRefs(id, rec, &g)
            if tracked && r.bits & ObjectRecord.hasExtras == 0 && rec[Int(id)].pointee.isGray {
                // Done now, as the next word on it would find: its later words skip the lookup.
                markDone(word, bit, r, size, bits, done)
            }
        }
        if excess != 0 {
            guard let h2 = plainIdx.predecessor(excess) else { return }
            let r2 = rec[Int(h2.id)].pointee
            if excess &- r2.pointer >= max(objectSize(r2, h2.id, ex), 1) { return }
            if r2.pointer != excess {
                aliases.append(excess)
                return
            }
            if h2.id == scanned { return }
            updateRefs(h2.id, rec, &g)
        }
    }

    /// Object `r` (bit `bit` of `bits[word]`, `size` bytes) is done for this scan: no word looks it up again.
    @inline(__always)
    static func markDone(
        _ word: Int, _ bit: UInt64, _ r: ObjectRecord, _ size: UInt64, _ bits: UnsafeMutableBufferPointer<UInt64>,
        _ done: DoneFilter
    ) {
        bits[word] &= ~bit
        if !r.has(ObjectFlags.percpu) { done.markInside(r.pointer, size) }
    }

    /// update_refs: a white object's count grows; reaching min_count makes it gray and appends it.
    @inline(__always)
    static func updateRefs(_ id: UInt32, _ rec: Rec, _ g: inout GrayQueue) {
        let p = rec[Int(id)]
        if !p.pointee.isWhite { return }
        p.pointee.count &+= 1
        if p.pointee.isGray { g.push(id) }
    }

    // MARK: confirmation passes

    /// `zeroCookies`: the 8-byte malloc candidates whose first word is 0: a pointer to their end counts.
    mutating func buildConfirm(_ cands: [UInt32], zeroCookies: Set<UInt32> = []) {
        var c = ConfirmState()
        var per: [[(start: UInt64, end: UInt64, id: UInt32)]] = [[], []]
        for id in cands {
            let r = records[Int(id)]
            let sp = r.has(ObjectFlags.percpu) ? 1 : 0
            let end = r.pointer &+ max(size(id), 1) &+ (zeroCookies.contains(id) ? 1 : 0)
            per[sp].append((r.pointer, end < r.pointer ? UInt64.max : end, id))
        }
        for sp in 0..<2 {
            per[sp].sort { $0.start < $1.start }
            c.starts[sp] = per[sp].map { $0.start }
            c.ends[sp] = per[sp].map { $0.end }
            c.ids[sp] = per[sp].map { $0.id }
            c.passCount[sp] = Array(repeating: 0, count: per[sp].count)
            c.spared[sp] = Array(repeating: false, count: per[sp].count)
            c.minCounts[sp] = per[sp].map { Int32(records[Int($0.id)].minCount) }
            for (k, e) in per[sp].enumerated() { c.slotOf[e.id] = (sp, k) }
            c.filterMin[sp] = per[sp].first?.start ?? .max
            c.filterMax[sp] = per[sp].map { $0.end }.max() ?? 0
        }
        confirm = c
    }

    /// Starts a confirmation pass: fresh counts; previously spared candidates are rescanned.
    mutating func beginConfirmPass() {
        guard var c = confirm else { return }
        confirm = nil
        for sp in 0..<2 { for k in c.passCount[sp].indices { c.passCount[sp][k] = 0 } }
        c.queue = GrayQueue()
        for id in c.sparedIDs { c.queue.push(id) }
        confirm = c
    }

    mutating func confirmWords(_ base: UnsafeRawPointer, _ n: Int, _ scanned: UInt32) {
        guard var c = confirm else { return }
        confirm = nil
        let ex = extras
        records.withRecords { rec in
            for i in 0..<n {
                let w = base.loadUnaligned(fromByteOffset: i &* 8, as: UInt64.self)
                for sp in 0..<2 {
                    if w < c.filterMin[sp] || w >= c.filterMax[sp] { continue }
                    let k: Int = c.starts[sp].withUnsafeBufferPointer { st in
                        var lo = 0
                        var hi = st.count
                        while lo < hi {
                            let mid = (lo + hi) >> 1
                            if st[mid] <= w { lo = mid + 1 } else { hi = mid }
                        }
                        return lo - 1
                    }
                    if k < 0 || w >= c.ends[sp][k] || c.spared[sp][k] { continue }
                    let id = c.ids[sp][k]
                    if id == scanned { continue }
                    if scanned == allocatorRootID {
                        let r = rec[Int(id)].pointee
                        if Self.isChunkHeaderWord(w, r, Self.objectSize(r, id, ex), scanned) { continue }
                    }
                    c.passCount[sp][k] += 1
                    if c.passCount[sp][k] >= c.minCounts[sp][k] {
                        c.spared[sp][k] = true
                        // Freed meanwhile: its record may be the shared empty page (never written).
                        if rec[Int(id)].pointee.allocated { rec[Int(id)].pointee.count = rec[Int(id)].pointee.minCount }
                        c.queue.push(id)
                        c.sparedIDs.append(id)
                    }
                }
            }
        }
        confirm = c
    }
}

/// A context that resolves nothing (verbose printing without `logContext`).
struct NoReportContext: ReportContext {
    func comm(_ id: UInt32) -> String? { nil }
    func frames(_ trace: UInt32) -> [Address] { [] }
    func symbolize(_ address: Address) -> String? { nil }
}

/// One run of kmemleak_scan.
struct Scanner<M: MemoryReader> {
    enum Source { case none, gray, checksumSlots, confirmSlots, confirmQueue }

    let engine: Kmemleak
    let memory: M
    let stop: () -> Bool
    var hooks: ConfirmationHooks? = nil
    /// This scan's root regions (confirmation adds the hooks' extra roots to them).
    var rootRegions: [RootRegion] = []
    var result = ScanResult()
    var epoch = 0
    let buffer: UnsafeMutableRawBufferPointer
    var pieces: [Piece] = []
    var ranges: [MemoryRange] = []
    var bytesRead: [Int] = []
    /// Where each piece of the batch is in the buffer.
    var pieceOffsets: [Int] = []
    /// Whether this run's batches are read as windows (scan_gray_list with `readsGrayWindows`).
    var readingWindows = false
    /// The windows of the current batch, by address (see `readWindows`).
    var windows: [ReadWindow] = []
    /// Objects taken off the gray list because the current batch's windows hold them, still to scan.
    var claimed: [ScanChunk] = []
    var expansion: [Span] = []
    var expCursor = 0
    var slotCursor = 0
    var rootSpans: [Span] = []
    var countObjects = true
    /// The configuration's workers when there are at least 2 (else the serial scan).
    let workers: (any ScanWorkers)?
    /// Per task: the hits of one parallel step (at most one per word of its share of a
    /// `parallelScanSize` group: `hitCapacity` entries).
    let hits: UnsafeMutablePointer<UInt64>
    let hitCounts: UnsafeMutablePointer<Int>
    let hitCapacity: Int
    /// Tasks per parallel step (the workers' count when the scan began), 0 without workers.
    let tasks: Int
    /// Whether the next group's lookups are split among the workers.
    var splitting = StepSplitting()
    /// `EngineState.groupsSplittable` when this batch was filled: else its groups are scanned whole, and
    /// MAX_SCAN_SIZE groups are faster.
    var groupsSplittable = true

    init(engine: Kmemleak, memory: M, stop: @escaping () -> Bool) {
        self.engine = engine
        self.memory = memory
        self.stop = stop
        buffer = UnsafeMutableRawBufferPointer.allocate(byteCount: maxBatchBytes + windowSlackBytes + 64, alignment: 16)
        let w = engine.configuration.scanWorkers
        workers = (w?.count ?? 1) > 1 ? w : nil
        tasks = workers?.count ?? 0
        hitCapacity = tasks > 0 ? parallelScanSize / 8 / tasks + 1 : 0
        hits = .allocate(capacity: tasks * hitCapacity)
        hitCounts = .allocate(capacity: tasks)
    }

    func deallocate() {
        buffer.deallocate()
        hits.deallocate()
        hitCounts.deallocate()
    }

    var interrupted: Bool {
        get { result.interrupted }
        set { result.interrupted = newValue }
    }

    @inline(__always) func alive(_ s: EngineState) -> Bool { s.enabled && s.epoch == epoch }

    mutating func run(now: UInt64) -> ScanResult {
        let start: (Int, [RootRegion])? = engine.withState { s in
            guard s.enabled else { return nil }
            s.scanning = true
            s.createdDuringScan = []
            s.lastScanStart = now  // jiffies_last_scan
            s.gray = GrayQueue(capacity: s.records.count)
            // In place: a new array would be held with the old one.
            let words = (s.records.count + 63) / 64
            s.mayTakeReference.removeLast(max(0, s.mayTakeReference.count - words))
            for w in s.mayTakeReference.indices { s.mayTakeReference[w] = ~0 }
            s.mayTakeReference.append(contentsOf: repeatElement(~0, count: words - s.mayTakeReference.count))
            s.plain.refreshBlockTable()
            if engine.configuration.skipsDoneGranules {
                s.done.reset(start: s.plain.blockTable.start, span: s.plain.blockTable.span, objects: s.plain.count)
            }
            return (s.epoch, s.scanRootRegions())
        }
        guard let (ep, roots) = start else { return ScanResult(interrupted: true) }
        epoch = ep
        rootRegions = roots
        defer {
            let ep = epoch
            engine.withState { s in
                guard s.epoch == ep else { return }
                s.scanning = false
                s.createdDuringScan = []
                s.freeSlots.append(contentsOf: s.deferredFree)
                s.deferredFree = []
                s.gray.reset()
                s.done.release()
                s.confirm = nil
            }
        }
        rootSpans = EngineState.rootSpans(roots)

        // 1. Prepare: whiten every object, seed the gray list with gray ones.
        var slot = 0
        while true {
            let ep = epoch
            let next: Int? = engine.withState { s in
                guard s.enabled && s.epoch == ep else { return nil }
                let end = min(slot + slotChunk, s.records.count)
                var i = slot
                while i < end {
                    if s.records[i].allocated {
                        s.records[i].bits &= ~ObjectRecord.newDuringScan
                        s.records[i].count = 0
                        if s.records[i].isGray { s.gray.push(UInt32(i)) }
                    }
                    i += 1
                }
                return end >= s.records.count ? -1 : end
            }
            guard let n = next else { interrupted = true; return result }
            if n < 0 { break }
            slot = n
        }
        // 2. Roots, 3. scan_gray_list.
        scanRoots()
        run(.gray)
        // 4. Checksum pass, 5. scan_gray_list again.
        checksumPass()
        run(.gray)
        // 6. Interrupted: report nothing.
        if interrupted || stop() { interrupted = true; return result }
        // Confirmation passes (not in the kernel).
        confirmationPasses()
        if interrupted || stop() { interrupted = true; return result }
        if result.postponed { return result }
        if let hooks, !hooks.mayReport() {
            result.postponed = true
            return result
        }
        // 7. Report.
        report()
        return result
    }

    mutating func scanRoots() {
        expansion = rootSpans
        expCursor = 0
        let saved = countObjects
        countObjects = false
        run(.none)
        countObjects = saved
    }

    /// Fills `pieces` for one batch, under the state lock. Returns false when the source is exhausted.
    mutating func fill(_ s: inout EngineState, _ source: Source) -> Bool {
        pieces.removeAll(keepingCapacity: true)
        groupsSplittable = s.groupsSplittable
        var bytes = 0
        var visited = 0
        // The reader's last plain window (see `MemoryReader.plainWindow`): ranges inside it are scannable
        // whole, without asking. Valid for this batch only.
        var window: PlainWindow? = nil
        while pieces.count < maxBatchRanges {
            if expCursor < expansion.count {
                // Cut the next piece: pieces end at alignUp(start, 8) + k * maxBatchBytes, so no word
                // straddles two pieces.
                var sp = expansion[expCursor]
                // Skip what the reader knows cannot hold pointers (unmapped, file-backed or
                // never-touched pages): only its first scannable part is cut next.
                let asked = MemoryRange(address: sp.start, length: Int(min(sp.remaining, UInt64(Int.max))))
                var partLength = sp.remaining
                if sp.remaining > 0, let w = window, w.covers(sp.start, sp.remaining) {
                    // Scannable whole: nothing to skip.
                } else if sp.remaining > 0 {
                    if window == nil || !window!.covers(sp.start, 0) { window = memory.plainWindow(at: sp.start) }
                    if let w = window, w.covers(sp.start, sp.remaining) {
                        // Scannable whole.
                    } else if let part = memory.scannablePart(of: asked), part.length > 0, part.address >= sp.start,
                       part.address - sp.start < sp.remaining {
                        let skip = part.address - sp.start
                        sp.start = part.address
                        sp.remaining -= skip
                        partLength = min(sp.remaining, UInt64(part.length))
                    } else {
                        sp.start &+= sp.remaining
                        sp.remaining = 0
                        partLength = 0
                    }
                }
                // Pieces end at alignUp(start, 8) + k * maxBatchBytes (after a skip too).
                let m = UInt64(maxBatchBytes)
                let limit = (((sp.start &+ 7) & ~7) &+ m) &- sp.start
                let len = min(partLength, limit)
                if bytes + Int(len) > maxBatchBytes && !pieces.isEmpty { return true }
                let whole = len == sp.remaining
                var tags: UInt8 = sp.first ? 1 : 0
                if whole { tags |= sp.lastOfObject ? 6 : 2 }
                pieces.append(Piece(id: sp.id, start: sp.start, length: Int(len), tags: tags))
                bytes += Int(len)
                if whole {
                    expCursor += 1
                    continue
                }
                // The rest waits for the next batch, and is dropped if this piece reads short.
                sp.start &+= len
                sp.remaining -= len
                sp.first = false
                expansion[expCursor] = sp
                return true
            }
            expansion.removeAll(keepingCapacity: true)
            expCursor = 0
            switch source {
            case .none:
                return false
            case .gray:
                guard let id = s.gray.pop() else { return false }
                guard Int(id) < s.records.count else { continue }
                s.expandForScan(id, into: &expansion)
                if countObjects && !expansion.isEmpty { result.objectsScanned += 1 }
            case .checksumSlots:
                if slotCursor >= s.records.count { return false }
                if visited >= slotChunk { return true }
                let id = UInt32(slotCursor)
                slotCursor += 1
                visited += 1
                let r = s.records[Int(id)]
                guard r.allocated, r.isWhite else { continue }
                s.expandForChecksum(id, into: &expansion)
                if expansion.isEmpty { s.applyChecksum(id, 0) }
            case .confirmSlots:
                if slotCursor >= s.records.count { return false }
                if visited >= slotChunk { return true }
                let id = UInt32(slotCursor)
                slotCursor += 1
                visited += 1
                let r = s.records[Int(id)]
                // Objects registered while the scan ran (a daemon re-syncing a frozen client) may hold the
                // only pointer to a candidate: scan them like gray ones.
                guard r.allocated, r.isGray || r.bits & ObjectRecord.newDuringScan != 0,
                      s.confirm?.slotOf[id] == nil else { continue }
                s.expandForScan(id, into: &expansion)
            case .confirmQueue:
                guard let id = s.confirm?.queue.pop() else { return false }
                s.expandForScan(id, into: &expansion)
            }
        }
        return true
    }

    /// Reads the current batch: its pieces back to back with one MemoryReader call, or as windows.
    mutating func readBatch() {
        ranges.removeAll(keepingCapacity: true)
        for p in pieces where p.length > 0 { ranges.append(MemoryRange(address: p.start, length: p.length)) }
        pieceOffsets.removeAll(keepingCapacity: true)
        windows.removeAll(keepingCapacity: true)
        bytesRead = Array(repeating: 0, count: pieces.count)
        if !(readingWindows && readWindows()) {
            var got = Array(repeating: 0, count: ranges.count)
            readRanges(&got)
            var k = 0
            var off = 0
            for i in pieces.indices {
                pieceOffsets.append(off)
                off += pieces[i].length
                guard pieces[i].length > 0 else { continue }
                bytesRead[i] = max(0, min(got[k], pieces[i].length))
                k += 1
            }
        }
        // A partial piece (always the batch's last) that read short: the rest of its range is absent.
        if let last = pieces.last, last.tags & 2 == 0, bytesRead[pieces.count - 1] < last.length,
            expCursor < expansion.count
        {
            expansion[expCursor].remaining = 0
        }
    }

    /// `ranges` back to back into the buffer, with one MemoryReader call (or one per worker).
    mutating func readRanges(_ got: inout [Int]) {
        guard !ranges.isEmpty else { return }
        let buf = buffer
        let mem = memory
        let workers = workers
        ranges.withUnsafeBufferPointer { r in
            got.withUnsafeMutableBufferPointer { b in
                if let workers, mem.allowsConcurrentReads {
                    Self.readInParallel(mem, r, into: buf, bytesRead: b, workers)
                } else {
                    mem.read(r, into: buf, bytesRead: b)
                }
            }
        }
    }

    /// Reads the batch as windows: its pieces in address order, those at most `windowGap` apart in one
    /// window, each window rounded out to `windowAlign`, all inside one plain window of the reader (so
    /// that the gaps are memory the reader reads whole), then the windows back to back with one call.
    /// A piece is found at its place in its window; a piece a short window did not reach is read again
    /// alone (a gap may have been unmapped meanwhile: only the piece's own bytes count). Answers false
    /// (nothing read) when the windows would not fit the buffer.
    mutating func readWindows() -> Bool {
        guard !ranges.isEmpty else { return false }
        let order = ranges.withUnsafeBufferPointer { MemoryRange.addressOrder($0, $0.count) }
        var windowOfRange = [Int](repeating: 0, count: ranges.count)
        var plain: PlainWindow? = nil
        var slack = UInt64(windowSlackBytes)
        var offset = 0
        // The window being built: [start, end), and the end of the one before it.
        var start: UInt64 = 0
        var end: UInt64 = 0
        var previousEnd: UInt64 = 0
        var wins: [ReadWindow] = []
        swap(&wins, &windows)
        defer { swap(&wins, &windows) }
        let mem = memory
        func inPlain(_ a: UInt64, _ b: UInt64) -> Bool {
            if plain == nil || !plain!.covers(a, 0) { plain = mem.plainWindow(at: a) }
            return plain?.covers(a, b - a) ?? false
        }
        func close(before next: UInt64) {
            // Rounded out to whole pages where they are plain memory and the slack allows.
            let lo = max(start & ~(windowAlign - 1), previousEnd)
            let up = (end &+ (windowAlign - 1)) & ~(windowAlign - 1)
            let hi = min(up > end ? up : end, next)
            if lo <= start, hi >= end, hi - lo <= windowMaxBytes, (start - lo) + (hi - end) <= slack, inPlain(lo, hi) {
                slack -= (start - lo) + (hi - end)
                start = lo
                end = hi
            }
            wins.append(ReadWindow(start: start, length: Int(end - start), offset: offset, got: 0))
            offset += Int(end - start)
            previousEnd = end
        }
        for (n, k) in order.enumerated() {
            let a = ranges[k].address
            let e = a &+ UInt64(ranges[k].length)
            if n > 0 {
                let gap = a > end ? a - end : 0
                let merged = max(end, e)
                if a >= start, gap <= windowGap, gap <= slack, merged - start <= windowMaxBytes, inPlain(start, merged) {
                    slack -= gap
                    end = merged
                    windowOfRange[k] = wins.count
                    continue
                }
                close(before: a)
            }
            start = a
            end = e
            windowOfRange[k] = wins.count
        }
        close(before: .max)
        guard offset <= buffer.count else {
            wins.removeAll(keepingCapacity: true)
            return false
        }
        var got = Array(repeating: 0, count: wins.count)
        var pieceRanges = wins.map { MemoryRange(address: $0.start, length: $0.length) }
        swap(&pieceRanges, &ranges)
        readRanges(&got)
        swap(&pieceRanges, &ranges)
        for i in wins.indices { wins[i].got = max(0, min(got[i], wins[i].length)) }
        // Each piece at its place in its window.
        var again: [Int] = []
        var k = 0
        for i in pieces.indices {
            guard pieces[i].length > 0 else {
                pieceOffsets.append(0)
                continue
            }
            let w = wins[windowOfRange[k]]
            let into = Int(pieces[i].start - w.start)
            pieceOffsets.append(w.offset + into)
            bytesRead[i] = max(0, min(w.got - into, pieces[i].length))
            if bytesRead[i] < pieces[i].length && w.got < w.length { again.append(i) }
            k += 1
        }
        if !again.isEmpty { readAgain(again) }
        return true
    }

    /// The pieces `indices` read again one range each (through a scratch buffer), into their places.
    mutating func readAgain(_ indices: [Int]) {
        let rs = indices.map { MemoryRange(address: pieces[$0].start, length: pieces[$0].length) }
        let total = rs.reduce(0) { $0 + $1.length }
        let scratch = UnsafeMutableRawBufferPointer.allocate(byteCount: max(total, 1), alignment: 16)
        defer { scratch.deallocate() }
        var got = [Int](repeating: 0, count: rs.count)
        rs.withUnsafeBufferPointer { r in
            got.withUnsafeMutableBufferPointer { b in memory.read(r, into: scratch, bytesRead: b) }
        }
        var from = 0
        for (j, i) in indices.enumerated() {
            let n = max(0, min(got[j], rs[j].length))
            if n > bytesRead[i] {
                UnsafeMutableRawBufferPointer(rebasing: buffer[pieceOffsets[i]..<(pieceOffsets[i] + n)])
                    .copyMemory(from: UnsafeRawBufferPointer(rebasing: scratch[from..<(from + n)]))
                bytesRead[i] = n
            }
            from += rs[j].length
        }
    }

    /// One batch read by `workers` tasks, each reading a run of whole ranges of about the same bytes
    /// into its place in `buffer` (a batch smaller than `parallelReadMinimum` is read here).
    static func readInParallel(
        _ memory: M, _ ranges: UnsafeBufferPointer<MemoryRange>, into buffer: UnsafeMutableRawBufferPointer,
        bytesRead: UnsafeMutableBufferPointer<Int>, _ workers: any ScanWorkers
    ) {
        var total = 0
        for r in ranges { total += max(0, r.length) }
        let tasks = max(1, workers.count)
        guard ranges.count >= 2, total >= parallelReadMinimum, total <= buffer.count else {
            memory.read(ranges, into: buffer, bytesRead: bytesRead)
            return
        }
        // Task k reads ranges cuts[k]..<cuts[k+1], from byte offsets[k] of the buffer.
        var cuts = [0]
        var offsets = [0]
        var bytes = 0
        for (i, r) in ranges.enumerated() {
            if i > 0 && cuts.count < tasks && bytes >= total * cuts.count / tasks {
                cuts.append(i)
                offsets.append(bytes)
            }
            bytes += max(0, r.length)
        }
        cuts.append(ranges.count)
        let job = ParallelRead(memory: memory, ranges: ranges, buffer: buffer, bytesRead: bytesRead, cuts: cuts,
                               offsets: offsets)
        // Type-erased: the tasks need nothing of the reader's type.
        let task = Shared<(Int) -> Void>(value: { k in job.read(k) })
        workers.run { k in task.value(k) }
    }

    /// Task k of `readInParallel`: ranges cuts[k]..<cuts[k+1], into the buffer from offsets[k].
    struct ParallelRead {
        let memory: M
        let ranges: UnsafeBufferPointer<MemoryRange>
        let buffer: UnsafeMutableRawBufferPointer
        let bytesRead: UnsafeMutableBufferPointer<Int>
        let cuts: [Int]
        let offsets: [Int]

        func read(_ k: Int) {
            guard k + 1 < cuts.count else { return }
            let end = k + 2 < cuts.count ? offsets[k + 1] : buffer.count
            memory.read(UnsafeBufferPointer(rebasing: ranges[cuts[k]..<cuts[k + 1]]),
                        into: UnsafeMutableRawBufferPointer(rebasing: buffer[offsets[k]..<end]),
                        bytesRead: UnsafeMutableBufferPointer(rebasing: bytesRead[cuts[k]..<cuts[k + 1]]))
        }
    }

    /// Batches from `source`: read, then scan_block in FIFO order, <= 4096 bytes per lock hold.
    mutating func run(_ source: Source) {
        readingWindows = false
        if case .gray = source, engine.configuration.readsGrayWindows {
            let ep = epoch
            readingWindows = engine.withState { s in
                guard s.enabled && s.epoch == ep else { return false }
                s.gray.logsPushes = true
                return true
            }
        }
        defer {
            if readingWindows {
                readingWindows = false
                engine.withState { s in
                    s.gray.logsPushes = false
                    s.gray.pushed = []
                }
            }
        }
        // Scanning a batch may append to the gray list (or the confirmation queue), so the source is only
        // exhausted when a fill finds nothing left.
        while !interrupted {
            if stop() { interrupted = true; return }
            let ep = epoch
            let r: Bool? = withFill(ep, source)
            guard let more = r else { interrupted = true; return }
            if pieces.isEmpty {
                if more { continue }
                return
            }
            readBatch()
            scanPieces()
            resolveCookieRefs()
        }
    }

    /// The ids among `objects` whose first 8 bytes read fully as 0 (several MemoryReader calls of at most
    /// `maxBatchRanges` ranges, through the batch buffer).
    mutating func readZeroFirstWords(_ objects: [(id: UInt32, pointer: UInt64)]) -> Set<UInt32> {
        var zero = Set<UInt32>()
        var k = 0
        while k < objects.count {
            let chunk = objects[k..<min(k + maxBatchRanges, objects.count)]
            k += chunk.count
            ranges.removeAll(keepingCapacity: true)
            for o in chunk { ranges.append(MemoryRange(address: o.pointer, length: 8)) }
            var got = Array(repeating: 0, count: ranges.count)
            let buf = buffer
            let mem = memory
            ranges.withUnsafeBufferPointer { r in
                got.withUnsafeMutableBufferPointer { b in mem.read(r, into: buf, bytesRead: b) }
            }
            for (i, o) in chunk.enumerated() where got[i] >= 8 {
                if buf.loadUnaligned(fromByteOffset: i * 8, as: UInt64.self) == 0 { zero.insert(o.id) }
            }
        }
        return zero
    }

    /// The words of the last batch that pointed at the end of an 8-byte malloc block count as references
    /// when that block's first word is 0 (`EngineState.mayBeNewArrayCookieEnd`).
    mutating func resolveCookieRefs() {
        let ep = epoch
        let pending: (refs: [UInt32], objects: [(id: UInt32, pointer: UInt64)])? = engine.withState { s in
            guard s.enabled && s.epoch == ep, !s.cookieRefs.isEmpty else { return nil }
            let refs = s.cookieRefs
            s.cookieRefs = []
            var seen = Set<UInt32>()
            var objects: [(id: UInt32, pointer: UInt64)] = []
            for id in refs where seen.insert(id).inserted && Int(id) < s.records.count && s.records[Int(id)].allocated {
                objects.append((id, s.records[Int(id)].pointer))
            }
            return (refs, objects)
        }
        guard let pending else { return }
        let zero = readZeroFirstWords(pending.objects)
        if zero.isEmpty { return }
        engine.withState { s in
            guard s.enabled && s.epoch == ep else { return }
            var g = s.gray
            s.gray = GrayQueue()
            s.records.withRecords { rec in
                for id in pending.refs where zero.contains(id) && rec[Int(id)].pointee.allocated {
                    EngineState.updateRefs(id, rec, &g)
                }
            }
            s.gray = g
        }
    }

    mutating func withFill(_ ep: Int, _ source: Source) -> Bool? {
        return engine.withState { s in
            guard s.enabled && s.epoch == ep else { return nil }
            return self.fill(&s, source)
        }
    }

    /// Scans the batch's pieces in order, grouping chunks into lock holds of at most maxScanSize bytes,
    /// then the objects claimed from the batch's windows meanwhile (see `claimInWindows`), until none is.
    mutating func scanPieces() {
        // With workers that help, one lock hold scans a larger group (its lookups are shared among them).
        var group = ChunkGroup(limit: groupBytesLimit)
        for (i, p) in pieces.enumerated() {
            let got = bytesRead[i]
            result.bytesScanned += got
            guard add((pieceOffsets[i], p.start, got, p.id), to: &group) else { return }
        }
        var next: [ScanChunk] = []
        while true {
            if !group.chunks.isEmpty {
                guard flush(group.chunks, bytes: group.bytes) else { return }
                group.chunks.removeAll(keepingCapacity: true)
                group.bytes = 0
                group.limit = groupBytesLimit
            }
            if claimed.isEmpty { return }
            swap(&next, &claimed)
            for c in next {
                result.bytesScanned += c.len
                guard add(c, to: &group) else { return }
            }
            next.removeAll(keepingCapacity: true)
        }
    }

    /// Adds chunk `c` to `group`, cut where the group's limit falls (from the chunk's first aligned word),
    /// scanning the group whenever it is full. Answers false when the scan ends.
    mutating func add(_ c: ScanChunk, to group: inout ChunkGroup) -> Bool {
        let end = c.addr &+ UInt64(c.len)
        var cs = c.addr
        var boundary = ((c.addr &+ 7) & ~7) &+ UInt64(group.limit)
        while cs < end {
            let ce = boundary > cs && boundary < end ? boundary : end
            let len = Int(ce - cs)
            if group.bytes + len > group.limit && !group.chunks.isEmpty {
                guard flush(group.chunks, bytes: group.bytes) else { return false }
                group.chunks.removeAll(keepingCapacity: true)
                group.bytes = 0
                group.limit = groupBytesLimit
            }
            group.chunks.append((c.off + Int(cs - c.addr), cs, len, c.id))
            group.bytes += len
            cs = ce
            boundary &+= UInt64(group.limit)
        }
        return true
    }

    /// The bytes of the next group: a split step's with workers that help, else MAX_SCAN_SIZE.
    var groupBytesLimit: Int { workers != nil && splitting.splits && groupsSplittable ? parallelScanSize : maxScanSize }

    mutating func flush(_ group: [(off: Int, addr: UInt64, len: Int, id: UInt32)], bytes: Int) -> Bool {
        if stop() { interrupted = true; return false }
        let ep = epoch
        let base = Int(bitPattern: buffer.baseAddress)
        var splitting = self.splitting
        let splittable = groupsSplittable
        let wins = readingWindows ? windows : []
        var claims: [ScanChunk] = []
        swap(&claims, &claimed)
        defer { swap(&claims, &claimed) }
        var claimedObjects = 0
        let ok = engine.withState { s -> Bool in
            guard s.enabled && s.epoch == ep else { return false }
            // Blocks split or merged by the syncs since: a stale table costs steps, not answers.
            s.plain.refreshBlockTable(ifStaleBy: 64)
            if let workers, splitting.splits, splittable {
                let helped = s.scanGroupParallel(base, group, workers, hits, hitCounts, tasks: tasks,
                                                 hitCapacity: hitCapacity)
                splitting.record(helped: helped, tasks: tasks)
            } else {
                s.scanGroup(base, group)
                if splittable { splitting.scannedWhole(bytes: bytes) }
            }
            if !wins.isEmpty { claimedObjects = s.claimInWindows(wins, into: &claims) }
            return true
        }
        self.splitting = splitting
        if countObjects {
            result.objectsScanned += claimedObjects
            result.objectsScannedInWindows += claimedObjects
        }
        if !ok { interrupted = true }
        return ok
    }

    /// Step 4: recompute the checksum of every white, allocated object; changed ones turn gray.
    mutating func checksumPass() {
        slotCursor = 0
        expansion.removeAll()
        expCursor = 0
        var copyCRC: UInt32 = 0
        var objCRC: UInt32 = 0
        var results: [(UInt32, UInt32)] = []
        var more = true
        while more && !interrupted {
            if stop() { interrupted = true; return }
            guard let m = withFill(epoch, .checksumSlots) else { interrupted = true; return }
            more = m
            if pieces.isEmpty { continue }
            readBatch()
            results.removeAll(keepingCapacity: true)
            for (i, p) in pieces.enumerated() {
                let got = bytesRead[i]
                let off = pieceOffsets[i]
                result.bytesChecksummed += got
                if p.tags & 1 != 0 { copyCRC = 0 }
                copyCRC = CRC32.le(copyCRC, UnsafeRawBufferPointer(rebasing: buffer[off..<(off + got)]))
                if p.tags & 2 != 0 { objCRC ^= copyCRC }
                if p.tags & 4 != 0 {
                    results.append((p.id, objCRC))
                    objCRC = 0
                }
            }
            let res = results
            let ep = epoch
            let ok = engine.withState { s -> Bool in
                guard s.enabled && s.epoch == ep else { return false }
                for (id, crc) in res { s.applyChecksum(id, crc) }
                return true
            }
            if !ok { interrupted = true; return }
        }
    }

    /// Slot-chunked pass under the lock; returns false if the detector went away. Inlined, so that `body`
    /// is too: a call per slot was 3-5 % of a 2 M-object scan.
    @inline(__always)
    mutating func forSlots(_ body: (inout EngineState, Int) -> Void) -> Bool {
        var slot = 0
        while true {
            let ep = epoch
            // `body` stays non-escaping: what it captures is then checked for exclusive access at compile
            // time, not on every slot.
            let next: Int? = engine.withState { s in
                guard s.enabled && s.epoch == ep else { return nil }
                let end = min(slot + slotChunk, s.records.count)
                for i in slot..<end where s.records[i].allocated { body(&s, i) }
                return end >= s.records.count ? -1 : end
            }
            guard let n = next else { interrupted = true; return false }
            if n < 0 { return true }
            slot = n
        }
    }

    /// Confirmation passes (KmemleakConfiguration.confirmationPasses).
    mutating func confirmationPasses() {
        let passes = engine.configuration.confirmationPasses
        guard passes > 0 else { return }
        var reportable = false
        // With a written-ranges filter to come: the objects the main pass read (see UnchangedMemory).
        let filtering = hooks?.unchangedMemory != nil
        var grayAtMain = [UInt64](repeating: 0, count: filtering ? (engine.withState { $0.records.count } + 63) / 64 : 0)
        var notByAddress: [UInt32] = [], whiteReported: [UInt32] = [], whiteCandidates: [UInt32] = []
        guard forSlots({ s, i in
            let r = s.records[i]
            if !reportable && r.isWhite && !r.has(ObjectFlags.reported)
                && r.bits & ObjectRecord.newDuringScan == 0 && s.unreferenced(r)
            {
                reportable = true
            }
            guard filtering, r.allocated else { return }
            // What the main pass left, so that the client, once frozen, costs what its sync changed.
            if r.isGray {
                if i / 64 < grayAtMain.count { grayAtMain[i / 64] |= 1 << UInt64(i % 64) }
                if !s.foundByAddress(UInt32(i)) { notByAddress.append(UInt32(i)) }
            } else if r.isWhite && r.bits & ObjectRecord.newDuringScan == 0 {
                if r.has(ObjectFlags.reported) { whiteReported.append(UInt32(i)) } else { whiteCandidates.append(UInt32(i)) }
            }
        }) else { return }
        if !reportable { return }
        // The caller may now freeze the client and show more roots (its threads' registers).
        var spans = rootSpans
        var unchanged: UnchangedMemory? = nil
        if let hooks {
            // Merged with this scan's roots, so that no byte is counted twice.
            guard let extra = hooks.begin() else {
                hooks.end()
                result.postponed = true
                return
            }
            if !extra.isEmpty { spans = EngineState.rootSpans(rootRegions + extra) }
            unchanged = hooks.unchangedMemory?()
        }
        defer { hooks?.end() }
        // Every white object takes part, not only the reportable ones: a reachable object that the
        // main pass missed (too young to report, say) may hold the only pointer to a candidate.
        var cands: [UInt32] = []
        // Filtered: the non-candidates to read whole (the main pass did not read them, or the filter
        // cannot find them by address).
        var wholeReads: [UInt32] = []
        if unchanged != nil {
            // Frozen, the sync changed only these: registered objects (young), freed ones, and annotations
            // (a candidate or a reported object turned gray by not_leak was never read).
            engine.withState { s in
                for id in whiteCandidates where Int(id) < s.records.count && s.records[Int(id)].allocated {
                    let r = s.records[Int(id)]
                    // A caller-chosen id freed and reused by the sync holds a young object now.
                    if r.bits & ObjectRecord.newDuringScan != 0 {
                        wholeReads.append(id)
                    } else if r.isWhite && !r.has(ObjectFlags.reported) {
                        cands.append(id)
                        if r.minCount > 1 && r.count > 0 { unchanged = nil }
                    } else if r.isGray {
                        wholeReads.append(id)
                    }
                }
                for list in [whiteReported, notByAddress, s.createdDuringScan] {
                    for id in list where Int(id) < s.records.count && s.records[Int(id)].allocated {
                        let r = s.records[Int(id)]
                        if r.isGray || r.bits & ObjectRecord.newDuringScan != 0 { wholeReads.append(id) }
                    }
                }
            }
        }
        if unchanged == nil {
            cands = []
            wholeReads = []
        }
        if unchanged == nil, !forSlots({ s, i in
            let r = s.records[i]
            guard r.allocated else { return }
            let young = r.bits & ObjectRecord.newDuringScan != 0
            if r.isWhite && !r.has(ObjectFlags.reported) && !young {
                cands.append(UInt32(i))
                // Counted referenced somewhere by the main pass: only a full re-read re-counts that.
                if r.minCount > 1 && r.count > 0 { unchanged = nil }
            }
        }) { return }
        // The client is still now: the array cookies read here are the ones the passes will see.
        let cookieCandidates: [(id: UInt32, pointer: UInt64)] = engine.withState { s in
            cands.compactMap { id in
                let r = s.records[Int(id)]
                return r.isMallocChunk && s.size(id) == 8 ? (id, r.pointer) : nil
            }
        }
        let zeroCookies = readZeroFirstWords(cookieCandidates)
        let cs = cands
        engine.withState { s in s.buildConfirm(cs, zeroCookies: zeroCookies) }
        let saved = countObjects
        countObjects = false
        defer { countObjects = saved }
        let bytesBefore = result.bytesScanned
        defer { result.bytesConfirmed = result.bytesScanned - bytesBefore }
        for _ in 0..<passes {
            engine.withState { s in s.beginConfirmPass() }
            if let unchanged {
                // Roots and the objects the main pass read: their changed parts only.
                let gray = grayAtMain, whole = wholeReads
                expansion = EngineState.changedParts(of: spans, unchanged) + engine.withState { s in
                    var out: [Span] = []
                    for id in whole { s.expandForScan(id, into: &out) }
                    return out + s.changedObjectSpans(unchanged) { id in
                        let r = s.records[Int(id)]
                        return r.allocated && r.isGray && r.bits & ObjectRecord.newDuringScan == 0
                            && EngineState.bit(gray, Int(id)) && s.foundByAddress(id)
                    }
                }
                expCursor = 0
                run(.none)
            } else {
                expansion = spans
                expCursor = 0
                run(.none)
                slotCursor = 0
                run(.confirmSlots)
            }
            run(.confirmQueue)
            if interrupted { return }
        }
        result.filteredConfirmation = unchanged != nil
        let ep = epoch
        result.sparedByConfirmation = engine.withState { s in
            guard s.epoch == ep else { return 0 }
            let n = s.confirm?.sparedIDs.count ?? 0
            s.confirm = nil
            return n
        }
    }

    /// Step 7: mark new leaks REPORTED and log the count.
    mutating func report() {
        var n = 0
        let verbose = engine.configuration.verbose
        let cpu = engine.configuration.reportCPU
        let hz = engine.configuration.ticksPerSecond
        var items: [(entry: ReportEntry, read: UInt64?)] = []
        guard forSlots({ s, i in
            let r = s.records[i]
            if r.isWhite && s.unreferenced(r) && !r.has(ObjectFlags.reported)
                && r.bits & ObjectRecord.newDuringScan == 0
            {
                s.records[i].set(ObjectFlags.reported)
                n += 1
                if verbose { items.append(s.reportItem(UInt32(i), cpu: cpu, hz: hz)) }
            }
        }) else { return }
        result.newLeaks = n
        if verbose && !items.isEmpty {
            let ctx: any ReportContext = engine.configuration.logContext ?? NoReportContext()
            for e in Kmemleak.readContents(items, memory: memory) {
                for line in Kmemleak.verboseLines(e, context: ctx) { engine.configuration.log(line) }
            }
        }
        if n > 0 {
            let line = Kmemleak.newLeaksLine(n, controlFilePath: engine.configuration.controlFilePath)
            let logIt = engine.configuration.logNewLeaks
            engine.withState { s in
                s.foundLeaks = true
                if logIt { s.logs.append(line) }
            }
        }
    }
}

extension Kmemleak {
    /// kmemleak_scan (KMEMLEAK-SPEC §2.4), synchronously, with `now` (CLOCK_BOOTTIME ns) as the scan start
    /// (`jiffies_last_scan`, against which the minimum age is measured).
    ///
    /// Steps: whiten every object and seed the gray list with gray ones; scan the merged root regions;
    /// scan_gray_list (smallest id first, may add); checksum pass (white objects whose crc32_le changed become gray
    /// for this scan and are appended); scan_gray_list again; report: every unreferenced (white, allocated,
    /// at least `minimumAge` old at `now`) object not yet REPORTED becomes REPORTED, and the
    /// "N new suspected memory leaks" line is logged. Every word is looked up as a plain pointer and as a
    /// per-CPU handle.
    ///
    /// Confirmation passes (only when `configuration.confirmationPasses > 0`, not in the kernel): if there are
    /// candidates that would be newly reported, each pass re-reads the roots and every gray object (not
    /// NO_SCAN) afresh, looking only for references to the candidates; a candidate whose references reach
    /// its min_count becomes gray and its contents are scanned in the same pass (sparing what it points to).
    /// Candidates found in any pass are not reported by this scan. This absorbs pointers that a live process
    /// moved while the main pass was reading. In these passes a reference counts only if it points into a
    /// candidate (no excess_ref forwarding), and counts start from 0 in every pass.
    ///
    /// Reading: ranges are cut into pieces of at most 512 KiB; when a piece reads short, the rest of its
    /// range (object, CPU copy, scan area or root) is treated as absent for this scan.
    ///
    /// Objects registered while this scan runs (after its prepare step reached their slot) are not reported
    /// by it, whatever their creation time: the scan may already have passed their references (the daemon
    /// adopts old objects; the kernel only ever creates young ones).
    ///
    /// `shouldStop` is checked before every batch and every lock hold; when it returns true (or the detector
    /// is disabled meanwhile) the scan ends with `interrupted == true` and reports nothing.
    /// Memory is read in batches (<= 1024 ranges / 512 KiB per `MemoryReader.read` call; scan_gray_list's
    /// batches, with `readsGrayWindows`, as windows around their ranges, up to 1 MiB more); a range read short
    /// is scanned (and checksummed) as far as it was read.
    public func scan<M: MemoryReader>(now: UInt64, memory: M, shouldStop: () -> Bool = { false },
                                      confirmation: ConfirmationHooks? = nil) -> ScanResult {
        scanMutex.withLock { _ in
            withoutActuallyEscaping(shouldStop) { stop in
                var sc = Scanner(engine: self, memory: memory, stop: stop)
                sc.hooks = confirmation
                defer { sc.deallocate() }
                return sc.run(now: now)
            }
        }
    }
}
