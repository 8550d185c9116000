"""add / materialize / stats / gc end to end through the library API."""

import os
import shutil

import numpy as np
import pytest

from modelgit import checkpoint
from modelgit.errors import FormatError, ObjectMissingError, UsageError
from modelgit.manifest import Manifest
from modelgit.store import Store

from helpers import float_weights, write_safetensors


def _round_trip(store, path, tmp_path, **kw):
    manifest = checkpoint.add(store, str(path), **kw)
    out = tmp_path / ("out-" + os.path.basename(str(path)))
    checkpoint.materialize(store, Manifest.loads(manifest.dumps()), str(out))
    return manifest, out


def test_safetensors_round_trip_is_byte_exact(store, small_model, tmp_path):
    path, tensors = small_model
    manifest, out = _round_trip(store, path, tmp_path)
    assert out.read_bytes() == path.read_bytes()
    assert len(manifest.files[0].tensor("embed.weight").chunks) == 2
    assert not store.verify()


def test_directory_round_trip(store, small_model, tmp_path):
    path, _ = small_model
    model_dir = tmp_path / "hf"
    (model_dir / "sub").mkdir(parents=True)
    shutil.copy(path, model_dir / "model-00001-of-00002.safetensors")
    write_safetensors(model_dir / "model-00002-of-00002.safetensors",
                      {"head.weight": ("BF16", (8, 8), bytes(range(128)))})
    (model_dir / "model.safetensors.index.json").write_text('{"weight_map": {}}')
    (model_dir / "config.json").write_text('{"hidden_size": 256}')
    (model_dir / "sub" / "empty.txt").write_bytes(b"")
    manifest, out = _round_trip(store, model_dir, tmp_path)
    assert manifest.root == "dir"
    for rel in ["model-00001-of-00002.safetensors", "model-00002-of-00002.safetensors",
                "model.safetensors.index.json", "config.json", "sub/empty.txt"]:
        assert (out / rel).read_bytes() == (model_dir / rel).read_bytes(), rel


def test_one_changed_tensor_stores_only_its_chunks(store, small_model, tmp_path):
    path, tensors = small_model
    first = checkpoint.add(store, str(path))
    before = store.stats().stored_bytes
    tensors = dict(tensors)
    tensors["layer.0.weight"] = ("F32", (64, 64), float_weights(99, (64, 64)).tobytes())
    write_safetensors(path, tensors, metadata={"format": "pt"})
    checkpoint.add(store, str(path), parent=first)
    grown = store.stats().stored_bytes - before
    assert grown < 64 * 64 * 4 * 1.01 + 2000  # the tensor, plus the new header and manifest blobs


def test_vocabulary_extension_reuses_leading_chunks(store, small_model, tmp_path):
    path, tensors = small_model
    first = checkpoint.add(store, str(path))
    emb = np.frombuffer(tensors["embed.weight"][2], np.float32).reshape(4200, 256)
    bigger = np.concatenate([emb, float_weights(7, (100, 256))])
    tensors = dict(tensors, **{"embed.weight": ("F32", bigger.shape, bigger.tobytes())})
    write_safetensors(path, tensors, metadata={"format": "pt"})
    second = checkpoint.add(store, str(path), parent=first)
    a = first.files[0].tensor("embed.weight").chunks
    b = second.files[0].tensor("embed.weight").chunks
    assert a[0] == b[0] and a[1] != b[1]


def test_fine_tune_is_delta_compressed(store, small_model, tmp_path):
    path, tensors = small_model
    first = checkpoint.add(store, str(path))
    rng = np.random.default_rng(3)
    tuned = {}
    for name, (dtype, shape, raw) in tensors.items():
        if dtype == "F32":
            w = np.frombuffer(raw, np.float32)
            raw = (w * (1 + np.float32(1e-3) * rng.standard_normal(w.size).astype(np.float32))).tobytes()
        tuned[name] = (dtype, shape, raw)
    write_safetensors(path, tuned, metadata={"format": "pt"})
    before = store.stats().stored_bytes
    second, out = _round_trip(store, path, tmp_path, parent=first)
    grown = store.stats().stored_bytes - before
    assert grown < 0.52 * second.logical_bytes
    assert out.read_bytes() == path.read_bytes()


def test_unchanged_file_is_not_reread(store, small_model, monkeypatch):
    path, _ = small_model
    os.utime(path, ns=(1_000_000_000, 1_000_000_000))  # old mtime: not racy
    first = checkpoint.add(store, str(path))

    def fail(*a, **k):
        raise AssertionError("file was re-parsed")

    monkeypatch.setattr("modelgit.checkpoint.detect_format", fail)
    assert checkpoint.add(store, str(path)) == first


def test_touched_file_is_rehashed_and_deduplicated(store, small_model):
    path, _ = small_model
    first = checkpoint.add(store, str(path))
    os.utime(path, ns=(2_000_000_000, 2_000_000_000))
    before = store.stats().objects
    assert checkpoint.add(store, str(path)) == first
    assert store.stats().objects - before <= 1  # at most a new stat-cache manifest blob


def test_missing_object_error_on_materialize(store, small_model, tmp_path):
    path, _ = small_model
    manifest = checkpoint.add(store, str(path))
    oid = manifest.files[0].tensor("layer.0.bias").chunks[0]
    os.unlink(os.path.join(store.url, "objects", oid[:2], oid[2:]))
    with pytest.raises(ObjectMissingError, match=oid):
        checkpoint.materialize(store, manifest, str(tmp_path / "out.safetensors"))
    assert not (tmp_path / "out.safetensors").exists()
    assert not [p for p in os.listdir(tmp_path) if "modelgit-tmp" in p]


def test_materialize_refuses_to_overwrite(store, small_model, tmp_path):
    path, _ = small_model
    manifest = checkpoint.add(store, str(path))
    with pytest.raises(UsageError, match="--force"):
        checkpoint.materialize(store, manifest, str(path))


def test_bad_file_is_refused_and_store_unchanged(store, tmp_path):
    bad = tmp_path / "bad.safetensors"
    bad.write_bytes(b"\x10\x00\x00\x00\x00\x00\x00\x00{not json}      ")
    with pytest.raises(FormatError, match="bad.safetensors"):
        checkpoint.add(store, str(bad), ref="bad")
    assert store.refs() == {}


def test_stats_and_gc(store, small_model, tmp_path):
    path, tensors = small_model
    checkpoint.add(store, str(path), ref="v1")
    tensors = dict(tensors, **{"layer.0.weight": ("F32", (64, 64), float_weights(5, (64, 64)).tobytes())})
    write_safetensors(path, tensors)
    checkpoint.add(store, str(path), ref="v2")
    report = checkpoint.store_report(store)
    assert report.logical_bytes > report.stored_bytes > 0
    store.delete_ref("v1")
    young = checkpoint.collect_garbage(store)  # v1's objects are minutes old: kept by default
    assert young.removed == 0 and young.kept_young >= 2
    result = checkpoint.collect_garbage(store, grace_seconds=0)
    assert result.removed >= 2  # v1's changed tensor, header and manifest
    assert not store.verify()
    manifest = checkpoint.load_manifest(store, "v2")
    checkpoint.materialize(store, manifest, str(tmp_path / "v2.safetensors"))
    assert (tmp_path / "v2.safetensors").read_bytes() == path.read_bytes()


def test_fsspec_memory_store_round_trip(small_model, tmp_path):
    path, _ = small_model
    store = Store.open("memory://ckpt-test", create=True)
    manifest, out = _round_trip(store, path, tmp_path)
    assert out.read_bytes() == path.read_bytes()


def test_manifest_with_escaping_path_is_refused(store, tmp_path):
    oid = store.put_blob(b"x")
    from modelgit.manifest import FileRecord, TensorRecord
    evil = Manifest((FileRecord("../evil", "blob", {}, (TensorRecord("", "U8", (1,), (oid,)),)),), "dir")
    with pytest.raises(Exception, match="unsafe path"):
        checkpoint.materialize(store, evil, str(tmp_path / "out"))
    assert not (tmp_path / "evil").exists()


def test_torch_and_npz_round_trip_tensor_exact(store, tmp_path):
    import torch

    state = {"w": torch.randn(300, 40, dtype=torch.bfloat16), "b": torch.zeros(0),
             "nested": {"step": 3, "m": torch.arange(10)}}
    torch.save(state, tmp_path / "ckpt.pt")
    manifest, out = _round_trip(store, tmp_path / "ckpt.pt", tmp_path)
    back = torch.load(out, weights_only=True)
    assert torch.equal(back["w"], state["w"]) and back["nested"]["step"] == 3
    assert torch.equal(back["nested"]["m"], state["nested"]["m"]) and back["b"].shape == (0,)

    arrays = {"a": np.arange(12, dtype=np.float64).reshape(3, 4), "flag": np.array(True)}
    np.savez(tmp_path / "arrs.npz", **arrays)
    manifest, out = _round_trip(store, tmp_path / "arrs.npz", tmp_path)
    with np.load(out) as back:
        assert (back["a"] == arrays["a"]).all() and back["flag"] == arrays["flag"]


def test_same_tensor_in_different_formats_is_stored_once(store, tmp_path):
    import torch

    w = torch.randn(256, 256)
    torch.save({"w": w}, tmp_path / "a.pt")
    np.savez(tmp_path / "b.npz", w=w.numpy())
    first = checkpoint.add(store, str(tmp_path / "a.pt"))
    second = checkpoint.add(store, str(tmp_path / "b.npz"))
    assert first.files[0].tensor("w").chunks == second.files[0].tensor("w").chunks


def test_peft_adapter_directory_round_trip(store, tmp_path):
    adapter = tmp_path / "adapter"
    adapter.mkdir()
    (adapter / "adapter_config.json").write_text('{"r": 8, "lora_alpha": 16, "peft_type": "LORA"}')
    write_safetensors(adapter / "adapter_model.safetensors", {
        "base_model.model.q_proj.lora_A.weight": ("F32", (8, 64), float_weights(1, (8, 64)).tobytes()),
        "base_model.model.q_proj.lora_B.weight": ("F32", (64, 8), bytes(64 * 8 * 4)),
    })
    manifest, out = _round_trip(store, adapter, tmp_path)
    for name in ("adapter_config.json", "adapter_model.safetensors"):
        assert (out / name).read_bytes() == (adapter / name).read_bytes()


@pytest.mark.parametrize("kind", ["safetensors", "blob", "torch"])
def test_add_stream_equals_add_and_streams_back(store, small_model, tmp_path, kind):
    import io

    import torch

    path, _ = small_model
    if kind == "blob":
        path = tmp_path / "big.txt"
        path.write_bytes(bytes(range(256)) * (2 * 4096 * 16 + 3))  # > 2 chunks
    elif kind == "torch":
        path = tmp_path / "m.pt"
        torch.save({"w": torch.randn(40, 40)}, path)
    expected = checkpoint.add(store, str(path))
    streamed = checkpoint.add_stream(store, io.BytesIO(path.read_bytes()), path.name)
    assert streamed == expected
    if kind != "torch":  # torch files are rebuilt tensor-exact, not byte-exact
        assert b"".join(checkpoint.iter_file_bytes(store, streamed.files[0])) == path.read_bytes()


def test_add_stream_refuses_trailing_and_truncated_data(store, small_model):
    import io

    path, _ = small_model
    data = path.read_bytes()
    with pytest.raises(FormatError, match="continues after the last tensor"):
        checkpoint.add_stream(store, io.BytesIO(data + b"x"), "model.safetensors")
    with pytest.raises(FormatError, match="truncated"):
        checkpoint.add_stream(store, io.BytesIO(data[:-5]), "model.safetensors")


@pytest.mark.parametrize("target", [1 << 20, 3 * (1 << 20) + 4096])
def test_a_manifest_chunked_another_way_is_still_written_exactly(store, tmp_path, monkeypatch, target):
    """Files are written chunk by chunk at offsets predicted from how this version cuts tensors;
    a manifest whose chunks were cut another way (an older or newer modelgit) is streamed."""
    from modelgit.store import chunk_layout

    path = tmp_path / "model.safetensors"
    write_safetensors(path, {"big": ("F32", (1536, 1024), float_weights(7, (1536, 1024)).tobytes()),
                             "small": ("F32", (10,), float_weights(8, (10,)).tobytes())})
    with monkeypatch.context() as patch:
        patch.setattr(checkpoint, "chunk_layout", lambda itemsize, shape: chunk_layout(itemsize, shape, target))
        manifest = checkpoint.add(store, str(path))
    # 1 MiB: more chunks than this version cuts; 3 MiB + 4 KiB: as many, but of other sizes
    assert len(manifest.files[0].tensor("big").chunks) == len(chunk_layout(4, (1536, 1024), target))
    assert chunk_layout(4, (1536, 1024), target) != chunk_layout(4, (1536, 1024))
    out = tmp_path / "out.safetensors"
    checkpoint.materialize(store, manifest, str(out))
    assert out.read_bytes() == path.read_bytes()
