# make demo: set up and run the main job.  make test: set up and pass the whole suite.
# make check: the fast loop (lint, types, the tests that need no root, Docker or browser).
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
# Setup steps write their output here; the terminal shows it only when a step fails.
SETUP_LOG := build/setup.log
QUIETLY := tools/quietly $(SETUP_LOG)
export PIP_DISABLE_PIP_VERSION_CHECK := 1
OS_PACKAGES := gcc make dpkg-dev iproute2 iptables procps chromium openssh-server etcd-server etcd-client debootstrap fuse3 libfaketime redis-server redis-sentinel

.PHONY: venv native test check demo lint typecheck bench clean os-packages redis-libc

venv: $(STAMP) os-packages

$(STAMP): pyproject.toml
	@echo "setup: installing the project and its Python packages into $(VENV) (about a minute; output in $(SETUP_LOG))"
	@$(QUIETLY) $(PYTHON) -m venv $(VENV)
	@$(QUIETLY) $(BIN)/pip install --quiet --upgrade pip
	@$(QUIETLY) $(BIN)/pip install --quiet -e '.[dev]'
	@touch $(STAMP)

# OS packages the tests need; installed only when missing and we are root.
os-packages:
	@missing=""; for p in $(OS_PACKAGES); do dpkg -s $$p >/dev/null 2>&1 || missing="$$missing $$p"; done; \
	if [ -n "$$missing" ]; then \
		if [ "$$(id -u)" = 0 ]; then \
			echo "setup: installing OS packages with apt-get:$$missing (output in $(SETUP_LOG))"; \
			$(QUIETLY) apt-get update -qq && \
			DEBIAN_FRONTEND=noninteractive $(QUIETLY) apt-get install -y -qq $$missing; \
		else echo "missing OS packages (need root to install):$$missing"; fi; \
	fi

# Redis built with libc's malloc, for clock faults on the redis target (Debian's jemalloc
# build cannot start under libfaketime: tools/build_redis_libc says why). Rebuilt when
# Debian's redis-server changes version; built only as root, as the OS packages are.
REDIS_LIBC := /usr/local/bin/redis-server-libc

redis-libc: os-packages
	@v() { "$$1" --version 2>/dev/null | sed -n 's/.* v=\([^ ]*\).*/\1/p'; }; \
	if [ "$$(v $(REDIS_LIBC))" != "$$(v redis-server)" ]; then \
		if [ "$$(id -u)" = 0 ]; then \
			echo "setup: building Debian's Redis with libc malloc as $(REDIS_LIBC), for clock faults (output in $(SETUP_LOG))"; \
			$(QUIETLY) tools/build_redis_libc $(REDIS_LIBC); \
		else echo "missing $(REDIS_LIBC) (need root to build it: make redis-libc)"; fi; \
	fi

# The hot modules compiled with mypyc (raftkv/native.py says which and how they are
# used), rebuilt only when a source changed; if compiling fails, pure Python runs.
native: $(STAMP)
	@$(BIN)/python -c "import raftkv.native as n, checker.native as c, sys; \
		sys.exit(not (n.usable() and c.current(c.MANIFEST, c.ROOT)))" || { \
		echo "setup: compiling the hot modules with mypyc (output in $(SETUP_LOG))"; \
		$(QUIETLY) $(BIN)/python tools/build_native.py || echo "setup: compiling failed; pure Python runs"; }

# Neither needs the OS packages, so neither installs them.
lint: $(STAMP)
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .

typecheck: $(STAMP)
	$(BIN)/mypy

test: venv native redis-libc lint typecheck
	$(BIN)/pytest -q --durations=25

# The environment needs are the markers of tests/conftest.py; slow marks long simulations.
CHECK_TESTS := not root and not docker and not sshd and not chromium and not etcd and not redis and not redis_libc and not slow

check: native lint typecheck
	$(BIN)/pytest -q -m "$(CHECK_TESTS)"

# A minute of partitions on Docker (the first run builds the node image, about two minutes):
# random halves, and the leader cut off from the rest, so a failover shows.
DEMO_NEMESIS := partition,partition-leader

demo: venv native
	@echo "demo: 60 s of partitions ($(DEMO_NEMESIS)) on a 3-node Docker cluster; the first run builds the node image"
	@$(BIN)/harness test --nemesis $(DEMO_NEMESIS) --time 60; rc=$$?; \
	case $$rc in 0|1|2) \
		echo "demo: the report is $$(readlink -f store/latest)/report.html;" \
			"to compare the read modes (stale reads, latency): $(BIN)/harness compare-reads";; \
	esac; exit $$rc

bench: venv
	$(BIN)/python bench/raftkv_bench.py

clean:
	rm -rf $(VENV) build *.egg-info .mypy_cache .pytest_cache .ruff_cache
