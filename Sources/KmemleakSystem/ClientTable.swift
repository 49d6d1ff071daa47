// The reader of a client's table (kmemleak_abi.h). Every byte is untrusted: the header is
// validated against the real size (the memfd's, the private mapping's), every section against the
// header, every record against the sections; the table is copied into our own buffers, never mapped:
// with pread from a memfd (a client that truncates it under us gives a typed error, not SIGBUS), or
// with process_vm_readv from the client's private memory (TableStorage.swift).
//
// Consistency: records are seqlocks. A bulk copy is not ordered within itself, so a slot is
// accepted only when its state word read by one read (A), its fields read by a later read (B) and
// its state read by a still later read (C) agree: A.state == C.state, not BUSY, LIVE. Any write
// that overlapped B changed the state between A and C (version bump) or showed BUSY. Slots that
// fail are retried one by one a bounded number of times, then skipped (counted).
import CKmemleakABI
import CKmemleakSys
import Glibc
import Synchronization

// MARK: - errors

public enum TableError: Error, Sendable, Equatable, CustomStringConvertible {
    /// A syscall failed (open, pread, fstat, ...).
    case system(SystemError)
    /// The rendezvous file is malformed.
    case badRendezvous(path: String, reason: String)
    /// The client is gone or its pid was reused (starttime differs): the rendezvous file is stale.
    case stale(pid: Int32, reason: String)
    /// The rendezvous file's owner is neither root nor a uid of the process it names: someone else
    /// wrote it (a squatter).
    case foreignRendezvous(path: String, owner: UInt32, processUIDs: [UInt32])
    /// The opened file is not a memfd named kmemleak-table (or not the announced mapping); or a private
    /// table's range is not exactly one private anonymous mapping of the client.
    case notATable(path: String, reason: String)
    case badMagic(UInt64)
    case badVersion(UInt32)
    case badHeaderSize(UInt32)
    /// total_size is impossible (smaller than the header, larger than our limit).
    case badTotalSize(UInt64)
    /// The memfd is smaller than total_size (truncated by the client).
    case truncated(fileSize: UInt64, totalSize: UInt64)
    case pidMismatch(header: Int32, expected: Int32)
    case startTimeMismatch(header: UInt64, expected: UInt64)
    /// A section's entry size, alignment, offset or capacity is out of bounds.
    case badSection(section: String, reason: String)
    case overlappingSections(String, String)
    case usedOverCapacity(section: String, used: UInt32, capacity: UInt32)
    /// The section geometry changed after the table was opened.
    case geometryChanged
    /// A record refers to an id outside its section (or has an impossible value).
    case badRecord(section: String, slot: UInt32, reason: String)
    case traceTooLong(id: UInt32, length: UInt32)
    case commNotTerminated(id: UInt32)
    /// A section has more live records than the daemon keeps for one client.
    case tooManyRecords(section: String, limit: Int)

    public var description: String {
        switch self {
        case .system(let e): return e.description
        case .badRendezvous(let p, let r): return "bad rendezvous file \(p): \(r)"
        case .stale(let pid, let r): return "stale client \(pid): \(r)"
        case .foreignRendezvous(let p, let o, let u):
            return "\(p) is owned by uid \(o), not by root or the process (uids \(u.map(String.init).joined(separator: ",")))"
        case .notATable(let p, let r): return "\(p) is not a kmemleak table: \(r)"
        case .badMagic(let m): return "bad magic 0x\(String(m, radix: 16))"
        case .badVersion(let v): return "unsupported table version \(v) (want \(KML_ABI_VERSION))"
        case .badHeaderSize(let s): return "bad header_size \(s)"
        case .badTotalSize(let s): return "bad total_size \(s)"
        case .truncated(let f, let t): return "table truncated: file \(f) bytes < total_size \(t)"
        case .pidMismatch(let h, let e): return "table pid \(h) != \(e)"
        case .startTimeMismatch(let h, let e): return "table start_time \(h) != \(e)"
        case .badSection(let s, let r): return "section \(s): \(r)"
        case .overlappingSections(let a, let b): return "sections \(a) and \(b) overlap"
        case .usedOverCapacity(let s, let u, let c): return "section \(s): used \(u) > capacity \(c)"
        case .geometryChanged: return "table geometry changed"
        case .badRecord(let s, let slot, let r): return "\(s)[\(slot)]: \(r)"
        case .traceTooLong(let id, let l): return "trace \(id): length \(l) > \(KML_MAX_TRACE)"
        case .commNotTerminated(let id): return "comm \(id) not NUL-terminated"
        case .tooManyRecords(let s, let limit): return "section \(s): more than \(limit) live records"
        }
    }
}

// MARK: - rendezvous

/// One rendezvous file: "pid=<pid> fd=<fd> addr=<hex> size=<bytes> start=<starttime>\n", named
/// `<pid>.client`, or `<pid>.<16 hex digits>.client` when a squatter held the plain name.
public struct Rendezvous: Sendable, Equatable {
    public var pid: Int32
    public var fd: Int32
    public var address: UInt64
    public var size: UInt64
    public var startTime: UInt64
    /// The file it was read from ("" when parsed from text).
    public var path: String
    /// Owner and inode of the file it was read from (nil when parsed from text or found in /proc).
    public var fileOwner: UInt32?
    public var fileInode: UInt64?

    public init(pid: Int32, fd: Int32, address: UInt64, size: UInt64, startTime: UInt64, path: String = "") {
        self.pid = pid; self.fd = fd; self.address = address; self.size = size; self.startTime = startTime
        self.path = path
    }

    /// Announces a private table (fd=-1): the client's own memory, no memfd.
    public var isPrivate: Bool { fd == -1 }

    /// The line a client writes.
    public var line: String {
        "pid=\(pid) fd=\(fd) addr=\(String(address, radix: 16)) size=\(size) start=\(startTime)\n"
    }

    /// Parses the text of a rendezvous file; nil if malformed.
    public static func parse(_ text: String, path: String = "") -> Rendezvous? {
        var fields: [Substring: Substring] = [:]
        let line = text.split(separator: "\n", omittingEmptySubsequences: false)
        guard let first = line.first, line.count <= 2, line.count < 2 || line[1].isEmpty else { return nil }
        for tok in first.split(separator: " ") {
            guard let eq = tok.firstIndex(of: "=") else { return nil }
            let k = tok[..<eq], v = tok[tok.index(after: eq)...]
            guard fields[k] == nil else { return nil }
            fields[k] = v
        }
        guard fields.count == 5,
              let pid = fields["pid"].flatMap({ Int32($0) }), pid > 0,
              let fd = fields["fd"].flatMap({ Int32($0) }), fd >= -1,
              var a = fields["addr"] else { return nil }
        if a.hasPrefix("0x") { a = a.dropFirst(2) }
        guard let addr = UInt64(a, radix: 16), addr & 4095 == 0,
              let size = fields["size"].flatMap({ UInt64($0) }), size > 0,
              !addr.addingReportingOverflow(size).overflow,
              let start = fields["start"].flatMap({ UInt64($0) }) else { return nil }
        return Rendezvous(pid: pid, fd: fd, address: addr, size: size, startTime: start, path: path)
    }

    /// The pid a rendezvous file name announces: `<pid>.client` or `<pid>.<16 hex>.client`; nil for
    /// any other name (temporary files, junk).
    public static func pid(fromName name: String) -> Int32? {
        guard name.hasSuffix(KML_RENDEZVOUS_SUFFIX) else { return nil }
        let parts = name.dropLast(KML_RENDEZVOUS_SUFFIX.count).split(separator: ".", omittingEmptySubsequences: false)
        guard parts.count == 1 || (parts.count == 2 && parts[1].utf8.count == 16 && UInt64(parts[1], radix: 16) != nil),
              parts[0].utf8.allSatisfy({ $0 >= UInt8(ascii: "0") && $0 <= UInt8(ascii: "9") }),
              let pid = Int32(parts[0]), pid > 0 else { return nil }
        return pid
    }

    /// The pid of a shim's temporary file `.<pid>.<16 hex digits>.tmp` (left by a client that died
    /// before publishing it); nil for any other name.
    public static func pid(fromTemporaryName name: String) -> Int32? {
        guard name.hasPrefix("."), name.hasSuffix(".tmp") else { return nil }
        let inner = name.dropFirst().dropLast(4) // "<pid>.<16 hex>"
        guard inner.contains(".") else { return nil }
        return pid(fromName: inner + KML_RENDEZVOUS_SUFFIX)
    }

    /// Reads and parses one rendezvous file (at most 4 KiB); the pid must match the file name.
    public static func read(path: String) throws(TableError) -> Rendezvous {
        let (dir, name) = splitPath(path)
        let directory: RunDirectory
        do { directory = try RunDirectory(path: dir) } catch { throw .system(error) }
        return try read(name, in: directory)
    }

    /// Reads `name` in `directory`. The run directory may be writable by clients: symlinks are not
    /// followed and only a regular file is read (a FIFO there must not block the daemon).
    public static func read(_ name: String, in directory: RunDirectory) throws(TableError) -> Rendezvous {
        let path = directory.path + "/" + name
        var bytes = [UInt8](repeating: 0, count: 4097)
        let n: Int
        let st: stat
        do {
            let h = try directory.openFile(name)
            st = try h.fstat()
            guard (st.st_mode & S_IFMT) == S_IFREG else { throw TableError.badRendezvous(path: path, reason: "not a regular file") }
            n = try bytes.withUnsafeMutableBytes { b in Result { () throws(SystemError) -> Int in try h.pread(into: b, offset: 0) } }.get()
        } catch let e as SystemError {
            throw .system(e)
        } catch let e as TableError {
            throw e
        } catch {
            throw .badRendezvous(path: path, reason: "\(error)")
        }
        guard n <= 4096 else { throw .badRendezvous(path: path, reason: "too large") }
        bytes.removeSubrange(n...)
        guard var r = parse(String(decoding: bytes, as: UTF8.self), path: path) else {
            throw .badRendezvous(path: path, reason: "malformed")
        }
        guard pid(fromName: name) == r.pid else {
            throw .badRendezvous(path: path, reason: "file name does not match pid \(r.pid)")
        }
        r.fileOwner = st.st_uid
        r.fileInode = UInt64(st.st_ino)
        return r
    }

    /// The rendezvous files of a run directory (full paths, sorted).
    public static func list(runDirectory: String) throws(SystemError) -> [String] {
        try RunDirectory(path: runDirectory).rendezvousNames().map { runDirectory + "/" + $0 }
    }

    /// True when the announced process is gone or its pid now belongs to another process.
    public var isStale: Bool { !Proc.isAlive(pid, startTime: startTime) }

    /// Removes a (stale) rendezvous file: only a regular file, never what a link points to.
    public static func remove(path: String) throws(SystemError) {
        let (dir, name) = splitPath(path)
        _ = try RunDirectory(path: dir).removeRegularFile(name)
    }

    static func splitPath(_ path: String) -> (directory: String, name: String) {
        guard let slash = path.lastIndex(of: "/") else { return (".", path) }
        let dir = String(path[..<slash])
        return (dir.isEmpty ? "/" : dir, String(path[path.index(after: slash)...]))
    }
}

/// A run directory's identity: st_dev and st_ino.
public struct RunDirectoryIdentity: Sendable, Hashable {
    public var device: UInt64
    public var inode: UInt64
    public init(device: UInt64, inode: UInt64) { self.device = device; self.inode = inode }

    /// What a header claims (KML_TABLE_RUN_DIR), nil without the flag. Device in Linux's 32-bit encoding.
    init?(claimedBy raw: kml_header) {
        guard raw.flags & KML_TABLE_RUN_DIR != 0 else { return nil }
        self.init(device: UInt64(raw.run_dir_dev), inode: UInt64(raw.run_dir_ino_hi) << 32 | UInt64(raw.run_dir_ino_lo))
    }
}

/// A run directory, opened without following a symlink; every name inside is resolved relative to
/// it (openat, fstatat, unlinkat), never through a path a client could redirect.
public final class RunDirectory {
    public let path: String
    let fd: Int32

    public init(path: String) throws(SystemError) {
        self.path = path
        fd = try retryingSyscall("open", path) { Glibc.open(path, O_RDONLY | O_DIRECTORY | O_NOFOLLOW | O_NONBLOCK | O_CLOEXEC) }
    }

    deinit { _ = Glibc.close(fd) }

    /// Identity of the directory (what the shim puts in its memfd's name and its header).
    public func identity() throws(SystemError) -> RunDirectoryIdentity {
        var st = stat()
        _ = try retryingSyscall("fstat", path) { Glibc.fstat(fd, &st) }
        return RunDirectoryIdentity(device: UInt64(st.st_dev), inode: UInt64(st.st_ino))
    }

    /// Every name in the directory but "." and "..".
    public func names() throws(SystemError) -> [String] {
        let copy = try retryingSyscall("dup", path) { Glibc.fcntl(fd, F_DUPFD_CLOEXEC, 0) }
        guard let dir = fdopendir(copy) else {
            let e = Glibc.errno
            _ = Glibc.close(copy)
            throw SystemError(call: "fdopendir", errno: e, context: path)
        }
        defer { closedir(dir) }
        rewinddir(dir) // the duplicate shares its offset with our fd
        return ProcFile.entries(dir)
    }

    /// The rendezvous file names (sorted).
    public func rendezvousNames() throws(SystemError) -> [String] {
        try names().filter { Rendezvous.pid(fromName: $0) != nil }.sorted()
    }

    /// Opens `name` read-only, without following a link or blocking on a FIFO.
    public func openFile(_ name: String) throws(SystemError) -> FileHandleFD {
        let fd = try retryingSyscall("openat", path + "/" + name) {
            Glibc.openat(self.fd, name, O_RDONLY | O_NOFOLLOW | O_NONBLOCK | O_NOCTTY | O_CLOEXEC)
        }
        return FileHandleFD(fd: fd, path: path + "/" + name)
    }

    /// Removes `name` if it is a regular file (and, when given, still the inode that was read):
    /// never a link, a FIFO or a directory. Returns whether it removed it.
    public func removeRegularFile(_ name: String, inode: UInt64? = nil) throws(SystemError) -> Bool {
        var st = stat()
        _ = try retryingSyscall("fstatat", path + "/" + name) { fstatat(fd, name, &st, AT_SYMLINK_NOFOLLOW) }
        guard (st.st_mode & S_IFMT) == S_IFREG, inode.map({ $0 == UInt64(st.st_ino) }) ?? true else { return false }
        _ = try retryingSyscall("unlinkat", path + "/" + name) { unlinkat(fd, name, 0) }
        return true
    }
}

// MARK: - records

/// The validated header: identity, flags and the section geometry.
public struct TableHeader: Sendable, Equatable {
    public var pid: Int32
    public var flags: UInt32
    public var startTime: UInt64
    public var nrCpuIds: UInt32
    public var clkTck: UInt32
    public var createdNs: UInt64
    public var totalSize: UInt64
    public var objects: Section
    public var traces: Section
    public var threads: Section
    public var comms: Section
    public var regions: Section
    public var areas: Section
    public var allocSeq: UInt64
    public var liveObjects: UInt64
    public var daemonPid: Int32
    public var daemonScans: UInt64
    /// The client's write-tracking userfaultfd (KML_TABLE_USERFAULTFD), a claim: see `WriteTracker`.
    public var userfaultfd: Int32? = nil
    /// Set with KML_TABLE_DISABLED (NUL-terminated in the table; cut at 127 bytes otherwise).
    public var disabledReason: String

    public struct Section: Sendable, Equatable {
        public var offset: UInt64
        public var capacity: UInt32
        public var entrySize: UInt32
        public var used: UInt32
        var end: UInt64 { offset + UInt64(capacity) * UInt64(entrySize) }
        func sameGeometry(_ o: Section) -> Bool { offset == o.offset && capacity == o.capacity && entrySize == o.entrySize }
    }

    public var isTracking: Bool { flags & KML_TABLE_TRACKING != 0 }
    public var isDisabled: Bool { flags & KML_TABLE_DISABLED != 0 }
    public var isEnvOff: Bool { flags & KML_TABLE_ENV_OFF != 0 }
    /// The program's malloc is another allocator's (jemalloc, tcmalloc, ...): the shim tracks through it.
    public var hasForeignMalloc: Bool { flags & KML_TABLE_FOREIGN_MALLOC != 0 }

    func sameGeometry(_ o: TableHeader) -> Bool {
        totalSize == o.totalSize && objects.sameGeometry(o.objects) && traces.sameGeometry(o.traces)
            && threads.sameGeometry(o.threads) && comms.sameGeometry(o.comms)
            && regions.sameGeometry(o.regions) && areas.sameGeometry(o.areas)
    }
}

/// One live object record (a consistent seqlock copy).
public struct ObjectRecord: Sendable, Equatable {
    public var slot: UInt32
    /// The state word's version (bits 3..31).
    public var version: UInt32
    public var pointer: UInt64
    public var size: UInt64
    public var seq: UInt64
    public var timeNs: UInt64
    public var traceId: UInt32
    public var tid: Int32
    public var minCount: Int32
    /// KML_KIND_* | KML_OBJ_*
    public var flags: UInt32
    public var commId: UInt32
    public var transientGen: UInt32

    public var kind: UInt32 { flags & KML_KIND_MASK }
    public var isPerCPU: Bool { kind == KML_KIND_PERCPU || kind == KML_KIND_CUSTOM_PERCPU }
    public var noScan: Bool { flags & KML_OBJ_NO_SCAN != 0 }
    public var hasAreas: Bool { flags & KML_OBJ_HAS_AREAS != 0 }
    public var fullScan: Bool { flags & KML_OBJ_FULL_SCAN != 0 }
}

public struct ThreadRecord: Sendable, Equatable {
    public var slot: UInt32
    public var tid: Int32
    /// [lo, hi); both 0 for the main thread (use [stack] from /proc/PID/maps).
    public var stackLo: UInt64
    public var stackHi: UInt64
    public var tlsLo: UInt64
    public var tlsHi: UInt64
    public var comm: String
    /// KML_THREAD_DETACHED: once its task has exited nothing of it is a root.
    public var detached: Bool = false
    /// Offset of the thread pointer (struct pthread, the TCB) in [tlsLo, tlsHi).
    public var tcbOffset: UInt64 = 0

    public init(slot: UInt32, tid: Int32, stackLo: UInt64, stackHi: UInt64, tlsLo: UInt64, tlsHi: UInt64,
                comm: String, detached: Bool = false, tcbOffset: UInt64 = 0) {
        self.slot = slot; self.tid = tid; self.stackLo = stackLo; self.stackHi = stackHi
        self.tlsLo = tlsLo; self.tlsHi = tlsHi; self.comm = comm; self.detached = detached; self.tcbOffset = tcbOffset
    }
}

public struct RegionRecord: Sendable, Equatable {
    public var slot: UInt32
    /// KML_REGION_PERCPU or KML_REGION_SHIM_PRIVATE
    public var kind: UInt32
    public var start: UInt64
    public var size: UInt64
    public var cpu0Base: UInt64
    public var stride: UInt64
    public var nrCpus: UInt32
    public var isPerCPU: Bool { kind == KML_REGION_PERCPU }
    public var isShimPrivate: Bool { kind == KML_REGION_SHIM_PRIVATE }
}

public struct AreaRecord: Sendable, Equatable {
    public var slot: UInt32
    public var objectIndex: UInt32
    public var objectSeq: UInt64
    public var start: UInt64
    /// UInt64.max: to the end of the object.
    public var size: UInt64
}

/// What one pass over a section did.
public struct ReadStats: Sendable, Equatable {
    public var slots = 0
    public var live = 0
    /// Slots read again because they changed during the bulk read.
    public var retried = 0
    /// Slots given up after the retries (busy or changing all the time).
    public var skipped = 0
    public var preads = 0
    public var bytes = 0
    /// Chunks of object slots found unchanged by their digest (`ObjectChunkDigests`): read once, not decoded.
    public var unchangedChunks = 0
    public init() {}
}

/// What a reader saw of each chunk of `ClientTable.chunkSlots` object slots when it last read the chunk
/// consistently and its caller settled every live record in it: a digest of the chunk's bytes and its
/// live count. 12 bytes per 1024 slots. The digest is keyed by a secret drawn per instance, so a client
/// cannot aim its table at a collision; the shim-private `hash_next` word is left out (it is no part
/// of the record). Owned by one reader (one client session): not thread-safe.
public final class ObjectChunkDigests {
    private var digests: [UInt64] = []       // 0: unknown (read the chunk in full)
    private var live: [UInt32] = []
    private let key: UInt64

    public init() {
        var generator = SystemRandomNumberGenerator()
        key = generator.next() | 1
    }

    func stored(_ index: Int) -> (digest: UInt64, live: UInt32)? {
        guard index < digests.count, digests[index] != 0 else { return nil }
        return (digests[index], live[index])
    }

    func store(_ index: Int, digest: UInt64, live count: UInt32) {
        if index >= digests.count {
            digests.append(contentsOf: repeatElement(0, count: index + 1 - digests.count))
            live.append(contentsOf: repeatElement(0, count: index + 1 - live.count))
        }
        digests[index] = digest
        live[index] = count
    }

    func forget(_ index: Int) {
        if index < digests.count { digests[index] = 0 }
    }

    /// Forgets the chunks holding `slots` (their records were handled outside a chunked read).
    public func forget(slots: Range<UInt32>) {
        guard !slots.isEmpty else { return }
        let chunk = UInt32(ClientTable.chunkSlots)
        for index in Int(slots.lowerBound / chunk)...Int((slots.upperBound - 1) / chunk) { forget(index) }
    }

    /// Chunks with a stored digest (for tests and stats).
    public var known: Int { digests.reduce(0) { $0 + ($1 != 0 ? 1 : 0) } }

    /// The keyed digest of `entries` records of `entrySize` bytes (a multiple of 8) at `p`, never 0: four
    /// independent lanes of xor, multiply and xor-shift (each step a bijection of the lane, so one changed
    /// word always changes the result), folded with the entry count.
    func digest(_ p: UnsafeRawBufferPointer, entries: Int, entrySize: Int) -> UInt64 {
        @inline(__always) func mix(_ h: UInt64, _ w: UInt64) -> UInt64 {
            let x = (h ^ w) &* 0x9E37_79B9_7F4A_7C15
            return x ^ (x >> 32)
        }
        let words = entrySize / 8
        var lanes: (UInt64, UInt64, UInt64, UInt64) = (key, key &* 3, key &* 5, key &* 7)
        let base = p.baseAddress!
        for e in 0..<entries {
            let entry = base + e * entrySize
            // Word 0: the state (low half, little-endian); the high half is hash_next.
            lanes.0 = mix(lanes.0, entry.load(as: UInt64.self) & 0xffff_ffff)
            var j = 1
            while j + 3 <= words {
                lanes.1 = mix(lanes.1, entry.load(fromByteOffset: j * 8, as: UInt64.self))
                lanes.2 = mix(lanes.2, entry.load(fromByteOffset: j * 8 + 8, as: UInt64.self))
                lanes.3 = mix(lanes.3, entry.load(fromByteOffset: j * 8 + 16, as: UInt64.self))
                j += 3
            }
            while j < words {
                lanes.0 = mix(lanes.0, entry.load(fromByteOffset: j * 8, as: UInt64.self))
                j += 1
            }
        }
        let folded = mix(mix(mix(mix(lanes.0, lanes.1), lanes.2), lanes.3), UInt64(entries))
        return folded == 0 ? 1 : folded
    }
}

// MARK: - the table

/// A client's table, opened from a memfd file descriptor or from the client's private memory.
/// Thread-safe: reads are pread on one fd or process_vm_readv, the trace/comm caches are behind a mutex.
public final class ClientTable: Sendable {
    public let pid: Int32
    /// The rendezvous it was opened from (nil for tables opened from a file directly).
    public let rendezvous: Rendezvous?
    /// The header as validated at open time (geometry is fixed from then on).
    public let openedHeader: TableHeader
    /// The memfd's inode (identifies this table: after an exec the process has another one); 0 for a
    /// private table (identified by its address and header).
    public let inode: UInt64
    let storage: TableStorage

    /// Slots per bulk pread (64 B objects: 64 KiB). A sync holds three such buffers: with 4096 slots
    /// (768 KiB in all) they set the daemon's peak at 1 M objects (issue 10 goal 5).
    public static let chunkSlots = 1024
    /// Traces and comms kept in the cache; beyond, lookups read the table each time. A client may publish
    /// 2^30 traces: the cache (about 200 bytes a trace) must not follow.
    public static let maxCachedTraces = 1 << 16
    public static let maxCachedComms = 1 << 16
    /// Retries of one changing slot before it is skipped.
    public static let maxSlotRetries = 16
    /// Sanity limits on what a client may claim (the shim accepts up to 2^30 object slots). Nothing
    /// the reader allocates scales with these: reads go in fixed chunks; they bound arithmetic.
    public static let maxTotalSize: UInt64 = 1 << 40
    public static let maxCapacity: UInt32 = 1 << 30
    public static let maxCPUs: UInt32 = 1 << 16
    /// Live records kept from the list sections (each is daemon memory, and regions are searched
    /// linearly): a table with more is rejected with `tooManyRecords`. Far above real programs (the
    /// kernel's default pid_max is 2^22 for the whole host).
    public static let maxThreads = 1 << 17
    public static let maxRegions = 1 << 12
    public static let maxAreas = 1 << 20

    private let caches = Mutex<Caches>(Caches())
    struct Caches {
        /// traceFrames[id-1]: nil until read with a published length.
        /// Published traces by id (sparse: memory follows what was read, not what ids claim).
        var traces: [UInt32: [UInt64]] = [:]
        var comms: [UInt32: String] = [:]
    }

    /// Opens a table from a file handle (tests: a memfd; daemon: via `open(rendezvous:)`).
    public convenience init(file: FileHandleFD, expectedPid: Int32? = nil, expectedStartTime: UInt64? = nil,
                            rendezvous: Rendezvous? = nil) throws(TableError) {
        let ino: UInt64
        do { ino = UInt64(try file.fstat().st_ino) } catch { throw .system(error) }
        try self.init(storage: .file(file), inode: ino, expectedPid: expectedPid, expectedStartTime: expectedStartTime,
                      rendezvous: rendezvous)
    }

    init(storage: TableStorage, inode: UInt64, expectedPid: Int32?, expectedStartTime: UInt64?,
         rendezvous: Rendezvous?) throws(TableError) {
        self.storage = storage
        self.rendezvous = rendezvous
        let h = try Self.readHeader(storage)
        if let p = expectedPid, h.pid != p { throw .pidMismatch(header: h.pid, expected: p) }
        if let t = expectedStartTime, h.startTime != t { throw .startTimeMismatch(header: h.startTime, expected: t) }
        if case .memory = storage, h.flags & KML_TABLE_PRIVATE == 0 {
            throw .notATable(path: "/proc/\(h.pid)/maps", reason: "private memory whose header has no KML_TABLE_PRIVATE")
        }
        self.pid = h.pid
        self.openedHeader = h
        self.inode = inode
    }

    /// Opens the table a rendezvous file announces: checks the client is alive with the same start
    /// time and the file is its own; a private table (fd=-1, no shared mapping there) must be exactly
    /// one private anonymous mapping (`openPrivate`); else opens /proc/PID/map_files/<start>-<end>
    /// (fallback /proc/PID/fd/<fd>), checks it is the memfd "kmemleak-table" (and the announced
    /// mapping's inode). Then validates the header.
    public static func open(_ r: Rendezvous) throws(TableError) -> ClientTable {
        let st: ProcStat
        do { st = try Proc.stat(r.pid) } catch { throw .stale(pid: r.pid, reason: "process gone") }
        if st.state == "Z" || st.state == "X" { throw .stale(pid: r.pid, reason: "process exited") }
        if st.startTime != r.startTime { throw .stale(pid: r.pid, reason: "pid reused (start time \(st.startTime) != \(r.startTime))") }
        // The file must be the process's own: written by root (trusted) or by one of its uids.
        if let owner = r.fileOwner, owner != 0 {
            let uids = (try? Proc.uids(r.pid)) ?? []
            if !uids.contains(owner) { throw .foreignRendezvous(path: r.path, owner: owner, processUIDs: uids) }
        }
        let maps = try? Proc.maps(r.pid)
        let mapping = maps?.first { $0.start == r.address }
        // No fd and no shared mapping there: a private table (a memfd found in /proc has no fd either).
        if r.fd < 0 && !(mapping?.shared ?? false) { return try openPrivate(r, maps: maps) }
        let mapName = String(r.address, radix: 16) + "-" + String(r.address &+ r.size, radix: 16)
        let candidates = ["/proc/\(r.pid)/map_files/\(mapName)", "/proc/\(r.pid)/fd/\(r.fd)"]
        var lastError: TableError = .notATable(path: candidates[0], reason: "not found")
        var absent = 0 // candidates that do not exist or are not the table
        for path in candidates {
            do {
                let target = try ProcFile.readlink(path)
                guard target.hasPrefix("/memfd:" + KML_MEMFD_NAME) else {
                    lastError = .notATable(path: path, reason: "links to \(target)")
                    absent += 1
                    continue
                }
                // Read-write for daemon_pid/daemon_scans; read-only if that is all we may do.
                let h = try openTableFile(path)
                let fst = try h.fstat()
                guard (fst.st_mode & S_IFMT) == S_IFREG else {
                    lastError = .notATable(path: path, reason: "not a regular file")
                    continue
                }
                if let m = mapping, m.inode != 0, m.inode != UInt64(fst.st_ino) {
                    lastError = .notATable(path: path, reason: "inode \(fst.st_ino) is not the announced mapping's \(m.inode)")
                    continue
                }
                return try ClientTable(file: h, expectedPid: r.pid, expectedStartTime: r.startTime, rendezvous: r)
            } catch let e as SystemError {
                lastError = .system(e)
                if e.errno == ENOENT { absent += 1 }
            } catch let e as TableError {
                throw e // the file is the table and it is bad: no point trying the other path
            } catch {
                lastError = .notATable(path: path, reason: "\(error)")
            }
        }
        if !Proc.isAlive(r.pid, startTime: r.startTime) { throw .stale(pid: r.pid, reason: "process gone") }
        // Alive, same start time, but neither the mapping nor the fd is a table any more: the
        // process called exec into a program without the shim (or unmapped it): stale.
        if absent == candidates.count && !(mapping?.path.hasPrefix("/memfd:" + KML_MEMFD_NAME) ?? false) {
            throw .stale(pid: r.pid, reason: "no table mapped at 0x\(String(r.address, radix: 16)) any more (exec?)")
        }
        throw lastError
    }

    /// Whether `m` can be the private table announced as [address, address + size): exactly one
    /// mapping, private, anonymous (no file: nothing a FUSE server serves), readable and writable.
    static func isPrivateTable(_ m: MapEntry, address: UInt64, size: UInt64) -> Bool {
        m.start == address && m.end == address &+ size && !m.shared && m.inode == 0 && m.readable && m.writable
            && (m.path.isEmpty || m.path.hasPrefix("[anon:" + KML_MEMFD_NAME))
    }

    /// A private table (fd=-1): the announced range must be exactly one private anonymous mapping.
    static func openPrivate(_ r: Rendezvous, maps: [MapEntry]?) throws(TableError) -> ClientTable {
        guard let maps else {
            if !Proc.isAlive(r.pid, startTime: r.startTime) { throw .stale(pid: r.pid, reason: "process gone") }
            throw .notATable(path: "/proc/\(r.pid)/maps", reason: "unreadable")
        }
        let at = "0x" + String(r.address, radix: 16)
        guard let m = maps.first(where: { $0.start <= r.address && r.address < $0.end }) else {
            if !Proc.isAlive(r.pid, startTime: r.startTime) { throw .stale(pid: r.pid, reason: "process gone") }
            throw .stale(pid: r.pid, reason: "no table mapped at \(at) any more (exec?)")
        }
        guard isPrivateTable(m, address: r.address, size: r.size) else {
            let what = "\(String(m.start, radix: 16))-\(String(m.end, radix: 16)) \(m.shared ? "shared" : "private")"
                + (m.path.isEmpty ? "" : " " + m.path)
            throw .notATable(path: "/proc/\(r.pid)/maps", reason: "\(at)+\(r.size) is not one private anonymous mapping (\(what))")
        }
        let memory = try PrivateTableMemory(pid: r.pid, address: r.address, length: r.size)
        return try ClientTable(storage: .memory(memory), inode: 0, expectedPid: r.pid, expectedStartTime: r.startTime,
                               rendezvous: r)
    }

    /// Opens read-write, or read-only when writing is not permitted.
    static func openTableFile(_ path: String) throws(SystemError) -> FileHandleFD {
        do {
            return try FileHandleFD.open(path, O_RDWR)
        } catch {
            guard error.errno == EACCES || error.errno == EPERM || error.errno == EROFS else { throw error }
            return try FileHandleFD.open(path, O_RDONLY)
        }
    }

    /// True while the client process lives (same pid and start time).
    /// For a table opened from a rendezvous, also false once the process no longer maps this table
    /// (it called exec: same pid and start time, a new table). Costs a stat of /proc/PID/map_files.
    public var isAlive: Bool {
        guard Proc.isAlive(pid, startTime: openedHeader.startTime) else { return false }
        return isStillMapped
    }

    /// Whether the announced mapping (or fd) of the client still is this table.
    public var isStillMapped: Bool {
        guard let r = rendezvous else { return true }
        if case .memory = storage {
            guard let maps = try? Proc.maps(pid) else { return true } // cannot tell
            return maps.contains { Self.isPrivateTable($0, address: r.address, size: r.size) }
        }
        let mapName = String(r.address, radix: 16) + "-" + String(r.address &+ r.size, radix: 16)
        for path in ["/proc/\(pid)/map_files/\(mapName)", "/proc/\(pid)/fd/\(r.fd)"] {
            // The link's name first: a stat that follows it to a file of a FUSE server (the client
            // mapped one over the table's range) would wait on that server.
            if let target = try? ProcFile.readlink(path), !target.hasPrefix("/memfd:" + KML_MEMFD_NAME) { return false }
            var st = stat()
            if fstatat(AT_FDCWD, path, &st, 0) == 0 { return UInt64(st.st_ino) == inode }
            if errno == ENOENT { return false }
            // EPERM/EACCES (no CAP_SYS_ADMIN for map_files): try the fd.
        }
        return true // cannot tell
    }

    // MARK: header

    /// Re-reads and re-validates the header (and the file size); the geometry must not change, nor
    /// the creation time (a private table replaced at the same address after an exec).
    public func header() throws(TableError) -> TableHeader {
        let h = try Self.readHeader(storage)
        guard h.sameGeometry(openedHeader), h.pid == openedHeader.pid, h.startTime == openedHeader.startTime,
              h.createdNs == openedHeader.createdNs else {
            throw .geometryChanged
        }
        return h
    }

    static func readHeader(_ storage: TableStorage) throws(TableError) -> TableHeader {
        let size = try storage.size()
        let hsize = MemoryLayout<kml_header>.size
        guard size >= UInt64(hsize) else { throw .truncated(fileSize: size, totalSize: UInt64(hsize)) }
        var raw = kml_header()
        let n = try withUnsafeMutableBytes(of: &raw) { b in Result { () throws(TableError) -> Int in try storage.read(into: b, offset: 0) } }.get()
        guard n == hsize else { throw .truncated(fileSize: UInt64(n), totalSize: UInt64(hsize)) }
        return try validate(raw, fileSize: size)
    }

    /// Validates a raw header against the memfd's real size. Public for tests and tools.
    public static func validate(_ raw: kml_header, fileSize: UInt64) throws(TableError) -> TableHeader {
        guard raw.magic == KML_MAGIC else { throw .badMagic(raw.magic) }
        guard raw.version == KML_ABI_VERSION else { throw .badVersion(raw.version) }
        guard raw.header_size == UInt32(MemoryLayout<kml_header>.size) else { throw .badHeaderSize(raw.header_size) }
        guard raw.total_size >= UInt64(raw.header_size), raw.total_size <= maxTotalSize else { throw .badTotalSize(raw.total_size) }
        guard fileSize >= raw.total_size else { throw .truncated(fileSize: fileSize, totalSize: raw.total_size) }
        guard raw.pid > 0 else { throw .badSection(section: "header", reason: "pid \(raw.pid)") }
        guard raw.nr_cpu_ids >= 1, raw.nr_cpu_ids <= maxCPUs else { throw .badSection(section: "header", reason: "nr_cpu_ids \(raw.nr_cpu_ids)") }

        func section(_ name: String, _ off: UInt64, _ cap: UInt32, _ esize: UInt32, _ used: UInt32, expected: Int) throws(TableError) -> TableHeader.Section {
            guard esize == UInt32(expected) else { throw .badSection(section: name, reason: "entry size \(esize) != \(expected)") }
            guard cap <= maxCapacity else { throw .badSection(section: name, reason: "capacity \(cap) too large") }
            guard off % 8 == 0 else { throw .badSection(section: name, reason: "offset \(off) misaligned") }
            let bytes = UInt64(cap) * UInt64(esize)
            if cap > 0 {
                guard off >= UInt64(raw.header_size) else { throw .badSection(section: name, reason: "offset \(off) inside the header") }
                let (end, o) = off.addingReportingOverflow(bytes)
                guard !o, end <= raw.total_size else { throw .badSection(section: name, reason: "[\(off), +\(bytes)) past total_size \(raw.total_size)") }
            }
            guard used <= cap else { throw .usedOverCapacity(section: name, used: used, capacity: cap) }
            return .init(offset: off, capacity: cap, entrySize: esize, used: used)
        }
        // objects_used is updated atomically by the client; a plain copy of an aligned u32 is fine.
        let objects = try section("objects", raw.objects_offset, raw.objects_capacity, raw.object_size, raw.objects_used, expected: MemoryLayout<kml_object>.size)
        let traces = try section("traces", raw.traces_offset, raw.traces_capacity, raw.trace_size, raw.traces_used, expected: MemoryLayout<kml_trace>.size)
        let threads = try section("threads", raw.threads_offset, raw.threads_capacity, raw.thread_size, raw.threads_used, expected: MemoryLayout<kml_thread>.size)
        let comms = try section("comms", raw.comms_offset, raw.comms_capacity, raw.comm_size, raw.comms_used, expected: Int(KML_COMM_LEN))
        let regions = try section("regions", raw.regions_offset, raw.regions_capacity, raw.region_size, raw.regions_used, expected: MemoryLayout<kml_region>.size)
        let areas = try section("areas", raw.areas_offset, raw.areas_capacity, raw.area_size, raw.areas_used, expected: MemoryLayout<kml_area>.size)
        let named = [("objects", objects), ("traces", traces), ("threads", threads), ("comms", comms), ("regions", regions), ("areas", areas)]
            .filter { $0.1.capacity > 0 }.sorted { $0.1.offset < $1.1.offset }
        for i in named.indices.dropFirst() where named[i - 1].1.end > named[i].1.offset {
            throw .overlappingSections(named[i - 1].0, named[i].0)
        }
        var reason = raw.disabled_reason
        let disabled = withUnsafeBytes(of: &reason) { b -> String in
            let n = b.firstIndex(of: 0) ?? min(b.count, 127)
            return String(decoding: b[0..<n], as: UTF8.self)
        }
        return TableHeader(pid: raw.pid, flags: raw.flags, startTime: raw.start_time, nrCpuIds: raw.nr_cpu_ids,
                           clkTck: raw.clk_tck, createdNs: raw.created_ns, totalSize: raw.total_size,
                           objects: objects, traces: traces, threads: threads, comms: comms, regions: regions,
                           areas: areas, allocSeq: raw.alloc_seq, liveObjects: raw.live_objects,
                           daemonPid: raw.daemon_pid, daemonScans: raw.daemon_scans,
                           userfaultfd: raw.flags & KML_TABLE_USERFAULTFD != 0 && raw.userfaultfd >= 0 ? raw.userfaultfd : nil,
                           disabledReason: disabled)
    }

    // MARK: daemon-owned fields

    /// Stores daemon_pid (the only header fields the daemon writes).
    public func setDaemonPid(_ daemonPid: Int32) throws(TableError) {
        var v = daemonPid
        try write(&v, at: MemoryLayout<kml_header>.offset(of: \kml_header.daemon_pid)!)
    }

    /// Stores daemon_scans.
    public func setDaemonScans(_ scans: UInt64) throws(TableError) {
        var v = scans
        try write(&v, at: MemoryLayout<kml_header>.offset(of: \kml_header.daemon_scans)!)
    }

    private func write<T>(_ v: inout T, at offset: Int) throws(TableError) {
        // Never extend a truncated file.
        guard try storage.size() >= UInt64(offset + MemoryLayout<T>.size) else {
            throw .truncated(fileSize: try storage.size(), totalSize: openedHeader.totalSize)
        }
        let s = storage
        try withUnsafeBytes(of: &v) { b in Result { () throws(TableError) in try s.write(b, offset: UInt64(offset)) } }.get()
    }

    // MARK: seqlock bulk reading

    /// Reads `count` entries of `section` from slot 0 and calls `body` with each consistent LIVE
    /// entry (slot, state, pointer to a private aligned copy). See the file comment for the scheme.
    /// More than `maxLive` live entries throws `tooManyRecords` (before calling `body` for the one over).
    func forEachLive(_ name: String, _ s: TableHeader.Section, count: UInt32, maxLive: Int = .max, stats: inout ReadStats,
                     _ body: (UInt32, UInt32, UnsafeRawPointer) throws(TableError) -> Void) throws(TableError) {
        let esize = Int(s.entrySize)
        guard count > 0, esize >= 4 else { return }
        let chunk = max(1, min(Self.chunkSlots, Int(count)))
        let buffers = TripleReadBuffers(chunkBytes: chunk * esize, entrySize: esize)
        defer { buffers.deallocate() }
        let (a, b, c, one) = (buffers.a, buffers.b, buffers.c, buffers.one)
        var retry: [UInt32] = []
        var first: UInt32 = 0
        while first < count {
            // Holes of the memfd (pages never written) read as zeros, i.e. FREE slots: jump over them
            // (a client claiming a huge sparse `used` costs one lseek, not gigabytes of preads).
            let at = s.offset + UInt64(first) * UInt64(esize)
            guard let data = storage.nextData(from: at) else { break }
            if data > at {
                let slot = (data - s.offset) / UInt64(esize)
                if slot >= UInt64(count) { break }
                if slot > UInt64(first) { first = UInt32(slot); continue }
            }
            let n = min(UInt32(chunk), count - first)
            let len = Int(n) * esize
            let off = s.offset + UInt64(first) * UInt64(esize)
            // Size first: a truncated file would give short reads.
            let fsize = try storage.size()
            guard fsize >= openedHeader.totalSize else { throw .truncated(fileSize: fsize, totalSize: openedHeader.totalSize) }
            for buf in [a, b, c] { try readSpan(into: buf, length: len, offset: off, stats: &stats) }
            // Every record is applied here (the body answers true), so the count and `settled` say nothing.
            _ = try visitConsistentSlots(name, first: first, count: n, entrySize: esize, a: a, b: b, c: c,
                                         maxLive: maxLive, stats: &stats, retry: &retry) { (slot, state, p) throws(TableError) in
                try body(slot, state, p)
                return true
            }
            for slot in retry {
                try retrySlot(name, s, slot, scratch: one, maxLive: maxLive, stats: &stats) { (slot, state, p) throws(TableError) in
                    try body(slot, state, p)
                    return true
                }
            }
            first += n
        }
    }

    /// The buffers of a chunk read three times over (A, B, C) and of one slot's three reads.
    private struct TripleReadBuffers {
        let a, b, c, one: UnsafeMutableRawBufferPointer
        init(chunkBytes: Int, entrySize: Int) {
            a = .allocate(byteCount: chunkBytes, alignment: 64)
            b = .allocate(byteCount: chunkBytes, alignment: 64)
            c = .allocate(byteCount: chunkBytes, alignment: 64)
            one = .allocate(byteCount: entrySize * 3, alignment: 64)
        }
        func deallocate() { a.deallocate(); b.deallocate(); c.deallocate(); one.deallocate() }
    }

    /// `length` bytes at `offset` into the start of `buf`; a short read means the file was truncated.
    private func readSpan(into buf: UnsafeMutableRawBufferPointer, length: Int, offset: UInt64,
                          stats: inout ReadStats) throws(TableError) {
        let got = try storage.read(into: UnsafeMutableRawBufferPointer(rebasing: buf[0..<length]), offset: offset)
        stats.preads += 1
        stats.bytes += got
        guard got == length else { throw .truncated(fileSize: try storage.size(), totalSize: openedHeader.totalSize) }
    }

    /// The `n` slots from `first` of a chunk read three times over (`a`, `b`, `c`): a slot whose state is
    /// not BUSY and reads the same in A and C is consistent, and B holds it; `body` gets each consistent
    /// LIVE one, and the others go to `retry` (emptied first). Returns the LIVE slots given to `body` and
    /// whether it answered true for every one. More than `maxLive` live entries throws `tooManyRecords`.
    private func visitConsistentSlots(_ name: String, first: UInt32, count n: UInt32, entrySize esize: Int,
                                      a: UnsafeMutableRawBufferPointer, b: UnsafeMutableRawBufferPointer,
                                      c: UnsafeMutableRawBufferPointer, maxLive: Int, stats: inout ReadStats,
                                      retry: inout [UInt32],
                                      _ body: (UInt32, UInt32, UnsafeRawPointer) throws(TableError) -> Bool) throws(TableError)
        -> (live: UInt32, settled: Bool) {
        retry.removeAll(keepingCapacity: true)
        var settled = true
        var live: UInt32 = 0
        for i in 0..<Int(n) {
            let o = i * esize
            let sa = a.load(fromByteOffset: o, as: UInt32.self)
            let sc = c.load(fromByteOffset: o, as: UInt32.self)
            stats.slots += 1
            if sa & KML_STATE_BUSY != 0 || sa != sc {
                retry.append(first + UInt32(i))
                continue
            }
            if sa & KML_STATE_KIND_MASK != KML_STATE_LIVE { continue }
            stats.live += 1
            live += 1
            guard stats.live <= maxLive else { throw .tooManyRecords(section: name, limit: maxLive) }
            if !(try body(first + UInt32(i), sa, UnsafeRawPointer(b.baseAddress! + o))) { settled = false }
        }
        return (live, settled)
    }

    /// A slot that changed during a bulk read: read one at a time, three preads each, a bounded number of
    /// times; `body` as in `forEachLive` when it is consistent and LIVE. Returns `body`'s answer (true when
    /// the slot is FREE, false when it was given up).
    @discardableResult
    private func retrySlot(_ name: String, _ s: TableHeader.Section, _ slot: UInt32, scratch one: UnsafeMutableRawBufferPointer,
                           maxLive: Int, stats: inout ReadStats,
                           _ body: (UInt32, UInt32, UnsafeRawPointer) throws(TableError) -> Bool) throws(TableError) -> Bool {
        let esize = Int(s.entrySize)
        stats.retried += 1
        let soff = s.offset + UInt64(slot) * UInt64(esize)
        for attempt in 0..<Self.maxSlotRetries {
            if attempt > 0 { sched_yield() }
            for k in 0..<3 {
                try readSpan(into: UnsafeMutableRawBufferPointer(rebasing: one[(k * esize)..<((k + 1) * esize)]), length: esize,
                             offset: soff, stats: &stats)
            }
            let sa = one.load(fromByteOffset: 0, as: UInt32.self)
            let sc = one.load(fromByteOffset: 2 * esize, as: UInt32.self)
            if sa & KML_STATE_BUSY == 0 && sa == sc {
                guard sa & KML_STATE_KIND_MASK == KML_STATE_LIVE else { return true }
                stats.live += 1
                guard stats.live <= maxLive else { throw .tooManyRecords(section: name, limit: maxLive) }
                return try body(slot, sa, UnsafeRawPointer(one.baseAddress! + esize))
            }
        }
        stats.skipped += 1
        return false
    }

    /// `forEachLive` over the object section from slot 0, skipping the chunks `digests` says are
    /// unchanged since they were last read and settled: a chunk (`chunkSlots` slots from a multiple of
    /// `chunkSlots`) is read once; when its keyed digest equals the one stored, `unchanged` gets its slot
    /// range and none of its records are decoded. Otherwise it is read as by `forEachLive`, and its
    /// digest is stored when every slot was consistent in the bulk read and `body` answered true (settled)
    /// for each of its live records; else it is forgotten (read in full next time).
    ///
    /// Why one read suffices for an unchanged chunk: a slot whose state word (version included) reads as
    /// the one seen in the last consistent read, not BUSY, had no write begun since then (every write bumps
    /// the version), so the slot holds that record at the instant its state was read, whatever order the
    /// copy read its bytes in. Bytes identical to that read include the state; a different record
    /// (another allocation has another seq) has different bytes.
    func forEachLiveObject(_ s: TableHeader.Section, count: UInt32, maxLive: Int, digests: ObjectChunkDigests,
                           stats: inout ReadStats, unchanged: (Range<UInt32>) -> Void,
                           _ body: (UInt32, UInt32, UnsafeRawPointer) throws(TableError) -> Bool) throws(TableError) {
        let esize = Int(s.entrySize)
        guard count > 0, esize >= 8, esize % 8 == 0 else { return }
        let chunk = Self.chunkSlots
        let buffers = TripleReadBuffers(chunkBytes: min(chunk, Int(count)) * esize, entrySize: esize)
        defer { buffers.deallocate() }
        let (a, b, c, one) = (buffers.a, buffers.b, buffers.c, buffers.one)
        var retry: [UInt32] = []
        var first: UInt32 = 0
        while first < count {
            let at = s.offset + UInt64(first) * UInt64(esize)
            guard let data = storage.nextData(from: at) else { break }
            if data > at {
                // Holes read as FREE slots: jump to the chunk holding the next data.
                let slot = (data - s.offset) / UInt64(esize)
                if slot >= UInt64(count) { break }
                let chunkStart = slot / UInt64(chunk) * UInt64(chunk)
                if chunkStart > UInt64(first) { first = UInt32(chunkStart); continue }
            }
            let index = Int(first) / chunk
            let n = min(UInt32(chunk), count - first)
            let len = Int(n) * esize
            let off = s.offset + UInt64(first) * UInt64(esize)
            let fsize = try storage.size()
            guard fsize >= openedHeader.totalSize else { throw .truncated(fileSize: fsize, totalSize: openedHeader.totalSize) }
            try readSpan(into: a, length: len, offset: off, stats: &stats)
            if let stored = digests.stored(index),
               digests.digest(UnsafeRawBufferPointer(a), entries: Int(n), entrySize: esize) == stored.digest {
                stats.slots += Int(n)
                stats.live += Int(stored.live)
                guard stats.live <= maxLive else { throw .tooManyRecords(section: "objects", limit: maxLive) }
                stats.unchangedChunks += 1
                unchanged(first..<(first + n))
                first += n
                continue
            }
            try readSpan(into: b, length: len, offset: off, stats: &stats)
            try readSpan(into: c, length: len, offset: off, stats: &stats)
            let (live, settled) = try visitConsistentSlots("objects", first: first, count: n, entrySize: esize, a: a, b: b, c: c,
                                                           maxLive: maxLive, stats: &stats, retry: &retry, body)
            // B is consistent for every slot that A and C agree on: with no retries, it is the chunk.
            if settled && retry.isEmpty {
                digests.store(index, digest: digests.digest(UnsafeRawBufferPointer(b), entries: Int(n), entrySize: esize), live: live)
            } else {
                digests.forget(index)
            }
            for slot in retry {
                try retrySlot("objects", s, slot, scratch: one, maxLive: maxLive, stats: &stats, body)
            }
            first += n
        }
    }

    // MARK: objects

    /// Streams every live object: in slot order per chunk of `chunkSlots`, except slots that changed
    /// during the bulk read, which are re-read one by one after their chunk. Records are validated:
    /// ids within the sections' capacities, a known kind, no address overflow; a bad record throws
    /// `badRecord` (objects already streamed stay streamed), more than `maxLive` live records throws
    /// `tooManyRecords`. Memory: three chunk buffers (768 KiB).
    @discardableResult
    public func readObjects(maxLive: Int = .max, _ body: (ObjectRecord) -> Void) throws(TableError) -> ReadStats {
        let h = try header()
        var stats = ReadStats()
        let tracesCap = h.traces.capacity, commsCap = h.comms.capacity
        try forEachLive("objects", h.objects, count: h.objects.used, maxLive: maxLive, stats: &stats) { (slot, state, p) throws(TableError) in
            body(try Self.validatedObject(slot, state, p, tracesCapacity: tracesCap, commsCapacity: commsCap))
        }
        return stats
    }

    /// `readObjects(maxLive:_:)` that skips the chunks `digests` knows unchanged (see `forEachLiveObject`):
    /// `unchanged` gets their slot ranges, in order, and their records are not streamed. `body` answers
    /// whether the record is settled (nothing to redo while it stays the same); a chunk with an unsettled
    /// record is read in full next time.
    @discardableResult
    public func readObjects(maxLive: Int = .max, digests: ObjectChunkDigests, unchanged: (Range<UInt32>) -> Void,
                            _ body: (ObjectRecord) -> Bool) throws(TableError) -> ReadStats {
        let h = try header()
        var stats = ReadStats()
        let tracesCap = h.traces.capacity, commsCap = h.comms.capacity
        try forEachLiveObject(h.objects, count: h.objects.used, maxLive: maxLive, digests: digests, stats: &stats,
                              unchanged: unchanged) { (slot, state, p) throws(TableError) -> Bool in
            body(try Self.validatedObject(slot, state, p, tracesCapacity: tracesCap, commsCapacity: commsCap))
        }
        return stats
    }

    /// One object record as read, checked against the table's capacities.
    static func validatedObject(_ slot: UInt32, _ state: UInt32, _ p: UnsafeRawPointer, tracesCapacity: UInt32,
                                commsCapacity: UInt32) throws(TableError) -> ObjectRecord {
        let o = p.load(as: kml_object.self)
        guard o.trace_id <= tracesCapacity else { throw .badRecord(section: "objects", slot: slot, reason: "trace_id \(o.trace_id) > capacity \(tracesCapacity)") }
        guard o.comm_id <= commsCapacity else { throw .badRecord(section: "objects", slot: slot, reason: "comm_id \(o.comm_id) > capacity \(commsCapacity)") }
        guard o.flags & KML_KIND_MASK <= KML_KIND_CUSTOM_PERCPU else { throw .badRecord(section: "objects", slot: slot, reason: "kind \(o.flags & KML_KIND_MASK)") }
        guard !o.pointer.addingReportingOverflow(o.size).overflow else { throw .badRecord(section: "objects", slot: slot, reason: "pointer+size overflows") }
        return ObjectRecord(slot: slot, version: state >> KML_STATE_VERSION_SHIFT, pointer: o.pointer, size: o.size,
                            seq: o.seq, timeNs: o.time_ns, traceId: o.trace_id, tid: o.tid, minCount: o.min_count,
                            flags: o.flags, commId: o.comm_id, transientGen: o.transient_gen)
    }

    /// The live records of object slots [slots.lowerBound, slots.upperBound) (clamped to the slots used),
    /// validated as by `readObjects`.
    public func readObjects(slots: Range<UInt32>, _ body: (ObjectRecord) -> Void) throws(TableError) {
        let h = try header()
        let end = min(slots.upperBound, h.objects.used, h.objects.capacity)
        guard slots.lowerBound < end else { return }
        var sec = h.objects
        sec.offset += UInt64(slots.lowerBound) * UInt64(sec.entrySize)
        var stats = ReadStats()
        let tracesCap = h.traces.capacity, commsCap = h.comms.capacity
        try forEachLive("objects", sec, count: end - slots.lowerBound, stats: &stats) { (relative, state, p) throws(TableError) in
            let slot = slots.lowerBound + relative
            body(try Self.validatedObject(slot, state, p, tracesCapacity: tracesCap, commsCapacity: commsCap))
        }
    }

    /// Re-reads one object slot (e.g. to check a candidate leak is still the same object: same seq).
    public func readObject(slot: UInt32) throws(TableError) -> ObjectRecord? {
        let h = try header()
        guard slot < h.objects.capacity else { return nil }
        var result: ObjectRecord? = nil
        var stats = ReadStats()
        var sec = h.objects
        sec.offset += UInt64(slot) * UInt64(sec.entrySize)
        try forEachLive("objects", sec, count: 1, stats: &stats) { (_, state, p) throws(TableError) in
            let o = p.load(as: kml_object.self)
            result = ObjectRecord(slot: slot, version: state >> KML_STATE_VERSION_SHIFT, pointer: o.pointer, size: o.size,
                                  seq: o.seq, timeNs: o.time_ns, traceId: o.trace_id, tid: o.tid, minCount: o.min_count,
                                  flags: o.flags, commId: o.comm_id, transientGen: o.transient_gen)
        }
        return result
    }

    // MARK: threads, regions, areas

    public func readThreads() throws(TableError) -> [ThreadRecord] {
        let h = try header()
        var out: [ThreadRecord] = []
        var stats = ReadStats()
        try forEachLive("threads", h.threads, count: h.threads.used, maxLive: Self.maxThreads, stats: &stats) { (slot, _, p) throws(TableError) in
            var t = p.load(as: kml_thread.self)
            guard t.stack_lo <= t.stack_hi, t.tls_lo <= t.tls_hi else {
                throw .badRecord(section: "threads", slot: slot, reason: "inverted range")
            }
            let comm = withUnsafeBytes(of: &t.comm) { b -> String? in
                guard let n = b.firstIndex(of: 0) else { return nil }
                return String(decoding: b[0..<n], as: UTF8.self)
            }
            guard let c = comm else { throw .badRecord(section: "threads", slot: slot, reason: "comm not NUL-terminated") }
            guard UInt64(t.tcb_offset) <= t.tls_hi - t.tls_lo else {
                throw .badRecord(section: "threads", slot: slot, reason: "TCB outside the TLS range")
            }
            out.append(ThreadRecord(slot: slot, tid: t.tid, stackLo: t.stack_lo, stackHi: t.stack_hi,
                                    tlsLo: t.tls_lo, tlsHi: t.tls_hi, comm: c,
                                    detached: t.flags & KML_THREAD_DETACHED != 0, tcbOffset: UInt64(t.tcb_offset)))
        }
        return out
    }

    public func readRegions() throws(TableError) -> [RegionRecord] {
        let h = try header()
        var out: [RegionRecord] = []
        var stats = ReadStats()
        let maxCpus = h.nrCpuIds
        try forEachLive("regions", h.regions, count: h.regions.used, maxLive: Self.maxRegions, stats: &stats) { (slot, _, p) throws(TableError) in
            let r = p.load(as: kml_region.self)
            guard r.kind == KML_REGION_PERCPU || r.kind == KML_REGION_SHIM_PRIVATE else {
                throw .badRecord(section: "regions", slot: slot, reason: "kind \(r.kind)")
            }
            guard !r.start.addingReportingOverflow(r.size).overflow else {
                throw .badRecord(section: "regions", slot: slot, reason: "start+size overflows")
            }
            if r.kind == KML_REGION_PERCPU {
                guard r.nr_cpus >= 1, r.nr_cpus <= maxCpus else {
                    throw .badRecord(section: "regions", slot: slot, reason: "nr_cpus \(r.nr_cpus) (nr_cpu_ids \(maxCpus))")
                }
                let (span, o1) = r.stride.multipliedReportingOverflow(by: UInt64(r.nr_cpus - 1))
                let (e1, o2) = r.cpu0_base.addingReportingOverflow(span)
                let (_, o3) = e1.addingReportingOverflow(r.size)
                guard !o1 && !o2 && !o3 else { throw .badRecord(section: "regions", slot: slot, reason: "per-CPU layout overflows") }
            }
            out.append(RegionRecord(slot: slot, kind: r.kind, start: r.start, size: r.size, cpu0Base: r.cpu0_base,
                                    stride: r.stride, nrCpus: r.nr_cpus))
        }
        return out
    }

    public func readAreas() throws(TableError) -> [AreaRecord] {
        let h = try header()
        var out: [AreaRecord] = []
        var stats = ReadStats()
        let objCap = h.objects.capacity
        try forEachLive("areas", h.areas, count: h.areas.used, maxLive: Self.maxAreas, stats: &stats) { (slot, _, p) throws(TableError) in
            let a = p.load(as: kml_area.self)
            guard a.object_index < objCap else {
                throw .badRecord(section: "areas", slot: slot, reason: "object_index \(a.object_index) >= capacity \(objCap)")
            }
            out.append(AreaRecord(slot: slot, objectIndex: a.object_index, objectSeq: a.object_seq, start: a.start, size: a.size))
        }
        return out
    }

    // MARK: traces and comms (immutable once published; cached)

    /// The frames of trace `id` (1-based); empty for 0, an unpublished or out-of-range id.
    /// Throws `traceTooLong` for a published length > KML_MAX_TRACE.
    public func frames(_ id: UInt32) throws(TableError) -> [UInt64] {
        guard id > 0, id <= openedHeader.traces.capacity else { return [] }
        if let hit = caches.withLock({ $0.traces[id] }) { return hit }
        // Read len first (a pread of its own), then the frames: a published len happened before
        // our first pread returned, so the second pread sees the frames written before it.
        let s = openedHeader.traces
        let off = s.offset + UInt64(id - 1) * UInt64(s.entrySize)
        var len: UInt32 = 0
        try readExact(&len, offset: off)
        guard len > 0 else { return [] }
        guard len <= KML_MAX_TRACE else { throw .traceTooLong(id: id, length: len) }
        var t = kml_trace()
        try readExact(&t, offset: off)
        guard t.len == len else { throw .badRecord(section: "traces", slot: id - 1, reason: "published length changed") }
        let frames = withUnsafeBytes(of: &t.frames) { b in (0..<Int(len)).map { b.load(fromByteOffset: $0 * 8, as: UInt64.self) } }
        caches.withLock { c in
            if c.traces.count < Self.maxCachedTraces { c.traces[id] = frames }
        }
        return frames
    }

    /// Reads the published traces [1, traces_used] in bulk into the cache; returns how many.
    @discardableResult
    public func loadTraces() throws(TableError) -> Int {
        let h = try header()
        // Bounded by the cache size: ids beyond are read on demand by `frames`.
        let used = min(Int(h.traces.used), Self.maxCachedTraces)
        guard used > 0 else { return 0 }
        let esize = Int(h.traces.entrySize)
        let chunk = 2048
        let lens = UnsafeMutableRawBufferPointer.allocate(byteCount: chunk * esize, alignment: 64)
        let body = UnsafeMutableRawBufferPointer.allocate(byteCount: chunk * esize, alignment: 64)
        defer { lens.deallocate(); body.deallocate() }
        var loaded = 0
        var first = 0
        var fresh: [(Int, [UInt64])] = []
        fresh.reserveCapacity(min(used, 1 << 16))
        while first < used {
            // Unwritten pages are unpublished traces (len 0): skip the holes.
            let at = h.traces.offset + UInt64(first * esize)
            guard let data = storage.nextData(from: at) else { break }
            if data > at {
                let idx = Int((data - h.traces.offset) / UInt64(esize))
                if idx >= used { break }
                if idx > first { first = idx; continue }
            }
            let n = min(chunk, used - first)
            let off = h.traces.offset + UInt64(first * esize)
            for buf in [lens, body] {
                let got: Int
                got = try storage.read(into: UnsafeMutableRawBufferPointer(rebasing: buf[0..<(n * esize)]), offset: off)
                guard got == n * esize else { throw .truncated(fileSize: try storage.size(), totalSize: h.totalSize) }
            }
            for i in 0..<n {
                let l = lens.load(fromByteOffset: i * esize, as: UInt32.self)
                guard l > 0 else { continue }
                guard l <= KML_MAX_TRACE else { throw .traceTooLong(id: UInt32(first + i + 1), length: l) }
                guard body.load(fromByteOffset: i * esize, as: UInt32.self) == l else {
                    throw .badRecord(section: "traces", slot: UInt32(first + i), reason: "published length changed")
                }
                let fo = i * esize + 16
                fresh.append((first + i, (0..<Int(l)).map { body.load(fromByteOffset: fo + $0 * 8, as: UInt64.self) }))
                loaded += 1
            }
            first += n
        }
        caches.withLock { c in
            for (i, f) in fresh where c.traces.count < Self.maxCachedTraces { c.traces[UInt32(i + 1)] = f }
        }
        return loaded
    }

    /// The comm string of `id` (1-based); nil for 0, out of range or not yet written.
    /// Throws `commNotTerminated` when the 16 bytes hold no NUL.
    public func comm(_ id: UInt32) throws(TableError) -> String? {
        guard id > 0, id <= openedHeader.comms.capacity else { return nil }
        if let hit = caches.withLock({ $0.comms[id] }) { return hit }
        var raw: (UInt64, UInt64) = (0, 0)
        let s = openedHeader.comms
        try readExact(&raw, offset: s.offset + UInt64(id - 1) * UInt64(s.entrySize))
        let str = try withUnsafeBytes(of: &raw) { b -> Result<String?, TableError> in
            guard let n = b.firstIndex(of: 0) else { return .failure(.commNotTerminated(id: id)) }
            return .success(n == 0 ? nil : String(decoding: b[0..<n], as: UTF8.self))
        }.get()
        guard let name = str else { return nil } // all zero: not yet written, do not cache
        caches.withLock { c in
            if c.comms.count < Self.maxCachedComms { c.comms[id] = name }
        }
        return name
    }

    private func readExact<T>(_ v: inout T, offset: UInt64) throws(TableError) {
        let s = storage
        let n = try withUnsafeMutableBytes(of: &v) { b in Result { () throws(TableError) -> Int in try s.read(into: b, offset: offset) } }.get()
        guard n == MemoryLayout<T>.size else { throw .truncated(fileSize: try storage.size(), totalSize: openedHeader.totalSize) }
    }
}
