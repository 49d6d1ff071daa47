// MOUNTPOINT/kmemleak.json: NDJSON, one object per leak (schema in README.md, "kmemleak.json").
import KmemleakEngine

/// One JSON object per line per leak, in report order. Addresses, offsets and the crc are strings
/// (`"0x..."`): JSON numbers lose precision above 2^53 in most readers. Unknown fields are `null`,
/// so every line has every key.
public struct JSONView: Sendable {
    let leaks: [Leak]

    public init(_ snapshot: LeakSnapshot) { leaks = snapshot.leaks }

    public var output: ViewOutput {
        let leaks = self.leaks
        return .chunks(count: leaks.count) { Self.line(leaks[$0]) }
    }

    static func line(_ leak: Leak) -> [UInt8] {
        let e = leak.entry
        var out = JSONWriter()
        out.raw("{\"address\":"); out.hexString(e.pointer)
        out.raw(",\"size\":"); out.number(e.size)
        out.raw(",\"pid\":"); out.number(Int64(leak.processID))
        out.raw(",\"tid\":"); out.number(Int64(e.pid))
        out.raw(",\"comm\":"); out.string(leak.comm)
        out.raw(",\"creation_time_ns\":"); out.number(e.creationTime)
        out.raw(",\"jiffies\":"); out.number(e.jiffies)
        out.raw(",\"crc\":"); out.hexString(UInt64(e.checksum))
        out.raw(",\"first_bytes_hex\":\"")
        for byte in e.contents.prefix(Int(min(e.size, 32))) {
            out.bytes.append(hexDigit(byte >> 4)); out.bytes.append(hexDigit(byte & 0xf))
        }
        out.raw("\",\"kind\":\""); out.raw(leak.kind.rawValue)
        out.raw("\",\"percpu\":"); out.raw(e.isPercpu ? "true" : "false")
        out.raw(",\"frames\":[")
        var first = true
        for frames in leak.stack {
            for f in frames {
                if !first { out.raw(",") }
                first = false
                out.raw("{\"address\":"); out.hexString(f.address)
                out.raw(",\"module\":"); out.string(f.module)
                out.raw(",\"build_id\":"); out.string(f.buildID)
                out.raw(",\"module_offset\":"); out.hexString(f.moduleOffset)
                out.raw(",\"symbol\":"); out.string(f.symbol)
                out.raw(",\"symbol_offset\":"); out.hexString(f.symbolOffset)
                out.raw(",\"file\":"); out.string(f.file)
                out.raw(",\"line\":")
                if let line = f.line { out.number(Int64(line)) } else { out.raw("null") }
                out.raw(",\"inlined\":"); out.raw(f.inlined ? "true" : "false")
                out.raw("}")
            }
        }
        out.raw("]}\n")
        return out.bytes
    }

    static func hexDigit(_ v: UInt8) -> UInt8 { v < 10 ? 0x30 + v : 0x61 + v - 10 }
}

/// Appends JSON tokens to a byte buffer.
struct JSONWriter {
    var bytes: [UInt8] = []

    init() { bytes.reserveCapacity(1024) }

    mutating func raw(_ s: StaticString) {
        s.withUTF8Buffer { bytes.append(contentsOf: $0) }
    }

    mutating func raw(_ s: String) { bytes.append(contentsOf: s.utf8) }

    mutating func number(_ v: UInt64) { bytes.append(contentsOf: String(v).utf8) }
    mutating func number(_ v: Int64) { bytes.append(contentsOf: String(v).utf8) }

    mutating func hexString(_ v: UInt64?) {
        guard let v else { return raw("null") }
        bytes.append(0x22)
        raw("0x")
        bytes.append(contentsOf: String(v, radix: 16).utf8)
        bytes.append(0x22)
    }

    /// RFC 8259 string: `"` and `\` escaped, every control character (and DEL) as `\u00XX`, U+2028
    /// and U+2029 as `\u2028`/`\u2029` (JavaScript line terminators). Swift strings hold valid UTF-8
    /// only (invalid client bytes became U+FFFD when decoded), so the output is valid UTF-8.
    mutating func string(_ s: String?) {
        guard let s else { return raw("null") }
        bytes.append(0x22)
        let utf8 = Array(s.utf8)
        var i = 0
        while i < utf8.count {
            let byte = utf8[i]
            switch byte {
            case 0x22: raw("\\\"")
            case 0x5c: raw("\\\\")
            case 0x0a: raw("\\n")
            case 0x0d: raw("\\r")
            case 0x09: raw("\\t")
            case 0x00..<0x20, 0x7f: unicodeEscape(UInt32(byte))
            case 0xe2 where i + 2 < utf8.count && utf8[i + 1] == 0x80 && (utf8[i + 2] == 0xa8 || utf8[i + 2] == 0xa9):
                unicodeEscape(utf8[i + 2] == 0xa8 ? 0x2028 : 0x2029)
                i += 2
            default: bytes.append(byte)
            }
            i += 1
        }
        bytes.append(0x22)
    }

    private mutating func unicodeEscape(_ v: UInt32) {
        raw("\\u")
        for shift in stride(from: 12, through: 0, by: -4) { bytes.append(JSONView.hexDigit(UInt8((v >> UInt32(shift)) & 0xf))) }
    }
}
