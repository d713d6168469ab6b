# `make demo`: set up and pretrain on the built-in digits, then probe. `make test`: set up and run the tests.
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed-stamp
DEMO_DIR ?= runs/demo

.PHONY: setup demo test bench clean

setup: $(STAMP)

$(STAMP): pyproject.toml constraints.txt
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --disable-pip-version-check -c constraints.txt -e ".[dev]"
	touch $(STAMP)

demo: setup
	rm -rf $(DEMO_DIR)
	$(BIN)/vmim pretrain --config configs/demo/digits.yaml output_dir=$(DEMO_DIR)
	$(BIN)/vmim probe $(DEMO_DIR)
	@echo "TensorBoard: $(BIN)/tensorboard --logdir $(DEMO_DIR)/tb"

test: setup
	$(BIN)/ruff check vmim tests tools
	$(BIN)/python -m pytest -n 2 --durations=15

bench: setup
	$(BIN)/python tools/bench_pretrain.py --config configs/demo/digits.yaml

clean:
	rm -rf $(VENV) runs .pytest_cache
