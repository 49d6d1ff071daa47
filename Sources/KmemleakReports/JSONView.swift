// MOUNTPOINT/kmemleak.json: NDJSON, one object per leak (schema in README.md, "kmemleak.json").
import KmemleakEngine

/// One JSON object per line per leak, in report order. Addresses, offsets and the crc are strings
/// (`"0x..."`): JSON numbers lose precision above 2^53 in most readers. Unknown fields are `null`,
/// so every line has every key.
public struct JSONView: Sendable {
    let leaks: [Leak]
    /// Leaks per chunk: the frames of one stack render once per chunk (leaks from one site share them).
    static let leaksPerChunk = 64

    public init(_ snapshot: LeakSnapshot) { leaks = snapshot.leaks }

    public var output: ViewOutput {
        let leaks = self.leaks
        let chunks = (leaks.count + Self.leaksPerChunk - 1) / Self.leaksPerChunk
        return .chunks(count: chunks) { chunk in
            let range = (chunk * Self.leaksPerChunk)..<min(leaks.count, (chunk + 1) * Self.leaksPerChunk)
            var out = ByteWriter()
            var framesOf: [StackKey: [UInt8]] = [:]
            for leak in leaks[range] {
                let key = StackKey(process: leak.processID, trace: leak.entry.trace)
                let frames: [UInt8]
                if let known = framesOf[key] {
                    frames = known
                } else {
                    frames = Self.frames(leak.stack)
                    framesOf[key] = frames
                }
                Self.line(leak, frames: frames, into: &out)
            }
            return out.bytes
        }
    }

    /// One stack-depot id of one process: the same frames.
    struct StackKey: Hashable {
        var process: Int32
        var trace: UInt32
    }

    static func line(_ leak: Leak) -> [UInt8] {
        var out = ByteWriter()
        line(leak, frames: frames(leak.stack), into: &out)
        return out.bytes
    }

    static func line(_ leak: Leak, frames: [UInt8], into out: inout ByteWriter) {
        let e = leak.entry
        out.raw("{\"address\":"); out.hexString(e.pointer)
        out.raw(",\"size\":"); out.decimal(e.size)
        out.raw(",\"pid\":"); out.decimal(Int64(leak.processID))
        out.raw(",\"tid\":"); out.decimal(Int64(e.pid))
        out.raw(",\"comm\":"); out.jsonString(leak.comm)
        out.raw(",\"creation_time_ns\":"); out.decimal(e.creationTime)
        out.raw(",\"jiffies\":"); out.decimal(e.jiffies)
        out.raw(",\"crc\":"); out.hexString(UInt64(e.checksum))
        out.raw(",\"first_bytes_hex\":\"")
        for byte in e.contents.prefix(Int(min(e.size, 32))) { out.hexByte(byte) }
        out.raw("\",\"kind\":\""); out.raw(leak.kind.rawValue)
        out.raw("\",\"percpu\":"); out.raw(e.isPercpu ? "true" : "false")
        out.raw(",\"frames\":")
        out.bytes.append(contentsOf: frames)
        out.raw("}\n")
    }

    /// The `frames` array of a stack.
    static func frames(_ stack: [[SymbolizedFrame]]) -> [UInt8] {
        var out = ByteWriter()
        out.raw("[")
        var first = true
        for frames in stack {
            for f in frames {
                if !first { out.raw(",") }
                first = false
                out.raw("{\"address\":"); out.hexString(f.address)
                out.raw(",\"module\":"); out.jsonString(f.module)
                out.raw(",\"build_id\":"); out.jsonString(f.buildID)
                out.raw(",\"module_offset\":"); out.hexString(f.moduleOffset)
                out.raw(",\"symbol\":"); out.jsonString(f.symbol)
                out.raw(",\"symbol_offset\":"); out.hexString(f.symbolOffset)
                out.raw(",\"file\":"); out.jsonString(f.file)
                out.raw(",\"line\":")
                if let line = f.line { out.decimal(Int64(line)) } else { out.raw("null") }
                out.raw(",\"inlined\":"); out.raw(f.inlined ? "true" : "false")
                out.raw("}")
            }
        }
        out.raw("]")
        return out.bytes
    }
}
