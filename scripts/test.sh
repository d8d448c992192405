#!/usr/bin/env bash
# The whole test suite, from a fresh machine: install, start PostgreSQL, lint, type-check, test.
set -euo pipefail
cd "$(dirname "$0")/.."

if [ ! -x .venv/bin/python ]; then
  python3 -m venv .venv
fi
.venv/bin/python -m pip install -q --upgrade pip >/dev/null 2>&1 || true
.venv/bin/python -m pip install -q -e '.[dev]'

if [ -z "${LEADLINE_TEST_POSTGRES_URL:-}" ]; then
  if url=$(bash scripts/postgres.sh); then
    # A database of this run's own: the tests reset its schema, so two runs must never share one.
    database="leadline_test_$$"
    psql -q -h 127.0.0.1 -p "${LEADLINE_TEST_PGPORT:-54329}" -U postgres -d postgres -c "CREATE DATABASE $database" >/dev/null
    trap 'psql -q -h 127.0.0.1 -p "${LEADLINE_TEST_PGPORT:-54329}" -U postgres -d postgres -c "DROP DATABASE IF EXISTS $database WITH (FORCE)" >/dev/null 2>&1 || true' EXIT
    export LEADLINE_TEST_POSTGRES_URL="${url%/*}/$database"
  else
    echo "PostgreSQL could not be started: its tests will be skipped" >&2
  fi
fi

echo "== ruff"
.venv/bin/ruff check src tests bench
.venv/bin/ruff format --check src tests bench
echo "== mypy (strict on the package)"
.venv/bin/mypy
echo "== pytest"
.venv/bin/pytest -q "$@"
