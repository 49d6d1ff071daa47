// What a daemon that feeds the engine from a live client's table needs beyond the kernel's API.

/// Called around the confirmation passes of a scan that has new leak candidates (see
/// `Kmemleak.scan(now:memory:shouldStop:confirmation:)`): `begin` may stop the client, register
/// objects it allocated meanwhile, and return extra roots to scan (for example its threads' registers
/// shown through the `MemoryReader`), or nil when the confirmation cannot be done now (the client
/// could not be stopped in time): the scan then reports nothing new and its candidates wait for the
/// next scan. `end` always follows a `begin`. `mayReport` is asked right before the report (after
/// `end`): false discards the scan's new leaks (the client exited while we read it).
public struct ConfirmationHooks {
    public var begin: () -> [RootRegion]?
    public var end: () -> Void
    public var mayReport: () -> Bool
    /// Asked right after a `begin` that returned roots: the memory unchanged since before the main
    /// pass (`UnchangedMemory`), which the confirmation then does not re-read; nil reads everything.
    /// Nil when the caller tracks no writes.
    public var unchangedMemory: (() -> UnchangedMemory?)?

    public init(begin: @escaping () -> [RootRegion]?, end: @escaping () -> Void,
                mayReport: @escaping () -> Bool = { true }, unchangedMemory: (() -> UnchangedMemory?)? = nil) {
        self.begin = begin
        self.end = end
        self.mayReport = mayReport
        self.unchangedMemory = unchangedMemory
    }
}

/// An object's identity inside one engine: stable from registration until the object is freed.
/// Picked by the engine, or the caller's own (`KmemleakConfiguration.idsChosenByCaller`: a daemon uses
/// the table slot, so it keeps no id per slot).
public typealias ObjectID = UInt32

extension Kmemleak {
    /// Registers a plain (`alloc` with `minCount`) or per-CPU (`allocPercpu`) object and returns its id,
    /// or nil when it was not registered (detector disabled, or a newer overlapping object won).
    ///
    /// `mallocChunk`: the block came from glibc's malloc family (the table's KML_KIND_MALLOC). Two
    /// LeakSanitizer-style rules then apply to it:
    /// - a word of allocator data (`RootRegion.isAllocatorData`) equal to the header of the chunk after
    ///   the block (`pointer - 16 + request2size(size)`) is not a reference: glibc's main_arena keeps
    ///   such words (top, bins, last_remainder), and for sizes 17..24, 33..40, ... (size mod 16 in 1...8)
    ///   that header lies inside the block's last 8 bytes;
    /// - for an 8-byte block whose first word is 0 (the array cookie of C++ `new T[0]` for a T with a
    ///   destructor), a pointer to its end (`pointer + 8`, what `new T[0]` returns) is a reference.
    public func register(_ pointer: Address, size: UInt64, minCount: Int32, percpu: Bool,
                         mallocChunk: Bool = false, metadata: ObjectMetadata) -> ObjectID? {
        guard pointer != 0, pointer < UInt64.max - 4094 else { return nil }
        return withState { s -> ObjectID? in
            guard s.enabled else { return nil }
            s.lastCreatedID = nil
            s.createObject(pointer, size: size, minCount: percpu ? 1 : minCount, percpuObject: percpu,
                           mallocChunk: mallocChunk, metadata)
            return s.lastCreatedID
        }
    }

    /// The ids a caller may choose: below 2^28 (the record pages' table then stays within 512 KiB).
    public static let chosenIDLimit: ObjectID = 1 << 28

    /// `register(_:size:minCount:percpu:mallocChunk:metadata:)` with the caller's id for the object
    /// (`KmemleakConfiguration.idsChosenByCaller`, below `chosenIDLimit`): an object the id still holds
    /// is freed first. Returns whether the object was registered (not: detector disabled, no such mode,
    /// id out of range, or a newer overlapping object won). Ids of different engines are unrelated:
    /// a daemon runs one engine per client.
    public func register(id: ObjectID, _ pointer: Address, size: UInt64, minCount: Int32, percpu: Bool,
                         mallocChunk: Bool = false, metadata: ObjectMetadata) -> Bool {
        guard pointer != 0, pointer < UInt64.max - 4094, id < Self.chosenIDLimit else { return false }
        return withState { s -> Bool in
            guard s.enabled, s.idsChosenByCaller else { return false }
            s.lastCreatedID = nil
            s.createObject(pointer, size: size, minCount: percpu ? 1 : minCount, percpuObject: percpu,
                           mallocChunk: mallocChunk, chosenID: id, metadata)
            return s.lastCreatedID == id
        }
    }

    /// Frees the objects among ids `range` that `keep` does not want (`keep` runs under the engine's
    /// lock, 8192 ids a time: it must not call the engine).
    public func freeObjects(in range: Range<Int>, keeping keep: (ObjectID) -> Bool) {
        var from = max(0, range.lowerBound)
        while from < range.upperBound {
            from = withoutActuallyEscaping(keep) { keep in
                withState { s -> Int in
                    guard s.enabled else { return Int.max }
                    let end = min(from + slotChunk, range.upperBound, s.records.count)
                    var i = from
                    while i < end {
                        let r = s.records[i]
                        if r.allocated && !keep(ObjectID(i)) {
                            let space: Space = r.has(ObjectFlags.percpu) ? .percpu : .plain
                            if let h = s.lookup(r.pointer, alias: true, space), h.id == ObjectID(i) { s.deleteObject(h, space) }
                        }
                        i += 1
                    }
                    return end >= s.records.count ? Int.max : end
                }
            }
        }
    }

    /// Packs the object search index when its blocks are less than `fill` full (registering a heap out
    /// of address order leaves them about 80 % full, the realistic C heap's 92 %: 0.7 byte per object
    /// the packing gives back; the index is the engine's largest part after the records). O(objects)
    /// under the lock; nothing while a scan runs. Returns whether it packed.
    @discardableResult
    public func compactIndex(ifFillBelow fill: Double = 0.97) -> Bool {
        state.withLock { s in
            guard !s.scanning else { return false }
            var packed = false
            if s.plain.fill < fill { s.plain.compact(); packed = true }
            if s.percpu.fill < fill { s.percpu.compact(); packed = true }
            return packed
        }
    }

    /// The allocation sequence number of object `id`, or nil when the id holds no object now.
    public func seq(of id: ObjectID) -> UInt64? {
        state.withLock { s in
            guard Int(id) < s.records.count, s.records[Int(id)].allocated else { return nil }
            return s.seq(s.records[Int(id)])
        }
    }

    /// The pointer (per-CPU: handle) of object `id`, or nil when the id holds no object now.
    public func pointer(of id: ObjectID) -> (pointer: Address, percpu: Bool)? {
        state.withLock { s in
            guard Int(id) < s.records.count, s.records[Int(id)].allocated else { return nil }
            let r = s.records[Int(id)]
            return (r.pointer, r.has(ObjectFlags.percpu))
        }
    }

    /// Frees object `id` if it is still the allocation `seq` (a stale id is ignored).
    public func free(object id: ObjectID, ifSeq seq: UInt64) {
        withState { s in
            guard s.enabled, Int(id) < s.records.count, s.records[Int(id)].allocated,
                  s.seq(s.records[Int(id)]) == seq else { return }
            let r = s.records[Int(id)]
            let space: Space = r.has(ObjectFlags.percpu) ? .percpu : .plain
            guard let h = s.lookup(r.pointer, alias: false, space), h.id == id else { return }
            s.deleteObject(h, space)
        }
    }
}
