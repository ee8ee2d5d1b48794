# Two commands matter: `make demo` and `make test`. Every target creates the environment first when needed.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: setup demo demo-train test lint format clean

setup: $(STAMP)

# Re-run the install only when the dependency list changes.
$(STAMP): setup.py
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -e ".[dev]"
	touch $(STAMP)

demo: setup
	$(BIN)/vqgan-clip demo $(DEMO_ARGS)

demo-train: setup
	$(BIN)/vqgan-clip demo --train $(DEMO_ARGS)

test: setup
	$(BIN)/python -m pytest -q tests

# ruff.toml holds the rules; `make format` rewrites what `make lint` would refuse
lint: setup
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .

format: setup
	$(BIN)/ruff check --fix .
	$(BIN)/ruff format .

clean:
	rm -rf $(VENV) *.egg-info
