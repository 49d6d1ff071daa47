import CKmemleakABI
import Glibc
import KmemleakEngine
@testable import KmemleakSystem
import Testing

@Suite(.enabled(if: Shim.available, "needs `make shim` (libkmemleak.so)"))
struct RealClientTests {
    @Test func mallocFamilyExactLiveSet() throws {
        let c = try ShimClient(Shim.fixture("malloc_family"))
        var objs: [(UInt64, UInt64)] = []
        var gone: [UInt64] = []
        while true {
            let line = try c.child.readLine()
            let f = line.split(separator: " ")
            if line == "READY" { break }
            if f.first == "OBJ", f.count >= 3, let p = hexArg(f[1]), let n = UInt64(f[2]) { objs.append((p, n)) }
            if f.first == "GONE", f.count == 2, let p = hexArg(f[1]) { gone.append(p) }
        }
        let t = try c.table()
        let h = try t.header()
        #expect(h.pid == c.pid && h.isTracking && !h.isDisabled)
        #expect(h.startTime == (try Proc.stat(c.pid)).startTime)
        let live = try liveObjects(t)
        for (p, n) in objs {
            let o = live[p]
            #expect(o != nil, "missing OBJ 0x\(String(p, radix: 16))")
            #expect(o?.size == n, "size of 0x\(String(p, radix: 16))")
            #expect(o?.kind == KML_KIND_MALLOC && o?.minCount == 1)
            #expect(o?.tid == c.pid)
        }
        let objSet = Set(objs.map(\.0))
        for p in gone where !objSet.contains(p) { #expect(live[p] == nil, "GONE 0x\(String(p, radix: 16)) still live") }
        // Every object has a trace and a comm; the comm is the program's.
        try #require(!objs.isEmpty)
        let o = try #require(live[objs[0].0])
        #expect(try t.comm(o.commId) == "malloc_family")
        #expect(!(try t.frames(o.traceId)).isEmpty)
        // Sequence numbers follow allocation order.
        let seqs = objs.compactMap { live[$0.0]?.seq }
        #expect(seqs == seqs.sorted())
        #expect(UInt64(live.count) <= h.liveObjects + 64)
    }

    @Test func symbolizedBacktraceOfARealClient() throws {
        let c = try ShimClient(Shim.fixture("malloc_family"))
        let first = try c.child.waitFor("OBJ ")
        _ = try c.child.waitFor("READY")
        let p = try #require(hexArg(first.split(separator: " ")[1]))
        let t = try c.table()
        let o = try #require(try liveObjects(t)[p])
        let sym = try Symbolizer(pid: c.pid)
        let frames = try t.frames(o.traceId).map { sym.symbolize($0) ?? "0x?" }
        print("malloc_family trace of 0x\(String(p, radix: 16)): \(frames)")
        // The trace goes through main of the (unstripped) fixture.
        #expect(frames.contains { $0.hasPrefix("main+0x") && !$0.contains("[") }, "\(frames)")
        let ctx = ClientReportContext(table: t, symbolizer: sym)
        #expect(ctx.comm(o.commId) == "malloc_family")
        #expect(ctx.frames(o.traceId).count == frames.count)
    }

    @Test func kmemleakTestRootsAndMemory() throws {
        let c = try ShimClient(Shim.kmemleakTest)
        _ = try c.child.waitFor("READY", timeout: 20)
        let t = try c.table()
        let cache = ELFCache()
        let roots = try t.roots(cache: cache)
        let maps = try Proc.maps(c.pid)
        print("kmemleak-test roots:\n" + roots.map { "  \($0)" }.joined(separator: "\n"))
        // Data roots of the program and libc, a stack root, and nothing from libkmemleak.so.
        #expect(roots.contains { $0.kind == .data && $0.label.hasSuffix("/kmemleak-test") })
        #expect(roots.contains { $0.kind == .data && $0.label.hasSuffix("/libc.so.6") })
        #expect(roots.contains { $0.kind == .stack })
        #expect(!roots.contains { $0.label.contains("libkmemleak") })
        for m in maps where m.filePath.hasSuffix("libkmemleak.so") {
            #expect(!roots.contains { $0.start < m.end && m.start < $0.end })
        }
        for r in try t.readRegions() where r.isShimPrivate {
            #expect(!roots.contains { $0.start < r.start + r.size && r.start < $0.end })
        }
        // Every root reads in full (they are all mapped and readable).
        let mem = ProcessMemory(pid: c.pid)
        let ranges = roots.map { MemoryRange(address: $0.start, length: Int($0.length)) }
        var buf = [UInt8](repeating: 0, count: ranges.reduce(0) { $0 + $1.length })
        var got = [Int](repeating: 0, count: ranges.count)
        ranges.withUnsafeBufferPointer { r in buf.withUnsafeMutableBytes { b in got.withUnsafeMutableBufferPointer { mem.read(r, into: b, bytesRead: $0) } } }
        for (i, r) in roots.enumerated() { #expect(got[i] == Int(r.length), "short root \(r)") }
    }

    @Test func clientExitIsDetectedAndFileRemoved() throws {
        let c = try ShimClient(Shim.fixture("malloc_family"))
        _ = try c.child.waitFor("READY")
        let t = try c.table()
        #expect(t.isAlive)
        let r = try c.rendezvous()
        c.child.terminate() // SIGKILL: the destructor does not run, the file stays
        #expect(!t.isAlive)
        #expect(r.isStale)
        let result = ClientDiscovery.scan(runDirectory: c.dir.path, known: [])
        #expect(result.adopted.isEmpty)
        #expect(result.removedStale == [r.path])
        // A private table went with its process: reading it says so (a memfd table would still read).
        #expect(r.isPrivate)
        #expect(throws: TableError.stale(pid: c.pid, reason: "process gone (its pagemap is empty)")) { try liveObjects(t) }
    }
}
