# Two commands for a new user: `make demo` and `make test` (both create .venv when needed).
PYTHON ?= python3.11
VENV   := .venv
PY     := $(VENV)/bin/python
PIP    := $(PY) -m pip

.PHONY: demo test lint clean

$(VENV)/.installed: pyproject.toml
	@command -v $(PYTHON) >/dev/null 2>&1 || { echo "need $(PYTHON) (set PYTHON=...)"; exit 2; }
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PIP) install -q torch==2.13.0
	$(PIP) install -q -e .
	touch $@

$(VENV)/.installed-test: $(VENV)/.installed
	$(PIP) install -q -e ".[test]"
	touch $@

demo: $(VENV)/.installed
	$(VENV)/bin/archlab reproduce --suite quick --out reports/quick

test: $(VENV)/.installed-test
	$(PY) -m ruff check .
	$(PY) -m pytest

clean:
	rm -rf $(VENV) runs reports .pytest_cache
