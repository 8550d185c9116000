#!/usr/bin/env python3
"""Serving benchmark (issue 14): mixed-adapter batches against switching the active adapter per
request, on SmolLM2-135M with 4 rank-8 LoRA adapters; latency at a stated concurrency; the
server's overhead per request against calling the model in-process.

The adapters are rank 8 on ``q_proj,v_proj`` with seeded random ``A`` and **random non-zero
``B``** (std 0.02): untrained, but every adapter changes every output, which is all a throughput
figure needs (a trained adapter costs the same FLOPs). One stream of requests (short prompts,
16 new tokens each, greedy), spread over the 4 adapters in a seeded random order, is answered by:

* ``inproc-mixed``: the model in-process, batches of ``--concurrency`` requests, one
  ``generate`` per batch with PEFT's ``adapter_names`` (what ``modelgit serve`` does);
* ``inproc-switch``: the model in-process, one request at a time, ``set_adapter`` before each;
* ``http-mixed`` / ``http-switch``: the same two through ``modelgit serve`` over HTTP on
  localhost, ``--concurrency`` clients each sending its next request when the last one is
  answered (closed loop); the switching server takes one request per batch and calls
  ``set_adapter`` before each ``generate``;
* ``overhead``: one client, one request at a time, over HTTP against the same ``generate`` call
  in-process (same prompt, same adapter).

Each mode runs in its own child process (its peak RSS is its ``ru_maxrss``, model included);
figures are the phase after loading: wall, CPU seconds of the process (``time.process_time``:
the machine's other load does not count), requests and tokens per second, latency percentiles.
torch uses ``--threads`` threads in every mode.

Usage::

    python3 benchmarks/serve.py                     # SmolLM2-135M, 64 requests, concurrency 16
    python3 benchmarks/serve.py --quick             # tiny random Llama, to check the script
    python3 benchmarks/serve.py --requests 128 --concurrency 8 --json figures.json
"""

from __future__ import annotations

import argparse
import concurrent.futures
import json
import os
import platform
import random
import resource
import subprocess
import sys
import tempfile
import time

HERE = os.path.dirname(os.path.abspath(__file__))
REPO = os.path.dirname(HERE)
sys.path.insert(0, os.path.join(REPO, "src"))
os.environ.setdefault("HF_HUB_OFFLINE", "1")

ADAPTERS = ("alpha", "beta", "gamma", "delta")
MODES = ("inproc-mixed", "inproc-switch", "http-mixed", "http-switch", "overhead")
_WORDS = ("the server answers each request with the adapter it names while other requests wait "
          "in the queue for the next batch of the model and the tokens come back one by one "
          "as the clients read them from the stream").split()


def prompts(count: int, seed: int) -> list[tuple[str, str]]:
    """(adapter, prompt) pairs: prompts of 6-24 words, adapters in a seeded random order."""
    rng = random.Random(seed)
    return [(rng.choice(ADAPTERS), " ".join(rng.choice(_WORDS) for _ in range(rng.randint(6, 24))))
            for _ in range(count)]


# -------------------------------------------------------------------------- setup (parent)
def make_base(workdir: str, quick: bool) -> str:
    if not quick:
        from modelgit.smollm2 import prepare_smollm2

        return prepare_smollm2(install=True)
    from modelgit.adapters.tiny import tiny_causal_lm

    path = os.path.join(workdir, "tiny-base")
    if not os.path.isdir(path):
        tiny_causal_lm(path, _WORDS, seed=0, hidden=64, layers=4)
    return path


def make_adapters(base: str, workdir: str) -> dict[str, str]:
    """4 rank-8 LoRA adapters with seeded random non-zero B (written once per work dir)."""
    import torch
    from peft import LoraConfig, get_peft_model

    from modelgit.adapters.loading import load_model

    out = {}
    for index, name in enumerate(ADAPTERS):
        path = os.path.join(workdir, f"adapter-{name}")
        out[name] = path
        if os.path.isfile(os.path.join(path, "adapter_model.safetensors")):
            continue
        torch.manual_seed(100 + index)
        model = get_peft_model(load_model(base, "causal_lm"), LoraConfig(
            r=8, lora_alpha=16, target_modules=["q_proj", "v_proj"], task_type="CAUSAL_LM"))
        with torch.no_grad():
            for key, param in model.named_parameters():
                if "lora_B" in key:
                    param.normal_(0.0, 0.02)  # (out, rank): non-zero, so the adapter acts
        model.save_pretrained(path + ".tmp", safe_serialization=True)
        os.replace(path + ".tmp", path)
    return out


# -------------------------------------------------------------------------- children
def _percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(round(q * (len(ordered) - 1))))]


def _library(args):
    from modelgit.route import Library

    return Library.from_dirs(args.base, json.loads(args.adapters))


def _inproc(args, stream, switch: bool) -> dict:
    """The model alone: batches with adapter_names, or set_adapter + one request at a time."""
    import torch

    from modelgit.serve.catalog import open_catalog
    from modelgit.serve.engine import Engine, GenJob
    from modelgit.serve.pool import AdapterPool

    pool = AdapterPool(open_catalog(_library(args)), len(ADAPTERS))
    pool.ensure(list(ADAPTERS))
    engine = Engine(pool)
    if switch:
        _switching(pool)
    jobs = [GenJob(adapter, pool.tokenizer(prompt)["input_ids"], args.max_tokens)
            for adapter, prompt in stream]
    size = 1 if switch else args.concurrency
    engine.run("generate", jobs[:size])  # warm-up (not counted)
    start, cpu = time.perf_counter(), time.process_time()
    tokens, latencies = 0, []
    with torch.inference_mode():
        for first in range(0, len(jobs), size):
            t0 = time.perf_counter()
            results = engine.run("generate", jobs[first:first + size])
            latencies += [time.perf_counter() - t0] * len(results)
            tokens += sum(r.completion_tokens for r in results)
    return {"wall_s": time.perf_counter() - start, "cpu_s": time.process_time() - cpu,
            "requests": len(jobs), "tokens": tokens, "latencies": latencies}


def _switching(pool) -> None:
    """Make the pool run each batch (of one) with ``set_adapter`` instead of adapter_names."""

    def activate(names):
        (name,) = names
        pool.model.set_adapter(name)
        return {}

    pool.adapter_kwargs = activate


def _http(args, stream, switch: bool) -> dict:
    import httpx

    from modelgit.serve import BackgroundServer, ServeConfig, create_app

    config = ServeConfig(batch_window_ms=0 if switch else args.window_ms,
                         max_batch=1 if switch else args.concurrency, max_adapters=len(ADAPTERS),
                         threads=args.threads)
    app = create_app(_library(args), config=config)
    pool = app.state.service.pool
    pool.ensure(list(ADAPTERS))
    if switch:
        _switching(pool)
    with BackgroundServer(app) as server, httpx.Client(base_url=server.url, timeout=None,
                                                        limits=httpx.Limits(max_connections=64)) as client:
        def one(item):
            adapter, prompt = item
            t0 = time.perf_counter()
            answer = client.post("/v1/completions", json={"model": adapter, "prompt": prompt,
                                                          "max_tokens": args.max_tokens})
            answer.raise_for_status()
            return time.perf_counter() - t0, answer.json()["usage"]["completion_tokens"]

        one(stream[0])  # warm-up
        start, cpu = time.perf_counter(), time.process_time()
        with concurrent.futures.ThreadPoolExecutor(args.concurrency) as workers:
            done = list(workers.map(one, stream))
        wall, cpu = time.perf_counter() - start, time.process_time() - cpu
        metrics = client.get("/metrics").text
    sizes = [line for line in metrics.splitlines()
             if line.startswith("modelgit_batch_size_") and "generate" in line]
    return {"wall_s": wall, "cpu_s": cpu, "requests": len(stream),
            "tokens": sum(t for _, t in done), "latencies": [l for l, _ in done],
            "batch_metrics": sizes}


def _overhead(args, stream) -> dict:
    """Concurrency 1: the same requests over HTTP and as direct engine calls."""
    import httpx

    from modelgit.serve import BackgroundServer, ServeConfig, create_app
    from modelgit.serve.engine import GenJob

    app = create_app(_library(args), config=ServeConfig(batch_window_ms=0, max_batch=1,
                                                        max_adapters=len(ADAPTERS),
                                                        threads=args.threads))
    service = app.state.service
    service.pool.ensure(list(ADAPTERS))
    sample = stream[:args.overhead_requests]
    direct, direct_cpu, http, http_cpu = [], 0.0, [], 0.0
    with BackgroundServer(app) as server, httpx.Client(base_url=server.url, timeout=None) as client:
        client.post("/v1/completions", json={"model": sample[0][0], "prompt": sample[0][1],
                                             "max_tokens": args.max_tokens})  # warm-up
        for adapter, prompt in sample:  # alternate, so both see the same machine load
            job = GenJob(adapter, service.main.tokenize(prompt), args.max_tokens)
            c0, t0 = time.process_time(), time.perf_counter()
            service.engine.run("generate", [job])
            direct.append(time.perf_counter() - t0)
            direct_cpu += time.process_time() - c0
            c0, t0 = time.process_time(), time.perf_counter()
            client.post("/v1/completions", json={"model": adapter, "prompt": prompt,
                                                 "max_tokens": args.max_tokens}).raise_for_status()
            http.append(time.perf_counter() - t0)
            http_cpu += time.process_time() - c0
    return {"requests": len(sample), "direct_p50_s": _percentile(direct, 0.5),
            "http_p50_s": _percentile(http, 0.5),
            "overhead_p50_ms": 1000 * (_percentile(http, 0.5) - _percentile(direct, 0.5)),
            "overhead_mean_ms": 1000 * (sum(http) - sum(direct)) / len(sample),
            "overhead_cpu_ms": 1000 * (http_cpu - direct_cpu) / len(sample),
            "direct_cpu_s": direct_cpu, "http_cpu_s": http_cpu}


def child(args) -> None:
    import torch

    torch.set_num_threads(args.threads)
    stream = prompts(args.requests, args.seed)
    if args.child == "overhead":
        result = _overhead(args, stream)
    elif args.child.startswith("inproc"):
        result = _inproc(args, stream, args.child.endswith("switch"))
    else:
        result = _http(args, stream, args.child.endswith("switch"))
    result["peak_rss_mb"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    print(json.dumps(result))


# -------------------------------------------------------------------------- parent
def run_child(args, mode: str, base: str, adapters: dict) -> dict:
    argv = [sys.executable, os.path.abspath(__file__), "--child", mode, "--base", base,
            "--adapters", json.dumps(adapters)]
    for name in ("requests", "concurrency", "max_tokens", "threads", "seed", "window_ms",
                 "overhead_requests"):
        argv += [f"--{name.replace('_', '-')}", str(getattr(args, name))]
    load = os.getloadavg()[0]
    start = time.perf_counter()
    done = subprocess.run(argv, capture_output=True, text=True,
                          env={**os.environ, "PYTHONPATH": os.path.join(REPO, "src")})
    if done.returncode:
        sys.exit(f"{mode} failed:\n{done.stderr[-3000:]}")
    result = json.loads(done.stdout.strip().splitlines()[-1])
    result.update(mode=mode, process_wall_s=time.perf_counter() - start, load_before=load,
                  load_after=os.getloadavg()[0])
    return result


def table(results: dict, args) -> str:
    rows = ["| mode | requests/s | tokens/s | wall s | CPU s | CPU s / request | p50 s | p95 s | "
            "peak RSS MB | load 1 min (before → after) |", "|---|---|---|---|---|---|---|---|---|---|"]
    for mode in MODES[:4]:
        r = results[mode]
        rows.append(f"| {mode} | {r['requests'] / r['wall_s']:.2f} | {r['tokens'] / r['wall_s']:.1f} | "
                    f"{r['wall_s']:.1f} | {r['cpu_s']:.1f} | {r['cpu_s'] / r['requests']:.2f} | "
                    f"{_percentile(r['latencies'], 0.5):.2f} | {_percentile(r['latencies'], 0.95):.2f} | "
                    f"{r['peak_rss_mb']:.0f} | {r['load_before']:.1f} → {r['load_after']:.1f} |")
    lines = ["\n".join(rows), ""]
    for kind in ("inproc", "http"):
        mixed, switch = results[f"{kind}-mixed"], results[f"{kind}-switch"]
        lines.append(f"{kind}: mixed / switch throughput (requests per wall second) "
                     f"{(mixed['requests'] / mixed['wall_s']) / (switch['requests'] / switch['wall_s']):.2f}x; "
                     f"per CPU second {(switch['cpu_s'] / switch['requests']) / (mixed['cpu_s'] / mixed['requests']):.2f}x")
    o = results["overhead"]
    lines.append(f"overhead (concurrency 1, {o['requests']} requests): in-process p50 "
                 f"{o['direct_p50_s']:.3f} s, HTTP p50 {o['http_p50_s']:.3f} s, difference "
                 f"{o['overhead_p50_ms']:.1f} ms at p50 ({o['overhead_mean_ms']:.1f} ms mean); "
                 f"CPU {o['overhead_cpu_ms']:.1f} ms more per request (client and server in one "
                 f"process); peak RSS {o['peak_rss_mb']:.0f} MB")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="a tiny random Llama instead of SmolLM2")
    parser.add_argument("--requests", type=int, default=64)
    parser.add_argument("--concurrency", type=int, default=16)
    parser.add_argument("--max-tokens", type=int, default=16)
    parser.add_argument("--threads", type=int, default=1,
                        help="torch threads in every mode (default 1: on a busy machine more threads stall each other)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--window-ms", type=float, default=20.0)
    parser.add_argument("--overhead-requests", type=int, default=16)
    parser.add_argument("--workdir", help="where the adapters are written (kept; default a temporary directory)")
    parser.add_argument("--json", help="write every figure to this file")
    parser.add_argument("--child", choices=MODES, help=argparse.SUPPRESS)
    parser.add_argument("--base", help=argparse.SUPPRESS)
    parser.add_argument("--adapters", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        child(args)
        return
    workdir = args.workdir or tempfile.mkdtemp(prefix="modelgit-serve-bench-")
    os.makedirs(workdir, exist_ok=True)
    base = make_base(workdir, args.quick)
    adapters = make_adapters(base, workdir)
    print(f"# {platform.node()}: {os.cpu_count()} cores, python {platform.python_version()}, "
          f"base {base}, {args.requests} requests over {len(ADAPTERS)} adapters, "
          f"{args.max_tokens} new tokens each, concurrency {args.concurrency}, "
          f"{args.threads} torch threads", file=sys.stderr)
    results = {}
    for mode in MODES:
        print(f"# {mode} ...", file=sys.stderr, flush=True)
        results[mode] = run_child(args, mode, base, adapters)
    print(table(results, args))
    if args.json:
        with open(args.json, "w", encoding="utf-8") as handle:
            json.dump({"settings": vars(args), "results": results}, handle, indent=1)


if __name__ == "__main__":
    main()
