#!/usr/bin/env bash
# Install leadline and start it: SQLite, and the built-in provider sandbox until channels are configured.
set -euo pipefail
cd "$(dirname "$0")/.."
if [ ! -x .venv/bin/python ]; then
  python3 -m venv .venv
fi
.venv/bin/python -m pip install -q --upgrade pip >/dev/null 2>&1 || true
.venv/bin/python -m pip install -q -e .
exec .venv/bin/leadline serve "$@"
