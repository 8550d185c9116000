"""Building hostile contribution branches the way an attacker would: with git plumbing.

``modelgit contribute`` only ever writes well-formed contributions; a stranger is not bound to
it. These helpers write blobs (``hash-object``), trees with any entry name, mode and order
(``hash-object -t tree --literally``: even names with slashes, which ``mktree`` refuses, and
duplicate names), commits with any parents (``commit-tree``) and refs (``update-ref``).
"""

from __future__ import annotations

import binascii
import json
import subprocess
from dataclasses import dataclass

#: every hostile file carries this, so a test can search the disk for a file that escaped
MARKER = b"HOSTILE-PAYLOAD"

TREE, FILE, EXEC, LINK, GITLINK = "40000", "100644", "100755", "120000", "160000"


def _git(root: str, *args: str, input: bytes | None = None) -> str:
    result = subprocess.run(["git", *args], cwd=root, input=input, capture_output=True)
    if result.returncode != 0:
        raise AssertionError(f"git {' '.join(args)}: {result.stderr.decode(errors='replace')}")
    return result.stdout.decode(errors="surrogateescape").strip()


@dataclass
class Plumber:
    """Object writing in the repository at ``root``."""

    root: str

    def blob(self, data: bytes | str) -> str:
        data = data.encode() if isinstance(data, str) else data
        return _git(self.root, "hash-object", "-w", "--stdin", input=data)

    def tree(self, entries: list[tuple[str, str, str]]) -> str:
        """A tree of ``(mode, name, object id)`` entries, written byte by byte: any name (``..``,
        ``.git``, ``a/b``), any mode, duplicates. Entries are put in git's order."""
        def key(entry):
            return entry[1].encode("utf-8", "surrogateescape") + (b"/" if entry[0] == TREE else b"")

        raw = b"".join(f"{mode} ".encode() + name.encode("utf-8", "surrogateescape") + b"\0"
                       + binascii.unhexlify(oid) for mode, name, oid in sorted(entries, key=key))
        return _git(self.root, "hash-object", "-t", "tree", "-w", "--literally", "--stdin", input=raw)

    def commit(self, tree: str, parents: list[str], message: str = "hostile") -> str:
        args = [arg for parent in parents for arg in ("-p", parent)]
        return _git(self.root, "commit-tree", tree, *args, "-m", message)

    def update_ref(self, ref: str, oid: str) -> None:
        _git(self.root, "update-ref", ref, oid)

    def entries(self, treeish: str) -> list[tuple[str, str, str]]:
        """(mode, name, id) of a tree (not recursed), modes as a raw tree writes them."""
        out = subprocess.run(["git", "ls-tree", "-z", "--full-tree", treeish], cwd=self.root,
                             capture_output=True, check=True).stdout
        rows = []
        for item in filter(None, out.split(b"\0")):
            meta, name = item.split(b"\t", 1)
            mode, _kind, oid = meta.decode().split()
            rows.append((mode.lstrip("0") if mode == "040000" else mode,
                         name.decode("utf-8", "surrogateescape"), oid))
        return rows

    def root_tree(self, commit: str) -> str:
        return _git(self.root, "rev-parse", f"{commit}^{{tree}}")

    def with_entry(self, tree: str, parts: list[str], entry: tuple[str, str] | None) -> str:
        """``tree`` with the entry at path ``parts`` set to ``(mode, id)`` (None: removed);
        intermediate trees are rebuilt (created when missing)."""
        rows = [r for r in (self.entries(tree) if tree else []) if r[1] != parts[0]]
        if len(parts) == 1:
            if entry is not None:
                rows.append((entry[0], parts[0], entry[1]))
        else:
            old = [r for r in self.entries(tree) if r[1] == parts[0] and r[0] == TREE] if tree else []
            rows.append((TREE, parts[0], self.with_entry(old[0][2] if old else "", parts[1:], entry)))
        return self.tree(rows)

    def chain(self, base: str, *edits: dict) -> str:
        """Commits on top of ``base``, one per dict of ``{path: (mode, id) or None}``."""
        commit = base
        for edit in edits:
            tree = self.root_tree(commit)
            for path, entry in edit.items():
                tree = self.with_entry(tree, path.split("/"), entry)
            commit = self.commit(tree, [commit])
        return commit


def contribution_record(good_record: dict, name: str, changes: dict | None = None) -> bytes:
    """The good contribution's ``contribution.json``, renamed (and its fields ``changes``d)."""
    record = {**good_record, "name": name, **(changes or {})}
    return (json.dumps(record, indent=2, sort_keys=True) + "\n").encode()
