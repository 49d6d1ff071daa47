// The write side of the control file (kmemleak_write in mm/kmemleak.c), as a pure function.

/// The kernel's errno values returned by the control file.
public enum KmemleakErrno {
    /// EPERM: kmemleak is disabled (anything but `clear`).
    public static let EPERM: Int32 = 1
    /// EINVAL: unknown command, bad number, unknown dump address.
    public static let EINVAL: Int32 = 22
    /// ERANGE: a number out of range (scan=<secs>).
    public static let ERANGE: Int32 = 34
}

/// A failed control write: the errno the write returns (as a positive value).
public struct ControlError: Error, Sendable, Equatable {
    /// The errno value (KmemleakErrno.EPERM, KmemleakErrno.EINVAL, KmemleakErrno.ERANGE).
    public var errno: Int32
    /// Creates an error.
    public init(errno: Int32) { self.errno = errno }
}

/// One command written to the control file (KMEMLEAK-SPEC §1.1).
public enum ControlCommand: Sendable, Equatable {
    /// `clear`: paint reported leaks grey (enabled) or free all metadata (disabled).
    case clear
    /// `off`: disable the detector (irreversible).
    case off
    /// `stack=on` / `stack=off`.
    case stack(Bool)
    /// `scan=on` / `scan=off`: start / stop the automatic scanning thread.
    case scanThread(Bool)
    /// `scan=<secs>`: set the period and restart the thread; 0 = stop it. The kernel caps the period at
    /// UINT_MAX milliseconds: see `scanPeriodMilliseconds`.
    case scanPeriod(UInt32)
    /// `scan`: scan synchronously (any text starting with "scan" that is not one of the above).
    case scan
    /// `dump=<addr>`: print the object(s) containing the address to the log.
    case dump(Address)

    /// The kernel's `msecs = secs * MSEC_PER_SEC`, capped at UINT_MAX.
    public static func scanPeriodMilliseconds(_ secs: UInt32) -> UInt64 {
        min(UInt64(secs) * 1000, UInt64(UInt32.max))
    }

    /// Parses one write like kmemleak_write: at most 63 bytes are considered, the text ends at the first
    /// NUL byte, commands match by strncmp prefix in the kernel's order (`clear`; EPERM if `disabled`;
    /// `off`, `stack=on`, `stack=off`, `scan=on`, `scan=off`, `scan=<kstrtouint base 0>`, `scan`,
    /// `dump=<kstrtoul base 0>`; otherwise EINVAL). The caller returns the whole write length on success.
    public static func parse(_ bytes: [UInt8], disabled: Bool) -> Result<ControlCommand, ControlError> {
        var buf = Array(bytes.prefix(63))
        if let nul = buf.firstIndex(of: 0) { buf.removeSubrange(nul...) }
        func has(_ prefix: String) -> Bool {
            let p = Array(prefix.utf8)
            return buf.count >= p.count && Array(buf[0..<p.count]) == p
        }
        if has("clear") { return .success(.clear) }
        if disabled { return .failure(ControlError(errno: KmemleakErrno.EPERM)) }
        if has("off") { return .success(.off) }
        if has("stack=on") { return .success(.stack(true)) }
        if has("stack=off") { return .success(.stack(false)) }
        if has("scan=on") { return .success(.scanThread(true)) }
        if has("scan=off") { return .success(.scanThread(false)) }
        if has("scan=") {
            switch kstrtoull(Array(buf[5...]), base: 0) {
            case .failure(let e): return .failure(e)
            case .success(let v):
                guard v <= UInt64(UInt32.max) else { return .failure(ControlError(errno: KmemleakErrno.ERANGE)) }
                return .success(.scanPeriod(UInt32(v)))
            }
        }
        if has("scan") { return .success(.scan) }
        if has("dump=") {
            switch kstrtoull(Array(buf[5...]), base: 0) {
            case .failure: return .failure(ControlError(errno: KmemleakErrno.EINVAL))  // dump_str_object_info
            case .success(let v): return .success(.dump(v))
            }
        }
        return .failure(ControlError(errno: KmemleakErrno.EINVAL))
    }

    /// The kernel's `kstrtoull(s, base)` (lib/kstrtox.c) on a NUL-free byte string: optional leading
    /// '+', base 0 auto-detects "0x"/"0X" (hex, only if a hex digit follows), leading "0" (octal) or
    /// decimal; at least one digit; overflow gives ERANGE (checked before trailing garbage); one
    /// trailing '\n' is allowed; anything else after the digits gives EINVAL.
    public static func kstrtoull(_ s: [UInt8], base: UInt32) -> Result<UInt64, ControlError> {
        var i = 0
        if i < s.count && s[i] == UInt8(ascii: "+") { i += 1 }
        func at(_ k: Int) -> UInt8 { k < s.count ? s[k] : 0 }
        func isxdigit(_ c: UInt8) -> Bool {
            (c >= 0x30 && c <= 0x39) || (c | 0x20 >= 0x61 && c | 0x20 <= 0x66)
        }
        var b = base
        if b == 0 {
            if at(i) == UInt8(ascii: "0") {
                b = ((at(i + 1) | 0x20) == UInt8(ascii: "x") && isxdigit(at(i + 2))) ? 16 : 8
            } else {
                b = 10
            }
        }
        if b == 16 && at(i) == UInt8(ascii: "0") && (at(i + 1) | 0x20) == UInt8(ascii: "x") { i += 2 }
        var res: UInt64 = 0
        var overflow = false
        var digits = 0
        while i < s.count {
            let c = s[i]
            var val: UInt32
            if c >= 0x30 && c <= 0x39 {
                val = UInt32(c - 0x30)
            } else {
                let lc = c | 0x20
                if lc >= 0x61 && lc <= 0x66 { val = UInt32(lc - 0x61 + 10) } else { break }
            }
            if val >= b { break }
            let (m, o1) = res.multipliedReportingOverflow(by: UInt64(b))
            let (a, o2) = m.addingReportingOverflow(UInt64(val))
            if o1 || o2 { overflow = true }
            res = a
            digits += 1
            i += 1
        }
        if overflow { return .failure(ControlError(errno: KmemleakErrno.ERANGE)) }
        if digits == 0 { return .failure(ControlError(errno: KmemleakErrno.EINVAL)) }
        if i < s.count && s[i] == UInt8(ascii: "\n") { i += 1 }
        if i < s.count { return .failure(ControlError(errno: KmemleakErrno.EINVAL)) }
        return .success(res)
    }
}
