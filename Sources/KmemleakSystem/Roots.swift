// The roots of a live client: writable data of every loaded ELF object, thread stacks, static TLS.
import CKmemleakABI
import Glibc

/// One root range of a client's address space.
public struct RootRange: Sendable, Equatable, CustomStringConvertible {
    public enum Kind: String, Sendable, Equatable {
        /// Writable PT_LOAD data (.data, .bss, RELRO) of an ELF object.
        case data
        /// A thread stack.
        case stack
        /// A static TLS block.
        case tls
    }

    public var start: UInt64
    public var length: UInt64
    public var kind: Kind
    /// The ELF file (data) or "tid N" (stack/tls), for logs.
    public var label: String
    /// The thread of a stack root.
    public var tid: Int32?
    /// Writable data of the C library that implements malloc (`Roots.isAllocatorLibrary`): glibc's
    /// main_arena lives there, whose words point at chunk headers, not at blocks.
    public var isAllocatorData: Bool

    public init(start: UInt64, length: UInt64, kind: Kind, label: String, tid: Int32? = nil,
                isAllocatorData: Bool = false) {
        self.start = start; self.length = length; self.kind = kind; self.label = label; self.tid = tid
        self.isAllocatorData = isAllocatorData
    }

    public var end: UInt64 { start + length }
    public var description: String {
        "\(kind) 0x\(String(start, radix: 16))-0x\(String(end, radix: 16)) \(label)"
    }
}

public enum Roots {
    /// File names whose segments are never roots (the shim itself).
    public static let defaultExcludedModules: Set<String> = ["libkmemleak.so"]

    /// Whether an ELF file name is glibc's C library (libc.so.6; libc-2.x.so before glibc 2.34), whose
    /// writable data holds malloc's main_arena and mp_.
    public static func isAllocatorLibrary(_ name: String) -> Bool {
        name == "libc.so.6" || (name.hasPrefix("libc-") && name.hasSuffix(".so"))
    }

    /// Computes the roots of `pid`.
    ///
    /// - data: for each mapped ELF file instance (its offset-0 mapping and the following mappings of
    ///   the same inode), each writable PT_LOAD `[bias + p_vaddr, + p_memsz)` — which covers the
    ///   file-backed rw pages and the anonymous .bss pages after them — intersected with the readable
    ///   mappings of that file or anonymous ones (so nothing unmapped is claimed). The load bias is the
    ///   offset-0 mapping's start minus the first PT_LOAD's page-aligned vaddr. Files named in
    ///   `excludedModules` are skipped.
    /// - stack: each table thread's [stack_lo, stack_hi); the main thread (zero range) uses [stack].
    /// - tls: each table thread's [tls_lo, tls_hi).
    /// Threads whose tid is not in `liveTasks` (when given) have exited: a joinable one keeps only its
    /// TCB [tls_lo + tcb_offset, tls_hi) as a root (struct pthread holds the value it returned until it
    /// is joined), a detached one nothing (its stack and TLS are glibc's cache now).
    /// Then every KML_REGION_SHIM_PRIVATE region and `excluded` ranges (the table mapping) are cut out.
    public static func compute(pid: Int32, maps: [MapEntry], threads: [ThreadRecord], regions: [RegionRecord],
                               excluded: [(start: UInt64, length: UInt64)] = [], liveTasks: Set<Int32>? = nil,
                               includeStacks: Bool = true,
                               excludedModules: Set<String> = defaultExcludedModules,
                               mounts: MountedFileSystems? = nil,
                               cache: ELFCache) -> [RootRange] {
        var roots: [RootRange] = []
        let maps = maps.sorted { $0.start < $1.start }
        // data
        var i = 0
        while i < maps.count {
            let base = maps[i]
            guard base.isFileBacked, base.offset == 0, base.path.hasPrefix("/") else { i += 1; continue }
            // This instance: base and the following mappings of the same file (anonymous gaps allowed).
            var j = i + 1
            while j < maps.count && (maps[j].isAnonymous || (maps[j].inode == base.inode && maps[j].devMajor == base.devMajor && maps[j].devMinor == base.devMinor && maps[j].offset != 0)) {
                j += 1
            }
            let instance = maps[i..<j]
            let name = String(base.filePath.split(separator: "/").last ?? "")
            i = j
            if excludedModules.contains(name) { continue }
            let allocatorData = isAllocatorLibrary(name)
            if let mounts, !mounts.isSafeToRead(base.device) {
                // A file the daemon never opens (a FUSE server answers when it likes: a program run from
                // sshfs or fuse-overlayfs): its data is known from the maps alone.
                roots += unopenedFileData(instance, label: base.filePath, allocatorData: allocatorData)
                continue
            }
            guard let file = cache.file(for: base, open: { Symbolizer.openELF(pid: pid, mapping: base) }),
                  let first = file.firstLoadVaddr else { continue }
            let bias = base.start &- first
            for ph in file.writableLoads where ph.memsz > 0 {
                let (lo, o1) = bias.addingReportingOverflow(ph.vaddr)
                let (hi, o2) = lo.addingReportingOverflow(ph.memsz)
                guard !o1, !o2 else { continue }
                // One root per contiguous readable run (the file's rw pages and the .bss after them
                // are two mappings but one segment).
                var run: (UInt64, UInt64)? = nil
                for m in instance where m.readable {
                    let s = max(lo, m.start), e = min(hi, m.end)
                    guard s < e else { continue }
                    if let r = run, r.1 == s { run = (r.0, e); continue }
                    if let r = run { roots.append(RootRange(start: r.0, length: r.1 - r.0, kind: .data, label: base.filePath, isAllocatorData: allocatorData)) }
                    run = (s, e)
                }
                if let r = run { roots.append(RootRange(start: r.0, length: r.1 - r.0, kind: .data, label: base.filePath, isAllocatorData: allocatorData)) }
            }
        }
        // stacks and TLS; threads that have exited: only the TCB of a joinable one
        let exited = threads.filter { thread in liveTasks.map { !$0.contains(thread.tid) } ?? false }
        let threads = threads.filter { liveTasks?.contains($0.tid) ?? true }
        for t in exited where !t.detached && t.tlsHi > t.tlsLo {
            let tcb = t.tlsLo + t.tcbOffset
            guard tcb < t.tlsHi else { continue }
            roots.append(RootRange(start: tcb, length: t.tlsHi - tcb, kind: .tls, label: "tid \(t.tid) (exited, not joined)"))
        }
        if includeStacks {
            for t in threads where t.stackHi > t.stackLo {
                roots.append(RootRange(start: t.stackLo, length: t.stackHi - t.stackLo, kind: .stack, label: "tid \(t.tid)", tid: t.tid))
            }
            // The main thread (recorded with a zero range): the [stack] mapping.
            if let s = maps.first(where: { $0.path == "[stack]" }),
               !roots.contains(where: { $0.kind == .stack && $0.start < s.end && s.start < $0.end }) {
                roots.append(RootRange(start: s.start, length: s.length, kind: .stack, label: "tid \(pid)", tid: pid))
            }
        }
        for t in threads where t.tlsHi > t.tlsLo {
            roots.append(RootRange(start: t.tlsLo, length: t.tlsHi - t.tlsLo, kind: .tls, label: "tid \(t.tid)"))
        }
        // exclusions
        var cuts = excluded.map { (start: $0.start, end: $0.start &+ $0.length) }
        cuts += regions.filter { $0.isShimPrivate }.map { (start: $0.start, end: $0.start &+ $0.size) }
        if !cuts.isEmpty { roots = subtract(roots, cuts) }
        return roots.sorted { $0.start != $1.start ? $0.start < $1.start : $0.length < $1.length }
    }

    /// Stack and TLS roots are the client's claim: each is cut to the readable anonymous private
    /// mappings it lies in (where thread stacks and TLS live). `refused` lists the claimed parts that lay
    /// in other mappings (a file, shared memory): never read, worth a log line. Unmapped parts just go.
    public static func confineThreadRoots(_ roots: [RootRange], maps: [MapEntry]) -> (roots: [RootRange], refused: [RootRange]) {
        let sorted = maps.sorted { $0.start < $1.start }
        var kept: [RootRange] = []
        var refused: [RootRange] = []
        for root in roots {
            guard root.kind == .stack || root.kind == .tls else { kept.append(root); continue }
            for m in sorted where m.start < root.end && root.start < m.end {
                var part = root
                part.start = max(root.start, m.start)
                part.length = min(root.end, m.end) - part.start
                let anonymousPrivate = m.inode == 0 && !m.shared && !m.path.hasPrefix("[v")
                if anonymousPrivate && m.readable {
                    kept.append(part)
                } else if !anonymousPrivate {
                    part.label += " in \(m.path.isEmpty ? "a shared mapping" : m.path)"
                    refused.append(part)
                }
            }
        }
        return (kept, refused)
    }

    /// The data of a mapped file whose program headers are not read: each private writable mapping of
    /// the file (.data and the rest of its writable PT_LOAD), and the anonymous writable mapping right
    /// after the last of them (.bss beyond the file's pages). Conservative: a writable private mapping
    /// of the file that is no PT_LOAD counts too. Only written pages of the file mappings are read
    /// (`ScannableMemory`), so the file's server is never asked.
    static func unopenedFileData(_ instance: ArraySlice<MapEntry>, label: String, allocatorData: Bool) -> [RootRange] {
        var roots: [RootRange] = []
        var previousWasData = false
        for m in instance {
            let isData = m.isFileBacked && m.readable && m.writable && !m.shared
            let isBSS = previousWasData && m.isAnonymous && m.readable && m.writable && !m.shared
                && roots.last.map { $0.end == m.start } == true
            if isData || isBSS {
                if let last = roots.last, last.end == m.start {
                    roots[roots.count - 1].length += m.length
                } else {
                    roots.append(RootRange(start: m.start, length: m.length, kind: .data, label: label,
                                           isAllocatorData: allocatorData))
                }
            }
            previousWasData = isData
        }
        return roots
    }

    /// x86-64 leaf functions may keep data in the 128 bytes below the stack pointer (the red zone).
    public static let redZone: UInt64 = 128

    /// Stack roots cut to [stack pointer - red zone, top) for the threads whose stack pointer is known;
    /// the rest of a stack holds only dead frames, whose stale pointers would hide leaks (LeakSanitizer
    /// scans from the stack pointer too; the kernel scans whole task stacks).
    public static func trimStacks(_ roots: [RootRange], stackPointers: [Int32: UInt64]) -> [RootRange] {
        roots.map { root in
            guard root.kind == .stack, let tid = root.tid, let sp = stackPointers[tid],
                  sp >= root.start, sp < root.end else { return root }
            let start = max(root.start, sp &- redZone)
            var trimmed = root
            trimmed.start = start
            trimmed.length = root.end - start
            return trimmed
        }
    }

    /// Removes the parts of `roots` that fall in any cut [start, end).
    static func subtract(_ roots: [RootRange], _ cuts: [(start: UInt64, end: UInt64)]) -> [RootRange] {
        var out: [RootRange] = []
        for r in roots {
            var pieces = [(r.start, r.end)]
            for c in cuts where c.start < c.end {
                var next: [(UInt64, UInt64)] = []
                for (s, e) in pieces {
                    if c.end <= s || c.start >= e { next.append((s, e)); continue }
                    if s < c.start { next.append((s, c.start)) }
                    if c.end < e { next.append((c.end, e)) }
                }
                pieces = next
            }
            for (s, e) in pieces where s < e {
                out.append(RootRange(start: s, length: e - s, kind: r.kind, label: r.label, tid: r.tid,
                                     isAllocatorData: r.isAllocatorData))
            }
        }
        return out
    }
}

/// The parts of a client's address space that may hold its pointers, and so may be read: its
/// readable anonymous mappings (private ones, `[heap]`, `[stack]`, and shared anonymous memory,
/// which the kernel backs itself), and the data segments of its ELF objects, of which only the
/// written (copied) pages of the private file mapping count. Nothing else file-backed is read: a
/// file's pages can be served by anyone (a FUSE server may never answer) and hold no heap pointer.
public struct ScannableMemory: Sendable, Equatable {
    public struct Interval: Sendable, Equatable {
        public var start: UInt64
        public var end: UInt64
        /// A private file mapping's pages: read only those written (anonymous copies; see pagemap).
        public var copiedOnly: Bool
    }

    /// Sorted, disjoint.
    public private(set) var intervals: [Interval]

    public init(maps: [MapEntry], dataRoots: [RootRange]) {
        var all: [Interval] = []
        for m in maps where m.readable && Self.isAnonymousMemory(m) {
            all.append(Interval(start: m.start, end: m.end, copiedOnly: false))
        }
        let files = maps.filter { $0.readable && !$0.shared && $0.isFileBacked && !Self.isAnonymousMemory($0) }
        for root in dataRoots where root.kind == .data {
            for m in files {
                let s = max(root.start, m.start), e = min(root.end, m.end)
                if s < e { all.append(Interval(start: s, end: e, copiedOnly: true)) }
            }
        }
        all.sort { $0.start < $1.start }
        var merged: [Interval] = []
        for iv in all {
            if let last = merged.last, iv.start < last.end {
                // Overlap (mappings never overlap; data roots might): the stricter rule wins for it.
                if iv.end > last.end { merged.append(Interval(start: last.end, end: iv.end, copiedOnly: iv.copiedOnly)) }
                continue
            }
            if let last = merged.last, last.end == iv.start, last.copiedOnly == iv.copiedOnly {
                merged[merged.count - 1].end = iv.end
            } else {
                merged.append(iv)
            }
        }
        intervals = merged
    }

    /// Memory the kernel backs itself: anonymous (including `[heap]`, `[stack]`, `[anon:...]`, but not
    /// the `[vdso]`/`[vvar]` pseudo mappings) or shared anonymous (`/dev/zero`, SysV shm).
    public static func isAnonymousMemory(_ m: MapEntry) -> Bool {
        if m.inode == 0 { return !m.path.hasPrefix("[v") }
        return m.path == "/dev/zero (deleted)" || m.path.hasPrefix("/SYSV")
    }

    /// Index of the first interval whose end lies above `address`.
    public func firstInterval(endingAfter address: UInt64) -> Int {
        var lo = 0, hi = intervals.count
        while lo < hi {
            let mid = (lo + hi) / 2
            if intervals[mid].end <= address { lo = mid + 1 } else { hi = mid }
        }
        return lo
    }

    /// `firstInterval(endingAfter:)`, trying `hint` first (the answer for a nearby address: the ranges
    /// of a scan come in address order, so the binary search is rarely needed).
    @inline(__always)
    public func firstInterval(endingAfter address: UInt64, hint: Int) -> Int {
        if hint >= 0, hint < intervals.count, intervals[hint].end > address,
           hint == 0 || intervals[hint - 1].end <= address {
            return hint
        }
        return firstInterval(endingAfter: address)
    }

    /// Whether [start, end) lies inside anonymous scannable memory (one run of intervals).
    public func isPlain(_ start: UInt64, _ end: UInt64) -> Bool {
        var hint = -1
        return isPlain(start, end, hint: &hint)
    }

    /// `isPlain`, with `hint` as in `firstInterval(endingAfter:hint:)`, updated to start's interval.
    public func isPlain(_ start: UInt64, _ end: UInt64, hint: inout Int) -> Bool {
        var k = firstInterval(endingAfter: start, hint: hint)
        hint = k
        var covered = start
        while k < intervals.count, intervals[k].start <= covered, !intervals[k].copiedOnly {
            covered = intervals[k].end
            if covered >= end { return true }
            k += 1
        }
        return false
    }
}

extension ClientTable {
    /// The roots of this client now: reads /proc/PID/maps, the table's threads and regions, and cuts
    /// out the table mapping itself (when opened from a rendezvous).
    public func roots(includeStacks: Bool = true, cache: ELFCache,
                      excludedModules: Set<String> = Roots.defaultExcludedModules) throws(TableError) -> [RootRange] {
        let maps: [MapEntry]
        do { maps = try Proc.maps(pid) } catch { throw .system(error) }
        return try roots(maps: maps, includeStacks: includeStacks, cache: cache, excludedModules: excludedModules).roots
    }

    /// The roots of this client for `maps` (its /proc/PID/maps), stack and TLS claims confined to
    /// anonymous private memory (`refused`: the claimed parts that lay elsewhere).
    public func roots(maps: [MapEntry], includeStacks: Bool = true, cache: ELFCache,
                      excludedModules: Set<String> = Roots.defaultExcludedModules) throws(TableError)
        -> (roots: [RootRange], refused: [RootRange]) {
        let threads = try readThreads()
        // Listed after the records were read: a record's thread existed when it registered, so a tid
        // missing here has exited.
        let liveTasks: Set<Int32>
        do { liveTasks = Set(try Proc.tasks(pid)) } catch { throw .system(error) }
        let regions = try readRegions()
        var excluded: [(start: UInt64, length: UInt64)] = []
        if let r = rendezvous { excluded.append((r.address, r.size)) }
        // Any other mapping of the table memfd too (found by its name), and a named private table.
        for m in maps where m.path.hasPrefix("/memfd:" + KML_MEMFD_NAME) || m.path.hasPrefix("[anon:" + KML_MEMFD_NAME) {
            excluded.append((m.start, m.length))
        }
        let all = Roots.compute(pid: pid, maps: maps, threads: threads, regions: regions, excluded: excluded,
                                liveTasks: liveTasks, includeStacks: includeStacks, excludedModules: excludedModules,
                                mounts: try? Proc.mountedFileSystems(pid), cache: cache)
        return Roots.confineThreadRoots(all, maps: maps)
    }
}
