"""adapter_config.json is untrusted: `modelgit merge --model BASE+ADAPTER` refuses every malformed
or hostile config with a message (never a traceback), and patterns cannot hang the reader."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest
import torch
from safetensors.torch import save_file

from modelgit.merge.lora import save_adapter

ADAPTED = "layers.0.q_proj"


@pytest.fixture
def base_and_adapter(tmp_path):
    g = torch.Generator().manual_seed(0)
    save_file({f"{ADAPTED}.weight": torch.randn(12, 10, generator=g),
               "norm.weight": torch.randn(10, generator=g)}, tmp_path / "base.safetensors")
    factors = (torch.randn(12, 2, generator=g), torch.randn(2, 10, generator=g))  # (out, r), (r, in)
    save_adapter(str(tmp_path / "ad"), {ADAPTED: factors}, 2, 4.0)
    return str(tmp_path / "base.safetensors"), str(tmp_path / "ad")


def _config(adapter: str, text: str | None = None, **changes) -> None:
    path = f"{adapter}/adapter_config.json"
    if text is None:
        text = json.dumps({**json.loads(open(path).read()), **changes})
    with open(path, "w") as handle:
        handle.write(text)


BAD_CONFIGS = [  # (config text or changes, a fragment of the message)
    ("[1, 2]", "expected a JSON object of settings, got list"),
    ("{nope", "not valid JSON"),
    ({"r": "2"}, "r is '2', not an integer"),
    ({"r": 0}, "r is 0, outside the allowed range"),
    ({"r": True}, "r is True, not an integer"),
    ({"lora_alpha": float("nan")}, "NaN"),
    ({"lora_alpha": float("-inf")}, "Infinity"),
    ('{"r": 2, "lora_alpha": 1e400}', "overflows"),
    ({"lora_alpha": -4}, "lora_alpha is -4, outside the allowed range (0, 4096]"),
    ({"alpha_pattern": {"q_proj": -1e30}}, "alpha_pattern['q_proj'] is -1e+30"),
    ({"alpha_pattern": [1]}, "alpha_pattern must map"),
    ({"rank_pattern": {"q_proj": 2.5}}, "not an integer"),
    ({"lora_dropout": 1.0}, "lora_dropout is 1.0, outside the allowed range [0, 1)"),
    ({"use_rslora": "yes"}, "use_rslora is 'yes', not true or false"),
    ({"target_modules": "(a+)+$"}, "not allowed in a module pattern"),
    ({"target_modules": [1]}, "target_modules[0] is 1, not a string"),
    ({"peft_type": "IA3"}, "only LoRA"),
    ('{"r": 2, "r": 3}', "duplicate key 'r'"),
    ('{"a":' * 50_000 + "1" + "}" * 50_000, "nested more than"),
]


@pytest.mark.parametrize("config,fragment", BAD_CONFIGS, ids=[str(c)[:30] for c, _ in BAD_CONFIGS])
def test_merge_refuses_a_bad_config_with_a_message(base_and_adapter, tmp_path, capsys, config, fragment):
    from modelgit.cli.main import main

    base, adapter = base_and_adapter
    _config(adapter, config) if isinstance(config, str) else _config(adapter, **config)
    code = main(["merge", "--method", "linear", "--model", f"{base}+{adapter}", "-o",
                 str(tmp_path / "out")])
    err = capsys.readouterr().err
    assert code == 2 and "Traceback" not in err and "internal error" not in err, err
    assert fragment in err and "adapter_config.json" in err, err


def test_through_the_real_cli_too(base_and_adapter, tmp_path):
    base, adapter = base_and_adapter
    _config(adapter, "[1, 2]")
    result = subprocess.run([sys.executable, "-m", "modelgit", "merge", "--method", "linear",
                             "--model", f"{base}+{adapter}", "-o", str(tmp_path / "out")],
                            capture_output=True, text=True)
    assert result.returncode == 2 and "Traceback" not in result.stderr
    assert "expected a JSON object" in result.stderr


def test_lora_halves_that_do_not_fit_are_refused(base_and_adapter, tmp_path, capsys):
    from safetensors.torch import load_file

    from modelgit.cli.main import main

    base, adapter = base_and_adapter
    tensors = load_file(f"{adapter}/adapter_model.safetensors")
    name = next(n for n in tensors if "lora_B" in n)
    tensors[name] = torch.zeros(12, 3)  # B is (out, 3) but A is (2, in)
    save_file(tensors, f"{adapter}/adapter_model.safetensors")
    code = main(["merge", "--method", "linear", "--model", f"{base}+{adapter}", "-o", str(tmp_path / "out")])
    err = capsys.readouterr().err
    assert code == 2 and "do not fit together" in err and "Traceback" not in err


def test_a_good_config_still_merges(base_and_adapter, tmp_path):
    from modelgit.cli.main import main

    base, adapter = base_and_adapter
    _config(adapter, target_modules=".*\\.(q_proj|v_proj)", alpha_pattern={"q_proj": 8})
    assert main(["merge", "--method", "linear", "--model", f"{base}+{adapter}", "-o",
                 str(tmp_path / "out")]) == 0


@pytest.mark.parametrize("pattern", ["q_proj", "all-linear", ".*\\.(q_proj|v_proj)$",
                                     "model\\.layers\\.[0-9]+\\.self_attn\\.q_proj",
                                     "^layers\\.\\d+\\.(q|v)_proj$"])
def test_module_patterns_people_write_are_accepted(pattern):
    from modelgit.merge.lora_config import pattern_problem

    assert pattern_problem(pattern, "target_modules") is None


@pytest.mark.parametrize("pattern", ["(a+)+$", "(a|a)*b", "(.*)*", "a{1,100}", "[a-z]+",
                                     ".*.*.*.*x", "a" * 300, "(?=x)", ""])
def test_patterns_that_could_backtrack_are_refused(pattern):
    from modelgit.merge.lora_config import pattern_problem

    assert pattern_problem(pattern, "target_modules") is not None


def test_features_beyond_plain_lora_are_named():
    from modelgit.merge.lora_config import feature_problems, lora_config_problems

    problems = feature_problems({"r": 2, "megatron_config": {"a": 1}, "layer_replication": [[0, 1]],
                                 "brand_new": 1, "brand_new_off": None, "init_lora_weights": "olora",
                                 "bias": "everything"})
    text = "\n".join(problems)
    for fragment in ("megatron_config is set", "layer_replication is set", "'brand_new' is a setting",
                     "init_lora_weights is 'olora'", "bias is 'everything'"):
        assert fragment in text
    assert "brand_new_off" not in text
    assert lora_config_problems({"r": 2, "lora_alpha": 4.0, "target_modules": ["q_proj"]}) == []
