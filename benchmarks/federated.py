"""Federated rounds vs a LoRA trained centrally on the union of the clients' data (SmolLM2).

Three clients, each holding one domain of this machine's real text (python, debian, manpages:
non-IID), train in Flower rounds (local Ray simulation, `modelgit federate`); the central LoRA
sees the same examples for the same total number of steps. Reported: held-out perplexity per
domain after every round and for the central LoRA, the share of the central LoRA's perplexity
gain the last round keeps (target >= 95% per domain and on average), bytes per round against
sending the full weights, time per round, and this process's wall, CPU seconds and peak RSS
(the clients train in Ray worker processes: their CPU time is in the wall time, not in this
process's CPU seconds).

    python3 benchmarks/federated.py [--quick] [--rounds N] [--steps S] [--method M] [--json out.json]
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import resource
import sys
import time

os.environ.setdefault("FLWR_TELEMETRY_ENABLED", "0")
os.environ.setdefault("HF_HUB_OFFLINE", "1")


def main() -> int:
    from modelgit.demo_federated import FULL, QUICK, run_federated_demo

    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="a tiny model (checks the script)")
    parser.add_argument("--rounds", type=int)
    parser.add_argument("--steps", type=int, help="steps per client per round")
    parser.add_argument("--method")
    parser.add_argument("--lr", type=float)
    parser.add_argument("--max-length", type=int, help="tokens per example")
    parser.add_argument("--train", type=int, help="training texts per client")
    parser.add_argument("--workdir")
    parser.add_argument("--json", help="also write the figures here")
    args = parser.parse_args()
    settings = QUICK if args.quick else FULL
    changes = {k: v for k, v in (("rounds", args.rounds), ("steps", args.steps),
                                 ("method", args.method), ("lr", args.lr),
                                 ("max_length", args.max_length), ("train", args.train))
               if v is not None}
    settings = dataclasses.replace(settings, **changes)
    wall, cpu = time.perf_counter(), time.process_time()
    figures = run_federated_demo(quick=args.quick, workdir=args.workdir, keep=bool(args.workdir),
                                 settings=settings)
    figures["process"] = {"wall_s": round(time.perf_counter() - wall, 1),
                          "cpu_s": round(time.process_time() - cpu, 1),
                          "peak_rss_mb": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
                                               / 1024, 1)}
    full = figures["full_weights_bytes"]
    print("\nper round (3 clients): bytes down / up, and against sending the full float32 "
          "weights both ways")
    for r in figures["rounds"]:
        both = r["bytes"]["down"] + r["bytes"]["up"]
        print(f"  round {r['round']}: {r['bytes']['down']:,} B down, {r['bytes']['up']:,} B up "
              f"= {both / (2 * r['clients'] * full):.2%} of full weights "
              f"({2 * r['clients'] * full:,} B); {r['seconds']:.0f} s")
    print(f"federated total {figures['federated_seconds']} s; central LoRA "
          f"{figures['central_seconds']} s; process {figures['process']}")
    kept = figures["kept"]
    ok = all(v is not None and v >= 0.95 for v in kept.values())
    print(f"settings: {figures['settings']}")
    print(f"target (>= 95% of the central gain per domain and on average): "
          f"{'met' if ok else 'NOT met'}")
    if args.json:
        with open(args.json, "w", encoding="utf-8") as handle:
            json.dump(figures, handle, indent=2, sort_keys=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
