"""Check a contributed LoRA adapter before anything of it is committed, merged or executed.

Data, not code: an adapter is ``adapter_config.json`` + ``adapter_model.safetensors`` and a few
JSON files of metadata, nothing else. Every tensor must belong to a module of the base it claims,
with shapes that fit that module, finite values, and a rank and size within the project's limits.
Every problem is reported at once, so a contributor fixes them in one go.
"""

from __future__ import annotations

import os

from ..adapters.pooling import MODEL_TYPES, POOLINGS
from ..errors import FormatError, UsageError
from ..merge.lora_config import feature_problems, lora_config_problems
from ..untrusted import load_json_file
from .metadata import metadata_problems

__all__ = ["ADAPTER_FILES", "METADATA_FILES", "ContributionError", "validate_adapter",
           "adapter_summary", "file_problem"]

ADAPTER_FILES = ("adapter_config.json", "adapter_model.safetensors")
#: written by ``modelgit train`` beside the adapter; optional, JSON only
METADATA_FILES = ("data_card.json", "metrics.json", "training_config.json", "labels.json")
_FLOATS = ("F32", "F16", "BF16")


class ContributionError(UsageError):
    """A contribution was refused; ``problems`` lists every reason."""

    def __init__(self, what: str, problems: list[str]):
        self.problems = list(problems)
        super().__init__(f"{what} refused, {len(problems)} problem(s):\n  - " + "\n  - ".join(problems))


def file_problem(name: str) -> str | None:
    """Why a file called ``name`` may not be part of a contribution, or None when it may (the
    same rule for ``contribute``'s directory and review's git trees)."""
    if name in ADAPTER_FILES + METADATA_FILES:
        return None
    kind = "pickled weights (code runs when they are loaded): convert them to safetensors" \
        if name.endswith((".bin", ".pt", ".pth", ".pkl", ".ckpt")) else \
        "code is never accepted" if name.endswith((".py", ".so", ".sh")) else \
        f"only {', '.join(ADAPTER_FILES + METADATA_FILES)} are accepted"
    return f"{name[:100]!r}: not allowed in a contribution ({kind})"


def _files_problems(adapter_dir: str, limits) -> list[str]:
    problems = []
    for name in sorted(os.listdir(adapter_dir)):
        path = os.path.join(adapter_dir, name)
        if os.path.islink(path):
            problems.append(f"{name[:100]!r}: a symbolic link; send the file itself")
        elif os.path.isdir(path):
            problems.append(f"{name[:100]!r}/: a directory; a contribution is one flat adapter "
                            "directory")
        elif file_problem(name):
            problems.append(file_problem(name))
        elif name.endswith(".json") and os.path.getsize(path) > limits.max_metadata_kb * 1024:
            problems.append(f"{name}: {os.path.getsize(path)} bytes, over the limit of "
                            f"{limits.max_metadata_kb} KiB")
    for name in ADAPTER_FILES:
        if not os.path.isfile(os.path.join(adapter_dir, name)):
            problems.append(f"{name} is missing (write the adapter with PEFT's save_pretrained, "
                            "safe_serialization=True, or `modelgit train`)")
    return problems


def _read_json(path: str, problems: list[str], max_bytes: int):
    """The parsed file (strict JSON within limits), or None with the reason in ``problems``."""
    try:
        value = load_json_file(path, os.path.basename(path), max_bytes)
    except FormatError as exc:
        problems.append(str(exc))
        return None
    if not isinstance(value, dict):
        problems.append(f"{os.path.basename(path)}: expected a JSON object")
        return None
    return value


def _config_problems(config: dict, limits) -> list[str]:
    """Everything ``modelgit merge`` checks (finite numbers, types, safe patterns), the PEFT
    features a contribution may not use, and the project's rank limit."""
    problems = [f"adapter_config.json: {p}" for p in lora_config_problems(config)]
    problems += [f"adapter_config.json: {p}" for p in feature_problems(config)]
    ranks = [config.get("r"), *((config.get("rank_pattern") or {}).values()
                                if isinstance(config.get("rank_pattern"), dict) else [])]
    for value in ranks:
        if isinstance(value, int) and not isinstance(value, bool) and value > limits.max_rank:
            problems.append(f"rank {value} is over the project's limit of {limits.max_rank} "
                            "(modelgit.yaml limits.max_rank): train with a smaller --rank")
    return problems


def _expected_shape(kind: str, rank: int, base_shape: tuple[int, ...], transposed: bool):
    if kind == "embedding_A":  # (r, vocab) for a (vocab, dim) embedding
        return (rank, base_shape[0])
    if kind == "embedding_B":
        return (base_shape[1], rank)
    out_f, in_f = (base_shape[1], base_shape[0]) if transposed else base_shape
    return (rank, in_f) if kind == "A" else (out_f, rank)


def _tensor_problems(weights: str, config: dict, base: dict, limits,
                     prefix: str | None = None) -> tuple[list[str], dict]:
    import torch

    from ..formats.safetensors_format import open_safetensors
    from ..tensor_math import to_torch

    problems: list[str] = []
    size = os.path.getsize(weights)
    if size > limits.max_adapter_bytes:
        problems.append(f"adapter_model.safetensors is {size / 2**20:.1f} MiB, over the project's "
                        f"limit of {limits.max_adapter_mb:g} MiB (modelgit.yaml limits.max_adapter_mb)")
        return problems, {}
    try:
        reader = open_safetensors(weights)
    except (FormatError, OSError) as exc:  # (named by its file name: the directory is modelgit's)
        return [f"adapter_model.safetensors cannot be read: "
                f"{str(exc).replace(weights + ': ', '').replace(weights, 'the file')}"], {}
    modules: dict[str, set] = {}
    try:
        for entry in reader.entries():
            where = f"tensor {entry.name[:200]!r}"
            if entry.dtype not in _FLOATS:
                problems.append(f"{where}: dtype {entry.dtype}; LoRA weights are F32, F16 or BF16")
                continue
            tensor = to_torch(reader.data(entry.name), entry.dtype, entry.shape)
            if not bool(torch.isfinite(tensor).all()):
                bad = int((~torch.isfinite(tensor)).sum())
                problems.append(f"{where}: {bad} NaN or infinite values: the training diverged; "
                                "lower the learning rate and train again")
            problems.extend(_shape_problems(entry.name, tuple(entry.shape), config, base, modules,
                                            prefix))
    finally:
        reader.close()
    for module, kinds in sorted(modules.items()):
        if kinds not in ({"A", "B"}, {"embedding_A", "embedding_B"}):
            problems.append(f"module {module[:200]!r}: has {sorted(kinds)}, needs both LoRA halves "
                            "A and B")
    return problems, modules


def _shape_problems(name: str, shape: tuple, config: dict, base: dict, modules: dict,
                    prefix: str | None = None) -> list[str]:
    from ..merge.lora import pattern_value, split_key
    from ..merge.task_heads import align_name

    module, kind = split_key(name)  # read as the merge will read it
    if kind is None:  # a modules_to_save copy replaces a base tensor outright
        plain = align_name(module, base, prefix) or module
        if plain not in base:
            if prefix and len(shape) <= 2:  # a new task head (a classifier's), merged by its rule
                return []
            return [f"tensor {name[:200]!r}: the base has no tensor {plain[:200]!r} (different base model?)"]
        if tuple(base[plain][1]) != shape:
            return [f"tensor {name[:200]!r}: shape {list(shape)}, but the base's {plain} is "
                    f"{list(base[plain][1])} (wrong shapes: trained on another base?)"]
        return []
    weight = align_name(f"{module}.weight", base, prefix) or f"{module}.weight"
    module = weight[: -len(".weight")]
    modules.setdefault(module, set()).add(kind)
    if weight not in base:
        return [f"tensor {name[:200]!r}: the base has no module {module[:200]!r} (different base model?)"]
    base_shape = tuple(base[weight][1])
    if len(base_shape) != 2:
        return [f"tensor {name[:200]!r}: base weight {weight} has shape {list(base_shape)}, not a matrix"]
    rank = pattern_value(config.get("rank_pattern"), module, config.get("r"))
    if not isinstance(rank, int):
        return []
    want = _expected_shape(kind, rank, base_shape, bool(config.get("fan_in_fan_out")))
    if shape != want:
        return [f"tensor {name[:200]!r}: shape {list(shape)}, expected {list(want)} for rank {rank} on "
                f"{weight} {list(base_shape)} (wrong shapes: trained on another base?)"]
    return []


def task_model_of(model_type, config):
    from ..merge.task_heads import task_model_of as of

    return of(model_type, config)


def _targets_problems(config: dict, modules: dict) -> list[str]:
    targets = config.get("target_modules")
    if not modules:
        return ["adapter_model.safetensors holds no LoRA weights (lora_A / lora_B)"]
    if isinstance(targets, str) or targets is None:
        return []  # a regex or all-linear: PEFT resolves it against the base
    names = set(targets)
    # PEFT matches a target by the module name's suffix: "query", or "pooler.dense" (a classifier's)
    stray = sorted(m for m in modules
                   if m not in names and not any(m.endswith("." + t) for t in names))
    if stray:
        return [f"modules {stray[:3]} are not in adapter_config.json's target_modules "
                f"{sorted(names)}: the config does not describe these weights"]
    return []


def _plain_file(adapter_dir: str, name: str) -> bool:
    path = os.path.join(adapter_dir, name)
    return os.path.isfile(path) and not os.path.islink(path)


def labels_problems_of(adapter_dir: str, config: dict | None, labels, max_bytes: int) -> list[str]:
    """A classifier adapter against the project's class names ``labels`` (modelgit.yaml's
    ``labels:``): its ``labels.json`` must number exactly those classes in that order, or its
    head cannot be merged with the others'."""
    path = os.path.join(adapter_dir, "labels.json")
    classifier = isinstance(config, dict) and config.get("task_type") == "SEQ_CLS"
    if not labels or not (classifier or _plain_file(adapter_dir, "labels.json")):
        return []
    expected = {str(i): name for i, name in enumerate(labels)}
    shown = ", ".join(labels[:20]) + (" ..." if len(labels) > 20 else "")
    if not _plain_file(adapter_dir, "labels.json"):
        return [f"the adapter has no labels.json, but the project numbers its {len(labels)} classes "
                f"({shown}): train it with `modelgit train ... --labels {','.join(labels[:20])}` "
                "(or inside the project's repository)"]
    found: list[str] = []
    data = _read_json(path, found, max_bytes)
    if found or not isinstance(data, dict) or not isinstance(data.get("id2label"), dict):
        return found or ["labels.json is not {\"id2label\": {...}}"]
    if data["id2label"] != expected:
        got = [str(v)[:40] for _, v in sorted(data["id2label"].items(),
                                             key=lambda kv: (len(str(kv[0])), str(kv[0])))]
        return [f"its classes are numbered {', '.join(got[:20])}, but the project's labels (in "
                f"modelgit.yaml) are {shown}: train it again with `--labels "
                f"{','.join(labels[:20])}` so that its head matches the others'"]
    return []


def pooling_problems_of(adapter_dir: str, model_type: str | None, classifier: str | None,
                        max_bytes: int, modules=()) -> list[str]:
    """A classifier adapter's pooling (labels.json's ``pooling``) against the base's
    ``model_type`` (mean pooling is built for BERT), its ``modules`` (a mean-pooled one must
    leave the constant pooler alone: it would be reviewed with its own and released with the
    constant) and the project's ``classifier:`` (``probe``: mean pooling; ``tuned``: the first
    token), so that every head merged reads the same."""
    if not _plain_file(adapter_dir, "labels.json"):
        return []
    data = _read_json(os.path.join(adapter_dir, "labels.json"), [], max_bytes)
    pooling = data.get("pooling", "cls") if isinstance(data, dict) else None
    if pooling not in POOLINGS:  # reported with the metadata's problems
        return []
    if pooling == "mean" and model_type is not None and model_type not in MODEL_TYPES:
        return [f"labels.json asks for mean pooling, which is built for BERT encoders, not "
                f"{model_type!r}: train it again with --classifier tuned"]
    pooler = sorted(m for m in modules if "pooler" in str(m).split("."))
    if pooling == "mean" and pooler:
        return [f"a mean-pooled classifier (labels.json \"pooling\": \"mean\") changes the pooler "
                f"({pooler[0]}), which mean pooling fixes: train it again with --classifier probe"]
    wanted = {"probe": "mean", "tuned": "cls"}.get(classifier or "")
    if wanted and pooling != wanted:
        return [f"the project's classifier is {classifier} (modelgit.yaml `classifier:`), but the "
                f"adapter is a {'probe' if pooling == 'mean' else 'tuned'} classifier: train it "
                f"again with --classifier {classifier} (or inside the project's repository)"]
    return []


def validate_adapter(adapter_dir: str, base: dict, limits, labels=None,
                     model_type: str | None = None, classifier: str | None = None) -> dict:
    """Validate the adapter in ``adapter_dir`` against the base tensors ``base``
    (``{name: (dtype, shape)}``), the project's ``limits`` and, for a classifier, the project's
    class names ``labels`` (see :func:`labels_problems_of`) and ``classifier`` kind (see
    :func:`pooling_problems_of`).

    With the base's ``model_type``, an adapter trained on a task model (a sequence classifier
    of a bare encoder) is read as the merge reads it: its body's names mapped onto the base's,
    its new head accepted (see :mod:`modelgit.merge.task_heads`).

    Returns:
        A summary (see :func:`adapter_summary`).
    Raises:
        ContributionError: listing every problem.
    """
    if not os.path.isdir(adapter_dir):
        raise UsageError(f"{adapter_dir!r} is not a directory: give the adapter directory that "
                         "`modelgit train` (or PEFT's save_pretrained) wrote")
    problems = _files_problems(adapter_dir, limits)
    max_bytes = limits.max_metadata_kb * 1024
    config = None
    if _plain_file(adapter_dir, "adapter_config.json"):
        config = _read_json(os.path.join(adapter_dir, "adapter_config.json"), problems, max_bytes)
    for name in METADATA_FILES:
        if _plain_file(adapter_dir, name):
            value = _read_json(os.path.join(adapter_dir, name), problems, max_bytes)
            if value is not None:
                problems.extend(metadata_problems(name, value))
    modules: dict = {}
    weights = os.path.join(adapter_dir, "adapter_model.safetensors")
    if config is not None:
        problems.extend(_config_problems(config, limits))
        usable = not lora_config_problems(config)  # r and the patterns are sound to compute with
        if usable and _plain_file(adapter_dir, "adapter_model.safetensors"):
            task = task_model_of(model_type, config)
            found, modules = _tensor_problems(weights, config, base, limits,
                                              task.prefix if task else None)
            problems.extend(found)
            if not found:
                problems.extend(_targets_problems(config, modules))
    problems.extend(labels_problems_of(adapter_dir, config, labels, max_bytes))
    problems.extend(pooling_problems_of(adapter_dir, model_type, classifier, max_bytes, modules))
    if problems:
        raise ContributionError(f"the adapter {adapter_dir}", problems)
    return adapter_summary(adapter_dir, config, sorted(modules))


def adapter_summary(adapter_dir: str, config: dict, modules: list[str]) -> dict:
    """Rank, alpha, targets, size and content id of a (validated) adapter."""
    import blake3

    digest = blake3.blake3()
    for name in ADAPTER_FILES:
        with open(os.path.join(adapter_dir, name), "rb") as handle:
            while block := handle.read(1 << 20):
                digest.update(block)
    targets = config.get("target_modules")
    return {"rank": config.get("r"), "alpha": config.get("lora_alpha", config.get("r")),
            "use_rslora": bool(config.get("use_rslora")),
            "target_modules": sorted(targets) if isinstance(targets, list) else targets,
            "modules": len(modules), "task_type": config.get("task_type"),
            "bytes": os.path.getsize(os.path.join(adapter_dir, "adapter_model.safetensors")),
            "content_id": digest.hexdigest()}
