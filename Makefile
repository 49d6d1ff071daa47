# kmemleak for user space. `make help` lists the targets.
SHELL := /bin/bash
SWIFT ?= swift
CC ?= cc
PREFIX ?= /usr/local
DESTDIR ?=
BUILD := .build/release
SWIFT_FLAGS ?=

.PHONY: help deps build shim test clean bench

help:
	@echo "make deps    install the Debian packages the project needs (idempotent)"
	@echo "make build   build kmemleakd, libkmemleak.so and kmemleak-test (release)"
	@echo "make test    build everything and run the test suite"
	@echo "make bench   run the benchmarks (figures go to BENCHMARKS.md by hand)"

DEB_PACKAGES := libfuse3-dev fuse3 libunwind-dev pkg-config make gcc valgrind heaptrack liblsan0 systemd
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
SHIM_SRC := Sources/libkmemleak/kmemleak.c
SHIM_HDRS := Sources/libkmemleak/include/kmemleak.h Sources/CKmemleakABI/include/kmemleak_abi.h
SHIM_SO := $(BUILD)/libkmemleak.so
KMLTEST := $(BUILD)/kmemleak-test
FIXTURE_DIR := .build/fixtures
FIXTURE_SRCS := $(wildcard Tests/fixtures/*.c)
FIXTURES := $(patsubst Tests/fixtures/%.c,$(FIXTURE_DIR)/%,$(FIXTURE_SRCS))
PROG_CFLAGS := -std=gnu11 -O2 -g -Wall -Wextra -Wno-unused-parameter -pthread $(SHIM_INC)
BENCH_DIR := .build/bench
LSAN_SO ?= /usr/lib/x86_64-linux-gnu/liblsan.so.0

.PHONY: shim shim-dirs shim-selftest bench-shim
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

$(FIXTURE_DIR)/%: Tests/fixtures/%.c Tests/fixtures/common.h $(SHIM_HDRS) | shim-dirs
	$(SHIM_CC) $(PROG_CFLAGS) -o $@ $<

# shell-level checks: same output with and without the shim, no Swift runtime in the .so
shim-selftest: shim
	Tests/fixtures/selftest.sh $(SHIM_SO) $(KMLTEST) $(FIXTURE_DIR)

# allocation-overhead benchmark (not a test): plain vs shim vs LeakSanitizer (+ heaptrack, valgrind)
bench-shim: shim
	$(SHIM_CC) -std=gnu11 -O2 -g -o $(BENCH_DIR)/churn Benchmarks/ShimOverhead/churn.c
	Benchmarks/ShimOverhead/run.sh $(BENCH_DIR)/churn $(SHIM_SO) $(LSAN_SO)
# END shim section

build: shim
	$(SWIFT) build -c release --static-swift-stdlib $(SWIFT_FLAGS)

test: shim
	$(SWIFT) build --build-tests $(SWIFT_FLAGS)
	$(SWIFT) test --skip-build $(SWIFT_FLAGS)

clean:
	rm -rf .build

# BEGIN service section (install, uninstall, demo)
# END service section
