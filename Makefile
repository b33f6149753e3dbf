# Two commands set everything up:  make demo   and   make test
PY ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
TEST_STAMP := $(VENV)/.installed-test

.PHONY: demo test test-oldest lint clean

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

# The suite in two passes: the tests that keep the processor busy, in WORKERS processes at once
# (pytest-xdist), then the ones marked paced, which check a pace against the clock, one at a
# time (beside the others, their paces were slowed past what they allow; two at once, a
# split job's storm was once measured too late to split it). The second runs whatever the
# first gives; either failing fails the target. Three processes on CI's two cores: most of the
# first pass waits on its servers (318 s of CPU in 630 s with two), and with three it took
# 3:50-4:07 where two took 5:07-5:54, all 1,844 passing in each of 3 runs (four: 3:17, 1 run).
WORKERS ?= 3

test: $(TEST_STAMP)
	$(BIN)/ruff check batchrunner tests benchmarks
	$(BIN)/mypy
	@status=0; set -x; \
	$(BIN)/python -m pytest -q -n $(WORKERS) --dist worksteal -m "not paced" || status=$$?; \
	$(BIN)/python -m pytest -q -m paced || status=$$?; \
	exit $$status

# The oldest versions pyproject allows (.ci/oldest.txt pins each at its lower bound), under the
# oldest Python it allows, in a venv of their own: an API newer than a bound fails here.
OLDEST_PY ?= python3.11
OLDEST := .venv-oldest
OLDEST_STAMP := $(OLDEST)/.installed
OLDEST_TESTS ?=

$(OLDEST_STAMP): pyproject.toml .ci/oldest.txt
	@$(OLDEST_PY) -c 'import sys; sys.exit(sys.version_info[:2] != (3, 11))' 2>/dev/null || { \
	    echo "make test-oldest needs Python 3.11 (the oldest batchrunner allows, and the one the" \
	    "oldest pins have wheels for), and $(OLDEST_PY) is" \
	    "$$($(OLDEST_PY) --version 2>&1 || echo 'not found'): name one, as in make test-oldest" \
	    "OLDEST_PY=/usr/bin/python3.11" >&2; exit 1; }
	rm -rf $(OLDEST)
	$(OLDEST_PY) -m venv $(OLDEST)
	$(OLDEST)/bin/pip install -q -c .ci/oldest.txt -e '.[test]'
	touch $@

# The whole suite, or the files OLDEST_TESTS names (as .ci/run does), in the same two passes as
# make test. A pass with no test of its kind among the files (pytest's exit 5: .ci/run's have
# no paced test) is no failure; both without any is.
test-oldest: $(OLDEST_STAMP)
	@status=0; none=0; set -x; \
	$(OLDEST)/bin/python -m pytest -q -p no:cacheprovider -n $(WORKERS) --dist worksteal \
	    -m "not paced" $(OLDEST_TESTS) \
	    || { code=$$?; if [ $$code -eq 5 ]; then none=$$((none + 1)); else status=$$code; fi; }; \
	$(OLDEST)/bin/python -m pytest -q -p no:cacheprovider -m paced $(OLDEST_TESTS) \
	    || { code=$$?; if [ $$code -eq 5 ]; then none=$$((none + 1)); else status=$$code; fi; }; \
	[ $$none -lt 2 ] || status=5; \
	exit $$status

lint: $(TEST_STAMP)
	$(BIN)/ruff check .
	$(BIN)/mypy

clean:
	rm -rf $(VENV) $(OLDEST) out/
