# The two commands of the README. Both set up .venv first (scripts/setup.sh is idempotent).
.PHONY: setup demo test lint format bench

setup:
	bash scripts/setup.sh

demo: setup
	.venv/bin/endd demo --out runs/demo

test: setup
	.venv/bin/ruff check .
	.venv/bin/ruff format --check .
	.venv/bin/python -m pytest -n 2

lint:
	.venv/bin/ruff check . && .venv/bin/ruff format --check .

format:
	.venv/bin/ruff check --fix . && .venv/bin/ruff format .
