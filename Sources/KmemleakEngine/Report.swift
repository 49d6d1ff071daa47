// The read side of the control file (kmemleak_seq_show / print_unreferenced) and dump= (dump_object_info).

extension Kmemleak {
    /// A snapshot of the report: every object that is REPORTED and still unreferenced
    /// (`unreferenced_object` against the last scan's start), in ascending `seq` (allocation order; ties by
    /// pointer), with the first min(size, 32) bytes of its contents read now (per-CPU objects: the copy of
    /// `configuration.reportCPU`). Waits for a running scan, as the kernel's seq_file start takes scan_mutex.
    /// After `disable()` the reported objects stay readable until `clear()` (unless no leaks were found,
    /// in which case the metadata is already gone).
    public func reportSnapshot<M: MemoryReader>(memory: M) -> [ReportEntry] {
        scanMutex.withLock { _ -> [ReportEntry] in
            let cpu = configuration.reportCPU
            let hz = configuration.ticksPerSecond
            // Collected in slot chunks, so object operations never wait for a whole walk.
            var items: [(entry: ReportEntry, read: UInt64?)] = []
            var slot = 0
            while slot >= 0 {
                let from = slot
                let (chunk, next): ([(entry: ReportEntry, read: UInt64?)], Int) = withState { s in
                    var out: [(entry: ReportEntry, read: UInt64?)] = []
                    let end = min(from + slotChunk, s.records.count)
                    for i in from..<max(from, end) {
                        let r = s.records[i]
                        guard r.allocated, r.has(ObjectFlags.reported), s.unreferenced(r) else { continue }
                        out.append(s.reportItem(UInt32(i), cpu: cpu, hz: hz))
                    }
                    return (out, end >= s.records.count ? -1 : end)
                }
                items.append(contentsOf: chunk)
                slot = next
            }
            return Self.readContents(items, memory: memory)
        }
    }

    /// Sorts report items by (seq, pointer) and fills in the first min(size, 32) bytes of each, read in
    /// batches of up to 1024 ranges.
    static func readContents<M: MemoryReader>(_ unsorted: [(entry: ReportEntry, read: UInt64?)], memory: M) -> [ReportEntry] {
        var items = unsorted
        items.sort { ($0.entry.seq, $0.entry.pointer) < ($1.entry.seq, $1.entry.pointer) }
        var i = 0
        let buf = UnsafeMutableRawBufferPointer.allocate(byteCount: maxBatchRanges * 32, alignment: 16)
        defer { buf.deallocate() }
        while i < items.count {
            let end = min(i + maxBatchRanges, items.count)
            var ranges: [MemoryRange] = []
            var which: [Int] = []
            for k in i..<end {
                let len = Int(min(items[k].entry.size, 32))
                if let a = items[k].read, len > 0 {
                    ranges.append(MemoryRange(address: a, length: len))
                    which.append(k)
                }
            }
            var got = Array(repeating: 0, count: ranges.count)
            if !ranges.isEmpty {
                ranges.withUnsafeBufferPointer { r in
                    got.withUnsafeMutableBufferPointer { g in memory.read(r, into: buf, bytesRead: g) }
                }
            }
            var off = 0
            for (j, k) in which.enumerated() {
                let n = max(0, min(got[j], ranges[j].length))
                items[k].entry.contents = Array(UnsafeRawBufferPointer(rebasing: buf[off..<(off + n)]))
                off += ranges[j].length
            }
            i = end
        }
        return items.map { $0.entry }
    }

    /// One report record, byte-exact to KMEMLEAK-SPEC §8 (kernel 6.12 format), ending with a newline:
    /// ```
    /// unreferenced object[ (percpu)] 0x%08lx (size %zu):
    ///   comm "%s", pid %d, jiffies %lu
    ///   hex dump (first %zu bytes[ on cpu %d]):
    ///     <lib/hexdump.c rows>
    ///   backtrace (crc %x):
    ///     [<%016lx>] %pS            (at most 16 frames; %pS = symbolize() or 0x%lx)
    /// ```
    /// The hex dump shows `entry.contents` (min(size, 32) bytes, fewer if the read came back short).
    /// An unknown comm prints as an empty string. comm and symbols are client-supplied: they print
    /// escaped (`KFormat.escape`), so every line has one of these shapes whatever the client wrote.
    public static func render(_ e: ReportEntry, context: some ReportContext) -> String {
        var s = "unreferenced object\(e.isPercpu ? " (percpu)" : "") \(KFormat.address(e.pointer)) (size \(e.size)):\n"
        s += "  comm \"\(KFormat.commOf(context, e.comm) ?? "")\", pid \(e.pid), jiffies \(e.jiffies)\n"
        let bytes = Array(e.contents.prefix(Int(min(e.size, 32))))
        if e.isPercpu {
            s += "  hex dump (first \(bytes.count) bytes on cpu \(e.cpu)):\n"
        } else {
            s += "  hex dump (first \(bytes.count) bytes):\n"
        }
        for row in KFormat.hexDumpRows(bytes) { s += row + "\n" }
        s += "  backtrace (crc \(KFormat.hex(UInt64(e.checksum)))):\n"
        if e.trace != 0 {
            for f in context.frames(e.trace).prefix(16) {
                s += "    [<\(KFormat.hex(f, width: 16))>] \(KFormat.symbol(f, context))\n"
            }
        }
        return s
    }

    /// `render` as UTF-8 bytes.
    public static func renderBytes(_ e: ReportEntry, context: some ReportContext) -> [UInt8] {
        Array(render(e, context: context).utf8)
    }

    /// `dump=<addr>` (§1.4): the kernel log lines for every object containing `address` (interior
    /// pointers allowed), plain space first, then per-CPU handles: "kmemleak: Object..." lines, checksum
    /// in decimal, then the frames as " %pS" (one leading space, no prefix). Nil when no object contains
    /// the address: the caller logs `unknownObjectLine(address)` and fails the write with EINVAL.
    /// Each string is one log line without a trailing newline.
    public func dump(address: Address, context: some ReportContext) -> [String]? {
        let infos: [ObjectInfo] = withState { s in
            var out: [ObjectInfo] = []
            for sp in [Space.plain, Space.percpu] {
                if let h = s.lookup(address, alias: true, sp) { out.append(s.info(h.id)) }
            }
            return out
        }
        if infos.isEmpty { return nil }
        return infos.flatMap { KFormat.objectInfoLines($0, hz: configuration.ticksPerSecond, context: context) }
    }

    /// The kernel's verbose print of one new leak (kmemleak.verbose=1): every line of the record with the
    /// "kmemleak: " prefix (pr_warn, and print_hex_dump with pr_fmt(HEX_PREFIX)).
    public static func verboseLines(_ e: ReportEntry, context: some ReportContext) -> [String] {
        var lines = render(e, context: context).split(separator: "\n", omittingEmptySubsequences: false).map(String.init)
        if lines.last == "" { lines.removeLast() }
        return lines.map { "kmemleak: " + $0 }
    }

    /// "kmemleak: Unknown object at 0x%08lx".
    public static func unknownObjectLine(_ address: Address) -> String {
        "kmemleak: Unknown object at \(KFormat.address(address))"
    }
}
