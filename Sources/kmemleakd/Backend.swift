import KmemleakDaemon
import KmemleakFS
import KmemleakService
import Logging

/// The daemon's backend: the Detector over every client announced in the run directory.
func makeBackend(options: DaemonOptions, logger: Logger) throws -> any ControlFileBackend & DaemonService {
    // The detector's lines carry the kernel's own "kmemleak: " prefix (dump= frames must not have it),
    // so it logs through a handler without a label.
    var raw = Logger(label: "")
    raw.logLevel = logger.logLevel
    let controlFile = options.mountpoint.hasSuffix("/") ? options.mountpoint + "kmemleak" : options.mountpoint + "/kmemleak"
    return Detector(
        settings: Detector.Settings(
            runDirectory: options.runDirectory, minimumAge: options.minimumAge, scanPeriod: options.scanPeriod,
            firstScanDelay: options.firstScanDelay, controlFilePath: controlFile,
            discoverProcesses: options.discoverProcesses,
            clientBudget: ClientBudget(maxObjects: options.maxObjectsPerClient),
            clientScanBudget: options.clientScanBudget, debugFileDirectory: options.debugFileDirectory),
        logger: raw)
}
