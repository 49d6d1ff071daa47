// Typed errors and the thin syscall layer: every call retries on EINTR and reports errno with the
// call's name and what it was applied to (swift-nio's `IOError` idea).
import Glibc

/// A failed system call: its name, errno, and the path or pid it was applied to.
public struct SystemError: Error, Sendable, Equatable, CustomStringConvertible {
    public var call: String
    public var errno: Int32
    public var context: String

    public init(call: String, errno: Int32, context: String = "") {
        self.call = call
        self.errno = errno
        self.context = context
    }

    public var description: String {
        let msg = String(cString: strerror(errno))
        return context.isEmpty ? "\(call): \(msg) (errno \(errno))" : "\(call)(\(context)): \(msg) (errno \(errno))"
    }
}

/// Runs `body` until it does not fail with EINTR; throws `SystemError` on any other failure (-1).
@inline(__always)
func retryingSyscall<T: BinaryInteger>(_ call: String, _ context: @autoclosure () -> String, _ body: () -> T) throws(SystemError) -> T {
    while true {
        let r = body()
        if r == -1 {
            let e = Glibc.errno
            if e == EINTR { continue }
            throw SystemError(call: call, errno: e, context: context())
        }
        return r
    }
}

/// An owned file descriptor, closed on deinit. Not copyable so ownership stays clear.
public final class FileHandleFD: @unchecked Sendable {
    // `fd` is immutable after init; the kernel object is safe to use from several threads (pread).
    public let fd: Int32
    public let path: String

    public init(fd: Int32, path: String) {
        self.fd = fd
        self.path = path
    }

    deinit { _ = Glibc.close(fd) }

    public static func open(_ path: String, _ flags: Int32) throws(SystemError) -> FileHandleFD {
        let fd = try retryingSyscall("open", path) { Glibc.open(path, flags | O_CLOEXEC) }
        return FileHandleFD(fd: fd, path: path)
    }

    public func fstat() throws(SystemError) -> stat {
        var st = stat()
        _ = try retryingSyscall("fstat", path) { Glibc.fstat(fd, &st) }
        return st
    }

    /// Reads up to `count` bytes at `offset`, looping over short reads; returns the bytes read
    /// (fewer only at end of file).
    public func pread(into buffer: UnsafeMutableRawBufferPointer, offset: UInt64) throws(SystemError) -> Int {
        var done = 0
        while done < buffer.count {
            let n = try retryingSyscall("pread", path) {
                Glibc.pread(fd, buffer.baseAddress! + done, buffer.count - done, off_t(offset) + off_t(done))
            }
            if n == 0 { break }
            done += n
        }
        return done
    }

    public func pwrite(_ buffer: UnsafeRawBufferPointer, offset: UInt64) throws(SystemError) {
        var done = 0
        while done < buffer.count {
            let n = try retryingSyscall("pwrite", path) {
                Glibc.pwrite(fd, buffer.baseAddress! + done, buffer.count - done, off_t(offset) + off_t(done))
            }
            if n == 0 { throw SystemError(call: "pwrite", errno: EIO, context: path) }
            done += n
        }
    }
}

/// Small file helpers for /proc text files (bounded sizes: /proc files are read whole).
enum ProcFile {
    /// Reads a whole (small) file, at most `limit` bytes.
    static func read(_ path: String, limit: Int = 16 << 20) throws(SystemError) -> [UInt8] {
        let h = try FileHandleFD.open(path, O_RDONLY)
        var out: [UInt8] = []
        var chunk = [UInt8](repeating: 0, count: min(65536, max(1, limit))) // small files, small buffers (stat of every pid)
        while out.count < limit {
            let want = min(chunk.count, limit - out.count)
            let n = try chunk.withUnsafeMutableBytes { b in
                Result { () throws(SystemError) -> Int in try retryingSyscall("read", path) { Glibc.read(h.fd, b.baseAddress!, want) } }
            }.get()
            if n == 0 { break }
            out.append(contentsOf: chunk[0..<n])
        }
        return out
    }

    static func readlink(_ path: String) throws(SystemError) -> String {
        var buf = [UInt8](repeating: 0, count: 4097)
        let n = try buf.withUnsafeMutableBufferPointer { b in
            Result { () throws(SystemError) -> Int in
                try retryingSyscall("readlink", path) {
                    b.baseAddress!.withMemoryRebound(to: CChar.self, capacity: b.count) { Glibc.readlink(path, $0, 4096) }
                }
            }
        }.get()
        return String(decoding: buf[0..<n], as: UTF8.self)
    }

    static func listDirectory(_ path: String) throws(SystemError) -> [String] {
        guard let dir = opendir(path) else {
            throw SystemError(call: "opendir", errno: Glibc.errno, context: path)
        }
        defer { closedir(dir) }
        return entries(dir)
    }

    /// The names in an open directory stream, but "." and "..".
    static func entries(_ dir: OpaquePointer) -> [String] { entriesWithInodes(dir).map(\.name) }

    /// The names and inode numbers (d_ino) in an open directory stream, but "." and "..".
    static func entriesWithInodes(_ dir: OpaquePointer) -> [(name: String, inode: UInt64)] {
        var entries: [(name: String, inode: UInt64)] = []
        while let ent = readdir(dir) {
            let name = withUnsafePointer(to: ent.pointee.d_name) {
                $0.withMemoryRebound(to: CChar.self, capacity: 256) { String(cString: $0) }
            }
            if name != "." && name != ".." { entries.append((name, UInt64(ent.pointee.d_ino))) }
        }
        return entries
    }

    static func entriesWithInodes(_ path: String) throws(SystemError) -> [(name: String, inode: UInt64)] {
        guard let dir = opendir(path) else {
            throw SystemError(call: "opendir", errno: Glibc.errno, context: path)
        }
        defer { closedir(dir) }
        return entriesWithInodes(dir)
    }
}

/// The daemon's own configuration files (`--suppressions FILE`), read whole.
public enum ConfigurationFile {
    /// At most this many bytes: a suppression file is a few lines.
    public static let maxSize = 4 << 20

    /// The file's bytes; a file longer than ``maxSize`` is an error (EFBIG), not silently cut.
    public static func read(_ path: String) throws(SystemError) -> [UInt8] {
        let bytes = try ProcFile.read(path, limit: maxSize + 1)
        if bytes.count > maxSize { throw SystemError(call: "read", errno: EFBIG, context: path) }
        return bytes
    }
}
