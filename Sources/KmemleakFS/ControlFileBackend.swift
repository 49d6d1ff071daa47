import Glibc
import KmemleakReports

/// What the FUSE front needs from the daemon: the two halves of the kernel's `kmemleak_fops`.
///
/// The front is thin (DESIGN.md decision 7): every write to `MOUNTPOINT/kmemleak` becomes one
/// `write(command:)` call, every open file that is read gets one `openReport()` snapshot. Implementations
/// are called concurrently from libfuse worker threads and must synchronise themselves.
public protocol ControlFileBackend: Sendable {
    /// Executes one write to the control file (the kernel copies at most 63 bytes of it: pass only those).
    /// Returns nil on success, or the positive errno to fail the write with (EINVAL, EPERM, ERANGE, EINTR...).
    /// `scan` runs synchronously inside this call, as in the kernel.
    ///
    /// The front passes the bytes exactly as written (a trailing `\n` included); it never calls this with
    /// more than ``maxCommandLength`` bytes and ignores the file offset, like debugfs.
    func write(command: [UInt8]) -> Int32?

    /// Takes a consistent snapshot of the report for one open file. Blocks while a scan runs (kernel:
    /// reads wait on scan_mutex). The snapshot renders lazily in chunks.
    ///
    /// Called at most once per open file, on its first read (never for a file that is only written);
    /// the front drops the stream when the file is released.
    func openReport() -> any ReportStream

    /// ``write(command:)`` for a request made by `requester` (nil on success, else the errno).
    func write(command: [UInt8], from requester: Requester) -> Int32?

    /// ``openReport()`` for the file `requester` opened: the snapshot may show only what that user
    /// may see.
    func openReport(for requester: Requester) -> any ReportStream

    /// One read-only view (`MOUNTPOINT/kmemleak.summary`, ...) for the file `requester` opened: a
    /// consistent snapshot of exactly what ``openReport(for:)`` would show that requester, taken once
    /// per open file on its first read, like the report.
    func openView(_ view: LeakView, for requester: Requester) -> any ReportStream
}

/// One open file's view of the report: a byte string fixed when ``ControlFileBackend/openReport()`` ran.
public protocol ReportStream: Sendable {
    /// Copies report bytes starting at `offset` into `buffer`; returns the count (0 at the end).
    /// Offsets only move forward in practice, but must work for any offset (pread, dd bs=7, re-reads).
    ///
    /// May return fewer bytes than `buffer.count` before the end (for example at a chunk boundary);
    /// the front calls again until the buffer is full or 0 comes back.
    func read(at offset: Int, into buffer: UnsafeMutableRawBufferPointer) -> Int
}

/// Who made a request to the file system: the credentials of the calling process, from the FUSE
/// request (`fuse_get_context`). With `--allow-other` users other than root reach the mount, and the
/// backend decides what each may see and do.
public struct Requester: Sendable, Equatable {
    public var uid: uid_t
    public var gid: gid_t
    public var pid: pid_t

    public init(uid: uid_t, gid: gid_t, pid: pid_t) { self.uid = uid; self.gid = gid; self.pid = pid }

    /// The daemon's own user (root): sees and may do everything.
    public static let root = Requester(uid: 0, gid: 0, pid: 0)
    public var isRoot: Bool { uid == 0 }
}

/// A stream over bytes made at open (a view rendered whole, e.g. a compressed profile).
public struct BytesReportStream: ReportStream {
    public let bytes: [UInt8]

    public init(_ bytes: [UInt8]) { self.bytes = bytes }

    public func read(at offset: Int, into buffer: UnsafeMutableRawBufferPointer) -> Int {
        guard offset >= 0, offset < bytes.count, buffer.count > 0 else { return 0 }
        let count = min(buffer.count, bytes.count - offset)
        bytes.withUnsafeBytes { source in
            buffer.copyMemory(from: UnsafeRawBufferPointer(rebasing: source[offset..<(offset + count)]))
        }
        return count
    }
}

/// The per-requester entry points. The defaults ignore the requester: a backend that has per-user
/// rules implements these (the front always calls them).
extension ControlFileBackend {
    public func write(command: [UInt8], from requester: Requester) -> Int32? { write(command: command) }
    public func openReport(for requester: Requester) -> any ReportStream { openReport() }
    /// A backend without views (test fakes of the control file) serves them empty.
    public func openView(_ view: LeakView, for requester: Requester) -> any ReportStream { BytesReportStream([]) }
}

/// The kernel copies at most this many bytes of a write (`char buf[64]`, NUL-terminated).
public let maxCommandLength = 63

/// Hooks the daemon calls around the FUSE loop; the real backend starts its own threads here.
public protocol DaemonService: Sendable {
    /// Called once, after the file system is mounted and before `READY=1` is sent: begin client
    /// discovery and, if the scan period is not 0, the automatic scan thread (first scan after
    /// `firstScanDelay`). Throwing makes the daemon unmount and exit with status 1.
    func start() throws
    /// Called once after the loop has ended (every FUSE worker has returned; no more calls come in):
    /// stop the threads started by `start()` and release clients. Must not block for long.
    func stop()
}
