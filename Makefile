# husk: stable entry points. Logic lives in the scripts they call.
#   make            build everything (workspace, guest kernel, guest rootfs)
#   make test       the whole test suite, as CI runs it (installs what it needs)
#   make bench      benchmarks; BENCH lines on stdout and target/bench.json
#   make demo       the main job: husk's guest in a microVM (nested test host where needed)
#   make install    binaries, kernel, rootfs and config under $(PREFIX)
#   make kernel     guest kernel -> target/guest/{vmlinux,bzImage} (cached by config hash)
#   make rootfs     guest initramfs -> target/guest/rootfs.cpio
#   make nested CMD='...'   run a command where real KVM is (nested test host, or directly)
#   make check      husk-vmm check: what this host can do

PREFIX ?= /usr/local
VIRTIOFSD ?= $(shell command -v virtiofsd || echo $(HOME)/.cargo/bin/virtiofsd)
CMD ?= true

.PHONY: all build deps test bench demo install kernel rootfs nested check fmt clippy

all: build kernel rootfs

deps:
	tests/deps.sh

build:
	cargo build --workspace

kernel:
	guest-kernel/build.sh

rootfs:
	rootfs/build.sh

test:
	tests/run.sh

bench: build kernel rootfs
	cargo build --release -p husk-vmm
	tests/bench/run.sh

demo: deps build kernel rootfs
	tests/demo.sh

nested:
	tests/nested/host.sh -- '$(CMD)'

check: build
	target/debug/husk-vmm check

fmt:
	cargo fmt --all

clippy:
	cargo clippy --workspace --all-targets -- -D warnings

install: kernel rootfs
	cargo build --release --workspace
	install -d $(DESTDIR)$(PREFIX)/bin $(DESTDIR)$(PREFIX)/share/husk
	install -m 755 target/release/husk-vmm target/release/containerd-shim-husk-v2 $(DESTDIR)$(PREFIX)/bin/
	install -m 755 target/release/husk-agent $(DESTDIR)$(PREFIX)/bin/
	install -m 644 target/guest/vmlinux target/guest/bzImage target/guest/rootfs.cpio $(DESTDIR)$(PREFIX)/share/husk/
	install -d $(DESTDIR)/etc/husk
	@# an existing config is the admin's: never overwritten
	[ -f $(DESTDIR)/etc/husk/config.toml ] || printf '%s\n' \
	  '# husk runtime config: every key has a default (see shim/src/config.rs)' \
	  'kernel = "$(PREFIX)/share/husk/vmlinux"' \
	  'rootfs = "$(PREFIX)/share/husk/rootfs.cpio"' \
	  'vmm = "$(PREFIX)/bin/husk-vmm"' \
	  'virtiofsd = "$(VIRTIOFSD)"' > $(DESTDIR)/etc/husk/config.toml
	@echo "installed to $(DESTDIR)$(PREFIX) and $(DESTDIR)/etc/husk/config.toml; add to containerd's config.toml:"
	@echo '  [plugins."io.containerd.grpc.v1.cri".containerd.runtimes.husk]'
	@echo '    runtime_type = "io.containerd.husk.v2"'
