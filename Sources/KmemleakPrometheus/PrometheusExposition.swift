// MOUNTPOINT/kmemleak.prom: the Prometheus text exposition format (version 0.0.4), so that
// node_exporter's textfile collector can read the mount directly. No stack labels: a backtrace
// per series would be unbounded cardinality; stacks are the pprof view's job.
import KmemleakReports
import Prometheus

/// What the daemon knows of one adopted client when the view is opened.
public struct ClientFigures: Sendable, Equatable {
    /// The client process (its table's pid).
    public var processID: Int32
    /// The client's comm as it set it (unescaped: the exposition escapes label values).
    public var comm: String
    /// Objects the daemon tracks for the client, and their bytes.
    public var trackedObjects: Int
    public var trackedBytes: UInt64

    public init(processID: Int32, comm: String, trackedObjects: Int, trackedBytes: UInt64) {
        self.processID = processID
        self.comm = comm
        self.trackedObjects = trackedObjects
        self.trackedBytes = trackedBytes
    }
}

/// The daemon's failures, as the `kind` label of `kmemleak_errors_total`.
public enum DaemonErrorKind: String, Sendable, CaseIterable {
    /// A client's table or memory became unusable (invalid table, over budget, roots unreadable) and
    /// the client was dropped; exits are not errors.
    case clientDropped = "client_dropped"
    /// A client announced itself (or was found in /proc) but its table could not be adopted.
    case adoptionFailed = "adoption_failed"
    /// A client's scan was cut short or degraded (time budget, freeze refused, memory unmappable); the
    /// client stays and its candidates wait for the next scan.
    case scanIncomplete = "scan_incomplete"
}

/// The daemon's own instruments, updated as scans and failures happen and kept for the daemon's
/// lifetime (counters and a histogram cannot be rebuilt from a snapshot).
public final class DaemonMetrics: Sendable {
    /// Upper bounds of the scan-duration buckets: a quiet client scans in milliseconds, a 1M-object
    /// heap in seconds, the per-client budget defaults to 30 s.
    public static let scanDurationBuckets: [Duration] = [
        .milliseconds(10), .milliseconds(50), .milliseconds(100), .milliseconds(250), .milliseconds(500),
        .seconds(1), .milliseconds(2500), .seconds(5), .seconds(10), .seconds(30), .seconds(60),
    ]

    let registry = PrometheusCollectorRegistry()
    private let scans: Counter
    private let scanDuration: DurationHistogram
    private let errors: [DaemonErrorKind: Counter]

    public init() {
        scans = registry.makeCounter(
            descriptor: kmemleakMetric("scans", unit: "total", help: "Scans of every client (periodic and echo scan)."),
            labels: [])
        scanDuration = registry.makeDurationHistogram(
            descriptor: kmemleakMetric("scan_duration", unit: "seconds", help: "Wall time of one scan of every client."),
            labels: [], buckets: Self.scanDurationBuckets)
        var errors: [DaemonErrorKind: Counter] = [:]
        for kind in DaemonErrorKind.allCases {
            // Every kind from the start, at 0: a rate() over a series that appears late misses its first.
            errors[kind] = registry.makeCounter(
                descriptor: kmemleakMetric(
                    "errors", unit: "total",
                    help: "Failures of the daemon: dropped clients, failed adoptions, incomplete scans."),
                labels: [("kind", kind.rawValue)])
        }
        self.errors = errors
    }

    public func scanFinished(after duration: Duration) {
        scans.increment()
        scanDuration.record(duration)
    }

    public func count(_ kind: DaemonErrorKind) {
        errors[kind]?.increment()
    }

    func emit(into buffer: inout [UInt8]) { registry.emit(into: &buffer) }
}

/// `kmemleak_NAME[_UNIT]`: base units (`seconds`, `bytes`) and `total` for counters, as Prometheus names them.
func kmemleakMetric(_ name: String, unit: String, help: String) -> MetricNameDescriptor {
    MetricNameDescriptor(namespace: "kmemleak", metricName: name, unitName: unit, helpText: help)
}

/// Renders kmemleak.prom.
public enum PrometheusExposition {
    /// The file's bytes: the per-client and suppression gauges of this snapshot, then the daemon's
    /// instruments. Each metric family is written once with its HELP and TYPE lines; label values
    /// (comm, suppression patterns) are escaped as the format requires (backslash, quote, line feed).
    /// Families and series come in the registry's order, which is not sorted (the format needs none).
    /// - Parameters:
    ///   - snapshot: the leaks a reader of the views sees (reported, unsuppressed) and the suppressed counts.
    ///   - clients: every adopted client the reader may see, also those without leaks.
    public static func render(snapshot: LeakSnapshot, clients: [ClientFigures], daemon: DaemonMetrics) -> [UInt8] {
        // A registry per rendering: a snapshot's series are exactly its clients and patterns, never
        // those of clients that exited since an earlier read.
        let registry = PrometheusCollectorRegistry()
        func gauge(_ name: String, unit: String = "", _ help: String, _ labels: [(String, String)]) -> Gauge {
            registry.makeGauge(descriptor: kmemleakMetric(name, unit: unit, help: help), labels: labels)
        }
        gauge("clients", "Client processes the daemon has adopted.", []).set(Int64(clients.count))
        // increment, not set: two series with the same labels (a comm and pid seen twice) add up.
        for client in perClient(snapshot: snapshot, clients: clients) {
            let labels = [("comm", client.comm), ("pid", "\(client.processID)")]
            gauge("suspected_leaks", "Unreferenced objects reported and not suppressed, per client process.", labels)
                .increment(by: Double(client.leaks))
            gauge("suspected_leak", unit: "bytes", "Bytes of those objects, per client process.", labels)
                .increment(by: Double(client.leakBytes))
            gauge("tracked_objects", "Live allocations the daemon tracks, per client process.", labels)
                .increment(by: Double(client.trackedObjects))
            gauge("tracked", unit: "bytes", "Bytes of the tracked allocations, per client process.", labels)
                .increment(by: Double(client.trackedBytes))
        }
        for suppression in snapshot.suppressed {
            let labels = [("pattern", suppression.pattern)]
            gauge("suppressed_leaks", "Unreferenced objects hidden by a suppression (leak:PATTERN).", labels)
                .increment(by: Double(suppression.leaks))
            gauge("suppressed_leak", unit: "bytes", "Bytes of those objects, per suppression pattern.", labels)
                .increment(by: Double(suppression.bytes))
        }
        var buffer: [UInt8] = []
        buffer.reserveCapacity(512 * (clients.count + snapshot.suppressed.count) + 4096)
        registry.emit(into: &buffer)
        daemon.emit(into: &buffer)
        return buffer
    }

    struct ClientSeries {
        var processID: Int32
        var comm: String
        var trackedObjects = 0
        var trackedBytes: UInt64 = 0
        var leaks = 0
        var leakBytes: UInt64 = 0
    }

    /// One series per client: the adopted clients with their leaks; a pid with leaks but no longer in
    /// `clients` (dropped since the snapshot) keeps its leaks under the comm its leaks carry.
    static func perClient(snapshot: LeakSnapshot, clients: [ClientFigures]) -> [ClientSeries] {
        var series: [ClientSeries] = []
        var index: [Int32: Int] = [:]
        for client in clients {
            if let i = index[client.processID] {
                series[i].trackedObjects &+= client.trackedObjects
                series[i].trackedBytes &+= client.trackedBytes
                continue
            }
            index[client.processID] = series.count
            series.append(ClientSeries(processID: client.processID, comm: client.comm,
                                       trackedObjects: client.trackedObjects, trackedBytes: client.trackedBytes))
        }
        for leak in snapshot.leaks {
            let i: Int
            if let known = index[leak.processID] {
                i = known
            } else {
                i = series.count
                index[leak.processID] = i
                series.append(ClientSeries(processID: leak.processID, comm: leak.comm))
            }
            series[i].leaks &+= 1
            series[i].leakBytes &+= leak.entry.size
        }
        return series
    }
}
