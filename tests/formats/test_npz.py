"""Tests of modelgit.formats.npz: exact round trips, lazy reads, refusal of unsafe/broken files."""

from __future__ import annotations

import zipfile

import numpy as np
import pytest

from modelgit.dtypes import DTYPES
from modelgit.errors import FormatError, UnsafeInputError
from modelgit.formats.base import TensorEntry
from modelgit.formats.npz import FORMAT, open_npz, sniff_npz, write_npz

NUMPY_DTYPES = [d.name for d in DTYPES.values() if d.numpy_name]


def _array(dtype_name: str, shape: tuple[int, ...], seed: int = 0) -> np.ndarray:
    """Seeded random bit patterns of any numpy-native dtype (NaNs included for floats)."""
    dtype = np.dtype(DTYPES[dtype_name].numpy_name)
    rng = np.random.default_rng(seed)
    if dtype_name == "BOOL":
        return rng.integers(0, 2, size=shape).astype(bool)
    raw = rng.integers(0, 256, size=int(np.prod(shape)) * dtype.itemsize, dtype=np.uint8)
    return raw.view(dtype).reshape(shape)


def _round_trip(tmp_path, arrays: dict, compressed: bool):
    """Save ``arrays``, read them with modelgit, rewrite them; return (reader, reloaded, dst)."""
    src, dst = tmp_path / "src.npz", tmp_path / "dst.npz"
    (np.savez_compressed if compressed else np.savez)(src, **arrays)
    reader = open_npz(str(src))
    write_npz(str(dst), reader.meta(), reader.entries(), lambda e: [reader.data(e.name)])
    with np.load(dst, allow_pickle=False) as loaded:
        return reader, {k: loaded[k] for k in loaded.files}, dst


@pytest.mark.parametrize("compressed", [False, True])
@pytest.mark.parametrize("dtype", NUMPY_DTYPES)
@pytest.mark.parametrize("shape", [(3, 5), (), (0,), (2, 0, 3)])
def test_round_trip_every_dtype_and_shape(tmp_path, dtype, shape, compressed):
    original = {"w": _array(dtype, shape), "b": _array(dtype, shape, seed=1)}
    reader, rebuilt, _ = _round_trip(tmp_path, original, compressed)
    assert [(e.name, e.dtype, e.shape) for e in reader.entries()] == [
        ("w", dtype, shape), ("b", dtype, shape)]
    for name, array in original.items():
        assert bytes(reader.data(name)) == array.tobytes()
        assert rebuilt[name].dtype == array.dtype and rebuilt[name].shape == array.shape
        assert rebuilt[name].tobytes() == array.tobytes()
    reader.close()


@pytest.mark.parametrize("compressed", [False, True])
def test_meta_records_and_keeps_compression(tmp_path, compressed):
    reader, _, dst = _round_trip(tmp_path, {"a": np.zeros(100)}, compressed)
    assert reader.meta() == {"compressed": b"1" if compressed else b"0"}
    with zipfile.ZipFile(dst) as zf:
        kinds = {info.compress_type for info in zf.infolist()}
    assert kinds == {zipfile.ZIP_DEFLATED if compressed else zipfile.ZIP_STORED}


def test_open_reads_headers_only_and_data_one_array_at_a_time(tmp_path, monkeypatch):
    np.savez(tmp_path / "x.npz", a=np.ones((4, 4)), b=np.zeros(3, dtype="<i2"))
    loads = []
    real_read_array = np.lib.format.read_array
    monkeypatch.setattr(np.lib.format, "read_array",
                        lambda *a, **k: loads.append(1) or real_read_array(*a, **k))
    reader = open_npz(str(tmp_path / "x.npz"))
    assert [(e.name, e.dtype, e.shape) for e in reader.entries()] == [
        ("a", "F64", (4, 4)), ("b", "I16", (3,))]
    assert loads == []
    assert bytes(reader.data("b")) == bytes(6)
    assert loads == [1]
    reader.close()


def test_member_names_and_order(tmp_path):
    np.savez(tmp_path / "x.npz", **{"z": np.ones(1), "layer.0/w": np.ones(2), "a": np.ones(3)})
    reader = open_npz(str(tmp_path / "x.npz"))
    assert [e.name for e in reader.entries()] == ["z", "layer.0/w", "a"]
    reader.close()


def test_big_endian_and_fortran_give_c_order_little_endian(tmp_path):
    big = np.arange(6, dtype=">i4").reshape(2, 3)
    fortran = np.asfortranarray(np.arange(12, dtype="<f8").reshape(3, 4))
    both = np.asfortranarray(np.arange(6, dtype=">u2").reshape(2, 3))
    np.savez(tmp_path / "x.npz", big=big, fortran=fortran, both=both)
    reader = open_npz(str(tmp_path / "x.npz"))
    dtypes = {e.name: e.dtype for e in reader.entries()}
    assert dtypes == {"big": "I32", "fortran": "F64", "both": "U16"}
    assert bytes(reader.data("big")) == np.arange(6, dtype="<i4").tobytes()
    assert bytes(reader.data("fortran")) == np.arange(12, dtype="<f8").tobytes()
    assert bytes(reader.data("both")) == np.arange(6, dtype="<u2").tobytes()
    reader.close()


def test_object_array_is_unsafe(tmp_path):
    np.savez(tmp_path / "x.npz", ok=np.ones(2), bad=np.array([1, "x", None], dtype=object))
    with pytest.raises(UnsafeInputError, match="bad.npy"):
        open_npz(str(tmp_path / "x.npz"))


def test_unsupported_dtype_names_the_member(tmp_path):
    np.savez(tmp_path / "x.npz", s=np.array(["abc"]))
    with pytest.raises(FormatError, match=r"'s\.npy'.*<U3"):
        open_npz(str(tmp_path / "x.npz"))


@pytest.mark.parametrize("dtype", ["BF16", "F8_E4M3", "F8_E5M2"])
def test_dtypes_numpy_lacks_cannot_be_written(tmp_path, dtype):
    entry = TensorEntry("w", dtype, (2,))
    path = tmp_path / "out.npz"
    with pytest.raises(FormatError, match="safetensors") as info:
        write_npz(str(path), {}, [entry], lambda e: [bytes(e.nbytes)])
    assert dtype in str(info.value)
    assert not path.exists()


@pytest.mark.parametrize("cut", [0.5, 0.95])
def test_truncated_archive_is_a_format_error(tmp_path, cut):
    path = tmp_path / "x.npz"
    np.savez(path, a=np.arange(1000.0), b=np.arange(10))
    data = path.read_bytes()
    path.write_bytes(data[: int(len(data) * cut)])
    with pytest.raises(FormatError) as info:
        open_npz(str(path))
    assert str(path) in str(info.value)


def test_corrupt_member_data_is_a_format_error(tmp_path):
    path = tmp_path / "x.npz"
    np.savez_compressed(path, a=np.arange(100000.0))
    data = bytearray(path.read_bytes())
    data[2000:2100] = bytes(100)  # inside the deflated stream: the header still parses
    path.write_bytes(bytes(data))
    reader = open_npz(str(path))
    with pytest.raises(FormatError, match="a.npy"):
        reader.data("a")
    reader.close()


def test_plain_npy_is_not_an_npz(tmp_path):
    np.save(tmp_path / "x.npy", np.ones(3))
    (tmp_path / "x.npy").rename(tmp_path / "x.npz")
    with pytest.raises(FormatError, match="single .npy"):
        open_npz(str(tmp_path / "x.npz"))


def test_empty_archive(tmp_path):
    np.savez(tmp_path / "e.npz")
    assert sniff_npz(str(tmp_path / "e.npz"))
    reader = open_npz(str(tmp_path / "e.npz"))
    assert reader.entries() == [] and reader.meta() == {"compressed": b"0"}
    reader.close()


def test_sniff(tmp_path):
    np.savez(tmp_path / "a.npz", x=np.ones(1))
    np.save(tmp_path / "b.npy", np.ones(1))
    (tmp_path / "c.npz").write_bytes(b"not a zip")
    assert sniff_npz(str(tmp_path / "a.npz")) and FORMAT.sniff(str(tmp_path / "a.npz"))
    assert not sniff_npz(str(tmp_path / "b.npy"))
    assert not sniff_npz(str(tmp_path / "c.npz"))
    assert not sniff_npz(str(tmp_path / "missing.npz"))
