import Glibc
@testable import KmemleakSystem
import KmemleakTestSupport
import Testing

@Suite struct ProcessOwnerTests {
    @Test func uidsFromStatus() {
        let status = Array("Name:\tcat\nUid:\t1000\t1000\t1000\t1000\nGid:\t5\t5\t5\t5\n".utf8)
        #expect(ProcessOwner.parseUids(status) == [1000, 1000, 1000, 1000])
        #expect(ProcessOwner.parseUids(Array("Uid:\t1\t2\n".utf8)) == nil)
        #expect(ProcessOwner.parseUids(Array("Name:\tx\n".utf8)) == nil)
    }

    @Test func ownProcessAndAnotherUsers() throws {
        #expect(ProcessOwner.uid(of: getpid()) == getuid())
        #expect(ProcessOwner.uid(of: Int32.max) == nil)
        guard getuid() == 0 else { return }
        let user = try UnprivilegedUser.ensure()
        let child = try user.spawn("/bin/cat")
        defer { child.terminate() }
        // setpriv then execs cat: wait until the child runs as the user.
        let deadline = ChildProcess.now() + 10
        while ProcessOwner.uid(of: child.pid) != user.uid && ChildProcess.now() < deadline { usleep(10_000) }
        #expect(ProcessOwner.uid(of: child.pid) == user.uid)
    }

    @Test func possibleCPUs() {
        #expect(HostCPUs.parsePossible(Array("0-3\n".utf8)) == 4)
        #expect(HostCPUs.parsePossible(Array("0\n".utf8)) == 1)
        #expect(HostCPUs.parsePossible(Array("0-3,8-11\n".utf8)) == 12)
        #expect(HostCPUs.parsePossible(Array("junk".utf8)) == nil)
        #expect(HostCPUs.possible >= 1)
    }
}
