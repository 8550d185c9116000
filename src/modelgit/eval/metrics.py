"""The metrics of evaluation suites: perplexity for language models, accuracy and macro-F1 for
classifiers. Pure functions of a loaded model, a tokenizer and lists of examples."""

from __future__ import annotations

import math
from typing import Iterator

from ..errors import UsageError

__all__ = ["perplexity", "perplexity_of", "nll_per_document", "classification_metrics",
           "predict_classes", "macro_f1", "accuracy"]


def _batches(tokenizer, texts: list[str], max_length: int, batch_size: int,
             progress: bool | None, desc: str) -> Iterator[dict]:
    from ..progress import progress_bar

    starts = range(0, len(texts), batch_size)
    with progress_bar(len(starts), desc, progress, unit="batch") as bar:
        for start in starts:
            yield tokenizer(texts[start:start + batch_size], truncation=True,
                            max_length=max_length, padding=True, return_tensors="pt")
            bar.update(1)


def nll_per_document(model, tokenizer, texts: list[str], max_length: int = 256,
                     batch_size: int = 8, progress: bool | None = False,
                     desc: str = "perplexity") -> tuple[list[float], list[int]]:
    """Each text's summed negative log-likelihood of its next tokens (nats) and the number of
    tokens predicted (padding excluded, texts truncated to ``max_length``): the per-document
    parts of :func:`perplexity`, which the bootstrap resamples."""
    import torch

    nll_out: list[float] = []
    tokens_out: list[int] = []
    model.eval()
    with torch.no_grad():
        for batch in _batches(tokenizer, texts, max_length, batch_size, progress, desc):
            batch.pop("token_type_ids", None)
            logits = model(**batch).logits.float()  # (b, t, vocab)
            targets = batch["input_ids"][:, 1:]  # (b, t-1)
            mask = batch["attention_mask"][:, 1:].bool()  # (b, t-1): the target is a real token
            nll = torch.nn.functional.cross_entropy(
                logits[:, :-1].reshape(-1, logits.shape[-1]), targets.reshape(-1),
                reduction="none").reshape(targets.shape)  # (b, t-1)
            nll_out.extend(float(v) for v in (nll.double() * mask).sum(1))
            tokens_out.extend(int(v) for v in mask.sum(1))
    return nll_out, tokens_out


def perplexity_of(nll: list[float], tokens: list[int]) -> dict:
    """``{"perplexity", "loss", "tokens"}`` from per-document parts (see :func:`perplexity`).

    Raises:
        UsageError: no text has two tokens (nothing to predict).
    """
    count = sum(tokens)
    if count == 0:
        raise UsageError("no evaluation text is longer than one token: perplexity needs texts "
                         "with at least two tokens")
    loss = math.fsum(nll) / count
    return {"perplexity": math.exp(loss), "loss": loss, "tokens": count}


def perplexity(model, tokenizer, texts: list[str], max_length: int = 256, batch_size: int = 8,
               progress: bool | None = False) -> dict:
    """Perplexity of a causal LM on ``texts``: exp of the token-weighted mean negative
    log-likelihood of every next token, padding excluded (texts truncated to ``max_length``).

    Returns:
        ``{"perplexity", "loss", "tokens"}``: ``loss`` is the mean NLL in nats per predicted
        token, ``tokens`` the number of predicted tokens.
    Raises:
        UsageError: no text has two tokens (nothing to predict).
    """
    return perplexity_of(*nll_per_document(model, tokenizer, texts, max_length, batch_size, progress))


def predict_classes(model, tokenizer, texts: list[str], max_length: int = 256, batch_size: int = 16,
                    progress: bool | None = False, desc: str = "classify") -> list[int]:
    """The arg-max class index of a sequence classifier for each text."""
    import torch

    out: list[int] = []
    model.eval()
    with torch.no_grad():
        for batch in _batches(tokenizer, texts, max_length, batch_size, progress, desc):
            logits = model(**batch).logits  # (b, num_labels)
            out.extend(int(i) for i in logits.argmax(-1))
    return out


def accuracy(labels: list, predictions: list) -> float:
    """Fraction of predictions equal to the labels."""
    if len(labels) != len(predictions) or not labels:
        raise UsageError(f"accuracy needs as many predictions as labels, at least one "
                         f"({len(predictions)} for {len(labels)})")
    return sum(a == b for a, b in zip(labels, predictions)) / len(labels)


def macro_f1(labels: list, predictions: list) -> float:
    """Unweighted mean of the per-class F1 over every class in the labels or the predictions
    (as scikit-learn's ``f1_score(average="macro")``); F1 = 2·TP / (2·TP + FP + FN)."""
    if len(labels) != len(predictions) or not labels:
        raise UsageError(f"macro-F1 needs as many predictions as labels, at least one "
                         f"({len(predictions)} for {len(labels)})")
    scores = []
    for cls in sorted(set(labels) | set(predictions), key=repr):
        tp = sum(1 for y, p in zip(labels, predictions) if y == cls and p == cls)
        fp = sum(1 for y, p in zip(labels, predictions) if y != cls and p == cls)
        fn = sum(1 for y, p in zip(labels, predictions) if y == cls and p != cls)
        scores.append(2 * tp / (2 * tp + fp + fn))
    return sum(scores) / len(scores)


def classification_metrics(model, tokenizer, texts: list[str], labels: list[int],
                           max_length: int = 256, batch_size: int = 16,
                           progress: bool | None = False) -> dict:
    """Accuracy and macro-F1 of a sequence classifier on ``texts`` with class-index ``labels``.

    Returns:
        ``{"accuracy", "macro_f1", "n"}``.
    """
    if len(texts) != len(labels):
        raise UsageError(f"{len(texts)} texts but {len(labels)} labels")
    predictions = predict_classes(model, tokenizer, texts, max_length, batch_size, progress)
    return {"accuracy": accuracy(labels, predictions), "macro_f1": macro_f1(labels, predictions),
            "n": len(labels)}
