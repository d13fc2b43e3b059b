# The two commands of the README, plus the steps behind them.
# Everything is provisioned into .cache/ (git-ignored) by tools/provision.sh.
SHELL := /bin/bash
PY := .cache/venv/bin/python
PRESET ?= qwenfit_edit_auto

.PHONY: demo test test-unit test-server test-browser test-080 setup workflows lint clean

## Run a preset workflow through a real ComfyUI with the pack (tiny models unless QWENFIT_MODELS_DIR is set).
demo: setup
	$(PY) -m tools.demo --preset $(PRESET)

## Run the whole test suite (real ComfyUI servers, tiny models, CPU): 0.3.75, and 0.8.0 where
## ../shared/comfyui-0.8.0 is next to the repository (else its tests are skipped, one summary line says so).
test: setup
	$(PY) -m pytest tests -q

## One layer of the suite: the core alone, through the server, or in the browser.
test-unit test-server test-browser: setup
	$(PY) -m pytest tests -q -m $(subst test-,,$@)

## Only the tests that run on ComfyUI 0.8.0 (its server and browser layer).
test-080: setup
	$(PY) -m pytest tests -q -k 0.8.0

## Provision the venv, ComfyUI 0.3.75 (and 0.8.0 from ../shared/comfyui-0.8.0) and the tiny models (idempotent).
setup:
	bash tools/provision.sh

## Rewrite example_workflows/*.json and their API twins from tools/presets.py.
workflows: setup
	$(PY) -m tools.presets

clean:
	rm -rf .cache out
