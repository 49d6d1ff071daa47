import Synchronization
@testable import KmemleakEngine

/// A sparse synthetic address space: mapped regions of bytes. Reads stop at the end of a region
/// (short read). `beforeRead` lets a test change memory between reads (a "live" process).
final class SyntheticMemory: MemoryReader, @unchecked Sendable {
    var regions: [(start: UInt64, bytes: [UInt8])] = []
    var readCalls = 0
    var rangesRead = 0
    var beforeRead: ((SyntheticMemory, [MemoryRange]) -> Void)?

    /// Maps `size` zero bytes at `start` (regions must not overlap).
    func map(_ start: UInt64, _ size: Int) {
        regions.append((start, [UInt8](repeating: 0, count: size)))
    }

    func regionIndex(_ addr: UInt64) -> Int? {
        regions.firstIndex { addr >= $0.start && addr - $0.start < UInt64($0.bytes.count) }
    }

    func write(_ addr: UInt64, _ bytes: [UInt8]) {
        guard let r = regionIndex(addr) else { fatalError("unmapped write at \(addr)") }
        let off = Int(addr - regions[r].start)
        for (i, b) in bytes.enumerated() { regions[r].bytes[off + i] = b }
    }

    func write64(_ addr: UInt64, _ v: UInt64) {
        write(addr, (0..<8).map { UInt8(truncatingIfNeeded: v >> (8 * UInt64($0))) })
    }

    func read(_ ranges: UnsafeBufferPointer<MemoryRange>, into buffer: UnsafeMutableRawBufferPointer,
              bytesRead: UnsafeMutableBufferPointer<Int>) {
        readCalls += 1
        rangesRead += ranges.count
        beforeRead?(self, Array(ranges))
        var off = 0
        for (i, r) in ranges.enumerated() {
            var n = 0
            if let ri = regionIndex(r.address) {
                let reg = regions[ri]
                let o = Int(r.address - reg.start)
                n = min(r.length, reg.bytes.count - o)
                for k in 0..<n { buffer[off + k] = reg.bytes[o + k] }
            }
            bytesRead[i] = n
            off += r.length
        }
    }
}

struct TestContext: ReportContext, Sendable {
    var comms: [UInt32: String] = [1: "modprobe", 2: "cat", 3: "test"]
    var traces: [UInt32: [UInt64]] = [:]
    var symbols: [UInt64: String] = [:]
    func comm(_ id: UInt32) -> String? { comms[id] }
    func frames(_ trace: UInt32) -> [Address] { traces[trace] ?? [] }
    func symbolize(_ address: Address) -> String? { symbols[address] }
}

final class LogBox: Sendable {
    let lines = Mutex<[String]>([])
    var all: [String] { lines.withLock { $0 } }
    func append(_ s: String) { lines.withLock { $0.append(s) } }
}

let sec: UInt64 = 1_000_000_000

/// An engine with min-age 0 unless told otherwise, logging into `log`.
func makeEngine(cpus: Int = 1, minAge: UInt64 = 0, passes: Int = 0, reportCPU: Int = 0,
                log: LogBox = LogBox()) -> Kmemleak {
    Kmemleak(configuration: KmemleakConfiguration(
        possibleCPUs: cpus, minimumAge: minAge, confirmationPasses: passes, reportCPU: reportCPU,
        controlFilePath: "/mnt/kmemleak", log: { log.append($0) }))
}

func meta(_ seq: UInt64 = 0, at t: UInt64 = 0, pid: Int32 = 100, comm: UInt32 = 3, trace: UInt32 = 0) -> ObjectMetadata {
    ObjectMetadata(pid: pid, comm: comm, creationTime: t, trace: trace, seq: seq)
}

extension Kmemleak {
    /// Pointers of the current report, in order.
    func reported(_ mem: SyntheticMemory) -> [UInt64] { reportSnapshot(memory: mem).map { $0.pointer } }
}
