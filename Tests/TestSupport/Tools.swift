// External tools the export tests run to completion: go tool pprof, promtool, gzip.
import Glibc

extension ChildProcess {
    /// Runs `arguments` to completion (at most `timeout` seconds, then killed) with stdout and stderr in
    /// files of `directory`; returns the exit code (nil on a timeout or a signal) and both outputs.
    public static func run(_ arguments: [String], env: [String: String] = [:], in directory: String,
                           timeout: Double = 120) throws -> (code: Int32?, stdout: String, stderr: String) {
        let child = try withOutputFiles(arguments, env: env, in: directory, name: "tool")
        let code = child.exitCode(timeout: timeout)
        child.terminate()
        return (code, child.stdout, child.stderr)
    }
}

/// `go tool pprof` from Debian's golang-go, offline.
public enum GoPprof {
    public static let go = "/usr/bin/go"
    public static var isInstalled: Bool { access(go, X_OK) == 0 }

    /// The flat value of each function in `go tool pprof -top` of `file` (inlined functions under their
    /// own name), with `arguments` such as `-sample_index=inuse_space`. `directory` holds pprof's
    /// private HOME and GOCACHE (no toolchain download, no module proxy).
    public static func top(_ file: String, _ arguments: [String], in directory: String) throws -> [String: String] {
        let env = ["HOME": directory, "GOCACHE": directory + "/gocache", "GOPATH": directory + "/gopath",
                   "GOFLAGS": "-mod=mod", "GOTOOLCHAIN": "local", "GOPROXY": "off", "PPROF_TMPDIR": directory]
        // -nodefraction=0: by default -top hides nodes under 0.5% of the total.
        let result = try ChildProcess.run([go, "tool", "pprof", "-top", "-nodefraction=0"] + arguments + [file],
                                          env: env, in: directory)
        guard result.code == 0 else {
            throw TestError("go tool pprof \(arguments) failed (\(result.code.map { "exit \($0)" } ?? "timeout")): \(result.stderr)")
        }
        var rows: [String: String] = [:]
        for line in result.stdout.split(separator: "\n") {
            // "      flat  flat%   sum%        cum   cum%  NAME"
            let fields = line.split(separator: " ")
            guard fields.count >= 6, fields[1].hasSuffix("%"), fields[2].hasSuffix("%") else { continue }
            let name = fields[5...].joined(separator: " ")
            rows[name.hasSuffix(" (inline)") ? String(name.dropLast(9)) : name] = String(fields[0])
        }
        return rows
    }
}

/// promtool from Debian's prometheus.
public enum Promtool {
    public static let path = "/usr/bin/promtool"
    public static var isInstalled: Bool { access(path, X_OK) == 0 }

    /// `promtool check metrics < file`: its exit code and what it said (nothing when the file is clean).
    public static func checkMetrics(_ file: String, in directory: String) throws -> (code: Int32?, output: String) {
        let result = try ChildProcess.run(["/bin/sh", "-c", "exec \(path) check metrics < \"$0\"", file], in: directory)
        return (result.code, result.stdout + result.stderr)
    }
}
