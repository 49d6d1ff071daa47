// Issue 9 item 4: what a mapped file can make the daemon hold (descriptors, headers, symbols).
import Glibc
@testable import KmemleakSystem
import Testing

/// Open descriptors of this process.
func openDescriptorCount() -> Int { (try? ProcFile.listDirectory("/proc/self/fd").count) ?? -1 }

/// A sparse ELF64 header claiming `phnum` program headers and `shnum` section headers (all zero).
func writeSparseELF(_ path: String, phnum: UInt16, shnum: UInt16) throws {
    var hdr = [UInt8](repeating: 0, count: 64)
    hdr[0] = 0x7f; hdr[1] = 0x45; hdr[2] = 0x4c; hdr[3] = 0x46; hdr[4] = 2; hdr[5] = 1; hdr[16] = 3
    let phoff: UInt64 = 64, shoff = 64 + UInt64(phnum) * 56
    for i in 0..<8 { hdr[32 + i] = UInt8(truncatingIfNeeded: phoff >> (8 * UInt64(i))) }
    for i in 0..<8 { hdr[40 + i] = UInt8(truncatingIfNeeded: shoff >> (8 * UInt64(i))) }
    hdr[54] = 56; hdr[56] = UInt8(phnum & 0xff); hdr[57] = UInt8(phnum >> 8)
    hdr[58] = 64; hdr[60] = UInt8(shnum & 0xff); hdr[61] = UInt8(shnum >> 8)
    let fd = open(path, O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0o644)
    guard fd >= 0 else { throw TestError("open \(path): \(errno)") }
    defer { close(fd) }
    _ = hdr.withUnsafeBytes { write(fd, $0.baseAddress, 64) }
    guard ftruncate(fd, off_t(shoff + UInt64(shnum) * 64)) == 0 else { throw TestError("ftruncate: \(errno)") }
}

func fakeMapping(inode: UInt64, path: String = "/nonexistent") -> MapEntry {
    MapEntry(start: 0x1000, end: 0x2000, readable: true, writable: false, executable: false, shared: false,
             offset: 0, devMajor: 1, devMinor: 2, inode: inode, path: path)
}

@Suite struct ELFBoundsTests {
    @Test func parsedFilesKeepNoDescriptor() throws {
        // Other suites run in parallel and open files: a margin, far below the 200 a kept fd would add.
        let before = openDescriptorCount()
        let files = try (0..<200).map { _ in try ELFFile(path: "/bin/true") }
        #expect(openDescriptorCount() < before + 20)
        // The debug image opens the file again, reads it, and closes it.
        for f in files { _ = f.debugModule(name: "/bin/true", directory: .standard) }
        #expect(openDescriptorCount() < before + 20)
    }

    @Test func programHeadersOverTheKernelLimitAreRejected() throws {
        let dir = try TempDir()
        try writeSparseELF(dir.path + "/many-ph", phnum: 65535, shnum: 0)
        #expect(throws: ELFError.malformed("e_phnum 65535 > 1170")) { try ELFFile(path: dir.path + "/many-ph") }
        // 65535 section headers are read once and not kept: the file costs its program headers only.
        try writeSparseELF(dir.path + "/many-sh", phnum: 4, shnum: 65535)
        let f = try ELFFile(path: dir.path + "/many-sh")
        #expect(f.programHeaders.count == 4)
        #expect(f.memoryBytes < 4096)
        #expect(f.debugModule(name: "many-sh", directory: .standard) == nil)
    }

    @Test func cacheIsBoundedByEntriesAndBytes() throws {
        let cache = ELFCache(maxEntries: 3, maxBytes: 1 << 20)
        for inode in UInt64(1)...10 { _ = cache.file(for: fakeMapping(inode: inode)) { try? ELFFile(path: "/bin/true") } }
        #expect(cache.count == 3)
        // The most recently used stay: 8, 9, 10; using 8 again makes 9 the oldest.
        var opened = 0
        _ = cache.file(for: fakeMapping(inode: 8)) { opened += 1; return nil }
        #expect(opened == 0)
        _ = cache.file(for: fakeMapping(inode: 11)) { nil }
        _ = cache.file(for: fakeMapping(inode: 8)) { opened += 1; return nil }
        _ = cache.file(for: fakeMapping(inode: 9)) { opened += 1; return nil }
        #expect(opened == 1)

        // Bytes: debug modules count once loaded; over the bound, the older entries go.
        let small = ELFCache(maxEntries: 100, maxBytes: 64 << 10)
        let libc = try ownLibc()
        let first = small.file(for: fakeMapping(inode: 100)) { try? ELFFile(path: libc.filePath) }
        let second = small.file(for: fakeMapping(inode: 101)) { try? ELFFile(path: libc.filePath) }
        #expect(small.count == 2)
        #expect(first?.debugModule(name: libc.filePath, directory: .standard)?.hasSymbols == true)
        #expect(second?.debugModule(name: libc.filePath, directory: .standard)?.hasSymbols == true)
        #expect(small.count == 1, "libc's symbols are far over 64 KiB: only the entry that loaded last stays")
        #expect(small.bytes > 64 << 10)
    }

    @Test func filesNoClientMapsAreDropped() throws {
        let cache = ELFCache()
        let symbolizer = try Symbolizer(pid: getpid(), cache: cache)
        let libc = try ownLibc()
        _ = cache.file(for: libc) { try? ELFFile(path: libc.filePath) }
        _ = cache.file(for: fakeMapping(inode: 424242)) { nil }
        #expect(cache.count == 2)
        cache.retainOnly(mappedBy: [symbolizer])
        #expect(cache.count == 1)
        cache.retainOnly(mappedBy: [])
        #expect(cache.count == 0 && cache.bytes == 0)
    }
}

/// An ELF64 file with the given sections (name, type, flags, contents) after a section-name table,
/// and no program headers: what ELFDebugImage makes of a client's section headers.
func writeELFWithSections(_ path: String, _ sections: [(name: String, type: UInt32, flags: UInt64, contents: [UInt8])],
                          sizeOverride: [String: UInt64] = [:]) throws {
    var names: [UInt8] = [0]
    var nameOffsets: [UInt32] = []
    for s in [".shstrtab"] + sections.map(\.name) { nameOffsets.append(UInt32(names.count)); names += Array(s.utf8) + [0] }
    var body: [UInt8] = names
    var offsets: [UInt64] = []
    for s in sections { offsets.append(64 + UInt64(body.count)); body += s.contents }
    while body.count % 8 != 0 { body.append(0) }
    let shoff = 64 + UInt64(body.count), shnum = sections.count + 2
    func le(_ v: UInt64, _ n: Int) -> [UInt8] { (0..<n).map { UInt8(truncatingIfNeeded: v >> (8 * UInt64($0))) } }
    var hdr = [UInt8](repeating: 0, count: 64)
    hdr[0] = 0x7f; hdr[1] = 0x45; hdr[2] = 0x4c; hdr[3] = 0x46; hdr[4] = 2; hdr[5] = 1; hdr[6] = 1; hdr[16] = 3; hdr[18] = 62
    hdr[20] = 1
    hdr.replaceSubrange(40..<48, with: le(shoff, 8))
    hdr[52] = 64; hdr[58] = 64
    hdr.replaceSubrange(60..<62, with: le(UInt64(shnum), 2))
    hdr.replaceSubrange(62..<64, with: le(1, 2))
    func sh(_ name: UInt32, _ type: UInt32, _ flags: UInt64, _ offset: UInt64, _ size: UInt64) -> [UInt8] {
        le(UInt64(name), 4) + le(UInt64(type), 4) + le(flags, 8) + le(0, 8) + le(offset, 8) + le(size, 8) + le(0, 8) + le(1, 8) + le(0, 8)
    }
    var table = [UInt8](repeating: 0, count: 64)
    table += sh(nameOffsets[0], 3, 0, 64, UInt64(names.count))
    for (i, s) in sections.enumerated() {
        table += sh(nameOffsets[i + 1], s.type, s.flags, offsets[i], sizeOverride[s.name] ?? UInt64(s.contents.count))
    }
    let bytes = hdr + body + table
    let fd = open(path, O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0o644)
    guard fd >= 0 else { throw TestError("open \(path): \(errno)") }
    defer { close(fd) }
    guard bytes.withUnsafeBytes({ write(fd, $0.baseAddress, bytes.count) }) == bytes.count else { throw TestError("write") }
}

/// Issue 9 item 4 for elfutils: sizes a client's file declares never become allocations, and what
/// libelf parses is the daemon's checked copy.
@Suite struct DebugImageBoundsTests {
    static let PROGBITS: UInt32 = 1, SHF_COMPRESSED: UInt64 = 0x800

    @Test func compressedSectionsDeclaringHugeSizesAreZeroedNotAllocated() throws {
        let dir = try TempDir()
        // Elf64_Chdr: ELFCOMPRESS_ZLIB, reserved, ch_size 1 TiB, align 1; then garbage.
        let chdr: [UInt8] = [1, 0, 0, 0, 0, 0, 0, 0] + [0, 0, 0, 0, 0, 1, 0, 0] + [1, 0, 0, 0, 0, 0, 0, 0] + [0x78, 0x9c, 1, 2, 3]
        let zdebug: [UInt8] = Array("ZLIB".utf8) + [0, 0, 1, 0, 0, 0, 0, 0] + [0x78, 0x9c]
        try writeELFWithSections(dir.path + "/bomb", [(".debug_info", Self.PROGBITS, Self.SHF_COMPRESSED, chdr),
                                                      (".zdebug_line", Self.PROGBITS, 0, zdebug)])
        let image = try ELFDebugImage(file: try ELFFile.openRegular(dir.path + "/bomb"))
        #expect(image.memoryBytes < 4096, "declared sizes are not counted as held: \(image.memoryBytes)")
        // Zeroed in the copy libelf reads: libdw sees an invalid header and ignores the section.
        // The sections follow the 64-byte header and the 36 bytes of section names.
        let bytes = UnsafeRawBufferPointer(start: image.base, count: image.size)
        let debugInfo = 64 + 36, zdebugLine = debugInfo + chdr.count
        #expect(bytes[debugInfo..<(debugInfo + chdr.count)].allSatisfy { $0 == 0 })
        #expect(bytes[zdebugLine..<(zdebugLine + zdebug.count)].allSatisfy { $0 == 0 })
        // And the whole file through the symbolizer's path: no trap, nothing to resolve.
        let f = try ELFFile(path: dir.path + "/bomb")
        #expect(f.debugModule(name: dir.path + "/bomb", directory: .standard) == nil)
    }

    @Test func sectionsPastTheEndAndExtendedNumberingAreRefused() throws {
        let dir = try TempDir()
        try writeELFWithSections(dir.path + "/past-end", [(".debug_info", Self.PROGBITS, 0, [1, 2, 3, 4])],
                                 sizeOverride: [".debug_info": 1 << 20])
        #expect(throws: ELFError.malformed("range past end of file")) {
            try ELFDebugImage(file: try ELFFile.openRegular(dir.path + "/past-end"))
        }
        // e_shnum 0 with section headers: libelf would take the count from section 0, which the client wrote.
        try writeSparseELF(dir.path + "/extended", phnum: 1, shnum: 0)
        let fd = open(dir.path + "/extended", O_WRONLY)
        var shoff: UInt64 = 64 + 56
        _ = withUnsafeBytes(of: &shoff) { pwrite(fd, $0.baseAddress, 8, 40) }
        close(fd)
        #expect(throws: ELFError.unsupported("extended section numbering")) {
            try ELFDebugImage(file: try ELFFile.openRegular(dir.path + "/extended"))
        }
    }

    /// MiniDebugInfo that decompresses past the bound (an xz bomb: 140 MiB of zeros in a few KiB) is
    /// zeroed before libdwfl could decompress it; the program still symbolizes as it would without it.
    @Test func miniDebugInfoOverTheBoundIsIgnored() throws {
        let dir = try TempDir()
        let bomb = dir.path + "/bomb.xz", program = dir.path + "/prog"
        let xz = try run("/bin/sh", ["-c", "head -c 146800640 /dev/zero | xz -0 -T1 > \(bomb)"])
        try #require(xz.status == 0, "\(xz.output)")
        let objcopy = try run("/usr/bin/objcopy", ["--add-section", ".gnu_debugdata=" + bomb,
                                                   SymbolSites.path("symbol-sites.stripped"), program])
        try #require(objcopy.status == 0, "\(objcopy.output)")
        let image = try ELFDebugImage(file: try ELFFile.openRegular(program))
        #expect(image.memoryBytes < 1 << 20, "\(image.memoryBytes)")
        #expect(ELFDebugImage.xzDecompressedSize(UnsafeRawBufferPointer(start: nil, count: 0), limit: 1) == nil)
        let f = try ELFFile(path: program)
        let module = try #require(f.debugModule(name: program, directory: .standard))
        #expect(module.memoryBytes < 1 << 20)
    }
}
