# The two commands of the README. Both set up .venv first (scripts/setup.sh is idempotent).
.PHONY: setup demo test lint format fashion-mnist spiral-results

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

# The published results (docs/results/): rerun them with these.
spiral-results: setup
	.venv/bin/python scripts/results.py configs/spiral.yaml --seeds 0 1 2 \
		--runs runs/results/spiral --doc docs/results/spiral.md

fashion-mnist: setup
	bash scripts/install_fashion_mnist.sh
	.venv/bin/python scripts/results.py configs/fashion_mnist.yaml --seeds 0 1 2 \
		--runs runs/results/fashion_mnist --doc docs/results/fashion_mnist.md
