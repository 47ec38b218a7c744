# The two commands: `make demo` and `make test`. Both create .venv when missing.
PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed

.PHONY: demo test bench clean data

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

# Optional: the full Fashion-MNIST (60,000 / 10,000) from Debian's dataset-fashion-mnist package.
# Without it srrlab uses its embedded 5,000 / 1,000 subset. Nothing depends on this target.
FASHION_DIR := /usr/share/datasets/fashion-mnist
FASHION_STEMS := train-images-idx3-ubyte train-labels-idx1-ubyte t10k-images-idx3-ubyte t10k-labels-idx1-ubyte

data:
	@missing=0; for f in $(FASHION_STEMS); do [ -f $(FASHION_DIR)/$$f.gz ] || [ -f $(FASHION_DIR)/$$f ] || missing=1; done; \
	if [ $$missing = 1 ]; then \
		if ! command -v apt-get >/dev/null 2>&1; then \
			echo "make data: apt-get not found (not Debian/Ubuntu). Download the four files from"; \
			echo "  https://github.com/zalandoresearch/fashion-mnist and pass --data-dir (or set SRRLAB_DATA)."; \
			exit 1; \
		elif [ "$$(id -u)" != 0 ]; then \
			echo "make data: installing dataset-fashion-mnist needs root; run 'sudo make data'"; \
			echo "  (or 'sudo apt-get update && sudo apt-get install -y dataset-fashion-mnist')."; \
			exit 1; \
		fi; \
		apt-get update && apt-get install -y dataset-fashion-mnist || exit 1; \
	fi; \
	echo "Fashion-MNIST is in $(FASHION_DIR) (srrlab reads it there when no --data-dir / SRRLAB_DATA is set):"; \
	ls -l $(FASHION_DIR)

clean:
	rm -rf $(VENV) build src/*.egg-info .pytest_cache
