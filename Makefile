# Two commands set everything up:  make demo   and   make test
PY ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
TEST_STAMP := $(VENV)/.installed-test

.PHONY: demo test lint bench clean

# Exits 1 under a Python older than the package's requires-python.
NEW_ENOUGH := import sys; sys.exit(sys.version_info < (3, 11))

$(BIN)/python:
	@$(PY) -c '$(NEW_ENOUGH)' 2>/dev/null || { v=$$($(PY) --version 2>&1) || v="not found"; \
	    echo "batchrunner needs Python 3.11 or later, and $(PY) is $$v: name one that is," \
	    "as in make $(or $(MAKECMDGOALS),demo) PY=python3.12" >&2; exit 1; }
	$(PY) -m venv $(VENV)

# A .venv made by an older Python (before the check above, or by hand) is not used.
VENV_CHECK = @$(BIN)/python -c '$(NEW_ENOUGH)' 2>/dev/null || { echo "$(VENV) was made with" \
	"$$($(BIN)/python --version 2>&1), and batchrunner needs Python 3.11 or later: make" \
	"clean, then make $(or $(MAKECMDGOALS),demo) PY=python3.12 (say)" >&2; exit 1; }

$(STAMP): pyproject.toml | $(BIN)/python
	$(VENV_CHECK)
	$(BIN)/pip install -q -e .
	touch $@

$(TEST_STAMP): pyproject.toml | $(BIN)/python
	$(VENV_CHECK)
	$(BIN)/pip install -q -e '.[test]'
	touch $@ $(STAMP)

demo: $(STAMP)
	$(BIN)/batchrunner run jobs/demo.toml

test: $(TEST_STAMP)
	$(BIN)/ruff check batchrunner tests benchmarks
	$(BIN)/mypy
	$(BIN)/python -m pytest -q

lint: $(TEST_STAMP)
	$(BIN)/ruff check .
	$(BIN)/mypy

clean:
	rm -rf $(VENV) out/
