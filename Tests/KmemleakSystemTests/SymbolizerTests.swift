import Glibc
import KmemleakEngine
@testable import KmemleakSystem
import Synchronization
import Testing

/// Our own libc mapping (offset 0) and path.
func ownLibc() throws -> MapEntry {
    guard let m = try Proc.maps(getpid()).first(where: { $0.filePath.hasSuffix("/libc.so.6") && $0.offset == 0 }) else {
        throw TestError("no libc in our maps")
    }
    return m
}

/// The separate debug file installed under /usr/lib/debug for `path`'s build id, if any.
func installedDebugFile(for path: String) -> String? {
    guard let hex = (try? ELFFile(path: path))?.buildIDHex, hex.count > 2 else { return nil }
    let p = DebugFileDirectory.defaultPath + "/.build-id/" + hex.prefix(2) + "/" + hex.dropFirst(2) + ".debug"
    return fileExists(p) ? p : nil
}

func dlsymAddress(_ name: String) throws -> UInt64 {
    guard let p = dlsym(UnsafeMutableRawPointer(bitPattern: 0), name) else { throw TestError("dlsym \(name)") }
    return UInt64(UInt(bitPattern: p))
}

@Suite struct ELFTests {
    @Test func binTrue() throws {
        let f = try ELFFile(path: "/bin/true")
        #expect(f.type == ELFFile.ET_DYN || f.type == ELFFile.ET_EXEC)
        #expect(f.programHeaders.contains { $0.isLoad })
        #expect(!f.writableLoads.isEmpty)
        #expect(f.firstLoadVaddr == 0 || f.type == ELFFile.ET_EXEC)
    }

    @Test func libcSymbols() throws {
        let m = try ownLibc()
        let f = try ELFFile(path: m.filePath)
        let module = try #require(f.debugModule(name: m.filePath, directory: .standard))
        #expect(module.hasSymbols)
        let bias = m.start - f.firstLoadVaddr!
        for name in ["malloc", "free", "getpid", "pthread_create", "fopen"] {
            let a = try dlsymAddress(name)
            let s = module.lookup(a - bias).symbol
            #expect(s?.start == a - bias && (s?.size ?? 0) > 0, "\(name): \(String(describing: s))")
            #expect(s?.name.contains("@") == false)
            #expect(s?.name.contains(name) == true, "\(name): \(String(describing: s))")
        }
    }

    @Test func buildIDAndSeparateDebugFile() throws {
        let m = try ownLibc()
        let f = try ELFFile(path: m.filePath)
        let id = try #require(f.buildID)
        #expect(id.count == 20)
        #expect(f.buildIDHex?.count == 40)
        if installedDebugFile(for: m.filePath) != nil {
            // libc6-dbg: its DWARF gives libc's source lines.
            let module = try #require(f.debugModule(name: m.filePath, directory: .standard))
            #expect(module.hasDWARF)
            let a = try dlsymAddress("getpid") - (m.start - f.firstLoadVaddr!)
            #expect(module.lookup(a).frames.last?.line != nil)
        }
    }

    @Test func notELFAndMalformed() throws {
        let dir = try TempDir()
        try writeFile(dir.path + "/text", "hello, this is not an ELF file at all........................................................")
        #expect(throws: ELFError.notELF) { try ELFFile(path: dir.path + "/text") }
        #expect(throws: ELFError.notELF) { try ELFFile(path: "/proc/self/maps") }
        // A valid ELF header whose program headers point past the end of the file.
        var hdr = [UInt8](repeating: 0, count: 64)
        hdr[0] = 0x7f; hdr[1] = 0x45; hdr[2] = 0x4c; hdr[3] = 0x46; hdr[4] = 2; hdr[5] = 1; hdr[16] = 3
        hdr[32] = 0xff; hdr[33] = 0xff; hdr[34] = 0xff // e_phoff huge
        hdr[54] = 56; hdr[56] = 4 // phentsize, phnum
        let fd = open(dir.path + "/bad", O_WRONLY | O_CREAT, 0o644)
        _ = hdr.withUnsafeBytes { write(fd, $0.baseAddress, 64) }
        close(fd)
        #expect(throws: ELFError.self) { try ELFFile(path: dir.path + "/bad") }
        #expect(throws: ELFError.self) { try ELFFile(path: dir.path + "/missing") }
    }
}

@Suite struct SymbolizerTests {
    @Test func libcFunctionInAChild() throws {
        // Offsets of libc functions computed in our process, applied to a child's libc base.
        let (c, pid) = try Helper.start()
        defer { c.terminate() }
        let sym = try Symbolizer(pid: pid)
        let own = try ownLibc()
        let ownFile = try ELFFile(path: own.filePath)
        let ownModule = try #require(ownFile.debugModule(name: own.filePath, directory: .standard))
        for name in ["malloc", "free", "getpid"] {
            let childAddr = try addrs(try c.request("sym \(name)", expect: "addr"))[0]
            let ours = try dlsymAddress(name)
            let symbol = try #require(ownModule.lookup(ours - (own.start - ownFile.firstLoadVaddr!)).symbol)
            let (size, name) = (symbol.size, symbol.name)
            let expected = "\(name)+0x0/0x\(String(size, radix: 16)) [libc.so.6]"
            #expect(sym.symbolize(exact: childAddr) == expected)
            // As a return address: pc inside the function.
            #expect(sym.symbolize(childAddr + 5) == "\(name)+0x5/0x\(String(size, radix: 16)) [libc.so.6]")
            // A return address at a function's start belongs to the caller before it (pc - 1).
            #expect(!(sym.symbolize(childAddr)?.hasPrefix("\(name)+") ?? false))
        }
    }

    @Test func binSleepChild() throws {
        let c = try ChildProcess("/bin/sleep", ["30"])
        defer { c.terminate() }
        // Wait until the child has exec'd and mapped libc (condition, not a sleep).
        var base: MapEntry? = nil
        let deadline = ChildProcess.now() + 10
        while base == nil && ChildProcess.now() < deadline {
            base = (try? Proc.maps(c.pid))?.first { $0.filePath.hasSuffix("/libc.so.6") && $0.offset == 0 }
            if base == nil { sched_yield() }
        }
        let b = try #require(base)
        let own = try ownLibc()
        let off = try dlsymAddress("malloc") - own.start
        let sym = try Symbolizer(pid: c.pid)
        #expect(sym.symbolize(exact: b.start + off)?.hasPrefix("malloc+0x0/0x") == true)
        #expect(sym.symbolize(exact: b.start + off)?.hasSuffix(" [libc.so.6]") == true)
        #expect(sym.symbolize(exact: 0x10) == nil)
    }

    @Test func mainExecutableHasNoModule() throws {
        let (c, pid) = try Helper.start()
        defer { c.terminate() }
        let a = try addrs(try c.request("marker", expect: "addr"))[0]
        let sym = try Symbolizer(pid: pid)
        let s = try #require(sym.symbolize(exact: a))
        #expect(s.hasPrefix("helper_marker+0x0/0x"))
        #expect(!s.contains("["))
        #expect(sym.symbolize(a + 3)?.hasPrefix("helper_marker+0x3/0x") == true)
    }

    /// The daemon lets go of the debug modules before each scan: the cache's bytes fall back to the
    /// headers, the headers stay (the same files, no reopen), and a later symbolization loads the module
    /// again and gives the same text.
    @Test func releasedDebugModulesLoadAgain() throws {
        let (c, pid) = try Helper.start()
        defer { c.terminate() }
        let cache = ELFCache()
        let pc = try addrs(try c.request("sym malloc", expect: "addr"))[0] &+ 4
        let headersOnly = try Symbolizer(pid: pid, cache: cache)
        _ = headersOnly.mapping(containing: pc)
        let first = try #require(try Symbolizer(pid: pid, cache: cache).symbolize(pc))
        #expect(first.hasPrefix("malloc+0x4/"), "\(first)")
        let loaded = cache.bytes, files = cache.count
        cache.releaseDebugModules()
        let released = cache.bytes
        #expect(released < loaded - 4096, "\(released) of \(loaded) bytes")
        #expect(cache.count == files)
        // A new symbolizer: its memo is empty, so the module must load again.
        #expect(try Symbolizer(pid: pid, cache: cache).symbolize(pc) == first)
        #expect(cache.bytes > released)
        #expect(cache.count == files)
    }

    @Test func warmCacheSpeed() throws {
        let (c, pid) = try Helper.start()
        defer { c.terminate() }
        let cache = ELFCache()
        let sym = try Symbolizer(pid: pid, cache: cache)
        let base = try addrs(try c.request("sym malloc", expect: "addr"))[0]
        // 10k reports x 16 frames: 160k return addresses, 4k distinct, in libc's text.
        let pcs = (0..<160_000).map { base &+ UInt64(($0 * 7919) % 4096) * 37 }
        _ = sym.symbolize(pcs[0]) // load the index
        let t0 = ChildProcess.now()
        var resolved = 0
        for pc in pcs where sym.symbolize(pc) != nil { resolved += 1 }
        let dt = ChildProcess.now() - t0
        // Distinct PCs only (no memo): a second symbolizer sharing the warm file cache.
        let sym2 = try Symbolizer(pid: pid, cache: cache)
        let distinct = Array(Set(pcs))
        let t1 = ChildProcess.now()
        for pc in distinct { _ = sym2.symbolize(pc) }
        let dt2 = ChildProcess.now() - t1
        // Frames with source lines and inline chains (libc's DWARF when libc6-dbg is installed).
        let sym3 = try Symbolizer(pid: pid, cache: cache)
        let t2 = ChildProcess.now()
        for pc in distinct { _ = sym3.describe(pc) }
        let dt3 = ChildProcess.now() - t2
        print("symbolize: 160k frames in \(dt) s (\(dt / 160_000 * 1e6) us/frame); \(distinct.count) distinct cold-memo in \(dt2) s (\(dt2 / Double(distinct.count) * 1e6) us/frame); describe cold-memo \(dt3 / Double(distinct.count) * 1e6) us/frame")
        #expect(resolved > 10_000)
    }
}

@Suite struct RootsTests {
    /// A program whose file lives on a FUSE mount is never opened (its server may never answer): its
    /// .data and .bss are still roots, taken from the maps alone (its writable private mappings and the
    /// anonymous mapping right after them).
    @Test func dataAndBssOfAProgramOnAFuseMountFromTheMapsAlone() throws {
        let (c, pid) = try Helper.start()
        defer { c.terminate() }
        let v = try addrs(try c.request("data", expect: "addr"))
        let (data, bss) = (v[0], v[1])
        let maps = try Proc.maps(pid)
        let program = try #require(maps.first { $0.path.hasSuffix("/helper") })
        let fuse = MountedFileSystems(kernelServed: [], userSpaceServed: [program.device])
        #expect(!fuse.isSafeToRead(program.device))
        let roots = Roots.compute(pid: pid, maps: maps, threads: [], regions: [], mounts: fuse, cache: ELFCache())
        func covered(_ a: UInt64, _ n: UInt64) -> Bool {
            roots.contains { $0.kind == .data && $0.start <= a && a + n <= $0.end && $0.label.hasSuffix("/helper") }
        }
        #expect(covered(data, 8192))
        #expect(covered(bss, 65536))
        // Nothing of the program that is not writable private memory: no text, no read-only data.
        for r in roots where r.label.hasSuffix("/helper") {
            for m in maps where m.start < r.end && r.start < m.end {
                #expect(m.writable && !m.shared, "\(r) overlaps \(m)")
            }
        }
        // Other files are still read from their program headers.
        #expect(roots.contains { $0.kind == .data && $0.label.hasSuffix("/libc.so.6") })
    }

    /// .data and a 64 KiB .bss (beyond the file's end: the anonymous mapping after the file's rw
    /// pages) of a child are covered by data roots computed from its ELF program headers.
    @Test func dataAndBssOfAChild() throws {
        let (c, pid) = try Helper.start()
        defer { c.terminate() }
        let v = try addrs(try c.request("data", expect: "addr"))
        let (data, bss) = (v[0], v[1])
        let maps = try Proc.maps(pid)
        let roots = Roots.compute(pid: pid, maps: maps, threads: [], regions: [], cache: ELFCache())
        func covered(_ a: UInt64, _ n: UInt64) -> Bool {
            roots.contains { $0.kind == .data && $0.start <= a && a + n <= $0.end && $0.label.hasSuffix("/helper") }
        }
        #expect(covered(data, 8192))
        #expect(covered(bss, 65536))
        // The bss tail lies in an anonymous mapping.
        #expect(maps.first { $0.start <= bss + 65535 && bss + 65535 < $0.end }?.isAnonymous == true)
        // libc's writable segments too, the [stack] for the main thread, and nothing unreadable.
        #expect(roots.contains { $0.kind == .data && $0.label.hasSuffix("/libc.so.6") })
        #expect(roots.contains { $0.kind == .stack })
        for r in roots {
            let m = maps.first { $0.start <= r.start && r.start < $0.end }
            #expect(m?.readable == true, "\(r)")
        }
        // The bss pattern reads back as written.
        #expect(ProcessMemory(pid: pid).read(bss, length: 65536).allSatisfy { $0 == 0x5a })
        // Excluding the program and cutting a range out.
        let cut = Roots.compute(pid: pid, maps: maps, threads: [], regions: [], excluded: [(bss, 4096)],
                                excludedModules: ["helper"], cache: ELFCache())
        #expect(!cut.contains { $0.label.hasSuffix("/helper") })
        let cut2 = Roots.compute(pid: pid, maps: maps, threads: [], regions: [], excluded: [(bss, 4096)], cache: ELFCache())
        #expect(!cut2.contains { $0.start < bss + 4096 && bss < $0.end })
        #expect(cut2.contains { $0.start == bss + 4096 })
    }

    @Test func threadStacksAndTLSFromTheTable() {
        let maps = [MapEntry(start: 0x7ff0_0000_0000, end: 0x7ff0_0002_0000, readable: true, writable: true, executable: false,
                             shared: false, offset: 0, devMajor: 0, devMinor: 0, inode: 0, path: "[stack]")]
        let threads = [
            ThreadRecord(slot: 0, tid: 10, stackLo: 0, stackHi: 0, tlsLo: 0x1000, tlsHi: 0x1100, comm: "main"),
            ThreadRecord(slot: 1, tid: 11, stackLo: 0x10000, stackHi: 0x20000, tlsLo: 0x30000, tlsHi: 0x30100, comm: "w"),
        ]
        let regions = [RegionRecord(slot: 0, kind: 2, start: 0x18000, size: 0x1000, cpu0Base: 0, stride: 0, nrCpus: 0)]
        let roots = Roots.compute(pid: 10, maps: maps, threads: threads, regions: regions, cache: ELFCache())
        #expect(roots.filter { $0.kind == .stack }.map { [$0.start, $0.end] } ==
                [[0x10000, 0x18000], [0x19000, 0x20000], [0x7ff0_0000_0000, 0x7ff0_0002_0000]])
        #expect(roots.filter { $0.kind == .tls }.map { [$0.start, $0.end] } == [[0x1000, 0x1100], [0x30000, 0x30100]])
        #expect(Roots.compute(pid: 10, maps: maps, threads: threads, regions: [], includeStacks: false, cache: ELFCache())
                    .allSatisfy { $0.kind == .tls })
    }

    /// Records of threads whose task has exited: a joinable one keeps only its TCB (the value it returned
    /// lives there until pthread_join), a detached one nothing.
    @Test func exitedThreadsKeepOnlyTheTCBOfJoinableOnes() {
        let threads = [
            ThreadRecord(slot: 0, tid: 10, stackLo: 0, stackHi: 0, tlsLo: 0x1000, tlsHi: 0x1100, comm: "main"),
            ThreadRecord(slot: 1, tid: 11, stackLo: 0x10000, stackHi: 0x20000, tlsLo: 0x30000, tlsHi: 0x31000, comm: "live",
                         tcbOffset: 0x800),
            ThreadRecord(slot: 2, tid: 12, stackLo: 0x40000, stackHi: 0x50000, tlsLo: 0x60000, tlsHi: 0x61000, comm: "joinable",
                         tcbOffset: 0x900),
            ThreadRecord(slot: 3, tid: 13, stackLo: 0x70000, stackHi: 0x80000, tlsLo: 0x90000, tlsHi: 0x91000, comm: "detached",
                         detached: true, tcbOffset: 0x900),
        ]
        let roots = Roots.compute(pid: 10, maps: [], threads: threads, regions: [], liveTasks: [10, 11], cache: ELFCache())
        #expect(roots.filter { $0.kind == .stack }.map { [$0.start, $0.end] } == [[0x10000, 0x20000]])
        #expect(roots.filter { $0.kind == .tls }.map { [$0.start, $0.end] } ==
                [[0x1000, 0x1100], [0x30000, 0x31000], [0x60900, 0x61000]])
        // Without a task list every record is a live thread.
        let all = Roots.compute(pid: 10, maps: [], threads: threads, regions: [], cache: ELFCache())
        #expect(all.filter { $0.kind == .stack }.count == 3 && all.filter { $0.kind == .tls }.count == 4)
    }
}

/// Tests/clients/symbol-sites.c, built by `make clients` with -g, and its stripped copies.
enum SymbolSites {
    static func path(_ name: String) -> String { Shim.root + "/.build/clients/" + name }
    static let source = Shim.root + "/Tests/clients/symbol-sites.c"

    /// The line of `marker` (e.g. "SITE_DIRECT") in the fixture's source.
    static func line(_ marker: String) throws -> Int {
        let text = String(decoding: try ProcFile.read(source), as: UTF8.self)
        let lines = text.split(separator: "\n", omittingEmptySubsequences: false)
        guard let i = lines.firstIndex(where: { $0.contains("/* \(marker) */") }) else { throw TestError("no \(marker)") }
        return i + 1
    }

    /// Runs `binary sites`: the return addresses of its direct call and of its call through an inlined
    /// function.
    static func start(_ binary: String) throws -> (child: ChildProcess, direct: UInt64, inlined: UInt64) {
        guard access(binary, X_OK) == 0 else { throw TestError("run `make clients` (\(binary))") }
        let c = try ChildProcess(binary, ["sites"])
        func address(_ line: String) throws -> UInt64 {
            guard let hex = line.split(separator: " ").last, hex.hasPrefix("0x"), let v = UInt64(hex.dropFirst(2), radix: 16)
            else { throw TestError("bad line \(line)") }
            return v
        }
        let direct = try address(try c.waitFor("DIRECT"))
        let inlined = try address(try c.waitFor("INLINED"))
        _ = try c.waitFor("READY")
        return (c, direct, inlined)
    }

    /// `addr2line -f -e FILE 0xOFFSET`'s function name.
    static func addr2lineFunction(_ file: String, _ offset: UInt64) throws -> String {
        let r = try run("/usr/bin/addr2line", ["-f", "-e", file, "0x" + String(offset, radix: 16)])
        return String(r.output.split(separator: "\n").first ?? "")
    }

    /// Runs `binary sites` and symbolizes it with `directory` as the debug-file directory (by default
    /// one of its own, empty: nothing of the host's /usr/lib/debug).
    static func symbolize(_ binary: String, debugFiles directory: DebugFileDirectory? = nil) throws
        -> (child: ChildProcess, symbolizer: Symbolizer, direct: UInt64, inlined: UInt64) {
        let directory = try directory ?? debugDirectory(TempDir())
        let (c, direct, inlined) = try start(binary)
        do {
            return (c, try Symbolizer(pid: c.pid, cache: ELFCache(debugFiles: directory)), direct, inlined)
        } catch {
            c.terminate()
            throw error
        }
    }

    /// A debug-file directory of its own (empty unless a test puts files in it).
    static func debugDirectory(_ dir: TempDir) throws -> DebugFileDirectory {
        let path = dir.path + "/debug"
        guard mkdir(path, 0o755) == 0 else { throw TestError("mkdir \(path): \(errno)") }
        return DebugFileDirectory(path)
    }

    static func copy(_ from: String, to: String) throws {
        let slash = to.lastIndex(of: "/")!
        _ = try run("/bin/mkdir", ["-p", String(to[..<slash])])
        let r = try run("/bin/cp", [from, to])
        guard r.status == 0 else { throw TestError("cp \(from) \(to): \(r.output)") }
    }
}

@Suite struct DWARFSymbolizerTests {
    @Test func sourceLineOfAKnownCall() throws {
        let binary = SymbolSites.path("symbol-sites")
        let (c, sym, direct, _) = try SymbolSites.symbolize(binary)
        defer { c.terminate() }
        let frames = sym.describe(direct)
        try #require(frames.count == 1, "\(frames)")
        let f = frames[0]
        #expect(f.address == direct)
        #expect(f.symbol == "direct_site")
        #expect(f.file?.hasSuffix("/Tests/clients/symbol-sites.c") == true, "\(f)")
        #expect(f.line == (try SymbolSites.line("SITE_DIRECT")))
        #expect(!f.inlined)
        #expect(f.module == binary)
        let expectedID = try ELFFile(path: binary).buildIDHex
        #expect(f.buildID != nil && f.buildID == expectedID)
        let offset = try #require(f.moduleOffset)
        #expect(try SymbolSites.addr2lineFunction(binary, offset) == "direct_site")
        let symbolOffset = try #require(f.symbolOffset)
        let size = try #require(f.symbolSize)
        #expect(symbolOffset > 0 && symbolOffset < size)
        // The kernel's text: no file:line, no [module] for the main executable.
        #expect(sym.symbolize(direct) == "direct_site+0x\(String(symbolOffset, radix: 16))/0x\(String(size, radix: 16))")
    }

    @Test func alwaysInlineFunctionGivesItsFrameAndTheCallSite() throws {
        let binary = SymbolSites.path("symbol-sites")
        let (c, sym, _, inlined) = try SymbolSites.symbolize(binary)
        defer { c.terminate() }
        let frames = sym.describe(inlined)
        try #require(frames.count == 2, "\(frames)")
        #expect(frames[0].symbol == "inlined_site" && frames[0].inlined)
        #expect(frames[0].line == (try SymbolSites.line("SITE_INLINED")))
        #expect(frames[0].file?.hasSuffix("/Tests/clients/symbol-sites.c") == true)
        #expect(frames[1].symbol == "inline_caller" && !frames[1].inlined)
        #expect(frames[1].line == (try SymbolSites.line("SITE_CALLER")))
        #expect(frames[1].file?.hasSuffix("/Tests/clients/symbol-sites.c") == true)
        #expect(frames.allSatisfy { $0.address == inlined && $0.module == binary && $0.moduleOffset == frames[1].moduleOffset })
        #expect(frames[1].symbolOffset != nil && frames[0].symbolOffset == nil)
        // The kernel's text names the real function only.
        #expect(sym.symbolize(inlined)?.hasPrefix("inline_caller+0x") == true)
    }

    @Test func strippedProgramGivesModuleAndOffsetThatAddr2lineResolves() throws {
        let binary = SymbolSites.path("symbol-sites.stripped")
        let (c, sym, direct, _) = try SymbolSites.symbolize(binary)
        defer { c.terminate() }
        let frames = sym.describe(direct)
        try #require(frames.count == 1, "\(frames)")
        let f = frames[0]
        #expect(f.symbol == nil && f.file == nil && f.line == nil)
        #expect(f.module == binary)
        let offset = try #require(f.moduleOffset)
        #expect(sym.symbolize(direct) == "(\(binary)+0x\(String(offset, radix: 16)))")
        // The same offset in the unstripped build names the function.
        #expect(try SymbolSites.addr2lineFunction(SymbolSites.path("symbol-sites"), offset) == "direct_site")
        // Outside every mapping: nothing (the report prints 0x...).
        #expect(sym.symbolize(0x10) == nil)
        #expect(sym.describe(0x10) == [SymbolizedFrame(address: 0x10)])
    }

    @Test func separateDebugFileByBuildIDRestoresSymbolsAndLines() throws {
        let binary = SymbolSites.path("symbol-sites.stripped")
        let temp = try TempDir()
        let directory = try SymbolSites.debugDirectory(temp)
        let hex = try #require(try ELFFile(path: binary).buildIDHex)
        try SymbolSites.copy(SymbolSites.path("symbol-sites.debug"),
                             to: directory.path + "/.build-id/" + hex.prefix(2) + "/" + hex.dropFirst(2) + ".debug")
        let (c, sym, direct, inlined) = try SymbolSites.symbolize(binary, debugFiles: directory)
        defer { c.terminate() }
        let frames = sym.describe(direct)
        #expect(frames.count == 1 && frames[0].symbol == "direct_site", "\(frames)")
        #expect(frames.first?.line == (try SymbolSites.line("SITE_DIRECT")))
        #expect(sym.describe(inlined).map(\.symbol) == ["inlined_site", "inline_caller"])
        #expect(sym.symbolize(direct)?.hasPrefix("direct_site+0x") == true)
    }

    @Test func separateDebugFileByDebuglinkUnderTheDebugDirectory() throws {
        // No build id: only .gnu_debuglink names the file, looked up in DIR/<the binary's directory>/.
        let binary = SymbolSites.path("symbol-sites-noid.stripped")
        #expect(try ELFFile(path: binary).buildID == nil)
        let temp = try TempDir()
        let directory = try SymbolSites.debugDirectory(temp)
        let (c, direct, _) = try SymbolSites.start(binary)
        defer { c.terminate() }
        #expect(try Symbolizer(pid: c.pid, cache: ELFCache(debugFiles: directory)).describe(direct).first?.symbol == nil)
        try SymbolSites.copy(SymbolSites.path("symbol-sites-noid.debug"),
                             to: directory.path + SymbolSites.path("symbol-sites-noid.debug"))
        let frames = try Symbolizer(pid: c.pid, cache: ELFCache(debugFiles: directory)).describe(direct)
        #expect(frames.count == 1 && frames[0].symbol == "direct_site", "\(frames)")
        #expect(frames.first?.line == (try SymbolSites.line("SITE_DIRECT")))
    }

    @Test func miniDebugInfoGivesFunctionSymbols() throws {
        let binary = SymbolSites.path("symbol-sites.minidebuginfo")
        let (c, sym, direct, _) = try SymbolSites.symbolize(binary)
        defer { c.terminate() }
        let frames = sym.describe(direct)
        #expect(frames.count == 1 && frames[0].symbol == "direct_site", "\(frames)")
        #expect(frames.first?.line == nil, "MiniDebugInfo has symbols, not lines")
        #expect(sym.symbolize(direct)?.hasPrefix("direct_site+0x") == true)
    }

    /// Issue 9: a local user may plant FIFOs where debuggers look (next to the binary, in its .debug/);
    /// the daemon looks only under the debug-file directory, so it never opens them (an open would
    /// block: the test unblocks it by opening the FIFO's other end, and fails).
    /// Split DWARF names its .dwo by DW_AT_comp_dir + DW_AT_dwo_name, which the client wrote: libdw
    /// would open it (blocking). A module with skeleton units keeps its symbols, without lines.
    @Test func splitDWARFSkeletonIsNotFollowed() throws {
        let temp = try TempDir()
        let build = try run("/bin/sh", ["-c", "cd \(temp.path) && cc -O1 -g -gsplit-dwarf -fno-optimize-sibling-calls -o prog \(SymbolSites.source) && ls *.dwo"])
        try #require(build.status == 0, "\(build.output)")
        let dwo = temp.path + "/" + String(build.output.split(separator: "\n").last ?? "")
        #expect(unlink(dwo) == 0 && mkfifo(dwo, 0o666) == 0)
        let (c, sym, direct, _) = try SymbolSites.symbolize(temp.path + "/prog")
        defer { c.terminate() }
        let frames = try describeUnlessBlocked(sym, direct, fifos: [dwo])
        #expect(frames?.first?.symbol == "direct_site" && frames?.first?.line == nil, "\(String(describing: frames))")
    }

    @Test func fifosPlantedNextToTheBinaryAreNeverOpened() throws {
        let temp = try TempDir()
        let directory = try SymbolSites.debugDirectory(temp)
        let binary = temp.path + "/prog"
        try SymbolSites.copy(SymbolSites.path("symbol-sites.stripped"), to: binary)
        _ = try run("/bin/mkdir", ["-p", temp.path + "/.debug"])
        var fifos: [String] = []
        for dir in [temp.path, temp.path + "/.debug"] {
            for name in ["prog.debug", "symbol-sites.debug", "prog"] where !(dir == temp.path && name == "prog") {
                fifos.append(dir + "/" + name)
                #expect(mkfifo(dir + "/" + name, 0o666) == 0)
            }
        }
        let (c, sym, direct, _) = try SymbolSites.symbolize(binary, debugFiles: directory)
        defer { c.terminate() }
        let frames = try describeUnlessBlocked(sym, direct, fifos: fifos)
        #expect(frames?.first?.symbol == nil && frames?.first?.module == binary)
    }
}

/// `describe(pc)` on a thread of its own, waited for 60 s: if it blocks (it opened one of `fifos`), the
/// test fails and the FIFOs' other ends are opened to let it go.
func describeUnlessBlocked(_ sym: Symbolizer, _ pc: UInt64, fifos: [String]) throws -> [SymbolizedFrame]? {
    let result = Mutex<[SymbolizedFrame]?>(nil)
    let thread = try startThread { result.withLock { $0 = sym.describe(pc) } }
    let deadline = ChildProcess.now() + 60
    while result.withLock({ $0 == nil }) && ChildProcess.now() < deadline { usleep(10_000) }
    let frames = result.withLock { $0 }
    #expect(frames != nil, "describe blocked: it opened a planted FIFO")
    if frames == nil {
        for fifo in fifos { let fd = open(fifo, O_WRONLY | O_NONBLOCK); if fd >= 0 { close(fd) } }
    }
    pthread_join(thread, nil)
    return frames
}

/// Runs `body` on a thread of its own (not the test's cooperative pool: it may block).
func startThread(_ body: @escaping @Sendable () -> Void) throws -> pthread_t {
    final class Box { let body: @Sendable () -> Void; init(_ b: @escaping @Sendable () -> Void) { body = b } }
    var thread = pthread_t()
    let context = Unmanaged.passRetained(Box(body)).toOpaque()
    let rc = pthread_create(&thread, nil, { raw in
        let box = Unmanaged<Box>.fromOpaque(raw!).takeRetainedValue()
        box.body()
        return nil
    }, context)
    guard rc == 0 else {
        Unmanaged<Box>.fromOpaque(context).release()
        throw TestError("pthread_create: \(rc)")
    }
    return thread
}
