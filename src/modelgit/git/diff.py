"""Tensor-level diffs between two versions of a checkpoint, computed from stored objects.

Chunks with equal ids are equal, so only changed chunks are decoded; the squared norm of an
unchanged chunk (needed for relative norms and cosines) is computed once per object and cached
in the store under ``stats/``. Nothing is written to disk as a checkpoint.

**Relative L2**, one definition at every scale: for a set S of tensors present in both versions
with the same dtype and shape (added, removed, reshaped and retyped tensors are not in it),

    rel_l2(S) = sqrt(sum over t in S of ||new_t - old_t||^2) / sqrt(sum over t in S of ||old_t||^2)

*tensor* rel.L2 takes S = {the tensor}; *layer* rel.L2 the tensors of one layer
(``model.layers.3``); *file* rel.L2 every tensor of the file (for a single-file checkpoint, the
whole model). Unchanged tensors count in the denominator: a layer where one small tensor moved
a lot has a small layer-wide figure. ``modelgit diff``, ``git diff`` and ``modelgit log`` show
these same figures, each labelled with its scale.
"""

from __future__ import annotations

import json
import math
import re
from collections import defaultdict
from dataclasses import asdict, dataclass, field

import numpy as np

from .._parallel import ordered_map
from ..dtypes import DTYPES
from ..manifest import FileRecord, Manifest, TensorRecord
from ..store import Store


def as_float64(raw, dtype: str) -> np.ndarray:
    """The values of a chunk as a flat float64 array: numpy for every dtype it has (bf16 through
    its bit pattern); torch, which costs ~1.3 s to import, only for the fp8 types."""
    info = DTYPES[dtype]
    if info.numpy_name:
        return np.frombuffer(raw, info.numpy_name).astype(np.float64)
    if dtype == "BF16":
        return (np.frombuffer(raw, "<u2").astype(np.uint32) << 16).view(np.float32).astype(np.float64)
    from ..tensor_math import to_torch

    itemsize = info.itemsize
    return to_torch(raw, dtype, (len(raw) // itemsize,)).double().numpy()

__all__ = ["TensorChange", "FileDiff", "diff_manifests", "diff_records", "format_diff", "relative_l2"]

_UINT = {1: np.uint8, 2: np.uint16, 4: np.uint32, 8: np.uint64}
_NUMERIC = {d for d in DTYPES if d != "C64"}


@dataclass
class TensorChange:
    name: str
    status: str  # added | removed | changed | reshaped | retyped | unchanged
    dtype: tuple[str | None, str | None]
    shape: tuple[list[int] | None, list[int] | None]
    bytes: int
    chunks_changed: int = 0
    chunks_total: int = 0
    rel_l2: float | None = None  # ||new - old|| / ||old||
    cosine: float | None = None
    frac_changed: float | None = None  # fraction of elements whose bits changed
    old_norm: float | None = None
    delta_norm: float | None = None


@dataclass
class FileDiff:
    path: str
    tensors: list[TensorChange] = field(default_factory=list)

    def counts(self) -> dict[str, int]:
        out: dict[str, int] = defaultdict(int)
        for t in self.tensors:
            out[t.status] += 1
        return dict(out)

    def rel_l2(self) -> float | None:
        """File-wide relative L2 of the change (see the module docstring)."""
        return relative_l2(self.tensors)

    def layers(self) -> list[dict]:
        """Per-layer summary of changed tensors: count and layer-wide relative L2."""
        groups: dict[str, list[TensorChange]] = defaultdict(list)
        for t in self.tensors:
            groups[layer_of(t.name)].append(t)
        rows = []
        for layer, items in groups.items():
            changed = [t for t in items if t.status != "unchanged"]
            if not changed:
                continue
            rows.append({"layer": layer, "changed": len(changed), "tensors": len(items),
                         "rel_l2": relative_l2(items)})
        return sorted(rows, key=lambda r: -(r["rel_l2"] or 0.0))

    def as_dict(self) -> dict:
        """``rel_l2`` is file-wide, each layer's layer-wide, each tensor's its own."""
        return {"path": self.path, "counts": self.counts(), "rel_l2": self.rel_l2(),
                "layers": self.layers(),
                "tensors": [asdict(t) for t in self.tensors if t.status != "unchanged"]}


def relative_l2(tensors: list[TensorChange]) -> float | None:
    """sqrt(sum ||new - old||^2) / sqrt(sum ||old||^2) over the tensors compared value by value
    (same dtype and shape in both versions); None when there are none, or all were zero."""
    compared = [t for t in tensors if t.old_norm is not None and t.delta_norm is not None]
    old = sum(t.old_norm ** 2 for t in compared)
    return math.sqrt(sum(t.delta_norm ** 2 for t in compared) / old) if old > 0 else None


_LAYER_RE = re.compile(r"^(.*?\.\d+)\.")


def layer_of(name: str) -> str:
    """``model.layers.3.mlp.up_proj.weight`` -> ``model.layers.3``; else all but the last part."""
    match = _LAYER_RE.match(name)
    if match:
        return match.group(1)
    return name.rsplit(".", 1)[0] if "." in name else name


def _sumsq(store: Store, oid: str, dtype: str) -> float:
    recorded = store.header(oid).sumsq  # written with the object: no decoding needed
    if recorded is not None:
        return recorded
    key = f"stats/{oid[:2]}/{oid[2:]}"
    try:
        return float(json.loads(store.backend.read(key))["sumsq"])
    except (FileNotFoundError, ValueError, KeyError):
        pass
    values = as_float64(store.get_buffer(oid), dtype)
    value = float(np.dot(values, values))
    store.backend.write_atomic(key, json.dumps({"sumsq": value}).encode())
    return value


def _compare_chunks(store: Store, dtype: str, a_id: str, b_id: str) -> tuple[float, ...]:
    """(|a|^2, |b|^2, a.b, |b-a|^2, elements changed) of one chunk pair."""
    a_raw = store.get_buffer(a_id)
    b_raw = store.get_buffer(b_id, known={a_id: a_raw})  # b is often a delta on a: decoded once
    itemsize = DTYPES[dtype].itemsize
    changed = int(np.count_nonzero(np.frombuffer(a_raw, _UINT[itemsize]) !=
                                   np.frombuffer(b_raw, _UINT[itemsize])))
    a, b = as_float64(a_raw, dtype), as_float64(b_raw, dtype)
    ab = float(np.dot(a, b))
    aa, bb = float(np.dot(a, a)), float(np.dot(b, b))
    np.subtract(b, a, out=b)
    return aa, bb, ab, float(np.dot(b, b)), changed


def _tensor_change(store: Store, old: TensorRecord | None, new: TensorRecord | None) -> TensorChange:
    ref = new or old
    change = TensorChange(ref.name, "unchanged", (old and old.dtype, new and new.dtype),
                          (old and list(old.shape), new and list(new.shape)), ref.nbytes,
                          chunks_total=len(ref.chunks))
    if old is None or new is None:
        change.status = "added" if old is None else "removed"
        change.chunks_changed = len(ref.chunks)
        return change
    if old.dtype != new.dtype or old.shape != new.shape:
        change.status = "retyped" if old.dtype != new.dtype else "reshaped"
        change.chunks_changed = sum(1 for i, c in enumerate(new.chunks)
                                    if i >= len(old.chunks) or old.chunks[i] != c)
        return change
    numeric = new.dtype in _NUMERIC
    if old.chunks == new.chunks:
        if numeric:
            change.old_norm = math.sqrt(sum(_sumsq(store, c, new.dtype) for c in old.chunks))
            change.delta_norm = 0.0
        return change
    change.status = "changed"
    pairs = list(zip(old.chunks, new.chunks))
    changed_pairs = [(a, b) for a, b in pairs if a != b]
    change.chunks_changed = len(changed_pairs)
    if not numeric:
        return change
    aa = bb = ab = dd = 0.0
    elements = 0
    for a, b in pairs:
        if a == b:
            sq = _sumsq(store, a, new.dtype)
            aa, bb, ab = aa + sq, bb + sq, ab + sq
    results = ordered_map(lambda p: _compare_chunks(store, new.dtype, p[0], p[1]), changed_pairs)
    for r_aa, r_bb, r_ab, r_dd, r_changed in results:
        aa, bb, ab, dd = aa + r_aa, bb + r_bb, ab + r_ab, dd + r_dd
        elements += r_changed
    numel = math.prod(new.shape)
    change.old_norm, change.delta_norm = math.sqrt(aa), math.sqrt(dd)
    change.rel_l2 = math.sqrt(dd / aa) if aa > 0 else None
    change.cosine = ab / math.sqrt(aa * bb) if aa > 0 and bb > 0 else None
    change.frac_changed = elements / numel if numel else 0.0
    return change


def diff_records(store: Store, path: str, old: FileRecord | None, new: FileRecord | None) -> FileDiff:
    old_t = {t.name: t for t in old.tensors} if old else {}
    new_t = {t.name: t for t in new.tensors} if new else {}
    result = FileDiff(path)
    for name in sorted(set(old_t) | set(new_t)):
        result.tensors.append(_tensor_change(store, old_t.get(name), new_t.get(name)))
    return result


def diff_manifests(store: Store, path: str, old: Manifest | None, new: Manifest | None) -> list[FileDiff]:
    """One FileDiff per file of the two manifests (a directory manifest has several)."""
    old_files = {f.path: f for f in old.files} if old else {}
    new_files = {f.path: f for f in new.files} if new else {}
    single = (old is None or old.root == "file") and (new is None or new.root == "file")
    out = []
    for name in sorted(set(old_files) | set(new_files)):
        label = path if single else f"{path}/{name}"
        out.append(diff_records(store, label, old_files.get(name), new_files.get(name)))
    if single and len(out) > 1:  # a single file renamed inside the manifest: compare them
        out = [diff_records(store, path, old.files[0] if old else None, new.files[0] if new else None)]
    return out


def _fmt(value: float | None, spec: str = ".3g") -> str:
    return "-" if value is None else format(value, spec)


def format_diff(diff: FileDiff, top: int = 10) -> str:
    counts = diff.counts()
    changed_bytes = sum(t.bytes for t in diff.tensors if t.status != "unchanged")
    total_bytes = sum(t.bytes for t in diff.tensors)
    parts = [f"{counts.get(k, 0)} {k}" for k in ("changed", "added", "removed", "reshaped", "retyped")
             if counts.get(k)]
    whole = diff.rel_l2()
    lines = [f"{diff.path}: {', '.join(parts) or 'no tensor changed'}; "
             f"{counts.get('unchanged', 0)} unchanged "
             f"({changed_bytes / 2**20:.1f} of {total_bytes / 2**20:.1f} MiB in changed tensors)"
             + (f"; file-wide rel.L2 {_fmt(whole)}" if whole else "")]
    layers = diff.layers()
    if layers:
        lines.append(f"  {'layer':<40} {'changed':>9} {'layer rel.L2':>12}")
        for row in layers[:top]:
            lines.append(f"  {row['layer']:<40} {row['changed']:>4}/{row['tensors']:<4} {_fmt(row['rel_l2']):>12}")
        if len(layers) > top:
            lines.append(f"  ... {len(layers) - top} more layers")
    moved = sorted((t for t in diff.tensors if t.status == "changed"), key=lambda t: -(t.rel_l2 or 0))
    if moved:
        lines.append(f"  {'most changed tensors':<40} {'shape':>16} {'tensor rel.L2':>13} {'cosine':>9} "
                     f"{'elements':>9}")
        for t in moved[:top]:
            shape = "x".join(map(str, t.shape[1])) or "scalar"
            frac = "-" if t.frac_changed is None else f"{100 * t.frac_changed:.1f}%"
            lines.append(f"  {t.name:<40} {shape:>16} {_fmt(t.rel_l2):>13} {_fmt(t.cosine, '.6f'):>9} {frac:>9}")
    for t in diff.tensors:
        if t.status in ("added", "removed"):
            lines.append(f"  {t.status}: {t.name} {t.dtype[0] or t.dtype[1]} {t.shape[0] or t.shape[1]}")
        elif t.status in ("reshaped", "retyped"):
            lines.append(f"  {t.status}: {t.name} {t.dtype[0]} {t.shape[0]} -> {t.dtype[1]} {t.shape[1]}"
                         f" ({t.chunks_changed}/{t.chunks_total} chunks differ)")
    return "\n".join(lines)
