// The mount's views: one case per file next to MOUNTPOINT/kmemleak. Adding a view is one case here
// (its file name) and its arm in `render` (or in the daemon's `openView`, for a view that needs more
// than the leaks); the FUSE front lists, stats and opens every case.

/// A read-only file of the mount rendered from a ``LeakSnapshot``.
public enum LeakView: String, CaseIterable, Sendable {
    /// One block per distinct backtrace, largest total size first (``SummaryView``).
    case summary = "kmemleak.summary"
    /// NDJSON, one object per leak (``JSONView``).
    case json = "kmemleak.json"
    /// A gzip-compressed pprof profile (KmemleakPprof).
    case pprof = "kmemleak.pb.gz"
    /// The Prometheus text exposition (KmemleakPrometheus).
    case prometheus = "kmemleak.prom"

    /// The file's name in the mount (fixed: checks outside the project rely on them).
    public var fileName: String { rawValue }

    /// Renders the view of one snapshot. Grouping and sorting happen here, once per open file;
    /// the text itself is produced chunk by chunk as the file is read. Nil for the views that need more
    /// than the leaks: pprof and Prometheus live in modules of their own (protobuf and zlib, a Prometheus
    /// registry) and need the time and the clients' and the daemon's figures, so the daemon renders them.
    public func render(_ snapshot: LeakSnapshot) -> ViewOutput? {
        switch self {
        case .summary: SummaryView(snapshot).output
        case .json: JSONView(snapshot).output
        case .pprof, .prometheus: nil
        }
    }
}

/// What one open view file reads.
public enum ViewOutput: Sendable {
    /// The whole file, made at open (for formats that cannot stream, such as a gzip-compressed profile).
    case bytes([UInt8])
    /// `count` chunks, concatenated in order; chunk `i` is rendered when a read reaches it (a 100k-leak
    /// view never exists as one string). `render` must give the same bytes each time it is called.
    case chunks(count: Int, render: @Sendable (Int) -> [UInt8])

    /// Every byte (tests, benchmarks).
    public var allBytes: [UInt8] {
        switch self {
        case .bytes(let bytes): return bytes
        case .chunks(let count, let render):
            var out: [UInt8] = []
            for i in 0..<count { out.append(contentsOf: render(i)) }
            return out
        }
    }
}
