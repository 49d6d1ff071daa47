// MOUNTPOINT/kmemleak.summary: LeakSanitizer's "N byte(s) in M object(s) allocated from" blocks.
import KmemleakEngine

/// The summary: one block per distinct backtrace, largest total size first (then most objects, then
/// first seen), then the suppressions that matched and one line of totals.
///
/// Blocks group across processes: two frames are the same when they lie at the same offset of the
/// same module (`SymbolizedFrame.module` and `moduleOffset`), so the workers of one program leaking at
/// one site share one block, whatever their load addresses. A frame without a module compares by its
/// address within its process only. Every client-supplied string (comm, symbol, file and module
/// names) prints escaped as in the kernel-format file (`KFormat.escape`), so no name can forge a line.
///
/// ```
/// 40000 byte(s) in 1000 object(s) (1000 direct, 0 indirect) allocated from:
///   processes: 4242 (leaky)
///     #0 0x000055d0c0a3b1a9 in leak_many+0x19 leaky.c:11 (/usr/bin/leaky+0x11a9)
///     #1 0x000055d0c0a3b2f0 in main+0x40 leaky.c:30 (/usr/bin/leaky+0x12f0)
///
/// Suppressions used:
///   count      bytes pattern
///      10        400 leak:libfoo.so
///
/// SUMMARY: 40064 byte(s) leaked in 1002 allocation(s) (1001 direct, 1 indirect) from 3 backtrace(s); 10 suppressed (400 byte(s)).
/// ```
public struct SummaryView: Sendable {
    /// At most this many `pid (comm)` pairs print per block; the rest are counted.
    public static let maxProcessesListed = 8

    struct Block: Sendable {
        var objects = 0
        var bytes: UInt64 = 0
        var direct = 0
        var indirect = 0
        var firstSeen: Int
        /// The first leak's stack: the frames the block prints.
        var stack: [[SymbolizedFrame]]
        /// Distinct (process, comm) pairs in first-seen order.
        var processes: [ProcessName] = []
        var processSet: Set<ProcessName> = []
    }

    struct ProcessName: Hashable, Sendable {
        var pid: Int32
        var comm: String
    }

    /// One frame's identity for grouping (see the type's comment).
    enum FrameKey: Hashable {
        case inModule(String, UInt64)
        case address(process: Int32, UInt64)
    }

    let blocks: [Block]
    let suppressed: [SuppressionCount]
    let totals: (objects: Int, bytes: UInt64, direct: Int, indirect: Int)

    public init(_ snapshot: LeakSnapshot) {
        var blocks: [Block] = []
        var blockOf: [[FrameKey]: Int] = [:]
        // Keys of one (process, stack-depot id): 100k leaks from one site compute theirs once.
        var keyCache: [ProcessTrace: [FrameKey]] = [:]
        var totals = (objects: 0, bytes: UInt64(0), direct: 0, indirect: 0)
        for (position, leak) in snapshot.leaks.enumerated() {
            let cacheKey = ProcessTrace(process: leak.processID, trace: leak.entry.trace)
            let key: [FrameKey]
            if let cached = keyCache[cacheKey] {
                key = cached
            } else {
                key = Self.key(of: leak)
                keyCache[cacheKey] = key
            }
            let index: Int
            if let existing = blockOf[key] {
                index = existing
            } else {
                index = blocks.count
                blockOf[key] = index
                blocks.append(Block(firstSeen: position, stack: leak.stack))
            }
            blocks[index].objects += 1
            blocks[index].bytes &+= leak.entry.size
            if leak.kind == .direct { blocks[index].direct += 1 } else { blocks[index].indirect += 1 }
            let name = ProcessName(pid: leak.processID, comm: leak.comm)
            if blocks[index].processSet.insert(name).inserted { blocks[index].processes.append(name) }
            totals.objects += 1
            totals.bytes &+= leak.entry.size
            if leak.kind == .direct { totals.direct += 1 } else { totals.indirect += 1 }
        }
        blocks.sort { a, b in
            if a.bytes != b.bytes { return a.bytes > b.bytes }
            if a.objects != b.objects { return a.objects > b.objects }
            return a.firstSeen < b.firstSeen
        }
        self.blocks = blocks
        self.suppressed = snapshot.suppressed
        self.totals = totals
    }

    struct ProcessTrace: Hashable {
        var process: Int32
        var trace: UInt32
    }

    static func key(of leak: Leak) -> [FrameKey] {
        leak.stack.map { frames in
            // Every frame of one return address shares its address and module: the first one speaks.
            guard let frame = frames.first else { return .address(process: leak.processID, 0) }
            if let module = frame.module, let offset = frame.moduleOffset { return .inModule(module, offset) }
            return .address(process: leak.processID, frame.address)
        }
    }

    /// The blocks, then one chunk with the suppressions and the totals line.
    public var output: ViewOutput {
        let view = self
        return .chunks(count: blocks.count + 1) { index in
            index < view.blocks.count ? Array(view.renderBlock(index).utf8) : Array(view.renderEnd().utf8)
        }
    }

    func renderBlock(_ index: Int) -> String {
        let block = blocks[index]
        var s = "\(block.bytes) byte(s) in \(block.objects) object(s) (\(block.direct) direct, \(block.indirect) indirect) allocated from:\n"
        let listed = block.processes.prefix(Self.maxProcessesListed).map { "\($0.pid) (\(KFormat.escape($0.comm)))" }
        s += "  processes: " + listed.joined(separator: ", ")
        if block.processes.count > listed.count { s += " and \(block.processes.count - listed.count) more" }
        s += "\n"
        var number = 0
        for frames in block.stack {
            for frame in frames {
                s += "    #\(number) " + Self.describe(frame) + "\n"
                number += 1
            }
        }
        return s + "\n"
    }

    /// `0xADDRESS[ in SYMBOL[+0xOFF]][ FILE[:LINE]][ (MODULE+0xOFFSET)][ (inlined)]`.
    static func describe(_ frame: SymbolizedFrame) -> String {
        var s = "0x" + KFormat.hex(frame.address, width: 16)
        if let symbol = frame.symbol {
            s += " in " + KFormat.escape(symbol)
            if let offset = frame.symbolOffset { s += "+0x" + KFormat.hex(offset) }
        }
        if let file = frame.file {
            s += " " + KFormat.escape(file)
            if let line = frame.line { s += ":\(line)" }
        }
        if let module = frame.module {
            s += " (" + KFormat.escape(module)
            if let offset = frame.moduleOffset { s += "+0x" + KFormat.hex(offset) }
            s += ")"
        }
        if frame.inlined { s += " (inlined)" }
        return s
    }

    func renderEnd() -> String {
        var s = ""
        if !suppressed.isEmpty {
            s += "Suppressions used:\n  count      bytes pattern\n"
            for count in suppressed {
                s += "  " + Self.pad(String(count.leaks), 5) + " " + Self.pad(String(count.bytes), 10)
                s += " leak:" + KFormat.escape(count.pattern) + "\n"
            }
            s += "\n"
        }
        let suppressedLeaks = suppressed.reduce(0) { $0 + $1.leaks }
        let suppressedBytes = suppressed.reduce(UInt64(0)) { $0 &+ $1.bytes }
        s += "SUMMARY: \(totals.bytes) byte(s) leaked in \(totals.objects) allocation(s)"
        s += " (\(totals.direct) direct, \(totals.indirect) indirect) from \(blocks.count) backtrace(s);"
        s += " \(suppressedLeaks) suppressed (\(suppressedBytes) byte(s)).\n"
        return s
    }

    static func pad(_ s: String, _ width: Int) -> String {
        s.count >= width ? s : String(repeating: " ", count: width - s.count) + s
    }
}
