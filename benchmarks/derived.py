#!/usr/bin/env python3
"""What a release merging N rank-8 LoRAs into SmolLM2-135M costs: derived objects vs deltas.

For N = 1, 3, 8 random rank-8 LoRAs on the usual target modules (q, k, v, o, gate, up, down of
every layer; A ~ N(0, 1/in), B ~ N(0, 0.02), alpha 16), merged with task arithmetic (lambda 1,
weight 1) into the converted SmolLM2-135M-Instruct (fp32, and a bf16 copy rounded from it), this
stores the release the way ``modelgit release`` does:

* **today**: every merged chunk added as git's filter adds it, a delta on the base chunk;
* **derived**: the adapters' factors plus one ``lora_merge/1`` recipe per chunk
  (``Store.put_derived``, which recomputes each chunk from the stored inputs to check it).

and reports, for each: the bytes the release adds to the store, the bytes a consumer that has
the base fetches from a remote (push to a remote store kept newest whole, then fetch; counted by
the transfer), and the time to read every merged chunk back (a checkout's decoding): deltas,
derived with the cache cold (computed), derived with the cache warm. Wall and CPU seconds and
the process's peak RSS. The merged bytes are the same in both stores (the derived function's).

Usage::

    python3 benchmarks/derived.py                       # N = 1,3,8; fp32 and bf16
    python3 benchmarks/derived.py --adapters 1 --dtypes fp32 --layers 4   # quick
    python3 benchmarks/derived.py --json figures.json
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import shutil
import sys
import tempfile
import time

import numpy as np

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "src"))

from modelgit.formats.safetensors_format import open_safetensors  # noqa: E402
from modelgit.git.transfer import fetch_objects, push_objects  # noqa: E402
from modelgit.store import Store  # noqa: E402
from modelgit.store._functions import lora_merge_recipe  # noqa: E402
from modelgit.store.chunking import chunk_layout  # noqa: E402
from modelgit.store.derived import InputRef, compute, round_to  # noqa: E402
from modelgit.store.ids import object_id  # noqa: E402

MODEL = os.path.expanduser("~/.cache/modelgit/smollm2-135m-instruct/model.safetensors")
TARGETS = ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj")
RANK, ALPHA = 8, 16.0


def load_targets(path: str, layers: int | None) -> dict[str, np.ndarray]:
    """The targeted weights of the model, float32, by name."""
    reader = open_safetensors(path)
    try:
        out = {}
        for entry in reader.entries():
            parts = entry.name.split(".")
            if not entry.name.endswith(".weight") or len(parts) < 4 or parts[-2] not in TARGETS:
                continue
            if layers is not None and int(parts[2]) >= layers:
                continue
            if entry.dtype != "F32":
                raise SystemExit(f"{path}: expected the fp32 conversion, found {entry.dtype}")
            out[entry.name] = np.frombuffer(bytes(reader.data(entry.name)), np.float32).reshape(entry.shape)
        return out
    finally:
        reader.close()


def as_dtype(weight: np.ndarray, dtype: str) -> bytes:
    return weight.tobytes() if dtype == "F32" else round_to(weight.astype(np.float64), "BF16")


def random_loras(weights: dict, count: int, seed: int) -> list[dict]:
    """``count`` adapters: {tensor name: (A (rank, in), B (out, rank))}, float32."""
    rng = np.random.default_rng(seed)
    out = []
    for _ in range(count):
        adapter = {}
        for name, w in sorted(weights.items()):
            rows, cols = w.shape
            adapter[name] = ((rng.standard_normal((RANK, cols)) / np.sqrt(cols)).astype(np.float32),
                             (rng.standard_normal((rows, RANK)) * 0.02).astype(np.float32))
        out.append(adapter)
    return out


class Usage:
    """Wall and CPU seconds of a block."""

    def __enter__(self):
        self.wall, self.cpu = time.perf_counter(), time.process_time()
        return self

    def __exit__(self, *exc):
        self.wall = time.perf_counter() - self.wall
        self.cpu = time.process_time() - self.cpu


def store_release(store: Store, base_ids: dict, weights: dict, loras: list, dtype: str,
                  derived: bool) -> tuple[list[str], int, Usage]:
    """Add the release to ``store``; (its chunk ids, bytes added, usage)."""
    itemsize = 4 if dtype == "F32" else 2
    ids, added = [], 0
    with Usage() as usage, store.writing():
        factor_refs = []
        for adapter in loras:
            refs = {}
            for name, (a, b) in adapter.items():
                pair = []
                for x in (a, b):
                    put = store.put("F32", x.shape, x.tobytes()) if derived else None
                    added += put.stored_bytes if put else 0
                    pair.append(InputRef(object_id("F32", x.shape, x.tobytes()), "F32", x.shape))
                refs[name] = pair
            factor_refs.append(refs)
        contents = {}
        for adapter, refs in zip(loras, factor_refs):
            for name, (a, b) in adapter.items():
                contents[refs[name][0].oid], contents[refs[name][1].oid] = a.tobytes(), b.tobytes()
        for name, w in sorted(weights.items()):
            base = as_dtype(w, dtype)
            for chunk, base_id in zip(chunk_layout(itemsize, w.shape), base_ids[name]):
                row_bytes = itemsize * w.shape[1]
                rows = (chunk.start // row_bytes, chunk.stop // row_bytes)
                base_ref = InputRef(base_id, dtype, chunk.shape)
                contents[base_id] = base[chunk.start:chunk.stop]
                recipe = lora_merge_recipe(base_ref, rows, [
                    (refs[name][0], refs[name][1], ALPHA / RANK) for refs in factor_refs])
                raw = compute(recipe, dtype, chunk.shape, lambda ref: contents[ref.oid])
                if derived:
                    put = store.put_derived(recipe, dtype, chunk.shape, expected=raw)
                    assert put is not None, "the recomputation did not reproduce the bytes"
                else:
                    put = store.put(dtype, chunk.shape, raw, parent=base_id)
                added += put.stored_bytes
                ids.append(put.oid)
                del contents[base_id]
    return ids, added, usage


def counting(store: Store) -> list[int]:
    """Count the bytes read from ``store``'s backend (what a fetch downloads); no hard links."""
    backend, total = store.backend, [0]
    for name in ("read", "read_head", "read_from"):
        original = getattr(backend, name, None)
        if original is not None:
            def wrapped(*args, _original=original, **kwargs):
                data = _original(*args, **kwargs)
                total[0] += len(data)
                return data
            setattr(backend, name, wrapped)
    backend.path_of = None  # copy, as over a network: nothing is hard-linked
    return total


def read_all(store: Store, ids: list[str]) -> Usage:
    with Usage() as usage:
        for oid in ids:
            store.get_buffer(oid)
    return usage


def run(dtype: str, count: int, weights: dict, work: str, seed: int) -> dict:
    itemsize = 4 if dtype == "F32" else 2
    loras = random_loras(weights, count, seed)
    adapters_raw = sum(a.nbytes + b.nbytes for adapter in loras for a, b in adapter.values())
    merged_raw = sum(w.size * itemsize for w in weights.values())
    row = {"dtype": dtype, "adapters": count, "adapters_mb": adapters_raw / 1e6,
           "merged_tensors_mb": merged_raw / 1e6}
    for derived in (False, True):
        kind = "derived" if derived else "deltas"
        root = os.path.join(work, f"{dtype}-{count}-{kind}")
        local = Store.open(os.path.join(root, "local"), create=True)
        base_ids = {}
        with local.writing():
            for name, w in sorted(weights.items()):
                base = as_dtype(w, dtype)
                base_ids[name] = [local.put(dtype, c.shape, base[c.start:c.stop]).oid
                                  for c in chunk_layout(itemsize, w.shape)]
        all_base = [o for ids in base_ids.values() for o in ids]
        remote = Store.open(os.path.join(root, "remote"), create=True, newest_whole=True)
        push_objects(local, remote, set(all_base))
        consumer = Store.open(os.path.join(root, "consumer"), create=True)
        fetch_objects(consumer, [("origin", remote)], set(all_base))  # a consumer of v1
        ids, added, write = store_release(local, base_ids, weights, loras, dtype, derived)
        pushed = push_objects(local, remote, set(ids))  # v2 is released
        wire = counting(remote)
        fetched = fetch_objects(consumer, [("origin", remote)], set(ids))
        local.drop_derived_cache()
        cold = read_all(local, ids)
        warm = read_all(local, ids) if derived else None
        row[kind] = {"store_mb": added / 1e6, "push_mb": pushed.bytes / 1e6,
                     "fetch_mb": wire[0] / 1e6, "fetch_objects": fetched.objects,
                     "write_wall_s": write.wall, "write_cpu_s": write.cpu,
                     "read_wall_s": cold.wall, "read_cpu_s": cold.cpu}
        if warm is not None:
            row[kind].update(warm_read_wall_s=warm.wall, warm_read_cpu_s=warm.cpu)
        shutil.rmtree(root, ignore_errors=True)
    row["peak_rss_mb"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    return row


def print_row(row: dict) -> None:
    d, t = row["derived"], row["deltas"]
    a = row["adapters_mb"]
    print(f"{row['dtype']:>4} N={row['adapters']}: adapters {a:.2f} MB raw; merged tensors "
          f"{row['merged_tensors_mb']:.1f} MB\n"
          f"  store  : deltas {t['store_mb']:.2f} MB ({t['store_mb'] / a:.2f}x adapters), derived "
          f"{d['store_mb']:.2f} MB ({d['store_mb'] / a:.2f}x)\n"
          f"  push   : deltas {t['push_mb']:.2f} MB, derived {d['push_mb']:.2f} MB\n"
          f"  fetch  : deltas {t['fetch_mb']:.2f} MB, derived {d['fetch_mb']:.2f} MB "
          f"({d['fetch_mb'] / a:.2f}x; {d['fetch_objects']} objects)\n"
          f"  write  : deltas {t['write_cpu_s']:.1f} CPU-s, derived {d['write_cpu_s']:.1f} CPU-s\n"
          f"  read   : deltas {t['read_wall_s']:.2f} s ({t['read_cpu_s']:.2f} CPU-s), derived cold "
          f"{d['read_wall_s']:.2f} s ({d['read_cpu_s']:.2f} CPU-s), warm "
          f"{d['warm_read_wall_s']:.2f} s ({d['warm_read_cpu_s']:.2f} CPU-s)", flush=True)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", default=MODEL, help="the fp32 SmolLM2 safetensors file")
    parser.add_argument("--adapters", default="1,3,8", help="comma-separated Ns")
    parser.add_argument("--dtypes", default="fp32,bf16")
    parser.add_argument("--layers", type=int, help="only the first L layers (quick runs)")
    parser.add_argument("--seed", type=int, default=16)
    parser.add_argument("--workdir")
    parser.add_argument("--json", metavar="OUT")
    args = parser.parse_args(argv)
    os.environ["MODELGIT_THREADS"] = os.environ.get("MODELGIT_THREADS", "1")
    weights = load_targets(args.model, args.layers)
    rows = []
    work = tempfile.mkdtemp(prefix="mg-derived-", dir=args.workdir)
    try:
        for dtype in args.dtypes.split(","):
            for count in (int(n) for n in args.adapters.split(",")):
                row = run({"fp32": "F32", "bf16": "BF16"}[dtype], count, weights, work, args.seed)
                print_row(row)
                rows.append(row)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    if args.json:
        with open(args.json, "w") as handle:
            json.dump({"rows": rows, "layers": args.layers, "model": args.model}, handle, indent=1)
    return 0


if __name__ == "__main__":
    sys.exit(main())
