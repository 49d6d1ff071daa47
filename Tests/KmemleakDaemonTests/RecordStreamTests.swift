import Testing
@testable import KmemleakDaemon

struct RecordStreamTests {
    private func records(_ n: Int) -> [[UInt8]] {
        (0..<n).map { Array("record \($0) \(String(repeating: "x", count: $0 % 97))\n".utf8) }
    }

    private func readAll(_ stream: RecordStream, chunk: Int) -> [UInt8] {
        var out: [UInt8] = []
        var buffer = [UInt8](repeating: 0, count: chunk)
        while true {
            let n = buffer.withUnsafeMutableBytes { stream.read(at: out.count, into: $0) }
            if n == 0 { return out }
            out.append(contentsOf: buffer[0..<n])
        }
    }

    @Test(arguments: [1, 7, 64, 4096, 1 << 20])
    func sequentialReadsReturnEveryRecordInOrder(chunk: Int) {
        let recs = records(500)
        var rendered = 0
        let stream = RecordStream(recordCount: recs.count) { rendered += 1; return recs[$0] }
        #expect(readAll(stream, chunk: chunk) == recs.flatMap { $0 })
        #expect(rendered == recs.count)
    }

    @Test func readsBehindTheWindowAndPastTheEndWork() {
        let recs = records(50)
        let whole = recs.flatMap { $0 }
        let stream = RecordStream(recordCount: recs.count) { recs[$0] }
        var buffer = [UInt8](repeating: 0, count: 10)
        for offset in [300, 5, 0, whole.count - 3, 42] {
            let n = buffer.withUnsafeMutableBytes { stream.read(at: offset, into: $0) }
            #expect(Array(buffer[0..<n]) == Array(whole[offset..<min(offset + 10, whole.count)]))
        }
        #expect(buffer.withUnsafeMutableBytes { stream.read(at: whole.count, into: $0) } == 0)
        #expect(buffer.withUnsafeMutableBytes { stream.read(at: whole.count + 100, into: $0) } == 0)
    }

    @Test func emptyReportReadsNothing() {
        let stream = RecordStream(recordCount: 0) { _ in [] }
        var buffer = [UInt8](repeating: 0, count: 10)
        #expect(buffer.withUnsafeMutableBytes { stream.read(at: 0, into: $0) } == 0)
    }
}
