// Text built as bytes: the views render 100k records, and String interpolation costs several times more.

/// Appends text tokens (ASCII, numbers, JSON strings) to a byte buffer.
struct ByteWriter {
    var bytes: [UInt8] = []

    init() { bytes.reserveCapacity(1024) }

    mutating func raw(_ s: StaticString) {
        s.withUTF8Buffer { bytes.append(contentsOf: $0) }
    }

    mutating func raw(_ s: String) { bytes.append(contentsOf: s.utf8) }

    static let digits = Array("0123456789abcdef".utf8)

    mutating func decimal(_ v: UInt64) {
        var count = 1
        var rest = v / 10
        while rest > 0 { count += 1; rest /= 10 }
        let start = bytes.count
        bytes.append(contentsOf: repeatElement(UInt8(ascii: "0"), count: count))
        var value = v
        for index in stride(from: start + count - 1, through: start, by: -1) {
            bytes[index] = Self.digits[Int(value % 10)]
            value /= 10
        }
    }

    mutating func decimal(_ v: Int64) {
        if v < 0 { bytes.append(UInt8(ascii: "-")) }
        decimal(v.magnitude)
    }

    mutating func decimal(_ v: Int) { decimal(Int64(v)) }

    /// Lowercase hex without leading zeros, or zero-padded to `width` digits.
    mutating func hex(_ v: UInt64, width: Int = 1) {
        let significant = max(1, (64 - v.leadingZeroBitCount + 3) / 4)
        for _ in 0..<max(0, width - significant) { bytes.append(UInt8(ascii: "0")) }
        for shift in stride(from: (significant - 1) * 4, through: 0, by: -4) {
            bytes.append(Self.digits[Int((v >> UInt64(shift)) & 0xf)])
        }
    }

    mutating func hexByte(_ v: UInt8) {
        bytes.append(Self.digits[Int(v >> 4)])
        bytes.append(Self.digits[Int(v & 0xf)])
    }

    /// `"0x..."`, or `null`.
    mutating func hexString(_ v: UInt64?) {
        guard let v else { return raw("null") }
        raw("\"0x")
        hex(v)
        bytes.append(0x22)
    }

    /// RFC 8259 string, or `null`: `"` and `\` escaped, every control character (and DEL) as
    /// `\u00XX`, U+2028 and U+2029 as `\u2028`/`\u2029` (JavaScript line terminators). Swift strings
    /// hold valid UTF-8 only (invalid client bytes became U+FFFD when decoded), so the output is
    /// valid UTF-8.
    mutating func jsonString(_ s: String?) {
        guard var s else { return raw("null") }
        bytes.append(0x22)
        s.withUTF8 { utf8 in
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
        }
        bytes.append(0x22)
    }

    private mutating func unicodeEscape(_ v: UInt32) {
        raw("\\u")
        for shift in stride(from: 12, through: 0, by: -4) { bytes.append(Self.digits[Int((v >> UInt32(shift)) & 0xf)]) }
    }
}
