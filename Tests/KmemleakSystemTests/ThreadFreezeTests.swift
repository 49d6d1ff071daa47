import Glibc
import Testing
@testable import KmemleakSystem

/// Freezing must stop every thread (tracing stop), expose registers, and resume the client intact.
@Suite(.enabled(if: getuid() == 0))
struct ThreadFreezeTests {
    @Test func freezeStopsEveryThreadAndThawResumes() throws {
        // A shell that starts three busy subshell-free sleepers is enough: we need a multithreaded
        // client, and `sleep` is single-threaded, so use the churn client when it is built.
        let churn = ".build/clients/pointer-churn"
        try #require(access(churn, X_OK) == 0, "run `make clients` first")
        var pid: pid_t = 0
        var fds: [Int32] = [0, 0]
        #expect(pipe(&fds) == 0)
        var actions = posix_spawn_file_actions_t()
        posix_spawn_file_actions_init(&actions)
        posix_spawn_file_actions_adddup2(&actions, fds[0], 0)
        posix_spawn_file_actions_addopen(&actions, 1, "/dev/null", O_WRONLY, 0)
        var attr = posix_spawnattr_t()
        posix_spawnattr_init(&attr)
        var none = sigset_t()
        sigemptyset(&none)
        posix_spawnattr_setsigmask(&attr, &none)
        posix_spawnattr_setflags(&attr, Int16(POSIX_SPAWN_SETSIGMASK))
        let argv: [UnsafeMutablePointer<CChar>?] = [strdup(churn), strdup("3"), strdup("64"), nil]
        #expect(posix_spawn(&pid, churn, &actions, &attr, argv, environ) == 0)
        close(fds[0])
        defer {
            kill(pid, SIGKILL)
            var status: Int32 = 0
            waitpid(pid, &status, 0)
            close(fds[1])
        }
        // Wait until the three churn threads exist (main + 3).
        var threads: [Int32] = []
        for _ in 0..<2000 where threads.count < 4 {
            threads = FrozenProcess.threadIDs(of: pid)
            if threads.count < 4 { usleep(1000) }
        }
        #expect(threads.count == 4)

        let frozen = try FrozenProcess(pid: pid)
        #expect(frozen.registers.count == 4 * Int(CKML_NREGS_SWIFT))
        for tid in threads { #expect(threadState(pid, tid) == "t") }
        frozen.thaw()
        for tid in threads { #expect(threadState(pid, tid) != "t") }
        #expect(kill(pid, 0) == 0)
    }

    private func threadState(_ pid: pid_t, _ tid: Int32) -> String {
        guard let file = fopen("/proc/\(pid)/task/\(tid)/stat", "r") else { return "?" }
        defer { fclose(file) }
        var buffer = [CChar](repeating: 0, count: 512)
        guard fgets(&buffer, 512, file) != nil else { return "?" }
        let line = String(cString: buffer)
        guard let close = line.lastIndex(of: ")") else { return "?" }
        return String(line[line.index(close, offsetBy: 2)])
    }
}

private let CKML_NREGS_SWIFT = 27
