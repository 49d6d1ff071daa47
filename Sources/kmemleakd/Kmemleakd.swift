import ArgumentParser
import Glibc
import KmemleakFS
import KmemleakService
import KmemleakSystem
import Logging

@main
struct Kmemleakd: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "kmemleakd",
        abstract: "Detect memory leaks in running processes, the way the kernel's kmemleak does.",
        usage: """
            kmemleakd [--run-dir DIR] [--min-age SECONDS] [--scan-period SECONDS] [--first-scan-delay SECONDS]
                      [--max-objects N] [--client-scan-budget SECONDS] [--allow-other | -o allow_other]
                      [--no-discover-proc] [--suppressions FILE]... [--debug-file-directory DIR]
                      [--control-link PATH] [--scan-workers N] MOUNTPOINT
            """,
        discussion: helpDiscussion)

    @Option(
        name: .customLong("run-dir"),
        help: ArgumentHelp(
            "Directory where client processes register (RUN_DIR/<pid>.client). Default: $KMEMLEAK_RUN_DIR if set, else \(DaemonOptions.defaultRunDirectory).",
            valueName: "DIR"))
    var runDirectory: String = getenv("KMEMLEAK_RUN_DIR").map { String(cString: $0) }.flatMap { $0.isEmpty ? nil : $0 }
        ?? DaemonOptions.defaultRunDirectory

    @Option(
        name: .customLong("min-age"),
        help: ArgumentHelp(
            "Never report objects younger than this (the kernel's MSECS_MIN_AGE, 5 s). Fractions and 0 are accepted.",
            valueName: "SECONDS"))
    var minimumAge: Double = 5

    @Option(
        name: .customLong("scan-period"),
        help: ArgumentHelp(
            "Seconds between automatic scans (the kernel's 600). 0 disables automatic scanning; 'echo scan' still works.",
            valueName: "SECONDS"))
    var scanPeriod: Double = 600

    @Option(
        name: .customLong("first-scan-delay"),
        help: ArgumentHelp(
            "Seconds from start to the first automatic scan (the kernel's SECS_FIRST_SCAN, 60).",
            valueName: "SECONDS"))
    var firstScanDelay: Double = 60

    @Option(
        name: .customLong("max-objects"),
        help: ArgumentHelp(
            "Live objects one client may have (default \(DaemonOptions.defaultMaxObjectsPerClient)); a client over it is dropped with a log line.",
            valueName: "N"))
    var maxObjects: Int = DaemonOptions.defaultMaxObjectsPerClient

    @Option(
        name: .customLong("client-scan-budget"),
        help: ArgumentHelp(
            "Longest time one client's scan may take (including its confirmation); past it the scan of that client stops with a log line and its candidates wait for the next scan.",
            valueName: "SECONDS"))
    var clientScanBudget: Double = DaemonOptions.defaultClientScanBudget

    @Option(
        name: .customLong("debug-file-directory"),
        help: ArgumentHelp(
            "Where separate debug files are looked up, by build id (DIR/.build-id/xx/yyyy.debug) and by .gnu_debuglink (DIR/<the file's directory>/NAME); never next to a client's files (default \(DaemonOptions.defaultDebugFileDirectory)).",
            valueName: "DIR"))
    var debugFileDirectory: String = DaemonOptions.defaultDebugFileDirectory

    @Option(
        name: .customLong("scan-workers"),
        help: ArgumentHelp(
            "Threads a scan's reads and lookups are shared among (1: the serial scan; the results are the same). Default: $KMEMLEAKD_SCAN_WORKERS if set, else the online CPUs, at most 4 (here \(ScanThreads.defaultCount)).",
            valueName: "N"))
    var scanWorkers: Int = getenv("KMEMLEAKD_SCAN_WORKERS").flatMap { Int(String(cString: $0)) } ?? ScanThreads.defaultCount

    @Flag(
        name: .customLong("allow-other"),
        help: "Let users other than root into the mount (FUSE allow_other). Each sees only the leaks of its own processes; only root may write commands (see SECURITY).")
    var allowOther = false

    @Flag(
        name: .customLong("no-discover-proc"),
        help: "Adopt only clients that announce themselves in RUN_DIR, and their forked children (which write no file); by default the daemon also finds, in /proc, clients of RUN_DIR whose rendezvous file is missing.")
    var noProcessDiscovery = false

    @Option(
        name: .customLong("control-link"),
        help: ArgumentHelp(
            "While the daemon runs, PATH is a symbolic link to MOUNTPOINT/kmemleak (the unit: /mnt/kmemleak, so that the mount needs a directory of its own and hides nothing under /mnt). Anything already at PATH that is not that link is left alone, with an error in the log.",
            valueName: "PATH"))
    var controlLink: String?

    @Option(
        name: .customLong("suppressions"),
        help: ArgumentHelp(
            "LeakSanitizer suppression file (leak:PATTERN lines); repeatable. Matching leaks are in no file of the mount and are counted in kmemleak.summary. A bad file stops the daemon before it mounts.",
            valueName: "FILE"))
    var suppressionFiles: [String] = []

    @Option(
        name: .customShort("o"),
        help: ArgumentHelp("Mount options, comma-separated; only allow_other is accepted (same as --allow-other).", valueName: "OPTIONS"))
    var mountOptions: [String] = []

    @Argument(help: ArgumentHelp("Existing directory to mount the control file system on; the control file is MOUNTPOINT/kmemleak.", valueName: "MOUNTPOINT"))
    var mountpoint: String

    func validate() throws {
        for (name, value) in [("--min-age", minimumAge), ("--scan-period", scanPeriod), ("--first-scan-delay", firstScanDelay)] {
            guard value.isFinite, value >= 0 else {
                throw ValidationError("\(name): '\(value)' is not a number of seconds >= 0")
            }
        }
        // Duration(.seconds:) of a huge value would trap: a day is more than any scan needs.
        guard clientScanBudget.isFinite, clientScanBudget > 0, clientScanBudget <= 86400 else {
            throw ValidationError("--client-scan-budget: '\(clientScanBudget)' is not a number of seconds in (0, 86400]")
        }
        for option in mountOptions.flatMap({ $0.split(separator: ",") }) where option != "allow_other" {
            throw ValidationError("-o \(option): unsupported mount option (only allow_other is accepted)")
        }
        // The variable is the option's default: a malformed value is an error too, not a silent default.
        if let raw = getenv("KMEMLEAKD_SCAN_WORKERS").map({ String(cString: $0) }), Int(raw) == nil {
            throw ValidationError("KMEMLEAKD_SCAN_WORKERS: '\(raw)' is not a count in 1...64")
        }
        guard (1...64).contains(scanWorkers) else { throw ValidationError("--scan-workers: '\(scanWorkers)' is not a count in 1...64") }
        guard maxObjects >= 1 else { throw ValidationError("--max-objects: '\(maxObjects)' is not a count >= 1") }
        guard !runDirectory.isEmpty else { throw ValidationError("--run-dir: empty path") }
        if let controlLink, controlLink.isEmpty { throw ValidationError("--control-link: empty path") }
        // libdwfl's search path is colon-separated, and relative entries name the client's directories.
        guard debugFileDirectory.hasPrefix("/"), !debugFileDirectory.contains(":") else {
            throw ValidationError("--debug-file-directory: '\(debugFileDirectory)' is not an absolute path without ':'")
        }
        var st = stat()
        if stat(mountpoint, &st) != 0 {
            let error = errno
            // ENOTCONN: a stale mount left by a killed daemon; cleared at start.
            if error != ENOTCONN {
                throw ValidationError("MOUNTPOINT \(mountpoint): \(String(cString: strerror(error))) (errno \(error))")
            }
        } else if (st.st_mode & 0o170000) != 0o040000 {
            throw ValidationError("MOUNTPOINT \(mountpoint): \(String(cString: strerror(ENOTDIR))) (errno \(ENOTDIR))")
        }
    }

    var options: DaemonOptions {
        DaemonOptions(
            runDirectory: runDirectory, minimumAge: minimumAge, scanPeriod: scanPeriod, firstScanDelay: firstScanDelay,
            clientScanBudget: clientScanBudget, mountpoint: absolute(mountpoint),
            allowOther: allowOther || mountOptions.contains { $0.split(separator: ",").contains("allow_other") },
            discoverProcesses: !noProcessDiscovery,
            maxObjectsPerClient: maxObjects, controlFileLink: controlLink.map(absolute),
            suppressionFiles: suppressionFiles, debugFileDirectory: debugFileDirectory, scanWorkers: scanWorkers)
    }

    /// MOUNTPOINT made absolute (not resolved: a stale mount point cannot be resolved).
    private func absolute(_ path: String) -> String {
        guard !path.hasPrefix("/"), let cwd = getcwd(nil, 0) else { return path }
        defer { free(cwd) }
        return String(cString: cwd) + "/" + path
    }

    func run() throws {
        // Before any thread exists, so every thread inherits the mask (see TerminationSignals).
        TerminationSignals.block()
        let level = getenv("KMEMLEAKD_LOG_LEVEL").flatMap { Logger.Level(rawValue: String(cString: $0)) } ?? .info
        LoggingSystem.bootstrap { label in StderrLogHandler(label: label, logLevel: level) }
        let logger = Logger(label: "kmemleak")
        let status = runDaemon(options: options, logger: logger)
        if status != 0 { throw ExitCode(status) }
    }
}
