"""Federated rounds vs a LoRA trained centrally on the union of the clients' data (SmolLM2).

Three clients, each holding one domain of this machine's real text (python, debian, manpages:
non-IID), train in Flower rounds (local Ray simulation, `modelgit federate`); the central LoRA
sees the same examples for the same total number of steps. Reported: held-out perplexity per
domain after every round and for the central LoRA, the share of the central LoRA's perplexity
gain the last round keeps (target >= 95% per domain and on average), bytes per round against
sending the full weights, time per round, wall time, CPU seconds and peak RSS of this process
and of its whole process tree (the clients train in Ray worker processes; the tree is sampled
every 5 s, so its CPU seconds are a lower bound), and the 1-minute load average over the run.

    python3 benchmarks/federated.py [--quick] [--rounds N] [--steps S] [--method M]
        [--server-lr X] [--central-from earlier.json] [--central-steps N] [--json out.json]

``--central-steps`` fixes the central LoRA's steps (default: as many as all clients together,
equal compute), so that runs of more rounds are measured against one central LoRA; the table's
last column is each round's share of its gain.
``--central-from`` reuses the central LoRA's perplexities of an earlier run's ``--json`` when
that run trained the same central LoRA (same data, total steps, batch, length, lr, rank: it is
seeded), to compare aggregations without training it again.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import resource
import sys
import threading
import time

os.environ.setdefault("FLWR_TELEMETRY_ENABLED", "0")
os.environ.setdefault("HF_HUB_OFFLINE", "1")


class _TreeSampler(threading.Thread):
    """Every few seconds: the load average, and the CPU seconds and RSS of every process below
    this one (Ray's GCS, raylet and the ClientApp workers that train), so that the clients'
    CPU time and memory are counted, not only this process's."""

    def __init__(self, every: float = 5.0):
        super().__init__(daemon=True)
        self.every, self.stop = every, threading.Event()
        self.cpu: dict[int, float] = {}  # pid -> last seen CPU seconds
        self.peak_tree_rss = 0
        self.loads: list[float] = []

    def sample(self) -> None:
        import psutil

        me = psutil.Process()
        rss = 0
        for proc in [me, *me.children(recursive=True)]:
            try:
                times, memory = proc.cpu_times(), proc.memory_info()
            except psutil.Error:  # ended meanwhile
                continue
            self.cpu[proc.pid] = times.user + times.system
            rss += memory.rss
        self.peak_tree_rss = max(self.peak_tree_rss, rss)
        self.loads.append(os.getloadavg()[0])

    def run(self) -> None:
        while not self.stop.wait(self.every):
            self.sample()

    def figures(self) -> dict:
        self.sample()
        loads = self.loads or [os.getloadavg()[0]]
        return {"tree_cpu_s": round(sum(self.cpu.values()), 1),
                "peak_tree_rss_mb": round(self.peak_tree_rss / 2 ** 20, 1),
                "load_average_1min": {"min": round(min(loads), 2), "max": round(max(loads), 2),
                                      "mean": round(sum(loads) / len(loads), 2)}}


def main() -> int:
    from modelgit.demo_federated import FULL, QUICK, format_table, run_federated_demo, score_rounds

    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="a tiny model (checks the script)")
    parser.add_argument("--rounds", type=int)
    parser.add_argument("--steps", type=int, help="steps per client per round")
    parser.add_argument("--method")
    parser.add_argument("--lr", type=float)
    parser.add_argument("--server-lr", type=float, help="the server's learning rate")
    parser.add_argument("--server-lr-decay", type=float,
                        help="multiply the server's learning rate by this every round")
    parser.add_argument("--server-lr-hold", type=int,
                        help="rounds at the full server learning rate before the decay starts")
    parser.add_argument("--seed", type=int,
                        help="the federated run's seed (initial adapter, data order); the central "
                             "LoRA keeps its own, so --central-from still applies")
    parser.add_argument("--central-from", help="reuse the central LoRA of this earlier --json")
    parser.add_argument("--central-steps", type=int,
                        help="the central LoRA's steps (default: as many as all clients together)")
    parser.add_argument("--central-every", type=int,
                        help="also evaluate the central LoRA every N steps and compare the rounds "
                             "with the strongest of those checkpoints")
    parser.add_argument("--max-length", type=int, help="tokens per example")
    parser.add_argument("--train", type=int, help="training texts per client")
    parser.add_argument("--rounds-from",
                        help="run nothing: score this earlier --json's rounds against the central "
                             "LoRA of --central-from (its strongest checkpoint)")
    parser.add_argument("--workdir")
    parser.add_argument("--json", help="also write the figures here")
    args = parser.parse_args()
    settings = QUICK if args.quick else FULL
    changes = {k: v for k, v in (("rounds", args.rounds), ("steps", args.steps),
                                 ("method", args.method), ("lr", args.lr),
                                 ("server_lr", args.server_lr),
                                 ("server_lr_decay", args.server_lr_decay),
                                 ("server_lr_hold", args.server_lr_hold),
                                 ("seed", args.seed),
                                 ("central_steps", args.central_steps),
                                 ("central_every", args.central_every),
                                 ("max_length", args.max_length), ("train", args.train))
               if v is not None}
    settings = dataclasses.replace(settings, **changes)
    central = None
    if args.central_from:
        with open(args.central_from, encoding="utf-8") as handle:
            central = json.load(handle)
    if args.rounds_from:
        if central is None:
            parser.error("--rounds-from needs --central-from")
        with open(args.rounds_from, encoding="utf-8") as handle:
            figures = score_rounds(json.load(handle), central)
        print(format_table(figures))
        return _report_target(figures, args.json)
    sampler = _TreeSampler()
    sampler.start()
    wall, cpu = time.perf_counter(), time.process_time()
    figures = run_federated_demo(quick=args.quick, workdir=args.workdir, keep=bool(args.workdir),
                                 settings=settings, central=central)
    figures["process"] = {"wall_s": round(time.perf_counter() - wall, 1),
                          "cpu_s": round(time.process_time() - cpu, 1),
                          "peak_rss_mb": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
                                               / 1024, 1),
                          **sampler.figures()}
    sampler.stop.set()
    full = figures["full_weights_bytes"]
    print("\nper round (3 clients): bytes down / up, and against sending the full float32 "
          "weights both ways")
    for r in figures["rounds"]:
        both = r["bytes"]["down"] + r["bytes"]["up"]
        print(f"  round {r['round']}: {r['bytes']['down']:,} B down, {r['bytes']['up']:,} B up "
              f"= {both / (2 * r['clients'] * full):.2%} of full weights "
              f"({2 * r['clients'] * full:,} B); {r['seconds']:.0f} s")
    reused = f" (reused from {args.central_from})" if args.central_from else ""
    print(f"federated total {figures['federated_seconds']} s; central LoRA "
          f"{figures['central_seconds']} s{reused}; process {figures['process']}")
    print(f"settings: {figures['settings']}")
    return _report_target(figures, args.json)


def _report_target(figures: dict, path: str | None) -> int:
    met = lambda kept: all(v is not None and v >= 0.95 for v in kept.values())  # noqa: E731
    print(f"target (>= 95% of the central gain per domain and on average): last round "
          f"{'met' if met(figures['kept']) else 'NOT met'}; best round "
          f"({figures['best_round']['round']}) "
          f"{'met' if met(figures['best_round']['kept']) else 'NOT met'}")
    if path:
        with open(path, "w", encoding="utf-8") as handle:
            json.dump(figures, handle, indent=2, sort_keys=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
