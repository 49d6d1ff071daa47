// Micro-benchmark of the KmemleakEngine: registration of 1M objects, one full scan, report snapshot,
// and engine memory per object. Run: swift run -c release kmemleak-engine-bench [objects]; with `real [objects]`,
// issue 10's realistic heap instead (realHeapBench).
import KmemleakEngine
import KmemleakSystem

#if canImport(Glibc)
import Glibc
#endif

/// One flat synthetic memory image (heap + a data root), read with memcpy.
final class FlatMemory: MemoryReader {
    let base: UInt64
    let bytes: UnsafeMutableRawBufferPointer
    var calls = 0
    var ranges = 0
    /// Set by `real` with workers: the reads then run on several threads and count nothing.
    var concurrent = false
    var allowsConcurrentReads: Bool { concurrent }

    init(base: UInt64, size: Int) {
        self.base = base
        bytes = UnsafeMutableRawBufferPointer.allocate(byteCount: size, alignment: 16)
        bytes.initializeMemory(as: UInt8.self, repeating: 0)
    }

    func store(_ addr: UInt64, _ v: UInt64) {
        bytes.storeBytes(of: v, toByteOffset: Int(addr - base), as: UInt64.self)
    }

    func read(_ rs: UnsafeBufferPointer<MemoryRange>, into buffer: UnsafeMutableRawBufferPointer,
              bytesRead: UnsafeMutableBufferPointer<Int>) {
        if !concurrent {
            calls += 1
            ranges += rs.count
        }
        var off = 0
        for (i, r) in rs.enumerated() {
            var n = 0
            if r.address >= base && r.address - base < UInt64(bytes.count) {
                let o = Int(r.address - base)
                n = min(r.length, bytes.count - o)
                (buffer.baseAddress! + off).copyMemory(from: bytes.baseAddress! + o, byteCount: n)
            }
            bytesRead[i] = n
            off += r.length
        }
    }
}

struct XorShift {
    var s: UInt64
    mutating func next() -> UInt64 { s ^= s << 13; s ^= s >> 7; s ^= s << 17; return s }
}

func seconds(_ d: Duration) -> Double {
    Double(d.components.seconds) + Double(d.components.attoseconds) / 1e18
}

func fmt(_ x: Double, _ digits: Int = 2) -> String {
    var p = 1.0
    for _ in 0..<digits { p *= 10 }
    let v = (x * p).rounded() / p
    return String(v)
}

/// CPU time of the calling thread (seconds): less sensitive than wall time to other jobs on the machine.
func threadCPU() -> Double { cpuSeconds(thread: true) }

/// Process CPU time (seconds), every thread: what a scan with workers costs in all.
func processCPU() -> Double { cpuSeconds(thread: false) }

func cpuSeconds(thread: Bool) -> Double {
    #if canImport(Glibc)
    var ts = timespec()
    clock_gettime(thread ? CLOCK_THREAD_CPUTIME_ID : CLOCK_PROCESS_CPUTIME_ID, &ts)
    return Double(ts.tv_sec) + Double(ts.tv_nsec) / 1e9
    #else
    return 0
    #endif
}

/// `real [N]` (scan workers: KMEMLEAK_BENCH_WORKERS, unset or 1: serial): issue 10's realistic C heap (Benchmarks/ScanVsLSan/scan-client.c `real`), laid out as
/// glibc's malloc would (16-byte chunk headers, address order), scanned twice by the engine alone:
/// the word loop's cost on a real heap without process_vm_readv.
func realHeapBench(_ n: Int) {
    let leaks = 1000
    let total = n + leaks
    var seed: UInt64 = 0x2545_f491_4f6c_dd1d
    func next() -> UInt64 { seed ^= seed << 13; seed ^= seed >> 7; seed ^= seed << 17; return seed }
    func realSize() -> Int {
        let r = next() % 100
        if r < 60 { return 16 + Int(next() % 48) }
        if r < 90 { return 64 + Int(next() % 448) }
        if r < 99 { return 512 + Int(next() % 3584) }
        return 4096 + Int(next() % 12288)
    }
    let heapBase: UInt64 = 0x5555_0000_0000
    var sizes: [Int] = []
    var addrs: [UInt64] = []
    sizes.reserveCapacity(total)
    addrs.reserveCapacity(total)
    var top = heapBase + 16
    for _ in 0..<total {
        let s = realSize()
        sizes.append(s)
        addrs.append(top)
        top += UInt64(max(32, (s + 8 + 15) & ~15))
    }
    let chains = 1000
    let rootAddr = heapBase - 0x4000
    let mem = FlatMemory(base: rootAddr, size: Int(top - rootAddr))
    var heads = [UInt64](repeating: 0, count: chains)
    for i in 0..<n {
        let a = addrs[i]
        let lo = addrs[0]
        let hi = i > 0 ? addrs[i - 1] + UInt64(sizes[i - 1]) : lo
        for w in 1..<(sizes[i] / 8) {
            let r = next() % 100
            var v: UInt64 = 0
            if r < 25 && i > 0 {
                v = addrs[Int(next() % UInt64(i))] + (r < 20 ? 0 : 8 * (next() % 2))
            } else if r < 35 && hi > lo {
                v = lo + next() % (hi - lo)
            } else if r < 55 {
                v = next() % 100_000
            } else if r < 80 {
                v = 0x6c61_763d_656d_616e >> (8 * (next() % 4)) & 0xffff_ffff | (0x61 + next() % 26) << 40
            }
            mem.store(a + UInt64(w * 8), v)
        }
        mem.store(a, heads[i % chains])
        heads[i % chains] = a
    }
    for (k, h) in heads.enumerated() { mem.store(rootAddr + UInt64(k * 8), h) }
    // Leaks: 0x5a-filled, unreferenced.
    for i in n..<total { for w in 0..<(sizes[i] / 8) { mem.store(addrs[i] + UInt64(w * 8), 0x5a5a_5a5a_5a5a_5a5a) } }
    print("kmemleak-engine-bench real: \(n) live objects + \(leaks) leaks, \((top - heapBase) >> 20) MiB heap")
    var config = KmemleakConfiguration(possibleCPUs: 2, minimumAge: 0)
    let workers = getenv("KMEMLEAK_BENCH_WORKERS").flatMap { Int(String(cString: $0)) } ?? 1
    if workers > 1 {
        // The daemon's pool (kmemleakd --scan-workers).
        config.scanWorkers = ScanThreads.pool(threads: workers)
        mem.concurrent = true
    }
    print("scan workers: \(workers)")
    let engine = Kmemleak(configuration: config)
    engine.setRoots([RootRegion(start: rootAddr, length: UInt64(chains * 8), kind: .data)])
    for i in 0..<total {
        engine.alloc(addrs[i], size: UInt64(sizes[i]), metadata: ObjectMetadata(
            pid: 1000, comm: 1, creationTime: 0, trace: UInt32(i % 512), seq: UInt64(i)))
    }
    print("engine memory: \(fmt(Double(engine.memoryBytes) / Double(total), 1)) B/object")
    for (name, b) in engine.memoryBreakdown() where b > 0 { print("  \(name): \(fmt(Double(b) / Double(total), 2)) B/object") }
    for k in 1...3 {
        let c0 = threadCPU()
        let p0 = processCPU()
        let t0 = ContinuousClock.now
        let r = engine.scan(now: UInt64(k) * 10_000_000_000, memory: mem, shouldStop: { false })
        let wall = seconds(ContinuousClock.now - t0)
        print("scan \(k): wall \(fmt(wall, 3)) s, process CPU \(fmt(processCPU() - p0, 3)) s, thread CPU \(fmt(threadCPU() - c0, 3)) s; "
            + "bytes scanned \(r.bytesScanned), new leaks \(r.newLeaks)")
    }
}

let args = CommandLine.arguments
if args.count > 1 && args[1] == "real" {
    realHeapBench(args.count > 2 ? Int(args[2]) ?? 1_000_000 : 1_000_000)
    exit(0)
}
let n = args.count > 1 ? Int(args[1]) ?? 1_000_000 : 1_000_000
let leaks = n / 100
let objSize = 48  // 6 words: 2 child pointers, a back pointer, 3 data words
let heapBase: UInt64 = 0x7f00_0000_0000
let rootAddr: UInt64 = heapBase - 0x1000
let total = n + leaks
let mem = FlatMemory(base: rootAddr, size: 0x1000 + total * objSize)
func addr(_ i: Int) -> UInt64 { heapBase + UInt64(i * objSize) }

// A binary tree over objects 0..<n (child pointers to 2i+1, 2i+2; interior back pointer to the parent),
// plus `leaks` unreferenced objects with zero contents, plus non-pointer data words.
var rng = XorShift(s: 0x9e37_79b9_7f4a_7c15)
for i in 0..<n {
    let a = addr(i)
    if 2 * i + 1 < n { mem.store(a, addr(2 * i + 1)) }
    if 2 * i + 2 < n { mem.store(a + 8, addr(2 * i + 2)) }
    if i > 0 { mem.store(a + 16, addr((i - 1) / 2) + 8) }
    mem.store(a + 24, rng.next() & 0xffff_ffff)
    mem.store(a + 32, UInt64(i))
}
mem.store(rootAddr, addr(0))

var order = Array(0..<total)
for i in stride(from: order.count - 1, to: 0, by: -1) {
    let j = Int(rng.next() % UInt64(i + 1))
    order.swapAt(i, j)
}

print("kmemleak-engine-bench: \(n) tree objects + \(leaks) leaked, \(objSize) bytes each")

let clock = ContinuousClock()
let engine = Kmemleak(configuration: KmemleakConfiguration(possibleCPUs: 2, minimumAge: 0))
engine.setRoots([RootRegion(start: rootAddr, length: 0x1000, kind: .data)])
let cpuR = threadCPU()
let tReg = clock.measure {
    for i in order {
        engine.alloc(addr(i), size: UInt64(objSize), metadata: ObjectMetadata(
            pid: Int32(1000 + i % 8), comm: UInt32(i % 8), creationTime: 0, trace: UInt32(i % 512), seq: UInt64(i)))
    }
}
print("register (shuffled order): \(fmt(seconds(tReg), 3)) s, \(fmt(seconds(tReg) * 1e9 / Double(total), 0)) ns/object; thread CPU \(fmt(threadCPU() - cpuR, 3)) s")

let engine2 = Kmemleak(configuration: KmemleakConfiguration(possibleCPUs: 2, minimumAge: 0))
let tReg2 = clock.measure {
    engine2.reserveCapacity(total)
    for i in 0..<total {
        engine2.alloc(addr(i), size: UInt64(objSize), metadata: ObjectMetadata(
            pid: Int32(1000 + i % 8), comm: UInt32(i % 8), creationTime: 0, trace: UInt32(i % 512), seq: UInt64(i)))
    }
}
print("register (address order, reserveCapacity): \(fmt(seconds(tReg2), 3)) s, \(fmt(seconds(tReg2) * 1e9 / Double(total), 0)) ns/object")

let perObj = Double(engine.memoryBytes) / Double(engine.objectCount)
let perObj2 = Double(engine2.memoryBytes) / Double(engine2.objectCount)
print("engine memory: \(fmt(perObj, 1)) B/object (shuffled), \(fmt(perObj2, 1)) B/object (address order, reserved)")
for (name, b) in engine.memoryBreakdown() where b > 0 { print("  shuffled, \(name): \(fmt(Double(b) / Double(total), 2)) B/object") }

var result = ScanResult()
let cpu0 = threadCPU()
let tScan = clock.measure { result = engine.scan(now: 10_000_000_000, memory: mem, shouldStop: { false }) }
let cpuScan = threadCPU() - cpu0
print("scan 1: \(fmt(seconds(tScan), 3)) s; objects scanned \(result.objectsScanned), bytes scanned \(result.bytesScanned), "
    + "bytes checksummed \(result.bytesChecksummed), new leaks \(result.newLeaks), read calls \(mem.calls), ranges \(mem.ranges)")
print("  \(fmt(Double(result.bytesScanned) / seconds(tScan) / 1e6, 1)) MB/s scanned, \(fmt(seconds(tScan) * 1e9 / Double(total), 0)) ns/object; "
    + "thread CPU time \(fmt(cpuScan, 3)) s")
mem.calls = 0
mem.ranges = 0
let tScan2 = clock.measure { result = engine.scan(now: 20_000_000_000, memory: mem, shouldStop: { false }) }
print("scan 2: \(fmt(seconds(tScan2), 3)) s; new leaks \(result.newLeaks)")

engine2.setRoots([RootRegion(start: rootAddr, length: 0x1000, kind: .data)])
_ = engine2.scan(now: 10_000_000_000, memory: mem, shouldStop: { false })
let cpu3 = threadCPU()
let tScan3 = clock.measure { result = engine2.scan(now: 20_000_000_000, memory: mem, shouldStop: { false }) }
let cpuScan3 = threadCPU() - cpu3
print("scan, engine registered in address order (slots follow addresses): \(fmt(seconds(tScan3), 3)) s, "
    + "\(fmt(Double(result.bytesScanned) / seconds(tScan3) / 1e6, 1)) MB/s; thread CPU time \(fmt(cpuScan3, 3)) s")

// Cancellation latency: stop after the first few batches.
var checks = 0
let tStop = clock.measure {
    result = engine.scan(now: 30_000_000_000, memory: mem, shouldStop: { checks += 1; return checks > 50 })
}
print("interrupted scan: \(fmt(seconds(tStop) * 1000, 2)) ms until stop after 50 checks, interrupted=\(result.interrupted), new leaks \(result.newLeaks)")

// Latency of a concurrent caller (alloc + free of a spare object) while a full scan runs.
let spareBase: UInt64 = 0x6000_0000_0000
let probe = Task.detached { () -> (Int, Double) in
    let c = ContinuousClock()
    var worst = Duration.zero
    var calls = 0
    let start = c.now
    while c.now - start < .milliseconds(600) {
        let t0 = c.now
        engine.alloc(spareBase + UInt64(calls % 1024) * 64, size: 64, metadata: ObjectMetadata(seq: UInt64(10_000_000 + calls)))
        engine.free(spareBase + UInt64(calls % 1024) * 64)
        let d = c.now - t0
        if d > worst { worst = d }
        calls += 1
    }
    return (calls, seconds(worst))
}
let tScan4 = clock.measure { result = engine.scan(now: 40_000_000_000, memory: mem, shouldStop: { false }) }
let (probeCalls, worst) = await probe.value
print("concurrent caller during a \(fmt(seconds(tScan4), 3)) s scan: \(probeCalls) alloc+free pairs, worst \(fmt(worst * 1e6, 1)) µs")

var entries: [ReportEntry] = []
let tRep = clock.measure { entries = engine.reportSnapshot(memory: mem) }
struct NoContext: ReportContext {
    func comm(_ id: UInt32) -> String? { "bench" }
    func frames(_ trace: UInt32) -> [Address] { [0x40_1000 + UInt64(trace), 0x40_2000] }
    func symbolize(_ address: Address) -> String? { address == 0x40_2000 ? "main+0x10/0x40" : nil }
}
var bytes = 0
let tRender = clock.measure { for e in entries { bytes += Kmemleak.render(e, context: NoContext()).utf8.count } }
print("report: snapshot of \(entries.count) entries \(fmt(seconds(tRep) * 1000, 1)) ms, render \(fmt(seconds(tRender) * 1000, 1)) ms (\(bytes) bytes)")

// Latency seen by a concurrent caller is bounded by one lock hold (<= 4096 bytes of words).
#if canImport(Glibc)
var usage = rusage()
getrusage(__rusage_who_t(RUSAGE_SELF.rawValue), &usage)
print("process max RSS: \(usage.ru_maxrss / 1024) MiB (includes the \( (0x1000 + total * objSize) >> 20) MiB image and two engines)")
#endif
