// Real clients under LD_PRELOAD=libkmemleak.so (built by `make shim` from the shim branch).
import Glibc
@testable import KmemleakSystem

enum Shim {
    /// The package root (this file is Tests/KmemleakSystemTests/Support/Shim.swift).
    static let root: String = {
        var parts = #filePath.split(separator: "/", omittingEmptySubsequences: false)
        parts.removeLast(4)
        return parts.joined(separator: "/")
    }()
    static let library = root + "/.build/release/libkmemleak.so"
    static let kmemleakTest = root + "/.build/release/kmemleak-test"
    static func fixture(_ name: String) -> String { root + "/.build/fixtures/" + name }
    static var available: Bool { fileExists(library) }
}

/// A client process under the shim with its own run directory.
final class ShimClient {
    let dir: TempDir
    let child: ChildProcess
    var pid: Int32 { child.pid }

    init(_ program: String, _ args: [String] = [], env: [String: String] = [:]) throws {
        dir = try TempDir()
        var e = env
        e["LD_PRELOAD"] = Shim.library
        e["KMEMLEAK_RUN_DIR"] = env["KMEMLEAK_RUN_DIR"] ?? dir.path
        child = try ChildProcess(program, args, env: e, stderrFile: dir.path + "/stderr.txt")
    }

    deinit { child.terminate() }

    /// The client's rendezvous (waits for the file to appear, polling on the condition).
    func rendezvous(timeout: Double = 10) throws -> Rendezvous {
        let path = dir.path + "/\(pid).client"
        let deadline = ChildProcess.now() + timeout
        while ChildProcess.now() < deadline {
            if let r = try? Rendezvous.read(path: path) { return r }
            sched_yield()
        }
        throw TestError("no rendezvous file \(path)")
    }

    func table() throws -> ClientTable { try ClientTable.open(try rendezvous()) }
}

/// Live objects of a table keyed by pointer.
func liveObjects(_ t: ClientTable) throws -> [UInt64: ObjectRecord] {
    var out: [UInt64: ObjectRecord] = [:]
    try t.readObjects { out[$0.pointer] = $0 }
    return out
}

func hexArg(_ s: Substring) -> UInt64? {
    UInt64(s.hasPrefix("0x") ? s.dropFirst(2) : s, radix: 16)
}
