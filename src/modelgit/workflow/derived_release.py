"""Releases that cost what their adapters cost: merged tensors recorded as derived objects.

A release that merges LoRA adapters into the base with ``linear`` (normalised) or
``task_arithmetic`` changes each targeted weight to ``W + sum_i c_i B_i A_i``; with ``ties`` to
the TIES merge of those task vectors (``ties_lora/1``, whose trim thresholds are computed here
over the whole tensor and recorded); with ``dare_linear`` or ``dare_ties`` to their DARE merge
(``dare_lora/1``, whose drop masks come from seeds recorded per tensor and adapter, derived from
the merge recipe's ``seed``: modelgit's own generator, not torch's, so the release's masks differ
from those of ``modelgit merge`` on the same recipe, drawn the same way). Right after the
merge engine has written a candidate, :func:`derive_merge` recomputes every such tensor with
the store's deterministic ``lora_merge/1`` (:mod:`modelgit.store.derived`) chunk by chunk and
writes those bytes over the engine's (the same sum, in float64 in a fixed order, rounded once:
within an ulp of the engine's float32 result), so what is evaluated and released is exactly what
the recipe computes. It leaves a plan beside the weights (``derived-plan.json``: per chunk, the
inputs by id and the coefficients).

When the release is committed, :func:`record_derived` stores the adapters' factors and, per
chunk, the recipe as a derived object, after checking that computing it from the stored inputs
gives the bytes installed (``Store.put_derived(..., expected=...)``); git's clean filter then
finds each chunk present and stores nothing more. A chunk that does not reproduce (continued
pretraining rewrote the weights, a base chunk missing from the store) is stored by the filter
as before, a delta on the base.

Other methods (DELLA, breadcrumbs, SLERP...) and adapters with ``fan_in_fan_out``,
embedding LoRAs or ``modules_to_save`` on a tensor keep the delta path for those tensors.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass

from .._files import write_atomic
from ..formats.safetensors_format import open_safetensors
from ..store import Store
from ..store.chunking import chunk_layout
from ..store.derived import InputRef, Recipe, compute, numpy_dtype
from ..store._dare import dare_lora_recipe, dare_seed
from ..store._functions import lora_merge_recipe, lora_product, ties_lora_recipe, ties_threshold
from ..store.ids import object_id
from ..dtypes import DTYPES

__all__ = ["DERIVABLE_METHODS", "PLAN_FILE", "DerivedSummary", "TiesForm", "DareForm", "derive_merge",
           "record_derived", "merge_terms", "derive_output"]

DERIVABLE_METHODS = ("linear", "task_arithmetic", "ties", "dare_linear", "dare_ties")
_DARE_OPTIONS = {"normalize", "rescale", "lambda", "int8_mask", "seed"}
PLAN_FILE = "derived-plan.json"
_FLOATS = ("F16", "BF16", "F32", "F64")
_MAX_FACTOR_BYTES = 4 * 1024 * 1024  # a factor is one object (one chunk)


@dataclass(frozen=True)
class DerivedSummary:
    tensors: int  # tensors recomputed (derive) or recorded (record)
    chunks: int
    fallback: int  # chunks left to the filter (not reproduced, or inputs missing)
    stored_bytes: int = 0  # bytes of recipes and factors written to the store


@dataclass(frozen=True)
class TiesForm:
    """A TIES merge of LoRA task vectors: per adapter (directory, weight, density)."""
    models: tuple[tuple[str, float, float], ...]
    lam: float
    normalize: bool


@dataclass(frozen=True)
class DareForm:
    """A DARE merge of LoRA task vectors: per adapter (directory, weight, density); the
    divisor of a normalised merge without consensus is folded into ``lam``."""
    models: tuple[tuple[str, float, float], ...]
    lam: float
    consensus: str  # "none" (dare_linear) or "sum" (dare_ties)
    normalize: bool
    rescale: bool
    seed: int


def _number(value) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def merge_terms(recipe: dict, root: str) -> "list[tuple[str, float]] | TiesForm | DareForm | None":
    """``[(adapter directory, weight factor)]`` when ``recipe`` (a release's merge recipe, paths
    relative to ``root``) is ``base + sum_i f_i delta_i`` with each model ``BASE+ADAPTER``:
    ``task_arithmetic`` (``f_i = lambda w_i``, divided by ``sum w`` when normalised) or a
    normalised ``linear`` (``f_i = w_i / sum w``); a :class:`TiesForm` for ``ties``, a
    :class:`DareForm` for ``dare_linear`` and ``dare_ties``. None for anything else."""
    method = recipe.get("merge_method")
    options = recipe.get("parameters") or {}
    models = recipe.get("models") or []
    if method not in DERIVABLE_METHODS or not models:
        return None
    weights, dirs, densities = [], [], []
    for model in models:
        params = model.get("parameters") or {}
        weight, density = params.get("weight", 1.0), params.get("density", 1.0)
        source = model.get("model", "")
        if not _number(weight) or not _number(density) or source.count("+") != 1:
            return None
        weights.append(float(weight))
        densities.append(float(density))
        dirs.append(os.path.join(root, source.split("+", 1)[1]))
    total = sum(weights)
    if method.startswith("dare_"):
        return _dare_form(method, recipe, options, dirs, weights, densities)
    if method == "ties":
        lam, normalize = options.get("lambda", 1.0), options.get("normalize", True)
        if not _number(lam) or type(normalize) is not bool or options.get("rescale", False) is not False \
                or not all(0.0 < d <= 1.0 for d in densities):
            return None
        return TiesForm(tuple(zip(dirs, weights, densities)), float(lam), normalize)
    if method == "linear":
        if options.get("normalize", True) is not True or total == 0.0 or "base_model" in recipe:
            return None
        return [(d, w / total) for d, w in zip(dirs, weights)]
    lam = options.get("lambda", 1.0)
    if not isinstance(lam, (int, float)) or isinstance(lam, bool):
        return None
    divisor = total if options.get("normalize", False) is True and abs(total) >= 1e-8 else 1.0
    return [(d, float(lam) * w / divisor) for d, w in zip(dirs, weights)]


def _dare_form(method: str, recipe: dict, options: dict, dirs, weights, densities) -> DareForm | None:
    """The :class:`DareForm` of a ``dare_linear`` / ``dare_ties`` recipe (options as the merge
    engine reads them), or None for options it does not know."""
    consensus = "none" if method == "dare_linear" else "sum"
    lam, seed = options.get("lambda", 1.0), options.get("seed", recipe.get("seed", 0))
    normalize, rescale = options.get("normalize", False), options.get("rescale", True)
    if set(options) - _DARE_OPTIONS or not _number(lam) or type(seed) is not int \
            or type(normalize) is not bool or type(rescale) is not bool \
            or not all(d >= 0.0 for d in densities):
        return None
    lam = float(lam)
    if consensus == "none" and normalize:  # the engine's divisor: every model's weight
        total = sum(weights)
        lam, normalize = (lam / total if abs(total) >= 1e-8 else lam), False
    models = tuple(zip(dirs, weights, (min(d, 1.0) for d in densities)))
    return DareForm(models, lam, consensus, normalize, rescale, seed)


def _adapter_factors(directory: str, factor: float) -> dict[str, tuple[str, str, float]] | None:
    """``{base tensor name: (A key, B key, coefficient)}`` of a plain LoRA adapter, or None when
    the adapter has anything else (fan_in_fan_out, embeddings, DoRA...)."""
    from ..merge.lora import PREFIX, load_adapter

    adapter = load_adapter(directory)  # checks the config and the halves as the merge did
    if adapter.config.get("fan_in_fan_out") or adapter.config.get("use_dora"):
        return None
    reader = open_safetensors(os.path.join(directory, "adapter_model.safetensors"))
    try:
        keys = {entry.name: entry for entry in reader.entries()}
    finally:
        reader.close()
    out = {}
    for module, parts in adapter.lora.items():
        if parts.get("embedding"):
            return None
        a_key = next((k for k in keys if k in (f"{PREFIX}{module}.lora_A.weight",
                                               f"{module}.lora_A.weight")), None)
        b_key = next((k for k in keys if k in (f"{PREFIX}{module}.lora_B.weight",
                                               f"{module}.lora_B.weight")), None)
        if a_key is None or b_key is None:
            return None  # named adapters (lora_A.<name>.weight): left to the delta path
        out[f"{module}.weight"] = (a_key, b_key, factor * adapter.scale(module))
    if adapter.saved:
        for name in adapter.saved:
            out.pop(name, None)  # replaced outright: not a sum of products
    return out


class _Tensors:
    """Tensors of the safetensors files of one directory (or of one file), by name."""

    def __init__(self, directory: str):
        self.readers, self.where = [], {}
        if os.path.isfile(directory):
            directory, names = os.path.split(directory)
            names = [names]
        else:
            names = sorted(os.listdir(directory))
        for name in names:
            if name.endswith(".safetensors"):
                reader = open_safetensors(os.path.join(directory, name))
                self.readers.append(reader)
                for entry in reader.entries():
                    self.where[entry.name] = (reader, entry, name)

    def close(self) -> None:
        for reader in self.readers:
            reader.close()


def _tensor_plan(entry) -> list[dict]:
    """Per chunk of base tensor ``entry``: the recipe's parts (ids filled in later)."""
    chunks = []
    row_bytes = DTYPES[entry.dtype].itemsize * entry.shape[1]
    for chunk in chunk_layout(DTYPES[entry.dtype].itemsize, entry.shape):
        if len(chunk.shape) != 2 or chunk.start % row_bytes:
            return []  # a row larger than a chunk: not row slices
        r0 = chunk.start // row_bytes
        chunks.append({"rows": [r0, r0 + chunk.shape[0]], "start": chunk.start, "stop": chunk.stop})
    return chunks


def derive_merge(recipe: dict, root: str, base_dir: str, merged_dir: str) -> DerivedSummary:
    """Recompute the tensors of ``merged_dir`` that ``recipe`` made from the base of ``base_dir``
    and LoRA adapters with ``lora_merge/1``, write them over the merge's bytes and leave the plan
    (:data:`PLAN_FILE`) for :func:`record_derived`. Does nothing for other recipes."""
    terms = merge_terms(recipe, root)
    if terms is None:
        return DerivedSummary(0, 0, 0)
    form = terms if isinstance(terms, (TiesForm, DareForm)) else None
    if form is not None:  # the scale only: weights and densities are TIES's / DARE's own
        terms = [(d, 1.0) for d, _w, _density in form.models]
    per_adapter = [(d, _adapter_factors(d, f)) for d, f in terms]
    if any(factors is None for _, factors in per_adapter):
        return DerivedSummary(0, 0, 0)
    targets = sorted(set().union(*(set(f) for _, f in per_adapter)))
    base, merged = _Tensors(base_dir), _Tensors(merged_dir)
    plan, chunk_count = [], 0
    try:
        for name in targets:
            if name not in base.where or name not in merged.where:
                continue
            _r, entry, _f = base.where[name]
            _m, m_entry, m_file = merged.where[name]
            if entry.dtype not in _FLOATS or len(entry.shape) != 2 or \
                    (m_entry.dtype, m_entry.shape) != (entry.dtype, entry.shape):
                continue
            tensor = _derive_tensor(name, entry, base, merged, m_file, per_adapter, form)
            if tensor:
                plan.append(tensor)
                chunk_count += len(tensor["chunks"])
    finally:
        base.close()
        merged.close()
    write_atomic(os.path.join(merged_dir, PLAN_FILE), json.dumps(plan, sort_keys=True))
    return DerivedSummary(len(plan), chunk_count, 0)


def _derive_tensor(name, entry, base, merged, m_file, per_adapter, form=None) -> dict | None:
    """Compute tensor ``name`` chunk by chunk, write it into the merged file; its plan entry."""
    import numpy as np

    reader = base.where[name][0]
    contents: dict[str, object] = {}
    terms = []
    factor_files = []
    for index, (directory, factors) in enumerate(per_adapter):
        if name not in factors:  # its task vector is 0 here: it adds nothing, and 0 never votes
            continue
        a_key, b_key, coefficient = factors[name]
        adapter_file = os.path.join(directory, "adapter_model.safetensors")
        refs = []
        a_reader = open_safetensors(adapter_file)
        try:
            entries = {e.name: e for e in a_reader.entries()}
            for key in (a_key, b_key):
                e = entries[key]
                if e.dtype not in _FLOATS or e.nbytes > _MAX_FACTOR_BYTES:
                    return None
                data = bytes(a_reader.data(key))
                ref = InputRef(object_id(e.dtype, e.shape, data), e.dtype, tuple(e.shape))
                contents[ref.oid] = data
                refs.append(ref)
        finally:
            a_reader.close()
        if form is None:
            terms.append((refs[0], refs[1], coefficient))
        elif isinstance(form, DareForm):  # the mask's seed, per tensor and adapter
            _d, weight, density = form.models[index]
            terms.append((refs[0], refs[1], coefficient, weight, density,
                          dare_seed(form.seed, name, index)))
        else:  # the trim threshold over the whole tensor, from the very products chunks compute
            _d, weight, density = form.models[index]
            a = np.frombuffer(contents[refs[0].oid], numpy_dtype(refs[0].dtype)).reshape(refs[0].shape)
            b = np.frombuffer(contents[refs[1].oid], numpy_dtype(refs[1].dtype)).reshape(refs[1].shape)
            threshold = ties_threshold(np.abs(lora_product(a, b, coefficient)), density)
            terms.append((refs[0], refs[1], coefficient, weight, threshold))
        factor_files.append([adapter_file, a_key, b_key])
    chunks = _tensor_plan(entry)
    if not terms or not chunks:
        return None
    m_reader = merged.where[name][0]
    out_path = m_reader.path
    offset = m_reader._data_start + m_reader._offsets[name][0]  # where its bytes are in the file
    planned = []
    with open(out_path, "r+b") as out:
        for chunk in chunks:
            shape = (chunk["rows"][1] - chunk["rows"][0], entry.shape[1])
            base_bytes = np.empty(chunk["stop"] - chunk["start"], dtype=np.uint8)
            reader.read_into(name, chunk["start"], base_bytes)
            base_ref = InputRef(object_id(entry.dtype, shape, base_bytes), entry.dtype, shape)
            contents[base_ref.oid] = base_bytes
            recipe = _chunk_recipe(base_ref, tuple(chunk["rows"]), terms, form)
            raw = compute(recipe, entry.dtype, shape, lambda ref: contents[ref.oid])
            out.seek(offset + chunk["start"])
            out.write(raw)
            planned.append({"recipe": json.loads(recipe.to_bytes()), "shape": list(shape),
                            "start": chunk["start"], "stop": chunk["stop"]})
            del contents[base_ref.oid]
        out.flush()
        os.fsync(out.fileno())
    return {"name": name, "dtype": entry.dtype, "factors": factor_files, "chunks": planned}


def _chunk_recipe(base: InputRef, rows: tuple[int, int], terms: list, form) -> Recipe:
    """The recipe of one chunk: ``lora_merge/1`` for a sum of products (``form`` None), else
    the function of ``form``'s method."""
    if form is None:
        return lora_merge_recipe(base, rows, terms)
    if isinstance(form, DareForm):
        return dare_lora_recipe(base, rows, terms, form.lam, form.consensus, form.normalize,
                                form.rescale)
    return ties_lora_recipe(base, rows, terms, form.lam, form.normalize)


def record_derived(store: Store, plan_path: str, model_dir: str) -> DerivedSummary:
    """Store the factors and the recipes of the plan at ``plan_path`` for the weights installed
    in ``model_dir``, each checked to reproduce the installed bytes. Chunks that do not (or
    whose base chunk the store lacks) are left to git's filter."""
    import numpy as np

    if not os.path.isfile(plan_path):
        return DerivedSummary(0, 0, 0)
    with open(plan_path) as handle:
        plan = json.load(handle)
    installed = _Tensors(model_dir)
    done = fallback = written = 0
    try:
        with store.writing():
            for tensor in plan:
                for adapter_file, *keys in tensor["factors"]:
                    written += _put_factors(store, adapter_file, keys)
                reader, entry, _ = installed.where.get(tensor["name"], (None, None, None))
                for chunk in tensor["chunks"]:
                    body = chunk["recipe"]
                    recipe = Recipe(body["fn"], tuple(InputRef(i["id"], i["dtype"], tuple(i["shape"]))
                                                      for i in body["inputs"]), body["params"])
                    shape = tuple(chunk["shape"])
                    if reader is not None and not all(store.has(i.oid) for i in recipe.inputs):
                        store.flush()  # factors new to the store are staged until then
                    if reader is None or entry.dtype != tensor["dtype"] \
                            or not all(store.has(i.oid) for i in recipe.inputs):
                        fallback += 1
                        continue
                    expected = np.empty(chunk["stop"] - chunk["start"], dtype=np.uint8)
                    reader.read_into(tensor["name"], chunk["start"], expected)
                    put = store.put_derived(recipe, tensor["dtype"], shape, expected=expected)
                    if put is None:
                        fallback += 1
                        continue
                    done += 1
                    written += put.stored_bytes
    finally:
        installed.close()
    return DerivedSummary(len(plan), done, fallback, written)


def _put_factors(store: Store, adapter_file: str, keys: list[str]) -> int:
    """Store the LoRA factors ``keys`` of an adapter file (one object each); bytes written."""
    reader = open_safetensors(adapter_file)
    written = 0
    try:
        entries = {e.name: e for e in reader.entries()}
        for key in keys:
            e = entries[key]
            written += store.put(e.dtype, tuple(e.shape), bytes(reader.data(key))).stored_bytes
    finally:
        reader.close()
    return written


def derive_output(recipe: dict, root: str, output: str, store: Store) -> DerivedSummary:
    """``modelgit merge --derived``: recompute the tensors that ``recipe`` (a merge of
    ``BASE+ADAPTER`` models of one base, paths relative to ``root``) merged into ``output`` with
    the derived functions, as a release does (:func:`derive_merge`: the output's bytes become the
    recipes'), and store their factors and recipes in ``store`` (:func:`record_derived`), so that
    adding ``output`` to the store then finds those chunks present. Nothing for other recipes.
    """
    base = _common_base(recipe, root)
    if base is None:
        return DerivedSummary(0, 0, 0)
    plan = os.path.join(output, PLAN_FILE)
    if os.path.lexists(plan):
        os.remove(plan)  # only a plan written just now is followed (it names files to read)
    derive_merge(recipe, root, base, output)
    try:
        return record_derived(store, plan, output)
    finally:
        if os.path.isfile(plan):
            os.remove(plan)  # not a file of the model: added with it, it would be committed


def _common_base(recipe: dict, root: str) -> str | None:
    """The base every ``BASE+ADAPTER`` model of ``recipe`` names (and ``base_model``, if set),
    as a path under ``root``; None when they differ or it is not a local file or directory."""
    bases = set()
    for model in recipe.get("models") or []:
        source = model.get("model", "") if isinstance(model, dict) else ""
        if not isinstance(source, str) or source.count("+") != 1:
            return None
        bases.add(os.path.normpath(source.split("+", 1)[0]))
    if isinstance(recipe.get("base_model"), str):
        bases.add(os.path.normpath(recipe["base_model"]))
    if len(bases) != 1:
        return None
    path = os.path.join(root, bases.pop())
    return path if os.path.exists(path) else None
