"""Build small seeded models, merge them with every method, and pin the output bytes.

``output_digests.json`` holds the sha256 of every output file of :data:`RECIPES` as the merge
engine wrote them when the file was made; ``test_output_bits.py`` rebuilds the inputs (numpy
generators with fixed seeds: the same bytes on every machine) and checks that today's engine
writes the same bytes, sequentially and with its thread pool. Re-run this script only when a
change of the output bits is intended, and say why in the commit::

    PYTHONPATH=src python3 tests/merge/make_output_digests.py

The inputs are built to catch what a faster engine could get wrong: task vectors with many
exactly tied magnitudes (the fine-tunes add noise rounded to a grid, and some tensors of one
fine-tune equal the base's), tensors of 1, 16 and 17 elements (the sort's small-segment
threshold) and one of 122,880 (many partition levels), bf16 inputs, an integer tensor, a PEFT
LoRA adapter over the base, and Fisher files.
"""

from __future__ import annotations

import hashlib
import json
import os
import sys
from pathlib import Path

import numpy as np
import torch
from safetensors.torch import save_file

HERE = Path(__file__).parent
DIGESTS = HERE / "output_digests.json"

SHAPES = {
    "model.embed_tokens.weight": (300, 40),
    "model.layers.0.self_attn.q_proj.weight": (64, 64),
    "model.layers.0.mlp.up_proj.weight": (96, 64),
    "model.layers.0.input_layernorm.weight": (64,),
    "model.layers.1.self_attn.q_proj.weight": (64, 64),
    "model.layers.1.mlp.up_proj.weight": (96, 64),
    "model.layers.1.input_layernorm.weight": (64,),
    "model.big.weight": (320, 384),
    "model.one.weight": (1,),
    "model.sixteen.weight": (16,),
    "model.seventeen.weight": (17,),
    "model.zeros.weight": (33, 3),
    "lm_head.weight": (300, 40),
}
FINE_TUNES = ("ft1", "ft2", "ft3")
# tensors that ft3 leaves as the base has them (its task vector there is exactly zero)
UNCHANGED_IN_FT3 = ("model.layers.1.mlp.up_proj.weight", "model.sixteen.weight")


def _tensors(seed: int) -> dict[str, dict[str, np.ndarray]]:
    """name -> {base, ft1, ft2, ft3} arrays in float32."""
    out: dict[str, dict[str, np.ndarray]] = {}
    for index, (name, shape) in enumerate(SHAPES.items()):
        rng = np.random.default_rng([seed, index])
        if name == "model.zeros.weight":
            base = np.zeros(shape, np.float32)
        elif len(shape) == 1:
            base = (1 + 0.05 * rng.standard_normal(shape)).astype(np.float32)
        else:
            base = (0.02 * rng.standard_normal(shape)).astype(np.float32)
        models = {"base": base}
        for k, ft in enumerate(FINE_TUNES):
            noise = np.random.default_rng([seed, index, k + 1]).standard_normal(shape)
            step = 1e-3 * (0.02 if len(shape) > 1 else 0.05)
            # rounded to a grid: many task-vector entries share one magnitude
            delta = (np.round(noise * 8) * step).astype(np.float32)
            if name == "model.zeros.weight":
                delta[:] = 0
            models[ft] = base if (ft == "ft3" and name in UNCHANGED_IN_FT3) else base + delta
        out[name] = models
    return out


def build_inputs(root: Path, seed: int = 0) -> dict[str, Path]:
    """Write base/, ft1..ft3/ (float32), their bf16 copies (``*-bf16``), a LoRA adapter over
    base and a Fisher file per fine-tune under ``root``; returns the paths by label."""
    tensors = _tensors(seed)
    paths: dict[str, Path] = {}
    for label in ("base", *FINE_TUNES):
        for suffix, dtype in (("", torch.float32), ("-bf16", torch.bfloat16)):
            state = {n: torch.from_numpy(m[label].copy()).to(dtype) for n, m in tensors.items()}
            state["model.step"] = torch.tensor([7, 8], dtype=torch.int64)
            directory = root / f"{label}{suffix}"
            directory.mkdir(parents=True, exist_ok=True)
            save_file(state, directory / "model.safetensors")
            (directory / "config.json").write_text(json.dumps({"num_hidden_layers": 2, "hidden_size": 64}))
            paths[f"{label}{suffix}"] = directory
    for k, ft in enumerate(FINE_TUNES):
        rng = np.random.default_rng([seed, 100 + k])
        fisher = {n: torch.from_numpy(rng.random(shape, dtype=np.float32) + 0.01) for n, shape in SHAPES.items()}
        save_file(fisher, root / f"fisher-{ft}.safetensors")
        paths[f"fisher-{ft}"] = root / f"fisher-{ft}.safetensors"
    adapter = root / "adapter"
    adapter.mkdir(exist_ok=True)
    rng = np.random.default_rng([seed, 200])
    lora = {}
    for layer in (0, 1):
        prefix = f"base_model.model.model.layers.{layer}.self_attn.q_proj"
        lora[f"{prefix}.lora_A.weight"] = torch.from_numpy((0.1 * rng.standard_normal((4, 64))).astype(np.float32))
        lora[f"{prefix}.lora_B.weight"] = torch.from_numpy((0.01 * rng.standard_normal((64, 4))).astype(np.float32))
    save_file(lora, adapter / "adapter_model.safetensors")
    (adapter / "adapter_config.json").write_text(json.dumps({
        "peft_type": "LORA", "r": 4, "lora_alpha": 8, "target_modules": ["q_proj"],
        "base_model_name_or_path": str(paths["base"])}))
    paths["adapter"] = adapter
    return paths


def _models(paths, labels, **params):
    return [{"model": str(paths[label]), "parameters": {k: (v[i] if isinstance(v, list) else v)
                                                        for k, v in params.items()}}
            for i, label in enumerate(labels)]


def recipes(paths: dict[str, Path]) -> dict[str, dict]:
    """Every recipe whose output bytes are pinned, by id."""
    fts = list(FINE_TUNES)
    weights = [0.5, 0.3, 0.2]
    base = str(paths["base"])
    out = {
        "linear": {"merge_method": "linear", "models": _models(paths, fts, weight=weights)},
        "linear_raw": {"merge_method": "linear", "models": _models(paths, fts, weight=[1.0, -0.5, 2.0]),
                       "parameters": {"normalize": False}},
        "slerp_base": {"merge_method": "slerp", "base_model": base, "models": _models(paths, ["ft1"]),
                       "parameters": {"t": 0.3}},
        "slerp_pair": {"merge_method": "slerp", "models": _models(paths, ["ft1", "ft2"]),
                       "parameters": {"t": 0.7}},
        "passthrough": {"merge_method": "passthrough", "models": _models(paths, ["ft2"], scale=0.5)},
        "model_stock": {"merge_method": "model_stock", "base_model": base, "models": _models(paths, fts)},
        "fisher": {"merge_method": "fisher", "models": [
            {"model": str(paths[ft]), "parameters": {"weight": w, "fisher": str(paths[f"fisher-{ft}"])}}
            for ft, w in zip(fts, weights)]},
        "task_arithmetic": {"merge_method": "task_arithmetic", "base_model": base,
                            "models": _models(paths, fts, weight=weights), "parameters": {"lambda": 0.9}},
        "ties": {"merge_method": "ties", "base_model": base,
                 "models": _models(paths, fts, weight=weights, density=0.5)},
        "ties_graded_rescale": {"merge_method": "ties", "base_model": base,
                                "models": _models(paths, fts, weight=weights, density=[0.3, 0.7, 0.05]),
                                "parameters": {"rescale": True, "normalize": False, "lambda": 1.3}},
        "ties_filtered": {"merge_method": "ties", "base_model": base, "models": _models(paths, fts, weight=weights),
                          "parameters": {"density": [{"filter": "mlp", "value": 0.9}, {"value": 0.5}]}},
        "ties_bf16": {"merge_method": "ties", "base_model": str(paths["base-bf16"]),
                      "models": _models(paths, [f"{ft}-bf16" for ft in fts], weight=weights, density=0.5),
                      "dtype": "bfloat16"},
        "ties_bf16_to_f32": {"merge_method": "ties", "base_model": str(paths["base-bf16"]),
                             "models": _models(paths, [f"{ft}-bf16" for ft in fts], weight=weights,
                                               density=0.4),
                             "dtype": "float32"},
        "dare_linear": {"merge_method": "dare_linear", "base_model": base,
                        "models": _models(paths, fts, weight=weights, density=0.5), "seed": 3},
        "dare_ties": {"merge_method": "dare_ties", "base_model": base,
                      "models": _models(paths, fts, weight=weights, density=0.5), "seed": 3},
        "breadcrumbs": {"merge_method": "breadcrumbs", "base_model": base,
                        "models": _models(paths, fts, weight=weights, density=0.6, gamma=0.1)},
        "breadcrumbs_ties": {"merge_method": "breadcrumbs_ties", "base_model": base,
                             "models": _models(paths, fts, weight=weights, density=0.6, gamma=0.1),
                             "parameters": {"rescale": True}},
        "della": {"merge_method": "della", "base_model": base,
                  "models": _models(paths, fts, weight=weights, density=0.5, epsilon=0.1)},
        "della_linear": {"merge_method": "della_linear", "base_model": base,
                         "models": _models(paths, fts, weight=weights, density=0.5, epsilon=0.1)},
        "ties_adapter": {"merge_method": "ties", "base_model": base,
                         "models": [{"model": f"{base}+{paths['adapter']}",
                                     "parameters": {"weight": 0.6, "density": 0.5}},
                                    *_models(paths, ["ft1"], weight=0.4, density=0.5)]},
    }
    return {name: {**recipe, "dtype": recipe.get("dtype", "float32")} for name, recipe in out.items()}


def output_digests(out_dir: Path) -> dict[str, str]:
    """sha256 of every file of a merge output except the provenance files (they name the
    temporary paths of the inputs)."""
    skip = {"modelgit_merge.json", "merge_recipe.yaml"}
    digests = {}
    for name in sorted(os.listdir(out_dir)):
        if name in skip:
            continue
        data = (out_dir / name).read_bytes()
        if name.endswith(".safetensors"):
            data = _without_metadata(data)
        digests[name] = hashlib.sha256(data).hexdigest()
    return digests


def _without_metadata(data: bytes) -> bytes:
    """A safetensors file's tensor table and data, without ``__metadata__`` (the provenance,
    which names the temporary input paths)."""
    size = int.from_bytes(data[:8], "little")
    header = json.loads(data[8:8 + size])
    header.pop("__metadata__", None)
    return json.dumps(header, sort_keys=True).encode() + data[8 + size:]


def merge_all(root: Path, names=None) -> dict[str, dict[str, str]]:
    from modelgit.merge.engine import run_merge
    from modelgit.merge.recipe import parse_recipe

    paths = build_inputs(root / "inputs")
    result = {}
    for name, data in recipes(paths).items():
        if names is not None and name not in names:
            continue
        out = root / f"out-{name}"
        run_merge(parse_recipe(data, json.dumps(data)), str(out), progress=False, max_shard_bytes=200_000)
        result[name] = output_digests(out)
    return result


if __name__ == "__main__":
    import tempfile

    with tempfile.TemporaryDirectory() as tmp:
        digests = merge_all(Path(tmp))
    DIGESTS.write_text(json.dumps({"produced_by": sys.argv[1] if len(sys.argv) > 1 else "",
                                   "digests": digests}, indent=1, sort_keys=True) + "\n")
    print(f"wrote {DIGESTS} ({len(digests)} recipes)")
