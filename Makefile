# ZStack 1.2: build the offline installer, install it on this host, test, benchmark.
# Every target is a thin call to cargo or a script.

VERSION ?= 1.2.0
ZSTD_LEVEL ?= 19
CARGO ?= cargo
BIN := build/zstack-installer-$(VERSION).bin

.PHONY: all bin install test test-unit test-integration bench clean

all: bin

## make bin [VERSION=x.y.z]: build build/zstack-installer-<version>.bin in release mode
bin:
	$(CARGO) build --release --locked -p zstack -p zstack-installer
	$(CARGO) build --profile unpacker --locked -p zstack-unpack
	mkdir -p build
	target/release/zstack-bin-builder --version $(VERSION) --level $(ZSTD_LEVEL) \
		--zstack target/release/zstack --unpacker target/unpacker/zstack-unpack \
		--templates templates --migrations payload/migrations --header scripts/header.sh \
		--out $(BIN)

## make install: install the runtime packages, build the .bin, install and start the stack (as root)
install: bin
	bash scripts/install-test-packages.sh runtime
	bash $(BIN)

## make test: every tier (unit; then, as root, integration and end-to-end)
test: test-unit test-integration

test-unit:
	$(CARGO) test --locked --workspace --exclude zstack-tests

test-integration:
	$(MAKE) bin VERSION=1.0.0
	$(MAKE) bin VERSION=1.1.0
	$(MAKE) bin VERSION=1.2.0
	# a next patch release, to upgrade to with VMs running
	$(MAKE) bin VERSION=1.2.1
	$(CARGO) test --locked -p zstack-tests -- --include-ignored --test-threads=1

## make bench: speed and size figures (printed)
bench:
	$(MAKE) bin VERSION=1.1.0
	$(MAKE) bin VERSION=1.2.0
	bash scripts/bench-installer.sh
	bash scripts/bench-backup.sh
	bash scripts/bench-upgrade.sh
	bash scripts/bench-scale.sh
	bash scripts/bench-metadata.sh
	bash scripts/bench-eip.sh
	bash scripts/bench-join.sh
	bash scripts/bench-dashboard.sh
	bash scripts/bench-cloud-guest.sh

clean:
	$(CARGO) clean
	rm -rf build
