#!/usr/bin/env bash
# Installs modelgit with its test dependencies (a no-op when they are there) and runs the tests.
set -euo pipefail
cd "$(dirname "$0")/.."
python3 -m pip install --quiet --disable-pip-version-check -e '.[dev]'
exec python3 -m pytest -q "$@"
