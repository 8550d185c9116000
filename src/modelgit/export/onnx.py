"""ONNX export of an encoder or classifier directory, checked against onnxruntime.

``export_onnx(model_dir, path)`` loads a transformers encoder (BERT-like: a sequence or token
classifier, or a bare encoder whose ``last_hidden_state`` gives embeddings), exports it with
``torch.onnx.export(dynamo=True)`` (torch 2.13's default exporter, which needs ``onnxscript``;
the TorchScript exporter it replaces traced transformers' attention-mask shortcut for an
unpadded batch into the graph, and was off by ~1e-2 on padded batches), with batch and sequence
length dynamic, then runs the ONNX graph in onnxruntime and the model in torch on a few inputs
of other shapes than the export's (padded and not) and measures the largest absolute
difference of the outputs. Over the tolerance (1e-4 by default) the export is refused.

Decoder models (causal LMs, encoder-decoders) are refused: their useful export has a key-value
cache as inputs and outputs, which optimum's exporters handle; modelgit does not.
"""

from __future__ import annotations

import contextlib
import io
import json
import logging
import os
import tempfile
import warnings
from dataclasses import dataclass

from ..errors import ModelgitError, UsageError

__all__ = ["DEFAULT_TOLERANCE", "OnnxCheck", "OnnxCheckError", "onnx_task", "export_onnx",
           "require_onnx"]

#: the largest absolute difference allowed between onnxruntime's and torch's outputs
DEFAULT_TOLERANCE = 1e-4
_DECODER_MARKS = ("ForCausalLM", "LMHeadModel", "ForConditionalGeneration", "ForSeq2SeqLM")
#: architecture suffix -> (task, transformers auto class, output taken)
_TASKS = {"ForSequenceClassification": ("sequence-classification",
                                        "AutoModelForSequenceClassification", "logits"),
          "ForTokenClassification": ("token-classification", "AutoModelForTokenClassification",
                                     "logits"),
          "Model": ("feature-extraction", "AutoModel", "last_hidden_state")}
# inputs of other shapes than the export's example: the graph must not have fixed them
_CHECK_TEXTS = (["the model leaves the repository", "a"],
                ["one short input"],
                ["three inputs of several lengths, padded to the longest of them", "two words",
                 "and a last one"])


class OnnxCheckError(ModelgitError):
    """The ONNX graph's outputs differ from the model's by more than the tolerance."""


@dataclass(frozen=True)
class OnnxCheck:
    """What an ONNX export wrote and how close onnxruntime came to torch.

    Attributes:
        path: the ``.onnx`` file; task: ``sequence-classification``, ``token-classification``
            or ``feature-extraction``; output: the output's name (``logits`` or
            ``last_hidden_state``); inputs: the input names.
        max_abs_diff: the largest absolute difference over every check batch; tolerance: the
            limit it was held to; batches: how many check batches were compared.
    """

    path: str
    task: str
    output: str
    inputs: tuple[str, ...]
    max_abs_diff: float
    tolerance: float
    batches: int

    def to_dict(self) -> dict:
        return {"path": self.path, "task": self.task, "output": self.output,
                "inputs": list(self.inputs), "max_abs_diff": self.max_abs_diff,
                "tolerance": self.tolerance, "batches": self.batches}


def require_onnx() -> None:
    """Raise UsageError naming the extra to install when the ONNX packages are missing."""
    import importlib.util

    missing = [m for m in ("onnx", "onnxruntime", "onnxscript") if importlib.util.find_spec(m) is None]
    if missing:
        raise UsageError(f"--onnx needs {', '.join(missing)} (torch.onnx's exporter and the "
                         "check): pip install 'modelgit[export]'")


def onnx_task(config: dict, where: str = "the model") -> tuple[str, str, str]:
    """(task, auto class name, output name) of a model's ``config.json`` for ONNX export.

    Raises:
        UsageError: a decoder or encoder-decoder model, or an architecture modelgit cannot
            export (naming the supported ones).
    """
    architectures = [a for a in config.get("architectures") or [] if isinstance(a, str)]
    if (config.get("is_encoder_decoder") or config.get("is_decoder")
            or any(a.endswith(_DECODER_MARKS) for a in architectures)):
        raise UsageError(f"{where} is a decoder ({', '.join(architectures) or config.get('model_type')}): "
                         "--onnx exports encoders and classifiers only (a generating model "
                         "needs a key-value cache in its graph: use optimum's `optimum-cli "
                         "export onnx` on the directory `modelgit export` writes without --onnx)")
    for architecture in architectures:
        for suffix, task in _TASKS.items():
            if architecture.endswith(suffix):
                return task
    raise UsageError(f"{where} has architectures {architectures or 'none'}: --onnx exports "
                     "*ForSequenceClassification, *ForTokenClassification and bare encoders "
                     "(*Model)")


def _wrap(model, output: str):
    """A module returning the one tensor the export keeps from a transformers model's output
    (torch.export wants tensors, not a ModelOutput)."""
    import torch

    class Wrapped(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.model = model

        def forward(self, input_ids, attention_mask):
            return getattr(self.model(input_ids=input_ids, attention_mask=attention_mask), output)

    return Wrapped().eval()


def _batches(model_dir: str, vocab_size: int):
    """(export example, check batches): token ids and masks as int64 tensors, from the
    directory's tokenizer when it has one (padded), else seeded random ids."""
    import torch

    try:
        from transformers import AutoTokenizer

        tokenizer = AutoTokenizer.from_pretrained(model_dir)
        if tokenizer.pad_token is None:
            raise ValueError("no padding token")
        encode = lambda texts: tuple(  # noqa: E731
            tokenizer(texts, padding=True, return_tensors="pt")[k].to(torch.int64)
            for k in ("input_ids", "attention_mask"))
        batches = [encode(texts) for texts in _CHECK_TEXTS]
    except (OSError, ValueError, KeyError, TypeError):
        generator = torch.Generator().manual_seed(0)
        batches = []
        for rows, length in ((2, 7), (1, 3), (3, 12)):
            ids = torch.randint(0, vocab_size, (rows, length), generator=generator)
            mask = torch.ones_like(ids)
            mask[1:, length // 2:] = 0  # padded rows
            batches.append((ids, mask))
    # the export's example has a padded row: transformers skips the attention mask for an
    # unpadded batch, and the graph must keep it
    return batches[0], batches


def export_onnx(model_dir: str, path: str, tolerance: float = DEFAULT_TOLERANCE,
                opset: int | None = None) -> OnnxCheck:
    """Export the encoder or classifier in ``model_dir`` to ``path`` and check it.

    Args:
        model_dir: a transformers directory (config.json, safetensors, tokenizer files).
        path: the ``.onnx`` file to write (its directory exists).
        tolerance: the largest absolute difference allowed between onnxruntime and torch.
        opset: the ONNX opset (None: the exporter's default).
    Returns:
        the :class:`OnnxCheck`, with the measured difference.
    Raises:
        UsageError: a decoder or an unsupported architecture (see :func:`onnx_task`).
        OnnxCheckError: the exporter failed, or the outputs differ beyond ``tolerance``.
    """
    import numpy as np
    import torch
    import transformers

    from ..adapters.loading import quiet_transformers

    require_onnx()
    with open(os.path.join(model_dir, "config.json"), encoding="utf-8") as handle:
        config = json.load(handle)
    task, auto, output = onnx_task(config)
    with quiet_transformers():
        model = getattr(transformers, auto).from_pretrained(model_dir).eval()
        example, checks = _batches(model_dir, int(config.get("vocab_size") or 2))
    wrapped = _wrap(model, output)
    batch = torch.export.Dim("batch")
    sequence = torch.export.Dim("sequence", max=int(config.get("max_position_embeddings") or 512))
    names = ("input_ids", "attention_mask")
    try:
        # the exporter prints its steps on stdout, which is the command's (--json) output
        # and warns and logs of its internals on stderr; its artifacts (reports) go to a
        # scratch directory
        with contextlib.redirect_stdout(io.StringIO()), torch.no_grad(), _quiet_logger(), \
                warnings.catch_warnings(), tempfile.TemporaryDirectory() as artifacts:
            warnings.simplefilter("ignore")
            torch.onnx.export(wrapped, example, path, dynamo=True, input_names=list(names),
                              output_names=[output], opset_version=opset,
                              dynamic_shapes={n: {0: batch, 1: sequence} for n in names},
                              external_data=_external(model), artifacts_dir=artifacts)
    except Exception as exc:  # noqa: BLE001  the exporter raises many kinds; say which model
        raise OnnxCheckError(f"torch.onnx could not export {model_dir} ({task}): "
                             f"{type(exc).__name__}: {str(exc)[:400]}") from None
    worst = _compare(wrapped, path, checks, names, np)
    if not worst <= tolerance:  # a NaN fails too
        raise OnnxCheckError(f"the ONNX export of {model_dir} differs from torch by {worst:.3g} "
                             f"(largest absolute difference of {output!r}), over the tolerance "
                             f"{tolerance:g}: the graph is not faithful; try another --opset")
    return OnnxCheck(path, task, output, names, worst, tolerance, len(checks))


@contextlib.contextmanager
def _quiet_logger(name: str = "torch.onnx"):
    """torch.onnx's logger at ERROR for a while (it warns of every optional operator set it
    skips, such as torchvision's)."""
    logger = logging.getLogger(name)
    level = logger.level
    logger.setLevel(logging.ERROR)
    try:
        yield
    finally:
        logger.setLevel(level)


def _external(model) -> bool:
    """Weights beside the graph (``model.onnx.data``) past protobuf's 2 GB limit."""
    size = sum(p.numel() * p.element_size() for p in model.parameters())
    return size > 1_500_000_000


def _compare(wrapped, path: str, checks, names, np) -> float:
    import onnxruntime
    import torch

    options = onnxruntime.SessionOptions()
    options.intra_op_num_threads = torch.get_num_threads()
    session = onnxruntime.InferenceSession(path, options, providers=["CPUExecutionProvider"])
    worst = 0.0
    for ids, mask in checks:
        with torch.no_grad():
            expected = wrapped(ids, mask).float().numpy()
        got = session.run(None, {names[0]: ids.numpy(), names[1]: mask.numpy()})[0]
        if got.shape != expected.shape:
            raise OnnxCheckError(f"the ONNX graph of {path} gave shape {got.shape} where torch "
                                 f"gives {expected.shape}")
        worst = max(worst, float(np.max(np.abs(got.astype(np.float32) - expected))))
    return worst
