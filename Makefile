# loxi-cni: `make demo` (the main job) and `make test` (the whole suite) do all the set-up.
PYTHON      ?= /usr/bin/python3.11
PREFIX      ?= /opt/loxi-cni
VENV        ?= $(PREFIX)/venv
CNI_BIN_DIR ?= /opt/cni/bin
DEV_VENV    ?= .venv

.PHONY: all deps install dev lint reference-plugins test demo clean uninstall
all: install

deps:
	@bash scripts/install-deps.sh

# The runtime environment: a venv of pinned dependencies plus the package, and the launcher.
install: deps
	@test -x $(VENV)/bin/python3 || $(PYTHON) -m venv $(VENV)
	@$(VENV)/bin/pip install -q --disable-pip-version-check -r requirements.lock
	@$(VENV)/bin/pip install -q --disable-pip-version-check --no-deps --force-reinstall .
	@mkdir -p $(CNI_BIN_DIR)
	@bash scripts/write-launcher.sh $(VENV) $(CNI_BIN_DIR)/loxi-cni
	@echo "installed $(CNI_BIN_DIR)/loxi-cni (environment $(VENV))"

dev: deps
	@test -x $(DEV_VENV)/bin/python3 || $(PYTHON) -m venv $(DEV_VENV)
	@$(DEV_VENV)/bin/pip install -q --disable-pip-version-check -r requirements-dev.lock
	@$(DEV_VENV)/bin/pip install -q --disable-pip-version-check --no-deps -e .

lint: dev
	$(DEV_VENV)/bin/ruff check loxicni tests
	$(DEV_VENV)/bin/mypy

reference-plugins:
	@bash scripts/reference-plugins.sh >/dev/null

test: install dev lint reference-plugins
	LOXI_CNI_BIN=$(CNI_BIN_DIR)/loxi-cni \
	LOXI_REFERENCE_CNI_DIR=$$(bash scripts/reference-plugins.sh) \
	$(DEV_VENV)/bin/pytest -q tests

demo: install
	@bash scripts/demo.sh $(CNI_BIN_DIR)/loxi-cni

uninstall:
	rm -f $(CNI_BIN_DIR)/loxi-cni
	rm -rf $(PREFIX)

clean:
	rm -rf $(DEV_VENV) build *.egg-info .mypy_cache .ruff_cache .pytest_cache .hypothesis

# Speed against the reference bridge plugin (bench/bench.py --help): `make bench`,
# `make bench BENCH_ARGS=--quick`, `BENCH_ARGS="--cycles 1000"`, `BENCH_ARGS="--rss 500"`.
.PHONY: bench
bench: install
	$$(test -x $(DEV_VENV)/bin/python && echo $(DEV_VENV)/bin/python || echo $(PYTHON)) \
		bench/bench.py $(BENCH_ARGS)
