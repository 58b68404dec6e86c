# sslcli developer commands. `make install` builds .venv; every other target installs first.
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
# torch is pinned here (not in pyproject) so this machine takes the wheels on its disk; other machines
# with another torch >= 2.4 can `pip install -e .` directly.
TORCH_PINS := torch==2.14.1 torchvision==0.29.1
DATA ?= ../shared/data/cifar10
RUN ?= runs/demo-$(shell date +%Y%m%d-%H%M%S)

.PHONY: install install-bench test test-gpu lint demo bench-demo bench-quickstart bench-distill bench-finetune bench-throughput bench-augment bench-methods bench-presets bench-gpu gpu-smoke gpu-carry clean

install: $(VENV)/.installed

$(VENV)/.installed: pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet $(TORCH_PINS)
	$(BIN)/pip install --quiet -e ".[dev]"
	touch $@

# The suite runs on TEST_WORKERS processes (pytest-xdist; auto = one per core), each with one torch thread: most
# tests are small models, subprocesses and file I/O that one thread per core keeps busier than two threads in one
# process. worksteal: the minute-long resume and torchrun tests do not end up queued behind each other.
TEST_WORKERS ?= auto
test: install
	OMP_NUM_THREADS=1 $(BIN)/pytest -q -m "not gpu" -n $(TEST_WORKERS) --dist worksteal

# On a machine with a CUDA GPU: every GPU test, GPU_WORKERS at a time (pytest-xdist), each stopped with its
# name and a traceback after 120 s (pytest-timeout); -v lists what ran. Under 3 minutes on one H200.
GPU_WORKERS ?= 4
test-gpu: install
	$(BIN)/pytest -v -m gpu -n $(GPU_WORKERS) --timeout 120 --durations 0

lint: install
	$(BIN)/ruff check sslcli tests bench

# The quickstart: pretrain on DATA (its train/ split), then probe on its test/ or val/ split.
# The quickstart for DEMO_BUDGET of pretraining (set-up, decoding and calibration included) on any CPU, then
# the probe with a class-balanced fifth of the train split as its bank (10,000 CIFAR-10 images: the protocol
# of bench-methods and of the presets' expected figures; about 70 s on 2 cores, against 200 s for all 50,000
# with a fresh decode cache): about 5 minutes in all, with or without native bf16.
# DEMO_PRECISION=fp32 shows the slow case on any CPU (auto: bf16 where the CPU has it natively).
DEMO_BUDGET ?= 3m30s
DEMO_LABEL_FRACTION ?= 0.2
DEMO_PRECISION ?= auto
demo: install
	$(BIN)/sslcli pretrain $(DATA) --preset quickstart --budget $(DEMO_BUDGET) --out $(RUN) --set train.precision=$(DEMO_PRECISION)
	$(BIN)/sslcli probe $(RUN)/encoder.safetensors --data $(DATA) --label-fraction $(DEMO_LABEL_FRACTION)

# The demo's recipe search: candidates (bench/demo.py) run as `make demo` runs them, fp32 and bf16, side by side
# (about 5 minutes per candidate and precision on 2 cores; CANDIDATES=a,b for some).
CANDIDATES ?=
bench-demo: install
	$(BIN)/python -m bench.demo --budget $(DEMO_BUDGET) $(if $(CANDIDATES),--candidates $(CANDIDATES))

bench-quickstart: install
	$(BIN)/python -m bench.quickstart --data $(DATA)

# Distillation: a quickstart-trained teacher, a distill-cpu student, the student's random init, all probed on
# CIFAR-10 (fixed epochs; 51 minutes on a busy 2-core machine). TEACHER=RUN/encoder.safetensors skips training one.
TEACHER ?=
bench-distill: install
	$(BIN)/python -m bench.distill --data $(DATA) $(if $(TEACHER),--teacher $(TEACHER))

# lightly is the reference of bench-throughput: a benchmark-only dependency (the `bench` extra).
install-bench: install
	$(BIN)/pip install --quiet -e ".[dev,bench]"

bench-throughput: install-bench
	$(BIN)/python -m bench.throughput

bench-augment: install
	$(BIN)/python -m bench.augment

# 10 % labels on Imagenette: fine-tuned from random init vs from SimCLR pretrained in the bench (~4 min on 2 cores with bf16, ~10 in fp32),
# then the SLA, SLA+SD and distillation rows on the same labels (about 40 min more; FINETUNE_ARGS=--no-extra-rows skips them).
FINETUNE_DATA ?= ../shared/data/imagenette
bench-finetune: install
	$(BIN)/python -m bench.finetune --data $(FINETUNE_DATA) $(FINETUNE_ARGS)

# Every method's CPU preset for the same budget (MINUTES each, 8 by default: about 10 min a method with its
# evaluation, ~4 h for all twenty methods and four recipes on 2 cores; METHODS=a,b for some).
MINUTES ?= 8
METHODS ?=
bench-methods: install
	$(BIN)/python -m bench.methods --minutes $(MINUTES) $(if $(METHODS),--methods $(METHODS))

# Every preset that carries an expected kNN top-1, run for its own schedule and checked against it
# (PRESETS=a,b for a subset; about 5 h for the 33 measured CPU presets on 2 cores).
PRESETS ?=
bench-presets: install
	$(BIN)/python -m bench.presets $(if $(PRESETS),--presets $(PRESETS))

# On a machine with a CUDA GPU: the steady-state throughput, then the time-to-quality run of the
# simclr-cifar10-fast preset for BUDGET and its probe (under 8 minutes with 5m on one H200). DATA may be a
# folder or an archive (DATA=cifar10.tgz); COMPILE=1 adds the train.compile=true throughput.
BUDGET ?= 5m
COMPILE ?= 0
bench-gpu: install-bench
	$(BIN)/python -m bench.gpu --data $(DATA) --budget $(BUDGET) $(if $(filter 1,$(COMPILE)),--compile)

# Every -cifar10 preset 30 steps on CUDA under train.debug_sync, then probed: one line per method with its img/s.
gpu-smoke: install
	$(BIN)/python -m bench.gpu_smoke --data $(DATA)

# For a lent GPU machine without network (Python 3.12, torch and timm, not pydantic nor lightly): the wheels it
# lacks (pydantic at this venv's versions) and DATA as an archive, into .device-data/ (git-ignored). Carry
# .device-data there and run `bash bench/gpu_session.sh` (the GPU tests, gpu-smoke and bench-gpu in one call).
GPU_PYTHON ?= 3.12
GPU_WHEELS = $(shell $(BIN)/python -c "import importlib.metadata as m; print(' '.join(f'{p}=={m.version(p)}' for p in ('pydantic', 'pydantic-core', 'annotated-types', 'typing-inspection', 'typing-extensions')))") lightly lightning-utilities
gpu-carry: install
	mkdir -p .device-data/whl
	$(BIN)/pip download --quiet --no-deps --only-binary=:all: --python-version $(GPU_PYTHON) \
	    --platform manylinux2014_x86_64 -d .device-data/whl $(GPU_WHEELS)
	tar czf .device-data/cifar10.tgz -C $(dir $(abspath $(DATA))) $(notdir $(abspath $(DATA)))

clean:
	rm -rf $(VENV) .pytest_cache .ruff_cache
