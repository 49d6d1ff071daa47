import CFuse3
import Glibc
import KmemleakReports
import Logging
import Synchronization

/// A file of the mount: the control file, or one of the read-only views next to it.
enum MountFile: Equatable, Sendable {
    case control
    case view(LeakView)

    /// Every file, in readdir order.
    static let all: [MountFile] = [.control] + LeakView.allCases.map { .view($0) }

    init?(path: String) {
        guard path.hasPrefix("/") else { return nil }
        let name = path.dropFirst()
        if name == ControlFileSystem.fileName {
            self = .control
        } else if let view = LeakView(rawValue: String(name)) {
            self = .view(view)
        } else {
            return nil
        }
    }

    var name: String {
        switch self {
        case .control: ControlFileSystem.fileName
        case .view(let view): view.fileName
        }
    }

    /// The control file is 0644 like debugfs's; views are 0444: nobody writes them.
    var mode: mode_t {
        switch self {
        case .control: 0o644
        case .view: 0o444
        }
    }

    var inode: ino_t {
        switch self {
        case .control: 2
        case .view(let view): ino_t(3 + (LeakView.allCases.firstIndex(of: view) ?? 0))
        }
    }
}

/// The state behind one mount: the backend and the open files (keyed by `fi->fh`).
///
/// libfuse calls the operations below from its worker threads; everything here is `Sendable` and
/// guarded by `Mutex`es. Each open file has its own lock so that a reader waiting for a scan to finish
/// (inside `openReport()`) never holds up the others.
final class ControlFileSystem: Sendable {
    static let fileName = "kmemleak"

    let backend: any ControlFileBackend
    let logger: Logger
    let onReady: @Sendable () -> Void
    let owner: (uid: uid_t, gid: gid_t)
    let mountTime: timespec

    private let openFiles = Mutex<(next: UInt64, files: [UInt64: OpenFile])>((1, [:]))

    init(backend: any ControlFileBackend, logger: Logger, onReady: @escaping @Sendable () -> Void) {
        self.backend = backend
        self.logger = logger
        self.onReady = onReady
        self.owner = (getuid(), getgid())
        var now = timespec()
        clock_gettime(CLOCK_REALTIME, &now)
        self.mountTime = now
    }

    /// Registers a new open file of `mountFile`, opened by `requester`, and returns its handle (stored
    /// in `fi->fh`).
    func open(_ mountFile: MountFile, by requester: Requester) -> UInt64 {
        openFiles.withLock { state in
            let handle = state.next
            state.next += 1
            state.files[handle] = OpenFile(mountFile, openedBy: requester)
            return handle
        }
    }

    func file(_ handle: UInt64) -> OpenFile? {
        openFiles.withLock { $0.files[handle] }
    }

    func release(_ handle: UInt64) {
        // Taken out under the lock, freed (with the snapshot it holds) after it, at the end of scope.
        let file = openFiles.withLock { $0.files.removeValue(forKey: handle) }
        withExtendedLifetime(file) {}
    }

    var openFileCount: Int { openFiles.withLock { $0.files.count } }

    /// Reads `buffer.count` bytes (or up to the end) of the file's snapshot, taking it on first use.
    func read(_ handle: UInt64, at offset: Int, into buffer: UnsafeMutableRawBufferPointer) -> Int32 {
        guard let file = file(handle) else { return -EBADF }
        let stream = file.stream(backend)
        var filled = 0
        while filled < buffer.count {
            let rest = UnsafeMutableRawBufferPointer(rebasing: buffer[filled...])
            let count = stream.read(at: offset + filled, into: rest)
            if count <= 0 { break }
            filled += min(count, rest.count)
        }
        return Int32(filled)
    }

    /// One write is one command, as in `kmemleak_write`: only the first 63 bytes count.
    func write(_ handle: UInt64, _ bytes: UnsafeRawBufferPointer, from requester: Requester) -> Int32 {
        // Views are never open for writing (open refuses it); a handle that is not one is stale.
        guard let file = file(handle), file.mountFile == .control else { return -EBADF }
        let command = Array(bytes.prefix(maxCommandLength))
        if let error = backend.write(command: command, from: requester) {
            return -(error > 0 ? error : EINVAL)
        }
        return Int32(bytes.count)
    }

    func fillAttributes(path: String, _ st: inout stat) -> Int32 {
        st = stat()
        st.st_uid = owner.uid
        st.st_gid = owner.gid
        st.st_atim = mountTime
        st.st_mtim = mountTime
        st.st_ctim = mountTime
        st.st_blksize = 4096
        switch path {
        case "/":
            st.st_ino = 1
            st.st_mode = mode_t(0o040000) | 0o755
            st.st_nlink = 2
        default:
            guard let mountFile = MountFile(path: path) else { return -ENOENT }
            st.st_ino = mountFile.inode
            st.st_mode = mode_t(0o100000) | mountFile.mode
            st.st_nlink = 1
            st.st_size = 0  // like debugfs: the size is not known before the snapshot is rendered
        }
        return 0
    }
}

/// Per-open state: which file, who opened it, and its snapshot, taken lazily by the first read.
final class OpenFile: Sendable {
    let mountFile: MountFile
    /// The opener's credentials at open time (like /proc: a descriptor passed on keeps its view).
    let requester: Requester
    private let snapshot = Mutex<(any ReportStream)?>(nil)

    init(_ mountFile: MountFile, openedBy requester: Requester) {
        self.mountFile = mountFile
        self.requester = requester
    }

    /// The snapshot, taken now if this is the first read. Concurrent first reads of the same open
    /// file wait for one `openReport()` call.
    func stream(_ backend: any ControlFileBackend) -> any ReportStream {
        snapshot.withLock { current in
            if let current { return current }
            let stream: any ReportStream
            switch mountFile {
            case .control: stream = backend.openReport(for: requester)
            case .view(let view): stream = backend.openView(view, for: requester)
            }
            current = stream
            return stream
        }
    }
}

// MARK: - The libfuse operations table

private func currentFileSystem() -> ControlFileSystem {
    Unmanaged<ControlFileSystem>.fromOpaque(fuse_get_context()!.pointee.private_data).takeUnretainedValue()
}

/// The credentials of the process that made the current FUSE request.
private func currentRequester() -> Requester {
    guard let context = fuse_get_context() else { return Requester(uid: uid_t.max, gid: gid_t.max, pid: 0) }
    return Requester(uid: context.pointee.uid, gid: context.pointee.gid, pid: context.pointee.pid)
}

private func pathString(_ path: UnsafePointer<CChar>?) -> String {
    path.map { String(cString: $0) } ?? ""
}

/// The high-level operations of the one-file file system. Built here, in a nonisolated library
/// function, so the C callbacks are not inferred `@MainActor` (SWIFT-LINUX-NOTES.md §1).
func makeOperations() -> fuse_operations {
    var ops = fuse_operations()
    ops.`init` = { _, cfg in
        if let cfg {
            cfg.pointee.direct_io = 1  // st_size is 0: the kernel must not use the page cache
            cfg.pointee.kernel_cache = 0
            cfg.pointee.attr_timeout = 1
            cfg.pointee.entry_timeout = 1
            cfg.pointee.negative_timeout = 0
        }
        let data = fuse_get_context()!.pointee.private_data
        Unmanaged<ControlFileSystem>.fromOpaque(data!).takeUnretainedValue().onReady()
        return data
    }
    ops.getattr = { path, st, _ in
        guard let st else { return -EINVAL }
        return currentFileSystem().fillAttributes(path: pathString(path), &st.pointee)
    }
    ops.readdir = { path, buf, filler, _, _, _ in
        guard pathString(path) == "/", let filler else { return -ENOTDIR }
        let noFlags = fuse_fill_dir_flags(rawValue: 0)
        _ = filler(buf, ".", nil, 0, noFlags)
        _ = filler(buf, "..", nil, 0, noFlags)
        for file in MountFile.all { _ = filler(buf, file.name, nil, 0, noFlags) }
        return 0
    }
    ops.opendir = { path, _ in
        let path = pathString(path)
        if path == "/" { return 0 }
        return MountFile(path: path) == nil ? -ENOENT : -ENOTDIR
    }
    ops.open = { path, fi in
        guard let fi else { return -EINVAL }
        guard let mountFile = MountFile(path: pathString(path)) else { return -ENOENT }
        // Mode 0444 refuses writers, but root passes mode bits (CAP_DAC_OVERRIDE): refuse here with
        // the errno a read-only file gives.
        if mountFile != .control && (fi.pointee.flags & O_ACCMODE != O_RDONLY || fi.pointee.flags & O_TRUNC != 0) {
            return -EACCES
        }
        fi.pointee.direct_io = 1
        fi.pointee.keep_cache = 0
        fi.pointee.fh = currentFileSystem().open(mountFile, by: currentRequester())
        return 0
    }
    ops.read = { _, buf, size, offset, fi in
        guard let fi, let buf else { return -EINVAL }
        guard offset >= 0 else { return -EINVAL }
        let buffer = UnsafeMutableRawBufferPointer(start: buf, count: min(size, Int(Int32.max)))
        return currentFileSystem().read(fi.pointee.fh, at: Int(offset), into: buffer)
    }
    ops.write = { _, buf, size, _, fi in
        guard let buf, let fi else { return -EINVAL }
        return currentFileSystem().write(fi.pointee.fh, UnsafeRawBufferPointer(start: buf, count: min(size, Int(Int32.max))),
                                         from: currentRequester())
    }
    ops.release = { _, fi in
        if let fi { currentFileSystem().release(fi.pointee.fh) }
        return 0
    }
    ops.flush = { _, _ in 0 }
    ops.fsync = { _, _, _ in 0 }
    // `echo scan > file` opens with O_TRUNC; debugfs ignores it and so do we.
    ops.truncate = { path, _, _ in
        let path = pathString(path)
        if path == "/" { return -EISDIR }
        switch MountFile(path: path) {
        case .control: return 0
        case .view: return -EACCES
        case nil: return -ENOENT
        }
    }
    ops.utimens = { path, _, _ in
        pathString(path) == "/" || MountFile(path: pathString(path)) != nil ? 0 : -ENOENT
    }
    // The directory holds exactly the files above: nothing can be created, removed or renamed.
    ops.create = { _, _, _ in -EACCES }
    ops.mknod = { _, _, _ in -EACCES }
    ops.mkdir = { _, _ in -EACCES }
    ops.symlink = { _, _ in -EACCES }
    ops.link = { _, _ in -EACCES }
    ops.unlink = { _ in -EPERM }
    ops.rmdir = { _ in -EPERM }
    ops.rename = { _, _, _ in -EPERM }
    ops.chmod = { _, _, _ in -EPERM }
    ops.chown = { _, _, _, _ in -EPERM }
    return ops
}
