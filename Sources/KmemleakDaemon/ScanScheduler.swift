import Foundation
import CKmemleakSys
import Glibc

/// The automatic scan thread of the kernel's kmemleak (`kmemleak_scan_thread`), for the daemon.
///
/// Kernel semantics kept: the very first start waits `firstScanDelay` before scanning (the kernel's
/// static `first_run`), every later start scans at once; then it scans every `period` seconds.
/// `scan=on` starts it if it is not running, `scan=off` stops it, `scan=SECS` stops it and, if SECS is
/// not zero, sets the period and restarts it. The thread runs at nice 10, like the kernel's.
public final class ScanScheduler: @unchecked Sendable {
    /// Default period used when the daemon was started with `--scan-period 0` and `scan=on` arrives.
    public static let defaultPeriod: Double = 600

    private let condition = NSCondition()
    // All fields below are guarded by `condition`.
    private var period: Double
    private let firstScanDelay: Double
    private var firstRun = true
    private var running = false
    private var stopRequested = false
    private var generation = 0
    private let scan: @Sendable () -> Void
    private let log: @Sendable (String) -> Void

    /// - Parameters:
    ///   - period: seconds between scans; 0 means "no automatic scans until `scan=on` or `scan=SECS`".
    ///   - scan: runs one scan (it takes the daemon's scan lock itself).
    ///   - log: receives the kernel's messages (without the `kmemleak: ` prefix).
    public init(period: Double, firstScanDelay: Double, scan: @escaping @Sendable () -> Void,
                log: @escaping @Sendable (String) -> Void) {
        self.period = period
        self.firstScanDelay = firstScanDelay
        self.scan = scan
        self.log = log
    }

    /// Whether the automatic scan thread is running.
    public var isRunning: Bool {
        condition.lock(); defer { condition.unlock() }
        return running
    }

    /// The current period in seconds (0: never started automatically).
    public var currentPeriod: Double {
        condition.lock(); defer { condition.unlock() }
        return period
    }

    /// Starts the thread at daemon start-up when automatic scanning is configured.
    public func startIfConfigured() {
        condition.lock()
        let configured = period > 0
        condition.unlock()
        if configured { start() }
    }

    /// `scan=on`: starts the thread if none is running.
    public func start() {
        condition.lock()
        defer { condition.unlock() }
        guard !running else { return }
        if period <= 0 { period = Self.defaultPeriod }
        running = true
        stopRequested = false
        generation += 1
        let myGeneration = generation
        let delay = firstRun ? firstScanDelay : 0
        firstRun = false
        let thread = Thread { [self] in self.loop(generation: myGeneration, initialDelay: delay) }
        thread.name = "kmemleak"
        thread.start()
        log("Automatic memory scanning thread started")
    }

    /// `scan=off`: stops the thread and waits until it has ended (a scan in progress completes first).
    public func stop() {
        condition.lock()
        defer { condition.unlock() }
        guard running else { return }
        stopRequested = true
        condition.broadcast()
        while running { condition.wait() }
        log("Automatic memory scanning thread ended")
    }

    /// `scan=SECS`: stop, then restart with the new period unless SECS is 0.
    public func setPeriod(seconds: UInt32) {
        stop()
        guard seconds > 0 else { return }
        condition.lock()
        period = Double(seconds)
        condition.unlock()
        start()
    }

    private func loop(generation myGeneration: Int, initialDelay: Double) {
        setpriority(__priority_which_t(PRIO_PROCESS.rawValue), id_t(ckml_gettid()), 10)
        var wait = initialDelay
        while true {
            condition.lock()
            let deadline = Date(timeIntervalSinceNow: wait)
            while !stopRequested && Date() < deadline { _ = condition.wait(until: deadline) }
            if stopRequested || generation != myGeneration {
                running = false
                condition.broadcast()
                condition.unlock()
                return
            }
            wait = period
            condition.unlock()
            scan()
        }
    }
}
