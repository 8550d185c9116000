"""A recipe's ``tokenizer_source``: supported where mergekit's vocabulary alignment is the identity.

mergekit, given ``tokenizer_source`` (``base``, ``union`` or a model), builds that tokenizer and
permutes every input's embedding and LM-head rows onto its vocabulary. When every input has the
same vocabulary, the permutation is the identity and the merge is the same as without the key
(checked against mergekit in ``tests/merge/test_mergekit_parity.py``); the output then carries
the chosen model's tokenizer files. modelgit does exactly that, after checking that the
vocabularies are the same; where they differ it refuses, naming the inputs, rather than merging
rows that mean different tokens.

A vocabulary is compared through a fingerprint of the files that define it: the ``model`` and
``added_tokens`` of ``tokenizer.json`` (not its truncation or padding settings), else the bytes of
``vocab.txt``, ``vocab.json`` + ``merges.txt``, ``tokenizer.model`` and ``added_tokens.json``.
"""

from __future__ import annotations

import hashlib
import json
import os

from ..errors import FormatError

__all__ = ["TOKENIZER_FILES", "local_directory", "tokenizer_spec", "vocabulary_fingerprint", "tokenizer_problems"]

TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "special_tokens_map.json", "tokenizer.model",
                   "vocab.txt", "vocab.json", "merges.txt", "added_tokens.json")
_VOCABULARY_FILES = ("vocab.txt", "vocab.json", "merges.txt", "tokenizer.model", "added_tokens.json")
_MAX_TOKENIZER_JSON = 256 * 1024 * 1024  # the largest vocabularies' tokenizer.json are ~30 MB


def local_directory(spec: str) -> str:
    """The directory on disk behind a merge input spec (``PATH``, ``PATH@REV``, ``BASE+ADAPTER``:
    the base's), where its config and tokenizer files are."""
    path = spec
    if not os.path.exists(path) and "+" in path:
        path = path.split("+", 1)[0]
    if not os.path.exists(path) and "@" in path:
        path = path.rsplit("@", 1)[0]
    if os.path.isfile(os.path.join(path, "adapter_config.json")):  # ADAPTER alone: its base's
        path = _adapter_base(path) or path
    return path if os.path.isdir(path) else os.path.dirname(path)


def _adapter_base(adapter_dir: str) -> str | None:
    """The local base directory an adapter's config names (what ``open_source`` merges it
    onto), or None."""
    from .lora_config import read_lora_config

    try:
        base = read_lora_config(adapter_dir)[0].get("base_model_name_or_path")
    except FormatError:
        return None
    return base if isinstance(base, str) and os.path.isdir(base) else None


def tokenizer_spec(source: str | None, base: str | None) -> str | None:
    """The input whose tokenizer files the output gets: ``base`` -> the base, a model -> that model,
    ``union`` or nothing -> None (the caller's default: the base, else the first model)."""
    if source == "base":
        return base
    if source in (None, "union"):
        return None
    return source


def vocabulary_fingerprint(directory: str) -> str | None:
    """A hash of the vocabulary defined by the tokenizer files in ``directory``; None without any.

    Raises:
        FormatError: a tokenizer.json that is not JSON.
    """
    digest = hashlib.sha256()
    path = os.path.join(directory, "tokenizer.json")
    if os.path.isfile(path):
        from ..untrusted import load_json_file

        data = load_json_file(path, max_bytes=_MAX_TOKENIZER_JSON)
        if not isinstance(data, dict):
            raise FormatError(f"{path} is not a tokenizer (a JSON object is expected)")
        vocabulary = {"model": data.get("model"), "added_tokens": data.get("added_tokens")}
        digest.update(json.dumps(vocabulary, sort_keys=True, separators=(",", ":")).encode())
        return digest.hexdigest()
    found = False
    for name in _VOCABULARY_FILES:
        path = os.path.join(directory, name)
        if os.path.isfile(path):
            found = True
            digest.update(name.encode() + b"\0")
            with open(path, "rb") as handle:
                for chunk in iter(lambda: handle.read(1 << 20), b""):
                    digest.update(chunk)
    return digest.hexdigest() if found else None


def tokenizer_problems(source: str, base: str | None, specs: list[str]) -> list[str]:
    """Why ``tokenizer_source: source`` cannot be honoured over inputs ``specs`` (empty: it can).

    Args:
        source: ``base``, ``union`` or a model spec.
        base: the recipe's base_model.
        specs: every input of the merge.
    """
    if source == "base" and not base:
        return ["tokenizer_source: base needs a base_model"]
    chosen = tokenizer_spec(source, base)
    named = list(specs) + ([chosen] if chosen and chosen not in specs else [])
    prints: dict[str, str | None] = {}
    problems = []
    for spec in named:
        directory = local_directory(spec)
        try:
            prints[spec] = vocabulary_fingerprint(directory) if os.path.isdir(directory) else None
        except FormatError as exc:
            problems.append(f"tokenizer_source {source}: {exc}")
            continue
        if prints[spec] is None:
            problems.append(f"tokenizer_source {source}: {spec} has no tokenizer files "
                            f"({', '.join(TOKENIZER_FILES[:5])}...), so modelgit cannot check that its "
                            "vocabulary is the others'")
    groups: dict[str, list[str]] = {}
    for spec, fingerprint in prints.items():
        if fingerprint is not None:
            groups.setdefault(fingerprint, []).append(spec)
    if len(groups) > 1:
        listing = "; ".join(", ".join(group) for group in groups.values())
        problems.append(f"tokenizer_source {source}: the inputs have different vocabularies ({listing}); "
                        "modelgit merges inputs of one vocabulary only (mergekit's vocabulary alignment is not "
                        "implemented): merge these with mergekit, or align their vocabularies first")
    return problems
