"""CLI verb of serving: ``modelgit serve``."""

from __future__ import annotations

import json
import os
import sys

from ..errors import UsageError

__all__ = ["register"]


def _need_extra() -> None:
    import importlib.util

    missing = [m for m in ("fastapi", "uvicorn", "prometheus_client")
               if importlib.util.find_spec(m) is None]
    if missing:
        raise UsageError(f"modelgit serve needs {', '.join(missing)}: "
                         "python3 -m pip install -e '.[serve]'")


def _rollouts(values) -> tuple:
    from ..serve.rollout import parse_rollout, read_rollouts

    out = []
    for value in values or []:
        if value.endswith((".yaml", ".yml")) and "=" not in value:
            out.extend(read_rollouts(value))
        else:
            out.append(parse_rollout(value))
    return tuple(out)


def _source(args):
    if args.base or args.adapter:
        if not (args.base and args.adapter):
            raise UsageError("--base and --adapter go together: a library is a base and its "
                             "adapters (or give a repository or router directory)")
        if args.source is not None:
            raise UsageError(f"give either {args.source!r} or --base/--adapter, not both")
        from ..route.library import Library
        from .route_commands import parse_pairs

        return Library.from_dirs(args.base, parse_pairs(args.adapter, "--adapter"))
    return args.source if args.source is not None else "."


def cmd_serve(args) -> int:
    _need_extra()
    os.environ.setdefault("HF_HUB_OFFLINE", "1")  # nothing from a hub at run time
    from ..serve.app import create_app
    from ..serve.config import ServeConfig

    config = ServeConfig(batch_window_ms=args.batch_window_ms, max_batch=args.max_batch,
                         max_adapters=args.max_adapters, max_tokens_limit=args.max_tokens_limit,
                         rollouts=_rollouts(args.rollout), sticky_header=args.sticky_header.lower(),
                         seed=args.seed, threads=args.threads)
    app = create_app(_source(args), args.rev, config, args.task)
    service = app.state.service
    described = {"models": service.names, "task": service.catalog.task,
                 "context": service.context, "threads": service.threads, "rollouts": {
                     r.name: dict(r.variants) for r in config.rollouts},
                 "revisions": service.revision_commits}
    if args.check:
        print(json.dumps(described, indent=2) if args.json else
              f"would serve {', '.join(service.names)} ({service.catalog.task}, context "
              f"{service.context} tokens) on http://{args.host}:{args.port}")
        return 0
    print(f"serving {', '.join(service.names)} on http://{args.host}:{args.port}/v1 "
          f"(metrics: /metrics; Ctrl-C stops)", file=sys.stderr)
    from ..serve.server import run

    run(app, args.host, args.port, args.log_level)
    return 0


def register(sub, command) -> None:
    p = command(sub, "serve", cmd_serve,
                "Serve a release (its base, each adapter of its library, its router as `auto`) "
                "over the OpenAI HTTP API, with mixed-adapter batching.",
                "modelgit serve my-model/ --rev v2 --port 8000\n"
                "modelgit serve --base base/ --adapter py=ad/py --adapter sh=ad/sh\n"
                "modelgit serve routers/ex            # a router directory: `auto` routes\n"
                "modelgit serve my-model/ --rollout chat=base:0.9,shell-lora:0.1\n"
                "modelgit serve my-model/ --rev v2 --rollout chat=v1:0.1,v2:0.9   # two releases\n"
                "curl localhost:8000/v1/completions -H 'content-type: application/json' \\\n"
                "    -d '{\"model\": \"shell-lora\", \"prompt\": \"ls -la\", \"max_tokens\": 16}'")
    p.add_argument("source", nargs="?", metavar="REPO_OR_DIR",
                   help="a model repository (default: the current directory), a router "
                   "directory or a model directory")
    p.add_argument("--rev", help="the release of a repository (default: its newest)")
    p.add_argument("--base", help="serve a library of directories: the base model directory")
    p.add_argument("--adapter", action="append", metavar="NAME=DIR",
                   help="with --base: an adapter directory (repeat)")
    p.add_argument("--task", choices=["causal_lm", "classification"],
                   help="default: from the adapters, or the model's architecture")
    p.add_argument("--host", default="127.0.0.1", help="address to listen on (default 127.0.0.1)")
    p.add_argument("--port", type=int, default=8000, help="port (default 8000; 0: a free one)")
    p.add_argument("--batch-window-ms", type=float, default=5.0,
                   help="how long a batch's first request waits for others (default 5)")
    p.add_argument("--max-batch", type=int, default=16, help="requests per model call (default 16)")
    p.add_argument("--max-adapters", type=int, default=8,
                   help="adapters held in memory, least recently used evicted (default 8)")
    p.add_argument("--max-tokens-limit", type=int,
                   help="largest max_tokens accepted (default: the model's context)")
    p.add_argument("--rollout", action="append", metavar="NAME=A:W,B:W|FILE.yaml",
                   help="a model name splitting its traffic between served models, or "
                   "revisions of the repository (each then held in memory too), by weight "
                   "(repeat; or a YAML file {rollouts: {NAME: {MODEL: WEIGHT}}})")
    p.add_argument("--sticky-header", default="x-modelgit-user",
                   help="request header pinning a client to one rollout variant "
                   "(default x-modelgit-user)")
    p.add_argument("--seed", type=int, default=0,
                   help="seed of the variant choice for requests without that header")
    p.add_argument("--threads", type=int, help="torch threads (default: from a batch's size and "
                   "the machine's load; MODELGIT_THREADS overrides)")
    p.add_argument("--log-level", default="info",
                   choices=["critical", "error", "warning", "info", "debug"])
    p.add_argument("--check", action="store_true",
                   help="load everything, print what would be served, and exit")
    p.add_argument("--json", action="store_true", help="with --check: print JSON")
