"""The merge driver (``merge.modelgit.driver``): a three-way merge of checkpoints, tensor by tensor.

Never interactive, so it works in CI and on servers:

* a tensor changed on one side only is taken from that side (added and removed ones too);
* a tensor changed on both sides is merged with the strategy configured for the path — the
  ``modelgit-merge`` attribute in ``.gitattributes`` (``*.safetensors modelgit-merge=ties``), else
  ``git config modelgit.merge.strategy`` — one of ``ours``, ``theirs``, ``average``,
  ``task_arithmetic``, ``ties``, ``dare`` (the last three relative to the merge base);
  without a strategy it is a conflict;
* what cannot be merged (shapes or dtypes changed on both sides, or no strategy) is a conflict:
  the file keeps our version and the driver exits 1 with a message that says how to resolve it.

With ``average`` and ``task_arithmetic``, a merged float tensor is stored as derived objects
(:mod:`modelgit.store.derived`): per chunk, the ``chunk_mix/1`` recipe ``0.5 a + 0.5 b`` or
``a + b - o`` over the chunks of ours, theirs and the merge base, which the store has already,
so the merge commit costs its recipes instead of a delta per chunk (the bytes are the recipe's:
the sum in float64, rounded once). ``ties`` and ``dare`` (selections over whole tensors) and
integer tensors are computed by the merge engine and stored as deltas.
"""

from __future__ import annotations

import json
import sys
from dataclasses import dataclass, field

import numpy as np
import torch

from ..dtypes import DTYPES
from ..errors import ModelgitError
from ..formats.safetensors_format import MAX_HEADER_BYTES, MAX_HEADER_DEPTH, METADATA_KEY
from ..manifest import FileRecord, Manifest, TensorRecord, is_manifest
from ..merge import MergeInputs, get_method
from ..store import Store, chunk_layout
from ..store._functions import chunk_mix_recipe
from ..store.derived import InputRef, compute, numpy_dtype, to_float64
from ..tensor_math import from_torch, to_torch
from ..untrusted import loads_json
from .repo import GitRepo

__all__ = ["merge_manifests", "MergeOutcome", "run_merge_driver", "STRATEGIES"]

STRATEGIES = ("ours", "theirs", "average", "task_arithmetic", "ties", "dare")
_METHOD_OF = {"average": "linear", "task_arithmetic": "task_arithmetic", "ties": "ties", "dare": "dare_linear"}
_MIXABLE = ("F16", "BF16", "F32", "F64")  # dtypes chunk_mix/1 computes on


@dataclass
class MergeOutcome:
    manifest: Manifest
    taken_ours: list[str] = field(default_factory=list)
    taken_theirs: list[str] = field(default_factory=list)
    merged: list[str] = field(default_factory=list)
    conflicts: list[str] = field(default_factory=list)


def _load_tensor(store: Store, record: TensorRecord) -> torch.Tensor:
    raw = b"".join(store.get(oid) for oid in record.chunks)
    return to_torch(raw, record.dtype, record.shape)


def _store_tensor(store: Store, name: str, dtype: str, tensor: torch.Tensor, parent: TensorRecord) -> TensorRecord:
    target = getattr(torch, DTYPES[dtype].torch_name)
    if not target.is_floating_point:
        tensor = tensor.round()
    raw = from_torch(tensor.to(target))
    ids = []
    for index, chunk in enumerate(chunk_layout(DTYPES[dtype].itemsize, tuple(tensor.shape))):
        parent_id = parent.chunks[index] if index < len(parent.chunks) else None
        ids.append(store.put(dtype, chunk.shape, memoryview(raw)[chunk.start:chunk.stop], parent=parent_id).oid)
    return TensorRecord(name, dtype, tuple(tensor.shape), tuple(ids))


def _merge_both(store, name, base, ours, theirs, strategy: str, params: dict) -> TensorRecord:
    if strategy == "ours":
        return ours
    if strategy == "theirs":
        return theirs
    derived = _derived_merge(store, name, base, ours, theirs, strategy)
    if derived is not None:
        return derived
    method = get_method(_METHOD_OF[strategy])
    a, b = _load_tensor(store, ours), _load_tensor(store, theirs)
    o = _load_tensor(store, base) if base is not None else None
    if method.needs_base and o is None:
        raise ModelgitError(f"{name}: strategy {strategy} needs a merge base, but the tensor is new "
                            "on both sides")
    per_model = [{**method.model_params, "weight": 1.0, **params} for _ in (a, b)]
    merged = method.fn(MergeInputs(o, [a, b], per_model, dict(method.options), name))
    if not torch.isfinite(merged.float()).all():
        raise ModelgitError(f"{name}: the {strategy} merge produced NaN or inf")
    return _store_tensor(store, name, ours.dtype, merged, ours)


def _derived_merge(store, name, base, ours, theirs, strategy: str) -> TensorRecord | None:
    """``average`` / ``task_arithmetic`` of a float tensor as ``chunk_mix/1`` recipes over the
    stored chunks of the sides (module docstring); None for what the engine merges."""
    if strategy == "average":
        records, coefficients = [ours, theirs], [0.5, 0.5]
    elif strategy == "task_arithmetic" and base is not None:
        records, coefficients = [base, ours, theirs], [-1.0, 1.0, 1.0]  # o + (a - o) + (b - o)
    else:
        return None
    dtype, shape = ours.dtype, tuple(ours.shape)
    layout = chunk_layout(DTYPES[dtype].itemsize, shape) if dtype in _MIXABLE else []
    if not layout or any(len(r.chunks) != len(layout) for r in records):
        return None
    ids = []
    for index, chunk in enumerate(layout):
        if any((h.dtype, tuple(h.shape)) != (dtype, tuple(chunk.shape))
               for h in (store.header(r.chunks[index]) for r in records)):
            return None  # a manifest whose chunks are not what it says: the engine reports it
        recipe = chunk_mix_recipe([InputRef(r.chunks[index], dtype, tuple(chunk.shape)) for r in records],
                                  coefficients)
        raw = compute(recipe, dtype, tuple(chunk.shape), lambda ref: store.get(ref.oid))
        values = to_float64(np.frombuffer(raw, numpy_dtype(dtype)), dtype)
        if not np.isfinite(values).all():
            raise ModelgitError(f"{name}: the {strategy} merge produced NaN or inf")
        put = store.put_derived(recipe, dtype, tuple(chunk.shape), expected=raw)
        if put is None:  # the store computed other bytes: never relied on
            return None
        ids.append(put.oid)
    return TensorRecord(name, dtype, shape, tuple(ids))


def _same_layout(a: TensorRecord | None, b: TensorRecord | None) -> bool:
    return a is not None and b is not None and a.dtype == b.dtype and a.shape == b.shape


def merge_records(store: Store, base: FileRecord | None, ours: FileRecord, theirs: FileRecord,
                  strategy: str | None, params: dict | None = None) -> MergeOutcome:
    params = params or {}
    o = {t.name: t for t in base.tensors} if base else {}
    a = {t.name: t for t in ours.tensors}
    b = {t.name: t for t in theirs.tensors}
    outcome = MergeOutcome(Manifest((ours,), "file"))
    result: dict[str, TensorRecord] = {}
    for name in sorted(set(o) | set(a) | set(b)):
        t_o, t_a, t_b = o.get(name), a.get(name), b.get(name)
        if t_a == t_b:
            chosen = t_a
        elif t_a == t_o:
            chosen = t_b
            outcome.taken_theirs.append(name)
        elif t_b == t_o:
            chosen = t_a
            outcome.taken_ours.append(name)
        elif strategy is None:
            outcome.conflicts.append(f"{name}: changed on both sides and no merge strategy is set")
            chosen = t_a
        elif not _same_layout(t_a, t_b) or (t_o is not None and not _same_layout(t_o, t_a)
                                            and strategy not in ("ours", "theirs", "average")):
            outcome.conflicts.append(f"{name}: shape or dtype changed on both sides "
                                     f"({_layout(t_o)} -> ours {_layout(t_a)}, theirs {_layout(t_b)})")
            chosen = t_a
        else:
            chosen = _merge_both(store, name, t_o if _same_layout(t_o, t_a) else None, t_a, t_b,
                                 strategy, params)
            outcome.merged.append(name)
        if chosen is not None:
            result[name] = chosen
    tensors = tuple(result[n] for n in sorted(result))
    options = dict(ours.options)
    if ours.format == "safetensors" and [(t.name, t.dtype, t.shape) for t in tensors] != \
            [(t.name, t.dtype, t.shape) for t in sorted(ours.tensors, key=lambda t: t.name)]:
        options["header"] = store.put_blob(_rebuilt_header(store, ours, tensors))
    elif ours.format not in ("safetensors", "blob") and set(result) != set(a):
        outcome.conflicts.append(f"the tensor set changed and {ours.format} files cannot be rebuilt "
                                 "with a different set; resolve by hand")
    outcome.manifest = Manifest((FileRecord(ours.path, ours.format, options, tensors),), "file")
    return outcome


def _layout(t: TensorRecord | None) -> str:
    return "absent" if t is None else f"{t.dtype}{list(t.shape)}"


def _rebuilt_header(store: Store, ours: FileRecord, tensors) -> bytes:
    """A safetensors header for a new tensor set, keeping our ``__metadata__``."""
    header: dict = {}
    if "header" in ours.options:
        old = loads_json(store.get(ours.options["header"]), "safetensors header",
                         MAX_HEADER_BYTES, MAX_HEADER_DEPTH)
        if METADATA_KEY in old:
            header[METADATA_KEY] = old[METADATA_KEY]
    offset = 0
    for t in tensors:
        header[t.name] = {"dtype": t.dtype, "shape": list(t.shape), "data_offsets": [offset, offset + t.nbytes]}
        offset += t.nbytes
    return json.dumps(header, separators=(",", ":")).encode()


def merge_manifests(store: Store, base: Manifest | None, ours: Manifest, theirs: Manifest,
                    strategy: str | None, params: dict | None = None) -> MergeOutcome:
    if ours.root != "file" or theirs.root != "file":
        raise ModelgitError("only single-file manifests are merged by the git driver")
    return merge_records(store, base.files[0] if base else None, ours.files[0], theirs.files[0],
                         strategy, params)


def _strategy_for(repo: GitRepo, path: str) -> tuple[str | None, dict]:
    out = repo.git("check-attr", "modelgit-merge", "modelgit-merge-density", "--", path).decode()
    attrs = {}
    for line in out.splitlines():
        _, attr, value = line.split(": ", 2)
        if value not in ("unspecified", "unset", "set"):
            attrs[attr] = value
    strategy = attrs.get("modelgit-merge") or repo.config_get("modelgit.merge.strategy")
    params = {}
    density = attrs.get("modelgit-merge-density") or repo.config_get("modelgit.merge.density")
    if density:
        params["density"] = float(density)
    if strategy is not None:
        strategy = strategy.replace("-", "_")
        if strategy not in STRATEGIES:
            raise ModelgitError(f"unknown merge strategy {strategy!r} for {path}; use one of "
                                f"{', '.join(STRATEGIES)}")
    return strategy, params


def _read_manifest(path: str, label: str) -> Manifest | None:
    with open(path, "rb") as handle:
        data = handle.read()
    if not data:
        return None
    if not is_manifest(data):
        raise ModelgitError(f"{label} is not a modelgit manifest; was the file committed before "
                            "it was tracked?")
    return Manifest.loads(data, label)


def run_merge_driver(repo: GitRepo, base_path: str, ours_path: str, theirs_path: str, path: str) -> int:
    """Entry point for git: merge into ``ours_path``; 0 when merged, 1 on conflict."""
    store = repo.store()
    base = _read_manifest(base_path, f"{path} (merge base)")
    ours = _read_manifest(ours_path, f"{path} (ours)")
    theirs = _read_manifest(theirs_path, f"{path} (theirs)")
    from .transfer import fetch_missing

    needed = set().union(*(m.object_ids() for m in (base, ours, theirs) if m is not None))
    fetch_missing(repo, store, needed, path)
    strategy, params = _strategy_for(repo, path)
    with store.writing():
        outcome = merge_manifests(store, base, ours, theirs, strategy, params)
    with open(ours_path, "wb") as handle:
        handle.write(outcome.manifest.dumps())
    summary = (f"modelgit merge {path}: {len(outcome.taken_ours)} tensors from ours, "
               f"{len(outcome.taken_theirs)} from theirs, {len(outcome.merged)} merged"
               + (f" ({strategy})" if outcome.merged else ""))
    print(summary, file=sys.stderr)
    if outcome.conflicts:
        print(f"CONFLICT (modelgit): {path}: {len(outcome.conflicts)} tensor(s) cannot be merged "
              "automatically:", file=sys.stderr)
        for line in outcome.conflicts[:20]:
            print(f"  {line}", file=sys.stderr)
        print(f"  The file keeps our version of those tensors. Resolve with `git checkout --ours "
              f"{path}` or `git checkout --theirs {path}` then `git add {path}`; or abort "
              "(`git merge --abort`) and merge again with a strategy, e.g. "
              "`git -c modelgit.merge.strategy=task_arithmetic merge BRANCH` "
              f"(or `{path} modelgit-merge=ties` in .gitattributes).", file=sys.stderr)
        return 1
    return 0
