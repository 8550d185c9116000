"""The streaming merge engine end to end: recipes, sources, sharding, determinism, dry runs."""

import json
import os
import subprocess
import sys

import numpy as np
import pytest
import torch
from safetensors.torch import load_file, save_file

from modelgit.errors import UsageError
from modelgit.merge.engine import run_merge
from modelgit.merge.recipe import layer_position, parse_recipe, resolve_value


def _model(path, seed, layers=3, extra=None):
    torch.manual_seed(seed)
    tensors = {"model.embed_tokens.weight": torch.randn(50, 16)}
    for i in range(layers):
        tensors[f"model.layers.{i}.self_attn.q_proj.weight"] = torch.randn(16, 16)
        tensors[f"model.layers.{i}.mlp.up_proj.weight"] = torch.randn(24, 16)
        tensors[f"model.layers.{i}.input_layernorm.weight"] = torch.ones(16) + 0.1 * torch.randn(16)
    tensors["lm_head.weight"] = torch.randn(50, 16)
    tensors["model.step"] = torch.tensor(7)
    tensors.update(extra or {})
    path.mkdir(parents=True, exist_ok=True)
    save_file(tensors, path / "model.safetensors")
    (path / "config.json").write_text(json.dumps({"num_hidden_layers": layers, "hidden_size": 16}))
    return tensors


@pytest.fixture
def three(tmp_path):
    return [_model(tmp_path / name, seed) for seed, name in enumerate(["base", "a", "b"])], tmp_path


def _recipe(tmp, method, **extra):
    from modelgit.merge.methods import METHODS

    takes = METHODS[method].model_params  # (linear takes no density; it merges the base as a model)
    data = {"merge_method": method, "base_model": str(tmp / "base"),
            "models": [{"model": str(tmp / m), "parameters": {k: v for k, v in (("weight", w), ("density", 0.5))
                                                               if k in takes}}
                       for m, w in (("a", 0.7), ("b", 0.3))],
            "dtype": "float32", **extra}
    return parse_recipe(data, json.dumps(data))


def test_linear_merge_matches_formula_and_records_provenance(three):
    (base, a, b), tmp = three
    data = {"merge_method": "linear", "models": [{"model": str(tmp / "a"), "parameters": {"weight": 3}},
                                                  {"model": str(tmp / "b"), "parameters": {"weight": 1}}]}
    run_merge(parse_recipe(data, "linear recipe"), str(tmp / "out"))
    out = load_file(tmp / "out" / "model.safetensors")
    name = "model.layers.1.mlp.up_proj.weight"
    torch.testing.assert_close(out[name], 0.75 * a[name] + 0.25 * b[name])
    assert out["model.step"].item() == 7  # integer tensors are copied, not averaged
    provenance = json.loads((tmp / "out" / "modelgit_merge.json").read_text())
    assert provenance["recipe"] == "linear recipe" and len(provenance["inputs"]) == 2
    assert all(len(i["content_id"]) == 64 for i in provenance["inputs"])
    assert json.loads((tmp / "out" / "config.json").read_text())["hidden_size"] == 16


def test_same_recipe_same_bytes_and_sharding(three):
    (_, _, _), tmp = three
    recipe = _recipe(tmp, "dare_ties")
    run_merge(recipe, str(tmp / "o1"), max_shard_bytes=4000)
    run_merge(recipe, str(tmp / "o2"), max_shard_bytes=4000)
    names = sorted(os.listdir(tmp / "o1"))
    assert "model.safetensors.index.json" in names and "model-00001-of-" in " ".join(names)
    for name in names:
        assert (tmp / "o1" / name).read_bytes() == (tmp / "o2" / name).read_bytes(), name
    index = json.loads((tmp / "o1" / "model.safetensors.index.json").read_text())
    assert set(index["weight_map"]) == set(_model(tmp / "again", 0))


def test_ties_single_model_weight_one_density_one_returns_it(three):
    (base, a, _), tmp = three
    data = {"merge_method": "ties", "base_model": str(tmp / "base"),
            "models": [{"model": str(tmp / "a"), "parameters": {"weight": 1.0, "density": 1.0}}]}
    run_merge(parse_recipe(data), str(tmp / "out"))
    out = load_file(tmp / "out" / "model.safetensors")
    for name, value in a.items():
        torch.testing.assert_close(out[name], value, atol=1e-6, rtol=1e-6)


def test_dry_run_reports_every_problem_at_once(three, tmp_path):
    (_, _, _), tmp = three
    _model(tmp / "small", 5, layers=2)
    _model(tmp / "wide", 6, extra={"model.layers.0.mlp.up_proj.weight": torch.randn(32, 16)})
    data = {"merge_method": "ties", "base_model": str(tmp / "base"),
            "models": [{"model": str(tmp / "small")}, {"model": str(tmp / "wide")},
                       {"model": str(tmp / "missing")}]}
    with pytest.raises(UsageError) as info:
        run_merge(parse_recipe(data), str(tmp / "out"), dry_run=True)
    message = str(info.value)
    assert "missing" in message and "no such file" in message
    data["models"] = data["models"][:2]
    with pytest.raises(UsageError) as info:
        run_merge(parse_recipe(data), str(tmp / "out"), dry_run=True)
    message = str(info.value)
    assert "lacks" in message and "small" in message
    assert "shape [32, 16]" in message
    assert not (tmp / "out").exists()


def test_recipe_validation_lists_all_problems():
    with pytest.raises(UsageError) as info:
        parse_recipe({"merge_method": "nope", "models": [{"modle": "x"}], "dtype": "int3",
                      "bogus": 1, "parameters": {"weight": {"a": 1}}})
    text = str(info.value)
    for part in ("nope", "model:", "int3", "bogus", "parameters.weight"):
        assert part in text


def test_mergekit_keys_are_supported_or_refused_never_ignored():
    recipe = parse_recipe({"merge_method": "linear", "models": ["a"], "tokenizer_source": "union"})
    assert recipe.tokenizer_source == "union" and not recipe.warnings  # checked when the inputs are open
    with pytest.raises(UsageError, match="`chat_template` is not supported"):
        parse_recipe({"merge_method": "linear", "models": ["a"], "chat_template": "auto"})


def test_gradients_and_filters():
    value = [{"filter": "self_attn", "value": [0, 1]}, {"filter": "mlp", "value": [1, 0]}, {"value": 0.5}]
    assert resolve_value(value, "model.layers.0.self_attn.q_proj.weight", 0.0) == 0.0
    assert resolve_value(value, "model.layers.3.mlp.up_proj.weight", 1.0) == 0.0
    assert resolve_value(value, "lm_head.weight", 1.0) == 0.5
    assert resolve_value([0.0, 0.5, 1.0], "x", 0.25) == pytest.approx(0.25)
    assert layer_position("model.layers.2.mlp.weight", 5) == 0.5
    assert layer_position("model.embed_tokens.weight", 5) == 0.0


def test_passthrough_slices_stack_layers(three):
    (base, a, _), tmp = three
    data = {"merge_method": "passthrough", "slices": [
        {"sources": [{"model": str(tmp / "base"), "layer_range": [0, 2]}]},
        {"sources": [{"model": str(tmp / "a"), "layer_range": [1, 3]}]}]}
    run_merge(parse_recipe(data), str(tmp / "out"))
    out = load_file(tmp / "out" / "model.safetensors")
    torch.testing.assert_close(out["model.layers.1.mlp.up_proj.weight"], base["model.layers.1.mlp.up_proj.weight"])
    torch.testing.assert_close(out["model.layers.2.mlp.up_proj.weight"], a["model.layers.1.mlp.up_proj.weight"])
    torch.testing.assert_close(out["model.layers.3.mlp.up_proj.weight"], a["model.layers.2.mlp.up_proj.weight"])
    assert json.loads((tmp / "out" / "config.json").read_text())["num_hidden_layers"] == 4


def test_cli_merge_quick_flags_and_bf16(three):
    (_, a, b), tmp = three
    result = subprocess.run([sys.executable, "-m", "modelgit", "merge", "--method", "linear",
                             "--model", str(tmp / "a"), "--model", str(tmp / "b"), "--dtype", "bfloat16",
                             "-o", str(tmp / "out")], capture_output=True, text=True)
    assert result.returncode == 0, result.stderr
    out = load_file(tmp / "out" / "model.safetensors")
    name = "model.layers.0.self_attn.q_proj.weight"
    assert out[name].dtype == torch.bfloat16
    torch.testing.assert_close(out[name].float(), ((a[name] + b[name]) / 2).bfloat16().float())
    result = subprocess.run([sys.executable, "-m", "modelgit", "merge", "--method", "ties", "--model", "nowhere",
                             "--dry-run"], capture_output=True, text=True)
    assert result.returncode == 2 and "needs a base_model" in result.stderr


def test_merge_adapters_into_a_new_adapter(tmp_path):
    from modelgit.merge.lora import save_adapter
    from modelgit.merge.sources import open_source

    _model(tmp_path / "base", 0)
    torch.manual_seed(3)
    name = "model.layers.0.self_attn.q_proj"
    for i in range(2):
        save_adapter(str(tmp_path / f"ad{i}"), {name: (torch.randn(16, 2) * 0.1, torch.randn(2, 16))}, 2, 4.0)
    data = {"merge_method": "task_arithmetic", "base_model": str(tmp_path / "base"),
            "models": [{"model": f"{tmp_path / 'base'}+{tmp_path / f'ad{i}'}", "parameters": {"weight": 1.0}}
                       for i in range(2)]}
    run_merge(parse_recipe(data), str(tmp_path / "merged"), adapter_rank=4)
    merged = open_source(f"{tmp_path / 'base'}+{tmp_path / 'merged'}").load(f"{name}.weight")
    expected = sum(open_source(f"{tmp_path / 'base'}+{tmp_path / f'ad{i}'}").load(f"{name}.weight")
                   for i in range(2)) - open_source(str(tmp_path / "base")).load(f"{name}.weight")
    torch.testing.assert_close(merged, expected, atol=1e-5, rtol=1e-5)


def test_fisher_merge_from_cli_estimated_fishers(tmp_path):
    transformers = pytest.importorskip("transformers")
    tokenizers = pytest.importorskip("tokenizers")
    config = transformers.LlamaConfig(vocab_size=40, hidden_size=16, intermediate_size=24, num_hidden_layers=1,
                                      num_attention_heads=2, num_key_value_heads=2)
    tok = tokenizers.Tokenizer(tokenizers.models.WordLevel({f"w{i}": i for i in range(40)} | {"[UNK]": 0},
                                                           unk_token="[UNK]"))
    tok.pre_tokenizer = tokenizers.pre_tokenizers.Whitespace()
    fast = transformers.PreTrainedTokenizerFast(tokenizer_object=tok, unk_token="[UNK]")
    for i in range(2):
        torch.manual_seed(i)
        transformers.LlamaForCausalLM(config).save_pretrained(tmp_path / f"m{i}")
        fast.save_pretrained(tmp_path / f"m{i}")
    (tmp_path / "data.txt").write_text("\n".join(" ".join(f"w{(i * j) % 40}" for j in range(6)) for i in range(5)))
    for i in range(2):
        result = subprocess.run([sys.executable, "-m", "modelgit", "fisher", str(tmp_path / f"m{i}"), "--data",
                                 str(tmp_path / "data.txt"), "-o", str(tmp_path / f"f{i}.safetensors")],
                                capture_output=True, text=True)
        assert result.returncode == 0, result.stderr
    data = {"merge_method": "fisher", "models": [
        {"model": str(tmp_path / f"m{i}"), "parameters": {"fisher": str(tmp_path / f"f{i}.safetensors")}}
        for i in range(2)]}
    run_merge(parse_recipe(data), str(tmp_path / "out"))
    out = load_file(tmp_path / "out" / "model.safetensors")
    f = [load_file(tmp_path / f"f{i}.safetensors") for i in range(2)]
    m = [load_file(tmp_path / f"m{i}" / "model.safetensors") for i in range(2)]
    name = "model.layers.0.mlp.up_proj.weight"
    fa, fb = f[0][name].clamp(min=1e-8), f[1][name].clamp(min=1e-8)
    torch.testing.assert_close(out[name], (fa * m[0][name] + fb * m[1][name]) / (fa + fb), atol=1e-6, rtol=1e-5)
    assert not torch.allclose(out[name], (m[0][name] + m[1][name]) / 2)


def test_dry_run_reports_architecture_mismatch(three):
    (_, _, _), tmp = three
    (tmp / "a" / "config.json").write_text(json.dumps({"architectures": ["LlamaForCausalLM"]}))
    (tmp / "b" / "config.json").write_text(json.dumps({"architectures": ["GPT2LMHeadModel"]}))
    with pytest.raises(UsageError, match="different architectures"):
        run_merge(_recipe(tmp, "ties"), str(tmp / "out"), dry_run=True)


def _adapters(tmp_path, count=3):
    """PEFT adapters on the `_model` layout: q_proj of both layers, plus up_proj in the second."""
    from modelgit.merge.lora import save_adapter

    g = torch.Generator().manual_seed(5)
    paths = []
    for i in range(count):
        modules = {f"model.layers.{j}.self_attn.q_proj": (torch.randn(16, 2, generator=g),
                                                          torch.randn(2, 16, generator=g)) for j in range(2)}
        if i == 1:
            modules["model.layers.0.mlp.up_proj"] = (torch.randn(24, 2, generator=g), torch.randn(2, 16, generator=g))
        save_adapter(str(tmp_path / f"ad{i}"), modules, 2, 4.0)
        paths.append(str(tmp_path / f"ad{i}"))
    return paths


@pytest.mark.parametrize("method", ["ties", "dare_ties", "task_arithmetic", "della_linear", "linear"])
def test_adapter_inputs_share_the_base_and_merge_like_separate_inputs(three, method, monkeypatch):
    """BASE+ADAPTER specs read one base, hashed once; tensors no adapter touches skip the method
    where that is exact. The output is bit for bit the method on separately loaded inputs."""
    from modelgit.merge.base import METHODS, MergeInputs
    from modelgit.merge.engine import _params_for, plan_merge
    from modelgit.merge.sources import CheckpointSource, open_source

    (_, _, _), tmp = three
    adapters = _adapters(tmp)
    base = str(tmp / "base")
    data = {"merge_method": method, "base_model": base, "dtype": "float32",
            "models": [{"model": f"{base}+{ad}", "parameters": {"weight": w, "density": 0.5}}
                       for ad, w in zip(adapters, (0.6, -0.3, 0.5))]}
    if method == "linear":  # it would merge a base_model as one more model, and takes no density
        del data["base_model"]
        for m in data["models"]:
            del m["parameters"]["density"]
    recipe = parse_recipe(data, json.dumps(data))
    hashed = []
    original = CheckpointSource._hash
    monkeypatch.setattr(CheckpointSource, "_hash", lambda self: hashed.append(self.label) or original(self))
    run_merge(recipe, str(tmp / "out"))
    assert hashed == [base]
    out = load_file(tmp / "out" / "model.safetensors")
    plan = plan_merge(recipe)
    separate = [open_source(f"{base}+{ad}") for ad in adapters]  # unshared: nothing is skipped
    plain = open_source(base)
    for o in plan.outputs:
        if o.copy_only:
            continue
        per_model, options = _params_for(plan, o)
        inputs = MergeInputs(plain.load(o.name) if METHODS[method].needs_base else None,
                             [s.load(o.name) for s in separate], per_model, options, o.name)
        expected = METHODS[method].fn(inputs)
        assert torch.equal(out[o.name].view(torch.int32), expected.view(torch.int32)), o.name
    for source in [*separate, plain]:
        source.close()
    plan.close()


@pytest.mark.parametrize("method", ["linear", "ties", "dare_ties", "breadcrumbs_ties"])
def test_streamed_merges_never_load_a_whole_float_input(three, method, monkeypatch):
    from modelgit.dtypes import FLOAT_DTYPES
    from modelgit.merge.sources import CheckpointSource

    (_, _, _), tmp = three
    original = CheckpointSource.load

    def load(self, name):
        assert self.tensors()[name].dtype not in FLOAT_DTYPES, f"{name} loaded whole"
        return original(self, name)

    monkeypatch.setattr(CheckpointSource, "load", load)
    run_merge(_recipe(tmp, method), str(tmp / "out"))
    assert load_file(tmp / "out" / "model.safetensors")["model.step"].item() == 7


def test_writer_checks_the_parts_of_a_tensor(tmp_path):
    from modelgit.merge.writer import PlannedTensor, ShardedWriter

    planned = [PlannedTensor("a", "F32", (4,)), PlannedTensor("b", "F32", (2,))]
    writer = ShardedWriter(str(tmp_path / "out"), planned, {})
    writer.write_parts("a", [b"\0" * 4, b"\1" * 12])
    with pytest.raises(ValueError, match="expected 8 bytes of b, got more"):
        writer.write_parts("b", [b"\0" * 4, b"\0" * 8])
    writer.abort()
    writer = ShardedWriter(str(tmp_path / "out"), [PlannedTensor("a", "F32", (4,))], {})
    with pytest.raises(ValueError, match="expected 16 bytes of a, got 12"):
        writer.write_parts("a", [b"\0" * 12])
    writer.abort()
    assert not (tmp_path / "out").exists()
