// Which pages a client wrote since a moment, from the kernel: userfaultfd write-protection in async
// mode (UFFD_FEATURE_WP_ASYNC, Linux 6.7) and the PAGEMAP_SCAN ioctl on /proc/PID/pagemap. The shim
// creates the userfaultfd (nothing registered, no handler thread: in async mode the kernel resolves a
// write fault by clearing the page's protection); the daemon takes it with pidfd_getfd, registers the
// client's anonymous private mappings, write-protects their populated pages before a scan, and asks,
// the client frozen, which pages were written since (see BENCHMARKS.md "Pause").
import CKmemleakABI
import CKmemleakSys
import Glibc

/// Why a client's write tracking cannot be used.
public enum WriteTrackingError: Error, Sendable, Equatable, CustomStringConvertible {
    case system(SystemError)
    /// The fd the table names is not a userfaultfd (the program closed it and reused the number).
    case notAUserfaultfd(fd: Int32, target: String)
    /// A userfaultfd without asynchronous write-protection: a write would wait for a handler.
    case notAsynchronous(fd: Int32, fdinfo: String)
    /// Registered through it, the client's own mapping does not show it: the userfaultfd is another
    /// process's (inherited, or passed over a socket).
    case notTheClients(fd: Int32)

    public var description: String {
        switch self {
        case .system(let e): return "\(e)"
        case .notAUserfaultfd(let fd, let target): return "fd \(fd) is not a userfaultfd (\(target))"
        case .notAsynchronous(let fd, let info): return "userfaultfd \(fd) is not in asynchronous write-protect mode (\(info))"
        case .notTheClients(let fd): return "userfaultfd \(fd) does not track the client's own memory"
        }
    }
}

/// An address interval [start, end).
public struct AddressInterval: Sendable, Equatable {
    public var start: UInt64
    public var end: UInt64
    public init(start: UInt64, end: UInt64) { self.start = start; self.end = end }
}

/// The daemon's handle on one client's write tracking.
public final class WriteTracker: @unchecked Sendable {
    // Immutable after init; the kernel objects are used from the scanning thread only.
    public let pid: Int32
    private let uffd: FileHandleFD
    private let pagemap: FileHandleFD

    /// userfaultfd features (include/uapi/linux/userfaultfd.h) the shim asks for.
    static let featureWPUnpopulated: UInt64 = 1 << 13
    static let featureWPAsync: UInt64 = 1 << 15
    /// Written regions asked for per PAGEMAP_SCAN call; a range with more is read whole.
    static let regionsPerCall = 1024
    static let maxRegionsPerRange = 1 << 16
    /// Bytes write-protected per ioctl: each holds the client's mmap lock (shared) that long.
    static let protectChunk: UInt64 = 64 << 20

    /// Takes the client's userfaultfd `clientFD` (the table's `userfaultfd`).
    public init(pid: Int32, clientFD: Int32) throws(WriteTrackingError) {
        self.pid = pid
        // Its name first: a file of a FUSE server there must not be taken (closing it would wait on it).
        let link = "/proc/\(pid)/fd/\(clientFD)"
        let target: String
        do { target = try ProcFile.readlink(link) } catch { throw .system(error) }
        guard target == "anon_inode:[userfaultfd]" else { throw .notAUserfaultfd(fd: clientFD, target: target) }
        let pidfd: Int32
        do { pidfd = try retryingSyscall("pidfd_open", "\(pid)") { ckml_pidfd_open(pid) } } catch { throw .system(error) }
        defer { close(pidfd) }
        let fd: Int32
        do { fd = try retryingSyscall("pidfd_getfd", "pid \(pid) fd \(clientFD)") { ckml_pidfd_getfd(pidfd, clientFD) } }
        catch { throw .system(error) }
        // The client may have swapped the file in between: check the copy we hold.
        let ours = (try? ProcFile.readlink("/proc/self/fd/\(fd)")) ?? "?"
        guard ours == "anon_inode:[userfaultfd]" else {
            _ = ckml_close_detached(fd)
            throw .notAUserfaultfd(fd: clientFD, target: ours)
        }
        uffd = FileHandleFD(fd: fd, path: "userfaultfd of pid \(pid)")
        let info = String(decoding: (try? ProcFile.read("/proc/self/fdinfo/\(fd)", limit: 4096)) ?? [], as: UTF8.self)
        guard let features = Self.features(fdinfo: info),
              features & (Self.featureWPAsync | Self.featureWPUnpopulated) == Self.featureWPAsync | Self.featureWPUnpopulated
        else { throw .notAsynchronous(fd: clientFD, fdinfo: info.split(separator: "\n").filter { $0.hasPrefix("API") }.joined()) }
        do { pagemap = try FileHandleFD.open("/proc/\(pid)/pagemap", O_RDONLY) } catch { throw .system(error) }
    }

    /// The features field of a userfaultfd's fdinfo ("API:\t<api>:<features>:<ioctls>", hex).
    static func features(fdinfo: String) -> UInt64? {
        for line in fdinfo.split(separator: "\n") where line.hasPrefix("API:") {
            let fields = line.dropFirst(4).drop(while: { $0 == "\t" || $0 == " " }).split(separator: ":")
            guard fields.count >= 2 else { return nil }
            return UInt64(fields[1], radix: 16)
        }
        return nil
    }

    /// Registers each mapping (whole: a part would split it) and write-protects its present and swapped
    /// pages: from now on a write to any of them shows in `writtenPages`. Returns the mappings tracked;
    /// the others (registered by another userfaultfd, gone, or not write-protectable) are not.
    /// The first mapping proves that the userfaultfd is the client's own.
    public func protect(_ mappings: [AddressInterval]) throws(WriteTrackingError) -> [AddressInterval] {
        var tracked: [AddressInterval] = []
        var proved = false
        for m in mappings where m.start < m.end && m.start & 4095 == 0 && m.end & 4095 == 0 {
            guard ckml_uffd_register_wp(uffd.fd, m.start, m.end - m.start) == 0 else { continue }
            var ok = true
            var at = m.start
            while at < m.end {
                let end = min(m.end, at &+ Self.protectChunk) < at ? m.end : min(m.end, at &+ Self.protectChunk)
                var walkEnd: UInt64 = 0
                if ckml_pagemap_scan(pagemap.fd, at, end, 1, nil, 0, &walkEnd) < 0 {
                    if errno == EINTR { continue }
                    ok = false
                    break
                }
                at = end
            }
            if !ok {
                // EPERM here, right after our registration: not the client's memory that was registered.
                if !proved && errno == EPERM { throw .notTheClients(fd: uffd.fd) }
                continue
            }
            proved = true
            tracked.append(m)
        }
        return tracked
    }

    /// Ends the tracking of `mappings` (from `protect`): unregistered, their pages are writable without a
    /// fault again. Between scans the client's memory carries no registration of ours, so a program that
    /// uses userfaultfd itself can register its own memory (a range registered by another userfaultfd
    /// gives it EBUSY), and pays no write fault for a scan that is over. Failures are ignored: a mapping
    /// gone or replaced since carries no registration of ours any more.
    public func unprotect(_ mappings: [AddressInterval]) {
        for m in mappings where m.start < m.end {
            _ = ckml_uffd_unregister(uffd.fd, m.start, m.end - m.start)
        }
    }

    /// The pages of `range` written since `protect`, as sorted page-aligned intervals (unmapped parts
    /// count as not written: there is nothing to read there), or nil when the range cannot tell: a
    /// mapping in it is not registered any more (unmapped and mapped again, moved by mremap), the ioctl
    /// failed, or more regions were written than is worth listing. Nil means "read it all".
    public func writtenPages(in range: AddressInterval) -> [AddressInterval]? {
        var out: [AddressInterval] = []
        var regions = [ckml_page_region](repeating: ckml_page_region(), count: Self.regionsPerCall)
        var at = range.start
        while at < range.end {
            var walkEnd: UInt64 = 0
            let n = regions.withUnsafeMutableBufferPointer { v in
                ckml_pagemap_scan(pagemap.fd, at, range.end, 0, v.baseAddress, UInt64(v.count), &walkEnd)
            }
            if n < 0 {
                if errno == EINTR { continue }
                return nil
            }
            for r in regions[0..<n] {
                if let last = out.last, last.end == r.start { out[out.count - 1].end = r.end } else {
                    out.append(AddressInterval(start: r.start, end: r.end))
                }
            }
            if out.count > Self.maxRegionsPerRange { return nil }
            // A full vector stops the walk early: go on from where it stopped.
            guard n == regions.count, walkEnd > at, walkEnd < range.end else { break }
            at = walkEnd
        }
        return out
    }
}
