"""CLI verbs of the merge engine: merge (recipe or flags) and extract-lora."""

from __future__ import annotations

import json
import os
import sys

import yaml

from ..errors import UsageError

__all__ = ["register"]


def _parse_size(text: str) -> int:
    units = {"kb": 1000, "mb": 1000**2, "gb": 1000**3, "tb": 1000**4, "b": 1}
    lowered = text.strip().lower()
    for unit, factor in units.items():
        if lowered.endswith(unit):
            return int(float(lowered[: -len(unit)]) * factor)
    return int(lowered)


def _recipe_from_flags(args) -> dict:
    if not args.model:
        raise UsageError("give a recipe file, or --method and at least one --model")
    weights = args.weight or []
    if weights and len(weights) != len(args.model):
        raise UsageError(f"{len(weights)} --weight values for {len(args.model)} --model values")
    models = []
    for i, model in enumerate(args.model):
        params = {"weight": weights[i]} if weights else {}
        if args.density is not None:
            params["density"] = args.density
        models.append({"model": model, "parameters": params} if params else {"model": model})
    data = {"merge_method": args.method or "linear", "models": models}
    if args.base:
        data["base_model"] = args.base
    params = {}
    for item in args.param or []:
        key, _, value = item.partition("=")
        params[key] = yaml.safe_load(value)
    if params:
        data["parameters"] = params
    if args.dtype:
        data["dtype"] = args.dtype
    return data


def cmd_merge(args) -> int:
    from .._malloc import keep_freed_memory
    from ..merge.engine import run_merge
    from ..merge.recipe import load_recipe, parse_recipe

    keep_freed_memory()  # blocks of a few MiB, allocated and freed thousands of times

    if args.recipe:
        recipe = load_recipe(args.recipe)
    else:
        data = _recipe_from_flags(args)
        recipe = parse_recipe(data, yaml.safe_dump(data, sort_keys=False))
    for warning in recipe.warnings:  # on stderr: stdout may be --json
        print(f"modelgit: warning: {warning}", file=sys.stderr)
    if not args.dry_run and not args.output:
        raise UsageError("give -o OUT (or --dry-run)")
    if args.derived and (args.dry_run or args.to_adapter):
        raise UsageError("--derived stores merged weights: not with --dry-run or --to-adapter")
    repo = _repo_of(args.output) if args.derived else None  # before merging: fails early
    result = run_merge(recipe, args.output, dry_run=args.dry_run, progress=args.progress,
                       max_shard_bytes=_parse_size(args.shard_size), adapter_rank=args.to_adapter,
                       force=args.force)
    if args.dry_run:
        plan = result
        summary = {"ok": True, "method": recipe.merge_method, "inputs": plan.specs,
                   "tensors": len(plan.outputs), "layers": plan.num_layers, "warnings": list(recipe.warnings)}
        print(json.dumps(summary, indent=2) if args.json else
              f"ok: {len(plan.outputs)} tensors from {len(plan.specs)} inputs would be merged with "
              f"{recipe.merge_method}")
        return 0
    summary = dict(result.__dict__)
    if repo is not None:
        from ..workflow.derived_release import derive_output

        data = yaml.safe_load(recipe.text) if recipe.text else _recipe_from_flags(args)
        derived = derive_output(data, os.getcwd(), args.output, repo.store())
        summary["derived"] = {"tensors": derived.tensors, "chunks": derived.chunks,
                              "fallback": derived.fallback, "stored_bytes": derived.stored_bytes}
    print(json.dumps(summary) if args.json else
          f"merged {result.tensors} tensors ({result.bytes / 2**20:.1f} MiB) into {result.output}"
          + (f"; {summary['derived']['chunks']} chunks of {summary['derived']['tensors']} tensors "
             f"stored as recipes ({summary['derived']['stored_bytes'] / 2**20:.2f} MiB)"
             if repo is not None else ""))
    return 0


def _repo_of(output: str):
    """The modelgit repository that will hold ``output`` (for ``--derived``)."""
    from ..git.repo import find_repo

    parent = os.path.dirname(os.path.abspath(output))
    while not os.path.isdir(parent):
        parent = os.path.dirname(parent)
    return find_repo(parent)


def cmd_extract_lora(args) -> int:
    from ..merge.lora import extract_lora
    from ..merge.sources import open_source

    base, tuned = open_source(args.base), open_source(args.tuned)
    try:
        errors = extract_lora(base, tuned, args.rank, args.output, alpha=args.alpha, force=args.force,
                              progress=args.progress)
    finally:
        base.close()
        tuned.close()
    worst = max(errors.values())
    print(json.dumps(errors, indent=2, sort_keys=True) if args.json else
          f"wrote a rank-{args.rank} LoRA of {len(errors)} modules to {args.output} "
          f"(worst relative error {worst:.3g})")
    return 0


def _text_examples(path: str, limit: int) -> list[str]:
    """Examples from a text file (one per line) or JSONL (a "text" field), at most ``limit``."""
    out = []
    with open(path, encoding="utf-8") as handle:
        for line in handle:
            line = line.strip()
            if not line:
                continue
            if path.endswith(".jsonl"):
                record = json.loads(line)
                if "text" not in record:
                    raise UsageError(f"{path}: JSONL records need a \"text\" field")
                line = record["text"]
            out.append(line)
            if len(out) >= limit:
                break
    if not out:
        raise UsageError(f"{path}: no examples")
    return out


def cmd_fisher(args) -> int:
    import os

    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from .._outputs import check_output
    from ..merge.fisher import estimate_fisher, save_fisher

    check_output(args.output, "file", force=True)  # before the work (save_fisher checks again)
    tokenizer = AutoTokenizer.from_pretrained(args.model)
    model = AutoModelForCausalLM.from_pretrained(args.model)
    texts = _text_examples(args.data, args.max_examples)

    def batches():
        for text in texts:
            enc = tokenizer(text, return_tensors="pt", truncation=True, max_length=args.max_length)
            yield {**enc, "labels": enc["input_ids"]}

    fisher = estimate_fisher(model, batches())
    save_fisher(fisher, args.output)
    print(f"wrote the diagonal Fisher of {len(fisher)} tensors over {len(texts)} examples to {args.output}")
    return 0


def register(sub, command) -> None:
    p = command(sub, "merge", cmd_merge,
                "Merge models (checkpoints, PATH@REV revisions, BASE+ADAPTER) per a mergekit-style recipe.",
                "modelgit merge recipe.yaml -o merged/\n"
                "modelgit merge recipe.yaml --dry-run          # validate inputs, report every problem\n"
                "modelgit merge --method ties --base base/ --model a/ --model b/ --density 0.5 -o out/\n"
                "modelgit merge --method linear --model base/+adapter/ -o merged/   # apply a LoRA\n"
                "modelgit merge recipe.yaml --to-adapter 16 -o merged-adapter/\n"
                "modelgit merge recipe.yaml -o merged/ --force  # again: replaces the earlier output's files\n"
                "modelgit merge --method ties --base base/ --model base/+a/ --model base/+b/ -o model/ --derived")
    p.add_argument("recipe", nargs="?", help="YAML recipe in mergekit's schema")
    p.add_argument("-o", "--output", help="output directory (sharded safetensors + index); "
                   "created, or an empty directory")
    p.add_argument("-f", "--force", action="store_true",
                   help="write into a non-empty OUTPUT: replace the files the merge writes and "
                   "the weights of an earlier output there, keep every other file")
    p.add_argument("-n", "--dry-run", action="store_true")
    p.add_argument("--method", help="merge method (without a recipe)")
    p.add_argument("--base", help="base model (without a recipe)")
    p.add_argument("--model", action="append", help="a model to merge (repeat)")
    p.add_argument("--weight", action="append", type=float, help="one per --model")
    p.add_argument("--density", type=float)
    p.add_argument("--param", action="append", metavar="KEY=VALUE", help="a global method parameter")
    p.add_argument("--dtype", help="output dtype: float32, float16, bfloat16")
    p.add_argument("--shard-size", default="5GB", help="largest output shard (default 5GB)")
    p.add_argument("--to-adapter", type=int, metavar="RANK",
                   help="write a PEFT LoRA adapter of this rank (SVD of the merged update) instead")
    p.add_argument("--derived", action="store_true",
                   help="OUTPUT is in a modelgit repository: store the tensors merged from "
                   "BASE+ADAPTER LoRAs (linear, task_arithmetic, ties, dare_linear, dare_ties) in "
                   "its store as recipes over the adapters' factors, so `git add OUTPUT` costs the "
                   "adapters; those tensors' bytes are then the recipes' (float64, within an ulp "
                   "of the engine's; DARE's mask is modelgit's own)")
    p.add_argument("--json", action="store_true")
    p = command(sub, "fisher", cmd_fisher,
                "Estimate a causal LM's diagonal Fisher on a data sample (for `merge_method: fisher`).",
                "modelgit fisher finetuned/ --data sample.txt -o finetuned.fisher.safetensors\n"
                "# then in the recipe: models: [{model: finetuned/, parameters: {fisher: finetuned.fisher.safetensors}}]")
    p.add_argument("model", help="a transformers model directory")
    p.add_argument("--data", required=True, help="text file (one example per line) or JSONL with \"text\"")
    p.add_argument("-o", "--output", required=True)
    p.add_argument("--max-examples", type=int, default=64)
    p.add_argument("--max-length", type=int, default=128)
    p = command(sub, "extract-lora", cmd_extract_lora,
                "Extract a LoRA adapter from the difference of two checkpoints (truncated SVD).",
                "modelgit extract-lora base/ finetuned/ --rank 16 -o adapter/")
    p.add_argument("base")
    p.add_argument("tuned")
    p.add_argument("-o", "--output", required=True, help="adapter directory to create")
    p.add_argument("-f", "--force", action="store_true",
                   help="write into a non-empty OUTPUT (only its adapter files are replaced)")
    p.add_argument("--rank", type=int, default=16)
    p.add_argument("--alpha", type=float)
    p.add_argument("--json", action="store_true")
