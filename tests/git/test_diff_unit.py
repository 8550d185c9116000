"""Tensor diffs from stored objects: norms from recorded sums of squares, no decoding of
unchanged chunks."""

import numpy as np
import pytest

from modelgit import checkpoint
from modelgit.git.diff import diff_manifests

from helpers import float_weights, write_safetensors


def test_diff_decodes_only_changed_chunks(store, tmp_path, monkeypatch):
    path = tmp_path / "m.safetensors"
    big = float_weights(1, (4200, 256))  # two chunks
    small = float_weights(2, (64,))
    write_safetensors(path, {"big": ("F32", big.shape, big.tobytes()), "small": ("F32", small.shape, small.tobytes())})
    old = checkpoint.add(store, str(path))
    small2 = small * np.float32(1.5)
    write_safetensors(path, {"big": ("F32", big.shape, big.tobytes()), "small": ("F32", small2.shape, small2.tobytes())})
    new = checkpoint.add(store, str(path))
    assert store.header(old.files[0].tensor("big").chunks[0]).sumsq == pytest.approx(
        float((big[:4096].astype(np.float64) ** 2).sum()), rel=1e-5)
    decoded = []
    original = store.get_buffer
    monkeypatch.setattr(store, "get_buffer",
                        lambda oid, known=None: decoded.append(oid) or original(oid, known))
    (file_diff,) = diff_manifests(store, "m.safetensors", old, new)
    by_name = {t.name: t for t in file_diff.tensors}
    assert by_name["big"].status == "unchanged"
    assert by_name["big"].old_norm == pytest.approx(float(np.linalg.norm(big.astype(np.float64))), rel=1e-5)
    assert by_name["small"].rel_l2 == pytest.approx(0.5, rel=1e-5)
    assert set(decoded) == {old.files[0].tensor("small").chunks[0], new.files[0].tensor("small").chunks[0]}


@pytest.mark.parametrize("dtype", ["F32", "F16", "BF16", "F8_E4M3", "I32", "U8", "F64"])
def test_diff_figures_match_torch_for_every_dtype(store, tmp_path, dtype):
    import torch

    from modelgit.dtypes import DTYPES
    from modelgit.tensor_math import from_torch

    torch_dtype = getattr(torch, DTYPES[dtype].torch_name)
    generator = torch.Generator().manual_seed(3)
    old_values = (torch.randn(300, 40, generator=generator) * 4).to(torch_dtype)
    new_values = (old_values.double() * 1.25 + 1).to(torch_dtype)
    new_values[:100] = old_values[:100]  # a third of the elements unchanged
    path = tmp_path / "m.safetensors"
    manifests = []
    for values in (old_values, new_values):
        write_safetensors(path, {"t": (dtype, tuple(values.shape), from_torch(values))})
        manifests.append(checkpoint.add(store, str(path)))
    (file_diff,) = diff_manifests(store, "m.safetensors", *manifests)
    (change,) = file_diff.tensors
    a, b = old_values.double(), new_values.double()
    assert change.rel_l2 == pytest.approx(float((b - a).norm() / a.norm()), rel=1e-9)
    assert change.cosine == pytest.approx(float((a * b).sum() / (a.norm() * b.norm())), rel=1e-9)
    bits = {1: torch.uint8, 2: torch.int16, 4: torch.int32, 8: torch.int64}[DTYPES[dtype].itemsize]
    changed = old_values.view(bits) != new_values.view(bits)
    assert change.frac_changed == pytest.approx(float(changed.double().mean()))
