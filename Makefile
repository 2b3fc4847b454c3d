# Entry points for a fresh machine with Python 3.11 and git:
#   make demo   installs into .venv and runs the whole system on loopback
#   make demo-loop  the same with the examples extra, then one turn of the improvement loop
#   make test   installs into .venv (with test extras) and runs the tests
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin

.PHONY: demo demo-loop test lint protos

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip

$(VENV)/.installed-demo: pyproject.toml | $(BIN)/python
	$(BIN)/python -m pip install --quiet -e .
	touch $@

$(VENV)/.installed-examples: pyproject.toml | $(BIN)/python
	$(BIN)/python -m pip install --quiet -e '.[examples]'
	touch $@

$(VENV)/.installed-test: pyproject.toml | $(BIN)/python
	$(BIN)/python -m pip install --quiet -e '.[test]'
	touch $@

demo: $(VENV)/.installed-demo
	$(BIN)/edgecloud demo

demo-loop: $(VENV)/.installed-examples
	$(BIN)/edgecloud demo --loop

test: $(VENV)/.installed-test
	$(BIN)/ruff check .
	$(BIN)/pytest

protos: $(VENV)/.installed-test
	$(BIN)/python -P -m edgecloud.protos.generate
