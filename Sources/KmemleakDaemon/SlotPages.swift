/// Per-slot state in fixed pages of 4096 entries: growing never copies what is there (a doubling array
/// holds its old and its new copy at once, the peak of adopting a large client), and the memory follows
/// the highest slot in steps of one page.
struct SlotPages<Element> {
    static var pageShift: Int { 12 }
    static var pageSize: Int { 1 << pageShift }
    private var pages: [[Element]] = []
    private let fill: Element
    /// Slots held (every one below `count` reads as `fill` until set).
    private(set) var count = 0

    init(fill: Element) { self.fill = fill }

    @inline(__always) subscript(slot: Int) -> Element {
        get { pages[slot >> Self.pageShift][slot & (Self.pageSize - 1)] }
        set { pages[slot >> Self.pageShift][slot & (Self.pageSize - 1)] = newValue }
    }

    mutating func grow(to n: Int) {
        while pages.count << Self.pageShift < n { pages.append([Element](repeating: fill, count: Self.pageSize)) }
        count = max(count, n)
    }
}

/// One bit per slot (which slots a sync has seen).
struct SlotBits {
    private var words: [UInt64]

    init(count: Int) { words = [UInt64](repeating: 0, count: (count + 63) / 64) }

    @inline(__always) subscript(slot: Int) -> Bool { words[slot >> 6] & (1 << UInt64(slot & 63)) != 0 }
    @inline(__always) mutating func set(_ slot: Int) { words[slot >> 6] |= 1 << UInt64(slot & 63) }

    mutating func grow(to count: Int) {
        let n = (count + 63) / 64
        if n > words.count { words.append(contentsOf: repeatElement(0, count: n - words.count)) }
    }
}
