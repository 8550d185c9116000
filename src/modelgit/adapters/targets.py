"""Which modules a LoRA adapts: good defaults per architecture, and checks of user choices."""

from __future__ import annotations

import re

from ..errors import UsageError

__all__ = ["DEFAULT_TARGETS", "POOLER", "default_targets", "linear_module_names", "resolve_targets"]

#: model_type -> attention projections adapted by default (the LoRA paper's q, v choice)
DEFAULT_TARGETS: dict[str, tuple[str, ...]] = {
    **{t: ("q_proj", "v_proj") for t in (
        "llama", "mistral", "mixtral", "qwen2", "qwen2_moe", "qwen3", "gemma", "gemma2", "gemma3",
        "gemma3_text", "phi", "opt", "olmo", "olmo2", "smollm3", "granite", "starcoder2")},
    "gpt2": ("c_attn",),
    "gpt_neox": ("query_key_value",), "falcon": ("query_key_value",), "bloom": ("query_key_value",),
    "phi3": ("qkv_proj",),
    "bert": ("query", "value"), "roberta": ("query", "value"), "xlm-roberta": ("query", "value"),
    "electra": ("query", "value"),
    "distilbert": ("q_lin", "v_lin"),  # DistilBERT names its projections q_lin/k_lin/v_lin
    "deberta-v2": ("query_proj", "value_proj"),
    "modernbert": ("Wqkv",),
}
#: the pooler a BERT-like sequence classifier reads (``tanh(dense(h_CLS))``): adapted by default
#: in classification (see :func:`resolve_targets`)
POOLER = "pooler.dense"
# fallback: linear layers whose names look like attention projections
_ATTENTION = re.compile(r"^(q|k|v|query|key|value|qkv|wqkv|c_attn|query_key_value|q_lin|v_lin|"
                        r"q_proj|k_proj|v_proj|qkv_proj|query_proj|value_proj)$", re.IGNORECASE)


def linear_module_names(model) -> list[str]:
    """Full names of the model's ``nn.Linear`` (and GPT-2 ``Conv1D``) layers."""
    import torch

    kinds = (torch.nn.Linear,)
    try:
        from transformers.pytorch_utils import Conv1D

        kinds += (Conv1D,)
    except ImportError:  # pragma: no cover - very old transformers
        pass
    return [name for name, module in model.named_modules() if isinstance(module, kinds) and name]


def default_targets(model_type: str, model=None) -> tuple[str, ...]:
    """The default targets of an architecture; for unknown ones, its attention-like linears.

    Raises:
        UsageError: an unknown architecture without attention-like linear layers.
    """
    if model_type in DEFAULT_TARGETS:
        return DEFAULT_TARGETS[model_type]
    try:
        from peft.utils.constants import TRANSFORMERS_MODELS_TO_LORA_TARGET_MODULES_MAPPING as peft_map
    except ImportError:  # pragma: no cover - peft is required to train anyway
        peft_map = {}
    if peft_map.get(model_type):
        return tuple(peft_map[model_type])
    leaves = sorted({n.rsplit(".", 1)[-1] for n in (linear_module_names(model) if model else [])})
    found = tuple(leaf for leaf in leaves if _ATTENTION.match(leaf))
    if not found:
        raise UsageError(f"no default LoRA targets for architecture {model_type!r}: pass --targets "
                         f"with some of its linear layers ({', '.join(leaves[:20]) or 'none found'})")
    return found


def resolve_targets(model, model_type: str, requested: tuple[str, ...] | None,
                    exclude: tuple[str, ...] = (), classifier: bool = False) -> tuple[str, ...] | str:
    """The targets to give PEFT: ``requested`` (checked) or the architecture's defaults.

    With ``classifier`` (and no ``requested``), a model that classifies through a pooler
    (:data:`POOLER`) gets it adapted too: the new head reads only the pooler's output, and a
    sentence encoder's pooler (all-MiniLM-L6-v2 is trained for mean pooling) was never trained
    to summarise a text. Measured on this machine's language / man-section tasks (issue 17,
    benchmarks/README.md): logistic regression on all-MiniLM-L6-v2's frozen pooler outputs
    reaches 0.863 / 0.442 accuracy, on its mean-pooled states 0.963 / 0.567; `train`'s
    defaults went from 0.938 / 0.492 with query, value to 0.988 / 0.483 with the pooler too.

    ``all-linear`` is passed through (PEFT then adapts every linear layer but the output head).
    ``exclude`` names modules (classifier heads) that are trained whole, not adapted.

    Raises:
        UsageError: a requested name matches no linear layer of the model; the message lists
            the names that would.
    """
    if requested in (("all-linear",), ("all_linear",)):
        return "all-linear"
    targets = tuple(requested) if requested else default_targets(model_type, model)
    names = [n for n in linear_module_names(model)
             if not any(part in exclude for part in n.split("."))]
    if classifier and not requested and any(n.endswith("." + POOLER) for n in names):
        targets += (POOLER,)
    missing = [t for t in targets if not any(n == t or n.endswith("." + t) for n in names)]
    if missing:
        leaves = sorted({n.rsplit(".", 1)[-1] for n in names})
        raise UsageError(f"target module(s) {', '.join(missing)} not found in this {model_type or 'model'} "
                         f"model: pass --targets with some of its linear layers "
                         f"({', '.join(leaves)}), or all-linear")
    return targets
