import Dispatch
import Synchronization
import Testing
@testable import KmemleakDaemon

struct ScanSchedulerTests {
    final class Recorder: Sendable {
        let scans = Mutex(0)
        let messages = Mutex<[String]>([])
        let scanned = DispatchSemaphore(value: 0)
    }

    private func makeScheduler(period: Double, firstDelay: Double, _ r: Recorder) -> ScanScheduler {
        ScanScheduler(period: period, firstScanDelay: firstDelay,
                      scan: { r.scans.withLock { $0 += 1 }; r.scanned.signal() },
                      log: { m in r.messages.withLock { $0.append(m) } })
    }

    @Test func firstStartWaitsForTheDelayAndARestartScansAtOnce() {
        let r = Recorder()
        let scheduler = makeScheduler(period: 3600, firstDelay: 3600, r)
        scheduler.startIfConfigured()
        #expect(scheduler.isRunning)
        #expect(r.scanned.wait(timeout: .now() + 0.2) == .timedOut)   // the first-scan delay holds
        scheduler.stop()
        #expect(!scheduler.isRunning)
        scheduler.start()                                               // scan=on: scans at once
        #expect(r.scanned.wait(timeout: .now() + 10) == .success)
        scheduler.stop()
        #expect(r.messages.withLock { $0 } == [
            "Automatic memory scanning thread started", "Automatic memory scanning thread ended",
            "Automatic memory scanning thread started", "Automatic memory scanning thread ended",
        ])
    }

    @Test func periodZeroStartsNothingAndScanSecsRestarts() {
        let r = Recorder()
        let scheduler = makeScheduler(period: 0, firstDelay: 0, r)
        scheduler.startIfConfigured()
        #expect(!scheduler.isRunning)
        scheduler.setPeriod(seconds: 1)              // scan=1: starts, first run waits the delay (0)
        #expect(r.scanned.wait(timeout: .now() + 10) == .success)
        #expect(r.scanned.wait(timeout: .now() + 10) == .success)   // and again one period later
        #expect(scheduler.currentPeriod == 1)
        scheduler.setPeriod(seconds: 0)              // scan=0: stopped
        #expect(!scheduler.isRunning)
    }
}
