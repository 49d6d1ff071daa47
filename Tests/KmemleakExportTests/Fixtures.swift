// Synthetic snapshots for the pprof and Prometheus renderers, and the external tools that read them.
import Foundation
import Glibc
import KmemleakEngine
import KmemleakReports
import KmemleakTestSupport

/// Three call sites of one program (`site_a` 1000 times, `site_b` twice, `site_c` once, inlined into
/// `main`), in two processes: pid 100 has everything, pid 200 one more `site_a` leak.
enum Fixture {
    static let module = "/usr/bin/leaky"
    static let buildID = "4f1d2c3b4a59687766554433221100ffeeddccbb"
    static let mapping = ModuleMapping(start: 0x5555_5555_4000, limit: 0x5555_5555_9000, fileOffset: 0x1000)
    /// Where main() returns to in libc.
    static let libcFrame = SymbolizedFrame(
        address: 0x7fff_f7df_0d0a, module: "/usr/lib/x86_64-linux-gnu/libc.so.6", buildID: "aabbccdd",
        moduleOffset: 0x23d0a, symbol: "__libc_start_call_main", symbolOffset: 0x7a,
        mapping: ModuleMapping(start: 0x7fff_f7dc_d000, limit: 0x7fff_f7f2_2000, fileOffset: 0x26000))

    static func frame(_ address: Address, _ symbol: String?, line: Int?, inlined: Bool = false) -> SymbolizedFrame {
        SymbolizedFrame(address: address, module: module, buildID: buildID, moduleOffset: address - mapping.start + 0x1000,
                        symbol: symbol, symbolOffset: symbol == nil ? nil : 0x10, file: symbol == nil ? nil : "leaky.c",
                        line: line, inlined: inlined, mapping: mapping)
    }

    static let mainFrame = [frame(0x5555_5555_5300, "main", line: 40)]
    static let stackA: [[SymbolizedFrame]] = [[frame(0x5555_5555_5100, "site_a", line: 11)], mainFrame, [libcFrame]]
    static let stackB: [[SymbolizedFrame]] = [[frame(0x5555_5555_5180, "site_b", line: 17)], mainFrame, [libcFrame]]
    /// site_c inlined into main at one return address: innermost first.
    static let stackC: [[SymbolizedFrame]] = [
        [frame(0x5555_5555_5320, "site_c", line: 23, inlined: true), frame(0x5555_5555_5320, "main", line: 44)],
        [libcFrame],
    ]

    static func leak(_ pointer: Address, size: UInt64, pid: Int32, comm: String, stack: [[SymbolizedFrame]]) -> Leak {
        let entry = ReportEntry(pointer: pointer, size: size, pid: pid, comm: 0, jiffies: 0, contents: [],
                                checksum: 0, trace: 1)
        return Leak(entry: entry, processID: pid, comm: comm, kind: .direct, stack: stack)
    }

    static func threeSites(commOf200: String = "leaky") -> LeakSnapshot {
        var leaks: [Leak] = []
        for i in 0..<1000 { leaks.append(leak(0x1000_0000 + Address(i) * 64, size: 32, pid: 100, comm: "leaky", stack: stackA)) }
        leaks.append(leak(0x2000_0000, size: 100, pid: 100, comm: "leaky", stack: stackB))
        leaks.append(leak(0x2000_1000, size: 200, pid: 100, comm: "leaky", stack: stackB))
        leaks.append(leak(0x3000_0000, size: 4096, pid: 100, comm: "leaky", stack: stackC))
        leaks.append(leak(0x4000_0000, size: 32, pid: 200, comm: commOf200, stack: stackA))
        return LeakSnapshot(leaks: leaks, suppressed: [SuppressionCount(pattern: "libfoo.so", leaks: 7, bytes: 700)])
    }
}

/// A fresh directory, removed with its contents by `remove()`.
final class ScratchDirectory {
    let path: String
    init() throws {
        path = try makeTemporaryDirectory("/tmp/kmemleak-export.XXXXXX")
    }
    func write(_ name: String, _ bytes: [UInt8]) throws -> String {
        let file = path + "/" + name
        guard FileManager.default.createFile(atPath: file, contents: Data(bytes)) else { throw TestError("cannot write \(file)") }
        return file
    }
    func remove() { try? FileManager.default.removeItem(atPath: path) }
}
