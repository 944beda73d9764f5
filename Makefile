# RelayPACS: `make run` starts the whole product, `make test` runs every test.
.PHONY: run test lint bench setup clean

VENV := .venv
PY := $(VENV)/bin/python
# pytest processes of `make test` (most tests wait on Orthanc, Celery or Chromium: on two
# cores, 2 processes took 662 s, 4 took 609 s; 3 keeps most of that with less contention.
# Measured again on 2026-12-03 with the suite of then: 3 took 831 s, 4 took 847 s, the
# tests' summed time growing from 2,506 to 3,143 s: the suite is bound by the two cores,
# most of it spent starting products (`serve`: five Python processes, about 10 s of CPU)
# and browsers, so modules share them where their tests allow).
TEST_PROCESSES ?= 3

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
	# earlier run on this machine left in it. -n: test modules run in TEST_PROCESSES
	# pytest-xdist processes side by side (whole modules, --dist loadfile), each with its
	# own test database (test_<name>_gwN), Orthanc, Celery worker and Redis database
	# (the configured number + N, see relaypacs/settings/test.py).
	$(VENV)/bin/pytest -q --create-db -n $(TEST_PROCESSES) --dist loadfile

bench: setup
	@scripts/bootstrap.sh --bench
	$(PY) bench/run_all.py
	# Live events (issue 12), statistics at 1,000,000 uploads (issue 15, PostgreSQL), and
	# S3 storage (issue 16): each appends its figures to bench/RESULTS.md.
	$(PY) bench/notifications_latency.py
	# 1,000 stream connections on `serve` (issue 13): memory per connection, latency.
	$(PY) bench/notifications_connections.py
	DATABASE_URL=$${DATABASE_URL:-postgres://postgres@127.0.0.1:5432/test} $(PY) bench/analytics_stats.py
	$(PY) bench/s3_storage.py
	# 50 clinics at once through nginx to two web nodes (issue 17; PostgreSQL and Redis,
	# a database of its own that it creates and drops; `--quick` checks the bench itself):
	# each clinic on an 8 Mbit/s link (the goal's case), then all 50 flat out (a stress
	# figure: 150 chunks in flight queue for 2 cores).
	$(PY) bench/load_clinics.py --link-mbit 8
	$(PY) bench/load_clinics.py

clean:
	rm -rf $(VENV) var
