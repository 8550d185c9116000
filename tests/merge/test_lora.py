"""PEFT adapters read exactly as PEFT applies them: checked against merge_and_unload."""

import json

import pytest
import torch

from modelgit.errors import FormatError
from modelgit.merge.lora import extract_lora, load_adapter
from modelgit.merge.sources import open_source

peft = pytest.importorskip("peft")
transformers = pytest.importorskip("transformers")


def _tiny_llama(tmp_path):
    config = transformers.LlamaConfig(vocab_size=64, hidden_size=32, intermediate_size=48,
                                      num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2)
    torch.manual_seed(0)
    model = transformers.LlamaForCausalLM(config)
    base_dir = tmp_path / "base"
    model.save_pretrained(base_dir, safe_serialization=True)
    return model, base_dir


@pytest.mark.parametrize("rslora,modules_to_save,embedding", [
    (False, None, False), (True, None, False), (False, ["lm_head"], False), (False, None, True)])
def test_adapter_applied_like_peft_merge_and_unload(tmp_path, rslora, modules_to_save, embedding):
    model, base_dir = _tiny_llama(tmp_path)
    targets = ["q_proj", "v_proj"] + (["embed_tokens"] if embedding else [])
    config = peft.LoraConfig(r=4, lora_alpha=8, target_modules=targets, use_rslora=rslora,
                             modules_to_save=modules_to_save, rank_pattern={"layers.1.self_attn.v_proj": 2},
                             alpha_pattern={"layers.0.self_attn.q_proj": 3})
    peft_model = peft.get_peft_model(model, config)
    torch.manual_seed(1)
    with torch.no_grad():
        for name, param in peft_model.named_parameters():
            if "lora_" in name or "modules_to_save" in name:
                param.copy_(torch.randn_like(param) * 0.1)  # PEFT starts B at 0: make it matter
    adapter_dir = tmp_path / "adapter"
    peft_model.save_pretrained(adapter_dir)
    expected = {k: v.detach().clone() for k, v in peft_model.merge_and_unload().state_dict().items()}

    source = open_source(f"{base_dir}+{adapter_dir}")
    changed = 0
    for name, info in source.tensors().items():
        got = source.load(name)
        torch.testing.assert_close(got, expected[name], rtol=0, atol=2e-6, msg=name)
        changed += not torch.equal(got, open_source(str(base_dir)).load(name))
    assert changed >= 4


def test_adapter_for_another_base_is_refused(tmp_path):
    model, base_dir = _tiny_llama(tmp_path)
    adapter_dir = tmp_path / "adapter"
    peft.get_peft_model(model, peft.LoraConfig(r=2, target_modules=["q_proj"])).save_pretrained(adapter_dir)
    other = transformers.LlamaForCausalLM(transformers.LlamaConfig(
        vocab_size=64, hidden_size=16, intermediate_size=24, num_hidden_layers=2, num_attention_heads=2))
    other.save_pretrained(tmp_path / "other")
    source = open_source(f"{tmp_path / 'other'}+{adapter_dir}")
    with pytest.raises(FormatError, match="wrong base model"):
        source.load("model.layers.0.self_attn.q_proj.weight")


def test_pickled_adapter_is_refused(tmp_path):
    (tmp_path / "a").mkdir()
    (tmp_path / "a" / "adapter_config.json").write_text(json.dumps({"peft_type": "LORA", "r": 4}))
    (tmp_path / "a" / "adapter_model.bin").write_bytes(b"\x80\x04junk")
    with pytest.raises(FormatError, match="convert it to safetensors"):
        load_adapter(str(tmp_path / "a"))


def test_extract_lora_recovers_a_low_rank_update(tmp_path):
    from safetensors.torch import save_file

    torch.manual_seed(0)
    base = {"layer.0.proj.weight": torch.randn(40, 30), "layer.0.norm.weight": torch.ones(30)}
    update = torch.randn(40, 3) @ torch.randn(3, 30) * 0.01  # rank 3
    tuned = {**base, "layer.0.proj.weight": base["layer.0.proj.weight"] + update}
    (tmp_path / "b").mkdir()
    (tmp_path / "t").mkdir()
    save_file(base, tmp_path / "b" / "model.safetensors")
    save_file(tuned, tmp_path / "t" / "model.safetensors")
    errors = extract_lora(open_source(str(tmp_path / "b")), open_source(str(tmp_path / "t")), 4,
                          str(tmp_path / "lora"))
    assert errors["layer.0.proj"] < 1e-5
    applied = open_source(f"{tmp_path / 'b'}+{tmp_path / 'lora'}").load("layer.0.proj.weight")
    torch.testing.assert_close(applied, tuned["layer.0.proj.weight"], atol=1e-5, rtol=0)
