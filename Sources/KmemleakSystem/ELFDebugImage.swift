// The daemon's own, validated copy of what libdw reads from a client's ELF file.
import CLzma
import Glibc

/// A sparse in-memory image of an ELF file: an anonymous mapping the size of the file that holds only
/// the bytes symbolization needs (headers, notes, symbol tables, DWARF, MiniDebugInfo), read once with
/// pread; the rest stays zero pages that cost nothing.
///
/// libelf gets the image through `elf_memory`, so what it parses is exactly what was checked here: the
/// client may rewrite its file at any time, but not our copy; nothing of the client's file is mmapped
/// (truncating it cannot SIGBUS the daemon); no descriptor is kept; and every size libelf or libdwfl
/// will allocate for (a compressed section's declared size, MiniDebugInfo's decompressed size) was
/// bounded first. A section over a bound is zeroed in the image: libdw then ignores it (no symbols or
/// lines from it) and the rest of the file still symbolizes.
final class ELFDebugImage: @unchecked Sendable {
    // Immutable after init; the mapping is owned and unmapped on deinit.
    let base: UnsafeMutableRawPointer
    let size: Int
    /// What the image costs: bytes read into it plus what its compressed sections declare.
    let memoryBytes: Int

    /// Largest file imaged (address space only: unread pages are never touched).
    static let maxFileBytes: UInt64 = 64 << 30
    /// Most bytes read from one file (symbol tables and DWARF together).
    static let maxReadBytes: UInt64 = 512 << 20
    /// Largest single section read, and largest declared size of a compressed one.
    static let maxSectionBytes: UInt64 = 256 << 20
    /// All compressed sections' declared sizes together.
    static let maxDecompressedBytes: UInt64 = 1 << 30
    /// MiniDebugInfo (.gnu_debugdata): compressed and decompressed bounds.
    static let maxMiniDebugInfoBytes: UInt64 = 16 << 20
    static let maxMiniDebugInfoDecompressedBytes = 128 << 20
    /// Section header string table.
    static let maxSectionNamesBytes: UInt64 = 4 << 20

    static let SHT_SYMTAB: UInt32 = 2, SHT_STRTAB: UInt32 = 3, SHT_NOTE: UInt32 = 7, SHT_NOBITS: UInt32 = 8
    static let SHT_DYNSYM: UInt32 = 11, SHT_SYMTAB_SHNDX: UInt32 = 18
    static let SHF_COMPRESSED: UInt64 = 0x800
    static let PT_NOTE: UInt32 = 4

    struct Section {
        var name: String
        var type: UInt32
        var flags: UInt64
        var offset: UInt64
        var size: UInt64
    }

    /// Reads and checks the image from `h` (a regular file the caller opened safely).
    init(file h: FileHandleFD) throws(ELFError) {
        let st: stat
        do { st = try h.fstat() } catch { throw .io(error) }
        guard (st.st_mode & S_IFMT) == S_IFREG, st.st_size >= 64 else { throw .notELF }
        let fileSize = UInt64(st.st_size)
        guard fileSize <= Self.maxFileBytes else { throw .unsupported("file of \(fileSize) bytes") }
        guard let p = mmap(nil, Int(fileSize), PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS | MAP_NORESERVE, -1, 0),
              p != MAP_FAILED else {
            throw .io(SystemError(call: "mmap", errno: Glibc.errno, context: "image of \(h.path)"))
        }
        base = p
        size = Int(fileSize)
        do {
            memoryBytes = try Self.fill(base, fileSize: fileSize, from: h)
        } catch {
            munmap(p, Int(fileSize))
            throw error
        }
    }

    deinit { munmap(base, size) }

    /// Bytes of the image, bounds-checked (after `fill` read them).
    private static func bytes(_ base: UnsafeMutableRawPointer, _ offset: UInt64, _ count: Int) -> LEBytes {
        LEBytes(bytes: Array(UnsafeRawBufferPointer(start: base + Int(offset), count: count)))
    }

    private static func fill(_ base: UnsafeMutableRawPointer, fileSize: UInt64, from h: FileHandleFD) throws(ELFError) -> Int {
        var readBytes: UInt64 = 0
        /// Reads [offset, offset+count) of the file into the same place of the image.
        func read(_ offset: UInt64, _ count: UInt64) throws(ELFError) {
            let (end, o) = offset.addingReportingOverflow(count)
            guard !o, end <= fileSize else { throw .malformed("range past end of file") }
            guard count <= maxReadBytes &- readBytes else { throw .unsupported("more than \(maxReadBytes) bytes of symbols and DWARF") }
            readBytes += count
            guard count > 0 else { return }
            let buffer = UnsafeMutableRawBufferPointer(start: base + Int(offset), count: Int(count))
            let n: Int
            do { n = try h.pread(into: buffer, offset: offset) } catch { throw .io(error) }
            guard n == Int(count) else { throw .malformed("short read (the file shrank)") }
        }

        try read(0, 64)
        let e = bytes(base, 0, 64)
        guard e.bytes[0] == 0x7f, e.bytes[1] == 0x45, e.bytes[2] == 0x4c, e.bytes[3] == 0x46 else { throw .notELF }
        guard e.bytes[4] == 2 else { throw .unsupported("not ELFCLASS64") }
        guard e.bytes[5] == 1 else { throw .unsupported("not little-endian") }
        let phoff = e.u64(32)!, shoff = e.u64(40)!
        let phentsize = e.u16(54)!, phnum = e.u16(56)!, shentsize = e.u16(58)!, shnum = e.u16(60)!, shstrndx = e.u16(62)!
        if phnum > 0 {
            guard phentsize == 56 else { throw .malformed("e_phentsize \(phentsize)") }
            guard Int(phnum) <= ELFFile.maxProgramHeaders else { throw .malformed("e_phnum \(phnum) > \(ELFFile.maxProgramHeaders)") }
            try read(phoff, UInt64(phnum) * 56)
            let ph = bytes(base, phoff, Int(phnum) * 56)
            // Notes hold the build id (libdwfl finds the separate debug file by it).
            for i in 0..<Int(phnum) where ph.u32(i * 56)! == PT_NOTE {
                let offset = ph.u64(i * 56 + 8)!, filesz = ph.u64(i * 56 + 32)!
                if filesz <= 65536 { try? read(offset, filesz) }
            }
        }
        // Extended section numbering (e_shnum 0, the count in section 0) is refused: libelf would
        // allocate for a count the client chose.
        guard shnum > 0 else {
            guard shoff == 0 else { throw .unsupported("extended section numbering") }
            return Int(readBytes)
        }
        guard Int(shentsize) == ELFFile.sectionHeaderSize else { throw .malformed("e_shentsize \(shentsize)") }
        guard shstrndx < shnum else { throw .malformed("e_shstrndx \(shstrndx)") }
        try read(shoff, UInt64(shnum) * 64)
        let sh = bytes(base, shoff, Int(shnum) * 64)
        func header(_ i: Int) -> (nameOffset: UInt32, type: UInt32, flags: UInt64, offset: UInt64, size: UInt64) {
            let o = i * 64
            return (sh.u32(o)!, sh.u32(o + 4)!, sh.u64(o + 8)!, sh.u64(o + 24)!, sh.u64(o + 32)!)
        }
        let names = header(Int(shstrndx))
        guard names.type == SHT_STRTAB, names.size <= maxSectionNamesBytes else { throw .malformed("section names") }
        try read(names.offset, names.size)
        let nameBytes = UnsafeRawBufferPointer(start: base + Int(names.offset), count: Int(names.size))
        func name(_ offset: UInt32) -> String {
            guard Int(offset) < nameBytes.count else { return "" }
            let tail = nameBytes[Int(offset)...]
            let end = tail.firstIndex(of: 0) ?? nameBytes.endIndex
            return String(decoding: nameBytes[Int(offset)..<min(end, Int(offset) + 64)], as: UTF8.self)
        }

        var sections: [Section] = []
        for i in 1..<Int(shnum) {
            let s = header(i)
            let section = Section(name: name(s.nameOffset), type: s.type, flags: s.flags, offset: s.offset, size: s.size)
            guard section.type != SHT_NOBITS, Self.isNeeded(section) else { continue }
            guard section.size <= maxSectionBytes else { continue } // not read: zeros, which libdw ignores
            try read(section.offset, section.size)
            sections.append(section)
        }

        var declared: UInt64 = 0
        for section in sections {
            let start = base + Int(section.offset)
            if section.flags & SHF_COMPRESSED != 0 {
                // Elf64_Chdr: ch_type, ch_reserved, ch_size, ch_addralign.
                let size = section.size >= 24 ? bytes(base, section.offset, 24).u64(8)! : UInt64.max
                if size <= maxSectionBytes && size <= maxDecompressedBytes - declared {
                    declared += size
                } else {
                    start.initializeMemory(as: UInt8.self, repeating: 0, count: Int(section.size))
                }
            } else if section.name.hasPrefix(".zdebug") {
                // GNU's older form: "ZLIB" and the size, big-endian.
                var size = UInt64.max
                if section.size >= 12 {
                    let b = bytes(base, section.offset, 12).bytes
                    if b[0..<4].elementsEqual("ZLIB".utf8) { size = b[4..<12].reduce(0) { $0 << 8 | UInt64($1) } }
                }
                if size <= maxSectionBytes && size <= maxDecompressedBytes - declared {
                    declared += size
                } else {
                    start.initializeMemory(as: UInt8.self, repeating: 0, count: Int(section.size))
                }
            } else if section.name == ".gnu_debugdata" {
                let input = UnsafeRawBufferPointer(start: start, count: Int(section.size))
                if section.size <= maxMiniDebugInfoBytes,
                   let size = Self.xzDecompressedSize(input, limit: maxMiniDebugInfoDecompressedBytes) {
                    declared += UInt64(size)
                } else {
                    start.initializeMemory(as: UInt8.self, repeating: 0, count: Int(section.size))
                }
            }
        }
        return Int(min(readBytes + declared, UInt64(Int.max)))
    }

    /// The sections libdwfl and libdw read for symbols, lines and inlining.
    static func isNeeded(_ s: Section) -> Bool {
        switch s.type {
        case SHT_SYMTAB, SHT_DYNSYM, SHT_STRTAB, SHT_NOTE, SHT_SYMTAB_SHNDX: return true
        default:
            return s.name.hasPrefix(".debug_") || s.name.hasPrefix(".zdebug_") || s.name == ".gnu_debugdata"
                || s.name == ".gnu_debuglink" || s.name == ".gnu_debugaltlink"
        }
    }

    /// The decompressed size of an xz stream (concatenated streams too, as a superset of what libdwfl
    /// decodes), or nil if it is not valid xz, needs more than 64 MiB to decode, or exceeds `limit`.
    static func xzDecompressedSize(_ input: UnsafeRawBufferPointer, limit: Int) -> Int? {
        guard let inputBase = input.baseAddress, !input.isEmpty else { return nil }
        var stream = kml_lzma_stream_init()
        guard lzma_stream_decoder(&stream, 64 << 20, kml_lzma_concatenated()) == LZMA_OK else { return nil }
        defer { lzma_end(&stream) }
        let chunk = 64 << 10
        let out = UnsafeMutablePointer<UInt8>.allocate(capacity: chunk)
        defer { out.deallocate() }
        stream.next_in = inputBase.assumingMemoryBound(to: UInt8.self)
        stream.avail_in = input.count
        var total = 0
        while true {
            stream.next_out = out
            stream.avail_out = chunk
            let result = lzma_code(&stream, LZMA_FINISH)
            total += chunk - stream.avail_out
            guard total <= limit else { return nil }
            if result == LZMA_STREAM_END { return total }
            guard result == LZMA_OK else { return nil }
        }
    }
}
