"""The state one app serves with: the catalog, the model pool, the engine and its batcher,
metrics and rollouts; and the request-level checks shared by the endpoints (model names,
token budgets)."""

from __future__ import annotations

import difflib
from dataclasses import dataclass

from ..errors import UsageError
from .api_errors import APIError, bad_request, not_found
from .catalog import Target

__all__ = ["Service", "Choice"]


@dataclass(frozen=True)
class Choice:
    """A request's model: the name it asked for, the model serving it, and its target."""

    asked: str
    served: str
    target: Target
    rollout: str | None = None


class Service:
    """Args:
        catalog: a :class:`~.catalog.Catalog`; config: a :class:`~.config.ServeConfig`.
    Raises:
        UsageError: a rollout naming a model the catalog lacks (naming the closest), or a
            rollout whose name hides a served model.
    """

    def __init__(self, catalog, config):
        from .batcher import Batcher
        from .engine import Engine
        from .metrics import Metrics
        from .pool import AdapterPool
        from .rollout import Chooser

        self.catalog, self.config = catalog, config
        self.metrics = Metrics()
        self.rollouts = {r.name: r for r in config.rollouts}
        self._check_rollouts()
        events = self.metrics.adapter_events
        self.pool = AdapterPool(catalog, config.max_adapters,
                                on_load=lambda n: (events.labels("load").inc(), self._gauge()),
                                on_evict=lambda n: (events.labels("evict").inc(), self._gauge()))
        self.threads = _set_threads(self.pool.model, config)
        self.engine = Engine(self.pool, catalog.router)
        self.batcher = Batcher(self.engine, self.metrics, config.batch_window_ms, config.max_batch)
        self.chooser = Chooser(config.seed)
        self.context = self.pool.context
        self.max_tokens_limit = min(config.max_tokens_limit or self.context, self.context - 1)

    def _gauge(self) -> None:
        self.metrics.adapters_loaded.set(len(self.pool.loaded))

    def _check_rollouts(self) -> None:
        for rollout in self.rollouts.values():
            if rollout.name in self.catalog.names:
                raise UsageError(f"rollout {rollout.name!r} has the name of a served model: "
                                 "give the rollout another name")
            for variant, _ in rollout.variants:
                try:
                    self.catalog.resolve(variant)  # an unknown one names the closest
                except UsageError as exc:
                    raise UsageError(f"rollout {rollout.name!r}: {exc}") from None

    @property
    def names(self) -> list[str]:
        return self.catalog.names + list(self.rollouts)

    def choose(self, name: str, headers) -> Choice:
        """The model serving a request for ``name`` (a rollout picks a variant).

        Raises:
            APIError: 404 for an unknown name, naming the closest.
        """
        rollout = self.rollouts.get(name)
        served = name
        if rollout is not None:
            served = self.chooser.choose(rollout, headers.get(self.config.sticky_header))
        try:
            target = self.catalog.resolve(served)
        except UsageError:
            match = difflib.get_close_matches(name, self.names, n=1)
            hint = f" (did you mean {match[0]!r}?)" if match else ""
            raise not_found(f"The model {name!r} does not exist{hint}. This server serves: "
                            f"{', '.join(self.names)}.", "model", "model_not_found") from None
        return Choice(name, served, target, rollout.name if rollout else None)

    def need_task(self, task: str, endpoint: str) -> None:
        if self.catalog.task != task:
            what = {"causal_lm": "a language model", "classification": "a classifier"}
            raise bad_request(f"{endpoint} needs {what[task]}; this server holds "
                              f"{what[self.catalog.task]}", "model", "unsupported_model")

    def tokenize(self, text: str, special: bool = True) -> list[int]:
        return self.pool.tokenizer(text, add_special_tokens=special)["input_ids"]

    def budget(self, body: dict, prompt_tokens: int, default: int) -> int:
        """The request's ``max_tokens`` (or ``max_completion_tokens``), checked against the limit
        and against the context left after the prompt.

        Raises:
            APIError: not an integer, out of range, or prompt + completion beyond the context.
        """
        from .parsing import optional_int

        name = "max_completion_tokens" if body.get("max_completion_tokens") is not None \
            else "max_tokens"
        asked = optional_int(body, name, 1, self.max_tokens_limit)
        if asked is None:
            asked = max(1, min(default, self.context - prompt_tokens))
        if prompt_tokens + asked > self.context:
            raise APIError(400, f"This model's maximum context length is {self.context} tokens. "
                           f"However, you requested {prompt_tokens + asked} tokens "
                           f"({prompt_tokens} in the prompt, {asked} in the completion). Please "
                           "reduce the length of the prompt or completion.",
                           param="messages" if "messages" in body else "prompt",
                           code="context_length_exceeded")
        return asked

    def check_input(self, ids: list[int], param: str = "input") -> None:
        if len(ids) > self.context:
            raise APIError(400, f"This model's maximum context length is {self.context} tokens; "
                           f"an input has {len(ids)} tokens. Please shorten it.", param=param,
                           code="context_length_exceeded")

    def chat_prompt(self, chat: list[dict]) -> tuple[str, list[int]]:
        """The prompt text and ids of a conversation: the tokenizer's chat template, or (when it
        has none) ``role: content`` lines ending with ``assistant:``."""
        tokenizer = self.pool.tokenizer
        if getattr(tokenizer, "chat_template", None):
            text = tokenizer.apply_chat_template(chat, tokenize=False, add_generation_prompt=True)
            return text, self.tokenize(text, special=False)
        text = "".join(f"{m['role']}: {m['content']}\n" for m in chat) + "assistant:"
        return text, self.tokenize(text)


def _set_threads(model, config) -> int:
    """torch's threads: the setting, else about 2 multiply-adds per weight per token of a full
    batch of 32-token inputs, within the idle cores (on a busy machine more threads stall each
    other)."""
    import torch

    from .._threads import choose_threads

    weights = sum(p.numel() for p in model.parameters())
    threads = config.threads or choose_threads(2 * weights * config.max_batch * 32)
    torch.set_num_threads(threads)
    return threads
