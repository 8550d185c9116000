"""CLI verb of federated rounds: ``modelgit federate`` (a local simulation on Flower).

Its flags are generated from :class:`~modelgit.federate.FederateConfig`'s fields. A real
deployment runs the same ServerApp and ClientApp under ``flwr run`` (README: Federated rounds).
"""

from __future__ import annotations

import json

from ..errors import UsageError

__all__ = ["register"]


def _table(result) -> str:
    suites = [e["suite"] for e in result.base_evaluation] or \
        [e["suite"] for e in (result.rounds[0]["evaluation"] if result.rounds else [])]
    head = ["round", "clients", "excluded", "down B", "up B", "s", *suites]
    rows = [["base", "", "", "", "", "",
             *(f"{e['value']:.4g}" for e in result.base_evaluation)]] if result.base_evaluation else []
    for r in result.rounds:
        rows.append([str(r["round"]), str(len(r["participants"])), str(len(r["excluded"])),
                     str(r["bytes"]["down"]), str(r["bytes"]["up"]), f"{r['seconds']:.1f}",
                     *(f"{e['value']:.4g}" for e in r["evaluation"])])
    widths = [max(len(x) for x in col) for col in zip(head, *rows)]
    lines = ["  ".join(x.ljust(w) for x, w in zip(row, widths)).rstrip() for row in [head, *rows]]
    for r in result.rounds:
        lines += [f"round {r['round']}: excluded {e['client']}: {e['reason']}" for e in r["excluded"]]
    return "\n".join(lines)


def _best(result) -> str:
    """The run's best round by the suites, and how to contribute it (empty without suites)."""
    best = result.best
    if not best:
        return ""
    text = (f"best round by the suites ({', '.join(best['suites'])}): round {best['round']}, "
            f"mean gain {best['mean_gain']:+.2%} over the base")
    if best["round"] == best["last_round"]:
        return text + " (the last round)"
    return (text + f"; the last round ({best['last_round']}): {best['last_mean_gain']:+.2%}. "
            f"To contribute round {best['round']}: git worktree add ../round-{best['round']} "
            f"{best['commit'][:12]} && modelgit contribute ../round-{best['round']}/federated/"
            f"{result.run}/adapter --name NAME -m MESSAGE")


def cmd_federate(args) -> int:
    try:
        from ..federate import FederateConfig, federate
        import flwr  # noqa: F401
    except ImportError:
        raise UsageError("modelgit federate needs Flower: pip install 'modelgit[federated]'") from None
    from .route_commands import parse_pairs
    from .train_commands import config_from_args

    clients = parse_pairs(args.client, "--client")
    if not clients:
        raise UsageError("give the clients: --client NAME=DATA_PATH (repeat), one per client")
    config = config_from_args(FederateConfig, args)
    result = federate(config, clients, base=args.base, verbose=args.verbose)
    if args.json:
        print(json.dumps({"run": result.run, "branch": result.branch,
                          "resumed_from": result.resumed_from, "rounds": list(result.rounds),
                          "base_evaluation": list(result.base_evaluation),
                          "best_round": result.best}, indent=2, sort_keys=True))
    else:
        print(_table(result))
        print(f"branch {result.branch}: {len(result.rounds)} round(s) committed"
              + (f" (resumed at round {result.resumed_from})" if result.resumed_from > 1 else ""))
        best = _best(result)
        if best:
            print(best)
    return 0


def register(sub, command) -> None:
    from ..federate.config import FederateConfig
    from .train_commands import add_config_arguments

    p = command(sub, "federate", cmd_federate,
                "Federated rounds on Flower (local simulation): clients train the round's LoRA on "
                "their own data, the server aggregates with modelgit and commits every round on "
                "branch fed/<run>.",
                "modelgit federate . --client a=a.jsonl --client b=b.jsonl --client c=c.jsonl \\\n"
                "    --rounds 3 --method fedavg --suites ~/private/suites.yaml\n"
                "modelgit federate . --clients a=a.jsonl b=b.jsonl c=c.jsonl --method ties --density 0.5\n"
                "modelgit federate . --clients a=a.jsonl b=b.jsonl c=c.jsonl --method trimmed_mean "
                "--trim 0.2 --min-clients 3\n"
                "modelgit federate . --clients ... --run exp1   # again after a kill: resumes")
    p.add_argument("--client", "--clients", action="extend", nargs="+", metavar="NAME=PATH",
                   help="a client and its local data (repeat); names stay on this machine")
    add_config_arguments(p, FederateConfig)
    p.add_argument("--base", help="base model directory the simulated clients use (default: an "
                   "export of the run's base revision)")
    p.add_argument("--verbose", action="store_true", help="show Flower's and Ray's logs")
    p.add_argument("--json", action="store_true")
