"""CLI verbs of routing: ``modelgit route build``, ``route eval``, ``route which``."""

from __future__ import annotations

import json
import os

from ..errors import UsageError

__all__ = ["register"]


def parse_pairs(values: list[str] | None, what: str) -> dict[str, str]:
    """``NAME=PATH`` options as a dict (each name once)."""
    out: dict[str, str] = {}
    for value in values or []:
        name, sep, path = value.partition("=")
        if not sep or not name or not path:
            raise UsageError(f"{what} {value!r}: write NAME=PATH")
        if name in out:
            raise UsageError(f"{what} {name!r} is given twice")
        out[name] = path
    return out


def parse_threshold(text: str | None, what: str = "--threshold"):
    """A router threshold option: a number, ``auto`` (calibrated) or ``none`` (never the base)."""
    if text is None or text == "auto":
        return "auto"
    if text == "none":
        return None
    try:
        return float(text)
    except ValueError:
        raise UsageError(f"{what} {text!r}: give a number, auto or none") from None


def _read_scores(path: str, names) -> dict:
    """``{adapter: {suite: {"base", "adapter"}}}`` from a JSON file of that shape, or from a
    directory of review records (``reviews/<name>.json``, each with ``scores``)."""
    from ..untrusted import load_json_file

    if os.path.isdir(path):
        out = {}
        for name in names:
            record_path = os.path.join(path, f"{name}.json")
            if os.path.isfile(record_path):
                record = load_json_file(record_path, record_path, 4 * 1024 * 1024)
                if isinstance(record, dict) and isinstance(record.get("scores"), dict):
                    out[name] = record["scores"]
        if not out:
            raise UsageError(f"{path!r} holds no review record of the adapters "
                             f"({', '.join(names)}): expected NAME.json files with \"scores\"")
        return out
    data = load_json_file(path, path, 16 * 1024 * 1024)
    if not isinstance(data, dict) or not all(isinstance(v, dict) for v in data.values()):
        raise UsageError(f"{path}: expected {{adapter: {{suite: {{\"base\": x, \"adapter\": y}}}}}}")
    return data


def _review_scores(library, suites, progress) -> dict:
    """Scores of base and each adapter on the suites' validation data (else data): what a
    review records, computed here when no scores are given."""
    from ..eval import evaluate_suites
    from dataclasses import replace

    tuned = [replace(s, data=s.validation or s.data) for s in suites]
    base = {r["suite"]: r["value"] for r in evaluate_suites(library.base_dir, None, tuned, progress)}
    return {a.name: {r["suite"]: {"base": base[r["suite"]], "adapter": r["value"]}
                     for r in evaluate_suites(library.base_dir, a.directory, tuned, progress)}
            for a in library.adapters}


def cmd_build(args) -> int:
    from ..eval import load_suites
    from ..route import BuildRequest, Library, build_router, save
    from ..route.texts import read_texts, suite_texts

    library = Library.from_dirs(args.base, parse_pairs(args.adapter, "--adapter"))
    examples = {name: read_texts(path, args.max_examples)
                for name, path in parse_pairs(args.examples, "--examples").items()}
    suites, scores, higher = {}, {}, {}
    if args.suites:
        configs = load_suites(args.suites, args.suite)
        suites = {s.name: suite_texts(s, args.max_examples) for s in configs}
        higher = {s.name: s.higher_is_better for s in configs}
        if args.kind == "reviews":
            scores = _read_scores(args.scores, library.names) if args.scores \
                else _review_scores(library, configs, args.progress)
    elif args.kind == "reviews":
        raise UsageError("the reviews router needs --suites FILE (a few texts of each suite) "
                         "and, optionally, --scores (else the suites are evaluated)")
    request = BuildRequest(kind=args.kind, mode=args.mode, top_k=args.top_k,
                           threshold=parse_threshold(args.threshold), temperature=args.temperature,
                           embedder=args.embedder, examples=examples, suites=suites,
                           suite_scores=scores, higher_is_better=higher, method=args.method,
                           k=args.k, layers=args.layers, directions=args.directions,
                           route_tokens=args.route_tokens)
    router = build_router(library, request)
    save(router, args.output, library, overwrite=args.force)
    spec = router.spec
    if args.json:
        print(json.dumps({"output": args.output, "kind": spec.kind, "mode": spec.mode,
                          "threshold": spec.threshold, "embedder": spec.embedder,
                          "adapters": list(spec.adapter_names),
                          "classes": [list(c) for c in spec.classes]}, indent=2, sort_keys=True))
        return 0
    where = ", ".join(f"{c} -> {t}" for c, t in spec.classes) or ", ".join(spec.adapter_names)
    threshold = "none" if spec.threshold is None else f"{spec.threshold:.4f}"
    print(f"built the {spec.kind} router ({spec.mode}, threshold {threshold}"
          f"{', embedder ' + spec.embedder if spec.embedder else ''}) over {where}\n"
          f"wrote {args.output}/ (router.json, router.safetensors, library.json)")
    return 0


def _load_all(dirs: list[str], args):
    from ..route import load
    from ..route.model import RoutedModel

    first = load(dirs[0], threshold=_override(args))
    models = [first]
    for directory in dirs[1:]:
        from ..route.files import load_router
        from ..route.router import Router

        router = load_router(directory)
        router = Router(router.spec.with_overrides(threshold=_override(args)), router.tensors)
        models.append(RoutedModel(router, first.library, runtime=first.runtime,
                                  where=f"the router {directory}"))
    return models


def _override(args):
    value = getattr(args, "threshold", None)
    return "keep" if value is None else parse_threshold(value)


def _labels(dirs: list[str]) -> list[str]:
    labels = []
    for directory in dirs:
        label = (os.path.basename(os.path.normpath(directory)) or "router").replace(" ", "_")
        while label in labels:
            label += "'"
        labels.append(label)
    return labels


def cmd_eval(args) -> int:
    from ..eval import load_suites
    from ..route import evaluate_routers, format_report

    models = _load_all(args.routers, args)
    modes = ("hard", "soft") if args.mode == "both" else (args.mode,)
    report = evaluate_routers(models, load_suites(args.suites, args.suite), args.merged, modes,
                              _labels(args.routers), args.cost_samples, args.progress)
    print(json.dumps(report, indent=2, sort_keys=True) if args.json else format_report(report))
    return 0


def texts_to_route(args) -> list[str]:
    """The texts of ``route which`` (and ``adapters which``): arguments, or ``--file``."""
    from ..route.texts import read_texts

    if bool(args.texts) == bool(args.file):
        raise UsageError("give the texts to route as arguments, or --file FILE, not both")
    return list(args.texts) if args.texts else read_texts(args.file, None)


def print_decisions(texts: list[str], decisions: list, as_json: bool) -> None:
    """One line per input (adapter, confidence, the mix when soft, the text's start), or JSON."""
    if as_json:
        print(json.dumps([{"text": t, "adapter": d.adapter, "confidence": d.confidence,
                           "weights": d.weights, "scores": d.scores}
                          for t, d in zip(texts, decisions)], indent=2, sort_keys=True))
        return
    width = max((len(d.adapter) for d in decisions), default=0)
    for text, d in zip(texts, decisions):
        mix = ", ".join(f"{n} {w:.2f}" for n, w in sorted(d.weights.items(), key=lambda x: -x[1]))
        shown = " ".join(text.split())
        shown = shown if len(shown) <= 60 else shown[:57] + "..."
        parts = [d.adapter.ljust(width), f"{d.confidence:+.3f}"]
        parts += [f"[{mix}]"] if len(d.weights) > 1 else []
        print("  ".join([*parts, shown]))


def cmd_which(args) -> int:
    from ..route import load

    texts = texts_to_route(args)
    model = load(args.router, mode=args.mode, threshold=_override(args))
    print_decisions(texts, model.route(texts), args.json)
    return 0


def register(sub, command) -> None:
    p = command(sub, "route", None,
                "Route each input to the adapter that fits it: build, evaluate and try routers.",
                "modelgit route build --kind examples --base base/ --adapter py=ad/py --adapter sh=ad/sh \\\n"
                "    --examples py=py.txt --examples sh=sh.txt -o routers/ex\n"
                "modelgit route eval routers/ex routers/arrow --suites suites.yaml --merged merged/\n"
                "modelgit route which routers/ex 'def f(x): return x' 'ls -la | grep foo'")
    group = p.add_subparsers(dest="route_command", metavar="ROUTE_COMMAND", required=True)

    b = command(group, "build", cmd_build,
                "Build a router over adapters of one base (arrow: data-free; examples: from a few "
                "texts per adapter; reviews: from review scores and a few texts per suite).",
                "modelgit route build --kind arrow --base base/ --adapter py=ad/py --adapter sh=ad/sh -o r/arrow\n"
                "modelgit route build --kind examples --base base/ --adapter py=ad/py --adapter sh=ad/sh \\\n"
                "    --examples py=py.jsonl --examples sh=sh.txt --embedder base:2 -o r/ex\n"
                "modelgit route build --kind reviews --base base/ --adapter py=ad/py --adapter sh=ad/sh \\\n"
                "    --suites suites.yaml --scores reviews/ -o r/rev   # or: scores measured on the suites")
    b.add_argument("--kind", required=True, choices=["arrow", "examples", "reviews"])
    b.add_argument("--base", required=True, help="the base model directory")
    b.add_argument("--adapter", action="append", required=True, metavar="NAME=DIR",
                   help="an adapter of the library (repeat)")
    b.add_argument("--examples", action="append", metavar="NAME=FILE",
                   help="example texts of an adapter (a text per line, or JSONL with \"text\"); "
                   "NAME base: texts no adapter should take. examples: required per adapter; "
                   "arrow: unlabelled texts that calibrate each adapter's offset and the threshold")
    b.add_argument("--suites", help="suites file (reviews: the suites' texts, validation data first)")
    b.add_argument("--suite", action="append", metavar="NAME", help="only this suite (repeat)")
    b.add_argument("--scores", help="reviews: JSON {adapter: {suite: {base, adapter}}}, or a "
                   "directory of review records (NAME.json); default: evaluate on the suites")
    b.add_argument("--mode", choices=["hard", "soft"], default="hard",
                   help="hard: one adapter per input; soft: a weighted mix of the top-k (default hard)")
    b.add_argument("--top-k", type=int, default=2, help="adapters mixed in soft mode (default 2)")
    b.add_argument("--threshold", metavar="T|auto|none", help="confidence under which an input "
                   "goes to the base (default auto: calibrated on the examples; none without them)")
    b.add_argument("--temperature", type=float, help="softmax temperature of soft weights")
    b.add_argument("--embedder", help="examples/reviews: base:LAYER (default base:1) or minilm")
    b.add_argument("--method", choices=["centroid", "knn", "linear"], default="centroid",
                   help="examples/reviews: nearest centroid, k nearest neighbours, or a linear "
                   "probe (logistic regression; wants 30+ examples per adapter)")
    b.add_argument("--k", type=int, default=5, help="neighbours of --method knn (default 5)")
    b.add_argument("--layers", type=int, help="arrow: layers read (default a tenth of the base's)")
    b.add_argument("--directions", type=int, default=4,
                   help="arrow: singular directions kept per adapter and layer (default 4)")
    b.add_argument("--route-tokens", type=int, default=128,
                   help="tokens of an input the router reads (default 128)")
    b.add_argument("--max-examples", type=int, default=50, help="texts read per adapter or suite")
    b.add_argument("-o", "--output", required=True, help="router directory to write")
    b.add_argument("-f", "--force", action="store_true", help="replace OUTPUT")
    b.add_argument("--json", action="store_true")

    e = command(group, "eval", cmd_eval,
                "Evaluate routers per suite against the base, each adapter, the oracle and a merged "
                "model; routing accuracy and cost per input against the base's forward pass.",
                "modelgit route eval r/ex r/arrow --suites suites.yaml\n"
                "modelgit route eval r/ex --suites suites.yaml --merged release/ --mode hard --json")
    e.add_argument("routers", nargs="+", metavar="ROUTER_DIR", help="routers over one library")
    e.add_argument("--suites", required=True, help="YAML/JSON suites file")
    e.add_argument("--suite", action="append", metavar="NAME", help="only this suite (repeat)")
    e.add_argument("--merged", help="a merged model directory to compare with")
    e.add_argument("--mode", choices=["hard", "soft", "both"], default="both")
    e.add_argument("--threshold", metavar="T|none", help="override the routers' thresholds")
    e.add_argument("--cost-samples", type=int, default=8,
                   help="inputs per suite timed for the cost (0: none; default 8)")
    e.add_argument("--json", action="store_true")

    w = command(group, "which", cmd_which, "Show where a router sends each input.",
                "modelgit route which r/ex 'def f(x): return x' 'ls -la'\n"
                "modelgit route which r/ex --file inputs.txt --json")
    w.add_argument("router", metavar="ROUTER_DIR")
    w.add_argument("texts", nargs="*", metavar="TEXT")
    w.add_argument("--file", help="route the texts of this file (a text per line, or JSONL)")
    w.add_argument("--mode", choices=["hard", "soft"], help="override the router's mode")
    w.add_argument("--threshold", metavar="T|none", help="override the router's threshold")
    w.add_argument("--json", action="store_true")
