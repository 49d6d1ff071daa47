import Foundation
import KmemleakEngine
import Testing
@testable import KmemleakReports

func text(_ output: ViewOutput?) -> String { String(decoding: output?.allBytes ?? [], as: UTF8.self) }

@Suite struct SummaryViewTests {
    /// Grouping across processes by module offset, largest total first, direct/indirect counts,
    /// frames with file:line, inlined and stripped frames, escaped comm, suppressions, totals.
    @Test func golden() {
        let expected = #"""
            100 byte(s) in 1 object(s) (1 direct, 0 indirect) allocated from:
              processes: 100 (w\"rk\ner)
                #0 0x00007f0000002040 (/usr/lib/libstripped.so.1+0x2040)
                #1 0x0000700000000010

            80 byte(s) in 5 object(s) (4 direct, 1 indirect) allocated from:
              processes: 100 (app), 101 (app)
                #0 0x00005555000011a9 in leak_here /src/app/leak.h:7 (/usr/bin/app+0x11a9) (inlined)
                #1 0x00005555000011a9 in make_thing+0x19 /src/app/app.c:11 (/usr/bin/app+0x11a9)
                #2 0x00005555000012f0 in main+0x40 /src/app/app.c:30 (/usr/bin/app+0x12f0)

            Suppressions used:
              count      bytes pattern
                  4        400 leak:libfoo*.so

            SUMMARY: 180 byte(s) leaked in 6 allocation(s) (5 direct, 1 indirect) from 2 backtrace(s); 4 suppressed (400 byte(s)).

            """#
        #expect(text(LeakView.summary.render(sampleSnapshot())) == expected)
    }

    @Test func emptySnapshotIsTheTotalsLine() {
        #expect(text(LeakView.summary.render(LeakSnapshot())) ==
                "SUMMARY: 0 byte(s) leaked in 0 allocation(s) (0 direct, 0 indirect) from 0 backtrace(s); 0 suppressed (0 byte(s)).\n")
    }

    /// Frames without a module compare by address within their process only: the same bare
    /// addresses in two processes are two blocks. Ties in size order by object count, then first seen.
    @Test func bareFramesGroupPerProcess() {
        let bare: [[SymbolizedFrame]] = [[SymbolizedFrame(address: 0x401000)]]
        let snapshot = LeakSnapshot(leaks: [
            leak(0x10, size: 8, process: 1, comm: "a", trace: 1, stack: bare),
            leak(0x20, size: 8, process: 2, comm: "b", trace: 1, stack: bare),
            leak(0x30, size: 8, process: 2, comm: "b", trace: 1, stack: bare),
            leak(0x40, size: 16, process: 3, comm: "c", trace: 1, stack: bare),
        ])
        let summary = SummaryView(snapshot)
        #expect(summary.blocks.map(\.objects) == [2, 1, 1])
        #expect(summary.blocks.map { $0.processes.map(\.pid) } == [[2], [3], [1]])
    }

    /// At most 8 pid (comm) pairs are listed per block, the rest counted.
    @Test func manyProcessesAreCounted() {
        var leaks: [Leak] = []
        for i in 0..<10 {
            let pointer = UInt64(0x1000 + i * 0x100)
            leaks.append(leak(pointer, size: 8, process: Int32(100 + i), comm: "w", trace: 1, stack: appStack(loadBase: UInt64(i) << 32)))
        }
        let block = text(LeakView.summary.render(LeakSnapshot(leaks: leaks)))
        #expect(block.contains("  processes: 100 (w), 101 (w), 102 (w), 103 (w), 104 (w), 105 (w), 106 (w), 107 (w) and 2 more\n"))
    }

    /// 100k leaks from one site are one block (the point of the view), rendered in a few chunks.
    @Test func hundredThousandLeaksFromOneSiteAreOneBlock() throws {
        let stack = appStack(loadBase: 0x5555_0000_0000)
        var leaks: [Leak] = []
        for i in 0..<100_000 {
            let kind: LeakKind = i % 4 == 0 ? .indirect : .direct
            leaks.append(leak(0x1000_0000 + UInt64(i) * 32, size: 24, process: 7, comm: "big", kind: kind, trace: 3,
                              stack: stack, seq: UInt64(i)))
        }
        let output = try #require(LeakView.summary.render(LeakSnapshot(leaks: leaks)))
        guard case .chunks(let count, _) = output else { Issue.record("not streamed"); return }
        #expect(count == 2)
        let lines = text(output).split(separator: "\n")
        #expect(lines.first == "2400000 byte(s) in 100000 object(s) (75000 direct, 25000 indirect) allocated from:")
        #expect(lines.last == "SUMMARY: 2400000 byte(s) leaked in 100000 allocation(s) (75000 direct, 25000 indirect) from 1 backtrace(s); 0 suppressed (0 byte(s)).")
        #expect(lines.count == 6)
    }
}

@Suite struct JSONViewTests {
    @Test func golden() {
        let one = leak(0x5555_6666_0010, size: 40, process: 100, tid: 101, comm: "app", kind: .indirect, trace: 1,
                       stack: appStack(loadBase: 0x5555_0000_0000) + strippedStack(loadBase: 0x7f00_0000_0000),
                       contents: [0xde, 0xad, 0x00, 0x0f], crc: 0x1234abcd, seq: 4)
        let expected = #"{"address":"0x555566660010","size":40,"pid":100,"tid":101,"comm":"app","creation_time_ns":5000000000,"jiffies":4295000004,"crc":"0x1234abcd","first_bytes_hex":"dead000f","kind":"indirect","percpu":false,"frames":["#
            + #"{"address":"0x5555000011a9","module":"/usr/bin/app","build_id":"ab12","module_offset":"0x11a9","symbol":"leak_here","symbol_offset":null,"file":"/src/app/leak.h","line":7,"inlined":true},"#
            + #"{"address":"0x5555000011a9","module":"/usr/bin/app","build_id":"ab12","module_offset":"0x11a9","symbol":"make_thing","symbol_offset":"0x19","file":"/src/app/app.c","line":11,"inlined":false},"#
            + #"{"address":"0x5555000012f0","module":"/usr/bin/app","build_id":"ab12","module_offset":"0x12f0","symbol":"main","symbol_offset":"0x40","file":"/src/app/app.c","line":30,"inlined":false},"#
            + #"{"address":"0x7f0000002040","module":"/usr/lib/libstripped.so.1","build_id":null,"module_offset":"0x2040","symbol":null,"symbol_offset":null,"file":null,"line":null,"inlined":false},"#
            + #"{"address":"0x700000000010","module":null,"build_id":null,"module_offset":null,"symbol":null,"symbol_offset":null,"file":null,"line":null,"inlined":false}]}"#
            + "\n"
        #expect(text(LeakView.json.render(LeakSnapshot(leaks: [one]))) == expected)
    }

    /// One line per leak, in snapshot order, each a JSON object a real parser reads back.
    @Test func oneParsableLinePerLeak() throws {
        let snapshot = sampleSnapshot()
        let lines = text(LeakView.json.render(snapshot)).split(separator: "\n", omittingEmptySubsequences: false)
        #expect(lines.count == snapshot.leaks.count + 1 && lines.last == "")
        for (line, leak) in zip(lines, snapshot.leaks) {
            let object = try #require(try JSONSerialization.jsonObject(with: Data(line.utf8)) as? [String: Any])
            #expect(object["address"] as? String == "0x" + String(leak.entry.pointer, radix: 16))
            #expect(object["pid"] as? Int == Int(leak.processID))
            #expect(object["comm"] as? String == leak.comm)
            #expect(object["kind"] as? String == leak.kind.rawValue)
            #expect((object["frames"] as? [Any])?.count == leak.stack.reduce(0) { $0 + $1.count })
        }
    }

    /// Every client-supplied string survives a real JSON parser unchanged: quotes, backslashes,
    /// control characters, DEL, U+2028/9, and invalid UTF-8 (U+FFFD after decoding).
    @Test func hostileStringsAreEscaped() throws {
        let hostile = [
            "q\"uote\\back", "new\nline\r\t", "\u{01}\u{1f}\u{7f}", "line\u{2028}sep\u{2029}", "é中🙂",
            String(decoding: [0x61, 0xff, 0xc3, 0x28, 0x62], as: UTF8.self), "\0nul",
        ]
        for string in hostile {
            let frame = SymbolizedFrame(address: 1, module: string, buildID: string, symbol: string, file: string)
            let bytes = LeakView.json.render(LeakSnapshot(leaks: [leak(0x10, size: 8, process: 1, comm: string, trace: 1, stack: [[frame]])]))?.allBytes ?? []
            #expect(String(validating: bytes, as: UTF8.self) != nil)
            #expect(bytes.filter { $0 == 0x0a }.count == 1, "one line")
            #expect(!bytes.dropLast().contains { $0 < 0x20 }, "no raw control byte")
            let object = try #require(try JSONSerialization.jsonObject(with: Data(bytes)) as? [String: Any])
            #expect(object["comm"] as? String == string)
            let parsed = try #require((object["frames"] as? [[String: Any]])?.first)
            for key in ["module", "build_id", "symbol", "file"] { #expect(parsed[key] as? String == string, "\(key)") }
        }
    }
}

/// A flat synthetic address space (one heap region) for a real engine.
final class FlatMemory: MemoryReader {
    let base: UInt64
    var bytes: [UInt8]
    init(base: UInt64, size: Int) { self.base = base; bytes = [UInt8](repeating: 0, count: size) }
    func store(_ value: UInt64, at address: UInt64) {
        for i in 0..<8 { bytes[Int(address - base) + i] = UInt8(truncatingIfNeeded: value >> (8 * UInt64(i))) }
    }
    func read(_ ranges: UnsafeBufferPointer<MemoryRange>, into buffer: UnsafeMutableRawBufferPointer,
              bytesRead: UnsafeMutableBufferPointer<Int>) {
        var offset = 0
        for (i, range) in ranges.enumerated() {
            let start = Int(range.address &- base)
            let count = range.address >= base && start < bytes.count ? min(range.length, bytes.count - start) : 0
            for k in 0..<count { buffer[offset + k] = bytes[start + k] }
            bytesRead[i] = count
            offset += range.length
        }
    }
}

@Suite struct EngineToSummaryTests {
    /// A real engine's report, classified and summarized: a leaked cycle of three from one site
    /// (one direct member) and two children from another, pointed to by the cycle (indirect).
    @Test func leakedCycleHasOneDirectMember() {
        let engine = Kmemleak(configuration: KmemleakConfiguration(minimumAge: 0))
        let heap: UInt64 = 0x10000
        let memory = FlatMemory(base: heap, size: 0x1000)
        let cycle = [heap, heap + 0x100, heap + 0x200], children = [heap + 0x300, heap + 0x400]
        var seq: UInt64 = 0
        for (i, p) in (cycle + children).enumerated() {
            seq += 1
            engine.alloc(p, size: 64, metadata: ObjectMetadata(pid: 1, comm: 1, creationTime: 0, trace: i < 3 ? 1 : 2, seq: seq))
        }
        for i in 0..<3 { memory.store(cycle[(i + 1) % 3], at: cycle[i]) }
        memory.store(children[0], at: cycle[0] + 8)
        memory.store(children[1] + 8, at: cycle[2] + 8)  // interior
        engine.setRoots([])
        for now in [10, 20] as [UInt64] { _ = engine.scan(now: now * 1_000_000_000, memory: memory) }
        let entries = engine.reportSnapshot(memory: memory)
        let indirect = Kmemleak.indirectLeaks(among: entries, memory: memory)
        let stacks: [UInt32: [[SymbolizedFrame]]] = [
            1: [[SymbolizedFrame(address: 0x401000, module: "/bin/t", moduleOffset: 0x1000, symbol: "make_node")]],
            2: [[SymbolizedFrame(address: 0x402000, module: "/bin/t", moduleOffset: 0x2000, symbol: "make_child")]],
        ]
        let leaks = zip(entries, indirect).map { entry, isIndirect in
            Leak(entry: entry, processID: 1, comm: "t", kind: isIndirect ? .indirect : .direct, stack: stacks[entry.trace] ?? [])
        }
        let summary = text(LeakView.summary.render(LeakSnapshot(leaks: leaks)))
        #expect(summary.contains("192 byte(s) in 3 object(s) (1 direct, 2 indirect) allocated from:\n"))
        #expect(summary.contains("128 byte(s) in 2 object(s) (0 direct, 2 indirect) allocated from:\n"))
        #expect(summary.hasSuffix("SUMMARY: 320 byte(s) leaked in 5 allocation(s) (1 direct, 4 indirect) from 2 backtrace(s); 0 suppressed (0 byte(s)).\n"))
        // The direct one is the oldest member of the cycle.
        #expect(zip(entries, indirect).filter { !$0.1 }.map { $0.0.pointer } == [cycle[0]])
    }
}
