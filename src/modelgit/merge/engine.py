"""The streaming merge engine: output tensors computed side by side, each written as it goes.

For each output tensor the engine resolves the recipe's parameters for it (gradients, filters)
and runs the method. Methods with a streaming form (linear, the task-arithmetic family) read
their inputs in blocks (read straight from the files, or from the tensor store) and the
result is cast to the output dtype and written to its place in the output shard block by
block; the others get every input tensor whole. Each tensor is a task on a worker thread with
one torch intra-op thread (see :mod:`._schedule` and :func:`_write_all`): as many at once as
there are free cores, within a memory budget. Peak memory is a multiple of the largest tensor
E, never the model size: linear holds a few blocks; TIES and its family ~3E while selecting one
task vector's entries (see task_arithmetic); the whole-tensor methods (inputs + a few) x E.
Output bytes depend only on the recipe and the input bytes, not on the thread counts: random
methods are seeded per tensor, and no operation is split across threads.

Every input spec is opened once, and ``BASE+ADAPTER`` specs share their base: it is read and
hashed once, and the tensors an adapter leaves alone are known to be the base's.

Every output records its provenance: the recipe text and a content id per input, in the
safetensors ``__metadata__`` and in ``modelgit_merge.json`` next to the weights. The inputs are
hashed as the merge reads them; the headers, written first with placeholder ids of the same
length, get the real ones at the end.
"""

from __future__ import annotations

import functools
import json
import math
import os
import re
import threading
from dataclasses import dataclass, field, replace
from typing import Iterator

import torch

from .. import __version__
from .._threads import plan_threads
from ..dtypes import DTYPES, FLOAT_DTYPES
from ..errors import ModelgitError, UsageError
from ..progress import progress_bar
from ..store.ids import ID_HEX_LEN
from ._schedule import Task, run_tasks
from .base import LazyInputs, MergeInputs, get_method
from .methods._common import BLOCK, collect
from .lora import low_rank, save_adapter
from .parameters import layer_index, layer_position, method_params, resolve
from .recipe import Recipe, model_inputs, same_model
from .sources import Source, lazy_tensor, open_source
from .._outputs import check_output
from .task_heads import TaskModel, heads_files, label_problems, model_config, task_config
from .vocabulary import TOKENIZER_FILES, local_directory, tokenizer_problems, tokenizer_spec
from .writer import DEFAULT_SHARD_BYTES, MARKER, PlannedTensor, ShardedWriter

__all__ = ["MergePlan", "plan_merge", "run_merge", "MergeResult"]

_LAYER_RE = re.compile(r"((?:^|\.)(?:layers|h|layer|blocks|block)\.)(\d+)(\.)")
MIN_BUDGET = 256 * 1024 * 1024  # bytes the tensors computed at once may hold together, at least
_COPIED_FILES = ("config.json", "generation_config.json", "tokenizer.json", "tokenizer_config.json",
                 "special_tokens_map.json", "tokenizer.model", "vocab.txt", "vocab.json", "merges.txt")


@dataclass
class OutputTensor:
    name: str
    dtype: str
    shape: tuple[int, ...]
    base: tuple[int, str] | None  # (source index, input tensor name)
    # (source index, input name, the model's parameter mappings, most specific first)
    models: list[tuple[int, str, tuple[dict, ...]]]
    copy_only: bool = False  # non-float tensors are copied from the first input
    position: float = 0.0  # depth t of the tensor, for gradients (modelgit.merge.parameters)
    levels: tuple[dict, ...] = ()  # parameter mappings between the models' and the top level (a slice's)
    head: bool = False  # a task head: the mean of the models' heads (see modelgit.merge.task_heads)


@dataclass(frozen=True)
class TaskHeads:
    """Task heads the merged adapters bring (see :mod:`.task_heads`): the rule the merge
    follows for them, the task model, its classes (``average``) or the sources whose heads are
    kept (``keep``)."""

    rule: str
    task: TaskModel
    labels: dict[int, str] | None
    kept: tuple[int, ...] = ()  # indices of the sources whose heads `keep` writes
    pooling: str = "cls"  # mean: the heads bring the constant mean-pooling layer (one layer more)


@dataclass
class MergePlan:
    recipe: Recipe
    sources: list[Source]
    specs: list[str]
    outputs: list[OutputTensor] = field(default_factory=list)
    problems: list[str] = field(default_factory=list)
    num_layers: int = 0
    fisher_sources: dict = field(default_factory=dict)
    opened: dict = field(default_factory=dict)  # every source opened, by spec (open_source's)
    heads: TaskHeads | None = None  # the task heads of classifier adapters, and their rule
    # the classes of a classifier whose head the inputs replace (a classifier base): config.json's
    labels: dict[int, str] | None = None

    def close(self) -> None:
        everything = [*self.sources, *self.opened.values(), *self.fisher_sources.values()]
        for source in {id(s): s for s in everything if s is not None}.values():
            source.close()


@dataclass
class MergeResult:
    output: str
    tensors: int
    bytes: int
    warnings: list[str]


def _layer_count(names) -> int:
    indices = [int(m.group(2)) for n in names for m in [_LAYER_RE.search(n)] if m]
    return max(indices) + 1 if indices else 0


def _renumber(name: str, index: int) -> str:
    return _LAYER_RE.sub(lambda m: f"{m.group(1)}{index}{m.group(3)}", name, count=1)


def plan_merge(recipe: Recipe) -> MergePlan:
    """Open every input and work out every output tensor; collect all problems (no raise)."""
    method = get_method(recipe.merge_method)
    specs: list[str] = []

    def index_of(spec: str) -> int:
        if spec not in specs:
            specs.append(spec)
        return specs.index(spec)

    base_index = index_of(recipe.base_model) if recipe.base_model else None
    # as in mergekit: a base listed among the models is the base of a method that takes one as its
    # reference, and one more model of a method that has no use for it (recipe.model_inputs)
    entries = model_inputs(method, recipe.base_model, recipe.models)
    model_indices = [index_of(e.model) for e in entries]
    for s in recipe.slices:
        if s.base_model:
            index_of(s.base_model)
        for source in s.sources:
            index_of(source.model)
    plan = MergePlan(recipe, [], specs)
    for spec in specs:
        try:
            plan.sources.append(open_source(spec, plan.opened))
        except ModelgitError as exc:
            plan.problems.append(f"input {spec}: {exc}")
            plan.sources.append(None)
    if plan.problems:
        return plan
    infos = [s.tensors() for s in plan.sources]
    head_names = {n for s in plan.sources for n in getattr(s, "heads", ())}
    if recipe.slices:
        if head_names:
            plan.problems.append("the adapters carry task heads (e.g. a classifier's), which a "
                                 "merge by slices does not handle: merge them with `models:`")
        _plan_slices(plan, infos)
    else:
        reference = base_index if base_index is not None else model_indices[0]
        plan.num_layers = _layer_count(infos[reference])
        for name, info in infos[reference].items():
            if name in head_names:
                continue
            base = (base_index, name) if base_index is not None else None
            models = [(i, name, (e.parameters,)) for i, e in zip(model_indices, entries)]
            plan.outputs.append(OutputTensor(name, _out_dtype(recipe, info.dtype), info.shape, base, models,
                                             info.dtype not in FLOAT_DTYPES,
                                             layer_position(name, plan.num_layers)))
        for i, e in zip(model_indices, entries):
            missing = sorted(set(infos[reference]) - set(infos[i]) - head_names)
            extra = sorted(set(infos[i]) - set(infos[reference]) - head_names)
            if missing:
                plan.problems.append(f"{e.model} lacks {len(missing)} tensors of the reference model, "
                                     f"e.g. {missing[:3]} (a different architecture?)")
            if extra:
                plan.problems.append(f"{e.model} has {len(extra)} tensors the reference lacks, e.g. "
                                     f"{extra[:3]}; they are not in the output")
        if head_names:
            _plan_heads(plan, infos, entries, model_indices)
        else:
            _plan_replaced_heads(plan, entries, model_indices)
    _check_shapes(plan, infos)
    _check_architectures(plan)
    if recipe.tokenizer_source is not None:
        plan.problems.extend(tokenizer_problems(recipe.tokenizer_source, recipe.base_model, plan.specs))
    if method.needs_base and base_index is None and not recipe.slices:
        plan.problems.append(f"{method.name} needs a base_model")
    return plan


def _plan_heads(plan: MergePlan, infos, entries, model_indices: list[int]) -> None:
    """Plan the task heads by the recipe's ``heads:`` rule (:mod:`.task_heads`): check that the
    adapters were trained for one task model and, to average, that they name the same classes
    with heads of one shape; name the body's outputs as the task model's."""
    bearers = [(i, e) for i, e in zip(model_indices, entries) if getattr(plan.sources[i], "heads", ())]
    tasks = {plan.sources[i].task for i, _ in bearers}
    if len(tasks) != 1:
        listing = ", ".join(f"{e.model}: {plan.sources[i].task.architecture}" for i, e in bearers)
        plan.problems.append(f"the adapters were trained for different task models ({listing})")
        return
    task = tasks.pop()
    rule = plan.recipe.heads or "average"
    pooling = _pooling(plan, bearers, rule)
    if pooling is None:
        return
    if rule == "keep":
        plan.heads = TaskHeads(rule, task, None, tuple(i for i, _ in bearers))
        return
    problems = label_problems([(e.model, plan.sources[i].labels) for i, e in bearers])
    if problems:
        plan.problems.extend(problems)
        return
    plan.heads = TaskHeads(rule, task, plan.sources[bearers[0][0]].labels, pooling=pooling)
    names = sorted({n for i, _ in bearers for n in plan.sources[i].heads})
    for name in names:
        shapes = {e.model: infos[i].get(name) for i, e in bearers}
        if len({None if v is None else v.shape for v in shapes.values()}) != 1:
            listing = ", ".join(f"{m}: {list(v.shape) if v else 'none'}" for m, v in shapes.items())
            plan.problems.append(f"task head {name}: the adapters' heads differ ({listing}); "
                                 "give the recipe `heads: keep`")
            return
        info = infos[bearers[0][0]][name]
        plan.outputs.append(OutputTensor(name, _out_dtype(plan.recipe, info.dtype), info.shape, None,
                                         [(i, name, (e.parameters,)) for i, e in bearers], head=True,
                                         position=1.0))
    prefix = task.prefix + "."
    if not any(o.name.startswith(prefix) for o in plan.outputs if not o.head):  # a bare base
        for o in plan.outputs:
            if not o.head:
                o.name = prefix + o.name
    heads = {o.name for o in plan.outputs if o.head}  # mean pooling's pooler replaces the base's
    plan.outputs = [o for o in plan.outputs if o.head or o.name not in heads]


def _pooling(plan: MergePlan, bearers, rule: str) -> str | None:
    """How every classifier merged reads the encoder (``cls`` or ``mean``, their labels.json);
    None, with the problem recorded, when they differ or ``keep`` meets mean pooling."""
    poolings = {e.model: getattr(plan.sources[i], "pooling", "cls") for i, e in bearers}
    if len(set(poolings.values())) > 1:
        listing = ", ".join(f"{m}: {'mean pooling' if p == 'mean' else 'the first token'}"
                            for m, p in poolings.items())
        plan.problems.append(
            f"the classifiers read the encoder differently ({listing}): their heads cannot be "
            "combined. Train every contribution with one `--classifier` (probe: mean pooling; "
            "tuned: the first token), e.g. the project's `classifier:` in modelgit.yaml")
        return None
    pooling = next(iter(poolings.values()))
    if pooling == "mean" and rule == "keep":
        plan.problems.append("`heads: keep` keeps heads for a router over one body; mean-pooled "
                             "classifiers (labels.json \"pooling\": \"mean\") are merged with "
                             "`heads: average` (the classes must agree)")
        return None
    return pooling


def _plan_replaced_heads(plan: MergePlan, entries, model_indices: list[int]) -> None:
    """When the base already has the task head (a classifier base), the inputs' heads are
    merged like any weight: check that the inputs that name their classes (an adapter's
    labels.json, a classifier's config.json) name the same ones in the same order, and name
    them in the output's config.json. Rows of heads numbered differently must not be averaged."""
    labelled = [(e.model, _input_labels(plan.sources[i], e.model))
                for i, e in zip(model_indices, entries)]
    labelled = [(spec, labels) for spec, labels in labelled if labels]
    if not labelled:
        return
    problems = label_problems(labelled, new_heads=False)
    if problems:
        plan.problems.extend(problems)
        return
    plan.labels = labelled[0][1]


def _input_labels(source: Source, spec: str) -> dict[int, str] | None:
    """The classes an input names: an adapter's labels.json, or the id2label of a sequence
    classifier's config.json unless it is transformers' default (``LABEL_0``, ...: no names)."""
    if hasattr(source, "task"):  # an adapter merged onto its base
        return source.labels
    config = model_config(local_directory(spec))
    names = config.get("id2label")
    if not any(str(a).endswith("ForSequenceClassification") for a in config.get("architectures") or ()) \
            or not isinstance(names, dict):
        return None
    try:
        labels = {int(k): str(v) for k, v in names.items()}
    except (TypeError, ValueError):
        return None
    if all(v == f"LABEL_{k}" for k, v in labels.items()):
        return None
    return labels


def _out_dtype(recipe: Recipe, dtype: str) -> str:
    """The recipe's output dtype for a float tensor; integer buffers (position ids, step
    counters) keep theirs: 257 in bfloat16 would be 256."""
    return recipe.dtype if recipe.dtype and dtype in FLOAT_DTYPES else dtype


def _slice_inputs(plan: MergePlan, s) -> tuple:
    """``(base, models)`` of one slice: the base source (index, source) or None, and the
    (index, source) of each model, as :func:`plan_merge` maps a base among the models."""
    method = get_method(plan.recipe.merge_method)
    base_spec = s.base_model or plan.recipe.base_model
    base, models = None, []
    for source in s.sources:
        item = (plan.specs.index(source.model), source)
        is_base = bool(base_spec) and same_model(source.model, base_spec)
        if is_base and base is None:
            base = item
        if not is_base or method.base_is_input:
            models.append(item)
    return base, models


def _plan_slices(plan: MergePlan, infos) -> None:
    """Layer slicing and stacking, as mergekit plans it: each slice's layers merged from its
    sources (renumbered into the output, gradients spanning the slice); the tensors outside the
    layers merged from the first slice's sources (embeddings) or the last one's (final norm, head)."""
    slices = plan.recipe.slices
    planned = [_slice_inputs(plan, s) for s in slices]

    def lead(inputs) -> tuple:  # (index, source) that lists a slice's tensors: its first model
        base, models = inputs
        return models[0] if models else base

    def add(out_name: str, in_name, s, inputs, position: float) -> None:
        base, models = inputs
        index, source = lead(inputs)
        info = infos[index].get(in_name(source))
        if info is None:
            plan.problems.append(f"{source.model} has no tensor {in_name(source)}")
            return
        plan.outputs.append(OutputTensor(
            out_name, _out_dtype(plan.recipe, info.dtype), info.shape,
            (base[0], in_name(base[1])) if base else None,
            [(i, in_name(src), (src.parameters,)) for i, src in models], info.dtype not in FLOAT_DTYPES,
            position, (s.parameters,)))

    outside = [n for n in infos[lead(planned[0])[0]] if layer_index(n) is None]
    for name in outside:  # before the layers (embeddings): from the first slice, at t = 0
        if _before_layers(name):
            add(name, lambda src, name=name: name, slices[0], planned[0], 0.0)
    out_layer = 0
    for s, inputs in zip(slices, planned):
        index, source = lead(inputs)
        start, stop = source.layer_range
        for offset in range(stop - start):
            position = offset / (stop - start - 1) if stop - start > 1 else 1.0  # mergekit's t
            names = [name for name in infos[index] if layer_index(name) == start + offset]
            if not names:
                plan.problems.append(f"{source.model} has no layer {start + offset} (layer_range {[start, stop]})")
            for name in names:
                add(_renumber(name, out_layer),
                    lambda src, name=name, offset=offset: _renumber(name, src.layer_range[0] + offset),
                    s, inputs, position)
            out_layer += 1
    plan.num_layers = out_layer
    for name in outside:  # after the layers (final norm, head): from the last slice, at t = 0
        if not _before_layers(name):
            add(name, lambda src, name=name: name, slices[-1], planned[-1], 0.0)


def _before_layers(name: str) -> bool:
    """Whether a tensor outside the layers comes before them (embeddings) or after (norm, head)."""
    return any(part in name for part in ("embed", "wte", "wpe"))


def _architecture(spec: str) -> str | None:
    config = os.path.join(local_directory(spec), "config.json")
    from ..errors import FormatError
    from ..untrusted import load_json_file

    if not os.path.isfile(config):
        return None
    try:
        data = load_json_file(config, max_bytes=4 * 1024 * 1024)
    except FormatError:
        return None
    if not isinstance(data, dict):
        return None
    names = data.get("architectures")
    names = [n for n in names if isinstance(n, str)] if isinstance(names, list) else []
    kind = data.get("model_type")
    return ",".join(names) or (kind if isinstance(kind, str) else None)


def _check_architectures(plan: MergePlan) -> None:
    """Inputs whose config.json names different architectures are a problem (not a warning)."""
    found = {spec: arch for spec in plan.specs if (arch := _architecture(spec))}
    if len(set(found.values())) > 1 and plan.recipe.merge_method != "passthrough":
        listing = ", ".join(f"{spec}: {arch}" for spec, arch in found.items())
        plan.problems.append(f"the inputs are different architectures ({listing})")


def _check_shapes(plan: MergePlan, infos) -> None:
    for out in plan.outputs:
        refs = ([out.base] if out.base else []) + [(i, n) for i, n, _ in out.models]
        for i, name in refs:
            info = infos[i].get(name)
            if info is None:
                plan.problems.append(f"{plan.specs[i]} has no tensor {name}")
            elif info.shape != out.shape:
                plan.problems.append(f"{name}: {plan.specs[i]} has shape {list(info.shape)}, the "
                                     f"output {list(out.shape)}")


def _params_for(plan: MergePlan, out: OutputTensor) -> tuple[list[dict], dict]:
    """Per-model parameters and options for ``out``, by mergekit's precedence: a model's own, its
    slice's, the recipe's top level, the default (see modelgit.merge.parameters). Per-model
    filters match the input tensor's name, the options' the output's."""
    method = get_method(plan.recipe.merge_method)
    specs = method_params(method)
    top = plan.recipe.parameters
    per_model = [{key: resolve(specs[key], (*levels, *out.levels, top), in_name, out.position)
                  for key in method.model_params} for _i, in_name, levels in out.models]
    options = {}
    for key, default in method.options.items():
        spec = specs.get(key)
        if key == "seed":  # the recipe's `seed:`, unless its parameters set one
            spec = replace(spec, default=plan.recipe.seed)
        options[key] = default if spec is None else resolve(spec, (*out.levels, top), out.name, out.position)
    if "seed" not in method.options:
        options["seed"] = plan.recipe.seed
    return per_model, options


_FISHER_LOCK = threading.Lock()


def _fisher_tensor(plan: MergePlan, model: tuple, out: OutputTensor) -> torch.Tensor:
    """The diagonal Fisher of one model for tensor ``out``, from its ``fisher:`` file."""
    _index, in_name, levels = model
    spec = method_params(get_method(plan.recipe.merge_method))["fisher"]
    path = resolve(spec, (*levels, *out.levels), in_name, out.position)
    name = out.name
    if not path:
        raise UsageError("merge_method fisher needs `fisher: FILE` in every model's parameters "
                         "(a safetensors file from `modelgit fisher`)")
    with _FISHER_LOCK:  # tensors are computed by several worker threads
        if path not in plan.fisher_sources:
            plan.fisher_sources[path] = open_source(path)
        source = plan.fisher_sources[path]
    if name not in source.tensors():
        raise UsageError(f"{path} has no Fisher values for {name}")
    return source.load(name)


def _merged_pieces(plan: MergePlan, out: OutputTensor) -> Iterator[torch.Tensor]:
    """Output tensor ``out``, flattened, in consecutive 1-D pieces (before the output cast).

    Raises:
        ModelgitError: the merge produced NaN or inf.
    """
    method = get_method(plan.recipe.merge_method)
    if out.copy_only:
        index, name = out.models[0][:2] if out.models else out.base
        yield plan.sources[index].load(name).reshape(-1)
        return
    if out.head:  # new in every adapter, with no base to take task vectors against: the mean
        yield torch.stack([plan.sources[i].load(n).float() for i, n, _ in out.models]).mean(0).reshape(-1)
        return
    per_model, options = _params_for(plan, out)
    if method.stream is not None:
        base = lazy_tensor(plan.sources[out.base[0]], out.base[1]) if out.base else None
        models = [lazy_tensor(plan.sources[i], name) for i, name, _ in out.models]
        pieces = method.stream(LazyInputs(base, models, per_model, options, out.name))
    else:
        models = [plan.sources[i].load(name) for i, name, _ in out.models]
        base = plan.sources[out.base[0]].load(out.base[1]) if out.base else None
        if method.name == "fisher":
            options["fisher"] = [_fisher_tensor(plan, model, out) for model in out.models]
        pieces = [method.fn(MergeInputs(base, models, per_model, options, out.name)).reshape(-1)]
        del models, base
    for piece in pieces:
        if not _finite(piece):
            raise ModelgitError(f"{out.name}: the {method.name} merge produced NaN or inf; check the "
                                "weights (a zero sum of weights with normalize?)")
        yield piece


_MINMAX_DTYPES = (torch.float32, torch.float64, torch.bfloat16, torch.float16)


def _finite(piece: torch.Tensor) -> bool:
    """No NaN or inf in ``piece``: its min and max are finite (one reduction, no bool tensor of
    its size: ``isfinite(...).all()`` was 17x slower on one thread). min and max propagate NaN."""
    if piece.numel() == 0:
        return True
    if piece.dtype not in _MINMAX_DTYPES:  # float8: no aminmax kernel
        return bool(torch.isfinite(piece).all())
    low, high = torch.aminmax(piece)
    return math.isfinite(float(low)) and math.isfinite(float(high))


def _compute(plan: MergePlan, out: OutputTensor) -> torch.Tensor:
    """Output tensor ``out`` whole, in the method's working dtype."""
    return collect(_merged_pieces(plan, out), tuple(out.shape))


def _provenance(plan: MergePlan, placeholder: bool = False) -> dict:
    """What an output records about how it was made. With ``placeholder`` the content ids are
    zeros of their length (the shard headers are written before the inputs are read, and the
    ids are filled in once the merge has read, and hashed, the inputs)."""
    return {"modelgit_version": __version__, "merge_method": plan.recipe.merge_method,
            "recipe": plan.recipe.text,
            "inputs": [{"spec": spec, "content_id": "0" * ID_HEX_LEN if placeholder else source.identity()}
                       for spec, source in zip(plan.specs, plan.sources)]}


def _marker(provenance: dict, files: list[str]) -> bytes:
    """``modelgit_merge.json``: the provenance and the files the output holds (a later merge
    into the same directory with ``force`` replaces exactly those)."""
    return (json.dumps({**provenance, "files": files}, indent=2, sort_keys=True) + "\n").encode()


def _metadata(provenance: dict) -> dict[str, str]:
    """The safetensors ``__metadata__`` of every output shard."""
    return {"format": "pt", "modelgit_merge": json.dumps(provenance, sort_keys=True)}


def _extra_files(plan: MergePlan) -> dict[str, bytes]:
    files = {MARKER: b""}  # filled in once the shard names are known
    if plan.recipe.text:
        files["merge_recipe.yaml"] = plan.recipe.text.encode()
    ref_dir = local_directory(plan.recipe.base_model or plan.specs[0])
    tokenizer_dir = local_directory(tokenizer_spec(plan.recipe.tokenizer_source, plan.recipe.base_model)
                                    or plan.recipe.base_model or plan.specs[0])
    for name in _COPIED_FILES:
        path = os.path.join(tokenizer_dir if name in TOKENIZER_FILES else ref_dir, name)
        if ref_dir and os.path.isfile(path):
            with open(path, "rb") as handle:
                data = handle.read()
            if name == "config.json" and plan.recipe.slices:
                config = json.loads(data)
                for key in ("num_hidden_layers", "n_layer", "num_layers"):
                    if key in config:
                        config[key] = plan.num_layers
                data = (json.dumps(config, indent=2) + "\n").encode()
            files[name] = data
    if plan.labels and "config.json" in files:  # a classifier base: the inputs' classes
        config = json.loads(files["config.json"])
        config["id2label"] = {str(k): v for k, v in sorted(plan.labels.items())}
        config["label2id"] = {v: k for k, v in sorted(plan.labels.items())}
        files["config.json"] = (json.dumps(config, indent=2, sort_keys=True) + "\n").encode()
    heads = plan.heads
    if heads is not None and heads.rule == "average":
        config = task_config(ref_dir, heads.task, heads.labels, heads.pooling)
        if config is not None:
            files["config.json"] = config
    elif heads is not None:  # keep: each adapter's head beside the merged body
        files.update(heads_files([(plan.specs[i], plan.sources[i].labels,
                                   {n: plan.sources[i].load(n) for n in plan.sources[i].heads})
                                  for i in heads.kept]))
    return files


def run_merge(recipe: Recipe, out: str, dry_run: bool = False, progress: bool | None = None,
              max_shard_bytes: int = DEFAULT_SHARD_BYTES, adapter_rank: int | None = None,
              force: bool = False):
    """Merge per ``recipe`` into directory ``out``; returns MergeResult, or the plan when dry.

    With ``adapter_rank`` the output is a PEFT LoRA adapter of that rank (truncated SVD of each
    merged update relative to the base) instead of full weights.

    Args:
        force: write into ``out`` even when it is a non-empty directory: the files of the
            output replace those of the same names, the weights and files of an earlier merge
            there are removed, other files are kept (see :mod:`modelgit.merge.writer`).
    Raises:
        UsageError: listing every problem found in the inputs (missing tensors, shapes...); or
            ``out`` exists and is not a directory, or is not empty and ``force`` is false.
    """
    if not dry_run:
        check_output(out, "directory", force)  # before the inputs are opened: fail fast
    plan = plan_merge(recipe)
    try:
        if plan.problems:
            raise UsageError("cannot merge:\n  " + "\n  ".join(plan.problems))
        if dry_run:
            return plan
        if adapter_rank and plan.heads is not None:
            raise UsageError("--to-adapter cannot carry the adapters' task heads (a LoRA adapter "
                             "holds one head as modules_to_save, not a merge of several): merge "
                             "to full weights instead (without --to-adapter)")
        if adapter_rank:
            return _run_to_adapter(plan, out, adapter_rank, progress, force)
        planned = [PlannedTensor(o.name, o.dtype, o.shape) for o in plan.outputs]
        extra = _extra_files(plan)
        writer = ShardedWriter(out, planned, _metadata(_provenance(plan, placeholder=True)), max_shard_bytes,
                               extra, force=force)
        total = sum(p.nbytes for p in planned)
        try:
            with progress_bar(total, f"merge ({recipe.merge_method})", progress) as bar:
                _write_all(plan, writer, _LockedBar(bar))
            provenance = _provenance(plan)  # hashes only what the merge did not read whole
            writer.set_metadata(_metadata(provenance))
            extra[MARKER] = _marker(provenance, writer.file_names())
            writer.finish()
        except BaseException:
            writer.abort()
            raise
        return MergeResult(out, len(planned), total, list(recipe.warnings))
    finally:
        plan.close()


class _LockedBar:
    """A progress bar updated from several worker threads."""

    def __init__(self, bar):
        self._bar, self._lock = bar, threading.Lock()

    def update(self, n: int) -> None:
        with self._lock:
            self._bar.update(n)


def _write_all(plan: MergePlan, writer: ShardedWriter, bar) -> None:
    """Compute and write every output tensor, on worker threads (see :mod:`._schedule`).

    Each tensor is computed with one intra-op thread: its operations run on blocks too small
    to be worth splitting, and its reductions (the L1 rescale, DELLA, model stock, slerp) then
    give the same bits on every machine. The cores go to independent tensors instead, as many
    as :func:`modelgit._threads.plan_threads` finds free, within a memory budget of the largest
    tensor's need (at least :data:`MIN_BUDGET`).
    """
    tasks = [Task(functools.partial(_write_tensor, plan, o, writer, bar), _task_memory(plan, o))
             for o in plan.outputs]
    largest = max((math.prod(o.shape) for o in plan.outputs), default=0)
    threads = plan_threads(len(tasks), largest, max_intra_op=1)
    budget = max([MIN_BUDGET, *(t.memory for t in tasks)])
    run_tasks(tasks, threads.workers, threads.intra_op, budget)


def _write_tensor(plan: MergePlan, out: OutputTensor, writer: ShardedWriter, bar) -> None:
    writer.write_parts(out.name, _output_bytes(plan, out, bar))


def _task_memory(plan: MergePlan, out: OutputTensor) -> int:
    """About the most memory computing ``out`` holds at once, in bytes: a few blocks for the
    streamed methods, their whole-tensor pass (the task vector and TIES' selection: ~3 float32
    copies of the tensor; 6 with DELLA's ranks) and every input whole for the others."""
    numel = math.prod(out.shape)
    work = 8 if out.dtype == "F64" else 4
    if out.copy_only:
        return 2 * numel * DTYPES[out.dtype].itemsize
    method = get_method(plan.recipe.merge_method)
    inputs = len(out.models) + (1 if out.base else 0)
    if method.stream is None:
        return (inputs + 3) * numel * work
    blocks = (inputs + 4) * min(numel, BLOCK) * work
    if method.needs_base:  # the task-arithmetic family: one whole task vector at a time
        return 6 * numel * work + blocks
    return blocks


def _output_bytes(plan: MergePlan, out: OutputTensor, bar) -> Iterator:
    """The bytes of output tensor ``out`` in its output dtype, a piece at a time."""
    target = getattr(torch, DTYPES[out.dtype].torch_name)
    for piece in _merged_pieces(plan, out):
        piece = piece.to(target).contiguous()
        # a uint8 view of the piece's own memory: no copy to bytes
        data = piece.view(torch.uint8).numpy() if piece.numel() else b""
        yield data
        bar.update(len(data))


def _run_to_adapter(plan: MergePlan, out: str, rank: int, progress, force: bool) -> MergeResult:
    if not plan.recipe.base_model:
        raise UsageError("merging into a new adapter needs a base_model to take updates against")
    factors = {}
    candidates = [o for o in plan.outputs if o.base and len(o.shape) == 2 and not o.copy_only]
    with progress_bar(len(candidates), "merge to adapter", progress, unit="tensor") as bar:
        for o in candidates:
            base = plan.sources[o.base[0]].load(o.base[1]).float()
            delta = _compute(plan, o).float() - base  # (out, in)
            bar.update(1)
            if torch.any(delta != 0) and o.name.endswith(".weight"):
                factors[o.name[: -len(".weight")]] = low_rank(delta, rank)
    if not factors:
        raise UsageError("the merge changes no 2-D weight of the base: no adapter to write")
    save_adapter(out, factors, rank, float(rank), base=plan.recipe.base_model,
                 extra={"modelgit_merge": _provenance(plan)}, force=force)
    return MergeResult(out, len(factors) * 2, 0, list(plan.recipe.warnings))
