"""Real labelled classification tasks from this machine's files (for benchmarks/route.py).

* ``mansection`` — which manual section a piece of a manual page comes from: ``1`` (user
  commands), ``2`` (system calls), ``3`` (library functions), ``5`` (file formats), ``7``
  (overviews, conventions), ``8`` (administration), from ``/usr/share/man/man<N>``;
* ``language`` — the programming language of a piece of source: ``c``, ``perl``, ``python``,
  ``shell`` (the texts of the :mod:`modelgit.demo_data` domains of those names);
* ``debsection`` — the Debian archive section of a package from its one-line description
  (``apt-cache dumpavail``'s ``Description:`` line, without the package's name): ``games``,
  ``graphics``, ``mail``, ``net``, ``science``, ``sound``. One description per source package
  (a source's binary packages repeat theirs with "(data files)" and the like), so that no split
  holds near-copies of another's texts.

Each label gets the same number of examples; examples are interleaved by label (one of each
label in turn), deterministic for a seed on one machine.
"""

from __future__ import annotations

import functools
import json
import os
import random
import re
from typing import Callable, Iterable, Iterator

from .errors import UsageError

__all__ = ["TASKS", "task_labels", "task_examples", "write_task_splits"]

TASKS = ("mansection", "language", "debsection")

_MAN_ROOT = "/usr/share/man"  # module-level so that tests can point it elsewhere
_MAN_SECTIONS = ("1", "2", "3", "5", "7", "8")
_LANGUAGES = ("c", "perl", "python", "shell")
_DEB_SECTIONS = ("games", "graphics", "mail", "net", "science", "sound")
_LABELS = {"mansection": _MAN_SECTIONS, "language": _LANGUAGES, "debsection": _DEB_SECTIONS}


def task_labels(task: str) -> tuple[str, ...]:
    """The labels of ``task``, sorted.

    Raises:
        UsageError: unknown task.
    """
    if task not in _LABELS:
        import difflib

        close = difflib.get_close_matches(str(task), TASKS, n=1, cutoff=0.5)
        hint = f" (did you mean {close[0]!r}?)" if close else ""
        raise UsageError(f"unknown task {task!r}{hint}: choose one of {', '.join(TASKS)}")
    return _LABELS[task]


def task_examples(task: str, per_label: int, max_chars: int = 600, seed: int = 0,
                  labels: tuple[str, ...] | None = None) -> list[tuple[str, str]]:
    """``per_label`` distinct ``(text, label)`` pairs of each label of ``task``, interleaved.

    Args:
        task: one of :data:`TASKS`.
        per_label: examples of each label.
        max_chars: longest text.
        seed: picks the files.
        labels: only these labels of the task (default all), e.g. four man sections.

    Returns:
        ``[(text, label), ...]`` of length ``per_label * len(task_labels(task))``; a larger
        ``per_label`` keeps the first examples of each label (unless a text it reads further on
        is also one of them under another label).

    A text found under two labels is left out of both (it says nothing of either), and each
    reads on for another.

    Raises:
        UsageError: unknown task, bad sizes, or too few texts of some label on this machine.
    """
    labels = _chosen(task, labels)
    if per_label < 0:
        raise UsageError(f"per_label must be >= 0, got {per_label}")
    reader = {"mansection": _man_section_texts, "language": _language_texts,
              "debsection": _deb_section_texts}[task]
    # a text found under two labels (a boilerplate paragraph in pages of two man sections)
    # names neither: it is left out of both and each label reads on for another text
    want = dict.fromkeys(labels, per_label)
    while True:
        try:
            read = {label: reader(label, want[label], max_chars, seed) for label in labels}
        except UsageError as exc:
            left = sum(want.values()) - per_label * len(labels)
            if not left:
                raise
            raise UsageError(f"{exc} (texts found under two labels are left out of both: "
                             f"{left} of those read)") from None
        owners: dict[str, set[str]] = {}
        for label, texts in read.items():
            for text in texts:
                owners.setdefault(text, set()).add(label)
        by_label = {label: [t for t in texts if len(owners[t]) == 1] for label, texts in read.items()}
        short = {label: per_label - len(texts) for label, texts in by_label.items() if len(texts) < per_label}
        if not short:
            break
        ran_out = [label for label in short if len(read[label]) < want[label]]
        if ran_out:  # the readers raise first; a loop that cannot end must not start
            raise UsageError(f"task {task!r}: too few texts of label {ran_out[0]!r} on this machine "
                             f"(texts found under two labels are left out of both)")
        for label, missing in short.items():  # a reader raises once its label runs out
            want[label] += missing
    by_label = {label: texts[:per_label] for label, texts in by_label.items()}
    return [(by_label[label][i], label) for i in range(per_label) for label in labels]


def write_task_splits(root: str, task: str, train: int, test: int, max_chars: int = 600,
                      seed: int = 0, labels: tuple[str, ...] | None = None) -> dict[str, str]:
    """Write ``root/<task>/{train,test}.jsonl`` (``{"text", "label"}`` lines); ``train`` and
    ``test`` examples per label (of ``labels``, default all), disjoint.

    Returns:
        ``{"train": path, "test": path}``.

    Raises:
        UsageError: as :func:`task_examples`.
    """
    if train < 0 or test < 0:
        raise UsageError(f"split sizes must be >= 0, got train={train}, test={test}")
    examples = task_examples(task, train + test, max_chars, seed, labels)
    count = len(_chosen(task, labels))
    folder = os.path.join(root, task)
    os.makedirs(folder, exist_ok=True)
    paths = {}
    for split, part in (("train", examples[:train * count]), ("test", examples[train * count:])):
        path = os.path.join(folder, f"{split}.jsonl")
        tmp = f"{path}.tmp-{os.getpid()}"
        with open(tmp, "w", encoding="utf-8", newline="\n") as handle:
            for text, label in part:
                handle.write(json.dumps({"text": text, "label": label}, ensure_ascii=False) + "\n")
        os.replace(tmp, path)
        paths[split] = path
    return paths


def _chosen(task: str, labels) -> tuple[str, ...]:
    known = task_labels(task)
    if labels is None:
        return known
    unknown = [label for label in labels if label not in known]
    if unknown or len(set(labels)) < 2:
        raise UsageError(f"labels {list(labels)} of task {task!r}: choose two or more of "
                         f"{', '.join(known)}")
    return tuple(sorted(set(labels)))


def _language_texts(label: str, count: int, max_chars: int, seed: int) -> list[str]:
    from .demo_data import domain_texts

    return domain_texts(label, count, max_chars, seed)


def _distinct(texts: Iterable[str], count: int, key: Callable[[str], str] = str) -> list[str]:
    """The first ``count`` texts of ``texts`` whose ``key`` was not seen before (fewer when
    ``texts`` runs out); stops reading once it has them."""
    out: list[str] = []
    seen: set[str] = set()
    for text in texts:
        if key(text) not in seen:
            seen.add(key(text))
            out.append(text)
            if len(out) == count:
                break
    return out


_STANZA_FIELD = re.compile(r"^(Package|Source|Section|Description):[ \t]*(.*)$", re.M)


def _deb_descriptions(dump: str) -> dict[str, dict[str, str]]:
    """``{section: {source package: one-line description}}`` of an ``apt-cache dumpavail``
    dump: the first description seen of each source package, sections without their area
    (``contrib/net`` is ``net``); descriptions found in two sections are left out."""
    out: dict[str, dict[str, str]] = {}
    for stanza in dump.split("\n\n"):
        fields = dict(_STANZA_FIELD.findall(stanza))
        text = fields.get("Description", "").strip()
        if not text or not fields.get("Section") or not fields.get("Package"):
            continue
        source = fields.get("Source", fields["Package"]).split(" ")[0]
        out.setdefault(fields["Section"].rsplit("/", 1)[-1], {}).setdefault(source, text)
    # a description of packages of two sections ("transitional package") names no section
    sections_of: dict[str, set[str]] = {}
    for section, sources in out.items():
        for text in sources.values():
            sections_of.setdefault(text.lower(), set()).add(section)
    return {section: {name: text for name, text in sources.items()
                      if len(sections_of[text.lower()]) == 1} for section, sources in out.items()}


@functools.lru_cache(maxsize=1)
def _deb_index() -> dict[str, dict[str, str]]:
    """:func:`_deb_descriptions` of this machine's package lists: one apt-cache run a process."""
    from .demo_data import _apt_dump

    return _deb_descriptions(_apt_dump())


def _deb_section_texts(section: str, count: int, max_chars: int, seed: int) -> list[str]:
    """``count`` distinct descriptions of section ``section``'s source packages, in the seed's
    order."""
    sources = _deb_index().get(section, {})
    names = sorted(sources)
    random.Random(f"{seed}:{section}").shuffle(names)
    texts = _distinct((sources[name][:max_chars] for name in names), count, str.lower)
    if len(texts) == count:
        return texts
    raise UsageError(f"task 'debsection': found {len(texts)} package descriptions of Debian "
                     f"section {section!r} in `apt-cache dumpavail`, {count} were asked for: "
                     "run `apt-get update` (the package lists), or ask for fewer")


def _man_section_texts(section: str, count: int, max_chars: int, seed: int) -> list[str]:
    """One text per manual page of ``man<section>``, page families sampled first."""
    from . import demo_data
    from ._demo_extra import _LEGAL

    folder = os.path.join(_MAN_ROOT, f"man{section}")
    rng = random.Random(f"{seed}:{section}")
    families = demo_data._man_families((folder,))
    rng.shuffle(families)
    for family in families:
        rng.shuffle(family)
    min_chars = min(demo_data._MIN_CHARS, max_chars // 2)
    pick: Callable = demo_data._pick

    def candidates() -> Iterator[str]:  # one chunk of each family's next page, round by round
        for round_ in range(max((len(f) for f in families), default=0)):
            for family in families:
                if round_ >= len(family):
                    continue
                chunks = demo_data._man_chunks(demo_data._read_man(family[round_]), max_chars,
                                               min_chars)
                # the same license notice sits in pages of several sections: not a section's text
                yield from pick(rng, [c for c in chunks if not _LEGAL.search(c)], 1)

    texts = _distinct(candidates(), count)
    if len(texts) == count:
        return texts
    raise UsageError(f"task 'mansection': found {len(texts)} texts of manual section {section} "
                     f"in {folder}, {count} were asked for: install manual pages with "
                     "`apt-get install man-db manpages manpages-dev`, or ask for fewer")
