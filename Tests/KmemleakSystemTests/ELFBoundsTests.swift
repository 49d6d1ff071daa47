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
