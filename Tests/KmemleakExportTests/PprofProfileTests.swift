import Foundation
import Glibc
import KmemleakEngine
@testable import KmemleakPprof
import KmemleakReports
import KmemleakTestSupport
import Testing

@Suite struct PprofProfileTests {
    typealias Profile = Perftools_Profiles_Profile

    static func decode(_ snapshot: LeakSnapshot) throws -> Profile {
        try Profile(serializedBytes: try PprofProfile.encode(snapshot, timeNanos: 1_700_000_000_123_456_789))
    }

    /// (function names of the stack, leaf first, inline chains innermost first) -> (objects, bytes, pid, comm)
    static func samples(_ p: Profile) -> [String: (objects: Int64, bytes: Int64, pid: String, comm: String)] {
        let functions = Dictionary(uniqueKeysWithValues: p.function.map { ($0.id, p.stringTable[Int($0.name)]) })
        let locations = Dictionary(uniqueKeysWithValues: p.location.map { ($0.id, $0) })
        var result: [String: (Int64, Int64, String, String)] = [:]
        for sample in p.sample {
            let names = sample.locationID.flatMap { id in locations[id]!.line.map { functions[$0.functionID]! } }
            let labels = Dictionary(uniqueKeysWithValues: sample.label.map { (p.stringTable[Int($0.key)], p.stringTable[Int($0.str)]) })
            result[names.joined(separator: ";") + "@" + labels["pid"]!] = (sample.value[0], sample.value[1], labels["pid"]!, labels["comm"]!)
        }
        return result
    }

    @Test func samplesAreOnePerStackAndProcessWithCountsBytesAndLabels() throws {
        let p = try Self.decode(Fixture.threeSites(commOf200: "other"))
        #expect(p.stringTable.first == "")
        #expect(p.sampleType.map { "\(p.stringTable[Int($0.type)])/\(p.stringTable[Int($0.unit)])" }
            == ["inuse_objects/count", "inuse_space/bytes"])
        #expect(p.timeNanos == 1_700_000_000_123_456_789)
        let samples = Self.samples(p)
        #expect(samples.count == 4)
        let a = try #require(samples["site_a;main;__libc_start_call_main@100"])
        #expect(a.objects == 1000 && a.bytes == 32_000 && a.comm == "leaky")
        let b = try #require(samples["site_b;main;__libc_start_call_main@100"])
        #expect(b.objects == 2 && b.bytes == 300)
        let c = try #require(samples["site_c;main;__libc_start_call_main@100"])
        #expect(c.objects == 1 && c.bytes == 4096)
        let other = try #require(samples["site_a;main;__libc_start_call_main@200"])
        #expect(other.objects == 1 && other.bytes == 32 && other.comm == "other")
    }

    @Test func locationsAreOnePerAddressOfAProcessWithTheInlineChainInnermostFirst() throws {
        let p = try Self.decode(Fixture.threeSites())
        // pid 100: site_a, site_b, main, site_c/main (one address), libc, shared by its samples; pid 200:
        // site_a, main, libc again (an address means one thing within one process).
        #expect(p.location.count == 8)
        #expect(Set(p.location.map(\.address)).count == 5)
        let inlined = try #require(p.location.first { $0.address == 0x5555_5555_5320 })
        let functions = Dictionary(uniqueKeysWithValues: p.function.map { ($0.id, $0) })
        let chain = inlined.line.map { (p.stringTable[Int(functions[$0.functionID]!.name)], $0.line) }
        #expect(chain.map(\.0) == ["site_c", "main"])
        #expect(chain.map(\.1) == [23, 44])
        // One function per (name, file): main appears at two addresses and once in the table.
        #expect(p.function.filter { p.stringTable[Int($0.name)] == "main" }.count == 1)
        let mainFunction = try #require(p.function.first { p.stringTable[Int($0.name)] == "main" })
        #expect(p.stringTable[Int(mainFunction.filename)] == "leaky.c")
        #expect(Set(p.location.map(\.id)) == Set(1...8))
    }

    @Test func mappingsCarryTheClientsRangeOffsetFileAndBuildID() throws {
        let p = try Self.decode(Fixture.threeSites())
        #expect(p.mapping.count == 2)
        let leaky = try #require(p.mapping.first { p.stringTable[Int($0.filename)] == Fixture.module })
        #expect(leaky.memoryStart == Fixture.mapping.start && leaky.memoryLimit == Fixture.mapping.limit)
        #expect(leaky.fileOffset == 0x1000)
        #expect(p.stringTable[Int(leaky.buildID)] == Fixture.buildID)
        #expect(leaky.hasFunctions_p && leaky.hasFilenames_p && leaky.hasLineNumbers_p && leaky.hasInlineFrames_p)
        // libc's frame has a symbol but no source line: a consumer may still resolve the lines.
        let libc = try #require(p.mapping.first { $0.id != leaky.id })
        #expect(libc.hasFunctions_p && !libc.hasFilenames_p && !libc.hasLineNumbers_p)
        for location in p.location {
            let mapping = try #require(p.mapping.first { $0.id == location.mappingID })
            #expect(mapping.memoryStart <= location.address && location.address < mapping.memoryLimit)
        }
    }

    @Test func strippedFramesKeepTheirModuleAndAddressForLaterSymbolization() throws {
        // No symbol, no client mapping: a synthetic mapping at the load bias (address - moduleOffset).
        let stripped = SymbolizedFrame(address: 0x5632_35ae_b323, module: "/usr/sbin/nginx", buildID: "0011",
                                       moduleOffset: 0x6_b323)
        let nowhere = SymbolizedFrame(address: 0x1234)
        let snapshot = LeakSnapshot(leaks: [
            Fixture.leak(0x10, size: 8, pid: 7, comm: "nginx", stack: [[stripped], [nowhere]]),
        ])
        let p = try Self.decode(snapshot)
        #expect(p.function.isEmpty)
        let location = try #require(p.location.first { $0.address == stripped.address })
        #expect(location.line.isEmpty)
        let mapping = try #require(p.mapping.first { $0.id == location.mappingID })
        #expect(mapping.memoryStart == 0x5632_35a8_0000 && mapping.fileOffset == 0)
        #expect(mapping.memoryLimit > stripped.address)
        #expect(p.stringTable[Int(mapping.buildID)] == "0011")
        #expect(!mapping.hasFunctions_p && !mapping.hasLineNumbers_p)
        // An address in no mapped file: a location without a mapping.
        let bare = try #require(p.location.first { $0.address == 0x1234 })
        #expect(bare.mappingID == 0)
    }

    @Test func anEmptySnapshotIsAValidProfile() throws {
        let p = try Self.decode(LeakSnapshot())
        #expect(p.sample.isEmpty && p.location.isEmpty && p.sampleType.count == 2)
    }

    @Test func hostileSizesSaturateInsteadOfTrapping() throws {
        let huge = Fixture.leak(0x10, size: .max, pid: 1, comm: "x", stack: Fixture.stackA)
        let p = try Self.decode(LeakSnapshot(leaks: [huge, huge, huge]))
        #expect(p.sample.count == 1 && p.sample[0].value == [3, .max])
    }

    @Test func theFileIsGzipOfTheProfile() throws {
        let snapshot = Fixture.threeSites()
        let file = try PprofProfile.render(snapshot, timeNanos: 1)
        #expect(Array(file.prefix(3)) == [0x1f, 0x8b, 8])
        let scratch = try ScratchDirectory()
        defer { scratch.remove() }
        let path = try scratch.write("kmemleak.pb.gz", file)
        let run = try ChildProcess.run(["/bin/gzip", "-dc", path], in: scratch.path)
        #expect(run.code == 0, "\(run.stderr)")
        #expect(Array(run.stdout.utf8).count > 0)
        let unzipped = try Data(contentsOf: URL(fileURLWithPath: scratch.path + "/tool.stdout"))
        #expect(Array(unzipped) == (try PprofProfile.encode(snapshot, timeNanos: 1)))
    }

    // MARK: - go tool pprof (Debian golang-go)

    @Test(.enabled(if: GoPprof.isInstalled, "go (Debian golang-go) is not installed"))
    func goToolPprofListsTheThreeSitesWithTheirCounts() throws {
        let scratch = try ScratchDirectory()
        defer { scratch.remove() }
        let file = try scratch.write("kmemleak.pb.gz", try PprofProfile.render(Fixture.threeSites(), timeNanos: 1))
        let byName = try GoPprof.top(file, ["-sample_index=inuse_objects"], in: scratch.path)
        #expect(byName["site_a"] == "1001", "\(byName)")
        #expect(byName["site_b"] == "2", "\(byName)")
        #expect(byName["site_c"] == "1", "\(byName)")
        let spaceByName = try GoPprof.top(file, ["-sample_index=inuse_space", "-unit=byte"], in: scratch.path)
        #expect(spaceByName["site_a"] == "32032B", "\(spaceByName)")
        #expect(spaceByName["site_b"] == "300B", "\(spaceByName)")
        #expect(spaceByName["site_c"] == "4096B", "\(spaceByName)")
        // The labels: one process's share (a regexp: a bare 200 would be a numeric label's range).
        let pid200 = try GoPprof.top(file, ["-sample_index=inuse_objects", "-tagfocus=pid=^200$"], in: scratch.path)
        #expect(pid200["site_a"] == "1" && pid200.values.filter { $0 != "0" }.count == 1, "\(pid200)")
    }
}
