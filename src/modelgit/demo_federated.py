"""`modelgit demo --federated`: clients each holding one domain of real text (non-IID) train
SmolLM2 together in Flower rounds, beside a LoRA trained centrally on the union of their data.

Both see the same examples for the same number of optimizer steps: each of the C clients runs
``steps`` steps per round for R rounds, the central LoRA ``C · R · steps`` steps on the union,
with the same rank, batch size, learning rate and sequence length. The table gives the held-out
perplexity per domain of the base, of every committed round and of the central LoRA, and how
much of the central LoRA's perplexity gain over the base the last round keeps.
"""

from __future__ import annotations

import os
import shutil
import time
from dataclasses import dataclass

__all__ = ["FederatedDemoSettings", "QUICK", "FULL", "run_federated_demo", "format_table",
           "kept_gains", "score_rounds"]


@dataclass(frozen=True)
class FederatedDemoSettings:
    train: int  # training texts per client (one domain each)
    heldout: int  # held-out texts per domain
    max_chars: int
    rounds: int
    steps: int  # per client per round
    batch_size: int
    max_length: int
    lr: float
    rank: int
    method: str = "fedavg"
    server_lr: float = 1.0
    server_lr_decay: float = 1.0
    server_lr_hold: int = 1  # rounds at the full server learning rate before the decay
    seed: int = 0  # the federated run's (initial adapter, clients' data order); not the central's
    central_steps: int | None = None  # None: as many as all clients together (equal compute)
    central_every: int | None = None  # also evaluate the central LoRA every N steps; compare
    # the rounds with the best of those checkpoints (the strongest central LoRA of the run)

    def central_total(self, clients: int) -> int:
        """The central LoRA's steps: ``central_steps``, else the clients' steps together."""
        return self.central_steps or self.steps * self.rounds * clients

    def central_settings(self, clients: int) -> dict:
        """What defines the central LoRA (same data, same total steps): two settings with equal
        values train the same central LoRA (it is seeded)."""
        return {"train": self.train, "heldout": self.heldout, "max_chars": self.max_chars,
                "steps": self.central_total(clients), "batch_size": self.batch_size,
                "max_length": self.max_length, "lr": self.lr, "rank": self.rank,
                "every": self.central_every}


QUICK = FederatedDemoSettings(train=60, heldout=12, max_chars=300, rounds=2, steps=10,
                              batch_size=8, max_length=64, lr=3e-3, rank=8, central_every=20)
FULL = FederatedDemoSettings(train=120, heldout=16, max_chars=600, rounds=3, steps=15,
                             batch_size=4, max_length=128, lr=5e-4, rank=8)


def _say(text: str) -> None:
    print(text, flush=True)


def _union(paths: list[str], out: str) -> str:
    with open(out, "w", encoding="utf-8") as target:
        for path in paths:
            with open(path, encoding="utf-8") as source:
                shutil.copyfileobj(source, target)
    return out


def _central(base: str, splits: dict, settings, work: str, suites) -> tuple[list[dict], float]:
    """A LoRA trained on the union (for as many steps as all clients together unless the
    settings name its steps), evaluated: ``[{"steps": n, "evaluation": [...]}, ...]``, one per
    checkpoint (``central_every``) and the last step, and the training seconds."""
    from .adapters import TrainConfig, train
    from .eval import evaluate_suites, without_documents

    union = _union([files["train"] for files in splits.values()],
                   os.path.join(work, "private", "union.jsonl"))
    started = time.perf_counter()
    out = os.path.join(work, "central-lora")
    steps = settings.central_total(len(splits))
    train(TrainConfig(base=base, data=union, output=out, rank=settings.rank,
                      alpha=2.0 * settings.rank, steps=steps, lr=settings.lr,
                      batch_size=settings.batch_size, max_length=settings.max_length, seed=0,
                      threads=1, save_every=settings.central_every), progress=False)
    seconds = time.perf_counter() - started
    every = settings.central_every
    points = [*range(every, steps, every)] if every else []
    return [{"steps": n, "evaluation": without_documents(evaluate_suites(
                base, os.path.join(out, f"checkpoint-{n}") if n < steps else out, suites))}
            for n in [*points, steps]], seconds


def _strongest(curve: list[dict]) -> dict:
    """The central checkpoint of lowest mean held-out perplexity (the last one on a tie)."""
    mean = lambda point: sum(point["perplexity"].values()) / len(point["perplexity"])  # noqa: E731
    return min(reversed(curve), key=mean)


def score_rounds(figures: dict, central: dict | None = None) -> dict:
    """Each round's share of the central gain (``kept``), the last round's (``figures["kept"]``)
    and the best round's: the one of lowest mean held-out perplexity, as a maintainer picks the
    round to contribute from the evaluations committed with every round (the central LoRA's
    strongest checkpoint is picked the same way). ``central``: the figures of another run whose
    central LoRA (``central``, ``central_steps``, ``central_curve``) replaces this one's."""
    if central is not None:
        curve = central.get("central_curve") or [
            {"steps": central.get("central_steps"), "perplexity": central["central"]}]
        strongest = _strongest(curve)
        figures.update(central=strongest["perplexity"], central_steps=strongest["steps"],
                       central_curve=curve)
    for r in figures["rounds"]:
        r["kept"] = kept_gains(figures["base"], r["perplexity"], figures["central"])
    figures["kept"] = figures["rounds"][-1]["kept"]
    best = _strongest([{"steps": r["round"], "perplexity": r["perplexity"]}
                       for r in figures["rounds"]])
    figures["best_round"] = {"round": best["steps"], "kept": kept_gains(
        figures["base"], best["perplexity"], figures["central"])}
    return figures


def _check_reusable(central: dict, settings: FederatedDemoSettings) -> None:
    from .errors import UsageError

    clients = len(central.get("base") or {})  # one client per domain
    try:
        earlier = FederatedDemoSettings(**central["settings"]).central_settings(clients)
        central["central"], central["central_seconds"]
    except (KeyError, TypeError) as exc:
        raise UsageError(f"the earlier figures lack the central LoRA's settings or results "
                         f"({exc}): train the central LoRA again") from None
    if earlier != settings.central_settings(clients):
        raise UsageError(f"the earlier run's central LoRA was trained with {earlier}, not "
                         f"{settings.central_settings(clients)}: train it again")


def kept_gains(base: dict, federated: dict, central: dict) -> dict:
    """{domain: share of the central LoRA's perplexity gain the federated model keeps} and
    ``mean`` (of the mean perplexities)."""
    out = {}
    for domain in base:
        gain = base[domain] - central[domain]
        out[domain] = (base[domain] - federated[domain]) / gain if gain > 0 else None
    mean = {k: sum(v.values()) / len(v) for k, v in (("b", base), ("f", federated), ("c", central))}
    out["mean"] = (mean["b"] - mean["f"]) / (mean["b"] - mean["c"]) if mean["b"] > mean["c"] else None
    return out


def format_table(figures: dict) -> str:
    """The per-round perplexity table of :func:`run_federated_demo`'s figures."""
    domains = list(figures["base"])
    head = ["model", *domains, "mean", "kept (mean)"]
    rows = [("base", figures["base"], "")]
    decay = (figures.get("settings") or {}).get("server_lr_decay", 1.0)
    hold = (figures.get("settings") or {}).get("server_lr_hold", 1)
    method = figures["method"] + (f", server lr {figures['server_lr']:g}"
                                  if figures.get("server_lr", 1.0) != 1.0 else "") + \
        (f" x {decay:g}/round" if decay != 1.0 else "") + \
        (f" after round {hold}" if decay != 1.0 and hold != 1 else "")
    share = lambda r: "" if (r.get("kept") or {}).get("mean") is None else f"{r['kept']['mean']:.0%}"  # noqa: E731
    rows += [(f"round {r['round']} ({method})", r["perplexity"], share(r))
             for r in figures["rounds"]]
    curve = figures.get("central_curve") or []
    for point in curve if len(curve) > 1 else ():  # shares of the strongest checkpoint's gain
        mean = kept_gains(figures["base"], point["perplexity"], figures["central"])["mean"]
        strongest = " (strongest)" if point["steps"] == figures["central_steps"] else ""
        rows.append((f"central LoRA (union), {point['steps']} steps{strongest}",
                     point["perplexity"], "" if mean is None else f"{mean:.0%}"))
    if len(curve) <= 1:
        rows.append(("central LoRA (union)", figures["central"], "100%"))
    cells = [[name, *(f"{values[d]:.2f}" for d in domains),
              f"{sum(values.values()) / len(values):.2f}", kept] for name, values, kept in rows]
    widths = [max(len(x) for x in col) for col in zip(head, *cells)]
    line = lambda row: "  ".join(x.ljust(w) for x, w in zip(row, widths)).rstrip()  # noqa: E731
    out = [line(head), line(["-" * w for w in widths]), *map(line, cells)]
    central = "central LoRA's " if len(curve) <= 1 else \
        f"strongest central checkpoint's ({figures['central_steps']} steps) "
    for domain, share in figures["kept"].items():
        where = "average" if domain == "mean" else domain
        out.append(f"the last round keeps {share:.0%} of the {central}perplexity gain on {where}"
                   if share is not None else f"{where}: the central LoRA gained nothing")
    best = figures.get("best_round")
    if best and best["round"] != figures["rounds"][-1]["round"]:
        shares = " / ".join("-" if v is None else f"{v:.0%}" for v in best["kept"].values())
        out.append(f"the best round by mean held-out perplexity, round {best['round']}, keeps "
                   f"{shares} ({' / '.join(best['kept'])})")
    return "\n".join(out)


def run_federated_demo(quick: bool = False, workdir: str | None = None, keep: bool = False,
                       settings: FederatedDemoSettings | None = None,
                       central: dict | None = None) -> dict:
    """Run the federated demo; returns its figures (perplexities, kept gains, bytes, times).

    Args:
        quick: a tiny model instead of SmolLM2-135M.
        workdir: where to work (default: a new temporary directory, removed unless ``keep``).
        settings: override :data:`QUICK` / :data:`FULL`.
        central: the figures of an earlier run whose ``central_settings`` equal this one's: its
            central LoRA's perplexities are reused instead of training the same LoRA again.
    Raises:
        UsageError: ``central`` comes from a run with other central settings.
    """
    from . import demo
    from .demo_data import write_domain_splits
    from .eval import load_suites
    from .federate import FederateConfig, federate
    from .workflow import Project, create_project

    settings = settings or (QUICK if quick else FULL)
    if central is not None:
        _check_reusable(central, settings)
    started = time.perf_counter()
    with demo.demo_workdir("modelgit-fed-demo-", workdir, keep) as work:
        if not quick:  # before the private HOME: the model cache lives under the real one
            from .smollm2 import prepare_smollm2

            base = prepare_smollm2()
        demo._git_env(work)
        splits = write_domain_splits(os.path.join(work, "private", "data"), settings.train,
                                     settings.heldout, 0, settings.max_chars)
        if quick:
            base = demo._tiny_base(os.path.join(work, "tiny-base"), splits)
        suites_file = os.path.join(work, "private", "suites.yaml")
        demo.write_suites(suites_file, splits, settings)
        repo = create_project(os.path.join(work, "maintainer"), base, Project(name="fed-demo"))
        _say(f"modelgit demo --federated ({'tiny model' if quick else 'SmolLM2-135M'}) in {work}: "
             f"{len(splits)} clients, one domain each ({', '.join(splits)}), {settings.rounds} "
             f"rounds of {settings.steps} steps per client, {settings.method}")
        config = FederateConfig(repo=repo.root, run="demo", rounds=settings.rounds,
                                method=settings.method, rank=settings.rank,
                                alpha=2.0 * settings.rank, steps=settings.steps, lr=settings.lr,
                                server_lr=settings.server_lr,
                                server_lr_decay=settings.server_lr_decay,
                                server_lr_hold=settings.server_lr_hold,
                                seed=settings.seed,
                                batch_size=settings.batch_size, max_length=settings.max_length,
                                suites=suites_file, threads=1, min_clients=2)
        fed_started = time.perf_counter()
        result = federate(config, {d: files["train"] for d, files in splits.items()}, base=base)
        fed_seconds = time.perf_counter() - fed_started
        values = lambda results: {e["suite"]: e["value"] for e in results}  # noqa: E731
        if central is None:
            _say(f"federated: {len(result.rounds)} rounds committed on {result.branch} "
                 f"({fed_seconds:.0f} s); training the central LoRA on the union...")
            trained, central_seconds = _central(base, splits, settings, work,
                                                load_suites(suites_file))
            curve = [{"steps": p["steps"], "perplexity": values(p["evaluation"])} for p in trained]
        else:
            central_seconds = central["central_seconds"]
            curve = central.get("central_curve") or [
                {"steps": settings.central_total(len(splits)), "perplexity": central["central"]}]
        figures = {"method": settings.method, "server_lr": settings.server_lr,
                   "base": values(result.base_evaluation),
                   "rounds": [{"round": r["round"], "perplexity": values(r["evaluation"]),
                               "seconds": r["seconds"], "bytes": r["bytes"],
                               "clients": len(r["participants"]), "excluded": r["excluded"]}
                              for r in result.rounds],
                   "central_reused": central is not None,
                   "federated_seconds": round(fed_seconds, 1),
                   "central_seconds": round(central_seconds, 1),
                   "full_weights_bytes": result.rounds[0].get("base", {}).get(
                       "full_weights_bytes_float32") if result.rounds else None,
                   "settings": settings.__dict__, "wall_seconds": None}
        score_rounds(figures, {"central_curve": curve})  # sets central, central_steps
        figures["wall_seconds"] = round(time.perf_counter() - started, 1)
        _say(format_table(figures))
        return figures
