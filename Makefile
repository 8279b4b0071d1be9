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
	@echo "make generate  stage one only: tiny generator, ControlNet fine-tune, stack into runs/default/stack.zarr (+ stack-val.zarr for the val masks)"
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

# Stage one on the default: each step skips what exists (data cache, tiny base, generator folder,
# finished shards), so a rerun is cheap; `s2s2 finetune --overwrite` / `s2s2 generate --overwrite` redo.
GEN_CONFIG  ?= configs/default.yaml
GEN_PREVIEW ?= runs/default/stack-preview.png
generate: $(STAMP)
	$(S2S2) data prepare --config $(GEN_CONFIG)
	$(S2S2) finetune --config $(GEN_CONFIG)
	$(S2S2) generate --config $(GEN_CONFIG)
	$(S2S2) stack inspect --config $(GEN_CONFIG) --preview $(GEN_PREVIEW)

# Stage two on the default: the U-Net baseline and S2S2 against the default stack, matched (same
# seed, data order, augmentation draws, init and steps: train.steps), trained two at a time (one
# torch thread each), each evaluated in-domain and on SPM T1/PD/T2, then one table. `make generate`
# runs first (each of its steps skips what exists). Runs are defined by steps; TRAIN_MAX_SECONDS is
# an optional wall-time cap per run, and a run it stops is flagged in summary.json and the table.
TRAIN_CONFIG      ?= configs/default.yaml
TRAIN_MAX_SECONDS ?=
TRAIN_JOBS        ?= 2
TRAIN_RUNS        := unet_baseline unet_s2s2
RUN_ARGS_unet_baseline := --set model.name=unet --set train.stack=false
RUN_ARGS_unet_s2s2     := --set model.name=unet --set train.stack=true

TRAIN_RUN_DIR      = $(or $(shell sed -n 's/^run_dir:[[:space:]]*\([^[:space:]#]*\).*/\1/p' $(TRAIN_CONFIG)),runs/default)

train: $(STAMP)
	$(MAKE) generate GEN_CONFIG=$(TRAIN_CONFIG)
	$(MAKE) -j$(TRAIN_JOBS) $(addprefix train-run-,$(TRAIN_RUNS))
	$(S2S2) report --config $(TRAIN_CONFIG) $(addprefix --run ,$(TRAIN_RUNS))
	@echo
	@echo "Segment a new scan with the model just trained (README: Segment new scans):"
	@echo "  $(S2S2) predict --model $(TRAIN_RUN_DIR)/train/$(lastword $(TRAIN_RUNS)) -i SCAN.nii.gz -o SCAN_mask.nii.gz"

train-run-%: $(STAMP)
	$(S2S2) train --config $(TRAIN_CONFIG) --name $* --overwrite $(if $(TRAIN_MAX_SECONDS),--max-seconds $(TRAIN_MAX_SECONDS)) $(RUN_ARGS_$*)
	$(S2S2) evaluate --config $(TRAIN_CONFIG) --name $* $(RUN_ARGS_$*)

bench: $(STAMP)
	$(PY) -m bench.run_all

bench-quick: $(STAMP)
	BENCH_QUICK=1 $(PY) -m bench.run_all

clean:
	rm -rf runs .pytest_cache
