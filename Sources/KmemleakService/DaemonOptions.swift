import KmemleakReports
import KmemleakSystem

/// The daemon's configuration, as parsed from its command line (`kmemleakd --help`).
public struct DaemonOptions: Sendable, Equatable {
    /// Where clients (`libkmemleak.so`) register: `RUN_DIR/<pid>.client`. Default `/run/kmemleak`.
    public var runDirectory: String
    /// Objects younger than this are not reported (kernel: MSECS_MIN_AGE, 5 s). May be 0 or fractional.
    public var minimumAge: Double
    /// Seconds between automatic scans (kernel: 600); 0 = no automatic scanning.
    public var scanPeriod: Double
    /// Seconds from start to the first automatic scan (kernel: SECS_FIRST_SCAN, 60).
    public var firstScanDelay: Double
    /// Seconds one client's scan may take before it is stopped (its candidates wait).
    public var clientScanBudget: Double
    /// Where `kmemleak` is served.
    public var mountpoint: String
    /// `-o allow_other`: users other than root may enter the mount.
    public var allowOther: Bool
    /// Live objects one client may have before it is dropped (`--max-objects`).
    public var maxObjectsPerClient: Int

    /// 4 Mi objects: an adopted object costs the daemon about 66 bytes (BENCHMARKS.md), so one client at
    /// the budget costs about 300 MiB.
    public static let defaultMaxObjectsPerClient = 1 << 22
    /// Also adopt clients of the run directory that have no rendezvous file, found in /proc.
    public var discoverProcesses: Bool
    /// `--control-link PATH`: made a symbolic link to MOUNTPOINT/kmemleak while the daemon runs.
    public var controlFileLink: String?
    /// LeakSanitizer-format suppression files (`--suppressions FILE`, repeatable), in the order given.
    public var suppressionFiles: [String]
    /// Where separate debug files are looked up (`--debug-file-directory`), and nowhere else.
    public var debugFileDirectory: String
    /// Tasks each parallel step of a scan is cut into (`--scan-workers`); 1 is the serial scan.
    public var scanWorkers: Int

    public static let defaultDebugFileDirectory = "/usr/lib/debug"

    public static let defaultRunDirectory = "/run/kmemleak"
    public static let defaultClientScanBudget: Double = 30

    public init(
        runDirectory: String = DaemonOptions.defaultRunDirectory, minimumAge: Double = 5, scanPeriod: Double = 600,
        firstScanDelay: Double = 60, clientScanBudget: Double = DaemonOptions.defaultClientScanBudget,
        mountpoint: String, allowOther: Bool = false, discoverProcesses: Bool = true,
        maxObjectsPerClient: Int = DaemonOptions.defaultMaxObjectsPerClient, controlFileLink: String? = nil,
        suppressionFiles: [String] = [], debugFileDirectory: String = DaemonOptions.defaultDebugFileDirectory,
        scanWorkers: Int = ScanThreads.defaultCount
    ) {
        self.scanWorkers = max(1, scanWorkers)
        self.controlFileLink = controlFileLink
        self.suppressionFiles = suppressionFiles
        self.debugFileDirectory = debugFileDirectory
        self.clientScanBudget = clientScanBudget
        self.runDirectory = runDirectory
        self.minimumAge = minimumAge
        self.scanPeriod = scanPeriod
        self.firstScanDelay = firstScanDelay
        self.mountpoint = mountpoint
        self.allowOther = allowOther
        self.maxObjectsPerClient = maxObjectsPerClient
        self.discoverProcesses = discoverProcesses
    }

    public var minimumAgeDuration: Duration { .seconds(minimumAge) }
    /// nil when automatic scanning is off (`--scan-period 0`).
    public var scanPeriodDuration: Duration? { scanPeriod > 0 ? .seconds(scanPeriod) : nil }
    public var firstScanDelayDuration: Duration { .seconds(firstScanDelay) }

    /// MOUNTPOINT/kmemleak.
    public var controlFilePath: String { mountpoint.hasSuffix("/") ? mountpoint + "kmemleak" : mountpoint + "/kmemleak" }

    /// Reads and parses every suppression file; the error names the file and the line.
    public func loadSuppressions() throws -> Suppressions {
        var suppressions = Suppressions()
        for file in suppressionFiles {
            let bytes: [UInt8]
            do {
                bytes = try ConfigurationFile.read(file)
            } catch {
                throw SuppressionFileError(file: file, line: 0, reason: "\(error)")
            }
            try suppressions.parse(bytes, file: file)
        }
        return suppressions
    }
}
