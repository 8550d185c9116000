import json
import struct

import numpy as np
import pytest
from hypothesis import given, settings, strategies as st

from modelgit.dtypes import DTYPES
from modelgit.errors import FormatError
from modelgit.formats.safetensors_format import open_safetensors, parse_header

from helpers import random_bytes, write_safetensors


def _header(entries):
    return json.dumps(entries).encode()


@pytest.mark.parametrize("dtype", sorted(DTYPES))
@pytest.mark.parametrize("shape", [(), (0,), (3, 5)])
def test_every_dtype_reads_back(tmp_path, dtype, shape):
    n = int(np.prod(shape)) * DTYPES[dtype].itemsize
    raw = random_bytes(5, n)
    write_safetensors(tmp_path / "a.safetensors", {"t": (dtype, shape, raw)})
    reader = open_safetensors(str(tmp_path / "a.safetensors"))
    (entry,) = reader.entries()
    assert (entry.dtype, entry.shape) == (dtype, shape)
    assert bytes(reader.data("t")) == raw
    reader.close()


def test_reference_library_reads_files_we_accept(tmp_path):
    from safetensors.numpy import load_file

    raw = np.arange(12, dtype=np.float32)
    write_safetensors(tmp_path / "a.safetensors", {"x": ("F32", (3, 4), raw.tobytes())}, {"k": "v"}, pad=5)
    assert (load_file(tmp_path / "a.safetensors")["x"].ravel() == raw).all()


@pytest.mark.parametrize("header,data_len,message", [
    (b"[1]", 0, "not a JSON object"),
    (b"{\"a\":1", 0, "not valid UTF-8 JSON"),
    (b"\xff\xfe", 0, "not valid UTF-8 JSON"),
    (_header({"a": {"dtype": "F33", "shape": [1], "data_offsets": [0, 4]}}), 4, "unknown dtype"),
    (_header({"a": {"dtype": "F32", "shape": [-1], "data_offsets": [0, 4]}}), 4, "invalid shape"),
    (_header({"a": {"dtype": "F32", "shape": [2], "data_offsets": [0, 4]}}), 4, "needs 8"),
    (_header({"a": {"dtype": "F32", "shape": [1], "data_offsets": [0, 8]}}), 4, "needs 4"),
    (_header({"a": {"dtype": "F32", "shape": [1], "data_offsets": [4, 8]}}), 4, "past the end"),
    (_header({"a": {"dtype": "F32", "shape": [1], "data_offsets": [0, 4]},
              "b": {"dtype": "F32", "shape": [1], "data_offsets": [2, 6]}}), 8, "overlaps"),
    (_header({"a": {"dtype": "F32", "shape": [1], "data_offsets": [4, 8]}}), 8, "hole"),
    (_header({"a": {"dtype": "F32", "shape": [1], "data_offsets": [0, 4]}}), 8, "cover 4 bytes"),
    (_header({"a": {"dtype": "F32", "shape": [1], "data_offsets": [0, 4], "x": 1}}), 4, "exactly"),
    (_header({"__metadata__": {"a": 1}}), 0, "__metadata__"),
    (b'{"a":{"dtype":"F32","shape":[1],"data_offsets":[0,4]},"a":{"dtype":"F32","shape":[1],"data_offsets":[0,4]}}', 4, "duplicate"),
    (_header({"a": {"dtype": "F32", "shape": [2**62, 2**62], "data_offsets": [0, 4]}}), 4, "needs"),
])
def test_hostile_headers_are_refused(header, data_len, message):
    with pytest.raises(FormatError, match=message):
        parse_header(header, data_len, "evil.safetensors")


def test_huge_header_length_is_refused_without_reading(tmp_path):
    path = tmp_path / "evil.safetensors"
    path.write_bytes(struct.pack("<Q", 2**63) + b"{}")
    with pytest.raises(FormatError, match="exceeds"):
        open_safetensors(str(path))


@pytest.mark.parametrize("cut", [0, 3, 8, 20, -1])
def test_truncated_file_names_the_file(tmp_path, cut):
    data = write_safetensors(tmp_path / "m.safetensors", {"x": ("F32", (4,), bytes(16))})
    (tmp_path / "m.safetensors").write_bytes(data[:cut] if cut >= 0 else data[:-1])
    with pytest.raises(FormatError, match="m.safetensors"):
        open_safetensors(str(tmp_path / "m.safetensors"))


@given(st.binary(max_size=200), st.integers(0, 64))
@settings(max_examples=300, deadline=None)
def test_parser_never_crashes_on_garbage(header, data_len):
    try:
        parse_header(header, data_len)
    except FormatError:
        pass


_names = st.text(min_size=1, max_size=8).filter(lambda s: s != "__metadata__")


@given(st.dictionaries(_names, st.tuples(st.sampled_from(sorted(DTYPES)),
                                          st.lists(st.integers(0, 4), max_size=3)), max_size=6))
@settings(max_examples=150, deadline=None)
def test_parser_accepts_every_valid_layout(spec):
    header, offset = {}, 0
    for name, (dtype, shape) in spec.items():
        n = int(np.prod(shape)) * DTYPES[dtype].itemsize
        header[name] = {"dtype": dtype, "shape": shape, "data_offsets": [offset, offset + n]}
        offset += n
    items = parse_header(json.dumps(header).encode(), offset)
    assert {e.name for e, _, _ in items} == set(spec)
