# RelayPACS: `make run` starts the whole product, `make test` runs every test.
.PHONY: run test lint bench setup clean

VENV := .venv
PY := $(VENV)/bin/python

setup:
	@scripts/bootstrap.sh

run: setup
	$(PY) manage.py serve

lint: setup
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .
	$(VENV)/bin/mypy
	cd frontend && npm run lint && npm run typecheck
	DATA_DIR=$$(mktemp -d) $(PY) manage.py makemigrations --check --dry-run

test: setup lint
	cd frontend && npx vitest run
	# --create-db: the test database is rebuilt from this checkout's migrations, whatever an
	# earlier run on this machine left in it.
	$(VENV)/bin/pytest -q --create-db

bench: setup
	@scripts/bootstrap.sh --bench
	$(PY) bench/run_all.py

clean:
	rm -rf $(VENV) var
