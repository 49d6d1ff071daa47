// /proc parsing: maps, stat, liveness, tasks. The text is treated as untrusted-ish (a process
// controls its comm and the names of the files it maps), so parsing never traps.
import Glibc

/// One line of /proc/PID/maps.
public struct MapEntry: Sendable, Equatable {
    public var start: UInt64
    public var end: UInt64
    /// `rwxp` / `rw-s` as in the file.
    public var readable: Bool
    public var writable: Bool
    public var executable: Bool
    public var shared: Bool
    public var offset: UInt64
    public var devMajor: UInt32
    public var devMinor: UInt32
    public var inode: UInt64
    /// The path column (may be empty, `[heap]`, `[stack]`, `/memfd:name (deleted)`, ...).
    public var path: String

    public init(start: UInt64, end: UInt64, readable: Bool, writable: Bool, executable: Bool, shared: Bool,
                offset: UInt64, devMajor: UInt32, devMinor: UInt32, inode: UInt64, path: String) {
        self.start = start; self.end = end
        self.readable = readable; self.writable = writable; self.executable = executable; self.shared = shared
        self.offset = offset; self.devMajor = devMajor; self.devMinor = devMinor; self.inode = inode
        self.path = path
    }

    public var length: UInt64 { end - start }
    /// Backed by a file (an inode), as opposed to anonymous memory or a pseudo mapping.
    public var isFileBacked: Bool { inode != 0 }
    public var isAnonymous: Bool { inode == 0 && path.isEmpty }
    /// The path without a trailing " (deleted)".
    public var filePath: String {
        path.hasSuffix(" (deleted)") ? String(path.dropLast(10)) : path
    }
    /// The `/proc/PID/map_files/` entry name: lowercase hex, no padding.
    public var mapFilesName: String { String(start, radix: 16) + "-" + String(end, radix: 16) }
    public var device: DeviceNumber { DeviceNumber(major: devMajor, minor: devMinor) }
}

/// A file system's device number (st_dev), as /proc/PID/maps and /proc/PID/mountinfo show it.
public struct DeviceNumber: Sendable, Hashable {
    public var major: UInt32
    public var minor: UInt32
    public init(major: UInt32, minor: UInt32) { self.major = major; self.minor = minor }
}

/// The file systems of a process's mount namespace (/proc/PID/mountinfo), by device: which of them
/// the daemon may open files on.
public struct MountedFileSystems: Sendable, Equatable {
    /// Devices of mounts served by the kernel.
    public private(set) var kernelServed: Set<DeviceNumber> = []
    /// Devices of FUSE mounts (`fuse`, `fuse.NAME`, `fuseblk`): a process answers every open, stat and
    /// read there, and may never answer.
    public private(set) var userSpaceServed: Set<DeviceNumber> = []

    public init(kernelServed: Set<DeviceNumber> = [], userSpaceServed: Set<DeviceNumber> = []) {
        self.kernelServed = kernelServed; self.userSpaceServed = userSpaceServed
    }

    /// Whether files on `device` may be opened and read without waiting on a user-space server: not a
    /// FUSE mount, and either a mount of this namespace or a real block device (before Linux 6.8 maps
    /// show an overlayfs file's lower device, which a container does not mount). An unlisted anonymous
    /// device (major 0) may be a FUSE mount detached with `umount -l` whose server still runs.
    public func isSafeToRead(_ device: DeviceNumber) -> Bool {
        if userSpaceServed.contains(device) { return false }
        return kernelServed.contains(device) || device.major != 0
    }

    public static func isUserSpaceServed(type: String) -> Bool {
        type == "fuse" || type == "fuseblk" || type.hasPrefix("fuse.")
    }
}

/// The fields of /proc/PID/stat we use.
public struct ProcStat: Sendable, Equatable {
    public var pid: Int32
    public var comm: String
    public var state: Character
    public var ppid: Int32
    /// Field 22: start time in clock ticks since boot (detects pid reuse).
    public var startTime: UInt64
    /// Field 9: the kernel's task flags (PF_*).
    public var flags: UInt32 = 0

    /// PF_EXITING: the task is in do_exit (its memory may already be torn down).
    public static let exitingFlag: UInt32 = 0x4
    /// The task is exiting or dead: what its memory shows is no longer the program's.
    public var isExiting: Bool { state == "Z" || state == "X" || flags & Self.exitingFlag != 0 }
}

public enum ProcParse {
    /// Parses the text of /proc/PID/maps. Malformed lines are skipped (counted in `skipped`).
    public static func parseMaps(_ bytes: [UInt8]) -> (entries: [MapEntry], skipped: Int) {
        var entries: [MapEntry] = []
        var skipped = 0
        bytes.withUnsafeBufferPointer { buf in
            var i = 0
            while i < buf.count {
                var j = i
                while j < buf.count && buf[j] != UInt8(ascii: "\n") { j += 1 }
                if j > i {
                    if let e = parseMapsLine(UnsafeBufferPointer(rebasing: buf[i..<j])) {
                        entries.append(e)
                    } else {
                        skipped += 1
                    }
                }
                i = j + 1
            }
        }
        return (entries, skipped)
    }

    /// Parses one maps line (without the newline); nil if malformed.
    public static func parseMapsLine(_ line: UnsafeBufferPointer<UInt8>) -> MapEntry? {
        var p = 0
        let n = line.count
        func hex(_ stop: UInt8) -> UInt64? {
            var v: UInt64 = 0
            var digits = 0
            while p < n && line[p] != stop {
                guard let d = hexDigit(line[p]), digits < 16 else { return nil }
                v = v << 4 | UInt64(d)
                digits += 1
                p += 1
            }
            guard digits > 0, p < n else { return nil }
            p += 1 // the stop byte
            return v
        }
        func dec(_ stop: UInt8) -> UInt64? {
            var v: UInt64 = 0
            var digits = 0
            while p < n && line[p] != stop {
                let c = line[p]
                guard c >= 48 && c <= 57, digits < 20 else { return nil }
                let (m, o1) = v.multipliedReportingOverflow(by: 10)
                let (a, o2) = m.addingReportingOverflow(UInt64(c - 48))
                guard !o1 && !o2 else { return nil }
                v = a
                digits += 1
                p += 1
            }
            guard digits > 0 else { return nil }
            if p < n { p += 1 }
            return v
        }
        guard let start = hex(UInt8(ascii: "-")), let end = hex(UInt8(ascii: " ")), end >= start else { return nil }
        guard p + 5 <= n, line[p + 4] == UInt8(ascii: " ") else { return nil }
        let r = line[p], w = line[p + 1], x = line[p + 2], s = line[p + 3]
        guard r == UInt8(ascii: "r") || r == UInt8(ascii: "-"),
              w == UInt8(ascii: "w") || w == UInt8(ascii: "-"),
              x == UInt8(ascii: "x") || x == UInt8(ascii: "-"),
              s == UInt8(ascii: "p") || s == UInt8(ascii: "s") else { return nil }
        p += 5
        guard let offset = hex(UInt8(ascii: " ")) else { return nil }
        guard let major = hex(UInt8(ascii: ":")), let minor = hex(UInt8(ascii: " ")),
              major <= UInt64(UInt32.max), minor <= UInt64(UInt32.max) else { return nil }
        guard let inode = dec(UInt8(ascii: " ")) else { return nil }
        while p < n && line[p] == UInt8(ascii: " ") { p += 1 }
        let path = p < n ? String(decoding: UnsafeBufferPointer(rebasing: line[p..<n]), as: UTF8.self) : ""
        return MapEntry(start: start, end: end, readable: r == UInt8(ascii: "r"), writable: w == UInt8(ascii: "w"),
                        executable: x == UInt8(ascii: "x"), shared: s == UInt8(ascii: "s"), offset: offset,
                        devMajor: UInt32(major), devMinor: UInt32(minor), inode: inode, path: path)
    }

    /// Parses /proc/PID/stat. The comm is between the first '(' and the LAST ')' (a comm may
    /// contain spaces and parentheses).
    public static func parseStat(_ bytes: [UInt8]) -> ProcStat? {
        guard let open = bytes.firstIndex(of: UInt8(ascii: "(")),
              let close = bytes.lastIndex(of: UInt8(ascii: ")")), close > open else { return nil }
        guard let pid = Int32(String(decoding: bytes[..<open], as: UTF8.self).trimmingSpaces()) else { return nil }
        let comm = String(decoding: bytes[(open + 1)..<close], as: UTF8.self)
        guard close + 2 <= bytes.count else { return nil }
        let rest = bytes[(close + 1)...].split(separator: UInt8(ascii: " "), omittingEmptySubsequences: true)
        // rest[0] = field 3 (state), rest[1] = field 4 (ppid), rest[6] = field 9 (flags),
        // rest[19] = field 22 (starttime)
        guard rest.count >= 20, let st = rest[0].first,
              let ppid = Int32(String(decoding: rest[1], as: UTF8.self)),
              let flags = UInt32(String(decoding: rest[6], as: UTF8.self)),
              let start = UInt64(String(decoding: rest[19], as: UTF8.self).trimmingSpaces()) else { return nil }
        return ProcStat(pid: pid, comm: comm, state: Character(Unicode.Scalar(st)), ppid: ppid, startTime: start,
                        flags: flags)
    }

    @inline(__always)
    /// Parses the text of /proc/PID/mountinfo: "ID PARENT MAJOR:MINOR ROOT POINT OPTIONS [TAGS...] - TYPE
    /// SOURCE OPTIONS" per line (paths escape spaces as \\040). Malformed lines are skipped.
    public static func parseMountInfo(_ bytes: [UInt8]) -> MountedFileSystems {
        var kernelServed = Set<DeviceNumber>(), userSpaceServed = Set<DeviceNumber>()
        // Whole lines only: a line cut at the read limit may have lost the end of its type ("fu").
        let complete = bytes[..<(bytes.lastIndex(of: UInt8(ascii: "\n")).map { $0 + 1 } ?? 0)]
        for line in complete.split(separator: UInt8(ascii: "\n")) {
            let fields = line.split(separator: UInt8(ascii: " "))
            guard fields.count > 7, let dash = fields[6...].firstIndex(where: { $0.elementsEqual([UInt8(ascii: "-")]) }),
                  dash + 1 < fields.count else { continue }
            let numbers = fields[2].split(separator: UInt8(ascii: ":"))
            guard numbers.count == 2, let major = UInt32(String(decoding: numbers[0], as: UTF8.self)),
                  let minor = UInt32(String(decoding: numbers[1], as: UTF8.self)) else { continue }
            let device = DeviceNumber(major: major, minor: minor)
            if MountedFileSystems.isUserSpaceServed(type: String(decoding: fields[dash + 1], as: UTF8.self)) {
                userSpaceServed.insert(device)
            } else {
                kernelServed.insert(device)
            }
        }
        return MountedFileSystems(kernelServed: kernelServed, userSpaceServed: userSpaceServed)
    }

    static func hexDigit(_ c: UInt8) -> UInt8? {
        switch c {
        case 48...57: return c - 48
        case 97...102: return c - 87
        case 65...70: return c - 55
        default: return nil
        }
    }
}

extension String {
    func trimmingSpaces() -> String {
        var s = Substring(self)
        while let f = s.first, f == " " || f == "\n" || f == "\t" { s = s.dropFirst() }
        while let l = s.last, l == " " || l == "\n" || l == "\t" { s = s.dropLast() }
        return String(s)
    }
}

/// /proc access for one pid.
public enum Proc {
    public static func maps(_ pid: Int32) throws(SystemError) -> [MapEntry] {
        ProcParse.parseMaps(try ProcFile.read("/proc/\(pid)/maps", limit: 256 << 20)).entries
    }

    /// The file systems of `pid`'s mount namespace.
    public static func mountedFileSystems(_ pid: Int32) throws(SystemError) -> MountedFileSystems {
        ProcParse.parseMountInfo(try ProcFile.read("/proc/\(pid)/mountinfo", limit: 64 << 20))
    }

    public static func stat(_ pid: Int32) throws(SystemError) -> ProcStat {
        let path = "/proc/\(pid)/stat"
        guard let s = ProcParse.parseStat(try ProcFile.read(path, limit: 8192)) else {
            throw SystemError(call: "parse", errno: EINVAL, context: path)
        }
        return s
    }

    /// The real, effective, saved and file-system uids of `pid` (the `Uid:` line of /proc/PID/status).
    public static func uids(_ pid: Int32) throws(SystemError) -> [UInt32] {
        let path = "/proc/\(pid)/status"
        let text = String(decoding: try ProcFile.read(path, limit: 65536), as: UTF8.self)
        guard let line = text.split(separator: "\n").first(where: { $0.hasPrefix("Uid:") }) else {
            throw SystemError(call: "parse", errno: EINVAL, context: path)
        }
        let uids = line.dropFirst(4).split(whereSeparator: { $0 == "\t" || $0 == " " }).compactMap { UInt32($0) }
        guard uids.count == 4 else { throw SystemError(call: "parse", errno: EINVAL, context: path) }
        return uids
    }

    /// The stack pointer of a thread blocked in the kernel, from /proc/PID/task/TID/syscall
    /// ("NR ARGS... SP PC", or "-1 SP PC"); nil while it runs in user space or when unreadable.
    public static func stackPointer(_ pid: Int32, tid: Int32) -> UInt64? {
        guard let bytes = try? ProcFile.read("/proc/\(pid)/task/\(tid)/syscall", limit: 512) else { return nil }
        let fields = bytes.split(whereSeparator: { $0 == UInt8(ascii: " ") || $0 == UInt8(ascii: "\n") })
        guard fields.count >= 3, let first = fields.first, first.first != UInt8(ascii: "r") else { return nil }
        let sp = fields[fields.count - 2]
        guard sp.starts(with: Array("0x".utf8)) else { return nil }
        return UInt64(String(decoding: sp.dropFirst(2), as: UTF8.self), radix: 16)
    }

    /// TracerPid of a thread (/proc/PID/task/TID/status): 0 when untraced; nil when unreadable.
    public static func tracerPid(_ pid: Int32, tid: Int32) -> Int32? {
        guard let bytes = try? ProcFile.read("/proc/\(pid)/task/\(tid)/status", limit: 16384) else { return nil }
        for line in bytes.split(separator: UInt8(ascii: "\n")) where line.starts(with: Array("TracerPid:".utf8)) {
            return Int32(String(decoding: line.dropFirst(10), as: UTF8.self).trimmingSpaces())
        }
        return nil
    }

    /// Whether the process `pid` (started at `startTime`) still runs a program: some thread of it is
    /// neither exiting (PF_EXITING) nor dead. False when unreadable.
    public static func isRunningProgram(_ pid: Int32, startTime: UInt64) -> Bool {
        guard let leader = try? stat(pid), leader.startTime == startTime else { return false }
        if !leader.isExiting { return true }
        // A leader that called pthread_exit is a zombie while its other threads run on.
        for tid in (try? tasks(pid)) ?? [] where tid != pid {
            guard let bytes = try? ProcFile.read("/proc/\(pid)/task/\(tid)/stat", limit: 8192),
                  let s = ProcParse.parseStat(bytes) else { continue }
            if !s.isExiting { return true }
        }
        return false
    }

    /// True if `pid` exists, is not a zombie, and (when given) started at `startTime`.
    public static func isAlive(_ pid: Int32, startTime: UInt64? = nil) -> Bool {
        guard pid > 0, let s = try? stat(pid) else { return false }
        if s.state == "Z" || s.state == "X" { return false }
        if let t = startTime, s.startTime != t { return false }
        return true
    }

    /// Thread ids of `pid` (/proc/PID/task).
    public static func tasks(_ pid: Int32) throws(SystemError) -> [Int32] {
        try ProcFile.listDirectory("/proc/\(pid)/task").compactMap { Int32($0) }.sorted()
    }

    /// Target of /proc/PID/exe.
    public static func exe(_ pid: Int32) throws(SystemError) -> String {
        try ProcFile.readlink("/proc/\(pid)/exe")
    }
}
