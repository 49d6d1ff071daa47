import Foundation
import Glibc
import KmemleakEngine
@testable import KmemleakPrometheus
import KmemleakReports
import KmemleakTestSupport
import Testing

@Suite struct PrometheusExpositionTests {
    static let clients = [
        ClientFigures(processID: 100, comm: "leaky", trackedObjects: 5000, trackedBytes: 1 << 20),
        ClientFigures(processID: 200, comm: "leaky", trackedObjects: 10, trackedBytes: 320),
        ClientFigures(processID: 300, comm: "quiet", trackedObjects: 3, trackedBytes: 96),
    ]

    static func daemon() -> DaemonMetrics {
        let daemon = DaemonMetrics()
        daemon.scanFinished(after: .milliseconds(30))
        daemon.scanFinished(after: .milliseconds(700))
        daemon.count(.clientDropped)
        return daemon
    }

    /// The text with each family's lines kept together, families in name order and series sorted
    /// within their family (the registry's order is a dictionary's, not fixed).
    static func canonical(_ bytes: [UInt8]) -> String {
        var families: [(header: [String], series: [String])] = []
        for line in String(decoding: bytes, as: UTF8.self).split(separator: "\n", omittingEmptySubsequences: false) {
            if line.hasPrefix("# HELP ") || families.isEmpty {
                families.append(([String(line)], []))
            } else if line.hasPrefix("# ") {
                families[families.count - 1].header.append(String(line))
            } else if !line.isEmpty {
                families[families.count - 1].series.append(String(line))
            }
        }
        return families.sorted { $0.header[0] < $1.header[0] }
            .map { ($0.header + $0.series.sorted()).joined(separator: "\n") }.joined(separator: "\n") + "\n"
    }

    @Test func golden() throws {
        let text = Self.canonical(PrometheusExposition.render(
            snapshot: Fixture.threeSites(), clients: Self.clients, daemon: Self.daemon()))
        #expect(text == #"""
        # HELP kmemleak_clients Client processes the daemon has adopted.
        # TYPE kmemleak_clients gauge
        kmemleak_clients 3.0
        # HELP kmemleak_errors_total Failures of the daemon: dropped clients, failed adoptions, incomplete scans.
        # TYPE kmemleak_errors_total counter
        kmemleak_errors_total{kind="adoption_failed"} 0
        kmemleak_errors_total{kind="client_dropped"} 1
        kmemleak_errors_total{kind="scan_incomplete"} 0
        # HELP kmemleak_scan_duration_seconds Wall time of one scan of every client.
        # TYPE kmemleak_scan_duration_seconds histogram
        kmemleak_scan_duration_seconds_bucket{le="+Inf"} 2
        kmemleak_scan_duration_seconds_bucket{le="0.01"} 0
        kmemleak_scan_duration_seconds_bucket{le="0.05"} 1
        kmemleak_scan_duration_seconds_bucket{le="0.1"} 1
        kmemleak_scan_duration_seconds_bucket{le="0.25"} 1
        kmemleak_scan_duration_seconds_bucket{le="0.5"} 1
        kmemleak_scan_duration_seconds_bucket{le="1.0"} 2
        kmemleak_scan_duration_seconds_bucket{le="10.0"} 2
        kmemleak_scan_duration_seconds_bucket{le="2.5"} 2
        kmemleak_scan_duration_seconds_bucket{le="30.0"} 2
        kmemleak_scan_duration_seconds_bucket{le="5.0"} 2
        kmemleak_scan_duration_seconds_bucket{le="60.0"} 2
        kmemleak_scan_duration_seconds_count 2
        kmemleak_scan_duration_seconds_sum 0.73
        # HELP kmemleak_scans_total Scans of every client (periodic and echo scan).
        # TYPE kmemleak_scans_total counter
        kmemleak_scans_total 2
        # HELP kmemleak_suppressed_leak_bytes Bytes of those objects, per suppression pattern.
        # TYPE kmemleak_suppressed_leak_bytes gauge
        kmemleak_suppressed_leak_bytes{pattern="libfoo.so"} 700.0
        # HELP kmemleak_suppressed_leaks Unreferenced objects hidden by a suppression (leak:PATTERN).
        # TYPE kmemleak_suppressed_leaks gauge
        kmemleak_suppressed_leaks{pattern="libfoo.so"} 7.0
        # HELP kmemleak_suspected_leak_bytes Bytes of those objects, per client process.
        # TYPE kmemleak_suspected_leak_bytes gauge
        kmemleak_suspected_leak_bytes{comm="leaky",pid="100"} 36396.0
        kmemleak_suspected_leak_bytes{comm="leaky",pid="200"} 32.0
        kmemleak_suspected_leak_bytes{comm="quiet",pid="300"} 0.0
        # HELP kmemleak_suspected_leaks Unreferenced objects reported and not suppressed, per client process.
        # TYPE kmemleak_suspected_leaks gauge
        kmemleak_suspected_leaks{comm="leaky",pid="100"} 1003.0
        kmemleak_suspected_leaks{comm="leaky",pid="200"} 1.0
        kmemleak_suspected_leaks{comm="quiet",pid="300"} 0.0
        # HELP kmemleak_tracked_bytes Bytes of the tracked allocations, per client process.
        # TYPE kmemleak_tracked_bytes gauge
        kmemleak_tracked_bytes{comm="leaky",pid="100"} 1048576.0
        kmemleak_tracked_bytes{comm="leaky",pid="200"} 320.0
        kmemleak_tracked_bytes{comm="quiet",pid="300"} 96.0
        # HELP kmemleak_tracked_objects Live allocations the daemon tracks, per client process.
        # TYPE kmemleak_tracked_objects gauge
        kmemleak_tracked_objects{comm="leaky",pid="100"} 5000.0
        kmemleak_tracked_objects{comm="leaky",pid="200"} 10.0
        kmemleak_tracked_objects{comm="quiet",pid="300"} 3.0

        """#)
    }

    @Test func aClientDroppedSinceKeepsItsLeaksAndNoClientMeansNoPerClientSeries() {
        let leaks = PrometheusExposition.perClient(snapshot: Fixture.threeSites(), clients: [])
        #expect(leaks.map(\.processID) == [100, 200])
        #expect(leaks.map(\.leaks) == [1003, 1] && leaks.map(\.trackedObjects) == [0, 0])
        let empty = String(decoding: PrometheusExposition.render(snapshot: LeakSnapshot(), clients: [], daemon: DaemonMetrics()),
                           as: UTF8.self)
        #expect(empty.contains("kmemleak_clients 0.0\n") && !empty.contains("kmemleak_suspected_leaks"))
    }

    /// comm strings a client may set (prctl PR_SET_NAME, 15 bytes; the table's copy is any bytes).
    static let hostileComms = [
        #"a"b"#, #"back\slash"#, "new\nline", "}{,=", "", " ", "tab\tcr\r", "\u{1}\u{7f}", "\u{FFFD}\u{FFFD}",
        "ünï☃", "# TYPE x", "x\" 1\nevil 2", "\\\"", "\u{2028}\u{202E}",
    ]

    static func hostileText() -> [UInt8] {
        var leaks: [Leak] = []
        var clients: [ClientFigures] = []
        for (i, comm) in hostileComms.enumerated() {
            let pid = Int32(1000 + i)
            clients.append(ClientFigures(processID: pid, comm: comm, trackedObjects: i, trackedBytes: UInt64(i) * 8))
            leaks.append(Fixture.leak(Address(0x1000 * (i + 1)), size: 16, pid: pid, comm: comm, stack: Fixture.stackA))
        }
        let suppressed = [SuppressionCount(pattern: #"^evil"\n*$"#, leaks: 1, bytes: 2),
                          SuppressionCount(pattern: "new\nline\\", leaks: 3, bytes: 4)]
        return PrometheusExposition.render(snapshot: LeakSnapshot(leaks: leaks, suppressed: suppressed),
                                           clients: clients, daemon: daemon())
    }

    @Test func hostileCommsAreEscapedAndNeverBreakALine() {
        let text = String(decoding: Self.hostileText(), as: UTF8.self)
        let series = text.split(separator: "\n").filter { $0.hasPrefix("kmemleak_suspected_leaks{") }
        #expect(series.count == Self.hostileComms.count)
        #expect(text.contains(#"kmemleak_suspected_leaks{comm="a\"b",pid="1000"} 1.0"#))
        #expect(text.contains(#"{comm="back\\slash",pid="1001"}"#))
        #expect(text.contains(#"{comm="new\nline",pid="1002"}"#))
        #expect(text.contains(#"{comm="x\" 1\nevil 2",pid="1011"}"#))
        #expect(!text.contains("\nevil 2"))
        #expect(text.contains(#"kmemleak_suppressed_leaks{pattern="^evil\"\\n*$"} 1.0"#))
    }

    // MARK: - promtool (Debian prometheus)

    static func check(_ bytes: [UInt8]) throws -> (code: Int32?, output: String) {
        let scratch = try ScratchDirectory()
        defer { scratch.remove() }
        return try Promtool.checkMetrics(try scratch.write("kmemleak.prom", bytes), in: scratch.path)
    }

    @Test(.enabled(if: Promtool.isInstalled, "promtool (Debian prometheus) is not installed"))
    func promtoolChecksTheMetrics() throws {
        // The check itself: a comm written unescaped breaks the file, and promtool says so.
        let broken = try Self.check(Array("# TYPE kmemleak_clients gauge\nkmemleak_clients{comm=\"a\"b\"} 1\n".utf8))
        #expect(broken.code != 0 && !broken.output.isEmpty, "\(broken.output)")
        let plain = try Self.check(PrometheusExposition.render(
            snapshot: Fixture.threeSites(), clients: Self.clients, daemon: Self.daemon()))
        #expect(plain.code == 0 && plain.output.isEmpty, "\(plain.output)")
        let hostile = try Self.check(Self.hostileText())
        #expect(hostile.code == 0 && hostile.output.isEmpty, "\(hostile.output)")
    }
}
