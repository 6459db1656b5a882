# The README's two commands:
#   make demo   set up (Debian packages, venv, torch==2.13.0, lmforge) and run the demo
#   make test   set up and run the test suite
VENV ?= .venv
LMF := $(VENV)/bin/lmforge
PY := $(VENV)/bin/python

.PHONY: setup demo test lint bench clean figures

setup:
	@VENV=$(VENV) bash scripts/setup.sh

# The embedded default, all four stages (configs/pipeline/demo.yaml), then the report card
# runs/demo/report.html. Cached: run it again and it finishes in seconds.
demo: setup
	$(LMF) demo

# The tests also drive the web chat in headless Chromium: set-up installs it for them.
test:
	@VENV=$(VENV) WITH_BROWSER=1 bash scripts/setup.sh
	@$(PY) -c "from lmforge.train.device import cpu_precision as c; print('[test] precision=auto on this CPU:', c().reason)"
	$(PY) -m pytest --durations=15

lint: setup
	$(VENV)/bin/ruff check lmforge tests benchmarks
	$(VENV)/bin/ruff format --check lmforge tests benchmarks

bench: setup
	$(PY) benchmarks/pretrain_throughput.py

clean:
	rm -rf runs data .pytest_cache

# The README's gallery: the report card's figures of the last demo run.
figures:
	$(LMF) report runs/demo
	mkdir -p docs/figures && cp runs/demo/report_figures/*.png docs/figures/
