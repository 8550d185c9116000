"""Regenerate ``mergekit_parity.json``: mergekit's own output for every config in ``mergekit_configs/``.

Not a test (no ``test_`` prefix). The configs are transcriptions of mergekit's example configs and
of the configurations its documentation describes, for the methods both tools share, with the
model names replaced by tiny local models (each file's header says where it comes from). This
script builds those models from fixed seeds (:func:`build_models`), runs ``mergekit-yaml`` on every
config, and pins each output tensor (dtype, shape and its exact bytes, base64) in the JSON file;
``test_mergekit_parity.py`` rebuilds the same models, runs ``modelgit merge`` on the unchanged
configs and compares, so the tests need no mergekit. Run it with a Python whose environment has
mergekit (outside the repository), e.g.::

    python3 -m venv --system-site-packages /tmp/mkvenv
    /tmp/mkvenv/bin/pip install 'torch==2.13.0' 'mergekit==0.1.5'
    /tmp/mkvenv/bin/python tests/merge/make_mergekit_parity.py

The models are rebuilt from torch's CPU generator (stable for the pinned torch); the JSON records a
hash of each model so that a test can tell a changed input from a changed result.
"""

from __future__ import annotations

import base64
import hashlib
import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path

import torch

HERE = Path(__file__).parent
CONFIGS = HERE / "mergekit_configs"
OUT = HERE / "mergekit_parity.json"

HIDDEN, INTERMEDIATE, VOCAB, LAYERS = 8, 12, 16, 4
FINE_TUNES = ("ft_a", "ft_b", "ft_c", "ft_d")
# configs whose method draws random masks at density < 1: the tools' generators differ, so the
# test compares statistics of the result, not values
RANDOM = {"multimerge-final.yml"}


def tensor_shapes(layers: int = LAYERS) -> list[tuple[str, tuple[int, ...]]]:
    """The tensors of the tiny Llama (names as in transformers' LlamaForCausalLM), in file order."""
    shapes = [("model.embed_tokens.weight", (VOCAB, HIDDEN))]
    for i in range(layers):
        p = f"model.layers.{i}."
        shapes += [(p + "input_layernorm.weight", (HIDDEN,)),
                   (p + "self_attn.q_proj.weight", (HIDDEN, HIDDEN)),
                   (p + "self_attn.k_proj.weight", (HIDDEN, HIDDEN)),
                   (p + "self_attn.v_proj.weight", (HIDDEN, HIDDEN)),
                   (p + "self_attn.o_proj.weight", (HIDDEN, HIDDEN)),
                   (p + "post_attention_layernorm.weight", (HIDDEN,)),
                   (p + "mlp.up_proj.weight", (INTERMEDIATE, HIDDEN)),
                   (p + "mlp.gate_proj.weight", (INTERMEDIATE, HIDDEN)),
                   (p + "mlp.down_proj.weight", (HIDDEN, INTERMEDIATE))]
    return shapes + [("model.norm.weight", (HIDDEN,)), ("lm_head.weight", (VOCAB, HIDDEN))]


def _family(seed: int, scale: float, delta: float, noise: float) -> dict[str, dict[str, torch.Tensor]]:
    """A base and four fine-tunes of it: ``base + delta * shared + noise * own`` per tensor, so
    that the task vectors agree in part (positive cosines, sign conflicts here and there)."""
    g = torch.Generator().manual_seed(seed)
    shapes = tensor_shapes()
    base = {name: scale * torch.randn(shape, generator=g) for name, shape in shapes}
    shared = {name: torch.randn(shape, generator=g) for name, shape in shapes}
    family = {"base": base}
    for tune in FINE_TUNES:
        family[tune] = {name: base[name] + delta * shared[name] + noise * torch.randn(shape, generator=g)
                        for name, shape in shapes}
    return family


def tokenizer_files(vocab: int = VOCAB) -> dict[str, str]:
    """A word-level tokenizer of ``vocab`` tokens (``[UNK]``, ``t1``... ), as tokenizer.json and
    tokenizer_config.json: enough for mergekit's and transformers' AutoTokenizer."""
    words = {"[UNK]": 0, **{f"t{i}": i for i in range(1, vocab)}}
    tokenizer = {"version": "1.0", "truncation": None, "padding": None,
                 "added_tokens": [{"id": 0, "content": "[UNK]", "single_word": False, "lstrip": False,
                                   "rstrip": False, "normalized": False, "special": True}],
                 "normalizer": None, "pre_tokenizer": {"type": "Whitespace"}, "post_processor": None,
                 "decoder": None, "model": {"type": "WordLevel", "vocab": words, "unk_token": "[UNK]"}}
    config = {"tokenizer_class": "PreTrainedTokenizerFast", "unk_token": "[UNK]", "model_max_length": 32}
    return {"tokenizer.json": json.dumps(tokenizer, indent=1) + "\n",
            "tokenizer_config.json": json.dumps(config, indent=1) + "\n"}


def model_config(dtype: str) -> dict:
    return {"architectures": ["LlamaForCausalLM"], "model_type": "llama", "hidden_size": HIDDEN,
            "intermediate_size": INTERMEDIATE, "num_hidden_layers": LAYERS, "num_attention_heads": 2,
            "num_key_value_heads": 2, "vocab_size": VOCAB, "max_position_embeddings": 32,
            "rms_norm_eps": 1e-6, "tie_word_embeddings": False, "torch_dtype": dtype}


def build_models(root: str | os.PathLike) -> dict[str, str]:
    """Write the tiny models under ``root`` and return a content hash per model directory.

    Two families: float32 models with large fine-tuning updates (``base``, ``ft_a``...), and
    bfloat16 ones with small updates, as real fine-tunes have (``bf16/base``, ``bf16/ft_a``...).
    """
    from safetensors.torch import save_file

    families = {"": (_family(0, 1.0, 0.3, 0.2), torch.float32, "float32"),
                "bf16/": (_family(1, 0.05, 0.002, 0.001), torch.bfloat16, "bfloat16")}
    hashes = {}
    for prefix, (family, dtype, dtype_name) in families.items():
        for name, tensors in family.items():
            directory = Path(root) / f"{prefix}{name}"
            directory.mkdir(parents=True, exist_ok=True)
            tensors = {k: v.to(dtype).contiguous() for k, v in tensors.items()}
            save_file(tensors, str(directory / "model.safetensors"))
            (directory / "config.json").write_text(json.dumps(model_config(dtype_name), indent=1) + "\n")
            for file_name, text in tokenizer_files().items():
                (directory / file_name).write_text(text)
            digest = hashlib.sha256()
            for key in sorted(tensors):
                digest.update(key.encode() + b"\0" + tensors[key].view(torch.uint8).reshape(-1).numpy().tobytes())
            hashes[f"{prefix}{name}"] = digest.hexdigest()
    return hashes


def encode_tensor(tensor: torch.Tensor) -> dict:
    """A tensor as JSON: dtype, shape and its little-endian bytes in base64 (exact, compact)."""
    data = tensor.contiguous().reshape(-1).view(torch.uint8).numpy().tobytes()
    return {"dtype": str(tensor.dtype).removeprefix("torch."), "shape": list(tensor.shape),
            "data": base64.b64encode(data).decode()}


def decode_tensor(record: dict) -> torch.Tensor:
    dtype = getattr(torch, record["dtype"])
    raw = bytearray(base64.b64decode(record["data"]))
    return torch.frombuffer(raw, dtype=torch.uint8).view(dtype).reshape(record["shape"]).clone()


SIXTEEN_BIT = ("float16", "fp16", "half", "bfloat16", "bf16")


def in_float32(config: Path, workdir: str) -> Path | None:
    """A copy of ``config`` computed and written in float32, when it asks for a 16-bit dtype."""
    import yaml

    data = yaml.safe_load(config.read_text())
    if str(data.get("out_dtype") or data.get("dtype")).lower() not in SIXTEEN_BIT:
        return None
    data.pop("out_dtype", None)
    data["dtype"] = "float32"
    path = Path(workdir) / (config.stem + ".as-float32.yml")
    path.write_text(yaml.safe_dump(data, sort_keys=False))
    return path


def _run_mergekit(config: Path, workdir: str, mergekit_yaml: str) -> dict:
    from safetensors.torch import load_file

    out = os.path.join(workdir, "out-" + config.stem)
    env = {**os.environ, "HF_HUB_OFFLINE": "1"}
    done = subprocess.run([mergekit_yaml, str(config), out, "--no-write-model-card", "--quiet",
                           "--random-seed", "0"], cwd=workdir, env=env, capture_output=True, text=True)
    if done.returncode != 0:
        raise SystemExit(f"mergekit failed on {config.name}:\n{done.stderr[-3000:]}")
    tensors = {}
    for name in sorted(os.listdir(out)):
        if name.endswith(".safetensors"):
            tensors.update(load_file(os.path.join(out, name)))
    return {name: encode_tensor(tensors[name]) for name in sorted(tensors)}


def main() -> int:
    from importlib.metadata import version

    mergekit_yaml = os.path.join(os.path.dirname(sys.executable), "mergekit-yaml")
    if not os.path.isfile(mergekit_yaml):
        raise SystemExit(f"no mergekit-yaml next to {sys.executable}: run this with mergekit's Python")
    configs = sorted(CONFIGS.glob("*.yml"))
    results = {}
    with tempfile.TemporaryDirectory() as workdir:
        hashes = build_models(workdir)
        for config in configs:
            print(f"mergekit-yaml {config.name}", file=sys.stderr)
            results[config.name] = {"random": config.name in RANDOM,
                                    "tensors": _run_mergekit(config, workdir, mergekit_yaml)}
            wide = in_float32(config, workdir)
            if wide is not None:
                results[config.name]["float32"] = _run_mergekit(wide, workdir, mergekit_yaml)
    doc = {"produced_by": {"mergekit": version("mergekit"), "torch": torch.__version__,
                           "script": "tests/merge/make_mergekit_parity.py"},
           "models": hashes, "configs": results}
    OUT.write_text(json.dumps(doc, indent=1, sort_keys=True) + "\n")
    print(f"wrote {len(results)} configs to {OUT}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
