import Glibc
import Logging

/// A swift-log handler writing one line per message to stderr: `LABEL: message key=value...`.
///
/// `main` bootstraps it with the label `kmemleak`, so the lines read like the kernel's
/// (`kmemleak: 3 new suspected memory leaks (see /mnt/kmemleak)`). When stderr is the journal
/// (`$JOURNAL_STREAM` set by systemd), each line starts with the syslog priority (`<6>`), which
/// journald turns into the entry's level (sd-daemon(3)). Each line is one write(2), so lines from
/// different threads never interleave.
public struct StderrLogHandler: LogHandler {
    public var metadata: Logger.Metadata = [:]
    public var logLevel: Logger.Level
    private let prefix: String
    private let syslogPrefix: Bool

    public init(label: String, logLevel: Logger.Level = .info) {
        self.prefix = label.isEmpty ? "" : label + ": "
        self.logLevel = logLevel
        self.syslogPrefix = getenv("JOURNAL_STREAM") != nil
    }

    public subscript(metadataKey key: String) -> Logger.Metadata.Value? {
        get { metadata[key] }
        set { metadata[key] = newValue }
    }

    public func log(event: LogEvent) {
        var line = ""
        if syslogPrefix { line += "<\(Self.priority(event.level))>" }
        line += prefix
        line += event.message.description
        let merged = metadata.merging(event.metadata ?? [:]) { $1 }
        for key in merged.keys.sorted() { line += " \(key)=\(merged[key]!)" }
        var bytes = Self.oneLine(Array(line.utf8))
        bytes.append(0x0a)
        bytes.withUnsafeMutableBytes { raw in
            var offset = 0
            while offset < raw.count {
                let written = Glibc.write(2, raw.baseAddress! + offset, raw.count - offset)
                if written < 0 && errno == EINTR { continue }
                if written <= 0 { return }
                offset += written
            }
        }
    }

    /// Messages may carry client-supplied text: a control byte (a newline above all) is written as
    /// `\xNN`, so that one message is always one line of the log (the callers escape what they quote).
    static func oneLine(_ bytes: [UInt8]) -> [UInt8] {
        guard bytes.contains(where: { $0 < 0x20 || $0 == 0x7f }) else { return bytes }
        let digits = Array("0123456789abcdef".utf8)
        var out: [UInt8] = []
        out.reserveCapacity(bytes.count + 16)
        for byte in bytes {
            if byte < 0x20 || byte == 0x7f {
                out += [UInt8(ascii: "\\"), UInt8(ascii: "x"), digits[Int(byte >> 4)], digits[Int(byte & 0xf)]]
            } else {
                out.append(byte)
            }
        }
        return out
    }

    static func priority(_ level: Logger.Level) -> Int {
        switch level {
        case .trace, .debug: return 7
        case .info: return 6
        case .notice: return 5
        case .warning: return 4
        case .error: return 3
        case .critical: return 2
        }
    }
}
