import Foundation

/// A report streamed to readers record by record: only the records a read needs are rendered, so a
/// report of 100k objects never exists as one string. Offsets normally only move forward; a read
/// behind the rendered window starts rendering again from the first record (re-reads, `pread`).
public final class RecordStream: @unchecked Sendable {
    private let lock = NSLock()
    private let recordCount: Int
    private let renderRecord: (Int) -> [UInt8]
    // Guarded by `lock`.
    private var nextRecord = 0
    private var window: [UInt8] = []
    private var windowStart = 0

    /// - Parameters:
    ///   - recordCount: how many records the report has.
    ///   - renderRecord: renders record `i` (0-based) to its bytes; called at most once per pass.
    public init(recordCount: Int, renderRecord: @escaping (Int) -> [UInt8]) {
        self.recordCount = recordCount
        self.renderRecord = renderRecord
    }

    /// Copies report bytes from `offset` into `buffer`; returns the number copied (0 at the end).
    public func read(at offset: Int, into buffer: UnsafeMutableRawBufferPointer) -> Int {
        lock.lock()
        defer { lock.unlock() }
        guard offset >= 0, buffer.count > 0 else { return 0 }
        if offset < windowStart {
            nextRecord = 0
            window.removeAll(keepingCapacity: true)
            windowStart = 0
        }
        // Drop what lies before the offset, rendering forward as needed.
        while windowStart + window.count <= offset && nextRecord < recordCount {
            windowStart += window.count
            window = renderRecord(nextRecord)
            nextRecord += 1
        }
        let skip = offset - windowStart
        guard skip < window.count else { return 0 }
        if skip > 0 {
            window.removeFirst(skip)
            windowStart = offset
        }
        while window.count < buffer.count && nextRecord < recordCount {
            window.append(contentsOf: renderRecord(nextRecord))
            nextRecord += 1
        }
        let count = min(buffer.count, window.count)
        window.withUnsafeBytes { bytes in
            buffer.copyMemory(from: UnsafeRawBufferPointer(rebasing: bytes[0..<count]))
        }
        return count
    }
}
