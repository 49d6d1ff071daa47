import KmemleakSystem
import Testing

/// The daemon's malloc settings, which kmemleakd applies at start: glibc accepts both (the daemon logs a
/// warning when it does not). What one arena saves is measured, not asserted (BENCHMARKS.md, goal 5).
@Suite struct MallocTuningTests {
    @Test func glibcAcceptsTheDaemonsSettings() {
        #expect(MallocTuning.fixMmapThreshold())
        #expect(MallocTuning.limitArenas())
    }
}
