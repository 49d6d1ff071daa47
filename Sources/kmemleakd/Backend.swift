import Glibc
import KmemleakFS
import Logging

/// THE factory the daemon gets its backend from. Integration replaces this body (and the placeholder
/// below) with the real engine + client registry; nothing else in kmemleakd needs to change.
func makeBackend(options: DaemonOptions, logger: Logger) throws -> any ControlFileBackend & DaemonService {
    PlaceholderBackend(logger: logger)
}

/// Minimal honest stand-in until the real backend is plugged in: it tracks no clients, so `scan` and
/// `clear` succeed and do nothing, the report is always empty, and every other command is EINVAL.
final class PlaceholderBackend: ControlFileBackend, DaemonService {
    let logger: Logger
    init(logger: Logger) { self.logger = logger }

    func write(command: [UInt8]) -> Int32? {
        let text = String(decoding: command, as: UTF8.self)
        if text.hasPrefix("clear") || text.hasPrefix("scan") && !text.hasPrefix("scan=") { return nil }
        return EINVAL
    }

    func openReport() -> any ReportStream { EmptyReport() }

    func start() throws { logger.notice("placeholder backend: no client tracking, the report stays empty") }
    func stop() {}
}

struct EmptyReport: ReportStream {
    func read(at offset: Int, into buffer: UnsafeMutableRawBufferPointer) -> Int { 0 }
}
