"""Mean pooling inside a stock BERT sequence classifier: one more layer, of constants.

``BertForSequenceClassification`` reads only the first token (the pooler: ``tanh(dense(h_0))``).
A sentence encoder such as all-MiniLM-L6-v2 was trained to be read by the mean of its tokens,
and on a few dozen examples per class a linear probe on that mean beats fine-tuning the first
token (benchmarks/README.md, issue 17). So a *mean-pooled* classifier appends to the encoder one
layer whose weights are constants, making the first token the (layer-normalised) masked mean of
the last hidden states:

* queries and keys are zero, so every token attends uniformly to the real tokens (the attention
  mask removes the padding); values are the identity: the attention output is the masked mean;
* the attention's output projection multiplies it by :data:`SPREAD` before the residual adds the
  token's own state, which the LayerNorm then scales away (its share is below 1e-3);
* the feed-forward block adds zero; the pooler is ``tanh(POOLER_SCALE * x)``, close to linear.

The result is an ordinary ``BertForSequenceClassification`` with ``num_hidden_layers + 1``:
transformers and any BERT runtime load it with no custom code (``modelgit export --onnx`` of a
merged MiniLM one: onnxruntime within 2.0e-6 of torch). An adapter marks
itself mean-pooled in its ``labels.json`` (``"pooling": "mean"``); :func:`modelgit.adapters.
loading.load_model` then adds the layer, and a merge writes it (:mod:`modelgit.merge.engine`).
"""

from __future__ import annotations

__all__ = ["CONFIG_KEY", "POOLINGS", "MODEL_TYPES", "SPREAD", "POOLER_SCALE", "mean_pooling_problem",
           "mean_pooling_tensors", "set_mean_pooling", "encoder_output", "pooled_features"]

#: set to "mean" in the config of a mean-pooled classifier (loaded, or merged and released): its
#: last hidden states are the constant layer's, the encoder's are the ones before (:func:`encoder_output`)
CONFIG_KEY = "modelgit_pooling"
POOLINGS = ("cls", "mean")  # labels.json's "pooling": the first token (transformers'), or the mean
SPREAD = 1000.0  # the mean's weight against the token's own state before the LayerNorm
POOLER_SCALE = 0.01  # tanh(0.01 x) for layer-normalised x (|x| mostly < 10): nearly linear
MODEL_TYPES = ("bert",)  # BertLayer + BertPooler under BertForSequenceClassification
_MAX_SIZE = 65_536  # hidden and intermediate sizes, layers: the constants are d x d matrices


def mean_pooling_problem(config: dict) -> str | None:
    """Why a model of this config.json cannot be a mean-pooled classifier, or None."""
    kind = config.get("model_type") if isinstance(config, dict) else None
    if kind not in MODEL_TYPES:
        return f"mean pooling is built for BERT encoders (model_type bert), not {kind!r}"
    names = config.get("architectures") if isinstance(config.get("architectures"), list) else []
    if any(str(a).endswith("ForSequenceClassification") for a in names):
        return ("the base is a sequence classifier already (its pooler and head are trained "
                "weights, merged as such): mean pooling starts from the bare encoder")
    for key in ("hidden_size", "num_hidden_layers", "intermediate_size"):
        value = config.get(key)
        if not isinstance(value, int) or isinstance(value, bool) or not 1 <= value <= _MAX_SIZE:
            return f"config.json has no usable {key} (a whole number from 1 to {_MAX_SIZE:,})"
    return None


def mean_pooling_tensors(config: dict, prefix: str = "bert") -> dict:
    """{name: float32 tensor}: the constant layer (index ``num_hidden_layers`` of the encoder in
    ``config``, which does not count it) and the pooler, named as in the task model."""
    import torch

    d, inner, n = config["hidden_size"], config["intermediate_size"], config["num_hidden_layers"]
    layer = f"{prefix}.encoder.layer.{n}."
    zeros, eye = (lambda *shape: torch.zeros(shape)), torch.eye(d)
    return {
        layer + "attention.self.query.weight": zeros(d, d),
        layer + "attention.self.query.bias": zeros(d),
        layer + "attention.self.key.weight": zeros(d, d),
        layer + "attention.self.key.bias": zeros(d),
        layer + "attention.self.value.weight": eye.clone(),
        layer + "attention.self.value.bias": zeros(d),
        layer + "attention.output.dense.weight": eye * SPREAD,
        layer + "attention.output.dense.bias": zeros(d),
        layer + "attention.output.LayerNorm.weight": torch.ones(d),
        layer + "attention.output.LayerNorm.bias": zeros(d),
        layer + "intermediate.dense.weight": zeros(inner, d),
        layer + "intermediate.dense.bias": zeros(inner),
        layer + "output.dense.weight": zeros(d, inner),
        layer + "output.dense.bias": zeros(d),
        layer + "output.LayerNorm.weight": torch.ones(d),
        layer + "output.LayerNorm.bias": zeros(d),
        f"{prefix}.pooler.dense.weight": eye * POOLER_SCALE,
        f"{prefix}.pooler.dense.bias": zeros(d),
    }


def set_mean_pooling(model, base_config: dict) -> None:
    """Write the constants into ``model``: a ``BertForSequenceClassification`` built with one
    layer more than ``base_config`` (the base's config.json) names; mark its config."""
    import torch

    params = dict(model.named_parameters())
    with torch.no_grad():
        for name, value in mean_pooling_tensors(base_config, model.base_model_prefix).items():
            params[name].copy_(value)
    setattr(model.config, CONFIG_KEY, "mean")


def encoder_output(hidden_states, config):
    """The encoder's last hidden states among a forward pass's ``hidden_states``: for a
    mean-pooled classifier (``config`` marked, :data:`CONFIG_KEY`) those before its constant layer,
    whose every token is about the mean already; else the last."""
    return hidden_states[-2] if getattr(config, CONFIG_KEY, None) == "mean" else hidden_states[-1]


def pooled_features(model, batch: dict):
    """(mean of the real tokens before the constant layer, pooler output) of a mean-pooled
    classifier (a PEFT model or not) for one padded batch, in float64, without gradients."""
    import torch

    from ..tensor_math import masked_mean

    inner = model.get_base_model() if hasattr(model, "get_base_model") else model
    body = getattr(inner, inner.base_model_prefix)
    with torch.no_grad():
        out = body(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"],
                   output_hidden_states=True)
    return masked_mean(encoder_output(out.hidden_states, inner.config).double(),
                       batch["attention_mask"]), out.pooler_output.double()
