import Testing
@testable import KmemleakEngine

/// LeakSanitizer's direct/indirect classification over a synthetic engine's real report.
@Suite struct LeakGraphTests {
    let E: UInt64 = 0x10400, F: UInt64 = 0x10500

    /// The report, then the indirect set computed over it.
    func classify(_ w: World) -> (reported: Set<UInt64>, indirect: Set<UInt64>) {
        let entries = w.e.reportSnapshot(memory: w.mem)
        let flags = Kmemleak.indirectLeaks(among: entries, memory: w.mem)
        #expect(flags.count == entries.count)
        return (Set(entries.map(\.pointer)), Set(zip(entries, flags).filter { $0.1 }.map { $0.0.pointer }))
    }

    @Test func lonelyLeaksAreDirect() {
        let w = World()
        w.obj(A); w.obj(B)
        _ = w.settle()
        let result = classify(w)
        #expect(result.reported == [A, B])
        #expect(result.indirect.isEmpty)
    }

    /// A -> B -> C: only the head is direct, an interior pointer counts like the engine's scan.
    @Test func chainHeadIsDirect() {
        let w = World()
        w.obj(A); w.obj(B); w.obj(C)
        w.ptr(A + 8, B)
        w.ptr(B + 16, C + 40)  // interior
        _ = w.settle()
        let result = classify(w)
        #expect(result.reported == [A, B, C])
        #expect(result.indirect == [B, C])
    }

    /// A <-> B <-> C (a leaked cycle): one member, the oldest, is direct.
    @Test func cycleHasOneDirectMember() {
        let w = World()
        w.obj(B); w.obj(A); w.obj(C)  // B is the oldest (lowest seq)
        w.ptr(A, B); w.ptr(B, C); w.ptr(C, A)
        _ = w.settle()
        let result = classify(w)
        #expect(result.reported == [A, B, C])
        #expect(result.indirect == [A, C])
    }

    /// D -> (A <-> B) -> C: the cycle is reachable from a direct leak, so all of it is indirect.
    @Test func cyclePointedToByADirectLeak() {
        let w = World()
        w.obj(A); w.obj(B); w.obj(C); w.obj(D)
        w.ptr(A, B); w.ptr(B, A); w.ptr(B + 8, C); w.ptr(D + 56, A + 1)
        _ = w.settle()
        let result = classify(w)
        #expect(result.reported == [A, B, C, D])
        #expect(result.indirect == [A, B, C])
    }

    /// Two separate cycles, one pointing into the other: the pointed-to cycle is all indirect, the
    /// other keeps one direct member.
    @Test func cyclePointingIntoAnotherCycle() {
        let w = World()
        w.obj(A); w.obj(B); w.obj(C); w.obj(D)
        w.ptr(A, B); w.ptr(B, A)        // cycle 1
        w.ptr(C, D); w.ptr(D, C)        // cycle 2
        w.ptr(A + 8, C)                 // 1 -> 2
        _ = w.settle()
        #expect(classify(w).indirect == [B, C, D])
    }

    /// Pointers to itself (start or interior) make nothing indirect.
    @Test func selfPointersDoNotCount() {
        let w = World()
        w.obj(A); w.obj(B)
        w.ptr(A, A); w.ptr(A + 8, A + 32); w.ptr(B + 8, B)
        _ = w.settle()
        let result = classify(w)
        #expect(result.reported == [A, B])
        #expect(result.indirect.isEmpty)
    }

    /// Only leaks count as sources: an object still referenced (not a leak) pointing to a leak does
    /// not make it indirect; a word just past a leak's end points to nothing; unaligned words are
    /// not looked at (the engine's scan takes aligned words only).
    @Test func onlyAlignedWordsOfLeaksInsideTheirObjects() {
        let w = World()
        w.obj(A); w.obj(B); w.obj(C); w.obj(D)
        w.root(0, A)            // A is referenced, B is only pointed to by A: both are kept
        w.ptr(A, B)
        w.ptr(C, D + 64)        // one past D's end (D is 64 bytes)
        w.mem.write(D + 4, (0..<8).map { UInt8(truncatingIfNeeded: C >> (8 * UInt64($0))) })  // unaligned
        _ = w.settle()
        let result = classify(w)
        #expect(result.reported == [C, D])
        #expect(result.indirect.isEmpty)
    }

    /// A long chain classifies without recursion (the walk is iterative) and reads in batches.
    @Test func longChain() {
        let w = World()
        let count = 3000
        let base: UInt64 = 0x11000
        for i in 0..<count { w.obj(base + UInt64(i) * 64) }
        for i in 0..<(count - 1) { w.ptr(base + UInt64(i) * 64, base + UInt64(i + 1) * 64) }
        _ = w.settle()
        let result = classify(w)
        #expect(result.reported.count == count)
        #expect(result.indirect == Set((1..<count).map { base + UInt64($0) * 64 }))
    }

    /// A leak bigger than the read buffer is read in pieces: a pointer in its last word still counts.
    @Test func leakLargerThanTheBuffer() {
        let w = World()
        let big: UInt64 = 0x100000
        let size = Kmemleak.leakGraphBufferSize * 2 + 64
        w.mem.map(big, size)
        w.seq += 1
        w.e.alloc(big, size: UInt64(size), metadata: meta(w.seq, at: w.now))
        w.obj(A)
        w.ptr(big + UInt64(size) - 8, A)
        _ = w.settle()
        let result = classify(w)
        #expect(result.reported == [big, A])
        #expect(result.indirect == [A])
    }

    /// An unreadable leak (unmapped, process gone) points nowhere.
    @Test func unreadableLeakPointsNowhere() {
        let w = World()
        let unmapped: UInt64 = 0x900000
        w.seq += 1
        w.e.alloc(unmapped, size: 64, metadata: meta(w.seq, at: w.now))
        w.obj(A)
        _ = w.settle()
        let result = classify(w)
        #expect(result.reported == [unmapped, A])
        #expect(result.indirect.isEmpty)
    }
}

/// What suppressed leaks reach (LeakSanitizer ignores it with them).
@Suite struct LeakGraphReachabilityTests {
    /// A -> B -> C, D -> C, E alone: from [A] everything A reaches, attributed to source 0; a
    /// second source only gets what the first did not reach; sources are not reported as reached.
    @Test func reachedFromSources() {
        let w = World()
        let E: UInt64 = 0x10400
        for p in [A, B, C, D, E] { w.obj(p) }
        w.ptr(A, B); w.ptr(B + 8, C); w.ptr(D, C)
        _ = w.settle()
        let entries = w.e.reportSnapshot(memory: w.mem)
        #expect(entries.map(\.pointer) == [A, B, C, D, E])
        let graph = LeakGraph(entries, memory: w.mem)
        #expect(graph.reached(from: [0]) == [nil, 0, 0, nil, nil])
        #expect(graph.reached(from: [3, 0]) == [nil, 1, 0, nil, nil])
        #expect(graph.reached(from: [4]) == [nil, nil, nil, nil, nil])
        #expect(graph.reached(from: [1, 0]) == [nil, nil, 0, nil, nil], "a source is never 'reached'")
        #expect(graph.indirectFlags(entries) == Kmemleak.indirectLeaks(among: entries, memory: w.mem))
    }

    /// A cycle reached from a source is reached whole; the walk ends.
    @Test func cycleIsReachedWhole() {
        let w = World()
        for p in [A, B, C] { w.obj(p) }
        w.ptr(A, B); w.ptr(B, C); w.ptr(C, B)
        _ = w.settle()
        let graph = LeakGraph(w.e.reportSnapshot(memory: w.mem), memory: w.mem)
        #expect(graph.reached(from: [0]) == [nil, 0, 0])
    }
}
