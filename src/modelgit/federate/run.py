"""`modelgit federate`: a local simulation on this machine (Flower's Ray backend).

Each client is a simulated SuperNode holding one data path; they share this machine's export of
the base model. The server is the same :func:`.server.run_rounds` a real SuperLink runs, so a
simulated run's branch is what a deployment's would be.
"""

from __future__ import annotations

import logging
import os

from ..errors import ModelgitError, UsageError
from .config import FederateConfig

__all__ = ["federate", "simulation_resources"]

#: Ray waits 30 s (wall) for its GCS server to start, and fails the run past it; on a loaded
#: 2-core machine it takes longer. A user's own setting wins.
RAY_START_WAIT_S = "600"


def simulation_resources(clients: int, threads: int | None) -> dict:
    """Ray resources: each client reserves the CPUs it trains with, so that at most
    cores / threads clients train at once (more would only slow each other down)."""
    cores = os.cpu_count() or 1
    per_client = max(1, min(cores, threads or 1))
    return {"client_resources": {"num_cpus": per_client, "num_gpus": 0.0},
            "init_args": {"num_cpus": cores, "include_dashboard": False,
                          "log_to_driver": False}}


def federate(config: FederateConfig, clients: dict[str, str], base: str | None = None,
             verbose: bool = False):
    """Run (or resume) ``config.run`` as a local simulation.

    Args:
        config: the run's settings.
        clients: {name: data path}; names stay on this machine (commits use anonymous ids).
        base: the base model directory every simulated client uses (default: an export of the
            run's base revision, made by the server and shared).
        verbose: Flower's and Ray's own logs.
    Returns:
        The :class:`modelgit.federate.server.FederateResult`.
    Raises:
        UsageError: fewer clients than ``min_clients``, a missing data path, or what
            :func:`modelgit.federate.server.run_rounds` raises.
    """
    from flwr.simulation import run_simulation

    from .client import make_client_app
    from .server import make_server_app

    config.validate()
    if len(clients) < config.min_clients:
        raise UsageError(f"{len(clients)} client(s) given, fewer than --min-clients "
                         f"{config.min_clients}: add clients or lower --min-clients")
    missing = [f"{n}={p}" for n, p in clients.items() if not os.path.exists(p)]
    if missing:
        raise UsageError(f"client data not found: {', '.join(missing)}")
    base_dir = base or _shared_base(config)
    datasets = tuple(os.path.abspath(p) for p in clients.values())
    outcome: dict = {}
    server = make_server_app(config, wait_for=len(clients), outcome=outcome)
    client = make_client_app((os.path.abspath(base_dir),), datasets)
    if not verbose:
        logging.getLogger("flwr").setLevel(logging.WARNING)
    os.environ.setdefault("RAY_gcs_server_port_wait_time_s", RAY_START_WAIT_S)
    try:
        run_simulation(server, client, num_supernodes=len(clients),
                       backend_config=simulation_resources(len(clients), config.threads),
                       verbose_logging=verbose)
    except RuntimeError as exc:  # Ray could not start (e.g. its start-up timed out under load)
        if "error" in outcome or "result" in outcome:
            pass
        else:
            raise ModelgitError(f"Flower's simulation failed to run ({exc}): run the same command "
                                "again (the run resumes from its last committed round); "
                                "--verbose shows Ray's log") from None
    if "error" in outcome:
        raise outcome["error"]
    if "result" not in outcome:
        raise UsageError("the simulation ended without a result: rerun with --verbose to see "
                         "Flower's log (the run resumes from its last committed round)")
    return outcome["result"]


def _shared_base(config: FederateConfig) -> str:
    """A stable export of the run's base for the simulated clients (cached by commit)."""
    from ..git.repo import find_repo
    from ..workflow.gitops import export_dir
    from ..workflow.project import read_project
    from .history import branch_of, open_run

    repo = find_repo(config.repo)
    tip = repo.rev_parse(f"refs/heads/{branch_of(config.run)}")
    start = repo.resolve(config.start) if tip is None else None
    if start is None:  # resuming: the run's base commit is recorded on its branch
        import tempfile

        with tempfile.TemporaryDirectory() as scratch:
            start = open_run(repo, config, scratch).start_commit
    folder = os.path.join(repo.git_dir, "modelgit", "federate", "base", start)
    if os.path.isdir(folder):
        return folder
    from .._outputs import remove, remove_stale_temporaries, temporary_path

    os.makedirs(os.path.dirname(folder), exist_ok=True)
    remove_stale_temporaries(os.path.dirname(folder))  # left by a killed export
    tmp = temporary_path(folder)
    try:  # exported beside it, then renamed: a killed export never looks complete
        export_dir(repo, start, read_project(repo, start).model, tmp)
        os.rename(tmp, folder)
    except OSError:
        if not os.path.isdir(folder):  # not another process's export that won the race
            raise
    finally:
        if os.path.exists(tmp):
            remove(tmp)
    return folder
