import Foundation
import Glibc
import KmemleakFS
import KmemleakReports
import Testing

private let threeSitesPath = clientPath("three-sites")
private let threeSitesSource = repositoryRoot + "/Tests/clients/three-sites.c"

/// What the views say about one real mount.
struct MountedViews {
    let summary: String
    let json: [[String: Any]]

    init(_ d: Detection) throws {
        summary = String(decoding: try readAll(d.mountpoint + "/kmemleak.summary"), as: UTF8.self)
        let lines = String(decoding: try readAll(d.mountpoint + "/kmemleak.json"), as: UTF8.self).split(separator: "\n")
        json = try lines.map { line in
            try #require(try JSONSerialization.jsonObject(with: Data(line.utf8)) as? [String: Any], "not an object: \(line)")
        }
    }

    /// Each block's first line: "BYTES byte(s) in N object(s) (D direct, I indirect) allocated from:".
    var blockHeaders: [String] { summary.split(separator: "\n").map(String.init).filter { $0.hasSuffix(" allocated from:") } }

    func addresses(kind: String? = nil) -> Set<UInt64> {
        Set(json.filter { kind == nil || $0["kind"] as? String == kind }.compactMap { object in
            (object["address"] as? String).flatMap { UInt64($0.dropFirst(2), radix: 16) }
        })
    }

    /// The innermost frame of each JSON leak whose symbol is `function`.
    func innermostFrames(allocatedIn function: String) -> [[String: Any]] {
        json.compactMap { ($0["frames"] as? [[String: Any]])?.first }.filter { $0["symbol"] as? String == function }
    }
}

/// The line of the first source line containing `text` (1-based).
func sourceLine(containing text: String, in path: String) throws -> Int {
    let lines = try String(contentsOfFile: path, encoding: .utf8).split(separator: "\n", omittingEmptySubsequences: false)
    return try #require(lines.firstIndex { $0.contains(text) }, "\(text) not in \(path)") + 1
}

/// three-sites prints each pair's LEAK line, then its child's: after the 1000 loop blocks they
/// alternate pair, child.
func cycleLeaks(_ client: ChildProcess) -> (children: Set<UInt64>, pairs: Set<UInt64>) {
    let leaks = client.transcript.split(separator: "\n").filter { $0.hasPrefix("LEAK 0x") }
        .compactMap { UInt64($0.dropFirst(7), radix: 16) }
    guard leaks.count == 1004 else { return ([], []) }
    return ([leaks[1001], leaks[1003]], [leaks[1000], leaks[1002]])
}

@Suite(.enabled(if: canMount, "needs root and /dev/fuse"))
struct ViewEndToEndTests {
    /// Three call sites (one 1000 times in a loop, a leaked cycle, its children): the summary has
    /// exactly three blocks with the right counts, bytes and kinds; the JSON exactly the leaked
    /// addresses, direct ones as the client says; every site's innermost frame has its function and the
    /// file:line of its malloc call, from DWARF (the client is built with -g).
    @Test func threeSitesInSummaryAndJSON() throws {
        let d = try Detection()
        defer { d.tearDown() }
        let client = try d.client(threeSitesPath)
        let leaks = printed(client, ["LEAK"]), direct = printed(client, ["DIRECT"])
        #expect(leaks.count == 1004 && direct.count == 1001)
        #expect(d.scanUntilReported(leaks), "report:\n\(d.report.prefix(4000))")

        let views = try MountedViews(d)
        #expect(views.blockHeaders == [
            "24000 byte(s) in 1000 object(s) (1000 direct, 0 indirect) allocated from:",
            "128 byte(s) in 2 object(s) (1 direct, 1 indirect) allocated from:",
            "64 byte(s) in 2 object(s) (0 direct, 2 indirect) allocated from:",
        ], "summary:\n\(views.summary)")
        #expect(views.summary.contains("  processes: \(client.pid) (three-sites)\n"))
        #expect(views.summary.hasSuffix(
            "SUMMARY: 24192 byte(s) leaked in 1004 allocation(s) (1001 direct, 3 indirect) from 3 backtrace(s); 0 suppressed (0 byte(s)).\n"))
        #expect(views.json.count == 1004)
        #expect(views.addresses() == leaks)
        #expect(views.addresses(kind: "direct") == direct)
        #expect(views.json.allSatisfy { $0["pid"] as? Int == Int(client.pid) && $0["comm"] as? String == "three-sites" })

        // Frames: each site's innermost frame is its function, at the line of its malloc call.
        let sites = [("leak_loop_site", "malloc(24)", 1000), ("leak_pair_site", "malloc(sizeof(*p))", 2),
                     ("leak_child_site", "malloc(32)", 2)]
        for (function, call, count) in sites {
            let frames = views.innermostFrames(allocatedIn: function)
            #expect(frames.count == count, "\(function)")
            let line = try sourceLine(containing: call, in: threeSitesSource)
            for frame in frames {
                #expect((frame["module"] as? String)?.hasSuffix("/three-sites") == true)
                let file = try #require(frame["file"] as? String, "\(function): no source file (DWARF)")
                #expect(file.hasSuffix("three-sites.c"))
                #expect(frame["line"] as? Int == line, "\(function)")
                #expect(views.summary.contains("three-sites.c:\(line)"))
            }
            #expect(views.summary.contains(" in \(function)+0x"))
        }
    }

    /// A `leak:` pattern (anchored) hides one site from every file, kernel format included; the
    /// summary counts it. Suppressing the cycle's site also hides the children only it points to
    /// (LeakSanitizer ignores what suppressed leaks reach), counted with it, although no frame of
    /// theirs matches. Another file with a
    /// pattern that matches nothing is counted nowhere.
    @Test(arguments: [
        ("^leak_child_site$", false, "      2         64 leak:^leak_child_site$\n", "from 2 backtrace(s); 2 suppressed (64 byte(s)).\n"),
        ("leak_pair_*site", true, "      4        192 leak:leak_pair_*site\n", "from 1 backtrace(s); 4 suppressed (192 byte(s)).\n"),
    ])
    func suppressedSiteIsInNoFileAndCounted(pattern: String, hidesPairs: Bool, countLine: String, totals: String) throws {
        let temp = try TemporaryDirectory()
        defer { temp.remove() }
        let first = temp.sub("a.supp"), second = temp.sub("b.supp")
        try "# part of the cycle\nleak:\(pattern)\n".write(toFile: first, atomically: true, encoding: .utf8)
        try "leak:no_such_function\n".write(toFile: second, atomically: true, encoding: .utf8)
        let d = try Detection(daemonArguments: ["--suppressions", first, "--suppressions", second])
        defer { d.tearDown() }
        let client = try d.client(threeSitesPath)
        let leaks = printed(client, ["LEAK"])
        let cycle = cycleLeaks(client)
        #expect(cycle.children.count == 2 && cycle.pairs.count == 2)
        let hidden = hidesPairs ? cycle.children.union(cycle.pairs) : cycle.children
        #expect(d.scanUntilReported(leaks.subtracting(hidden)), "report:\n\(d.report.prefix(4000))")
        let views = try MountedViews(d)
        #expect(views.addresses() == leaks.subtracting(hidden))
        #expect(views.innermostFrames(allocatedIn: "leak_child_site").isEmpty)
        #expect(views.innermostFrames(allocatedIn: "leak_pair_site").count == (hidesPairs ? 0 : 2))
        #expect(views.blockHeaders.count == (hidesPairs ? 1 : 2), "summary:\n\(views.summary)")
        #expect(views.summary.contains("Suppressions used:\n  count      bytes pattern\n" + countLine))
        #expect(!views.summary.contains("no_such_function"))
        #expect(views.summary.hasSuffix(totals))
    }

    /// A bad suppression file stops the daemon before it mounts, naming the file and the line.
    @Test func badSuppressionFileIsAStartUpError() throws {
        let temp = try TemporaryDirectory()
        defer { temp.remove() }
        let mountpoint = try temp.makeDirectory("mnt")
        let bad = temp.sub("bad.supp")
        try "leak:fine\n\nrace:foo\n".write(toFile: bad, atomically: true, encoding: .utf8)
        for (file, message) in [(bad, "\(bad):3: unsupported suppression type 'race'"),
                                (temp.sub("missing.supp"), "\(temp.sub("missing.supp")): open")] {
            let daemon = try ChildProcess.withOutputFiles(
                [try daemonPath(), "--run-dir", try temp.makeDirectory("run\(file.count)"), "--suppressions", file, mountpoint],
                in: temp.path, name: "kmemleakd-\(file.count)")
            defer { daemon.terminate() }
            let status = daemon.exitCode(timeout: 30)
            #expect(status != nil && status != 0)
            #expect(daemon.stderr.contains(message), "stderr: \(daemon.stderr)")
            #expect(MountPoint.mounts(at: mountpoint).isEmpty)
        }
    }

    /// A scan-worker count out of range, given as the option or through KMEMLEAKD_SCAN_WORKERS, or a
    /// variable that is no number, stops the daemon before it mounts, naming what was wrong.
    @Test func badScanWorkerCountIsAStartUpError() throws {
        let temp = try TemporaryDirectory()
        defer { temp.remove() }
        let mountpoint = try temp.makeDirectory("mnt")
        let cases: [(arguments: [String], env: [String: String], message: String)] = [
            (["--scan-workers", "0"], [:], "--scan-workers: '0' is not a count in 1...64"),
            (["--scan-workers", "65"], [:], "--scan-workers: '65' is not a count in 1...64"),
            ([], ["KMEMLEAKD_SCAN_WORKERS": "two"], "KMEMLEAKD_SCAN_WORKERS: 'two' is not a count in 1...64"),
            ([], ["KMEMLEAKD_SCAN_WORKERS": "0"], "--scan-workers: '0' is not a count in 1...64"),
        ]
        for (k, c) in cases.enumerated() {
            let daemon = try ChildProcess.withOutputFiles(
                [try daemonPath(), "--run-dir", try temp.makeDirectory("run\(k)")] + c.arguments + [mountpoint],
                env: c.env, in: temp.path, name: "kmemleakd-workers-\(k)")
            defer { daemon.terminate() }
            let status = daemon.exitCode(timeout: 30)
            #expect(status != nil && status != 0)
            #expect(daemon.stderr.contains(c.message), "stderr: \(daemon.stderr)")
            #expect(MountPoint.mounts(at: mountpoint).isEmpty)
        }
    }

    /// With --allow-other a user reads the views of its own processes only, like kmemleak.
    @Test(.enabled(if: access("/usr/bin/setpriv", X_OK) == 0, "needs setpriv"))
    func viewsShowAUserOnlyItsOwnClients() throws {
        let user = try UnprivilegedUser.ensure()
        let d = try Detection(daemonArguments: ["--allow-other"])
        defer { d.tearDown() }
        d.openToOtherUsers()
        let rootClient = try d.client(kmemleakTestPath)
        let userClient = try d.client(threeSitesPath, as: user)
        let userLeaks = printed(userClient, ["LEAK"])
        let everything = printed(rootClient, ["LEAK", "PCPU-LEAK"]).union(userLeaks)
        #expect(d.scanUntilReported(everything))
        #expect(try MountedViews(d).addresses() == everything, "root sees every client")
        for view in [LeakView.json, .summary] {
            let cat = try user.spawn("/bin/cat", [d.mountpoint + "/" + view.fileName], stderrFile: d.temp.sub("cat.stderr"))
            cat.closeStdin()
            var text = ""
            while let line = try? cat.readLine(timeout: 30) { text += line + "\n" }  // to EOF
            #expect(cat.exitCode() == 0)
            if view == .json {
                let seen = Set(text.split(separator: "\n").compactMap { line -> UInt64? in
                    let object = try? JSONSerialization.jsonObject(with: Data(line.utf8)) as? [String: Any]
                    return (object?["address"] as? String).flatMap { UInt64($0.dropFirst(2), radix: 16) }
                })
                #expect(seen == userLeaks)
            } else {
                #expect(text.contains("processes: \(userClient.pid) (three-sites)"))
                #expect(!text.contains("processes: \(rootClient.pid) "))
                #expect(text.contains("leaked in 1004 allocation(s)"))
            }
        }
    }
}
