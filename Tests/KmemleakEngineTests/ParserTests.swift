import Testing
@testable import KmemleakEngine

@Suite struct ParserTests {
    func p(_ s: String, disabled: Bool = false) -> Result<ControlCommand, ControlError> {
        ControlCommand.parse(Array(s.utf8), disabled: disabled)
    }
    func err(_ e: Int32) -> Result<ControlCommand, ControlError> { .failure(ControlError(errno: e)) }

    @Test func commands() {
        #expect(p("clear") == .success(.clear))
        #expect(p("clear\n") == .success(.clear))
        #expect(p("off") == .success(.off))
        #expect(p("off\n") == .success(.off))
        #expect(p("stack=on") == .success(.stack(true)))
        #expect(p("stack=off\n") == .success(.stack(false)))
        #expect(p("scan=on") == .success(.scanThread(true)))
        #expect(p("scan=off") == .success(.scanThread(false)))
        #expect(p("scan=600") == .success(.scanPeriod(600)))
        #expect(p("scan=0\n") == .success(.scanPeriod(0)))
        #expect(p("scan=0x10") == .success(.scanPeriod(16)))
        #expect(p("scan=010") == .success(.scanPeriod(8)))
        #expect(p("scan=+5") == .success(.scanPeriod(5)))
        #expect(p("scan=4294967295") == .success(.scanPeriod(UInt32.max)))
        #expect(p("scan") == .success(.scan))
        #expect(p("scan\n") == .success(.scan))
        #expect(p("scanXYZ") == .success(.scan))
        #expect(p("dump=0xffff888012345678") == .success(.dump(0xffff_8880_1234_5678)))
        #expect(p("dump=4096\n") == .success(.dump(4096)))
        #expect(p("dump=0777") == .success(.dump(0o777)))
        #expect(p("dump=0") == .success(.dump(0)))
        #expect(p("dump=0X1F") == .success(.dump(0x1f)))
        // Prefix matching: "offline" is "off", "clearly" is "clear", "stack=onion" is stack=on.
        #expect(p("offline") == .success(.off))
        #expect(p("clearly") == .success(.clear))
        #expect(p("stack=onion") == .success(.stack(true)))
        #expect(p("scan=onward") == .success(.scanThread(true)))
        #expect(p("scan=offset") == .success(.scanThread(false)))
    }

    @Test func malformed() {
        #expect(p("") == err(KmemleakErrno.EINVAL))
        #expect(p("\n") == err(KmemleakErrno.EINVAL))
        #expect(p("bogus") == err(KmemleakErrno.EINVAL))
        #expect(p("sca") == err(KmemleakErrno.EINVAL))
        #expect(p("stack=") == err(KmemleakErrno.EINVAL))
        #expect(p("stack=maybe") == err(KmemleakErrno.EINVAL))
        #expect(p(" scan") == err(KmemleakErrno.EINVAL))
        #expect(p("SCAN") == err(KmemleakErrno.EINVAL))
        #expect(p("scan=") == err(KmemleakErrno.EINVAL))
        #expect(p("scan=abc") == err(KmemleakErrno.EINVAL))
        #expect(p("scan=10s") == err(KmemleakErrno.EINVAL))
        #expect(p("scan=10\n\n") == err(KmemleakErrno.EINVAL))
        #expect(p("scan=-1") == err(KmemleakErrno.EINVAL))
        #expect(p("scan=08") == err(KmemleakErrno.EINVAL))
        #expect(p("scan=0x") == err(KmemleakErrno.EINVAL))
        #expect(p("scan= 5") == err(KmemleakErrno.EINVAL))
        #expect(p("dump=") == err(KmemleakErrno.EINVAL))
        #expect(p("dump=xyz") == err(KmemleakErrno.EINVAL))
        #expect(p("dump=0x12g") == err(KmemleakErrno.EINVAL))
        #expect(p("dump=99999999999999999999") == err(KmemleakErrno.EINVAL))  // kstrtoul's ERANGE becomes EINVAL
    }

    @Test func ranges() {
        #expect(p("scan=4294967296") == err(KmemleakErrno.ERANGE))
        #expect(p("scan=0x100000000") == err(KmemleakErrno.ERANGE))
        #expect(p("scan=99999999999999999999999") == err(KmemleakErrno.ERANGE))
        // Overflow wins over trailing garbage (checked first by _kstrtoull).
        #expect(p("scan=99999999999999999999999xyz") == err(KmemleakErrno.ERANGE))
        #expect(ControlCommand.kstrtoull(Array("18446744073709551615".utf8), base: 0) == .success(UInt64.max))
        #expect(ControlCommand.kstrtoull(Array("18446744073709551616".utf8), base: 0) == .failure(ControlError(errno: KmemleakErrno.ERANGE)))
        #expect(ControlCommand.scanPeriodMilliseconds(600) == 600_000)
        #expect(ControlCommand.scanPeriodMilliseconds(UInt32.max) == UInt64(UInt32.max))
    }

    @Test func disabled() {
        #expect(p("clear", disabled: true) == .success(.clear))
        #expect(p("scan", disabled: true) == err(KmemleakErrno.EPERM))
        #expect(p("off", disabled: true) == err(KmemleakErrno.EPERM))
        #expect(p("bogus", disabled: true) == err(KmemleakErrno.EPERM))
        #expect(p("", disabled: true) == err(KmemleakErrno.EPERM))
        #expect(p("dump=0x1000", disabled: true) == err(KmemleakErrno.EPERM))
    }

    @Test func binaryAndOverlong() {
        // The text ends at the first NUL (strncpy_from_user + strncmp).
        #expect(ControlCommand.parse(Array("scan".utf8) + [0, 0x41], disabled: false) == .success(.scan))
        #expect(ControlCommand.parse(Array("scan=5".utf8) + [0, 0x41], disabled: false) == .success(.scanPeriod(5)))
        #expect(ControlCommand.parse([0] + Array("scan".utf8), disabled: false) == err(KmemleakErrno.EINVAL))
        #expect(ControlCommand.parse([0xff, 0xfe, 0x80], disabled: false) == err(KmemleakErrno.EINVAL))
        // Only the first 63 bytes count.
        let longScan = "scan=" + String(repeating: "0", count: 57) + "7"  // 63 bytes
        #expect(p(longScan) == .success(.scanPeriod(7)))
        #expect(p(longScan + "xyz") == .success(.scanPeriod(7)))
        let tooLong = "scan=" + String(repeating: "0", count: 58) + "7"  // the 7 is byte 64
        #expect(p(tooLong) == .success(.scanPeriod(0)))
        #expect(p("scan=1" + String(repeating: " ", count: 100)) == err(KmemleakErrno.EINVAL))
        #expect(p(String(repeating: "x", count: 1000)) == err(KmemleakErrno.EINVAL))
        #expect(p("dump=0x1000" + String(repeating: "\n", count: 60)) == err(KmemleakErrno.EINVAL))
    }
}
