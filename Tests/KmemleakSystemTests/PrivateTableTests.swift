// Private tables (KML_TABLE_PRIVATE, rendezvous fd=-1): read from the client's memory with
// process_vm_readv. The "client" here is this test process: a synthetic table copied into private
// anonymous memory between guard pages, as libkmemleak.so lays it out.
import CKmemleakABI
import Glibc
import Testing
@testable import KmemleakSystem

/// A synthetic table copied into a private anonymous mapping of this process (guard pages around it).
final class PrivateTableCopy {
    let table: SyntheticTable
    let reservation: UnsafeMutableRawPointer
    let base: UnsafeMutableRawPointer
    var size: Int { Int(table.totalSize) }

    init(_ caps: SyntheticTable.Capacities = .init(), flags: UInt32 = KML_TABLE_TRACKING | KML_TABLE_PRIVATE,
         fill: (SyntheticTable) -> Void = { $0.setObject(0, pointer: 0x1234000, size: 16, seq: 1) }) throws {
        let me = try Proc.stat(getpid())
        table = try SyntheticTable(caps, startTime: me.startTime)
        table.header.flags = flags
        table.writeHeader()
        fill(table)
        let total = Int(table.totalSize)
        guard let r = mmap(nil, total + 8192, PROT_NONE, MAP_PRIVATE | MAP_ANONYMOUS | MAP_NORESERVE, -1, 0), r != MAP_FAILED else {
            throw TestError("mmap: \(errno)")
        }
        reservation = r
        base = r + 4096
        guard mprotect(base, total, PROT_READ | PROT_WRITE) == 0 else { throw TestError("mprotect: \(errno)") }
        try copyIn()
    }

    deinit { munmap(reservation, size + 8192) }

    /// Copies the memfd's bytes into the private mapping: only the pages that hold data, so that the
    /// others stay untouched (not present), as in a real client.
    func copyIn() throws {
        var page = [UInt8](repeating: 0, count: 4096)
        for off in stride(from: 0, to: size, by: 4096) {
            let n = pread(table.fd, &page, 4096, off_t(off))
            guard n == 4096 else { throw TestError("pread: \(errno)") }
            if page.contains(where: { $0 != 0 }) { page.withUnsafeBytes { (base + off).copyMemory(from: $0.baseAddress!, byteCount: 4096) } }
        }
    }

    var address: UInt64 { UInt64(UInt(bitPattern: base)) }

    func rendezvous(size: UInt64? = nil) throws -> Rendezvous {
        Rendezvous(pid: getpid(), fd: -1, address: address, size: size ?? table.totalSize, startTime: try Proc.stat(getpid()).startTime)
    }
}

@Suite struct PrivateTableTests {
    @Test func aPrivateTableIsReadFromTheProcessMemory() throws {
        let c = try PrivateTableCopy { s in
            s.setTrace(1, [0x401000, 0x402000])
            s.setComm(1, "worker")
            s.setObject(0, pointer: 0x1234000, size: 16, seq: 1, trace: 1, comm: 1)
            s.setObject(5, pointer: 0x5678000, size: 32, seq: 2)
        }
        let t = try ClientTable.open(try c.rendezvous())
        #expect(t.pid == getpid() && t.inode == 0)
        var objects: [ObjectRecord] = []
        try t.readObjects { objects.append($0) }
        #expect(objects.map(\.pointer) == [0x1234000, 0x5678000])
        #expect(try t.frames(1) == [0x401000, 0x402000])
        #expect(try t.comm(1) == "worker")
        #expect(t.isStillMapped)
        // The daemon's fields are written into the client's memory.
        try t.setDaemonScans(7)
        let offset = MemoryLayout<kml_header>.offset(of: \kml_header.daemon_scans)!
        #expect(c.base.load(fromByteOffset: offset, as: UInt64.self) == 7)
    }

    /// Pages of the table never written are not present: skipped like a memfd's holes (a huge
    /// claimed `objects_used` costs pagemap reads, not reads of zeros).
    @Test func untouchedPagesAreSkipped() throws {
        var caps = SyntheticTable.Capacities()
        caps.objects = 1 << 16
        let c = try PrivateTableCopy(caps) { s in s.setObject(60000, pointer: 0x1234000, size: 16, seq: 1) }
        let t = try ClientTable.open(try c.rendezvous())
        var objects: [ObjectRecord] = []
        let stats = try t.readObjects { objects.append($0) }
        #expect(objects.map(\.slot) == [60000])
        #expect(stats.slots < 2 * ClientTable.chunkSlots, "\(stats)")
    }

    @Test func aRangeThatIsNotExactlyOnePrivateAnonymousMappingIsRefused() throws {
        let c = try PrivateTableCopy()
        // Not adopted: not a table, or (shared memory, where a memfd table would be) no table any more.
        func refused(_ r: Rendezvous) -> Bool {
            do { _ = try ClientTable.open(r); return false } catch {
                switch error {
                case .notATable, .stale: return true
                default: return false
                }
            }
        }
        // Smaller or larger than the mapping, or starting inside it.
        #expect(refused(try c.rendezvous(size: c.table.totalSize - 4096)))
        #expect(refused(try c.rendezvous(size: c.table.totalSize + 4096)))
        var inside = try c.rendezvous(size: c.table.totalSize - 4096)
        inside.address += 4096
        #expect(refused(inside))

        // Shared anonymous memory holding the same bytes.
        let shared = try #require(mmap(nil, c.size, PROT_READ | PROT_WRITE, MAP_SHARED | MAP_ANONYMOUS, -1, 0))
        defer { munmap(shared, c.size) }
        shared.copyMemory(from: c.base, byteCount: c.size)
        var r = try c.rendezvous()
        r.address = UInt64(UInt(bitPattern: shared))
        #expect(refused(r))

        // A private mapping of a file holding the same bytes.
        let dir = try TempDir()
        let path = dir.path + "/table"
        let fd = open(path, O_RDWR | O_CREAT | O_CLOEXEC, 0o600)
        defer { close(fd) }
        #expect(write(fd, c.base, c.size) == c.size)
        let file = try #require(mmap(nil, c.size, PROT_READ | PROT_WRITE, MAP_PRIVATE, fd, 0))
        defer { munmap(file, c.size) }
        r.address = UInt64(UInt(bitPattern: file))
        #expect(refused(r))
    }

    @Test func aHeaderWithoutThePrivateFlagIsRefused() throws {
        let c = try PrivateTableCopy(flags: KML_TABLE_TRACKING)
        #expect { try ClientTable.open(try c.rendezvous()) } throws: { e in
            if case .notATable = e as? TableError { true } else { false }
        }
    }

    /// The client maps a file over its table after adoption: a file page is never read. The file holds
    /// a valid copy of the table, so reading it would succeed: not present, it reads as zeros (no
    /// magic); present (its page cache mapped by a touch), it is refused.
    @Test func aFileMappedOverTheTableIsNeverRead() throws {
        let c = try PrivateTableCopy()
        let t = try ClientTable.open(try c.rendezvous())
        let dir = try TempDir()
        let fd = open(dir.path + "/table", O_RDWR | O_CREAT | O_CLOEXEC, 0o600)
        defer { close(fd) }
        #expect(write(fd, c.base, c.size) == c.size)
        let over = mmap(c.base, c.size, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_FIXED, fd, 0)
        #expect(over == c.base)
        #expect(throws: TableError.badMagic(0)) { try t.header() }
        #expect(!t.isStillMapped)
        #expect(c.base.load(as: UInt64.self) == KML_MAGIC) // touched: the file's page is mapped now
        #expect { try t.header() } throws: { e in if case .notATable = e as? TableError { true } else { false } }
        #expect { try t.setDaemonScans(1) } throws: { e in if case .notATable = e as? TableError { true } else { false } }
    }

    /// The client replaces its table with inaccessible memory (a munmap would free the range for the
    /// other tests of this process): typed errors, no trap.
    @Test func aTableReplacedAfterOpenGivesTypedErrors() throws {
        let c = try PrivateTableCopy()
        let t = try ClientTable.open(try c.rendezvous())
        #expect(mmap(c.base, c.size, PROT_NONE, MAP_PRIVATE | MAP_ANONYMOUS | MAP_FIXED | MAP_NORESERVE, -1, 0) == c.base)
        #expect(throws: TableError.badMagic(0)) { try t.header() }
        #expect(throws: TableError.badMagic(0)) { try t.readObjects { _ in } }
        #expect(!t.isStillMapped)
        #expect { try ClientTable.open(try c.rendezvous()) } throws: { e in
            if case .notATable = e as? TableError { true } else { false }
        }
    }

    @Test func rendezvousLinesAnnounceAPrivateTableWithFdMinusOne() throws {
        let r = try #require(Rendezvous.parse("pid=12 fd=-1 addr=7f0000001000 size=8192 start=5\n"))
        #expect(r.isPrivate && r.line == "pid=12 fd=-1 addr=7f0000001000 size=8192 start=5\n")
        #expect(Rendezvous.parse("pid=12 fd=-2 addr=7f0000001000 size=8192 start=5\n") == nil)
    }
}
