// Loopback servers and processes for the end-to-end tests of real programs: free ports on 127.0.0.1,
// connections with timeouts, HTTP GETs, nginx configurations, children and liveness from /proc.
import Glibc

/// Whether `pid` is a live (non-zombie) process, whose comm is `name` if given.
func isProcess(_ pid: pid_t, named name: String?) -> Bool {
    guard let stat = try? String(contentsOfFile: "/proc/\(pid)/stat", encoding: .utf8),
          let open = stat.firstIndex(of: "("), let close = stat.lastIndex(of: ")") else { return false }
    let comm = String(stat[stat.index(after: open)..<close])
    let state = stat[stat.index(close, offsetBy: 2)...].first
    return state != "Z" && state != "X" && (name == nil || comm == name)
}

/// The children of `pid` (its main thread's), from /proc.
func children(of pid: pid_t) -> [pid_t] {
    let text = (try? String(contentsOfFile: "/proc/\(pid)/task/\(pid)/children", encoding: .utf8)) ?? ""
    return text.split(separator: " ").compactMap { pid_t($0.trimmingCharacters(in: .whitespacesAndNewlines)) }
}

/// A free TCP port on 127.0.0.1 (bound to port 0, then released).
func freeLoopbackPort() throws -> UInt16 {
    let fd = socket(AF_INET, Int32(SOCK_STREAM.rawValue) | Int32(SOCK_CLOEXEC.rawValue), 0)
    guard fd >= 0 else { throw TestFailure("socket: \(String(cString: strerror(errno)))") }
    defer { close(fd) }
    var address = loopback(port: 0)
    let bound = withUnsafePointer(to: &address) {
        $0.withMemoryRebound(to: sockaddr.self, capacity: 1) { bind(fd, $0, socklen_t(MemoryLayout<sockaddr_in>.size)) }
    }
    guard bound == 0 else { throw TestFailure("bind 127.0.0.1:0: \(String(cString: strerror(errno)))") }
    var length = socklen_t(MemoryLayout<sockaddr_in>.size)
    let named = withUnsafeMutablePointer(to: &address) {
        $0.withMemoryRebound(to: sockaddr.self, capacity: 1) { getsockname(fd, $0, &length) }
    }
    guard named == 0 else { throw TestFailure("getsockname: \(String(cString: strerror(errno)))") }
    return UInt16(bigEndian: address.sin_port)
}

func loopback(port: UInt16) -> sockaddr_in {
    var address = sockaddr_in()
    address.sin_family = sa_family_t(AF_INET)
    address.sin_port = port.bigEndian
    address.sin_addr.s_addr = UInt32(0x7f00_0001).bigEndian
    return address
}

/// One TCP connection to 127.0.0.1 with send and receive timeouts (nothing blocks for long).
final class LoopbackConnection {
    let fd: Int32

    init(port: UInt16, timeoutSeconds: Int = 20) throws {
        fd = socket(AF_INET, Int32(SOCK_STREAM.rawValue) | Int32(SOCK_CLOEXEC.rawValue), 0)
        guard fd >= 0 else { throw TestFailure("socket: \(String(cString: strerror(errno)))") }
        var timeout = timeval(tv_sec: timeoutSeconds, tv_usec: 0)
        setsockopt(fd, SOL_SOCKET, SO_RCVTIMEO, &timeout, socklen_t(MemoryLayout<timeval>.size))
        setsockopt(fd, SOL_SOCKET, SO_SNDTIMEO, &timeout, socklen_t(MemoryLayout<timeval>.size))
        var address = loopback(port: port)
        let connected = withUnsafePointer(to: &address) {
            $0.withMemoryRebound(to: sockaddr.self, capacity: 1) { connect(fd, $0, socklen_t(MemoryLayout<sockaddr_in>.size)) }
        }
        guard connected == 0 else {
            let error = errno
            close(fd)
            throw TestFailure("connect 127.0.0.1:\(port): \(String(cString: strerror(error)))")
        }
    }

    deinit { close(fd) }

    func send(_ text: String) throws {
        let bytes = Array(text.utf8)
        var done = 0
        while done < bytes.count {
            let count = bytes[done...].withUnsafeBytes { Glibc.send(fd, $0.baseAddress, $0.count, Int32(MSG_NOSIGNAL)) }
            if count < 0 && errno == EINTR { continue }
            guard count > 0 else { throw TestFailure("send: \(String(cString: strerror(errno)))") }
            done += count
        }
    }

    /// Reads `count` bytes (fewer only at EOF).
    func receive(exactly count: Int) throws -> String {
        var bytes: [UInt8] = []
        var buffer = [UInt8](repeating: 0, count: 4096)
        while bytes.count < count {
            let got = buffer.withUnsafeMutableBytes { recv(fd, $0.baseAddress, min(4096, count - bytes.count), 0) }
            if got < 0 && errno == EINTR { continue }
            guard got >= 0 else { throw TestFailure("recv: \(String(cString: strerror(errno)))") }
            if got == 0 { break }
            bytes += buffer[0..<got]
        }
        return String(decoding: bytes, as: UTF8.self)
    }

    /// Reads until the peer closes.
    func receiveAll(limit: Int = 1 << 20) throws -> String {
        try receive(exactly: limit)
    }
}

/// One HTTP/1.1 GET with `Connection: close`; returns the whole response.
func httpGet(port: UInt16, path: String) throws -> String {
    let connection = try LoopbackConnection(port: port)
    try connection.send("GET \(path) HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n\r\n")
    return try connection.receiveAll()
}

/// An nginx configuration with a master and `workers` workers in the foreground, every temporary path
/// and the pid file under `prefix`, one server on 127.0.0.1:`port` whose `location /` does `location`.
func nginxConfiguration(prefix: String, port: UInt16, workers: Int = 2, errorLog: String? = nil,
                        location: String) -> String {
    """
    master_process on;
    worker_processes \(workers);
    daemon off;
    pid \(prefix)/nginx.pid;
    \(errorLog.map { "error_log \($0);" } ?? "")
    events { worker_connections 64; }
    http {
        access_log off;
        client_body_temp_path \(prefix)/body;
        proxy_temp_path \(prefix)/proxy;
        fastcgi_temp_path \(prefix)/fastcgi;
        uwsgi_temp_path \(prefix)/uwsgi;
        scgi_temp_path \(prefix)/scgi;
        server {
            listen 127.0.0.1:\(port);
            location / { \(location) }
        }
    }

    """
}
