# Two commands set everything up on a fresh machine:
#   make demo   installs into .venv and runs the main job on the embedded default model
#   make test   installs into .venv (with the test extras) and runs the test suite
# Not in CI: make mutation (are the core modules' tests able to fail? docs/testing.md)
VENV ?= .venv
PY := $(VENV)/bin/python
PIP := $(PY) -m pip --disable-pip-version-check
# The CPU build of torch, installed first so that nothing pulls CUDA wheels on a machine without a
# GPU. Elsewhere set TORCH_INDEX (e.g. https://download.pytorch.org/whl/cpu) or TORCH_SPEC.
TORCH_SPEC ?= torch==2.13.0
TORCH_INDEX ?=
# Test oracles for the v7.00 weight remap (tests/test_official_v7.py). --no-deps: their torchvision
# dependency cannot load on a CPU-only torch; the tests stand it in (tests/torchvision_standin.py).
TEST_ORACLES := timm==1.0.31 segment-anything==1.0

.PHONY: install demo test bench mutation mutation-mutmut clean

$(VENV)/.installed: pyproject.toml
	python3 -m venv $(VENV)
	$(PIP) install -q $(TORCH_SPEC) $(if $(TORCH_INDEX),--index-url $(TORCH_INDEX))
	$(PIP) install -q -e ".[dev,serve,webui,bench,peft]"
	$(PIP) install -q --no-deps $(TEST_ORACLES)
	touch $@

install: $(VENV)/.installed

demo: install
	$(VENV)/bin/visualrwkv demo

test: install
	$(PY) -m pytest

# Mutants of the five core modules, each against its own tests; prints killed/survived per module and fails
# under 95% of the non-equivalent ones killed (equivalent survivors: tests/mutation_equivalent.txt). CPU heavy:
# several minutes. MODULES=engine/stream.py runs one.
MODULES ?=
mutation: install
	$(PY) tools/mutate.py $(MODULES)

# The same with mutmut, as a cross-check (it mutates function bodies only; see tools/mutmut_modules.py)
mutation-mutmut: install
	$(PIP) install -q -e ".[mutation]"
	$(PY) tools/mutmut_modules.py $(MODULES)

bench: install
	$(VENV)/bin/visualrwkv bench lm --out docs/bench_lm.json

clean:
	rm -rf $(VENV)
