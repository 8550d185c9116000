"""The demo's text domains: real texts of this machine, deterministic, bounded, disjoint splits."""

from __future__ import annotations

import gzip
import json
import random
import re

import pytest
from hypothesis import given, strategies as st

from modelgit import _demo_extra, demo_data
from modelgit.demo_data import ALL_DOMAINS, DOMAINS, EXTRA_DOMAINS, domain_texts, write_domain_splits
from modelgit.errors import UsageError

TROFF_REQUEST = re.compile(r"^\.[A-Za-z\\]", re.M)
TROFF_FONT = re.compile(r"\\f[A-Z(\[]")
REAL_APT_DUMP = demo_data._apt_dump


@pytest.fixture(scope="module")
def apt_once():
    """``apt-cache dumpavail`` runs once for the module (it prints ~50 MB, ~0.7 s)."""
    return demo_data._apt_dump()


@pytest.fixture(autouse=True)
def reuse_apt(monkeypatch, apt_once):
    monkeypatch.setattr(demo_data, "_apt_dump", lambda: apt_once)


@pytest.mark.parametrize("domain", ALL_DOMAINS)
def test_same_seed_same_texts_and_more_texts_extend_the_list(domain):
    first = domain_texts(domain, 30, seed=7)
    assert first == domain_texts(domain, 30, seed=7)
    assert domain_texts(domain, 45, seed=7)[:30] == first
    assert domain_texts(domain, 30, seed=8) != first
    assert len(set(first)) == 30


@pytest.mark.parametrize("domain", ALL_DOMAINS)
@pytest.mark.parametrize("max_chars", [200, 1200])
def test_texts_respect_max_chars(domain, max_chars):
    texts = domain_texts(domain, 40, max_chars=max_chars, seed=1)
    assert len(texts) == 40
    assert all(0 < len(text) <= max_chars for text in texts)
    assert all(text == text.strip() for text in texts)


def test_python_texts_are_python_source():
    for text in domain_texts("python", 100, seed=2):
        assert re.search(r"\b(def|class|import) ", text), text
    assert sum(text.startswith(("def ", "class ", "async def ", "@")) for text in
               domain_texts("python", 100, seed=2)) > 80


def test_debian_texts_are_package_descriptions():
    for text in domain_texts("debian", 100, seed=2):
        first, second, *rest = text.split("\n")
        assert re.fullmatch(r"Package: [a-z0-9][a-z0-9+.-]+", first), text
        assert second.startswith("Description: ") and rest, text
        assert not re.search(r"^ \.$", text, re.M)  # paragraph separators became blank lines


def test_manpage_texts_are_plain_english():
    texts = domain_texts("manpages", 200, seed=2)
    for text in texts:
        assert not TROFF_REQUEST.search(text), text
        assert not TROFF_FONT.search(text), text
        assert "\\-" not in text and "\\(" not in text, text
    words = " ".join(texts).split()
    assert sum(w.lower() in ("the", "and", "of", "to") for w in words) > len(words) / 25


def test_manpages_are_not_one_programs_manual():
    """Thousands of gcloud_* pages must not crowd out the rest: families are sampled first."""
    texts = domain_texts("manpages", 200, seed=0)
    assert sum("gcloud" in text for text in texts) < len(texts) / 4


def test_splits_are_disjoint_and_written_as_jsonl(tmp_path):
    paths = write_domain_splits(str(tmp_path), train=20, heldout=6, validation=4, max_chars=400,
                                seed=3)
    assert set(paths) == set(DOMAINS)
    for domain, splits in paths.items():
        assert set(splits) == {"train", "heldout", "validation"}
        seen = {}
        for split, path in splits.items():
            assert path == str(tmp_path / domain / f"{split}.jsonl")
            with open(path, encoding="utf-8") as handle:
                records = [json.loads(line) for line in handle]
            assert all(set(record) == {"text"} for record in records)
            seen[split] = [record["text"] for record in records]
        assert [len(seen[s]) for s in ("train", "heldout", "validation")] == [20, 6, 4]
        everything = seen["train"] + seen["heldout"] + seen["validation"]
        assert len(set(everything)) == 30
        assert everything == domain_texts(domain, 30, max_chars=400, seed=3)
    assert not list(tmp_path.rglob("*.tmp-*"))


def test_splits_keep_non_ascii_as_is(tmp_path, monkeypatch):
    monkeypatch.setitem(demo_data._READERS, "python",
                        lambda rng, max_chars, min_chars: iter(["naïve — ü", "b", "c"]))
    paths = write_domain_splits(str(tmp_path), 1, 1, 1, domains=("python",))
    assert "naïve — ü" in (tmp_path / "python" / "train.jsonl").read_text(encoding="utf-8")
    assert paths["python"]["validation"].endswith("validation.jsonl")


def test_missing_sources_say_what_was_looked_for_and_how_to_fix(tmp_path, monkeypatch):
    monkeypatch.setattr(demo_data, "_STDLIB_DIR", str(tmp_path / "no-stdlib"))
    monkeypatch.setattr(demo_data, "_apt_dump", lambda: "")
    monkeypatch.setattr(demo_data, "_DPKG_STATUS", str(tmp_path / "no-status"))
    monkeypatch.setattr(demo_data, "_MAN_DIRS", (str(tmp_path / "no-man1"),))
    with pytest.raises(UsageError, match=r"no-stdlib.*libpython3-stdlib"):
        domain_texts("python", 5)
    with pytest.raises(UsageError, match=r"found 0 texts.*no-status"):
        domain_texts("debian", 5)
    with pytest.raises(UsageError, match=r"no-man1.*apt-get install man-db manpages"):
        domain_texts("manpages", 5)
    with pytest.raises(UsageError, match="python"):
        write_domain_splits(str(tmp_path / "out"), 2, 1, 1)
    assert not (tmp_path / "out").exists()  # nothing written when a domain is missing


def test_apt_cache_that_is_missing_is_no_error(monkeypatch):
    monkeypatch.setattr(demo_data, "_APT_CACHE", ("/nonexistent/apt-cache", "dumpavail"))
    assert REAL_APT_DUMP() == ""


def test_too_few_texts_and_bad_arguments_are_usage_errors(monkeypatch):
    monkeypatch.setitem(demo_data._READERS, "debian", lambda rng, m, n: iter("abca"))
    with pytest.raises(UsageError, match="found 3 texts .* 5 were asked for"):
        domain_texts("debian", 5)
    with pytest.raises(UsageError, match="unknown text domain 'poetry'"):
        domain_texts("poetry", 5)
    with pytest.raises(UsageError, match="'shel'.*did you mean 'shell'.*licenses"):
        domain_texts("shel", 5)
    with pytest.raises(UsageError, match="max_chars"):
        domain_texts("python", 5, max_chars=10)
    with pytest.raises(UsageError, match="count"):
        domain_texts("python", -1)
    assert domain_texts("python", 0) == []


# ---------------------------------------------------------------- parsers, on fixed inputs

MAN_PAGE = r""".\" a comment
.de XX
.  ds C` ""
..
.TH DEMO 1 "2024" "demo 1.0" "User Commands"
.SH NAME
demo \- show what \fBdemo\fR does
.SH DESCRIPTION
.B demo
prints \fIfiles\fP in the \(lqright\(rq order \(em quickly.
It is a long
line that was filled.
.PP
Second paragraph with \*(C`code\*(C' and a size \s-1CHANGE\s0 and a\ space.
.TP
\fB\-a\fR, \fB\-\-all\fR
show all \e entries
.TS
l l.
a	b
.TE
.nf
keep   this
  layout
.fi
.SH "SEE ALSO"
.BR ls (1),
.IR other (8)
.BR \-r , \ \-\-raw
"""


def test_man_page_becomes_readable_text():
    sections = demo_data._man_sections(MAN_PAGE)
    assert sections == [
        ("NAME", ["demo - show what demo does"]),
        ("DESCRIPTION", [
            "demo prints files in the \u201cright\u201d order \u2014 quickly. It is a long line "
            "that was filled.",
            'Second paragraph with "code" and a size CHANGE and a space.',
            "-a, --all\nshow all \\ entries",
            "keep   this\n  layout",
        ]),
        ("SEE ALSO", ["ls(1), other(8) -r, --raw"]),
    ]


def test_man_chunks_pack_sections_and_skip_stubs(tmp_path):
    chunks = demo_data._man_chunks(MAN_PAGE, max_chars=200, min_chars=20)
    assert all(len(chunk) <= 200 for chunk in chunks)
    assert chunks[0].startswith("NAME\ndemo - show what demo does\n\nDESCRIPTION\n")
    assert demo_data._man_chunks(".SH NAME\nx \\- y\n", 200, 20) == []  # a stub
    path = tmp_path / "demo.1.gz"
    path.write_bytes(gzip.compress(MAN_PAGE.encode()))
    assert demo_data._read_man(str(path)) == MAN_PAGE
    path.write_bytes(gzip.compress(b".so man1/other.1\n"))
    assert demo_data._read_man(str(path)) == ""


def test_man_families_group_subcommand_pages(tmp_path):
    for name in ["gcloud.1.gz", "gcloud_a.1.gz", "gcloud_b_c.1.gz", "ls.1.gz", "git-add.1.gz"]:
        (tmp_path / name).write_bytes(b"")
    (tmp_path / "link.1.gz").symlink_to(tmp_path / "ls.1.gz")
    families = demo_data._man_families((str(tmp_path),))
    assert [[p.rsplit("/", 1)[1] for p in f] for f in families] == [
        ["gcloud.1.gz", "gcloud_a.1.gz", "gcloud_b_c.1.gz"], ["git-add.1.gz"], ["ls.1.gz"]]


STATUS = """Package: zlib1g
Status: install ok installed
Description: compression library - runtime
 zlib is a library implementing the deflate compression method found
 in gzip and PKZIP.
 .
 This package includes the shared library:
  * item one
  * item two
Homepage: https://zlib.net

Package: shortonly
Description: no long part
Description-md5: 0123

Package: zlib1g
Description: second architecture, ignored
 body
"""


def test_debian_descriptions_are_unfolded():
    found = {}
    demo_data._descriptions(STATUS, found)
    assert found == {"zlib1g": (
        "Package: zlib1g\nDescription: compression library - runtime\n\n"
        "zlib is a library implementing the deflate compression method found in gzip and PKZIP."
        "\n\nThis package includes the shared library:\n * item one\n * item two")}


PYTHON_SOURCE = '''"""Module docstring."""
import os

CONSTANT = 1


@decorator
def first(a,
          b):
    """Add."""

    return a + b
# a comment about Big


@dataclass
class Big:
    """A class too long for one text."""

    x = 1

    def one(self):
        return "one" * 30

    @property
    def two(self):
        return "two" * 30


if __name__ == "__main__":
    first(1, 2)
'''


def test_python_snippets_are_whole_definitions_or_methods(tmp_path):
    path = tmp_path / "mod.py"
    path.write_text(PYTHON_SOURCE, encoding="utf-8")
    whole = demo_data._python_snippets(str(path), max_chars=1000, min_chars=10)
    assert whole[0] == '@decorator\ndef first(a,\n          b):\n    """Add."""\n\n    return a + b'
    assert whole[1].startswith("@dataclass\nclass Big:") and whole[1].endswith('return "two" * 30')
    split = demo_data._python_snippets(str(path), max_chars=150, min_chars=10)
    assert split[1:] == ['@dataclass\nclass Big:\n    """A class too long for one text."""\n\n    x = 1',
                         'def one(self):\n    return "one" * 30',
                         '@property\ndef two(self):\n    return "two" * 30']


@given(st.text(alphabet=st.sampled_from("ab .\n"), max_size=300), st.integers(4, 120))
def test_clip_is_a_bounded_prefix(text, max_chars):
    clipped = demo_data._clip(text, max_chars)
    assert len(clipped) <= max_chars
    assert text.strip().startswith(clipped)
    assert "".join(demo_data._pieces(text, max_chars)).replace(" ", "").replace("\n", "") == \
        text.replace(" ", "").replace("\n", "")


def test_pick_keeps_order_and_is_seeded():
    items = [str(i) for i in range(10)]
    picked = demo_data._pick(random.Random(0), items)
    assert picked == demo_data._pick(random.Random(0), items)
    assert len(picked) == 3 and picked == sorted(picked, key=int)
    assert demo_data._pick(random.Random(0), items[:2]) == items[:2]


# ---------------------------------------------------------------- the extra domains

def test_demo_domains_are_unchanged_and_extra_ones_are_separate():
    assert DOMAINS == ("python", "debian", "manpages")
    assert EXTRA_DOMAINS == ("c", "shell", "perl", "licenses")
    assert ALL_DOMAINS == DOMAINS + EXTRA_DOMAINS


def test_extra_domains_write_splits_and_demo_default_stays_three(tmp_path):
    paths = write_domain_splits(str(tmp_path), 4, 2, 1, max_chars=300, domains=EXTRA_DOMAINS)
    assert set(paths) == set(EXTRA_DOMAINS)
    for domain in EXTRA_DOMAINS:
        lines = (tmp_path / domain / "train.jsonl").read_text(encoding="utf-8").splitlines()
        assert [json.loads(line)["text"] for line in lines] == domain_texts(domain, 4, 300)
    assert not (tmp_path / "python").exists()


LEGAL = re.compile(r"copyright|licen[cs]e|warranty", re.I)


def test_code_domains_hold_code_and_no_license_notices():
    c = domain_texts("c", 150, seed=4)
    assert sum(bool(re.search(r"[;{}]|#\s*define", t)) for t in c) > 0.95 * len(c)
    shell = domain_texts("shell", 150, seed=4)
    assert sum(bool(re.search(r"\$|\bif\b|\becho\b|=|\|", t)) for t in shell) > 0.9 * len(shell)
    perl = domain_texts("perl", 150, seed=4)
    assert all(not re.search(r"^=(?:head|pod|cut)\b", t, re.M) for t in perl)
    assert sum(bool(re.search(r"[$@%][\w{]", t)) for t in perl) > 0.9 * len(perl)
    for texts in (c, shell, perl):
        # code may name a license (a variable, a package field); notices are gone
        assert sum(bool(LEGAL.search(t)) for t in texts) < 0.1 * len(texts)


def test_license_texts_are_license_prose():
    texts = domain_texts("licenses", 150, seed=4)
    assert sum(bool(LEGAL.search(t)) for t in texts) > 0.5 * len(texts)
    assert all(sum(ch.isascii() for ch in t) > 0.95 * len(t) for t in texts)


C_HEADER = """/*
 * Copyright (C) 2020 Someone
 * This library is free software; see the license.
 */
#ifndef DEMO_H
#define DEMO_H

/* the size of a demo buffer, in bytes */
#define DEMO_SIZE 64

struct demo {
    int count;
    char name[DEMO_SIZE];
};

int demo_open(const char *path, struct demo *out);

#endif
"""

SHELL_SCRIPT = """#!/bin/sh
# Copyright 2019 Someone
# Licensed under the GPL, version 2 or later.

# print the arguments, one per line, after checking that there are some
set -e
if [ "$#" -eq 0 ]; then
    echo "usage: demo-script ARG..." >&2
    exit 2
fi

for arg in "$@"; do
    echo "$arg"
done
"""

PERL_MODULE = """package Demo;
use strict;

=head1 NAME

Demo - a module that documents itself at length in English prose.

=cut

sub new {
    my ($class, %args) = @_;
    return bless {%args}, $class;
}

sub name {
    my ($self) = @_;
    return $self->{name} // 'unnamed';
}

1;
__END__
trailing data that is not code
"""


def test_extra_readers_parse_fixed_files(tmp_path, monkeypatch):
    (tmp_path / "inc").mkdir()
    (tmp_path / "inc" / "demo.h").write_text(C_HEADER)
    (tmp_path / "bin").mkdir()
    (tmp_path / "bin" / "demo-script").write_text(SHELL_SCRIPT)
    (tmp_path / "bin" / "binary").write_bytes(b"\x7fELF\0\0#!/bin/sh")
    (tmp_path / "bin" / "python-tool").write_text("#!/usr/bin/python3\nprint('x' * 200)\n")
    (tmp_path / "perl").mkdir()
    (tmp_path / "perl" / "Demo.pm").write_text(PERL_MODULE)
    monkeypatch.setattr(_demo_extra, "_C_DIRS", (str(tmp_path / "inc"),))
    monkeypatch.setattr(_demo_extra, "_SHELL_BIN_DIRS", (str(tmp_path / "bin"),))
    monkeypatch.setattr(_demo_extra, "_SHELL_TREES", ())
    monkeypatch.setattr(_demo_extra, "_PERL_DIRS", (str(tmp_path / "perl"),))
    [c] = domain_texts("c", 1, max_chars=1000)
    assert c.startswith("#ifndef DEMO_H") and "the size of a demo buffer" in c
    assert "Copyright" not in c and "int demo_open" in c
    [shell] = domain_texts("shell", 1, max_chars=1000, seed=0)
    assert shell.startswith("# print the arguments") and 'echo "$arg"' in shell
    assert not LEGAL.search(shell) and "#!" not in shell
    [perl] = domain_texts("perl", 1, max_chars=1000)
    assert perl.startswith("package Demo;") and "sub new" in perl
    assert "=head1" not in perl and "prose" not in perl and "trailing data" not in perl
    with pytest.raises(UsageError, match="found 1 texts.*shell scripts in /usr/bin"):
        domain_texts("shell", 2, max_chars=1000)


def test_extra_domain_missing_sources_say_how_to_fix(tmp_path, monkeypatch):
    monkeypatch.setattr(_demo_extra, "_C_DIRS", (str(tmp_path / "nothing"),))
    with pytest.raises(UsageError, match=r"found 0 texts.*C headers.*apt-get install libc6-dev"):
        domain_texts("c", 3)


def test_long_blocks_are_cut_and_packed_within_bounds():
    blocks = ["x = 1;\n" * 100, "short;", "y;\n" * 10]
    texts = _demo_extra._pack(blocks, 120, 5)
    assert all(5 <= len(t) <= 120 for t in texts)
    assert "".join(t.replace("\n", "") for t in texts) == "".join(
        b.replace("\n", "") for b in blocks)
