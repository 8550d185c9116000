"""``modelgit predict``: a model over a Parquet, CSV or JSON Lines file, into Parquet.

The input is read batch by batch (:mod:`.inputs`), each batch predicted (:mod:`.tasks`) and
written as a part of the work directory (:mod:`.journal`); the output appears, whole, when the
last batch is done. Memory holds the model, one batch and one forward pass, whatever the
input's size. An interrupted run resumes from its last finished batch when run again.
"""

from __future__ import annotations

import os
import signal
import time
from dataclasses import asdict, dataclass

from ..errors import UsageError

__all__ = ["PredictRequest", "PredictResult", "predict", "output_schema", "batch_table",
           "KILL_AFTER_ENV"]

#: tests only: ``kill -9`` this process once it has written that many batches (a kill at a known
#: point, not after a guessed time)
KILL_AFTER_ENV = "MODELGIT_PREDICT_KILL_AFTER_BATCHES"


@dataclass(frozen=True)
class PredictRequest:
    """One prediction job (see ``modelgit predict --help`` for each option).

    Attributes:
        source, rev, adapter, router: the model (see :class:`~.engine.ModelChoice`).
        input, output: the files; input_format: parquet, csv, tsv or jsonl (None: by suffix).
        task: generate, score, classify or embed.
        text_column: the input's column of texts; id_column: a column copied to the output.
        batch_rows: rows per batch (the unit of resuming); limit: only the first rows.
        max_length, tokens_per_pass, max_new_tokens: see :class:`~.tasks.TaskSettings`.
        restart: discard another job's unfinished work; force: replace an existing output.
    """

    source: str
    input: str
    output: str
    task: str
    rev: str | None = None
    adapter: str | None = None
    router: bool = False
    input_format: str | None = None
    text_column: str = "text"
    id_column: str | None = None
    batch_rows: int = 64
    limit: int | None = None
    max_length: int | None = None
    tokens_per_pass: int = 2048
    max_new_tokens: int = 32
    restart: bool = False
    force: bool = False

    def check(self) -> None:
        """Raises UsageError for values that cannot work."""
        for name in ("batch_rows", "tokens_per_pass", "max_new_tokens"):
            value = getattr(self, name)
            if not isinstance(value, int) or value < 1:
                raise UsageError(f"{name.replace('_', '-')} is {value!r}: give a positive integer")
        for name in ("limit", "max_length"):
            value = getattr(self, name)
            if value is not None and (not isinstance(value, int) or value < (0 if name == "limit" else 2)):
                raise UsageError(f"--{name.replace('_', '-')} is {value!r}: give a positive integer")
        if os.path.abspath(self.input) == os.path.abspath(self.output):
            raise UsageError(f"the output {self.output} is the input: give another path")


@dataclass(frozen=True)
class PredictResult:
    """What a run did: rows written, batches (of which ``resumed`` were done before this run),
    texts truncated in this run, and its time."""

    output: str
    rows: int
    batches: int
    resumed: int
    truncated: int
    seconds: float

    @property
    def rows_per_second(self) -> float:
        return self.rows / self.seconds if self.seconds > 0 else 0.0


def output_schema(task: str, library: bool, id_column: str | None = None, id_type=None):
    """The output's Arrow schema: ``row`` (the input's row number), the id column, then the
    prediction columns (:func:`~.tasks.output_fields`)."""
    import pyarrow as pa

    from .tasks import output_fields

    types = {"string": pa.string(), "float64": pa.float64(), "int32": pa.int32(),
             "list<float32>": pa.list_(pa.float32())}
    fields = [pa.field("row", pa.int64(), nullable=False)]
    if id_column:
        fields.append(pa.field(id_column, id_type if id_type is not None else pa.string()))
    fields += [pa.field(name, types[kind]) for name, kind in output_fields(task, library)]
    return pa.schema(fields)


def batch_table(schema, first_row: int, ids, columns: dict):
    """One batch's output table (``columns``: lists from :func:`~.tasks.predict_texts`)."""
    import numpy as np
    import pyarrow as pa

    rows = len(next(iter(columns.values())))
    arrays = []
    for field in schema:
        if field.name == "row":
            arrays.append(pa.array(np.arange(first_row, first_row + rows, dtype=np.int64)))
        elif field.name in columns:
            arrays.append(pa.array(columns[field.name], type=field.type))
        else:  # the id column
            arrays.append(ids.cast(field.type) if ids is not None else pa.nulls(rows, field.type))
    return pa.Table.from_arrays(arrays, schema=schema)


def _job(request: PredictRequest, source, engine) -> dict:
    options = {k: v for k, v in asdict(request).items()
               if k not in ("input", "output", "restart", "force", "source")}
    return {"version": 1,
            "input": {"path": os.path.abspath(request.input), "format": source.format,
                      **source.identity},
            "source": os.path.abspath(request.source), "options": options,
            "model": engine.identity}


def _threads(engine) -> None:
    """torch's threads for this model's passes (see :mod:`modelgit._threads`)."""
    import torch

    from .._threads import choose_threads

    weights = sum(p.numel() for p in engine.model.parameters())
    torch.set_num_threads(choose_threads(2 * weights * 512))


def predict(request: PredictRequest | None = None, progress: bool | None = False,
            **options) -> PredictResult:
    """Run a prediction job (resuming its unfinished work, if any).

    Args:
        request: the job; or its fields as keyword arguments, e.g.
            ``predict(source="base/", input="in.parquet", output="out.parquet", task="score")``.
        progress: a bar (True), nothing (False), or the CLI's default (None: lines when
            stderr is no terminal).
    Returns:
        A :class:`PredictResult`.
    Raises:
        UsageError: bad options; an output that exists (without ``force``); a missing column
            (naming the columns there are); a task the model cannot do; another job's
            unfinished work (without ``restart``).
        FormatError: an input that cannot be read; FileChangedError: one that changed.
    """
    from .._outputs import check_output
    from ..progress import note, progress_bar
    from .engine import ModelChoice, load_engine
    from .inputs import open_input
    from .journal import Journal
    from .tasks import TaskSettings, predict_texts

    request = request or PredictRequest(**options)
    request.check()
    check_output(request.output, "file", force=request.force)
    with open_input(request.input, request.input_format, request.text_column,
                    request.id_column) as source:
        engine = load_engine(ModelChoice(request.source, request.rev, request.adapter,
                                         request.router), request.task, progress)
        _threads(engine)
        settings = TaskSettings(request.task, request.max_length, request.tokens_per_pass,
                                request.max_new_tokens)
        settings.limit(engine.context)  # a bad --max-new-tokens fails before any work
        schema = output_schema(request.task, engine.library, request.id_column, source.id_type)
        journal = Journal.open(request.output, _job(request, source, engine), request.restart)
        resumed = journal.done
        if resumed:
            note(f"predict: resuming {request.output} after {resumed} finished batches "
                 f"({resumed * request.batch_rows} rows)", progress)
        total = source.rows if request.limit is None else min(source.rows or request.limit,
                                                              request.limit)
        remaining = max(0, total - resumed * request.batch_rows) if total is not None else 0
        kill_after = int(os.environ.get(KILL_AFTER_ENV, "0") or 0)
        started, truncated, written = time.monotonic(), 0, 0
        with progress_bar(remaining, "predict", progress, unit="row") as bar:
            for batch in source.batches(request.batch_rows, resumed):
                texts = batch.texts
                if request.limit is not None:
                    texts = texts[:max(0, request.limit - batch.first)]
                    if not texts:
                        break
                result = predict_texts(engine, texts, settings)
                ids = batch.ids.slice(0, len(texts)) if batch.ids is not None else None
                journal.write_part(batch.index, batch_table(schema, batch.first, ids,
                                                            result.columns))
                truncated += result.truncated
                written += 1
                bar.update(len(texts), truncated=truncated) if truncated else bar.update(len(texts))
                if kill_after and written >= kill_after:
                    os.kill(os.getpid(), signal.SIGKILL)
        rows = journal.finish(schema)
    return PredictResult(request.output, rows, journal.done, resumed, truncated,
                         time.monotonic() - started)
