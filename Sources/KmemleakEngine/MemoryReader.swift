/// An address in the scanned address space (a client process), as the kernel's `unsigned long`.
public typealias Address = UInt64

/// One range of the scanned address space to read.
public struct MemoryRange: Sendable, Equatable {
    public var address: Address
    public var length: Int

    public init(address: Address, length: Int) {
        self.address = address
        self.length = length
    }
}

extension MemoryRange {
    /// The positions of the first `n` ranges by address, equal addresses in position order. Sorted as
    /// packed keys (address << 16 | position) where they fit, which sorts several times faster than
    /// positions compared through a closure (2-3 % of a python3 scan).
    public static func addressOrder(_ ranges: UnsafeBufferPointer<MemoryRange>, _ n: Int) -> [Int] {
        var keys: [UInt64] = []
        keys.reserveCapacity(n)
        if n <= 1 << 16 {
            for i in 0..<n {
                let a = ranges[i].address
                if a >> 48 != 0 { break }
                keys.append(a << 16 | UInt64(i))
            }
        }
        guard keys.count == n else { return (0..<n).sorted { ranges[$0].address < ranges[$1].address } }
        keys.sort()
        return keys.map { Int($0 & 0xffff) }
    }
}

/// See `MemoryReader.plainWindow(at:)`: [start, end), ranges shorter than `maxLength`.
public struct PlainWindow: Sendable, Equatable {
    public var start: Address
    public var end: Address
    public var maxLength: UInt64

    public init(start: Address, end: Address, maxLength: UInt64) {
        self.start = start
        self.end = end
        self.maxLength = maxLength
    }

    /// Whether `scannablePart(of:)` would answer [address, address+length) with itself.
    @inline(__always)
    func covers(_ address: Address, _ length: UInt64) -> Bool {
        address >= start && length < maxLength && length <= end &- address && address < end
    }
}

/// Read access to the memory the engine scans. The engine never makes a syscall: tests give it
/// synthetic memory images, the daemon gives it `process_vm_readv` on a live client.
///
/// Reads are batched because each call may cost a syscall: the engine asks for many objects at once.
public protocol MemoryReader {
    /// Reads `ranges` back to back into `buffer` (at least the sum of their lengths) and stores in
    /// `bytesRead[i]` how many leading bytes of range `i` were read: its full length, or fewer when the
    /// memory is unmapped or the process is gone (the remaining bytes of that range are unspecified).
    /// Never fails as a whole; a read that cannot be done reports 0 bytes.
    func read(
        _ ranges: UnsafeBufferPointer<MemoryRange>,
        into buffer: UnsafeMutableRawBufferPointer,
        bytesRead: UnsafeMutableBufferPointer<Int>)

    /// The first part of `range` worth reading (memory that may hold pointers), or nil when nothing
    /// in it is: a reader may skip unmapped, unreadable, file-backed or never-touched pages. The part
    /// lies inside `range`; what precedes it is skipped, what follows it is asked about again.
    /// Called with the engine's lock held (must not call into the engine). Default: the whole range.
    func scannablePart(of range: MemoryRange) -> MemoryRange?

    /// A window around `address` in which `scannablePart(of:)` answers every range shorter than
    /// `PlainWindow.maxLength` that lies inside the window with the range itself, or nil when there is
    /// none (or the reader does not tell). The engine then does not ask about such ranges one by one (it
    /// asks for every scanned object). The answer holds while the engine fills one batch: a reader's
    /// scannable memory changes only between passes (the confirmation hooks). Default nil.
    func plainWindow(at address: Address) -> PlainWindow?

    /// Whether `read` may be called from several threads at once (on disjoint buffers): a scan with
    /// `KmemleakConfiguration.scanWorkers` then reads a batch's ranges in parallel. Default false.
    var allowsConcurrentReads: Bool { get }
}

extension MemoryReader {
    public func scannablePart(of range: MemoryRange) -> MemoryRange? { range }
    public func plainWindow(at address: Address) -> PlainWindow? { nil }
    public var allowsConcurrentReads: Bool { false }
}

extension MemoryReader {
    /// Reads one range; returns the bytes that could be read (possibly fewer than `length`).
    public func read(_ address: Address, length: Int) -> [UInt8] {
        guard length > 0 else { return [] }
        var bytes = [UInt8](repeating: 0, count: length)
        var got = 0
        let range = [MemoryRange(address: address, length: length)]
        bytes.withUnsafeMutableBytes { buffer in
            range.withUnsafeBufferPointer { ranges in
                withUnsafeMutablePointer(to: &got) { count in
                    read(ranges, into: buffer, bytesRead: UnsafeMutableBufferPointer(start: count, count: 1))
                }
            }
        }
        return Array(bytes.prefix(max(0, min(got, length))))
    }
}

/// What the report and `dump=` text need beyond the object itself: the allocating thread's name,
/// the frames of a stack-depot entry, and `%pS`-style symbols.
public protocol ReportContext {
    /// The comm string of a comm id (at most 15 characters), or nil if unknown.
    func comm(_ id: UInt32) -> String?
    /// The frames (return addresses) of a stack-depot id; empty if there is none.
    func frames(_ trace: UInt32) -> [Address]
    /// `symbol+0xoff/0xsize` with ` [module]` appended for code outside the main executable,
    /// or nil when the address resolves to nothing (the report then prints `0x...`).
    func symbolize(_ address: Address) -> String?
    /// The frames a return address resolves to (inlined functions first, see `SymbolizedFrame`); at
    /// least one, whose `address` is `address`.
    func describe(_ address: Address) -> [SymbolizedFrame]
}

extension ReportContext {
    /// A context without a structured symbolizer: the bare address.
    public func describe(_ address: Address) -> [SymbolizedFrame] { [SymbolizedFrame(address: address)] }
}
