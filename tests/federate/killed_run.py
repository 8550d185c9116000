"""Run a federated run in this process and SIGKILL it at a chosen point (test_rounds' kill test).

``python killed_run.py SETUP.json``: ``{"tests", "base", "datasets", "config", "round",
"where"}``; ``where`` is ``training`` (inside a client's training of ``round``) or ``commit``
(after the round's commit object is written, before the branch moves). No cleanup runs: the
process dies as under ``kill -9``.
"""

from __future__ import annotations

import importlib.util
import json
import os
import signal
import sys


def main() -> None:
    with open(sys.argv[1], encoding="utf-8") as handle:
        setup = json.load(handle)
    tests = setup["tests"]
    sys.path[:0] = [tests, os.path.join(tests, "federate")]
    spec = importlib.util.spec_from_file_location("federate_conftest",
                                                  os.path.join(tests, "federate", "conftest.py"))
    conftest = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(conftest)

    from flwr.supercore.task_identity import TaskIdentity

    from modelgit.federate import FederateConfig
    from modelgit.federate.server import run_rounds
    from modelgit.workflow import gitops

    TaskIdentity.run_id, TaskIdentity.node_id, TaskIdentity.task_id = 1, 0, 1
    die = lambda: os.kill(os.getpid(), signal.SIGKILL)  # noqa: E731
    grid = conftest.domain_grid(setup["base"], setup["datasets"])
    app = grid.app

    def client(message, context):
        settings = message.content.config_records["config"]
        if setup["where"] == "training" and settings["server-round"] == setup["round"]:
            die()
        return app(message, context)

    real_commit = gitops.commit_files

    def commit_files(repo, parent, files, message):
        commit = real_commit(repo, parent, files, message)
        if setup["where"] == "commit" and f"round {setup['round']} " in message:
            die()
        return commit

    gitops.commit_files = commit_files
    grid.app = client
    run_rounds(grid, FederateConfig(**setup["config"]))


if __name__ == "__main__":
    main()
