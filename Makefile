# kmemleak for user space. `make help` lists the targets.
SHELL := /bin/bash
SWIFT ?= swift
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

DEB_PACKAGES := libfuse3-dev fuse3 libunwind-dev pkg-config make gcc valgrind heaptrack liblsan0 systemd
deps:
	@missing=$$(for p in $(DEB_PACKAGES); do dpkg-query -W -f='$${Status}\n' $$p 2>/dev/null | grep -q '^install ok installed' || echo $$p; done); \
	if [ -n "$$missing" ]; then \
	  echo "installing:$$missing"; \
	  apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq $$missing; \
	else echo "all Debian packages present"; fi

# ---- the C parts (shim + sample client): plain C, no Swift runtime ---------------------------
# BEGIN shim section (libkmemleak.so, kmemleak-test, test fixtures)
shim:
# END shim section

# BEGIN clients section (test and benchmark clients of the daemon)
CLIENTS := .build/clients/pointer-churn .build/clients/scan-client .build/clients/stack-holder
clients: $(CLIENTS)
.build/clients/pointer-churn: Tests/clients/pointer-churn.c
	@mkdir -p $(@D)
	$(CC) -O2 -g -Wall -Wextra -pthread -o $@ $<
.build/clients/stack-holder: Tests/clients/stack-holder.c
	@mkdir -p $(@D)
	$(CC) -O2 -g -Wall -Wextra -pthread -o $@ $<
.build/clients/scan-client: Benchmarks/ScanVsLSan/scan-client.c
	@mkdir -p $(@D)
	$(CC) -O2 -g -Wall -Wextra -o $@ $<
# END clients section

build: shim
	$(SWIFT) build -c release --static-swift-stdlib $(SWIFT_FLAGS)

test: shim clients
	$(SWIFT) build --build-tests $(SWIFT_FLAGS)
	$(SWIFT) test --skip-build $(SWIFT_FLAGS)

clean:
	rm -rf .build

# BEGIN service section (install, uninstall, demo)
# END service section
