import Glibc
import Logging

/// One line of `/proc/self/mountinfo` (proc(5)), with the octal escapes (`\040`) decoded.
public struct MountInfoEntry: Sendable, Equatable {
    public var mountPoint: String
    /// Per-mount options (`rw,nosuid,...`).
    public var mountOptions: String
    /// `fuse.kmemleak` for our mounts.
    public var fileSystemType: String
    /// `kmemleak` for our mounts (the `fsname`).
    public var source: String
    /// Per-superblock options: for FUSE `user_id=0,group_id=0,default_permissions[,allow_other]`.
    public var superOptions: String

    /// Every option, mount and superblock, split at commas.
    public var allOptions: Set<String> {
        Set((mountOptions + "," + superOptions).split(separator: ",").map(String.init))
    }
}

/// Stale-mount handling and the mount table.
public enum MountPoint {
    /// The current mount table, in mount order (later entries stack on earlier ones).
    public static func mountTable() -> [MountInfoEntry] {
        guard let text = readWholeFile("/proc/self/mountinfo") else { return [] }
        return text.split(separator: "\n").compactMap { line in
            let fields = line.split(separator: " ", omittingEmptySubsequences: false).map(String.init)
            guard let dash = fields.firstIndex(of: "-"), dash >= 6, fields.count >= dash + 4 else { return nil }
            return MountInfoEntry(
                mountPoint: unescape(fields[4]), mountOptions: fields[5], fileSystemType: fields[dash + 1],
                source: unescape(fields[dash + 2]), superOptions: fields[dash + 3])
        }
    }

    /// The mounts whose mount point is `path` (after resolving symlinks and `..` where possible).
    public static func mounts(at path: String) -> [MountInfoEntry] {
        let target = resolvedPath(path)
        return mountTable().filter { $0.mountPoint == target }
    }

    /// Makes `path` ready for a new mount, the way a restarted daemon needs it:
    /// - a stale FUSE mount left by a killed daemon (`stat` fails with ENOTCONN, "Transport endpoint
    ///   is not connected") is detached (`umount2(MNT_DETACH)`, else `fusermount3 -u -z`), repeatedly
    ///   if several are stacked;
    /// - a path that cannot be reached, or is not a directory, is an error naming the errno;
    /// - a live mount on the path (another daemon, a tmpfs, ...) is an error: mounts are never stacked.
    public static func prepare(_ path: String, logger: Logger) throws(MountPointError) {
        var cleared = 0
        while true {
            var st = stat()
            var error: Int32 = 0
            if stat(path, &st) != 0 {
                error = errno
                guard error == ENOTCONN else { throw .inaccessible(path: path, errno: error) }
            } else if let top = mounts(at: path).last, top.fileSystemType.hasPrefix("fuse") {
                // The kernel answers stat from its attribute cache for a second after the daemon
                // died; opendir always reaches the daemon, so it tells a dead one at once.
                let fd = open(path, O_RDONLY | O_DIRECTORY | O_CLOEXEC)
                if fd >= 0 { close(fd) } else if errno == ENOTCONN { error = ENOTCONN }
            }
            guard error == ENOTCONN else { break }
            guard cleared < 16 else { throw .staleMountNotCleared(path: path, errno: error) }
            logger.notice("\(path): clearing stale mount (\(String(cString: strerror(error))))")
            if umount2(path, Int32(MNT_DETACH)) != 0 {
                let umountError = errno
                if runFusermountLazyUnmount(path) != 0 {
                    throw .staleMountNotCleared(path: path, errno: umountError)
                }
            }
            cleared += 1
        }
        var st = stat()
        guard stat(path, &st) == 0 else { throw .inaccessible(path: path, errno: errno) }
        guard (st.st_mode & 0o170000) == 0o040000 else { throw .notADirectory(path: path) }
        if let live = mounts(at: path).last {
            throw .alreadyMounted(path: path, fileSystemType: live.fileSystemType, source: live.source)
        }
    }

    static func resolvedPath(_ path: String) -> String {
        guard let resolved = realpath(path, nil) else { return path }
        defer { free(resolved) }
        return String(cString: resolved)
    }

    private static func unescape(_ field: String) -> String {
        guard field.contains("\\") else { return field }
        var bytes: [UInt8] = []
        let utf8 = Array(field.utf8)
        var i = 0
        while i < utf8.count {
            if utf8[i] == UInt8(ascii: "\\"), i + 3 < utf8.count,
                let value = UInt8(String(decoding: utf8[(i + 1)...(i + 3)], as: UTF8.self), radix: 8)
            {
                bytes.append(value)
                i += 4
            } else {
                bytes.append(utf8[i])
                i += 1
            }
        }
        return String(decoding: bytes, as: UTF8.self)
    }

    /// `fusermount3 -u -z PATH` (for a daemon that is not root), with a clean signal mask; its exit status.
    private static func runFusermountLazyUnmount(_ path: String) -> Int32 {
        runProgram(["fusermount3", "-u", "-z", path])
    }
}

/// Why a mount point cannot be used.
public enum MountPointError: Error, CustomStringConvertible, Equatable {
    case inaccessible(path: String, errno: Int32)
    case notADirectory(path: String)
    case staleMountNotCleared(path: String, errno: Int32)
    case alreadyMounted(path: String, fileSystemType: String, source: String)

    public var description: String {
        switch self {
        case .inaccessible(let path, let error):
            return "\(path): \(String(cString: strerror(error))) (errno \(error))"
        case .notADirectory(let path):
            return "\(path): \(String(cString: strerror(ENOTDIR))) (errno \(ENOTDIR))"
        case .staleMountNotCleared(let path, let error):
            return "\(path): cannot clear stale mount: \(String(cString: strerror(error))) (errno \(error))"
        case .alreadyMounted(let path, let type, let source):
            return "\(path): already a mount point (\(type) from \(source)); not stacking another mount on it"
        }
    }
}

/// Reads a whole (procfs) file; nil if it cannot be opened.
func readWholeFile(_ path: String) -> String? {
    let fd = open(path, O_RDONLY | O_CLOEXEC)
    guard fd >= 0 else { return nil }
    defer { close(fd) }
    var bytes: [UInt8] = []
    var chunk = [UInt8](repeating: 0, count: 65536)
    while true {
        let count = chunk.withUnsafeMutableBytes { read(fd, $0.baseAddress, $0.count) }
        if count < 0 && errno == EINTR { continue }
        if count <= 0 { break }
        bytes.append(contentsOf: chunk[0..<count])
    }
    return String(decoding: bytes, as: UTF8.self)
}

/// Runs a program from PATH with default signal dispositions and an empty signal mask (the daemon
/// blocks SIGTERM/SIGINT/SIGHUP, which children would otherwise inherit); returns its exit status,
/// or -1 if it could not be started.
func runProgram(_ arguments: [String]) -> Int32 {
    var attributes = posix_spawnattr_t()
    posix_spawnattr_init(&attributes)
    defer { posix_spawnattr_destroy(&attributes) }
    var emptyMask = sigset_t()
    sigemptyset(&emptyMask)
    posix_spawnattr_setsigmask(&attributes, &emptyMask)
    var defaults = sigset_t()
    sigemptyset(&defaults)
    // The signals a daemon blocks or ignores (SIGPIPE) must not reach the helper that way.
    for signal in [SIGTERM, SIGINT, SIGHUP, SIGPIPE] { sigaddset(&defaults, signal) }
    posix_spawnattr_setsigdefault(&attributes, &defaults)
    posix_spawnattr_setflags(&attributes, Int16(POSIX_SPAWN_SETSIGMASK | POSIX_SPAWN_SETSIGDEF))
    var argv: [UnsafeMutablePointer<CChar>?] = arguments.map { strdup($0) } + [nil]
    defer { for arg in argv { free(arg) } }
    var pid = pid_t()
    guard posix_spawnp(&pid, arguments[0], nil, &attributes, &argv, environ) == 0 else { return -1 }
    var status: Int32 = 0
    while waitpid(pid, &status, 0) < 0 {
        if errno != EINTR { return -1 }
    }
    return (status & 0x7f) == 0 ? (status >> 8) & 0xff : -1
}
