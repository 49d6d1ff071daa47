// A return address resolved as far as the symbolizer could: module, symbol, source line, inlining.

/// One frame of a backtrace. A recorded return address resolves to one or more frames: the functions
/// inlined at that address first (innermost first, `inlined` true), then the function that really
/// contains it (`inlined` false). Every field but `address` is optional: a stripped module still has
/// `module` and `moduleOffset`, an address in no mapping has nothing else.
public struct SymbolizedFrame: Sendable, Hashable {
    /// The return address as the client recorded it.
    public var address: Address
    /// Path of the mapped file that contains the address, as the client's maps name it.
    public var module: String?
    /// The module's NT_GNU_BUILD_ID, lowercase hex.
    public var buildID: String?
    /// The address in the module's own address space (ELF virtual address): what `addr2line -e MODULE`
    /// takes, whatever the load address.
    public var moduleOffset: UInt64?
    /// Function name (demangled where the symbolizer can), without `@VERSION`.
    public var symbol: String?
    /// `address - symbol start`, as the kernel's `%pS` prints a return address.
    public var symbolOffset: UInt64?
    /// The symbol's size (`%pS`'s `/0xsize`).
    public var symbolSize: UInt64?
    /// Source file of the code at this frame (for an outer frame of an inline chain: the call site).
    public var file: String?
    /// Line in `file`; nil when unknown.
    public var line: Int?
    /// True for a function inlined into the next frame.
    public var inlined: Bool
    /// The client's mapping of `module` that contains the address, as its maps list it: what a pprof
    /// Mapping needs so that a fleet system can symbolize the address later. Nil when unknown.
    public var mapping: ModuleMapping?

    public init(address: Address, module: String? = nil, buildID: String? = nil, moduleOffset: UInt64? = nil,
                symbol: String? = nil, symbolOffset: UInt64? = nil, symbolSize: UInt64? = nil,
                file: String? = nil, line: Int? = nil, inlined: Bool = false, mapping: ModuleMapping? = nil) {
        self.address = address
        self.module = module
        self.buildID = buildID
        self.moduleOffset = moduleOffset
        self.symbol = symbol
        self.symbolOffset = symbolOffset
        self.symbolSize = symbolSize
        self.file = file
        self.line = line
        self.inlined = inlined
        self.mapping = mapping
    }
}

/// One line of a client's maps for a mapped file: `start-limit ... offset ... path`.
public struct ModuleMapping: Sendable, Hashable {
    public var start: Address
    /// One past the last byte.
    public var limit: Address
    /// Offset in the file of the byte mapped at `start`.
    public var fileOffset: UInt64

    public init(start: Address, limit: Address, fileOffset: UInt64) {
        self.start = start
        self.limit = limit
        self.fileOffset = fileOffset
    }
}
