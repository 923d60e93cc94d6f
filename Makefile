# Two commands on a fresh machine (README.md): `make test` installs what it needs, then runs
# ruff and the whole test suite; `make demo` installs what it needs, then runs the main job.
# The install is redone when pyproject.toml or this file changes (the stamp below).
VENV ?= .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.erat-installed
# torch/torchvision pinned: these releases install from the local disk on our machines.
TORCH := torch==2.14.1 torchvision==0.29.1

.PHONY: install test lint demo

install:
	test -x $(PY) || python3 -m venv $(VENV)
	$(PY) -m pip install -q $(TORCH)
	$(PY) -m pip install -q -e '.[dev]'
	touch $(STAMP)

$(STAMP): pyproject.toml Makefile
	$(MAKE) install VENV=$(VENV)

test: $(STAMP)
	$(VENV)/bin/ruff check src tests benchmarks experiments
	$(PY) -m pytest -q

lint: $(STAMP)
	$(VENV)/bin/ruff check src tests benchmarks experiments

demo: $(STAMP)
	$(VENV)/bin/erat reproduce digits --out runs/digits
