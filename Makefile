# Everything a fresh machine needs: Python >= 3.11, pip and make.
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed

.PHONY: demo test test-quick bench clean

$(STAMP): pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q -e ".[test]"
	touch $(STAMP)

demo: $(STAMP)
	$(VENV)/bin/lazyreg demo -o lazyreg-demo-output --overwrite

test: $(STAMP)
	$(PY) -m pytest -n 2 --dist worksteal --durations=15

test-quick: $(STAMP)
	$(PY) -m pytest -n 2 --dist worksteal -m "not slow"

bench: $(STAMP)
	$(PY) benchmarks/bench_apply.py

clean:
	rm -rf $(VENV) build *.egg-info .pytest_cache
