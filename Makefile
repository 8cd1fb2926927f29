# vipd: `make demo` runs the director on the bundled example, `make test` runs every test.
# Both install what they need on a fresh Debian machine (as root).

CARGO ?= cargo
PLUGIN_DIR ?= target/plugins
DEBIAN_PACKAGES = libpcap-dev clang libbpf-dev linux-libc-dev bpftool nginx-light wrk curl ethtool iproute2 iputils-ping iperf3 tcpdump prometheus \
	python3-venv keepalived bird2
# Commands some steps need, and the Debian package that gives each when the command is missing (a Node.js
# from elsewhere, e.g. NodeSource's, brings its own npm and conflicts with Debian's).
DEBIAN_COMMANDS = npm:npm
FUZZ_SECONDS ?= 600
# `make bench`: the peers vipd is compared with, and where the comparison's table goes.
BENCH_PACKAGES = haproxy iptables nftables libnginx-mod-stream python3
COMPARE_ARGS ?= --doc docs/benchmarks.md
# The flood test (legit new connections/s before, during and after a spoofed SYN flood): rates and contenders
# (vipd-x1: the SYN proxy on; vipd-x2: shedding off, to measure each defence on and off).
FLOOD_RATES ?= 30000 150000
FLOOD_CONTENDERS ?= dnat vipd vipd-x1 vipd-x2

.PHONY: all deps build plugins test demo bench lint fuzz clean-netns deb deb-tools deb-assets

all: build

deps:
	@missing=""; for p in $(DEBIAN_PACKAGES); do dpkg -s $$p >/dev/null 2>&1 || missing="$$missing $$p"; done; \
	for cp in $(DEBIAN_COMMANDS); do command -v $${cp%%:*} >/dev/null 2>&1 || missing="$$missing $${cp#*:}"; done; \
	if [ -n "$$missing" ]; then \
		echo "installing Debian packages:$$missing"; \
		apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq $$missing; \
	fi
	@rustup target list --installed | grep -qx wasm32-wasip2 || rustup target add wasm32-wasip2

build: deps
	$(CARGO) build --release -p vipd

plugins: deps
	plugins/build.sh $(PLUGIN_DIR) --testing
	examples/policies/python/build.sh $(PLUGIN_DIR)/examples/least-connections-py.wasm
	examples/policies/javascript/build.sh $(PLUGIN_DIR)/examples/least-connections-js.wasm

test: deps plugins deb-tools
	$(CARGO) test --workspace
	# The live tests again with established connections translated by XDP (docs/offload.md).
	VIPD_TEST_OFFLOAD=generic $(CARGO) test -p vipd --test live --test ipv6 --test sync --test ha
	VIPD_TEST_OFFLOAD=xdp $(CARGO) test -p vipd --test failure

demo: deps
	examples/demo.sh

# `make deb`: target/debian/vipd_VERSION-1_ARCH.deb (cargo-deb; DEB_PROFILE=dev packages the debug build, as
# the package test does). Installs cargo-deb and the tools that check the unit when missing.
DEB_PROFILE ?= release
DEB_PACKAGES = dpkg-dev systemd
deb-tools:
	@missing=""; for p in $(DEB_PACKAGES); do dpkg -s $$p >/dev/null 2>&1 || missing="$$missing $$p"; done; \
	if [ -n "$$missing" ]; then \
		echo "installing Debian packages for packaging:$$missing"; \
		apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq $$missing; \
	fi
	@$(CARGO) deb --version >/dev/null 2>&1 || $(CARGO) install cargo-deb --locked --version '^3'

deb-assets: deps plugins
	$(CARGO) build --profile $(DEB_PROFILE) -p vipd --bin vipd
	@bin=target/$(if $(filter dev,$(DEB_PROFILE)),debug,$(DEB_PROFILE))/vipd; \
	rm -rf target/deb-assets && mkdir -p target/deb-assets/completions && \
	$$bin man --out target/deb-assets/man && \
	$$bin completions bash >target/deb-assets/completions/vipd.bash && \
	$$bin completions zsh >target/deb-assets/completions/_vipd && \
	$$bin completions fish >target/deb-assets/completions/vipd.fish

deb: deb-tools deb-assets
	$(CARGO) deb -p vipd --no-build --profile $(DEB_PROFILE)

bench: deps plugins
	@missing=""; for p in $(BENCH_PACKAGES); do dpkg -s $$p >/dev/null 2>&1 || missing="$$missing $$p"; done; \
	if [ -n "$$missing" ]; then \
		echo "installing Debian packages for the comparison:$$missing"; \
		apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq $$missing; \
	fi
	$(CARGO) bench -p vipd
	$(CARGO) build --release -p vipd
	VIPD=target/release/vipd PLUGIN_DIR=$(PLUGIN_DIR) host/benches/compare/compare.sh $(COMPARE_ARGS)
	VIPD=target/release/vipd FLOOD_RATES="$(FLOOD_RATES)" X1='syn_proxy = true' X2='new_per_wakeup = 0' \
		host/benches/compare/compare.sh $(COMPARE_ARGS) $(FLOOD_CONTENDERS)

lint:
	$(CARGO) fmt --all -- --check
	$(CARGO) clippy --workspace --all-targets -- -D warnings

# cargo-fuzz needs nightly flags; RUSTC_BOOTSTRAP lets the stable toolchain accept them.
fuzz:
	@command -v cargo-fuzz >/dev/null || $(CARGO) install cargo-fuzz --locked
	cd host && RUSTC_BOOTSTRAP=1 $(CARGO) fuzz run packet -- -max_total_time=$(FUZZ_SECONDS)
