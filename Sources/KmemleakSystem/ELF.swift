// A small ELF64 (little-endian) reader: program headers and FUNC symbols. Files are read with pread
// and every offset/size is validated; a malformed file gives `ELFError`, never a trap.
import Glibc

public enum ELFError: Error, Sendable, Equatable {
    case notELF
    case unsupported(String)
    case malformed(String)
    case io(SystemError)
}

public struct ELFProgramHeader: Sendable, Equatable {
    public var type: UInt32
    public var flags: UInt32
    public var offset: UInt64
    public var vaddr: UInt64
    public var filesz: UInt64
    public var memsz: UInt64
    public var align: UInt64

    public static let PT_LOAD: UInt32 = 1
    public static let PF_X: UInt32 = 1
    public static let PF_W: UInt32 = 2
    public static let PF_R: UInt32 = 4
    public var isLoad: Bool { type == Self.PT_LOAD }
    public var isWritable: Bool { flags & Self.PF_W != 0 }
}

/// A function symbol: [address, address+size) in the file's link-time addresses.
public struct ELFSymbol: Sendable, Equatable {
    public var address: UInt64
    public var size: UInt64
    public var name: String
}

/// Little-endian loads from a byte array with bounds checks.
struct LEBytes {
    let bytes: [UInt8]
    func u16(_ o: Int) -> UInt16? {
        guard o >= 0, o + 2 <= bytes.count else { return nil }
        return UInt16(bytes[o]) | UInt16(bytes[o + 1]) << 8
    }
    func u32(_ o: Int) -> UInt32? {
        guard o >= 0, o + 4 <= bytes.count else { return nil }
        var v: UInt32 = 0
        for i in (0..<4).reversed() { v = v << 8 | UInt32(bytes[o + i]) }
        return v
    }
    func u64(_ o: Int) -> UInt64? {
        guard o >= 0, o + 8 <= bytes.count else { return nil }
        var v: UInt64 = 0
        for i in (0..<8).reversed() { v = v << 8 | UInt64(bytes[o + i]) }
        return v
    }
}

/// An ELF64 file: header, program headers, and (lazily) its sorted function-symbol index.
///
/// Every file a client maps is hostile input: the reader keeps no descriptor open (the file is
/// re-opened, through `reopen`, only to build the symbol index), keeps only what it uses (the program
/// headers, at most the kernel's own limit of them, and the two symbol-table section headers) and bounds
/// what one file may make it read and hold (`maxSymbolTableBytes`).
public final class ELFFile: @unchecked Sendable {
    // Immutable after init except `index`, which is built under `lock`.
    public let path: String
    public let type: UInt16
    public let programHeaders: [ELFProgramHeader]
    /// The GNU build id (NT_GNU_BUILD_ID note), if any.
    public let buildID: [UInt8]?
    /// Where separate debug files are looked up by build id (`<dir>/xx/yyyy.debug`).
    public static let debugDirectory = "/usr/lib/debug/.build-id"
    /// Opens the same file again (same device and inode) to build the symbol index; nil if gone.
    private let reopen: @Sendable () -> FileHandleFD?
    private let device: UInt64
    private let inode: UInt64
    private let fileSize: UInt64
    /// .symtab and .dynsym with their string tables (the only section headers kept).
    private let symbolTables: [(symbols: Section, strings: Section)]
    private let hasSymtab: Bool
    private let lock = UnsafeMutablePointer<pthread_mutex_t>.allocate(capacity: 1)
    private var index: SymbolIndex?
    /// Told the bytes of the symbol index once it is built (the cache's accounting).
    var onIndexBuilt: (@Sendable (Int) -> Void)?

    public static let ET_EXEC: UInt16 = 2
    public static let ET_DYN: UInt16 = 3
    /// Largest section we read (a symbol or string table) and the most one file's symbol and string
    /// tables may make us read together: a bigger one gives no symbols (the build id's debug file may).
    static let maxSectionBytes: UInt64 = 64 << 20
    static let maxSymbolTableBytes: UInt64 = 96 << 20
    /// The kernel's binfmt_elf limit (65536 bytes of program headers): more is not a loadable file.
    static let maxProgramHeaders = 65536 / 56
    /// e_shnum is 16 bits: at most 4 MiB of section headers, read once and dropped.
    static let sectionHeaderSize = 64

    struct Section {
        var type: UInt32
        var offset: UInt64
        var size: UInt64
        var link: UInt32
        var entsize: UInt64
    }

    /// Opens and validates the ELF header and program headers of `path` (re-opened by path, same
    /// inode, for the symbol index).
    public convenience init(path: String) throws(ELFError) {
        let h: FileHandleFD
        do { h = try Self.openRegular(path) } catch { throw .io(error) }
        try self.init(file: h, reopen: { try? Self.openRegular(path) })
    }

    /// Opens `path` for reading without blocking on a FIFO or device and without becoming its
    /// controlling terminal (client-named paths); the caller checks it is a regular file.
    static func openRegular(_ path: String) throws(SystemError) -> FileHandleFD {
        try FileHandleFD.open(path, O_RDONLY | O_NONBLOCK | O_NOCTTY)
    }

    /// Reads the headers from `h` (not kept: closed when the caller drops it). `reopen` gives the same
    /// file again later; its device and inode are checked.
    public init(file h: FileHandleFD, reopen: @escaping @Sendable () -> FileHandleFD?) throws(ELFError) {
        pthread_mutex_init(lock, nil)
        self.path = h.path
        self.reopen = reopen
        let st: stat
        do { st = try h.fstat() } catch { throw .io(error) }
        guard (st.st_mode & S_IFMT) == S_IFREG else { throw .notELF }
        device = UInt64(st.st_dev)
        inode = UInt64(st.st_ino)
        fileSize = UInt64(st.st_size)
        guard fileSize >= 64 else { throw .notELF }
        let ehdr = try Self.readBytes(h, offset: 0, count: 64, fileSize: fileSize)
        guard ehdr.count == 64, ehdr[0] == 0x7f, ehdr[1] == 0x45, ehdr[2] == 0x4c, ehdr[3] == 0x46 else { throw .notELF }
        guard ehdr[4] == 2 else { throw .unsupported("not ELFCLASS64") }
        guard ehdr[5] == 1 else { throw .unsupported("not little-endian") }
        let b = LEBytes(bytes: ehdr)
        type = b.u16(16)!
        let phoff = b.u64(32)!, shoff = b.u64(40)!
        let phentsize = b.u16(54)!, phnum = b.u16(56)!, shentsize = b.u16(58)!, shnum = b.u16(60)!
        // Program headers.
        var phs: [ELFProgramHeader] = []
        if phnum > 0 {
            guard phentsize == 56 else { throw .malformed("e_phentsize \(phentsize)") }
            guard Int(phnum) <= Self.maxProgramHeaders else { throw .malformed("e_phnum \(phnum) > \(Self.maxProgramHeaders)") }
            let raw = try Self.readBytes(h, offset: phoff, count: Int(phnum) * 56, fileSize: fileSize)
            let p = LEBytes(bytes: raw)
            phs.reserveCapacity(Int(phnum))
            for i in 0..<Int(phnum) {
                let o = i * 56
                phs.append(ELFProgramHeader(type: p.u32(o)!, flags: p.u32(o + 4)!, offset: p.u64(o + 8)!,
                                            vaddr: p.u64(o + 16)!, filesz: p.u64(o + 32)!, memsz: p.u64(o + 40)!,
                                            align: p.u64(o + 48)!))
            }
        }
        programHeaders = phs
        buildID = Self.readBuildID(h, phs, fileSize: fileSize)
        // Section headers (optional: a file without them just has no symbols). Only the symbol tables
        // and their string tables are kept.
        var tables: [(symbols: Section, strings: Section)] = []
        var symtab = false
        if shnum > 0 && shoff != 0 && Int(shentsize) == Self.sectionHeaderSize,
           let raw = try? Self.readBytes(h, offset: shoff, count: Int(shnum) * Self.sectionHeaderSize, fileSize: fileSize) {
            let s = LEBytes(bytes: raw)
            func section(_ i: Int) -> Section {
                let o = i * Self.sectionHeaderSize
                return Section(type: s.u32(o + 4)!, offset: s.u64(o + 24)!, size: s.u64(o + 32)!,
                               link: s.u32(o + 40)!, entsize: s.u64(o + 56)!)
            }
            let SHT_SYMTAB: UInt32 = 2, SHT_STRTAB: UInt32 = 3, SHT_DYNSYM: UInt32 = 11
            for wanted in [SHT_SYMTAB, SHT_DYNSYM] {
                guard let i = (0..<Int(shnum)).first(where: { section($0).type == wanted && section($0).size > 0 })
                else { continue }
                if wanted == SHT_SYMTAB { symtab = true }
                let sym = section(i)
                guard sym.entsize == 24 || sym.entsize == 0, Int(sym.link) < Int(shnum) else { continue }
                let str = section(Int(sym.link))
                guard str.type == SHT_STRTAB else { continue }
                tables.append((sym, str))
            }
        }
        symbolTables = tables
        hasSymtab = symtab
    }

    /// Bytes this file holds: program headers, and the symbol index once built.
    public var memoryBytes: Int {
        pthread_mutex_lock(lock)
        defer { pthread_mutex_unlock(lock) }
        return programHeaders.capacity * MemoryLayout<ELFProgramHeader>.stride + (index?.memoryBytes ?? 0) + 256
    }

    deinit {
        pthread_mutex_destroy(lock)
        lock.deallocate()
    }

    static func readBytes(_ h: FileHandleFD, offset: UInt64, count: Int, fileSize: UInt64) throws(ELFError) -> [UInt8] {
        guard count >= 0, UInt64(count) <= maxSectionBytes else { throw .malformed("section too large") }
        let (end, o) = offset.addingReportingOverflow(UInt64(count))
        guard !o, end <= fileSize else { throw .malformed("range past end of file") }
        var out = [UInt8](repeating: 0, count: count)
        let r = out.withUnsafeMutableBytes { b in Result { () throws(SystemError) -> Int in try h.pread(into: b, offset: offset) } }
        let n: Int
        switch r {
        case .success(let v): n = v
        case .failure(let e): throw .io(e)
        }
        guard n == count else { throw .malformed("short read") }
        return out
    }

    /// The writable PT_LOAD segments.
    public var writableLoads: [ELFProgramHeader] { programHeaders.filter { $0.isLoad && $0.isWritable } }

    /// The lowest PT_LOAD's page-aligned vaddr: load bias = address of the file's offset-0 mapping - this.
    public var firstLoadVaddr: UInt64? {
        guard let first = programHeaders.filter({ $0.isLoad }).min(by: { $0.vaddr < $1.vaddr }) else { return nil }
        // The first mapping starts at the page holding p_offset 0 of the segment.
        return (first.vaddr &- first.offset) & ~UInt64(4095)
    }

    /// The symbol containing `address` (link-time), or nil.
    public func symbol(containing address: UInt64) -> ELFSymbol? {
        let idx = symbolIndex()
        guard let i = idx.lookup(address) else { return nil }
        return ELFSymbol(address: idx.addresses[i], size: idx.sizes[i], name: idx.name(i))
    }

    /// Number of function symbols in the index (builds it).
    public var symbolCount: Int { symbolIndex().addresses.count }

    func symbolIndex() -> SymbolIndex {
        pthread_mutex_lock(lock)
        defer { pthread_mutex_unlock(lock) }
        if let idx = index { return idx }
        let idx = (try? buildIndex()) ?? SymbolIndex.empty
        index = idx
        onIndexBuilt?(idx.memoryBytes)
        return idx
    }

    /// Reads .symtab (else .dynsym) and its string table into a sorted index of FUNC symbols, from the
    /// file opened again (same device and inode).
    private func buildIndex() throws(ELFError) -> SymbolIndex {
        var best = SymbolIndex.empty
        if let h = reopen(), let st = try? h.fstat(), UInt64(st.st_dev) == device, UInt64(st.st_ino) == inode,
           (st.st_mode & S_IFMT) == S_IFREG {
            for (sec, strSec) in symbolTables {
                guard sec.size <= Self.maxSectionBytes, strSec.size <= Self.maxSectionBytes,
                      sec.size + strSec.size <= Self.maxSymbolTableBytes,
                      let symRaw = try? Self.readBytes(h, offset: sec.offset, count: Int(sec.size), fileSize: fileSize),
                      let strRaw = try? Self.readBytes(h, offset: strSec.offset, count: Int(strSec.size), fileSize: fileSize)
                else { continue }
                let idx = SymbolIndex.build(symbols: symRaw, strings: strRaw)
                if idx.addresses.count > best.addresses.count { best = idx }
                // .symtab is a superset of .dynsym for functions.
                if hasSymtab && !idx.addresses.isEmpty { break }
            }
        }
        // Only .dynsym here (a stripped distribution library): the separate debug file installed
        // for its build id (e.g. libc6-dbg) has the full .symtab at the same link-time addresses.
        if !hasSymtab, let debug = debugFile() {
            let idx = debug.symbolIndex()
            if idx.addresses.count > best.addresses.count { best = idx }
        }
        return best
    }

    /// The separate debug file for this file's build id, if installed (and itself valid ELF).
    func debugFile() -> ELFFile? {
        guard let id = buildID, id.count >= 2, !path.hasPrefix(Self.debugDirectory) else { return nil }
        let hex = id.map { String($0 >> 4, radix: 16) + String($0 & 0xf, radix: 16) }.joined()
        let path = Self.debugDirectory + "/" + hex.prefix(2) + "/" + hex.dropFirst(2) + ".debug"
        return try? ELFFile(path: path)
    }

    /// The NT_GNU_BUILD_ID descriptor from the PT_NOTE segments (bounded, validated).
    static func readBuildID(_ h: FileHandleFD, _ phs: [ELFProgramHeader], fileSize: UInt64) -> [UInt8]? {
        let PT_NOTE: UInt32 = 4, NT_GNU_BUILD_ID: UInt32 = 3
        for ph in phs where ph.type == PT_NOTE && ph.filesz > 0 && ph.filesz <= 65536 {
            guard let raw = try? readBytes(h, offset: ph.offset, count: Int(ph.filesz), fileSize: fileSize) else { continue }
            let b = LEBytes(bytes: raw)
            var o = 0
            while o + 12 <= raw.count {
                guard let namesz = b.u32(o), let descsz = b.u32(o + 4), let type = b.u32(o + 8),
                      namesz <= 256, descsz <= 256 else { break }
                let nameStart = o + 12
                let descStart = nameStart + ((Int(namesz) + 3) & ~3)
                let next = descStart + ((Int(descsz) + 3) & ~3)
                guard descStart + Int(descsz) <= raw.count else { break }
                if type == NT_GNU_BUILD_ID && namesz == 4 && raw[nameStart..<(nameStart + 3)].elementsEqual("GNU".utf8) && descsz > 0 {
                    return Array(raw[descStart..<(descStart + Int(descsz))])
                }
                o = next
            }
        }
        return nil
    }
}

/// Sorted function symbols of one file: parallel arrays (compact) and the file's string table.
struct SymbolIndex: Sendable {
    var addresses: [UInt64] = []
    var sizes: [UInt64] = []
    var nameOffsets: [UInt32] = []
    var nameLengths: [UInt16] = []
    var strings: [UInt8] = []

    static let empty = SymbolIndex()

    var memoryBytes: Int {
        addresses.capacity * 8 + sizes.capacity * 8 + nameOffsets.capacity * 4 + nameLengths.capacity * 2 + strings.capacity
    }

    static func build(symbols: [UInt8], strings: [UInt8]) -> SymbolIndex {
        let STT_FUNC: UInt8 = 2, STT_GNU_IFUNC: UInt8 = 10
        let STB_GLOBAL: UInt8 = 1, STB_WEAK: UInt8 = 2
        struct Entry { var addr: UInt64; var size: UInt64; var off: UInt32; var len: UInt16; var rank: Int }
        var entries: [Entry] = []
        let b = LEBytes(bytes: symbols)
        let count = symbols.count / 24
        entries.reserveCapacity(count)
        for i in 0..<count {
            let o = i * 24
            let nameOff = b.u32(o)!
            let info = symbols[o + 4]
            let shndx = b.u16(o + 6)!
            let value = b.u64(o + 8)!
            let size = b.u64(o + 16)!
            let type = info & 0xf, bind = info >> 4
            guard type == STT_FUNC || type == STT_GNU_IFUNC, shndx != 0, value != 0 else { continue }
            guard Int(nameOff) < strings.count else { continue }
            var end = Int(nameOff)
            while end < strings.count && strings[end] != 0 && strings[end] != UInt8(ascii: "@") { end += 1 }
            let len = end - Int(nameOff)
            guard len > 0, len <= Int(UInt16.max) else { continue }
            // Alias preference: fewer leading underscores (getpid over __getpid), then global > weak >
            // local, then shorter.
            var underscores = 0
            while underscores < len && strings[Int(nameOff) + underscores] == UInt8(ascii: "_") { underscores += 1 }
            let bindRank = bind == STB_GLOBAL ? 0 : (bind == STB_WEAK ? 1 : 2)
            let rank = min(underscores, 255) << 24 | bindRank << 16 | len
            entries.append(Entry(addr: value, size: size, off: nameOff, len: UInt16(len), rank: rank))
        }
        entries.sort { $0.addr != $1.addr ? $0.addr < $1.addr : ($0.rank != $1.rank ? $0.rank < $1.rank : $0.size > $1.size) }
        var idx = SymbolIndex()
        idx.addresses.reserveCapacity(entries.count)
        // Only the kept names are copied (not the whole string table, which also names data and files).
        var names: [UInt8] = []
        var lastAddr: UInt64? = nil
        for e in entries {
            if e.addr == lastAddr {
                // Same address: keep the preferred name, but the largest size.
                if e.size > idx.sizes[idx.sizes.count - 1] && idx.sizes[idx.sizes.count - 1] == 0 {
                    idx.sizes[idx.sizes.count - 1] = e.size
                }
                continue
            }
            lastAddr = e.addr
            idx.addresses.append(e.addr)
            idx.sizes.append(e.size)
            idx.nameOffsets.append(UInt32(names.count))
            idx.nameLengths.append(e.len)
            names.append(contentsOf: strings[Int(e.off)..<(Int(e.off) + Int(e.len))])
        }
        idx.strings = names
        return idx
    }

    /// Index of the symbol containing `address`: the last symbol starting at or below it whose
    /// [start, start+size) contains it (size 0: up to the next symbol).
    func lookup(_ address: UInt64) -> Int? {
        var lo = 0, hi = addresses.count
        while lo < hi {
            let mid = (lo + hi) >> 1
            if addresses[mid] <= address { lo = mid + 1 } else { hi = mid }
        }
        guard lo > 0 else { return nil }
        let i = lo - 1
        let size = sizes[i]
        if size > 0 {
            return address - addresses[i] < size ? i : nil
        }
        // Size 0 (hand-written assembly labels): accept up to the next symbol, at most 4 KiB.
        let next = i + 1 < addresses.count ? addresses[i + 1] : UInt64.max
        return address < next && address - addresses[i] < 4096 ? i : nil
    }

    func name(_ i: Int) -> String {
        let o = Int(nameOffsets[i]), n = Int(nameLengths[i])
        return strings.withUnsafeBufferPointer { String(decoding: UnsafeBufferPointer(rebasing: $0[o..<(o + n)]), as: UTF8.self) }
    }
}
