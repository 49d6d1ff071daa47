// Symbols, source lines and inline chains of one ELF file, from elfutils' libdwfl and libdw.
import CLibdw
import Glibc
import Synchronization

/// Where separate debug files are looked up: `<directory>/.build-id/xx/yyyy.debug` by build id, then
/// the file's `.gnu_debuglink` name under `<directory>/<the file's directory>/` and `<directory>/`;
/// nowhere else (not the client's directory, not its `.debug/`). debuginfod, by build id, only when
/// `DEBUGINFOD_URLS` is set in the daemon's environment.
public final class DebugFileDirectory: @unchecked Sendable {
    // Immutable after init; libdwfl reads the callbacks and the path from every Dwfl begun with them.
    public let path: String
    let callbacks: UnsafeMutablePointer<Dwfl_Callbacks>
    private let debuginfoPath: UnsafeMutablePointer<UnsafeMutablePointer<CChar>?>
    private let directoryCString: UnsafeMutablePointer<CChar>

    public static let defaultPath = "/usr/lib/debug"
    public static let standard = DebugFileDirectory(DebugFileDirectory.defaultPath)

    /// `path` should be absolute and root-owned (the daemon opens what it finds there); a ':' would
    /// split libdwfl's search path, so it is cut there.
    public init(_ path: String) {
        let clean = String(path.prefix { $0 != ":" })
        self.path = clean
        directoryCString = strdup(clean)!
        debuginfoPath = .allocate(capacity: 1)
        debuginfoPath.initialize(to: strdup(clean))
        callbacks = .allocate(capacity: 1)
        kml_dwfl_callbacks_init(callbacks, debuginfoPath)
    }

    var directory: UnsafePointer<CChar> { UnsafePointer(directoryCString) }

    deinit {
        free(debuginfoPath.pointee)
        debuginfoPath.deallocate()
        free(directoryCString)
        callbacks.deallocate()
    }
}

/// One source position of a return address: the function, and where in the source it is.
struct SourceFrame: Equatable {
    var function: String?
    var file: String?
    var line: Int?
    var inlined: Bool
}

/// What one address of a file resolves to.
struct DebugLookup: Equatable {
    /// The ELF symbol containing the address (file addresses).
    var symbol: (name: String, start: UInt64, size: UInt64)?
    /// Inlined functions first (innermost first), then the containing function; empty without DWARF.
    var frames: [SourceFrame]

    static func == (a: DebugLookup, b: DebugLookup) -> Bool {
        a.symbol?.name == b.symbol?.name && a.symbol?.start == b.symbol?.start && a.symbol?.size == b.symbol?.size
            && a.frames == b.frames
    }
}

/// One ELF file in its own Dwfl: the file's own address space (look up ELF virtual addresses), its
/// symbols (.symtab, .dynsym, MiniDebugInfo, or the separate debug file's), its DWARF (the file's, or
/// the separate debug file's), from an `ELFDebugImage`: symbols at init, DWARF on first need; libdw
/// is not thread-safe, so lookups are serialized.
final class DebugModule: @unchecked Sendable {
    // All fields immutable after init; libdw state is touched only under `lock`.
    private let dwfl: OpaquePointer
    private let module: OpaquePointer
    private let data: UnsafeMutablePointer<kml_module_data>
    private let image: ELFDebugImage
    private let directory: DebugFileDirectory
    /// DWARF is loaded on the first lookup that wants source frames (the kernel's text does not):
    /// nil until then, then whether it is there and usable.
    private let dwarfState = Mutex<Bool?>(nil)
    /// Dwfl address = file address + bias (0 unless the headers moved under us).
    private let bias: UInt64
    /// What the module holds: its image, plus the separate debug file found (mapped by libelf).
    let memoryBytes: Int
    let hasSymbols: Bool
    /// libdwfl's function symbols, sorted (see `FunctionSymbols`).
    private let functions: FunctionSymbols

    /// Most functions one address's inline chain yields.
    static let maxInlineDepth = 64

    /// nil if libdwfl cannot use the file (not ELF, no loadable segment).
    init?(name: String, image: ELFDebugImage, programHeaders: [ELFProgramHeader], directory: DebugFileDirectory) {
        let loads = programHeaders.filter(\.isLoad)
        guard let first = loads.first else { return nil }
        // libdwfl's own rule: the module starts at the first PT_LOAD's p_vaddr, aligned down.
        let align = first.align > 1 && first.align & (first.align - 1) == 0 ? first.align : 1
        let low = first.vaddr & ~(align - 1)
        let high = loads.map { $0.vaddr &+ $0.memsz }.max() ?? 0
        guard high > low else { return nil }
        guard let elf = elf_memory(image.base.assumingMemoryBound(to: CChar.self), image.size) else { return nil }
        guard let dwfl = dwfl_begin(directory.callbacks) else { elf_end(elf); return nil }
        let data = UnsafeMutablePointer<kml_module_data>.allocate(capacity: 1)
        data.initialize(to: kml_module_data(elf: elf, debug_directory: directory.directory))
        guard let module = kml_dwfl_report(dwfl, name, low, high, data) else {
            dwfl_end(dwfl)
            elf_end(elf)
            data.deallocate()
            return nil
        }
        self.dwfl = dwfl
        self.module = module
        self.data = data
        self.image = image
        self.directory = directory
        var elfBias: Dwarf_Addr = 0
        let mainElf = dwfl_module_getelf(module, &elfBias)
        bias = elfBias
        // Symbols now (and with them the separate debug file); DWARF when first asked for.
        hasSymbols = mainElf != nil && dwfl_module_getsymtab(module) > 0
        functions = hasSymbols ? FunctionSymbols(module) : FunctionSymbols()
        var debugFile: UnsafePointer<CChar>? = nil
        dwfl_module_info(module, nil, nil, nil, nil, nil, nil, &debugFile)
        var debugBytes = 0
        var st = stat()
        if let debugFile, stat(debugFile, &st) == 0 { debugBytes = Int(st.st_size) }
        memoryBytes = image.memoryBytes + debugBytes + functions.memoryBytes + 4096
    }

    deinit {
        dwfl_end(dwfl)
        // Only if find_elf never took it.
        if let elf = data.pointee.elf { elf_end(elf) }
        data.deallocate()
    }

    /// The symbol and, with `sourceFrames`, the source frames of `address` (a file address: for a
    /// return address, `pc - 1`). The kernel's text needs the symbol only, which is much cheaper.
    func lookup(_ address: UInt64, sourceFrames: Bool = true) -> DebugLookup {
        dwarfState.withLock { dwarfState in
            let a = address &+ bias
            var result = DebugLookup(symbol: nil, frames: [])
            if let i = functions.lookup(a) {
                result.symbol = (functions.names[i], functions.addresses[i] &- bias, functions.sizes[i])
            }
            guard sourceFrames, loadDWARF(&dwarfState) else { return result }
            var lineFile: String? = nil
            var lineNumber: Int? = nil
            if let line = dwfl_module_getsrc(module, a) {
                var n: Int32 = 0
                if let f = dwfl_lineinfo(line, nil, &n, nil, nil, nil) {
                    lineFile = Self.absolute(String(cString: f), dwfl_line_comp_dir(line))
                    lineNumber = n > 0 ? Int(n) : nil
                }
            }
            result.frames = inlineChain(a, file: lineFile, line: lineNumber)
            if result.frames.isEmpty && lineFile != nil {
                result.frames = [SourceFrame(function: nil, file: lineFile, line: lineNumber, inlined: false)]
            }
            return result
        }
    }

    /// As `eu-addr2line -i`: the scopes of the CU DIE at the address, innermost first; each inlined
    /// subroutine's DW_AT_call_file/line is the position in the next function outward.
    private func inlineChain(_ a: UInt64, file: String?, line: Int?) -> [SourceFrame] {
        var cuBias: Dwarf_Addr = 0
        guard let cu = dwfl_module_addrdie(module, a, &cuBias) else { return [] }
        var scopes: UnsafeMutablePointer<Dwarf_Die>? = nil
        let n = dwarf_getscopes(cu, a &- cuBias, &scopes)
        defer { free(scopes) }
        guard n > 0, let scopes else { return [] }
        // The concrete chain from the innermost scope (dwarf_getscopes continues with the abstract
        // origin's scopes after an inlined subroutine).
        var concrete: UnsafeMutablePointer<Dwarf_Die>? = nil
        let m = dwarf_getscopes_die(&scopes[0], &concrete)
        defer { free(concrete) }
        guard m > 0, let concrete else { return [] }
        var files: OpaquePointer? = nil
        var fileCount = 0
        if dwarf_getsrcfiles(cu, &files, &fileCount) != 0 { files = nil }
        var frames: [SourceFrame] = []
        var file = file, line = line
        for i in 0..<Int(m) {
            let die = concrete + i
            let tag = dwarf_tag(die)
            guard tag == Int32(DW_TAG_subprogram) || tag == Int32(DW_TAG_inlined_subroutine)
                    || tag == Int32(DW_TAG_entry_point) else { continue }
            let name = dwarf_diename(die).map { String(cString: $0) }
            let isInlined = tag == Int32(DW_TAG_inlined_subroutine)
            frames.append(SourceFrame(function: name, file: file, line: line, inlined: isInlined))
            guard isInlined, frames.count < Self.maxInlineDepth else { break }
            // The call site, in the function this one was inlined into.
            var attr = Dwarf_Attribute()
            var value: Dwarf_Word = 0
            file = nil
            line = nil
            if let files, dwarf_formudata(dwarf_attr(die, UInt32(DW_AT_call_file), &attr), &value) == 0,
               value < UInt64(fileCount), let f = dwarf_filesrc(files, Int(value), nil, nil) {
                var compDirAttr = Dwarf_Attribute()
                file = Self.absolute(String(cString: f), dwarf_formstring(dwarf_attr(cu, UInt32(DW_AT_comp_dir), &compDirAttr)))
            }
            if dwarf_formudata(dwarf_attr(die, UInt32(DW_AT_call_line), &attr), &value) == 0, value > 0,
               value <= UInt64(Int32.max) {
                line = Int(value)
            }
        }
        return frames
    }

    /// Whether the module has usable DWARF (loads it).
    var hasDWARF: Bool { dwarfState.withLock { loadDWARF(&$0) } }

    private func loadDWARF(_ state: inout Bool?) -> Bool {
        if let loaded = state { return loaded }
        var dwarfBias: Dwarf_Addr = 0
        let dwarf = dwfl_module_getdwarf(module, &dwarfBias)
        let usable = dwarf.map { Self.isSelfContained($0, directory: directory) } ?? false
        state = usable
        return usable
    }

    /// Whether libdw can answer from this DWARF alone. Two things would make it open files by names the
    /// client wrote (blocking `open`s: a FIFO there would hang the daemon): split DWARF (a skeleton
    /// unit's DW_AT_dwo_name, under its DW_AT_comp_dir) and a dwz alternate file libdwfl did not find
    /// under the debug directory (libdw then tries the .gnu_debugaltlink path itself). Such modules
    /// keep their symbols, without lines.
    private static func isSelfContained(_ dwarf: OpaquePointer, directory: DebugFileDirectory) -> Bool {
        var cu: OpaquePointer? = nil
        var next: OpaquePointer? = nil
        var unitType: UInt8 = 0
        // Without a sub-DIE, dwarf_get_units does not look for split units.
        while dwarf_get_units(dwarf, cu, &next, nil, &unitType, nil, nil) == 0 {
            // DW_UT_skeleton, DW_UT_split_compile, DW_UT_split_type (GNU DebugFission's too).
            if unitType == 4 || unitType == 5 || unitType == 6 { return false }
            cu = next
        }
        var altName: UnsafePointer<CChar>? = nil
        var altID: UnsafeRawPointer? = nil
        let idLength = dwelf_dwarf_gnu_debugaltlink(dwarf, &altName, &altID)
        if idLength != 0 {
            // libdwfl looked it up by build id (our find_debuginfo): present there, or refuse.
            guard idLength > 0, let altID, idLength <= 64 else { return false }
            let id = UnsafeRawBufferPointer(start: altID, count: idLength)
            let hex = id.map { String($0 >> 4, radix: 16) + String($0 & 0xf, radix: 16) }.joined()
            let path = directory.path + "/.build-id/" + hex.prefix(2) + "/" + hex.dropFirst(2)
            func isRegularFile(_ p: String) -> Bool {
                var st = stat()
                return stat(p, &st) == 0 && (st.st_mode & S_IFMT) == S_IFREG
            }
            guard isRegularFile(path + ".debug") || isRegularFile(path) else { return false }
        }
        return true
    }

    /// A source path as the compiler saw it: relative names are relative to the CU's directory.
    static func absolute(_ file: String, _ compDir: UnsafePointer<CChar>?) -> String {
        guard !file.hasPrefix("/"), let compDir else { return file }
        let dir = String(cString: compDir)
        return dir.isEmpty ? file : (dir.hasSuffix("/") ? dir + file : dir + "/" + file)
    }

    /// `name@VERSION` / `name@@VERSION` → `name`.
    static func withoutVersion(_ name: UnsafePointer<CChar>) -> String {
        let s = String(cString: name)
        guard let at = s.firstIndex(of: "@"), at != s.startIndex else { return s }
        return String(s[..<at])
    }
}

/// A module's function symbols from libdwfl's table (.symtab, .dynsym, MiniDebugInfo or the separate
/// debug file, whichever libdwfl chose), sorted for binary search: `dwfl_module_addrinfo` scans the
/// whole table on every call (about 0.7 ms per address in libc's, BENCHMARKS.md). One name per
/// address: the alias people call, fewest leading underscores (malloc, not __GI___libc_malloc), then
/// global over weak over local, then shortest.
struct FunctionSymbols {
    private(set) var addresses: [UInt64] = []
    private(set) var sizes: [UInt64] = []
    private(set) var names: [String] = []

    init() {}

    init(_ module: OpaquePointer) {
        let count = dwfl_module_getsymtab(module)
        guard count > 1 else { return }
        struct Entry { var address: UInt64; var size: UInt64; var rank: Int; var name: String }
        var entries: [Entry] = []
        entries.reserveCapacity(Int(count))
        for i in 1..<Int(count) {
            var sym = GElf_Sym()
            var address: GElf_Addr = 0
            var shndx: GElf_Word = 0
            var elf: OpaquePointer? = nil
            var symBias: Dwarf_Addr = 0
            guard let raw = dwfl_module_getsym_info(module, Int32(i), &sym, &address, &shndx, &elf, &symBias)
            else { continue }
            let type = sym.st_info & 0xf, bind = sym.st_info >> 4
            guard type == 2 /* STT_FUNC */ || type == 10 /* STT_GNU_IFUNC */, address != 0, sym.st_shndx != 0 else { continue }
            let name = DebugModule.withoutVersion(raw)
            guard !name.isEmpty else { continue }
            let underscores = name.utf8.prefix { $0 == UInt8(ascii: "_") }.count
            let bindRank = bind == 1 ? 0 : (bind == 2 ? 1 : 2) // global, weak, local
            let rank = min(underscores, 255) << 24 | bindRank << 16 | min(name.utf8.count, 0xffff)
            entries.append(Entry(address: address, size: sym.st_size, rank: rank, name: name))
        }
        entries.sort { $0.address != $1.address ? $0.address < $1.address : ($0.rank != $1.rank ? $0.rank < $1.rank : $0.size > $1.size) }
        addresses.reserveCapacity(entries.count)
        for e in entries {
            if let last = addresses.last, last == e.address {
                // Same address: the preferred name, but a size if it had none.
                if sizes[sizes.count - 1] == 0 { sizes[sizes.count - 1] = e.size }
                continue
            }
            addresses.append(e.address)
            sizes.append(e.size)
            names.append(e.name)
        }
    }

    var memoryBytes: Int { addresses.capacity * 16 + names.reduce(0) { $0 + 16 + ($1.utf8.count > 15 ? $1.utf8.count : 0) } }

    /// The symbol containing `address`: the last one starting at or below it whose [start, start+size)
    /// contains it (size 0, hand-written assembly: up to the next symbol, at most 4 KiB).
    func lookup(_ address: UInt64) -> Int? {
        var lo = 0, hi = addresses.count
        while lo < hi {
            let mid = (lo + hi) >> 1
            if addresses[mid] <= address { lo = mid + 1 } else { hi = mid }
        }
        guard lo > 0 else { return nil }
        let i = lo - 1
        if sizes[i] > 0 { return address - addresses[i] < sizes[i] ? i : nil }
        let next = i + 1 < addresses.count ? addresses[i + 1] : UInt64.max
        return address < next && address - addresses[i] < 4096 ? i : nil
    }
}
