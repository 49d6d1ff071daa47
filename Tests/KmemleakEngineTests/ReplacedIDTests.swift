import Testing
@testable import KmemleakEngine

/// A daemon keeps one engine id per table slot: the id of an object that a newer overlapping
/// registration replaced must not name another object before the daemon has forgotten it.
@Suite struct ReplacedIDTests {
    @Test func replacedIDsWaitForReuse() {
        var config = KmemleakConfiguration(minimumAge: 0)
        config.replacesStaleObjects = true
        let e = Kmemleak(configuration: config)
        let old = e.register(0x10000, size: 64, minCount: 1, percpu: false, metadata: meta(1))!
        let newer = e.register(0x10000, size: 64, minCount: 1, percpu: false, metadata: meta(2))!
        #expect(newer != old)
        #expect(e.hasReplacedObjects)
        #expect(e.seq(of: old) == nil)
        // Freed the ordinary way, an id is reused at once; the replaced one is not.
        e.free(object: newer, ifSeq: 2)
        #expect(e.register(0x20000, size: 8, minCount: 1, percpu: false, metadata: meta(3)) == newer)
        let other = e.register(0x30000, size: 8, minCount: 1, percpu: false, metadata: meta(4))!
        #expect(other != old)
        e.reuseReplacedIDs()
        #expect(!e.hasReplacedObjects)
        #expect(e.register(0x40000, size: 8, minCount: 1, percpu: false, metadata: meta(5)) == old)
        #expect(e.seq(of: old) == 5)
    }
}
