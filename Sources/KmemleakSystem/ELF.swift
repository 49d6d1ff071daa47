// A small ELF64 (little-endian) reader: program headers and the build id (what Roots and the load bias
// need). Symbols, lines and inlining come from elfutils (DebugInfo.swift), through a validated image of
// the file (ELFDebugImage.swift). Files are read with pread and every offset/size is validated; a
// malformed file gives `ELFError`, never a trap.
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

/// An ELF64 file: header, program headers, build id, and (lazily) its `DebugModule` for symbols.
///
/// Every file a client maps is hostile input: the reader keeps no descriptor open (the file is
/// re-opened, through `reopen`, only to read its debug image once), keeps only what it uses (the program
/// headers, at most the kernel's own limit of them) and bounds what one file may make it read and hold
/// (see `ELFDebugImage`).
public final class ELFFile: @unchecked Sendable {
    // Immutable after init except `debug`, which is loaded under `lock`.
    public let path: String
    public let type: UInt16
    public let programHeaders: [ELFProgramHeader]
    /// The GNU build id (NT_GNU_BUILD_ID note), if any.
    public let buildID: [UInt8]?
    /// Opens the same file again (same device and inode) to read its debug image; nil if gone.
    private let reopen: @Sendable () -> FileHandleFD?
    private let device: UInt64
    private let inode: UInt64
    private let lock = UnsafeMutablePointer<pthread_mutex_t>.allocate(capacity: 1)
    private var debug: DebugModule??
    /// Told the bytes of the debug module once it is loaded (the cache's accounting).
    var onDebugInfoLoaded: (@Sendable (Int) -> Void)?

    public static let ET_EXEC: UInt16 = 2
    public static let ET_DYN: UInt16 = 3
    /// Largest block of headers read at once.
    static let maxSectionBytes: UInt64 = 64 << 20
    /// The kernel's binfmt_elf limit (65536 bytes of program headers): more is not a loadable file.
    static let maxProgramHeaders = 65536 / 56
    /// e_shnum is 16 bits: at most 4 MiB of section headers, read once and dropped.
    static let sectionHeaderSize = 64

    /// Opens and validates the ELF header and program headers of `path` (re-opened by path, same
    /// inode, for the debug image).
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
        let fileSize = UInt64(st.st_size)
        guard fileSize >= 64 else { throw .notELF }
        let ehdr = try Self.readBytes(h, offset: 0, count: 64, fileSize: fileSize)
        guard ehdr.count == 64, ehdr[0] == 0x7f, ehdr[1] == 0x45, ehdr[2] == 0x4c, ehdr[3] == 0x46 else { throw .notELF }
        guard ehdr[4] == 2 else { throw .unsupported("not ELFCLASS64") }
        guard ehdr[5] == 1 else { throw .unsupported("not little-endian") }
        let b = LEBytes(bytes: ehdr)
        type = b.u16(16)!
        let phoff = b.u64(32)!
        let phentsize = b.u16(54)!, phnum = b.u16(56)!
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
    }

    /// Bytes this file holds: program headers, and the debug module once loaded.
    public var memoryBytes: Int {
        pthread_mutex_lock(lock)
        defer { pthread_mutex_unlock(lock) }
        return programHeaders.capacity * MemoryLayout<ELFProgramHeader>.stride + ((debug ?? nil)?.memoryBytes ?? 0) + 256
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

    /// The build id as lowercase hex.
    public var buildIDHex: String? {
        buildID.map { id in id.map { String($0 >> 4, radix: 16) + String($0 & 0xf, radix: 16) }.joined() }
    }

    /// The file's symbols, lines and inline chains, loaded the first time (nil if libdw cannot use it
    /// or it is over a bound). `name` is the path the module is reported under (its directory names the
    /// subdirectory of `directory` where a `.gnu_debuglink` file is looked for).
    func debugModule(name: String, directory: DebugFileDirectory) -> DebugModule? {
        pthread_mutex_lock(lock)
        defer { pthread_mutex_unlock(lock) }
        if let loaded = debug { return loaded }
        var module: DebugModule? = nil
        if let h = reopen(), let st = try? h.fstat(), UInt64(st.st_dev) == device, UInt64(st.st_ino) == inode,
           let image = try? ELFDebugImage(file: h) {
            module = DebugModule(name: name, image: image, programHeaders: programHeaders, directory: directory)
        }
        debug = .some(module)
        onDebugInfoLoaded?(module?.memoryBytes ?? 0)
        return module
    }

    /// Drops the loaded debug module (a file libdw could not use stays known as such); it loads again
    /// at the next `debugModule`. Returns the bytes it was counted as (0: none was loaded).
    func releaseDebugModule() -> Int {
        pthread_mutex_lock(lock)
        defer { pthread_mutex_unlock(lock) }
        guard let loaded = debug, let module = loaded else { return 0 }
        debug = nil
        return module.memoryBytes
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
