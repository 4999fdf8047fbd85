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

.PHONY: setup run test lab bench toy-teacher clean

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
	@if [ -f notebooks/01_init_from_teacher.ipynb ]; then \
	  $(PY) -m wanlite.pipeline --run $(RUN) --params $(PARAMS); \
	else echo "pipeline not built yet: the notebooks land with the notebooks issue (see README)."; fi

test: setup
	$(PY) -m pytest tests

lab: setup
	$(VENV)/bin/jupyter lab notebooks/

bench: setup
	@status=0; for b in bench/*.py; do echo "== $$b"; $(PY) $$b || status=1; done; exit $$status

toy-teacher: setup
	$(PY) -m wanlite.toy train --out wanlite/assets/toy

clean:
	rm -rf $(VENV) runs build *.egg-info .pytest_cache
