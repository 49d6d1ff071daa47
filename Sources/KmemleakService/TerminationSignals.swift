import Glibc
import KmemleakSystem

/// SIGTERM, SIGINT and SIGHUP, routed to one watcher thread (`sigwait`), for the daemon only.
///
/// Two inherited conditions would otherwise break a clean shutdown (SWIFT-LINUX-NOTES.md §1): a
/// parent that started us with these signals blocked (Foundation.Process from a dispatch thread), and
/// a non-interactive shell's background job with SIGINT ignored. `block()` resets the dispositions and
/// blocks the signals in the calling thread, so every thread started afterwards (libfuse workers, the
/// backend's threads) inherits the mask and only the watcher ever receives them.
public enum TerminationSignals {
    public static let all: [Int32] = [SIGTERM, SIGINT, SIGHUP]

    /// Call first thing in `main`, before any thread is started.
    public static func block() {
        var set = signalSet()
        for signal in all { Glibc.signal(signal, SIG_DFL) }
        Glibc.signal(SIGPIPE, SIG_IGN)
        pthread_sigmask(SIG_BLOCK, &set, nil)
    }

    /// Starts the watcher thread: `handler` runs on it for every SIGTERM, SIGINT or SIGHUP received.
    public static func startWatcher(_ handler: @escaping @Sendable (Int32) -> Void) {
        startThread(name: "kmemleak-sig") {
            var set = signalSet()
            while true {
                var signal: Int32 = 0
                if sigwait(&set, &signal) == 0 { handler(signal) }
            }
        }
    }

    private static func signalSet() -> sigset_t {
        var set = sigset_t()
        sigemptyset(&set)
        for signal in all { sigaddset(&set, signal) }
        return set
    }

    /// `SIGTERM` for 15, and so on.
    public static func name(_ signal: Int32) -> String {
        switch signal {
        case SIGTERM: return "SIGTERM"
        case SIGINT: return "SIGINT"
        case SIGHUP: return "SIGHUP"
        default: return "signal \(signal)"
        }
    }
}
