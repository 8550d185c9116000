"""One model in memory and what answers its requests: an adapter pool, its engine and batcher,
and the request-level checks that depend on the model (its task, tokenizer and context).

A server holds one backend for the release it serves, and one more per revision a rollout
names whose weights it does not already hold (see :mod:`.revisions`). The backends share one
engine thread: on a CPU, two models running at once would only slow each other down.
"""

from __future__ import annotations

from .api_errors import APIError, bad_request

__all__ = ["Backend"]


class Backend:
    """Args:
        catalog: a :class:`~.catalog.Catalog`; config: a :class:`~.config.ServeConfig`;
        metrics: the app's :class:`~.metrics.Metrics`.
        executor: the engine thread to share (None: this backend's batcher makes its own).
        on_load, on_evict: adapter events of the pool.
    Raises:
        UsageError: the model cannot be loaded.
    """

    def __init__(self, catalog, config, metrics, executor=None, on_load=None, on_evict=None):
        from .batcher import Batcher
        from .engine import Engine
        from .pool import AdapterPool

        self.catalog = catalog
        self.pool = AdapterPool(catalog, config.max_adapters, on_load=on_load, on_evict=on_evict)
        self.engine = Engine(self.pool, catalog.router)
        self.batcher = Batcher(self.engine, metrics, config.batch_window_ms, config.max_batch,
                               executor=executor)
        self.context = self.pool.context
        self.max_tokens_limit = min(config.max_tokens_limit or self.context, self.context - 1)

    def need_task(self, task: str, endpoint: str) -> None:
        if self.catalog.task != task:
            what = {"causal_lm": "a language model", "classification": "a classifier"}
            raise bad_request(f"{endpoint} needs {what[task]}; this model is "
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
