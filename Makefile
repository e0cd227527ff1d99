# picortex — build, install, test, demo, bench.
#   make demo     the whole system end to end in a throwaway systemd (as root)
#   make test     rustfmt + clippy, unit tests, the Linq client compatibility test, and integration tests in a
#                 throwaway systemd (as root)
#   make build    PREFIX=… (the helper has picortex-run's path built in, so build with the
#                 PREFIX you install to); as your user, never as root
#   make install  DESTDIR=… PREFIX=… (default PREFIX=/usr): copies what `make build` made, never
#                 builds; units point at PREFIX; D-Bus and polkit files go where the daemons read
#                 them whatever PREFIX is; then run the commands of README "Installing"
#   make uninstall  the same PREFIX/DESTDIR; leaves /etc/picortex and all data
#   make deb      build/picortex_<version>_<arch>.deb (PREFIX=/usr; dpkg-deb, no other tool)
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
CATALOGDIR  := $(PREFIX)/lib/systemd/catalog
JOURNALDDIR := $(PREFIX)/lib/systemd/journald@picortex-turns.conf.d
MANDIR      := $(PREFIX)/share/man
DOCDIR      := $(PREFIX)/share/doc/picortex
# The system bus activates services from $(PREFIX)/share/dbus-1/system-services for /usr and
# /usr/local alike, but reads bus policy only from /usr/share/dbus-1/system.d and
# /etc/dbus-1/system.d; polkitd reads actions only from /usr/share/polkit-1/actions and rules
# from /usr/share/polkit-1/rules.d or /etc/polkit-1/rules.d.
DBUSSERVICEDIR := $(PREFIX)/share/dbus-1/system-services
ifeq ($(PREFIX),/usr)
DBUSPOLICYDIR  := /usr/share/dbus-1/system.d
POLKITRULESDIR := /usr/share/polkit-1/rules.d
else
DBUSPOLICYDIR  := $(SYSCONFDIR)/dbus-1/system.d
POLKITRULESDIR := $(SYSCONFDIR)/polkit-1/rules.d
endif
POLKITACTIONSDIR := /usr/share/polkit-1/actions
BASHCOMPDIR := $(PREFIX)/share/bash-completion/completions
ZSHCOMPDIR  := $(PREFIX)/share/zsh/vendor-completions
FISHCOMPDIR := $(PREFIX)/share/fish/vendor_completions.d
GENDIR      := build/gen

TARGETDIR   := target/$(if $(filter dev,$(PROFILE)),debug,$(PROFILE))
BINS        := picortexd picortex-provision picortex-run picortex-egress picortexctl
STAGE       := build/stage
VERSION     := $(shell sed -n 's/^version = "\(.*\)"/\1/p' Cargo.toml | head -1)
DEBARCH     := $(shell dpkg --print-architecture 2>/dev/null || echo amd64)
DEB         := build/picortex_$(VERSION)_$(DEBARCH).deb

export PICORTEX_RUN_BIN := $(LIBEXECDIR)/picortex-run

# The units name /usr/bin and /usr/libexec/picortex; installed, they name BINDIR and LIBEXECDIR.
SUBST := sed -e 's|/usr/bin/picortexd|$(BINDIR)/picortexd|g' -e 's|/usr/libexec/picortex/|$(LIBEXECDIR)/|g' \
             -e 's|/usr/share/doc/picortex/|$(DOCDIR)/|g'
UNITS := picortexd.socket picortexd.service picortex-provision.service picortex-chats-fs.service \
         var-lib-picortex-chats.mount picortex.slice picortex-chat.slice \
         picortex-egress.socket picortex-egress.service

.PHONY: all build install uninstall deb stage test unit-test compat-test integration-test demo bench fuzz deps lint clean

all: build

build:
	$(CARGO) build --profile $(PROFILE) --locked $(addprefix -p ,$(BINS))
	# picortexctl's man page and completions, generated from its clap definition.
	mkdir -p $(GENDIR)
	$(TARGETDIR)/picortexctl generate man $(GENDIR)
	$(TARGETDIR)/picortexctl generate completions bash > $(GENDIR)/picortexctl.bash
	$(TARGETDIR)/picortexctl generate completions zsh  > $(GENDIR)/_picortexctl
	$(TARGETDIR)/picortexctl generate completions fish > $(GENDIR)/picortexctl.fish

install:
	@for b in $(BINS); do [ -x $(TARGETDIR)/$$b ] || { echo "make install: no $(TARGETDIR)/$$b; run 'make build PREFIX=$(PREFIX)' first (as your user)" >&2; exit 1; }; done
	@grep -qaF '$(LIBEXECDIR)/picortex-run' $(TARGETDIR)/picortex-provision || { echo "make install: $(TARGETDIR)/picortex-provision was built for another PREFIX; run 'make build PREFIX=$(PREFIX)'" >&2; exit 1; }
	install -Dm755 $(TARGETDIR)/picortexd            $(DESTDIR)$(BINDIR)/picortexd
	install -Dm755 $(TARGETDIR)/picortexctl          $(DESTDIR)$(BINDIR)/picortexctl
	install -Dm755 $(TARGETDIR)/picortex-provision   $(DESTDIR)$(LIBEXECDIR)/picortex-provision
	install -Dm755 $(TARGETDIR)/picortex-run         $(DESTDIR)$(LIBEXECDIR)/picortex-run
	install -Dm755 $(TARGETDIR)/picortex-egress      $(DESTDIR)$(LIBEXECDIR)/picortex-egress
	install -Dm755 dist/picortex-chats-fs            $(DESTDIR)$(LIBEXECDIR)/picortex-chats-fs
	install -dm755 $(DESTDIR)$(UNITDIR)
	for u in $(UNITS); do $(SUBST) units/$$u > $(DESTDIR)$(UNITDIR)/$$u && chmod 644 $(DESTDIR)$(UNITDIR)/$$u; done
	install -Dm644 units/org.picortex.Provision1.service $(DESTDIR)$(DBUSSERVICEDIR)/org.picortex.Provision1.service
	install -Dm644 units/org.picortex.Provision1.conf    $(DESTDIR)$(DBUSPOLICYDIR)/org.picortex.Provision1.conf
	install -Dm644 units/org.picortex.Gateway1.conf      $(DESTDIR)$(DBUSPOLICYDIR)/org.picortex.Gateway1.conf
	install -Dm644 units/sysusers-picortex.conf      $(DESTDIR)$(SYSUSERSDIR)/picortex.conf
	install -Dm644 units/tmpfiles-picortex.conf      $(DESTDIR)$(TMPFILESDIR)/picortex.conf
	$(SUBST) polkit/org.picortex.provision.policy > polkit.tmp && install -Dm644 polkit.tmp $(DESTDIR)$(POLKITACTIONSDIR)/org.picortex.provision.policy && rm -f polkit.tmp
	install -Dm644 polkit/org.picortex.gateway.policy $(DESTDIR)$(POLKITACTIONSDIR)/org.picortex.gateway.policy
	install -Dm644 polkit/50-picortex.rules          $(DESTDIR)$(POLKITRULESDIR)/50-picortex.rules
	$(SUBST) dist/picortex.catalog > catalog.tmp && install -Dm644 catalog.tmp $(DESTDIR)$(CATALOGDIR)/picortex.catalog && rm -f catalog.tmp
	install -Dm644 dist/journald@picortex-turns.conf $(DESTDIR)$(JOURNALDDIR)/picortex.conf
	install -Dm644 dist/picortexd.8                  $(DESTDIR)$(MANDIR)/man8/picortexd.8
	install -Dm644 dist/picortexd.toml               $(DESTDIR)$(DOCDIR)/picortexd.toml.example
	install -Dm644 README.md                         $(DESTDIR)$(DOCDIR)/README.md
	@[ -f $(GENDIR)/picortexctl.1 ] || { echo "make install: no $(GENDIR)/picortexctl.1; run 'make build' first" >&2; exit 1; }
	install -Dm644 $(GENDIR)/picortexctl.1           $(DESTDIR)$(MANDIR)/man1/picortexctl.1
	install -Dm644 $(GENDIR)/picortexctl.bash        $(DESTDIR)$(BASHCOMPDIR)/picortexctl
	install -Dm644 $(GENDIR)/_picortexctl            $(DESTDIR)$(ZSHCOMPDIR)/_picortexctl
	install -Dm644 $(GENDIR)/picortexctl.fish        $(DESTDIR)$(FISHCOMPDIR)/picortexctl.fish
	@if [ ! -e $(DESTDIR)$(SYSCONFDIR)/picortex/picortexd.toml ]; then \
	  install -Dm644 dist/picortexd.toml $(DESTDIR)$(SYSCONFDIR)/picortex/picortexd.toml; fi
	install -dm700 $(DESTDIR)$(SYSCONFDIR)/picortex/credentials

# What `make install` put there with the same PREFIX, except /etc/picortex (configuration and
# credentials) and the data in /var/lib (chat homes, the log): remove those by hand if meant.
uninstall:
	rm -f $(DESTDIR)$(BINDIR)/picortexd $(DESTDIR)$(BINDIR)/picortexctl
	rm -rf $(DESTDIR)$(LIBEXECDIR)
	for u in $(UNITS); do rm -f $(DESTDIR)$(UNITDIR)/$$u; done
	rm -f $(DESTDIR)$(DBUSSERVICEDIR)/org.picortex.Provision1.service \
	      $(DESTDIR)$(DBUSPOLICYDIR)/org.picortex.Provision1.conf \
	      $(DESTDIR)$(DBUSPOLICYDIR)/org.picortex.Gateway1.conf \
	      $(DESTDIR)$(POLKITACTIONSDIR)/org.picortex.gateway.policy \
	      $(DESTDIR)$(MANDIR)/man1/picortexctl.1 $(DESTDIR)$(BASHCOMPDIR)/picortexctl \
	      $(DESTDIR)$(ZSHCOMPDIR)/_picortexctl $(DESTDIR)$(FISHCOMPDIR)/picortexctl.fish \
	      $(DESTDIR)$(SYSUSERSDIR)/picortex.conf $(DESTDIR)$(TMPFILESDIR)/picortex.conf \
	      $(DESTDIR)$(POLKITACTIONSDIR)/org.picortex.provision.policy \
	      $(DESTDIR)$(POLKITRULESDIR)/50-picortex.rules \
	      $(DESTDIR)$(CATALOGDIR)/picortex.catalog $(DESTDIR)$(MANDIR)/man8/picortexd.8 \
	      $(DESTDIR)$(JOURNALDDIR)/picortex.conf
	-rmdir $(DESTDIR)$(JOURNALDDIR)
	rm -rf $(DESTDIR)$(DOCDIR)

# A Debian package of `make install PREFIX=/usr` (debian/ holds its control file and scripts).
deb:
	$(MAKE) build PREFIX=/usr
	rm -rf build/deb && mkdir -p build/deb
	$(MAKE) install PREFIX=/usr DESTDIR=$(CURDIR)/build/deb
	install -Dm644 dist/picortexd.toml build/deb/etc/picortex/picortexd.toml
	mkdir -p build/deb/DEBIAN
	sed -e 's/@VERSION@/$(VERSION)/' -e 's/@ARCH@/$(DEBARCH)/' \
	    -e "s/@SIZE@/$$(du -sk build/deb | cut -f1)/" debian/control > build/deb/DEBIAN/control
	install -m644 debian/conffiles build/deb/DEBIAN/conffiles
	install -m755 debian/postinst debian/prerm debian/postrm build/deb/DEBIAN/
	dpkg-deb --root-owner-group -Zxz --build build/deb $(DEB)
	@echo "built $(DEB)"

# The build as the throwaway systemd sees it: `make install` into $(STAGE), plus the test
# stand-ins (Linq simulator, stand-in agent, Messages API stand-in), the pinned real Claude Code
# CLI (build/claude-cli, see tests/harness/install-claude-cli.sh) and their configuration.
stage:
	tests/harness/install-claude-cli.sh
	rm -rf $(STAGE)
	$(MAKE) build PREFIX=/usr
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
	$(MAKE) deb PROFILE=dev
	PICORTEX_STAGE=$(CURDIR)/$(STAGE) $(CARGO) nextest run -p picortex-integration --locked --no-fail-fast

test: deps lint unit-test compat-test integration-test

demo: deps
	$(MAKE) stage PROFILE=release
	tests/demo.sh $(CURDIR)/$(STAGE)

# Its own stage, so that `make test` (a dev stage) meanwhile cannot swap the binaries under the
# machines the bench boots later (the ingest-on-disk and real-CLI phases).
BENCH_STAGE := build/stage-bench
bench: deps
	$(MAKE) stage PROFILE=release STAGE=$(BENCH_STAGE)
	tests/bench/run.sh $(CURDIR)/$(BENCH_STAGE)

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
