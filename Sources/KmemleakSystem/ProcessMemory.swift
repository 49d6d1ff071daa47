// Reading a client's memory with process_vm_readv in large batches (up to IOV_MAX ranges a call).
import CKmemleakSys
import Glibc
import KmemleakEngine
import Synchronization

/// Reads another process's memory. `process_vm_readv` stops at the first remote range that faults
/// and returns how many bytes it copied, so bytes are attributed range by range; the faulting
/// range's remainder is retried once alone (a short read may just be a short read), then the
/// batch goes on from the next range: one unmapped object never hides the rest.
/// A dead process (ESRCH) or a denied one (EPERM) reads 0 bytes everywhere.
public final class ProcessMemory: MemoryReader, Sendable {
    public let pid: Int32
    /// Ranges per syscall (the kernel's IOV_MAX is 1024).
    public static let maxIovecs = 1024

    private let counters = Counters()

    public struct Stats: Sendable, Equatable {
        public var syscalls: Int
        public var bytesRequested: Int
        public var bytesRead: Int
        /// Ranges that could not be read in full.
        public var faults: Int
        /// The process was gone (ESRCH) or not readable (EPERM) at some read.
        public var processGone: Bool
    }

    private final class Counters: Sendable {
        let syscalls = Atomic<Int>(0)
        let requested = Atomic<Int>(0)
        let read = Atomic<Int>(0)
        let faults = Atomic<Int>(0)
        let gone = Atomic<Bool>(false)
    }

    public init(pid: Int32) {
        self.pid = pid
    }

    public var stats: Stats {
        Stats(syscalls: counters.syscalls.load(ordering: .relaxed),
              bytesRequested: counters.requested.load(ordering: .relaxed),
              bytesRead: counters.read.load(ordering: .relaxed),
              faults: counters.faults.load(ordering: .relaxed),
              processGone: counters.gone.load(ordering: .relaxed))
    }

    public func resetStats() {
        counters.syscalls.store(0, ordering: .relaxed)
        counters.requested.store(0, ordering: .relaxed)
        counters.read.store(0, ordering: .relaxed)
        counters.faults.store(0, ordering: .relaxed)
    }

    public func read(_ ranges: UnsafeBufferPointer<MemoryRange>, into buffer: UnsafeMutableRawBufferPointer,
                     bytesRead: UnsafeMutableBufferPointer<Int>) {
        let count = min(ranges.count, bytesRead.count)
        guard count > 0 else { return }
        // Local offsets of each range in `buffer` (back to back); ranges past the buffer read 0.
        var localOffsets = [Int](repeating: 0, count: count)
        var total = 0
        var usable = count
        for i in 0..<count {
            bytesRead[i] = 0
            let len = max(0, ranges[i].length)
            localOffsets[i] = total
            if total + len > buffer.count {
                usable = i
                break
            }
            total += len
        }
        counters.requested.wrappingAdd(total, ordering: .relaxed)
        if usable < count { counters.faults.wrappingAdd(count - usable, ordering: .relaxed) }
        guard let base = buffer.baseAddress else { return }

        var iov = [ckml_range](repeating: ckml_range(), count: min(Self.maxIovecs, usable))
        var next = 0 // first range not yet attempted
        var syscalls = 0, got = 0, faults = 0
        defer {
            counters.syscalls.wrappingAdd(syscalls, ordering: .relaxed)
            counters.read.wrappingAdd(got, ordering: .relaxed)
            counters.faults.wrappingAdd(faults, ordering: .relaxed)
        }
        while next < usable {
            // Build one batch of non-empty ranges.
            var batchIndex: [Int] = []
            batchIndex.reserveCapacity(min(Self.maxIovecs, usable - next))
            var n = 0
            var j = next
            while j < usable && n < Self.maxIovecs {
                let len = max(0, ranges[j].length)
                if len > 0 {
                    iov[n] = ckml_range(remote: ranges[j].address, local: base + localOffsets[j], len: len)
                    batchIndex.append(j)
                    n += 1
                }
                j += 1
            }
            if n == 0 { break }
            let r = iov.withUnsafeBufferPointer { ckml_process_vm_readv(pid, $0.baseAddress, n) }
            syscalls += 1
            if r < 0 {
                let e = errno
                if e == EINTR { continue }
                if e == ESRCH || e == EPERM {
                    counters.gone.store(true, ordering: .relaxed)
                    faults += usable - next
                    return
                }
                // EFAULT (or anything else) on the first range: skip it and go on.
                faults += 1
                next = batchIndex[0] + 1
                continue
            }
            // Attribute the bytes in order.
            var left = r
            var k = 0
            while k < n && left >= iov[k].len {
                bytesRead[batchIndex[k]] = iov[k].len
                left -= iov[k].len
                k += 1
            }
            got += r
            if k == n {
                next = j
                continue
            }
            // Range batchIndex[k] stopped after `left` bytes: retry its remainder once alone.
            let idx = batchIndex[k]
            var done = left
            let len = iov[k].len
            while done < len {
                let rr = ckml_process_vm_read(pid, base + localOffsets[idx] + done, len - done, ranges[idx].address + UInt64(done))
                syscalls += 1
                if rr < 0 && errno == EINTR { continue }
                if rr < 0 && (errno == ESRCH || errno == EPERM) {
                    counters.gone.store(true, ordering: .relaxed)
                    bytesRead[idx] = done
                    faults += usable - idx
                    return
                }
                if rr <= 0 { break }
                done += rr
                got += rr
            }
            bytesRead[idx] = done
            if done < len { faults += 1 }
            next = idx + 1
        }
    }
}
