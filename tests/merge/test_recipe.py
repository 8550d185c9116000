"""Recipes: strict keys with the closest valid name, mergekit's parameter semantics, refused keys."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest
import torch
from safetensors.torch import load_file, save_file

from modelgit.errors import UsageError
from modelgit.merge.engine import run_merge
from modelgit.merge.parameters import evaluate, layer_position, resolve, method_params
from modelgit.merge.methods import METHODS
from modelgit.merge.recipe import load_recipe, parse_recipe


def _problems(data: dict) -> str:
    with pytest.raises(UsageError) as info:
        parse_recipe(data)
    return str(info.value)


TIES = {"merge_method": "ties", "base_model": "base", "models": [{"model": "a"}, {"model": "b"}]}


@pytest.mark.parametrize("where", ["model", "top"])
def test_a_misspelled_parameter_is_an_error_naming_the_right_one(where):
    data = json.loads(json.dumps(TIES))
    if where == "model":
        data["models"][0]["parameters"] = {"densty": 0.5, "weight": 1.0}
    else:
        data["parameters"] = {"densty": 0.5}
    text = _problems(data)
    assert "unknown parameter `densty` for ties" in text and "did you mean `density`?" in text
    assert "ties takes weight, density per model" in text  # and what it does take


def test_unknown_keys_everywhere_name_the_closest_valid_key():
    text = _problems({"merge_methd": "ties", "base_model": "base", "dtyp": "bfloat16",
                      "models": [{"modle": "a"}, {"model": "b", "parameter": {"weight": 1}},
                                 {"model": "c", "parameters": {"weight": [{"filtr": "mlp", "value": 1}]}}]})
    for expected in ("unknown key `merge_methd` (did you mean `merge_method`?)",
                     "unknown key `dtyp` (did you mean `dtype`?)",
                     "unknown key `modle` (did you mean `model`?)",
                     "unknown key `parameter` (did you mean `parameters`?)",
                     "unknown key `filtr` (did you mean `filter`?)",
                     "the recipe needs `merge_method:`"):
        assert expected in text, expected


def test_unknown_method_names_the_closest_and_mergekit_only_methods_say_so():
    assert "unknown merge_method `tie` (did you mean `ties`?)" in _problems({**TIES, "merge_method": "tie"})
    text = _problems({**TIES, "merge_method": "nuslerp"})
    assert "mergekit method that modelgit does not implement" in text


def test_a_global_parameter_on_one_model_is_an_error():
    data = {"merge_method": "slerp", "base_model": "a", "models": [{"model": "a"}, {"model": "b", "parameters": {"t": 0.3}}]}
    text = _problems(data)
    assert "`t` is a global parameter of slerp" in text and "top-level `parameters:`" in text


@pytest.mark.parametrize("extra, named", [
    ({"chat_template": "chatml"}, "`chat_template` is not supported by modelgit"),
    ({"modules": {"text": {}}}, "`modules` is not supported by modelgit"),
    ({"out_path": "./x"}, "`out_path` is not supported by modelgit: that is a mergekit-mega key"),
    ({"tokenizer": {"source": "union", "tokens": {"<x>": {"source": "a"}}}}, "`tokens` is not supported"),
    ({"tokenizer": {"source": "union", "pad_to_multiple_of": 64}}, "`pad_to_multiple_of` is not supported"),
    ({"tokenizer_source": "union", "tokenizer": {"source": "base"}}, "not both"),
])
def test_mergekit_keys_modelgit_lacks_are_refused_by_name(extra, named):
    assert named in _problems({**TIES, **extra})


def test_layer_range_under_models_and_residual_weight_are_refused():
    text = _problems({**TIES, "models": [{"model": "a", "layer_range": [0, 2]}]})
    assert "`layer_range` is not supported by modelgit: it is read only on a slice's sources" in text
    text = _problems({"merge_method": "passthrough", "slices": [
        {"sources": [{"model": "a", "layer_range": [0, 2]}], "residual_weight": 0.5}]})
    assert "`residual_weight` is not supported by modelgit" in text


def test_empty_tokenizer_options_and_mergekit_defaults_are_accepted():
    recipe = parse_recipe({**TIES, "tokenizer": {"source": "base", "tokens": {}, "pad_to_multiple_of": None},
                           "parameters": {"int8_mask": True, "normalize": True}, "name": "first-merge"})
    assert recipe.tokenizer_source == "base" and recipe.name == "first-merge"
    assert parse_recipe({**TIES, "tokenizer": {}}).tokenizer_source == "union"  # mergekit's default source


def test_values_are_checked_by_type_and_yaml_strings_are_numbers():
    text = _problems({**TIES, "parameters": {"density": "high", "normalize": 0.5, "lambda": [1, [2]],
                                             "weight": float("nan")}, "models": "a"})
    assert "parameters.density: expected a finite number, got 'high'" in text
    assert "parameters.weight: expected a finite number, got nan" in text
    assert "models: expected a list, got 'a'" in text
    assert "parameters.normalize: expected true or false" in text
    assert "parameters.lambda: expected a list of values" in text
    recipe = parse_recipe({**TIES, "parameters": {"density": "1e-1"}})  # YAML 1.1 reads 1e-1 as a string
    assert resolve(method_params(METHODS["ties"])["density"], [recipe.parameters], "x", 0.0) == 0.1


def test_every_problem_is_reported_at_once():
    text = _problems({"merge_method": "ties", "models": [{"model": "a", "parameters": {"densty": 1}}],
                      "dtype": "int3", "bogus": 1})
    for part in ("densty", "int3", "bogus"):
        assert part in text


def test_input_counts_follow_mergekits_contract():
    slerp = {"merge_method": "slerp", "base_model": "a", "models": [{"model": "a"}, {"model": "b"}]}
    parse_recipe(slerp)  # the canonical config: the base among the two models
    text = _problems({**slerp, "models": [{"model": "a"}, {"model": "b"}, {"model": "c"}]})
    assert "slerp takes exactly 2 inputs counting the base, got 3" in text
    text = _problems({"merge_method": "passthrough", "base_model": "a", "models": [{"model": "b"}]})
    assert "passthrough takes exactly 1 inputs counting the base, got 2" in text
    assert "a base_model is one of its inputs" in text
    text = _problems({"merge_method": "model_stock", "base_model": "a", "models": [{"model": "a"}, {"model": "b"}]})
    assert "model_stock takes at least 3 inputs" in text
    text = _problems({"merge_method": "slerp", "base_model": "c", "slices": [{"sources": [
        {"model": "a", "layer_range": [0, 2]}, {"model": "b", "layer_range": [0, 2]}]}]})
    assert "its base_model c is not among its sources" in text


def test_what_becomes_of_the_base_is_said():
    recipe = parse_recipe({**TIES, "models": [{"model": "base/", "parameters": {"weight": 5}}, {"model": "a"}]})
    assert any("is the base_model of ties: its parameters (weight) are not used" in w for w in recipe.warnings)
    recipe = parse_recipe({"merge_method": "linear", "base_model": "base", "models": ["a", "b"]})
    assert any("base_model base is merged as one more model" in w for w in recipe.warnings)
    recipe = parse_recipe({"merge_method": "task_arithmetic", "base_model": "base",
                           "models": [{"model": "a", "parameters": {"density": 0.5}}]})
    assert any("`density` has no effect on task_arithmetic" in w for w in recipe.warnings)


def test_several_yaml_documents_are_refused(tmp_path):
    path = tmp_path / "multi.yml"
    path.write_text("merge_method: linear\nmodels: [a]\n---\nmerge_method: linear\nmodels: [b]\n")
    with pytest.raises(UsageError, match="holds 2 YAML documents"):
        load_recipe(str(path))


# -- parameter values, resolved as mergekit does ---------------------------------------------------

def test_filters_gradients_and_levels_resolve_as_in_mergekit():
    spec = method_params(METHODS["ties"])["density"]
    assert evaluate({"filter": "mlp", "value": 0.3}, "model.layers.0.mlp.up_proj.weight", 0.0) == 0.3
    assert evaluate([{"filter": "*", "value": [0, 1]}], "anything", 0.25) == 0.25
    assert evaluate([{"filter": "mlp", "value": 1}], "model.layers.0.self_attn.q_proj.weight", 0.0) is None
    assert evaluate([0, 0.5, 0.3, 0.7, 1], "x", 1 / 3) == pytest.approx(0.5 * 2 / 3 + 0.3 / 3)
    assert evaluate([True, False], "x", 0.9, "bool") is True  # discrete values are picked, not blended
    # a filter that misses the tensor passes it to the next level, not to the default
    levels = [{"density": [{"filter": "mlp", "value": 0.2}]}, {"density": 0.6}]
    assert resolve(spec, levels, "model.layers.1.self_attn.q_proj.weight", 0.0) == 0.6
    assert resolve(spec, levels, "model.layers.1.mlp.up_proj.weight", 0.0) == 0.2
    assert resolve(spec, [{}], "x", 0.0) == 1.0


def test_tensors_outside_the_layers_take_the_first_value_of_a_gradient():
    # mergekit 0.1.5 plans the final norm and the LM head at t = 0, like the embeddings
    assert layer_position("lm_head.weight", 4) == 0.0
    assert layer_position("model.norm.weight", 4) == 0.0
    assert layer_position("model.layers.2.mlp.up_proj.weight", 5) == 0.5
    assert layer_position("model.layers.0.mlp.up_proj.weight", 1) == 1.0  # one layer: t = 1, as mergekit


# -- through the engine and the CLI ----------------------------------------------------------------

def _tiny(path, seed, vocab=("a", "b", "c")):
    g = torch.Generator().manual_seed(seed)
    tensors = {"model.embed_tokens.weight": torch.randn(len(vocab), 4, generator=g),
               **{f"model.layers.{i}.mlp.up_proj.weight": torch.randn(6, 4, generator=g) for i in range(2)},
               "lm_head.weight": torch.randn(len(vocab), 4, generator=g)}
    path.mkdir(parents=True, exist_ok=True)
    save_file(tensors, path / "model.safetensors")
    (path / "config.json").write_text(json.dumps({"num_hidden_layers": 2}))
    model = {"type": "WordLevel", "vocab": {w: i for i, w in enumerate(vocab)}, "unk_token": vocab[0]}
    (path / "tokenizer.json").write_text(json.dumps({"model": model, "added_tokens": [], "truncation": None}))
    (path / "tokenizer_config.json").write_text(json.dumps({"name": path.name}))
    return tensors


def test_dry_run_of_a_misspelled_recipe_fails_naming_the_key(tmp_path):
    for name in ("base", "a"):
        _tiny(tmp_path / name, len(name))
    recipe = tmp_path / "recipe.yml"
    recipe.write_text(f"merge_method: ties\nbase_model: {tmp_path / 'base'}\nmodels:\n"
                      f"  - model: {tmp_path / 'a'}\n    parameters: {{densty: 0.5}}\n")
    for args in (["--dry-run"], ["-o", str(tmp_path / "out")]):
        done = subprocess.run([sys.executable, "-m", "modelgit", "merge", str(recipe), *args],
                              capture_output=True, text=True)
        assert done.returncode == 2, done.stdout
        assert "did you mean `density`?" in done.stderr and "Traceback" not in done.stderr
    assert not (tmp_path / "out").exists()
    done = subprocess.run([sys.executable, "-m", "modelgit", "merge", "--method", "linear", "--model",
                           str(tmp_path / "a"), "--param", "normalise=false", "--dry-run"],
                          capture_output=True, text=True)
    assert done.returncode == 2 and "did you mean `normalize`?" in done.stderr


def test_tokenizer_source_needs_one_vocabulary(tmp_path):
    _tiny(tmp_path / "base", 0)
    a = _tiny(tmp_path / "a", 1)
    _tiny(tmp_path / "other", 2, vocab=("x", "y", "z"))
    data = {"merge_method": "linear", "tokenizer_source": str(tmp_path / "a"),
            "models": [{"model": str(tmp_path / "base")}, {"model": str(tmp_path / "a")}]}
    run_merge(parse_recipe(data), str(tmp_path / "out"), progress=False)
    # the output carries the chosen model's tokenizer files
    assert json.loads((tmp_path / "out" / "tokenizer_config.json").read_text()) == {"name": "a"}
    merged = load_file(tmp_path / "out" / "model.safetensors")
    assert merged["lm_head.weight"].shape == a["lm_head.weight"].shape
    data["models"].append({"model": str(tmp_path / "other")})
    with pytest.raises(UsageError, match="the inputs have different vocabularies") as info:
        run_merge(parse_recipe(data), str(tmp_path / "out2"), dry_run=True)
    assert str(tmp_path / "other") in str(info.value)
    (tmp_path / "other" / "tokenizer.json").unlink()
    with pytest.raises(UsageError, match="has no tokenizer files"):
        run_merge(parse_recipe(data), str(tmp_path / "out2"), dry_run=True)


def test_the_recipes_seed_seeds_the_random_methods(tmp_path):
    _tiny(tmp_path / "base", 0)
    for i, name in enumerate(("a", "b")):
        _tiny(tmp_path / name, i + 1)
    data = {"merge_method": "dare_ties", "base_model": str(tmp_path / "base"),
            "models": [{"model": str(tmp_path / m), "parameters": {"density": 0.5}} for m in ("a", "b")]}
    outs = []
    for i, seed in enumerate((0, 1, 1)):
        run_merge(parse_recipe({**data, "seed": seed}), str(tmp_path / f"o{i}"), progress=False)
        outs.append(load_file(tmp_path / f"o{i}" / "model.safetensors")["lm_head.weight"])
    assert not torch.equal(outs[0], outs[1]) and torch.equal(outs[1], outs[2])
    # a seed among the parameters wins over the top-level one
    run_merge(parse_recipe({**data, "seed": 1, "parameters": {"seed": 0}}), str(tmp_path / "o3"), progress=False)
    assert torch.equal(load_file(tmp_path / "o3" / "model.safetensors")["lm_head.weight"], outs[0])


def test_a_layer_range_past_the_models_layers_is_a_problem(tmp_path):
    _tiny(tmp_path / "a", 0)
    data = {"merge_method": "passthrough", "slices": [{"sources": [{"model": str(tmp_path / "a"),
                                                                    "layer_range": [1, 4]}]}]}
    with pytest.raises(UsageError, match=r"has no layer 2 \(layer_range \[1, 4\]\)"):
        run_merge(parse_recipe(data), str(tmp_path / "out"), dry_run=True)


def test_warnings_go_to_stderr_and_into_the_json_summary(tmp_path):
    for name in ("base", "a"):
        _tiny(tmp_path / name, len(name))
    done = subprocess.run([sys.executable, "-m", "modelgit", "merge", "--method", "linear", "--base",
                           str(tmp_path / "base"), "--model", str(tmp_path / "a"), "--dry-run", "--json"],
                          capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
    summary = json.loads(done.stdout)  # stdout stays JSON
    assert summary["inputs"] == [str(tmp_path / "base"), str(tmp_path / "a")]
    assert any("merged as one more model" in w for w in summary["warnings"])
    assert "modelgit: warning:" in done.stderr


def test_the_output_dtype_leaves_integer_buffers_alone(tmp_path):
    for i, name in enumerate(("a", "b")):
        tensors = _tiny(tmp_path / name, i)
        tensors["embeddings.position_ids"] = torch.arange(300).reshape(1, 300)  # 257 is not a bf16 value
        save_file(tensors, tmp_path / name / "model.safetensors")
    data = {"merge_method": "linear", "dtype": "bfloat16", "models": [str(tmp_path / "a"), str(tmp_path / "b")]}
    run_merge(parse_recipe(data), str(tmp_path / "out"), progress=False)
    out = load_file(tmp_path / "out" / "model.safetensors")
    assert out["lm_head.weight"].dtype == torch.bfloat16
    assert out["embeddings.position_ids"].dtype == torch.int64
    assert torch.equal(out["embeddings.position_ids"], torch.arange(300).reshape(1, 300))


# -- any YAML-shaped input: a Recipe or a UsageError, never another exception ---------------------

from hypothesis import HealthCheck, given, settings  # noqa: E402
from hypothesis import strategies as st  # noqa: E402

_KEYS = st.sampled_from(["merge_method", "base_model", "models", "slices", "parameters", "dtype", "sources",
                         "model", "layer_range", "filter", "value", "weight", "density", "t", "seed", "name",
                         "tokenizer", "tokenizer_source", "source", "tokens", "lambda", "normalize", "x"])
_SCALARS = st.one_of(st.none(), st.booleans(), st.integers(-3, 50), st.floats(allow_nan=True),
                     st.sampled_from(["ties", "slerp", "linear", "passthrough", "a", "1e-3", "bfloat16", "*"]))
_YAML = st.recursive(_SCALARS, lambda inner: st.one_of(st.lists(inner, max_size=4),
                                                       st.dictionaries(_KEYS, inner, max_size=5)), max_leaves=25)


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.dictionaries(_KEYS, _YAML, max_size=7))
def test_any_mapping_parses_or_is_a_usage_error(data):
    try:
        recipe = parse_recipe(data)
    except UsageError:
        return
    assert recipe.merge_method in METHODS


@settings(max_examples=300, deadline=None)
@given(_YAML, st.floats(0, 1), st.sampled_from([None, "float", "bool", "int", "path"]))
def test_evaluating_any_setting_never_crashes(setting, t, kind):
    try:
        evaluate(setting, "model.layers.1.mlp.up_proj.weight", t, kind)
    except (ValueError, OverflowError):
        assert kind in ("float", "int")  # unchecked junk converted to a number; recipes check first
