// The shim branch's fixtures (Tests/fixtures/README.md line protocol), checked through this
// module's reader: every expectation a fixture prints is verified against ClientTable.
import CKmemleakABI
import Glibc
import KmemleakEngine
@testable import KmemleakSystem
import Testing

/// The expected state built by applying a fixture's lines in order.
struct FixtureExpectations {
    struct Obj { var size: UInt64; var kind: UInt32; var attrs: [String: String] }
    var objects: [UInt64: Obj] = [:]
    var gone: Set<UInt64> = []
    var untracked: [UInt64] = []
    var copies: [(handle: UInt64, cpu: Int, addr: UInt64)] = []
    var regions: [(start: UInt64, size: UInt64, attrs: [String: String])] = []
    var areas: [(obj: UInt64, start: UInt64, size: UInt64)] = []
    var gens: [(UInt64, UInt32)] = []
    var traces: [(UInt64, [String])] = []
    var nrCpuIds: UInt32? = nil

    static let kinds: [String: UInt32] = ["malloc": 0, "mmap": 1, "percpu": 2, "custom": 3, "custom_percpu": 4]

    /// Applies one line; returns false for lines it does not know (labels, other tags).
    mutating func apply(_ line: Substring) throws {
        let f = line.split(separator: " ")
        guard let tag = f.first else { return }
        func hex(_ i: Int) throws -> UInt64 {
            guard i < f.count, let v = hexArg(f[i]) else { throw TestError("bad line: \(line)") }
            return v
        }
        func attrs(from i: Int) -> [String: String] {
            var a: [String: String] = [:]
            for kv in f.dropFirst(i) {
                if let eq = kv.firstIndex(of: "=") { a[String(kv[..<eq])] = String(kv[kv.index(after: eq)...]) }
            }
            return a
        }
        switch tag {
        case "OBJ", "PCPU":
            let p = try hex(1)
            guard f.count >= 4, let size = UInt64(f[2]), let kind = Self.kinds[String(f[3])] else { throw TestError("bad line: \(line)") }
            objects[p] = Obj(size: size, kind: kind, attrs: attrs(from: 4))
            gone.remove(p)
        case "GONE", "GONE-PCPU":
            let p = try hex(1)
            objects[p] = nil
            gone.insert(p)
        case "UNTRACKED": untracked.append(try hex(1))
        case "COPY":
            guard f.count == 4, let cpu = Int(f[2]) else { throw TestError("bad line: \(line)") }
            copies.append((try hex(1), cpu, try hex(3)))
        case "REGION":
            guard let size = f.count > 2 ? UInt64(f[2]) : nil else { throw TestError("bad line: \(line)") }
            regions.append((try hex(1), size, attrs(from: 3)))
        case "AREA":
            guard f.count == 4, let size = UInt64(f[3]) else { throw TestError("bad line: \(line)") }
            areas.append((try hex(1), try hex(2), size))
        case "GEN":
            guard f.count == 3, let g = UInt32(f[2]) else { throw TestError("bad line: \(line)") }
            gens.append((try hex(1), g))
        case "TRACE": traces.append((try hex(1), f.dropFirst(2).map(String.init)))
        case "NR_CPU_IDS": nrCpuIds = f.count == 2 ? UInt32(f[1]) : nil
        default: break
        }
    }

    /// Checks the table against the expectations.
    func verify(_ t: ClientTable, pid: Int32, fixture: String) throws {
        let live = try liveObjects(t)
        for (p, o) in objects {
            let hexp = "0x" + String(p, radix: 16)
            guard let r = live[p] else {
                Issue.record("\(fixture): missing object \(hexp) (size \(o.size))")
                continue
            }
            #expect(r.size == o.size, "\(fixture): size of \(hexp)")
            #expect(r.kind == o.kind, "\(fixture): kind of \(hexp)")
            if let m = o.attrs["min_count"] { #expect(String(r.minCount) == m, "\(fixture): min_count of \(hexp)") }
            if let fl = o.attrs["flags"] { #expect(hexArg(Substring(fl)) == UInt64(r.flags), "\(fixture): flags of \(hexp) = 0x\(String(r.flags, radix: 16))") }
            if let tid = o.attrs["tid"] { #expect(String(r.tid) == tid, "\(fixture): tid of \(hexp)") }
            if let comm = o.attrs["comm"] { #expect(try t.comm(r.commId) == comm, "\(fixture): comm of \(hexp)") }
        }
        for p in gone where objects[p] == nil {
            #expect(live[p] == nil, "\(fixture): 0x\(String(p, radix: 16)) should be gone")
        }
        for p in untracked { #expect(live[p] == nil, "\(fixture): 0x\(String(p, radix: 16)) is not an object") }
        let regions = try t.readRegions()
        for c in copies {
            let r = regions.first { $0.isPerCPU && $0.start <= c.handle && c.handle < $0.start + $0.size }
            #expect(r != nil, "\(fixture): no per-CPU region for 0x\(String(c.handle, radix: 16))")
            if let r { #expect(r.cpu0Base + (c.handle - r.start) + UInt64(c.cpu) * r.stride == c.addr, "\(fixture): copy \(c)") }
        }
        for e in self.regions {
            let r = regions.first { $0.start == e.start && $0.size == e.size }
            #expect(r != nil, "\(fixture): region 0x\(String(e.start, radix: 16))")
            if let r, let n = e.attrs["nr"] { #expect(String(r.nrCpus) == n) }
            if let r, let s = e.attrs["stride"] { #expect(String(r.stride) == s || hexArg(Substring(s)) == r.stride) }
        }
        let areas = try t.readAreas()
        for a in self.areas {
            let o = live[a.obj]
            #expect(o?.hasAreas == true, "\(fixture): HAS_AREAS on 0x\(String(a.obj, radix: 16))")
            if let o {
                #expect(areas.contains { $0.objectIndex == o.slot && $0.objectSeq == o.seq && $0.start == a.start && $0.size == a.size },
                        "\(fixture): area \(a)")
            }
        }
        for (p, g) in gens { #expect(live[p]?.transientGen == g, "\(fixture): transient_gen of 0x\(String(p, radix: 16))") }
        if let n = nrCpuIds { #expect(try t.header().nrCpuIds == n) }
        if !traces.isEmpty {
            let sym = try Symbolizer(pid: pid)
            for (p, names) in traces {
                guard let o = live[p] else { Issue.record("\(fixture): no object for TRACE 0x\(String(p, radix: 16))"); continue }
                let frames = try t.frames(o.traceId).map { sym.symbolize($0) ?? "0x" + String($0, radix: 16) }
                let fns = frames.map { String($0.prefix { $0 != "+" }) }
                #expect(Array(fns.prefix(names.count)) == names, "\(fixture): trace \(frames)")
            }
        }
    }
}

@Suite(.enabled(if: Shim.available, "needs `make shim` (libkmemleak.so and fixtures)"))
struct FixtureProtocolTests {
    @Test(arguments: ["malloc_family", "mmap_ops", "annotations", "percpu", "backtrace"])
    func fixture(_ name: String) throws {
        let path = Shim.fixture(name)
        try #require(fileExists(path), "fixture \(name) not built")
        let c = try ShimClient(path)
        var exp = FixtureExpectations()
        while true {
            let line = try c.child.readLine()
            if line == "READY" { break }
            try exp.apply(Substring(line))
        }
        let t = try c.table()
        #expect(t.pid == c.pid)
        #expect(!exp.objects.isEmpty || !exp.gone.isEmpty)
        try exp.verify(t, pid: c.pid, fixture: name)
        c.child.closeStdin()
        let status = c.child.wait()
        #expect(status == 0, "\(name): exit status \(String(describing: status))")
        #expect(c.child.stderr == "", "\(name): stderr")
        // The client removed its rendezvous file at exit.
        #expect(!fileExists(c.dir.path + "/\(c.pid).client"))
    }

    /// A program linked with jemalloc: malloc_usable_size and mallctl work on its pointers, which are
    /// tracked; the table and stderr say once that malloc is not glibc's.
    @Test(.enabled(if: fileExists(Shim.fixture("jemalloc")), "needs libjemalloc2 (make shim builds the fixture)"))
    func jemallocProgramIsTrackedThroughItsAllocator() throws {
        let c = try ShimClient(Shim.fixture("jemalloc"))
        var exp = FixtureExpectations()
        var lines: [String] = []
        while true {
            let line = try c.child.readLine()
            if line == "READY" { break }
            lines.append(line)
            try exp.apply(Substring(line))
        }
        #expect(lines.contains("USABLE ok"))
        #expect(lines.contains { $0.hasPrefix("JEMALLOC ") })
        #expect(exp.objects.count == 7)
        let t = try c.table()
        #expect(try t.header().hasForeignMalloc)
        try exp.verify(t, pid: c.pid, fixture: "jemalloc")
        c.child.closeStdin()
        #expect(c.child.wait() == 0)
        let stderr = c.child.stderr.split(separator: "\n")
        #expect(stderr.count == 1, "stderr: \(stderr)")
        #expect(stderr.first?.hasPrefix("kmemleak: malloc is not glibc's (/") == true)
        #expect(stderr.first?.hasSuffix("/libjemalloc.so.2): tracking through it") == true)
    }

    /// jemalloc before the shim in LD_PRELOAD gets every malloc: the shim says so once, tracks nothing,
    /// and the program runs normally.
    @Test(.enabled(if: fileExists(Shim.fixture("jemalloc")), "needs libjemalloc2 (make shim builds the fixture)"))
    func anAllocatorBeforeTheShimDisablesTrackingWithOneLine() throws {
        let dir = try TempDir()
        let jemalloc = "/usr/lib/x86_64-linux-gnu/libjemalloc.so.2"
        let child = try ChildProcess(Shim.fixture("jemalloc"), [],
                                     env: ["LD_PRELOAD": jemalloc + ":" + Shim.library, "KMEMLEAK_RUN_DIR": dir.path],
                                     stderrFile: dir.path + "/stderr.txt")
        _ = try child.waitFor("USABLE ok")
        _ = try child.waitFor("READY")
        child.closeStdin()
        #expect(child.wait() == 0)
        #expect(child.stderr ==
                "kmemleak: malloc is not the shim's but \(jemalloc)'s (put libkmemleak.so first in LD_PRELOAD), tracking disabled\n")
    }

    /// Records stay until their thread is gone for good, and are reused then: 2000 detached and 2000
    /// joined threads (at most 5 at a time) fit in a table of 16 thread records.
    @Test func recordsOfGoneThreadsAreReused() throws {
        let path = Shim.root + "/.build/clients/thread-life"
        try #require(fileExists(path), "run `make clients`")
        let c = try ShimClient(path, ["churn", "2000"], env: ["KMEMLEAK_MAX_THREADS": "16"])
        _ = try c.child.waitFor("READY", timeout: 120)
        let t = try c.table()
        #expect(try t.header().isTracking)
        let live = Set(try Proc.tasks(c.pid))
        #expect(try t.readThreads().filter { live.contains($0.tid) }.map(\.tid) == [c.pid])
        c.child.closeStdin()
        #expect(c.child.wait() == 0)
        #expect(c.child.stderr == "", "no \"thread table full\"")
    }

    /// A thread detached by pthread_detach before it ran at all (so before its record existed) is known
    /// as detached all the same: 40 of them, one at a time, each on a stack of its own (glibc never
    /// hands its descriptor to a later thread), fit in a table of 16 thread records.
    @Test func threadsDetachedBeforeTheyRanAreReleasedWhenGone() throws {
        let path = Shim.root + "/.build/clients/thread-life"
        try #require(fileExists(path), "run `make clients`")
        let c = try ShimClient(path, ["detach-early", "40"], env: ["KMEMLEAK_MAX_THREADS": "16"])
        _ = try c.child.waitFor("READY", timeout: 120)
        let t = try c.table()
        #expect(try t.header().isTracking)
        c.child.closeStdin()
        #expect(c.child.wait() == 0)
        #expect(c.child.stderr == "", "no \"thread table full\"")
    }

    @Test func forkFixture() throws {
        let path = Shim.fixture("fork")
        try #require(fileExists(path))
        let c = try ShimClient(path)
        var parent = FixtureExpectations(), child = FixtureExpectations()
        var childPid: Int32 = 0, childTid: Int32 = 0, parentPid: Int32 = 0
        while true {
            let line = try c.child.readLine()
            if line == "READY" { break }
            let f = line.split(separator: " ")
            switch (f.first, f.count > 1 ? f[1] : "") {
            case ("PARENT", "PID"): parentPid = Int32(f[2]) ?? 0
            case ("CHILD", "PID"): childPid = Int32(f[2]) ?? 0
            case ("CHILD", "THREAD"): childTid = Int32(f[2]) ?? 0
            case ("CHILD", "READY"), ("PARENT", "THREAD"): break
            case ("CHILD", _): try child.apply(line.dropFirst(6))
            case ("PARENT", _): try parent.apply(line.dropFirst(7))
            default:
                try parent.apply(Substring(line))
                try child.apply(Substring(line))
            }
        }
        #expect(parentPid == c.pid && childPid > 0)
        let pt = try c.table()
        // The child writes no rendezvous file: found in /proc, as the daemon finds it.
        #expect(!fileExists(c.dir.path + "/\(childPid).client"))
        let found = ProcessDiscovery(runDirectory: c.dir.path).scan(known: [pt.id])
        let ct = try #require(found.adopted.first { $0.pid == childPid }, "failed: \(found.failed)")
        #expect(ct.rendezvous?.address == pt.rendezvous?.address)
        try parent.verify(pt, pid: c.pid, fixture: "fork parent")
        try child.verify(ct, pid: childPid, fixture: "fork child")
        #expect(try ct.readThreads().map(\.tid) == [childTid])
        // Objects only the parent made after the fork are not in the child's table, and vice versa.
        let pl = try liveObjects(pt), cl = try liveObjects(ct)
        for (p, o) in parent.objects where child.objects[p] == nil && o.size == 400 { #expect(cl[p]?.size != 400) }
        for (p, o) in child.objects where parent.objects[p] == nil && o.size == 300 { #expect(pl[p]?.size != 300) }
        c.child.closeStdin()
        #expect(c.child.wait() == 0)
        #expect(c.child.stderr == "")
        #expect(eventually { !fileExists(c.dir.path + "/\(childPid).client") })
        #expect(!fileExists(c.dir.path + "/\(c.pid).client"))
    }

    @Test func threadsFixture() throws {
        let path = Shim.fixture("threads")
        try #require(fileExists(path))
        let c = try ShimClient(path)
        let mainLine = try c.child.waitFor("THREAD ")
        _ = try c.child.waitFor("READY")
        let mainTid = Int32(mainLine.split(separator: " ")[1])
        let t = try c.table()
        #expect(try t.readThreads().contains { $0.tid == mainTid && $0.stackLo == 0 && $0.stackHi == 0 })
        /// Sends a command, returns the reply lines before OK.
        func cmd(_ s: String) throws -> [String] {
            try c.child.send(s)
            var out: [String] = []
            while true {
                let l = try c.child.readLine()
                if l == "OK" { return out }
                out.append(l)
            }
        }
        let started = try cmd("start")
        let f = try #require(started.first { $0.hasPrefix("THREAD ") }).split(separator: " ")
        let tid = try #require(Int32(f[1]))
        let lo = try #require(hexArg(f[2])), hi = try #require(hexArg(f[3]))
        let th = try #require(try t.readThreads().first { $0.tid == tid })
        #expect(th.stackLo == lo && th.stackHi == hi)
        var exp = FixtureExpectations()
        for l in try cmd("alloc \(tid)") { try exp.apply(Substring(l)) }
        for l in try cmd("rename \(tid) worker-x") { try exp.apply(Substring(l)) }
        try exp.verify(t, pid: c.pid, fixture: "threads")
        #expect(try t.readThreads().first { $0.tid == tid }?.comm == "worker-x")
        let goneLines = try cmd("stop \(tid)")
        #expect(goneLines.contains("THREAD-GONE \(tid)"))
        #expect(try !t.readThreads().contains { $0.tid == tid })
        // Cancel path too.
        let s2 = try cmd("start")
        let l2 = try #require(s2.first { $0.hasPrefix("THREAD ") })
        let tid2 = try #require(Int32(l2.split(separator: " ")[1]))
        #expect(try t.readThreads().contains { $0.tid == tid2 })
        #expect(try cmd("cancel \(tid2)").contains("THREAD-GONE \(tid2)"))
        #expect(try !t.readThreads().contains { $0.tid == tid2 })
        try c.child.send("exit")
        #expect(c.child.wait() == 0)
    }
}

@Suite(.enabled(if: Shim.available, "needs `make shim` (libkmemleak.so and fixtures)"))
struct ConcurrentClientTests {
    /// Reads the table of the `stress` fixture (8 threads churning malloc/free) over and over while
    /// it runs: every pass must succeed (torn records retried or skipped, never a validation error).
    @Test func readWhileStressRuns() throws {
        let path = Shim.fixture("stress")
        try #require(fileExists(path))
        let c = try ShimClient(path)
        let t = try c.table()
        var passes = 0, objects = 0, skipped = 0, retried = 0, maxThreads = 0, frames = 0
        var done = false
        var lines: [String] = []
        let deadline = ChildProcess.now() + 60
        while !done && ChildProcess.now() < deadline {
            var ids: Set<UInt32> = []
            do {
                let stats = try t.readObjects { o in
                    objects += 1
                    if ids.count < 64 { ids.insert(o.traceId) }
                }
                skipped += stats.skipped
                retried += stats.retried
                maxThreads = max(maxThreads, try t.readThreads().count)
                for id in ids { frames += try t.frames(id).count }
                _ = try t.readRegions()
            } catch {
                // A private table goes with its process, and stress exits right after DONE.
                guard case .stale = error else { throw error }
                #expect(eventually { !Proc.isAlive(c.pid) }, "stale while alive")
                break
            }
            passes += 1
            // Non-blocking check for the fixture's end.
            while let l = try? c.child.readLine(timeout: 0.001) {
                lines.append(l)
                if l == "DONE" { done = true }
            }
        }
        // DONE may still be in the pipe when the table went away.
        while !done, let l = try? c.child.readLine(timeout: 10) { done = l == "DONE" }
        #expect(done, "stress did not finish: \(lines)")
        print("stress: \(passes) table passes while running, \(objects) records, \(retried) retried, \(skipped) skipped, up to \(maxThreads) threads, \(frames) frames")
        #expect(passes > 0 && maxThreads >= 1)
        c.child.closeStdin()
        #expect(c.child.wait() == 0)
    }
}
