# mlperf-port: every target runs the project's own Python entry points; nothing is
# implemented twice here.  Variables: MODEL, DATA_DIR, CHECKPOINT, WORK_DIR, DEVICE, LIMIT,
# BATCH_SIZE (default: by device, 32 on the CPU and 256 on CUDA).

PYTHON      ?= .venv/bin/python
MODEL       ?= resnet50
WORK_DIR    ?= work
DEVICE      ?= cpu
DATA_DIR    ?=
CHECKPOINT  ?=
LIMIT       ?=
BATCH_SIZE  ?=

# Optional flags, passed only when the variable is set.
RUN_FLAGS = --model $(MODEL) --work-dir $(WORK_DIR) --device $(DEVICE) \
	$(if $(BATCH_SIZE),--batch-size $(BATCH_SIZE)) \
	$(if $(DATA_DIR),--data-dir $(DATA_DIR)) \
	$(if $(CHECKPOINT),--checkpoint $(CHECKPOINT)) \
	$(if $(LIMIT),--limit $(LIMIT))

.PHONY: setup test lint format preprocess convert evaluate run accuracy-ci bench bench-preprocess gpu-weights gpu-check clean

setup:
	python3 -m venv .venv
	.venv/bin/pip install --quiet --upgrade pip
	# The CPU build of torch first: an unpinned torch would pull a multi-GB CUDA build.
	.venv/bin/pip install --quiet torch==2.13.0
	.venv/bin/pip install --quiet -e '.[dev,loadgen]'

test: lint
	$(PYTHON) -m pytest -q

lint:
	$(PYTHON) -m ruff check .
	$(PYTHON) -m ruff format --check .

format:
	$(PYTHON) -m ruff format .
	$(PYTHON) -m ruff check --fix .

# The three stages, each through the same runner as `python -m pipeline.run`.
preprocess:
	$(PYTHON) -m pipeline.run $(RUN_FLAGS) --stages preprocess

convert:
	$(PYTHON) -m pipeline.run $(RUN_FLAGS) --stages convert

evaluate:
	$(PYTHON) -m pipeline.run $(RUN_FLAGS) --stages evaluate

run:
	$(PYTHON) -m pipeline.run $(RUN_FLAGS)

# Fixture checkpoints + a generated labelled subset, whole pipeline, both models and
# backends; fails on any PyTorch/TF disagreement or a change from the committed results.
accuracy-ci:
	$(PYTHON) -m tests.accuracy_ci --work-dir $(WORK_DIR)/accuracy-ci

bench:
	$(PYTHON) -m benchmarks.bench_inference --json $(WORK_DIR)/bench/inference.json
	$(PYTHON) -m benchmarks.bench_preprocess --json $(WORK_DIR)/bench/preprocess.json

bench-preprocess:
	$(PYTHON) -m benchmarks.bench_preprocess --json $(WORK_DIR)/bench/preprocess.json

# The GPU check is for a GPU machine without TensorFlow: gpu-weights converts MobileNet
# here into the git-ignored gpu-weights/ for it to use; gpu-check runs the check itself
# (OUT: where gpu_check.json goes; on CUDA unless DEVICE is given: DEVICE=cpu rehearses).
gpu-weights:
	$(PYTHON) -m benchmarks.gpu_weights --out gpu-weights

OUT ?= $(WORK_DIR)/gpu-check-out
gpu-check:
	$(PYTHON) -m benchmarks.gpu_check --out $(OUT) $(if $(filter file,$(origin DEVICE)),,--device $(DEVICE))

clean:
	rm -rf $(WORK_DIR) .pytest_cache
