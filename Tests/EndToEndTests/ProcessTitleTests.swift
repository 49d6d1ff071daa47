// Programs that rewrite their argv/environment area to set their process title (nginx, postgres,
// sshd...) stay tracked, and clients without a rendezvous file are found in /proc by the daemon of
// their own run directory only.
import Foundation
import Glibc
import KmemleakTestSupport
import Testing

/// Addresses of the report's record headers, with repetitions (several processes may leak at the
/// same address: a forked child inherits its parent's leaks).
private func reportedAddressList(_ report: String) -> [UInt64] {
    report.split(separator: "\n").filter { $0.hasPrefix("unreferenced object") }.compactMap { line in
        line.split(separator: " ").first { $0.hasPrefix("0x") }.flatMap { UInt64($0.dropFirst(2), radix: 16) }
    }
}

/// Values printed after `tag` in the transcript, in order.
private func printedList(_ client: ChildProcess, _ tag: String) -> [String] {
    var values: [String] = []
    for line in client.transcript.split(separator: "\n") {
        let parts = line.split(separator: " ")
        if parts.count == 2 && parts[0] == tag { values.append(String(parts[1])) }
    }
    return values
}

/// Rendezvous-like names for `pid` directly under `/` (what a lost run directory path produces).
private func filesInRoot(for pids: [Int32]) -> [String] {
    let names = (try? FileManager.default.contentsOfDirectory(atPath: "/")) ?? []
    return names.filter { name in pids.contains { name.hasPrefix("\($0).") || name.hasPrefix(".\($0).") } }
}


@Suite(.enabled(if: canMount, "needs root and /dev/fuse"))
struct ProcessTitleTests {
    /// The fixture overwrites its whole argv + environment area, then forks 2 workers: the master
    /// announces itself in the run directory (nothing in `/`), the workers (forked: their own copy of
    /// the table) are found in /proc without a file, and all leaks are reported exactly.
    @Test func programsThatRewriteTheirEnvironmentStayTracked() throws {
        let d = try Detection()
        defer { d.tearDown() }
        let client = try d.client(clientPath("proctitle"), ["2"])
        let pids = printedList(client, "PID").compactMap { Int32($0) }
        let leaks = printedList(client, "LEAK").compactMap { UInt64($0.dropFirst(2), radix: 16) }
        try #require(pids.count == 3 && leaks.count == 3 && pids[0] == client.pid, "\(client.transcript)")
        let title = try String(contentsOfFile: "/proc/\(client.pid)/cmdline", encoding: .utf8)
        #expect(title.hasPrefix("proctitle: master process"))
        #expect(filesInRoot(for: pids).isEmpty)
        #expect(access(d.runDirectory + "/\(client.pid).client", F_OK) == 0)
        for pid in pids.dropFirst() { #expect(access(d.runDirectory + "/\(pid).client", F_OK) != 0) }
        d.scan(times: 2)
        // Each worker inherited the master's leak (its table is a copy) and made its own.
        let expected = [leaks[0]] + leaks.dropFirst().flatMap { [leaks[0], $0] }
        #expect(reportedAddressList(d.report).sorted() == expected.sorted(), "report:\n\(d.report)\n\(client.transcript)\n\(d.daemon.stderr)")
        for pid in pids { #expect(d.daemon.stderr.contains("kmemleak: adopted client pid \(pid) ")) }
        try client.send("exit")
        client.wait()
        #expect(filesInRoot(for: pids).isEmpty)
    }

    /// Debian's nginx with a master and 2 workers (forked after the master set its title), on a
    /// free port: all three are adopted, nothing appears in `/`, requests are served.
    @Test(.enabled(if: access("/usr/sbin/nginx", X_OK) == 0, "needs nginx (nginx-light)"))
    func nginxMasterAndWorkersAreAdopted() throws {
        let d = try Detection()
        defer { d.tearDown() }
        let prefix = try d.temp.makeDirectory("nginx")
        #expect(chmod(d.temp.path, 0o755) == 0)
        let port = try freeLoopbackPort()
        let config = nginxConfiguration(prefix: prefix, port: port, location: "return 200 \"ok\\n\";")
        try config.write(toFile: prefix + "/nginx.conf", atomically: false, encoding: .utf8)
        let nginx = try ChildProcess(
            "/usr/sbin/nginx", ["-p", prefix, "-c", prefix + "/nginx.conf", "-e", prefix + "/error.log"],
            env: ["LD_PRELOAD": shimPath, "KMEMLEAK_RUN_DIR": d.runDirectory], stderrFile: prefix + "/stderr")
        var workers: [Int32] = []
        defer {
            kill(nginx.pid, SIGTERM) // fast shutdown: the master stops its workers
            let stopped = waitUntil(timeout: .seconds(20)) { workers.allSatisfy { kill($0, 0) != 0 } }
            if !stopped { for worker in workers { kill(worker, SIGKILL) } }
            nginx.terminate()
        }
        let started = waitUntil(timeout: .seconds(30)) {
            workers = children(of: nginx.pid)
            return workers.count == 2 && (try? httpGet(port: port, path: "/"))?.hasSuffix("\r\n\r\nok\n") == true
        }
        let errorLog = (try? String(contentsOfFile: prefix + "/error.log", encoding: .utf8)) ?? ""
        try #require(started, "nginx did not serve: \(errorLog)")
        let processes = [nginx.pid] + workers
        // The master announces itself; its workers are forked (no file) and found in /proc.
        #expect(waitUntil(timeout: .seconds(30)) { access(d.runDirectory + "/\(nginx.pid).client", F_OK) == 0 })
        #expect(filesInRoot(for: processes).isEmpty)
        d.scan()
        for pid in processes {
            #expect(d.daemon.stderr.contains("kmemleak: adopted client pid \(pid) (nginx)"), "\(d.daemon.stderr)")
        }
        for _ in 0..<20 { #expect((try? httpGet(port: port, path: "/"))?.hasSuffix("\r\n\r\nok\n") == true) }
        d.scan()
        #expect(!d.daemon.stderr.contains("dropped client"), "\(d.daemon.stderr)")
        #expect(filesInRoot(for: processes).isEmpty)
    }

    /// A client that cannot write its run directory (another user's client, a root-owned 0755
    /// directory) has no rendezvous file: the daemon of that directory finds it in /proc and scans
    /// it exactly; a daemon of another run directory leaves it alone.
    @Test(.enabled(if: access("/usr/bin/setpriv", X_OK) == 0, "needs setpriv"))
    func clientsWithoutARendezvousFileAreFoundByTheirOwnDaemonOnly() throws {
        let user = try UnprivilegedUser.ensure("kmemleak-victim")
        let d = try Detection()
        defer { d.tearDown() }
        let other = try Detection()
        defer { other.tearDown() }
        #expect(chmod(d.temp.path, 0o755) == 0) // reachable, but the run directory stays root's 0755
        let client = try user.spawn(kmemleakTestPath, env: ["LD_PRELOAD": shimPath, "KMEMLEAK_RUN_DIR": d.runDirectory],
                                    stderrFile: d.temp.sub("victim.stderr"))
        defer { client.terminate() }
        _ = try client.waitFor("READY", timeout: 30)
        let leaks = printed(client, ["LEAK", "PCPU-LEAK"])
        #expect(leaks.count == 14)
        #expect(try FileManager.default.contentsOfDirectory(atPath: d.runDirectory).isEmpty)
        d.scan(times: 2)
        #expect(d.reportedAddresses == leaks, "report:\n\(d.report)\nlog:\n\(d.daemon.stderr)")
        #expect(d.daemon.stderr.contains("kmemleak: adopted client pid \(client.pid) (kmemleak-test), "))
        #expect(d.daemon.stderr.contains("found in /proc"))
        other.scan(times: 2)
        #expect(!other.daemon.stderr.contains("client pid \(client.pid) "), "\(other.daemon.stderr)")
        #expect(!other.reportedAddresses.contains { leaks.contains($0) })
    }

    /// A fork child met by the /proc discovery before the shim gave it its own table (it still maps
    /// its parent's, whose header names the parent: the window every fork child passes through,
    /// held open here by an atfork handler that runs before the shim's) is not rejected for good:
    /// once it has its table it is adopted and its leak is reported, exactly.
    @Test func aForkChildMetBeforeItsOwnTableIsAdoptedOnceItHasOne() throws {
        try forkWindow(race: false)
    }

    /// The parent allocates while its child is held between fork() and its own table: the child's
    /// table is the snapshot the parent wrote before fork() with every lock held, so the parent's new
    /// block is never the child's (no false leak in the child; see Tests/clients/fork-window.c).
    @Test func aParentsAllocationAfterForkIsNotTheChilds() throws {
        try forkWindow(race: true)
    }

    private func forkWindow(race: Bool) throws {
        let d = try Detection()
        defer { d.tearDown() }
        let client = try d.client(clientPath("fork-window"), race ? ["race"] : [],
                                  environment: ["LD_PRELOAD": shimPath + " " + clientPath("libfork-window-hook.so")])
        let child = try #require(printedList(client, "CHILD").first.flatMap { Int32($0) }, "\(client.transcript)")
        if !client.transcript.contains("HELD \(child)\n") { _ = try client.waitFor("HELD \(child)", timeout: 30) }
        d.scan() // the discovery pass meets the held child, which maps its parent's table
        #expect(!d.daemon.stderr.contains("client pid \(child) "), "\(d.daemon.stderr)")
        try client.send("release")
        _ = try client.waitFor("OK", timeout: 30)
        let leaks = printedList(client, "LEAK").compactMap { UInt64($0.dropFirst(2), radix: 16) }
        try #require(leaks.count == 1, "\(client.transcript)")
        #expect(access(d.runDirectory + "/\(child).client", F_OK) != 0) // found in /proc: forked children write none
        d.scan(times: 2)
        #expect(d.daemon.stderr.contains("kmemleak: adopted client pid \(child) (fork-window)"), "\(d.daemon.stderr)")
        #expect(!d.daemon.stderr.contains("ignoring client /proc/\(child)/"), "\(d.daemon.stderr)")
        #expect(reportedAddressList(d.report) == leaks, "report:\n\(d.report)\n\(client.transcript)\n\(d.daemon.stderr)")
        try client.send("exit")
        client.wait()
    }
}
