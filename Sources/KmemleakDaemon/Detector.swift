import Foundation
import Glibc
import KmemleakEngine
import KmemleakFS
import KmemleakPprof
import KmemleakPrometheus
import KmemleakReports
import KmemleakSystem
import Logging
import Synchronization

/// The daemon's kmemleak: every adopted client with its own engine, one control file for all of them.
///
/// Kernel semantics, across clients: a `scan` write scans every client whose shim started before the
/// write, synchronously; reads wait for a running scan (the kernel's `scan_mutex`); `clear`, `off`,
/// `stack=`, `scan=` and `dump=` act on every client. One report lists every client's leaks, each client
/// in allocation order, clients in the order they were adopted.
public final class Detector: ControlFileBackend, DaemonService, @unchecked Sendable {
    /// The daemon's settings that matter here.
    public struct Settings: Sendable {
        public var runDirectory: String
        public var minimumAge: Double
        public var scanPeriod: Double
        public var firstScanDelay: Double
        /// `MOUNTPOINT/kmemleak`, for the "N new suspected memory leaks (see ...)" line.
        public var controlFilePath: String
        /// Freeze a client (ptrace) while confirming new leak candidates; see README "False positives".
        public var freezeForConfirmation: Bool
        /// Seconds one client's scan may take (see `--client-scan-budget`).
        public var clientScanBudget: Double
        /// What one client may make the daemon hold (`--max-objects`).
        public var clientBudget: ClientBudget
        /// Also adopt clients of this run directory that have no rendezvous file, from /proc
        /// (see `ProcessDiscovery`). Off, only the forked children of adopted clients are found there
        /// (a private table's child writes no rendezvous file).
        public var discoverProcesses: Bool
        /// Leaks these match (`--suppressions`) are in no file of the mount; the views count them.
        public var suppressions: Suppressions
        /// Where separate debug files are looked up (`--debug-file-directory`).
        public var debugFileDirectory: String
        /// Tasks each parallel step of a scan is cut into (`--scan-workers`); 1: the serial scan.
        public var scanWorkers: Int

        public init(runDirectory: String, minimumAge: Double, scanPeriod: Double, firstScanDelay: Double,
                    controlFilePath: String, freezeForConfirmation: Bool = true, discoverProcesses: Bool = true,
                    clientBudget: ClientBudget = ClientBudget(), clientScanBudget: Double = 30,
                    suppressions: Suppressions = Suppressions(),
                    debugFileDirectory: String = DebugFileDirectory.defaultPath, scanWorkers: Int = 1) {
            self.scanWorkers = max(1, scanWorkers)
            self.suppressions = suppressions
            self.debugFileDirectory = debugFileDirectory
            self.clientScanBudget = clientScanBudget
            self.runDirectory = runDirectory
            self.minimumAge = minimumAge
            self.scanPeriod = scanPeriod
            self.firstScanDelay = firstScanDelay
            self.controlFilePath = controlFilePath
            self.freezeForConfirmation = freezeForConfirmation
            self.discoverProcesses = discoverProcesses
            self.clientBudget = clientBudget
        }
    }

    private let settings: Settings
    private let logger: Logger
    private let elfCache: ELFCache
    /// Shared by every client's engine (scans run one at a time, under scanMutex); nil: serial scans.
    private let scanThreads: ScanThreads?
    /// The kernel's scan_mutex: scans, clear, off, dump and report snapshots.
    private let scanMutex = NSLock()
    // Guarded by scanMutex.
    private var sessions: [ClientSession] = []
    private var loggedFailures = Set<String>()
    /// Clients whose table could not be adopted, or that were dropped for a fault: not tried again
    /// while they live.
    private var rejected = Set<ClientID>()
    private let processDiscovery: ProcessDiscovery
    /// Failures logged one by one per discovery pass; the rest are counted in one line.
    static let maxFailureLines = 16
    /// Read without the scan mutex by writes (EPERM) and by the running scan (interruption).
    private let enabled = Atomic<Bool>(true)
    private let stackScanning = Atomic<Bool>(true)
    private var scheduler: ScanScheduler!
    /// The daemon's counters for MOUNTPOINT/kmemleak.prom (scans, their durations, failures).
    public let metrics = DaemonMetrics()

    /// - Parameter logger: writes each message as one line, verbatim: the messages carry the kernel's
    ///   `kmemleak: ` prefix themselves (dump frames must not have it).
    public init(settings: Settings, logger: Logger) {
        self.settings = settings
        self.logger = logger
        elfCache = ELFCache(debugFiles: DebugFileDirectory(settings.debugFileDirectory))
        scanThreads = settings.scanWorkers > 1 ? ScanThreads.pool(threads: settings.scanWorkers) : nil
        processDiscovery = ProcessDiscovery(runDirectory: settings.runDirectory)
        scheduler = ScanScheduler(
            period: settings.scanPeriod, firstScanDelay: settings.firstScanDelay,
            scan: { [weak self] in self?.scan() },
            log: { [logger] message in logger.info("kmemleak: \(message)") })
    }

    // MARK: - DaemonService

    public func start() throws {
        scanMutex.lock()
        discover()
        scanMutex.unlock()
        scheduler.startIfConfigured()
    }

    public func stop() {
        scheduler.stop()
        scanMutex.lock()
        sessions.removeAll()
        scanMutex.unlock()
    }

    // MARK: - ControlFileBackend

    /// Only the daemon's user (root) may write commands: `scan` freezes every client (ptrace), `clear`
    /// and `off` change what every user sees, `dump=` logs any client's object. The mount's mode bits
    /// (0644, owned by the daemon, `default_permissions`) already refuse other users; this is the same
    /// rule in the daemon.
    public func write(command: [UInt8], from requester: Requester) -> Int32? {
        guard requester.isRoot || requester.uid == getuid() else { return EACCES }
        return write(command: command)
    }

    public func write(command: [UInt8]) -> Int32? {
        let parsed = ControlCommand.parse(command, disabled: !enabled.load(ordering: .acquiring))
        let command: ControlCommand
        switch parsed {
        case .failure(let error): return error.errno
        case .success(let c): command = c
        }
        switch command {
        case .clear: clear()
        case .off: disable()
        case .stack(let on): stackScanning.store(on, ordering: .releasing)
        case .scanThread(let on): if on { scheduler.start() } else { scheduler.stop() }
        case .scanPeriod(let seconds): scheduler.setPeriod(seconds: seconds)
        case .scan: scan()
        case .dump(let address): return dump(address) ? nil : EINVAL
        }
        return nil
    }

    public func openReport() -> any ReportStream { openReport(for: .root) }

    /// The report as `requester` may see it: root (or the daemon's user) sees every client; another
    /// user only the clients that run as that user, by /proc's rules (``ProcessOwner``), decided when
    /// the file is first read. Like /proc/PID/mem: someone else's process memory is not theirs to read.
    /// Suppressed leaks are left out.
    public func openReport(for requester: Requester) -> any ReportStream {
        let entries: [(session: ClientSession, entry: ReportEntry)] = withVisibleReports(for: requester) { reports in
            reports.flatMap { report in report.unsuppressed.map { (report.session, report.entries[$0]) } }
        }
        let stream = RecordStream(recordCount: entries.count) { index in
            let (session, entry) = entries[index]
            return Kmemleak.renderBytes(entry, context: session.context)
        }
        return ReportStreamAdapter(stream: stream)
    }

    /// One view of the mount, from the snapshot ``leakSnapshot(for:)`` takes for `requester`.
    public func openView(_ view: LeakView, for requester: Requester) -> any ReportStream {
        switch view {
        case .pprof: return BytesReportStream(pprofFile(for: requester))
        case .prometheus: return BytesReportStream(metricsFile(for: requester))
        case .summary, .json:
            switch view.render(leakSnapshot(for: requester)) {
            case .bytes(let bytes)?:
                return BytesReportStream(bytes)
            case .chunks(let count, let render)?:
                return ReportStreamAdapter(stream: RecordStream(recordCount: count, renderRecord: render))
            case nil:
                return BytesReportStream([])  // not reached: both render from the leaks
            }
        }
    }

    /// The leaks `requester` may see (the same as ``openReport(for:)``), resolved for the views: each
    /// with its process, comm, direct/indirect kind (per client, ``Kmemleak/indirectLeaks(among:memory:)``)
    /// and symbolized stack; plus what each suppression hid.
    public func leakSnapshot(for requester: Requester) -> LeakSnapshot {
        withVisibleReports(for: requester, classify: true) { snapshot(of: $0) }
    }

    /// `reports` as the views' snapshot; `withVisibleReports` must have classified them.
    private func snapshot(of reports: [ClientReport]) -> LeakSnapshot {
        var snapshot = LeakSnapshot()
        for report in reports {
            let indirect = report.graph?.indirectFlags(report.entries) ?? []
            // Read from the client's table once per comm id, not once per leak.
            var comms: [UInt32: String] = [:]
            for index in report.unsuppressed {
                let entry = report.entries[index]
                let comm = comms[entry.comm] ?? report.session.context.comm(entry.comm) ?? ""
                comms[entry.comm] = comm
                snapshot.leaks.append(Leak(
                    entry: entry, processID: report.session.pid, comm: comm,
                    kind: index < indirect.count && indirect[index] ? .indirect : .direct,
                    stack: report.stacks.stack(entry.trace)))
            }
        }
        snapshot.suppressed = Self.suppressionCounts(reports, settings.suppressions)
        return snapshot
    }

    /// One client's reported leaks at a snapshot, with which of them no suppression hides.
    struct ClientReport {
        let session: ClientSession
        let entries: [ReportEntry]
        /// Indices into `entries`, in order.
        let unsuppressed: [Int]
        /// (index into `entries`, rule index) for each suppressed leak.
        let suppressed: [(entry: Int, rule: Int)]
        let stacks: StackCache
        /// What points to what among `entries`; built when the snapshot classifies or a suppression hit.
        let graph: LeakGraph?
    }

    /// Takes every visible client's report snapshot under the scan mutex (reads wait for a running
    /// scan, as in the kernel) and applies the suppressions. As in LeakSanitizer, where suppressed
    /// chunks are ignored (scanned like roots), a leak reachable from a suppressed leak is hidden
    /// too; it counts under the pattern of the first suppressed leak (in report order) that reaches it.
    private func withVisibleReports<T>(for requester: Requester, classify: Bool = false,
                                       _ body: ([ClientReport]) -> T) -> T {
        scanMutex.lock()
        defer { scanMutex.unlock() }
        dropExited()
        let everything = requester.isRoot || requester.uid == getuid()
        var reports: [ClientReport] = []
        for session in sessions where everything || isOwned(session, by: requester.uid) {
            let entries = session.engine.reportSnapshot(memory: session.memory)
            let stacks = StackCache(context: session.context)
            var rules = [Int?](repeating: nil, count: entries.count)
            var matched: [Int] = []
            if !settings.suppressions.isEmpty {
                var ruleOfTrace: [UInt32: Int?] = [:]
                for (index, entry) in entries.enumerated() {
                    let rule: Int?
                    if let known = ruleOfTrace[entry.trace] {
                        rule = known
                    } else {
                        rule = settings.suppressions.match(stacks.stack(entry.trace))
                        ruleOfTrace[entry.trace] = rule
                    }
                    rules[index] = rule
                    if rule != nil { matched.append(index) }
                }
            }
            let graph = classify || !matched.isEmpty ? LeakGraph(entries, memory: session.memory) : nil
            if let graph, !matched.isEmpty {
                for (index, source) in graph.reached(from: matched).enumerated() where rules[index] == nil {
                    if let source { rules[index] = rules[matched[source]] }
                }
            }
            var unsuppressed: [Int] = []
            var suppressed: [(entry: Int, rule: Int)] = []
            for index in entries.indices {
                if let rule = rules[index] { suppressed.append((index, rule)) } else { unsuppressed.append(index) }
            }
            reports.append(ClientReport(session: session, entries: entries, unsuppressed: unsuppressed,
                                        suppressed: suppressed, stacks: stacks, graph: graph))
        }
        return body(reports)
    }

    /// Per rule that hid at least one leak, in the rules' order.
    static func suppressionCounts(_ reports: [ClientReport], _ suppressions: Suppressions) -> [SuppressionCount] {
        var leaks = [Int](repeating: 0, count: suppressions.rules.count)
        var bytes = [UInt64](repeating: 0, count: suppressions.rules.count)
        for report in reports {
            for hit in report.suppressed {
                leaks[hit.rule] += 1
                bytes[hit.rule] &+= report.entries[hit.entry].size
            }
        }
        return suppressions.rules.indices.compactMap { rule in
            leaks[rule] > 0 ? SuppressionCount(pattern: suppressions.rules[rule].pattern, leaks: leaks[rule], bytes: bytes[rule]) : nil
        }
    }

    /// Whether `uid` owns the client: its uids now, and still the same process afterwards (a pid reused
    /// between the two reads must not hand someone else's leaks to the new owner).
    private func isOwned(_ session: ClientSession, by uid: uid_t) -> Bool {
        ProcessOwner.uid(of: session.pid) == uid && Proc.isAlive(session.pid, startTime: session.table.openedHeader.startTime)
    }

    // MARK: - commands

    /// kmemleak_scan over every client. Returns the number of new leaks.
    @discardableResult
    public func scan() -> Int {
        scanMutex.lock()
        defer { scanMutex.unlock() }
        guard enabled.load(ordering: .acquiring) else { return 0 }
        let started = ContinuousClock.now
        defer { metrics.scanFinished(after: ContinuousClock.now - started) }
        discover()
        releaseReportSymbols()
        var newLeaks = 0
        let stack = stackScanning.load(ordering: .acquiring)
        for session in sessions {
            do {
                let result = try session.scan(
                    stackScanning: stack, shouldStop: { [self] in !self.enabled.load(ordering: .relaxed) },
                    freeze: settings.freezeForConfirmation, budget: .seconds(settings.clientScanBudget),
                    log: { [logger, metrics] message in
                        metrics.count(.scanIncomplete)
                        logger.warning("kmemleak: \(message)")
                    })
                newLeaks += result.newLeaks
                if logger.logLevel <= .debug {
                    let parts = session.engine.memoryBreakdown().map { "\($0.name) \($0.bytes)" }.joined(separator: ", ")
                    logger.debug("kmemleak: pid \(session.pid): \(session.engine.objectCount) objects in \(session.trackedSlots) slots, \(session.engine.contextCount) contexts; engine bytes: \(parts)")
                }
                if result.bytesConfirmed > 0 || result.filteredConfirmation {
                    let times = session.lastFreeze.map { t in
                        ", frozen \(t.total.milliseconds) ms (table sync \(t.sync.milliseconds), written pages \(t.writtenPages.milliseconds))"
                    } ?? ""
                    logger.debug("kmemleak: pid \(session.pid): confirmation read \(result.bytesConfirmed) bytes\(result.filteredConfirmation ? ", written memory only" : ", everything")\(times), spared \(result.sparedByConfirmation)")
                }
            } catch {
                if session.table.isAlive { metrics.count(.clientDropped) }
                rejected.insert(session.id) // a fault, not an exit: not adopted again
                drop(session, because: "\(error)")
            }
        }
        // Files only exited clients mapped: their headers and symbols go.
        elfCache.retainOnly(mappedBy: sessions.map(\.context.symbolizer))
        if newLeaks > 0 {
            logger.info("\(Kmemleak.newLeaksLine(newLeaks, controlFilePath: settings.controlFilePath))")
        }
        return newLeaks
    }

    /// The debug modules the last reports loaded are let go before a scan, and the memory they held goes
    /// back to the system: a scan's transients and a report's symbols never add up at the daemon's peak
    /// (on the realistic C heap at 1 M objects they were 1.6 B per object on top of the scan's peak).
    /// The symbolizers' memoized frames stay, so a report of the same stacks loads nothing again.
    private func releaseReportSymbols() {
        elfCache.releaseDebugModules()
        MallocTuning.returnFreeMemory()
    }

    private func clear() {
        scanMutex.lock()
        defer { scanMutex.unlock() }
        for session in sessions { session.engine.clear() }
        if !enabled.load(ordering: .acquiring) { sessions.removeAll() }
    }

    private func disable() {
        guard enabled.exchange(false, ordering: .acquiringAndReleasing) else { return }
        scheduler.stop()
        scanMutex.lock()
        defer { scanMutex.unlock() }
        var foundLeaks = false
        for session in sessions {
            foundLeaks = foundLeaks || session.engine.foundLeaks
            session.engine.disable()
        }
        logger.info("kmemleak: Kernel memory leak detector disabled")
        if foundLeaks {
            logger.info(
                "kmemleak: Kmemleak disabled without freeing internal data. Reclaim the memory with \"echo clear > \(settings.controlFilePath)\".")
        } else {
            sessions.removeAll()
        }
    }

    /// dump=ADDR: every client holding an object at ADDR logs it; false when none does.
    private func dump(_ address: Address) -> Bool {
        scanMutex.lock()
        defer { scanMutex.unlock() }
        var found = false
        for session in sessions {
            guard let lines = session.engine.dump(address: address, context: session.context) else { continue }
            found = true
            for line in lines { logger.notice("\(line)") }
        }
        if !found { logger.notice("\(Kmemleak.unknownObjectLine(address))") }
        return found
    }

    // MARK: - clients

    /// Adopts clients announced in the run directory (then those found in /proc) and drops those that
    /// exited. Under scanMutex.
    private func discover() {
        dropExited()
        guard enabled.load(ordering: .acquiring) else { return }
        rejected = rejected.filter { Proc.isAlive($0.pid, startTime: $0.startTime) }
        // Forget what was said about clients that are gone and files that were removed.
        let rejectedNames = Set(rejected.map { "\($0)" })
        loggedFailures = loggedFailures.filter { rejectedNames.contains($0) || ($0.hasPrefix("/") && access($0, F_OK) == 0) }
        adopt(ClientDiscovery.scan(runDirectory: settings.runDirectory, known: Set(sessions.map(\.id)).union(rejected)))
        // Forked children of adopted clients (their own copy of the table, no file) are found there too;
        // a child's child once its parent is adopted.
        adopt(processDiscovery.scan(known: Set(sessions.map(\.id)).union(rejected),
                                    childrenOf: settings.discoverProcesses ? nil : Set(sessions.map(\.pid))),
              viaProc: true)
    }

    private func adopt(_ result: DiscoveryResult, viaProc: Bool = false) {
        var listed = 0, unlisted = 0
        for failure in result.failed {
            if let client = failure.client { rejected.insert(client) }
            // Said once per file (junk stays until proved stale), or once per client; a directory
            // full of planted junk gives a bounded number of lines.
            guard loggedFailures.insert(failure.client.map { "\($0)" } ?? failure.path).inserted else { continue }
            metrics.count(.adoptionFailed)
            if listed < Self.maxFailureLines {
                listed += 1
                logger.warning("kmemleak: ignoring client \(KFormat.escape(failure.path)): \(KFormat.escape("\(failure.error)"))")
            } else {
                unlisted += 1
            }
        }
        if unlisted > 0 { logger.warning("kmemleak: ignoring \(unlisted) more rendezvous files or clients (not listed)") }
        for path in result.removedStale { logger.info("kmemleak: removed stale rendezvous file \(KFormat.escape(path))") }
        for table in result.adopted {
            do {
                let session = try ClientSession(table: table, configuration: engineConfiguration(), elfCache: elfCache,
                                                budget: settings.clientBudget)
                try? table.setDaemonPid(getpid())
                sessions.append(session)
                logger.info("kmemleak: adopted client pid \(table.pid) (\(KFormat.escape(session.comm))), \(table.openedHeader.liveObjects) live objects\(viaProc ? ", found in /proc (no rendezvous file)" : "")")
                if table.openedHeader.hasForeignMalloc {
                    logger.notice("kmemleak: client pid \(table.pid) (\(KFormat.escape(session.comm))): malloc is not glibc's, tracked through it")
                }
            } catch {
                rejected.insert(table.id)
                metrics.count(.adoptionFailed)
                if loggedFailures.insert("\(table.id)").inserted {
                    logger.warning("kmemleak: cannot adopt client pid \(table.pid): \(KFormat.escape("\(error)"))")
                }
            }
        }
    }

    private func dropExited() {
        for session in sessions where !session.table.isAlive { drop(session, because: "exited") }
    }

    private func drop(_ session: ClientSession, because reason: String) {
        sessions.removeAll { $0 === session }
        logger.info("kmemleak: dropped client pid \(session.pid) (\(KFormat.escape(session.comm))): \(KFormat.escape(reason))")
    }

    private func engineConfiguration() -> KmemleakConfiguration {
        var config = KmemleakConfiguration()
        config.minimumAge = UInt64(max(0, settings.minimumAge) * 1e9)
        config.confirmationPasses = 1
        config.controlFilePath = settings.controlFilePath
        config.logNewLeaks = false
        config.logDisable = false
        config.replacesStaleObjects = true
        config.scanWorkers = scanThreads
        let logger = self.logger
        config.log = { line in logger.warning("\(line)") }
        return config
    }
}

// MARK: - The pprof and Prometheus views (MOUNTPOINT/kmemleak.pb.gz, MOUNTPOINT/kmemleak.prom)

extension Detector {
    /// The leaks `requester` may see as a pprof profile, taken now.
    func pprofFile(for requester: Requester) -> [UInt8] {
        let snapshot = leakSnapshot(for: requester)
        var now = timespec()
        clock_gettime(CLOCK_REALTIME, &now)
        do {
            return try PprofProfile.render(snapshot, timeNanos: Int64(now.tv_sec) &* 1_000_000_000 &+ Int64(now.tv_nsec))
        } catch {
            logger.warning("kmemleak: \(error)")
            return []
        }
    }

    /// The metrics `requester` may see: the leaks and figures of the clients it may see (the same
    /// rule as every view), the daemon's counters.
    func metricsFile(for requester: Requester) -> [UInt8] {
        let (leaks, clients): (LeakSnapshot, [ClientFigures]) = withVisibleReports(for: requester, classify: true) { reports in
            let clients = reports.map { report -> ClientFigures in
                let session = report.session
                return ClientFigures(processID: session.pid, comm: session.comm, trackedObjects: session.engine.objectCount,
                                     trackedBytes: session.engine.objectBytes)
            }
            return (self.snapshot(of: reports), clients)
        }
        return PrometheusExposition.render(snapshot: leaks, clients: clients, daemon: metrics)
    }
}

/// The symbolized stacks of one client's stack-depot ids, each resolved once per snapshot (100k
/// leaks from one site symbolize 16 frames, not 1.6M).
final class StackCache {
    private let context: ClientReportContext
    private var stacks: [UInt32: [[SymbolizedFrame]]] = [:]

    init(context: ClientReportContext) { self.context = context }

    func stack(_ trace: UInt32) -> [[SymbolizedFrame]] {
        if let known = stacks[trace] { return known }
        let stack = trace == 0 ? [] : context.frames(trace).prefix(16).map { context.describe($0) }
        stacks[trace] = stack
        return stack
    }
}

/// RecordStream as the FUSE front's ReportStream.
struct ReportStreamAdapter: ReportStream {
    let stream: RecordStream
    func read(at offset: Int, into buffer: UnsafeMutableRawBufferPointer) -> Int {
        stream.read(at: offset, into: buffer)
    }
}

extension Duration {
    /// Milliseconds with two decimals, for log lines.
    var milliseconds: String {
        let (seconds, attoseconds) = components
        let ms = Double(seconds) * 1e3 + Double(attoseconds) / 1e15
        return String(format: "%.2f", ms)
    }
}
