// Symbols, source lines and inline chains for the return addresses of one client process (elfutils),
// and the kernel's %pS text made from them.
import Glibc
import KmemleakEngine
import Synchronization

/// ELF files shared by every `Symbolizer`, keyed by (device, inode) of the mapped file, so that libc's
/// Dwfl (symbols, DWARF) is loaded once for all clients, in the file's own address space.
///
/// Bounded, since clients choose what they map: at most `maxEntries` files (failures to parse count:
/// they are cached as nil) and `maxBytes` of parsed headers and debug modules (their images and
/// separate debug files, roughly); past either, the least recently used entries go.
/// `retainOnly(mappedBy:)` drops the files no live client maps any more. No descriptor is kept (see
/// `ELFFile`, `ELFDebugImage`).
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
    /// Where separate debug files are looked up (`--debug-file-directory`).
    public let debugFiles: DebugFileDirectory

    public static let defaultMaxEntries = 4096
    public static let defaultMaxBytes = 256 << 20
    /// What an entry without a file (not ELF, unreadable) is counted as.
    static let entryOverhead = 128

    public init(maxEntries: Int = ELFCache.defaultMaxEntries, maxBytes: Int = ELFCache.defaultMaxBytes,
                debugFiles: DebugFileDirectory = .standard) {
        self.maxEntries = max(1, maxEntries)
        self.maxBytes = max(0, maxBytes)
        self.debugFiles = debugFiles
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
        // The debug module is loaded later and lazily: it is counted when it is.
        f?.onDebugInfoLoaded = { [weak self, weak f] bytes in
            guard let self, let f else { return }
            self.state.withLock { s in
                if Self.count(bytes, for: key, file: f, &s) { self.evict(&s, keeping: key) }
            }
        }
        // Outside our lock: the file's lock is taken before ours when its debug module loads.
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

    /// Adds `bytes` to the entry of `key` if it still holds `file`; returns whether it did.
    private static func count(_ bytes: Int, for key: Key, file: ELFFile, _ s: inout State) -> Bool {
        guard var e = s.entries[key], e.file === file else { return false }
        e.bytes += bytes
        s.entries[key] = e
        s.bytes += bytes
        return true
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
    /// Bytes held by the cached files (headers and debug modules), as accounted.
    public var bytes: Int { state.withLock { $0.bytes } }

    /// Lets go of every loaded debug module (symbols, DWARF, the mapped images); the headers stay (the
    /// roots of every scan read them). A file's module loads again the next time an address in it is
    /// symbolized.
    public func releaseDebugModules() {
        let files = state.withLock { s in s.entries.map { ($0.key, $0.value.file) } }
        for (key, file) in files {
            // Outside our lock, as in `file(for:open:)`: the file's lock is taken before ours.
            guard let file, case let released = file.releaseDebugModule(), released > 0 else { continue }
            state.withLock { s in _ = Self.count(-released, for: key, file: file, &s) }
        }
    }

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
/// Frames are return addresses: the symbol and the source line are those of `pc - 1` (the call
/// instruction: a call that is the last instruction of a function resolves to that function, not the
/// next one), and the offsets printed are those of `pc` itself, as the kernel's `%pS` prints the return
/// address. `describe` gives the structured frames (inlined functions first); `symbolize` the kernel's
/// text: `name+0xoff/0xsize`, plus ` [module]` (the file name) outside the main executable, `@VERSION`
/// suffixes stripped; in a mapped ELF file without a symbol, `(PATH+0xOFFSET)` with OFFSET in the file's
/// own addresses (what `addr2line -e PATH` takes). Call `refresh()` after the process maps new code.
public final class Symbolizer: @unchecked Sendable {
    // Mutable state (`maps`, `resolved`, `memo`) is guarded by `lock`.
    public let pid: Int32
    private let cache: ELFCache
    private let lock = Mutex<State>(State())

    struct State {
        var maps: [MapEntry] = []
        var exePath: String = ""
        var exeInode: UInt64 = 0
        /// Per mapping index: the file and its bias once resolved; nil entry = not an ELF.
        var resolved: [Int: Resolved?] = [:]
        var memo: [UInt64: Resolution] = [:]
        var refreshedAt: Double = 0
    }

    struct Resolved {
        var file: ELFFile
        /// Load address - file address.
        var bias: UInt64
        /// The mapped path, and whether it is the main executable (no ` [module]` in the text).
        var path: String
        var isMain: Bool
        var buildID: String?
    }

    /// What one return address resolves to: kernel text, and frames once asked for (source lines and
    /// inline chains cost far more than the symbol).
    struct Resolution {
        var frames: [SymbolizedFrame]?
        var text: String?
    }

    /// Memoized results kept per symbolizer (distinct PCs, per client).
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

    /// The frames a return address resolves to: inlined functions first, then the function containing
    /// it; always at least one frame, whose `address` is `pc`.
    public func describe(_ pc: UInt64) -> [SymbolizedFrame] {
        memoized(pc, sourceFrames: true).frames ?? [SymbolizedFrame(address: pc)]
    }

    /// The kernel's `%pS` text for a return address (see the type's comment), or nil when it is in no
    /// mapped ELF file (the report prints `0x...`).
    public func symbolize(_ pc: UInt64) -> String? { memoized(pc, sourceFrames: false).text }

    /// Like `symbolize` for an address that is not a return address (a function or data pointer):
    /// the symbol containing `address` itself (the kernel's `%pS` on a plain pointer).
    public func symbolize(exact address: UInt64) -> String? {
        lock.withLock { state in resolve(address, adjust: 0, sourceFrames: false, &state).text }
    }

    private func memoized(_ pc: UInt64, sourceFrames: Bool) -> Resolution {
        lock.withLock { state in
            if let hit = state.memo[pc], !sourceFrames || hit.frames != nil { return hit }
            let r = resolve(pc, adjust: 1, sourceFrames: sourceFrames, &state)
            if state.memo.count >= Self.memoLimit { state.memo.removeAll(keepingCapacity: true) }
            state.memo[pc] = r
            return r
        }
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

    private func resolve(_ pc: UInt64, adjust: UInt64, sourceFrames: Bool, _ state: inout State) -> Resolution {
        let bare = Resolution(frames: [SymbolizedFrame(address: pc)], text: nil)
        guard pc >= adjust else { return bare }
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
        guard let mi = found else { return bare }
        let r: Resolved?
        if let cached = state.resolved[mi] {
            r = cached
        } else {
            r = resolveMapping(mi, state)
            state.resolved[mi] = .some(r)
        }
        guard let res = r else {
            // A file we do not read (on FUSE, not ELF): its name only.
            let m = state.maps[mi]
            return Resolution(frames: [SymbolizedFrame(address: pc, module: m.isFileBacked ? m.filePath : nil)], text: nil)
        }
        let moduleOffset = pc &- res.bias
        let lookup = res.file.debugModule(name: res.path, directory: cache.debugFiles)?
            .lookup(a &- res.bias, sourceFrames: sourceFrames)
        var resolution = Self.resolution(pc: pc, moduleOffset: moduleOffset, res, lookup ?? DebugLookup(symbol: nil, frames: []))
        if !sourceFrames { resolution.frames = nil }
        return resolution
    }

    /// Frames and text from what the file's debug module said about the address.
    static func resolution(pc: UInt64, moduleOffset: UInt64, _ res: Resolved, _ lookup: DebugLookup) -> Resolution {
        let frame = SymbolizedFrame(address: pc, module: res.path, buildID: res.buildID, moduleOffset: moduleOffset)
        var outer = frame
        if let sym = lookup.symbol {
            outer.symbol = sym.name
            outer.symbolOffset = moduleOffset &- sym.start
            outer.symbolSize = sym.size
        }
        var frames: [SymbolizedFrame] = []
        for source in lookup.frames.dropLast() {
            var inlined = frame
            inlined.symbol = source.function
            inlined.file = source.file
            inlined.line = source.line
            inlined.inlined = true
            frames.append(inlined)
        }
        if let source = lookup.frames.last {
            if outer.symbol == nil { outer.symbol = source.function }
            outer.file = source.file
            outer.line = source.line
        }
        frames.append(outer)
        let text: String
        if let sym = lookup.symbol {
            text = sym.name + "+0x" + String(moduleOffset &- sym.start, radix: 16) + "/0x" + String(sym.size, radix: 16)
                + (res.isMain ? "" : " [" + String(res.path.split(separator: "/").last ?? Substring(res.path)) + "]")
        } else {
            text = "(" + res.path + "+0x" + String(moduleOffset, radix: 16) + ")"
        }
        return Resolution(frames: frames, text: text)
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
        let isMain = (state.exeInode != 0 && state.exeInode == m.inode) || m.filePath == state.exePath
        return Resolved(file: file, bias: b.start &- first, path: m.filePath, isMain: isMain, buildID: file.buildIDHex)
    }

    /// Opens the ELF file behind a mapping: /proc/PID/map_files first (works for deleted files and
    /// other mount namespaces), then the path (non-blocking: the client may have put a FIFO there);
    /// the inode must match the mapping. Only the headers are read; the descriptor is closed on return
    /// and the file opened the same way again, once, to read its debug image.
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
