// Builds shared tables in a memfd from Swift with the ABI structs, as libkmemleak.so would.
import CKmemleakABI
import CKmemleakSys
import Glibc
@testable import KmemleakSystem

final class SyntheticTable {
    let fd: Int32
    var header = kml_header()
    let totalSize: UInt64

    struct Capacities {
        var objects: UInt32 = 64
        var traces: UInt32 = 16
        var threads: UInt32 = 8
        var comms: UInt32 = 8
        var regions: UInt32 = 4
        var areas: UInt32 = 4
    }

    init(_ caps: Capacities = Capacities(), pid: Int32 = getpid(), startTime: UInt64 = 0, name: String = "kmemleak-table") throws {
        fd = ckml_memfd_create(name, 1 /* MFD_CLOEXEC */)
        guard fd >= 0 else { throw TestError("memfd_create: \(errno)") }
        var off: UInt64 = 512
        func place(_ cap: UInt32, _ size: Int) -> UInt64 {
            let o = off
            off += (UInt64(cap) * UInt64(size) + 63) & ~63
            return o
        }
        header.magic = KML_MAGIC
        header.version = KML_ABI_VERSION
        header.header_size = UInt32(MemoryLayout<kml_header>.size)
        header.pid = pid
        header.flags = KML_TABLE_TRACKING
        header.start_time = startTime
        header.nr_cpu_ids = 4
        header.clk_tck = 100
        header.objects_offset = place(caps.objects, 64); header.objects_capacity = caps.objects; header.object_size = 64
        header.traces_offset = place(caps.traces, MemoryLayout<kml_trace>.size); header.traces_capacity = caps.traces
        header.trace_size = UInt32(MemoryLayout<kml_trace>.size)
        header.threads_offset = place(caps.threads, 64); header.threads_capacity = caps.threads; header.thread_size = 64
        header.comms_offset = place(caps.comms, 16); header.comms_capacity = caps.comms; header.comm_size = 16
        header.regions_offset = place(caps.regions, 48); header.regions_capacity = caps.regions; header.region_size = 48
        header.areas_offset = place(caps.areas, 32); header.areas_capacity = caps.areas; header.area_size = 32
        totalSize = (off + 4095) & ~4095
        header.total_size = totalSize
        guard ftruncate(fd, off_t(totalSize)) == 0 else { throw TestError("ftruncate") }
        writeHeader()
    }

    deinit { close(fd) }

    func writeHeader() { pwriteValue(header, at: 0) }

    func pwriteValue<T>(_ v: T, at offset: UInt64) {
        var v = v
        let n = withUnsafeBytes(of: &v) { pwrite(fd, $0.baseAddress, $0.count, off_t(offset)) }
        precondition(n == MemoryLayout<T>.size)
    }

    static func state(live: Bool = true, version: UInt32 = 1, busy: Bool = false) -> UInt32 {
        (live ? KML_STATE_LIVE : KML_STATE_FREE) | (busy ? KML_STATE_BUSY : 0) | version << KML_STATE_VERSION_SHIFT
    }

    /// Writes object `slot` and raises objects_used / live_objects accordingly.
    func setObject(_ slot: UInt32, pointer: UInt64, size: UInt64, seq: UInt64, trace: UInt32 = 0, comm: UInt32 = 0,
                   tid: Int32 = 7, minCount: Int32 = 1, flags: UInt32 = KML_KIND_MALLOC, state: UInt32 = state()) {
        var o = kml_object()
        o.state = state; o.pointer = pointer; o.size = size; o.seq = seq; o.time_ns = seq * 1000
        o.trace_id = trace; o.tid = tid; o.min_count = minCount; o.flags = flags; o.comm_id = comm; o.transient_gen = 0
        pwriteValue(o, at: header.objects_offset + UInt64(slot) * 64)
        header.objects_used = max(header.objects_used, slot + 1)
        writeHeader()
    }

    func setTrace(_ id: UInt32, _ frames: [UInt64], len: UInt32? = nil) {
        var t = kml_trace()
        t.len = len ?? UInt32(frames.count)
        withUnsafeMutableBytes(of: &t.frames) { b in
            for (i, f) in frames.prefix(16).enumerated() { b.storeBytes(of: f, toByteOffset: i * 8, as: UInt64.self) }
        }
        pwriteValue(t, at: header.traces_offset + UInt64(id - 1) * UInt64(header.trace_size))
        header.traces_used = max(header.traces_used, id)
        writeHeader()
    }

    func setComm(_ id: UInt32, _ name: String, raw: [UInt8]? = nil) {
        var bytes = raw ?? Array(name.utf8.prefix(15))
        bytes += [UInt8](repeating: 0, count: 16 - bytes.count)
        let n = bytes.withUnsafeBytes { pwrite(fd, $0.baseAddress, 16, off_t(header.comms_offset + UInt64(id - 1) * 16)) }
        precondition(n == 16)
        header.comms_used = max(header.comms_used, id)
        writeHeader()
    }

    func setThread(_ slot: UInt32, tid: Int32, stack: (UInt64, UInt64), tls: (UInt64, UInt64), comm: String, rawComm: [UInt8]? = nil) {
        var t = kml_thread()
        t.state = Self.state(); t.tid = tid
        t.stack_lo = stack.0; t.stack_hi = stack.1; t.tls_lo = tls.0; t.tls_hi = tls.1
        let bytes = rawComm ?? Array(comm.utf8.prefix(15))
        withUnsafeMutableBytes(of: &t.comm) { b in for (i, c) in bytes.prefix(16).enumerated() { b[i] = c } }
        pwriteValue(t, at: header.threads_offset + UInt64(slot) * 64)
        header.threads_used = max(header.threads_used, slot + 1)
        writeHeader()
    }

    func setRegion(_ slot: UInt32, kind: UInt32, start: UInt64, size: UInt64, cpu0: UInt64 = 0, stride: UInt64 = 0, nrCpus: UInt32 = 0) {
        var r = kml_region()
        r.state = Self.state(); r.kind = kind; r.start = start; r.size = size; r.cpu0_base = cpu0; r.stride = stride; r.nr_cpus = nrCpus
        pwriteValue(r, at: header.regions_offset + UInt64(slot) * 48)
        header.regions_used = max(header.regions_used, slot + 1)
        writeHeader()
    }

    func setArea(_ slot: UInt32, object: UInt32, seq: UInt64, start: UInt64, size: UInt64) {
        var a = kml_area()
        a.state = Self.state(); a.object_index = object; a.object_seq = seq; a.start = start; a.size = size
        pwriteValue(a, at: header.areas_offset + UInt64(slot) * 32)
        header.areas_used = max(header.areas_used, slot + 1)
        writeHeader()
    }

    /// A ClientTable over this memfd (its own descriptor, like the daemon's).
    func open(expectedPid: Int32? = nil) throws(TableError) -> ClientTable {
        let d = dup(fd)
        return try ClientTable(file: FileHandleFD(fd: d, path: "memfd"), expectedPid: expectedPid)
    }

    /// Maps the memfd shared in this process (for concurrent writers and rendezvous tests).
    func map() throws -> UnsafeMutableRawPointer {
        guard let p = mmap(nil, Int(totalSize), PROT_READ | PROT_WRITE, MAP_SHARED, fd, 0), p != MAP_FAILED else {
            throw TestError("mmap: \(errno)")
        }
        return p
    }
}

/// A plain pthread running `body` (not a Swift concurrency task: it spins).
final class SpinThread {
    private var thread = pthread_t()
    private final class Box { let body: () -> Void; init(_ b: @escaping () -> Void) { body = b } }

    init(_ body: @escaping () -> Void) {
        let box = Unmanaged.passRetained(Box(body)).toOpaque()
        pthread_create(&thread, nil, { arg in
            let b = Unmanaged<Box>.fromOpaque(arg!).takeRetainedValue()
            b.body()
            return nil
        }, box)
    }

    func join() { pthread_join(thread, nil) }
}
