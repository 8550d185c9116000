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
    monkeypatch.setattr(store, "get_buffer", lambda oid: decoded.append(oid) or original(oid))
    (file_diff,) = diff_manifests(store, "m.safetensors", old, new)
    by_name = {t.name: t for t in file_diff.tensors}
    assert by_name["big"].status == "unchanged"
    assert by_name["big"].old_norm == pytest.approx(float(np.linalg.norm(big.astype(np.float64))), rel=1e-5)
    assert by_name["small"].rel_l2 == pytest.approx(0.5, rel=1e-5)
    assert set(decoded) == {old.files[0].tensor("small").chunks[0], new.files[0].tensor("small").chunks[0]}
