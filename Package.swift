// swift-tools-version:6.0
import PackageDescription

// libkmemleak.so (the in-process shim) and kmemleak-test are plain C built by the Makefile, not by
// SwiftPM: a SwiftPM product would link the Swift runtime into every client process.
let package = Package(
    name: "kmemleak",
    platforms: [.macOS(.v15)],
    products: [
        .executable(name: "kmemleakd", targets: ["kmemleakd"]),
        .library(name: "KmemleakEngine", targets: ["KmemleakEngine"]),
    ],
    dependencies: [
        .package(url: "https://github.com/apple/swift-argument-parser", from: "1.8.2"),
        .package(url: "https://github.com/apple/swift-log", from: "1.16.2"),
        // The pprof view: the runtime library only (the generated code is committed, no plugin).
        .package(url: "https://github.com/apple/swift-protobuf", from: "1.39.0"),
        // The Prometheus view: the collector registry and its text exposition.
        .package(url: "https://github.com/swift-server/swift-prometheus", from: "2.4.1"),
    ],
    targets: [
        // Pure Swift, no syscalls: the kernel's kmemleak algorithm over a MemoryReader.
        .target(name: "KmemleakEngine"),
        // The shared-table layout (one versioned C header, also compiled into libkmemleak.so).
        .target(name: "CKmemleakABI"),
        // Thin C wrappers for what Glibc does not import (process_vm_readv, statfs, ...).
        .target(name: "CKmemleakSys"),
        .systemLibrary(name: "CFuse3", pkgConfig: "fuse3", providers: [.apt(["libfuse3-dev"])]),
        // elfutils: libdwfl/libdw/libelf (symbols, DWARF lines and inlining), and the callbacks it needs.
        .systemLibrary(name: "CLibdw", pkgConfig: "libdw", providers: [.apt(["libdw-dev"])]),
        // liblzma: MiniDebugInfo is decompressed once, bounded, before libdwfl does.
        .systemLibrary(name: "CLzma", pkgConfig: "liblzma", providers: [.apt(["liblzma-dev"])]),
        // The only module that makes syscalls: /proc, process_vm_readv, the client table reader, ELF symbols.
        .target(
            name: "KmemleakSystem",
            dependencies: [
                "KmemleakEngine", "CKmemleakABI", "CKmemleakSys", "CLibdw", "CLzma",
                .product(name: "Logging", package: "swift-log"),
            ]),
        // Pure: the mount's views (summary, JSON, ...) rendered from a LeakSnapshot, and suppressions.
        .target(name: "KmemleakReports", dependencies: ["KmemleakEngine"]),
        .systemLibrary(name: "CZlib", pkgConfig: "zlib", providers: [.apt(["zlib1g-dev"])]),
        // MOUNTPOINT/kmemleak.pb.gz: a LeakSnapshot as a gzip-compressed pprof profile (pure but for zlib).
        .target(
            name: "KmemleakPprof",
            dependencies: [
                "KmemleakReports", "KmemleakEngine", "CZlib",
                .product(name: "SwiftProtobuf", package: "swift-protobuf"),
            ],
            exclude: ["proto"]),
        // MOUNTPOINT/kmemleak.prom: the daemon's and the clients' figures in Prometheus's text format.
        .target(
            name: "KmemleakPrometheus",
            dependencies: [
                "KmemleakReports", "KmemleakEngine",
                .product(name: "Prometheus", package: "swift-prometheus"),
            ]),
        // The FUSE adapter: MOUNTPOINT/kmemleak and the views (LeakView) over a ControlFileBackend.
        .target(
            name: "KmemleakFS",
            dependencies: [
                "KmemleakEngine", "KmemleakReports", "KmemleakSystem", "CFuse3", "CKmemleakSys",
                .product(name: "Logging", package: "swift-log"),
            ]),
        // The service layer: options, signals, sd_notify, the log handler (no FUSE, no detection).
        .target(
            name: "KmemleakService",
            dependencies: ["KmemleakSystem", "KmemleakReports", .product(name: "Logging", package: "swift-log")]),
        // The daemon's work: adopt clients, sync their tables into engines, scan, report, schedule.
        .target(
            name: "KmemleakDaemon",
            dependencies: [
                "KmemleakFS", "KmemleakReports", "KmemleakSystem", "KmemleakEngine", "CKmemleakSys",
                "KmemleakPprof", "KmemleakPrometheus",
                .product(name: "Logging", package: "swift-log"),
            ]),
        .executableTarget(
            name: "kmemleakd",
            dependencies: [
                "KmemleakDaemon", "KmemleakFS", "KmemleakReports", "KmemleakService", "KmemleakSystem", "KmemleakEngine",
                .product(name: "ArgumentParser", package: "swift-argument-parser"),
                .product(name: "Logging", package: "swift-log"),
            ]),
        .executableTarget(
            name: "kmemleak-engine-bench",
            // KmemleakSystem for the daemon's scan threads only (`real` with KMEMLEAK_BENCH_WORKERS).
            dependencies: ["KmemleakEngine", "KmemleakSystem"],
            path: "Benchmarks/EngineScan"),
        .executableTarget(
            name: "kmemleak-views-bench",
            dependencies: ["KmemleakReports", "KmemleakEngine", "KmemleakPprof", "KmemleakPrometheus"],
            path: "Benchmarks/ViewRender"),
        .testTarget(name: "KmemleakEngineTests", dependencies: ["KmemleakEngine"]),
        .testTarget(name: "KmemleakReportsTests", dependencies: ["KmemleakReports", "KmemleakEngine"]),
        // Shared by the test targets: child processes with pipes and timeouts.
        .target(name: "KmemleakTestSupport", dependencies: ["CKmemleakSys"], path: "Tests/TestSupport"),
        .testTarget(
            name: "KmemleakSystemTests",
            dependencies: [
                "KmemleakSystem", "KmemleakEngine", "CKmemleakABI", "CKmemleakSys", "KmemleakTestSupport",
                // The table fuzzer drives ClientSession (sync, scan, report) over hostile tables.
                "KmemleakDaemon",
            ]),
        .testTarget(name: "KmemleakDaemonTests", dependencies: ["KmemleakDaemon"]),
        // The pprof and Prometheus renderers, checked by go tool pprof, promtool and node_exporter.
        .testTarget(
            name: "KmemleakExportTests",
            dependencies: [
                "KmemleakPprof", "KmemleakPrometheus", "KmemleakReports", "KmemleakEngine", "KmemleakTestSupport",
            ]),
        .testTarget(
            name: "EndToEndTests",
            dependencies: [
                "KmemleakDaemon", "KmemleakFS", "KmemleakReports", "KmemleakService", "KmemleakSystem", "KmemleakEngine",
                "CKmemleakSys", "KmemleakTestSupport",
            ]),
    ],
    swiftLanguageModes: [.v6]
)
