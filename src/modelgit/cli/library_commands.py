"""CLI verbs of the adapter library of a release: ``modelgit adapters`` (list), ``adapters
fetch``, and the repository form of routing: ``adapters build``, ``adapters eval``,
``adapters which`` (over the library of ``--rev``)."""

from __future__ import annotations

import json

from ..errors import UsageError

__all__ = ["register", "router_settings", "format_library"]


def _repo():
    from ..git.repo import find_repo

    return find_repo(".")


def router_settings(kind: str, args, prefix: str = ""):
    """A :class:`~modelgit.route.release_router.ReleaseRouter` from the options (``prefix``:
    ``router_`` for release's ``--router-*`` options)."""
    from ..route.release_router import ReleaseRouter
    from .route_commands import parse_pairs, parse_threshold

    get = lambda name, default=None: getattr(args, prefix + name, default)  # noqa: E731
    option = f"--{prefix.replace('_', '-')}"
    return ReleaseRouter(kind=kind, mode=get("mode") or "hard", top_k=get("top_k") or 2,
                         threshold=parse_threshold(get("threshold"), f"{option}threshold"),
                         embedder=get("embedder"),
                         method=get("method") or "centroid",
                         examples=parse_pairs(get("examples"), f"{option}examples"))


def _gain(entry: dict) -> str:
    score = (entry.get("scores") or {}).get(entry.get("domain")) or {}
    gain = score.get("gain")
    if not isinstance(gain, (int, float)):
        return "-"
    span = score.get("gain_interval")
    return f"{gain:+.1%}" + (f" [{span[0]:+.1%}, {span[1]:+.1%}]" if span else "")


def format_library(tag: str, record: dict) -> str:
    """The table `modelgit adapters` prints: each adapter, what was refused, the router."""
    base = record["base"]
    where = base.get("tag") or base["commit"][:12]
    lines = [f"release {tag}: adapter library on the weights of {where} "
             f"(fingerprint {base['fingerprint'][:12]})"]
    rows = [["adapter", "domain", "decision", "gain on its domain", "content id"]]
    rows += [[a["name"], str(a.get("domain") or "-"), str(a.get("decision")), _gain(a),
              a["adapter_id"][:12]] for a in record.get("adapters") or []]
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
    if len(rows) > 1:
        lines += ["  " + "  ".join(c.ljust(w) for c, w in zip(row, widths)).rstrip() for row in rows]
    else:
        lines.append("  no adapter was reviewed on these weights")
    for refused in record.get("refused") or []:
        lines.append(f"  refused {refused.get('name')}: {refused.get('reason')}")
    router = record.get("router")
    if isinstance(router, dict):
        lines.append(f"router: {router.get('kind')} ({router.get('mode')}) at {router.get('path')}/")
    return "\n".join(lines)


def cmd_list(args) -> int:
    from ..route.release_library import read_release

    release = read_release(_repo(), args.rev)
    if args.json:
        print(json.dumps({"tag": release.tag, "commit": release.commit, **release.record},
                         indent=2, sort_keys=True))
    else:
        print(format_library(release.tag, release.record))
    return 0


def cmd_fetch(args) -> int:
    from ..route.release_library import fetch_adapters

    if bool(args.names) == bool(args.all):
        raise UsageError("name the adapters to fetch, or pass --all (not both)")
    written = fetch_adapters(_repo(), args.rev, None if args.all else args.names, args.output,
                             base=args.base, force=args.force, progress=args.progress)
    if args.json:
        print(json.dumps(written, indent=2, sort_keys=True))
        return 0
    for name, path in written.items():
        print(f"{name}: {path}")
    return 0


def cmd_build(args) -> int:
    from ..eval import load_suites
    from ..route import save
    from ..route.release_library import library
    from ..route.release_router import build_for_release, describe

    lib = library(_repo(), args.rev, progress=args.progress)
    suites = load_suites(args.suites, args.suite) if args.suites else []
    router = build_for_release(lib, router_settings(args.kind, args), suites)
    save(router, args.output, lib, overwrite=args.force)
    if args.json:
        print(json.dumps({"output": args.output, **describe(router)}, indent=2, sort_keys=True))
    else:
        print(f"built the {args.kind} router over {', '.join(lib.names)}; wrote {args.output}/ "
              "(router.json, router.safetensors, library.json)")
    return 0


def _routed(args):
    from ..route import load
    from ..route.release_library import library, load_release

    from .route_commands import parse_threshold

    threshold = "keep" if args.threshold is None else parse_threshold(args.threshold)
    if args.router:  # a router directory over the release's library
        return load(args.router, library=library(_repo(), args.rev), mode=args.mode,
                    threshold=threshold)
    return load_release(_repo(), args.rev, mode=args.mode, threshold=threshold,
                        progress=args.progress)


def cmd_eval(args) -> int:
    from ..eval import load_suites
    from ..route import format_report
    from ..route.release_router import evaluate_release

    model = _routed(args)
    report = evaluate_release(model, load_suites(args.suites, args.suite), args.merged,
                              args.cost_samples, args.progress)
    print(json.dumps(report, indent=2, sort_keys=True) if args.json else format_report(report))
    return 0


def cmd_which(args) -> int:
    from .route_commands import print_decisions, texts_to_route

    texts = texts_to_route(args)
    print_decisions(texts, _routed(args).route(texts), args.json)
    return 0


def _router_options(p, prefix: str = "") -> None:
    """The router settings (``--router-mode``... on release, ``--mode``... here)."""
    dash = f"--{prefix}"
    p.add_argument(f"{dash}mode", choices=["hard", "soft"], help="hard: one adapter per input "
                   "(or the base); soft: a weighted mix of the top-k (default hard)")
    p.add_argument(f"{dash}top-k", type=int, help="adapters mixed in soft mode (default 2)")
    p.add_argument(f"{dash}threshold", metavar="T|auto|none", help="confidence under which an "
                   "input goes to the base (default auto: calibrated on the examples)")
    p.add_argument(f"{dash}embedder", help="examples/reviews: base:LAYER (default base:2) or minilm")
    p.add_argument(f"{dash}method", choices=["centroid", "knn", "linear"], help="examples: default centroid")
    p.add_argument(f"{dash}examples", action="append", metavar="NAME=FILE",
                   help="example texts of an adapter (or NAME base: texts no adapter should "
                   "take), beside those of its domain suite")


def add_release_router_options(p) -> None:
    """``release --router KIND`` and its ``--router-*`` settings."""
    p.add_argument("--router", choices=["arrow", "examples", "reviews"], help="build this "
                   "router over the release's adapter library and commit it under "
                   "routers/TAG/ (examples: each adapter's domain suite, validation data first)")
    _router_options(p, "router-")


def _routing_target(p) -> None:
    p.add_argument("--rev", help="the release (tag or commit; default: the newest)")
    p.add_argument("--router", metavar="DIR", help="a router directory over the release's "
                   "library (default: the release's own router)")
    p.add_argument("--mode", choices=["hard", "soft"], help="override the router's mode")
    p.add_argument("--threshold", metavar="T|none", help="override the router's threshold")


def register(sub, command) -> None:
    p = command(sub, "adapters", cmd_list,
                "List a release's adapter library (default: the newest release): each adapter, "
                "its domain, decision and gain; what was refused; the router.",
                "modelgit adapters\n"
                "modelgit adapters --rev v2 --json\n"
                "modelgit adapters fetch shell-lora --rev v2 -o adapters/ --base\n"
                "modelgit adapters fetch --all -o adapters/\n"
                "modelgit adapters which 'ls -la | grep foo' 'def f(x): return x'")
    p.add_argument("--rev", help="the release (tag or commit; default: the newest)")
    p.add_argument("--json", action="store_true")
    group = p.add_subparsers(dest="adapters_command", metavar="ADAPTERS_COMMAND")

    f = command(group, "fetch", cmd_fetch,
                "Write adapters of a release's library as PEFT directories OUTPUT/NAME/ (and its "
                "base as OUTPUT/base/ with --base), objects fetched from the remote when missing.",
                "modelgit adapters fetch shell-lora -o out/ --base\n"
                "modelgit adapters fetch --all --rev v2 -o out/")
    f.add_argument("names", nargs="*", metavar="NAME")
    f.add_argument("--all", action="store_true", help="every adapter of the library")
    f.add_argument("--rev", help="the release (tag or commit; default: the newest)")
    f.add_argument("-o", "--output", required=True, help="the directory to write into")
    f.add_argument("--base", action="store_true", help="also the library's base model")
    f.add_argument("-f", "--force", action="store_true", help="replace existing directories")
    f.add_argument("--json", action="store_true")

    b = command(group, "build", cmd_build,
                "Build a router over a release's library (route build's repository form).",
                "modelgit adapters build --kind arrow --rev v2 -o r/arrow\n"
                "modelgit adapters build --kind examples --suites suites.yaml -o r/ex")
    b.add_argument("--kind", required=True, choices=["arrow", "examples", "reviews"])
    b.add_argument("--rev", help="the release (tag or commit; default: the newest)")
    b.add_argument("--suites", help="suites file: examples per domain (validation data first)")
    b.add_argument("--suite", action="append", metavar="NAME", help="only this suite (repeat)")
    _router_options(b)
    b.add_argument("-o", "--output", required=True, help="router directory to write")
    b.add_argument("-f", "--force", action="store_true", help="replace OUTPUT")
    b.add_argument("--json", action="store_true")

    e = command(group, "eval", cmd_eval,
                "Evaluate a release's router (or --router DIR) on suites against the base, each "
                "adapter, the oracle and --merged (route eval's repository form).",
                "modelgit adapters eval --rev v2 --suites suites.yaml --merged model/")
    _routing_target(e)
    e.add_argument("--suites", required=True, help="YAML/JSON suites file")
    e.add_argument("--suite", action="append", metavar="NAME", help="only this suite (repeat)")
    e.add_argument("--merged", help="a merged model directory to compare with")
    e.add_argument("--cost-samples", type=int, default=8, help="inputs per suite timed")
    e.add_argument("--json", action="store_true")

    w = command(group, "which", cmd_which, "Show where a release's router sends each input.",
                "modelgit adapters which --rev v2 'ls -la' 'def f(x): return x'")
    _routing_target(w)
    w.add_argument("texts", nargs="*", metavar="TEXT")
    w.add_argument("--file", help="route the texts of this file")
    w.add_argument("--json", action="store_true")
