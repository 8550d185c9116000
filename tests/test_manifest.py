import pytest
from hypothesis import given, settings, strategies as st

from modelgit.dtypes import DTYPES
from modelgit.errors import ManifestError, ManifestVersionError
from modelgit.manifest import FileRecord, Manifest, TensorRecord

_ids = st.text(alphabet="0123456789abcdef", min_size=64, max_size=64)
_tensor = st.builds(TensorRecord, st.text(max_size=12), st.sampled_from(sorted(DTYPES)),
                    st.lists(st.integers(0, 10**6), max_size=4).map(tuple),
                    st.lists(_ids, min_size=1, max_size=3).map(tuple))
_file = st.builds(FileRecord, st.text(min_size=1, max_size=12), st.sampled_from(["safetensors", "blob", "npz"]),
                  st.dictionaries(st.text(max_size=5), st.text(max_size=8), max_size=2),
                  st.lists(_tensor, max_size=4, unique_by=lambda t: t.name).map(tuple))


@given(st.lists(_file, min_size=1, max_size=4, unique_by=lambda f: f.path))
@settings(max_examples=200, deadline=None)
def test_round_trip_and_canonical(files):
    manifest = Manifest(tuple(files), "dir")
    text = manifest.dumps()
    assert Manifest.loads(text) == manifest
    assert Manifest(tuple(reversed(files)), "dir").dumps() == text  # order does not matter


@given(st.binary(max_size=300))
@settings(max_examples=300, deadline=None)
def test_garbage_gives_manifest_error(data):
    try:
        Manifest.loads(data)
    except ManifestError:
        pass


def _one():
    return Manifest((FileRecord("m.safetensors", "safetensors", {}, (
        TensorRecord("w", "F32", (2, 3), ("a" * 64,)),)),))


def test_text_is_readable():
    assert _one().dumps().decode() == (
        "modelgit-manifest 1\nroot file\nfile \"m.safetensors\" safetensors {}\n"
        f"tensor \"w\" F32 [2,3] {'a' * 64}\n")


def test_newer_version_is_refused_with_upgrade_hint():
    data = _one().dumps().replace(b"manifest 1", b"manifest 2")
    with pytest.raises(ManifestVersionError, match="upgrade"):
        Manifest.loads(data)


def test_non_canonical_text_is_refused():
    data = _one().dumps().replace(b"[2,3]", b"[2, 3]")
    with pytest.raises(ManifestError, match="line 4"):
        Manifest.loads(data)
