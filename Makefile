# s2s2 — every target that needs the virtual environment depends on it, so a fresh clone needs
# no separate set-up step. One torch/OpenMP thread per process: oversubscription on small
# machines slows steps by 50-80x.
PYTHON ?= python3
VENV   := .venv
PY     := $(VENV)/bin/python
S2S2   := $(VENV)/bin/s2s2
STAMP  := $(VENV)/.installed
export OMP_NUM_THREADS ?= 1
export MKL_NUM_THREADS ?= 1
export HF_HUB_OFFLINE ?= 1
export TOKENIZERS_PARALLELISM ?= false
export PYTHONUNBUFFERED = 1

.PHONY: install test generate train bench bench-quick data clean help

help:
	@echo "make train     run the whole pipeline on the embedded default (installs, prepares data, stage one, stage two)"
	@echo "make generate  stage one only: tiny generator, ControlNet fine-tune, stack into runs/default/stack.zarr"
	@echo "make test      the test suite"
	@echo "make bench     benchmarks into bench/results.json and BENCHMARKS.md (BENCH_QUICK=1 for a short run)"

install: $(STAMP)

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet torch==2.14.1 torchvision==0.29.1
	$(PY) -m pip install --quiet -e '.[test]'
	touch $(STAMP)

test: $(STAMP)
	$(PY) -m pytest -q

data: $(STAMP)
	$(S2S2) data prepare --config configs/default.yaml

generate: $(STAMP)
	$(PY) -m s2s2.stages.make_generate --config configs/default.yaml

train: $(STAMP)
	$(PY) -m s2s2.stages.make_train --config configs/default.yaml

bench: $(STAMP)
	$(PY) -m bench.run_all

bench-quick: $(STAMP)
	BENCH_QUICK=1 $(PY) -m bench.run_all

clean:
	rm -rf runs .pytest_cache
