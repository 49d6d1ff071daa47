// %pS-style symbols for the return addresses of one client process.
import Glibc
import Synchronization

/// ELF files shared by every `Symbolizer`, keyed by (device, inode) of the mapped file, so that libc's
/// symbol index is built once for all clients.
///
/// Bounded, since clients choose what they map: at most `maxEntries` files (failures to parse count:
/// they are cached as nil) and `maxBytes` of parsed headers and symbol indexes; past either, the least
/// recently used entries go. `retainOnly(mappedBy:)` drops the files no live client maps any more.
/// No descriptor is kept (see `ELFFile`).
public final class ELFCache: Sendable {
    struct Key: Hashable, Sendable { var major: UInt32; var minor: UInt32; var inode: UInt64 }
    struct Entry {
        var file: ELFFile?
        var bytes: Int
        var lastUse: UInt64
    }
    struct State {
        var entries: [Key: Entry] = [:]
        var bytes = 0
        var clock: UInt64 = 0
    }
    private let state = Mutex<State>(State())
    public let maxEntries: Int
    public let maxBytes: Int

    public static let defaultMaxEntries = 4096
    public static let defaultMaxBytes = 256 << 20
    /// What an entry without a file (not ELF, unreadable) is counted as.
    static let entryOverhead = 128

    public init(maxEntries: Int = ELFCache.defaultMaxEntries, maxBytes: Int = ELFCache.defaultMaxBytes) {
        self.maxEntries = max(1, maxEntries)
        self.maxBytes = max(0, maxBytes)
    }

    static func key(_ m: MapEntry) -> Key { Key(major: m.devMajor, minor: m.devMinor, inode: m.inode) }

    /// The cached file for a mapping, opening it with `open` the first time (nil results are cached too).
    func file(for m: MapEntry, open: () -> ELFFile?) -> ELFFile? {
        let key = Self.key(m)
        let hit: ELFFile?? = state.withLock { s in
            guard var e = s.entries[key] else { return nil }
            s.clock &+= 1
            e.lastUse = s.clock
            s.entries[key] = e
            return .some(e.file)
        }
        if let hit { return hit }
        let f = open()
        // The symbol index is built later and lazily: it is counted when it is.
        f?.onIndexBuilt = { [weak self, weak f] bytes in
            guard let self, let f else { return }
            self.state.withLock { s in
                guard var e = s.entries[key], e.file === f else { return }
                e.bytes += bytes
                s.entries[key] = e
                s.bytes += bytes
                self.evict(&s, keeping: key)
            }
        }
        // Outside our lock: the file's lock is taken before ours when its index is built.
        let bytes = (f?.memoryBytes ?? 0) + Self.entryOverhead
        state.withLock { s in
            if let old = s.entries.removeValue(forKey: key) { s.bytes -= old.bytes }
            s.clock &+= 1
            s.entries[key] = Entry(file: f, bytes: bytes, lastUse: s.clock)
            s.bytes += bytes
            evict(&s, keeping: key)
        }
        return f
    }

    /// Least recently used first, until both bounds hold (the entry just used stays).
    private func evict(_ s: inout State, keeping key: Key) {
        guard s.entries.count > maxEntries || s.bytes > maxBytes else { return }
        let order = s.entries.filter { $0.key != key }.sorted { $0.value.lastUse < $1.value.lastUse }
        for (k, e) in order {
            guard s.entries.count > maxEntries || s.bytes > maxBytes else { break }
            s.entries.removeValue(forKey: k)
            s.bytes -= e.bytes
        }
    }

    public var count: Int { state.withLock { $0.entries.count } }
    /// Bytes held by the cached files (headers and symbol indexes), as accounted.
    public var bytes: Int { state.withLock { $0.bytes } }

    /// Drops every cached file (e.g. when memory matters more than speed).
    public func removeAll() { state.withLock { $0 = State() } }

    /// Keeps only the files that one of `symbolizers` has mapped (as of its last refresh).
    public func retainOnly(mappedBy symbolizers: [Symbolizer]) {
        var mapped = Set<Key>()
        for symbolizer in symbolizers { mapped.formUnion(symbolizer.mappedFileKeys) }
        state.withLock { s in
            for (k, e) in s.entries where !mapped.contains(k) {
                s.entries.removeValue(forKey: k)
                s.bytes -= e.bytes
            }
        }
    }
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

    /// Memoized results kept per symbolizer (distinct PCs; about 100 bytes each, per client).
    public static let memoLimit = 1 << 16

    public init(pid: Int32, cache: ELFCache = ELFCache()) throws(SystemError) {
        self.pid = pid
        self.cache = cache
        try refresh()
    }

    /// Re-reads /proc/PID/maps (after dlopen/dlclose).
    public func refresh() throws(SystemError) {
        let maps = try Proc.maps(pid)
        let exe = (try? Proc.exe(pid)) ?? ""
        let exePath = exe.hasSuffix(" (deleted)") ? String(exe.dropLast(10)) : exe
        // From the maps, not by opening /proc/PID/exe: on a FUSE mount an open waits for its server.
        let exeInode = maps.first { $0.isFileBacked && $0.filePath == exePath }?.inode ?? 0
        lock.withLock {
            $0.maps = maps
            $0.exePath = exePath
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

    /// The files this process maps (as of the last refresh), as ELF cache keys.
    var mappedFileKeys: Set<ELFCache.Key> {
        lock.withLock { state in Set(state.maps.filter(\.isFileBacked).map(ELFCache.key)) }
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
    /// other mount namespaces), then the path (non-blocking: the client may have put a FIFO there);
    /// the inode must match the mapping. Only the headers are read; the descriptor is closed on return
    /// and the file opened the same way again to build its symbol index.
    /// Nothing on a FUSE file system is touched, not even opened (its server answers, or not, when it
    /// likes): its data segments are no roots and its symbols stay unknown.
    static func openELF(pid: Int32, mapping m: MapEntry) -> ELFFile? {
        guard let mounts = try? Proc.mountedFileSystems(pid), mounts.isSafeToRead(m.device) else { return nil }
        let paths = ["/proc/\(pid)/map_files/\(m.mapFilesName)", m.filePath]
        let inode = m.inode
        let reopen: @Sendable () -> FileHandleFD? = {
            for path in paths {
                guard let h = try? ELFFile.openRegular(path), let st = try? h.fstat(), UInt64(st.st_ino) == inode
                else { continue }
                return h
            }
            return nil
        }
        for path in paths {
            guard let h = try? ELFFile.openRegular(path), let st = try? h.fstat(),
                  UInt64(st.st_ino) == m.inode else { continue }
            if let f = try? ELFFile(file: h, reopen: reopen) { return f }
        }
        return nil
    }
}
