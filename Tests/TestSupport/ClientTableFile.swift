// Writing into a live client's table from a test, as a buggy or hostile client could: through its
// memfd (/proc/PID/fd/<fd>) or, for a private table (fd=-1), through /proc/PID/mem at its address.
import Glibc

public struct ClientTableFile {
    public let fd: Int32
    /// Added to a table offset to get the file offset (the table's address in /proc/PID/mem).
    public let base: off_t

    /// Opens the table that `rendezvousLine` ("pid=... fd=... addr=... ...") announces, read-write.
    public init?(pid: Int32, rendezvousLine: String) {
        var fields: [Substring: Substring] = [:]
        for tok in rendezvousLine.split(whereSeparator: { $0 == " " || $0 == "\n" }) {
            if let eq = tok.firstIndex(of: "=") { fields[tok[..<eq]] = tok[tok.index(after: eq)...] }
        }
        guard let fdField = fields["fd"].flatMap({ Int32($0) }), let addr = fields["addr"].flatMap({ UInt64($0, radix: 16) }) else { return nil }
        let path = fdField >= 0 ? "/proc/\(pid)/fd/\(fdField)" : "/proc/\(pid)/mem"
        fd = open(path, O_RDWR | O_CLOEXEC)
        guard fd >= 0 else { return nil }
        base = fdField >= 0 ? 0 : off_t(Int64(bitPattern: addr))
    }

    /// Opens the table of `pid` announced in `runDirectory`/<pid>.client.
    public init?(pid: Int32, runDirectory: String) {
        let fd = open(runDirectory + "/\(pid).client", O_RDONLY | O_CLOEXEC)
        guard fd >= 0 else { return nil }
        defer { _ = Glibc.close(fd) }
        var line = [UInt8](repeating: 0, count: 512)
        let n = Glibc.read(fd, &line, line.count)
        guard n > 0 else { return nil }
        self.init(pid: pid, rendezvousLine: String(decoding: line[0..<n], as: UTF8.self))
    }

    /// pwrite of `value` at table offset `offset`; true when all of it was written.
    @discardableResult
    public func write<T>(_ value: T, at offset: Int) -> Bool {
        var v = value
        return withUnsafeBytes(of: &v) { pwrite(fd, $0.baseAddress, $0.count, base + off_t(offset)) } == MemoryLayout<T>.size
    }

    /// pread of a `T` at table offset `offset`.
    public func read<T>(_ type: T.Type, at offset: Int) -> T? {
        let p = UnsafeMutableRawPointer.allocate(byteCount: MemoryLayout<T>.size, alignment: MemoryLayout<T>.alignment)
        defer { p.deallocate() }
        guard pread(fd, p, MemoryLayout<T>.size, base + off_t(offset)) == MemoryLayout<T>.size else { return nil }
        return p.load(as: T.self)
    }

    public func close() { _ = Glibc.close(fd) }
}
