// Test support of this target: temporary directories and file helpers (ChildProcess lives in the
// shared KmemleakTestSupport target).
import CKmemleakSys
import Glibc
@testable import KmemleakSystem
@_exported import KmemleakTestSupport

/// A per-test temporary directory, removed with its files on deinit.
final class TempDir {
    let path: String
    init() throws {
        var template = Array("/tmp/kml-sys-test-XXXXXX".utf8CString)
        guard let p = template.withUnsafeMutableBufferPointer({ mkdtemp($0.baseAddress!) }) else { throw TestError("mkdtemp") }
        path = String(cString: p)
    }
    deinit { removeTree(path) }
}

func removeTree(_ path: String) {
    if let dir = opendir(path) {
        while let ent = readdir(dir) {
            let name = withUnsafePointer(to: ent.pointee.d_name) { $0.withMemoryRebound(to: CChar.self, capacity: 256) { String(cString: $0) } }
            if name == "." || name == ".." { continue }
            let child = path + "/" + name
            if ent.pointee.d_type == UInt8(DT_DIR) { removeTree(child) } else { unlink(child) }
        }
        closedir(dir)
    }
    rmdir(path)
}

func writeFile(_ path: String, _ text: String) throws {
    let fd = open(path, O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0o644)
    guard fd >= 0 else { throw TestError("open \(path): \(errno)") }
    defer { close(fd) }
    let bytes = Array(text.utf8)
    guard bytes.withUnsafeBytes({ Glibc.write(fd, $0.baseAddress, $0.count) }) == bytes.count else { throw TestError("write \(path)") }
}

func fileExists(_ path: String) -> Bool { access(path, F_OK) == 0 }

/// Runs a command to completion (posix_spawn), returning its exit status and output.
func run(_ path: String, _ args: [String]) throws -> (status: Int32, output: String) {
    let c = try ChildProcess(path, args, stderrToStdout: true)
    var out = ""
    while let line = try? c.readLine(timeout: 120) { out += line + "\n" }
    guard let status = c.wait() else { throw TestError("\(path) did not exit; output so far: \(out)") }
    return (status, out)
}
