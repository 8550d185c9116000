"""Router files: a directory with ``router.json`` (the settings) and ``router.safetensors`` (the
tensors). Nothing in them is executed or unpickled; both are read as untrusted input.

``router.json`` (canonical JSON: sorted keys, 2-space indent)::

    {"format": "modelgit-router", "format_version": 1,
     "kind": "arrow" | "examples" | "reviews", "mode": "hard" | "soft",
     "top_k": int >= 1, "threshold": number | null, "temperature": number > 0,
     "embedder": "base:LAYER" | "minilm" | null,
     "base_fingerprint": hex,            # the base the router was built for
     "adapters": [{"name": str, "adapter_id": hex | null}, ...],
     "classes": [{"name": str, "target": adapter name | "base"}, ...],
     "settings": {...kind-specific...}, "created_by": "modelgit X.Y.Z"}

Readers MUST refuse: a file over 1 MiB or nested over 8 levels, non-strict JSON (NaN,
duplicate keys), another ``format``, a ``format_version`` above theirs (a message to upgrade), an
unknown kind or mode, an unusable adapter or class name, a tensor that is not float32 (int64 for
``example_class``), not finite, or shaped other than the kind needs (a linear probe's ``scale``
not positive), and a safetensors file over
256 MiB. Loading against a library further refuses a router built for another base fingerprint
or naming an adapter the library lacks (:func:`check_against`).
"""

from __future__ import annotations

import os

from ..errors import FormatError, UsageError
from ..untrusted import dumps_json, load_json_file, number_problem, text_problem
from .library import BASE, check_adapter_name
from .router import FORMAT_VERSION, KINDS, MODES, Router, RouterSpec

__all__ = ["save_router", "load_router", "check_against", "SPEC_FILE", "TENSORS_FILE"]

SPEC_FILE = "router.json"
TENSORS_FILE = "router.safetensors"
_FORMAT = "modelgit-router"
MAX_SPEC_BYTES = 1024 * 1024
MAX_TENSOR_BYTES = 256 * 1024 * 1024
_MAX_DEPTH = 8
_MAX_ITEMS = 4096


def _to_json(spec: RouterSpec) -> dict:
    from .. import __version__

    return {"format": _FORMAT, "format_version": FORMAT_VERSION, "kind": spec.kind,
            "mode": spec.mode, "top_k": spec.top_k, "threshold": spec.threshold,
            "temperature": spec.temperature, "embedder": spec.embedder,
            "base_fingerprint": spec.base_fingerprint,
            "adapters": [{"name": n, "adapter_id": i} for n, i in spec.adapters],
            "classes": [{"name": n, "target": t} for n, t in spec.classes],
            "settings": spec.settings, "created_by": f"modelgit {__version__}"}


def save_router(router: Router, directory: str, overwrite: bool = False) -> str:
    """Write ``router`` as ``directory`` (all of it or nothing: through a temporary directory).

    Raises:
        UsageError: ``directory`` exists and is not empty (and not ``overwrite``), or is a
            link, a file or a device.
    """
    from safetensors.torch import save_file

    from .._outputs import (check_output, install_directory, remove, remove_stale_temporaries,
                            temporary_path)

    directory = os.path.normpath(directory)
    check_output(directory, "directory", overwrite, "--force")
    parent = os.path.dirname(os.path.abspath(directory))
    os.makedirs(parent, exist_ok=True)
    remove_stale_temporaries(parent, os.path.basename(directory))
    tmp = temporary_path(directory)
    os.makedirs(tmp)
    try:
        tensors = {k: v.detach().contiguous().cpu() for k, v in sorted(router.tensors.items())}
        save_file(tensors, os.path.join(tmp, TENSORS_FILE), metadata={"format": "pt"})
        with open(os.path.join(tmp, SPEC_FILE), "w", encoding="utf-8") as handle:
            handle.write(dumps_json(_to_json(router.spec)))
        install_directory(tmp, directory, owned=lambda name: name in (SPEC_FILE, TENSORS_FILE))
    finally:
        remove(tmp)
    return directory


# ---------------------------------------------------------------------------- reading
def _spec_problems(data) -> list[str]:
    if not isinstance(data, dict):
        return ["not a JSON object"]
    problems = []
    if data.get("format") != _FORMAT:
        return [f"format is {str(data.get('format'))[:40]!r}, not {_FORMAT!r}: not a router file"]
    version = data.get("format_version")
    if number_problem(version, "format_version", 1, integer=True):
        return [f"format_version {str(version)[:20]!r} is not a positive integer"]
    if version > FORMAT_VERSION:
        return [f"format_version {version} is newer than this modelgit reads ({FORMAT_VERSION}): "
                "upgrade modelgit (pip install -U modelgit) to load this router"]
    if data.get("kind") not in KINDS:
        problems.append(f"unknown router kind {str(data.get('kind'))[:40]!r} (this modelgit knows "
                        f"{', '.join(KINDS)}): upgrade modelgit, or rebuild the router")
    if data.get("mode") not in MODES:
        problems.append(f"unknown mode {str(data.get('mode'))[:20]!r} (hard or soft)")
    problems += [p for p in (number_problem(data.get("top_k"), "top_k", 1, 4096, integer=True),
                             number_problem(data.get("temperature"), "temperature", 0, 1e6,
                                            above_minimum=True)) if p]
    if data.get("threshold") is not None:
        problems += [p for p in [number_problem(data["threshold"], "threshold", -1e6, 1e6)] if p]
    fingerprint = data.get("base_fingerprint")
    if not (isinstance(fingerprint, str) and 40 <= len(fingerprint) <= 64
            and all(c in "0123456789abcdef" for c in fingerprint)):
        problems.append("base_fingerprint is not a hex fingerprint")
    embedder = data.get("embedder")
    if embedder is not None:
        from .embed import parse_embedder

        try:
            parse_embedder(embedder)
        except UsageError as exc:
            problems.append(str(exc))
    if not isinstance(data.get("settings"), dict):
        problems.append("settings is not an object")
    return problems + _names_problems(data)


def _names_problems(data) -> list[str]:
    problems = []
    adapters, classes = data.get("adapters"), data.get("classes", [])
    if not isinstance(adapters, list) or not 1 <= len(adapters) <= _MAX_ITEMS:
        return [f"adapters must be a list of 1 to {_MAX_ITEMS} entries"]
    if not isinstance(classes, list) or len(classes) > _MAX_ITEMS:
        return [f"classes must be a list of at most {_MAX_ITEMS} entries"]
    names = []
    for entry in adapters:
        name = entry.get("name") if isinstance(entry, dict) else None
        try:
            names.append(check_adapter_name(name))
        except UsageError as exc:
            problems.append(str(exc))
        adapter_id = entry.get("adapter_id") if isinstance(entry, dict) else None
        if adapter_id is not None and text_problem(adapter_id, "adapter_id", 128):
            problems.append(f"adapter {str(name)[:40]!r}: adapter_id is not a short id")
    if len(set(names)) != len(names):
        problems.append("an adapter is named twice")
    for entry in classes:
        if not isinstance(entry, dict) or text_problem(entry.get("name"), "class name", 200):
            problems.append("a class has no usable name")
        elif entry.get("target") not in (*names, BASE):
            problems.append(f"class {entry['name'][:40]!r} goes to {str(entry.get('target'))[:40]!r}, "
                            "which is neither an adapter of the router nor base")
    return problems


def _spec_from_json(data: dict) -> RouterSpec:
    return RouterSpec(kind=data["kind"], mode=data["mode"], top_k=data["top_k"],
                      threshold=None if data.get("threshold") is None else float(data["threshold"]),
                      temperature=float(data["temperature"]), embedder=data.get("embedder"),
                      base_fingerprint=data["base_fingerprint"],
                      adapters=tuple((a["name"], a.get("adapter_id")) for a in data["adapters"]),
                      classes=tuple((c["name"], c["target"]) for c in data.get("classes", [])),
                      settings=data["settings"])


def _read_tensors(path: str) -> dict:
    from ..formats.safetensors_format import open_safetensors
    from ..tensor_math import to_torch

    if not os.path.isfile(path):
        raise FormatError(f"{path}: missing (a router directory holds {SPEC_FILE} and {TENSORS_FILE})")
    size = os.path.getsize(path)
    if size > MAX_TENSOR_BYTES:
        raise FormatError(f"{path}: {size} bytes, over the limit of {MAX_TENSOR_BYTES} for a router")
    reader = open_safetensors(path)  # header validated: offsets, dtypes, size, duplicates
    try:
        out = {}
        for entry in reader.entries():
            expected = "I64" if entry.name == "example_class" else "F32"
            if entry.dtype != expected:
                raise FormatError(f"{path}: tensor {entry.name[:80]!r} is {entry.dtype}, not {expected}")
            out[entry.name] = to_torch(reader.data(entry.name), entry.dtype, tuple(entry.shape))
        return out
    finally:
        reader.close()


def load_router(directory: str) -> Router:
    """Read and check a router directory (see the module docstring for what is refused).

    Raises:
        FormatError: a missing, malformed, hostile or newer-format file, with the reason.
    """
    spec_path = os.path.join(directory, SPEC_FILE)
    if not os.path.isfile(spec_path):
        raise FormatError(f"{directory!r} is not a router directory: it has no {SPEC_FILE} "
                          "(write one with `modelgit route build`)")
    data = load_json_file(spec_path, spec_path, MAX_SPEC_BYTES, _MAX_DEPTH)
    problems = _spec_problems(data)
    if problems:
        raise FormatError(f"{spec_path} is not a usable router, {len(problems)} problem(s):\n  - "
                          + "\n  - ".join(problems))
    spec = _spec_from_json(data)
    tensors = _read_tensors(os.path.join(directory, TENSORS_FILE))
    problems = _tensor_problems(spec, tensors)
    if problems:
        raise FormatError(f"{directory}/{TENSORS_FILE} does not fit {SPEC_FILE}:\n  - "
                          + "\n  - ".join(problems))
    return Router(spec, tensors)


def _tensor_problems(spec: RouterSpec, tensors: dict) -> list[str]:
    import torch

    problems = [f"tensor {name[:60]!r} holds NaN or infinite values" for name, t in
                sorted(tensors.items()) if t.is_floating_point() and not bool(torch.isfinite(t).all())]
    adapters, classes = len(spec.adapters), len(spec.classes)
    if spec.kind == "arrow":
        modules = spec.settings.get("modules")
        if not isinstance(modules, list) or not modules or not all(isinstance(m, str) for m in modules):
            return problems + ["settings.modules must list the scored layers"]
        for index in range(len(modules)):
            dirs, sigma = tensors.get(f"directions.{index}"), tensors.get(f"sigma.{index}")
            if dirs is None or sigma is None or dirs.dim() != 3 or sigma.dim() != 2 \
                    or dirs.shape[:2] != sigma.shape or dirs.shape[0] != adapters:
                problems.append(f"layer {index}: directions must be (adapters={adapters}, d, in) "
                                "and sigma (adapters, d)")
            elif bool((sigma < 0).any()):
                problems.append(f"layer {index}: negative singular values")
        offset = tensors.get("offset")
        if offset is not None and tuple(offset.shape) != (adapters,):
            problems.append(f"offset must be a vector of one value per adapter ({adapters})")
        for key in ("layers", "route_tokens"):
            if number_problem(spec.settings.get(key), f"settings.{key}", 1, 1_000_000, integer=True):
                problems.append(f"settings.{key} must be a positive integer")
        return problems
    center = tensors.get("center")
    if center is None or center.dim() != 1:
        return problems + ["center must be a vector"]
    dim = center.shape[0]
    method = spec.settings.get("method")
    if method == "centroid":
        centroids = tensors.get("centroids")
        if centroids is None or tuple(centroids.shape) != (classes, dim):
            problems.append(f"centroids must be (classes={classes}, {dim})")
    elif method == "knn":
        examples, owner = tensors.get("examples"), tensors.get("example_class")
        if examples is None or owner is None or examples.dim() != 2 or examples.shape[1] != dim \
                or tuple(owner.shape) != (examples.shape[0],):
            problems.append(f"examples must be (n, {dim}) and example_class (n,)")
        elif owner.numel() and (int(owner.min()) < 0 or int(owner.max()) >= classes):
            problems.append(f"example_class values must be class indices 0..{classes - 1}")
        if number_problem(spec.settings.get("k"), "settings.k", 1, 10_000, integer=True):
            problems.append("settings.k must be a positive integer")
    elif method == "linear":
        problems += _probe_problems(tensors, classes, dim)
        if number_problem(spec.settings.get("l2"), "settings.l2", 0, 1e6, above_minimum=True):
            problems.append("settings.l2 must be a positive number")
    else:
        problems.append(f"settings.method {str(method)[:20]!r} is not centroid, knn or linear")
    if not classes:
        problems.append("an examples or reviews router needs classes")
    return problems


def _probe_problems(tensors: dict, classes: int, dim: int) -> list[str]:
    """A linear probe's tensors: scale (dim,) positive, weight (classes, dim), bias (classes,)."""
    problems = []
    scale, weight, bias = tensors.get("scale"), tensors.get("weight"), tensors.get("bias")
    if scale is None or tuple(scale.shape) != (dim,):
        problems.append(f"scale must be a vector of {dim} values")
    elif bool((scale <= 0).any()):
        problems.append("scale must be positive")
    if weight is None or tuple(weight.shape) != (classes, dim):
        problems.append(f"weight must be (classes={classes}, {dim})")
    if bias is None or tuple(bias.shape) != (classes,):
        problems.append(f"bias must be a vector of one value per class ({classes})")
    return problems


def check_against(router: Router, library, where: str = "the router") -> None:
    """Refuse a router that does not fit ``library``: another base, an adapter it lacks.

    Raises:
        UsageError: naming the fingerprints or the missing adapters (and the library's).
    """
    spec = router.spec
    if spec.base_fingerprint != library.base_fingerprint:
        raise UsageError(f"{where} was built for another base (fingerprint "
                         f"{spec.base_fingerprint[:16]}...) than the library's {library.base_dir} "
                         f"({library.base_fingerprint[:16]}...): build it again for this base "
                         "(`modelgit route build`)")
    missing = [n for n in spec.adapter_names if n not in library.names]
    if missing:
        raise UsageError(f"{where} names adapter(s) {', '.join(missing)} that the library lacks "
                         f"(its adapters: {', '.join(library.names)}): give them to the library "
                         "or build the router again")
    changed = [n for n, adapter_id in spec.adapters
               if adapter_id and library.get(n).adapter_id and library.get(n).adapter_id != adapter_id]
    if changed:
        raise UsageError(f"{where} was built for other versions of adapter(s) {', '.join(changed)} "
                         "(their content ids differ): build the router again")
