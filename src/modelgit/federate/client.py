"""The Flower ClientApp: one :func:`modelgit.federate.local.train_round` per TRAIN message.

Where a client's base model and data are: in a real deployment, the SuperNode's node config
(``flower-supernode --node-config "base-path='/models/base' data-path='/data/notes.jsonl'"``);
in a local simulation, the lists given to :func:`make_client_app`, indexed by the node's
``partition-id``. The reply carries the trained factors, the example count, the client's base
fingerprint and, when the round asks, the Fisher of the factors. Nothing else leaves the client:
not the data, not its size in bytes, not its name.
"""

from __future__ import annotations

import os
import shutil
import tempfile

from flwr.app import ConfigRecord, Context, Message, MetricRecord, RecordDict
from flwr.clientapp import ClientApp

from ..errors import UsageError
from .local import RoundSettings, train_round
from .payload import arrays_to_lora, lora_to_arrays

__all__ = ["make_client_app", "app", "client_paths"]


def client_paths(context: Context, bases: tuple[str, ...] | None,
                 datasets: tuple[str, ...] | None) -> tuple[str, str]:
    """(base, data) of this node: from the simulation's lists, else from its node config."""
    node = context.node_config
    if datasets is not None:
        index = node.get("partition-id")
        if not isinstance(index, int) or not 0 <= index < len(datasets):
            raise UsageError(f"node config partition-id {index!r} names none of the "
                             f"{len(datasets)} local clients")
        return bases[index if len(bases) > 1 else 0], datasets[index]
    base, data = node.get("base-path"), node.get("data-path")
    if not isinstance(base, str) or not isinstance(data, str):
        raise UsageError("this SuperNode has no base-path and data-path: start it with "
                         "--node-config \"base-path='/path/to/model' data-path='/path/to/data'\"")
    return base, data


def _reply(msg: Message, result) -> Message:
    content = RecordDict({
        "arrays": lora_to_arrays(result.lora),
        "metrics": MetricRecord({"num-examples": result.examples,
                                 "train-loss": float(result.metrics["final_loss"])}),
        "config": ConfigRecord({"fingerprint": result.fingerprint})})
    if result.fisher is not None:
        content["fisher"] = lora_to_arrays(result.fisher)
    return Message(content=content, reply_to=msg)


def make_client_app(bases: tuple[str, ...] | None = None,
                    datasets: tuple[str, ...] | None = None, workdir: str | None = None) -> ClientApp:
    """A ClientApp training with modelgit's trainer.

    Args:
        bases, datasets: for a local simulation: the base model (one for all, or one per
            client) and each client's data, indexed by partition id. None: from the node config.
        workdir: where scratch directories go (default: the system's temporary directory).
    """
    client = ClientApp()

    @client.train()
    def train(msg: Message, context: Context) -> Message:
        base, data = client_paths(context, bases, datasets)
        settings = RoundSettings.parse(dict(msg.content.config_records["config"]))
        lora = arrays_to_lora(msg.content.array_records["arrays"])
        scratch = tempfile.mkdtemp(prefix="modelgit-fed-", dir=workdir)
        try:
            result = train_round(base, data, lora, settings, scratch)
        finally:
            shutil.rmtree(scratch, ignore_errors=True)
        return _reply(msg, result)

    return client


#: the ClientApp of a real deployment (``clientapp = "modelgit.federate.client:app"``)
app = make_client_app(workdir=os.environ.get("MODELGIT_FED_WORKDIR"))
