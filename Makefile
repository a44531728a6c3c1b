# Entry points: `make run` (local Kafka + one worker) and `make test` (the whole suite).
SHELL := /bin/bash
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
PORT ?= 6066
KAFKA := scripts/kafka-local

.PHONY: help setup tools test-tools test-setup fresh-check run down test bench chaos faults k8s-e2e k8s-smoke k8s-down clean

help:
	@echo "make run     start a local Kafka (one broker) and a kchat worker on port $(PORT)"
	@echo "make test    install everything and run the test suite against real Kafka"
	@echo "make down    stop the local Kafka started by make run"
	@echo "make fresh-check  the two commands above on a bare Debian 12 (mmdebstrap, chroot; root; ~15 min)"
	@echo "make bench   run the benchmarks (prints figures; never fails on timing)"
	@echo "make chaos   the tutorial's chaos test, automated: 4 brokers, one SIGKILLed every 20 s (~5 min)"
	@echo "make faults  the fault suite: kills, pauses, partitions, slow network, disk stall (root; <= 30 min;"
	@echo "             FAULTS_ARGS=--quick: three of them, part of make test)"
	@echo "make k8s-e2e the tutorial on a one-node Kubernetes built here: Part 1, Part 2, a rolling update"
	@echo "             (~20 min, +20 the first time; K8S_KEEP=1 leaves the cluster up; make k8s-down removes it;"
	@echo "             K8S_E2E_ARGS=-x stops at the first failure; pytest tests in k8s/tests/)"

# Debian keeps nft, iptables, losetup ... in /usr/sbin, which a non-root PATH lacks. Go fetches the toolchain
# a module asks for (Debian's go.env says local).
export PATH := $(PATH):/usr/local/sbin:/usr/sbin:/sbin
export GOTOOLCHAIN := auto

# Python's venv, Java 17+ and Maven run the service; the tests add openssl, the fault suite's ip, nft, iptables,
# nsenter, losetup, mkfs.ext4, fsfreeze, and Go. Debian's packages where the machine lacks them
# (scripts/install-tools names each missing tool; not root: which packages to install).
tools:
	@scripts/install-tools run

test-tools:
	@scripts/install-tools test

$(VENV)/.installed: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q -e '.[test]'
	@touch $@

setup: tools $(VENV)/.installed
	@$(KAFKA) fetch >/dev/null

run: setup
	@$(KAFKA) status >/dev/null 2>&1 || $(KAFKA) up
	@echo
	@echo "kchat: worker on http://127.0.0.1:$(PORT) (Ctrl-C stops it; 'make down' stops Kafka)"
	@echo "  post:    curl -s -XPOST -H 'Content-Type: application/json' -d '{\"user\":\"alice\",\"text\":\"hi\"}' http://127.0.0.1:$(PORT)/api/rooms/lobby/messages"
	@echo "  listen:  curl -N http://127.0.0.1:$(PORT)/api/rooms/lobby/events"
	@echo "  chat:    $(VENV)/bin/kchat-cli chat --user alice"
	@echo "  counts:  curl -s http://127.0.0.1:$(PORT)/stats/users"
	@echo
	KCHAT_BROKER=kafka://$$($(KAFKA) bootstrap) KCHAT_REPLICATION_FACTOR=1 KCHAT_DATADIR=.kafka-local/kchat-data \
	  $(VENV)/bin/faust -A kchat_faust worker -l info --web-port $(PORT)

down:
	@$(KAFKA) down

# Everything `make test` needs before its first test: make fresh-check runs this on a bare Debian.
test-setup: setup test-tools
	@scripts/install-kustomize >/dev/null
	@scripts/install-chromium

# As root, the local Kubernetes and its images (tests/test_k8s_local.py, run last) are built in the background at
# the lowest priority while the other tests run: the first time that is ~20 minutes of building.
# The slowest tests are listed at the end, to keep the whole under 40 minutes.
test: test-setup
	@mkdir -p test-artifacts
	@if [ "$$(id -u)" = 0 ]; then \
	  echo "building the local Kubernetes and its images in the background (log test-artifacts/k8s-prefetch.log)"; \
	  nice -n 19 scripts/k8s-local prefetch > test-artifacts/k8s-prefetch.log 2>&1 & fi
	$(PY) -m pytest -ra --durations=15

# The README's two commands on a bare Debian 12 built with mmdebstrap (root; cached base image, ~15 min):
# one line per step, `fresh-check: N passed, M failed`; FRESH_FULL=1 runs the whole make test in it.
fresh-check:
	@scripts/install-tools fresh
	@scripts/fresh-check

$(VENV)/.bench-installed: $(VENV)/.installed
	$(PY) -m pip install -q -e '.[test,bench]'
	@touch $@

# Figures, a JSON file and a latency CDF plot under bench/results/ (about 10 minutes);
# BENCH_ARGS=--quick for a 3-minute smoke. bench/kafka_up.py times the local Kafka's start.
bench: setup test-tools $(VENV)/.bench-installed
	$(PY) bench/run.py $(BENCH_ARGS)

chaos: setup
	$(PY) bench/chaos.py $(CHAOS_ARGS)

# Network namespaces, nft, loop disks: needs root. A table, and JSON under test-artifacts/.
faults: setup test-tools
	$(PY) bench/faults.py $(FAULTS_ARGS)

# A one-node Kubernetes built here (scripts/k8s-local), the images built here, k8s/overlays/local applied and
# the tutorial checked step by step: the pytest tests of k8s/tests/ (not in make test's collection, which is
# tests/); test-artifacts/k8s-e2e.json. The cluster is removed at the end unless K8S_KEEP=1.
# K8S_E2E_ARGS: pytest's and k8s/tests/conftest.py's options (-x, --posts N, --rate R, --deadline S, ...).
k8s-e2e: test-setup
	$(PY) -m pytest k8s/tests -v -ra --tb=short $(K8S_E2E_ARGS)

# The short run that `make test` includes (tests/test_k8s_local.py): up, images, apply, Ready, one round trip.
k8s-smoke: test-setup
	$(PY) -m pytest k8s/tests --smoke -v -ra --tb=short $(K8S_E2E_ARGS)

k8s-down:
	@scripts/k8s-local down

clean:
	rm -rf $(VENV) .kafka-local .pytest_cache
