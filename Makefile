# Two commands do everything on a fresh machine with Python 3.11:
#   make reproduce   - build the venv, run every notebook on the embedded default, write results/
#   make test        - build the venv, run the test suite (unit tests, nbval tutorials, browser test)
PYTHON ?= $(shell command -v python3.11 || command -v python3)
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed
OUT    ?= results/reproduce

.PHONY: venv reproduce reproduce-fast run test tutorials models reference bench clean

venv: $(STAMP)

# Recreated when the dependency list changes. torch is installed first, pinned, so that pip
# never resolves an unpinned (multi-GB CUDA) build for it.
$(STAMP): pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip
	$(BIN)/python -m pip install -q torch==2.13.0
	$(BIN)/python -m pip install -q -e ".[dev]"
	$(BIN)/python -m ipykernel install --sys-prefix --name python3 --display-name "Python 3 (quee-kit)" >/dev/null
	touch $(STAMP)

reproduce: venv
	$(BIN)/quee-kit reproduce --config configs/mnist10k.yaml --params configs/reproduce_params.yaml --out $(OUT)

reproduce-fast: venv
	$(BIN)/quee-kit reproduce --config configs/mnist10k.yaml --fast --out results/reproduce-fast

run: venv
	$(BIN)/quee-kit run --config configs/mnist10k.yaml --out results/run

test: venv
	$(BIN)/python -m pytest -q

# Re-execute the nbval-checked tutorials in place, storing their outputs (commit the result).
tutorials: venv
	$(BIN)/python -m quee_kit.reproduce --store-tutorials

# Train every model of data/shipped_models.yaml afresh and ship it (quee_kit/embedded/models; commit them).
models: venv
	$(BIN)/python -m quee_kit.build_models

# The reference tables (commit them): budgets.csv of the default and the conditions study, 5 seeds, shipped models;
# issue 29's hypotheses for per-input precision, 3 seeds (gains.csv, room.csv; notebook 09 reads them).
# A run elsewhere compares its seed-0 rows with these (docs/results.md, "Across machines").
reference: venv
	for c in mnist10k conditions; do \
	  $(BIN)/quee-kit run --config configs/$$c.yaml --seeds 0,1,2,3,4 --out results/reference-runs/$$c --quiet || exit 1; \
	  mkdir -p results/reference/$$c && cp results/reference-runs/$$c/budgets.csv results/reference/$$c/budgets.csv; \
	done
	$(BIN)/python -m quee_kit.hypotheses --seeds 0,1,2 --out results/reference/hypotheses

bench: venv
	$(BIN)/python benchmarks/bench_pipeline.py

clean:
	rm -rf .quee_cache results
