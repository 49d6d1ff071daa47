// printf-style helpers and lib/hexdump.c's hex_dump_to_buffer layout (rowsize 16, groupsize 1, ASCII).

@usableFromInline let hexDigits: [UInt8] = Array("0123456789abcdef".utf8)

/// Formatting helpers that reproduce the kernel's printf conversions used by kmemleak.
public enum KFormat {
    /// `%lx`: lowercase hex, no padding.
    public static func hex(_ v: UInt64) -> String { String(v, radix: 16) }

    /// `%0Nlx`: lowercase hex zero-padded to `width`.
    public static func hex(_ v: UInt64, width: Int) -> String {
        let s = String(v, radix: 16)
        return s.count >= width ? s : String(repeating: "0", count: width - s.count) + s
    }

    /// `0x%08lx`, the kernel's address format in kmemleak messages.
    public static func address(_ v: UInt64) -> String { "0x" + hex(v, width: 8) }

    /// The hex-dump rows of `bytes` as lib/hexdump.c prints them for kmemleak: HEX_PREFIX (4 spaces),
    /// 16 bytes per row as `%02x` separated by one space, ASCII column at offset 49 of the row text
    /// (padding spaces), `.` for bytes that are not printable ASCII. No trailing newline per row.
    public static func hexDumpRows(_ bytes: [UInt8]) -> [String] {
        var rows: [String] = []
        var i = 0
        while i < bytes.count {
            let len = min(16, bytes.count - i)
            var line: [UInt8] = []
            line.reserveCapacity(4 + 49 + 16)
            var lx: [UInt8] = []
            for j in 0..<len {
                let ch = bytes[i + j]
                lx.append(hexDigits[Int(ch >> 4)])
                lx.append(hexDigits[Int(ch & 0xf)])
                lx.append(0x20)
            }
            if len > 0 { lx.removeLast() }
            while lx.count < 49 { lx.append(0x20) }
            for j in 0..<len {
                let ch = bytes[i + j]
                lx.append((ch >= 0x20 && ch < 0x7f) ? ch : 0x2e)
            }
            line.append(contentsOf: [0x20, 0x20, 0x20, 0x20])
            line.append(contentsOf: lx)
            rows.append(String(decoding: line, as: UTF8.self))
            i += 16
        }
        return rows
    }

    /// A client-supplied string (comm, symbol or module name) made safe for one report or log line, the
    /// way the kernel's string_escape_mem (%pE) does with ESCAPE_SPACE | ESCAPE_SPECIAL | ESCAPE_HEX:
    /// `\n \t \r \v \f` and `\\ \"` as C escapes, every other byte outside printable ASCII (controls,
    /// DEL, each byte of non-ASCII UTF-8) as `\xNN`. Printable ASCII without `"` and `\` is unchanged, so
    /// real names print as before, and no escaped string can end a line or close a quoted field.
    public static func escape(_ string: String) -> String {
        let utf8 = string.utf8
        guard utf8.contains(where: { $0 < 0x20 || $0 >= 0x7f || $0 == 0x22 || $0 == 0x5c }) else { return string }
        var out: [UInt8] = []
        out.reserveCapacity(utf8.count * 2)
        for byte in utf8 {
            switch byte {
            case 0x0a: out += [0x5c, UInt8(ascii: "n")]
            case 0x09: out += [0x5c, UInt8(ascii: "t")]
            case 0x0d: out += [0x5c, UInt8(ascii: "r")]
            case 0x0b: out += [0x5c, UInt8(ascii: "v")]
            case 0x0c: out += [0x5c, UInt8(ascii: "f")]
            case 0x22, 0x5c: out += [0x5c, byte]
            case 0x20..<0x7f: out.append(byte)
            default: out += [0x5c, UInt8(ascii: "x"), hexDigits[Int(byte >> 4)], hexDigits[Int(byte & 0xf)]]
            }
        }
        return String(decoding: out, as: UTF8.self)
    }

    /// `%pS` of a frame: the symbolizer's text (escaped: symbol and module names come from the client's
    /// ELF files), or `0x%lx` when unresolved.
    static func symbol(_ addr: UInt64, _ context: some ReportContext) -> String {
        context.symbolize(addr).map(escape) ?? ("0x" + hex(addr))
    }

    /// dump_object_info's lines for `info` ("kmemleak: " prefix; the frames follow as " %pS" without
    /// prefix, as stack_depot_print prints them).
    public static func objectInfoLines(_ info: ObjectInfo, hz: UInt64, context: (any ReportContext)?) -> [String] {
        let tag = info.isPercpu ? " (percpu)" : ""
        let comm = context.flatMap { commOf($0, info.metadata.comm) } ?? ""
        var lines = [
            "kmemleak: Object\(tag) \(address(info.pointer)) (size \(info.size)):",
            "kmemleak:   comm \"\(comm)\", pid \(info.metadata.pid), jiffies \(jiffies(info.metadata.creationTime, hz: hz))",
            "kmemleak:   min_count = \(info.minCount)",
            "kmemleak:   count = \(info.count)",
            "kmemleak:   flags = 0x\(hex(UInt64(info.flags)))",
            "kmemleak:   checksum = \(info.checksum)",
            "kmemleak:   backtrace:",
        ]
        if info.metadata.trace != 0, let ctx = context {
            for f in framesOf(ctx, info.metadata.trace) { lines.append(" " + symbolOf(ctx, f)) }
        }
        return lines
    }

    /// The comm of `id`, escaped (the client names its threads).
    static func commOf(_ ctx: some ReportContext, _ id: UInt32) -> String? { ctx.comm(id).map(escape) }
    static func framesOf(_ ctx: some ReportContext, _ t: UInt32) -> [Address] { Array(ctx.frames(t).prefix(16)) }
    static func symbolOf(_ ctx: some ReportContext, _ a: Address) -> String { symbol(a, ctx) }

    /// jiffies of a CLOCK_BOOTTIME nanosecond time: ns * hz / 1e9 (full-width, no overflow).
    public static func jiffies(_ ns: UInt64, hz: UInt64) -> UInt64 {
        let (hi, lo) = ns.multipliedFullWidth(by: hz)
        if hi >= 1_000_000_000 { return .max }
        return UInt64(1_000_000_000).dividingFullWidth((hi, lo)).quotient
    }
}
