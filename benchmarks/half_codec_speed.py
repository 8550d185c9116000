"""Speed of the ``delta16`` codec (bf16 / fp16 deltas) beside ``delta`` and the fp32 path.

Parents are SmolLM2 tensors (the converted fp32 checkpoint, read only) rounded to bf16 / fp16;
children are the fine-tune-like versions of ``store.py``: v3a ``w * (1 + 1e-3 N)`` and v3b
``w + 1e-3 std(w) N``, applied in fp32 and rounded. Every tensor is cut into chunks as the store
cuts them; each chunk is encoded and decoded (checked byte for byte) in process, and the table
gives MB/s of raw content per CPU-second, CPU-s, and the payload against the lossless bound of
``store.py`` (the entropy of the rounded gaussian update, given the parent).

    python3 benchmarks/half_codec_speed.py --model ~/.cache/modelgit/smollm2-135m-instruct \
        --tensors 12 [--profile decode]
"""

from __future__ import annotations

import argparse
import cProfile
import json
import os
import resource
import pstats
import struct
import time
from pathlib import Path

import numpy as np

import store as store_bench  # benchmarks/store.py: its bound and dtype helpers
from modelgit.store.chunking import chunk_layout
from modelgit.store.encodings import DELTA, DELTA16, encode_best_delta, encode_delta

MBITS = {"bf16": 7, "fp16": 10}
STORE_DTYPE = {"fp32": "F32", "bf16": "BF16", "fp16": "F16"}
NOISE = store_bench.NOISE


def load_tensors(model: Path, count: int) -> list[tuple[str, np.ndarray]]:
    """The ``count`` largest 2-d fp32 tensors after the embedding (name, float32 array)."""
    path = model / "model.safetensors"
    with open(path, "rb") as f:
        size = struct.unpack("<Q", f.read(8))[0]
        header = json.loads(f.read(size))
    entries = sorted(((v["data_offsets"], k) for k, v in header.items()
                      if k != "__metadata__" and v["dtype"] == "F32" and len(v["shape"]) == 2
                      and "embed" not in k), key=lambda e: (e[0][0] - e[0][1], e[1]))[:count]
    data = np.memmap(path, dtype=np.uint8, mode="r", offset=8 + size)
    return [(k, np.array(data[a:b]).view("<f4")) for (a, b), k in entries]


def to_half(w: np.ndarray, dtype: str) -> np.ndarray:
    if dtype == "fp16":
        return w.astype(np.float16).view(np.uint16)
    return store_bench.to_bf16(w)


def versions(w: np.ndarray, dtype: str, version: str, seed: int):
    """(parent, child, bound in bytes) for ``dtype`` ('fp32', 'bf16', 'fp16'): the parent is
    ``w`` in that dtype, the child v3a or v3b of it, both as flat uint8; the bound is
    store.py's (entropy of the rounded gaussian update, in the parent's last places)."""
    noise = np.random.default_rng(seed).standard_normal(w.size).astype(np.float32)
    sdtype = STORE_DTYPE[dtype]
    bits = w.astype("<f4") if dtype == "fp32" else to_half(w, dtype)
    parent = bits if dtype == "fp32" else store_bench.to_float32(bits, sdtype)
    if version == "v3a":
        sigma = NOISE * np.abs(parent.astype(np.float64))
        child = parent * (1 + np.float32(NOISE) * noise)
    else:
        spread = NOISE * float(parent.astype(np.float64).std())
        sigma = np.full(parent.shape, spread)
        child = parent + np.float32(spread) * noise
    child = child.astype("<f4") if dtype == "fp32" else to_half(child, dtype)
    bound = store_bench._rounded_gaussian_entropy(
        sigma / store_bench.ulp_of(parent, sdtype)).sum() / 8
    return bits.view(np.uint8), child.view(np.uint8), float(bound)


def measure(tensors, dtype: str, version: str, codec: str, profile: str | None) -> dict:
    itemsize = 4 if dtype == "fp32" else 2
    enc = DELTA if codec == "delta" else DELTA16
    out = dict(raw=0, bytes=0, bound=0.0, enc=0.0, dec=0.0)
    prof = cProfile.Profile() if profile else None
    for i, (_, w) in enumerate(tensors):
        parent, child, bound = versions(w, dtype, version, seed=i)
        out["bound"] += bound
        for chunk in chunk_layout(itemsize, w.shape):
            p, c = parent[chunk.start:chunk.stop], child[chunk.start:chunk.stop]
            args = (MBITS[dtype],) if codec == "delta16" else ()
            if prof and profile == "encode":
                prof.enable()
            t = time.process_time()
            if codec == "best":  # what the store writes: encode_best_delta's choice
                enc, payload = encode_best_delta(c, STORE_DTYPE[dtype], itemsize, p)
            else:
                payload = enc.encode(c, itemsize, p, *args) if codec == "delta16" \
                    else encode_delta(c, itemsize, p)
            out["enc"] += time.process_time() - t
            if prof and profile == "encode":
                prof.disable()
            if prof and profile == "decode":
                prof.enable()
            t = time.process_time()
            back = enc.decode(payload, itemsize, len(c), p)
            out["dec"] += time.process_time() - t
            if prof and profile == "decode":
                prof.disable()
            if bytes(np.asarray(back, dtype=np.uint8)) != bytes(c):
                raise SystemExit(f"{codec} {dtype} {version}: decode differs from the content")
            out["raw"] += len(c)
            out["bytes"] += len(payload)
    if prof:
        pstats.Stats(prof).sort_stats("tottime").print_stats(18)
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", type=Path,
                        default=Path.home() / ".cache/modelgit/smollm2-135m-instruct")
    parser.add_argument("--tensors", type=int, default=12)
    parser.add_argument("--rows", default="fp32:delta,bf16:delta,bf16:delta16,fp16:delta16")
    parser.add_argument("--versions", default="v3a,v3b")
    parser.add_argument("--profile", choices=["encode", "decode"])
    args = parser.parse_args()
    tensors = load_tensors(args.model, args.tensors)
    print(f"{len(tensors)} tensors, {sum(w.size for _, w in tensors) / 1e6:.1f} M elements; "
          f"load average {os.getloadavg()}")
    print("| dtype | version | codec | raw MB | x raw | x bound | encode MB/s | decode MB/s "
          "| encode CPU-s | decode CPU-s |")
    print("|---|---|---|---|---|---|---|---|---|---|")
    for row in args.rows.split(","):
        dtype, codec = row.split(":")
        for version in args.versions.split(","):
            r = measure(tensors, dtype, version, codec, args.profile)
            mb = r["raw"] / 1e6
            print(f"| {dtype} | {version} | {codec} | {mb:.1f} | {r['bytes'] / r['raw']:.4f}x "
                  f"| {r['bytes'] / r['bound']:.3f}x | {mb / max(r['enc'], 1e-9):.1f} "
                  f"| {mb / max(r['dec'], 1e-9):.1f} | {r['enc']:.2f} | {r['dec']:.2f} |",
                  flush=True)
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    print(f"peak RSS {peak:.0f} MB; load average {os.getloadavg()}")


if __name__ == "__main__":
    main()
