import Glibc
import KmemleakFS
import KmemleakService
import KmemleakSystem
import Logging
import Synchronization

/// The service lifecycle (DESIGN.md decision 8): backend, mount point, mount, `start()`, READY=1,
/// loop until SIGTERM/SIGINT/SIGHUP (or an external unmount), STOPPING=1, `stop()`, unmount.
/// Returns the process exit status. The caller must have called `TerminationSignals.block()` first.
func runDaemon(options: DaemonOptions, logger: Logger) -> Int32 {
    if !MallocTuning.fixMmapThreshold() { logger.warning("cannot fix malloc's mmap threshold (mallopt refused)") }
    if !MallocTuning.limitArenas() { logger.warning("cannot limit malloc's arenas (mallopt refused)") }
    let backend: any ControlFileBackend & DaemonService
    do {
        backend = try makeBackend(options: options, logger: logger)
    } catch {
        logger.error("cannot start the detector: \(error)")
        return 1
    }

    do {
        try MountPoint.prepare(options.mountpoint, logger: logger)
    } catch {
        logger.error("\(error)")
        return 1
    }

    let stopping = Atomic<Bool>(false)
    let beginStopping: @Sendable () -> Void = {
        if !stopping.exchange(true, ordering: .acquiringAndReleasing) { SystemdNotify.send("STOPPING=1") }
    }
    let controlFile = options.controlFilePath

    let mount: FuseMount
    do {
        mount = try FuseMount(
            mountpoint: options.mountpoint, backend: backend,
            options: FuseMountOptions(allowOther: options.allowOther), logger: logger,
            onReady: {
                logger.info("serving \(controlFile)")
                SystemdNotify.send("READY=1")
            })
    } catch {
        logger.error("\(error)")
        return 1
    }

    do {
        try backend.start()
    } catch {
        logger.error("cannot start the detector: \(error)")
        mount.exit()
        mount.unmountAndDestroy()
        backend.stop()
        return 1
    }

    // After the mount and the detector are up: a `cat` through the link waits only for the loop below.
    let link = options.controlFileLink.map { ControlFileLink(path: $0, target: controlFile) }
    if let link {
        do {
            try link.create()
            logger.info("\(link.path) -> \(controlFile)")
        } catch {
            logger.error("--control-link: \(error)")
        }
    }

    TerminationSignals.startWatcher { signal in
        logger.info("\(TerminationSignals.name(signal)) received, unmounting \(options.mountpoint)")
        beginStopping()
        mount.exit()
    }

    let result = mount.run(multithreaded: true)
    beginStopping()
    logger.debug("request loop ended", metadata: ["result": "\(result)"])
    link?.remove()
    backend.stop()
    mount.unmountAndDestroy()
    logger.info("stopped")
    return 0
}
