# certkit — see README.md. `make demo` and `make test` are the two entry points.
GO       ?= go
BIN      := bin/certkit
OUT      ?= out
PKGS     := ./...
# Debian packages the tests use as independent peers: libiscsi's initiator
# tools (iscsi-ls, iscsi-perf, iscsi-test-cu) and tgtd (a reference target).
DEB_PKGS := libiscsi-bin tgt
DEB_BINS := /usr/bin/iscsi-ls /usr/sbin/tgtd
TEST_TIMEOUT ?= 20m

.PHONY: all build demo test bench deps fmt-check vet unit clean

all: build

build:
	$(GO) build -o $(BIN) ./cmd/certkit

# Runs the certification catalog against the embedded lab; the last line
# printed is the path of the submission bundle.
demo: build
	@mkdir -p $(OUT)
	./$(BIN) run --lab embedded --out $(OUT)

# Installs the Debian packages the tests need, when missing. Without root the
# tests that need them skip with a message naming the package.
deps:
	@missing=""; for b in $(DEB_BINS); do [ -x "$$b" ] || missing=1; done; \
	if [ -z "$$missing" ]; then exit 0; fi; \
	if [ "$$(id -u)" = 0 ]; then \
		echo "installing $(DEB_PKGS)"; \
		apt-get update -qq >/dev/null && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq $(DEB_PKGS) >/dev/null; \
	else \
		echo "note: not root, not installing $(DEB_PKGS); tests that need them will skip (run: sudo apt-get install -y $(DEB_PKGS))"; \
	fi

fmt-check:
	@out=$$(gofmt -l $$(git ls-files '*.go' 2>/dev/null || find . -name '*.go')); \
	if [ -n "$$out" ]; then echo "gofmt needed on:"; echo "$$out"; exit 1; fi

vet:
	$(GO) vet $(PKGS)

# Unit and integration tests, all with the race detector (every package has
# goroutines: sessions, proxies, observers).
unit:
	$(GO) test -race -timeout $(TEST_TIMEOUT) $(PKGS)

test: deps fmt-check vet build unit

# Benchmarks certkit's array against Debian's tgtd (iscsi-perf reads, certkit
# initiator writes, direct and through the fault proxy); ~5 min; the table
# and how to read it: targets/BENCH.md. Not part of `make test`.
BENCH_TIMEOUT ?= 30m
bench: deps
	$(GO) test -run '^$$' -bench . -timeout $(BENCH_TIMEOUT) ./targets/bench

clean:
	rm -rf bin $(OUT)
