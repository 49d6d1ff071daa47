import KmemleakEngine
@testable import KmemleakReports

/// A leak as the daemon builds it: only the fields the views print are set.
func leak(_ pointer: UInt64, size: UInt64, process: Int32, tid: Int32? = nil, comm: String, kind: LeakKind = .direct,
          trace: UInt32, stack: [[SymbolizedFrame]], contents: [UInt8] = [], crc: UInt32 = 0, seq: UInt64 = 0) -> Leak {
    Leak(entry: ReportEntry(pointer: pointer, size: size, pid: tid ?? process, comm: 1, jiffies: 4_295_000_000 + seq,
                            contents: contents, checksum: crc, trace: trace, seq: seq, creationTime: 1_000_000_000 * (seq + 1)),
         processID: process, comm: comm, kind: kind, stack: stack)
}

/// A stack in the main executable with DWARF: leak_here (inlined into make_thing) <- main.
func appStack(loadBase: UInt64) -> [[SymbolizedFrame]] {
    [
        [SymbolizedFrame(address: loadBase + 0x11a9, module: "/usr/bin/app", buildID: "ab12", moduleOffset: 0x11a9,
                         symbol: "leak_here", file: "/src/app/leak.h", line: 7, inlined: true),
         SymbolizedFrame(address: loadBase + 0x11a9, module: "/usr/bin/app", buildID: "ab12", moduleOffset: 0x11a9,
                         symbol: "make_thing", symbolOffset: 0x19, symbolSize: 0x40, file: "/src/app/app.c", line: 11)],
        [SymbolizedFrame(address: loadBase + 0x12f0, module: "/usr/bin/app", buildID: "ab12", moduleOffset: 0x12f0,
                         symbol: "main", symbolOffset: 0x40, symbolSize: 0x80, file: "/src/app/app.c", line: 30)],
    ]
}

/// A stripped library frame: module and offset only.
func strippedStack(loadBase: UInt64) -> [[SymbolizedFrame]] {
    [[SymbolizedFrame(address: loadBase + 0x2040, module: "/usr/lib/libstripped.so.1", moduleOffset: 0x2040)],
     [SymbolizedFrame(address: 0x7000_0000_0010)]]
}

/// Two processes of one program (different load bases) leaking at the same sites, plus a thread with
/// a hostile comm leaking from a stripped library, a leaked cycle (one direct, one indirect), and a
/// suppression count.
func sampleSnapshot() -> LeakSnapshot {
    let base100: UInt64 = 0x5555_0000_0000, base101: UInt64 = 0x5566_0000_0000
    var leaks: [Leak] = []
    for i in 0..<3 {
        leaks.append(leak(0x1000 + UInt64(i) * 0x20, size: 16, process: 100, comm: "app", kind: i == 2 ? .indirect : .direct,
                          trace: 1, stack: appStack(loadBase: base100), seq: UInt64(i)))
    }
    leaks.append(leak(0x2000, size: 100, process: 100, tid: 102, comm: "w\"rk\ner", trace: 2,
                      stack: strippedStack(loadBase: 0x7f00_0000_0000), seq: 3))
    for i in 0..<2 {
        leaks.append(leak(0x3000 + UInt64(i) * 0x20, size: 16, process: 101, comm: "app", trace: 1,
                          stack: appStack(loadBase: base101), seq: UInt64(i)))
    }
    return LeakSnapshot(leaks: leaks, suppressed: [SuppressionCount(pattern: "libfoo*.so", leaks: 4, bytes: 400)])
}
