import Foundation
import Glibc
import KmemleakFS
import KmemleakReports
import Synchronization
import Testing

// MARK: - A fake backend

/// A report split into fixed-size chunks; `read` returns at most the rest of one chunk, so the front
/// has to loop (as it must with the real, lazily rendered report).
struct ChunkedReport: ReportStream {
    let chunks: [[UInt8]]
    let chunkSize: Int

    init(_ bytes: [UInt8], chunkSize: Int) {
        self.chunkSize = chunkSize
        chunks = stride(from: 0, to: bytes.count, by: chunkSize).map { Array(bytes[$0..<min($0 + chunkSize, bytes.count)]) }
    }

    func read(at offset: Int, into buffer: UnsafeMutableRawBufferPointer) -> Int {
        let index = offset / chunkSize
        guard index < chunks.count else { return 0 }
        let chunk = chunks[index]
        let start = offset - index * chunkSize
        guard start < chunk.count else { return 0 }
        let count = min(buffer.count, chunk.count - start)
        chunk.withUnsafeBytes { buffer.copyMemory(from: UnsafeRawBufferPointer(rebasing: $0[start..<(start + count)])) }
        return count
    }
}

/// Renders record `i` of a synthetic 100k-object report on demand: nothing is stored, so a 30 MB
/// report costs no memory (the shape of the real engine's lazy rendering).
struct GeneratedReport: ReportStream {
    static let recordSize = 300
    let records: Int

    static func record(_ i: Int) -> [UInt8] {
        var line = "unreferenced object 0x\(String(0x7f00_0000_0000 + i * 64, radix: 16)) (size 64):\n  comm \"server\", pid \(1000 + i % 7), jiffies \(4_294_000_000 + i)\n"
        while line.utf8.count < recordSize - 1 { line += "." }
        line += "\n"
        return Array(line.utf8)
    }

    var count: Int { records * Self.recordSize }

    func read(at offset: Int, into buffer: UnsafeMutableRawBufferPointer) -> Int {
        guard offset < count else { return 0 }
        let index = offset / Self.recordSize
        let start = offset % Self.recordSize
        let record = Self.record(index)
        let n = min(buffer.count, record.count - start)
        record.withUnsafeBytes { buffer.copyMemory(from: UnsafeRawBufferPointer(rebasing: $0[start..<(start + n)])) }
        return n
    }
}

final class FakeBackend: ControlFileBackend {
    struct State {
        var text: [UInt8] = []
        var chunkSize = 4096
        var commands: [[UInt8]] = []
        var openReports = 0
        var generated: Int? = nil
        var openViews: [LeakView] = []
    }
    let state = Mutex(State())

    var text: [UInt8] {
        get { state.withLock { $0.text } }
        set { state.withLock { $0.text = newValue } }
    }

    func write(command: [UInt8]) -> Int32? {
        state.withLock { $0.commands.append(command) }
        let text = String(decoding: command, as: UTF8.self)
        if text.hasPrefix("scan") || text.hasPrefix("clear") { return nil }
        if text.hasPrefix("denied") { return EPERM }
        return EINVAL
    }

    func openReport() -> any ReportStream {
        state.withLock { state -> any ReportStream in
            state.openReports += 1
            if let records = state.generated { return GeneratedReport(records: records) }
            return ChunkedReport(state.text, chunkSize: state.chunkSize)
        }
    }

    /// Each view reads its own name, then the report text.
    func openView(_ view: LeakView, for requester: Requester) -> any ReportStream {
        state.withLock { state -> any ReportStream in
            state.openViews.append(view)
            return ChunkedReport(Self.viewText(view, state.text), chunkSize: state.chunkSize)
        }
    }

    static func viewText(_ view: LeakView, _ text: [UInt8]) -> [UInt8] { Array("VIEW \(view.fileName)\n".utf8) + text }
}

/// Deterministic report-like text of about `size` bytes.
func sampleReport(size: Int, seed: Int = 0) -> [UInt8] {
    var bytes: [UInt8] = []
    bytes.reserveCapacity(size + 200)
    var i = 0
    while bytes.count < size {
        bytes += Array("unreferenced object 0x\(String(0x5555_0000 + (i + seed) * 32, radix: 16)) (size \(32 + i % 100)):\n  comm \"t\(seed)\", pid \(i), jiffies \(4_294_667_296 + i)\n    backtrace (crc \(String(i * 2_654_435_761 % 0xffff_ffff, radix: 16))):\n".utf8)
        i += 1
    }
    return Array(bytes.prefix(size))
}

// MARK: - In-process mount

/// Mounts a FuseMount on a fresh directory, runs its loop on a thread, and always tears it down.
func withMountedFS(
    _ backend: FakeBackend, options: FuseMountOptions = .init(), multithreaded: Bool = true,
    _ body: (_ dir: String, _ mount: FuseMount, _ temp: TemporaryDirectory) throws -> Void
) throws {
    let temp = try TemporaryDirectory()
    defer { temp.remove() }
    let dir = try temp.makeDirectory("mnt")
    let mount = try FuseMount(mountpoint: dir, backend: backend, options: options, logger: testLogger)
    let finished = DispatchSemaphore(value: 0)
    Thread {
        mount.run(multithreaded: multithreaded)
        finished.signal()
    }.start()
    defer {
        mount.exit()
        let ended = finished.wait(timeout: .now() + 10)
        #expect(ended == .success, "the FUSE loop did not end after exit()")
        mount.unmountAndDestroy()
        #expect(MountPoint.mounts(at: dir).isEmpty)
    }
    try body(dir, mount, temp)
}

@Suite(.enabled(if: canMount, "needs root and /dev/fuse"))
struct FuseFrontTests {
    @Test(arguments: [true, false])
    func catEqualsBackendTextAcrossChunks(multithreaded: Bool) throws {
        let backend = FakeBackend()
        let expected = sampleReport(size: 50_000)
        backend.state.withLock { $0.text = expected; $0.chunkSize = 1000 }
        try withMountedFS(backend, multithreaded: multithreaded) { (dir, _, temp) throws in
            let file = dir + "/kmemleak"
            #expect(try readAll(file) == expected)
            // The real tools: cat, and dd with 7-byte reads.
            let cat = try ChildProcess.withOutputFiles(["/bin/cat", file], in: temp.path, name: "cat")
            defer { cat.terminate() }
            #expect(cat.exitCode() == 0)
            #expect(try Array(Data(contentsOf: URL(fileURLWithPath: try #require(cat.stdoutPath)))) == expected)
            let dd = try ChildProcess.withOutputFiles(["/bin/dd", "if=\(file)", "bs=7", "status=none"], in: temp.path, name: "dd")
            defer { dd.terminate() }
            #expect(dd.exitCode() == 0)
            #expect(try Array(Data(contentsOf: URL(fileURLWithPath: try #require(dd.stdoutPath)))) == expected)
            // Odd read sizes straddling chunk boundaries, via syscalls.
            #expect(try readAll(file, chunk: 7) == expected)
            #expect(try readAll(file, chunk: 999) == expected)
        }
    }

    @Test func reportLargerThanOneMiB() throws {
        let backend = FakeBackend()
        let expected = sampleReport(size: 3 << 20, seed: 3)
        backend.state.withLock { $0.text = expected; $0.chunkSize = 65536 + 13 }
        try withMountedFS(backend) { (dir, _, _) throws in
            #expect(try readAll(dir + "/kmemleak") == expected)
            #expect(try readAll(dir + "/kmemleak", chunk: 1 << 20) == expected)
        }
    }

    /// 100k objects, ~30 MB, rendered record by record by the backend: the FS layer streams it.
    @Test func hundredThousandObjectReportStreams() throws {
        let backend = FakeBackend()
        let records = 100_000
        backend.state.withLock { $0.generated = records }
        try withMountedFS(backend) { (dir, _, _) throws in
            let fd = open(dir + "/kmemleak", O_RDONLY)
            #expect(fd >= 0)
            defer { close(fd) }
            var buffer = [UInt8](repeating: 0, count: 128 * 1024)
            var offset = 0
            var mismatches = 0
            while true {
                let count = buffer.withUnsafeMutableBytes { read(fd, $0.baseAddress, $0.count) }
                #expect(count >= 0)
                if count <= 0 { break }
                // Compare against the generator record by record.
                var i = 0
                while i < count {
                    let index = (offset + i) / GeneratedReport.recordSize
                    let start = (offset + i) % GeneratedReport.recordSize
                    let record = GeneratedReport.record(index)
                    let n = min(count - i, record.count - start)
                    if Array(buffer[i..<(i + n)]) != Array(record[start..<(start + n)]) { mismatches += 1 }
                    i += n
                }
                offset += count
            }
            #expect(offset == records * GeneratedReport.recordSize)
            #expect(mismatches == 0)
        }
    }

    @Test func writeReturnsFullLengthAndPassesAtMost63Bytes() throws {
        let backend = FakeBackend()
        try withMountedFS(backend) { (dir, _, _) throws in
            let file = dir + "/kmemleak"
            let scan = writeOnce(file, Array("scan\n".utf8))
            #expect(scan.result == 5)
            let long = Array("scan".utf8) + [UInt8](repeating: UInt8(ascii: "x"), count: 196)
            #expect(writeOnce(file, long).result == 200)
            // Offsets are ignored like debugfs: pwrite at 1000 is still one command.
            let fd = open(file, O_WRONLY)
            defer { close(fd) }
            let pwritten = Array("clear".utf8).withUnsafeBytes { pwrite(fd, $0.baseAddress, $0.count, 1000) }
            #expect(pwritten == 5)
            let commands = backend.state.withLock { $0.commands }
            #expect(commands == [Array("scan\n".utf8), Array(long.prefix(63)), Array("clear".utf8)])
            #expect(commands.allSatisfy { $0.count <= 63 })
        }
    }

    @Test func backendErrnoReachesTheWriter() throws {
        let backend = FakeBackend()
        try withMountedFS(backend) { (dir, _, temp) throws in
            let file = dir + "/kmemleak"
            let bogus = writeOnce(file, Array("bogus\n".utf8))
            #expect(bogus.result == -1)
            #expect(bogus.errno == EINVAL)
            let denied = writeOnce(file, Array("denied\n".utf8))
            #expect(denied.result == -1)
            #expect(denied.errno == EPERM)
            // What a shell user sees (bash; dash reports every failed echo as "I/O error").
            let shell = try ChildProcess.withOutputFiles(["/bin/bash", "-c", "echo bogus > '\(file)'; echo denied > '\(file)'"], in: temp.path, name: "sh")
            defer { shell.terminate() }
            #expect(shell.exitCode() != 0)
            #expect(shell.stderr.contains("Invalid argument"))
            #expect(shell.stderr.contains("Operation not permitted"))
        }
    }

    @Test func snapshotIsTakenOnFirstReadAndKeptPerOpenFile() throws {
        let backend = FakeBackend()
        let textA = sampleReport(size: 20_000, seed: 1)
        let textB = sampleReport(size: 30_000, seed: 2)
        backend.state.withLock { $0.text = textA; $0.chunkSize = 777 }
        try withMountedFS(backend) { (dir, mount, _) throws in
            let file = dir + "/kmemleak"
            // Writing (and opening without reading) takes no snapshot.
            #expect(writeOnce(file, Array("scan".utf8)).result == 4)
            let idle = open(file, O_RDONLY)
            close(idle)
            #expect(backend.state.withLock { $0.openReports } == 0)

            let first = open(file, O_RDONLY)
            defer { close(first) }
            var head = [UInt8](repeating: 0, count: 100)
            #expect(head.withUnsafeMutableBytes { read(first, $0.baseAddress, 100) } == 100)
            backend.text = textB  // the report changes (a scan ran) between the two opens
            let second = open(file, O_RDONLY)
            defer { close(second) }
            #expect(try readAll(fd: second, chunk: 4096) == textB)
            #expect(head + (try readAll(fd: first, chunk: 333)) == textA)
            // Re-reading an earlier offset of the first file still sees its own snapshot.
            var again = [UInt8](repeating: 0, count: 50)
            #expect(again.withUnsafeMutableBytes { pread(first, $0.baseAddress, 50, 10) } == 50)
            #expect(again == Array(textA[10..<60]))
            #expect(backend.state.withLock { $0.openReports } == 2)
        }
    }

    @Test func concurrentReadersGetConsistentSnapshots() throws {
        let backend = FakeBackend()
        let texts = (0..<4).map { sampleReport(size: 40_000 + $0 * 5000, seed: $0 * 10) }
        backend.state.withLock { $0.text = texts[0]; $0.chunkSize = 1500 }
        try withMountedFS(backend) { (dir, mount, _) throws in
            let file = dir + "/kmemleak"
            let results = Mutex<[[UInt8]]>([])
            let failures = Atomic<Int>(0)
            let group = DispatchGroup()
            for reader in 0..<8 {
                group.enter()
                Thread {
                    defer { group.leave() }
                    for _ in 0..<5 {
                        guard let bytes = try? readAll(file, chunk: 1000 + reader * 97) else {
                            failures.add(1, ordering: .relaxed)
                            continue
                        }
                        results.withLock { $0.append(bytes) }
                    }
                }.start()
            }
            for round in 0..<40 { backend.text = texts[round % texts.count]; usleep(500) }
            #expect(group.wait(timeout: .now() + 60) == .success)
            #expect(failures.load(ordering: .relaxed) == 0)
            let all = results.withLock { $0 }
            #expect(all.count == 40)
            #expect(all.allSatisfy { texts.contains($0) }, "a reader saw a mix of two reports")
            // release frees the per-open state (RELEASE reaches the daemon asynchronously after close).
            #expect(waitUntil { mount.openFileCount == 0 })
        }
    }

    @Test func modesOwnershipAndNames() throws {
        let backend = FakeBackend()
        try withMountedFS(backend) { (dir, _, _) throws in
            var st = stat()
            #expect(stat(dir + "/kmemleak", &st) == 0)
            #expect(st.st_mode == 0o100644)
            #expect(st.st_uid == getuid())
            #expect(st.st_gid == getgid())
            #expect(st.st_size == 0)
            #expect(stat(dir, &st) == 0)
            #expect(st.st_mode == 0o040755)
            #expect(try Set(FileManager.default.contentsOfDirectory(atPath: dir))
                    == Set(["kmemleak"] + LeakView.allCases.map(\.fileName)))
            #expect(statErrno(dir + "/other") == ENOENT)
            #expect(statErrno(dir + "/kmemleak/x") == ENOTDIR)
            #expect(open(dir + "/other", O_RDONLY) == -1 && errno == ENOENT)
            #expect(open(dir + "/new", O_WRONLY | O_CREAT, 0o644) == -1 && errno == EACCES)
            #expect(mkdir(dir + "/d", 0o755) == -1 && errno == EACCES)
            #expect(unlink(dir + "/kmemleak") == -1 && errno == EPERM)
            #expect(truncate(dir + "/kmemleak", 0) == 0)
            // Mount: fsname/subtype like debugfs's, root-only unless allow_other, modes enforced.
            let entry = try #require(MountPoint.mounts(at: dir).last)
            #expect(entry.fileSystemType == "fuse.kmemleak")
            #expect(entry.source == "kmemleak")
            #expect(entry.allOptions.contains("default_permissions"))
            #expect(!entry.allOptions.contains("allow_other"))
        }
    }

    /// Every view is a read-only file next to `kmemleak` that cat, dd and Python read whole, one
    /// snapshot per open file; no one, root included, opens it for writing.
    @Test func viewsAreReadOnlyFilesReadWhole() throws {
        let backend = FakeBackend()
        let text = sampleReport(size: 20_000, seed: 5)
        backend.state.withLock { $0.text = text; $0.chunkSize = 777 }
        try withMountedFS(backend) { (dir, _, temp) throws in
            for view in LeakView.allCases {
                let file = dir + "/" + view.fileName
                let expected = FakeBackend.viewText(view, text)
                var st = stat()
                #expect(stat(file, &st) == 0)
                #expect(st.st_mode == 0o100444)
                #expect(st.st_size == 0)
                #expect(try readAll(file) == expected)
                #expect(try readAll(file, chunk: 7) == expected)
                let tools = [
                    ["/bin/cat", file], ["/bin/dd", "if=\(file)", "bs=7", "status=none"],
                    ["/usr/bin/python3", "-c", "import sys; sys.stdout.buffer.write(open(sys.argv[1], 'rb').read())", file],
                ]
                for (index, tool) in tools.enumerated() {
                    let child = try ChildProcess.withOutputFiles(tool, in: temp.path, name: "\(view.rawValue)-\(index)")
                    defer { child.terminate() }
                    #expect(child.exitCode() == 0, "\(tool[0])")
                    #expect(try Array(Data(contentsOf: URL(fileURLWithPath: try #require(child.stdoutPath)))) == expected,
                            "\(tool[0]) read \(view.fileName)")
                }
                // Root passes mode bits: the file system itself refuses writers, as a read-only file does.
                for flags in [O_WRONLY, O_RDWR, O_WRONLY | O_TRUNC, O_RDONLY | O_TRUNC] {
                    #expect(open(file, flags) == -1 && errno == EACCES, "open flags \(flags)")
                }
                #expect(truncate(file, 0) == -1 && errno == EACCES)
                #expect(writeOnce(file, Array("scan\n".utf8)).errno == EACCES)
                #expect(unlink(file) == -1 && errno == EPERM)
            }
            // One snapshot per open file: reading a descriptor twice (pread at 0) asks once.
            let before = backend.state.withLock { $0.openViews.count }
            let fd = open(dir + "/" + LeakView.summary.fileName, O_RDONLY)
            #expect(fd >= 0)
            defer { close(fd) }
            let first = try readAll(fd: fd)
            #expect(lseek(fd, 0, SEEK_SET) == 0)
            backend.text = Array("changed".utf8)
            #expect(try readAll(fd: fd) == first)
            #expect(backend.state.withLock { $0.openViews.count } == before + 1)
            #expect(backend.state.withLock { $0.commands.isEmpty }, "a view write reached the backend")
        }
    }

    /// exit() must not wait for files still open on the mount (teardown runs with both fds open).
    @Test(arguments: [true, false])
    func exitWithFilesStillOpen(multithreaded: Bool) throws {
        let backend = FakeBackend()
        backend.text = sampleReport(size: 10_000)
        var fds: [Int32] = []
        defer { for fd in fds { close(fd) } }
        try withMountedFS(backend, multithreaded: multithreaded) { (dir, _, _) throws in
            fds = [open(dir + "/kmemleak", O_RDONLY), open(dir + "/kmemleak", O_WRONLY)]
            #expect(fds.allSatisfy { $0 >= 0 })
            var byte: UInt8 = 0
            #expect(read(fds[0], &byte, 1) == 1)
        }
    }

    @Test func allowOtherIsOptIn() throws {
        try withMountedFS(FakeBackend(), options: FuseMountOptions(allowOther: true)) { (dir, _, _) throws in
            let entry = try #require(MountPoint.mounts(at: dir).last)
            #expect(entry.allOptions.contains("allow_other"))
        }
    }
}
