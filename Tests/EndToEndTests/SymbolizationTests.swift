// Issue 11 item 1: frames of a stripped program in the kernel-format file, on a real mount.
import Glibc
import KmemleakTestSupport
import Testing

@Suite(.enabled(if: canMount, "needs root and /dev/fuse"))
struct SymbolizationTests {
    /// `addr2line -f -e FILE 0xOFFSET`: the function name and the file:line.
    static func addr2line(_ file: String, _ offset: UInt64) throws -> (function: String, location: String) {
        let c = try ChildProcess("/usr/bin/addr2line", ["-f", "-e", file, "0x" + String(offset, radix: 16)])
        let function = try c.readLine(timeout: 60)
        let location = try c.readLine(timeout: 60)
        _ = c.wait(timeout: 60)
        return (function, location)
    }

    /// A stripped program's leak: its own frames are `(PATH+0xOFFSET)`, and addr2line on the unstripped
    /// build maps each offset to the function that made the call (the leaking one first).
    @Test func strippedProgramFramesNameModuleAndOffsetForAddr2line() throws {
        let stripped = clientPath("symbol-sites.stripped"), unstripped = clientPath("symbol-sites")
        try #require(access(stripped, X_OK) == 0, "run `make clients`")
        let temp = try TemporaryDirectory()
        defer { temp.remove() }
        // A debug-file directory of the test's own: the host's /usr/lib/debug plays no part.
        let d = try Detection(daemonArguments: ["--debug-file-directory", try temp.makeDirectory("debug")])
        defer { d.tearDown() }
        let client = try d.client(stripped)
        let leaks = printed(client, ["LEAK"])
        #expect(leaks.count == 1)
        d.scan(times: 2)
        let report = d.report
        #expect(d.reportedAddresses == leaks, "report:\n\(report)")

        // "    [<%016lx>] (PATH+0xOFFSET)" lines of the program's own frames.
        let prefix = "(" + stripped + "+0x"
        let offsets = report.split(separator: "\n").compactMap { line -> UInt64? in
            guard let open = line.range(of: prefix), line.hasSuffix(")") else { return nil }
            return UInt64(line[open.upperBound..<line.index(before: line.endIndex)], radix: 16)
        }
        try #require(offsets.count >= 3, "report:\n\(report)")
        let functions = try offsets.map { try Self.addr2line(unstripped, $0).function }
        #expect(Array(functions.prefix(3)) == ["print_leak", "leak_site", "main"], "\(functions)\nreport:\n\(report)")
        // The leaking call's line, from the unstripped build's DWARF (the offset is the return address:
        // the call is the instruction before it).
        let location = try Self.addr2line(unstripped, offsets[0] - 1).location
        #expect(location.hasSuffix("symbol-sites.c:\(try siteLine("SITE_LEAK"))"), "\(location)")
        // libc's frames keep their symbols: only the stripped file lacks them.
        #expect(report.contains(" [libc.so.6]"), "report:\n\(report)")
        try client.send("exit")
        #expect(client.exitCode(timeout: 60) == 0)
    }

    /// The line of `/* marker */` in Tests/clients/symbol-sites.c.
    func siteLine(_ marker: String) throws -> Int {
        let text = String(decoding: try readAll(repositoryRoot + "/Tests/clients/symbol-sites.c"), as: UTF8.self)
        let lines = text.split(separator: "\n", omittingEmptySubsequences: false)
        guard let i = lines.firstIndex(where: { $0.contains("/* \(marker) */") }) else { throw TestFailure("no \(marker)") }
        return i + 1
    }
}
