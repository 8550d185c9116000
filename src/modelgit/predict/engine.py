"""The model a prediction runs: a release, one adapter of its library, or its router.

A source is one of:

* a model repository (a clone with ``modelgit.yaml``): by default the release's own model
  (``--rev``, default the newest release), ``adapter=NAME`` one adapter of the release's
  library on the library's base, ``router=True`` the release's router over its library;
* a router directory (written by ``modelgit route build``): by default the library's base alone,
  ``adapter=NAME`` one adapter, ``router=True`` the router;
* a transformers model directory: the model, or ``adapter=DIR`` a PEFT adapter on it.

Loading goes through the route layer (:func:`modelgit.route.load`, its release library and
runtime), so a release's files are checked exactly as routing checks them.
"""

from __future__ import annotations

import hashlib
import json
import os
from dataclasses import dataclass

from ..errors import UsageError

__all__ = ["ModelChoice", "Engine", "load_engine", "TASKS"]

#: the prediction tasks, and the model kind each needs
TASKS = {"generate": "causal_lm", "score": "causal_lm", "embed": None, "classify": "classification"}


@dataclass(frozen=True)
class ModelChoice:
    """Which model predicts.

    Attributes:
        source: a repository, a router directory or a model directory (see the module doc).
        rev: a repository's release (tag or commit; None: the newest).
        adapter: an adapter's name in the library (a model directory: an adapter directory).
        router: route each input with the source's router.
    """

    source: str
    rev: str | None = None
    adapter: str | None = None
    router: bool = False


class Engine:
    """A loaded model and how each micro-batch is run on it.

    Attributes:
        model: a transformers model (a PEFT model when there is a library); tokenizer.
        task: ``causal_lm`` or ``classification``; context: the longest input in tokens.
        routed: a :class:`~modelgit.route.model.RoutedModel` (router) or None.
        fixed: the PEFT adapter name every input uses (None: the plain model or the router).
        identity: what identifies these weights (resuming checks it).
    """

    def __init__(self, model, tokenizer, task: str, context: int, identity: dict,
                 routed=None, fixed: str | None = None, library: bool = False):
        self.model, self.tokenizer, self.task, self.context = model, tokenizer, task, context
        self.identity, self.routed, self.fixed, self.library = identity, routed, fixed, library

    def adapters_of(self, texts: list[str]) -> list | None:
        """The routing decisions for ``texts`` (router), else None."""
        return self.routed.route(texts) if self.routed is not None else None

    def run(self, batch: dict, decisions, method: str = "forward", **kwargs):
        """``model.<method>(**batch, **kwargs)`` with each row's adapter.

        Args:
            decisions: the router's decisions for the rows (None: ``fixed`` or the plain model).
        """
        import torch

        with torch.no_grad():
            if decisions is not None:
                # the routed model's own runner: mixed batches (hard) or its soft mixer
                return self.routed._run(batch, decisions, method, **kwargs)
            if self.fixed is not None:
                rows = batch["input_ids"].shape[0]
                kwargs["adapter_names"] = [self.fixed] * rows
            return getattr(self.model, method)(**batch, **kwargs)

    def adapter_label(self, decisions, rows: int) -> list[str] | None:
        """The ``adapter`` column: where each row went (None: no library)."""
        if decisions is not None:
            return [d.adapter for d in decisions]
        if not self.library:
            return None
        from ..route._runtime import PEFT_BASE
        from ..route.library import BASE

        return [BASE if self.fixed == PEFT_BASE else self.fixed] * rows


def _files_identity(directory: str) -> dict:
    """Names, sizes and mtimes of a directory's files: a plain model's identity."""
    out = {}
    for name in sorted(os.listdir(directory)):
        path = os.path.join(directory, name)
        if os.path.isfile(path):
            st = os.stat(path)
            out[name] = [st.st_size, st.st_mtime_ns]
    return {"directory": os.path.abspath(directory),
            "files": hashlib.sha256(json.dumps(out, sort_keys=True).encode()).hexdigest()}


def _context(model, tokenizer) -> int:
    config = getattr(model, "config", None)
    limits = [getattr(config, "max_position_embeddings", None),
              getattr(tokenizer, "model_max_length", None)]
    limits = [int(x) for x in limits if isinstance(x, (int, float)) and 0 < x < 1_000_000]
    return min(limits) if limits else 2048


def _plain(model_dir: str, task: str, adapter_dir: str | None, classify: bool = True) -> Engine:
    """``model_dir`` (+ ``adapter_dir``) loaded as a ``task`` model; ``classify``: its
    classification head will be read (not for embeddings, which a bare encoder gives)."""
    from ..adapters.loading import load_model, load_tokenizer, read_labels

    if task == "classification" and adapter_dir is None and classify:
        _check_has_head(model_dir)
    tokenizer = load_tokenizer(model_dir)
    model = load_model(model_dir, task, adapter_dir=adapter_dir,
                       id2label=read_labels(adapter_dir) if adapter_dir else None,
                       pad_token_id=tokenizer.pad_token_id)
    identity = {"model": _files_identity(model_dir)}
    if adapter_dir:
        from ..route.library import adapter_content_id

        identity["adapter"] = adapter_content_id(adapter_dir)
    return Engine(model, tokenizer, task, _context(model, tokenizer), identity)


def _check_has_head(model_dir: str) -> None:
    from ..adapters.loading import architecture_task

    if architecture_task(model_dir) != "classification":
        raise UsageError(f"{model_dir} is not a classifier (no classification head): classify "
                         "needs a sequence-classification model or a classification adapter "
                         "(--adapter); use --task score, generate or embed")


def _library_identity(library, router=None) -> dict:
    out = {"base": library.base_fingerprint,
           "adapters": {a.name: a.adapter_id for a in library.adapters}}
    if router is not None:
        import dataclasses

        out["router"] = json.loads(json.dumps(dataclasses.asdict(router.spec), default=str,
                                              sort_keys=True))
    return out


def _routed_engine(routed, adapter: str | None, use_router: bool) -> Engine:
    from ..route._runtime import PEFT_BASE

    runtime = routed.runtime
    fixed = None
    if not use_router:
        fixed = PEFT_BASE if adapter is None else routed.library.get(adapter).name
    return Engine(runtime.model, runtime.tokenizer, runtime.task, runtime.max_length,
                  _library_identity(routed.library, routed.router),
                  routed=routed if use_router else None, fixed=fixed, library=True)


def _library_engine(library, adapter: str) -> Engine:
    from ..route._runtime import Runtime

    runtime = Runtime(library)
    return Engine(runtime.model, runtime.tokenizer, runtime.task, runtime.max_length,
                  _library_identity(library), fixed=library.get(adapter).name, library=True)


def _release_model(source: str, rev: str | None, progress) -> str:
    """The release's own model directory (``modelgit.yaml``'s ``model`` at the release's
    commit), in the repository's content-addressed library cache."""
    from ..git.repo import find_repo
    from ..route import release_library as rl
    from ..workflow.project import read_project

    repo = find_repo(source)
    commit = rl.read_release(repo, rev, need_library=False).commit  # the weights alone
    project = read_project(repo, commit)
    return rl.materialize_tree(repo, commit, project.model, "model", progress=progress)


def load_engine(choice: ModelChoice, task: str, progress: bool | None = False) -> Engine:
    """Load the model ``choice`` names for ``task`` (one of :data:`TASKS`).

    Raises:
        UsageError: an unknown source, adapter or release; ``router`` with a source that has
            none; a task the model cannot do (naming the tasks it can).
    """
    from ..route import load
    from ..route.release_library import is_repository

    if task not in TASKS:
        import difflib

        close = difflib.get_close_matches(task, list(TASKS), n=1)
        raise UsageError(f"unknown task {task!r}" + (f" (did you mean {close[0]!r}?)" if close else "")
                         + f": use one of {', '.join(TASKS)}")
    if choice.router and choice.adapter:
        raise UsageError("give --adapter NAME or --router, not both")
    source = choice.source
    if is_repository(source):
        if choice.router:
            engine = _routed_engine(load(source, choice.rev), None, True)
        elif choice.adapter:
            from ..route.release_library import library

            engine = _library_engine(library(source, choice.rev, names=[choice.adapter],
                                             progress=progress), choice.adapter)
        else:
            model_dir = _release_model(source, choice.rev, progress)
            engine = _plain(model_dir, _model_task(model_dir, task), None, task != "embed")
    elif choice.rev is not None:
        raise UsageError(f"--rev {choice.rev} needs a model repository; {source!r} is not one "
                         "(a git work tree with modelgit.yaml)")
    elif os.path.isfile(os.path.join(source, "router.json")):
        engine = _routed_engine(load(source), choice.adapter, choice.router)
    elif os.path.isfile(os.path.join(source, "config.json")):
        if choice.router:
            raise UsageError(f"{source} is a model directory without a router: --router needs a "
                             "repository whose release has one, or a `modelgit route build` "
                             "directory")
        engine = _plain(source, _model_task(source, task, choice.adapter), choice.adapter,
                        task != "embed")
    else:
        raise UsageError(f"{source!r} is neither a model repository, a router directory "
                         "(router.json) nor a model directory (config.json): give one of those")
    _check_task(engine, task)
    return engine


def _model_task(model_dir: str, task: str, adapter_dir: str | None = None) -> str:
    """The model kind to load a plain directory as for ``task``."""
    from ..adapters.loading import architecture_task, supported_tasks

    if adapter_dir and task in ("embed", "classify"):
        from ..merge.lora_config import read_lora_config

        config, _ = read_lora_config(adapter_dir)
        return "classification" if config.get("task_type") == "SEQ_CLS" else "causal_lm"
    if task == "embed":
        # embeddings read hidden states: an encoder without a head loads as a classifier
        # (whose random head is never used)
        return architecture_task(model_dir) or (supported_tasks(model_dir) or ("causal_lm",))[0]
    return TASKS[task]


def _check_task(engine: Engine, task: str) -> None:
    needed = TASKS[task]
    if needed is not None and engine.task != needed:
        can = [t for t, kind in TASKS.items() if kind in (None, engine.task)]
        what = "a classifier" if engine.task == "classification" else "a language model"
        raise UsageError(f"--task {task} needs a {needed} model; this one is {what}: use "
                         f"--task {' or '.join(can)}")
