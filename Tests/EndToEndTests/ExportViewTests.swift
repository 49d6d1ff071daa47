// kmemleak.pb.gz and kmemleak.prom on a real mount, read by the tools a fleet runs: go tool pprof,
// promtool, and prometheus-node-exporter's textfile collector pointed at the mount itself.
import Foundation
import Glibc
import Testing

private let threeSitesPath = clientPath("three-sites")
private let nodeExporter = "/usr/bin/prometheus-node-exporter"

/// node_exporter's /metrics over HTTP/1.0: the body comes whole, not in HTTP/1.1's chunks (whose size
/// lines would cut sample lines), and the server closes the connection after it.
private func scrapeMetrics(port: UInt16) throws -> String {
    let connection = try LoopbackConnection(port: port)
    try connection.send("GET /metrics HTTP/1.0\r\nHost: 127.0.0.1\r\n\r\n")
    return try connection.receiveAll(limit: 16 << 20)
}

/// The value of the one sample line that starts with `series` (name and labels exactly).
private func value(of series: String, in text: String) -> Double? {
    let lines = text.split(separator: "\n").filter { $0.hasPrefix(series + " ") }
    guard lines.count == 1 else { return nil }
    return Double(lines[0].dropFirst(series.count + 1))
}

/// three-sites under the shim (started as `path`, a link to it, whose name becomes its comm), its 1004
/// leaks (1000 + 2 + 2) reported by the mount next to `reported`, the leaks already there.
private func threeSitesReported(on d: Detection, as path: String = threeSitesPath,
                                next reported: Set<UInt64> = []) throws -> (ChildProcess, leaks: Set<UInt64>) {
    let client = try d.client(path)
    let leaks = printed(client, ["LEAK"])
    try #require(leaks.count == 1004)
    try #require(d.scanUntilReported(leaks.union(reported)), "report:\n\(d.report.prefix(4000))")
    return (client, leaks)
}

@Suite(.enabled(if: canMount, "needs root and /dev/fuse"))
struct ExportViewEndToEndTests {
    /// Three call sites, one of them 1000 times: go tool pprof lists each site with its objects and
    /// bytes, and the process's share by its pid label.
    @Test(.enabled(if: GoPprof.isInstalled, "go (Debian golang-go) is not installed"))
    func goToolPprofReadsTheMountsProfile() throws {
        let d = try Detection()
        defer { d.tearDown() }
        let (client, _) = try threeSitesReported(on: d)
        // A copy: pprof opens the file several times and looks for its binaries beside it.
        let work = try d.temp.makeDirectory("pprof")
        let profile = work + "/kmemleak.pb.gz"
        try Data(try readAll(d.mountpoint + "/kmemleak.pb.gz")).write(to: URL(fileURLWithPath: profile))

        let objects = try GoPprof.top(profile, ["-sample_index=inuse_objects"], in: work)
        #expect(objects["leak_loop_site"] == "1000", "\(objects)")
        #expect(objects["leak_pair_site"] == "2", "\(objects)")
        #expect(objects["leak_child_site"] == "2", "\(objects)")
        let space = try GoPprof.top(profile, ["-sample_index=inuse_space", "-unit=byte"], in: work)
        #expect(space["leak_loop_site"] == "24000B", "\(space)")
        #expect(space["leak_pair_site"] == "128B", "\(space)")
        #expect(space["leak_child_site"] == "64B", "\(space)")
        // String labels: a regexp (a bare number would select a numeric label's range).
        let mine = try GoPprof.top(profile, ["-sample_index=inuse_objects", "-tagfocus=pid=^\(client.pid)$"], in: work)
        #expect(mine["leak_loop_site"] == "1000", "\(mine)")
        let nobody = try GoPprof.top(profile, ["-sample_index=inuse_objects", "-tagfocus=comm=^nobody$"], in: work)
        #expect(nobody.isEmpty, "\(nobody)")
    }

    /// The metrics file: promtool accepts it, and its per-client values are the leaks' count and bytes.
    @Test(.enabled(if: Promtool.isInstalled, "promtool (Debian prometheus) is not installed"))
    func promtoolAcceptsTheMountsMetricsAndTheyMatchTheLeaks() throws {
        let d = try Detection()
        defer { d.tearDown() }
        let (client, _) = try threeSitesReported(on: d)
        let text = String(decoding: try readAll(d.mountpoint + "/kmemleak.prom"), as: UTF8.self)
        let labels = #"{comm="three-sites",pid="\#(client.pid)"}"#
        #expect(value(of: "kmemleak_suspected_leaks" + labels, in: text) == 1004, "\(text)")
        #expect(value(of: "kmemleak_suspected_leak_bytes" + labels, in: text) == 24192, "\(text)")
        #expect((value(of: "kmemleak_tracked_objects" + labels, in: text) ?? 0) >= 1004, "\(text)")
        #expect((value(of: "kmemleak_tracked_bytes" + labels, in: text) ?? 0) >= 24192, "\(text)")
        #expect(value(of: "kmemleak_clients", in: text) == 1, "\(text)")
        #expect((value(of: "kmemleak_scans_total", in: text) ?? 0) >= 1, "\(text)")
        #expect((value(of: "kmemleak_scan_duration_seconds_count", in: text) ?? 0) >= 1, "\(text)")
        #expect(value(of: #"kmemleak_errors_total{kind="client_dropped"}"#, in: text) == 0, "\(text)")

        let work = try d.temp.makeDirectory("promtool")
        let file = work + "/kmemleak.prom"
        try text.write(toFile: file, atomically: true, encoding: .utf8)
        let check = try Promtool.checkMetrics(file, in: work)
        #expect(check.code == 0 && check.output.isEmpty, "\(check.output)")
    }

    /// node_exporter's textfile collector with the mount as its directory serves the client's series
    /// (scraped over HTTP on 127.0.0.1) with the leaks' values, and no scrape error. A second client
    /// whose comm (its file name) has a quote, backslashes, a line feed and braces stays one series,
    /// escaped, for promtool and for node_exporter.
    @Test(.enabled(if: access(nodeExporter, X_OK) == 0 && Promtool.isInstalled, "prometheus-node-exporter or promtool missing"))
    func nodeExporterServesTheMountsMetricsHostileCommsIncluded() throws {
        let d = try Detection()
        defer { d.tearDown() }
        let (client, leaks) = try threeSitesReported(on: d)
        // 15 bytes, comm's limit, kept by the kernel as they are: x " \ LF } \ n {evil} SP 1.
        let hostileComm = "x\"\\\n}\\n{evil} 1"
        let link = d.temp.sub(hostileComm)
        try #require(symlink(threeSitesPath, link) == 0, "symlink: errno \(errno)")
        let (hostile, _) = try threeSitesReported(on: d, as: link, next: leaks)
        let escaped = #"x\"\\\n}\\n{evil} 1"#

        let text = String(decoding: try readAll(d.mountpoint + "/kmemleak.prom"), as: UTF8.self)
        let hostileSeries = #"kmemleak_suspected_leaks{comm="\#(escaped)",pid="\#(hostile.pid)"}"#
        #expect(value(of: hostileSeries, in: text) == 1004, "\(text)")
        #expect(!text.split(separator: "\n").contains { $0.hasPrefix("}") }, "\(text)")
        let work = try d.temp.makeDirectory("node-exporter")
        try text.write(toFile: work + "/kmemleak.prom", atomically: true, encoding: .utf8)
        let check = try Promtool.checkMetrics(work + "/kmemleak.prom", in: work)
        #expect(check.code == 0 && check.output.isEmpty, "\(check.output)")

        let port = try freeLoopbackPort()
        let exporter = try ChildProcess.withOutputFiles(
            [nodeExporter, "--collector.disable-defaults", "--collector.textfile",
             "--collector.textfile.directory=\(d.mountpoint)", "--web.listen-address=127.0.0.1:\(port)"],
            in: work, name: "node-exporter")
        defer { exporter.terminate() }
        let series = #"kmemleak_suspected_leaks{comm="three-sites",pid="\#(client.pid)"}"#
        var body = ""
        let served = waitUntil(timeout: .seconds(60)) {
            guard exporter.isRunning, let response = try? scrapeMetrics(port: port) else { return false }
            body = response
            return response.contains(series)
        }
        #expect(served, "node_exporter:\n\(exporter.stderr.suffix(3000))\nlast response:\n\(body.suffix(3000))")
        #expect(value(of: series, in: body) == 1004, "\(body.suffix(3000))")
        #expect(value(of: #"kmemleak_suspected_leak_bytes{comm="three-sites",pid="\#(client.pid)"}"#, in: body) == 24192)
        // node_exporter re-exposes the value escaped the same way (Go's text format escapes \\, \" and LF).
        #expect(value(of: hostileSeries, in: body) == 1004,
                "\(body.split(separator: "\n").filter { $0.contains("suspected_leaks") }.joined(separator: "\n"))")
        #expect(value(of: "node_textfile_scrape_error", in: body) == 0, "\(body.suffix(3000))")
    }
}
