"""More real text domains of this machine, beside the demo's three (used by benchmarks/route.py).

* ``c`` — C declarations and code from the headers under ``/usr/include``;
* ``shell`` — shell scripts: ``#!/bin/sh``-style programs in ``/usr/bin``, ``/usr/sbin``,
  ``/etc`` and every ``*.sh`` under ``/usr/share``, ``/usr/lib`` and ``/etc``;
* ``perl`` — Perl modules (``*.pm`` under ``/usr/share/perl*``), code only (POD removed);
* ``licenses`` — Debian copyright files (``/usr/share/doc/*/copyright``) and the common
  license texts (``/usr/share/common-licenses``).

The code domains drop copyright and license comments, so that ``licenses`` is the only domain
made of them. Each source is cut into blank-line separated blocks packed into texts of at most
``max_chars``; at most three texts come from one file. Selection is deterministic for a seed,
as in :mod:`modelgit.demo_data`.
"""

from __future__ import annotations

import os
import random
import re
import textwrap
from typing import Callable, Iterator

__all__ = ["EXTRA_DOMAINS", "EXTRA_READERS", "EXTRA_SOURCES"]

EXTRA_DOMAINS = ("c", "shell", "perl", "licenses")

# Module-level so that tests (and unusual machines) can point them elsewhere.
_C_DIRS = ("/usr/include",)
_SHELL_BIN_DIRS = ("/usr/bin", "/usr/sbin")
_SHELL_TREES = ("/etc", "/usr/share", "/usr/lib")
_PERL_DIRS = ("/usr/share/perl", "/usr/share/perl5")
_LICENSE_FILES_GLOB = ("/usr/share/doc", "copyright")
_LICENSE_DIRS = ("/usr/share/common-licenses",)

EXTRA_SOURCES = {
    "c": ("C headers (*.h) under /usr/include",
          "install development headers, e.g. `apt-get install libc6-dev`"),
    "shell": ("shell scripts in /usr/bin, /usr/sbin, /etc and *.sh under /usr/share, /usr/lib",
              "install packages that ship shell scripts, e.g. `apt-get install debianutils`"),
    "perl": ("Perl modules (*.pm) under /usr/share/perl and /usr/share/perl5",
             "install Perl, e.g. `apt-get install perl`"),
    "licenses": ("/usr/share/doc/*/copyright and /usr/share/common-licenses",
                 "install packages with their documentation (on minimised images remove "
                 "/etc/dpkg/dpkg.cfg.d/excludes first)"),
}

_READ_LIMIT = 256 * 1024  # bytes read of one file: enough for three texts, bounded for huge ones
_SKIP_DIRS = frozenset({"__pycache__", "node_modules", "test", "tests", "t"})
_LEGAL = re.compile(r"copyright|licen[cs]e|warranty|\(c\) \d{4}", re.I)
_SHEBANG = re.compile(rb"^#![ \t]*/(?:usr/)?bin/(?:env[ \t]+)?(?:ba|da|k|z)?sh\b")
_C_COMMENT = re.compile(r"/\*.*?\*/", re.S)
_POD = re.compile(r"^=[a-zA-Z].*?(?:^=cut\b.*?$|\Z)", re.S | re.M)
_PERL_END = re.compile(r"^__(?:END|DATA)__\s*$.*", re.S | re.M)


def _read(path: str) -> str:
    """The start of a text file ("" when unreadable or binary)."""
    try:
        with open(path, "rb") as handle:
            data = handle.read(_READ_LIMIT)
    except OSError:
        return ""
    if b"\0" in data:
        return ""
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError as error:
        # a cut at _READ_LIMIT may split a character; anything else is not UTF-8 text
        return data[:error.start].decode("utf-8") if error.start > len(data) - 4 else ""


def _walk(roots: tuple[str, ...], keep: Callable[[str], bool]) -> list[str]:
    """Regular files under ``roots`` whose name passes ``keep``, sorted, no symlinks."""
    files = []
    for root in roots:
        for folder, dirs, names in os.walk(root):
            dirs[:] = sorted(d for d in dirs if d not in _SKIP_DIRS and not d.startswith("."))
            for name in sorted(names):
                path = os.path.join(folder, name)
                if keep(name) and not os.path.islink(path) and os.path.isfile(path):
                    files.append(path)
    return sorted(set(files))


def _blocks(text: str) -> list[str]:
    """Blank-line separated blocks of ``text``, right-stripped, without empty ones."""
    lines = [line.rstrip() for line in text.replace("\t", "    ").splitlines()]
    return [b.strip("\n") for b in "\n".join(lines).split("\n\n") if b.strip()]


def _pack(blocks: list[str], max_chars: int, min_chars: int) -> list[str]:
    """Consecutive blocks joined into texts of at most ``max_chars`` (long blocks cut first)."""
    from .demo_data import _pieces

    texts: list[str] = []
    for block in blocks:
        for piece in _pieces(block, max_chars) if len(block) > max_chars else [block]:
            if texts and len(texts[-1]) + 2 + len(piece) <= max_chars:
                texts[-1] += "\n\n" + piece
            else:
                texts.append(piece)
    texts = [textwrap.dedent(t).strip() for t in texts]  # a block cut from a function body
    return [t for t in texts if len(t) >= min_chars]


def _texts_of_files(files: list[str], chunker: Callable[[str, int, int], list[str]],
                    rng: random.Random, max_chars: int, min_chars: int) -> Iterator[str]:
    from .demo_data import _pick

    rng.shuffle(files)
    for path in files:
        yield from _pick(rng, chunker(_read(path), max_chars, min_chars))


# ---------------------------------------------------------------- c

def _c_chunks(source: str, max_chars: int, min_chars: int) -> list[str]:
    code = _C_COMMENT.sub(lambda m: "" if _LEGAL.search(m.group()) else m.group(), source)
    blocks = [b for b in _blocks(code) if re.search(r"[;{}]|^#\s*define", b, re.M)]
    return _pack(blocks, max_chars, min_chars)


def _c_texts(rng: random.Random, max_chars: int, min_chars: int) -> Iterator[str]:
    files = _walk(_C_DIRS, lambda name: name.endswith(".h"))
    return _texts_of_files(files, _c_chunks, rng, max_chars, min_chars)


# ---------------------------------------------------------------- shell

def _is_shell_script(path: str) -> bool:
    try:
        with open(path, "rb") as handle:
            return bool(_SHEBANG.match(handle.read(64)))
    except OSError:
        return False


def _shell_files() -> list[str]:
    scripts = _walk(_SHELL_TREES, lambda name: name.endswith(".sh"))
    for folder in _SHELL_BIN_DIRS:
        try:
            names = sorted(os.listdir(folder))
        except OSError:
            continue
        for name in names:
            path = os.path.join(folder, name)
            if not os.path.islink(path) and os.path.isfile(path) and _is_shell_script(path):
                scripts.append(path)
    return sorted(set(scripts))


def _script_chunks(source: str, max_chars: int, min_chars: int, code: str) -> list[str]:
    """Blocks of a ``#``-commented script that hold code (a line matching ``code``), minus
    the shebang and legal comment blocks."""
    blocks = []
    for block in _blocks(re.sub(r"\A#!.*\n", "", source)):
        lines = [line for line in block.splitlines() if not line.lstrip().startswith("#")]
        if not lines:
            if _LEGAL.search(block):
                continue
        elif not any(re.search(code, line) for line in lines):
            continue
        blocks.append(block)
    return _pack(blocks, max_chars, min_chars)


def _shell_chunks(source: str, max_chars: int, min_chars: int) -> list[str]:
    return _script_chunks(source, max_chars, min_chars, r"\S")


def _shell_texts(rng: random.Random, max_chars: int, min_chars: int) -> Iterator[str]:
    return _texts_of_files(_shell_files(), _shell_chunks, rng, max_chars, min_chars)


# ---------------------------------------------------------------- perl

def _perl_chunks(source: str, max_chars: int, min_chars: int) -> list[str]:
    code = _POD.sub("", _PERL_END.sub("", source))
    return _script_chunks(code, max_chars, min_chars, r"[;{}]")


def _perl_texts(rng: random.Random, max_chars: int, min_chars: int) -> Iterator[str]:
    files = _walk(_PERL_DIRS, lambda name: name.endswith(".pm"))
    return _texts_of_files(files, _perl_chunks, rng, max_chars, min_chars)


# ---------------------------------------------------------------- licenses

def _license_chunks(source: str, max_chars: int, min_chars: int) -> list[str]:
    blocks = [b for b in _blocks(source) if b.strip() != "."]
    texts = _pack(blocks, max_chars, min_chars)
    return [t for t in texts if sum(c.isascii() for c in t) > 0.95 * len(t)]


def _license_files() -> list[str]:
    docs, name = _LICENSE_FILES_GLOB
    files = []
    try:
        packages = sorted(os.listdir(docs))
    except OSError:
        packages = []
    for package in packages:
        path = os.path.join(docs, package, name)
        if not os.path.islink(path) and os.path.isfile(path):
            files.append(path)
    return files + _walk(_LICENSE_DIRS, lambda _name: True)


def _license_texts(rng: random.Random, max_chars: int, min_chars: int) -> Iterator[str]:
    return _texts_of_files(_license_files(), _license_chunks, rng, max_chars, min_chars)


EXTRA_READERS: dict[str, Callable[[random.Random, int, int], Iterator[str]]] = {
    "c": _c_texts, "shell": _shell_texts, "perl": _perl_texts, "licenses": _license_texts}
