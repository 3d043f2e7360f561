# Two commands from a fresh clone (Python >= 3.9, nothing else prepared):
#   make demo   set up what is missing, then run the main job on the offline kit
#   make test   set up what is missing, then run the test suite
# Both reuse the virtual environment (.venv) and the kit data (./data) on later runs.
# Users who manage their own environment: pip install -e ".[test]" (see README.md).

PYTHON ?= python3
VENV ?= .venv
DATA ?= ./data
OUTPUT ?= ./output
PY := $(VENV)/bin/python
# the installed environment is stamped with what it was installed from
STAMP := $(VENV)/.fsclip-installed

.PHONY: demo test test-learning venv clean-venv

demo: $(STAMP)
	@echo "==> Main job: SAFE on the kit's SynthShapes, 4 shots, seeds 1 2 3, MicroRN (data under $(DATA))"
	DATA=$(DATA) OUTPUT=$(OUTPUT) PYTHON=$(PY) bash scripts/safe/main.sh synth_shapes 4 micro_rn

test: $(STAMP)
	@echo "==> Test suite (learning tests excluded: make test-learning)"
	$(PY) -m pytest -q tests --durations=15

test-learning: $(STAMP)
	@echo "==> Learning tests (every method against zero-shot CLIP on the kit) and slow script tests"
	$(PY) -m pytest -q tests -m "learning or slow" --durations=15

venv: $(STAMP)

$(STAMP): setup.py requirements.txt
	@$(PYTHON) -c 'import sys; sys.exit(0 if sys.version_info >= (3, 9) else 1)' || \
		{ echo "ERROR: fsclip needs Python >= 3.9; $(PYTHON) is $$($(PYTHON) --version 2>&1). Run make PYTHON=/path/to/python3.x"; exit 2; }
	@if [ ! -x $(PY) ]; then echo "==> Creating the virtual environment $(VENV) ($(PYTHON) -m venv $(VENV))"; $(PYTHON) -m venv $(VENV); \
		else echo "==> Updating the virtual environment $(VENV) (setup.py or requirements.txt changed)"; fi
	@echo "==> Installing fsclip and its PyPI dependencies ($(PY) -m pip install -e \".[test]\")"
	$(PY) -m pip install -e ".[test]"
	@touch $(STAMP)
	@echo "==> Environment ready: $(VENV)"

clean-venv:
	rm -rf $(VENV)
