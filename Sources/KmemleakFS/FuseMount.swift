import CFuse3
import Glibc
import KmemleakSystem
import Logging
import Synchronization

/// How the control file system is mounted.
public struct FuseMountOptions: Sendable, Equatable {
    /// Let users other than the daemon's user into the mount (`-o allow_other`). Off by default, so the
    /// mount is root-only like debugfs. Mode bits are always enforced (`default_permissions`), so with
    /// `allow_other` other users can read the report but not write commands.
    public var allowOther: Bool = false

    public init(allowOther: Bool = false) { self.allowOther = allowOther }

    /// The `-o` list handed to libfuse.
    public var mountOptionString: String {
        var options = ["fsname=kmemleak", "subtype=kmemleak", "default_permissions"]
        if allowOther { options.append("allow_other") }
        return options.joined(separator: ",")
    }
}

/// Why a mount could not be set up.
public enum FuseMountError: Error, CustomStringConvertible, Equatable {
    case fuseNewFailed(options: String)
    case mountFailed(path: String, errno: Int32)

    public var description: String {
        switch self {
        case .fuseNewFailed(let options):
            return "fuse_new failed (mount options \(options))"
        case .mountFailed(let path, let errno):
            return "cannot mount on \(path): fuse_mount failed (last errno \(errno): \(String(cString: strerror(errno))))"
        }
    }
}

/// One mounted control file system: `fuse_new` + `fuse_mount` in `init`, then `run()` (the loop, on
/// the calling thread), `exit()` from any thread, and `unmountAndDestroy()` after the loop returned.
///
/// Installs no signal handlers (libfuse's are process-global): the daemon routes signals to `exit()`
/// itself (see KmemleakService.TerminationSignals), and tests mount several of these in one process.
public final class FuseMount: @unchecked Sendable {
    // @unchecked: `fuse` is an OpaquePointer (not Sendable). libfuse allows fuse_exit from any thread;
    // every other use is serialised by `lifecycle`.
    public let mountpoint: String
    private let fuse: OpaquePointer
    private let fileSystem: ControlFileSystem
    private let logger: Logger
    private let lifecycle = Mutex<Lifecycle>(.mounted)

    private enum Lifecycle { case mounted, running, exiting, destroyed }

    /// Creates the FUSE session and mounts it on `mountpoint` (which must be an empty, unmounted
    /// directory: see ``MountPoint/prepare(_:logger:)``). Requests queue in the kernel until `run()`.
    ///
    /// - Parameter onReady: called once from a libfuse worker when the kernel's INIT request has been
    ///   answered, i.e. when `MOUNTPOINT/kmemleak` can be served (the daemon sends `READY=1` there).
    public init(
        mountpoint: String, backend: any ControlFileBackend, options: FuseMountOptions = .init(),
        logger: Logger, onReady: @escaping @Sendable () -> Void = {}
    ) throws(FuseMountError) {
        self.mountpoint = mountpoint
        self.logger = logger
        self.fileSystem = ControlFileSystem(backend: backend, logger: logger, onReady: onReady)

        let optionString = options.mountOptionString
        var argv: [UnsafeMutablePointer<CChar>?] = [strdup("kmemleakd"), strdup("-o"), strdup(optionString), nil]
        defer { for arg in argv { free(arg) } }
        var ops = makeOperations()
        let context = Unmanaged.passUnretained(fileSystem).toOpaque()
        let created: OpaquePointer? = argv.withUnsafeMutableBufferPointer { argvBuffer in
            var args = fuse_args(argc: 3, argv: argvBuffer.baseAddress, allocated: 0)
            defer { fuse_opt_free_args(&args) }  // frees only what libfuse allocated while parsing
            return cfuse_new(&args, &ops, context)
        }
        guard let created else { throw .fuseNewFailed(options: optionString) }
        errno = 0
        if fuse_mount(created, mountpoint) != 0 {
            let error = errno
            fuse_destroy(created)
            throw .mountFailed(path: mountpoint, errno: error)
        }
        self.fuse = created
        logger.debug("mounted", metadata: ["mountpoint": "\(mountpoint)", "options": "\(optionString)"])
    }

    /// Runs the request loop on the calling thread until `exit()` or an external unmount
    /// (`fusermount3 -u`, `umount`). Multi-threaded by default: a `scan` running inside one write
    /// does not stop other files from being served. Returns libfuse's result (0 on a normal end).
    @discardableResult
    public func run(multithreaded: Bool = true) -> Int32 {
        let proceed = lifecycle.withLock { state -> Bool in
            guard state == .mounted else { return false }
            state = .running
            return true
        }
        guard proceed else { return 0 }
        return multithreaded ? cfuse_loop_mt(fuse, 0) : fuse_loop(fuse)
    }

    /// Ends the loop from any thread, without waiting for it.
    ///
    /// `fuse_exit` only sets a flag: a worker blocked reading /dev/fuse does not see it. So a running
    /// loop is also sent one request of our own (an opendir of the root, always forwarded to us), from
    /// a helper thread: the worker that takes it sees the flag and ends the loop. (A worker that takes
    /// it while the loop is already ending drops it unanswered; the helper's call then fails when
    /// `unmountAndDestroy()` closes /dev/fuse, so nothing waits on it.) Then the mount is detached
    /// (`umount2(MNT_DETACH)`). Closing /dev/fuse aborts the connection even while some process still
    /// holds the file open, so `unmountAndDestroy()` never waits for readers either.
    public func exit() {
        let wasRunning = lifecycle.withLock { state -> Bool? in
            guard state == .mounted || state == .running else { return nil }
            defer { state = .exiting }
            return state == .running
        }
        guard let wasRunning else { return }
        fuse_exit(fuse)
        let mountpoint = self.mountpoint
        let logger = self.logger
        let detach: @Sendable () -> Void = {
            if umount2(mountpoint, Int32(MNT_DETACH)) != 0 && errno != EINVAL {
                logger.warning("umount2(\(mountpoint), MNT_DETACH) failed: \(String(cString: strerror(errno)))")
            }
        }
        guard wasRunning else { return detach() }
        startThread(name: "kmemleak-exit") {
            let fd = open(mountpoint, O_RDONLY | O_DIRECTORY | O_CLOEXEC)
            if fd >= 0 { close(fd) }
            detach()
        }
    }

    /// Unmounts (if still mounted) and frees the session. Call after `run()` returned, or instead of
    /// running. Idempotent.
    public func unmountAndDestroy() {
        let proceed = lifecycle.withLock { state -> Bool in
            guard state != .destroyed else { return false }
            state = .destroyed
            return true
        }
        guard proceed else { return }
        fuse_unmount(fuse)
        fuse_destroy(fuse)
        withExtendedLifetime(fileSystem) {}
    }

    /// How many files are open on this mount right now (tests check that `release` frees them).
    public var openFileCount: Int { fileSystem.openFileCount }

    deinit { unmountAndDestroy() }
}
