// Reading a client's memory with process_vm_readv in large batches (up to IOV_MAX ranges a call).
import CKmemleakSys
import Glibc
import KmemleakEngine
import Synchronization

/// Reads another process's memory with `process_vm_readv`, up to 1024 remote iovecs a call.
///
/// Pass 1: runs of ranges that are ascending and at most `coalesceGap` bytes apart become one remote
/// iovec, scattered by the local iovecs straight into each range's place and the gaps into a discard
/// buffer (the kernel's cost is per remote iovec: ~0.75 us for a 64-byte range alone, ~0.14 us
/// coalesced; up to 1024 local iovecs a call too).
/// `process_vm_readv` stops at the first remote iovec that faults and returns how many bytes it
/// copied, so bytes are attributed iovec by iovec and the batch is re-issued after the faulting one.
/// Pass 2: the ranges of iovecs that did not read in full are read one iovec each; the faulting
/// range keeps its leading bytes (its remainder is retried once alone: a short read may just be
/// short), then the batch goes on from the next range: one unmapped object never hides the rest.
/// A dead process (ESRCH) or a denied one (EPERM) reads 0 bytes everywhere, never a trap.
///
/// Once `restrict(to:)` was given the client's scannable memory, nothing outside it is read: a
/// range reads only its leading bytes that lie in it, and `scannablePart(of:)` leads the engine past
/// what cannot hold pointers (unmapped and file-backed memory, PROT_NONE pages, pages never touched).
public final class ProcessMemory: MemoryReader, Sendable {
    public let pid: Int32
    /// Ranges per syscall (the kernel's IOV_MAX is 1024).
    public static let maxIovecs = 1024

    private let counters = Counters()
    private let scannable = Mutex<Scannable?>(nil)
    /// The interval the last `scannablePart` began in: the next object is usually in it too.
    private let lastInterval = Atomic<Int>(-1)

    /// The scannable memory and an open /proc/PID/pagemap (closed with the last reference).
    private final class Scannable: Sendable {
        let memory: ScannableMemory
        let pagemap: Int32
        init(memory: ScannableMemory, pagemap: Int32) { self.memory = memory; self.pagemap = pagemap }
        deinit { close(pagemap) }
    }

    public struct Stats: Sendable, Equatable {
        public var syscalls: Int
        public var bytesRequested: Int
        public var bytesRead: Int
        /// Ranges that could not be read in full.
        public var faults: Int
        /// Remote iovecs passed to the kernel (its cost is per remote iovec: page pinning).
        public var remoteSpans: Int
        /// The process was gone (ESRCH) or not readable (EPERM) at some read.
        public var processGone: Bool
    }

    private final class Counters: Sendable {
        let syscalls = Atomic<Int>(0)
        let requested = Atomic<Int>(0)
        let read = Atomic<Int>(0)
        let faults = Atomic<Int>(0)
        let remoteSpans = Atomic<Int>(0)
        let gone = Atomic<Bool>(false)
    }

    public init(pid: Int32) {
        self.pid = pid
    }

    /// From now on reads only `memory` (a snapshot of the client's mappings; see `ScannableMemory`).
    /// - Throws: when /proc/PID/pagemap cannot be opened (nothing is restricted then).
    public func restrict(to memory: ScannableMemory) throws(SystemError) {
        let path = "/proc/\(pid)/pagemap"
        let fd = open(path, O_RDONLY | O_CLOEXEC)
        guard fd >= 0 else { throw SystemError(call: "open", errno: errno, context: path) }
        let state = Scannable(memory: memory, pagemap: fd)
        scannable.withLock { $0 = state }
    }

    /// Ranges of at least this many bytes are checked against /proc/PID/pagemap: pages never
    /// touched (neither present nor swapped) are skipped, so a huge untouched mapping costs nothing.
    public static let pagemapThreshold: UInt64 = 64 << 10
    static let pageSize: UInt64 = 4096
    /// pagemap bits: 63 present, 62 swapped, 61 file page or shared anonymous.
    static let presentBit: UInt64 = 1 << 63, swappedBit: UInt64 = 1 << 62, filePageBit: UInt64 = 1 << 61
    /// Pages looked up per pagemap read, and the longest run returned as one part.
    static let pagemapChunk: UInt64 = 4096, longestPart: UInt64 = 1 << 20

    /// process_vm_readv needs no lock, and the counters are atomics.
    public var allowsConcurrentReads: Bool { true }

    public func scannablePart(of range: MemoryRange) -> MemoryRange? {
        guard range.length > 0 else { return nil }
        let (sum, overflow) = range.address.addingReportingOverflow(UInt64(range.length))
        let end = overflow ? UInt64.max : sum
        // Asked once per scanned object: most (heap blocks) are answered by their first interval with
        // no pagemap read, here under the lock, without a reference to the state taken and dropped.
        let quick: MemoryRange?? = scannable.withLock { state in
            guard let state else { return .some(range) }
            var hint = lastInterval.load(ordering: .relaxed)
            defer { lastInterval.store(hint, ordering: .relaxed) }
            return Self.plainPart(state.memory, range.address, end, hint: &hint)
        }
        if let quick { return quick }
        guard let state = scannable.withLock({ $0 }) else { return range }
        let intervals = state.memory.intervals
        var k = state.memory.firstInterval(endingAfter: range.address)
        while k < intervals.count, intervals[k].start < end {
            let iv = intervals[k]
            k += 1
            let lo = max(range.address, iv.start), hi = min(end, iv.end)
            guard lo < hi else { continue }
            guard iv.copiedOnly || hi - lo >= Self.pagemapThreshold else {
                return MemoryRange(address: lo, length: Int(hi - lo))
            }
            if let run = touchedRun(state.pagemap, lo, hi, copiedOnly: iv.copiedOnly) {
                return MemoryRange(address: run.start, length: Int(run.end - run.start))
            }
        }
        return nil
    }

    /// The plain interval `address` lies in: `scannablePart` answers a range inside it shorter than
    /// `pagemapThreshold` with the range itself (as `plainPart` does). Unrestricted: everything.
    public func plainWindow(at address: Address) -> PlainWindow? {
        scannable.withLock { state -> PlainWindow? in
            guard let state else { return PlainWindow(start: 0, end: .max, maxLength: .max) }
            let intervals = state.memory.intervals
            let k = state.memory.firstInterval(endingAfter: address, hint: lastInterval.load(ordering: .relaxed))
            guard k < intervals.count, intervals[k].start <= address, !intervals[k].copiedOnly else { return nil }
            lastInterval.store(k, ordering: .relaxed)
            return PlainWindow(start: intervals[k].start, end: intervals[k].end, maxLength: Self.pagemapThreshold)
        }
    }

    /// scannablePart's answer for [address, end) when no pagemap read is needed: its part in the first
    /// interval it meets if that is plain and shorter than `pagemapThreshold`, nil (no part) when it
    /// meets none; .none when pagemap must decide.
    @inline(__always)
    private static func plainPart(_ memory: ScannableMemory, _ address: UInt64, _ end: UInt64, hint: inout Int)
        -> MemoryRange??
    {
        let intervals = memory.intervals
        var k = memory.firstInterval(endingAfter: address, hint: hint)
        hint = k
        while k < intervals.count, intervals[k].start < end {
            let iv = intervals[k]
            k += 1
            let lo = max(address, iv.start), hi = min(end, iv.end)
            guard lo < hi else { continue }
            if iv.copiedOnly || hi - lo >= pagemapThreshold { return .none }
            return .some(MemoryRange(address: lo, length: Int(hi - lo)))
        }
        return .some(nil)
    }

    /// The first run of pages in [lo, hi) worth reading per pagemap (at most `longestPart` bytes):
    /// present or swapped pages; with `copiedOnly`, only anonymous ones (the written copies of a
    /// private file mapping: its other pages hold the file's bytes, never a pointer into the heap).
    /// When pagemap cannot be read, the rest counts as worth reading unless `copiedOnly`.
    private func touchedRun(_ fd: Int32, _ lo: UInt64, _ hi: UInt64, copiedOnly: Bool) -> (start: UInt64, end: UInt64)? {
        let page = Self.pageSize
        var entries = [UInt64](repeating: 0, count: Int(Self.pagemapChunk))
        var p = lo / page
        let lastPage = (hi - 1) / page
        var runStart: UInt64? = nil
        while p <= lastPage {
            let count = Int(min(Self.pagemapChunk, lastPage - p + 1))
            let (offset, o) = p.multipliedReportingOverflow(by: 8)
            let got = o ? -1 : entries.withUnsafeMutableBytes { pread(fd, $0.baseAddress, count * 8, off_t(truncatingIfNeeded: offset)) }
            counters.syscalls.wrappingAdd(1, ordering: .relaxed)
            if got < 8 {
                if copiedOnly { return runStart.map { ($0, max($0, min(hi, p * page))) } }
                let start = runStart ?? max(lo, p * page)
                return (start, min(hi, start &+ Self.longestPart))
            }
            for i in 0..<(got / 8) {
                let e = entries[i]
                let wanted = copiedOnly ? (e & Self.presentBit != 0 && e & Self.filePageBit == 0) || e & Self.swappedBit != 0
                                        : e & (Self.presentBit | Self.swappedBit) != 0
                let address = (p + UInt64(i)) * page
                if let start = runStart {
                    if !wanted || address - start >= Self.longestPart { return (start, min(hi, address)) }
                } else if wanted {
                    runStart = max(lo, address)
                }
            }
            p += UInt64(got / 8)
        }
        return runStart.map { ($0, hi) }
    }

    /// How many leading bytes of [address, address+length) lie in the scannable memory; in a private
    /// file mapping's data only its written copies count.
    private func scannablePrefix(_ state: Scannable, _ address: UInt64, _ length: Int, hint: inout Int) -> Int {
        let (sum, overflow) = address.addingReportingOverflow(UInt64(length))
        let end = overflow ? UInt64.max : sum
        let intervals = state.memory.intervals
        var k = state.memory.firstInterval(endingAfter: address, hint: hint)
        hint = k
        var covered = address
        while covered < end, k < intervals.count, intervals[k].start <= covered {
            let iv = intervals[k]
            k += 1
            let hi = min(end, iv.end)
            guard hi > covered else { continue }
            if iv.copiedOnly {
                guard let run = touchedRun(state.pagemap, covered, hi, copiedOnly: true), run.start == covered else { break }
                covered = run.end
                if covered < hi { break }
            } else {
                covered = hi
            }
        }
        return Int(covered - address)
    }

    public var stats: Stats {
        Stats(syscalls: counters.syscalls.load(ordering: .relaxed),
              bytesRequested: counters.requested.load(ordering: .relaxed),
              bytesRead: counters.read.load(ordering: .relaxed),
              faults: counters.faults.load(ordering: .relaxed),
              remoteSpans: counters.remoteSpans.load(ordering: .relaxed),
              processGone: counters.gone.load(ordering: .relaxed))
    }

    public func resetStats() {
        counters.syscalls.store(0, ordering: .relaxed)
        counters.requested.store(0, ordering: .relaxed)
        counters.read.store(0, ordering: .relaxed)
        counters.faults.store(0, ordering: .relaxed)
        counters.remoteSpans.store(0, ordering: .relaxed)
    }

    /// Ranges whose remote gap is at most this many bytes are read as one remote iovec, scattered
    /// straight into their places (the gaps into a discard buffer): the kernel's cost is per remote
    /// iovec (~0.7 us: page pinning), the copy of a gap's few bytes far cheaper.
    public static let coalesceGap: UInt64 = 1024
    /// Largest span read as one coalesced iovec.
    public static let coalesceSpan: UInt64 = 256 << 10

    public func read(_ ranges: UnsafeBufferPointer<MemoryRange>, into buffer: UnsafeMutableRawBufferPointer,
                     bytesRead: UnsafeMutableBufferPointer<Int>) {
        let count = min(ranges.count, bytesRead.count)
        guard count > 0 else { return }
        // Local offsets of each range in `buffer` (back to back); ranges past the buffer read 0.
        var localOffsets = [Int](repeating: 0, count: count)
        var total = 0
        var usable = count
        for i in 0..<count { bytesRead[i] = 0 }
        for i in 0..<count {
            let len = max(0, ranges[i].length)
            localOffsets[i] = total
            if total + len > buffer.count {
                usable = i
                break
            }
            total += len
        }
        counters.requested.wrappingAdd(total, ordering: .relaxed)
        guard let base = buffer.baseAddress else { return }
        // Restricted: each range reads only its leading bytes in the scannable memory.
        if let state = scannable.withLock({ $0 }) {
            var clipped = Array(ranges[0..<count])
            var hint = -1
            for i in 0..<usable where clipped[i].length > 0 {
                clipped[i].length = scannablePrefix(state, clipped[i].address, clipped[i].length, hint: &hint)
            }
            clipped.withUnsafeBufferPointer {
                read(clipped: $0, usable: usable, base: base, localOffsets: localOffsets, bytesRead: bytesRead, state)
            }
            return
        }
        read(clipped: UnsafeBufferPointer(rebasing: ranges[0..<count]), usable: usable, base: base,
             localOffsets: localOffsets, bytesRead: bytesRead, nil)
    }

    /// Reads `ranges` (their lengths as clipped) at their places `localOffsets` in `base`.
    private func read(clipped ranges: UnsafeBufferPointer<MemoryRange>, usable: Int, base: UnsafeMutableRawPointer,
                      localOffsets: [Int], bytesRead: UnsafeMutableBufferPointer<Int>, _ state: Scannable?) {
        let count = ranges.count
        var t = Tally()
        if usable < count { t.faults += count - usable }
        defer {
            counters.syscalls.wrappingAdd(t.syscalls, ordering: .relaxed)
            counters.read.wrappingAdd(t.got, ordering: .relaxed)
            counters.faults.wrappingAdd(t.faults, ordering: .relaxed)
            counters.remoteSpans.wrappingAdd(t.remoteSpans, ordering: .relaxed)
        }
        let retry = readCoalesced(ranges, usable: usable, base: base, localOffsets: localOffsets, bytesRead: bytesRead,
                                  within: state?.memory, &t)
        guard !t.gone else { return }
        readIndividually(ranges, indices: retry, base: base, localOffsets: localOffsets, bytesRead: bytesRead, &t)
    }

    struct Tally {
        var syscalls = 0, got = 0, faults = 0, remoteSpans = 0
        var gone = false
    }

    /// A run of ranges [first, last] (positions in address order) read as one remote span [start, end),
    /// scattered into the local iovecs from `firstLocal` on.
    struct Group {
        var first: Int
        var last: Int
        var start: UInt64
        var end: UInt64
        var firstLocal: Int
    }

    /// Pass 1: groups of nearby ranges, one remote iovec each, read straight into their places (no
    /// copy through a scratch buffer: its fresh pages faulted on every batch). Returns the ranges of
    /// groups that did not read in full (they are retried one by one, which attributes faults exactly).
    /// With `within`, a remote span never covers bytes outside its plainly scannable memory.
    private func readCoalesced(_ ranges: UnsafeBufferPointer<MemoryRange>, usable: Int, base: UnsafeMutableRawPointer,
                               localOffsets: [Int], bytesRead: UnsafeMutableBufferPointer<Int>,
                               within scannable: ScannableMemory?, _ t: inout Tally) -> [Int] {
        var retry: [Int] = []
        var groups: [Group] = []
        groups.reserveCapacity(min(Self.maxIovecs, usable))
        var remote = [ckml_iovec](repeating: ckml_iovec(), count: Self.maxIovecs)
        var local = [ckml_iovec](repeating: ckml_iovec(), count: Self.maxIovecs)
        // Where the gaps inside a coalesced span go (never read).
        let discard = UnsafeMutableRawPointer.allocate(byteCount: Int(Self.coalesceGap), alignment: 16)
        defer { discard.deallocate() }
        var hint = -1
        // In address order (each range still lands in its own place): the scan asks in its gray list's
        // order, where neighbours in memory lie far apart in the list and would not coalesce.
        let order = MemoryRange.addressOrder(ranges, usable)
        var i = 0
        while i < usable {
            // Build one batch: up to maxIovecs groups and maxIovecs local pieces.
            groups.removeAll(keepingCapacity: true)
            var nlocal = 0
            while i < usable && groups.count < Self.maxIovecs && nlocal < Self.maxIovecs {
                let first = ranges[order[i]]
                let len = max(0, first.length)
                if len == 0 || first.address.addingReportingOverflow(UInt64(len)).overflow {
                    if len > 0 { retry.append(order[i]) }
                    i += 1
                    continue
                }
                var g = Group(first: i, last: i, start: first.address, end: first.address + UInt64(len),
                              firstLocal: nlocal)
                local[nlocal] = ckml_iovec(base: base + localOffsets[order[i]], len: len)
                nlocal += 1
                var j = i + 1
                while j < usable {
                    let l = max(0, ranges[order[j]].length)
                    let a = ranges[order[j]].address
                    guard l > 0, a >= g.end, a - g.end <= Self.coalesceGap,
                          !a.addingReportingOverflow(UInt64(l)).overflow,
                          a + UInt64(l) - g.start <= Self.coalesceSpan,
                          nlocal + (a > g.end ? 2 : 1) <= Self.maxIovecs,
                          scannable?.isPlain(g.start, a + UInt64(l), hint: &hint) ?? true else { break }
                    if a > g.end {
                        local[nlocal] = ckml_iovec(base: discard, len: Int(a - g.end))
                        nlocal += 1
                    }
                    local[nlocal] = ckml_iovec(base: base + localOffsets[order[j]], len: l)
                    nlocal += 1
                    g.end = a + UInt64(l)
                    g.last = j
                    j += 1
                }
                remote[groups.count] = ckml_iovec(base: UnsafeMutableRawPointer(bitPattern: UInt(g.start)),
                                                  len: Int(g.end - g.start))
                groups.append(g)
                i = g.last + 1
            }
            // Issue the batch; on a short count, the groups after the faulting one are re-issued.
            var k = 0
            while k < groups.count {
                let n = groups.count - k
                let from = groups[k].firstLocal
                let r: Int
                t.remoteSpans += n
                let outcome = local.withUnsafeBufferPointer { l in
                    remote.withUnsafeBufferPointer { rm in
                        readv({ ckml_process_vm_scatter(pid, l.baseAddress! + from, nlocal - from, rm.baseAddress! + k, n) }, &t)
                    }
                }
                switch outcome {
                case .gone:
                    t.faults += usable // everything reads 0
                    return []
                case .fault:
                    // The first group faulted at its first byte.
                    retry.append(contentsOf: (groups[k].first...groups[k].last).map { order[$0] })
                    k += 1
                    continue
                case .read(let count):
                    r = count
                }
                t.got += r
                var left = r
                while k < groups.count && left >= remote[k].len {
                    for x in groups[k].first...groups[k].last { bytesRead[order[x]] = ranges[order[x]].length }
                    left -= remote[k].len
                    k += 1
                }
                if k < groups.count {
                    // groups[k] stopped after `left` bytes: retry its ranges one by one.
                    retry.append(contentsOf: (groups[k].first...groups[k].last).map { order[$0] })
                    k += 1
                }
            }
        }
        return retry
    }

    private enum ReadvOutcome { case read(Int), fault, gone }

    /// One process_vm_readv (`call`, retried on EINTR). ESRCH/EPERM: the process is gone (or no longer
    /// ours to read), which is remembered; any other failure is a fault at the first remote iovec.
    private func readv(_ call: () -> Int, _ t: inout Tally) -> ReadvOutcome {
        while true {
            let r = call()
            t.syscalls += 1
            if r >= 0 { return .read(r) }
            let e = errno
            if e == EINTR { continue }
            if e == ESRCH || e == EPERM {
                counters.gone.store(true, ordering: .relaxed)
                t.gone = true
                return .gone
            }
            return .fault
        }
    }

    /// Pass 2: ranges one iovec each (batched), attributing a short count to the faulting range;
    /// that range's remainder is retried once alone, then the batch goes on after it.
    private func readIndividually(_ ranges: UnsafeBufferPointer<MemoryRange>, indices: [Int], base: UnsafeMutableRawPointer,
                                  localOffsets: [Int], bytesRead: UnsafeMutableBufferPointer<Int>, _ t: inout Tally) {
        guard !indices.isEmpty else { return }
        var iov = [ckml_range](repeating: ckml_range(), count: min(Self.maxIovecs, indices.count))
        var batchIndex: [Int] = []
        batchIndex.reserveCapacity(iov.count)
        var next = 0 // position in `indices` of the first range not yet attempted
        while next < indices.count {
            batchIndex.removeAll(keepingCapacity: true)
            var n = 0
            var j = next
            while j < indices.count && n < Self.maxIovecs {
                let idx = indices[j]
                let len = max(0, ranges[idx].length)
                if len > 0 && !ranges[idx].address.addingReportingOverflow(UInt64(len)).overflow {
                    iov[n] = ckml_range(remote: ranges[idx].address, local: base + localOffsets[idx], len: len)
                    batchIndex.append(j)
                    n += 1
                } else if len > 0 {
                    t.faults += 1
                }
                j += 1
            }
            if n == 0 { break }
            let r: Int
            t.remoteSpans += n
            switch iov.withUnsafeBufferPointer({ iv in readv({ ckml_process_vm_readv(pid, iv.baseAddress!, n) }, &t) }) {
            case .gone:
                t.faults += indices.count - next
                return
            case .fault:
                // EFAULT (or anything else) on the first range: it reads 0; go on after it.
                t.faults += 1
                next = batchIndex[0] + 1
                continue
            case .read(let count):
                r = count
            }
            var left = r
            var k = 0
            while k < n && left >= iov[k].len {
                bytesRead[indices[batchIndex[k]]] = iov[k].len
                left -= iov[k].len
                k += 1
            }
            t.got += r
            if k == n {
                next = j
                continue
            }
            // indices[batchIndex[k]] stopped after `left` bytes: retry its remainder once alone.
            let idx = indices[batchIndex[k]]
            var done = left
            let len = iov[k].len
            while done < len {
                let rr = ckml_process_vm_read(pid, base + localOffsets[idx] + done, len - done, ranges[idx].address + UInt64(done))
                t.syscalls += 1
                t.remoteSpans += 1
                if rr < 0 && errno == EINTR { continue }
                if rr < 0 && (errno == ESRCH || errno == EPERM) {
                    counters.gone.store(true, ordering: .relaxed)
                    t.gone = true
                    bytesRead[idx] = done
                    t.faults += indices.count - batchIndex[k]
                    return
                }
                if rr <= 0 { break }
                done += rr
                t.got += rr
            }
            bytesRead[idx] = done
            if done < len { t.faults += 1 }
            next = batchIndex[k] + 1
        }
    }
}
