"""Shared fixtures: tiny seeded checkpoints built on the spot (nothing downloaded)."""

from __future__ import annotations

import os

import numpy as np
import pytest
from hypothesis import HealthCheck, settings

from modelgit.store import Store

from helpers import float_weights, write_safetensors

os.environ.setdefault("MODELGIT_PROGRESS", "0")
# Ray (federated simulation, Ray Data) gives its GCS server 30 s of wall time to start: a wall
# time limit, which a loaded machine misses; tests must not depend on wall time
os.environ.setdefault("RAY_gcs_server_port_wait_time_s", "300")
# Ray 2.60 turns on token authentication at the first local ray.init() of a process (it sets
# RAY_AUTH_MODE=token for the process and writes ~/.ray/auth_token); every test has its own HOME
# (gitutil.git_env), so the next test's cluster finds no token and its GCS server aborts. The
# test clusters listen on localhost only: no authentication.
os.environ.setdefault("RAY_AUTH_MODE", "disabled")

# No test may depend on wall time: this machine (and CI's) is shared and loaded, so an example
# that takes 202 ms is not a failure. Every hypothesis test runs without a deadline and without
# the "too slow" health check (which times data generation); a test's own @settings inherit it.
settings.register_profile("modelgit", deadline=None,
                          suppress_health_check=[HealthCheck.too_slow])
settings.load_profile("modelgit")


# The suite runs on two pytest-xdist workers (scripts/test.sh). Tests that start a local Ray
# cluster (Flower's simulation, Ray Data) run on one worker, one after the other: two clusters at
# once would compete for the same ports and /tmp/ray session directories.
RAY_TEST_FILES = {"test_demo_federated.py", "test_ray.py", "test_simulation.py"}


@pytest.hookimpl(tryfirst=True)
def pytest_collection_modifyitems(items):
    for item in items:
        if item.path.name in RAY_TEST_FILES:
            item.add_marker(pytest.mark.xdist_group("ray"))


@pytest.fixture
def store(tmp_path) -> Store:
    return Store.open(str(tmp_path / "store"), create=True)


@pytest.fixture
def small_model(tmp_path):
    """A small fp32 safetensors model with a chunked embedding (2 chunks at 4 MiB)."""
    tensors = {
        "embed.weight": ("F32", (4200, 256), float_weights(1, (4200, 256)).tobytes()),
        "layer.0.weight": ("F32", (64, 64), float_weights(2, (64, 64)).tobytes()),
        "layer.0.bias": ("F32", (64,), float_weights(3, (64,)).tobytes()),
        "step": ("I64", (), np.int64(7).tobytes()),
    }
    path = tmp_path / "model.safetensors"
    write_safetensors(path, tensors, metadata={"format": "pt"})
    return path, tensors
