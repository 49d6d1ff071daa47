// Render time of each view of the mount (LeakView.allCases: every view, including ones added later)
// for 10k and 100k leaks, from one call site and from as many sites as leaks, and the direct/indirect
// classification of as many leaks. Run: swift run -c release kmemleak-views-bench [reps]
import KmemleakEngine
import KmemleakPprof
import KmemleakPrometheus
import KmemleakReports

#if canImport(Glibc)
import Glibc
#endif

/// CPU time of the calling thread, seconds (other jobs on the machine count less than in wall time).
func threadCPUSeconds() -> Double {
    var ts = timespec()
    clock_gettime(CLOCK_THREAD_CPUTIME_ID, &ts)
    return Double(ts.tv_sec) + Double(ts.tv_nsec) / 1e9
}

func median(_ values: [Double]) -> Double { values.sorted()[values.count / 2] }

func ms(_ seconds: Double) -> String {
    let value = (seconds * 1e4).rounded() / 10
    return String(value) + " ms"
}

/// A DWARF-symbolized 6-frame stack in one module, at a site-specific offset.
func stack(site: Int) -> [[SymbolizedFrame]] {
    (0..<6).map { depth in
        let offset = UInt64(0x1000 + site * 0x40 + depth * 0x10_0000)
        return [SymbolizedFrame(address: 0x5555_0000_0000 + offset, module: "/usr/bin/server", buildID: "0123456789abcdef",
                                moduleOffset: offset, symbol: "function_\(site)_\(depth)", symbolOffset: 0x1c,
                                symbolSize: 0x80, file: "/src/server/module\(depth).c", line: 100 + site % 1000)]
    }
}

func snapshot(leaks count: Int, sites: Int) -> LeakSnapshot {
    let stacks = (0..<sites).map(stack(site:))
    var leaks: [Leak] = []
    leaks.reserveCapacity(count)
    for i in 0..<count {
        let site = i % sites
        let entry = ReportEntry(pointer: 0x7f00_0000_0000 + UInt64(i) * 64, size: 48, pid: 4242, comm: 1,
                                jiffies: 4_295_000_000, contents: Array(repeating: 0x41, count: 32), checksum: 0xdeadbeef,
                                trace: UInt32(site + 1), seq: UInt64(i), creationTime: 1_000_000_000)
        leaks.append(Leak(entry: entry, processID: 4242, comm: "server", kind: i % 3 == 0 ? .indirect : .direct,
                          stack: stacks[site]))
    }
    return LeakSnapshot(leaks: leaks, suppressed: [SuppressionCount(pattern: "libfoo.so", leaks: 3, bytes: 300)])
}

/// Leaks of 64 bytes back to back; every other one points to the next (chains of two).
final class ChainMemory: MemoryReader {
    let base: UInt64 = 0x7f00_0000_0000
    func read(_ ranges: UnsafeBufferPointer<MemoryRange>, into buffer: UnsafeMutableRawBufferPointer,
              bytesRead: UnsafeMutableBufferPointer<Int>) {
        var offset = 0
        for (i, range) in ranges.enumerated() {
            for word in stride(from: 0, to: range.length - 7, by: 8) {
                let address = range.address + UInt64(word)
                let index = (address - base) / 64
                let value: UInt64 = word == 0 && index % 2 == 0 ? base + (index + 1) * 64 : 0x4141_4141_4141_4141
                buffer.storeBytes(of: value, toByteOffset: offset + word, as: UInt64.self)
            }
            bytesRead[i] = range.length
            offset += range.length
        }
    }
}

/// Every byte of one view, as Detector.openView makes them: the pprof and Prometheus views through their
/// own modules (the daemon's counters as after one scan, the snapshot's one client).
func render(_ view: LeakView, _ data: LeakSnapshot) -> [UInt8] {
    switch view {
    case .pprof:
        return (try? PprofProfile.render(data, timeNanos: 1_700_000_000_000_000_000)) ?? []
    case .prometheus:
        let daemon = DaemonMetrics()
        daemon.scanFinished(after: .milliseconds(250))
        let client = ClientFigures(processID: 4242, comm: "server", trackedObjects: data.leaks.count * 10,
                                   trackedBytes: UInt64(data.leaks.count) * 480)
        return PrometheusExposition.render(snapshot: data, clients: [client], daemon: daemon)
    case .summary, .json:
        return view.render(data)?.allBytes ?? []
    }
}

let reps = CommandLine.arguments.count > 1 ? max(1, Int(CommandLine.arguments[1]) ?? 5) : 5
print("views: thread CPU time to render every byte, median of \(reps)")
for count in [10_000, 100_000] {
    for (label, sites) in [("one site", 1), ("\(count) sites", count)] {
        let data = snapshot(leaks: count, sites: sites)
        for view in LeakView.allCases {
            var times: [Double] = []
            var size = 0
            for _ in 0..<reps {
                let start = threadCPUSeconds()
                size = render(view, data).count
                times.append(threadCPUSeconds() - start)
            }
            print("  \(view.fileName), \(count) leaks, \(label): \(ms(median(times))) (\(size) bytes)")
        }
    }
}
print("direct/indirect classification (Kmemleak.indirectLeaks), chains of two 64-byte leaks:")
for count in [10_000, 100_000] {
    let entries = (0..<count).map { i in
        ReportEntry(pointer: 0x7f00_0000_0000 + UInt64(i) * 64, size: 64, pid: 1, comm: 1, jiffies: 0, contents: [],
                    checksum: 0, trace: 1, seq: UInt64(i))
    }
    var times: [Double] = []
    var indirect = 0
    for _ in 0..<reps {
        let start = threadCPUSeconds()
        indirect = Kmemleak.indirectLeaks(among: entries, memory: ChainMemory()).filter { $0 }.count
        times.append(threadCPUSeconds() - start)
    }
    print("  \(count) leaks: \(ms(median(times))) (\(indirect) indirect)")
}
