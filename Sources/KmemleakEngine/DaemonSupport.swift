// What a daemon that feeds the engine from a live client's table needs beyond the kernel's API.

/// Called around the confirmation passes of a scan that has new leak candidates (see
/// `Kmemleak.scan(now:memory:shouldStop:confirmation:)`): `begin` may stop the client, register
/// objects it allocated meanwhile, and return extra roots to scan (for example its threads' registers
/// shown through the `MemoryReader`); `end` always follows a `begin`.
public struct ConfirmationHooks {
    public var begin: () -> [RootRegion]
    public var end: () -> Void

    public init(begin: @escaping () -> [RootRegion], end: @escaping () -> Void) {
        self.begin = begin
        self.end = end
    }
}

extension Kmemleak {
    /// `kmemleak_free(ptr)`, but only if the object at `pointer` is still the allocation `seq`: a
    /// daemon frees what it saw vanish from a table, and the address may hold a newer object by now.
    public func free(_ pointer: Address, ifSeq seq: UInt64) {
        withState { s in
            guard s.enabled, let h = s.lookup(pointer, alias: false, .plain),
                  s.records[Int(h.id)].pointer == pointer, s.records[Int(h.id)].seq == seq else { return }
            s.free(pointer, .plain)
        }
    }

    /// `kmemleak_free_percpu(handle)` if the object at `handle` is still the allocation `seq`.
    public func freePercpu(_ handle: Address, ifSeq seq: UInt64) {
        withState { s in
            guard s.enabled, let h = s.lookup(handle, alias: false, .percpu),
                  s.records[Int(h.id)].pointer == handle, s.records[Int(h.id)].seq == seq else { return }
            s.free(handle, .percpu)
        }
    }
}
