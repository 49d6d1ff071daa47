import Foundation
import Glibc
import KmemleakFS
import KmemleakService
@_exported import KmemleakTestSupport
import Logging
import Synchronization
import Testing

/// Real mounts need root and /dev/fuse; elsewhere the suites are skipped.
let canMount = getuid() == 0 && access("/dev/fuse", R_OK | W_OK) == 0

let testLogger: Logger = {
    var logger = Logger(label: "kmemleak-test") { StderrLogHandler(label: $0) }
    logger.logLevel = .warning
    return logger
}()

struct TestFailure: Error, CustomStringConvertible {
    var description: String
    init(_ description: String) { self.description = description }
}

/// A fresh directory per test (tests run in parallel: mount points are never shared).
final class TemporaryDirectory {
    let path: String
    init() throws {
        path = try makeTemporaryDirectory("/tmp/kmemleak-e2e.XXXXXX")
    }
    func sub(_ name: String) -> String { path + "/" + name }
    func makeDirectory(_ name: String) throws -> String {
        let dir = sub(name)
        guard mkdir(dir, 0o755) == 0 else { throw TestFailure("mkdir \(dir): \(errno)") }
        return dir
    }
    /// Removes the tree, after detaching anything still mounted under it.
    func remove() {
        for entry in MountPoint.mountTable().reversed() where entry.mountPoint.hasPrefix(path + "/") {
            _ = umount2(entry.mountPoint, Int32(MNT_DETACH))
        }
        try? FileManager.default.removeItem(atPath: path)
    }
}

/// Polls `condition` until it holds or `timeout` passes; returns whether it held.
@discardableResult
func waitUntil(timeout: Duration = .seconds(10), _ condition: () -> Bool) -> Bool {
    let clock = ContinuousClock()
    let deadline = clock.now + timeout
    while clock.now < deadline {
        if condition() { return true }
        usleep(5_000)
    }
    return condition()
}

// MARK: - File helpers (plain syscalls, so errno is the kernel's answer)

/// Reads a whole file with reads of `chunk` bytes.
func readAll(_ path: String, chunk: Int = 131072) throws -> [UInt8] {
    let fd = open(path, O_RDONLY)
    guard fd >= 0 else { throw TestFailure("open \(path): \(String(cString: strerror(errno)))") }
    defer { close(fd) }
    return try readAll(fd: fd, chunk: chunk)
}

func readAll(fd: Int32, chunk: Int = 131072) throws -> [UInt8] {
    var result: [UInt8] = []
    var buffer = [UInt8](repeating: 0, count: chunk)
    while true {
        let count = buffer.withUnsafeMutableBytes { read(fd, $0.baseAddress, chunk) }
        if count < 0 { throw TestFailure("read: \(String(cString: strerror(errno)))") }
        if count == 0 { return result }
        result.append(contentsOf: buffer[0..<count])
    }
}

/// One write(2) of `bytes`; returns the result and errno.
func writeOnce(_ path: String, _ bytes: [UInt8], flags: Int32 = O_WRONLY | O_TRUNC) -> (result: Int, errno: Int32) {
    let fd = open(path, flags)
    guard fd >= 0 else { return (-1, errno) }
    defer { close(fd) }
    let result = bytes.withUnsafeBytes { write(fd, $0.baseAddress, $0.count) }
    return (result, result < 0 ? errno : 0)
}

func statErrno(_ path: String) -> Int32 {
    var st = stat()
    return stat(path, &st) == 0 ? 0 : errno
}

// MARK: - Subprocesses (ChildProcess, shared by all test targets, is in KmemleakTestSupport)

/// The daemon binary, built next to the test bundle.
func daemonPath() throws -> String {
    let exe = URL(fileURLWithPath: "/proc/self/exe").resolvingSymlinksInPath()
    var dir = exe.deletingLastPathComponent()
    // The bundle may be a directory (…xctest/…); walk up to the bin dir holding kmemleakd.
    for _ in 0..<4 {
        let candidate = dir.appendingPathComponent("kmemleakd").path
        if access(candidate, X_OK) == 0 { return candidate }
        dir = dir.deletingLastPathComponent()
    }
    throw TestFailure("kmemleakd not found next to \(exe.path); run `swift build` first")
}

/// A datagram socket standing in for systemd's NOTIFY_SOCKET.
final class NotifySocket {
    let path: String
    let fd: Int32

    init(path: String) throws {
        self.path = path
        fd = socket(AF_UNIX, Int32(SOCK_DGRAM.rawValue) | Int32(SOCK_CLOEXEC.rawValue), 0)
        guard fd >= 0 else { throw TestFailure("socket: \(errno)") }
        var address = sockaddr_un()
        address.sun_family = sa_family_t(AF_UNIX)
        let bytes = Array(path.utf8)
        withUnsafeMutableBytes(of: &address.sun_path) { raw in
            raw.copyBytes(from: bytes)
            raw[bytes.count] = 0
        }
        let rc = withUnsafePointer(to: &address) {
            $0.withMemoryRebound(to: sockaddr.self, capacity: 1) {
                bind(fd, $0, socklen_t(MemoryLayout<sockaddr_un>.size))
            }
        }
        guard rc == 0 else { throw TestFailure("bind \(path): \(errno)") }
    }

    /// The next datagram, or nil after `timeout`.
    func receive(timeout: Duration = .seconds(10)) -> String? {
        var pollDescriptor = pollfd(fd: fd, events: Int16(POLLIN), revents: 0)
        let milliseconds = Int32(timeout.components.seconds * 1000 + timeout.components.attoseconds / 1_000_000_000_000_000)
        guard poll(&pollDescriptor, 1, milliseconds) == 1 else { return nil }
        var buffer = [UInt8](repeating: 0, count: 4096)
        let count = buffer.withUnsafeMutableBytes { recv(fd, $0.baseAddress, $0.count, 0) }
        guard count >= 0 else { return nil }
        return String(decoding: buffer[0..<count], as: UTF8.self)
    }

    deinit { close(fd) }
}
