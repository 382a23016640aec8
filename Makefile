# upgrade: build, test, benchmark. CI runs `make ci` (through .ci/run): lint, the README's
# `make test`, then the optimized build.
SWIFT ?= swift
# Debian packages the build, the tests and the benchmarks need. CI starts from a machine with
# only the toolchain, so `deps` installs them (apt-get update, then apt-get install -y).
DEB_PACKAGES := pkg-config libxxhash-dev libzstd-dev xxhash zstd rsync time strace openssl nginx-light curl iproute2 hey systemd man-db libcap2-bin libsqlite3-dev sqlite3 postgresql chromium
# What `make bench` needs beyond that: pip fetches the numpy and scipy wheels it upgrades between.
BENCH_PACKAGES := python3 python3-pip
# Every build checks that a target imports only the targets it declares (issue 19).
SWIFT_BUILD_FLAGS := --explicit-target-dependency-import-check error
SUDO := $(shell [ "$$(id -u)" = 0 ] || echo sudo)
BENCH_DIR ?= $(CURDIR)/bench-data

PREFIX ?= /usr/local
MANUAL := .build/plugins/GenerateManual/outputs/upgrade/upgrade.1

.PHONY: all deps bench-deps build release test test-crash demo bench ci lint clean install install-files install-check

all: build

deps:
	@missing=$$(for p in $(DEB_PACKAGES); do dpkg-query -W -f='$${Status}\n' $$p 2>/dev/null | grep -q 'install ok installed' || echo $$p; done); \
	if [ -n "$$missing" ]; then \
		echo "installing Debian packages:" $$missing; \
		$(SUDO) apt-get update && DEBIAN_FRONTEND=noninteractive $(SUDO) apt-get install -y $$missing; \
	fi

bench-deps:
	@$(MAKE) --no-print-directory deps DEB_PACKAGES="$(BENCH_PACKAGES)"

build: deps
	$(SWIFT) build $(SWIFT_BUILD_FLAGS)

# The optimized build (what ships and what `make bench` measures). Not in `make test`: it takes
# minutes more; CI runs it through `make ci`.
release: deps
	$(SWIFT) build -c release $(SWIFT_BUILD_FLAGS)

# The README's test command. Builds the binary and the tests, then runs every suite.
test: deps
	$(SWIFT) build --build-tests $(SWIFT_BUILD_FLAGS)
	$(SWIFT) test --skip-build

# The long crash sweep: 300 SIGKILLed applies (the default suite runs 30).
test-crash: deps
	$(SWIFT) build --build-tests $(SWIFT_BUILD_FLAGS)
	UPGRADE_CRASH_RUNS=300 $(SWIFT) test --skip-build --filter CrashTests

# The README's first command: the main job end to end on the example trees.
demo: build
	./Examples/demo.sh "$$($(SWIFT) build --show-bin-path)/upgrade"

# Speed and memory against xxhsum and rsync on generated data (release build, not part of `test`).
bench: release bench-deps
	"$$($(SWIFT) build -c release --show-bin-path)/upgrade-bench" --data "$(BENCH_DIR)"

# What .ci/run runs on a fresh clone: formatting first (seconds), the README's test command, and
# the release build, so a change that breaks any of them never lands.
ci: lint test release install-check

# The optimized binary, its man page (ArgumentParser's generate-manual plugin) and shell
# completions under $(DESTDIR)$(PREFIX).
install: release
	$(SWIFT) package generate-manual --configuration release
	$(MAKE) install-files BIN="$$($(SWIFT) build -c release --show-bin-path)/upgrade" MAN="$(MANUAL)"

# Installs BIN (and MAN when given) without building: `make install` calls it, and so does a
# test with the debug binary.
install-files:
	@test -x "$(BIN)" || { echo "install-files: BIN=$(BIN) is not an executable"; exit 2; }
	install -D -m 0755 "$(BIN)" "$(DESTDIR)$(PREFIX)/bin/upgrade"
	if [ -n "$(MAN)" ]; then install -D -m 0644 "$(MAN)" "$(DESTDIR)$(PREFIX)/share/man/man1/upgrade.1"; fi
	mkdir -p "$(DESTDIR)$(PREFIX)/share/bash-completion/completions" "$(DESTDIR)$(PREFIX)/share/zsh/site-functions" \
		"$(DESTDIR)$(PREFIX)/share/fish/vendor_completions.d"
	"$(BIN)" --generate-completion-script bash > "$(DESTDIR)$(PREFIX)/share/bash-completion/completions/upgrade"
	"$(BIN)" --generate-completion-script zsh > "$(DESTDIR)$(PREFIX)/share/zsh/site-functions/_upgrade"
	"$(BIN)" --generate-completion-script fish > "$(DESTDIR)$(PREFIX)/share/fish/vendor_completions.d/upgrade.fish"

# CI: `make install` into a scratch directory; the man page renders and names every command.
install-check:
	@dest=$$(mktemp -d); \
	$(MAKE) install DESTDIR="$$dest" PREFIX=/usr && \
	"$$dest/usr/bin/upgrade" --version && \
	man -l "$$dest/usr/share/man/man1/upgrade.1" | grep -q "Bring a root to the latest release" && \
	bash -n "$$dest/usr/share/bash-completion/completions/upgrade" && \
	echo "install-check: binary, man page and completions in $$dest/usr" && rm -rf "$$dest"

lint: deps
	$(SWIFT) format lint --strict --recursive Sources Tests

clean:
	rm -rf .build "$(BENCH_DIR)"
