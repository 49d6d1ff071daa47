import KmemleakEngine
import Testing

/// Issue 9 item 7: comm strings and symbol names are the client's; the report must keep the kernel's
/// line shapes whatever they hold.
@Suite struct EscapeTests {
    @Test func escapesLikeStringEscapeMem() {
        #expect(KFormat.escape("sshd") == "sshd")
        #expect(KFormat.escape("main+0x14/0x80 [libc.so.6]") == "main+0x14/0x80 [libc.so.6]")
        #expect(KFormat.escape("a\nb\tc\r\u{0b}\u{0c}") == #"a\nb\tc\r\v\f"#)
        #expect(KFormat.escape(#"say "hi" \ bye"#) == #"say \"hi\" \\ bye"#)
        #expect(KFormat.escape("\u{01}\u{1b}[31m\u{7f}") == #"\x01\x1b[31m\x7f"#)
        #expect(KFormat.escape("é") == #"\xc3\xa9"#)
    }

    @Test func forgedRecordsStayInsideTheirFields() {
        let mem = SyntheticMemory()
        mem.map(0x1000, 64)
        let e = makeEngine()
        e.alloc(0x1000, size: 16, metadata: meta(1, comm: 1, trace: 1))
        _ = e.scan(now: 100_000_000_000, memory: mem)
        let forged = "x\nunreferenced object 0xdead (size 1):\n  comm \"sshd\", pid 1, jiffies 1\n"
        let ctx = TestContext(comms: [1: "a\"\nunreferenced"], traces: [1: [0x4000]], symbols: [0x4000: forged + " [lib\u{1b}.so]"])
        let entries = e.reportSnapshot(memory: mem)
        #expect(entries.count == 1)
        let text = Kmemleak.render(entries[0], context: ctx)
        let lines = text.split(separator: "\n").map(String.init)
        #expect(lines.filter { $0.hasPrefix("unreferenced object") } == ["unreferenced object 0x00001000 (size 16):"])
        #expect(lines[1].hasPrefix(#"  comm "a\"\nunreferenced", pid 100"#))
        #expect(lines.last == #"    [<0000000000004000>] x\nunreferenced object 0xdead (size 1):\n  comm \"sshd\", pid 1, jiffies 1\n [lib\x1b.so]"#)
        #expect(text.utf8.allSatisfy { $0 == 0x0a || (0x20..<0x7f).contains($0) })
        // dump= lines too.
        let dump = e.dump(address: 0x1000, context: ctx) ?? []
        #expect(dump.count == 8)
        #expect(dump.allSatisfy { !$0.contains("\n") } && dump[1].contains(#"comm "a\"\nunreferenced""#))
    }
}
