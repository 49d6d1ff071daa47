// Where a client's table lives: a memfd (read with pread) or the client's own private anonymous
// memory (read with process_vm_readv: the shim's default, so that fork() copies it on write).
import CKmemleakSys
import Glibc

/// The bytes of one table, at offsets from its start. Every read is bounded by `size()`.
enum TableStorage: Sendable {
    case file(FileHandleFD)
    case memory(PrivateTableMemory)

    /// The memfd's size now, or the private mapping's length (fixed when it was checked).
    func size() throws(TableError) -> UInt64 {
        switch self {
        case .file(let f):
            do { return UInt64(try f.fstat().st_size) } catch { throw .system(error) }
        case .memory(let m):
            return m.length
        }
    }

    /// Reads `buffer.count` bytes at `offset` (fewer only past the end).
    func read(into buffer: UnsafeMutableRawBufferPointer, offset: UInt64) throws(TableError) -> Int {
        switch self {
        case .file(let f):
            do { return try f.pread(into: buffer, offset: offset) } catch { throw .system(error) }
        case .memory(let m):
            return try m.read(into: buffer, offset: offset)
        }
    }

    /// The first offset >= `offset` that may hold data (a memfd's holes and a mapping's untouched
    /// pages read as zeros, i.e. FREE slots); nil when nothing from `offset` on does.
    func nextData(from offset: UInt64) -> UInt64? {
        switch self {
        case .file(let f):
            let d = ckml_seek_data(f.fd, Int64(bitPattern: offset))
            if d < 0 { return errno == ENXIO ? nil : offset }
            return UInt64(d)
        case .memory(let m):
            return m.nextData(from: offset)
        }
    }

    func write(_ buffer: UnsafeRawBufferPointer, offset: UInt64) throws(TableError) {
        switch self {
        case .file(let f):
            do { try f.pwrite(buffer, offset: offset) } catch { throw .system(error) }
        case .memory(let m):
            try m.write(buffer, offset: offset)
        }
    }
}

/// A client's private table: [address, address + length) of its memory, checked in its maps to be
/// exactly one private anonymous mapping when opened.
///
/// The client can change its mappings at any time, so every access asks /proc/PID/pagemap first and
/// touches only pages that are present (or swapped out) and anonymous: a page that was never written
/// reads as zeros here without a fault in the client, and a page of a file (the client mapped one
/// over the table: a FUSE server could answer never) is refused with `notATable`, never read. The
/// client could still remap between the pagemap read and process_vm_readv (microseconds): the scan
/// of its heap has the same window. An unmapped table reads as zeros (pagemap has no entries), a
/// range that vanished mid-read as a short read: typed errors, never a trap.
final class PrivateTableMemory: Sendable {
    let pid: Int32
    let address: UInt64
    let length: UInt64
    private let pagemap: FileHandleFD

    static let pageSize: UInt64 = 4096
    /// pagemap bits: 63 present, 62 swapped, 61 file page or shared anonymous.
    static let presentBit: UInt64 = 1 << 63, swappedBit: UInt64 = 1 << 62, filePageBit: UInt64 = 1 << 61
    /// Pages looked up per pagemap read.
    static let pagemapChunk = 4096

    init(pid: Int32, address: UInt64, length: UInt64) throws(TableError) {
        guard address % Self.pageSize == 0, length > 0, !address.addingReportingOverflow(length).overflow else {
            throw .notATable(path: "/proc/\(pid)/maps", reason: "range 0x\(String(address, radix: 16))+\(length)")
        }
        self.pid = pid
        self.address = address
        self.length = length
        do { pagemap = try FileHandleFD.open("/proc/\(pid)/pagemap", O_RDONLY) } catch { throw .system(error) }
    }

    /// pagemap entries of `count` pages from `firstPage` (a page number); short when pagemap is: the
    /// process's memory is gone (it exited: its table went with it, unlike a memfd's).
    private func entries(_ firstPage: UInt64, _ count: Int, _ out: inout [UInt64]) throws(TableError) -> Int {
        if out.count < count { out = [UInt64](repeating: 0, count: count) }
        let (offset, overflow) = firstPage.multipliedReportingOverflow(by: 8)
        guard !overflow else { return 0 }
        let f = pagemap
        let got = out.withUnsafeMutableBytes { b in
            Result { () throws(SystemError) -> Int in try f.pread(into: UnsafeMutableRawBufferPointer(rebasing: b[0..<(count * 8)]), offset: offset) }
        }
        do { return try got.get() / 8 } catch { throw .system(error) }
    }

    private func refused(_ page: UInt64) -> TableError {
        .notATable(path: "/proc/\(pid)/pagemap", reason: "page 0x\(String(page * Self.pageSize, radix: 16)) of the table is not anonymous private memory")
    }

    private func shortRead(_ remote: UInt64, _ len: Int, _ got: Int, _ call: String) -> TableError {
        if got < 0 && errno == ESRCH { return .stale(pid: pid, reason: "process gone") }
        return .system(SystemError(call: call, errno: got < 0 ? errno : EFAULT,
                            context: "pid \(pid) 0x\(String(remote, radix: 16))+\(len): \(max(got, 0)) bytes"))
    }

    /// Visits [offset, offset + count) of the table page by page: `hole` for parts of pages that are
    /// not present (nor swapped), `run` for maximal runs of present anonymous pages (local offset,
    /// remote address, length). A present file page throws.
    private func walk(_ offset: UInt64, _ count: Int, hole: (Int, Int) -> Void,
                      run: (Int, UInt64, Int) throws(TableError) -> Void) throws(TableError) {
        guard count > 0 else { return }
        let start = address + offset, end = start + UInt64(count)
        var e: [UInt64] = []
        var page = start / Self.pageSize
        let lastPage = (end - 1) / Self.pageSize
        var pending: (local: Int, remote: UInt64, len: Int)? = nil
        while page <= lastPage {
            let n = min(Self.pagemapChunk, Int(lastPage - page + 1))
            guard try entries(page, n, &e) == n else { throw .stale(pid: pid, reason: "process gone (its pagemap is empty)") }
            for i in 0..<n {
                let p = page + UInt64(i)
                let lo = max(p * Self.pageSize, start), hi = min((p + 1) * Self.pageSize, end)
                let local = Int(lo - start), len = Int(hi - lo)
                let entry = e[i]
                if entry & (Self.presentBit | Self.swappedBit) == 0 {
                    if let r = pending { try run(r.local, r.remote, r.len); pending = nil }
                    hole(local, len)
                    continue
                }
                guard entry & Self.filePageBit == 0 else { throw refused(p) }
                if let r = pending, r.local + r.len == local { pending = (r.local, r.remote, r.len + len) }
                else {
                    if let r = pending { try run(r.local, r.remote, r.len) }
                    pending = (local, lo, len)
                }
            }
            page += UInt64(n)
        }
        if let r = pending { try run(r.local, r.remote, r.len) }
    }

    func read(into buffer: UnsafeMutableRawBufferPointer, offset: UInt64) throws(TableError) -> Int {
        guard offset < length, let base = buffer.baseAddress else { return 0 }
        let n = Int(min(UInt64(buffer.count), length - offset))
        let pid = self.pid
        try walk(offset, n, hole: { local, len in memset(base + local, 0, len) }) { (local, remote, len) throws(TableError) in
            let got = ckml_process_vm_read(pid, base + local, len, remote)
            guard got == len else { throw shortRead(remote, len, got, "process_vm_readv") }
        }
        return n
    }

    /// Writes only into present anonymous pages (the header's daemon fields): a hole is refused
    /// rather than faulted in.
    func write(_ buffer: UnsafeRawBufferPointer, offset: UInt64) throws(TableError) {
        guard let base = buffer.baseAddress, offset < length, UInt64(buffer.count) <= length - offset else {
            throw .truncated(fileSize: length, totalSize: offset &+ UInt64(buffer.count))
        }
        let start = address + offset
        var holes = 0
        try walk(offset, buffer.count, hole: { _, _ in holes += 1 }) { (_, _, _) throws(TableError) in }
        guard holes == 0 else { throw refused(start / Self.pageSize) }
        let got = ckml_process_vm_write(pid, base, buffer.count, start)
        guard got == buffer.count else { throw shortRead(start, buffer.count, got, "process_vm_writev") }
    }

    func nextData(from offset: UInt64) -> UInt64? {
        guard offset < length else { return nil }
        // PAGEMAP_SCAN (Linux 6.7) finds it in one walk of the page tables; else pagemap, page by page
        // (a huge sparse claim then costs 8 bytes of pagemap per page).
        var found: UInt64 = 0
        let from = (address + offset) & ~(Self.pageSize - 1), to = (address + length + Self.pageSize - 1) & ~(Self.pageSize - 1)
        switch ckml_pagemap_first_present(pagemap.fd, from, to, &found) {
        case 0: return nil
        case 1 where found >= from && found < address + length: return max(offset, found - address)
        case 1: return offset // outside what was asked: cannot tell, read it
        default: break
        }
        var e: [UInt64] = []
        var page = (address + offset) / Self.pageSize
        let lastPage = (address + length - 1) / Self.pageSize
        while page <= lastPage {
            let n = min(Self.pagemapChunk, Int(lastPage - page + 1))
            guard let got = try? entries(page, n, &e), got == n else { return offset } // cannot tell: read it
            if let i = e[0..<n].firstIndex(where: { $0 & (Self.presentBit | Self.swappedBit) != 0 }) {
                return max(offset, (page + UInt64(i)) * Self.pageSize - address)
            }
            page += UInt64(n)
        }
        return nil
    }
}
