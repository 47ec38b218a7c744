# The two commands: `make demo` and `make test`. Both create .venv when missing.
PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed

.PHONY: demo test bench clean

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)

# torch is pinned and installed first: an unpinned torch would pull the CUDA build.
$(STAMP): $(BIN)/python pyproject.toml
	$(BIN)/python -m pip install -q --upgrade pip
	$(BIN)/python -m pip install -q torch==2.13.0
	$(BIN)/python -m pip install -q -e '.[dev]'
	touch $(STAMP)

demo: $(STAMP)
	$(BIN)/srrlab demo

test: $(STAMP)
	$(BIN)/python -m pytest -q

# The benchmark suite (~25 min here): benchmarks/results/<date>.json and <date>.md.
bench: $(STAMP)
	$(BIN)/python benchmarks/suite.py

clean:
	rm -rf $(VENV) build src/*.egg-info .pytest_cache
