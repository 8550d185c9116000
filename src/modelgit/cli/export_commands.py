"""CLI verb ``modelgit export``: a release as a plain Hugging Face directory (merged, or base +
the adapter library as PEFT adapters), optionally with a checked ONNX graph."""

from __future__ import annotations

import json

__all__ = ["register"]


def cmd_export(args) -> int:
    from ..export import export_release
    from ..git.repo import find_repo

    result = export_release(find_repo("."), args.output, rev=args.rev, merged=args.merged,
                            onnx=args.onnx, adapters=args.adapters, force=args.force,
                            tolerance=args.tolerance, progress=args.progress)
    if args.json:
        print(json.dumps(result.to_dict(), indent=2, sort_keys=True))
        return 0
    layout = "merged model" if result.merged else (
        f"base + {len(result.adapters)} adapter(s): {', '.join(result.adapters)}"
        + (" + router" if result.router else ""))
    print(f"exported release {result.tag} ({result.commit[:12]}) to {result.output}: {layout}; "
          f"{result.files} files, {result.bytes / 1e6:.1f} MB; weights fingerprint "
          f"{result.fingerprint[:12]} checked")
    if result.onnx:
        check = result.onnx
        print(f"model.onnx ({check.task}, output {check.output}): onnxruntime vs torch on "
              f"{check.batches} batches, max abs diff {check.max_abs_diff:.2e} "
              f"(tolerance {check.tolerance:g})")
    return 0


def register(sub, command) -> None:
    p = command(sub, "export", cmd_export,
                "Export a release as a plain Hugging Face directory that transformers and peft "
                "load without modelgit: the library's base + its adapters as PEFT directories "
                "(adapters/NAME/) and router (default), or the merged model (--merged); the "
                "model card as README.md. --onnx adds model.onnx of an encoder or classifier, "
                "checked against onnxruntime.",
                "modelgit export v2 -o out/v2                  # base + adapters/ + router/\n"
                "modelgit export v2 --merged -o out/v2-merged  # one model\n"
                "modelgit export --merged --onnx -o out/cls    # newest release, + model.onnx\n"
                "modelgit export v2 --adapters cooking-lora -o out/cooking --json")
    p.add_argument("rev", nargs="?", metavar="REV", help="a release tag or a revision holding "
                   "releases (default: the newest release)")
    p.add_argument("-o", "--output", required=True, help="the directory to write (must not "
                   "exist or be empty)")
    p.add_argument("--merged", action="store_true", help="the release's weights as one model")
    p.add_argument("--onnx", action="store_true", help="also model.onnx (encoders and "
                   "classifiers), checked against onnxruntime")
    p.add_argument("--tolerance", type=float, default=1e-4, help="--onnx: largest absolute "
                   "difference allowed between onnxruntime and torch (default 1e-4)")
    p.add_argument("--adapters", nargs="+", metavar="NAME", help="only these adapters of the "
                   "library (default: all)")
    p.add_argument("-f", "--force", action="store_true", help="replace a non-empty OUTPUT")
    p.add_argument("--json", action="store_true")
