import Foundation
import Glibc
import KmemleakFS
import KmemleakService
import Testing

/// One `kmemleakd` under test: own temp dir, mount point, notify socket; killed and unmounted at the end.
final class DaemonUnderTest {
    let temp: TemporaryDirectory
    let mountpoint: String
    let notify: NotifySocket
    private(set) var children: [ChildProcess] = []

    init(mountpointName: String = "mnt") throws {
        temp = try TemporaryDirectory()
        mountpoint = try temp.makeDirectory(mountpointName)
        notify = try NotifySocket(path: temp.sub("notify.sock"))
    }

    var controlFile: String { mountpoint + "/kmemleak" }

    /// Starts `kmemleakd ARGS MOUNTPOINT` (`--scan-period 0` unless given, `--run-dir` in the temp dir).
    @discardableResult
    func start(
        _ arguments: [String] = [], blockedSignals: [Int32] = [], viaShell shellPrefix: String? = nil
    ) throws -> ChildProcess {
        let daemon = try daemonPath()
        let runDir = temp.sub("run")
        mkdir(runDir, 0o755)
        var argv = [daemon, "--run-dir", runDir] + arguments + [mountpoint]
        if let shellPrefix {
            argv = ["/bin/sh", "-c", shellPrefix + " exec " + argv.map { "'\($0)'" }.joined(separator: " ")]
        }
        let child = try ChildProcess.withOutputFiles(
            argv, env: ["NOTIFY_SOCKET": notify.path], blockedSignals: blockedSignals, in: temp.path,
            name: "kmemleakd\(children.count)")
        children.append(child)
        return child
    }

    /// Waits for READY=1 and checks the control file is served then.
    func expectReady(_ child: ChildProcess, sourceLocation: SourceLocation = #_sourceLocation) {
        let message = notify.receive()
        #expect(message == "READY=1", "no READY=1; stderr: \(child.stderr)", sourceLocation: sourceLocation)
        #expect(statErrno(controlFile) == 0, sourceLocation: sourceLocation)
        #expect(MountPoint.mounts(at: mountpoint).count == 1, sourceLocation: sourceLocation)
    }

    func tearDown() {
        for child in children { child.terminate() }
        temp.remove()
    }
}

@Suite(.enabled(if: canMount, "needs root and /dev/fuse"))
struct DaemonLifecycleTests {
    @Test func helpDocumentsOptionsCommandsFilesAndEnvironment() throws {
        let temp = try TemporaryDirectory()
        defer { temp.remove() }
        let child = try ChildProcess.withOutputFiles([try daemonPath(), "--help"], in: temp.path)
        defer { child.terminate() }
        #expect(child.exitCode() == 0)
        let help = child.stdout
        for needle in [
            "--run-dir", "--min-age", "--scan-period", "--first-scan-delay", "--allow-other", "-o", "MOUNTPOINT",
            "/run/kmemleak", "scan=on", "scan=off", "scan=SECS", "stack=on", "stack=off", "dump=ADDR", "clear",
            " off ", "EPERM", "EINVAL", "ERANGE", "EINTR", "63 bytes", "MOUNTPOINT/kmemleak", "RUN_DIR/<pid>.client",
            "KMEMLEAK_RUN_DIR", "LD_PRELOAD=libkmemleak.so", "KMEMLEAK=off", "NOTIFY_SOCKET", "READY=1",
            "LD_PRELOAD=/usr/lib/libkmemleak.so KMEMLEAK_RUN_DIR=/run/kmemleak", "echo scan > /mnt/kmemleak",
            "cat /mnt/kmemleak", "EXIT STATUS", "SIGTERM", "--suppressions", "leak:PATTERN", "kmemleak.summary",
            "kmemleak.json",
        ] {
            #expect(help.contains(needle), "--help lacks \(needle)")
        }
    }

    @Test(arguments: [
        (["--min-age=-1"], "--min-age"),
        (["--min-age", "nan"], "--min-age"),
        (["--scan-period", "soon"], "soon"),
        (["--first-scan-delay=-0.5"], "--first-scan-delay"),
        (["--scan-period", "inf"], "--scan-period"),
        (["-o", "ro"], "ro"),
        (["--no-such-option"], "no-such-option"),
    ])
    func badArgumentsFailWithAMessage(arguments: [String], mention: String) throws {
        let temp = try TemporaryDirectory()
        defer { temp.remove() }
        let mountpoint = try temp.makeDirectory("mnt")
        let child = try ChildProcess.withOutputFiles([try daemonPath()] + arguments + [mountpoint], in: temp.path)
        defer { child.terminate() }
        #expect(child.exitCode() == 64)
        #expect(child.stderr.contains(mention), "stderr: \(child.stderr)")
        #expect(MountPoint.mounts(at: mountpoint).isEmpty)
    }

    @Test func mountpointThatIsNotADirectoryIsNamedWithItsErrno() throws {
        let temp = try TemporaryDirectory()
        defer { temp.remove() }
        let file = temp.sub("plain-file")
        #expect(FileManager.default.createFile(atPath: file, contents: Data()))
        let notDir = try ChildProcess.withOutputFiles([try daemonPath(), file], in: temp.path, name: "notdir")
        defer { notDir.terminate() }
        #expect(notDir.exitCode() == 64)
        #expect(notDir.stderr.contains(file) && notDir.stderr.contains("Not a directory"), "\(notDir.stderr)")
        let missing = try ChildProcess.withOutputFiles([try daemonPath(), temp.sub("missing")], in: temp.path, name: "missing")
        defer { missing.terminate() }
        #expect(missing.exitCode() == 64)
        #expect(missing.stderr.contains(temp.sub("missing")) && missing.stderr.contains("No such file or directory"))
        let none = try ChildProcess.withOutputFiles([try daemonPath()], in: temp.path, name: "none")
        defer { none.terminate() }
        #expect(none.exitCode() == 64)
    }

    @Test func startsServesNotifiesAndStopsCleanlyOnSIGTERM() throws {
        let daemon = try DaemonUnderTest()
        defer { daemon.tearDown() }
        let child = try daemon.start(["--scan-period", "0", "--min-age", "0.5"])
        daemon.expectReady(child)
        #expect(writeOnce(daemon.controlFile, Array("scan\n".utf8)).result == 5)
        #expect(writeOnce(daemon.controlFile, Array("bogus\n".utf8)).errno == EINVAL)
        #expect(try readAll(daemon.controlFile).isEmpty)  // the placeholder backend reports nothing
        let entry = try #require(MountPoint.mounts(at: daemon.mountpoint).last)
        #expect(entry.fileSystemType == "fuse.kmemleak")
        #expect(!entry.allOptions.contains("allow_other"), "root-only by default: \(entry.superOptions)")
        child.signal(SIGTERM)
        #expect(daemon.notify.receive() == "STOPPING=1")
        #expect(child.exitCode() == 0, "stderr: \(child.stderr)")
        #expect(MountPoint.mounts(at: daemon.mountpoint).isEmpty)
        #expect(child.stderr.contains("kmemleak: "))
    }

    /// The two inherited traps of SWIFT-LINUX-NOTES.md §1 at once: SIGTERM and SIGINT blocked (as
    /// Foundation.Process children get them) and SIGINT ignored (a shell's background job).
    @Test(arguments: [SIGINT, SIGTERM])
    func stopsCleanlyDespiteBlockedAndIgnoredSignals(signal: Int32) throws {
        let daemon = try DaemonUnderTest()
        defer { daemon.tearDown() }
        let child = try daemon.start(["--scan-period", "0"], blockedSignals: [SIGTERM, SIGINT], viaShell: "trap '' INT;")
        daemon.expectReady(child)
        child.signal(signal)
        #expect(child.exitCode() == 0, "stderr: \(child.stderr)")
        #expect(MountPoint.mounts(at: daemon.mountpoint).isEmpty)
    }

    /// `less MOUNTPOINT/kmemleak` left open must not keep the daemon from stopping.
    @Test func stopsWhileTheControlFileIsHeldOpen() throws {
        let daemon = try DaemonUnderTest()
        defer { daemon.tearDown() }
        let child = try daemon.start(["--scan-period", "0"])
        daemon.expectReady(child)
        let reader = open(daemon.controlFile, O_RDONLY)
        let writer = open(daemon.controlFile, O_WRONLY)
        #expect(reader >= 0 && writer >= 0)
        defer {
            close(reader)
            close(writer)
        }
        child.signal(SIGTERM)
        #expect(child.exitCode() == 0, "stderr: \(child.stderr)")
        #expect(MountPoint.mounts(at: daemon.mountpoint).isEmpty)
    }

    @Test func staleMountOfAKilledDaemonIsReplaced() throws {
        let daemon = try DaemonUnderTest()
        defer { daemon.tearDown() }
        let first = try daemon.start(["--scan-period", "0"])
        daemon.expectReady(first)
        first.signal(SIGKILL)
        #expect(first.wait() != nil)
        // A killed FUSE daemon leaves a stale mount. stat may be answered from the attribute cache
        // for a second; opendir reaches the (dead) daemon at once. Restart at once, like systemd would.
        #expect(open(daemon.mountpoint, O_RDONLY | O_DIRECTORY) == -1 && errno == ENOTCONN)
        #expect(MountPoint.mounts(at: daemon.mountpoint).count == 1)

        let second = try daemon.start(["--scan-period", "0"])
        daemon.expectReady(second)
        #expect(second.stderr.contains("stale mount"))
        #expect(MountPoint.mounts(at: daemon.mountpoint).count == 1, "replaced, not stacked")
        #expect(writeOnce(daemon.controlFile, Array("scan".utf8)).result == 4)
        second.signal(SIGTERM)
        _ = daemon.notify.receive()  // STOPPING=1
        #expect(second.exitCode() == 0)
        #expect(MountPoint.mounts(at: daemon.mountpoint).isEmpty)
    }

    @Test func liveMountIsNotStackedOn() throws {
        let daemon = try DaemonUnderTest()
        defer { daemon.tearDown() }
        let first = try daemon.start(["--scan-period", "0"])
        daemon.expectReady(first)
        let second = try daemon.start(["--scan-period", "0"])
        #expect(second.exitCode() == 1)
        #expect(second.stderr.contains("already a mount point"), "\(second.stderr)")
        #expect(MountPoint.mounts(at: daemon.mountpoint).count == 1)
        #expect(statErrno(daemon.controlFile) == 0, "the first daemon still serves")
        first.signal(SIGTERM)
        #expect(first.exitCode() == 0)

        // Some other file system, alive.
        #expect(mount("tmpfs", daemon.mountpoint, "tmpfs", 0, nil) == 0)
        defer { umount2(daemon.mountpoint, Int32(MNT_DETACH)) }
        let third = try daemon.start(["--scan-period", "0"])
        #expect(third.exitCode() == 1)
        #expect(third.stderr.contains("tmpfs"), "\(third.stderr)")
    }

    @Test(arguments: [["--allow-other"], ["-o", "allow_other"]])
    func allowOtherShowsInTheMountOptions(arguments: [String]) throws {
        let daemon = try DaemonUnderTest()
        defer { daemon.tearDown() }
        let child = try daemon.start(["--scan-period", "0"] + arguments)
        daemon.expectReady(child)
        let entry = try #require(MountPoint.mounts(at: daemon.mountpoint).last)
        #expect(entry.allOptions.contains("allow_other"))
        #expect(entry.allOptions.contains("default_permissions"))
        child.signal(SIGTERM)
        #expect(child.exitCode() == 0)
    }

    /// /proc/self/mountinfo escapes spaces as \\040: the stale/live checks must still find the mount.
    @Test func mountpointWithSpacesInItsName() throws {
        let daemon = try DaemonUnderTest(mountpointName: "mount point\twith blanks")
        defer { daemon.tearDown() }
        let child = try daemon.start(["--scan-period", "0"])
        daemon.expectReady(child)
        let again = try daemon.start(["--scan-period", "0"])
        #expect(again.exitCode() == 1, "a second daemon must see the live mount")
        child.signal(SIGTERM)
        #expect(child.exitCode() == 0)
        #expect(MountPoint.mounts(at: daemon.mountpoint).isEmpty)
    }

    @Test func externalUnmountEndsTheDaemonWithZero() throws {
        let daemon = try DaemonUnderTest()
        defer { daemon.tearDown() }
        let child = try daemon.start(["--scan-period", "0"])
        daemon.expectReady(child)
        #expect(umount2(daemon.mountpoint, 0) == 0)
        #expect(child.exitCode() == 0, "stderr: \(child.stderr)")
    }
}

/// sd_notify without systemd: a path socket and an abstract ('@') one.
@Suite struct SystemdNotifyTests {
    @Test func sendsToAPathSocket() throws {
        let temp = try TemporaryDirectory()
        defer { temp.remove() }
        let socket = try NotifySocket(path: temp.sub("n.sock"))
        #expect(SystemdNotify.send("READY=1", socketPath: socket.path))
        #expect(socket.receive() == "READY=1")
    }

    @Test func sendsToAnAbstractSocket() throws {
        let name = "kmemleak-test-\(getpid())-\(UInt32.random(in: 0...UInt32.max))"
        let fd = Glibc.socket(AF_UNIX, Int32(SOCK_DGRAM.rawValue) | Int32(SOCK_CLOEXEC.rawValue), 0)
        #expect(fd >= 0)
        defer { close(fd) }
        var address = sockaddr_un()
        address.sun_family = sa_family_t(AF_UNIX)
        let bytes = [0] + Array(name.utf8)
        withUnsafeMutableBytes(of: &address.sun_path) { $0.copyBytes(from: bytes) }
        let length = socklen_t(MemoryLayout<sockaddr_un>.offset(of: \.sun_path)! + bytes.count)
        let bound = withUnsafePointer(to: &address) {
            $0.withMemoryRebound(to: sockaddr.self, capacity: 1) { bind(fd, $0, length) }
        }
        #expect(bound == 0)
        #expect(SystemdNotify.send("STOPPING=1", socketPath: "@" + name))
        var buffer = [UInt8](repeating: 0, count: 64)
        let count = buffer.withUnsafeMutableBytes { recv(fd, $0.baseAddress, $0.count, Int32(MSG_DONTWAIT)) }
        #expect(count == 10)
        #expect(String(decoding: buffer.prefix(max(count, 0)), as: UTF8.self) == "STOPPING=1")
    }

    @Test func unsetSocketIsNotAnError() {
        #expect(SystemdNotify.send("READY=1", socketPath: nil) == false)
    }
}
