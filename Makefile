# picortex — build, install, test, demo, bench.
#   make demo     the whole system end to end in a throwaway systemd (as root)
#   make test     rustfmt + clippy, unit tests, the Linq client compatibility test, and integration tests in a
#                 throwaway systemd (as root)
#   make install  DESTDIR=… PREFIX=… (default PREFIX=/usr)
#   make bench    benchmarks (as root); prints a table, BENCH lines, and writes build/bench.json
#   make fuzz     cargo-fuzz targets (nightly), FUZZ_SECONDS each (default 60); prints
#                 FUZZ <target> <executions> <crashes> lines, fails on a crash

PREFIX      ?= /usr
DESTDIR     ?=
SYSCONFDIR  ?= /etc
PROFILE     ?= release
CARGO       ?= cargo

BINDIR      := $(PREFIX)/bin
LIBEXECDIR  := $(PREFIX)/libexec/picortex
UNITDIR     := $(PREFIX)/lib/systemd/system
SYSUSERSDIR := $(PREFIX)/lib/sysusers.d
TMPFILESDIR := $(PREFIX)/lib/tmpfiles.d
DBUSDIR     := $(PREFIX)/share/dbus-1
POLKITDIR   := $(PREFIX)/share/polkit-1
DOCDIR      := $(PREFIX)/share/doc/picortex

TARGETDIR   := target/$(if $(filter dev,$(PROFILE)),debug,$(PROFILE))
BINS        := picortexd picortex-provision picortex-run
STAGE       := build/stage

export PICORTEX_RUN_BIN := $(LIBEXECDIR)/picortex-run

.PHONY: all build install stage test unit-test compat-test integration-test demo bench fuzz deps lint clean

all: build

build:
	$(CARGO) build --profile $(PROFILE) --locked $(addprefix -p ,$(BINS))

install: build
	install -Dm755 $(TARGETDIR)/picortexd            $(DESTDIR)$(BINDIR)/picortexd
	install -Dm755 $(TARGETDIR)/picortex-provision   $(DESTDIR)$(LIBEXECDIR)/picortex-provision
	install -Dm755 $(TARGETDIR)/picortex-run         $(DESTDIR)$(LIBEXECDIR)/picortex-run
	install -Dm755 dist/picortex-chats-fs            $(DESTDIR)$(LIBEXECDIR)/picortex-chats-fs
	install -Dm644 units/picortexd.socket            $(DESTDIR)$(UNITDIR)/picortexd.socket
	install -Dm644 units/picortexd.service           $(DESTDIR)$(UNITDIR)/picortexd.service
	install -Dm644 units/picortex-provision.service  $(DESTDIR)$(UNITDIR)/picortex-provision.service
	install -Dm644 units/picortex-chats-fs.service   $(DESTDIR)$(UNITDIR)/picortex-chats-fs.service
	install -Dm644 units/var-lib-picortex-chats.mount $(DESTDIR)$(UNITDIR)/var-lib-picortex-chats.mount
	install -Dm644 units/picortex.slice              $(DESTDIR)$(UNITDIR)/picortex.slice
	install -Dm644 units/picortex-chat.slice         $(DESTDIR)$(UNITDIR)/picortex-chat.slice
	install -Dm644 units/org.picortex.Provision1.service $(DESTDIR)$(DBUSDIR)/system-services/org.picortex.Provision1.service
	install -Dm644 units/org.picortex.Provision1.conf    $(DESTDIR)$(DBUSDIR)/system.d/org.picortex.Provision1.conf
	install -Dm644 units/sysusers-picortex.conf      $(DESTDIR)$(SYSUSERSDIR)/picortex.conf
	install -Dm644 units/tmpfiles-picortex.conf      $(DESTDIR)$(TMPFILESDIR)/picortex.conf
	install -Dm644 polkit/org.picortex.provision.policy $(DESTDIR)$(POLKITDIR)/actions/org.picortex.provision.policy
	install -Dm644 polkit/50-picortex.rules          $(DESTDIR)$(POLKITDIR)/rules.d/50-picortex.rules
	install -Dm644 dist/picortex.catalog             $(DESTDIR)$(PREFIX)/lib/systemd/catalog/picortex.catalog
	install -Dm644 dist/picortexd.toml               $(DESTDIR)$(DOCDIR)/picortexd.toml.example
	install -Dm644 README.md                         $(DESTDIR)$(DOCDIR)/README.md
	@if [ ! -e $(DESTDIR)$(SYSCONFDIR)/picortex/picortexd.toml ]; then \
	  install -Dm644 dist/picortexd.toml $(DESTDIR)$(SYSCONFDIR)/picortex/picortexd.toml; fi
	install -dm700 $(DESTDIR)$(SYSCONFDIR)/picortex/credentials

# The build as the throwaway systemd sees it: `make install` into $(STAGE), plus the test
# stand-ins (Linq simulator, stand-in agent) and their configuration.
stage:
	rm -rf $(STAGE)
	$(MAKE) install DESTDIR=$(CURDIR)/$(STAGE) PREFIX=/usr
	$(CARGO) build --profile $(PROFILE) --locked -p linq-sim -p claude-standin
	tests/harness/stage-extras.sh $(CURDIR)/$(STAGE) $(TARGETDIR)

deps:
	tests/harness/install-deps.sh

unit-test:
	$(CARGO) nextest run --workspace --exclude picortex-integration --locked

compat-test: deps
	$(CARGO) build --locked -p linq-sim
	tests/python/run.sh

integration-test: deps
	$(MAKE) stage PROFILE=dev
	PICORTEX_STAGE=$(CURDIR)/$(STAGE) $(CARGO) nextest run -p picortex-integration --locked --no-fail-fast

test: deps lint unit-test compat-test integration-test

demo: deps
	$(MAKE) stage PROFILE=release
	tests/demo.sh $(CURDIR)/$(STAGE)

bench: deps
	$(MAKE) stage PROFILE=release
	tests/bench/run.sh $(CURDIR)/$(STAGE)

# Each target runs on its corpus in fuzz/corpus/<target>; a crashing input lands in
# fuzz/artifacts/<target>/. Installs cargo-fuzz if it is missing (see fuzz/run.sh).
FUZZ_SECONDS ?= 60
fuzz:
	FUZZ_SECONDS=$(FUZZ_SECONDS) fuzz/run.sh

lint:
	@if $(CARGO) fmt --version >/dev/null 2>&1 && $(CARGO) clippy --version >/dev/null 2>&1; then \
	  $(CARGO) fmt --all -- --check && $(CARGO) clippy --workspace --all-targets --locked -- -D warnings; \
	else echo "lint: SKIPPED — this toolchain has no rustfmt/clippy component (rustup component add rustfmt clippy)"; fi

clean:
	rm -rf build
	$(CARGO) clean
