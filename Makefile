# loxi-cni: `make demo` (the main job) and `make test` (the whole suite) do all the set-up.
PYTHON      ?= /usr/bin/python3.11
PREFIX      ?= /opt/loxi-cni
VENV        ?= $(PREFIX)/venv
CNI_BIN_DIR ?= /opt/cni/bin
DEV_VENV    ?= .venv

.PHONY: all deps install dev lint lock reference-plugins test demo clean uninstall image
all: install

deps:
	@bash scripts/install-deps.sh

# The runtime environment: a venv of pinned dependencies plus the package, and the executable
# (shim/loxi-cni.c compiled with the venv's interpreter baked in; scripts/write-launcher.sh).
# requirements.lock pins (with hashes) what the plugin runs on and setuptools, its build
# backend, so nothing unhashed is fetched.
install: deps
	@test -x $(VENV)/bin/python3 || $(PYTHON) -m venv $(VENV)
	@$(VENV)/bin/pip install -q --disable-pip-version-check --require-hashes -r requirements.lock
	@$(VENV)/bin/pip install -q --disable-pip-version-check --no-deps --no-build-isolation \
		--force-reinstall .
	@mkdir -p $(CNI_BIN_DIR)
	@bash scripts/write-launcher.sh venv $(VENV) $(CNI_BIN_DIR)/loxi-cni
	@echo "installed $(CNI_BIN_DIR)/loxi-cni (environment $(VENV))"

dev: deps
	@test -x $(DEV_VENV)/bin/python3 || $(PYTHON) -m venv $(DEV_VENV)
	@$(DEV_VENV)/bin/pip install -q --disable-pip-version-check -r requirements-dev.lock
	@$(DEV_VENV)/bin/pip install -q --disable-pip-version-check --no-deps -e .

lint: dev
	$(DEV_VENV)/bin/ruff check loxicni tests
	$(DEV_VENV)/bin/mypy
	$(DEV_VENV)/bin/lint-imports

# requirements.lock from pyproject.toml: every version already pinned is kept (pass
# LOCK_ARGS=--upgrade-package=NAME to move one), each file's hash written beside it.
lock: dev
	CUSTOM_COMPILE_COMMAND="make lock" $(DEV_VENV)/bin/pip-compile -q --generate-hashes \
		--allow-unsafe --strip-extras --no-emit-find-links --build-deps-for=wheel \
		-o requirements.lock $(LOCK_ARGS) pyproject.toml

# The image the DaemonSet runs (scripts/build-image.sh): deploy/bundle.sh's tree FROM scratch,
# as a docker-archive for `ctr -n k8s.io images import` or `podman load`. No registry, base
# image or container engine needed; rebuilt only when its inputs change.
IMAGE_TAR ?= build/loxi-cni-image.tar
IMAGE_INPUTS := $(shell find loxicni shim -name '*.py' -o -name '*.c') pyproject.toml \
	requirements.lock deploy/bundle.sh deploy/daemonset.yaml scripts/write-launcher.sh \
	scripts/build-image.sh scripts/image-archive.py
image: $(IMAGE_TAR)
$(IMAGE_TAR): $(IMAGE_INPUTS)
	@bash scripts/install-deps.sh
	@OUT=$@ bash scripts/build-image.sh

reference-plugins:
	@bash scripts/reference-plugins.sh >/dev/null

# Everything but the Kubernetes end-to-end suite (`make e2e`): unit, property, integration
# (real netns), agent, and the real runtimes (containerd ctr + CRI, podman, cnitool).
test: install dev lint reference-plugins runtimes-deps
	LOXI_CNI_BIN=$(CNI_BIN_DIR)/loxi-cni \
	LOXI_REFERENCE_CNI_DIR=$$(bash scripts/reference-plugins.sh) \
	$(DEV_VENV)/bin/pytest -q tests --ignore=tests/k8s --ignore=tests/netpol

demo: install
	@bash scripts/demo.sh $(CNI_BIN_DIR)/loxi-cni

uninstall:
	rm -f $(CNI_BIN_DIR)/loxi-cni
	rm -rf $(PREFIX)

clean:
	rm -rf $(DEV_VENV) build *.egg-info .mypy_cache .ruff_cache .pytest_cache .hypothesis

# `make bench` runs the three benchmarks below.
# Speed against the reference bridge plugin (bench/bench.py --help): `make bench-cni`,
# `BENCH_ARGS=--quick`, `BENCH_ARGS="--cycles 1000"`, `BENCH_ARGS="--rss 500"`.
# The cross-node agent at cluster scale on the real API server (bench/cluster_bench.py --help):
# `make bench-cluster`, `CLUSTER_BENCH_ARGS="--nodes 5000 --modes vxlan"`.
# NetworkPolicy on a node at scale (bench/netpol_bench.py --help): `make bench-netpol`,
# `NETPOL_BENCH_ARGS="--pods 1000 --policies 200 --samples 100"` (the defaults).
.PHONY: bench bench-cni bench-cluster bench-netpol
bench: bench-cni bench-cluster bench-netpol

# The latency CDFs of a `make bench-cni` comparison are drawn here (the README shows this file).
BENCH_PLOT ?= bench/results/latency-cdf.png
bench-cni: install dev
	$(DEV_VENV)/bin/python bench/bench.py --plot $(BENCH_PLOT) $(BENCH_ARGS)

bench-cluster: install dev k8s-deps
	LOXI_CNI_BIN=$(CNI_BIN_DIR)/loxi-cni $(DEV_VENV)/bin/python bench/cluster_bench.py \
		$(CLUSTER_BENCH_ARGS)

bench-netpol: install dev k8s-deps
	LOXI_CNI_BIN=$(CNI_BIN_DIR)/loxi-cni $(DEV_VENV)/bin/python bench/netpol_bench.py \
		$(NETPOL_BENCH_ARGS)

# Real runtimes (containerd via ctr and CRI, podman, cnitool) driving the installed plugin.
.PHONY: runtimes-deps test-runtimes
runtimes-deps:
	@bash scripts/runtimes/install.sh

test-runtimes: install dev runtimes-deps
	LOXI_CNI_BIN=$(CNI_BIN_DIR)/loxi-cni $(DEV_VENV)/bin/pytest -q tests/runtimes

# The real Kubernetes of tests/k8s (etcd, kube-apiserver, kube-controller-manager,
# kube-scheduler, kubectl, kubelet), built from the Go module proxy into /var/cache/loxi-cni on first use (~10 min cold
# on 2 cores), then reused. LOXI_K8S_REQUIRED=1: a missing binary fails, never skips.
.PHONY: k8s-deps test-k8s
k8s-deps:
	@bash scripts/k8s/build.sh

test-k8s: dev image k8s-deps
	LOXI_K8S_REQUIRED=1 LOXI_CNI_IMAGE=$(IMAGE_TAR) $(DEV_VENV)/bin/pytest -q tests/k8s

# The NetworkPolicy oracle of tests/netpol (cyclonus's matcher with the API server's own
# defaulting, validation and selectors), built from the Go module proxy into
# /var/cache/loxi-cni/netpol-oracle-* on first use; its tests and the corpus need no cluster.
.PHONY: netpol-oracle test-netpol
netpol-oracle:
	@bash scripts/k8s/netpol-oracle.sh >/dev/null

test-netpol: dev netpol-oracle
	LOXI_K8S_REQUIRED=1 $(DEV_VENV)/bin/pytest -q tests/netpol

# The agent's Kubernetes mode end to end: the real control plane, deploy/'s manifests, pod
# sandboxes through containerd's CRI and direct execs, and a real kubelet running Pods on
# loxi-cni (tests/k8s), the image installed by deploy/'s DaemonSet (make image); the
# NetworkPolicy oracle and corpus (tests/netpol). A missing binary or tool fails, never skips.
.PHONY: e2e
e2e: install dev image k8s-deps netpol-oracle runtimes-deps
	LOXI_K8S_REQUIRED=1 LOXI_CNI_BIN=$(CNI_BIN_DIR)/loxi-cni LOXI_CNI_VENV=$(VENV) \
		LOXI_CNI_IMAGE=$(IMAGE_TAR) $(DEV_VENV)/bin/pytest -q tests/k8s tests/netpol

# The whole NetworkPolicy corpus (288 cases, ~66,000 probes; ~12 min here) on the simulated
# cluster against the oracle: `make e2e` runs a sample of 40 cases of it.
.PHONY: e2e-netpol
e2e-netpol: install dev k8s-deps netpol-oracle
	LOXI_K8S_REQUIRED=1 LOXI_NETPOL_CASES=0 LOXI_CNI_BIN=$(CNI_BIN_DIR)/loxi-cni \
		$(DEV_VENV)/bin/pytest -q tests/k8s/test_netpol_corpus.py

# The long chaos run (tests/chaos/run.py, README "Reliability"): concurrent runtimes while
# the agent is killed, the state fs fills up or turns read-only, netns vanish and the node
# reboots. `make chaos SEED=7 CALLS=5000`; make test runs a bounded one (tests/chaos).
SEED  ?= 1
CALLS ?= 3000
.PHONY: chaos
chaos: install dev
	LOXI_CNI_BIN=$(CNI_BIN_DIR)/loxi-cni $(DEV_VENV)/bin/python -m tests.chaos.run \
		--seed $(SEED) --calls $(CALLS)
