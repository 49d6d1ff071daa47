# kmemleak for user space. `make help` lists the targets.
SHELL := /bin/bash
# Swift from PATH, else the toolchain's usual place on these machines.
SWIFT ?= $(or $(shell command -v swift 2>/dev/null),/opt/swift/usr/bin/swift)
CC ?= cc
PREFIX ?= /usr/local
DESTDIR ?=
BUILD := .build/release
SWIFT_FLAGS ?=

.PHONY: help deps build shim clients test clean bench

help:
	@echo "make deps    install the Debian packages the project needs (idempotent)"
	@echo "make build   build kmemleakd, libkmemleak.so and kmemleak-test (release)"
	@echo "make test    build everything and run the test suite"
	@echo "make bench   run the benchmarks (figures go to BENCHMARKS.md by hand)"
	@echo "make bench-real  time the real programs' load loops with and without the shim"
	@echo "make bench-pause  the longest client pause per scan, 1M objects, 1000 candidates (root + FUSE)"
	@echo "make bench-report  cat of 10k symbolized records from MOUNTPOINT/kmemleak (root + FUSE)"
	@echo "make shim-selftest  run every shim fixture with and without the shim"
	@$(MAKE) --no-print-directory help-service

# The real-programs suite (Tests/EndToEndTests/RealProgramTests.swift) runs Debian's own programs under the
# shim: python3 is Debian's /usr/bin/python3, never a python3 found first on PATH.
DEB_PACKAGES := libfuse3-dev fuse3 libunwind-dev pkg-config make gcc g++ binutils valgrind heaptrack liblsan0 systemd python3 \
	libjemalloc2 redis-server libtcmalloc-minimal4 nginx-light sqlite3 \
	libdw-dev liblzma-dev xz-utils elfutils zlib1g-dev golang-go prometheus prometheus-node-exporter \
	libffi-platypus-perl
deps:
	@missing=$$(for p in $(DEB_PACKAGES); do dpkg-query -W -f='$${Status}\n' $$p 2>/dev/null | grep -q '^install ok installed' || echo $$p; done); \
	if [ -n "$$missing" ]; then \
	  echo "installing:$$missing"; \
	  apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq $$missing; \
	else echo "all Debian packages present"; fi

# ---- the C parts (shim + sample client): plain C, no Swift runtime ---------------------------
# BEGIN shim section (libkmemleak.so, kmemleak-test, test fixtures)
# Plain cc, no SwiftPM: a SwiftPM product would link the Swift runtime into every client.
# .build/release is SwiftPM's symlink to x86_64-unknown-linux-gnu/release; we create the same
# symlink if SwiftPM has not yet, so that a later `swift build -c release` keeps our files.
SHIM_TRIPLE_DIR := .build/x86_64-unknown-linux-gnu/release
SHIM_CC := $(if $(filter default,$(origin CC)),cc,$(CC))
SHIM_INC := -ISources/libkmemleak/include -ISources/CKmemleakABI/include
SHIM_CFLAGS := -std=gnu11 -O2 -g -fPIC -fvisibility=hidden -Wall -Wextra -Wno-unused-parameter $(SHIM_INC)
SHIM_LDFLAGS := -shared -Wl,-z,now -Wl,-z,nodelete -Wl,--as-needed
SHIM_LIBS := -lunwind -ldl
SHIM_SRC := Sources/libkmemleak/kmemleak.c Sources/libkmemleak/cfi_unwind.c
SHIM_HDRS := Sources/libkmemleak/cfi_unwind.h Sources/libkmemleak/include/kmemleak.h Sources/CKmemleakABI/include/kmemleak_abi.h
SHIM_SO := $(BUILD)/libkmemleak.so
KMLTEST := $(BUILD)/kmemleak-test
FIXTURE_DIR := .build/fixtures
FIXTURE_SRCS := $(filter-out Tests/fixtures/jemalloc.c,$(wildcard Tests/fixtures/*.c))
FIXTURES := $(patsubst Tests/fixtures/%.c,$(FIXTURE_DIR)/%,$(FIXTURE_SRCS))
# linked with Debian's libjemalloc2 (a foreign allocator); its test is skipped where it is missing
JEMALLOC_SO := $(wildcard /usr/lib/x86_64-linux-gnu/libjemalloc.so.2)
FIXTURES += $(if $(JEMALLOC_SO),$(FIXTURE_DIR)/jemalloc)
PROG_CFLAGS := -std=gnu11 -O2 -g -Wall -Wextra -Wno-unused-parameter -pthread $(SHIM_INC)
BENCH_DIR := .build/bench
LSAN_SO ?= /usr/lib/x86_64-linux-gnu/liblsan.so.0

.PHONY: shim shim-dirs shim-selftest bench-shim bench-pause
shim: shim-dirs $(SHIM_SO) $(KMLTEST) $(FIXTURES)

shim-dirs:
	@if [ ! -e $(BUILD) ] && [ ! -L $(BUILD) ]; then mkdir -p $(SHIM_TRIPLE_DIR) && ln -s x86_64-unknown-linux-gnu/release $(BUILD); fi
	@mkdir -p $(BUILD)/ $(FIXTURE_DIR) $(BENCH_DIR)

$(SHIM_SO): $(SHIM_SRC) $(SHIM_HDRS) | shim-dirs
	$(SHIM_CC) $(SHIM_CFLAGS) $(SHIM_LDFLAGS) -o $@ $(SHIM_SRC) $(SHIM_LIBS)

$(KMLTEST): Sources/kmemleak-test/kmemleak-test.c $(SHIM_HDRS) | shim-dirs
	$(SHIM_CC) $(PROG_CFLAGS) -o $@ $<

# the backtrace fixture is -O2 without frame pointers on purpose
$(FIXTURE_DIR)/backtrace: Tests/fixtures/backtrace.c Tests/fixtures/common.h $(SHIM_HDRS) | shim-dirs
	$(SHIM_CC) $(PROG_CFLAGS) -fomit-frame-pointer -fno-inline-functions -o $@ $<

$(FIXTURE_DIR)/jemalloc: Tests/fixtures/jemalloc.c Tests/fixtures/common.h | shim-dirs
	$(SHIM_CC) $(PROG_CFLAGS) -o $@ $< -l:libjemalloc.so.2

$(FIXTURE_DIR)/%: Tests/fixtures/%.c Tests/fixtures/common.h $(SHIM_HDRS) | shim-dirs
	$(SHIM_CC) $(PROG_CFLAGS) -o $@ $<

# shell-level checks: same output with and without the shim, no Swift runtime in the .so
shim-selftest: shim
	Tests/fixtures/selftest.sh $(SHIM_SO) $(KMLTEST) $(FIXTURE_DIR)

# allocation-overhead benchmark (not a test): plain vs shim vs LeakSanitizer (+ heaptrack, valgrind)
bench-shim: shim
	$(SHIM_CC) -std=gnu11 -O2 -g -o $(BENCH_DIR)/churn Benchmarks/ShimOverhead/churn.c
	Benchmarks/ShimOverhead/run.sh $(BENCH_DIR)/churn $(SHIM_SO) $(LSAN_SO)

# issue 10's shim benchmarks (not tests): fork+exec from bash, allocation-heavy python3, 8 threads
.PHONY: bench-fork bench-python bench-threads
bench-fork: shim
	Benchmarks/ForkExec/run.sh $(SHIM_SO) $(LSAN_SO)
bench-python: shim
	Benchmarks/Python/run.sh $(SHIM_SO) $(LSAN_SO)
bench-threads: shim
	$(SHIM_CC) -std=gnu11 -O2 -g -pthread -o $(BENCH_DIR)/threads Benchmarks/Threads/threads.c
	Benchmarks/Threads/run.sh $(BENCH_DIR)/threads $(SHIM_SO) $(LSAN_SO)
# prerequisites only: other sections may add their benchmarks to `bench` the same way
bench: bench-shim bench-fork bench-python bench-threads bench-pause
# pause benchmark (issue 10 goal 2): the longest stop of a client thread per scan, seen from inside
bench-pause: shim
	$(SHIM_CC) -std=gnu11 -O2 -g -Wall -Wextra -pthread -o $(BENCH_DIR)/pause-client Benchmarks/Pause/pause-client.c
	$(SHIM_CC) -std=gnu11 -O2 -g -Wall -Wextra -o $(BENCH_DIR)/written-pages-probe Benchmarks/Pause/written-pages-probe.c
	$(BENCH_DIR)/written-pages-probe
	$(SWIFT) build -c release --product kmemleakd $(SWIFT_FLAGS)
	Benchmarks/Pause/run.sh
# END shim section

# BEGIN bench section (every benchmark; the figures go to BENCHMARKS.md by hand)
.PHONY: bench-engine bench-scan
bench: bench-shim bench-engine bench-scan bench-real bench-views
bench-engine:
	$(SWIFT) run -c release $(SWIFT_FLAGS) kmemleak-engine-bench
	$(SWIFT) run -c release $(SWIFT_FLAGS) kmemleak-engine-bench real
# Render time of each view of the mount (every LeakView) for 10k and 100k leaks, and the classification.
.PHONY: bench-views
bench-views:
	$(SWIFT) run -c release $(SWIFT_FLAGS) kmemleak-views-bench
# One daemon scan against LeakSanitizer's __lsan_do_recoverable_leak_check on the same heap (needs root
# and FUSE): issue 4's zero-filled C heap, issue 10's realistic C heap, python3 (PYTHONMALLOC=malloc) and
# perl (Debian's, its leaks planted through FFI::Platypus: libffi-platypus-perl).
bench-scan: shim clients build
	Benchmarks/ScanVsLSan/run.sh 1000000 1000 3
	HEAP=real Benchmarks/ScanVsLSan/run.sh 1000000 1000 3
	CLIENT=Benchmarks/ScanVsLSan/py-heap.py Benchmarks/ScanVsLSan/run.sh 1500000 1000 3
	CLIENT=Benchmarks/ScanVsLSan/pl-heap.pl Benchmarks/ScanVsLSan/run.sh 1340000 1000 3
# Reading MOUNTPOINT/kmemleak with 10k symbolized records (issue 11; root and FUSE).
.PHONY: bench-report
bench: bench-report
bench-report: shim clients
	$(SWIFT) build -c release --product kmemleakd $(SWIFT_FLAGS)
	Benchmarks/Report/run.sh 10000 5
# END bench section

# BEGIN clients section (test and benchmark clients of the daemon)
# The symbolizer's fixture and its stripped copies (rules below).
SYMBOL_SITES := .build/clients/symbol-sites .build/clients/symbol-sites.stripped \
	.build/clients/symbol-sites-noid.stripped .build/clients/symbol-sites.minidebuginfo
CLIENTS := .build/clients/pointer-churn .build/clients/scan-client .build/clients/stack-holder \
	.build/clients/thread-life .build/clients/libloader-tls.so .build/clients/proctitle \
	.build/clients/hostile-client .build/clients/libevil.so .build/clients/fork-window \
	.build/clients/libfork-window-hook.so \
	.build/clients/roots-client .build/clients/many-leaks \
	.build/clients/every-size .build/clients/new-array-zero .build/clients/slow-fuse \
	.build/clients/three-sites $(SYMBOL_SITES) .build/clients/write-churn .build/clients/forge-table \
	.build/clients/annotate-later
clients: $(CLIENTS)
.build/clients/thread-life: Tests/clients/thread-life.c
	@mkdir -p $(@D)
	$(CC) -O2 -g -Wall -Wextra -Wno-unused-parameter -pthread -o $@ $< -ldl
# dlopened by thread-life: its __thread variable is in a dynamic TLS block allocated by ld.so
.build/clients/libloader-tls.so: Tests/clients/loader-tls-lib.c
	@mkdir -p $(@D)
	$(CC) -O2 -g -Wall -Wextra -fPIC -shared -o $@ $<
.build/clients/every-size: Tests/clients/every-size.c
	@mkdir -p $(@D)
	$(CC) -O2 -g -Wall -Wextra -o $@ $<
.build/clients/new-array-zero: Tests/clients/new-array-zero.cpp
	@mkdir -p $(@D)
	$(CXX) -O2 -g -Wall -Wextra -o $@ $<
.build/clients/pointer-churn: Tests/clients/pointer-churn.c
	@mkdir -p $(@D)
	$(CC) -O2 -g -Wall -Wextra -pthread -o $@ $<
.build/clients/write-churn: Tests/clients/write-churn.c
	@mkdir -p $(@D)
	$(CC) -O2 -g -Wall -Wextra -pthread -o $@ $<
.build/clients/stack-holder: Tests/clients/stack-holder.c
	@mkdir -p $(@D)
	$(CC) -O2 -g -Wall -Wextra -pthread -o $@ $<
.build/clients/many-leaks: Tests/clients/many-leaks.c
	@mkdir -p $(@D)
	$(CC) -O2 -g -Wall -Wextra -pthread -o $@ $<
# Annotations made after adoption (kmemleak.h's weak wrappers: runs without the shim too).
.build/clients/annotate-later: Tests/clients/annotate-later.c Sources/libkmemleak/include/kmemleak.h
	@mkdir -p $(@D)
	$(CC) -O2 -g -Wall -Wextra -ISources/libkmemleak/include -o $@ $<
# The views' end-to-end client (-O0 -g: every call site keeps its frame and its line).
.build/clients/three-sites: Tests/clients/three-sites.c
	@mkdir -p $(@D)
	$(CC) -O0 -g -Wall -Wextra -o $@ $<
.build/clients/roots-client: Tests/clients/roots-client.c Sources/CKmemleakABI/include/kmemleak_abi.h
	@mkdir -p $(@D)
	$(CC) -O2 -g -Wall -Wextra -pthread -o $@ $<
# The symbolizer's fixture (issue 11 item 1): -g, no sibling calls (return addresses stay in their
# functions), and its stripped copies: with a separate debug file (build id and .gnu_debuglink), without
# a build id (found by .gnu_debuglink only), and with MiniDebugInfo (.gnu_debugdata, as gdb's manual
# makes it: the function symbols .dynsym lacks, xz-compressed).
SYMBOL_SITES_CFLAGS := -O1 -g -fno-omit-frame-pointer -fno-optimize-sibling-calls -Wall -Wextra
.build/clients/symbol-sites: Tests/clients/symbol-sites.c
	@mkdir -p $(@D)
	$(CC) $(SYMBOL_SITES_CFLAGS) -o $@ $<
.build/clients/symbol-sites-noid: Tests/clients/symbol-sites.c
	@mkdir -p $(@D)
	$(CC) $(SYMBOL_SITES_CFLAGS) -Wl,--build-id=none -o $@ $<
.build/clients/%.stripped: .build/clients/%
	objcopy --only-keep-debug $< $<.debug
	strip --strip-all -o $@ $<
	objcopy --add-gnu-debuglink=$<.debug $@
.build/clients/symbol-sites.minidebuginfo: .build/clients/symbol-sites
	nm -D $< --format=posix --defined-only | awk '{ print $$1 }' | sort > $@.dynsyms
	nm $< --format=posix --defined-only | awk '{ if ($$2 == "T" || $$2 == "t") print $$1 }' | sort > $@.funcsyms
	comm -13 $@.dynsyms $@.funcsyms > $@.keep
	objcopy --only-keep-debug $< $@.full
	objcopy -S --remove-section .gdb_index --remove-section .comment --keep-symbols=$@.keep $@.full $@.mini
	rm -f $@.mini.xz && xz $@.mini
	strip --strip-all -R .comment -o $@ $<
	objcopy --add-section .gnu_debugdata=$@.mini.xz $@
	rm -f $@.dynsyms $@.funcsyms $@.keep $@.full $@.mini.xz
# The hostile-client tests (issue 9): a client that corrupts its own table, and the library whose
# symbol name it forges (-O0: the static function must keep its frame and its name).
# A FUSE file system whose file never answers a read (issue 9 item 6: scans must not wait on it).
.build/clients/slow-fuse: Tests/clients/slow-fuse.c
	@mkdir -p $(@D)
	$(CC) -O2 -g -Wall -Wextra $$(pkg-config --cflags fuse3) -o $@ $< $$(pkg-config --libs fuse3)
.build/clients/forge-table: Tests/clients/forge-table.c Sources/CKmemleakABI/include/kmemleak_abi.h
	@mkdir -p $(@D)
	$(CC) -O2 -g -Wall -Wextra -ISources/CKmemleakABI/include -o $@ $<
.build/clients/hostile-client: Tests/clients/hostile-client.c Sources/CKmemleakABI/include/kmemleak_abi.h
	@mkdir -p $(@D)
	$(CC) -O2 -g -Wall -Wextra -ISources/CKmemleakABI/include -o $@ $< -ldl
.build/clients/libevil.so: Tests/clients/evil-lib.c
	@mkdir -p $(@D)
	$(CC) -O0 -g -fPIC -shared -Wall -Wextra -o $@ $<
.build/clients/proctitle: Tests/clients/proctitle.c
	@mkdir -p $(@D)
	$(CC) -O2 -g -Wall -Wextra -o $@ $<
.build/clients/scan-client: Benchmarks/ScanVsLSan/scan-client.c Benchmarks/bench-util.h
	@mkdir -p $(@D)
	$(CC) -O2 -g -Wall -Wextra -o $@ $<
.build/clients/fork-window: Tests/clients/fork-window.c
	@mkdir -p $(@D)
	$(CC) -O2 -g -Wall -Wextra -o $@ $< -ldl
# preloaded after the shim by fork-window: holds a fork child before the shim gives it its table
.build/clients/libfork-window-hook.so: Tests/clients/fork-window-hook.c
	@mkdir -p $(@D)
	$(CC) -O2 -g -Wall -Wextra -fPIC -shared -pthread -o $@ $<
# The real-programs suite's load loops with and without the shim (not a test; figures to BENCHMARKS.md).
.PHONY: bench-real
bench-real: shim clients
	Benchmarks/RealPrograms/run.sh $(SHIM_SO) .build/clients/many-leaks
# END clients section

build: shim
	$(SWIFT) build -c release --static-swift-stdlib $(SWIFT_FLAGS)

# The Swift suites (engine, system, daemon, end-to-end on real mounts), then the service tests, which
# need the release build (unit verification, install tree, sd_notify, the demo). Installs what is missing
# first (make deps is idempotent), so that `make test` alone works on a fresh machine.
test:
	$(MAKE) --no-print-directory deps
	$(MAKE) --no-print-directory shim clients
	$(SWIFT) build --build-tests $(SWIFT_FLAGS)
	$(SWIFT) test --skip-build $(SWIFT_FLAGS)
	$(MAKE) --no-print-directory shim-selftest
	$(MAKE) --no-print-directory build
	$(MAKE) --no-print-directory test-service

clean:
	rm -rf .build

# BEGIN service section (install, uninstall, demo)
# Installation layout (GNU-style names, all overridable: make install PREFIX=/usr DESTDIR=/tmp/root).
KMEMLEAK_VERSION ?= 0.1.0
bindir ?= $(PREFIX)/bin
libdir ?= $(PREFIX)/lib
includedir ?= $(PREFIX)/include
pkgconfigdir ?= $(libdir)/pkgconfig
docdir ?= $(PREFIX)/share/doc/kmemleak
SYSTEMDUNITDIR ?= $(PREFIX)/lib/systemd/system
TMPFILESDIR ?= $(PREFIX)/lib/tmpfiles.d
# What gets installed (overridable, e.g. by the tests when nothing is built yet).
KMEMLEAKD_BIN ?= $(BUILD)/kmemleakd
LIBKMEMLEAK_SO ?= $(BUILD)/libkmemleak.so
KMEMLEAK_HEADER ?= Sources/libkmemleak/include/kmemleak.h
# Generated files (placeholders substituted) go under .build, never into the source tree.
SERVICE_GEN := .build/service
SERVICE_SUBST = sed -e 's|@prefix@|$(PREFIX)|g' -e 's|@bindir@|$(bindir)|g' -e 's|@libdir@|$(libdir)|g' \
	-e 's|@includedir@|$(includedir)|g' -e 's|@docdir@|$(docdir)|g' -e 's|@tmpfilesdir@|$(TMPFILESDIR)|g' \
	-e 's|@version@|$(KMEMLEAK_VERSION)|g'
# Every installed file, as DESTDIR-relative paths: uninstall removes exactly these.
SERVICE_INSTALLED = $(bindir)/kmemleakd $(libdir)/libkmemleak.so $(includedir)/kmemleak.h \
	$(pkgconfigdir)/kmemleak.pc $(SYSTEMDUNITDIR)/kmemleakd.service $(TMPFILESDIR)/kmemleak.conf \
	$(docdir)/examples/override-kmemleak.conf

.PHONY: install install-only uninstall demo test-service service-files

# Lines for `make help` (the integrator may call this from help).
.PHONY: help-service
help-service:
	@echo "make install       build, then install under PREFIX=$(PREFIX) (DESTDIR, SYSTEMDUNITDIR honoured)"
	@echo "make install-only  install the already-built files without building"
	@echo "make uninstall     remove exactly what install put (same PREFIX/DESTDIR)"
	@echo "make demo          as root: build, start kmemleakd + kmemleak-test, scan, compare the reports"
	@echo "make test-service  unit, install tree, pkg-config, sd_notify and demo tests"

# The files with placeholders, substituted for this PREFIX (regenerated on every install: cheap).
service-files:
	@mkdir -p $(SERVICE_GEN)/examples
	$(SERVICE_SUBST) systemd/kmemleakd.service > $(SERVICE_GEN)/kmemleakd.service
	$(SERVICE_SUBST) systemd/kmemleak.conf > $(SERVICE_GEN)/kmemleak.conf
	$(SERVICE_SUBST) systemd/examples/override-kmemleak.conf > $(SERVICE_GEN)/examples/override-kmemleak.conf
	$(SERVICE_SUBST) pkgconfig/kmemleak.pc.in > $(SERVICE_GEN)/kmemleak.pc

install: build
	$(MAKE) --no-print-directory install-only

install-only: service-files
	@for f in $(KMEMLEAKD_BIN) $(LIBKMEMLEAK_SO) $(KMEMLEAK_HEADER); do \
	  [ -f "$$f" ] || { echo "install: $$f is missing (run make build)" >&2; exit 1; }; done
	install -D -m 0755 $(KMEMLEAKD_BIN) $(DESTDIR)$(bindir)/kmemleakd
	install -D -m 0644 $(LIBKMEMLEAK_SO) $(DESTDIR)$(libdir)/libkmemleak.so
	install -D -m 0644 $(KMEMLEAK_HEADER) $(DESTDIR)$(includedir)/kmemleak.h
	install -D -m 0644 $(SERVICE_GEN)/kmemleak.pc $(DESTDIR)$(pkgconfigdir)/kmemleak.pc
	install -D -m 0644 $(SERVICE_GEN)/kmemleakd.service $(DESTDIR)$(SYSTEMDUNITDIR)/kmemleakd.service
	install -D -m 0644 $(SERVICE_GEN)/kmemleak.conf $(DESTDIR)$(TMPFILESDIR)/kmemleak.conf
	install -D -m 0644 $(SERVICE_GEN)/examples/override-kmemleak.conf $(DESTDIR)$(docdir)/examples/override-kmemleak.conf
	@# On the live system only: linker cache, /run/kmemleak now (not only at the next boot), unit reload.
	@if [ -z "$(DESTDIR)" ]; then \
	  if command -v ldconfig >/dev/null; then ldconfig || true; fi; \
	  if command -v systemd-tmpfiles >/dev/null; then systemd-tmpfiles --create $(TMPFILESDIR)/kmemleak.conf || true; fi; \
	  if [ -d /run/systemd/system ]; then systemctl daemon-reload || true; fi; \
	fi

# Leaves /run/kmemleak alone: running clients may still use it (it disappears at the next boot).
uninstall:
	rm -f $(addprefix $(DESTDIR),$(SERVICE_INSTALLED))
	@rmdir $(DESTDIR)$(docdir)/examples $(DESTDIR)$(docdir) 2>/dev/null || true
	@if [ -z "$(DESTDIR)" ]; then \
	  if command -v ldconfig >/dev/null; then ldconfig || true; fi; \
	  if [ -d /run/systemd/system ]; then systemctl daemon-reload || true; fi; \
	fi

demo:
	bash scripts/demo.sh

test-service:
	bash Tests/ServiceTests/run.sh
# END service section

# BEGIN pprof section (the pprof view's generated code)
# Regenerates Sources/KmemleakPprof/Generated/profile.pb.swift from the committed .proto; never run by
# build or test (the generated file is committed). Needs protoc (Debian protobuf-compiler) and
# swift-protobuf 1.39.0's plugin: `swift build -c release --product protoc-gen-swift` in its checkout.
PROTOC_GEN_SWIFT ?= $(or $(shell command -v protoc-gen-swift 2>/dev/null),/tmp/swift-protobuf/.build/release/protoc-gen-swift)
.PHONY: pprof-proto
pprof-proto:
	protoc --plugin=protoc-gen-swift=$(PROTOC_GEN_SWIFT) --swift_opt=Visibility=Internal \
	  --proto_path=Sources/KmemleakPprof/proto --swift_out=Sources/KmemleakPprof/Generated \
	  Sources/KmemleakPprof/proto/profile.proto
# END pprof section
