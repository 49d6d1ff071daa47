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
    /// Rendezvous files removed because their process is gone or its pid was reused.
    public var removedStale: [String] = []
    /// Files that could not be adopted (bad table, bad file, permission...), with why.
    public var failed: [(path: String, error: TableError)] = []
    public init() {}
}

public enum ClientDiscovery {
    /// Scans `runDirectory` for `<pid>.client` files and opens the tables of clients not in `known`.
    /// Stale files (process gone, pid reused) are removed when `removeStale` is set.
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
        let paths: [String]
        do { paths = try Rendezvous.list(runDirectory: runDirectory) } catch {
            result.failed.append((runDirectory, .system(error)))
            return result
        }
        for path in paths {
            let r: Rendezvous
            do { r = try Rendezvous.read(path: path) } catch {
                // Malformed: remove it only if the pid in its name is not a live process.
                let name = path.split(separator: "/").last.map(String.init) ?? path
                let pid = Int32(name.dropLast(KML_RENDEZVOUS_SUFFIX_LEN)) ?? 0
                if case .system(let e) = error, e.errno == ENOENT { continue } // removed meanwhile
                if removeStale && !Proc.isAlive(pid) {
                    if (try? Rendezvous.remove(path: path)) != nil { result.removedStale.append(path) }
                } else {
                    result.failed.append((path, error))
                }
                continue
            }
            if known.contains(ClientID(pid: r.pid, startTime: r.startTime, tableAddress: r.address)) { continue }
            do {
                result.adopted.append(try ClientTable.open(r))
            } catch {
                if case .stale = error {
                    if removeStale, (try? Rendezvous.remove(path: path)) != nil { result.removedStale.append(path) }
                    else if !removeStale { result.failed.append((path, error)) }
                } else {
                    result.failed.append((path, error))
                }
            }
        }
        return result
    }
}

extension ClientDiscovery {
    /// Finds clients without a rendezvous file (their run directory was not writable): every process
    /// whose /proc/PID/maps has a `/memfd:kmemleak-table` mapping. Reads the maps of every process,
    /// so call it rarely (at start-up, then now and then). Tables are opened through
    /// /proc/PID/map_files (needs CAP_SYS_ADMIN); failures are reported, nothing is removed.
    public static func scanProcesses(known: Set<ClientID>, logger: Logger? = nil) -> DiscoveryResult {
        var result = DiscoveryResult()
        let me = getpid()
        let pids = ((try? ProcFile.listDirectory("/proc")) ?? []).compactMap { Int32($0) }.filter { $0 != me }.sorted()
        for pid in pids {
            guard let maps = try? Proc.maps(pid),
                  let m = maps.first(where: { $0.path.hasPrefix("/memfd:" + KML_MEMFD_NAME) && $0.shared }),
                  let st = try? Proc.stat(pid) else { continue }
            let r = Rendezvous(pid: pid, fd: -1, address: m.start, size: m.length, startTime: st.startTime,
                               path: "/proc/\(pid)/maps")
            if known.contains(ClientID(pid: pid, startTime: st.startTime, tableAddress: m.start)) { continue }
            do throws(TableError) {
                let t = try ClientTable.open(r)
                result.adopted.append(t)
                logger?.info("kmemleak: adopted client \(pid) from its maps (no rendezvous file)")
            } catch {
                result.failed.append((r.path, error))
                logger?.warning("kmemleak: cannot adopt \(pid) from its maps: \(error)")
            }
        }
        return result
    }
}

let KML_RENDEZVOUS_SUFFIX_LEN = 7 // ".client"

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
}
