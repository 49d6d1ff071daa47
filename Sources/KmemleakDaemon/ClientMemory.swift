import Glibc
import KmemleakEngine
import KmemleakSystem
import Synchronization

/// A client's memory as the engine reads it: `process_vm_readv` on the live process, plus, during a
/// confirmation pass, the registers of its frozen threads shown at an address no user mapping can have
/// (the kernel half of the x86-64 address space), so the engine scans them as one more root.
final class ClientMemory: MemoryReader, Sendable {
    /// Where the register image appears; never a valid user-space address on x86-64.
    static let registersBase: Address = 0xffff_8000_0000_0000

    let process: ProcessMemory
    private let registers = Mutex<[UInt64]>([])

    init(pid: Int32) { process = ProcessMemory(pid: pid) }

    /// Shows `words` at `registersBase` until `hideRegisters()`; returns the root to scan them as.
    func showRegisters(_ words: [UInt64]) -> RootRegion? {
        registers.withLock { $0 = words }
        guard !words.isEmpty else { return nil }
        return RootRegion(start: Self.registersBase, length: UInt64(words.count * 8), kind: .registered)
    }

    func hideRegisters() { registers.withLock { $0 = [] } }

    /// ProcessMemory's reads are, and the registers are behind their mutex.
    var allowsConcurrentReads: Bool { true }

    func scannablePart(of range: MemoryRange) -> MemoryRange? {
        range.address >= Self.registersBase ? range : process.scannablePart(of: range)
    }

    /// The register image is asked about range by range (one confirmation pass).
    func plainWindow(at address: Address) -> PlainWindow? {
        address >= Self.registersBase ? nil : process.plainWindow(at: address)
    }

    func read(_ ranges: UnsafeBufferPointer<MemoryRange>, into buffer: UnsafeMutableRawBufferPointer,
              bytesRead: UnsafeMutableBufferPointer<Int>) {
        guard ranges.contains(where: { $0.address >= Self.registersBase }) else {
            process.read(ranges, into: buffer, bytesRead: bytesRead)
            return
        }
        // Rare (one confirmation pass): serve each range on its own.
        var offset = 0
        for (i, range) in ranges.enumerated() {
            let target = UnsafeMutableRawBufferPointer(rebasing: buffer[offset..<offset + range.length])
            if range.address >= Self.registersBase {
                bytesRead[i] = registers.withLock { words in
                    let start = Int(range.address - Self.registersBase)
                    let available = max(0, words.count * 8 - start)
                    let n = min(available, range.length)
                    if n > 0 {
                        words.withUnsafeBytes { target.copyMemory(from: UnsafeRawBufferPointer(rebasing: $0[start..<start + n])) }
                    }
                    return n
                }
            } else {
                withUnsafeTemporaryAllocation(of: MemoryRange.self, capacity: 1) { one in
                    one[0] = range
                    process.read(UnsafeBufferPointer(one), into: target,
                                 bytesRead: UnsafeMutableBufferPointer(rebasing: bytesRead[i..<i + 1]))
                }
            }
            offset += range.length
        }
    }
}

/// CLOCK_BOOTTIME in nanoseconds: the clock the shim stamps objects with.
func bootTimeNanoseconds() -> UInt64 {
    var ts = timespec()
    clock_gettime(CLOCK_BOOTTIME, &ts)
    return UInt64(ts.tv_sec) * 1_000_000_000 + UInt64(ts.tv_nsec)
}
