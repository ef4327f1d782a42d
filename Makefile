# fedcomp: `make run` runs the default simulation, `make test` runs the test suite, `make docs`
# builds the documentation site. All create .venv on first use and reinstall only when
# pyproject.toml changes.

PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
PYTEST_ARGS ?=

.PHONY: run test test-fast bench lint docs clean

$(BIN)/python:
	@test -d /usr/share/datasets/fashion-mnist || { command -v apt-get >/dev/null && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq dataset-fashion-mnist >/dev/null 2>&1; } || echo "dataset-fashion-mnist not installed (needs apt-get as root); only dataset=fashion-mnist needs it"
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip setuptools wheel

$(VENV)/.installed-run: pyproject.toml | $(BIN)/python
	$(BIN)/pip install --quiet -e .
	touch $@

# dev + deepcabac: nncodec compiles its C++ once (2-3 minutes) and pins numpy<2.
$(VENV)/.installed-test: pyproject.toml | $(BIN)/python
	$(BIN)/pip install --quiet -e '.[dev,deepcabac]'
	touch $@ $(VENV)/.installed-run

$(VENV)/.installed-docs: pyproject.toml | $(BIN)/python
	$(BIN)/pip install --quiet -e '.[docs]'
	touch $@

run: $(VENV)/.installed-run
	$(BIN)/fedcomp run

test: $(VENV)/.installed-test
	$(BIN)/python -m pytest $(PYTEST_ARGS)

test-fast: $(VENV)/.installed-test
	$(BIN)/python -m pytest -m "not slow" $(PYTEST_ARGS)

bench: $(VENV)/.installed-test
	$(BIN)/python benchmarks/codec_bench.py
	$(BIN)/python benchmarks/overhead.py
	$(BIN)/python benchmarks/fantastic4_bench.py

lint: $(VENV)/.installed-test
	$(BIN)/ruff check fedcomp strategies clients benchmarks tests
	$(BIN)/lint-imports

# the site in site/; --strict turns every warning (a broken link or anchor, a page left out) into a failure
docs: $(VENV)/.installed-docs
	$(BIN)/python -m mkdocs build --strict

clean:
	rm -rf $(VENV) runs site .pytest_cache .hypothesis
