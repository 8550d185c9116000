"""Tests of modelgit.formats.torch_pt: exact round trips and refusal of unsafe or broken files."""

from __future__ import annotations

import json
import math
import os
import pickle

import pytest
import torch
from hypothesis import given, settings, strategies as st

from modelgit.dtypes import DTYPES
from modelgit.errors import FormatError, UnsafeInputError
from modelgit.formats.base import TensorEntry
from modelgit.formats.torch_pt import FORMAT, open_torch, sniff_torch, write_torch

TORCH_DTYPES = [d.name for d in DTYPES.values() if d.torch_name and hasattr(torch, d.torch_name)]


def _tensor(dtype_name: str, shape: tuple[int, ...], seed: int = 0) -> torch.Tensor:
    """Seeded random bit patterns of any dtype (NaNs included for floats)."""
    info = DTYPES[dtype_name]
    n = math.prod(shape)
    gen = torch.Generator().manual_seed(seed)
    if dtype_name == "BOOL":
        return torch.randint(0, 2, shape, generator=gen).bool()
    raw = torch.randint(0, 256, (n * info.itemsize,), dtype=torch.uint8, generator=gen)
    return raw.view(getattr(torch, info.torch_name)).reshape(shape)


def _raw(t: torch.Tensor) -> bytes:
    return bytes(t.contiguous().reshape(-1).view(torch.uint8).numpy())


def _round_trip(tmp_path, obj, *, keep_meta: bool = True):
    """Save ``obj``, read it with modelgit, rewrite it; return (reader, reloaded object)."""
    src, dst = tmp_path / "src.pt", tmp_path / "dst.pt"
    torch.save(obj, src)
    reader = open_torch(str(src))
    meta = reader.meta() if keep_meta else {}
    write_torch(str(dst), meta, reader.entries(), lambda e: [reader.data(e.name)])
    return reader, torch.load(dst, weights_only=True)


def _assert_same_tree(a, b):
    """Equal keys in equal order, tensor-exact leaves, equal primitives (NaN == NaN)."""
    assert type(a) is type(b) or (isinstance(a, dict) and isinstance(b, dict))
    if isinstance(a, dict):
        assert list(a.keys()) == list(b.keys())
        for key in a:
            _assert_same_tree(a[key], b[key])
    elif isinstance(a, torch.Tensor):
        assert (a.dtype, a.shape, _raw(a)) == (b.dtype, b.shape, _raw(b))
    elif isinstance(a, float) and math.isnan(a):
        assert math.isnan(b)
    else:
        assert a == b


@pytest.mark.parametrize("dtype", TORCH_DTYPES)
@pytest.mark.parametrize("shape", [(3, 5), (), (0,), (2, 0, 3)])
def test_round_trip_every_dtype_and_shape(tmp_path, dtype, shape):
    original = {"w": _tensor(dtype, shape), "b": _tensor(dtype, shape, seed=1)}
    reader, rebuilt = _round_trip(tmp_path, original)
    entries = reader.entries()
    assert [(e.name, e.dtype, e.shape) for e in entries] == [
        ("w", dtype, shape), ("b", dtype, shape)]
    for entry in entries:
        assert bytes(reader.data(entry.name)) == _raw(original[entry.name])
        assert len(reader.data(entry.name)) == entry.nbytes
    _assert_same_tree(original, rebuilt)


def test_nested_dicts_primitives_and_key_order(tmp_path):
    original = {
        "z": _tensor("F32", (2,)),
        "model": {"b": _tensor("BF16", (3,)), "a": {"x": _tensor("I64", ())}, "empty": {}},
        "step": 3, "lr": 1e-3, "name": "ünïcode", "flag": True, "none": None,
        "inf": float("inf"), "nan": float("nan"), "big": 2**80,
        7: {"k": _tensor("U8", (4,))},
        "a.b": _tensor("F16", (1,)),
    }
    reader, rebuilt = _round_trip(tmp_path, original)
    assert [e.name for e in reader.entries()] == ["z", "model.b", "model.a.x", "7.k", "a.b"]
    _assert_same_tree(original, rebuilt)


def test_layout_is_canonical_json(tmp_path):
    torch.save({"b": 1, "a": {"t": torch.ones(1)}}, tmp_path / "x.pt")
    layout = open_torch(str(tmp_path / "x.pt")).meta()["layout"]
    assert layout == json.dumps(json.loads(layout), sort_keys=True, separators=(",", ":"),
                                ensure_ascii=False).encode("utf-8")
    assert [key for key, _ in json.loads(layout)["items"]] == ["b", "a"]  # dict order, not sorted


def test_write_without_layout_gives_flat_dict_in_entry_order(tmp_path):
    original = {"m": {"y": _tensor("F32", (2,)), "x": _tensor("I8", (3,))}}
    _, rebuilt = _round_trip(tmp_path, original, keep_meta=False)
    _assert_same_tree({"m.y": original["m"]["y"], "m.x": original["m"]["x"]}, rebuilt)


def test_legacy_non_zip_file_is_read(tmp_path):
    original = {"w": _tensor("F32", (4, 4)), "n": 1}
    path = tmp_path / "legacy.pt"
    torch.save(original, path, _use_new_zipfile_serialization=False)
    assert path.read_bytes()[:1] == b"\x80"
    reader = open_torch(str(path))
    assert bytes(reader.data("w")) == _raw(original["w"])


def test_non_contiguous_and_parameter_tensors(tmp_path):
    base = _tensor("F32", (4, 6))
    original = {"t": base.t(), "p": torch.nn.Parameter(_tensor("F32", (3,)))}
    reader, _ = _round_trip(tmp_path, original)
    assert bytes(reader.data("t")) == _raw(base.t().contiguous())
    assert reader.entries()[0].shape == (6, 4)


class _Evil:
    def __init__(self, marker: str):
        self.marker = marker

    def __reduce__(self):
        return (os.system, (f"echo pwned > {self.marker}",))


@pytest.mark.parametrize("writer", ["torch_zip", "raw_pickle"])
def test_malicious_pickle_is_refused_without_running(tmp_path, writer):
    marker = tmp_path / "pwned.txt"
    path = tmp_path / "evil.pt"
    if writer == "torch_zip":
        torch.save({"w": torch.ones(1), "x": _Evil(str(marker))}, path)
    else:
        path.write_bytes(pickle.dumps({"x": _Evil(str(marker))}, protocol=2))
    with pytest.raises(UnsafeInputError) as info:
        open_torch(str(path))
    message = str(info.value)
    assert str(path) in message and "never executes pickled code" in message
    assert "safetensors" in message
    assert not marker.exists()


@pytest.mark.parametrize("legacy", [False, True])
def test_truncated_file_is_a_format_error(tmp_path, legacy):
    path = tmp_path / "t.pt"
    torch.save({"w": _tensor("F32", (64,))}, path, _use_new_zipfile_serialization=not legacy)
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])
    with pytest.raises(FormatError) as info:
        open_torch(str(path))
    assert type(info.value) is FormatError and str(path) in str(info.value)


def test_not_a_torch_file(tmp_path):
    path = tmp_path / "notes.pt"
    path.write_text("hello world")
    with pytest.raises(FormatError, match="not a PyTorch checkpoint"):
        open_torch(str(path))


@pytest.mark.parametrize("obj, key", [
    ({"a": {"b": [1, 2]}}, "a.b"),
    ({"c": torch.zeros(2, dtype=torch.complex128)}, "c"),
    ({"s": (1, 2)}, "s"),
    ({"a.b": torch.ones(1), "a": {"b": torch.ones(1)}}, "a.b"),
])
def test_unsupported_values_name_the_key(tmp_path, obj, key):
    torch.save(obj, tmp_path / "x.pt")
    with pytest.raises(FormatError, match=f"'{key}'"):
        open_torch(str(tmp_path / "x.pt"))


def test_top_level_must_be_a_dict(tmp_path):
    torch.save(torch.ones(3), tmp_path / "x.pt")
    with pytest.raises(FormatError, match="not a dict"):
        open_torch(str(tmp_path / "x.pt"))


def test_layout_mismatch_is_refused(tmp_path):
    torch.save({"a": torch.ones(1), "b": torch.ones(1)}, tmp_path / "x.pt")
    reader = open_torch(str(tmp_path / "x.pt"))
    entries = reader.entries()[:1]
    with pytest.raises(FormatError):
        write_torch(str(tmp_path / "y.pt"), reader.meta(), entries, lambda e: [reader.data(e.name)])


@pytest.mark.parametrize("layout", [b"not json", b"[]", b'{"version":2,"items":[]}',
                                    b'{"version":1,"items":[["a",{"tensor":"zz"}]]}',
                                    b'{"version":1,"items":[["a",{"code":"x"}]]}'])
def test_corrupt_layout_is_refused(tmp_path, layout):
    entry = TensorEntry("a", "F32", (1,))
    with pytest.raises(FormatError, match="layout"):
        write_torch(str(tmp_path / "y.pt"), {"layout": layout}, [entry], lambda e: [bytes(4)])


def test_sniff(tmp_path):
    torch.save({"a": torch.ones(1)}, tmp_path / "m.pt")
    torch.save({"a": torch.ones(1)}, tmp_path / "m.txt")
    (tmp_path / "x.bin").write_bytes(b"\x00\x01binary")
    assert sniff_torch(str(tmp_path / "m.pt")) and FORMAT.sniff(str(tmp_path / "m.pt"))
    assert not sniff_torch(str(tmp_path / "m.txt"))
    assert not sniff_torch(str(tmp_path / "x.bin"))
    assert not sniff_torch(str(tmp_path / "missing.pt"))


_keys = st.one_of(st.text(alphabet="abc.", min_size=1, max_size=3), st.integers(0, 3))
_leaves = st.one_of(
    st.none(), st.booleans(), st.integers(-2**70, 2**70), st.floats(), st.text(max_size=4),
    st.sampled_from(["F32", "BF16", "BOOL", "I64"]).map(lambda d: _tensor(d, (2,))),
)
_trees = st.recursive(_leaves, lambda inner: st.dictionaries(_keys, inner, max_size=3),
                      max_leaves=8)


@settings(max_examples=40, deadline=None)
@given(tree=st.dictionaries(_keys, _trees, max_size=4))
def test_any_tree_round_trips_or_is_refused_as_ambiguous(tmp_path_factory, tree):
    tmp_path = tmp_path_factory.mktemp("tree")
    try:
        _, rebuilt = _round_trip(tmp_path, tree)
    except FormatError as exc:
        assert "flatten to the name" in str(exc)
        return
    _assert_same_tree(tree, rebuilt)
