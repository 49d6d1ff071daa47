import KmemleakEngine
import Testing
@testable import KmemleakReports

@Suite struct SuppressionMatching {
    /// sanitizer_common's TemplateMatch, case by case.
    @Test(arguments: [
        // substring anywhere
        ("foo", "foo", true), ("foo", "xfoox", true), ("foo", "fo", false),
        // ^ anchors the start, $ the end
        ("^foo", "foobar", true), ("^foo", "xfoo", false), ("bar$", "foobar", true), ("bar$", "barx", false),
        ("^foo$", "foo", true), ("^foo$", "foox", false),
        // * matches any run, including an empty one
        ("foo*bar", "foobar", true), ("foo*bar", "foo123bar", true), ("foo*bar", "barfoo", false),
        ("^a*c$", "abc", true), ("*", "anything", true), ("foo*", "foo", true), ("*$", "x", true),
        ("lib*.so", "/usr/lib/libssl.so.3", true),
        // no backtracking: each run is taken at its leftmost place, as LSan does
        ("a*b$", "abab", false), ("a*b", "abab", true),
        // an empty name never matches
        ("foo", "", false), ("*", "", false),
    ])
    func templateMatch(template: String, string: String, expected: Bool) {
        #expect(Suppressions.templateMatch(template, string) == expected)
    }

    @Test func parsesLeakSanitizerFiles() throws {
        var suppressions = Suppressions()
        try suppressions.parse(Array("# comment\n\n  leak:foo  \n\tleak:^bar$\r\n   # indented comment\nleak:lib*.so".utf8), file: "a.supp")
        #expect(suppressions.rules == [
            Suppression(pattern: "foo", file: "a.supp", line: 3),
            Suppression(pattern: "^bar$", file: "a.supp", line: 4),
            Suppression(pattern: "lib*.so", file: "a.supp", line: 6),
        ])
        // A second file appends after the first.
        try suppressions.parse(Array("leak:baz\n".utf8), file: "b.supp")
        #expect(suppressions.rules.map(\.pattern) == ["foo", "^bar$", "lib*.so", "baz"])
    }

    @Test(arguments: [
        ("leak:ok\nrace:foo\n", 2, "unsupported suppression type 'race' (only leak: is supported)"),
        ("foo\n", 1, "expected leak:PATTERN"),
        ("\n\nleak:\n", 3, "empty pattern after leak:"),
        ("leak: \t\n", 1, "empty pattern after leak:"),
    ])
    func badFilesNameFileAndLine(text: String, line: Int, reason: String) {
        var suppressions = Suppressions()
        #expect(throws: SuppressionFileError(file: "bad.supp", line: line, reason: reason)) {
            try suppressions.parse(Array(text.utf8), file: "bad.supp")
        }
        #expect("\(SuppressionFileError(file: "bad.supp", line: line, reason: reason))" == "bad.supp:\(line): \(reason)")
    }

    @Test func invalidUTF8IsAnError() {
        var suppressions = Suppressions()
        #expect(throws: SuppressionFileError(file: "x", line: 0, reason: "not valid UTF-8")) {
            try suppressions.parse([0x6c, 0x65, 0x61, 0x6b, 0x3a, 0xff], file: "x")
        }
    }

    /// Module, function and file of every frame, innermost first; the first rule in file order wins.
    @Test func matchesModuleFunctionAndFileOfAnyFrame() throws {
        let stack: [[SymbolizedFrame]] = [
            [SymbolizedFrame(address: 0x10, module: "/usr/lib/libfoo.so.1", symbol: "foo_alloc", file: "/src/foo/alloc.c", line: 3)],
            [SymbolizedFrame(address: 0x20, module: "/usr/bin/app", symbol: "inner", file: "/src/app/util.h", line: 9, inlined: true),
             SymbolizedFrame(address: 0x20, module: "/usr/bin/app", symbol: "main", file: "/src/app/main.c", line: 40)],
        ]
        func rules(_ patterns: String...) -> Suppressions {
            Suppressions(rules: patterns.enumerated().map { Suppression(pattern: $1, file: "f", line: $0 + 1) })
        }
        #expect(rules("libfoo").match(stack) == 0)
        #expect(rules("^/usr/lib/libfoo.so.1$").match(stack) == 0)
        #expect(rules("^foo_alloc$").match(stack) == 0)
        #expect(rules("alloc.c").match(stack) == 0)
        #expect(rules("inner").match(stack) == 0, "an inlined frame's function")
        #expect(rules("util.h$").match(stack) == 0, "an inlined frame's file")
        #expect(rules("^main$").match(stack) == 0)
        #expect(rules("^app").match(stack) == nil, "anchored at the start of the full module path")
        #expect(rules("nothing", "main", "foo").match(stack) == 2, "the innermost frame decides, then file order")
        #expect(rules("main", "^main$").match(stack) == 0)
        #expect(rules("bar").match([[SymbolizedFrame(address: 0x30)]]) == nil, "a bare address has no names")
    }
}
