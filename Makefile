# upgrade: build, test, benchmark. `make test` is what CI runs (through .ci/run).
SWIFT ?= swift
# Debian packages the build, the tests and the benchmarks need. CI starts from a machine with
# only the toolchain, so `deps` installs them (apt-get update, then apt-get install -y).
DEB_PACKAGES := pkg-config libxxhash-dev libzstd-dev xxhash zstd rsync time strace openssl nginx-light curl iproute2
SUDO := $(shell [ "$$(id -u)" = 0 ] || echo sudo)
BENCH_DIR ?= $(CURDIR)/bench-data

.PHONY: all deps build test test-crash demo bench ci lint clean

all: build

deps:
	@missing=$$(for p in $(DEB_PACKAGES); do dpkg-query -W -f='$${Status}\n' $$p 2>/dev/null | grep -q 'install ok installed' || echo $$p; done); \
	if [ -n "$$missing" ]; then \
		echo "installing Debian packages:" $$missing; \
		$(SUDO) apt-get update && DEBIAN_FRONTEND=noninteractive $(SUDO) apt-get install -y $$missing; \
	fi

build: deps
	$(SWIFT) build

# The README's test command. Builds the binary and the tests, then runs every suite.
test: deps
	$(SWIFT) build --build-tests
	$(SWIFT) test --skip-build

# The long crash sweep: 300 SIGKILLed applies (the default suite runs 30).
test-crash: deps
	$(SWIFT) build --build-tests
	UPGRADE_CRASH_RUNS=300 $(SWIFT) test --skip-build --filter CrashTests

# The README's first command: the main job end to end on the example trees.
demo: build
	./Examples/demo.sh "$$($(SWIFT) build --show-bin-path)/upgrade"

# Speed and memory against xxhsum and rsync on generated data (release build, not part of `test`).
bench: deps
	$(SWIFT) build -c release
	"$$($(SWIFT) build -c release --show-bin-path)/upgrade-bench" --data "$(BENCH_DIR)"

ci: test

lint:
	$(SWIFT) format lint --strict --recursive Sources Tests

clean:
	rm -rf .build "$(BENCH_DIR)"
