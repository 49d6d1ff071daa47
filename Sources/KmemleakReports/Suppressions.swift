// LeakSanitizer's suppression files (`leak:PATTERN` lines), with sanitizer_common's matching rules.
import KmemleakEngine

/// One `leak:` line of a suppression file.
public struct Suppression: Sendable, Hashable {
    /// The pattern as written after `leak:` (surrounding blanks removed).
    public var pattern: String
    /// Where it was read (for messages).
    public var file: String
    public var line: Int

    public init(pattern: String, file: String, line: Int) {
        self.pattern = pattern
        self.file = file
        self.line = line
    }
}

/// A suppression file that cannot be used: which file, which line (1-based; 0 for the whole file), why.
public struct SuppressionFileError: Error, Sendable, Equatable, CustomStringConvertible {
    public var file: String
    public var line: Int
    public var reason: String

    public init(file: String, line: Int, reason: String) {
        self.file = file
        self.line = line
        self.reason = reason
    }

    public var description: String { line > 0 ? "\(file):\(line): \(reason)" : "\(file): \(reason)" }
}

/// Every suppression the daemon was given, in the order given (files in command-line order).
///
/// The format is LeakSanitizer's: one suppression per line, `leak:PATTERN`; blanks and tabs around
/// a line are ignored (and a trailing CR); empty lines and lines starting with `#` are comments.
/// Any other type (`foo:`, a line without `:`) is an error, as LSan's parser dies on it; so is an
/// empty pattern (LSan would match every leak with it: almost certainly a mistake here).
///
/// A leak is suppressed when a pattern matches, for any frame of its backtrace (innermost first),
/// the frame's module path, function name or source file name (LSan: module first, then for each
/// frame at that address, inlined ones first, the function, then the file). The first pattern in
/// file order that matches the first matching name is the one counted.
public struct Suppressions: Sendable {
    public private(set) var rules: [Suppression] = []

    public init() {}

    public init(rules: [Suppression]) { self.rules = rules }

    public var isEmpty: Bool { rules.isEmpty }

    /// Parses one file's contents, appended after the rules already held.
    public mutating func parse(_ contents: [UInt8], file: String) throws(SuppressionFileError) {
        guard String(validating: contents, as: UTF8.self) != nil else {
            throw SuppressionFileError(file: file, line: 0, reason: "not valid UTF-8")
        }
        // Bytes, not Characters: "\r\n" is one Character in Swift.
        let isBlank: (UInt8) -> Bool = { $0 == 0x20 || $0 == 0x09 }
        var number = 0
        for rawLine in contents.split(separator: 0x0a, omittingEmptySubsequences: false) {
            number += 1
            var line = rawLine.drop(while: isBlank)
            while let last = line.last, isBlank(last) || last == 0x0d { line = line.dropLast() }
            if line.isEmpty || line.first == UInt8(ascii: "#") { continue }
            let prefix = Array("leak:".utf8)
            guard line.starts(with: prefix) else {
                let type = line.firstIndex(of: UInt8(ascii: ":")).map { String(decoding: line[..<$0], as: UTF8.self) }
                throw SuppressionFileError(
                    file: file, line: number,
                    reason: type.map { "unsupported suppression type '\($0)' (only leak: is supported)" }
                        ?? "expected leak:PATTERN")
            }
            let pattern = String(decoding: line.dropFirst(prefix.count), as: UTF8.self)
            guard !pattern.isEmpty else {
                throw SuppressionFileError(file: file, line: number, reason: "empty pattern after leak:")
            }
            rules.append(Suppression(pattern: pattern, file: file, line: number))
        }
    }

    /// The index in ``rules`` of the suppression that hides a leak with this stack, or nil.
    public func match(_ stack: [[SymbolizedFrame]]) -> Int? {
        guard !rules.isEmpty else { return nil }
        for frames in stack {
            if let module = frames.first?.module, let hit = firstRule(matching: module) { return hit }
            for frame in frames {
                if let symbol = frame.symbol, let hit = firstRule(matching: symbol) { return hit }
                if let file = frame.file, let hit = firstRule(matching: file) { return hit }
            }
        }
        return nil
    }

    func firstRule(matching name: String) -> Int? {
        rules.firstIndex { Self.templateMatch($0.pattern, name) }
    }

    /// sanitizer_common's `TemplateMatch`: an empty string never matches; a leading `^` anchors the
    /// start; `*` matches any run of characters; `$` ends the match, which succeeds if the string is
    /// used up or a `*` came just before; every other run of characters must occur, in order, at its
    /// leftmost place after the previous one (no backtracking: `a*b$` does not match `abab`, as in LSan).
    public static func templateMatch(_ template: String, _ string: String) -> Bool {
        let t = Array(template.utf8), s = Array(string.utf8)
        guard !s.isEmpty else { return false }
        var ti = 0, si = 0
        var anchored = false
        if t.first == UInt8(ascii: "^") { anchored = true; ti = 1 }
        var afterAsterisk = false
        while ti < t.count {
            if t[ti] == UInt8(ascii: "*") {
                ti += 1
                anchored = false
                afterAsterisk = true
                continue
            }
            if t[ti] == UInt8(ascii: "$") { return si == s.count || afterAsterisk }
            if si == s.count { return false }
            // The literal run up to the next `*` or `$`.
            var runEnd = ti
            while runEnd < t.count && t[runEnd] != UInt8(ascii: "*") && t[runEnd] != UInt8(ascii: "$") { runEnd += 1 }
            guard let found = find(t[ti..<runEnd], in: s, from: si) else { return false }
            if anchored && found != si { return false }
            si = found + (runEnd - ti)
            ti = runEnd
            anchored = false
            afterAsterisk = false
        }
        return true
    }

    /// The first index >= `start` where `needle` occurs in `haystack` (strstr).
    static func find(_ needle: ArraySlice<UInt8>, in haystack: [UInt8], from start: Int) -> Int? {
        let n = needle.count
        guard n <= haystack.count - start else { return nil }
        var i = start
        while i + n <= haystack.count {
            if haystack[i..<(i + n)].elementsEqual(needle) { return i }
            i += 1
        }
        return nil
    }
}
