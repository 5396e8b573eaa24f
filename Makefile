# Two entry points (see README): `make demo` and `make test`. Each creates/updates .venv on its own.
PYTHON ?= python3.11
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
export HF_HUB_OFFLINE := 1
export TRANSFORMERS_OFFLINE := 1
export TOKENIZERS_PARALLELISM := false

.PHONY: venv demo test test-fast embedder-libs bench sample clean

venv: $(STAMP)

$(STAMP): pyproject.toml constraints.txt Makefile
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade "pip>=23" 
	$(BIN)/python -m pip install --quiet -c constraints.txt -e ".[dev,quaterion]"
	# Quaterion declares Python <3.11 but runs here; its dependencies are pinned above.
	$(BIN)/python -m pip install --quiet --no-deps --ignore-requires-python quaterion==0.1.35 quaterion-models==0.1.19
	touch $(STAMP)

demo: $(STAMP)
	@echo "make demo: about a quarter of an hour on 2 CPU cores (a local host, a sync that fine-tunes and judges itself, searches, the model door's cron loop); the report lands in runs/demo/report.html"
	$(BIN)/kern-finetune demo

# refinery-embedder's sentence-transformers releases, which tests/test_model_folder.py loads our folders with,
# are test dependencies: installed here (once, into a side folder) rather than by a test while the suite runs
embedder-libs: $(STAMP)
	$(BIN)/python tests/embedder_libs.py

test: embedder-libs
	$(BIN)/python -m pytest -q

test-fast: embedder-libs
	$(BIN)/python -m pytest -q -m "not slow"

sample: $(STAMP)
	$(BIN)/python scripts/build_sample.py --shared ../shared

clean:
	rm -rf $(VENV) .pytest_cache
