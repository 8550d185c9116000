"""The per-batch prediction: texts in, columns out, for each task.

A batch of rows (``--batch-rows``, the unit of resuming and of the output's row groups) is run
through the model in *passes* of at most ``tokens_per_pass`` padded tokens (rows × the longest
row), so memory stays bounded whatever the batch holds: a causal LM's logits take
``tokens × vocabulary × 4`` bytes (49 152 × 4 bytes a token for SmolLM2), twice over while the
log-softmax is computed. The same batch always gives the same passes, so a resumed run computes
exactly what an uninterrupted one does.

Columns (see :func:`output_fields`): ``generation`` (generate); ``nll`` (mean negative
log-likelihood per predicted token, nats), ``perplexity`` and ``tokens`` (the number of predicted
tokens) for score; ``label``, ``label_id``, ``probability`` for classify; ``embedding`` (the last
hidden states mean-pooled over the text's tokens, float32) for embed; and ``adapter`` (where each
row went: an adapter's name or ``base``) when the model has an adapter library. A null text gives
nulls; a text of one token has no next token to score (nulls).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from ..errors import UsageError

__all__ = ["TaskSettings", "BatchResult", "predict_texts", "output_fields"]


@dataclass(frozen=True)
class TaskSettings:
    """How a task runs.

    Attributes:
        task: generate, score, classify or embed.
        max_length: the longest input in tokens (None: ``min(context, 1024)``); longer texts
            are cut to their first tokens and counted in ``BatchResult.truncated``.
        tokens_per_pass: the most padded tokens one forward pass holds (see the module doc).
        max_new_tokens: generate: the tokens to add (greedy decoding).
    """

    task: str
    max_length: int | None = None
    tokens_per_pass: int = 2048
    max_new_tokens: int = 32

    def limit(self, context: int) -> int:
        """The input length used with a model of ``context`` tokens."""
        limit = min(self.max_length or 1024, context)
        if self.task == "generate":
            if not 1 <= self.max_new_tokens < context:
                raise UsageError(f"--max-new-tokens {self.max_new_tokens}: give 1 to "
                                 f"{context - 1} (the model's context is {context} tokens)")
            limit = min(limit, context - self.max_new_tokens)
        return limit


@dataclass(frozen=True)
class BatchResult:
    """The prediction columns of one batch (lists, one value per row) and how many of its texts
    were truncated."""

    columns: dict
    truncated: int


def output_fields(task: str, library: bool) -> list[tuple[str, str]]:
    """``(name, type)`` of the prediction columns (types: string, float64, int32, float32 list)."""
    fields = {"generate": [("generation", "string")],
              "score": [("nll", "float64"), ("perplexity", "float64"), ("tokens", "int32")],
              "classify": [("label", "string"), ("label_id", "int32"), ("probability", "float64")],
              "embed": [("embedding", "list<float32>")]}[task]
    return fields + ([("adapter", "string")] if library else [])


def predict_texts(engine, texts: list, settings: TaskSettings) -> BatchResult:
    """Predict ``settings.task`` for ``texts`` (None entries give nulls).

    Raises:
        UsageError: a value that is not a string.
    """
    present = [i for i, t in enumerate(texts) if t is not None]
    bad = [i for i in present if not isinstance(texts[i], str)]
    if bad:
        raise UsageError(f"row {bad[0]} of the batch is a {type(texts[bad[0]]).__name__}, not "
                         "a text: give the column of texts (--text-column)")
    names = [name for name, _ in output_fields(settings.task, engine.library)]
    columns = {name: [None] * len(texts) for name in names}
    limit = settings.limit(engine.context)
    ids, truncated = _tokenize(engine, [texts[i] for i in present], limit)
    extra = settings.max_new_tokens if settings.task == "generate" else 0
    run = _RUNNERS[settings.task]
    for group in _passes([len(x) + extra for x in ids], settings.tokens_per_pass):
        rows = [present[g] for g in group]
        decisions = engine.adapters_of([texts[r] for r in rows])
        values = run(engine, [ids[g] for g in group], decisions, settings)
        adapters = engine.adapter_label(decisions, len(rows))
        if adapters is not None:
            values["adapter"] = adapters
        for name, column in values.items():
            for row, value in zip(rows, column):
                columns[name][row] = value
    return BatchResult(columns, truncated)


def _tokenize(engine, texts: list[str], limit: int) -> tuple[list[list[int]], int]:
    """Token ids of each text, cut to ``limit`` (with the tokenizer's own truncation, which
    keeps an encoder's closing token), and how many were cut."""
    tokenizer = engine.tokenizer
    ids = tokenizer(texts, truncation=False)["input_ids"] if texts else []
    long = [i for i, x in enumerate(ids) if len(x) > limit]
    if long:
        cut = tokenizer([texts[i] for i in long], truncation=True, max_length=limit)["input_ids"]
        for i, x in zip(long, cut):
            ids[i] = x
    return ids, len(long)


def _passes(lengths: list[int], budget: int) -> list[list[int]]:
    """Consecutive rows grouped so that rows × the longest length stays within ``budget``
    (a row longer than the budget goes alone)."""
    groups, current, longest = [], [], 0
    for i, length in enumerate(lengths):
        widest = max(longest, length)
        if current and widest * (len(current) + 1) > budget:
            groups.append(current)
            current, widest = [], length
        current.append(i)
        longest = widest
    if current:
        groups.append(current)
    return groups


def _pad(engine, ids: list[list[int]], side: str = "right") -> dict:
    tokenizer = engine.tokenizer
    before = tokenizer.padding_side
    tokenizer.padding_side = side
    try:
        batch = tokenizer.pad({"input_ids": ids}, padding=True, return_tensors="pt")
    finally:
        tokenizer.padding_side = before
    return {"input_ids": batch["input_ids"], "attention_mask": batch["attention_mask"]}


def _score(engine, ids, decisions, settings) -> dict:
    import torch

    batch = _pad(engine, ids)
    logits = engine.run(batch, decisions).logits  # (b, t, vocab)
    targets = batch["input_ids"][:, 1:]  # (b, t-1)
    mask = batch["attention_mask"][:, 1:].bool()  # (b, t-1): the target is a real token
    nll = torch.nn.functional.cross_entropy(logits[:, :-1].float().transpose(1, 2), targets,
                                            reduction="none")  # (b, t-1)
    del logits
    out = {"nll": [], "perplexity": [], "tokens": []}
    for row in range(len(ids)):
        count = int(mask[row].sum())
        mean = float(nll[row][mask[row]].double().sum()) / count if count else None
        out["nll"].append(mean)
        out["perplexity"].append(math.exp(mean) if count else None)
        out["tokens"].append(count)
    return out


def _classify(engine, ids, decisions, settings) -> dict:
    import torch

    from ..route.router import Decision

    if decisions is not None:  # a soft decision classifies with its top adapter's head
        decisions = [d if len(d.weights) <= 1 else Decision(d.adapter, d.confidence,
                                                            {d.adapter: 1.0}, d.scores)
                     for d in decisions]
    probs = torch.softmax(engine.run(_pad(engine, ids), decisions).logits.float(), -1)  # (b, c)
    model = engine.model.get_base_model() if hasattr(engine.model, "get_base_model") else engine.model
    id2label = model.config.id2label or {}
    best = probs.argmax(-1)  # (b,)
    return {"label": [str(id2label.get(int(b), int(b))) for b in best],
            "label_id": [int(b) for b in best],
            "probability": [float(probs[r, int(b)]) for r, b in enumerate(best)]}


def _embed(engine, ids, decisions, settings) -> dict:
    batch = _pad(engine, ids)
    from ..adapters.pooling import encoder_output

    states = engine.run(batch, decisions, output_hidden_states=True).hidden_states
    hidden = encoder_output(states, engine.model.config)  # (b, t, h)
    mask = batch["attention_mask"].unsqueeze(-1).to(hidden.dtype)  # (b, t, 1)
    pooled = (hidden.float() * mask).sum(1) / mask.sum(1).clamp(min=1)  # (b, h)
    return {"embedding": [row.numpy().astype("float32") for row in pooled]}


def _generate(engine, ids, decisions, settings) -> dict:
    batch = _pad(engine, ids, side="left")  # generation continues from the last position
    tokenizer = engine.tokenizer
    output = engine.run(batch, decisions, "generate", max_new_tokens=settings.max_new_tokens,
                        do_sample=False, pad_token_id=tokenizer.pad_token_id)
    start = batch["input_ids"].shape[1]
    return {"generation": [tokenizer.decode(row[start:], skip_special_tokens=True)
                           for row in output]}


_RUNNERS = {"score": _score, "classify": _classify, "embed": _embed, "generate": _generate}
