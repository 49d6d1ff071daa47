// What the mount's views show: the reported, unsuppressed leaks of one snapshot, and the figures
// around them. Pure data: the daemon fills it, every view renders from it.
import KmemleakEngine

/// LeakSanitizer's classification: a direct leak is reachable from no other leak; an indirect one is
/// reachable only from other leaks. Every leaked cycle has at least one direct member.
public enum LeakKind: String, Sendable, Hashable {
    case direct
    case indirect
}

/// One reported leak, resolved for the views.
public struct Leak: Sendable {
    /// The object as the kernel-format report shows it.
    public var entry: ReportEntry
    /// The client process (the table's pid; `entry.pid` is the allocating thread).
    public var processID: Int32
    /// The allocating thread's comm, as the client set it (unescaped: each view escapes for its format).
    public var comm: String
    public var kind: LeakKind
    /// One element per recorded return address, outermost last; each is that address's frames,
    /// inlined functions first (`ReportContext.describe`).
    public var stack: [[SymbolizedFrame]]

    public init(entry: ReportEntry, processID: Int32, comm: String, kind: LeakKind, stack: [[SymbolizedFrame]]) {
        self.entry = entry
        self.processID = processID
        self.comm = comm
        self.kind = kind
        self.stack = stack
    }
}

/// How many leaks one suppression pattern hid in a snapshot.
public struct SuppressionCount: Sendable, Hashable {
    /// The pattern as written in the file (after `leak:`).
    public var pattern: String
    public var leaks: Int
    public var bytes: UInt64

    public init(pattern: String, leaks: Int, bytes: UInt64) {
        self.pattern = pattern
        self.leaks = leaks
        self.bytes = bytes
    }
}

/// One snapshot of the leaks a reader may see, taken when the view's file was first read.
public struct LeakSnapshot: Sendable {
    /// Reported, unsuppressed leaks in report order (the kernel file's order).
    public var leaks: [Leak]
    /// Per suppression pattern that matched at least one leak.
    public var suppressed: [SuppressionCount]

    public init(leaks: [Leak] = [], suppressed: [SuppressionCount] = []) {
        self.leaks = leaks
        self.suppressed = suppressed
    }
}
