import Testing
@testable import KmemleakEngine

/// The 28-byte object record keeps the low bits of seq and creation time and shares the high bits
/// through the interned context: every value must still come back exact, whatever its range.
@Suite struct RecordLayoutTests {
    @Test func recordTakes28Bytes() {
        #expect(MemoryLayout<ObjectRecord>.stride == 28)
    }

    /// Values on both sides of the split points (2^32 for seq, 2^39 ns for the creation time) and at the
    /// ends of UInt64 come back as given, from `objectInfo` and from the report.
    @Test func seqAndCreationTimeRoundTripExactly() {
        let e = makeEngine()
        let mem = SyntheticMemory()
        mem.map(0x10000, 0x1000)
        let seqs: [UInt64] = [0, 1, 1 << 32 - 1, 1 << 32, 1 << 55 + 7, UInt64.max - 1]
        let times: [UInt64] = [0, 1 << 39 - 1, 1 << 39, 3 << 39 + 5, 1 << 62 + 12_345, UInt64.max - 3]
        for (i, (seq, t)) in zip(seqs, times).enumerated() {
            e.alloc(0x10000 + UInt64(i) * 64, size: 64, metadata: meta(seq, at: t, pid: Int32(i)))
        }
        for (i, (seq, t)) in zip(seqs, times).enumerated() {
            let info = e.objectInfo(at: 0x10000 + UInt64(i) * 64)
            #expect(info?.metadata == meta(seq, at: t, pid: Int32(i)))
        }
        // Every object is old enough at now = UInt64.max and unreferenced: the report lists all, in seq order.
        #expect(e.scan(now: UInt64.max, memory: mem).newLeaks == seqs.count)
        let report = e.reportSnapshot(memory: mem)
        #expect(report.map(\.seq) == seqs)
        #expect(report.map(\.creationTime) == times)
        #expect(report.map(\.jiffies) == times.map { KFormat.jiffies($0, hz: 100) })
    }

    /// The minimum age is measured in nanoseconds from the exact creation time, across the 2^39 split.
    @Test func minimumAgeIsExactAcrossTheSplit() {
        let e = makeEngine(minAge: 5 * sec)
        let mem = SyntheticMemory()
        mem.map(0x10000, 0x1000)
        let t: UInt64 = 1 << 39 - 3 * sec + 17  // its high bits differ from those of t + 5 s
        e.alloc(0x10000, size: 64, metadata: meta(1, at: t))
        #expect(e.scan(now: t + 5 * sec - 1, memory: mem).newLeaks == 0)
        #expect(e.scan(now: t + 5 * sec, memory: mem).newLeaks == 1)
    }

    /// Daemon mode: the newer of two overlapping registrations wins by the full 64-bit seq, also when
    /// the two differ only above bit 32.
    @Test func newerWinsByTheFullSeq() {
        var config = KmemleakConfiguration(minimumAge: 0)
        config.replacesStaleObjects = true
        let e = Kmemleak(configuration: config)
        let newer: UInt64 = 1 << 33 | 5
        #expect(e.register(0x10000, size: 64, minCount: 1, percpu: false, metadata: meta(newer)) != nil)
        // Same low 32 bits, lower high bits: older, dropped.
        #expect(e.register(0x10000, size: 64, minCount: 1, percpu: false, metadata: meta(1 << 32 | 5)) == nil)
        #expect(e.objectInfo(at: 0x10000)?.metadata.seq == newer)
        // Higher high bits, lower low bits: newer, replaces.
        let newest: UInt64 = 1 << 34
        #expect(e.register(0x10020, size: 64, minCount: 1, percpu: false, metadata: meta(newest)) != nil)
        #expect(e.objectInfo(at: 0x10000) == nil)
        #expect(e.objectInfo(at: 0x10020)?.metadata.seq == newest)
        #expect(e.objectCount == 1)
    }

    /// Contexts are freed with their last object: a client that gives every object a new thread id, trace
    /// and time window costs nothing once those objects are gone.
    @Test func contextsGoWithTheirLastObject() {
        let e = makeEngine()
        for round in 0..<3 {
            for i in 0..<5000 {
                let n = UInt64(round * 5000 + i)
                e.alloc(0x100_0000 + UInt64(i) * 64, size: 64,
                        metadata: meta(n, at: n << 39, pid: Int32(n), trace: UInt32(n)))
            }
            #expect(e.state.withLock { $0.contextIDs.count } == 5000)
            for i in 0..<5000 { e.free(0x100_0000 + UInt64(i) * 64) }
            #expect(e.state.withLock { $0.contextIDs.count } == 0)
        }
        // Ids are reused: the context table did not grow past one round's worth.
        #expect(e.state.withLock { $0.contextKeys.count } == 5000)
        // Shared contexts count their objects: freeing one of two keeps the context.
        e.alloc(0x10000, size: 8, metadata: meta(1))
        e.alloc(0x10010, size: 8, metadata: meta(2))
        #expect(e.state.withLock { $0.contextIDs.count } == 1)
        e.free(0x10000)
        #expect(e.objectInfo(at: 0x10010)?.metadata == meta(2))
        e.updateTrace(0x10010, trace: 9)
        #expect(e.objectInfo(at: 0x10010)?.metadata == meta(2, trace: 9))
        #expect(e.state.withLock { $0.contextIDs.count } == 1)
    }

    /// min_count is kept in 8 bits: larger values clamp to 127, negative ones below -1 to -128 (both keep
    /// their colour: white until 127 references, resp. gray), -1 stays black.
    @Test func minCountClampsToEightBits() {
        let e = makeEngine()
        e.alloc(0x10000, size: 64, minCount: 1000, metadata: meta(1))
        e.alloc(0x10040, size: 64, minCount: -1, metadata: meta(2))
        e.alloc(0x10080, size: 64, minCount: 2, metadata: meta(3))
        e.alloc(0x100c0, size: 64, minCount: -1000, metadata: meta(4))
        #expect(e.objectInfo(at: 0x10000)?.minCount == 127)
        #expect(e.objectInfo(at: 0x10040)?.minCount == -1)
        #expect(e.objectInfo(at: 0x10080)?.minCount == 2)
        #expect(e.objectInfo(at: 0x100c0)?.minCount == -128)
    }
}
