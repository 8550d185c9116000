"""The per-batch prediction as a callable class, for Ray Data (``Dataset.map_batches``) or any
other engine that hands out batches as ``{column: numpy array}``::

    import ray
    from modelgit.predict import BatchPredictor

    ds = ray.data.read_parquet("s3://bucket/texts/")
    ds = ds.map_batches(BatchPredictor, fn_constructor_kwargs={"source": "my-model/",
                        "task": "score", "router": True}, batch_size=64, concurrency=4)
    ds.write_parquet("s3://bucket/scores/")

Each actor loads the model once (in ``__init__``); each call predicts one batch exactly as
``modelgit predict`` does and returns the batch's columns plus the prediction columns.
"""

from __future__ import annotations

__all__ = ["BatchPredictor"]


class BatchPredictor:
    """A model held for batch after batch of texts.

    Args:
        source, rev, adapter, router: the model (see :class:`~.engine.ModelChoice`).
        task: generate, score, classify or embed.
        text_column: the batch's column of texts.
        max_length, tokens_per_pass, max_new_tokens: see :class:`~.tasks.TaskSettings`.
    Raises:
        UsageError: as :func:`~.engine.load_engine`.
    """

    def __init__(self, source: str, task: str, rev: str | None = None, adapter: str | None = None,
                 router: bool = False, text_column: str = "text", max_length: int | None = None,
                 tokens_per_pass: int = 2048, max_new_tokens: int = 32):
        from .engine import ModelChoice, load_engine
        from .tasks import TaskSettings

        self.engine = load_engine(ModelChoice(source, rev, adapter, router), task)
        self.settings = TaskSettings(task, max_length, tokens_per_pass, max_new_tokens)
        self.settings.limit(self.engine.context)
        self.text_column = text_column

    def __call__(self, batch: dict) -> dict:
        """``batch`` (``{column: numpy array}``) with the prediction columns added: strings and
        numbers as 1-d arrays (None, NaN or -1 for null texts), ``embedding`` as a 2-d float32 array.

        Raises:
            UsageError: the batch has no text column (naming its columns).
        """
        import numpy as np

        from ..errors import UsageError
        from .tasks import output_fields, predict_texts

        if self.text_column not in batch:
            raise UsageError(f"the batch has no column {self.text_column!r}; its columns: "
                             f"{', '.join(batch)}: give text_column=NAME")
        texts = [None if t is None else str(t) for t in batch[self.text_column]]
        columns = predict_texts(self.engine, texts, self.settings).columns
        out = dict(batch)
        for name, kind in output_fields(self.settings.task, self.engine.library):
            values = columns[name]
            if kind == "list<float32>":
                width = next((len(v) for v in values if v is not None), 0)
                out[name] = np.stack([v if v is not None else np.full(width, np.nan, np.float32)
                                      for v in values]) if values else np.zeros((0, width), np.float32)
            elif kind == "string":
                out[name] = np.array(values, dtype=object)
            elif kind == "float64":
                out[name] = np.array([np.nan if v is None else v for v in values], np.float64)
            else:  # counts and class ids: -1 for a null text
                out[name] = np.array([-1 if v is None else v for v in values], np.int64)
        return out
