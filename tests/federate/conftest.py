"""A model repository around a tiny Llama, three tiny text domains as three clients, suites."""

from __future__ import annotations

import json
import os
import subprocess

import pytest

pytest.importorskip("flwr")
os.environ.setdefault("FLWR_TELEMETRY_ENABLED", "0")

from gitutil import git_env  # noqa: E402,F401  (autouse: private HOME and git identity)
from model_fixtures import one_thread  # noqa: E402,F401  (autouse)
from workflow.conftest import tiny_base  # noqa: E402,F401  (the workflow tests' tiny Llama)
from workflow_helpers import DOMAINS  # noqa: E402


def _jsonl(path, texts) -> str:
    path.write_text("".join(json.dumps({"text": t}) + "\n" for t in texts), encoding="utf-8")
    return str(path)


@pytest.fixture(scope="session")
def client_data(tmp_path_factory):
    """{domain: training data path}: one domain per client (non-IID)."""
    root = tmp_path_factory.mktemp("clients")
    return {name: _jsonl(root / f"{name}.jsonl", texts * 4) for name, texts in DOMAINS.items()}


@pytest.fixture
def suites_file(tmp_path):
    import yaml

    root = tmp_path / "private"
    root.mkdir()
    suites = [{"name": n, "data": _jsonl(root / f"{n}-heldout.jsonl", t[::2]),
               "metric": "perplexity"} for n, t in DOMAINS.items()]
    path = root / "suites.yaml"
    path.write_text(yaml.safe_dump({"suites": suites}))
    return str(path)


@pytest.fixture
def model_repo(tmp_path, tiny_base):
    """The maintainer's repository (a GitRepo) around the tiny base."""
    from modelgit.workflow import Project, create_project

    remote = str(tmp_path / "hub.git")
    subprocess.run(["git", "init", "-q", "--bare", "-b", "main", remote], check=True)
    return create_project(str(tmp_path / "maintainer"), tiny_base,
                          Project(name="tiny", base_model="example/tiny-llama"), remote=remote)


class InProcessGrid:
    """A Flower ``Grid`` delivering each message to an in-process client: the ClientApp of
    modelgit, or a hostile replacement per node (``behaviours``: node -> function(message,
    context) returning a reply, or None for no reply, i.e. a drop-out or a timeout)."""

    def __new__(cls, *args, **kwargs):
        from flwr.serverapp import Grid

        class _Grid(Grid):
            def __init__(self, app, nodes, behaviours=None):
                self.app, self.nodes, self.behaviours = app, list(nodes), dict(behaviours or {})
                self.sent = []

            def set_run(self, run):  # pragma: no cover - Flower's runtime only
                pass

            @property
            def run(self):  # pragma: no cover
                return None

            def create_message(self, *a, **k):  # pragma: no cover
                raise NotImplementedError

            def get_node_ids(self):
                return list(self.nodes)

            def push_messages(self, messages):  # pragma: no cover
                raise NotImplementedError

            def pull_messages(self, message_ids):  # pragma: no cover
                raise NotImplementedError

            def send_and_receive(self, messages, *, timeout=None):
                from flwr.app import Context, Error, Message, RecordDict
                from flwr.supercore.task_identity import TaskIdentity

                replies = []
                for index, message in enumerate(messages):
                    node = message.metadata.dst_node_id
                    self.sent.append(message)
                    TaskIdentity.node_id = node
                    context = Context(run_id=1, node_id=node, state=RecordDict(), run_config={},
                                      node_config={"partition-id": self.nodes.index(node)})
                    handler = self.behaviours.get(node, self.app)
                    try:
                        reply = handler(message, context)
                    except Exception as exc:  # as a SuperNode reports a ClientApp's exception
                        reply = Message(Error(0, f"{type(exc).__name__}: {exc}"), reply_to=message)
                    finally:
                        TaskIdentity.node_id = 0
                    if reply is not None:
                        replies.append(reply)
                return replies

        return _Grid(*args, **kwargs)


@pytest.fixture
def flower_identity():
    """What Flower's runtime sets before a ServerApp runs: the task identity of messages."""
    from flwr.supercore.task_identity import TaskIdentity

    TaskIdentity.run_id, TaskIdentity.node_id, TaskIdentity.task_id = 1, 0, 1
    yield
    TaskIdentity.run_id = TaskIdentity.node_id = TaskIdentity.task_id = None


def domain_grid(base: str, datasets, extra=None):
    """An InProcessGrid of modelgit's ClientApp on ``base``, one client per dataset (nodes 11,
    12, ...), plus any ``extra`` hostile nodes ({node: behaviour})."""
    from modelgit.federate.client import make_client_app

    datasets = tuple(datasets)
    app = make_client_app((base,), datasets + tuple("unused" for _ in (extra or {})))
    nodes = [11 + i for i in range(len(datasets))] + list(extra or {})
    return InProcessGrid(app, nodes, extra)


@pytest.fixture
def grid(flower_identity, tiny_base, client_data):
    """A function: :func:`domain_grid` of the three domain clients (or ``clients``) plus any
    ``extra`` hostile nodes."""
    def make(extra=None, clients=None):
        return domain_grid(tiny_base, clients or client_data.values(), extra)

    return make
