# husk: stable entry points. Logic lives in the scripts they call.
#   make            build everything (workspace, guest kernel, guest rootfs)
#   make test       the whole test suite, as CI runs it (installs what it needs)
#   make fuzz       every fuzz target for FUZZ_SECS (120) each, kept corpus (tests/fuzz.sh)
#   make soak       SOAK_SECS (3600) of pod churn with leak checks, in the nested test host
#   make bench      benchmarks; BENCH lines on stdout and target/bench.json
#   make demo       the main job: husk's guest in a microVM (nested test host where needed)
#   make install    binaries, kernel, rootfs and config under $(PREFIX)
#   make kernel     guest kernel -> target/guest/{vmlinux,bzImage} (cached by config hash)
#   make rootfs     guest initramfs -> target/guest/rootfs.cpio
#   make nested CMD='...'   run a command where real KVM is (nested test host, or directly)
#   make check      husk-vmm check: what this host can do
#   make vmm-release  the shipped vmm: static, size-optimized -> $(VMM_RELEASE)

PREFIX ?= /usr/local
VIRTIOFSD ?= $(shell command -v virtiofsd || echo $(HOME)/.cargo/bin/virtiofsd)
CMD ?= true
# The vmm as shipped and benchmarked: static, size-optimized (profile `vmm` in Cargo.toml).
VMM_RELEASE := target/x86_64-unknown-linux-gnu/vmm/husk-vmm

.PHONY: all build deps test fuzz soak bench demo install kernel rootfs nested check fmt clippy vmm-release

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

fuzz:
	tests/fuzz.sh

# catalogue cases 48 and 50 (tests/RELIABILITY.md): an hour of churn, leak checks at the end
SOAK_SECS ?= 3600
soak: build kernel rootfs
	HUSK_CASE26_ITERATIONS=10000 cargo test -q -p husk-agent --test catalogue case_26
	HUSK_SOAK_SECS=$(SOAK_SECS) HUSK_NESTED_TIMEOUT=$$(( $(SOAK_SECS) + 1800 )) tests/nested/host.sh -- tests/vm/soak.sh

vmm-release:
	CARGO_TARGET_X86_64_UNKNOWN_LINUX_GNU_RUSTFLAGS="-C target-feature=+crt-static" \
	  cargo build --profile vmm --target x86_64-unknown-linux-gnu -p husk-vmm

bench: build kernel rootfs vmm-release
	cargo build --release -p containerd-shim-husk-v2
	HUSK_VMM=$(CURDIR)/$(VMM_RELEASE) tests/bench/run.sh

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

install: kernel rootfs vmm-release
	cargo build --release --workspace
	install -d $(DESTDIR)$(PREFIX)/bin $(DESTDIR)$(PREFIX)/share/husk
	install -m 755 $(VMM_RELEASE) target/release/containerd-shim-husk-v2 target/release/husk $(DESTDIR)$(PREFIX)/bin/
	install -m 755 target/release/husk-agent $(DESTDIR)$(PREFIX)/bin/
	install -m 644 target/guest/vmlinux target/guest/bzImage target/guest/rootfs.cpio $(DESTDIR)$(PREFIX)/share/husk/
	install -d $(DESTDIR)/etc/husk
	@# an existing config is the admin's: never overwritten
	[ -f $(DESTDIR)/etc/husk/config.toml ] || printf '%s\n' \
	  '# husk runtime config: every key has a default (see shim/src/config.rs)' \
	  'kernel = "$(PREFIX)/share/husk/vmlinux"' \
	  'rootfs = "$(PREFIX)/share/husk/rootfs.cpio"' \
	  'vmm = "$(PREFIX)/bin/husk-vmm"' \
	  'virtiofsd = "$(VIRTIOFSD)"' \
	  '# Pods start from a snapshot of a booted VM (a template), made by the first pod of each' \
	  '# VM shape; templates hold guest RAM, so keep template_dir on a tmpfs.' \
	  '# vm_template = true' \
	  '# template_dir = "/run/husk/.templates"' \
	  '# max_templates = 8' > $(DESTDIR)/etc/husk/config.toml
	@echo "installed to $(DESTDIR)$(PREFIX) and $(DESTDIR)/etc/husk/config.toml; add to containerd's config.toml:"
	@echo '  [plugins."io.containerd.grpc.v1.cri".containerd.runtimes.husk]'
	@echo '    runtime_type = "io.containerd.husk.v2"'
