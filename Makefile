# Setup and everyday commands. Every target creates .venv if needed.
# torch is installed first, pinned, so that a bare machine never pulls a multi-GB CUDA build.
VENV ?= .venv
PY := $(VENV)/bin/python
TORCH_SPEC ?= torch==2.13.0
DEMO_DIR ?= demo_out
DEMO_MINUTES ?= 4

.PHONY: install demo test lint hooks clean

$(VENV)/.installed: pyproject.toml
	test -x $(PY) || python3 -m venv $(VENV)
	$(PY) -c "import torch" 2>/dev/null || $(PY) -m pip install "$(TORCH_SPEC)"
	$(PY) -m pip install -e ".[test,lint]"
	touch $@

install: $(VENV)/.installed

demo: install
	$(VENV)/bin/medp2p demo --out $(DEMO_DIR) --minutes $(DEMO_MINUTES)

test: install
	$(PY) -m pytest -q

# ruff (lint and format), mypy (strict on medp2p/) and the hygiene hooks, as .pre-commit-config.yaml
# lists them; fails on any finding.
lint: install
	PATH="$(abspath $(VENV))/bin:$$PATH" $(VENV)/bin/pre-commit run --all-files --show-diff-on-failure

# Run the same checks on every `git commit`.
hooks: install
	$(VENV)/bin/pre-commit install

clean:
	rm -rf $(VENV) $(DEMO_DIR) .pytest_cache .mypy_cache .ruff_cache
