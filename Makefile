# One-command set-up for ctr. `make demo` and `make test` both set up .venv first;
# set-up is skipped when .venv is already up to date with pyproject.toml and this file.
# Every ctr process runs with tcmalloc (else glibc's malloc tuned): see ctr/allocator.py.
PYTHON ?= $(shell command -v python3.11 || command -v python3)
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.ctr-setup-done
# fbgemm-gpu (CUDA) where a GPU driver is present, the CPU build elsewhere.
FBGEMM := $(shell command -v nvidia-smi >/dev/null 2>&1 && echo fbgemm-gpu || echo fbgemm-gpu-cpu)

.PHONY: setup demo test bench clean-venv

setup: $(STAMP)

$(STAMP): pyproject.toml Makefile
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip
	# torch first, pinned: its CPU wheel lies on these machines' disk.
	$(BIN)/pip install -q torch==2.13.0
	# torchrec's own requirements, then torchrec itself without its CUDA fbgemm-gpu pin.
	$(BIN)/pip install -q $(FBGEMM)==1.8.0 tensordict "torchmetrics==1.0.3" tqdm pyre-extensions
	$(BIN)/pip install -q --no-deps torchrec==1.8.0
	$(BIN)/pip install -q -e ".[test]"
	# tcmalloc (apt-get install libtcmalloc-minimal4 when missing, as root); without it ctr
	# falls back to glibc tunables, so a failed install does not fail the set-up
	$(BIN)/python -m ctr.allocator install || echo "tcmalloc not installed; ctr uses the glibc fallback"
	$(BIN)/python -c "import torch, torchrec, fbgemm_gpu; print('ctr set-up ok: torch', torch.__version__)"
	touch $(STAMP)

demo: $(STAMP)
	$(BIN)/ctr-train --model deepfm --batch 1k

# pytest itself under ctr's allocator set-up (its child processes inherit it)
test: $(STAMP)
	# the type check ([tool.mypy] in pyproject.toml: ctr/), then the suite under ctr's allocator
	$(BIN)/mypy
	$(BIN)/python -m ctr.allocator run -- $(BIN)/python -m pytest -q

bench: $(STAMP)
	$(BIN)/python tools/bench_train.py

clean-venv:
	rm -rf $(VENV)
