import CKmemleakABI
import Glibc
import KmemleakEngine
@testable import KmemleakSystem
import Testing

/// Waits (bounded) until `cond` holds, re-evaluating it; the table is updated by the client
/// synchronously, so this is only for events the client reports before finishing them (threads).
func eventually(timeout: Double = 10, _ cond: () throws -> Bool) rethrows -> Bool {
    let deadline = ChildProcess.now() + timeout
    while ChildProcess.now() < deadline {
        if try cond() { return true }
        sched_yield()
    }
    return try cond()
}

@Suite(.enabled(if: Shim.available, "needs `make shim` (libkmemleak.so)"))
struct ShimFixtureTests {
    let page = UInt64(sysconf(Int32(_SC_PAGESIZE)))

    @Test func mallocReallocFree() throws {
        let c = try ShimFixture.start()
        let t = try c.table()
        let a = try c.ask("malloc 100", "OBJ")[0]
        let b = try c.ask("malloc 200", "OBJ")[0]
        var live = try liveObjects(t)
        #expect(live[a]?.size == 100 && live[b]?.size == 200)
        #expect(live[a]!.seq < live[b]!.seq)
        // realloc to a size that must move.
        let a2 = try c.ask("realloc \(String(a, radix: 16)) 1000000", "OBJ")[0]
        live = try liveObjects(t)
        #expect(a2 != a && live[a2]?.size == 1_000_000 && live[a] == nil)
        _ = try c.child.request("free \(String(b, radix: 16))", expect: "OK")
        live = try liveObjects(t)
        #expect(live[b] == nil && live[a2] != nil)
    }

    /// The object index starts small and grows in place as objects accumulate (1024 entries, x2
    /// past half full): 150000 allocations take it through at least eight growths, and every object is still
    /// found by free() afterwards.
    /// (memalign's blocks are in the index; malloc's carry a header, the same test for them.)
    @Test(arguments: [" aligned", ""])
    func objectIndexGrowsWithTheObjectCount(blocks: String) throws {
        let c = try ShimFixture.start()
        let t = try c.table()
        let kept = Set(try c.many("many 150000" + blocks))
        #expect(kept.count == 75000)
        let forty = Set(try liveObjects(t).values.filter { $0.size == 40 }.map(\.pointer))
        // the differences, not the sets: 75000 addresses would drown the report
        #expect(forty.subtracting(kept).isEmpty && kept.subtracting(forty).isEmpty)
        _ = try c.child.request("freemany", expect: "OK", timeout: 60)
        #expect(try liveObjects(t).values.filter { $0.size == 40 }.isEmpty)
    }

    /// The object index under concurrent churn: four threads allocate (malloc(3000 + thread)) and free
    /// random blocks of their own at once, from a barrier, while the index grows from its first 1024
    /// entries and deletes shift entries back under every stripe. Afterwards the table's LIVE records
    /// of those sizes are exactly the blocks still held, each with its thread's size, and freeing them
    /// all leaves none (an entry lost or left behind by a growth or a shift would show here).
    /// (memalign's blocks in the index; malloc's, with headers, under the same churn.)
    @Test(arguments: [" aligned", ""])
    func objectIndexKeepsEveryObjectUnderConcurrentChurn(blocks: String) throws {
        let c = try ShimFixture.start()
        let t = try c.table()
        let kept = try c.many("churn 4 40000" + blocks)
        #expect(kept.count > 40000 && Set(kept).count == kept.count)
        let churned = try liveObjects(t).values.filter { (3000..<3004).contains($0.size) }
        let found = Set(churned.map(\.pointer)), want = Set(kept)
        // the differences, not the sets: 50000 addresses would drown the report
        #expect(found.subtracting(want).isEmpty && want.subtracting(found).isEmpty)
        _ = try c.child.request("freemany", expect: "OK", timeout: 60)
        #expect(try liveObjects(t).values.filter { (3000..<3004).contains($0.size) }.isEmpty)
    }

    /// The densest heap a 16-byte-aligned allocator makes (an object every 16 bytes of 1 MiB): each
    /// 4 KiB span fills its whole run of the index, so every run that another span's hash also
    /// picked overflows into the next. All 65536 objects are indexed (the table's LIVE records are
    /// exactly them, tracking stays on), and all are found again by kmemleak_free.
    @Test func theDensestHeapIsIndexedWhole() throws {
        let c = try ShimFixture.start()
        let t = try c.table()
        let reply = try c.child.request("dense 65536", expect: "DENSE", timeout: 60).split(separator: " ")
        #expect(reply.count == 3 && reply[1] == "65536")
        let pool = try #require(UInt64(reply[2].dropFirst(2), radix: 16))
        let want = Set((0..<UInt64(65536)).map { pool + 16 * $0 })
        let found = Set(try liveObjects(t).values.filter { $0.size == 16 && want.contains($0.pointer) }.map(\.pointer))
        // the differences, not the sets: 65536 addresses would drown the report
        #expect(want.subtracting(found).isEmpty && found.subtracting(want).isEmpty)
        #expect(try !t.header().isDisabled)
        _ = try c.child.request("undense", expect: "OK", timeout: 60)
        #expect(try liveObjects(t).values.filter { want.contains($0.pointer) }.isEmpty)
    }

    /// Pointers chosen to land in one domain of the object index (kmemleak_alloc of addresses in
    /// the spans whose hashes share their top bits) fill it at the largest size the capacity allows: tracking turns
    /// itself off with its reason, and the program goes on (its malloc and free still work).
    @Test func aFullIndexDomainDisablesTrackingWithItsReason() throws {
        let c = try ShimClient(try ShimFixture.path.get(), env: ["KMEMLEAK_MAX_OBJECTS": "1024"])
        _ = try c.child.waitFor("READY ")
        let t = try c.table()
        // 256 entries a domain at the largest size (4096 entries, 16 domains): the 257th cannot be stored
        #expect(try c.child.request("collide 600", expect: "COLLIDED") == "COLLIDED 600")
        let header = try t.header()
        #expect(header.isDisabled && header.disabledReason == "object index full")
        #expect(c.child.stderr == "kmemleak: object index full, tracking disabled\n")
        let p = try c.ask("malloc 100", "OBJ")[0]
        _ = try c.child.request("free \(String(p, radix: 16))", expect: "OK")
    }

    /// free() writes the record's next state without reading it (the index holds the version): the
    /// versions of a slot still go up by one a write, through an annotation in between.
    @Test func releaseContinuesTheRecordsVersion() throws {
        let c = try ShimFixture.start()
        let t = try c.table()
        let p = try c.ask("malloc 4321", "OBJ")[0]
        let created = try #require(try liveObjects(t)[p])
        _ = try c.child.request("notleak \(String(p, radix: 16))", expect: "OK")
        let annotated = try #require(try liveObjects(t)[p])
        #expect(annotated.slot == created.slot && annotated.version == created.version + 1)
        _ = try c.child.request("free \(String(p, radix: 16))", expect: "OK")
        var state: UInt32 = 0
        let offset = t.openedHeader.objects.offset + UInt64(created.slot) * UInt64(MemoryLayout<kml_object>.size)
        #expect(try withUnsafeMutableBytes(of: &state) { try t.storage.read(into: $0, offset: offset) } == 4)
        #expect(state == (created.version + 2) << KML_STATE_VERSION_SHIFT | KML_STATE_FREE)
        #expect(try liveObjects(t)[p] == nil)
    }

    /// The stack depot starts with 1024 buckets and grows x4 in place: 3000 distinct stacks take it
    /// past 1024 traces; each gets its own trace id, and the same stacks allocated again after the
    /// growth find the same ids (a broken split makes the second round add new traces).
    @Test func stackDepotGrowsAndFindsItsTracesAgain() throws {
        let c = try ShimFixture.start()
        let t = try c.table()
        func round() throws -> [UInt32] {
            let addrs = try c.many("stacks 3000")
            #expect(addrs.count == 3000)
            let live = try liveObjects(t)
            let ids = addrs.map { live[$0]?.traceId ?? 0 }
            _ = try c.child.request("freemany", expect: "OK", timeout: 60)
            return ids
        }
        let first = try round()
        #expect(!first.contains(0))
        #expect(Set(first).count == 3000)
        #expect(try round() == first)
    }

    @Test func mmapAndPartialMunmap() throws {
        let c = try ShimFixture.start()
        let t = try c.table()
        let m = try c.ask("mmap \(4 * page)", "OBJ")[0]
        var live = try liveObjects(t)
        #expect(live[m]?.size == 4 * page && live[m]?.kind == KML_KIND_MMAP)
        // Unmap the second page: [m, +1 page) and [m + 2 pages, +2 pages) remain.
        _ = try c.child.request("munmap \(String(m + page, radix: 16)) \(page)", expect: "OK 0")
        live = try liveObjects(t)
        #expect(live[m]?.size == page)
        #expect(live[m + 2 * page]?.size == 2 * page)
        #expect(live[m + page] == nil)
        _ = try c.child.request("munmap \(String(m, radix: 16)) \(4 * page)", expect: "OK 0")
        live = try liveObjects(t)
        #expect(live[m] == nil && live[m + 2 * page] == nil)
    }

    @Test func threadsAppearAndDisappear() throws {
        let c = try ShimFixture.start()
        let t = try c.table()
        let before = try t.readThreads()
        #expect(before.contains { $0.tid == c.pid })
        let line = try c.child.request("thread", expect: "THREAD ")
        let tid = try #require(Int32(line.dropFirst(7)))
        let th = try #require(try t.readThreads().first { $0.tid == tid })
        #expect(th.stackHi > th.stackLo && th.stackHi - th.stackLo >= 64 * 1024)
        #expect(th.tlsHi > th.tlsLo)
        #expect(try Proc.tasks(c.pid).contains(tid))
        let roots = try t.roots(cache: ELFCache())
        #expect(roots.contains { $0.kind == .stack && $0.start == th.stackLo && $0.end == th.stackHi })
        #expect(roots.contains { $0.kind == .tls && $0.start == th.tlsLo })
        _ = try c.child.request("join", expect: "JOINED")
        #expect(try eventually { try !t.readThreads().contains { $0.tid == tid } })
    }

    /// Both kinds of table: the private one fork() copies, the memfd one the parent snapshots.
    @Test(arguments: ["private", "memfd"])
    func forkGivesTheChildItsOwnTable(kind: String) throws {
        let c = try ShimFixture.start(env: ["KMEMLEAK_TABLE": kind])
        let parentTable = try c.table()
        let a = try c.ask("malloc 123", "OBJ")[0]
        let (childPid, childObj, forked) = try c.fork()
        defer { kill(childPid, SIGKILL) }
        #expect(childPid == forked)
        let childTable: ClientTable
        if kind == "private" {
            // No rendezvous file: the daemon's /proc discovery finds the child's copy of the table, and
            // only a daemon of the run directory its header names adopts it.
            #expect(access(c.dir.path + "/\(childPid).client", F_OK) != 0)
            let other = try TempDir()
            #expect(!ProcessDiscovery(runDirectory: other.path).scan(known: []).adopted.contains { $0.pid == childPid })
            let found = ProcessDiscovery(runDirectory: c.dir.path).scan(known: [parentTable.id])
            #expect(!found.adopted.contains { $0.pid == c.pid })
            childTable = try #require(found.adopted.first { $0.pid == childPid }, "failed: \(found.failed)")
            // `--no-discover-proc`: only children of adopted clients are looked at.
            let children = ProcessDiscovery(runDirectory: c.dir.path).scan(known: [parentTable.id], childrenOf: [c.pid])
            #expect(children.adopted.map(\.pid) == [childPid])
            let strangers = ProcessDiscovery(runDirectory: c.dir.path).scan(known: [parentTable.id], childrenOf: [getpid()])
            #expect(strangers.adopted.isEmpty)
        } else {
            childTable = try ClientTable.open(try Rendezvous.read(path: c.dir.path + "/\(childPid).client"))
        }
        let r = try #require(childTable.rendezvous)
        let childStart = try Proc.stat(childPid).startTime
        #expect(childTable.pid == childPid && childTable.openedHeader.startTime == childStart)
        // At the parent's address: the copy fork() made (private memory, no file), or the snapshot.
        #expect(r.isPrivate == (kind == "private") && r.address == parentTable.rendezvous?.address)
        #expect((childTable.openedHeader.flags & KML_TABLE_PRIVATE != 0) == (kind == "private"))
        #expect(childTable.inode != parentTable.inode || kind == "private")
        let childLive = try liveObjects(childTable)
        let parentLive = try liveObjects(parentTable)
        // The child inherited the parent's objects and has its own; the parent does not see the child's.
        #expect(childLive[a]?.size == 123)
        #expect(childLive[childObj]?.size == 777)
        #expect(parentLive[a]?.size == 123)
        #expect(parentLive[childObj]?.size != 777)
        // The child's threads: only the forking thread, with the child's tid.
        #expect(try childTable.readThreads().map(\.tid) == [childPid])
    }

    /// A private table's child that exits through exit() (the shim's destructor runs) leaves nothing in
    /// the run directory, and its parent's file stays.
    @Test func anExitingForkedChildLeavesNothingBehind() throws {
        let c = try ShimFixture.start()
        // the client's stderr is kept there too
        func published() throws -> [String] {
            try RunDirectory(path: c.dir.path).names().filter { $0.hasSuffix(".client") || $0.hasSuffix(".tmp") }.sorted()
        }
        #expect(try published() == ["\(c.pid).client"])
        let line = try c.child.request("forkexit", expect: "REAPED ")
        #expect(line.hasSuffix(" 0"), "\(line)")
        #expect(try published() == ["\(c.pid).client"])
    }

    /// A fork whose snapshot cannot be made (a memfd table, no file descriptor for the child's
    /// memfd): the child stops tracking and says why with the errno; the parent's table is untouched
    /// by it and the parent goes on tracking. (A private table needs no snapshot.)
    @Test func forkWithoutAFileDescriptorLeavesTheChildUntracked() throws {
        let c = try ShimFixture.start(env: ["KMEMLEAK_TABLE": "memfd"])
        let parentTable = try c.table()
        _ = try c.child.request("nofds", expect: "OK 0")
        let (childPid, childObj, forked) = try c.fork()
        defer { kill(childPid, SIGKILL) }
        #expect(childPid == forked)
        let said = "kmemleak: fork: memfd_create failed (errno \(EMFILE)), tracking disabled"
        #expect(eventually { c.child.stderr.contains(said) }, "stderr: \(c.child.stderr)")
        #expect(access(c.dir.path + "/\(childPid).client", F_OK) != 0)
        let a = try c.ask("malloc 123", "OBJ")[0]
        let parentLive = try liveObjects(parentTable)
        #expect(parentLive[a]?.size == 123)
        #expect(parentLive[childObj]?.size != 777)
        #expect(try parentTable.readThreads().map(\.tid) == [c.pid])
    }

    @Test func annotations() throws {
        let c = try ShimFixture.start()
        let t = try c.table()
        let n = try c.ask("malloc 64", "OBJ")[0], i = try c.ask("malloc 64", "OBJ")[0]
        let s = try c.ask("malloc 64", "OBJ")[0], ar = try c.ask("malloc 256", "OBJ")[0], tr = try c.ask("malloc 64", "OBJ")[0]
        _ = try c.child.request("notleak \(String(n, radix: 16))", expect: "OK")
        _ = try c.child.request("ignore \(String(i, radix: 16))", expect: "OK")
        _ = try c.child.request("noscan \(String(s, radix: 16))", expect: "OK")
        _ = try c.child.request("area \(String(ar, radix: 16)) 16 32", expect: "OK")
        _ = try c.child.request("transient \(String(tr, radix: 16))", expect: "OK")
        let live = try liveObjects(t)
        #expect(live[n]?.minCount == 0)
        #expect(live[i]?.minCount == -1)
        #expect(live[s]?.noScan == true && live[s]?.minCount == 1)
        #expect(live[ar]?.hasAreas == true)
        #expect(live[tr]?.transientGen == 1)
        let o = try #require(live[ar])
        let areas = try t.readAreas().filter { $0.objectIndex == o.slot && $0.objectSeq == o.seq }
        #expect(areas.map { [$0.start, $0.size] } == [[ar + 16, 32]])
    }

    /// The 16-byte header in front of every tracked malloc block is not the program's: its usable size
    /// excludes it, filling that whole size corrupts nothing glibc checks at free, calloc zeroes what it
    /// returns, realloc(p, 0) frees as glibc's does, and memalign's blocks (no header) are tracked and freed.
    @Test func blockHeadersAreInvisibleToTheProgram() throws {
        let c = try ShimFixture.start()
        let t = try c.table()
        for size: UInt64 in [0, 1, 8, 9, 24, 25, 100, 4096, 300_000] {
            let p = try c.ask("malloc \(size)", "OBJ")[0]
            #expect(p % 16 == 0)
            let usable = try #require(UInt64(try c.child.request("usable \(String(p, radix: 16))", expect: "USABLE ")
                .split(separator: " ")[1]))
            // glibc's own usable size for that request (request2size - 8): the chunk ends where it would
            // without the shim, which the daemon's allocator-data rule relies on
            if size < 131_072 {
                #expect(usable == max(32, (size + 23) & ~15) - 8, "size \(size): usable \(usable)")
            } else {
                #expect(usable >= size && usable < size + 2 * page, "size \(size): usable \(usable)")
            }
            _ = try c.child.request("fill \(String(p, radix: 16)) \(usable)", expect: "OK")
            #expect(try liveObjects(t)[p]?.size == size)
            _ = try c.child.request("free \(String(p, radix: 16))", expect: "OK")
            #expect(try liveObjects(t)[p] == nil)
        }
        let z = try c.child.request("calloc 100 7", expect: "OBJ ").split(separator: " ")
        let zp = try #require(hexArg(z[1]))
        let zsize = try liveObjects(t)[zp]?.size
        #expect(z[2] == "0" && zsize == 700)
        let r = try c.ask("malloc 50", "OBJ")[0]
        #expect(try c.child.request("realloc \(String(r, radix: 16)) 0", expect: "OBJ ") == "OBJ (nil)")
        #expect(try liveObjects(t)[r] == nil)
        let m = try c.ask("memalign 256 100", "OBJ")[0]
        let msize = try liveObjects(t)[m]?.size
        #expect(m % 256 == 0 && msize == 100)
        _ = try c.child.request("free \(String(m, radix: 16))", expect: "OK")
        #expect(try liveObjects(t)[m] == nil)
        #expect(try c.ask("malloc 8", "OBJ").count == 1)  // still alive
    }

    /// The annotation API on malloc blocks, which it finds through their headers: kmemleak_free releases
    /// the record (the block's later free() then releases nothing else), kmemleak_free_part keeps the
    /// parts, and the part at the block's start goes with the block's free().
    @Test func freeAndFreePartOfMallocBlocks() throws {
        let c = try ShimFixture.start()
        let t = try c.table()
        let a = try c.ask("malloc 64", "OBJ")[0], b = try c.ask("malloc 128", "OBJ")[0]
        let other = try c.ask("malloc 64", "OBJ")[0]
        _ = try c.child.request("kfree \(String(a, radix: 16))", expect: "OK")
        #expect(try liveObjects(t)[a] == nil)
        _ = try c.child.request("free \(String(a, radix: 16))", expect: "OK")
        _ = try c.child.request("freepart \(String(b, radix: 16)) 16 32", expect: "OK")
        var live = try liveObjects(t)
        #expect(live[b]?.size == 16 && live[b + 48]?.size == 80 && live[other]?.size == 64)
        _ = try c.child.request("free \(String(b, radix: 16))", expect: "OK")
        live = try liveObjects(t)
        #expect(live[b] == nil && live[b + 48]?.size == 80 && live[other]?.size == 64)
    }

    /// Pointers that are no malloc block (a page whose page before is unmapped, where a header read
    /// would fault) are looked up without faulting; under a seccomp filter the API finds malloc blocks
    /// through the table instead of with process_vm_readv.
    @Test(arguments: [false, true])
    func annotationsOfPointersWithoutAHeaderNeverFault(seccomp: Bool) throws {
        let c = try ShimFixture.start()
        let t = try c.table()
        if seccomp { _ = try c.child.request("seccomp", expect: "OK 0") }
        let g = try c.ask("guarded", "PAGE")[0]
        for cmd in ["notleak", "ignore", "noscan", "transient", "kfree"] {
            _ = try c.child.request("\(cmd) \(String(g, radix: 16))", expect: "OK")
        }
        _ = try c.child.request("area \(String(g, radix: 16)) 0 16", expect: "OK")
        _ = try c.child.request("freepart \(String(g, radix: 16)) 0 16", expect: "OK")
        let n = try c.ask("malloc 64", "OBJ")[0], ar = try c.ask("malloc 256", "OBJ")[0]
        _ = try c.child.request("notleak \(String(n, radix: 16))", expect: "OK")
        _ = try c.child.request("area \(String(ar, radix: 16)) 16 32", expect: "OK")
        let live = try liveObjects(t)
        #expect(live[n]?.minCount == 0 && live[ar]?.hasAreas == true)
        _ = try c.child.request("free \(String(n, radix: 16))", expect: "OK")
        #expect(try liveObjects(t)[n] == nil)
    }

    @Test func perCPUHandlesAndCopies() throws {
        let c = try ShimFixture.start()
        let t = try c.table()
        let v = try c.ask("percpu 64", "PCPU")
        // v = [handle, nr (hex-parsed decimal: re-read), copies...]
        let line = c.child.transcript.split(separator: "\n").last { $0.hasPrefix("PCPU ") }!.split(separator: " ")
        let nr = try #require(UInt32(line[2]))
        let h = v[0]
        let copies = line.dropFirst(3).compactMap { hexArg($0) }
        #expect(copies.count == Int(nr))
        let live = try liveObjects(t)
        let o = try #require(live[h])
        #expect(o.kind == KML_KIND_PERCPU && o.isPerCPU && o.size == 64)
        let hdr = try t.header()
        #expect(hdr.nrCpuIds == nr)
        let region = try #require(try t.readRegions().first { $0.isPerCPU && $0.start <= h && h < $0.start + $0.size })
        for cpu in 0..<Int(nr) {
            let expected = region.cpu0Base + (h - region.start) + UInt64(cpu) * region.stride
            #expect(copies[cpu] == expected, "cpu \(cpu)")
        }
        // The handle itself is not readable memory; the copies are.
        let mem = ProcessMemory(pid: c.pid)
        #expect(mem.read(h, length: 8).isEmpty)
        #expect(mem.read(copies[0], length: 64).count == 64)
        _ = try c.child.request("freepercpu \(String(h, radix: 16))", expect: "OK")
        #expect(try liveObjects(t)[h] == nil)
    }

    @Test func backtraceThroughO2FramesWithoutFramePointers() throws {
        let c = try ShimFixture.start()
        let t = try c.table()
        let p = try c.ask("levels 48", "OBJ")[0]
        let o = try #require(try liveObjects(t)[p])
        let sym = try Symbolizer(pid: c.pid)
        let frames = try t.frames(o.traceId)
        let names = frames.map { sym.symbolize($0) ?? "0x" + String($0, radix: 16) }
        print("levels trace: \(names)")
        let fn = names.map { String($0.prefix { $0 != "+" }) }
        let i3 = fn.firstIndex(of: "kml_fixture_level3"), i2 = fn.firstIndex(of: "kml_fixture_level2")
        let i1 = fn.firstIndex(of: "kml_fixture_level1"), im = fn.firstIndex(of: "main")
        #expect(i3 != nil && i2 != nil && i1 != nil && im != nil, "\(names)")
        if let i3, let i2, let i1, let im { #expect(i3 < i2 && i2 < i1 && i1 < im, "\(names)") }
        // Main-executable frames have no module; libc frames say [libc.so.6].
        #expect(names.first { $0.hasPrefix("kml_fixture_level1+") }?.contains("[") == false)
        #expect(names.contains { $0.hasSuffix(" [libc.so.6]") })
        // With libc's debug file installed, its static functions resolve as well.
        let libc = try #require(try Proc.maps(c.pid).first { $0.filePath.hasSuffix("/libc.so.6") })
        if installedDebugFile(for: libc.filePath) != nil {
            #expect(names.contains { $0.hasPrefix("__libc_start_call_main+") && $0.hasSuffix(" [libc.so.6]") }, "\(names)")
        }
        #expect(try t.comm(o.commId) == "kml_sys_fixture")
    }

    /// The shim's own unwinder (cached CFI rules, cfi_unwind.c) records, frame for frame, the trace
    /// that libunwind records for the same allocation: the three -O2 levels without frame pointers,
    /// and 12-deep recursions through two functions in 16 shapes.
    /// The trace memo (cfi_unwind.c) answers an allocation whose stack words are those of the last trace
    /// unwound from the same caller and depth, and only then: 16 stacks that share their innermost frames
    /// (the memo's key) and differ further up, three allocations in a row under each. Every allocation has
    /// libunwind's trace, the three of a stack the same one, and the memo answered the repeats.
    @Test func traceMemoAnswersRepeatedStacksOnly() throws {
        func traces(_ env: [String: String]) throws -> (traces: [[String]], ids: [UInt32], stderr: String) {
            let c = try ShimFixture.start(env: env)
            let t = try c.table()
            let sym = try Symbolizer(pid: c.pid)
            let ptrs = try c.many("stacks 16 3")
            let live = try liveObjects(t)
            let objects = try ptrs.map { try #require(live[$0]) }
            let traces = try objects.map { o in try t.frames(o.traceId).map { sym.symbolize($0) ?? "?" } }
            try c.child.send("exit")
            #expect(c.child.exitCode(timeout: 30) == 0)
            let stderr = (try? String(contentsOfFile: c.dir.path + "/stderr.txt", encoding: .utf8)) ?? ""
            return (traces, objects.map(\.traceId), stderr)
        }
        let ours = try traces([:]), theirs = try traces(["KMEMLEAK_UNWINDER": "libunwind"])
        let checked = try traces(["KMEMLEAK_UNWINDER": "check"])
        #expect(ours.traces.count == 48 && ours.traces == theirs.traces, "\(ours.traces)")
        #expect(Set(ours.traces).count == 16)
        for i in stride(from: 0, to: 48, by: 3) {
            #expect(ours.ids[i] == ours.ids[i + 1] && ours.ids[i + 1] == ours.ids[i + 2])
        }
        // check mode: each trace also taken through the memo, its depot id compared with libunwind's
        let summary = checked.stderr.split(separator: "\n").first { $0.hasPrefix("kmemleak: unwind check: ") && $0.hasSuffix(" memo hits") }
        let numbers = summary.map { $0.split(separator: " ").compactMap { Int($0.trimmingCharacters(in: .punctuationCharacters)) } } ?? []
        #expect(numbers.count == 4 && numbers[2] == 0 && numbers[3] >= 32, "\(checked.stderr)")
    }

    @Test func shimUnwinderRecordsLibunwindsTraces() throws {
        func traces(_ env: [String: String]) throws -> [[String]] {
            let c = try ShimFixture.start(env: env)
            let t = try c.table()
            let sym = try Symbolizer(pid: c.pid)
            var ptrs = [try c.ask("levels 48", "OBJ")[0]]
            ptrs += try c.many("stacks 16")
            let live = try liveObjects(t)
            return try ptrs.map { p in
                let o = try #require(live[p])
                // symbol+offset [module]: the same in both processes, whatever the load addresses
                return try t.frames(o.traceId).map { sym.symbolize($0) ?? "?" }
            }
        }
        let ours = try traces([:]), theirs = try traces(["KMEMLEAK_UNWINDER": "libunwind"])
        #expect(ours.count == 17 && ours.allSatisfy { $0.count >= 5 && !$0.contains("?") }, "\(ours)")
        #expect(ours == theirs)
    }

    @Test func corruptedRealTableIsRejected() throws {
        let c = try ShimFixture.start()
        let r = try c.rendezvous()
        _ = try ClientTable.open(r)
        // Corrupt the client's table (its private memory) as a hostile client could, and re-adopt.
        #expect(r.isPrivate)
        let table = try #require(ClientTableFile(pid: c.pid, rendezvousLine: r.line))
        defer { table.close() }
        #expect(table.write(UInt32(99), at: 8)) // version
        #expect(throws: TableError.badVersion(99)) { try ClientTable.open(r) }
        table.write(KML_ABI_VERSION, at: 8)
        let usedOffset = MemoryLayout<kml_header>.offset(of: \kml_header.threads_used)!
        table.write(UInt32(0xffff_ffff), at: usedOffset)
        #expect { try ClientTable.open(r) } throws: { e in if case .usedOverCapacity = e as? TableError { true } else { false } }
    }

    @Test func execGivesTheProcessANewTable() throws {
        let c = try ShimFixture.start()
        var t1 = try c.table()
        #expect(t1.isAlive && t1.isStillMapped)
        // Execs in quick succession, each well within a clock tick of the one before: every table
        // must still have its own creation time (what tells a table replaced at the same address).
        var created: Set<UInt64> = [t1.openedHeader.createdNs]
        for _ in 0..<12 {
            try c.child.send("exec")
            _ = try c.child.waitFor("READY ")
            // Same pid, same start time, but the old table is no longer the process's.
            #expect(!t1.isAlive)
            let r2 = try c.rendezvous()
            let t2 = try ClientTable.open(r2)
            #expect(t2.pid == t1.pid && t2.openedHeader.startTime == t1.openedHeader.startTime)
            #expect(created.insert(t2.openedHeader.createdNs).inserted && t2.isAlive)
            let result = ClientDiscovery.scan(runDirectory: c.dir.path, known: [t1.id])
            if r2.address != t1.rendezvous?.address {
                #expect(result.adopted.map(\.openedHeader.createdNs) == [t2.openedHeader.createdNs])
            }
            #expect(ClientDiscovery.scan(runDirectory: c.dir.path, known: [t2.id]).adopted.isEmpty)
            t1 = t2
        }
    }

    @Test func execWithoutTheShimLeavesAStaleFile() throws {
        let c = try ShimFixture.start()
        let t1 = try c.table()
        let r = try c.rendezvous()
        try c.child.send("noshimexec")
        _ = try c.child.waitFor("READY ")
        #expect(!t1.isAlive)
        #expect(Proc.isAlive(c.pid, startTime: r.startTime)) // same process
        #expect { try ClientTable.open(r) } throws: { e in if case .stale = e as? TableError { true } else { false } }
        let result = ClientDiscovery.scan(runDirectory: c.dir.path, known: [])
        #expect(result.removedStale == [r.path] && result.adopted.isEmpty)
    }

    @Test func clientWithoutARendezvousFileIsFoundInItsMaps() throws {
        // A run directory the client cannot create: it tracks anyway, announced by nothing.
        let c = try ShimFixture.start(env: ["KMEMLEAK_RUN_DIR": "/proc/kml-no-such-dir"])
        let p = try c.ask("malloc 4321", "OBJ")[0]
        let result = ClientDiscovery.scanProcesses(known: [])
        let t = try #require(result.adopted.first { $0.pid == c.pid })
        #expect(try liveObjects(t)[p]?.size == 4321)
        #expect(t.isAlive)
        let again = ClientDiscovery.scanProcesses(known: Set(result.adopted.map(\.id)))
        #expect(!again.adopted.contains { $0.pid == c.pid })
    }

    /// /proc discovery adopts only the tables named after its own run directory (several daemons on
    /// one host), and reads the maps of a process only once while it stays the same process.
    /// (Memfd tables: nothing in the maps names a private table on a kernel without
    /// CONFIG_ANON_VMA_NAME; those are announced by their rendezvous file only.)
    @Test func processDiscoveryAdoptsOnlyItsOwnRunDirectorysClients() throws {
        let c = try ShimFixture.start(env: ["KMEMLEAK_TABLE": "memfd"])
        let r = try c.rendezvous()
        let other = try TempDir()
        let mine = ProcessDiscovery(runDirectory: c.dir.path)
        mine.settleTicks = 0
        let first = mine.scan(known: [])
        #expect(first.adopted.map(\.pid) == [c.pid])
        #expect(first.adopted.first?.rendezvous?.address == r.address)
        #expect(mine.scan(known: Set(first.adopted.map(\.id))).adopted.isEmpty)
        // Processes seen before cost no syscall, but 1 in 16 that re-reads its stat (plus the new ones).
        #expect(mine.mapsReadLastPass < max(1, ProcessDiscovery.processCount() / 2))
        #expect(mine.statsReadLastPass < max(1, ProcessDiscovery.processCount() / 2))
        let theirs = ProcessDiscovery(runDirectory: other.path)
        #expect(!theirs.scan(known: []).adopted.contains { $0.pid == c.pid })
        // Not the default run directory: tables without an identity are not its own either.
        #expect(!theirs.acceptsAnonymousTables && ProcessDiscovery(runDirectory: KML_DEFAULT_RUN_DIR).acceptsAnonymousTables)
        // The memfd's name carries the run directory's identity.
        var st = stat()
        #expect(stat(c.dir.path, &st) == 0)
        let name = try #require(try Proc.maps(c.pid).first { $0.start == r.address }).path
        #expect(name == "/memfd:kmemleak-table:\(String(st.st_dev, radix: 16)):\(String(st.st_ino, radix: 16)) (deleted)")
    }

    /// The shim publishes only in a run directory nobody else can tamper with: not through a
    /// symlink, not in another user's directory (even sticky), not in a non-sticky directory others
    /// may write. Its memfd then carries no run directory identity.
    @Test(.enabled(if: getuid() == 0, "needs root (chown)"))
    func unsafeRunDirectoriesAreNotUsed() throws {
        let base = try TempDir()
        let good = base.path + "/good", link = base.path + "/link", foreign = base.path + "/foreign", open = base.path + "/open"
        #expect(mkdir(good, 0o755) == 0 && symlink(good, link) == 0 && mkdir(foreign, 0o755) == 0 && mkdir(open, 0o755) == 0)
        #expect(chown(foreign, 65534, 65534) == 0 && chmod(foreign, 0o1777) == 0 && chmod(open, 0o777) == 0)
        func announced(_ pid: Int32) -> [String] {
            [good, foreign, open].flatMap { dir in
                ((try? ProcFile.listDirectory(dir)) ?? []).filter { $0.contains("\(pid).") }
            }
        }
        for dir in [link, foreign, open] {
            let c = try ShimFixture.start(env: ["KMEMLEAK_RUN_DIR": dir])
            let table = try #require(try Proc.maps(c.pid).first { $0.path.hasPrefix("/memfd:kmemleak-table") })
            #expect(table.path == "/memfd:kmemleak-table (deleted)", "\(dir)")
            #expect(announced(c.pid).isEmpty, "\(dir): \(announced(c.pid))")
        }
        let c = try ShimFixture.start(env: ["KMEMLEAK_RUN_DIR": good])
        #expect(announced(c.pid) == ["\(c.pid).client"])
    }

    /// After an exec (same pid, same /proc inode, same comm here) the new (memfd) table is found in /proc.
    @Test func processDiscoveryFindsTheTableOfAnExec() throws {
        let c = try ShimFixture.start(env: ["KMEMLEAK_TABLE": "memfd"])
        let discovery = ProcessDiscovery(runDirectory: c.dir.path)
        discovery.settleTicks = 0
        let t1 = try #require(discovery.scan(known: []).adopted.first { $0.pid == c.pid })
        try c.child.send("exec")
        _ = try c.child.waitFor("READY ")
        #expect(!t1.isAlive)
        let r2 = try c.rendezvous()
        guard r2.address != t1.rendezvous?.address else { return } // same address: the same ClientID
        // The daemon drops the old session first (it is no longer alive): known no longer has it.
        let t2 = try #require(discovery.scan(known: []).adopted.first { $0.pid == c.pid })
        #expect(t2.inode != t1.inode && t2.isAlive && t2.rendezvous?.address == r2.address)
    }

    @Test func daemonFieldsAreWrittenToTheClient() throws {
        let c = try ShimFixture.start()
        let t = try c.table()
        try t.setDaemonPid(getpid())
        try t.setDaemonScans(5)
        let again = try c.table().header()
        #expect(again.daemonPid == getpid() && again.daemonScans == 5)
    }
}

@Suite(.enabled(if: Shim.available && getuid() == 0 && fileExists("/usr/bin/setpriv"), "needs root, setpriv and `make shim`"))
struct OtherUserClientTests {
    /// A client running as another user (nobody): its table, memory, roots and symbols are all
    /// readable by the (root) daemon.
    @Test func clientOfAnotherUser() throws {
        let fixture = try ShimFixture.path.get()
        let dir = try TempDir()
        chmod(dir.path, 0o1777)
        // The compiled fixture lives in a root-owned 0755 directory: executable by nobody.
        let child = try ChildProcess("/usr/bin/setpriv", ["--reuid=65534", "--regid=65534", "--clear-groups", fixture],
                                     env: ["LD_PRELOAD": Shim.library, "KMEMLEAK_RUN_DIR": dir.path])
        defer { child.terminate() }
        _ = try child.waitFor("READY ")
        let p = try #require(hexArg(Substring(try child.request("levels 99", expect: "OBJ ").split(separator: " ")[1])))
        // setpriv (root, under the shim too) announced <pid>.client before its exec; the fixture (nobody)
        // cannot replace root's file in the sticky directory and publishes <pid>.<random>.client.
        // Discovery removes the stale one and adopts the fixture's.
        let found = ClientDiscovery.scan(runDirectory: dir.path, known: [])
        let t = try #require(found.adopted.first { $0.pid == child.pid }, "\(found.failed)")
        #expect(found.adopted.count == 1 && t.rendezvous?.fileOwner == 65534)
        var st = stat()
        #expect(stat("/proc/\(child.pid)", &st) == 0 && st.st_uid == 65534)
        let o = try #require(try liveObjects(t)[p])
        #expect(o.size == 99)
        let sym = try Symbolizer(pid: child.pid)
        #expect(try t.frames(o.traceId).compactMap { sym.symbolize($0) }.contains { $0.hasPrefix("kml_fixture_level1+") })
        #expect(ProcessMemory(pid: child.pid).read(p, length: 99).count == 99)
        #expect(!(try t.roots(cache: ELFCache())).isEmpty)
        try t.setDaemonScans(1)
        #expect(try t.header().daemonScans == 1)
    }
}
