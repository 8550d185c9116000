"""Fixtures of tests/model_fixtures.py (tiny models)."""

from model_fixtures import *  # noqa: F401,F403
