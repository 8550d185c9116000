"""CLI verbs of training and evaluation: train (LoRA or --full) and eval (suites).

``modelgit train``'s flags are generated from :class:`~modelgit.adapters.TrainConfig`'s fields
(name, type, default, ``help`` metadata), so the two cannot drift apart.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import types
import typing

from ..errors import UsageError

__all__ = ["register", "add_config_arguments", "config_from_args"]


def _csv(text: str) -> tuple[str, ...]:
    return tuple(part.strip() for part in text.split(",") if part.strip())


def _unwrap(hint) -> tuple[object, bool]:
    """(the type inside ``X | None``, whether None was allowed)."""
    if typing.get_origin(hint) in (typing.Union, types.UnionType):
        args = [a for a in typing.get_args(hint) if a is not type(None)]
        return (args[0] if len(args) == 1 else typing.Union[tuple(args)]), True
    return hint, False


def add_config_arguments(parser: argparse.ArgumentParser, cls) -> None:
    """Add one argument per field of the dataclass ``cls``.

    Field metadata: ``help``; ``positional`` (a positional argument); ``required``; ``flag``
    (a short or alternative flag used instead of / besides ``--field-name``: ``-o`` is added
    beside ``--output``, ``--targets`` replaces ``--target-modules``). Types map to argparse:
    bool -> ``store_true``, Literal -> choices, ``tuple[str, ...]`` -> comma-separated list,
    int/float/str -> ``type``.
    """
    hints = typing.get_type_hints(cls)
    for field in dataclasses.fields(cls):
        meta, (hint, _) = field.metadata, _unwrap(hints[field.name])
        help_text = meta.get("help", "")
        if meta.get("positional"):
            parser.add_argument(field.name, help=help_text)
            continue
        long = "--" + field.name.replace("_", "-")
        extra = meta.get("flag")
        flags = [extra, long] if extra and not extra.startswith("--") else [extra or long]
        kwargs: dict = {"dest": field.name, "help": help_text}
        if field.default is not dataclasses.MISSING:
            kwargs["default"] = field.default
        if meta.get("required"):
            kwargs["required"] = True
        if hint is bool:
            kwargs["action"] = "store_true"
        elif typing.get_origin(hint) is typing.Literal:
            kwargs["choices"] = list(typing.get_args(hint))
        elif typing.get_origin(hint) is tuple:
            kwargs.update(type=_csv, metavar="A,B")
        elif hint in (int, float, str):
            kwargs["type"] = hint
        else:  # pragma: no cover - a new field type needs a mapping here
            raise TypeError(f"no CLI mapping for {cls.__name__}.{field.name}: {hint}")
        if field.default is not dataclasses.MISSING and field.default is not None \
                and field.default is not False:
            kwargs["help"] += f" (default: {field.default})"
        parser.add_argument(*flags, **kwargs)


def config_from_args(cls, args: argparse.Namespace):
    """An instance of the dataclass ``cls`` from the parsed arguments of its fields."""
    return cls(**{f.name: getattr(args, f.name) for f in dataclasses.fields(cls)})


def _project(base: str):
    """The modelgit project whose repository holds ``base``, if any."""
    from ..errors import ModelgitError
    from ..git.repo import find_repo
    from ..workflow.project import read_project

    try:
        repo = find_repo(base)
    except ModelgitError:
        return None
    if not os.path.isfile(os.path.join(repo.root, "modelgit.yaml")):
        return None
    return read_project(repo)


def cmd_train(args) -> int:
    from ..adapters import TrainConfig, train

    config = config_from_args(TrainConfig, args)
    project = _project(config.base) if config.task != "causal_lm" and os.path.isdir(config.base) \
        else None
    if project is not None and project.task == "classification":
        if config.labels is None and project.labels:  # one numbering for every contributor
            config = dataclasses.replace(config, labels=project.labels)
        if config.classifier == "auto" and project.classifier:  # one kind of head for every one
            config = dataclasses.replace(config, classifier=project.classifier)
    result = train(config, progress=args.progress)
    m = result.metrics
    if args.json:
        print(json.dumps({"output": result.output, "task": result.task, "metrics": m,
                          "data_card": result.data_card}, indent=2, sort_keys=True))
        return 0
    what = "the whole model" if result.full else \
        f"a rank-{args.rank} LoRA of {','.join(result.target_modules) if isinstance(result.target_modules, tuple) else result.target_modules}"
    if m["steps"]:
        print(f"trained {what} ({result.task}) for {m['steps']} steps on {m['examples']} examples "
              f"with {m['threads']} thread(s): training loss {m['start_loss']:.4f} -> "
              f"{m['final_loss']:.4f} (each the mean of {m['loss_window']} steps), "
              f"{m['steps_per_second']:.2f} steps/s, {m['tokens_per_second']:.0f} tokens/s")
    else:
        fitted = (m.get("validation") or {}).get("probe", {}).get("refitted_examples", m["examples"])
        print(f"fitted a linear probe classifier on {fitted} examples: logistic regression on the "
              "base's mean-pooled embeddings, no training steps")
    valid = m.get("validation")
    if valid:
        _print_validation(valid, m["steps"])
    if result.task == "classification" and config.labels:
        print(f"classes: {', '.join(config.labels)}")
    print(f"wrote {result.output}/ (data card: {result.data_card['records']} records, "
          f"sha256 {result.data_card['sha256'][:16]}...)")
    return 0


def _print_validation(valid: dict, steps: int) -> None:
    """The held-out figures of a training run; for a classifier, the probe beside it."""
    if not steps:  # --classifier probe
        refitted = " (before the refit on every example)" if "refitted_examples" in valid["probe"] \
            else ""
        print(f"validation ({valid['examples']} examples): the probe classifier's accuracy "
              f"{valid['accuracy']:.3f}, loss {valid['loss']:.4f}{refitted}")
        return
    tuned = valid.get("tuned", valid)
    extra = (f", perplexity {valid['perplexity_before']:.4g} -> {valid['perplexity']:.4g}"
             if "perplexity" in valid else
             f", accuracy {valid['accuracy_before']:.3f} -> {tuned['accuracy']:.3f}")
    print(f"validation ({valid['examples']} examples): loss {valid['loss_before']:.4f} -> "
          f"{tuned['loss']:.4f}{extra}")
    probe = valid.get("probe")
    if probe is None:
        return
    ahead = "ahead of" if tuned["accuracy"] > probe["accuracy"] else \
        "level with" if tuned["accuracy"] == probe["accuracy"] else "behind"
    what = ("a linear probe classifier (mean pooling over the base's embeddings)"
            if probe.get("pooling") == "mean" else
            "a linear probe on the starting model's mean-pooled embeddings")
    print(f"  {what} ({probe['examples']} training examples): accuracy {probe['accuracy']:.3f}; "
          f"the trained model is {ahead} it")
    if "tuned" in valid:
        print("  wrote the probe classifier (the trained model is not ahead of it by more than "
              "chance on these examples; the base's weights are unchanged): --classifier tuned "
              "writes the trained one")
    elif probe.get("pooling") == "mean":
        print("  wrote the trained model (ahead of the probe by more than chance on these examples)")


def _classifies(base: str, adapter: str | None) -> bool:
    """Whether the model can only be evaluated as a classifier: a sequence classifier, an
    encoder with no language-model head, or an adapter with a classifier's labels.json."""
    from ..adapters.loading import LABELS_FILE, supported_tasks

    if adapter and os.path.isfile(os.path.join(adapter, LABELS_FILE)):
        return True
    try:
        return supported_tasks(base) == ("classification",)
    except UsageError:  # no config.json: the evaluation says so
        return False


def _suites_from_args(args) -> list:
    from ..eval import METRICS, SuiteConfig, load_suites

    if bool(args.suites) == bool(args.data):
        raise UsageError("give --suites FILE (a YAML/JSON list of suites) or --data FILE, not both")
    if args.suites:
        return load_suites(args.suites, args.suite)
    if args.task is None and args.metric is None and _classifies(args.base, args.adapter):
        args.task = "classification"  # a sequence classifier (a released classifier project)
    metric = args.metric or ("accuracy" if args.task == "classification" else "perplexity")
    task = METRICS[metric][0]
    if args.task and args.task != task:
        raise UsageError(f"metric {metric} does not apply to task {args.task}")
    if not os.path.exists(args.data):
        raise UsageError(f"data path {args.data!r} does not exist: check the path")
    return [SuiteConfig(name=os.path.basename(os.path.normpath(args.data)), data=args.data,
                        task=task, metric=metric, text_field=args.text_field,
                        label_field=args.label_field, text_unit=args.text_unit,
                        max_examples=args.max_examples,
                        max_length=args.max_length)]


def cmd_eval(args) -> int:
    from ..eval import evaluate_suites, format_table, without_documents

    if not 0 < args.confidence < 1:
        raise UsageError(f"--confidence {args.confidence}: give a level between 0 and 1, e.g. 0.95")
    results = without_documents(evaluate_suites(args.base, args.adapter, _suites_from_args(args),
                                                progress=args.progress, confidence=args.confidence))
    print(json.dumps(results, indent=2, sort_keys=True) if args.json else format_table(results))
    return 0


def register(sub, command) -> None:
    from ..adapters.config import TrainConfig

    p = command(sub, "train", cmd_train,
                "Train a LoRA adapter (PEFT) of a local base on local data, on CPU; or, with --full, "
                "the whole base.",
                "modelgit train base/ --data notes.jsonl -o my-adapter/\n"
                "modelgit train base/ --data reviews.csv --task classification --label-field stars -o cls/\n"
                "modelgit train base/ --data corpus/ --text-unit paragraph --steps 500 --rank 16 "
                "--targets q_proj,k_proj,v_proj,o_proj -o adapter/\n"
                "modelgit train base/ --data new-domain.txt --full --lr 1e-5 --epochs 1 -o base-v2/\n"
                "# writes the adapter + data_card.json (sizes and hashes only) + metrics.json")
    add_config_arguments(p, TrainConfig)
    p.add_argument("--json", action="store_true", help="print the metrics and data card as JSON")

    p = command(sub, "eval", cmd_eval,
                "Evaluate a base model (+ an adapter) on held-out suites: perplexity, accuracy, macro-F1.",
                "modelgit eval base/ --suites heldout/suites.yaml\n"
                "modelgit eval base/ --adapter contrib/alice/ --suites suites.yaml --suite medical --json\n"
                "modelgit eval base/ --adapter cls/ --data test.csv --metric macro_f1\n"
                "# suites.yaml:  suites: [{name: medical, data: medical.jsonl, metric: perplexity}]")
    p.add_argument("base", help="base model: a local transformers directory")
    p.add_argument("--adapter", help="a PEFT LoRA adapter directory to apply to the base")
    p.add_argument("--suites", help="YAML/JSON file of suites (the maintainer's local held-out set)")
    p.add_argument("--suite", action="append", metavar="NAME", help="run only this suite (repeat)")
    p.add_argument("--data", help="evaluate on this one data file instead of a suites file")
    p.add_argument("--task", choices=["causal_lm", "classification"], help="with --data")
    p.add_argument("--metric", choices=["perplexity", "accuracy", "macro_f1"], help="with --data")
    p.add_argument("--text-field", default="text", help="with --data (default: text)")
    p.add_argument("--label-field", default="label", help="with --data (default: label)")
    p.add_argument("--text-unit", choices=["line", "paragraph", "file"], default="line",
                   help="with --data: how .txt files become examples (default: line)")
    p.add_argument("--max-examples", type=int, help="with --data: only the first N examples")
    p.add_argument("--max-length", type=int, default=256, help="with --data (default: 256)")
    p.add_argument("--confidence", type=float, default=0.95, help="level of the bootstrap interval "
                   "shown for each score, resampling the documents (default: 0.95)")
    p.add_argument("--json", action="store_true")
