#!/usr/bin/env python3
"""Merge benchmark: ``modelgit merge`` against mergekit and PEFT on locally built models.

One run measures, side by side:

* **TIES** (density 0.5, weights 0.5/0.3/0.2, normalize) and **linear** (weights 0.5/0.3/0.2)
  merges of three fine-tuned variants of a ~1 GB fp32 Llama-architecture model: the same YAML
  recipe run by ``mergekit-yaml RECIPE OUT --lazy-unpickle`` and by ``modelgit merge RECIPE -o
  OUT``. Wall time, peak RSS of the process tree, and the outputs compared tensor by tensor.
* **LoRA**: five PEFT LoRA adapters (rank 8, alpha 16, q_proj and v_proj) merged into a smaller
  (~0.3x) base: PEFT (load the model, load the adapters, ``add_weighted_adapter(...,
  combination_type="cat")``, ``merge_and_unload``, ``save_pretrained``) against a modelgit
  ``task_arithmetic`` recipe over ``BASE+ADAPTER_i``. ``cat`` is the exact combination
  (``sum_i w_i * scale_i * B_i A_i``); PEFT's ``linear`` (which mixes the A and B matrices
  separately) and ``svd`` (rank-truncated) are timed too. Both outputs are also compared with a
  float64 reference.

Every command runs as a child process; the benchmark times it (``time.perf_counter``) and
samples ``/proc`` every 50 ms, summing the RSS of the process and its descendants (peak = the
largest sum). ``os.wait4`` gives the child's own ``ru_maxrss`` and CPU times as well.

Usage::

    python3 benchmarks/merge.py                     # ~1 GiB models (~10 min on 2 cores)
    python3 benchmarks/merge.py --size-mb 50        # quick run
    python3 benchmarks/merge.py --json figures.json --keep --workdir /data/tmp

mergekit and PEFT are not installed in the system Python: the benchmark uses the venv
``/tmp/refvenv`` when it has them, else ``benchmarks/.venv-mergekit``, which it creates when
missing (``python3 -m venv --system-site-packages DIR && DIR/bin/pip install 'torch==2.13.0'
mergekit peft``). ``--venv DIR`` picks another one.

Before every timed run the benchmark waits until no other benchmark of this repository
(``benchmarks/git.py``, ``benchmarks/store.py``) is running (checked with ``pgrep`` every 30 s):
the machine has 2 cores.
"""

from __future__ import annotations

import argparse
import datetime
import glob
import json
import os
import platform
import shutil
import signal
import struct
import subprocess
import sys
import tempfile
import threading
import time

import numpy as np

MB = 1e6  # figures are in decimal megabytes
MIB = 1024 * 1024
HERE = os.path.dirname(os.path.abspath(__file__))
REPO = os.path.dirname(HERE)
REF_VENV = "/tmp/refvenv"
OWN_VENV = os.path.join(HERE, ".venv-mergekit")
BUSY_PATTERN = "benchmarks/(git|store).py"
BUSY_POLL_S = 30
WAIT_FOR_OTHERS = True  # --no-wait turns it off (quick smoke tests)

WEIGHT_STD = 0.02
NOISE = 1e-2  # fine-tunes: w + NOISE * rms(w) * N(0, 1), per tensor
MODEL_WEIGHTS = [0.5, 0.3, 0.2]
DENSITY = 0.5
LORA_RANK, LORA_ALPHA = 8, 16
LORA_WEIGHTS = [0.3, 0.25, 0.2, 0.15, 0.1]
LORA_SIZE_FRACTION = 0.3  # the LoRA base is this fraction of --size-mb
RTOL, ATOL = 1e-5, 1e-6  # "equal within float tolerance": torch.allclose(modelgit, reference, RTOL, ATOL)
REL_FLOOR = 1e-6  # relative differences are |a - b| / max(|b|, REL_FLOOR)
MEMORY_TARGET_MB = 1000.0  # "peak memory <= 1 GB"
CPU_TARGET = 0.5  # "CPU time <= 0.5x mergekit's" (issue 12)


def say(text: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {text}", flush=True)


# ============================================================================ model
def llama_dims(target_bytes: float) -> dict:
    """A Llama-architecture shape of about ``target_bytes`` in fp32 (untied embeddings)."""
    for hidden, inter, vocab, heads, at_least in ((1024, 2816, 32000, 16, 600e6),
                                                   (768, 2048, 16000, 12, 150e6),
                                                   (256, 704, 4000, 4, 0)):
        if target_bytes >= at_least:
            break
    embeddings = 2 * vocab * hidden * 4  # embed_tokens + lm_head
    per_layer = (4 * hidden * hidden + 3 * hidden * inter + 2 * hidden) * 4
    layers = max(2, round((target_bytes - embeddings - hidden * 4) / per_layer))
    return {"hidden": hidden, "intermediate": inter, "vocab": vocab, "heads": heads, "layers": layers}


def llama_config(d: dict) -> dict:
    return {
        "architectures": ["LlamaForCausalLM"], "model_type": "llama",
        "hidden_size": d["hidden"], "intermediate_size": d["intermediate"],
        "num_hidden_layers": d["layers"], "num_attention_heads": d["heads"],
        "num_key_value_heads": d["heads"], "head_dim": d["hidden"] // d["heads"],
        "vocab_size": d["vocab"], "max_position_embeddings": 2048, "rms_norm_eps": 1e-5,
        "rope_theta": 10000.0, "hidden_act": "silu", "tie_word_embeddings": False,
        "attention_bias": False, "mlp_bias": False, "initializer_range": WEIGHT_STD,
        "bos_token_id": 1, "eos_token_id": 2, "dtype": "float32", "use_cache": True,
    }


def llama_tensors(d: dict) -> list[tuple[str, tuple[int, ...]]]:
    """(name, shape) of every tensor, with the Hugging Face names of LlamaForCausalLM."""
    h, i, v = d["hidden"], d["intermediate"], d["vocab"]
    out = [("model.embed_tokens.weight", (v, h))]
    for layer in range(d["layers"]):
        p = f"model.layers.{layer}."
        out += [(p + "input_layernorm.weight", (h,)), (p + "post_attention_layernorm.weight", (h,))]
        out += [(p + f"self_attn.{m}_proj.weight", (h, h)) for m in "qkvo"]
        out += [(p + "mlp.gate_proj.weight", (i, h)), (p + "mlp.up_proj.weight", (i, h)),
                (p + "mlp.down_proj.weight", (h, i))]
    out += [("model.norm.weight", (h,)), ("lm_head.weight", (v, h))]
    return out


class SafetensorsWriter:
    """A safetensors file written front to back: header first, then each tensor in order, as
    F32 or (rounded to nearest even) BF16."""

    def __init__(self, path: str, tensors: list[tuple[str, tuple[int, ...]]], dtype: str = "float32"):
        self.bf16 = dtype == "bfloat16"
        itemsize, code = (2, "BF16") if self.bf16 else (4, "F32")
        header, offset = {"__metadata__": {"format": "pt"}}, 0
        for name, shape in tensors:
            size = itemsize * int(np.prod(shape))
            header[name] = {"dtype": code, "shape": list(shape), "data_offsets": [offset, offset + size]}
            offset += size
        text = json.dumps(header, separators=(",", ":")).encode()
        text += b" " * (-len(text) % 8)
        self.handle = open(path, "wb")
        self.handle.write(struct.pack("<Q", len(text)) + text)

    def write(self, array: np.ndarray) -> None:
        array = np.ascontiguousarray(array, dtype="<f4")
        if self.bf16:
            import torch

            array = torch.from_numpy(array).to(torch.bfloat16).view(torch.int16).numpy()
        self.handle.write(array.data)

    def close(self) -> None:
        self.handle.close()


def generate_models(workdir: str, size_mb: float, seed: int, dtype: str = "float32") -> dict:
    """base/ and ft1/ ft2/ ft3/ (base + relative 1e-2 gaussian noise per tensor), fixed seed;
    ``size_mb`` is the float32 size (bfloat16 models hold the same tensors, rounded)."""
    d = llama_dims(size_mb * MIB)
    tensors = llama_tensors(d)
    names = ["base"] + [f"ft{k}" for k in range(1, len(MODEL_WEIGHTS) + 1)]
    dirs = {n: os.path.join(workdir, n) for n in names}
    writers = {}
    for n, path in dirs.items():
        os.makedirs(path)
        with open(os.path.join(path, "config.json"), "w") as handle:
            json.dump({**llama_config(d), "dtype": dtype}, handle, indent=2)
        writers[n] = SafetensorsWriter(os.path.join(path, "model.safetensors"), tensors, dtype)
    for index, (name, shape) in enumerate(tensors):
        rng = np.random.default_rng([seed, 0, index])
        if len(shape) == 1:  # RMSNorm weights: about 1
            w = 1 + 0.05 * rng.standard_normal(shape, dtype=np.float32)
        else:
            w = WEIGHT_STD * rng.standard_normal(shape, dtype=np.float32)
        writers["base"].write(w)
        rms = float(np.sqrt(np.mean(np.square(w, dtype=np.float64))))
        for k in range(1, len(MODEL_WEIGHTS) + 1):
            noise = np.random.default_rng([seed, k, index]).standard_normal(shape, dtype=np.float32)
            noise *= np.float32(NOISE * rms)
            noise += w
            writers[f"ft{k}"].write(noise)
            del noise
        del w
    for writer in writers.values():
        writer.close()
    sizes = [(2 if dtype == "bfloat16" else 4) * int(np.prod(s)) for _n, s in tensors]
    return {"dims": d, "dirs": dirs, "tensors": len(tensors), "bytes": sum(sizes), "dtype": dtype,
            "largest_tensor_bytes": max(sizes), "file_bytes": os.path.getsize(
                os.path.join(dirs["base"], "model.safetensors"))}


def check_model(path: str, expected: int) -> None:
    from safetensors import safe_open

    with safe_open(os.path.join(path, "model.safetensors"), framework="pt") as handle:
        keys = list(handle.keys())
        handle.get_tensor(keys[-1])
    if len(keys) != expected:
        raise RuntimeError(f"{path}: {len(keys)} tensors, expected {expected}")


def write_yaml(path: str, data: dict) -> str:
    import yaml

    with open(path, "w") as handle:
        yaml.safe_dump(data, handle, sort_keys=False)
    return path


def merge_recipes(workdir: str, dirs: dict, dtype: str = "float32") -> dict[str, str]:
    fts = [dirs[f"ft{k}"] for k in range(1, len(MODEL_WEIGHTS) + 1)]
    ties = {"merge_method": "ties", "base_model": dirs["base"],
            "models": [{"model": m, "parameters": {"weight": w, "density": DENSITY}}
                       for m, w in zip(fts, MODEL_WEIGHTS)],
            "parameters": {"normalize": True}, "dtype": dtype}
    linear = {"merge_method": "linear",
              "models": [{"model": m, "parameters": {"weight": w}} for m, w in zip(fts, MODEL_WEIGHTS)],
              "parameters": {"normalize": True}, "dtype": dtype}
    return {"ties": write_yaml(os.path.join(workdir, "ties.yaml"), ties),
            "linear": write_yaml(os.path.join(workdir, "linear.yaml"), linear)}


# ============================================================================ venv helpers
# These run under the venv's Python (which has peft, and torch/transformers/numpy through
# --system-site-packages): ``VENV/bin/python benchmarks/merge.py _helper ...``.
def helper_make_lora(args: list[str]) -> None:
    """Build the LoRA base with transformers (from_config, seeded) and five PEFT adapters."""
    spec = json.loads(args[0])
    import torch
    from peft import LoraConfig, get_peft_model
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(spec["seed"])
    config = LlamaConfig(**{k: v for k, v in llama_config(spec["dims"]).items()
                            if k not in ("architectures", "model_type", "dtype")})
    model = LlamaForCausalLM(config).to(torch.float32)
    with torch.no_grad():  # norms about 1, as in the big models (not exactly 1: more realistic)
        for name, param in model.named_parameters():
            if name.endswith("norm.weight"):
                param.copy_(1 + 0.05 * torch.randn_like(param))
    model.save_pretrained(spec["base"])
    base_abs = os.path.abspath(spec["base"])
    model = LlamaForCausalLM.from_pretrained(base_abs, dtype=torch.float32)  # records the path
    lora_config = LoraConfig(r=LORA_RANK, lora_alpha=LORA_ALPHA, target_modules=["q_proj", "v_proj"],
                             lora_dropout=0.0, bias="none", task_type="CAUSAL_LM")
    peft_model = get_peft_model(model, lora_config)
    hidden = spec["dims"]["hidden"]
    for k, path in enumerate(spec["adapters"]):
        gen = torch.Generator().manual_seed(spec["seed"] * 1000 + k + 1)
        with torch.no_grad():
            for name, param in peft_model.named_parameters():
                if "lora_A" in name:  # (r, in)
                    param.copy_(torch.randn(param.shape, generator=gen) / hidden ** 0.5)
                elif "lora_B" in name:  # (out, r)
                    param.copy_(0.01 * torch.randn(param.shape, generator=gen))
        peft_model.save_pretrained(path)


def helper_peft_merge(args: list[str]) -> None:
    """PEFT: load base + adapters, add_weighted_adapter, merge_and_unload, save_pretrained."""
    spec = json.loads(args[0])
    phases, t0 = {}, time.perf_counter()
    import torch
    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    phases["import_s"] = time.perf_counter() - t0
    t = time.perf_counter()
    model = AutoModelForCausalLM.from_pretrained(spec["base"], dtype=torch.float32)
    names = [f"a{k}" for k in range(len(spec["adapters"]))]
    model = PeftModel.from_pretrained(model, spec["adapters"][0], adapter_name=names[0])
    for name, path in zip(names[1:], spec["adapters"][1:]):
        model.load_adapter(path, adapter_name=name)
    phases["load_s"] = time.perf_counter() - t
    t = time.perf_counter()
    model.add_weighted_adapter(names, spec["weights"], "merged", combination_type=spec["combination"])
    model.set_adapter("merged")
    phases["add_weighted_adapter_s"] = time.perf_counter() - t
    t = time.perf_counter()
    merged = model.merge_and_unload(adapter_names=["merged"])
    phases["merge_and_unload_s"] = time.perf_counter() - t
    t = time.perf_counter()
    merged.save_pretrained(spec["out"])
    phases["save_s"] = time.perf_counter() - t
    with open(spec["phases"], "w") as handle:
        json.dump(phases, handle)


def helper_versions(_args: list[str]) -> None:
    from importlib.metadata import version

    print(json.dumps({p: version(p) for p in ("mergekit", "peft", "torch", "transformers", "safetensors")}))


HELPERS = {"make-lora": helper_make_lora, "peft-merge": helper_peft_merge, "versions": helper_versions}


def venv_ok(path: str) -> bool:
    python = os.path.join(path, "bin", "python")
    if not (os.path.isfile(python) and os.path.isfile(os.path.join(path, "bin", "mergekit-yaml"))):
        return False
    return subprocess.run([python, "-c", "import mergekit, peft, transformers"],
                          capture_output=True).returncode == 0


def ensure_venv(requested: str | None) -> str:
    """A venv with mergekit and PEFT: --venv, /tmp/refvenv, benchmarks/.venv-mergekit (created)."""
    for candidate in ([requested] if requested else [REF_VENV, OWN_VENV]):
        if venv_ok(candidate):
            return candidate
    if requested:
        raise SystemExit(f"--venv {requested}: no mergekit-yaml / peft there")
    say(f"creating {OWN_VENV} (mergekit, peft; torch pinned to 2.13.0) -- a few minutes, once")
    subprocess.run([sys.executable, "-m", "venv", "--system-site-packages", OWN_VENV], check=True)
    subprocess.run([os.path.join(OWN_VENV, "bin", "pip"), "install", "torch==2.13.0", "mergekit", "peft"],
                   check=True)
    if not venv_ok(OWN_VENV):
        raise SystemExit(f"{OWN_VENV}: mergekit or peft still missing after pip install")
    return OWN_VENV


# ============================================================================ measuring
def _status(pid: int) -> tuple[int, int, int]:
    """(VmRSS, RssAnon, RssFile) of one process, in bytes (zeros once it is gone)."""
    rss = anon = file = 0
    try:
        with open(f"/proc/{pid}/status") as handle:
            for line in handle:
                if line.startswith("VmRSS:"):
                    rss = int(line.split()[1]) * 1024
                elif line.startswith("RssAnon:"):
                    anon = int(line.split()[1]) * 1024
                elif line.startswith("RssFile:"):
                    file = int(line.split()[1]) * 1024
    except (OSError, ValueError):
        pass
    return rss, anon, file


def _descendants(root: int) -> list[int]:
    children: dict[int, list[int]] = {}
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/stat") as handle:
                stat = handle.read()
        except OSError:
            continue
        ppid = int(stat[stat.rindex(")") + 2:].split()[1])
        children.setdefault(ppid, []).append(int(entry))
    out, todo = [], [root]
    while todo:
        pid = todo.pop()
        out.append(pid)
        todo.extend(children.get(pid, []))
    return out


class TreeSampler(threading.Thread):
    """Every ``interval`` s: sum of RSS over a process and its descendants; keeps the peak."""

    def __init__(self, pid: int, interval: float = 0.05, skip_root: bool = False):
        super().__init__(daemon=True)
        self.pid, self.interval, self.skip_root = pid, interval, skip_root
        self.stop = threading.Event()
        self.peak = {"rss": 0, "anon": 0, "file": 0}  # anon/file: at the RSS peak
        self.peak_anon = 0
        self.samples = 0
        self.processes = 0

    def run(self) -> None:
        pids = [self.pid]
        while not self.stop.is_set():
            if self.samples % 10 == 0:  # the tree is re-read every 0.5 s, the RSS every 50 ms
                pids = _descendants(self.pid)[1 if self.skip_root else 0:]
                self.processes = max(self.processes, len(pids))
            total = [0, 0, 0]
            for pid in pids:
                for j, value in enumerate(_status(pid)):
                    total[j] += value
            if total[0] > self.peak["rss"]:
                self.peak = {"rss": total[0], "anon": total[1], "file": total[2]}
            self.peak_anon = max(self.peak_anon, total[1])
            self.samples += 1
            self.stop.wait(self.interval)


def busy_benchmarks() -> list[str]:
    proc = subprocess.run(["pgrep", "-af", BUSY_PATTERN], capture_output=True, text=True)
    return [line for line in proc.stdout.splitlines() if line.strip()]


def wait_until_quiet() -> float:
    """Block while benchmarks/git.py or store.py run (the machine has 2 cores); seconds waited."""
    t0 = time.monotonic()
    while WAIT_FOR_OTHERS:
        busy = busy_benchmarks()
        if not busy:
            break
        say(f"waiting for another benchmark to finish ({busy[0][:100]}); polling every {BUSY_POLL_S} s")
        time.sleep(BUSY_POLL_S)
    return time.monotonic() - t0


# The measured command runs under this small wrapper, which times it and reads its rusage. A child
# forked straight from the benchmark (large after comparing outputs) would inherit the benchmark's
# RSS high-water mark in ru_maxrss; a child of a fresh, small wrapper does not.
WRAPPER = r"""
import json, os, subprocess, sys, time
spec = json.loads(sys.argv[1])
with open(spec["log"], "ab") as log:
    t0 = time.perf_counter()
    proc = subprocess.Popen(spec["argv"], stdout=log, stderr=log)
    _pid, status, usage = os.wait4(proc.pid, 0)
    wall = time.perf_counter() - t0
with open(spec["result"], "w") as handle:
    json.dump({"rc": os.waitstatus_to_exitcode(status), "wall_s": wall,
               "ru_maxrss_mb": usage.ru_maxrss * 1024 / 1e6, "user_s": usage.ru_utime,
               "sys_s": usage.ru_stime}, handle)
"""


def run_measured(argv: list[str], log: str) -> dict:
    """Run ``argv`` (under WRAPPER): wall time, peak tree RSS (50 ms samples), ru_maxrss, CPU."""
    waited = wait_until_quiet()
    subprocess.run(["sync"], check=True)  # dirty pages of earlier steps are not charged here
    load = os.getloadavg()[0]
    with open(log, "ab") as handle:
        handle.write(("\n$ " + " ".join(argv) + "\n").encode())
    fd, result_path = tempfile.mkstemp(prefix="merge-bench-", suffix=".json")
    os.close(fd)
    try:
        spec = {"argv": argv, "log": log, "result": result_path}
        wrapper = subprocess.Popen([sys.executable, "-c", WRAPPER, json.dumps(spec)])
        sampler = TreeSampler(wrapper.pid, skip_root=True)
        sampler.start()
        wrapper.wait()
        sampler.stop.set()
        sampler.join()
        with open(result_path) as handle:
            result = json.load(handle)
    finally:
        os.remove(result_path)
    if wrapper.returncode != 0 or result["rc"] != 0:
        with open(log, errors="replace") as handle:
            tail = handle.read()[-4000:]
        raise RuntimeError(f"command failed (rc {result.get('rc')}): {' '.join(argv)}\n{tail}")
    return {"argv": argv, **result, "peak_rss_mb": sampler.peak["rss"] / MB,
            "anon_at_peak_mb": sampler.peak["anon"] / MB, "file_at_peak_mb": sampler.peak["file"] / MB,
            "peak_anon_mb": sampler.peak_anon / MB, "samples": sampler.samples,
            "processes": sampler.processes, "load_before": load, "waited_s": waited}


def remove(path: str) -> None:
    if os.path.isdir(path):
        shutil.rmtree(path)
    elif os.path.exists(path):
        os.remove(path)


def cpu_s(run: dict) -> float:
    """CPU seconds of a command (user + system, every thread, its children included)."""
    return run["user_s"] + run["sys_s"]


def best(runs: list[dict]) -> dict:
    """The fastest run, with every run's time and CPU, the least CPU over the runs, and the
    largest peak over the runs."""
    fastest = min(runs, key=lambda r: r["wall_s"])
    largest = max(runs, key=lambda r: r["peak_rss_mb"])
    return {**fastest, "walls_s": [r["wall_s"] for r in runs],
            "cpus_s": [cpu_s(r) for r in runs], "min_cpu_s": min(cpu_s(r) for r in runs),
            "loads_before": [r["load_before"] for r in runs],
            "split_at_max_peak_mb": [largest["anon_at_peak_mb"], largest["file_at_peak_mb"]],
            "max_ru_maxrss_mb": max(r["ru_maxrss_mb"] for r in runs),
            "max_peak_rss_mb": max(r["peak_rss_mb"] for r in runs),
            "peaks_rss_mb": [r["peak_rss_mb"] for r in runs],
            "max_peak_anon_mb": max(r["peak_anon_mb"] for r in runs)}


# ============================================================================ comparing outputs
def tensor_files(path: str) -> dict[str, str]:
    """name -> safetensors file, for every weight file of an output directory."""
    out = {}
    for file in sorted(glob.glob(os.path.join(path, "*.safetensors"))):
        from safetensors import safe_open

        with safe_open(file, framework="pt") as handle:
            for key in handle.keys():
                out[key] = file
    return out


class LazyModel:
    """One tensor at a time from a (sharded) safetensors directory."""

    def __init__(self, path: str):
        from safetensors import safe_open

        self.files = tensor_files(path)
        self.handles = {f: safe_open(f, framework="pt") for f in set(self.files.values())}

    def get(self, name: str):
        return self.handles[self.files[name]].get_tensor(name)


def diff_stats(a, b, chunk: int = 1 << 22) -> dict:
    """Differences of a (tested) against b (reference), both float tensors of one shape.

    Computed in float64, ``chunk`` elements at a time (the benchmark's own memory stays small)."""
    import torch

    a, b = a.reshape(-1), b.reshape(-1)
    out = {"max_abs": 0.0, "max_rel": 0.0, "differing": 0, "numel": a.numel(), "allclose": True}
    for start in range(0, a.numel(), chunk):
        a64, b64 = a[start:start + chunk].double(), b[start:start + chunk].double()
        diff = (a64 - b64).abs()
        out["max_abs"] = max(out["max_abs"], float(diff.max()))
        out["max_rel"] = max(out["max_rel"], float((diff / b64.abs().clamp_min(REL_FLOOR)).max()))
        out["differing"] += int((a[start:start + chunk] != b[start:start + chunk]).sum())
        out["allclose"] = out["allclose"] and bool(torch.allclose(a64, b64, rtol=RTOL, atol=ATOL))
    return out


def merge_stats(total: dict | None, one: dict, name: str) -> dict:
    if total is None:
        total = {"max_abs": 0.0, "max_rel": 0.0, "differing": 0, "numel": 0, "allclose": True,
                 "worst_tensor": None, "tensors": 0, "tensors_differing": []}
    if one["max_abs"] > total["max_abs"]:
        total["worst_tensor"] = name
    total["max_abs"] = max(total["max_abs"], one["max_abs"])
    total["max_rel"] = max(total["max_rel"], one["max_rel"])
    total["differing"] += one["differing"]
    if one["differing"]:
        total["tensors_differing"].append(name)
    total["numel"] += one["numel"]
    total["allclose"] = total["allclose"] and one["allclose"]
    total["tensors"] += 1
    return total


def compare_outputs(tested: str, reference: str) -> dict:
    a, b = LazyModel(tested), LazyModel(reference)
    missing = sorted(set(b.files) ^ set(a.files))
    total = None
    for name in sorted(set(a.files) & set(b.files)):
        ta, tb = a.get(name), b.get(name)
        if ta.shape != tb.shape or ta.dtype != tb.dtype:
            raise RuntimeError(f"{name}: {tuple(ta.shape)} {ta.dtype} vs {tuple(tb.shape)} {tb.dtype}")
        total = merge_stats(total, diff_stats(ta, tb), name)
        del ta, tb
    total["names_only_in_one"] = missing
    total["allclose"] = total["allclose"] and not missing
    return total


def ties_tie_diagnostic(dirs: dict, tested: str, reference: str, names: list[str]) -> dict:
    """Where two TIES outputs differ: how many of those elements sit at a magnitude-threshold tie.

    TIES keeps the k = int(density * n) largest |delta| of each task vector. When several entries
    share the k-th largest magnitude exactly, which of them are kept is a matter of convention
    (mergekit: whatever order torch.argsort leaves them in). An element whose outputs differ only
    because of that is counted here.
    """
    base = LazyModel(dirs["base"])
    fts = [LazyModel(dirs[f"ft{k}"]) for k in range(1, len(MODEL_WEIGHTS) + 1)]
    a, b = LazyModel(tested), LazyModel(reference)
    out = {"tensors": len(names), "differing": 0, "at_ties": 0, "tied_entries": 0}
    for name in names:
        differ = (a.get(name) != b.get(name)).reshape(-1)
        w = base.get(name)
        at_tie = None
        for ft in fts:
            magnitude = (ft.get(name) - w).abs().reshape(-1)
            n = magnitude.numel()
            k = max(1, int(DENSITY * n))
            threshold = float(np.partition(magnitude.numpy(), n - k)[n - k])
            tie = magnitude == threshold
            out["tied_entries"] += int(tie.sum())
            at_tie = tie if at_tie is None else at_tie | tie
        out["differing"] += int(differ.sum())
        out["at_ties"] += int((differ & at_tie).sum())
    return out


def lora_reference(base: str, adapters: list[str], outputs: dict[str, str]) -> dict:
    """Each output against W + sum_i w_i (alpha/r) B_i A_i computed in float64."""
    from safetensors import safe_open

    factors = []
    for path in adapters:
        with open(os.path.join(path, "adapter_config.json")) as handle:
            config = json.load(handle)
        scale = config["lora_alpha"] / config["r"]
        with safe_open(os.path.join(path, "adapter_model.safetensors"), framework="pt") as handle:
            factors.append((scale, {k: handle.get_tensor(k) for k in handle.keys()}))
    base_model = LazyModel(base)
    models = {label: LazyModel(path) for label, path in outputs.items()}
    result = {label: {"adapted": None, "untouched": None} for label in outputs}
    for name in sorted(base_model.files):
        w = base_model.get(name).double()
        module = name[: -len(".weight")]
        key_a = f"base_model.model.{module}.lora_A.weight"
        adapted = key_a in factors[0][1]
        if adapted:
            for weight, (scale, tensors) in zip(LORA_WEIGHTS, factors):
                b = tensors[f"base_model.model.{module}.lora_B.weight"].double()
                w = w + weight * scale * (b @ tensors[key_a].double())
        for label, model in models.items():
            kind = "adapted" if adapted else "untouched"
            result[label][kind] = merge_stats(result[label][kind], diff_stats(model.get(name), w), name)
    return result


# ============================================================================ the benchmark
class Benchmark:
    def __init__(self, args, venv: str, workdir: str):
        self.args = args
        self.venv = venv
        self.python = os.path.join(venv, "bin", "python")
        self.workdir = workdir
        self.log = os.path.join(workdir, "commands.log")
        self.modelgit = shutil.which("modelgit")
        if self.modelgit is None:
            raise SystemExit("the modelgit command is not on PATH (pip install -e .)")
        self.results: dict = {"runs": {}}

    def helper(self, name: str, spec: dict) -> None:
        proc = subprocess.run([self.python, os.path.abspath(__file__), "_helper", name, json.dumps(spec)],
                              capture_output=True, text=True)
        if proc.returncode != 0:
            raise RuntimeError(f"helper {name} failed:\n{proc.stderr[-4000:]}")

    def timed_pair(self, label: str, commands: dict[str, tuple[list[str], str]], repeat: int,
                   after=None) -> dict:
        """Run each tool's command ``repeat`` times, alternating which goes first.

        ``after(tool, run)``, if given, is called after each run (to attach figures to it)."""
        runs: dict[str, list[dict]] = {tool: [] for tool in commands}
        order = list(commands)
        for i in range(repeat):
            for tool in (order if i % 2 == 0 else order[::-1]):
                argv, out = commands[tool]
                remove(out)
                r = run_measured(argv, self.log)
                if after:
                    after(tool, r)
                say(f"{label} {tool} run {i + 1}: {r['wall_s']:.2f} s, peak RSS {r['peak_rss_mb']:.0f} MB "
                    f"(anon {r['anon_at_peak_mb']:.0f} + file {r['file_at_peak_mb']:.0f}), "
                    f"load {r['load_before']:.2f}")
                runs[tool].append(r)
        self.results["runs"][label] = runs
        return {tool: best(r) for tool, r in runs.items()}

    def startup(self) -> dict:
        out = {}
        for label, argv in (("python", [sys.executable, "-c", "pass"]),
                            ("modelgit --help", [self.modelgit, "--help"]),
                            ("mergekit-yaml --help", [os.path.join(self.venv, "bin", "mergekit-yaml"), "--help"])):
            out[label] = min(run_measured(argv, self.log)["wall_s"] for _ in range(2))
        return out

    def run_merges(self) -> dict:
        a = self.args
        wait_until_quiet()  # generating takes both cores for a while: not during another benchmark
        say(f"generating base + {len(MODEL_WEIGHTS)} fine-tunes, ~{a.size_mb} MiB each (seed {a.seed})")
        t = time.perf_counter()
        models = generate_models(self.workdir, a.size_mb, a.seed, a.dtype)
        for path in models["dirs"].values():
            check_model(path, models["tensors"])
        say(f"generated {models['tensors']} tensors, {models['bytes'] / MB:.1f} MB per model "
            f"({models['dims']}) in {time.perf_counter() - t:.1f} s")
        self.results["models"] = {k: v for k, v in models.items() if k != "dirs"}
        recipes = merge_recipes(self.workdir, models["dirs"], a.dtype)
        figures = {}
        for method in a.methods:
            if method not in recipes:
                continue
            out_mg = os.path.join(self.workdir, f"out-{method}-modelgit")
            out_mk = os.path.join(self.workdir, f"out-{method}-mergekit")
            commands = {
                "modelgit": ([self.modelgit, "--no-progress", "merge", recipes[method], "-o", out_mg], out_mg),
                "mergekit": ([os.path.join(self.venv, "bin", "mergekit-yaml"), recipes[method], out_mk,
                              "--lazy-unpickle", "--no-cuda", "--no-copy-tokenizer", "--out-shard-size", "5B"],
                             out_mk),
            }
            timing = self.timed_pair(method, commands, a.repeat)
            say(f"{method}: comparing the outputs tensor by tensor")
            equality = compare_outputs(out_mg, out_mk)
            if method == "ties" and equality["differing"] and a.dtype == "float32":
                say("ties: the outputs differ; checking whether at magnitude-threshold ties")
                equality["ties"] = ties_tie_diagnostic(models["dirs"], out_mg, out_mk,
                                                       equality["tensors_differing"])
            figures[method] = {**timing, "equality": equality, "dtype": a.dtype,
                               "output_bytes": {t: tree_size(o) for t, (_a, o) in commands.items()}}
            remove(out_mg)
            remove(out_mk)
        for path in models["dirs"].values():
            remove(path)
        return figures

    def run_lora(self) -> dict:
        a = self.args
        dims = llama_dims(a.size_mb * MIB * LORA_SIZE_FRACTION)
        base = os.path.join(self.workdir, "lora-base")
        adapters = [os.path.join(self.workdir, f"adapter{k}") for k in range(1, len(LORA_WEIGHTS) + 1)]
        wait_until_quiet()
        say(f"building the LoRA base with transformers ({dims}) and {len(adapters)} PEFT adapters")
        self.helper("make-lora", {"seed": a.seed, "dims": dims, "base": base, "adapters": adapters})
        base_bytes = tree_size(base, "*.safetensors")
        self.results["lora_model"] = {"dims": dims, "bytes": base_bytes,
                                      "adapter_bytes": tree_size(adapters[0], "*.safetensors")}
        recipe = write_yaml(os.path.join(self.workdir, "lora.yaml"), {
            "merge_method": "task_arithmetic", "base_model": base,
            "models": [{"model": f"{base}+{ad}", "parameters": {"weight": w}}
                       for ad, w in zip(adapters, LORA_WEIGHTS)],
            "dtype": "float32"})
        out_mg = os.path.join(self.workdir, "out-lora-modelgit")
        outs, phases = {}, {}

        def peft_cmd(combination: str) -> tuple[list[str], str]:
            out = os.path.join(self.workdir, f"out-lora-peft-{combination}")
            outs[combination] = out
            phases[combination] = os.path.join(self.workdir, f"phases-{combination}.json")
            spec = {"base": base, "adapters": adapters, "weights": LORA_WEIGHTS, "combination": combination,
                    "out": out, "phases": phases[combination]}
            return [self.python, os.path.abspath(__file__), "_helper", "peft-merge", json.dumps(spec)], out

        def attach_phases(tool: str, run: dict) -> None:
            if tool == "peft":
                with open(phases["cat"]) as handle:
                    run["phases"] = json.load(handle)

        timing = self.timed_pair("lora", {"modelgit": ([self.modelgit, "--no-progress", "merge", recipe,
                                                        "-o", out_mg], out_mg),
                                          "peft": peft_cmd("cat")}, a.repeat, attach_phases)
        figures = {**timing}
        say("lora: comparing modelgit with PEFT (cat), and both with a float64 reference")
        figures["equality"] = compare_outputs(out_mg, outs["cat"])
        figures["vs_float64"] = lora_reference(base, adapters, {"modelgit": out_mg, "peft_cat": outs["cat"]})
        remove(out_mg)
        remove(outs["cat"])
        for combination in ("linear", "svd"):
            argv, out = peft_cmd(combination)
            remove(out)
            r = run_measured(argv, self.log)
            with open(phases[combination]) as handle:
                r["phases"] = json.load(handle)
            say(f"lora PEFT {combination}: {r['wall_s']:.2f} s, peak RSS {r['peak_rss_mb']:.0f} MB")
            figures[f"peft_{combination}"] = r
            remove(out)
        return figures


def start_busy(count: int, warmup: float) -> list[subprocess.Popen]:
    """``count`` processes that keep a core busy each (``yes > /dev/null``), started ``warmup``
    seconds before the measurements begin."""
    procs = [subprocess.Popen(["yes"], stdout=subprocess.DEVNULL) for _ in range(count)]
    if procs:
        say(f"{count} busy process(es) started (pids {[p.pid for p in procs]}); waiting {warmup:.0f} s "
            "for the load average to show them")
        time.sleep(warmup)
        say(f"load average now {os.getloadavg()[0]:.2f}")
    return procs


def stop_busy(procs: list[subprocess.Popen]) -> None:
    for proc in procs:
        proc.kill()
        proc.wait()


def tree_size(path: str, pattern: str = "*") -> int:
    return sum(os.path.getsize(f) for f in glob.glob(os.path.join(path, pattern)) if os.path.isfile(f))


# ============================================================================ report
def fmt_s(x: float) -> str:
    return f"{x:.2f} s"


def fmt_mb(x: float) -> str:
    return f"{x:,.0f} MB"


def fmt_peak(r: dict) -> str:
    return f"{fmt_mb(r['max_peak_rss_mb'])} (anon {r['max_peak_anon_mb']:,.0f})"


def fmt_diff(e: dict) -> str:
    if e["differing"] == 0 and not e.get("names_only_in_one"):
        return "identical (0 / 0)"
    text = f"{e['max_abs']:.2g} / {e['max_rel']:.2g}"
    if "ties" in e:
        t = e["ties"]
        text += (f" ({e['differing']:,} of {e['numel']:,} elements differ, {t['at_ties']:,} of them "
                 f"at magnitude-threshold ties)")
    return text


def table_rows(figures: dict) -> list[dict]:
    rows = []

    def row(figure, mg, ref, ratio, target, ok):
        rows.append({"figure": figure, "modelgit": mg, "reference": ref, "ratio": ratio, "target": target,
                     "pass": ok})

    names = {"ties": f"TIES d={DENSITY}", "linear": "linear"}
    for method in ("ties", "linear"):
        f = figures.get(method)
        if not f:
            continue
        mg, mk = f["modelgit"], f["mergekit"]
        n = len(mg["walls_s"])
        row(f"{names[method]}: CPU time, user + sys (least of {n})", fmt_s(mg["min_cpu_s"]),
            fmt_s(mk["min_cpu_s"]) + " (mergekit)", f"{mg['min_cpu_s'] / mk['min_cpu_s']:.2f}x",
            f"≤ {CPU_TARGET:g}x mergekit", mg["min_cpu_s"] <= CPU_TARGET * mk["min_cpu_s"])
        row(f"{names[method]}: peak RSS, process tree", fmt_peak(mg), fmt_peak(mk) + " (mergekit)",
            f"{mg['max_peak_rss_mb'] / mk['max_peak_rss_mb']:.2f}x", f"≤ {MEMORY_TARGET_MB:,.0f} MB",
            mg["max_peak_rss_mb"] <= MEMORY_TARGET_MB)
        row(f"{names[method]}: wall time (best of {n})", fmt_s(mg["wall_s"]), fmt_s(mk["wall_s"]) + " (mergekit)",
            f"{mg['wall_s'] / mk['wall_s']:.2f}x", "(information: the machine is shared)", None)
        e = f["equality"]
        exact = f.get("dtype", "float32") == "float32"
        row(f"{names[method]}: output vs mergekit, max abs / rel diff", fmt_diff(e), "(reference)", "",
            f"allclose rtol {RTOL:g} atol {ATOL:g}" if exact else
            "(information: mergekit computes in bf16, modelgit in float32)", e["allclose"] if exact else None)
    f = figures.get("lora")
    if f:
        mg, pf = f["modelgit"], f["peft"]
        n = len(mg["walls_s"])
        row(f"5 LoRA → base: wall time (best of {n})", fmt_s(mg["wall_s"]), fmt_s(pf["wall_s"]) + " (PEFT cat)",
            f"{mg['wall_s'] / pf['wall_s']:.2f}x", "≤ 1x PEFT", mg["wall_s"] <= pf["wall_s"])
        row("5 LoRA → base: peak RSS, process tree", fmt_peak(mg), fmt_peak(pf) + " (PEFT cat)", f"{mg['max_peak_rss_mb'] / pf['max_peak_rss_mb']:.2f}x",
            f"≤ {MEMORY_TARGET_MB:,.0f} MB", mg["max_peak_rss_mb"] <= MEMORY_TARGET_MB)
        e = f["equality"]
        row("5 LoRA → base: output vs PEFT cat, max abs / rel diff", fmt_diff(e), "(reference)", "",
            f"allclose rtol {RTOL:g} atol {ATOL:g}", e["allclose"])
        ref = f["vs_float64"]
        mg64, pf64 = ref["modelgit"]["adapted"], ref["peft_cat"]["adapted"]
        row("5 LoRA → base: q/v output vs float64, max abs / rel diff", f"{mg64['max_abs']:.2g} / {mg64['max_rel']:.2g}",
            f"{pf64['max_abs']:.2g} / {pf64['max_rel']:.2g} (PEFT cat)", "", "(information)", None)
        for combination in ("linear", "svd"):
            r = f.get(f"peft_{combination}")
            if r:
                row(f"5 LoRA → base: PEFT {combination} (not exact; 1 run)", fmt_s(mg["wall_s"]),
                    f"{fmt_s(r['wall_s'])}, {fmt_mb(r['peak_rss_mb'])}", f"{mg['wall_s'] / r['wall_s']:.2f}x",
                    "(information)", None)
    return rows


def print_table(rows: list[dict]) -> None:
    print("\n| figure | modelgit | mergekit / PEFT | ratio | target | result |")
    print("|---|---|---|---|---|---|")
    for r in rows:
        result = "" if r["pass"] is None else ("pass" if r["pass"] else "**FAIL**")
        print(f"| {r['figure']} | {r['modelgit']} | {r['reference']} | {r['ratio']} | {r['target']} | {result} |")


def print_details(figures: dict, startup: dict | None) -> None:
    print("\nDetails (every run; peak RSS and ru_maxrss: the largest over the runs, the peak split into "
          "anonymous + file-backed pages; CPU: of the fastest run):\n")
    print("| run | tool | wall times | best | CPU s (user + sys) per run | peak RSS | anon + file at peak | "
          "ru_maxrss | CPU user + sys, fastest run | load before each run |")
    print("|---|---|---|---|---|---|---|---|---|---|")
    for label in ("ties", "linear", "lora"):
        f = figures.get(label)
        if not f:
            continue
        for tool in ("modelgit", "mergekit", "peft"):
            r = f.get(tool)
            if not r:
                continue
            print(f"| {label} | {tool if tool != 'peft' else 'PEFT cat'} | "
                  f"{', '.join(f'{w:.2f}' for w in r['walls_s'])} s | {r['wall_s']:.2f} s | "
                  f"{', '.join(f'{c:.2f}' for c in r['cpus_s'])} s | "
                  f"{fmt_mb(r['max_peak_rss_mb'])} | {r['split_at_max_peak_mb'][0]:,.0f} + "
                  f"{r['split_at_max_peak_mb'][1]:,.0f} MB | {fmt_mb(r['max_ru_maxrss_mb'])} | "
                  f"{r['user_s']:.1f} + {r['sys_s']:.1f} s | "
                  f"{', '.join(f'{x:.2f}' for x in r['loads_before'])} |")
        for combination in ("linear", "svd"):
            r = f.get(f"peft_{combination}")
            if r:
                print(f"| {label} | PEFT {combination} | {r['wall_s']:.2f} s | {r['wall_s']:.2f} s | "
                      f"{cpu_s(r):.2f} s | "
                      f"{fmt_mb(r['peak_rss_mb'])} | {r['anon_at_peak_mb']:,.0f} + {r['file_at_peak_mb']:,.0f} MB | "
                      f"{fmt_mb(r['ru_maxrss_mb'])} | {r['user_s']:.1f} + {r['sys_s']:.1f} s | "
                      f"{r['load_before']:.2f} |")
    f = figures.get("lora")
    if f:
        for key, r in (("cat", f["peft"]), ("linear", f.get("peft_linear")), ("svd", f.get("peft_svd"))):
            if r and "phases" in r:
                print(f"\nPEFT {key} phases (best run): " + ", ".join(f"{k[:-2]} {v:.2f} s" for k, v in r["phases"].items()))
        ref = f["vs_float64"]
        for label, parts in ref.items():
            print(f"{label} vs float64 reference: q/v weights max abs {parts['adapted']['max_abs']:.3g}, "
                  f"max rel {parts['adapted']['max_rel']:.3g}; untouched tensors max abs "
                  f"{parts['untouched']['max_abs']:.3g}")
    for method in ("ties", "linear", "lora"):
        e = (figures.get(method) or {}).get("equality")
        if e:
            print(f"{method} equality: {e['differing']:,} of {e['numel']:,} elements differ in "
                  f"{len(e['tensors_differing'])} tensors (worst {e['worst_tensor']}), max abs {e['max_abs']:.3g}, "
                  f"max rel {e['max_rel']:.3g}, allclose {e['allclose']}")
            if "ties" in e:
                t = e["ties"]
                print(f"  {t['at_ties']:,} of the {t['differing']:,} differing elements sit where some model's "
                      f"|delta| equals its TIES threshold exactly ({t['tied_entries']:,} such tied entries in "
                      f"those {t['tensors']} tensors)")
    if startup:
        print("\nCLI startup (best of 2): " + ", ".join(f"{k} {v:.2f} s" for k, v in startup.items()))


def environment(args, venv: str) -> dict:
    def out(*argv):
        try:
            return subprocess.run(argv, capture_output=True, text=True, cwd=REPO).stdout.strip()
        except OSError:
            return ""

    versions = json.loads(out(os.path.join(venv, "bin", "python"), os.path.abspath(__file__), "_helper",
                              "versions", "{}") or "{}")
    with open("/proc/meminfo") as handle:
        mem = int(handle.readline().split()[1]) * 1024
    return {"date": datetime.datetime.now().isoformat(timespec="seconds"), "rev": out("git", "rev-parse", "--short", "HEAD"),
            "cpus": os.cpu_count(), "mem_gb": round(mem / 1e9, 1), "python": platform.python_version(),
            "venv": venv, "reference_versions": versions, "numpy": np.__version__,
            "args": vars(args), "load_at_start": os.getloadavg()}


def main(argv=None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if argv and argv[0] == "_helper":
        HELPERS[argv[1]](argv[2:])
        return 0
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--size-mb", type=float, default=1024,
                        help="size of each merged model in MiB (default 1024); the LoRA base is 0.3x")
    parser.add_argument("--json", help="write every figure and run to this file")
    parser.add_argument("--workdir", help="where the temporary directory is created (default $TMPDIR or /tmp)")
    parser.add_argument("--keep", action="store_true", help="keep the temporary directory")
    parser.add_argument("--repeat", type=int, default=2, help="runs of each timed command (default 2; best kept)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--venv", help="venv with mergekit and peft (default /tmp/refvenv or "
                        "benchmarks/.venv-mergekit, created when missing)")
    parser.add_argument("--only", default="ties,linear,lora", help="comma-separated subset of ties,linear,lora")
    parser.add_argument("--no-wait", action="store_true",
                        help="do not wait for benchmarks/git.py or store.py to finish (smoke tests only)")
    parser.add_argument("--dtype", choices=["float32", "bfloat16"], default="float32",
                        help="dtype of the TIES/linear models and of their outputs (default float32)")
    parser.add_argument("--busy", type=int, default=0,
                        help="keep N extra processes spinning (`yes > /dev/null`) during the whole run, "
                             "to measure both tools on a loaded machine")
    parser.add_argument("--busy-warmup", type=float, default=60.0,
                        help="seconds the --busy processes run before the first measurement, so that "
                             "the 1-minute load average shows them (default 60)")
    args = parser.parse_args(argv)
    global WAIT_FOR_OTHERS
    WAIT_FOR_OTHERS = not args.no_wait
    args.methods = [m for m in args.only.split(",") if m]

    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))  # so that the temporary directory goes
    venv = ensure_venv(args.venv)
    env = environment(args, venv)
    say(f"reference venv {venv}: {env['reference_versions']}")
    workdir = tempfile.mkdtemp(prefix="modelgit-merge-bench-", dir=args.workdir)
    say(f"working in {workdir}")
    bench = Benchmark(args, venv, workdir)
    figures: dict = {}
    busy = start_busy(args.busy, args.busy_warmup)
    try:
        startup = bench.startup()
        if "ties" in args.methods or "linear" in args.methods:
            figures.update(bench.run_merges())
        if "lora" in args.methods:
            figures["lora"] = bench.run_lora()
    finally:
        stop_busy(busy)
        if args.keep:
            say(f"kept {workdir}")
        else:
            shutil.rmtree(workdir, ignore_errors=True)
    env["load_at_end"] = os.getloadavg()
    rows = table_rows(figures)
    m = bench.results.get("models", {})
    lm = bench.results.get("lora_model", {})
    print(f"\n{env['date']}, rev {env['rev']}, {env['cpus']} cores, {env['mem_gb']} GB RAM; "
          f"reference: {env['reference_versions']}")
    if m:
        print(f"merged models: {m['bytes'] / MB:,.1f} MB {m.get('dtype', 'float32')} each ({m['tensors']} tensors, "
              f"{m['dims']}), largest tensor {m['largest_tensor_bytes'] / MB:.1f} MB; busy processes: {args.busy}")
    if lm:
        print(f"LoRA base: {lm['bytes'] / MB:,.1f} MB fp32 ({lm['dims']}); 5 adapters of "
              f"{lm['adapter_bytes'] / MB:.2f} MB (r={LORA_RANK}, alpha={LORA_ALPHA}, q_proj + v_proj)")
    print_table(rows)
    print_details(figures, startup)
    if args.json:
        with open(args.json, "w") as handle:
            json.dump({"environment": env, "models": m, "lora_model": lm, "figures": figures, "table": rows,
                       "startup_s": startup, "runs": bench.results["runs"]}, handle, indent=2, default=str)
        say(f"wrote {args.json}")
    return 0 if all(r["pass"] is not False for r in rows) else 1


if __name__ == "__main__":
    sys.exit(main())
