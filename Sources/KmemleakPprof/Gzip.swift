// gzip (RFC 1952) through zlib's deflate with the gzip wrapper: pprof files are gzip-compressed.
import CZlib

enum Gzip {
    /// Fastest: the file is made at every open, and Go's own runtime/pprof writes its profiles so too.
    static let level: Int32 = Z_BEST_SPEED

    /// `bytes` as one gzip member, in one deflate call into a buffer of deflateBound's size.
    static func compress(_ bytes: [UInt8]) throws(PprofError) -> [UInt8] {
        var stream = z_stream()
        let initialized = czlib_deflate_init_gzip(&stream, level)
        guard initialized == Z_OK else { throw failure("deflateInit2", initialized, stream) }
        defer { deflateEnd(&stream) }
        // deflateBound does not count the gzip header and trailer (18 bytes), nor an empty header's
        // extras: a little more keeps the one-call Z_FINISH contract.
        let capacity = Int(deflateBound(&stream, uLong(bytes.count))) + 64
        var output = [UInt8](repeating: 0, count: capacity)
        var input = bytes
        let result: Int32 = input.withUnsafeMutableBufferPointer { inBuffer in
            output.withUnsafeMutableBufferPointer { outBuffer in
                stream.next_in = inBuffer.baseAddress
                stream.avail_in = uInt(inBuffer.count)
                stream.next_out = outBuffer.baseAddress
                stream.avail_out = uInt(outBuffer.count)
                let result = deflate(&stream, Z_FINISH)
                stream.next_in = nil
                stream.next_out = nil
                return result
            }
        }
        guard result == Z_STREAM_END else { throw failure("deflate", result, stream) }
        output.removeSubrange(Int(stream.total_out)...)
        return output
    }

    private static func failure(_ function: String, _ code: Int32, _ stream: z_stream) -> PprofError {
        .compression(function: function, code: code, message: stream.msg.map { String(cString: $0) } ?? "")
    }
}
