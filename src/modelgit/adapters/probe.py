"""A linear probe beside a classifier's training: the yardstick the fine-tuned model must beat.

On a sentence encoder with a few dozen examples per class, logistic regression on the frozen
model's mean-pooled embeddings can beat fine-tuning (benchmarks/README.md, issue 17). So `train
--task classification` with held-out data fits one on the model training starts from (for a new
LoRA: the base) and reports its held-out accuracy beside the trained model's: the user sees which
is ahead without writing the baseline. The fit is scikit-learn's default ``LogisticRegression``
(multinomial, L2 penalty with ``C = 1`` on the weights, not the bias) by L-BFGS, in float64:
deterministic, and it consumes no random numbers (training's are untouched).

On a BERT encoder the probe is also a classifier modelgit writes (:func:`probe_classifier`,
``train --classifier probe`` or ``auto``): read through the mean-pooling layer of
:mod:`.pooling`, so that it loads, merges and serves as a stock transformers classifier.
"""

from __future__ import annotations

from . import _batches
from .pooling import encoder_output, pooled_features

__all__ = ["MAX_PROBE_EXAMPLES", "spread", "mean_pooled", "fit_probe", "probe_accuracy", "probe_classifier"]

#: training examples the probe fits on at most: spread evenly over the data's order (a file
#: sorted by class still gives every class), see :func:`spread`
MAX_PROBE_EXAMPLES = 8192


def spread(count: int, limit: int = MAX_PROBE_EXAMPLES) -> list[int]:
    """``min(count, limit)`` indices of ``range(count)``, evenly spaced over it, in order."""
    n = min(count, limit)
    return [i * count // n for i in range(n)]


def mean_pooled(model, ids: list[list[int]], pad_id: int, batch_size: int, bar=None):
    """(n, hidden) float64: the last hidden states averaged over each text's real tokens, in eval
    mode without gradients (the model's mode is restored); ``bar.update(1)`` after each batch."""
    import torch

    from ..tensor_math import masked_mean

    was_training = model.training
    model.eval()
    out = []
    plan = _batches.in_order(len(ids), batch_size)
    with torch.no_grad():
        for batch in _batches.iterate(plan, ids, pad_id, None):
            mask = batch["attention_mask"]
            states = model(input_ids=batch["input_ids"], attention_mask=mask,
                           output_hidden_states=True).hidden_states
            hidden = encoder_output(states, model.config)  # (b, t, d)
            out.append(masked_mean(hidden.double(), mask))
            if bar is not None:
                bar.update(1)
    model.train(was_training)
    return torch.cat(out)


def fit_probe(features, labels: list[int], classes: int, c: float = 1.0, max_iter: int = 500):
    """Weights (classes, d) and bias (classes,) minimising ``sum_i CE_i + ||W||^2 / (2c)``."""
    import torch

    x = features.double()
    y = torch.tensor(labels)
    weight = torch.zeros(classes, x.shape[1], dtype=torch.float64, requires_grad=True)
    bias = torch.zeros(classes, dtype=torch.float64, requires_grad=True)
    solver = torch.optim.LBFGS([weight, bias], lr=1, max_iter=max_iter, tolerance_grad=1e-9,
                               tolerance_change=1e-12, history_size=20, line_search_fn="strong_wolfe")

    def objective():
        solver.zero_grad()
        loss = torch.nn.functional.cross_entropy(x @ weight.T + bias, y, reduction="sum") \
            + (weight ** 2).sum() / (2 * c)
        loss.backward()
        return loss

    solver.step(objective)
    return weight.detach(), bias.detach()


def probe_accuracy(model, train_ids, train_labels, valid_ids, valid_labels, pad_id: int,
                   batch_size: int, classes: int, progress: bool | None = None) -> dict:
    """``{"accuracy", "examples"}``: held-out accuracy of a probe fitted on (at most
    :data:`MAX_PROBE_EXAMPLES` of) the training examples' mean-pooled embeddings; the forward
    passes show progress (``progress`` as :func:`modelgit.progress.progress_bar`'s)."""
    from ..progress import progress_bar

    chosen = spread(len(train_ids))
    n = len(chosen)
    batches = -(-n // batch_size) + -(-len(valid_ids) // batch_size)
    with progress_bar(batches, "linear probe", progress, unit="batch") as bar:
        train_features = mean_pooled(model, [train_ids[i] for i in chosen], pad_id, batch_size, bar)
        valid_features = mean_pooled(model, valid_ids, pad_id, batch_size, bar)
    weight, bias = fit_probe(train_features, [train_labels[i] for i in chosen], classes)
    logits = valid_features @ weight.T + bias
    correct = sum(int(p) == int(t) for p, t in zip(logits.argmax(-1), valid_labels))
    return {"accuracy": correct / len(valid_ids), "examples": n}


def probe_classifier(base: str, id2label: dict[int, str], lora, ids, labels, pad_id: int,
                     batch_size: int, progress: bool | None = None, held=((), ())):
    """The probe as a classifier: the base with the mean-pooling layer (:mod:`.pooling`), a PEFT
    adapter of ``lora``'s settings whose LoRA weights are zero (the body is the base's) and whose
    head is logistic regression on the pooler's output for (at most :data:`MAX_PROBE_EXAMPLES`
    of) the training examples.

    The features are scaled to the mean norm of the raw mean-pooled embeddings before the fit,
    so that ``C = 1`` regularises as it does in the probe on those (the reported yardstick).
    Consumes no random numbers of its own (the zeroed LoRA's draws are overwritten).

    Returns:
        (model, refit): ``refit()`` fits the head again on the examples and the ``held`` ones
        (``(ids, labels)``, scored on first), each example's features computed once.
    """
    import torch
    from peft import LoraConfig, get_peft_model

    from ..progress import progress_bar
    from .loading import load_model

    model = load_model(base, "classification", id2label, pad_token_id=pad_id, pooling="mean")
    layers = model.config.num_hidden_layers - 1  # the base's own: no LoRA in the constant layer
    settings = {k: v for k, v in lora.to_dict().items() if k in
                ("r", "lora_alpha", "lora_dropout", "bias", "target_modules", "fan_in_fan_out")}
    model = get_peft_model(model, LoraConfig(**settings, task_type="SEQ_CLS",
                                             layers_to_transform=list(range(layers)),
                                             layers_pattern="layer"))
    with torch.no_grad():
        for name, param in model.named_parameters():
            if "lora_" in name:
                param.zero_()
    model.eval()
    every_ids, every_labels = [*ids, *held[0]], [*labels, *held[1]]
    first, whole = spread(len(ids)), spread(len(every_ids)) if held[0] else []
    seen = set(first)
    groups = [first, [i for i in whole if i not in seen]]  # the refit's new examples after
    features = {}  # example index -> (raw mean, pooler output)
    batches = sum(-(-len(group) // batch_size) for group in groups)
    with progress_bar(batches, "linear probe", progress, unit="batch") as bar:
        for group in groups:
            plan = _batches.in_order(len(group), batch_size)
            for step, batch in zip(plan, _batches.iterate(plan, [every_ids[i] for i in group],
                                                          pad_id, None)):
                for k, raw, out in zip(step, *pooled_features(model, batch)):
                    features[group[k]] = (raw, out)
                bar.update(1)
    head = {name.rsplit(".", 1)[-1]: p for name, p in model.named_parameters()
            if ".modules_to_save.default." in name
            and name.split(".modules_to_save.")[0].endswith("classifier")}

    def fit(indices: list[int]) -> None:
        raw = torch.stack([features[i][0] for i in indices])
        pooled = torch.stack([features[i][1] for i in indices])
        scale = float(raw.norm(dim=1).mean() / pooled.norm(dim=1).mean())
        weight, bias = fit_probe(pooled * scale, [every_labels[i] for i in indices], len(id2label))
        with torch.no_grad():
            head["weight"].copy_(weight * scale)
            head["bias"].copy_(bias)

    fit(first)
    return model, lambda: fit(whole)
