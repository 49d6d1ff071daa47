import Testing
@testable import KmemleakEngine

@Suite struct CRCTests {
    @Test func knownValues() {
        // crc32_le with seed 0 and no inversion (the kernel's crc32(0, p, len)).
        #expect(CRC32.le(0, Array("123456789".utf8)) == 0x2dfd_2d88)
        #expect(CRC32.le(0, Array("a".utf8)) == 0x3ab5_51ce)
        #expect(CRC32.le(0, [1, 2, 3, 4]) == 0x9778_24d1)
        #expect(CRC32.le(0, Array(0...255)) == 0x2493_092b)
        // Seed ~0 without final inversion: the JAMCRC check value.
        #expect(CRC32.le(0xffff_ffff, Array("123456789".utf8)) == 0x340b_c6d9)
        #expect(~CRC32.le(0xffff_ffff, Array("123456789".utf8)) == 0xcbf4_3926)
    }

    @Test func zerosAndChaining() {
        #expect(CRC32.le(0, [UInt8](repeating: 0, count: 64)) == 0)
        #expect(CRC32.le(0, []) == 0)
        let a = CRC32.le(0, Array("12345".utf8))
        #expect(CRC32.le(a, Array("6789".utf8)) == 0x2dfd_2d88)
        // Slicing-by-8 agrees with the bytewise path at every length.
        let data: [UInt8] = (0..<100).map { UInt8(truncatingIfNeeded: $0 &* 37 &+ 11) }
        for n in 0...data.count {
            var c: UInt32 = 0
            for b in data[0..<n] {
                c ^= UInt32(b)
                for _ in 0..<8 { c = (c & 1) != 0 ? (c >> 1) ^ 0xedb8_8320 : c >> 1 }
            }
            #expect(CRC32.le(0, Array(data[0..<n])) == c)
        }
    }
}
