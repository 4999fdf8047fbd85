# wanlite — `make run` and `make test` each set up .venv/ by themselves on a fresh machine.
PYTHON ?= python3
VENV   := .venv
PY     := $(VENV)/bin/python
RUN    ?= toy
PARAMS ?= params/toy.yaml
# torch: a base interpreter that already has torch (conda, Colab, a CUDA build) is reused through
# --system-site-packages, never replaced. Otherwise a machine without an NVIDIA driver gets the CPU build
# (on this project's machines its wheel lies on disk); a GPU machine gets PyPI's default CUDA build.
TORCH_SPEC ?= $(shell command -v nvidia-smi >/dev/null 2>&1 && echo "torch>=2.4" || echo "torch==2.13.0")

.PHONY: setup run test test-ui lint lab bench toy-teacher toy-teacher-deep sweep clean

setup: $(VENV)/.installed

$(VENV)/.installed: pyproject.toml
	@if [ ! -x $(PY) ]; then \
	  if $(PYTHON) -c "import torch" >/dev/null 2>&1; then \
	    echo "reusing the base interpreter's torch"; $(PYTHON) -m venv --system-site-packages $(VENV); \
	  else $(PYTHON) -m venv $(VENV); fi; fi
	@$(PY) -c "import torch" >/dev/null 2>&1 || $(PY) -m pip install -q "$(TORCH_SPEC)"
	$(PY) -m pip install -q -e ".[test,notebooks]"
	@touch $@

run: setup
	$(PY) -m wanlite.pipeline --run $(RUN) --params $(PARAMS)

test: setup
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .
	$(PY) -m pytest tests
	rm -rf runs/notebooks
	WANLITE_HEADLESS=1 $(PY) -m pytest --nbval-lax --nbval-current-env -p no:cacheprovider notebooks/
	rm -rf runs/notebooks
	WANLITE_HEADLESS=1 $(PY) -m wanlite.pipeline --run notebooks --params params/smoke.yaml
	$(PY) -m pytest -p no:cacheprovider tests/executed_notebooks.py

lint: setup
	$(VENV)/bin/ruff check --fix .
	$(VENV)/bin/ruff format .

# JupyterLab on the notebooks, widget state saved with them (notebooks/.lab/overrides.json); --allow-root where
# root runs it (Docker, cloud GPU boxes). LAB_ARGS="--ip=0.0.0.0 --port=8888" to reach it from another machine.
LAB_ARGS ?=
LAB_FLAGS = --LabApp.app_settings_dir=$(CURDIR)/notebooks/.lab $(if $(filter 0,$(shell id -u)),--allow-root) $(LAB_ARGS)

lab: setup
	@echo "JupyterLab: open the http://...lab?token=... URL it prints below (Ctrl-C stops it)"
	$(VENV)/bin/jupyter lab $(LAB_FLAGS) notebooks/

# The notebooks in a real browser: JupyterLab on 127.0.0.1 + headless Chromium (Debian's chromium, driven by
# playwright; both installed here on first use). Screenshots in runs/ui/. Not part of `make test`.
test-ui: setup
	@command -v chromium >/dev/null 2>&1 || { SUDO=$$([ "$$(id -u)" = 0 ] || echo sudo); \
	  $$SUDO apt-get update -q && $$SUDO apt-get install -y -q chromium; }
	@$(PY) -c "import playwright" 2>/dev/null || $(PY) -m pip install -q "playwright>=1.40"  # the [ui] extra
	$(PY) -m pytest -p no:cacheprovider tests/lab_ui.py

bench: setup
	@status=0; for b in bench/[!_]*.py; do echo "== $$b"; $(PY) $$b || status=1; done; exit $$status

toy-teacher: setup
	$(PY) -m wanlite.toy train --out wanlite/assets/toy --overwrite

# The deeper toy teacher (6 blocks x 2 heads of 128, ffn 512) that depth pruning and `make sweep` use; ~30-55 min
# on one CPU thread. `make run` and the tests keep the 2-block one above.
toy-teacher-deep: setup
	$(PY) -m wanlite.toy train --out wanlite/assets/toy/teacher-deep --num-layers 6 --steps 3200 --overwrite

# Recipes x objectives x sampling steps on the deeper toy teacher -> runs/sweep-toy/leaderboard.{md,csv}, pareto.png
# (README, "Sweeps and the leaderboard"). SWEEP_ARGS="--resume" continues one; "--jobs 2" runs two points at once.
SWEEP ?= params/sweep-toy.yaml
SWEEP_ARGS ?=
sweep: setup
	$(PY) -m wanlite sweep --grid $(SWEEP) $(SWEEP_ARGS)

clean:
	rm -rf $(VENV) runs build *.egg-info .pytest_cache
