"""A release as a plain Hugging Face directory: ``export_release(repo, rev, output)``.

Two layouts, both loadable by ``transformers`` and ``peft`` with modelgit uninstalled:

    merged (``merged=True``)          library (the default)
    config.json                       config.json, model.safetensors, tokenizer...  the base
    model.safetensors (real bytes)    adapters/<name>/adapter_config.json
    tokenizer files                   adapters/<name>/adapter_model.safetensors (+ metadata)
    generation_config.json            router/router.json, router.safetensors  (if the release
    README.md (the release's card)                                                 has a router)
    modelgit_export.json              README.md (the release's card + how to load base + adapter)
                                      modelgit_export.json

The merged layout is the release's own weights (``<model>/`` of the revision); the library
layout is the base its adapters were reviewed on (for a release that merged contributions, the
previous release's weights) with the library's adapters (:mod:`modelgit.route.release_library`,
whose cache under ``.git/modelgit/library/`` it reuses). ``onnx=True`` adds ``model.onnx`` of
the root model (an encoder or classifier; see :mod:`.onnx`).

Everything is written into a temporary sibling of the output and renamed into place at the end,
so an interrupted export leaves no partial directory; the written weights are checked (the
model's fingerprint, each adapter's reviewed content id) before the rename, and modelgit
manifests never reach the output (the store's objects are materialized, each read verified
against its id).
"""

from __future__ import annotations

import os
import shutil
from dataclasses import dataclass, field

from .._outputs import (check_output, normal_modes, remove, scratch_directory,
                        temporary_path)
from ..errors import UsageError
from ..git.repo import GitRepo
from ..progress import note
from ..route.release_library import CACHE_STAMP
from ..untrusted import dumps_json
from .onnx import DEFAULT_TOLERANCE, OnnxCheck, export_onnx, require_onnx

__all__ = ["EXPORT_RECORD", "ExportResult", "export_release"]

#: what the export was made of, written into its directory
EXPORT_RECORD = "modelgit_export.json"
_DROPPED = (CACHE_STAMP, ".gitattributes")


@dataclass(frozen=True)
class ExportResult:
    """What :func:`export_release` wrote.

    Attributes:
        output: the directory; tag: the release; commit: the revision exported.
        merged: the merged layout (else base + adapters); fingerprint: the root model's.
        adapters: the adapters written under ``adapters/``; router: a router under ``router/``.
        files, bytes: what the directory holds; onnx: the ONNX export's check, if asked.
    """

    output: str
    tag: str
    commit: str
    merged: bool
    fingerprint: str
    adapters: tuple[str, ...] = ()
    router: bool = False
    files: int = 0
    bytes: int = 0
    onnx: OnnxCheck | None = field(default=None)

    def to_dict(self) -> dict:
        return {"output": self.output, "tag": self.tag, "commit": self.commit,
                "layout": "merged" if self.merged else "library",
                "fingerprint": self.fingerprint, "adapters": list(self.adapters),
                "router": self.router, "files": self.files, "bytes": self.bytes,
                "onnx": self.onnx.to_dict() if self.onnx else None}


@dataclass(frozen=True)
class _Release:
    """The release an export is made of: its tag, the commit exported, ``ref`` (what to read
    the record at), its record and the model's directory in the tree."""

    tag: str
    commit: str
    ref: str
    record: dict
    model: str


def export_release(repo, output: str, rev: str | None = None, merged: bool = False,
                   onnx: bool = False, adapters=None, force: bool = False,
                   tolerance: float = DEFAULT_TOLERANCE,
                   progress: bool | None = False) -> ExportResult:
    """Export a release as a plain Hugging Face directory (see the module docstring).

    Args:
        repo: a :class:`GitRepo` or a path inside a model repository.
        output: the directory to write (must not exist or be empty, unless ``force``).
        rev: a release tag or any revision holding releases (its newest release is exported;
            with ``merged``, the weights of that revision); None: the newest release of HEAD.
        merged: one model (the release's weights); else the library's base + its adapters.
        onnx: also ``model.onnx`` of the root model, checked against onnxruntime.
        adapters: only these adapters of the library (None: all).
        force: replace a non-empty ``output``.
        tolerance: the ONNX check's largest absolute difference.
    Returns:
        the :class:`ExportResult`.
    Raises:
        UsageError: an unknown revision (naming the closest), a revision without a release, a
            release without a library (without ``merged``), an unknown adapter name, a
            non-empty output, a decoder with ``onnx``.
        OnnxCheckError: onnxruntime's outputs differ from torch's beyond ``tolerance``.
        ObjectMissingError: a tensor no store has.
    """
    repo = _open(repo)
    output = os.path.abspath(output)
    _check_output(repo, output, force)
    release = _find_release(repo, rev)
    if adapters and merged:
        raise UsageError("--adapters selects adapters of the library layout: drop --merged")
    if onnx:
        require_onnx()  # before any weights are written
    parent = os.path.dirname(output)
    os.makedirs(parent, exist_ok=True)
    # beside the output (one file system: the rename is atomic); a killed export's scratch is
    # removed by the next command writing there
    with scratch_directory(os.path.basename(output), parent) as scratch:
        root = os.path.join(scratch, "out")
        if merged:
            result = _write_merged(repo, release, root, progress)
        else:
            result = _write_library(repo, release, root, adapters, progress)
        check = None
        if onnx:
            note(f"export: ONNX of {release.tag}", progress)
            check = export_onnx(root, os.path.join(root, "model.onnx"), tolerance)
            check = OnnxCheck(os.path.join(output, "model.onnx"), check.task, check.output,
                              check.inputs, check.max_abs_diff, check.tolerance, check.batches)
            _append_onnx_note(root, check)
        made = ExportResult(output, release.tag, release.commit, merged, result.fingerprint,
                            result.adapters, result.router, onnx=check)
        record = {k: v for k, v in made.to_dict().items() if k not in ("output", "files", "bytes")}
        _write_text(os.path.join(root, EXPORT_RECORD), dumps_json(record))
        files, size = _measure(root)
        _install(root, output)
    return ExportResult(**{**made.__dict__, "files": files, "bytes": size})


def _open(repo) -> GitRepo:
    if isinstance(repo, GitRepo):
        return repo
    from ..git.repo import find_repo

    return find_repo(os.fspath(repo))


def _check_output(repo: GitRepo, output: str, force: bool) -> None:
    """Refuse an output that would overwrite something: a non-empty directory (without
    ``force``), a file, a link, or the repository itself or a directory holding it."""
    real = os.path.realpath(output)
    root = os.path.realpath(repo.root)
    if real == root or root.startswith(real + os.sep) or real.startswith(
            os.path.realpath(repo.git_dir) + os.sep) or real == os.path.realpath(repo.git_dir):
        raise UsageError(f"-o {output} is the repository or holds it: choose a directory "
                         "outside the repository's .git and not above its work tree")
    check_output(output, "directory", force, "--force")


def _find_release(repo: GitRepo, rev: str | None) -> _Release:
    """The release ``rev`` names (None: the newest of HEAD, at its tag)."""
    from ..workflow.project import read_project
    from ..workflow.releases import read_releases

    commit = repo.resolve(rev or "HEAD", "revision")  # an unknown one names the closest tag
    records = {str(r.get("tag")): r for r in read_releases(repo, commit) if r.get("tag")}
    if not records:
        raise UsageError(f"{rev or 'HEAD'} ({commit[:12]}) holds no release (no releases/*.json): "
                         "give a release tag (`git tag --list`), or run `modelgit release`")
    tag = rev if rev in records else list(records)[-1]  # oldest first: the newest is last
    ref = rev or commit
    if rev is None:  # the newest release itself, not whatever HEAD has changed since
        tagged = repo.rev_parse(f"refs/tags/{tag}")
        if tagged is not None:
            commit, ref = repo.resolve(f"refs/tags/{tag}^{{commit}}"), tag
    project = read_project(repo, commit)
    return _Release(tag, commit, ref, records[tag], project.model)


def _write_merged(repo: GitRepo, release: _Release, root: str, progress) -> ExportResult:
    """The revision's model directory, materialized, with its card."""
    from ..fingerprint import fingerprint_dir, fingerprint_rev
    from ..git.export import export_dir

    note(f"export: the weights of {release.tag} ({release.commit[:12]}:{release.model}/)", progress)
    export_dir(repo, release.commit, release.model, root, progress=progress)
    _drop_git_files(root)
    if not os.path.isfile(os.path.join(root, "README.md")):
        _write_text(os.path.join(root, "README.md"), _plain_card(release))
    expected = fingerprint_rev(repo, release.commit, release.model)
    _check_model(root, expected, f"{release.commit[:12]}:{release.model}/", fingerprint_dir)
    return ExportResult(root, release.tag, release.commit, True, expected)


def _write_library(repo: GitRepo, release: _Release, root: str, names, progress) -> ExportResult:
    """The library's base at the root, its adapters under adapters/, its router, the card."""
    from ..fingerprint import fingerprint_dir
    from ..git.export import export_dir
    from ..route.library import adapter_content_id
    from ..route.release_library import materialize_library, read_release

    if release.record.get("library") is None:  # the first base (`modelgit create`), or old
        raise UsageError(f"release {release.tag} records no adapter library (a base made by "
                         "`modelgit create`, or a release of an older modelgit): `modelgit "
                         f"export {release.tag} --merged` exports its weights")
    library_release = read_release(repo, release.ref)
    note(f"export: the adapter library of {release.tag}", progress)
    lib = materialize_library(repo, library_release, names, progress)
    shutil.copytree(lib.base_dir, root, ignore=shutil.ignore_patterns(*_DROPPED))
    os.makedirs(os.path.join(root, "adapters"))
    for adapter in lib.adapters:
        target = os.path.join(root, "adapters", adapter.name)
        shutil.copytree(adapter.directory, target, ignore=shutil.ignore_patterns(*_DROPPED))
        found = adapter_content_id(target)
        if found != adapter.adapter_id:
            raise UsageError(f"adapter {adapter.name!r} was copied with content id {found[:16]}..., "
                             f"not the reviewed {adapter.adapter_id[:16]}...: was the cache "
                             f"changed meanwhile? Export again")
    router = library_release.router
    if isinstance(router, dict) and isinstance(router.get("path"), str):
        export_dir(repo, library_release.commit, router["path"], os.path.join(root, "router"),
                   progress=progress)
        _drop_git_files(os.path.join(root, "router"))
    fingerprint = library_release.record["base"]["fingerprint"]
    _check_model(root, fingerprint, "the library's base", fingerprint_dir)
    card = repo.read_blob(f"{library_release.commit}:{release.model}/README.md")
    card_text = card.decode("utf-8", errors="replace") if card is not None else _plain_card(release)
    names = tuple(a.name for a in lib.adapters)
    _write_text(os.path.join(root, "README.md"),
                insert_after_front_matter(card_text, _library_note(release, library_release.record,
                                                                   names, root, router)))
    return ExportResult(root, release.tag, release.commit, False, fingerprint, names,
                        isinstance(router, dict))


def _check_model(root: str, expected: str, where: str, fingerprint_dir) -> None:
    """The written weights are real safetensors with the expected fingerprint."""
    from ..manifest import is_manifest

    for name in sorted(os.listdir(root)):
        if name.endswith(".safetensors"):
            with open(os.path.join(root, name), "rb") as handle:
                if is_manifest(handle.read(4096)):
                    raise UsageError(f"{name} of {where} was written as a modelgit manifest, not "
                                     "its bytes: run `modelgit fsck`, then export again")
    found = fingerprint_dir(root)
    if found != expected:
        raise UsageError(f"the weights of {where} were written with fingerprint {found[:16]}..., "
                         f"not {expected[:16]}...: the store or cache does not hold what the "
                         "revision records; run `modelgit fsck`, then export again")


def _drop_git_files(directory: str) -> None:
    for name in _DROPPED:
        path = os.path.join(directory, name)
        if os.path.isfile(path):
            os.remove(path)


def _write_text(path: str, text: str) -> None:
    with open(path, "w", encoding="utf-8") as handle:
        handle.write(text)


def _measure(root: str) -> tuple[int, int]:
    files = size = 0
    for where, _dirs, names in os.walk(root):
        for name in names:
            files += 1
            size += os.path.getsize(os.path.join(where, name))
    return files, size


def _install(root: str, output: str) -> None:
    """Put the finished ``root`` in place as ``output``: renamed over an absent or empty one;
    a non-empty one (``--force``) is replaced whole, moved aside first and deleted after (an
    export is one release's directory: nothing of an earlier one is kept)."""
    normal_modes(root)
    state = check_output(output, "directory", force=True)  # checked again: it may have changed
    if state in ("absent", "empty"):
        if state == "empty":
            os.rmdir(output)
        os.rename(root, output)
        return
    old = temporary_path(output) + ".old"
    os.rename(output, old)
    os.rename(root, output)
    remove(old)


# -- the card ----------------------------------------------------------------------------------


def insert_after_front_matter(card: str, section: str) -> str:
    """``card`` with ``section`` (Markdown) placed right after its YAML front matter (the Hub
    reads the metadata only from the file's first lines), or first when it has none."""
    if card.startswith("---\n"):
        end = card.find("\n---\n", 4)
        if end >= 0:
            head, rest = card[:end + 5], card[end + 5:]
            return f"{head}\n{section.rstrip()}\n\n{rest.lstrip()}"
    return f"{section.rstrip()}\n\n{card}"


def _auto_class(root: str) -> str:
    import json

    try:
        with open(os.path.join(root, "config.json"), encoding="utf-8") as handle:
            architectures = json.load(handle).get("architectures") or []
    except (OSError, ValueError):
        architectures = []
    for suffix, auto in (("ForCausalLM", "AutoModelForCausalLM"),
                         ("ForSequenceClassification", "AutoModelForSequenceClassification"),
                         ("ForTokenClassification", "AutoModelForTokenClassification"),
                         ("ForMaskedLM", "AutoModelForMaskedLM")):
        if any(str(a).endswith(suffix) for a in architectures):
            return auto
    return "AutoModel"


def _library_note(release: _Release, record: dict, names: tuple[str, ...], root: str,
                  router) -> str:
    base = record["base"]
    auto = _auto_class(root)
    first = names[0] if names else "NAME"
    entries = {a.get("name"): a for a in record.get("adapters") or []}
    rows = "\n".join(f"| `{n}` | {entries[n].get('domain') or '-'} | {entries[n].get('decision')} "
                     f"| `{entries[n]['adapter_id'][:16]}` |" for n in names)
    routed = ("\nThe release's router is in `router/` (`router.json`, `router.safetensors`); "
              "`modelgit adapters which` and `modelgit.route.load` use it.\n"
              if isinstance(router, dict) else "")
    return f"""## Using this export: the base and its adapters

Exported by `modelgit export` from release **{release.tag}** (commit `{release.commit[:12]}`).
This directory holds the library's base (the weights the adapters were reviewed on:
{base.get('tag') or base['commit'][:12]}, fingerprint `{base['fingerprint'][:16]}`) and its
adapters as PEFT directories under `adapters/`. The release's merged weights are exported with
`modelgit export {release.tag} --merged`.

| adapter | domain | decision | content id |
|---|---|---|---|
{rows}
{routed}
```python
from peft import PeftModel
from transformers import AutoTokenizer, {auto}

tokenizer = AutoTokenizer.from_pretrained("EXPORT_DIR")
base = {auto}.from_pretrained("EXPORT_DIR")
model = PeftModel.from_pretrained(base, "EXPORT_DIR/adapters/{first}", adapter_name="{first}")
# more adapters of the library, then pick one per call:
# model.load_adapter("EXPORT_DIR/adapters/OTHER", adapter_name="OTHER"); model.set_adapter("OTHER")
```
"""


def _plain_card(release: _Release) -> str:
    return (f"---\nlibrary_name: transformers\n---\n\n# {release.tag}\n\nExported by `modelgit "
            f"export` from release {release.tag} (commit `{release.commit[:12]}`), which has no "
            "model card.\n")


def _append_onnx_note(root: str, check: OnnxCheck) -> None:
    path = os.path.join(root, "README.md")
    with open(path, encoding="utf-8") as handle:
        card = handle.read()
    _write_text(path, card.rstrip() + f"""

## ONNX

`model.onnx` ({check.task}) takes `input_ids` and `attention_mask` (int64, batch and sequence
length dynamic) and returns `{check.output}`. Checked against onnxruntime on {check.batches}
batches: largest absolute difference {check.max_abs_diff:.2e} (tolerance {check.tolerance:g}).

```python
import onnxruntime
from transformers import AutoTokenizer

session = onnxruntime.InferenceSession("EXPORT_DIR/model.onnx")
batch = AutoTokenizer.from_pretrained("EXPORT_DIR")(["some text"], padding=True, return_tensors="np")
{check.output} = session.run(None, {{"input_ids": batch["input_ids"],
                                    "attention_mask": batch["attention_mask"]}})[0]
```
""")
