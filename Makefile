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

comma := ,

.PHONY: setup lock setup-latest test test-fast lint format preprocess convert evaluate run accuracy-ci bench bench-preprocess gpu-weights gpu-check clean

# Every package make setup installs, with its exact version and hashes (make lock writes it).
# The lock is for Linux x86_64 and CPython 3.11, the project's machines; torch is its CPU
# build (2.13.0+cpu). make setup passes pip no index or wheel folder: pip finds that wheel
# where its own configuration points, on the project's machines the folder /opt/wheels (the
# user's pip.conf and PIP_FIND_LINKS); elsewhere it needs PyTorch's CPU index, e.g.
# PIP_EXTRA_INDEX_URL=https://download.pytorch.org/whl/cpu make setup. FIND_LINKS is that
# folder for make lock, which resolves torch from it.
LOCK        ?= requirements.lock
EXTRAS      ?= dev,loadgen,bench
FIND_LINKS  ?= /opt/wheels
PIP_VERSION ?= 26.3
UV_VERSION  ?= 0.13.9

setup:
	python3 -m venv .venv
	.venv/bin/pip install --quiet pip==$(PIP_VERSION)
	.venv/bin/pip install --quiet --require-hashes --no-deps -r $(LOCK)
	# The project itself adds nothing: its dependencies all came from the lock above.
	.venv/bin/pip install --quiet --no-deps --no-build-isolation -e .
	.venv/bin/pip check

# Resolve the newest versions pyproject.toml allows into the lock (then run make test).
lock:
	.venv/bin/pip install --quiet uv==$(UV_VERSION)
	.venv/bin/uv pip compile pyproject.toml $(foreach e,$(subst $(comma), ,$(EXTRAS)),--extra $(e)) \
		--generate-hashes --python-version 3.11 --python-platform x86_64-manylinux_2_28 \
		--find-links $(FIND_LINKS) --upgrade --custom-compile-command 'make lock' -o $(LOCK)

# For a maintainer trying tomorrow's releases: the newest allowed versions, not the lock.
setup-latest:
	python3 -m venv .venv
	.venv/bin/pip install --quiet --upgrade pip
	# The CPU build of torch first: an unpinned torch would pull a multi-GB CUDA build.
	.venv/bin/pip install --quiet torch==2.13.0
	.venv/bin/pip install --quiet --upgrade --upgrade-strategy eager -e '.[$(EXTRAS)]'

# One test process per core (pytest-xdist): the suite is mostly single-threaded work.
test: lint
	$(PYTHON) -m pytest -q -n auto

# The quick loop while editing: lint, then every test not marked slow (a test is slow when
# it takes more than about 5 s); make test, and CI, still run everything.
test-fast: lint
	$(PYTHON) -m pytest -q -n auto -m "not slow"

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
