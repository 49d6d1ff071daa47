// LeakSanitizer's direct/indirect classification of reported leaks (lsan_common.cpp's
// ClassifyAllChunks / MarkIndirectChunks), over the objects of one engine.

extension Kmemleak {
    /// Which of `leaks` (one engine's report snapshot) are indirect: pointed to by another leak. A leak
    /// is indirect when some aligned word of another leak's contents points into it (interior pointers
    /// count, as in the engine's scan; a pointer to itself does not), unless nothing outside its own
    /// strongly connected component of the "points to" graph points to it: then one member of that
    /// component, the oldest (lowest `seq`, then lowest pointer), is direct, so that a leaked cycle has
    /// at least one direct member. Returns one flag per leak, in the order given.
    ///
    /// Per-CPU leaks (handles, not addresses) are neither sources nor targets: they are always direct.
    /// Contents are read now through `memory`, in batches into one bounded buffer (``leakGraphBufferSize``),
    /// so a leak of any size costs no more memory than that; a word that cannot be read points nowhere.
    public static func indirectLeaks<M: MemoryReader>(among leaks: [ReportEntry], memory: M) -> [Bool] {
        LeakGraph(leaks, memory: memory).indirectFlags(leaks)
    }

    /// Bytes of leak contents read per batch by ``indirectLeaks(among:memory:)``.
    public static let leakGraphBufferSize = 1 << 20
}

/// The "points to" graph among one engine's leaks (see ``Kmemleak/indirectLeaks(among:memory:)`` for
/// what points where), in compressed adjacency form: built once per snapshot, it answers both the
/// classification and which leaks only suppressed leaks reach.
public struct LeakGraph: Sendable {
    /// Edges of leak `i`: `targets[edgeStart[i] ..< edgeStart[i + 1]]`.
    private(set) var edgeStart: [Int] = []
    private(set) var targets: [Int32] = []

    /// Reads the contents of `leaks` (in batches into one buffer of ``Kmemleak/leakGraphBufferSize``).
    public init<M: MemoryReader>(_ leaks: [ReportEntry], memory: M) {
        // The index for lookups: the plain leaks' intervals sorted by start (leaks never overlap within
        // one engine; if stale data made them, the predecessor rule still picks one).
        let order = leaks.indices.filter { !leaks[$0].isPercpu }.sorted { leaks[$0].pointer < leaks[$1].pointer }
        let starts = order.map { leaks[$0].pointer }
        var edgesOf = [[Int32]](repeating: [], count: leaks.count)

        func target(of word: UInt64) -> Int? {
            // Last start <= word.
            var low = 0, high = starts.count
            while low < high {
                let mid = (low + high) / 2
                if starts[mid] <= word { low = mid + 1 } else { high = mid }
            }
            guard low > 0 else { return nil }
            let index = order[low - 1]
            return word &- leaks[index].pointer < max(leaks[index].size, 1) ? index : nil
        }

        // Chunks of at most the buffer's size; batches of whole chunks filling the buffer.
        let capacity = Kmemleak.leakGraphBufferSize
        var pending: [(leak: Int, range: MemoryRange)] = []
        var pendingBytes = 0
        let buffer = UnsafeMutableRawBufferPointer.allocate(byteCount: capacity, alignment: 8)
        defer { buffer.deallocate() }

        func flush() {
            guard !pending.isEmpty else { return }
            let ranges = pending.map(\.range)
            var got = [Int](repeating: 0, count: ranges.count)
            ranges.withUnsafeBufferPointer { r in
                got.withUnsafeMutableBufferPointer { g in memory.read(r, into: buffer, bytesRead: g) }
            }
            var offset = 0
            for (k, item) in pending.enumerated() {
                let length = item.range.length
                let readable = max(0, min(got[k], length))
                // Chunks start 8-aligned (see below), so words are aligned in the client too.
                var word = 0
                while word + 8 <= readable {
                    let value = buffer.loadUnaligned(fromByteOffset: offset + word, as: UInt64.self)
                    if let t = target(of: value), t != item.leak {
                        let edges = edgesOf[item.leak]
                        if edges.last != Int32(t) { edgesOf[item.leak].append(Int32(t)) }
                    }
                    word += 8
                }
                offset += length
            }
            pending.removeAll(keepingCapacity: true)
            pendingBytes = 0
        }

        for index in order {
            let leak = leaks[index]
            // The aligned words inside the object, as the engine's scan_block takes them.
            let first = (leak.pointer &+ 7) & ~7
            let end = leak.pointer &+ leak.size
            guard first >= leak.pointer, end > first, end - first >= 8 else { continue }
            var address = first
            var remaining = (end - first) & ~7
            while remaining > 0 {
                let length = Int(min(remaining, UInt64(capacity)))
                if pendingBytes + length > capacity || pending.count >= maxBatchRanges { flush() }
                pending.append((index, MemoryRange(address: address, length: length)))
                pendingBytes += length
                address &+= UInt64(length)
                remaining -= UInt64(length)
            }
        }
        flush()

        edgeStart.reserveCapacity(leaks.count + 1)
        edgeStart.append(0)
        for edges in edgesOf {
            // Duplicates only cost time in the walk; sorted unique keeps the graph small.
            let unique = Set(edges).sorted()
            targets.append(contentsOf: unique)
            edgeStart.append(targets.count)
        }
    }

    /// Strongly connected components (Tarjan, iterative: a chain of 100k leaks must not overflow the
    /// stack). Returns each node's component number.
    func components() -> [Int] {
        let n = edgeStart.count - 1
        var index = [Int](repeating: -1, count: n)
        var lowLink = [Int](repeating: 0, count: n)
        var onStack = [Bool](repeating: false, count: n)
        var component = [Int](repeating: -1, count: n)
        var stack: [Int] = []
        var nextIndex = 0
        var componentCount = 0
        // (node, next edge to look at)
        var work: [(node: Int, edge: Int)] = []
        for root in 0..<n where index[root] < 0 {
            work.append((root, edgeStart[root]))
            index[root] = nextIndex; lowLink[root] = nextIndex; nextIndex += 1
            stack.append(root); onStack[root] = true
            while let top = work.last {
                let v = top.node
                if top.edge < edgeStart[v + 1] {
                    work[work.count - 1].edge += 1
                    let w = Int(targets[top.edge])
                    if index[w] < 0 {
                        index[w] = nextIndex; lowLink[w] = nextIndex; nextIndex += 1
                        stack.append(w); onStack[w] = true
                        work.append((w, edgeStart[w]))
                    } else if onStack[w] {
                        lowLink[v] = min(lowLink[v], index[w])
                    }
                    continue
                }
                work.removeLast()
                if let parent = work.last { lowLink[parent.node] = min(lowLink[parent.node], lowLink[v]) }
                if lowLink[v] == index[v] {
                    while let w = stack.popLast() {
                        onStack[w] = false
                        component[w] = componentCount
                        if w == v { break }
                    }
                    componentCount += 1
                }
            }
        }
        return component
    }

    /// Everything reachable from `sources` (not the sources themselves unless reached), as the
    /// index of the first source, in the order given, that reaches it; nil for the unreached. A
    /// breadth-first walk per source, each leak visited once.
    public func reached(from sources: [Int]) -> [Int?] {
        let n = edgeStart.count - 1
        var firstSource = [Int?](repeating: nil, count: n)
        var visited = [Bool](repeating: false, count: n)
        for source in sources where source >= 0 && source < n { visited[source] = true }
        for (number, source) in sources.enumerated() where source >= 0 && source < n {
            var queue = [source]
            var head = 0
            while head < queue.count {
                let v = queue[head]
                head += 1
                for e in edgeStart[v]..<edgeStart[v + 1] {
                    let w = Int(targets[e])
                    if visited[w] { continue }
                    visited[w] = true
                    firstSource[w] = number
                    queue.append(w)
                }
            }
        }
        return firstSource
    }

    /// ``Kmemleak/indirectLeaks(among:memory:)`` over this graph (`leaks` as given to `init`).
    public func indirectFlags(_ leaks: [ReportEntry]) -> [Bool] {
        let n = leaks.count
        guard n > 0 else { return [] }
        let component = components()
        let componentCount = (component.max() ?? -1) + 1
        var pointedFromOutside = [Bool](repeating: false, count: componentCount)
        for v in 0..<n {
            for e in edgeStart[v]..<edgeStart[v + 1] {
                let w = Int(targets[e])
                if component[w] != component[v] { pointedFromOutside[component[w]] = true }
            }
        }
        // The oldest member of each component that nothing outside points to stays direct.
        var oldest = [Int](repeating: -1, count: componentCount)
        for v in 0..<n where !pointedFromOutside[component[v]] {
            let c = component[v]
            if oldest[c] < 0 || (leaks[v].seq, leaks[v].pointer) < (leaks[oldest[c]].seq, leaks[oldest[c]].pointer) {
                oldest[c] = v
            }
        }
        return (0..<n).map { v in
            let c = component[v]
            return pointedFromOutside[c] || oldest[c] != v
        }
    }
}
