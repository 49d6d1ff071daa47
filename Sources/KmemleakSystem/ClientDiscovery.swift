// Client discovery: rendezvous files -> validated tables; stale files removed.
import CKmemleakABI
import Glibc
import KmemleakEngine
import Logging

/// A client's identity across pid reuse.
/// A client's identity across pid reuse (start time) and exec (the table's address, from the
/// rendezvous file: a process that calls exec keeps its pid and start time but gets a new table).
public struct ClientID: Hashable, Sendable, CustomStringConvertible {
    public var pid: Int32
    public var startTime: UInt64
    /// The table mapping's address in the client (0 for a table not opened from a rendezvous).
    public var tableAddress: UInt64
    public init(pid: Int32, startTime: UInt64, tableAddress: UInt64 = 0) {
        self.pid = pid; self.startTime = startTime; self.tableAddress = tableAddress
    }
    public var description: String { "\(pid)@\(startTime)" }
}

extension ClientTable {
    public var id: ClientID { ClientID(pid: pid, startTime: openedHeader.startTime, tableAddress: rendezvous?.address ?? 0) }
}

public struct DiscoveryResult: Sendable {
    /// Newly opened tables (clients not in `known`).
    public var adopted: [ClientTable] = []
    /// Rendezvous files removed because their process is gone, its pid was reused, or someone else
    /// wrote them.
    public var removedStale: [String] = []
    /// Files (or processes) that could not be adopted (bad table, bad file, permission...), with
    /// why, and the client they name when it lives: the caller need not try that one again.
    public var failed: [(path: String, error: TableError, client: ClientID?)] = []
    public init() {}
}

public enum ClientDiscovery {
    /// Scans `runDirectory` for rendezvous files (`<pid>.client`, `<pid>.<random>.client`) and opens
    /// the tables of clients not in `known`. Files proved stale (process gone, pid reused, written by
    /// someone else than the process) are removed when `removeStale` is set: regular files only,
    /// relative to the directory opened without following links.
    /// `logger` (optional) gets one line per adopted client, removed stale file and failure.
    public static func scan(runDirectory: String, known: Set<ClientID>, removeStale: Bool = true,
                            logger: Logger? = nil) -> DiscoveryResult {
        let result = scanQuietly(runDirectory: runDirectory, known: known, removeStale: removeStale)
        if let logger {
            for t in result.adopted { logger.info("kmemleak: adopted client \(t.pid) (\(t.openedHeader.objects.used) object slots used)") }
            for p in result.removedStale { logger.info("kmemleak: removed stale rendezvous file \(p)") }
            for f in result.failed { logger.warning("kmemleak: cannot adopt \(f.path): \(f.error)") }
        }
        return result
    }

    private static func scanQuietly(runDirectory: String, known: Set<ClientID>, removeStale: Bool) -> DiscoveryResult {
        var result = DiscoveryResult()
        let directory: RunDirectory
        let names: [String]
        let all: [String]
        do {
            directory = try RunDirectory(path: runDirectory)
            all = try directory.names()
        } catch {
            result.failed.append((runDirectory, .system(error), nil))
            return result
        }
        func remove(_ name: String, inode: UInt64?) -> Bool {
            guard (try? directory.removeRegularFile(name, inode: inode)) == true else { return false }
            result.removedStale.append(directory.path + "/" + name)
            return true
        }
        names = all.filter { Rendezvous.pid(fromName: $0) != nil }.sorted()
        // Temporary files of clients that died before publishing.
        for name in all where removeStale {
            if let pid = Rendezvous.pid(fromTemporaryName: name), !Proc.isAlive(pid) { _ = remove(name, inode: nil) }
        }
        for name in names {
            let path = directory.path + "/" + name
            let r: Rendezvous
            do { r = try Rendezvous.read(name, in: directory) } catch {
                if case .system(let e) = error, e.errno == ENOENT { continue } // removed meanwhile
                // Malformed: removed once the pid in its name is not a live process. Links, FIFOs
                // and directories stay (reported: the caller says it once).
                if removeStale, let pid = Rendezvous.pid(fromName: name), !Proc.isAlive(pid), remove(name, inode: nil) { continue }
                result.failed.append((path, error, nil))
                continue
            }
            let id = ClientID(pid: r.pid, startTime: r.startTime, tableAddress: r.address)
            if known.contains(id) { continue }
            do {
                result.adopted.append(try ClientTable.open(r))
            } catch {
                switch error {
                case .stale, .foreignRendezvous:
                    if !(removeStale && remove(name, inode: r.fileInode)) { result.failed.append((path, error, nil)) }
                default:
                    result.failed.append((path, error, id))
                }
            }
        }
        return result
    }
}

/// Finds clients without a rendezvous file (the run directory was unusable to them, the file was
/// removed, or a forked child of a private table, which writes none): processes mapping a
/// `memfd:kmemleak-table` or a private table (through /proc/PID/maps; see `tableMapping`).
///
/// Several daemons: the shim names its memfd `kmemleak-table:<dev>:<ino>` after the identity of its
/// run directory, and says the same in a private table's header (KML_TABLE_RUN_DIR); a daemon adopts
/// only tables of its own run directory, and memfd tables without an identity (the shim could use no
/// run directory) only when it serves the default run directory. A table whose header names another
/// live daemon is left to it. What a table says is a claim: the process is read and adopted only as
/// itself (its pid, its start time and its uid from /proc), whatever its header says.
///
/// Cheap at every scan: a process seen before (same pid and /proc/PID inode, from readdir) costs no
/// syscall; stat and maps are read for new processes (with `childrenOf`, only for children of those
/// pids), and stat for 1 in `recheckInterval` known ones per pass (an exec usually changes comm: the
/// maps are read again). A process found not to be a client is remembered only once it is older than
/// `settleTicks` (its shim may still be starting). Limit: a long-running process that execs into a
/// client without changing its comm is found only through its rendezvous file.
public final class ProcessDiscovery {
    /// nil: every table, whatever its run directory (tests).
    public let runDirectory: String?
    public let acceptsAnonymousTables: Bool
    /// Processes younger than this (clock ticks) are looked at again at the next pass.
    public var settleTicks: UInt64 = 200

    /// Processes whose stat is re-read at each pass: 1 in `recheckInterval`.
    public var recheckInterval: UInt64 = 16

    /// Headers of private table candidates read per process and pass (see `tableMapping`).
    public static let maxHeaderReads = 256

    /// A process as last seen: its /proc/PID inode (a new one for every new process with that pid;
    /// the same across exec), start time, parent, comm and table mapping (with whether it is ours).
    private struct Seen {
        var inode: UInt64; var startTime: UInt64; var ppid: Int32; var comm: String; var table: MapEntry?; var ours: Bool
    }
    private var seen: [Int32: Seen] = [:]
    private var pass: UInt64 = 0
    /// Stats, maps and private table headers read in the last pass (for tests and measurements).
    public private(set) var mapsReadLastPass = 0
    public private(set) var statsReadLastPass = 0
    public private(set) var headersReadLastPass = 0

    public init(runDirectory: String?, acceptsAnonymousTables: Bool? = nil) {
        self.runDirectory = runDirectory
        self.acceptsAnonymousTables = acceptsAnonymousTables ?? (runDirectory == KML_DEFAULT_RUN_DIR)
    }

    /// Our run directory's identity, nil when it cannot be opened (or there is none: tests).
    private func ownIdentity() -> RunDirectoryIdentity? {
        guard let runDirectory else { return nil }
        return try? RunDirectory(path: runDirectory).identity()
    }

    /// The memfd name of our clients' tables, "" without an identity.
    private static func tableName(_ id: RunDirectoryIdentity?) -> String {
        guard let id else { return "" }
        return "/memfd:" + KML_MEMFD_NAME + ":" + String(id.device, radix: 16) + ":" + String(id.inode, radix: 16)
    }

    /// Whether a table mapping's name says it belongs to this daemon.
    func isOurs(_ path: String, ownName: String) -> Bool {
        if runDirectory == nil { return true }
        let name = path.hasSuffix(" (deleted)") ? String(path.dropLast(10)) : path
        if !ownName.isEmpty && name == ownName { return true }
        return acceptsAnonymousTables && name == "/memfd:" + KML_MEMFD_NAME
    }

    /// Whether a private table's header names our run directory. Its device is Linux's 32-bit encoding.
    func isOurs(claimed: RunDirectoryIdentity?, own: RunDirectoryIdentity?) -> Bool {
        if runDirectory == nil { return true }
        guard let claimed, let own else { return false }
        return claimed.inode == own.inode && claimed.device == own.device & 0xffff_ffff
    }

    /// The process's table: a shared mapping of a memfd named kmemleak-table, or else a private table: a
    /// private anonymous read-write mapping with PROT_NONE mappings right below and above it (the
    /// shim's guard pages) whose header has the magic, KML_TABLE_PRIVATE and the mapping's length (a
    /// forked child's copy of its parent's table; a client whose file was removed). Each candidate
    /// costs a read of its header (present anonymous pages only: `PrivateTableMemory`); the header is
    /// not validated further here (a forked child may not have written its pid yet).
    private func tableMapping(_ pid: Int32, _ maps: [MapEntry], own: RunDirectoryIdentity?, ownName: String) -> (MapEntry, ours: Bool)? {
        if let m = maps.first(where: { $0.shared && $0.path.hasPrefix("/memfd:" + KML_MEMFD_NAME) }) {
            return (m, isOurs(m.path, ownName: ownName))
        }
        func inaccessible(_ m: MapEntry) -> Bool { !m.readable && !m.writable && !m.executable && !m.shared }
        // From the top down: the shim maps its table at start, above what the program maps later
        // (thread stacks have guard pages too). A process may frame thousands of mappings so: at most
        // `maxHeaderReads` headers are read per process and pass.
        var reads = 0
        for i in stride(from: maps.count - 2, through: 1, by: -1) where reads < Self.maxHeaderReads {
            let m = maps[i]
            guard !m.shared, m.inode == 0, m.readable, m.writable, !m.executable,
                  m.path.isEmpty || m.path.hasPrefix("[anon:" + KML_MEMFD_NAME),
                  m.length >= UInt64(MemoryLayout<kml_header>.size),
                  maps[i - 1].end == m.start, inaccessible(maps[i - 1]), maps[i + 1].start == m.end, inaccessible(maps[i + 1]),
                  let memory = try? PrivateTableMemory(pid: pid, address: m.start, length: m.length) else { continue }
            headersReadLastPass += 1
            reads += 1
            var raw = kml_header()
            let n = withUnsafeMutableBytes(of: &raw) { b in (try? memory.read(into: b, offset: 0)) ?? 0 }
            guard n == MemoryLayout<kml_header>.size, raw.magic == KML_MAGIC, raw.flags & KML_TABLE_PRIVATE != 0,
                  raw.total_size == m.length else { continue }
            let claimed = RunDirectoryIdentity(claimedBy: raw)
            return (m, isOurs(claimed: claimed, own: own))
        }
        return nil
    }

    /// One pass over /proc: opens the tables of our clients not in `known`. With `childrenOf`, only
    /// processes whose parent is one of those pids are looked at (forked children of adopted clients).
    public func scan(known: Set<ClientID>, childrenOf parents: Set<Int32>? = nil) -> DiscoveryResult {
        var result = DiscoveryResult()
        let me = getpid()
        let own = ownIdentity()
        let ownName = Self.tableName(own)
        let now = Self.uptimeTicks()
        var alive: [Int32: Seen] = [:]
        mapsReadLastPass = 0
        statsReadLastPass = 0
        headersReadLastPass = 0
        pass &+= 1
        for (name, inode) in (try? ProcFile.entriesWithInodes("/proc")) ?? [] {
            guard let pid = Int32(name), pid != me else { continue }
            var entry: Seen
            if let old = seen[pid], old.inode == inode, !isDueForCheck(pid) {
                entry = old // the same process instance as last time: no syscall
            } else {
                guard let st = try? Proc.stat(pid), st.state != "Z", st.state != "X" else { continue }
                statsReadLastPass += 1
                if let old = seen[pid], old.inode == inode, old.startTime == st.startTime, old.comm == st.comm {
                    entry = old
                    entry.ppid = st.ppid
                } else if let parents, !parents.contains(st.ppid) {
                    continue // not a child of an adopted client: not looked at (nor remembered)
                } else {
                    guard let maps = try? Proc.maps(pid) else { continue } // kernel thread, gone, or not ours to read
                    mapsReadLastPass += 1
                    let table = tableMapping(pid, maps, own: own, ownName: ownName)
                    entry = Seen(inode: inode, startTime: st.startTime, ppid: st.ppid, comm: st.comm,
                                 table: table?.0, ours: table?.ours ?? false)
                    let settled = now.map { $0 >= st.startTime && $0 - st.startTime >= settleTicks } ?? false
                    if entry.table == nil && !settled { continue } // its shim may still be starting: look again
                }
            }
            alive[pid] = entry
            if let parents, !parents.contains(entry.ppid) { continue }
            guard var m = entry.table, entry.ours else { continue }
            if known.contains(ClientID(pid: pid, startTime: entry.startTime, tableAddress: m.start)) { continue }
            // Ours but not adopted: new, or it called exec (a new table, maybe elsewhere): fresh maps.
            guard let maps = try? Proc.maps(pid) else { continue }
            mapsReadLastPass += 1
            guard let fresh = tableMapping(pid, maps, own: own, ownName: ownName) else {
                alive[pid]?.table = nil
                continue
            }
            alive[pid]?.table = fresh.0
            alive[pid]?.ours = fresh.ours
            m = fresh.0
            let id = ClientID(pid: pid, startTime: entry.startTime, tableAddress: m.start)
            if known.contains(id) || !fresh.ours { continue }
            let r = Rendezvous(pid: pid, fd: -1, address: m.start, size: m.length, startTime: entry.startTime,
                               path: "/proc/\(pid)/maps")
            do throws(TableError) {
                let table = try ClientTable.open(r)
                let daemon = (try? table.header())?.daemonPid ?? 0
                if daemon != 0 && daemon != me && Proc.isAlive(daemon) { continue } // another daemon's
                result.adopted.append(table)
            } catch {
                if case .stale = error { continue }
                // A fork child maps its parent's table until the shim's atfork handler gave it its
                // own (same address), and then writes its pid and start time: not a fault, and no
                // reason to reject the child for good. Look again at the next pass.
                if case .pidMismatch = error { continue }
                if case .startTimeMismatch = error { continue }
                // A shim still writing its header publishes the magic last: zero means not yet.
                if case .badMagic(0) = error { continue }
                result.failed.append((r.path, error, id))
            }
        }
        seen = alive
        return result
    }

    /// Each pass re-reads /proc/PID/stat of one process in `recheckInterval`: an exec (same pid, same
    /// /proc inode) shows as a new comm within that many passes.
    private func isDueForCheck(_ pid: Int32) -> Bool {
        (UInt64(UInt32(bitPattern: pid)) &+ pass) % recheckInterval == 0
    }

    /// Processes in /proc now (for measurements).
    public static func processCount() -> Int {
        ((try? ProcFile.listDirectory("/proc")) ?? []).filter { Int32($0) != nil }.count
    }

    /// CLOCK_BOOTTIME in clock ticks (the unit of /proc/PID/stat's start time).
    static func uptimeTicks() -> UInt64? {
        var ts = timespec()
        guard clock_gettime(CLOCK_BOOTTIME, &ts) == 0 else { return nil }
        let hz = UInt64(max(1, sysconf(Int32(_SC_CLK_TCK))))
        return UInt64(ts.tv_sec) &* hz &+ UInt64(ts.tv_nsec) / (1_000_000_000 / hz)
    }
}

extension ClientDiscovery {
    /// One pass of `ProcessDiscovery` without memory between passes; adopts every table (tests).
    public static func scanProcesses(known: Set<ClientID>, logger: Logger? = nil) -> DiscoveryResult {
        let discovery = ProcessDiscovery(runDirectory: nil)
        discovery.settleTicks = 0
        let result = discovery.scan(known: known)
        for t in result.adopted { logger?.info("kmemleak: adopted client \(t.pid) from its maps (no rendezvous file)") }
        for f in result.failed { logger?.warning("kmemleak: cannot adopt \(f.path): \(f.error)") }
        return result
    }
}

/// `ReportContext` over one client: comms and traces from its table, symbols from its maps.
public final class ClientReportContext: ReportContext, Sendable {
    public let table: ClientTable
    public let symbolizer: Symbolizer

    public init(table: ClientTable, symbolizer: Symbolizer) {
        self.table = table
        self.symbolizer = symbolizer
    }

    public func comm(_ id: UInt32) -> String? { (try? table.comm(id)) ?? nil }
    public func frames(_ trace: UInt32) -> [Address] { (try? table.frames(trace)) ?? [] }
    public func symbolize(_ address: Address) -> String? { symbolizer.symbolize(address) }

    /// The symbolizer's frames, each with the client's mapping of its module (for pprof's Mapping).
    public func describe(_ address: Address) -> [SymbolizedFrame] {
        var frames = symbolizer.describe(address)
        if let m = symbolizer.mapping(containing: address), m.isFileBacked {
            let mapping = ModuleMapping(start: m.start, limit: m.end, fileOffset: m.offset)
            for i in frames.indices { frames[i].mapping = mapping }
        }
        return frames
    }
}
