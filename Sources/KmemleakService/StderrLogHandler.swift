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
        line += "\n"
        var bytes = Array(line.utf8)
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
