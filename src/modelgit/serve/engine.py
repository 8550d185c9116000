"""The work of a batch, on the engine's one thread: generation, embeddings, classification.

A batch holds requests for any mix of adapters and the base: PEFT's mixed-adapter batches
(``adapter_names``) run them in one ``generate`` or forward call. A request routed ``auto`` gets
its adapter from the release's router first. When a batch fails as a whole, each request runs
alone, so one bad request fails only itself: each gets its own result or its own error.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from ..errors import ModelgitError
from .api_errors import APIError
from .catalog import AUTO

__all__ = ["GenJob", "TextJob", "Generated", "Embedded", "Classified", "Engine"]


@dataclass
class GenJob:
    """A generation request: its prompt's token ids, how to decode, and (streaming) ``emit``,
    called from the engine's thread with each new piece of text."""

    adapter: str | None
    ids: list
    max_tokens: int
    stop: tuple = ()
    sampling: tuple = (0.0, 1.0)  # (temperature, top_p); temperature 0: greedy
    text: str = ""  # the prompt, for the router
    emit: object = None
    route: str | None = field(default=None)  # ``auto``: the adapter is chosen by the router
    sent: bool = False  # part of the text was streamed (a failed batch cannot redo this job)


@dataclass
class TextJob:
    """An embeddings or classification request for one input."""

    adapter: str | None
    ids: list
    text: str = ""
    route: str | None = None


@dataclass(frozen=True)
class Generated:
    text: str
    prompt_tokens: int
    completion_tokens: int
    finish_reason: str
    adapter: str | None


@dataclass(frozen=True)
class Embedded:
    vector: list
    tokens: int
    adapter: str | None


@dataclass(frozen=True)
class Classified:
    label: str
    label_id: int
    probability: float
    tokens: int
    adapter: str | None


class Engine:
    """Runs batches over an :class:`~.pool.AdapterPool`.

    Args:
        pool: the model and its adapters.
        router: a zero-argument function giving the RoutedModel (``auto``), or None.
    """

    def __init__(self, pool, router=None):
        self.pool, self._router_factory, self._router = pool, router, None

    # ------------------------------------------------------------------ batches
    def run(self, kind: str, jobs: list) -> list:
        """Results of ``jobs`` (all of ``kind``: ``generate``, ``embed``, ``classify``), each a
        result or an exception (an :class:`APIError` or other) for that job alone."""
        results: list = [None] * len(jobs)
        try:
            self._route(jobs)
        except Exception as exc:  # noqa: BLE001 - the router failed: every auto job says so
            for i, job in enumerate(jobs):
                if job.route == AUTO and job.adapter is None:
                    results[i] = _as_error(exc)
        live = [i for i in range(len(jobs)) if results[i] is None]
        for group in self._groups([jobs[i] for i in live], live):
            self._run_group(kind, jobs, group, results)
        return results

    def _groups(self, jobs, indexes) -> list[list[int]]:
        """Split into groups of at most ``max_adapters`` distinct adapters (in order)."""
        groups, current, names = [], [], set()
        for job, index in zip(jobs, indexes):
            name = job.adapter
            if name is not None and name not in names and len(names) >= self.pool.max_adapters:
                groups.append(current)
                current, names = [], set()
            current.append(index)
            if name is not None:
                names.add(name)
        return groups + ([current] if current else [])

    def _run_group(self, kind, jobs, group, results) -> None:
        failed = self.pool.ensure([jobs[i].adapter for i in group])
        ok = []
        for i in group:
            if jobs[i].adapter in failed:
                results[i] = APIError(500, failed[jobs[i].adapter], "server_error", "model",
                                      "adapter_load_failed")
            else:
                ok.append(i)
        if not ok:
            return
        run = getattr(self, f"_{kind}")
        try:
            for i, result in zip(ok, run([jobs[i] for i in ok])):
                results[i] = result
        except Exception as exc:  # noqa: BLE001 - the batch failed: each job alone, own error
            if len(ok) == 1:
                results[ok[0]] = _as_error(exc)
                return
            for i in ok:
                if getattr(jobs[i], "sent", False):
                    results[i] = _as_error(exc)  # part of it was streamed: cannot redo it
                    continue
                try:
                    results[i] = run([jobs[i]])[0]
                except Exception as alone:  # noqa: BLE001
                    results[i] = _as_error(alone)

    def _route(self, jobs) -> None:
        """Give each ``auto`` job the adapter the router picks for its text (None: the base)."""
        auto = [job for job in jobs if job.route == AUTO]
        if not auto:
            return
        if self._router is None:
            self._router = self._router_factory()
        decisions = self._router.route([job.text for job in auto])
        for job, decision in zip(auto, decisions):
            job.adapter = decision.adapter if decision.adapter in self.pool.catalog.adapters else None
            job.route = None

    # ------------------------------------------------------------------ the three tasks
    def _generate(self, jobs: list[GenJob]) -> list[Generated]:
        import torch

        tokenizer, model = self.pool.tokenizer, self.pool.model
        pad = tokenizer.pad_token_id
        width = max(len(job.ids) for job in jobs)
        # left padding: every row continues from the last position
        ids = torch.tensor([[pad] * (width - len(j.ids)) + list(j.ids) for j in jobs])  # (b, t)
        mask = torch.tensor([[0] * (width - len(j.ids)) + [1] * len(j.ids) for j in jobs])
        eos = _eos_ids(model, tokenizer)
        rows = [_Row(tokenizer, job, eos) for job in jobs]
        temperature, top_p = jobs[0].sampling
        sampling = ({"do_sample": True, "temperature": temperature, "top_p": top_p}
                    if temperature > 0 else {"do_sample": False})
        streamer = _Streamer(rows) if any(job.emit for job in jobs) else None
        with torch.no_grad():
            out = model.generate(input_ids=ids, attention_mask=mask, pad_token_id=pad,
                                 max_new_tokens=max(job.max_tokens for job in jobs),
                                 streamer=streamer, **sampling,
                                 **self.pool.adapter_kwargs([j.adapter for j in jobs]))
        results = []
        for row, job, tokens in zip(rows, jobs, out[:, width:].tolist()):
            if streamer is None:
                for token in tokens:
                    row.feed(token)
            row.finish()
            results.append(Generated(row.text, len(job.ids), row.count, row.done, job.adapter))
        return results

    def _forward(self, jobs: list[TextJob], **kwargs):
        import torch

        pad = self.pool.tokenizer.pad_token_id
        width = max(len(job.ids) for job in jobs)
        ids = torch.tensor([list(j.ids) + [pad] * (width - len(j.ids)) for j in jobs])  # (b, t)
        mask = torch.tensor([[1] * len(j.ids) + [0] * (width - len(j.ids)) for j in jobs])
        with torch.no_grad():
            return self.pool.model(input_ids=ids, attention_mask=mask, **kwargs,
                                   **self.pool.adapter_kwargs([j.adapter for j in jobs])), mask

    def _embed(self, jobs: list[TextJob]) -> list[Embedded]:
        import torch

        output, mask = self._forward(jobs, output_hidden_states=True)
        from ..adapters.pooling import encoder_output
        from ..tensor_math import masked_mean

        hidden = encoder_output(output.hidden_states, self.pool.model.config)  # (b, t, hidden)
        pooled = masked_mean(hidden.float(), mask)  # (b, hidden)
        pooled = torch.nn.functional.normalize(pooled, dim=-1)
        return [Embedded(pooled[i].tolist(), len(job.ids), job.adapter)
                for i, job in enumerate(jobs)]

    def _classify(self, jobs: list[TextJob]) -> list[Classified]:
        import torch

        output, _ = self._forward(jobs)
        probs = torch.softmax(output.logits.float(), -1)  # (b, classes)
        id2label = getattr(self.pool.model.config, "id2label", None) or {}
        out = []
        for i, job in enumerate(jobs):
            best = int(probs[i].argmax())
            out.append(Classified(str(id2label.get(best, best)), best, float(probs[i, best]),
                                  len(job.ids), job.adapter))
        return out


def _as_error(exc: Exception) -> Exception:
    if isinstance(exc, APIError):
        return exc
    if isinstance(exc, ModelgitError):
        return APIError(400, str(exc))
    return APIError(500, f"the model failed on this request ({type(exc).__name__}: "
                         f"{str(exc)[:200]})", "server_error")


def _eos_ids(model, tokenizer) -> set:
    config = getattr(model, "generation_config", None)
    found = getattr(config, "eos_token_id", None)
    found = found if found is not None else tokenizer.eos_token_id
    return set(found if isinstance(found, (list, tuple)) else [found]) - {None}


class _Row:
    """The text of one generated row, token by token: cut at the end-of-sequence token, at a
    stop sequence, or at the row's own ``max_tokens``; streamed pieces never include a stop
    sequence or half a character, and their sum is the final text."""

    def __init__(self, tokenizer, job: GenJob, eos: set):
        self.tokenizer, self.job, self.eos = tokenizer, job, eos
        self.tokens: list[int] = []
        self.text, self.sent, self.done, self.count = "", 0, None, 0
        self.holdback = max((len(s) for s in job.stop), default=1) - 1

    def feed(self, token: int) -> None:
        if self.done:
            return
        if token in self.eos:
            self.done = "stop"
            return
        self.tokens.append(token)
        self.count = len(self.tokens)
        text = self.tokenizer.decode(self.tokens, skip_special_tokens=True)
        cuts = [text.find(s) for s in self.job.stop if s and s in text]
        if cuts:
            self.text, self.done = text[:min(cuts)], "stop"
        else:
            self.text = text
            if self.count >= self.job.max_tokens:
                self.done = "length"
        if self.job.emit and not self.done:
            safe = len(text) - self.holdback
            if text.endswith("\ufffd"):  # a character cut between tokens: wait for the rest
                safe = min(safe, len(text) - 1)
            self._send(safe)
        elif self.job.emit:
            self._send(len(self.text))

    def _send(self, upto: int) -> None:
        if upto > self.sent:
            self.job.emit(self.text[self.sent:upto])
            self.sent = upto
            self.job.sent = True

    def finish(self) -> None:
        self.done = self.done or "length"
        if self.job.emit:
            self._send(len(self.text))


class _Streamer:
    """transformers' streamer interface over a batch: ``put`` gets the prompt first, then one
    new token per row per step."""

    def __init__(self, rows: list[_Row]):
        self.rows, self._prompt_seen = rows, False

    def put(self, value) -> None:
        if not self._prompt_seen:
            self._prompt_seen = True
            return
        for row, token in zip(self.rows, value.reshape(-1).tolist()):
            row.feed(int(token))

    def end(self) -> None:
        pass
