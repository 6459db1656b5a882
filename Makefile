# The README's two commands:
#   make demo   set up (Debian packages, venv, torch==2.13.0, lmforge) and run the demo
#   make test   set up and run the test suite
VENV ?= .venv
LMF := $(VENV)/bin/lmforge
PY := $(VENV)/bin/python

.PHONY: setup demo test lint bench clean

setup:
	@VENV=$(VENV) bash scripts/setup.sh

# The embedded default: corpus -> tokenizer -> pre-training (~10 min on 2 cores) -> samples.
demo: setup
	$(LMF) data build --out data/default
	$(LMF) tokenizer train --data data/default --vocab-size 8192 --out runs/demo/tokenizer
	$(LMF) pretrain --config configs/demo/pretrain.yaml
	$(LMF) generate runs/demo/pretrain --prompt "The meaning of" --max-new-tokens 60 --seed 0

# The tests also drive the web chat in headless Chromium: set-up installs it for them.
test:
	@VENV=$(VENV) WITH_BROWSER=1 bash scripts/setup.sh
	$(PY) -m pytest -q

lint: setup
	$(VENV)/bin/ruff check lmforge tests benchmarks
	$(VENV)/bin/ruff format --check lmforge tests benchmarks

bench: setup
	$(PY) benchmarks/pretrain_throughput.py

clean:
	rm -rf runs data .pytest_cache
