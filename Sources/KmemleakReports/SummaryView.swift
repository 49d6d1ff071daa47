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
            var out = ByteWriter()
            if index < view.blocks.count { view.renderBlock(index, into: &out) } else { view.renderEnd(into: &out) }
            return out.bytes
        }
    }

    func renderBlock(_ index: Int, into out: inout ByteWriter) {
        let block = blocks[index]
        out.decimal(block.bytes); out.raw(" byte(s) in "); out.decimal(block.objects); out.raw(" object(s) (")
        out.decimal(block.direct); out.raw(" direct, "); out.decimal(block.indirect); out.raw(" indirect) allocated from:\n")
        out.raw("  processes: ")
        let listed = block.processes.prefix(Self.maxProcessesListed)
        for (i, process) in listed.enumerated() {
            if i > 0 { out.raw(", ") }
            out.decimal(Int64(process.pid)); out.raw(" ("); out.raw(KFormat.escape(process.comm)); out.raw(")")
        }
        if block.processes.count > listed.count { out.raw(" and "); out.decimal(block.processes.count - listed.count); out.raw(" more") }
        out.raw("\n")
        var number = 0
        for frames in block.stack {
            for frame in frames {
                out.raw("    #"); out.decimal(number); out.raw(" ")
                Self.describe(frame, into: &out)
                out.raw("\n")
                number += 1
            }
        }
        out.raw("\n")
    }

    /// `0xADDRESS[ in SYMBOL[+0xOFF]][ FILE[:LINE]][ (MODULE+0xOFFSET)][ (inlined)]`.
    static func describe(_ frame: SymbolizedFrame, into out: inout ByteWriter) {
        out.raw("0x"); out.hex(frame.address, width: 16)
        if let symbol = frame.symbol {
            out.raw(" in "); out.raw(KFormat.escape(symbol))
            if let offset = frame.symbolOffset { out.raw("+0x"); out.hex(offset) }
        }
        if let file = frame.file {
            out.raw(" "); out.raw(KFormat.escape(file))
            if let line = frame.line { out.raw(":"); out.decimal(line) }
        }
        if let module = frame.module {
            out.raw(" ("); out.raw(KFormat.escape(module))
            if let offset = frame.moduleOffset { out.raw("+0x"); out.hex(offset) }
            out.raw(")")
        }
        if frame.inlined { out.raw(" (inlined)") }
    }

    func renderEnd(into out: inout ByteWriter) {
        if !suppressed.isEmpty {
            out.raw("Suppressions used:\n  count      bytes pattern\n")
            for count in suppressed {
                out.raw("  "); out.raw(Self.pad(String(count.leaks), 5)); out.raw(" "); out.raw(Self.pad(String(count.bytes), 10))
                out.raw(" leak:"); out.raw(KFormat.escape(count.pattern)); out.raw("\n")
            }
            out.raw("\n")
        }
        let suppressedLeaks = suppressed.reduce(0) { $0 + $1.leaks }
        let suppressedBytes = suppressed.reduce(UInt64(0)) { $0 &+ $1.bytes }
        out.raw("SUMMARY: "); out.decimal(totals.bytes); out.raw(" byte(s) leaked in "); out.decimal(totals.objects)
        out.raw(" allocation(s) ("); out.decimal(totals.direct); out.raw(" direct, "); out.decimal(totals.indirect)
        out.raw(" indirect) from "); out.decimal(blocks.count); out.raw(" backtrace(s); "); out.decimal(suppressedLeaks)
        out.raw(" suppressed ("); out.decimal(suppressedBytes); out.raw(" byte(s)).\n")
    }

    static func pad(_ s: String, _ width: Int) -> String {
        s.count >= width ? s : String(repeating: " ", count: width - s.count) + s
    }
}
