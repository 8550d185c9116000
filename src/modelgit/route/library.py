"""The adapter library a router works over: one base model and the LoRA adapters trained on it.

Every adapter of a library must have been trained on exactly the library's base: its recorded
base fingerprint (``training_config.json``'s ``resolved.base_fingerprint``, written by ``modelgit
train`` and moved by ``modelgit rebase``; else ``contribution.json``'s ``base_fingerprint``) is
compared with :func:`modelgit.fingerprint.fingerprint_dir` of the base. An adapter that records
another base is refused with both fingerprints (``modelgit rebase`` carries it over); one that
records none is accepted (its tensors' shapes are still checked when it is loaded).

This module reads those metadata files by the same rule as ``modelgit.workflow`` (strict JSON
within a size limit); it does not import the workflow layer, which sits above it.
"""

from __future__ import annotations

import difflib
import os
import re
from dataclasses import dataclass, field

from ..errors import FormatError, UsageError
from ..untrusted import load_json_file

__all__ = ["BASE", "LibraryAdapter", "Library", "adapter_content_id", "check_adapter_name",
           "recorded_base_fingerprint"]

#: the decision "no adapter": the base model alone
BASE = "base"
_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,62}$")
_HEX = re.compile(r"^[0-9a-f]{40,64}$")
_MAX_METADATA_BYTES = 16 * 1024 * 1024  # the workflow's limit for train's metadata files
_ADAPTER_FILES = ("adapter_config.json", "adapter_model.safetensors")


def check_adapter_name(name) -> str:
    """``name`` when it can name an adapter of a library, else UsageError.

    A name is 1-63 characters of letters, digits, ``.``, ``_``, ``-`` (it appears in router
    files, tables and PEFT adapter names) and is not ``base``, which means "no adapter".
    """
    if not isinstance(name, str) or not _NAME.match(name) or ".." in name:
        raise UsageError(f"adapter name {str(name)[:80]!r} is not usable: use 1-63 letters, "
                         "digits, '.', '_' or '-', starting with a letter or digit")
    if name == BASE:
        raise UsageError(f"adapter name {BASE!r} is reserved (it means: the base model alone); "
                         "choose another name")
    return name


def _metadata(adapter_dir: str, name: str) -> dict:
    path = os.path.join(adapter_dir, name)
    if not os.path.isfile(path):
        return {}
    value = load_json_file(path, f"{adapter_dir}/{name}", _MAX_METADATA_BYTES)
    return value if isinstance(value, dict) else {}


def recorded_base_fingerprint(adapter_dir: str) -> str | None:
    """The base fingerprint an adapter directory says it was trained on (None: not recorded).

    ``training_config.json``'s ``resolved.base_fingerprint`` first (``rebase`` moves it to the
    new base), else ``contribution.json``'s ``base_fingerprint`` (the workflow's rule).

    Raises:
        FormatError: a metadata file that is not strict JSON or is over 16 MiB.
    """
    resolved = _metadata(adapter_dir, "training_config.json").get("resolved")
    value = resolved.get("base_fingerprint") if isinstance(resolved, dict) else None
    if not (isinstance(value, str) and _HEX.match(value)):
        value = _metadata(adapter_dir, "contribution.json").get("base_fingerprint")
    return value if isinstance(value, str) and _HEX.match(value) else None


def adapter_content_id(adapter_dir: str) -> str:
    """The adapter's content id: BLAKE3 of ``adapter_config.json`` then
    ``adapter_model.safetensors`` (the ``content_id`` the workflow records for a contribution).

    Raises:
        FormatError: a file is missing (not a PEFT adapter directory in safetensors).
    """
    import blake3

    digest = blake3.blake3()
    for name in _ADAPTER_FILES:
        path = os.path.join(adapter_dir, name)
        try:
            with open(path, "rb") as handle:
                while block := handle.read(1 << 20):
                    digest.update(block)
        except OSError as exc:
            raise FormatError(f"{adapter_dir!r} is not a PEFT adapter directory with safetensors "
                              f"weights: {name} cannot be read ({exc.strerror or exc})") from None
    return digest.hexdigest()


@dataclass(frozen=True)
class LibraryAdapter:
    """One adapter of a library.

    Attributes:
        name: the adapter's name in the library (routers and decisions use it).
        directory: a PEFT adapter directory on disk.
        domain: the suite (domain) it targets, when known.
        base_fingerprint: the base it records (None: not recorded).
        adapter_id: its content id (see :func:`adapter_content_id`).
        scores: review scores ``{suite: {"base": x, "adapter": y}}`` when known.
    """

    name: str
    directory: str
    domain: str | None = None
    base_fingerprint: str | None = None
    adapter_id: str | None = None
    scores: dict = field(default_factory=dict, hash=False, compare=False)


@dataclass(frozen=True)
class Library:
    """A base model and adapters trained on it.

    Attributes:
        base_dir: the base model's transformers directory.
        base_fingerprint: :func:`modelgit.fingerprint.fingerprint_dir` of it.
        adapters: in a fixed order (routers index adapters by it).
        refused: ``(name, reason)`` of adapters left out (``strict=False``).
    """

    base_dir: str
    base_fingerprint: str
    adapters: tuple[LibraryAdapter, ...]
    refused: tuple[tuple[str, str], ...] = ()

    @property
    def names(self) -> tuple[str, ...]:
        return tuple(a.name for a in self.adapters)

    def get(self, name: str) -> LibraryAdapter:
        """The adapter called ``name``; UsageError naming the closest one when there is none."""
        for adapter in self.adapters:
            if adapter.name == name:
                return adapter
        raise UsageError(f"the library has no adapter {name!r}{_closest(name, self.names)} "
                         f"(its adapters: {', '.join(self.names) or 'none'})")

    @classmethod
    def from_dirs(cls, base_dir: str, adapters, domains: dict | None = None,
                  scores: dict | None = None, strict: bool = True,
                  allow_mismatch: bool = False) -> "Library":
        """A library of local directories.

        Args:
            base_dir: the base model directory (safetensors weights).
            adapters: ``{name: adapter_dir}`` or ``[(name, adapter_dir), ...]``.
            domains: ``{name: suite}`` of the adapters whose domain is known.
            scores: ``{name: {suite: {"base", "adapter"}}}`` review scores, when known.
            strict: an adapter trained on another base is an error (True) or left out and
                listed in ``refused`` with the reason (False).
            allow_mismatch: accept adapters whose recorded base differs (the caller knows
                better, e.g. after editing the base without changing its function).
        Returns:
            The :class:`Library`.
        Raises:
            UsageError: no adapters, a bad or duplicate name, a directory that is not a PEFT
                adapter, or (``strict``) an adapter recorded with another base fingerprint.
        """
        from ..fingerprint import fingerprint_dir

        pairs = list(adapters.items()) if isinstance(adapters, dict) else list(adapters)
        if not pairs:
            raise UsageError("a library needs at least one adapter: give NAME=DIR pairs")
        if not os.path.isdir(base_dir):
            raise UsageError(f"base {base_dir!r} is not a directory: give the base model's "
                             "transformers directory")
        fingerprint = fingerprint_dir(base_dir)
        kept, refused, seen = [], [], set()
        for name, directory in pairs:
            check_adapter_name(name)
            if name in seen:
                raise UsageError(f"adapter name {name!r} is given twice: name each adapter once")
            seen.add(name)
            adapter = _read_adapter(name, os.fspath(directory), (domains or {}).get(name),
                                    (scores or {}).get(name) or {})
            reason = None if allow_mismatch else _mismatch(adapter, fingerprint, base_dir)
            if reason is None:
                kept.append(adapter)
            elif strict:
                raise UsageError(reason)
            else:
                refused.append((name, reason))
        if not kept:
            raise UsageError("no adapter of the library fits its base:\n  - "
                             + "\n  - ".join(reason for _, reason in refused))
        return cls(os.path.abspath(base_dir), fingerprint, tuple(kept), tuple(refused))


def _read_adapter(name: str, directory: str, domain, scores: dict) -> LibraryAdapter:
    if not os.path.isfile(os.path.join(directory, "adapter_config.json")):
        raise UsageError(f"adapter {name!r}: {directory!r} has no adapter_config.json: give a PEFT "
                         "adapter directory (as `modelgit train` writes)")
    return LibraryAdapter(name, os.path.abspath(directory), domain,
                          recorded_base_fingerprint(directory), adapter_content_id(directory),
                          dict(scores))


def _mismatch(adapter: LibraryAdapter, fingerprint: str, base_dir: str) -> str | None:
    if adapter.base_fingerprint is None or adapter.base_fingerprint == fingerprint:
        return None
    return (f"adapter {adapter.name!r} ({adapter.directory}) was trained on another base "
            f"(fingerprint {adapter.base_fingerprint[:16]}...) than the library's base {base_dir} "
            f"(fingerprint {fingerprint[:16]}...): carry it over with `modelgit rebase ADAPTER "
            "--onto REV`, or train it on this base")


def _closest(name: str, names) -> str:
    match = difflib.get_close_matches(str(name), list(names), n=1)
    return f" (did you mean {match[0]!r}?)" if match else ""
