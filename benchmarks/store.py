#!/usr/bin/env python3
"""Storage benchmark of modelgit against ``cp`` and git-lfs, on a locally built checkpoint.

One run measures, for the same transformer-like model in fp32, in bf16 and (``--dtypes``) in fp16:

* wall time of ``modelgit add`` (new, to a fresh store), of re-adding it unchanged (same path:
  stat cache) and as an identical copy at another path (full re-hash, dedup), and of
  ``modelgit materialize``, each against ``cp`` of the same file (and ``cp`` + ``sync FILE``);
* peak RSS of every modelgit command, against the size of the largest tensor;
* stored bytes of a second version with one tensor changed, and of fine-tuning-like versions
  where every float tensor moved (multiplicative and additive noise, relative size 1e-3);
* the same sequence with git-lfs: ``git add`` / ``git commit`` times, bytes under
  ``.git/lfs/objects``, and a checkout of the first version.

Every command runs as a subprocess of a small wrapper process that times it with
``time.perf_counter`` and reports its own ``RUSAGE_CHILDREN`` ``ru_maxrss``: the high-water mark
of that command alone. The wrapper also samples ``/proc/PID/status`` every 50 ms to split the
peak into anonymous memory and file-backed (mmapped / page cache) pages.

Usage::

    python3 benchmarks/store.py                    # ~1 GiB fp32 + the same model in bf16
    python3 benchmarks/store.py --size-mb 100      # quick run
    python3 benchmarks/store.py --json figures.json --repeat 3

Everything happens in a temporary directory (``--workdir`` to choose where it is created),
removed at the end unless ``--keep``. Data are generated with a fixed seed (``--seed``).
"""

from __future__ import annotations

import argparse
import datetime
import json
import math
import os
import platform
import shutil
import statistics
import struct
import subprocess
import sys
import tempfile
import time

import numpy as np

import store_codecs  # benchmarks/store_codecs.py

HIDDEN = 1024
FFN = 4096
MAX_VOCAB = 50257  # GPT-2's vocabulary
WEIGHT_STD = 0.02
NOISE = 1e-3  # relative size of the fine-tuning-like update
BLOCK_ELEMS = 4 * 1024 * 1024  # elements generated / transformed at a time (16 MB in fp32)
MB = 1e6  # figures are reported in decimal megabytes
MIB = 1024 * 1024

# salts of the random streams: one per (purpose, tensor)
SALT_INIT, SALT_CHANGED, SALT_MULT, SALT_ADD = 1, 2, 3, 4

TARGETS = {
    "add": 2.0,  # x cp
    "readd": 0.2,  # x cp
    "materialize": 1.5,  # x cp
    "rss_over_largest_mb": 300.0,
    "one_tensor": 1.01,  # x the changed tensor's size
    "finetune": 0.5,  # x the raw size of the version
    "vs_bound": 1.1,  # stored v3a / v3b x its lossless bound
}


# ============================================================================ the model
def model_spec(size_mb: float) -> list[tuple[str, tuple[int, ...], str]]:
    """(name, shape, kind) of a decoder-only transformer of about ``size_mb`` MiB in fp32.

    An embedding of up to 50257 x 1024 (~20% of the model), then layers of four 1024x1024
    attention projections and a 4096x1024 / 1024x4096 MLP, with biases and layer norms.
    """
    target = size_mb * MIB
    vocab = int(min(MAX_VOCAB, max(256, 0.2 * target / (HIDDEN * 4))))
    per_layer = 4 * (HIDDEN * HIDDEN + HIDDEN) + 2 * FFN * HIDDEN + FFN + HIDDEN + 4 * HIDDEN
    layers = max(1, round((target - vocab * HIDDEN * 4) / (per_layer * 4)))
    spec = [("model.embed_tokens.weight", (vocab, HIDDEN), "embedding")]
    for i in range(layers):
        p = f"model.layers.{i}."
        spec += [(p + "input_layernorm.weight", (HIDDEN,), "norm"),
                 (p + "input_layernorm.bias", (HIDDEN,), "bias")]
        for proj in ("q_proj", "k_proj", "v_proj", "o_proj"):
            spec += [(p + f"self_attn.{proj}.weight", (HIDDEN, HIDDEN), "matrix"),
                     (p + f"self_attn.{proj}.bias", (HIDDEN,), "bias")]
        spec += [(p + "post_attention_layernorm.weight", (HIDDEN,), "norm"),
                 (p + "post_attention_layernorm.bias", (HIDDEN,), "bias"),
                 (p + "mlp.up_proj.weight", (FFN, HIDDEN), "matrix"),
                 (p + "mlp.up_proj.bias", (FFN,), "bias"),
                 (p + "mlp.down_proj.weight", (HIDDEN, FFN), "matrix"),
                 (p + "mlp.down_proj.bias", (HIDDEN,), "bias")]
    spec += [("model.norm.weight", (HIDDEN,), "norm"), ("model.norm.bias", (HIDDEN,), "bias"),
             ("model.position_ids", (1, 2048), "int")]
    return spec


def changed_tensor(spec) -> str:
    """The tensor regenerated in version 2: the down projection (1024x4096) of a middle layer."""
    downs = [name for name, shape, _ in spec if name.endswith("mlp.down_proj.weight")]
    return downs[len(downs) // 2]


def storage_dtype(kind: str, dtype: str) -> str:
    return "I64" if kind == "int" else dtype


ITEMSIZE = {"F32": 4, "BF16": 2, "F16": 2, "I64": 8}


def nbytes(shape, dtype: str) -> int:
    return math.prod(shape) * ITEMSIZE[dtype]


def to_bf16(values: np.ndarray) -> np.ndarray:
    """fp32 -> bf16 bit patterns (uint16), rounding to nearest even."""
    bits = np.ascontiguousarray(values, dtype=np.float32).view(np.uint32)
    bits = bits + (np.uint32(0x7FFF) + ((bits >> np.uint32(16)) & np.uint32(1)))
    return (bits >> np.uint32(16)).astype(np.uint16)


def from_bf16(bits: np.ndarray) -> np.ndarray:
    return (bits.astype(np.uint32) << np.uint32(16)).view(np.float32)


def to_float32(bits: np.ndarray, dtype: str) -> np.ndarray:
    """The values of stored elements (bit patterns for the 16-bit floats) as fp32."""
    if dtype == "BF16":
        return from_bf16(bits)
    if dtype == "F16":
        return np.asarray(bits).view(np.float16).astype(np.float32)
    return np.asarray(bits).astype(np.float32)


def ulp_of(w: np.ndarray, dtype: str) -> np.ndarray:
    """The spacing of the stored dtype at ``w`` (fp32 values of stored elements), as float64."""
    if dtype == "F16":
        return np.spacing(np.abs(w.astype(np.float16))).astype(np.float64)
    return np.spacing(np.abs(w)).astype(np.float64) * (65536 if dtype == "BF16" else 1)


def encode(values: np.ndarray, dtype: str) -> np.ndarray:
    if dtype == "F32":
        return np.ascontiguousarray(values, dtype=np.float32)
    if dtype == "BF16":
        return to_bf16(values)
    if dtype == "F16":
        return np.ascontiguousarray(values, dtype=np.float32).astype(np.float16).view(np.uint16)
    return np.ascontiguousarray(values, dtype=np.int64)


def blocks(n: int):
    for start in range(0, n, BLOCK_ELEMS):
        yield start, min(n, start + BLOCK_ELEMS)


def init_values(kind: str, rng: np.random.Generator, start: int, stop: int) -> np.ndarray:
    n = stop - start
    if kind == "int":
        return np.arange(start, stop, dtype=np.int64)
    values = rng.standard_normal(n, dtype=np.float32)
    values *= np.float32(WEIGHT_STD)
    if kind == "norm":
        values += np.float32(1.0)
    return values


# ---------------------------------------------------------------------------- safetensors I/O
class SafetensorsWriter:
    """Writes a safetensors file tensor by tensor (the header is known up front)."""

    def __init__(self, path: str, tensors: list[tuple[str, tuple[int, ...], str]]):
        header, offset = {"__metadata__": {"format": "pt"}}, 0
        self.expected = []
        for name, shape, dtype in tensors:
            size = nbytes(shape, dtype)
            header[name] = {"dtype": dtype, "shape": list(shape), "data_offsets": [offset, offset + size]}
            self.expected.append((name, size))
            offset += size
        text = json.dumps(header, separators=(",", ":")).encode()
        text += b" " * (-len(text) % 8)  # the reference writer pads the header to 8 bytes
        self.handle = open(path, "wb")
        self.handle.write(struct.pack("<Q", len(text)))
        self.handle.write(text)
        self.total = offset
        self.written = 0

    def write(self, array: np.ndarray) -> None:
        self.handle.write(memoryview(np.ascontiguousarray(array)).cast("B"))
        self.written += array.nbytes

    def close(self) -> None:
        self.handle.close()
        if self.written != self.total:
            raise RuntimeError(f"wrote {self.written} data bytes, header says {self.total}")


class SafetensorsFile:
    """Read-only numpy views (memory-mapped) of the tensors of a safetensors file."""

    NUMPY = {"F32": np.float32, "BF16": np.uint16, "F16": np.uint16, "I64": np.int64}

    def __init__(self, path: str):
        with open(path, "rb") as handle:
            (length,) = struct.unpack("<Q", handle.read(8))
            header = json.loads(handle.read(length))
        header.pop("__metadata__", None)
        self.path = path
        self.data_start = 8 + length
        self.tensors = sorted(((name, tuple(d["shape"]), d["dtype"], d["data_offsets"][0])
                               for name, d in header.items()), key=lambda t: t[3])

    def flat(self, name: str) -> np.ndarray:
        for tname, shape, dtype, begin in self.tensors:
            if tname == name:
                count = math.prod(shape)
                if count == 0:
                    return np.empty(0, self.NUMPY[dtype])
                return np.memmap(self.path, self.NUMPY[dtype], "r", self.data_start + begin, (count,))
        raise KeyError(name)


def write_base(path: str, spec, dtype: str, seed: int) -> None:
    """The first version: gaussian weights (std 0.02), norms ~1, generated tensor by tensor."""
    writer = SafetensorsWriter(path, [(n, s, storage_dtype(k, dtype)) for n, s, k in spec])
    for index, (name, shape, kind) in enumerate(spec):
        rng = np.random.default_rng([seed, SALT_INIT, index])
        for start, stop in blocks(math.prod(shape)):
            writer.write(encode(init_values(kind, rng, start, stop), storage_dtype(kind, dtype)))
    writer.close()


def derive(src: str, dst: str, spec, dtype: str, seed: int, how: str) -> None:
    """Write a new version of ``src``.

    how:
        "one"  — the changed tensor (see :func:`changed_tensor`) regenerated, the rest copied;
        "mult" — every float tensor w -> w * (1 + 1e-3 * N(0,1)), per element;
        "add"  — every float tensor w -> w + 1e-3 * std(w) * N(0,1).
    For bf16 and fp16 the noise is applied in fp32 and the result rounded to nearest even.
    """
    source = SafetensorsFile(src)
    writer = SafetensorsWriter(dst, [(n, s, storage_dtype(k, dtype)) for n, s, k in spec])
    target = changed_tensor(spec)
    for index, (name, shape, kind) in enumerate(spec):
        sdtype = storage_dtype(kind, dtype)
        flat = source.flat(name)
        n = math.prod(shape)

        def fp32(start, stop):
            part = np.asarray(flat[start:stop])
            return to_float32(part, sdtype)

        if how == "one" and name == target:
            rng = np.random.default_rng([seed, SALT_CHANGED, index])
            for start, stop in blocks(n):
                writer.write(encode(init_values(kind, rng, start, stop), sdtype))
        elif how in ("mult", "add") and kind != "int":
            rng = np.random.default_rng([seed, SALT_MULT if how == "mult" else SALT_ADD, index])
            if how == "add":
                total = squares = 0.0
                for start, stop in blocks(n):
                    part = fp32(start, stop).astype(np.float64)
                    total += part.sum()
                    squares += np.dot(part, part)
                mean = total / n
                scale = np.float32(NOISE * math.sqrt(max(0.0, squares / n - mean * mean)))
            for start, stop in blocks(n):
                values = fp32(start, stop)
                noise = rng.standard_normal(stop - start, dtype=np.float32)
                if how == "mult":
                    values = values * (np.float32(1.0) + np.float32(NOISE) * noise)
                else:
                    values = values + scale * noise
                writer.write(encode(values, sdtype))
        else:
            for start, stop in blocks(n):
                writer.write(np.asarray(flat[start:stop]))
        del flat
    writer.close()


def _rounded_gaussian_entropy(s: np.ndarray) -> np.ndarray:
    """Entropy in bits of round(N(0, s²)), elementwise (s in units of the last place)."""
    out = np.zeros(s.shape, dtype=np.float64)
    big = s >= 4  # the continuous approximation is exact to < 0.01 bit there
    out[big] = np.log2(s[big] * math.sqrt(2 * math.pi * math.e))
    small = (s > 1e-3) & ~big
    if small.any():
        centers = np.geomspace(1e-3, 4, 200)
        ks = np.arange(-40, 41, dtype=np.float64)
        erf = np.vectorize(math.erf)
        table = []
        for c in centers:
            p = 0.5 * (erf((ks + 0.5) / (c * math.sqrt(2))) - erf((ks - 0.5) / (c * math.sqrt(2))))
            p = p[p > 0]
            table.append(float(-(p * np.log2(p)).sum()))
        index = np.clip(np.searchsorted(centers, s[small]), 0, len(centers) - 1)
        out[small] = np.asarray(table)[index]
    return out


def lossless_bound(base: str, spec, dtype: str, how: str, sample: int = 65536) -> float:
    """Estimated lower bound of (stored bytes / raw bytes) for any lossless delta coder.

    Given the parent, each new element is the parent plus a gaussian of known spread s_i (in
    units of the parent element's last place): 1e-3|w| for "mult", 1e-3 std(w) for "add". The
    bits it needs are at least the entropy of round(N(0, s_i²)); averaged over an evenly strided
    sample of every float tensor (int tensors do not change and cost nothing).
    """
    source = SafetensorsFile(base)
    bits = total_bytes = 0.0
    for name, shape, kind in spec:
        sdtype = storage_dtype(kind, dtype)
        n = math.prod(shape)
        total_bytes += n * ITEMSIZE[sdtype]
        if kind == "int" or n == 0:
            continue
        flat = source.flat(name)
        step = max(1, n // sample)
        part = np.asarray(flat[::step])
        w = to_float32(part, sdtype)
        ulp = ulp_of(w, sdtype)
        if how == "mult":
            sigma = NOISE * np.abs(w.astype(np.float64))
        else:
            full = np.asarray(flat)
            full = to_float32(full, sdtype)
            sigma = np.full(w.shape, NOISE * float(full.astype(np.float64).std()))
            del full
        bits += _rounded_gaussian_entropy(sigma / ulp).mean() * n
        del flat
    return bits / 8 / total_bytes


# ============================================================================ measuring
WRAPPER = r"""
import json, os, resource, subprocess, sys, time
spec = json.loads(sys.argv[1])

def sample(pid):
    out = {}
    try:
        with open(f"/proc/{pid}/status") as f:
            for line in f:
                key, _, value = line.partition(":")
                if key in ("RssAnon", "RssFile"):
                    out[key] = int(value.split()[0])
    except (OSError, ValueError):
        pass
    return out

def warm(megabytes):
    # Touch, then free, this much memory in this (unmeasured) process, so that the command finds
    # free guest pages already backed by the hypervisor (see README: "Memory first touch").
    import mmap
    if megabytes <= 0:
        return 0.0
    t0 = time.perf_counter()
    block = b"\1" * (1 << 20)
    area = mmap.mmap(-1, megabytes << 20)
    for _ in range(megabytes):
        area.write(block)
    area.close()
    return time.perf_counter() - t0

steps, peak = [], {"RssAnon": 0, "RssFile": 0}
warm_s = 0.0
with open(spec["log"], "ab") as log:
    for argv in spec["cmds"]:
        log.write(("$ " + " ".join(argv) + "\n").encode()); log.flush()
        if not steps:  # only before the first command: cp + sync must run back to back
            warm_s += warm(spec["warm_mb"])
        t0 = time.perf_counter()
        proc = subprocess.Popen(argv, cwd=spec["cwd"], stdout=log, stderr=log)
        while True:
            try:
                rc = proc.wait(timeout=0.05)
                break
            except subprocess.TimeoutExpired:
                s = sample(proc.pid)
                for key in peak:
                    peak[key] = max(peak[key], s.get(key, 0))
        steps.append({"argv": argv, "rc": rc, "wall_s": time.perf_counter() - t0})
        if rc:
            break
ru = resource.getrusage(resource.RUSAGE_CHILDREN)
print(json.dumps({"steps": steps, "rc": steps[-1]["rc"], "wall_s": sum(s["wall_s"] for s in steps),
                  "maxrss_kb": ru.ru_maxrss, "user_s": ru.ru_utime, "sys_s": ru.ru_stime,
                  "rss_anon_kb": peak["RssAnon"], "rss_file_kb": peak["RssFile"], "warm_s": warm_s}))
"""


class Bench:
    def __init__(self, workdir: str, env: dict, verbose: bool = True):
        self.workdir = workdir
        self.warm_mb = 0  # memory touched before each timed command (see WRAPPER.warm)
        self.env = env
        self.log = os.path.join(workdir, "commands.log")
        self.verbose = verbose

    def say(self, text: str) -> None:
        if self.verbose:
            print(f"[{time.strftime('%H:%M:%S')}] {text}", flush=True)

    def run(self, *cmds: list[str], cwd: str | None = None, warm_mb: int | None = None) -> dict:
        """Run ``cmds`` one after the other in a fresh wrapper process; time and peak RSS.

        ``sync`` runs first (untimed) so that dirty pages of earlier steps are not charged here.
        """
        subprocess.run(["sync"], check=True)
        spec = {"cmds": [list(map(str, c)) for c in cmds], "cwd": cwd or self.workdir, "log": self.log,
                "warm_mb": self.warm_mb if warm_mb is None else warm_mb}
        proc = subprocess.run([sys.executable, "-c", WRAPPER, json.dumps(spec)], env=self.env,
                              capture_output=True, text=True)
        if proc.returncode != 0:
            raise RuntimeError(f"measuring wrapper failed: {proc.stderr}")
        result = json.loads(proc.stdout.strip().splitlines()[-1])
        if result["rc"] != 0:
            with open(self.log, errors="replace") as handle:
                tail = handle.read()[-3000:]
            raise RuntimeError(f"command failed (rc {result['rc']}): {result['steps'][-1]['argv']}\n{tail}")
        result["maxrss_mb"] = result["maxrss_kb"] * 1024 / MB
        result["rss_anon_mb"] = result["rss_anon_kb"] * 1024 / MB
        result["rss_file_mb"] = result["rss_file_kb"] * 1024 / MB
        result["cpu_s"] = result["user_s"] + result["sys_s"]
        return result

    def quiet(self, *argv, cwd: str | None = None) -> str:
        """Run an untimed helper command; return its stdout."""
        proc = subprocess.run(list(map(str, argv)), cwd=cwd or self.workdir, env=self.env,
                              capture_output=True, text=True)
        if proc.returncode != 0:
            raise RuntimeError(f"{' '.join(map(str, argv))} failed: {proc.stderr[-2000:]}")
        return proc.stdout


def summarize(runs: list[dict]) -> dict:
    """Best (minimum) and median wall time over repeats; the worst peak RSS; all samples.

    The best time is the one compared: on a shared machine noise only ever adds time.
    """
    return {"wall_s": min(r["wall_s"] for r in runs),
            "median_s": statistics.median(r["wall_s"] for r in runs),
            "wall_samples_s": [round(r["wall_s"], 4) for r in runs],
            "cpu_s": statistics.median(r["cpu_s"] for r in runs),
            "maxrss_mb": max(r["maxrss_mb"] for r in runs),
            "rss_anon_mb": max(r["rss_anon_mb"] for r in runs),
            "rss_file_mb": max(r["rss_file_mb"] for r in runs)}


def tree_bytes(path: str) -> int:
    total = 0
    for dirpath, _dirs, files in os.walk(path):
        for name in files:
            total += os.lstat(os.path.join(dirpath, name)).st_size
    return total


def same_file(a: str, b: str) -> bool:
    return subprocess.run(["cmp", "-s", a, b]).returncode == 0


def remove(path: str) -> None:
    if os.path.isdir(path):
        shutil.rmtree(path, onerror=_force_remove)
    elif os.path.lexists(path):
        os.unlink(path)


def _force_remove(func, path, _exc):
    os.chmod(os.path.dirname(path), 0o755)
    if os.path.isdir(path):
        os.chmod(path, 0o755)
    func(path)


# ============================================================================ the scenario
class DtypeRun:
    """The whole sequence for one dtype, in ``<workdir>/<label>``."""

    def __init__(self, bench: Bench, args, spec, dtype: str, label: str, modelgit: str):
        self.b, self.args, self.spec, self.dtype, self.label = bench, args, spec, dtype, label
        self.mg = modelgit
        self.dir = os.path.join(bench.workdir, label)
        self.store = os.path.join(self.dir, "store")
        self.ops: dict[str, dict] = {}
        self.stored: dict[str, dict] = {}
        self.git: dict = {}
        self.files: dict[str, str] = {}
        self.info: dict = {}
        self.cp_runs: list[dict] = []
        self.cp_sync_runs: list[dict] = []

    def path(self, name: str) -> str:
        return os.path.join(self.dir, name)

    def modelgit(self, *argv, store: str | None = None) -> list[str]:
        return [self.mg, "--store", store or self.store, "--no-progress", *argv]

    def stored_bytes(self) -> int:
        if not os.path.isdir(self.store):
            return 0
        return json.loads(self.b.quiet(*self.modelgit("stats", "--json")))["stored_bytes"]

    # ---------------------------------------------------------------- data
    def generate(self) -> None:
        os.makedirs(self.dir)
        seed = self.args.seed
        t0 = time.perf_counter()
        self.files["v1"] = self.path("v1.safetensors")
        write_base(self.files["v1"], self.spec, self.dtype, seed)
        for version, how in (("v2", "one"), ("v3a", "mult"), ("v3b", "add")):
            base = self.files["v1"] if version == "v2" else self.files["v2"]
            self.files[version] = self.path(f"{version}.safetensors")
            derive(base, self.files[version], self.spec, self.dtype, seed, how)
        sizes = {v: os.path.getsize(p) for v, p in self.files.items()}
        tensor_sizes = [nbytes(s, storage_dtype(k, self.dtype)) for _, s, k in self.spec]
        target = changed_tensor(self.spec)
        self.info = {
            "file_bytes": sizes["v1"],
            "tensors": len(self.spec),
            "largest_tensor_bytes": max(tensor_sizes),
            "largest_tensor": self.spec[tensor_sizes.index(max(tensor_sizes))][0],
            "changed_tensor": target,
            "changed_tensor_bytes": next(nbytes(s, storage_dtype(k, self.dtype))
                                         for n, s, k in self.spec if n == target),
            "generate_s": time.perf_counter() - t0,
        }
        self._sanity_check()
        self.b.say(f"{self.label}: generated 4 versions of {sizes['v1'] / MB:.1f} MB "
                   f"in {self.info['generate_s']:.1f} s")

    def _sanity_check(self) -> None:
        """The files open with the reference safetensors loader (values checked for fp32)."""
        from safetensors import safe_open

        with safe_open(self.files["v1"], framework="numpy") as handle:
            names = set(handle.keys())
            assert names == {n for n, _, _ in self.spec}, "generated header does not round-trip"
            if self.dtype == "F32":
                name = self.spec[1][0]
                ours = np.asarray(SafetensorsFile(self.files["v1"]).flat(name))
                assert np.array_equal(handle.get_tensor(name).reshape(-1), ours)

    # ---------------------------------------------------------------- measurements
    def repeat(self, make_cmds, prepare=None, cleanup=None, paired: bool = False) -> dict:
        """Run a command ``--repeat`` times; see :func:`summarize`.

        With ``paired``, each run is preceded by a ``cp`` and a ``cp`` + ``sync FILE`` of the
        first version; they are pooled into the cp baseline, so that cp is sampled over the same
        period (and machine load) as the modelgit commands it is compared with.
        """
        runs, cps, cp_syncs = [], [], []
        for i in range(self.args.repeat):
            if prepare:
                prepare(i)
            if paired:
                cps.append(self.b.run(self.cp_cmd))
                remove(self.cp_dst)
                cp_syncs.append(self.b.run(self.cp_cmd, ["sync", self.cp_dst]))
                remove(self.cp_dst)
            runs.append(self.b.run(*make_cmds(i)))
            if cleanup:
                cleanup(i)
        out = summarize(runs)
        if paired:
            out["cp"], out["cp+sync"] = summarize(cps), summarize(cp_syncs)
            for run in cps:
                self.cp_runs.append(run)
            for run in cp_syncs:
                self.cp_sync_runs.append(run)
        return out

    def api_readd(self) -> dict:
        """Best-of-``--repeat`` in-process times of re-adding v1 (same path) and a fresh copy."""
        code = (
            "import json, shutil, sys, time\n"
            "import modelgit\n"
            "store = modelgit.Store.open(sys.argv[1])\n"
            "path, copy, repeat = sys.argv[2], sys.argv[3], int(sys.argv[4])\n"
            "modelgit.add(store, path, progress=False)\n"
            "same, dedup = [], []\n"
            "for i in range(repeat):\n"
            "    t = time.perf_counter(); modelgit.add(store, path, progress=False)\n"
            "    same.append(time.perf_counter() - t)\n"
            "    target = f'{copy}.{i}'; shutil.copyfile(path, target)\n"
            "    t = time.perf_counter(); modelgit.add(store, target, progress=False)\n"
            "    dedup.append(time.perf_counter() - t)\n"
            "    import os; os.unlink(target)\n"
            "print(json.dumps({'same_s': min(same), 'copy_s': min(dedup)}))\n")
        subprocess.run(["sync"], check=True)
        out = self.b.quiet(sys.executable, "-c", code, self.store, self.files["v1"],
                           self.path("api-copy.safetensors"), str(self.args.repeat))
        return json.loads(out.strip().splitlines()[-1])

    @property
    def cp_cmd(self) -> list[str]:
        # --reflink=never: a copy-on-write clone (btrfs, xfs) would copy no data at all
        return ["cp", "--reflink=never", self.files["v1"], self.cp_dst]

    @property
    def cp_dst(self) -> str:
        return self.path("cp-out.safetensors")

    def measure_modelgit(self) -> None:
        f = self.files
        say = self.b.say

        # add new, to a fresh store (repeats use throw-away stores; the first one is kept)
        def add_cmd(i):
            store = self.store if i == 0 else self.path(f"store-rep{i}")
            return [self.modelgit("add", f["v1"], "-o", self.path(f"m1-rep{i}.manifest"), store=store)]

        def add_cleanup(i):
            if i:
                remove(self.path(f"store-rep{i}"))
                remove(self.path(f"m1-rep{i}.manifest"))

        self.ops["add_new"] = self.repeat(add_cmd, cleanup=add_cleanup, paired=True)
        shutil.copyfile(self.path("m1-rep0.manifest"), self.path("m1.manifest"))
        self.stored["v1"] = {"stored_bytes": self.stored_bytes(), "raw_bytes": self.info["file_bytes"]}
        say(f"{self.label}: add new {self.ops['add_new']['wall_s']:.2f} s, "
            f"stored {self.stored['v1']['stored_bytes'] / MB:.1f} MB")

        # re-add unchanged, same path: the stat cache answers
        before = self.stored_bytes()
        self.ops["readd_same"] = self.repeat(
            lambda i: [self.modelgit("add", f["v1"], "-o", self.path(f"m1-same{i}.manifest"))], paired=True)
        self.stored["readd_same"] = {"stored_bytes": self.stored_bytes() - before}
        same = open(self.path("m1-same0.manifest"), "rb").read() == open(self.path("m1.manifest"), "rb").read()
        self.info["readd_same_manifest_identical"] = same
        say(f"{self.label}: re-add same path {self.ops['readd_same']['wall_s']:.2f} s")

        # re-add an identical copy at another path: full re-hash, every object already present
        before = self.stored_bytes()
        copies = [self.path(f"copy{i}.safetensors") for i in range(self.args.repeat)]
        self.ops["readd_copy"] = self.repeat(
            lambda i: [self.modelgit("add", copies[i], "-o", self.path(f"m1-copy{i}.manifest"))],
            prepare=lambda i: shutil.copyfile(f["v1"], copies[i]),
            cleanup=lambda i: remove(copies[i]), paired=True)
        self.stored["readd_copy"] = {"stored_bytes": self.stored_bytes() - before}
        say(f"{self.label}: re-add identical copy {self.ops['readd_copy']['wall_s']:.2f} s")

        # the same two re-adds through the Python API, timed inside one process: what a
        # long-running caller (git's filter process, a training script) pays, without the
        # interpreter start-up that a CLI call cannot avoid
        self.info["api_readd"] = self.api_readd()
        say(f"{self.label}: API re-add same {self.info['api_readd']['same_s']:.3f} s, "
            f"copy {self.info['api_readd']['copy_s']:.3f} s")

        # materialise the first version
        outs = [self.path(f"out{i}.safetensors") for i in range(self.args.repeat)]

        def check_out(i):
            if i == 0:
                self.info["materialize_identical"] = same_file(outs[0], f["v1"])
            remove(outs[i])

        self.ops["materialize"] = self.repeat(
            lambda i: [self.modelgit("materialize", self.path("m1.manifest"), "-o", outs[i])],
            cleanup=check_out, paired=True)
        say(f"{self.label}: materialize {self.ops['materialize']['wall_s']:.2f} s "
            f"(identical: {self.info['materialize_identical']})")

        # later versions, each delta'd against its parent
        for version, parent, manifest in (("v2", "m1", "m2"), ("v3a", "m2", "m3a"), ("v3b", "m2", "m3b")):
            before = self.stored_bytes()
            self.ops[f"add_{version}"] = summarize([self.b.run(self.modelgit(
                "add", f[version], "-o", self.path(f"{manifest}.manifest"),
                "--parent", self.path(f"{parent}.manifest")))])
            delta = self.stored_bytes() - before
            self.stored[version] = {"stored_bytes": delta, "raw_bytes": os.path.getsize(f[version])}
            say(f"{self.label}: add {version} (parent {parent}) "
                f"{self.ops[f'add_{version}']['wall_s']:.2f} s, stored {delta / MB:.2f} MB")

        # every version materialises byte for byte (v2 untimed; v3a and v3b timed: they decode
        # every float tensor through a delta)
        for version, manifest in (("v2", "m2"), ("v3a", "m3a"), ("v3b", "m3b")):
            out = self.path(f"check-{version}.safetensors")
            cmd = self.modelgit("materialize", self.path(f"{manifest}.manifest"), "-o", out)
            if version == "v2":
                self.b.quiet(*cmd)
            else:
                self.ops[f"materialize_{version}"] = summarize([self.b.run(cmd)])
            self.info[f"materialize_{version}_identical"] = same_file(out, f[version])
            remove(out)
        self.info["store_report"] = json.loads(self.b.quiet(*self.modelgit("stats", "--json")))

    def measure_git_lfs(self) -> None:
        repo = self.path("git")
        b = self.b
        git = ["git", "-C", repo, "-c", "commit.gpgsign=false", "-c", "advice.detachedHead=false"]
        b.quiet("git", "-c", "init.defaultBranch=main", "init", "-q", repo)
        b.quiet(*git, "lfs", "install", "--local")
        b.quiet(*git, "lfs", "track", "*.safetensors")
        b.quiet(*git, "add", ".gitattributes")
        b.quiet(*git, "commit", "-q", "-m", "track safetensors with git-lfs")
        lfs_objects = os.path.join(repo, ".git", "lfs", "objects")
        work_file = os.path.join(repo, "model.safetensors")
        commits, before = {}, 0
        for version in ("v1", "v2", "v3a", "v3b"):
            if version == "v3b":  # like modelgit, v3b is a sibling of v3a: both come from v2
                b.quiet(*git, "checkout", "-q", commits["v2"])
            shutil.copyfile(self.files[version], work_file)
            add = b.run(git + ["add", "model.safetensors"])
            commit = b.run(git + ["commit", "-q", "-m", version])
            commits[version] = b.quiet(*git, "rev-parse", "HEAD").strip()
            total = tree_bytes(lfs_objects)
            self.git[f"add_{version}"] = summarize([add])
            self.git[f"commit_{version}"] = summarize([commit])
            self.git[f"stored_{version}"] = total - before
            before = total
            b.say(f"{self.label}: git-lfs {version}: git add {add['wall_s']:.2f} s, "
                  f"commit {commit['wall_s']:.2f} s, +{(self.git[f'stored_{version}']) / MB:.1f} MB")
        self.git["checkout_v1"] = summarize([b.run(git + ["checkout", "-q", commits["v1"]])])
        self.git["checkout_v1_identical"] = same_file(work_file, self.files["v1"])
        self.git["lfs_objects_bytes"] = before
        b.say(f"{self.label}: git-lfs checkout v1 {self.git['checkout_v1']['wall_s']:.2f} s "
              f"(identical: {self.git['checkout_v1_identical']})")
        remove(repo)

    def run(self, git_lfs: bool) -> None:
        self.generate()
        self.measure_modelgit()
        self.ops["cp"], self.ops["cp+sync"] = summarize(self.cp_runs), summarize(self.cp_sync_runs)
        for version, how, parent in (("v3a", "mult", "v2"), ("v3b", "add", "v2")):
            self.stored[version]["lossless_bound"] = lossless_bound(
                self.files[parent], self.spec, self.dtype, how)
            t0 = time.perf_counter()
            self.stored[version]["codecs"] = store_codecs.compare(
                SafetensorsFile(self.files[parent]), SafetensorsFile(self.files[version]),
                self.spec, self.dtype, storage_dtype)
            self.b.say(f"{self.label}: {version} codecs compared in process "
                       f"({time.perf_counter() - t0:.1f} s)")
        if git_lfs:
            self.measure_git_lfs()

    def result(self) -> dict:
        return {"dtype": self.dtype, "info": self.info, "ops": self.ops, "stored": self.stored,
                "git_lfs": self.git}


# ============================================================================ the report
def fmt_s(x):
    return f"{x:.2f} s"


def fmt_mb(x):
    return f"{x / MB:.1f} MB" if abs(x) >= 0.1 * MB else f"{x / 1e3:.1f} kB"


def rows_for(run: DtypeRun, git_lfs: bool) -> list[dict]:
    L, ops, st, info, g = run.label, run.ops, run.stored, run.info, run.git
    rows = []

    def row(figure, mg, alt, ratio, target=None, text=None, mg_text=None, alt_text=None):
        ratio = float(ratio)  # numpy scalars (the bound's) do not go into JSON
        rows.append({"figure": f"{L} {figure}", "modelgit": mg, "alternative": alt, "ratio": ratio,
                     "target": target, "pass": None if target is None else ratio <= target,
                     "ratio_text": text, "modelgit_text": mg_text, "alternative_text": alt_text})

    def time_rows(name, op, target):
        t = ops[op]["wall_s"]
        cp, cps = ops["cp"]["wall_s"], ops["cp+sync"]["wall_s"]
        text = f"{t:.2f} s (med {ops[op]['median_s']:.2f})"
        row(f"{name} (s) vs cp", t, cp, t / cp, target, mg_text=text,
            alt_text=f"cp {cp:.2f} s (med {ops['cp']['median_s']:.2f})")
        row(f"{name} (s) vs cp+sync", t, cps, t / cps, None, mg_text=text,
            alt_text=f"cp+sync {cps:.2f} s (med {ops['cp+sync']['median_s']:.2f})")

    time_rows("add new", "add_new", TARGETS["add"])
    time_rows("re-add same path (stat cache)", "readd_same", TARGETS["readd"])
    time_rows("re-add identical copy (dedup)", "readd_copy", TARGETS["readd"])
    time_rows("materialize", "materialize", TARGETS["materialize"])
    api, cp = info.get("api_readd"), ops["cp"]["wall_s"]
    if api:
        for key, name in (("same_s", "re-add same path, Python API in-process"),
                          ("copy_s", "re-add identical copy, Python API in-process")):
            row(f"{name} (s) vs cp", api[key], cp, api[key] / cp, TARGETS["readd"],
                mg_text=f"{api[key]:.3f} s", alt_text=f"cp {cp:.2f} s")
    if git_lfs and g:
        t, a = ops["add_new"]["wall_s"], g["add_v1"]["wall_s"] + g["commit_v1"]["wall_s"]
        row("add new (s) vs git-lfs add+commit", t, a, t / a, mg_text=fmt_s(t), alt_text="lfs " + fmt_s(a))
        t, a = ops["materialize"]["wall_s"], g["checkout_v1"]["wall_s"]
        row("materialize (s) vs git-lfs checkout", t, a, t / a, mg_text=fmt_s(t), alt_text="lfs " + fmt_s(a))

    largest = info["largest_tensor_bytes"]
    for name, op in (("add new", "add_new"), ("re-add same path", "readd_same"),
                     ("re-add copy", "readd_copy"), ("materialize", "materialize"),
                     ("add v2 (1 tensor changed)", "add_v2"), ("add v3a (mult. noise)", "add_v3a"),
                     ("add v3b (add. noise)", "add_v3b"), ("materialize v3a", "materialize_v3a"),
                     ("materialize v3b", "materialize_v3b")):
        peak = ops[op]["maxrss_mb"] * MB
        over = (peak - largest) / MB
        row(f"peak RSS {name}", peak, largest, over, TARGETS["rss_over_largest_mb"],
            text=f"{over:+.0f} MB", mg_text=fmt_mb(peak), alt_text="largest tensor " + fmt_mb(largest))

    changed = info["changed_tensor_bytes"]
    s = st["v2"]["stored_bytes"]
    row("stored v2, one tensor changed", s, changed, s / changed, TARGETS["one_tensor"],
        mg_text=fmt_mb(s), alt_text="tensor " + fmt_mb(changed))
    for version, what in (("v3a", "mult. noise w*(1+1e-3 N)"), ("v3b", "add. noise w+1e-3 std(w) N")):
        s, raw = st[version]["stored_bytes"], st[version]["raw_bytes"]
        row(f"stored {version}, every tensor moved, {what}", s, raw, s / raw, TARGETS["finetune"],
            mg_text=fmt_mb(s), alt_text="raw " + fmt_mb(raw))
        bound = st[version].get("lossless_bound")
        if bound is not None:
            row(f"  lossless bound for {version} (entropy of the update, est.)", bound * raw, raw, bound,
                mg_text="-", alt_text="raw " + fmt_mb(raw))
            row(f"  stored {version} vs its lossless bound", s, bound * raw, s / (bound * raw),
                TARGETS["vs_bound"], mg_text=fmt_mb(s), alt_text="bound " + fmt_mb(bound * raw))
        codecs = st[version].get("codecs")
        if codecs and bound is not None:
            cbound = bound * codecs["raw_bytes"]
            for key, name in (("delta", "delta (before delta16)"), ("chosen", "store's choice")):
                c = codecs[key]
                row(f"  {version} float deltas, {name}, vs bound", c["bytes"], cbound,
                    c["bytes"] / cbound, mg_text=fmt_mb(c["bytes"]), alt_text="bound " + fmt_mb(cbound))
            d, c = codecs["delta"], codecs["chosen"]
            for op in ("encode", "decode"):
                mine, old = c[f"{op}_cpu_s"], d[f"{op}_cpu_s"]
                row(f"  {version} {op} CPU-s, store's choice vs delta", mine, old, mine / old,
                    mg_text=f"{mine:.2f} s", alt_text=f"delta {old:.2f} s")
    s, raw = st["v1"]["stored_bytes"], st["v1"]["raw_bytes"]
    row("stored v1 (new)", s, raw, s / raw, mg_text=fmt_mb(s), alt_text="raw " + fmt_mb(raw))
    if git_lfs and g:
        for version in ("v1", "v2", "v3a", "v3b"):
            s, a = st[version]["stored_bytes"], g[f"stored_{version}"]
            row(f"stored {version} vs git-lfs", s, a, s / a, mg_text=fmt_mb(s), alt_text="lfs " + fmt_mb(a))
    return rows


def print_table(rows: list[dict]) -> None:
    header = ("figure", "modelgit", "alternative", "ratio", "target", "pass/fail")
    lines = []
    for r in rows:
        ratio = r["ratio_text"] or f"{r['ratio']:.3f}x"
        if r["target"] is None:
            target, verdict = "-", "info"
        elif r["ratio_text"]:
            target, verdict = f"<= +{r['target']:.0f} MB", "PASS" if r["pass"] else "FAIL"
        else:
            target, verdict = f"<= {r['target']:g}x", "PASS" if r["pass"] else "FAIL"
        lines.append((r["figure"], r["modelgit_text"], r["alternative_text"], ratio, target, verdict))
    widths = [max(len(str(x)) for x in col) for col in zip(header, *lines)]
    print("| " + " | ".join(h.ljust(w) for h, w in zip(header, widths)) + " |")
    print("|" + "|".join("-" * (w + 2) for w in widths) + "|")
    for line in lines:
        print("| " + " | ".join(str(x).ljust(w) for x, w in zip(line, widths)) + " |")


def print_details(runs: list[DtypeRun], startup: float) -> None:
    print("\nper command (best and median wall time over its runs; 'minus startup' subtracts the best "
          "time of `modelgit --help`;\ncpu = user + sys (median); peak RSS = ru_maxrss of the "
          "command; anon / file = sampled peak RssAnon / RssFile of the direct child):")
    print(f"  {'command':<30} {'runs':>4} {'best s':>7} {'median s':>8} {'minus startup':>14} "
          f"{'cpu s':>7} {'peak RSS MB':>12} {'anon MB':>8} {'file MB':>8}")
    for run in runs:
        entries = list(run.ops.items()) + [(f"git-lfs {k}", v) for k, v in run.git.items() if isinstance(v, dict)]
        for name, op in entries:
            net = f"{op['wall_s'] - startup:>14.2f}" if not name.startswith(("cp", "git")) else " " * 14
            print(f"  {run.label + ' ' + name:<30} {len(op['wall_samples_s']):>4} {op['wall_s']:>7.2f} "
                  f"{op['median_s']:>8.2f} {net} {op['cpu_s']:>7.2f} "
                  f"{op['maxrss_mb']:>12.0f} {op['rss_anon_mb']:>8.0f} {op['rss_file_mb']:>8.0f}")


def environment(args, modelgit: str) -> dict:
    repo = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    rev = subprocess.run(["git", "-C", repo, "rev-parse", "--short", "HEAD"], capture_output=True, text=True)
    dirty = subprocess.run(["git", "-C", repo, "status", "--porcelain", "--", "src"],
                           capture_output=True, text=True)
    cpu = ""
    try:
        with open("/proc/cpuinfo") as handle:
            cpu = next((line.split(":", 1)[1].strip() for line in handle if line.startswith("model name")), "")
    except OSError:
        pass
    return {"date": datetime.datetime.now().astimezone().isoformat(timespec="seconds"),
            "cpus": os.cpu_count(), "cpu_model": cpu,
            "mem_gb": round(os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 1e9, 1),
            "python": platform.python_version(), "numpy": np.__version__,
            "modelgit": modelgit, "git_rev": rev.stdout.strip(),
            "src_dirty": bool(dirty.stdout.strip()),
            "size_mb": args.size_mb, "seed": args.seed, "repeat": args.repeat, "warm_mb": args.warm_mb,
            "loadavg_end": os.getloadavg()}


def startup_cost(bench: Bench, modelgit: str) -> dict:
    """Wall time and RSS of a modelgit invocation that does nothing (imports only)."""
    bare = summarize([bench.run([sys.executable, "-c", "pass"]) for _ in range(3)])
    help_ = summarize([bench.run([modelgit, "--help"]) for _ in range(3)])
    return {"python": bare, "modelgit_help": help_}


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--size-mb", type=float, default=1024,
                        help="size of the fp32 checkpoint in MiB (default 1024; bf16, fp16 half)")
    parser.add_argument("--json", metavar="OUT", help="write every figure to this JSON file")
    parser.add_argument("--workdir", help="create the temporary directory here (default: $TMPDIR or /tmp)")
    parser.add_argument("--keep", action="store_true", help="keep the temporary directory")
    parser.add_argument("--seed", type=int, default=20240611)
    parser.add_argument("--repeat", type=int, default=3,
                        help="runs of each timed add / re-add / materialize, each preceded by a cp "
                             "and a cp+sync of the same file; medians reported (default 3)")
    parser.add_argument("--dtypes", default="fp32,bf16",
                        help="comma-separated subset of fp32,bf16,fp16 (default fp32,bf16)")
    parser.add_argument("--warm-mb", type=int, default=0,
                        help="touch and free this much memory (MiB) before every timed command, to "
                             "hand it pages the hypervisor already backs (default 0: off; see README)")
    parser.add_argument("--no-git-lfs", action="store_true", help="skip the git-lfs comparison")
    args = parser.parse_args(argv)

    modelgit = shutil.which("modelgit")
    if modelgit is None:
        print("error: the modelgit command is not on PATH (pip install -e .)", file=sys.stderr)
        return 2
    git_lfs = not args.no_git_lfs
    if git_lfs and (shutil.which("git") is None or subprocess.run(
            ["git", "lfs", "version"], capture_output=True).returncode != 0):
        print("git-lfs is not installed: skipping the git-lfs comparison", flush=True)
        git_lfs = False

    if args.workdir:
        os.makedirs(args.workdir, exist_ok=True)
    workdir = tempfile.mkdtemp(prefix="modelgit-bench-", dir=args.workdir)
    env = os.environ.copy()
    env.update({"GIT_AUTHOR_NAME": "modelgit bench", "GIT_AUTHOR_EMAIL": "bench@example.invalid",
                "GIT_COMMITTER_NAME": "modelgit bench", "GIT_COMMITTER_EMAIL": "bench@example.invalid",
                "GIT_CONFIG_NOSYSTEM": "1", "GIT_CONFIG_GLOBAL": os.devnull, "GIT_TERMINAL_PROMPT": "0",
                "MODELGIT_PROGRESS": "0"})
    env.pop("MODELGIT_STORE", None)
    bench = Bench(workdir, env)
    bench.warm_mb = args.warm_mb
    loadavg_start = os.getloadavg()
    spec = model_spec(args.size_mb)
    dtypes = {"fp32": "F32", "bf16": "BF16", "fp16": "F16"}
    runs = []
    try:
        bench.say(f"workdir {workdir}; model: {len(spec)} tensors, "
                  f"{sum(nbytes(s, storage_dtype(k, 'F32')) for _, s, k in spec) / MB:.0f} MB in fp32")
        startup = startup_cost(bench, modelgit)
        bench.say(f"startup: python {startup['python']['wall_s']:.2f} s, "
                  f"modelgit --help {startup['modelgit_help']['wall_s']:.2f} s "
                  f"({startup['modelgit_help']['maxrss_mb']:.0f} MB)")
        for label in args.dtypes.split(","):
            run = DtypeRun(bench, args, spec, dtypes[label], label, modelgit)
            run.run(git_lfs)
            runs.append(run)
            if not args.keep:
                remove(run.dir)
    finally:
        if not args.keep:
            remove(workdir)
        else:
            print(f"kept {workdir}")

    rows = [r for run in runs for r in rows_for(run, git_lfs)]
    t, bare = startup["modelgit_help"]["wall_s"], startup["python"]["wall_s"]
    rows.insert(0, {"figure": "CLI startup: modelgit --help (s) vs python3 -c pass", "modelgit": t,
                    "alternative": bare, "ratio": t / bare, "target": None, "pass": None,
                    "ratio_text": None, "modelgit_text": fmt_s(t), "alternative_text": "python " + fmt_s(bare)})
    env_info = environment(args, modelgit)
    env_info["loadavg_start"] = loadavg_start
    print(f"\nmodelgit storage benchmark, {env_info['date']}, {env_info['cpus']} cores "
          f"({env_info['cpu_model']}), {env_info['mem_gb']} GB RAM, rev {env_info['git_rev']}"
          f"{' (src modified)' if env_info['src_dirty'] else ''}; load average "
          f"{loadavg_start[0]:.1f} at start, {env_info['loadavg_end'][0]:.1f} at end")
    for run in runs:
        i = run.info
        print(f"{run.label}: {i['file_bytes'] / MB:.1f} MB file, {i['tensors']} tensors, largest "
              f"{i['largest_tensor']} {i['largest_tensor_bytes'] / MB:.1f} MB; changed in v2: "
              f"{i['changed_tensor']} {i['changed_tensor_bytes'] / MB:.1f} MB; round trips identical: "
              f"{all(v for k, v in i.items() if k.endswith('identical'))}")
    print(f"modelgit startup (--help): {startup['modelgit_help']['wall_s']:.2f} s, "
          f"{startup['modelgit_help']['maxrss_mb']:.0f} MB RSS (bare python: "
          f"{startup['python']['wall_s']:.2f} s, {startup['python']['maxrss_mb']:.0f} MB)\n")
    print_table(rows)
    print_details(runs, startup["modelgit_help"]["wall_s"])
    failed = [r["figure"] for r in rows if r["pass"] is False]
    print(f"\n{len(failed)} of {sum(r['pass'] is not None for r in rows)} targets failed"
          + (":\n  " + "\n  ".join(failed) if failed else ""))
    if args.json:
        with open(args.json, "w") as handle:
            json.dump({"environment": env_info, "targets": TARGETS, "startup": startup,
                       "rows": rows, "runs": {run.label: run.result() for run in runs}},
                      handle, indent=2)
        print(f"figures written to {args.json}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
