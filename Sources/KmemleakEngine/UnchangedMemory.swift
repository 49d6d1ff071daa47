// The confirmation pass's written-ranges filter (issue 10 goal 2): with the client frozen, re-read only
// what may have changed since before the main pass, not every root and every referenced object.
//
// Why that is sound: let T be a moment before the main pass began. A word in memory not written since T
// held the same value all through the main pass, so the main pass saw it wherever it read it. Consider
// at the freeze a chain of pointer words from a root to a candidate. By induction along it, each object
// on it was either counted referenced by the main pass, which read it whole (a gray object), or is found
// by the confirmation pass: its words in written memory, in registers or on stacks are read frozen, and
// a candidate found referenced is read whole (the confirmation queue). So the candidate is reached. A
// pointer moved from a slot the main pass had not read yet to one it had read already dirtied the
// destination: it is re-read. What the filter may not skip: objects registered or turned gray since the
// main pass (never read by it), per-CPU objects and scan areas (not found by address), and candidates
// counted referenced somewhere by the main pass (min_count > 1: those counts are not re-established
// from clean memory), for which the whole confirmation falls back to reading everything.

/// Memory whose contents did not change since before a scan's main pass (the caller vouches for it:
/// pages not written since they were write-protected, the client frozen now). Sorted, disjoint.
public struct UnchangedMemory: Sendable, Equatable {
    public private(set) var ranges: [MemoryRange]

    /// `ranges` in any order, overlapping or not; empty ones are dropped.
    public init(_ ranges: [MemoryRange]) {
        let merged = EngineState.merge(
            ranges.filter { $0.length > 0 }.map { RootRegion(start: $0.address, length: UInt64($0.length), kind: .data) },
            into: [])
        self.ranges = merged.map { MemoryRange(address: $0.start, length: Int(min($0.end - $0.start, UInt64(Int.max)))) }
    }

    static func end(_ r: MemoryRange) -> UInt64 {
        let (e, o) = r.address.addingReportingOverflow(UInt64(max(0, r.length)))
        return o ? .max : e
    }

    /// Index of the first range that ends after `address`.
    func firstRange(endingAfter address: UInt64) -> Int {
        var lo = 0, hi = ranges.count
        while lo < hi {
            let mid = (lo + hi) / 2
            if Self.end(ranges[mid]) <= address { lo = mid + 1 } else { hi = mid }
        }
        return lo
    }

    /// The parts of [start, end) outside every range, in address order.
    func changedParts(_ start: UInt64, _ end: UInt64) -> [(start: UInt64, end: UInt64)] {
        var out: [(start: UInt64, end: UInt64)] = []
        var at = start
        var k = firstRange(endingAfter: start)
        while at < end {
            guard k < ranges.count, ranges[k].address < end else {
                out.append((at, end))
                break
            }
            if ranges[k].address > at { out.append((at, ranges[k].address)) }
            at = max(at, Self.end(ranges[k]))
            k += 1
        }
        return out
    }
}

extension EngineState {
    @inline(__always) static func bit(_ bits: [UInt64], _ i: Int) -> Bool {
        i / 64 < bits.count && bits[i / 64] & (1 << UInt64(i % 64)) != 0
    }

    /// Whether all the object's scanned ranges lie in its own extent in the plain tree (not per-CPU
    /// copies, not scan areas, which may lie anywhere): the filter then finds it by address.
    func foundByAddress(_ id: UInt32) -> Bool {
        let r = records[Int(id)]
        if r.has(ObjectFlags.percpu) { return false }
        if r.bits & ObjectRecord.hasExtras != 0, let e = extras[id], !e.areas.isEmpty { return false }
        return true
    }

    /// `spans` without their unchanged parts (each part keeps its span's id).
    static func changedParts(of spans: [Span], _ unchanged: UnchangedMemory) -> [Span] {
        var out: [Span] = []
        for s in spans {
            let end = s.start.addingReportingOverflow(s.remaining).overflow ? UInt64.max : s.start + s.remaining
            for p in unchanged.changedParts(s.start, end) { addSpan(s.id, p.start, p.end - p.start, into: &out) }
        }
        return out
    }

    /// The changed parts of the plain objects that `include` accepts, found by address from the gaps
    /// between the unchanged ranges (so the cost follows what changed, not the number of objects).
    func changedObjectSpans(_ unchanged: UnchangedMemory, include: (UInt32) -> Bool) -> [Span] {
        guard plain.minAddr < plain.maxAddr else { return [] }
        var gaps = unchanged.changedParts(plain.minAddr, plain.maxAddr)
        gaps.reverse() // consumed from the end
        var out: [Span] = []
        var expanded: [Span] = []
        while let gap = gaps.popLast() {
            // The object at or before the gap's start (objects never overlap in the tree), then its
            // successors up to the gap's end.
            var at = plain.predecessor(gap.start)
            if at == nil, let first = plain.successor(-1, -1) { at = plain.predecessor(records[Int(first)].pointer) }
            while let h = at {
                let r = records[Int(h.id)]
                if r.pointer >= gap.end { break }
                if include(h.id) {
                    expanded.removeAll(keepingCapacity: true)
                    expandForScan(h.id, into: &expanded)
                    for s in expanded {
                        let end = s.start.addingReportingOverflow(s.remaining).overflow ? UInt64.max : s.start + s.remaining
                        let lo = max(s.start, gap.start), hi = min(end, gap.end)
                        if lo < hi { Self.addSpan(s.id, lo, hi - lo, into: &out) }
                    }
                }
                guard let next = plain.successor(h.b, h.pos) else { break }
                at = plain.predecessor(records[Int(next)].pointer)
            }
        }
        return out
    }
}
