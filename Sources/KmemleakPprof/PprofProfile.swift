// MOUNTPOINT/kmemleak.pb.gz: the leaks of a snapshot as a pprof heap profile (google/pprof's
// profile.proto), gzip-compressed as the format requires on disk.
import KmemleakEngine
import KmemleakReports
import SwiftProtobuf

/// Why the profile could not be produced.
public enum PprofError: Error, CustomStringConvertible {
    /// SwiftProtobuf refused to serialize the message.
    case encoding(String)
    /// A zlib call failed: the function, its return code and zlib's message.
    case compression(function: String, code: Int32, message: String)

    public var description: String {
        switch self {
        case .encoding(let reason): "cannot encode the pprof profile: \(reason)"
        case .compression(let function, let code, let message):
            "cannot gzip the pprof profile: \(function) returned \(code)\(message.isEmpty ? "" : " (\(message))")"
        }
    }
}

/// The pprof view of a `LeakSnapshot`.
///
/// Sample types `inuse_objects/count` and `inuse_space/bytes` (the names of Go's heap profiles, which
/// every pprof consumer knows); one sample per distinct stack and client process, with string labels
/// `pid` and `comm`. One Location per distinct return address of a process, its Lines the inline
/// chain innermost first; one Function per (name, file); one Mapping per mapped file, with its build id,
/// so that a fleet system can symbolize stripped frames later.
public enum PprofProfile {
    /// Sample value indexes.
    static let objectsIndex = 0
    static let bytesIndex = 1

    /// The gzip-compressed profile (the file's bytes).
    /// - Parameter timeNanos: when the snapshot was taken, nanoseconds since the epoch (UTC).
    public static func render(_ snapshot: LeakSnapshot, timeNanos: Int64) throws(PprofError) -> [UInt8] {
        try Gzip.compress(try encode(snapshot, timeNanos: timeNanos))
    }

    /// The serialized profile, uncompressed.
    public static func encode(_ snapshot: LeakSnapshot, timeNanos: Int64) throws(PprofError) -> [UInt8] {
        let profile = build(snapshot, timeNanos: timeNanos)
        do {
            return try profile.serializedBytes()
        } catch {
            throw .encoding("\(error)")
        }
    }

    static func build(_ snapshot: LeakSnapshot, timeNanos: Int64) -> Perftools_Profiles_Profile {
        var builder = ProfileBuilder()
        builder.profile.timeNanos = timeNanos
        builder.profile.sampleType = [
            builder.valueType("inuse_objects", "count"),
            builder.valueType("inuse_space", "bytes"),
        ]
        // Group first by a cheap key (addresses, pid, comm); symbolized frames are looked at once per
        // distinct sample, not once per leak.
        var sampleIndex: [SampleKey: Int] = [:]
        var groups: [(leak: Leak, objects: Int64, bytes: Int64)] = []
        for leak in snapshot.leaks {
            let key = SampleKey(addresses: leak.stack.compactMap { $0.first?.address }, pid: leak.processID, comm: leak.comm)
            let size = Int64(clamping: leak.entry.size)
            if let index = sampleIndex[key] {
                groups[index].objects = saturatingAdd(groups[index].objects, 1)
                groups[index].bytes = saturatingAdd(groups[index].bytes, size)
            } else {
                sampleIndex[key] = groups.count
                groups.append((leak, 1, size))
            }
        }
        let pidKey = builder.string("pid"), commKey = builder.string("comm")
        builder.profile.sample.reserveCapacity(groups.count)
        for group in groups {
            var sample = Perftools_Profiles_Sample()
            sample.locationID = group.leak.stack.compactMap { frames in
                frames.isEmpty ? nil : builder.location(frames, processID: group.leak.processID)
            }
            sample.value = [group.objects, group.bytes]
            sample.label = [
                builder.label(pidKey, "\(group.leak.processID)"),
                builder.label(commKey, group.leak.comm),
            ]
            builder.profile.sample.append(sample)
        }
        builder.finishMappings()
        return builder.profile
    }

    static func saturatingAdd(_ a: Int64, _ b: Int64) -> Int64 {
        let (sum, overflow) = a.addingReportingOverflow(b)
        return overflow ? .max : sum
    }
}

/// What makes two leaks one sample.
struct SampleKey: Hashable {
    var addresses: [Address]
    var pid: Int32
    var comm: String
}

/// The profile's interned tables: strings, functions, locations, mappings.
struct ProfileBuilder {
    var profile = Perftools_Profiles_Profile()
    private var strings: [String: Int64] = ["": 0]
    private var functions: [FunctionKey: UInt64] = [:]
    private var locations: [LocationKey: UInt64] = [:]
    private var mappings: [MappingKey: Int] = [:]

    init() { profile.stringTable = [""] }

    /// A return address means one thing within one process (its describe() is fixed per snapshot);
    /// hashing the address, not the frames, keeps 100k distinct stacks cheap.
    struct LocationKey: Hashable {
        var processID: Int32
        var address: Address
    }

    struct FunctionKey: Hashable {
        var name: String
        var file: String
    }

    /// A mapped file as pprof needs it: where it is mapped and from which file offset. Frames without
    /// the client's mapping (`SymbolizedFrame.mapping` nil) get a synthetic one at the module's load
    /// bias (`address - moduleOffset`, file offset 0), exact for code whose segment's file offset
    /// equals its virtual address (the usual layout of GNU ld's text segment).
    struct MappingKey: Hashable {
        var file: String
        var buildID: String
        var start: Address
        var fileOffset: UInt64
        /// Synthetic mappings grow their limit to the highest address seen.
        var synthetic: Bool
    }

    mutating func string(_ s: String) -> Int64 {
        if let index = strings[s] { return index }
        let index = Int64(profile.stringTable.count)
        profile.stringTable.append(s)
        strings[s] = index
        return index
    }

    mutating func valueType(_ type: String, _ unit: String) -> Perftools_Profiles_ValueType {
        var v = Perftools_Profiles_ValueType()
        v.type = string(type)
        v.unit = string(unit)
        return v
    }

    mutating func label(_ key: Int64, _ value: String) -> Perftools_Profiles_Label {
        var l = Perftools_Profiles_Label()
        l.key = key
        l.str = string(value)
        return l
    }

    /// The Location of one return address in one process: `frames` as `ReportContext.describe` gave
    /// them (inlined functions first, all at the same address).
    mutating func location(_ frames: [SymbolizedFrame], processID: Int32) -> UInt64 {
        let key = LocationKey(processID: processID, address: frames[0].address)
        if let id = locations[key] { return id }
        let id = UInt64(profile.location.count + 1)
        var location = Perftools_Profiles_Location()
        location.id = id
        location.address = frames[0].address
        if let mappingIndex = mapping(for: frames) {
            location.mappingID = profile.mapping[mappingIndex].id
        }
        for frame in frames where frame.symbol != nil || frame.file != nil {
            var line = Perftools_Profiles_Line()
            line.functionID = function(frame)
            line.line = Int64(clamping: frame.line ?? 0)
            location.line.append(line)
        }
        profile.location.append(location)
        locations[key] = id
        return id
    }

    private mutating func function(_ frame: SymbolizedFrame) -> UInt64 {
        let key = FunctionKey(name: frame.symbol ?? "", file: frame.file ?? "")
        if let id = functions[key] { return id }
        let id = UInt64(profile.function.count + 1)
        var function = Perftools_Profiles_Function()
        function.id = id
        function.name = string(key.name)
        function.systemName = function.name
        function.filename = string(key.file)
        profile.function.append(function)
        functions[key] = id
        return id
    }

    /// The mapping of the frames' module (nil for an address in no mapped file), with its has_* flags
    /// narrowed to what these frames resolved.
    private mutating func mapping(for frames: [SymbolizedFrame]) -> Int? {
        let outer = frames[frames.count - 1]
        guard let module = outer.module else { return nil }
        let key: MappingKey
        if let m = outer.mapping {
            key = MappingKey(file: module, buildID: outer.buildID ?? "", start: m.start, fileOffset: m.fileOffset, synthetic: false)
        } else if let offset = outer.moduleOffset {
            key = MappingKey(file: module, buildID: outer.buildID ?? "", start: outer.address &- offset, fileOffset: 0, synthetic: true)
        } else {
            return nil
        }
        let index: Int
        if let known = mappings[key] {
            index = known
        } else {
            index = profile.mapping.count
            var mapping = Perftools_Profiles_Mapping()
            mapping.id = UInt64(index + 1)
            mapping.memoryStart = key.start
            mapping.memoryLimit = outer.mapping?.limit ?? key.start
            mapping.fileOffset = key.fileOffset
            mapping.filename = string(module)
            mapping.buildID = string(key.buildID)
            mapping.hasFunctions_p = true
            mapping.hasFilenames_p = true
            mapping.hasLineNumbers_p = true
            mapping.hasInlineFrames_p = true
            profile.mapping.append(mapping)
            mappings[key] = index
        }
        if key.synthetic, outer.address >= profile.mapping[index].memoryLimit {
            profile.mapping[index].memoryLimit = outer.address &+ 1
        }
        // A mapping claims only what every one of its locations has: a consumer symbolizes the rest.
        let hasSymbols = frames.allSatisfy { $0.symbol != nil }
        let hasFiles = frames.allSatisfy { $0.file != nil }
        let hasLines = frames.allSatisfy { $0.line != nil }
        profile.mapping[index].hasFunctions_p = profile.mapping[index].hasFunctions_p && hasSymbols
        profile.mapping[index].hasFilenames_p = profile.mapping[index].hasFilenames_p && hasFiles
        profile.mapping[index].hasLineNumbers_p = profile.mapping[index].hasLineNumbers_p && hasLines
        // Inline chains come from the same DWARF as the lines.
        profile.mapping[index].hasInlineFrames_p = profile.mapping[index].hasLineNumbers_p
        return index
    }

    /// pprof wants the main executable first; with no way to tell it here, mappings stay in order of
    /// first use (the first leak's allocation site, usually the program itself). Nothing left to do but
    /// keep the limits sane: a limit never below its start.
    mutating func finishMappings() {
        for i in profile.mapping.indices where profile.mapping[i].memoryLimit < profile.mapping[i].memoryStart {
            profile.mapping[i].memoryLimit = profile.mapping[i].memoryStart
        }
    }
}
