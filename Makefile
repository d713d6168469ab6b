# `make demo`: set up and pretrain on the built-in digits, then probe. `make test`: set up and run the tests.
# `make demo-video`: pretrain on built-in motion clips, fine-tune with 10 % of the labels vs from scratch.
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed-stamp
DEMO_DIR ?= runs/demo
DEMO_VIDEO_DIR ?= runs/demo_video

.PHONY: setup demo demo-video test bench clean

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

# Pretrain on the digits motion clips (no labels), fine-tune with 10 % of the labels from that checkpoint and from
# scratch, test both (2 clips x 1 crop per video) and print the two accuracies.
demo-video: setup
	rm -rf $(DEMO_VIDEO_DIR)
	$(BIN)/vmim pretrain --config configs/demo/motion_pretrain.yaml output_dir=$(DEMO_VIDEO_DIR)/pretrain
	$(BIN)/vmim finetune --config configs/demo/motion_finetune.yaml init=$(DEMO_VIDEO_DIR)/pretrain \
		output_dir=$(DEMO_VIDEO_DIR)/from_pretrained
	$(BIN)/vmim finetune --config configs/demo/motion_finetune.yaml init= output_dir=$(DEMO_VIDEO_DIR)/from_scratch
	@pre=$$($(BIN)/vmim eval $(DEMO_VIDEO_DIR)/from_pretrained | tail -1); \
	scratch=$$($(BIN)/vmim eval $(DEMO_VIDEO_DIR)/from_scratch | tail -1); \
	echo "motion task, 10% of the labels: from pretrained $$pre | from scratch $$scratch"

test: setup
	$(BIN)/ruff check vmim tests tools
	$(BIN)/python -m pytest -n 2 --durations=15

bench: setup
	$(BIN)/python tools/bench_pretrain.py --config configs/demo/digits.yaml

clean:
	rm -rf $(VENV) runs .pytest_cache
