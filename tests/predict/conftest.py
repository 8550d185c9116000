"""Tiny predict fixtures: a tiny Llama and a tiny BERT classifier, each with two LoRA adapters
(PEFT's random initialisation: no training needed to tell them apart) and an examples router,
and one set of texts written as Parquet, CSV and JSON Lines."""

from __future__ import annotations

import json

import pytest

from model_fixtures import *  # noqa: F401,F403  (one_thread, lm_base, cls_base)
from model_fixtures import LM_TEXTS, NEGATIVE, POSITIVE

from predict_texts import TEXTS


def _random_adapter(base: str, out, task: str, seed: int, labels=None) -> str:
    import torch
    from peft import LoraConfig, get_peft_model

    from modelgit.adapters.loading import load_model, quiet_transformers, write_labels

    torch.manual_seed(seed)
    model = load_model(base, task, id2label=labels)
    kind = "SEQ_CLS" if task == "classification" else "CAUSAL_LM"
    targets = ["query", "value"] if task == "classification" else ["q_proj", "v_proj"]
    config = LoraConfig(r=4, lora_alpha=8, target_modules=targets, task_type=kind,
                        init_lora_weights=False)
    with quiet_transformers():
        peft_model = get_peft_model(model, config)
        with torch.no_grad():  # make each adapter change the outputs visibly
            for name, param in peft_model.named_parameters():
                if "lora_" in name:
                    param.mul_(4.0)
        peft_model.save_pretrained(str(out))
    if labels:
        write_labels(str(out), labels)
    return str(out)


def _router(base: str, adapters: dict, examples: dict, out) -> str:
    from modelgit.route import BuildRequest, Library, build_router, save

    library = Library.from_dirs(base, adapters)
    router = build_router(library, BuildRequest("examples", examples=examples, threshold=None))
    save(router, str(out), library)
    return str(out)


@pytest.fixture(scope="session")
def lm_library(lm_base, tmp_path_factory):
    """{"base", "cats", "birds", "router"}: a causal LM, two adapters, an examples router."""
    root = tmp_path_factory.mktemp("predict-lm")
    adapters = {name: _random_adapter(lm_base, root / name, "causal_lm", seed)
                for seed, name in enumerate(("cats", "birds"), 1)}
    examples = {"cats": [t for t in LM_TEXTS if "cat" in t][:4],
                "birds": [t for t in LM_TEXTS if "bird" in t][:4]}
    return {"base": lm_base, **adapters, "router": _router(lm_base, adapters, examples,
                                                           root / "router")}


@pytest.fixture(scope="session")
def cls_library(cls_base, tmp_path_factory):
    """{"base", "mood", "tone", "router"}: a BERT classifier, two classification adapters
    (labels neg/pos), an examples router."""
    root = tmp_path_factory.mktemp("predict-cls")
    labels = {0: "neg", 1: "pos"}
    adapters = {name: _random_adapter(cls_base, root / name, "classification", seed, labels)
                for seed, name in enumerate(("mood", "tone"), 1)}
    examples = {"mood": POSITIVE, "tone": NEGATIVE}
    return {"base": cls_base, **adapters, "router": _router(cls_base, adapters, examples,
                                                            root / "router")}


@pytest.fixture(scope="session")
def inputs(tmp_path_factory):
    """{"parquet", "csv", "jsonl"}: TEXTS with an id column ("key", 1000 + row), one file each
    (the Parquet file in row groups of 4, so batches straddle them)."""
    import pyarrow as pa
    import pyarrow.csv as pc
    import pyarrow.parquet as pq

    root = tmp_path_factory.mktemp("predict-inputs")
    table = pa.table({"key": list(range(1000, 1000 + len(TEXTS))), "text": TEXTS,
                      "other": ["x"] * len(TEXTS)})
    pq.write_table(table, root / "in.parquet", row_group_size=4)
    pc.write_csv(table, root / "in.csv")
    with open(root / "in.jsonl", "w", encoding="utf-8") as handle:
        for row in table.to_pylist():
            handle.write(json.dumps(row) + "\n")
    return {kind: str(root / f"in.{kind}") for kind in ("parquet", "csv", "jsonl")}
