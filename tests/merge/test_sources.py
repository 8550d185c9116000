"""Merge sources: lazy tensors read by range, and one base shared by BASE+ADAPTER specs."""

import pytest
import torch
from safetensors.torch import save_file

from modelgit.merge.lora import save_adapter
from modelgit.merge.sources import CheckpointSource, lazy_tensor, open_source

ADAPTED = "layers.0.q_proj"


@pytest.fixture
def base_and_adapters(tmp_path):
    g = torch.Generator().manual_seed(0)
    tensors = {f"{ADAPTED}.weight": torch.randn(12, 10, generator=g),
               "layers.0.up_proj.weight": torch.randn(20, 10, generator=g),
               "norm.weight": torch.randn(10, generator=g), "step": torch.tensor(3)}
    save_file(tensors, tmp_path / "base.safetensors")
    adapters = []
    for i in range(2):
        factors = (torch.randn(12, 2, generator=g), torch.randn(2, 10, generator=g))  # (out, r), (r, in)
        save_adapter(str(tmp_path / f"ad{i}"), {ADAPTED: factors}, 2, 4.0)
        adapters.append(str(tmp_path / f"ad{i}"))
    return str(tmp_path / "base.safetensors"), adapters, tensors


def test_adapter_specs_share_one_base_hashed_once(base_and_adapters, monkeypatch):
    base, adapters, tensors = base_and_adapters
    hashes = []
    original = CheckpointSource._hash
    monkeypatch.setattr(CheckpointSource, "_hash", lambda self: hashes.append(self) or original(self))
    opened = {}
    first, second = (open_source(f"{base}+{ad}", opened) for ad in adapters)
    plain = open_source(base, opened)
    assert first._base is plain and second._base is plain and len(opened) == 3
    assert len({first.identity(), second.identity(), plain.identity()}) == 3
    assert hashes == [plain]  # the base's content id is computed once
    first.close()  # a shared base stays open for its other users
    assert torch.equal(plain.load("norm.weight"), tensors["norm.weight"])
    for source in opened.values():
        source.close()


def test_an_unshared_adapter_source_still_owns_its_base(base_and_adapters):
    base, adapters, tensors = base_and_adapters
    source = open_source(f"{base}+{adapters[0]}")
    assert torch.equal(source.load("norm.weight"), tensors["norm.weight"])
    source.close()
    with pytest.raises(ValueError):  # the base's mapping is closed with it
        source.load("norm.weight")


def test_lazy_tensors_read_ranges_and_name_the_base_where_an_adapter_changes_nothing(base_and_adapters):
    base, adapters, _ = base_and_adapters
    opened = {}
    adapted, plain = open_source(f"{base}+{adapters[0]}", opened), open_source(base, opened)
    for name in ["norm.weight", "layers.0.up_proj.weight", f"{ADAPTED}.weight"]:
        for source in (adapted, plain):
            lazy = lazy_tensor(source, name)
            whole = source.load(name).reshape(-1)
            assert lazy.shape == tuple(source.tensors()[name].shape) and lazy.dtype == whole.dtype
            n = whole.numel()
            for start, stop in [(0, n), (3, n - 2), (n - 1, n), (5, 5)]:
                assert torch.equal(lazy.flat(start, stop), whole[start:stop])
        same = lazy_tensor(adapted, name).key == lazy_tensor(plain, name).key
        assert same == (name != f"{ADAPTED}.weight"), name
    for source in opened.values():
        source.close()


def _content_id(path: str) -> str:
    """A checkpoint's content id as defined (and computed before issue 12): blake3 over every
    tensor's name and object id, the object id hashing the tensor's bytes whole."""
    import blake3
    from safetensors import safe_open

    from modelgit.store.ids import object_id
    from modelgit.tensor_math import dtype_name

    digest = blake3.blake3()
    with safe_open(path, framework="pt") as handle:
        for name in sorted(handle.keys()):
            tensor = handle.get_tensor(name)
            raw = tensor.contiguous().reshape(-1).view(torch.uint8).numpy().tobytes() if tensor.numel() else b""
            digest.update(f"{name}\0{object_id(dtype_name(tensor), tuple(tensor.shape), raw)}\n".encode())
    return digest.hexdigest()


@pytest.mark.parametrize("reads", ["none", "ranges in order", "ranges out of order", "load", "partial"])
def test_content_id_is_the_same_whatever_the_merge_read(base_and_adapters, monkeypatch, reads):
    """Tensors read front to back (or loaded) are hashed as they are read; the rest is read for
    the id; either way the id is that of the bytes in the file."""
    import modelgit.merge.sources as sources

    base, _, _ = base_and_adapters
    monkeypatch.setattr(sources, "_HASH_PIECE", 24)  # several pieces per tensor
    expected = _content_id(base)
    source = open_source(base)
    name = "layers.0.up_proj.weight"  # (20, 10)
    lazy = lazy_tensor(source, name)
    if reads == "ranges in order":
        for start in range(0, 200, 64):
            lazy.flat(start, min(200, start + 64))
        assert name in source._ids
    elif reads == "ranges out of order":
        lazy.flat(64, 128)
        lazy.flat(0, 64)
        assert name not in source._ids
    elif reads == "load":
        source.load(name)
        assert name in source._ids
    elif reads == "partial":
        lazy.flat(0, 150)
        assert name not in source._ids
    assert source.identity() == expected
    source.close()
