// %pS-style symbols for the return addresses of one client process.
import Glibc
import Synchronization

/// ELF files shared by every `Symbolizer`, keyed by (device, inode) of the mapped file, so that libc's
/// symbol index is built once for all clients.
public final class ELFCache: Sendable {
    struct Key: Hashable, Sendable { var major: UInt32; var minor: UInt32; var inode: UInt64 }
    private let files = Mutex<[Key: ELFFile?]>([:])

    public init() {}

    /// The cached file for a mapping, opening it with `open` the first time (nil results are cached too).
    func file(for m: MapEntry, open: () -> ELFFile?) -> ELFFile? {
        let key = Key(major: m.devMajor, minor: m.devMinor, inode: m.inode)
        if let hit = files.withLock({ $0[key] }) { return hit }
        let f = open()
        files.withLock { $0[key] = f }
        return f
    }

    public var count: Int { files.withLock { $0.count } }

    /// Drops every cached file (e.g. when memory matters more than speed).
    public func removeAll() { files.withLock { $0.removeAll() } }
}

/// Symbolizes addresses of one process from a snapshot of its /proc/PID/maps.
///
/// Frames are return addresses. The symbol is the one containing `pc - 1` (so a call that is the
/// last instruction of a function resolves to that function, not the next one) and the offset
/// printed is `pc - symbol start`, as the kernel's `%pS` prints the return address itself.
/// Output: `name+0xoff/0xsize`, plus ` [module]` (the file name) outside the main executable;
/// `@VERSION` suffixes are stripped. Call `refresh()` after the process maps new code (dlopen).
public final class Symbolizer: @unchecked Sendable {
    // Mutable state (`maps`, `biases`, `memo`) is guarded by `lock`.
    public let pid: Int32
    private let cache: ELFCache
    private let lock = Mutex<State>(State())

    struct State {
        var maps: [MapEntry] = []
        var exePath: String = ""
        var exeInode: UInt64 = 0
        /// Per mapping index: (file, bias, module) once resolved; nil entry = not an ELF.
        var resolved: [Int: Resolved?] = [:]
        var memo: [UInt64: String?] = [:]
        var refreshedAt: Double = 0
    }

    struct Resolved {
        var file: ELFFile
        var bias: UInt64
        var module: String?
    }

    /// Memoized results kept per symbolizer (distinct PCs).
    public static let memoLimit = 1 << 18

    public init(pid: Int32, cache: ELFCache = ELFCache()) throws(SystemError) {
        self.pid = pid
        self.cache = cache
        try refresh()
    }

    /// Re-reads /proc/PID/maps (after dlopen/dlclose).
    public func refresh() throws(SystemError) {
        let maps = try Proc.maps(pid)
        let exe = (try? Proc.exe(pid)) ?? ""
        let exeInode: UInt64 = (try? FileHandleFD.open("/proc/\(pid)/exe", O_RDONLY).fstat()).map { UInt64($0.st_ino) } ?? 0
        lock.withLock {
            $0.maps = maps
            $0.exePath = exe.hasSuffix(" (deleted)") ? String(exe.dropLast(10)) : exe
            $0.exeInode = exeInode
            $0.resolved = [:]
            $0.memo = [:]
            $0.refreshedAt = Self.monotonicNow()
        }
    }

    /// An address in no mapping re-reads the maps (code mapped by dlopen since), at most this often.
    public static let autoRefreshInterval = 1.0

    static func monotonicNow() -> Double {
        var ts = timespec()
        clock_gettime(CLOCK_MONOTONIC, &ts)
        return Double(ts.tv_sec) + Double(ts.tv_nsec) / 1e9
    }

    /// `name+0xoff/0xsize [module]` for a return address (symbol containing `pc - 1`, offset of
    /// `pc`), or nil when it is in no ELF symbol.
    public func symbolize(_ pc: UInt64) -> String? {
        lock.withLock { state in
            if let hit = state.memo[pc] { return hit }
            let s = resolve(pc, adjust: 1, &state)
            if state.memo.count >= Self.memoLimit { state.memo.removeAll(keepingCapacity: true) }
            state.memo[pc] = s
            return s
        }
    }

    /// Like `symbolize` for an address that is not a return address (a function or data pointer):
    /// the symbol containing `address` itself (the kernel's `%pS` on a plain pointer).
    public func symbolize(exact address: UInt64) -> String? {
        lock.withLock { state in resolve(address, adjust: 0, &state) }
    }

    /// The mapping containing `address`, if any.
    public func mapping(containing address: UInt64) -> MapEntry? {
        lock.withLock { state in Self.mappingIndex(address, state.maps).map { state.maps[$0] } }
    }

    static func mappingIndex(_ a: UInt64, _ maps: [MapEntry]) -> Int? {
        var lo = 0, hi = maps.count
        while lo < hi {
            let mid = (lo + hi) >> 1
            if maps[mid].start <= a { lo = mid + 1 } else { hi = mid }
        }
        guard lo > 0, a < maps[lo - 1].end else { return nil }
        return lo - 1
    }

    private func resolve(_ pc: UInt64, adjust: UInt64, _ state: inout State) -> String? {
        guard pc >= adjust else { return nil }
        let a = pc - adjust
        var found = Self.mappingIndex(a, state.maps)
        if found == nil, Self.monotonicNow() - state.refreshedAt > Self.autoRefreshInterval,
           let maps = try? Proc.maps(pid) {
            state.maps = maps
            state.resolved = [:]
            state.memo = [:]
            state.refreshedAt = Self.monotonicNow()
            found = Self.mappingIndex(a, maps)
        }
        guard let mi = found else { return nil }
        let r: Resolved?
        if let cached = state.resolved[mi] {
            r = cached
        } else {
            r = resolveMapping(mi, state)
            state.resolved[mi] = .some(r)
        }
        guard let res = r else { return nil }
        let fileAddr = a &- res.bias
        guard let sym = res.file.symbol(containing: fileAddr) else { return nil }
        let off = (pc &- res.bias) &- sym.address
        var s = sym.name
        s += "+0x" + String(off, radix: 16) + "/0x" + String(sym.size, radix: 16)
        if let m = res.module { s += " [" + m + "]" }
        return s
    }

    private func resolveMapping(_ mi: Int, _ state: State) -> Resolved? {
        let m = state.maps[mi]
        guard m.isFileBacked, m.path.hasPrefix("/") else { return nil }
        // The file's first mapping (offset 0) at or below this one gives the load base.
        var base: MapEntry? = nil
        var i = mi
        while i >= 0 {
            let c = state.maps[i]
            if c.inode == m.inode && c.devMajor == m.devMajor && c.devMinor == m.devMinor && c.offset == 0 { base = c; break }
            i -= 1
        }
        guard let b = base else { return nil }
        let pid = self.pid
        guard let file = cache.file(for: m, open: { Self.openELF(pid: pid, mapping: b) }),
              let first = file.firstLoadVaddr else { return nil }
        let bias = b.start &- first
        let isMain = (state.exeInode != 0 && state.exeInode == m.inode) || m.filePath == state.exePath
        let module: String? = isMain ? nil : String(m.filePath.split(separator: "/").last ?? Substring(m.filePath))
        return Resolved(file: file, bias: bias, module: module)
    }

    /// Opens the ELF file behind a mapping: /proc/PID/map_files first (works for deleted files and
    /// other mount namespaces), then the path; the inode must match the mapping.
    static func openELF(pid: Int32, mapping m: MapEntry) -> ELFFile? {
        for path in ["/proc/\(pid)/map_files/\(m.mapFilesName)", m.filePath] {
            guard let h = try? FileHandleFD.open(path, O_RDONLY), let st = try? h.fstat(),
                  UInt64(st.st_ino) == m.inode else { continue }
            if let f = try? ELFFile(file: h) { return f }
        }
        return nil
    }
}
