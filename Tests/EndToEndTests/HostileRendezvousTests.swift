// The run directory is shared with every local user (mode 1777). An unprivileged attacker plants
// links, FIFOs and squatted names for the next pids; root and unprivileged clients started after it
// must neither write through them nor hang, and must all be adopted and scanned exactly.
import Foundation
import Glibc
import KmemleakTestSupport
import Testing

/// Plants, for the next `count` pids the kernel will hand out (the free ones after ns_last_pid,
/// wrapping from pid_max to 300 as the kernel does): `<pid>.client` as a symlink to SECRET, a FIFO or
/// a squatter's regular file (in turn), and the old temporary name `.<pid>.client.tmp` as a symlink
/// to SECRET. For dead pids well behind the current one (500 to 1500 pids back, wrapping below 300 to
/// pid_max as the kernel's allocation does): junk `<pid>.client` files (stale). One
/// process, no fork, so that it takes no pid of the range itself. Prints "STALE <pid>" lines, then
/// "PLANTED <pid>,<pid>,...".
private let attackerScript = """
    import os, sys
    d, secret, n = sys.argv[1], sys.argv[2], int(sys.argv[3])
    last = int(open('/proc/sys/kernel/ns_last_pid').read())
    pid_max = int(open('/proc/sys/kernel/pid_max').read())
    def before(p):
        return p - 1 if p - 1 >= 300 else pid_max - 1
    p = last
    for _ in range(500):
        p = before(p)
    for _ in range(1000):
        p = before(p)
        if not os.path.exists(f'/proc/{p}'):
            with open(f'{d}/{p}.client', 'w') as f:
                f.write('junk\\n')
            print('STALE', p)
    planted, p = [], last
    while len(planted) < n:
        p = p + 1 if p + 1 < pid_max else 300
        if os.path.exists(f'/proc/{p}'):
            continue
        name = f'{d}/{p}.client'
        try:
            if p % 3 == 0:
                os.symlink(secret, name)
            elif p % 3 == 1:
                os.mkfifo(name)
            else:
                with open(name, 'w') as f:
                    f.write(f'pid={p} fd=3 addr=1000 size=4096 start=1\\n')
            os.symlink(secret, f'{d}/.{p}.client.tmp')
        except FileExistsError:
            pass
        planted.append(p)
    print('PLANTED', ','.join(map(str, planted)), flush=True)
    """

/// Sets the kernel's protected_symlinks and protected_fifos; `restore()` puts the old values back.
private struct ProtectedLinks {
    static let files = ["/proc/sys/fs/protected_symlinks", "/proc/sys/fs/protected_fifos"]
    let saved: [String]

    init(_ value: Int) throws {
        saved = try Self.files.map { String(decoding: try readAll($0), as: UTF8.self) }
        for file in Self.files { try Self.write(file, "\(value)\n") }
    }

    func restore() {
        for (file, value) in zip(Self.files, saved) { try? Self.write(file, value) }
    }

    static func write(_ file: String, _ value: String) throws {
        let (result, error) = writeOnce(file, Array(value.utf8))
        guard result >= 0 else { throw TestFailure("write \(file): errno \(error)") }
    }
}

private func fileType(_ path: String) -> mode_t? {
    var st = stat()
    return lstat(path, &st) == 0 ? st.st_mode & S_IFMT : nil
}

private func owner(_ path: String) -> uid_t? {
    var st = stat()
    return lstat(path, &st) == 0 ? st.st_uid : nil
}

@Suite(.enabled(if: canMount && access("/usr/bin/setpriv", X_OK) == 0 && access("/usr/bin/python3", X_OK) == 0,
                "needs root, /dev/fuse, setpriv and /usr/bin/python3"),
       .serialized)
struct HostileRendezvousTests {
    @Test(arguments: [0, 1])
    func plantedNamesNeitherHijackNorHideClients(protectedLinks: Int) throws {
        let attacker = try UnprivilegedUser.ensure()
        let victim = try UnprivilegedUser.ensure("kmemleak-victim")
        let d = try Detection()
        defer { d.tearDown() }
        let protection = try ProtectedLinks(protectedLinks)
        defer { protection.restore() }
        #expect(chmod(d.temp.path, 0o755) == 0 && chmod(d.runDirectory, 0o1777) == 0)
        let secret = d.temp.sub("secret")
        let secretText = "root only\n"
        try secretText.write(toFile: secret, atomically: false, encoding: .utf8)
        #expect(chmod(secret, 0o600) == 0)

        let planter = try attacker.spawn("/usr/bin/python3", ["-c", attackerScript, d.runDirectory, secret, "5000"])
        defer { planter.terminate() }
        let plantedLine = try planter.waitFor("PLANTED", timeout: 60)
        let planted = Set(plantedLine.dropFirst("PLANTED ".count).split(separator: ",").compactMap { Int32($0) })
        #expect(planted.count == 5000)
        let stale = planter.transcript.split(separator: "\n").filter { $0.hasPrefix("STALE ") }.map { String($0.dropFirst(6)) }

        // Root clients and clients of another unprivileged user; each must start (READY) in bounded time.
        var clients = [try d.client(kmemleakTestPath), try d.client(kmemleakTestPath)]
        var victims: [ChildProcess] = []
        defer { for v in victims { v.terminate() } }
        for index in 0..<2 {
            let v = try victim.spawn(kmemleakTestPath, env: ["LD_PRELOAD": shimPath, "KMEMLEAK_RUN_DIR": d.runDirectory],
                                     stderrFile: d.temp.sub("victim\(index).stderr"))
            victims.append(v)
            _ = try v.waitFor("READY", timeout: 30)
        }
        clients += victims
        #expect(clients.allSatisfy { planted.contains($0.pid) }, "pids \(clients.map(\.pid)) not planted")

        // Nothing was written through a link.
        #expect((try? String(contentsOfFile: secret, encoding: .utf8)) == secretText)
        #expect(owner(secret) == 0 && fileType(secret) == S_IFREG)
        // Root clients replaced the squatter's name (rename never writes into what it replaces);
        // the other user's clients could not, and published a random name instead.
        let names = try FileManager.default.contentsOfDirectory(atPath: d.runDirectory)
        for client in clients.prefix(2) {
            #expect(fileType(d.runDirectory + "/\(client.pid).client") == S_IFREG && owner(d.runDirectory + "/\(client.pid).client") == 0)
        }
        for v in victims {
            let own = names.filter { $0.hasPrefix("\(v.pid).") && $0.hasSuffix(".client") && $0.count == "\(v.pid).".count + 16 + 7 }
            #expect(own.count == 1 && own.allSatisfy { owner(d.runDirectory + "/" + $0) == victim.uid }, "\(names.filter { $0.hasPrefix("\(v.pid)") })")
        }

        // Every client is adopted and scanned exactly.
        let leaks = clients.reduce(into: Set<UInt64>()) { $0.formUnion(printed($1, ["LEAK", "PCPU-LEAK"])) }
        #expect(clients.allSatisfy { printed($0, ["LEAK", "PCPU-LEAK"]).count == 14 })
        d.scan(times: 2)
        #expect(d.reportedAddresses == leaks, "report:\n\(d.report)\nlog:\n\(d.daemon.stderr)")
        for client in clients {
            #expect(d.daemon.stderr.contains("kmemleak: adopted client pid \(client.pid) "), "\(d.daemon.stderr)")
        }
        // Thousands of junk names give a bounded log: 16 lines per discovery pass, then a count.
        let ignored = d.daemon.stderr.split(separator: "\n").filter { $0.contains("kmemleak: ignoring client ") }
        #expect(ignored.count <= 6 * 16 && d.daemon.stderr.contains("more rendezvous files or clients (not listed)"))
        // The squatter's junk for dead pids is gone; its links and FIFOs were never removed (nor followed).
        #expect(!stale.isEmpty)
        #expect(stale.allSatisfy { fileType(d.runDirectory + "/\($0).client") == nil })
        #expect((try? String(contentsOfFile: secret, encoding: .utf8)) == secretText)
        for client in clients { client.terminate() }
    }

    /// Forked children write no rendezvous file: the daemon finds them in /proc by their copy of the
    /// table. Another user forges, in its own memory, what that discovery takes for a private table of
    /// our run directory, once for each of the victim's processes (their pids and start times): none is
    /// adopted as the victim (the daemon reads the forger's memory, whose header is not the forger's),
    /// nothing of the victim's is hidden: its master and both forked workers are adopted once each and
    /// reported exactly.
    @Test func forgedTablesNeitherHijackNorHideForkedChildren() throws {
        let attacker = try UnprivilegedUser.ensure()
        let victim = try UnprivilegedUser.ensure("kmemleak-victim")
        let d = try Detection()
        defer { d.tearDown() }
        #expect(chmod(d.temp.path, 0o755) == 0 && chmod(d.runDirectory, 0o1777) == 0)
        let master = try victim.spawn(clientPath("proctitle"), ["2"],
                                      env: ["LD_PRELOAD": shimPath, "KMEMLEAK_RUN_DIR": d.runDirectory],
                                      stderrFile: d.temp.sub("victim.stderr"))
        defer { master.terminate() }
        _ = try master.waitFor("READY", timeout: 30)
        func values(_ tag: String) -> [String] {
            var found: [String] = []
            for line in master.transcript.split(separator: "\n") {
                let parts = line.split(separator: " ")
                if parts.count == 2 && parts[0] == tag { found.append(String(parts[1])) }
            }
            return found
        }
        let pids = values("PID").compactMap { Int32($0) }
        let leaks = values("LEAK").compactMap { UInt64($0.dropFirst(2), radix: 16) }
        try #require(pids.count == 3 && leaks.count == 3 && pids[0] == master.pid, "\(master.transcript)")
        for pid in pids.dropFirst() { #expect(access(d.runDirectory + "/\(pid).client", F_OK) != 0) }

        let forger = try attacker.spawn(clientPath("forge-table"), [d.runDirectory] + pids.map { "\($0)" },
                                        stderrFile: d.temp.sub("forger.stderr"))
        defer { forger.terminate() }
        _ = try forger.waitFor("FORGED 3", timeout: 30)
        d.scan(times: 2)
        // Each worker inherited the master's leak (its table is a copy) and made its own.
        let expected = [leaks[0]] + leaks.dropFirst().flatMap { [leaks[0], $0] }
        var reported: [UInt64] = []
        for line in d.report.split(separator: "\n") where line.hasPrefix("unreferenced object") {
            if let word = line.split(separator: " ").first(where: { $0.hasPrefix("0x") }), let a = UInt64(word.dropFirst(2), radix: 16) {
                reported.append(a)
            }
        }
        #expect(reported.sorted() == expected.sorted(), "report:\n\(d.report)\nlog:\n\(d.daemon.stderr)")
        let log = d.daemon.stderr
        for pid in pids {
            #expect(log.components(separatedBy: "kmemleak: adopted client pid \(pid) ").count == 2, "\(log)")
        }
        #expect(!log.contains("client pid \(forger.pid) "), "\(log)")
        try master.send("exit")
        master.wait()
    }
}
