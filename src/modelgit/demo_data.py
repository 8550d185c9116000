"""Real text domains found on this machine, for ``modelgit demo``: nothing is downloaded.

The demo's three domains (:data:`DOMAINS`), each read from files a Debian-based Python machine
already has:

* ``python`` — functions, classes and methods from the running interpreter's standard library;
* ``debian`` — package descriptions, from ``apt-cache dumpavail`` and ``/var/lib/dpkg/status``;
* ``manpages`` — English manual pages (``/usr/share/man/man1``, ``man8``) turned into plain text.

:data:`EXTRA_DOMAINS` (``c``, ``shell``, ``perl``, ``licenses``: see :mod:`modelgit._demo_extra`)
are read the same way; the routing benchmark uses them, the demo does not.

Selection is deterministic for a seed and a machine: file lists are sorted, then shuffled with
``random.Random(seed)``, and sources are read one by one until enough texts are found. The texts
of one call are in source order, so asking for more texts extends the list without changing its
start, and consecutive splits of it come mostly from different files.
"""

from __future__ import annotations

import difflib
import gzip
import json
import os
import random
import re
import subprocess
import sysconfig
import textwrap
import unicodedata
from typing import Callable, Iterator

from .errors import UsageError

__all__ = ["DOMAINS", "EXTRA_DOMAINS", "ALL_DOMAINS", "domain_texts", "write_domain_splits"]

DOMAINS = ("python", "debian", "manpages")
SPLITS = ("train", "heldout", "validation")

# Module-level so that tests (and unusual machines) can point them elsewhere.
_STDLIB_DIR: str | None = None  # None: the running interpreter's, from sysconfig
# encodings/ is ~120 generated charmap codecs that differ only in their tables
_PY_SKIP_DIRS = frozenset({"test", "tests", "idlelib", "site-packages", "dist-packages",
                           "__pycache__", "encodings"})
_APT_CACHE = ("apt-cache", "dumpavail")
_APT_TIMEOUT = 30.0
_DPKG_STATUS = "/var/lib/dpkg/status"
_MAN_DIRS = ("/usr/share/man/man1", "/usr/share/man/man8")

_MIN_CHARS = 120  # shorter texts teach little; capped at max_chars // 2
_MIN_PAGE_CHARS = 200  # manual pages shorter than this are stubs
_PER_SOURCE = 3  # at most this many texts from one file or manual page, for variety
_LOWEST_MAX_CHARS = 64


def domain_texts(domain: str, count: int, max_chars: int = 1200, seed: int = 0) -> list[str]:
    """``count`` distinct texts of ``domain``, each at most ``max_chars`` characters.

    Args:
        domain: one of :data:`ALL_DOMAINS` (the demo's :data:`DOMAINS` and :data:`EXTRA_DOMAINS`).
        count: how many texts to return.
        max_chars: longest text; longer sources are cut at a line, sentence or word boundary.
        seed: picks which files, packages and pages are read.

    Returns:
        The texts, deterministic for (domain, count, max_chars, seed) on one machine; a larger
        ``count`` returns a list that starts with the smaller one.

    Raises:
        UsageError: unknown domain, bad sizes, or the machine lacks the domain's source or has
            too few texts in it (the message says what was looked for and how to install it).
    """
    if domain not in _READERS:
        close = difflib.get_close_matches(str(domain), ALL_DOMAINS, n=1, cutoff=0.5)
        hint = f" (did you mean {close[0]!r}?)" if close else ""
        raise UsageError(f"unknown text domain {domain!r}{hint}: choose one of "
                         f"{', '.join(ALL_DOMAINS)}")
    if count < 0:
        raise UsageError(f"count must be >= 0, got {count}")
    if max_chars < _LOWEST_MAX_CHARS:
        raise UsageError(f"max_chars must be >= {_LOWEST_MAX_CHARS}, got {max_chars}")
    if count == 0:
        return []
    min_chars = min(_MIN_CHARS, max_chars // 2)
    texts: list[str] = []
    seen: set[str] = set()
    for text in _READERS[domain](random.Random(seed), max_chars, min_chars):
        if text not in seen:
            seen.add(text)
            texts.append(text)
            if len(texts) == count:
                return texts
    raise _too_few(domain, len(texts), count, max_chars)


def write_domain_splits(root: str, train: int, heldout: int, validation: int,
                        max_chars: int = 1200, seed: int = 0,
                        domains=DOMAINS) -> dict[str, dict[str, str]]:
    """Write ``root/<domain>/{train,heldout,validation}.jsonl`` for each domain.

    Each line is ``{"text": ...}``. The three splits of a domain are disjoint: they are
    consecutive slices of one :func:`domain_texts` call.

    Args:
        domains: which domains (default the demo's three); any of :data:`ALL_DOMAINS`.

    Returns:
        ``{domain: {"train": path, "heldout": path, "validation": path}}``.

    Raises:
        UsageError: as :func:`domain_texts`, or a negative split size.
    """
    sizes = {"train": train, "heldout": heldout, "validation": validation}
    bad = {name: size for name, size in sizes.items() if size < 0}
    if bad:
        raise UsageError(f"split sizes must be >= 0, got {bad}")
    # Read every domain before writing any file: a missing source fails without leftovers.
    texts = {domain: domain_texts(domain, train + heldout + validation, max_chars, seed)
             for domain in domains}
    paths: dict[str, dict[str, str]] = {}
    for domain, items in texts.items():
        folder = os.path.join(root, domain)
        os.makedirs(folder, exist_ok=True)
        paths[domain] = {}
        start = 0
        for split in SPLITS:
            path = os.path.join(folder, f"{split}.jsonl")
            _write_jsonl(path, items[start:start + sizes[split]])
            start += sizes[split]
            paths[domain][split] = path
    return paths


def _write_jsonl(path: str, texts: list[str]) -> None:
    tmp = f"{path}.tmp-{os.getpid()}"
    with open(tmp, "w", encoding="utf-8", newline="\n") as handle:
        for text in texts:
            handle.write(json.dumps({"text": text}, ensure_ascii=False) + "\n")
    os.replace(tmp, path)


def _too_few(domain: str, found: int, count: int, max_chars: int) -> UsageError:
    if domain in EXTRA_SOURCES:
        where, fix = EXTRA_SOURCES[domain]
    elif domain == "python":
        where = f"the Python standard library at {_stdlib_dir()}"
        fix = "install the full standard library (e.g. `apt-get install libpython3-stdlib`)"
    elif domain == "debian":
        where = f"`{' '.join(_APT_CACHE)}` and {_DPKG_STATUS}"
        fix = ("each installed Debian package adds one (`apt-get install ...`), and so does each "
               "package whose apt list carries a long description")
    else:
        where = f"English manual pages in {', '.join(_MAN_DIRS)}"
        fix = ("install manual pages with `apt-get install man-db manpages` (on minimised "
               "images also remove /etc/dpkg/dpkg.cfg.d/excludes first)")
    return UsageError(f"text domain {domain!r}: found {found} texts of at most {max_chars} "
                      f"characters in {where}, {count} were asked for: {fix}, or ask for fewer")


# ---------------------------------------------------------------- shared helpers

def _clip(text: str, max_chars: int) -> str:
    """``text`` cut to ``max_chars`` at the last line, sentence or word boundary in reach."""
    text = text.strip()
    if len(text) <= max_chars:
        return text
    head = text[:max_chars + 1]
    floor = max_chars // 2
    for sep, keep in (("\n", 0), (". ", 1), (" ", 0)):
        at = head.rfind(sep, floor, max_chars + 1 - keep)
        if at > 0:
            return head[:at + keep].rstrip()
    return text[:max_chars].rstrip()


def _pieces(text: str, max_chars: int) -> Iterator[str]:
    """``text`` cut into consecutive pieces of at most ``max_chars`` at natural boundaries."""
    text = text.strip()
    while text:
        piece = _clip(text, max_chars)
        yield piece
        text = text[len(piece):].strip()


def _pick(rng: random.Random, items: list[str], k: int = _PER_SOURCE) -> list[str]:
    """At most ``k`` of ``items``, chosen by ``rng``, in their original order."""
    if len(items) <= k:
        return items
    return [items[i] for i in sorted(rng.sample(range(len(items)), k))]


# ---------------------------------------------------------------- python

_PY_TOP = re.compile(r"(?:@|def |async def |class )")
_PY_DEF = re.compile(r"(\s+)(?:@|def |async def )")


def _stdlib_dir() -> str:
    return _STDLIB_DIR or sysconfig.get_paths()["stdlib"]


def _python_files(root: str) -> list[str]:
    files = []
    for folder, dirs, names in os.walk(root):
        dirs[:] = sorted(d for d in dirs if d not in _PY_SKIP_DIRS and not d.startswith("."))
        files.extend(os.path.join(folder, n) for n in sorted(names) if n.endswith(".py"))
    return files


def _top_level_blocks(lines: list[str]) -> Iterator[list[str]]:
    """Top-level functions and classes (with their decorators), by indentation alone.

    Parsing with ``ast`` would be exact but takes ~5 ms per module; a text at column 0 inside a
    triple-quoted string ends a block early here, which costs a snippet its tail, no more.
    """
    block: list[str] = []
    for line in lines:
        continues = not line or line[0] in " \t#)]}"
        if block and (continues or (block[-1].startswith("@") and _PY_TOP.match(line))):
            block.append(line)
            continue
        if block:
            yield block
        block = [line] if _PY_TOP.match(line) else []
    if block:
        yield block


def _split_class(block: list[str]) -> list[str]:
    """A class too long for one text: its header, then each method dedented."""
    starts = [i for i, line in enumerate(block) if i and _PY_DEF.match(line)]
    if not starts:
        return ["\n".join(block)]
    indent = min(len(_PY_DEF.match(block[i]).group(1)) for i in starts)
    starts = [i for i in starts if len(_PY_DEF.match(block[i]).group(1)) == indent
              and not (block[i - 1].strip().startswith("@") and i - 1 in starts)]
    parts = ["\n".join(block[:starts[0]])]
    for begin, end in zip(starts, [*starts[1:], len(block)]):
        parts.append(textwrap.dedent("\n".join(block[begin:end])))
    return parts


def _python_snippets(path: str, max_chars: int, min_chars: int) -> list[str]:
    try:
        with open(path, encoding="utf-8") as handle:
            lines = handle.read().splitlines()
    except (OSError, UnicodeDecodeError):
        return []
    snippets = []
    for block in _top_level_blocks(lines):
        while block and not block[-1].strip() or block and block[-1].lstrip().startswith("#"):
            block.pop()  # trailing blank lines and the next definition's leading comment
        text = "\n".join(block)
        is_class = next((line for line in block if not line.startswith("@")), "").startswith(
            "class ")
        parts = _split_class(block) if is_class and len(text) > max_chars else [text]
        for part in parts:
            part = _clip(part, max_chars)
            if len(part) >= min_chars and re.search(r"\b(def|class|import) ", part):
                snippets.append(part)
    return snippets


def _python_texts(rng: random.Random, max_chars: int, min_chars: int) -> Iterator[str]:
    root = _stdlib_dir()
    files = _python_files(root) if os.path.isdir(root) else []
    rng.shuffle(files)
    for path in files:
        yield from _pick(rng, _python_snippets(path, max_chars, min_chars))


# ---------------------------------------------------------------- debian

_DESCRIPTION = re.compile(r"^Description(?:-en)?:[ \t]*(.*)\n((?:[ \t].*(?:\n|$))+)", re.M)
_PACKAGE = re.compile(r"^Package:[ \t]*(\S+)", re.M)


def _apt_dump() -> str:
    """``apt-cache dumpavail``, or "" when apt is missing, fails or hangs."""
    try:
        done = subprocess.run(_APT_CACHE, capture_output=True, timeout=_APT_TIMEOUT, check=False)
    except (OSError, subprocess.SubprocessError):
        return ""
    return done.stdout.decode("utf-8", "replace") if done.returncode == 0 else ""


def _read_status() -> str:
    try:
        with open(_DPKG_STATUS, encoding="utf-8", errors="replace") as handle:
            return handle.read()
    except OSError:
        return ""


def _render_description(name: str, short: str, body: str) -> str:
    """Debian's folded description as text: one paragraph per " ." separator.

    Lines indented by more than the one folding space are verbatim (lists, examples) and
    keep their own line; the others of a paragraph are unfolded into one line.
    """
    paragraphs: list[list[str]] = [[]]
    for raw in body.splitlines():
        line = raw[1:].rstrip()
        if line.strip() == ".":
            paragraphs.append([])
        elif line.startswith((" ", "\t")) or not paragraphs[-1] \
                or paragraphs[-1][-1].startswith((" ", "\t")):
            paragraphs[-1].append(line)
        else:
            paragraphs[-1][-1] += " " + line.strip()
    body_text = "\n\n".join("\n".join(p) for p in paragraphs if p)
    return f"Package: {name}\nDescription: {short.strip()}\n\n{body_text}"


def _descriptions(dump: str, found: dict[str, str]) -> None:
    """Add ``{package: text}`` for each stanza of ``dump`` with a long description.

    Current Debian Packages files carry only the short description (the long one sits in
    Translation files), so most ``dumpavail`` stanzas are skipped by the cheap test first.
    """
    for stanza in dump.split("\n\n"):
        at = stanza.find("Description")
        if at < 0 or stanza.find("\n ", stanza.find("\n", at)) < 0:
            continue
        package, description = _PACKAGE.search(stanza), _DESCRIPTION.search(stanza)
        if package and description and package.group(1) not in found:
            found[package.group(1)] = _render_description(package.group(1), *description.groups())


def _debian_texts(rng: random.Random, max_chars: int, min_chars: int) -> Iterator[str]:
    found: dict[str, str] = {}
    _descriptions(_apt_dump(), found)
    _descriptions(_read_status(), found)
    names = sorted(found)
    rng.shuffle(names)
    for name in names:
        text = _clip(found[name], max_chars)
        if len(text) >= min_chars:
            yield text


# ---------------------------------------------------------------- manpages

_GLYPHS = {
    "em": "\u2014", "en": "\u2013", "hy": "-", "mi": "-", "bu": "\u2022", "aq": "'", "dq": '"',
    "lq": "\u201c", "rq": "\u201d", "oq": "\u2018", "cq": "\u2019", "co": "\u00a9",
    "rg": "\u00ae", "tm": "\u2122", "mu": "\u00d7", "di": "\u00f7", "->": "\u2192",
    "<-": "\u2190", "<=": "\u2264", ">=": "\u2265", "!=": "\u2260", "ti": "~", "ha": "^",
    "rs": "\\", "sl": "/", "ba": "|", "or": "|", "de": "\u00b0", "pl": "+", "eq": "=",
    "lB": "[", "rB": "]", "lC": "{", "rC": "}", "la": "\u27e8", "ra": "\u27e9", "ga": "`",
    "aa": "\u00b4", "at": "@", "sh": "#", "Do": "$", "ss": "\u00df", "pc": "\u00b7",
    "+-": "\u00b1", "dg": "\u2020", "sc": "\u00a7", "Eu": "\u20ac", "Po": "\u00a3",
    "fm": "\u2032", "ua": "\u2191", "da": "\u2193", "lh": "\u261c", "rh": "\u261e",
}
_ACCENTS = {":": "\u0308", "'": "\u0301", "`": "\u0300", "^": "\u0302", "~": "\u0303",
            ",": "\u0327", "o": "\u030a"}
# pod2man's quote strings and a few common ones; other strings expand to nothing
_STRINGS = {"C`": '"', "C'": '"', 'L"': '"', 'R"': '"', "--": "-", "lq": '"', "rq": '"',
            "Tm": "(TM)", "R": "\u00ae"}
_ONE_CHAR = {"-": "-", "e": "\\", "\\": "\\", " ": " ", "~": " ", "0": " ", "t": " ",
             "'": "'", "`": "`", ".": ".", "_": "_"}
_ESCAPE = re.compile(r"""\\(?:
      (?P<comment>["\#].*)
    | \*(?P<string>\[[^\]]*\]|\(..|.)
    | [fFgkmMnVY](?:\[[^\]]*\]|\(..|[-+]?.)
    | s[-+]?(?:\(\d\d|\[[^\]]*\]|[1-3]\d|\d)
    | [hvwlLDXoZSHxRbNB]'[^']*'
    | C'(?P<named1>[^']*)'
    | \((?P<named2>..)
    | \[(?P<named3>[^\]]*)\]
    | (?P<one>.)
)""", re.X)
_SKIP_BLOCKS = {".de": "..", ".de1": "..", ".am": "..", ".ig": "..", ".TS": ".TE", ".EQ": ".EN",
                ".PS": ".PE"}
_FONT_MACROS = {".B", ".I", ".SM", ".SB"}
_ALTERNATING = {".BR", ".RB", ".IR", ".RI", ".BI", ".IB", ".SMR"}
_BREAKS = {".PP", ".P", ".LP", ".sp", ".TP", ".TQ", ".IP", ".HP", ".RS", ".RE", ".in", ".ti"}
_NO_FILL = {".nf", ".EX"}
# what is left in the pages that document troff itself (groff, pod2man, ...): not prose
_TROFF_LEFT = re.compile(r"^\.[A-Za-z\\]|^'\\|\\f[A-Z(\[]", re.M)
_FILL = {".fi", ".EE"}


def _glyph(name: str) -> str:
    if name in _GLYPHS:
        return _GLYPHS[name]
    if name.startswith(("u", "char")):  # \[u00E9], \[char46]
        try:
            return chr(int(name[1:], 16) if name[0] == "u" else int(name[4:]))
        except ValueError:
            return ""
    if len(name) == 2 and name[0] in _ACCENTS:  # \(:a, \('e
        return unicodedata.normalize("NFC", name[1] + _ACCENTS[name[0]])
    return ""


def _unescape_match(match: re.Match) -> str:
    if match["string"] is not None:
        return _STRINGS.get(match["string"].strip("[]").lstrip("("), "")
    for group in ("named1", "named2", "named3"):
        if match[group] is not None:
            return _glyph(match[group])
    if match["one"] is not None:
        return _ONE_CHAR.get(match["one"], "")
    return ""  # comments, fonts, sizes, motions, registers


def _unescape(line: str) -> str:
    return _ESCAPE.sub(_unescape_match, line)


def _macro_args(rest: str) -> list[str]:
    """The arguments of a macro line, honouring double quotes."""
    args = re.findall(r'"[^"]*"?|(?:\\.|[^\s\\])+', rest)  # "\ " is a space inside an argument
    return [a[1:].removesuffix('"') if a.startswith('"') else a for a in args]


def _man_sections(source: str) -> list[tuple[str, list[str]]]:
    """``[(heading, paragraphs)]`` of a man(7) page, as plain text."""
    sections: list[tuple[str, list[str]]] = []
    lines: list[tuple[str, bool]] = []  # (text, on its own line) of the open paragraph
    fill, tag_next, skip_until = True, False, None

    def close() -> None:
        if lines and sections:
            out: list[tuple[str, bool]] = []
            for text, alone in lines:
                if out and not alone and not out[-1][1]:
                    out[-1] = (out[-1][0] + " " + text, False)
                else:
                    out.append((text, alone))
            paragraph = "\n".join(t for t, _ in out).strip()
            if paragraph:
                sections[-1][1].append(paragraph)
        lines.clear()

    for raw in re.sub(r"(?<!\\)\\\n", "", source).splitlines():
        request = raw[:1] in (".", "'")
        name, _, rest = raw.partition(" ") if request else ("", "", raw)
        name = "." + name[1:].strip() if request else ""
        if skip_until is not None:
            skip_until = None if name == skip_until else skip_until
            continue
        if name in _SKIP_BLOCKS:
            skip_until = _SKIP_BLOCKS[name]
        elif name in (".SH", ".SS"):
            close()
            sections.append((_unescape(" ".join(_macro_args(rest))).strip(), []))
        elif name in _BREAKS:
            close()
            tag = _unescape(" ".join(_macro_args(rest)[:1])).strip() if name == ".IP" else ""
            if tag:
                lines.append((tag, True))
            tag_next = name in (".TP", ".TQ")
        elif name in _NO_FILL or name in _FILL:
            close()
            fill = name in _FILL
        elif name in _FONT_MACROS or name in _ALTERNATING or not request:
            args = _macro_args(rest) if request else [rest]
            text = _unescape((" " if name in _FONT_MACROS else "").join(args))
            if not request and not raw.strip():
                close()
            elif text.strip() or not fill:
                lines.append((text if not fill else text.strip(), tag_next or not fill))
            tag_next = False
    close()
    return sections


def _man_chunks(source: str, max_chars: int, min_chars: int) -> list[str]:
    """A page's sections packed into texts of at most ``max_chars`` (empty for a stub or a
    page that is not English prose)."""
    blocks = []
    for heading, paragraphs in _man_sections(source):
        for i, paragraph in enumerate(paragraphs):
            block = f"{heading}\n{paragraph}" if i == 0 and heading else paragraph
            blocks.extend(_pieces(block, max_chars))
    page = "\n\n".join(blocks)
    if len(page) < _MIN_PAGE_CHARS or not _looks_english(page):
        return []
    chunks: list[str] = []
    for block in blocks:
        if chunks and len(chunks[-1]) + 2 + len(block) <= max_chars:
            chunks[-1] += "\n\n" + block
        else:
            chunks.append(block)
    return [c for c in chunks if len(c) >= min_chars and not _TROFF_LEFT.search(c)]


def _looks_english(text: str) -> bool:
    ascii_share = sum(c.isascii() for c in text) / len(text)
    common = len(re.findall(r"\b(?:the|and|of|to|is|a|in|for|with)\b", text, re.I))
    return ascii_share > 0.95 and common * 25 >= len(text.split())


def _man_families(dirs: tuple[str, ...]) -> list[list[str]]:
    """Page files grouped by the name before the first ``_``, sorted.

    One SDK can ship thousands of sub-command pages (``gcloud_*``: 16,600 of 17,900 here);
    sampling families first keeps the domain from being one program's manual.
    """
    families: dict[str, list[str]] = {}
    for folder in dirs:
        try:
            names = sorted(os.listdir(folder))
        except OSError:
            continue
        for name in names:
            path = os.path.join(folder, name)
            if name.endswith(".gz") and not os.path.islink(path):
                families.setdefault(name.split("_")[0].split(".")[0], []).append(path)
    return [families[key] for key in sorted(families)]


def _read_man(path: str) -> str:
    try:
        with gzip.open(path) as handle:
            data = handle.read()
    except (OSError, EOFError):
        return ""
    try:
        source = data.decode("utf-8")
    except UnicodeDecodeError:
        source = data.decode("latin-1")  # older pages; every byte decodes
    is_mdoc = re.search(r"^\.(?:Dd|Sh)\b", source, re.M)
    return "" if is_mdoc or source.startswith(".so ") else source


def _manpage_texts(rng: random.Random, max_chars: int, min_chars: int) -> Iterator[str]:
    families = _man_families(_MAN_DIRS)
    rng.shuffle(families)
    for family in families:
        rng.shuffle(family)
    for round_ in range(max((len(f) for f in families), default=0)):
        for family in families:
            if round_ < len(family):
                yield from _pick(rng, _man_chunks(_read_man(family[round_]), max_chars, min_chars))


# Imported last: the extra readers use this module's helpers (_clip, _pieces, _pick).
from ._demo_extra import EXTRA_DOMAINS, EXTRA_READERS, EXTRA_SOURCES  # noqa: E402

ALL_DOMAINS = DOMAINS + EXTRA_DOMAINS
_READERS: dict[str, Callable[[random.Random, int, int], Iterator[str]]] = {
    "python": _python_texts, "debian": _debian_texts, "manpages": _manpage_texts,
    **EXTRA_READERS}
