// An unprivileged local user for the hostile-client tests: the attacker (or an ordinary client) that is
// not root. Created once per machine by the tests (useradd), reused afterwards.
import Glibc
import Synchronization

public struct UnprivilegedUser: Sendable {
    public let name: String
    public let uid: UInt32
    public let gid: UInt32

    /// The test user's name; a system account with no home and no login shell.
    public static let defaultName = "kmemleak-attacker"

    private static let creation = Mutex<Void>(())

    /// The user `name`, created with useradd if it does not exist yet (needs root).
    public static func ensure(_ name: String = defaultName) throws -> UnprivilegedUser {
        try creation.withLock { _ in
            if let user = lookup(name) { return user }
            let useradd = ["/usr/sbin/useradd", "--system", "--no-create-home", "--shell", "/usr/sbin/nologin",
                           "--user-group", name]
            let status = try run(useradd)
            guard let user = lookup(name) else {
                throw TestError("useradd \(name) failed (wait status \(status))")
            }
            return user
        }
    }

    static func lookup(_ name: String) -> UnprivilegedUser? {
        guard let pw = getpwnam(name) else { return nil }
        return UnprivilegedUser(name: name, uid: pw.pointee.pw_uid, gid: pw.pointee.pw_gid)
    }

    /// The argv prefix that runs a program as this user: `setpriv` drops to the user's uid and gid with no
    /// supplementary groups, then execs `env`, so that variables such as LD_PRELOAD apply to the program
    /// only (not to setpriv). The program keeps the pid of the spawned child.
    public func command(_ program: String, _ arguments: [String] = [], env: [String: String] = [:]) -> [String] {
        ["/usr/bin/setpriv", "--reuid=\(uid)", "--regid=\(gid)", "--clear-groups", "--", "/usr/bin/env"]
            + env.sorted { $0.key < $1.key }.map { "\($0.key)=\($0.value)" } + [program] + arguments
    }

    /// Starts `program` as this user with stdin/stdout pipes (see `ChildProcess`); `env` reaches only the
    /// program.
    public func spawn(_ program: String, _ arguments: [String] = [], env: [String: String] = [:],
                      stderrFile: String? = nil) throws -> ChildProcess {
        let argv = command(program, arguments, env: env)
        return try ChildProcess(argv[0], Array(argv.dropFirst()), stderrFile: stderrFile)
    }

    /// Runs argv to completion; returns its wait status.
    @discardableResult
    public static func run(_ argv: [String]) throws -> Int32 {
        let child = try ChildProcess(argv[0], Array(argv.dropFirst()))
        child.closeStdin()
        guard let status = child.wait() else { throw TestError("\(argv[0]) did not exit") }
        return status
    }
}
