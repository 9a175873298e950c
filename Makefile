# Each target does its own set-up: a fresh clone needs only Python 3.11 and `make`.
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
# Tests and the demo must never try the network for data or Beam's Prism runner.
export TF_CPP_MIN_LOG_LEVEL ?= 2

.PHONY: demo test bench bench-gpu clean

$(VENV)/.installed: requirements.txt
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q -r requirements.txt
	touch $@

demo: $(VENV)/.installed
	$(PY) -m keras_metamae.demo

test: $(VENV)/.installed
	$(PY) -m pytest -q -n auto tests

bench: $(VENV)/.installed
	$(PY) bench/preprocess_bench.py
	$(PY) bench/train_bench.py
	$(PY) bench/memory_bench.py

# On a GPU machine (BUILD.md: tensorflow[and-cuda]); under 8 minutes on one GPU.
bench-gpu: $(VENV)/.installed
	$(PY) bench/gpu_bench.py

clean:
	rm -rf data/processed workdirs .pytest_cache
