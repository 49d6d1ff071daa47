import KmemleakDaemon
import KmemleakFS
import KmemleakReports
import KmemleakService
import Logging

/// The daemon's backend: the Detector over every client announced in the run directory.
func makeBackend(options: DaemonOptions, logger: Logger) throws -> any ControlFileBackend & DaemonService {
    // The detector's lines carry the kernel's own "kmemleak: " prefix (dump= frames must not have it),
    // so it logs through a handler without a label.
    var raw = Logger(label: "")
    raw.logLevel = logger.logLevel
    let suppressions: Suppressions
    do {
        suppressions = try options.loadSuppressions()
    } catch {
        throw BackendError(message: "--suppressions: \(error)")
    }
    let controlFile = options.controlFilePath
    return Detector(
        settings: Detector.Settings(
            runDirectory: options.runDirectory, minimumAge: options.minimumAge, scanPeriod: options.scanPeriod,
            firstScanDelay: options.firstScanDelay, controlFilePath: options.controlFileLink ?? controlFile,
            discoverProcesses: options.discoverProcesses,
            clientBudget: ClientBudget(maxObjects: options.maxObjectsPerClient),
            clientScanBudget: options.clientScanBudget, suppressions: suppressions,
            debugFileDirectory: options.debugFileDirectory, scanWorkers: options.scanWorkers),
        logger: raw)
}

/// Why the backend cannot be made (printed after "cannot start the detector: ").
struct BackendError: Error, CustomStringConvertible {
    var message: String
    var description: String { message }
}
