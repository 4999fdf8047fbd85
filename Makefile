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

.PHONY: setup run test lint lab bench toy-teacher clean

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

lint: setup
	$(VENV)/bin/ruff check --fix .
	$(VENV)/bin/ruff format .

lab: setup
	$(VENV)/bin/jupyter lab notebooks/

bench: setup
	@status=0; for b in bench/*.py; do echo "== $$b"; $(PY) $$b || status=1; done; exit $$status

toy-teacher: setup
	$(PY) -m wanlite.toy train --out wanlite/assets/toy --overwrite

clean:
	rm -rf $(VENV) runs build *.egg-info .pytest_cache
