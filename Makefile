# `make run` starts the whole service with no configuration; `make test` runs the tests.
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin

.PHONY: run test lint install bench screenshots

run: $(VENV)/.installed
	$(BIN)/newsletter dev

test: $(VENV)/.installed
	$(BIN)/pytest

bench: $(VENV)/.installed
	$(BIN)/python -m bench.fanout

# Refresh docs/screenshots/ from the mail the templates send now (needs Debian's chromium).
screenshots: $(VENV)/.installed
	UPDATE_SCREENSHOTS=1 $(BIN)/pytest -q tests/browser/test_email_rendering.py

lint: $(VENV)/.installed
	$(BIN)/ruff check .

install: $(VENV)/.installed

$(VENV)/.installed: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -e '.[test,bench]'
	touch $@
