# One command installs, one tests, one runs the main job (see README.md).
VENV ?= .venv
PY := $(VENV)/bin/python
# torch/torchvision pinned: these releases install from the local disk on our machines.
TORCH := torch==2.14.1 torchvision==0.29.1

.PHONY: install test lint demo

install:
	test -x $(PY) || python3 -m venv $(VENV)
	$(PY) -m pip install -q $(TORCH)
	$(PY) -m pip install -q -e '.[dev]'

test:
	$(VENV)/bin/ruff check src tests benchmarks experiments
	$(VENV)/bin/python -m pytest -q

lint:
	$(VENV)/bin/ruff check src tests benchmarks experiments

demo:
	$(VENV)/bin/erat reproduce digits --out runs/digits
