"""Hostile contributions, built with git plumbing and reviewed all at once through the CLI.

A contributor pushes one good contribution (``modelgit contribute``) and, with
``hash-object``/``hash-object -t tree --literally``/``commit-tree`` and ``git push --no-verify``,
every branch in :data:`CASES`: tree entries named ``..``, ``.git`` or with slashes, symbolic
links, submodules, executables, pickles, code and ``.gitattributes`` in the area, earlier commits
that edit the project's rules or the model's code, merges, names that are not names, NaN and
overflowing numbers, deep JSON, broken safetensors headers, manifests of objects nobody has,
oversized files, adapters that score NaN. The maintainer then runs ``modelgit review --dry-run``
and ``modelgit review`` once each over all of them.

Checked for every case: it is rejected with its reason (and recorded unless its branch name
cannot name a review file). Checked for the run: the good contribution is still accepted and
merged, and nothing else changed: the main line's files, ``.git/hooks``, no payload written
anywhere, no scratch directory left, no merge state, ``git status`` clean, and neither command
printed a traceback.
"""

from __future__ import annotations

import json
import os
import struct
import subprocess
import sys
from dataclasses import dataclass
from typing import Callable

import pytest
import yaml

from gitutil import private_git_env
from hostile_git import EXEC, FILE, GITLINK, LINK, MARKER, TREE, Plumber, contribution_record
from workflow_helpers import model_dir, train_adapter

AREA = "contributions"


@dataclass
class Kit:
    """The good contribution's pieces, for building hostile ones from."""

    plumber: Plumber
    base: str  # the main line's commit the contributor works on
    files: dict[str, tuple[str, str]]  # the good area: {file name: (mode, blob id)}
    record: dict  # the good contribution.json
    tensors: dict  # the good adapter's tensors (torch)
    config: dict  # the good adapter_config.json
    manifest: str  # the good adapter_model.safetensors blob (a manifest)

    def blob(self, data) -> str:
        return self.plumber.blob(data)

    def area(self, name: str, changes: dict | None = None, record: dict | None = None) -> str:
        """The good area renamed to ``name``, with ``changes`` ({file name: (mode, id) or None})
        and its contribution.json's fields changed by ``record``."""
        files = dict(self.files)
        files["contribution.json"] = (FILE, self.blob(contribution_record(self.record, name, record)))
        rows = [(mode, n, oid) for n, (mode, oid) in files.items() if n not in (changes or {})]
        rows += [(entry[0], n, entry[1]) for n, entry in (changes or {}).items() if entry]
        return self.plumber.tree(rows)

    def tip(self, name: str, changes: dict | None = None, parent: str | None = None,
            record: dict | None = None) -> str:
        """One commit on the base (or ``parent``) adding the area of ``name``."""
        area = self.area(name, changes, record)
        return self.plumber.chain(parent or self.base, {f"{AREA}/{name}": (TREE, area)})

    def config_blob(self, text: str | None = None, **changes) -> tuple[str, str]:
        if text is None:
            text = json.dumps({**self.config, **changes}, indent=2)  # NaN, Infinity as Python writes
        return FILE, self.blob(text)

    def weights_blob(self, tensors: dict | None = None, raw: bytes | None = None) -> tuple[str, str]:
        from safetensors.torch import save

        return FILE, self.blob(raw if raw is not None else save(tensors))

    def json_blob(self, value) -> tuple[str, str]:
        return FILE, self.blob(value if isinstance(value, (bytes, str)) else json.dumps(value))


def _deep(depth: int) -> str:
    return '{"a":' * depth + "1" + "}" * depth


def _header_file(header: bytes, data: bytes = b"") -> bytes:
    return struct.pack("<Q", len(header)) + header + data


def _payload(kit: Kit) -> str:
    return kit.blob(b"#!/bin/sh\necho " + MARKER + b" > \"$(git rev-parse --git-dir)/../pwned\"\n")


def _dotdot(kit: Kit, name: str) -> str:
    """Item 1 as reported: ``contributions/x/../../../../hooks/pre-push``."""
    p = kit.plumber
    tree = p.tree([(EXEC, "pre-push", _payload(kit))])
    tree = p.tree([(TREE, "hooks", tree)])
    for _ in range(4):
        tree = p.tree([(TREE, "..", tree)])
    area = kit.area(name, {"..": (TREE, p.entries(tree)[0][2])})
    return p.chain(kit.base, {f"{AREA}/{name}": (TREE, area)})


def _in_tree(kit: Kit, name: str, top: str) -> str:
    p = kit.plumber
    hooks = p.tree([(TREE, "hooks", p.tree([(EXEC, "pre-push", _payload(kit))]))])
    return kit.tip(name, {top: (TREE, hooks)})


def _earlier(kit: Kit, name: str, path: str, data: bytes | None) -> str:
    """An earlier commit changes ``path`` (None: deletes it), a clean adapter on top."""
    p = kit.plumber
    first = p.chain(kit.base, {path: (FILE, p.blob(data)) if data is not None else None})
    return kit.tip(name, parent=first)


def _yaml(kit: Kit) -> bytes:
    """The project's rules, loosened (and marked)."""
    raw = subprocess.run(["git", "cat-file", "blob", f"{kit.base}:modelgit.yaml"],
                         cwd=kit.plumber.root, capture_output=True, check=True).stdout
    data = yaml.safe_load(raw) or {}
    data.update(limits={"max_rank": 100000, "max_adapter_mb": 100000}, policy={"min_gain": 0})
    return yaml.safe_dump(data).encode() + b"# " + MARKER + b"\n"


def _duplicate(kit: Kit, name: str) -> str:
    """Two entries named adapter_config.json (which one would a reader take?)."""
    p = kit.plumber
    rows = p.entries(kit.area(name)) + [(FILE, "adapter_config.json", kit.blob("{}"))]
    return p.chain(kit.base, {f"{AREA}/{name}": (TREE, p.tree(rows))})


def _revert_trick(kit: Kit, name: str) -> str:
    """modelgit.yaml edited, then restored: the tip's diff is clean, the range is not."""
    p = kit.plumber
    original = [r for r in p.entries(kit.base) if r[1] == "modelgit.yaml"][0]
    first = p.chain(kit.base, {"modelgit.yaml": (FILE, p.blob(_yaml(kit)))},
                    {"modelgit.yaml": (FILE, original[2])})
    return kit.tip(name, parent=first)


def _merge(kit: Kit, name: str) -> str:
    p = kit.plumber
    side = p.chain(kit.base, {"notes.txt": (FILE, p.blob(MARKER))})
    tip = kit.tip(name)
    return p.commit(p.root_tree(tip), [tip, side])


def _root_entry(kit: Kit, name: str, entry_name: str) -> str:
    """A root-level entry whose name has slashes, beside a clean area."""
    p = kit.plumber
    tip = kit.tip(name)
    rows = p.entries(tip) + [(FILE, entry_name, p.blob(MARKER))]
    return p.commit(p.tree(rows), [kit.base])


def _two_areas(kit: Kit, name: str) -> str:
    """Two root entries named ``contributions``: a clean one and a hostile one."""
    p = kit.plumber
    rows = p.entries(kit.tip(name))
    evil = p.tree([(TREE, name, kit.area(name)), (FILE, "modelgit.yaml", p.blob(MARKER))])
    return p.commit(p.tree(rows + [(TREE, AREA, evil)]), [kit.base])


def _area_is_a_file(kit: Kit, name: str) -> str:
    return kit.plumber.chain(kit.base, {f"{AREA}/{name}": (FILE, kit.plumber.blob(MARKER))})


def _unrelated(kit: Kit, name: str) -> str:
    p = kit.plumber
    tree = p.tree([(TREE, AREA, p.tree([(TREE, name, kit.area(name))]))])
    return p.commit(tree, [])


def _deleted(kit: Kit, name: str) -> str:
    return kit.plumber.chain(kit.tip(name), {f"{AREA}/{name}": None})


def _many(kit: Kit, name: str) -> str:
    commit = kit.base
    for i in range(25):
        commit = kit.tip(name, {"metrics.json": kit.json_blob({"steps": i})}, parent=commit)
    return commit


def _scaled(kit: Kit, value: float) -> dict:
    import torch

    return {k: torch.full_like(v, value) for k, v in kit.tensors.items()}


def _nan_weights(kit: Kit) -> dict:
    tensors = {k: v.clone() for k, v in kit.tensors.items()}
    first = sorted(n for n in tensors if "lora_B" in n)[0]
    tensors[first][0, 0] = float("nan")
    return tensors


def _missing_object(kit: Kit) -> str:
    lines = kit.manifest.split("\n")
    last = max(i for i, line in enumerate(lines) if line.startswith("tensor "))
    ids = lines[last].rsplit(" ", 1)[1]
    lines[last] = lines[last][: -len(ids)] + "f" * len(ids.split(",")[0])
    return "\n".join(lines)


def _bomb_manifest(kit: Kit) -> str:
    """The last chunk named by an object that the contributor wrote straight into the hub's
    store: 16 KiB of zstd whose header promises 512 MiB (a decompression bomb)."""
    import zstandard

    from modelgit.store.encodings import BY_CODE
    from modelgit.store.objectfile import pack_header

    raw_len = 512 * 1024 * 1024
    zstd = [e for e in BY_CODE.values() if e.name == "zstd"][0]
    compressor = zstandard.ZstdCompressor(level=1).compressobj(size=raw_len)
    payload = b"".join(compressor.compress(bytes(1 << 24)) for _ in range(raw_len >> 24))
    blob = pack_header(zstd, 0, "F32", (raw_len // 4,), raw_len, None) + payload + compressor.flush()
    oid = "e" * 64
    hub = subprocess.run(["git", "config", "remote.origin.url"], cwd=kit.plumber.root,
                         capture_output=True, text=True, check=True).stdout.strip()
    target = os.path.join(hub, "modelgit", "store", "objects", oid[:2], oid[2:])
    os.makedirs(os.path.dirname(target), exist_ok=True)
    with open(target, "wb") as handle:
        handle.write(blob)
    lines = kit.manifest.split("\n")
    last = max(i for i, line in enumerate(lines) if line.startswith("tensor "))
    ids = lines[last].rsplit(" ", 1)[1]
    lines[last] = lines[last][: -len(ids)] + oid
    return "\n".join(lines)


def _huge_manifest(kit: Kit) -> str:
    lines = kit.manifest.split("\n")
    first = min(i for i, line in enumerate(lines) if line.startswith("tensor "))
    parts = lines[first].split(" ")
    parts[-2] = "[1000000000,1000]"
    lines[first] = " ".join(parts)
    return "\n".join(lines)


@dataclass(frozen=True)
class Case:
    branch: str  # contrib/<branch>
    build: Callable[[Kit, str], str]  # returns the tip commit
    reason: str  # a fragment of the rejection's reasons
    recorded: bool = True  # False: the branch name cannot name a review file


def _with(changes: Callable[[Kit], dict]) -> Callable[[Kit, str], str]:
    return lambda kit, name: kit.tip(name, changes(kit))


CASES = [
    # item 1: paths and modes in the area (a contribution is read from git's object database)
    Case("h-dotdot", _dotdot, "'..': the component '..' would point outside"),
    Case("h-dotgit", lambda k, n: _in_tree(k, n, ".git"), "'.git'"),
    Case("h-dotgit-case", lambda k, n: _in_tree(k, n, ".GiT"), "'.GiT'"),
    Case("h-slash-name", _with(lambda k: {"../../../../hooks/pre-push": (EXEC, _payload(k))}),
         "would point outside"),
    Case("h-absolute", _with(lambda k: {"/tmp/evil.json": (FILE, _payload(k))}), "absolute"),
    Case("h-backslash", _with(lambda k: {"..\\..\\evil.json": (FILE, _payload(k))}), "backslash"),
    Case("h-symlink", _with(lambda k: {"adapter_config.json": (LINK, k.blob("../../../modelgit.yaml"))}),
         "symbolic link"),
    Case("h-gitlink", _with(lambda k: {"sub": (GITLINK, "1" * 40)}), "submodule"),
    Case("h-executable", _with(lambda k: {"adapter_config.json": (EXEC, k.files["adapter_config.json"][1])}),
         "executable"),
    Case("h-subdir", _with(lambda k: {"nested": (TREE, k.plumber.tree(
        [(FILE, "adapter_config.json", k.files["adapter_config.json"][1])]))}), "a directory"),
    Case("h-control-name", _with(lambda k: {"\x1b]0;owned\x07.json": (FILE, _payload(k))}),
         "control character"),
    Case("h-duplicate", _duplicate, "appears 2 times"),
    # item 3: what contribute refuses, review refuses too
    Case("h-pickle", _with(lambda k: {"adapter_model.bin": (FILE, k.blob(b"\x80\x04" + MARKER))}),
         "pickled weights"),
    Case("h-gitattributes", _with(lambda k: {".gitattributes": (FILE, k.blob(b"* filter=evil\n"))}),
         "'.gitattributes': not allowed"),
    Case("h-code", _with(lambda k: {"modeling_evil.py": (FILE, k.blob(b"import os  # " + MARKER))}),
         "code is never accepted"),
    Case("h-nan-weights", _with(lambda k: {"adapter_model.safetensors": k.weights_blob(_nan_weights(k))}),
         "NaN or infinite values"),
    Case("h-dora", _with(lambda k: {"adapter_config.json": k.config_blob(use_dora=True)}), "DoRA"),
    Case("h-pissa", _with(lambda k: {"adapter_config.json": k.config_blob(init_lora_weights="pissa")}),
         "initialisations"),
    Case("h-megatron", _with(lambda k: {"adapter_config.json": k.config_blob(
        megatron_config={"x": 1}, megatron_core="os")}), "megatron_config is set"),
    Case("h-unknown-key", _with(lambda k: {"adapter_config.json": k.config_blob(future={"run": 1})}),
         "does not know"),
    Case("h-redos", _with(lambda k: {"adapter_config.json": k.config_blob(target_modules="(a+)+$")}),
         "not allowed in a module pattern"),
    Case("h-labels", _with(lambda k: {"labels.json": k.json_blob({"id2label": [1, 2]})}), "id2label"),
    Case("h-no-record", _with(lambda k: {"contribution.json": None}), "contribution.json is missing"),
    Case("h-record-escape", lambda k, n: k.tip(n, record={"author": "Eve \x1b[2J <eve@example.org>"}),
         "control characters"),
    Case("h-record-name", lambda k, n: k.tip(n, record={"name": "good"}), "is not the branch's name"),
    Case("h-lying-base", lambda k, n: k.tip(n, record={"base_revision": "0" * 40}),
         "names the base revision 000000000000"),
    # item 2: the whole range, not the tip
    Case("h-yaml-earlier", lambda k, n: _earlier(k, n, "modelgit.yaml", _yaml(k)), "modelgit.yaml"),
    Case("h-gitattributes-earlier", lambda k, n: _earlier(k, n, ".gitattributes",
                                                           b"* filter=evil\n# " + MARKER + b"\n"),
         ".gitattributes"),
    Case("h-automap-earlier", lambda k, n: _earlier(k, n, "model/config.json", json.dumps(
        {"auto_map": {"AutoModelForCausalLM": "modeling_evil.Evil"}, "x": MARKER.decode()}).encode()),
         "model/config.json"),
    Case("h-modeling-earlier", lambda k, n: _earlier(k, n, "model/modeling_evil.py", b"# " + MARKER),
         "model/modeling_evil.py"),
    Case("h-revert-trick", _revert_trick, "modelgit.yaml"),
    Case("h-merge", _merge, "holds a merge commit (2 parents)"),
    Case("h-other-area", lambda k, n: k.plumber.chain(k.tip(n), {f"{AREA}/good/metrics.json":
                                                                  (FILE, k.blob(MARKER))}),
         f"outside the contribution area {AREA}/h-other-area/: {AREA}/good"),
    Case("h-slash-at-root", lambda k, n: _root_entry(k, n, f"{AREA}/h-slash-at-root/metrics.json"),
         "outside the contribution area"),
    Case("h-two-areas", _two_areas, "not one directory"),
    Case("h-area-is-file", _area_is_a_file, "not one directory"),
    Case("h-unrelated", _unrelated, "shares no history"),
    Case("h-deleted", _deleted, "nothing under"),
    Case("h-many-commits", _many, "more than 20 commits"),
    Case("h-empty", lambda k, n: k.base, "adds no commit"),
    # item 5: branch names chosen by a stranger
    Case("a/b", lambda k, n: k.tip("a-b"), "branch name", recorded=False),
    Case("UPPER", lambda k, n: k.tip("upper"), "branch name", recorded=False),
    Case("x" * 100, lambda k, n: k.tip("long"), "branch name", recorded=False),
    Case("-dash", lambda k, n: k.tip("dash"), "branch name", recorded=False),
    # item 4: numbers
    Case("h-alpha-nan", _with(lambda k: {"adapter_config.json": k.config_blob(lora_alpha=float("nan"))}),
         "NaN"),
    Case("h-alpha-inf", _with(lambda k: {"adapter_config.json": k.config_blob(lora_alpha=float("inf"))}),
         "Infinity"),
    Case("h-alpha-overflow", _with(lambda k: {"adapter_config.json": k.config_blob(
        json.dumps(k.config).replace('"lora_alpha": 8', '"lora_alpha": 1e400'))}), "overflows"),
    Case("h-alpha-pattern", _with(lambda k: {"adapter_config.json": k.config_blob(
        alpha_pattern={"q_proj": -1e30})}), "outside the allowed range"),
    Case("h-alpha-huge", _with(lambda k: {"adapter_config.json": k.config_blob(lora_alpha=1e30)}),
         "outside the allowed range"),
    Case("h-metrics-nan", _with(lambda k: {"metrics.json": k.json_blob('{"first_loss": NaN}')}), "NaN"),
    Case("h-metrics-huge", _with(lambda k: {"metrics.json": k.json_blob({"steps": -1e30})}),
         "outside the allowed range"),
    Case("h-nan-score", _with(lambda k: {"adapter_model.safetensors": k.weights_blob(_scaled(k, 1e30))}),
         "not a finite number"),
    # item 6: malformed and deep input
    Case("h-rank-string", _with(lambda k: {"adapter_config.json": k.config_blob(r="2")}), "not an integer"),
    Case("h-config-list", _with(lambda k: {"adapter_config.json": k.config_blob("[1, 2]")}),
         "expected a JSON object"),
    Case("h-config-broken", _with(lambda k: {"adapter_config.json": k.config_blob("{nope")}),
         "not valid JSON"),
    Case("h-config-deep", _with(lambda k: {"adapter_config.json": k.config_blob(_deep(100_000))}),
         "nested more than"),
    Case("h-metrics-deep", _with(lambda k: {"metrics.json": k.json_blob(_deep(100_000))}),
         "nested more than"),
    Case("h-header-deep", _with(lambda k: {"adapter_model.safetensors": k.weights_blob(
        raw=_header_file(b'{"__metadata__":' + _deep(100_000).encode() + b"}"))}), "nested more than"),
    Case("h-header-bad", _with(lambda k: {"adapter_model.safetensors": k.weights_blob(
        raw=_header_file(b'{"x":{"dtype":"F32","shape":[2],"data_offsets":[0,4]}}', b"\0" * 4))}),
         "needs 8"),
    # item 5: failures while reading one contribution
    Case("h-missing-object", _with(lambda k: {"adapter_model.safetensors":
                                              (FILE, k.blob(_missing_object(k)))}),
         "in neither the local store nor any object remote"),
    Case("h-zstd-bomb", _with(lambda k: {"adapter_model.safetensors": (FILE, k.blob(_bomb_manifest(k)))}),
         "refused before decoding"),
    Case("h-huge-manifest", _with(lambda k: {"adapter_model.safetensors": (FILE, k.blob(_huge_manifest(k)))}),
         "over the project's limit"),
    Case("h-huge-json", _with(lambda k: {"data_card.json": k.json_blob(
        json.dumps({"pad": "x" * (1025 * 1024)}))}), "over the project's limit"),
]


def _run(cwd, *args):
    return subprocess.run([sys.executable, "-m", "modelgit", *args], cwd=cwd, capture_output=True,
                          text=True)


def _snapshot(root: str) -> dict[str, bytes]:
    out = {}
    for top, dirs, files in os.walk(root):
        for name in files:
            path = os.path.join(top, name)
            out[os.path.relpath(path, root)] = b"link" if os.path.islink(path) else open(path, "rb").read()
    return out


def _payloads(root: str) -> list[str]:
    """Files anywhere under ``root`` (git's compressed objects aside) holding the marker."""
    found = []
    for top, dirs, files in os.walk(root):
        dirs[:] = [d for d in dirs if os.path.join(top, d) != os.path.join(root, ".git", "objects")]
        for name in files:
            path = os.path.join(top, name)
            if not os.path.islink(path) and MARKER in open(path, "rb").read():
                found.append(os.path.relpath(path, root))
    return found


@pytest.fixture(scope="module")
def hostile(tmp_path_factory, tiny_base, domain_data):
    """Every case pushed to the hub, then `modelgit review --dry-run` and `modelgit review` run
    once each in the maintainer's repository; what the tests look at."""
    from modelgit.git import setup
    from modelgit.workflow import Project, contribute, create_project

    root = tmp_path_factory.mktemp("hostile")
    with pytest.MonkeyPatch.context() as env:  # the module's own private HOME and identity
        private_git_env(env, root)
        hub = str(root / "hub.git")
        subprocess.run(["git", "init", "-q", "--bare", "-b", "main", hub], check=True)
        repo = create_project(str(root / "maintainer"), tiny_base,
                              Project(name="tiny", base_model="example/tiny-llama"), remote=hub)
        clone = setup.clone(hub, str(root / "eve"))
        adapter = train_adapter(model_dir(clone), domain_data["animals"]["train"],
                                str(root / "adapter"), steps=2)
        good = contribute(clone, adapter, "good", "LoRA on animals", domain="animals")
        kit = _kit(clone, good.commit, adapter)
        tips = {case.branch: case.build(kit, case.branch) for case in CASES}
        subprocess.run(["git", "push", "-q", "--no-verify", "origin",
                        *(f"{tip}:refs/heads/contrib/{branch}" for branch, tip in tips.items())],
                       cwd=clone.root, check=True, capture_output=True)

        suites = root / "private" / "suites.yaml"
        suites.parent.mkdir()
        suites.write_text(yaml.safe_dump({"suites": [{"name": "animals", "metric": "perplexity",
                                                      "data": domain_data["animals"]["heldout"]}]}))
        before = {"hooks": _snapshot(os.path.join(repo.git_dir, "hooks")),
                  "config": open(os.path.join(repo.git_dir, "config"), "rb").read(),
                  "head": repo.rev_parse("HEAD")}
        accept_all = ("--min-gain", "-1", "--max-regression", "1")
        dry = _run(repo.root, "review", "--suites", str(suites), "--dry-run", "--json", *accept_all)
        after_dry = {"hooks": _snapshot(os.path.join(repo.git_dir, "hooks")),
                     "status": repo.git("status", "--porcelain", "--ignored").decode(),
                     "head": repo.rev_parse("HEAD"), "pwned": _payloads(repo.root)}
        # the dry run evaluates one model after another in this process; the real one in two
        # worker processes: each path must refuse every hostile branch on its own
        real = _run(repo.root, "review", "--suites", str(suites), "--json", "--jobs", "2",
                    *accept_all)
        again = _run(repo.root, "review", "--suites", str(suites), "--json", *accept_all)
        yield {"repo": repo, "before": before, "dry": dry, "after_dry": after_dry, "real": real,
               "again": again, "root": root, "good": good.commit}


def _kit(clone, good_commit: str, adapter: str) -> Kit:
    from safetensors.torch import load_file

    p = Plumber(clone.root)
    files = {name: (mode, oid) for mode, name, oid in p.entries(f"{good_commit}:{AREA}/good")}
    record = json.loads(clone.read_blob(f"{good_commit}:{AREA}/good/contribution.json"))
    config = json.loads(open(os.path.join(adapter, "adapter_config.json")).read())
    return Kit(p, clone.rev_parse(f"{good_commit}~1"), files, record,
               load_file(os.path.join(adapter, "adapter_model.safetensors")), config,
               clone.read_blob(files["adapter_model.safetensors"][1]).decode())


def _by_name(output: dict) -> dict[str, dict]:
    names = {r["anon_id"]: r for r in output["revealed"]}
    return {names[c["anon_id"]]["name"]: {**c, **names[c["anon_id"]]} for c in output["contributions"]}


def test_the_cli_never_shows_a_traceback(hostile):
    for run in ("dry", "real", "again"):
        result = hostile[run]
        assert result.returncode == 0, result.stderr
        assert "Traceback" not in result.stderr + result.stdout


@pytest.mark.parametrize("case", CASES, ids=[c.branch[:20] for c in CASES])
def test_every_hostile_branch_is_refused_with_its_reason(hostile, case):
    entry = _by_name(json.loads(hostile["real"].stdout))[case.branch]
    reasons = "\n".join(entry["reasons"])
    assert entry["decision"] == "reject" and entry["scores"] == {}, reasons
    assert case.reason in reasons, reasons
    recorded = hostile["repo"].read_blob(f"HEAD:reviews/{case.branch}.json") is not None
    assert recorded == case.recorded and entry["recorded"] == case.recorded


def test_all_hostile_inputs_are_refused_and_the_good_one_is_merged(hostile):
    entries = _by_name(json.loads(hostile["real"].stdout))
    refused = [b for b, e in entries.items() if b != "good" and e["decision"] == "reject"]
    print(f"{len(CASES)} hostile inputs tried, {len(refused)} refused")
    assert len(refused) == len(CASES) and entries["good"]["decision"] == "accept"
    dry = json.loads(hostile["dry"].stdout)["contributions"]
    assert sorted(e["decision"] for e in dry) == ["accept"] + ["reject"] * len(CASES)
    # the second run finds only the branches whose names cannot be recorded, refused again
    again = _by_name(json.loads(hostile["again"].stdout))
    assert sorted(again) == sorted(c.branch for c in CASES if not c.recorded)
    assert {e["decision"] for e in again.values()} == {"reject"}


def test_nothing_but_the_good_contribution_and_the_reviews_reaches_the_main_line(hostile):
    repo, before = hostile["repo"], hostile["before"]["head"]
    tree = repo.git("ls-tree", "-r", "--full-tree", "HEAD").decode().splitlines()
    old = repo.git("ls-tree", "-r", "--full-tree", before).decode().splitlines()
    added = sorted(set(tree) - set(old))
    assert not set(old) - set(tree)
    assert all(line.split("\t")[1].startswith(("reviews/", f"{AREA}/good/")) for line in added), added
    assert {line.split()[0] for line in added} == {"100644"}
    merge = repo.git("log", "--merges", "--format=%P", f"{before}..HEAD").decode().split()
    assert merge[1] == hostile["good"]  # exactly the validated commit was merged


def test_nothing_is_written_outside_the_reviews_own_directory(hostile):
    repo = hostile["repo"]
    for state in (hostile["after_dry"], {"hooks": _snapshot(os.path.join(repo.git_dir, "hooks")),
                                         "status": repo.git("status", "--porcelain", "--ignored").decode(),
                                         "pwned": _payloads(repo.root)}):
        assert state["hooks"] == hostile["before"]["hooks"]
        assert state["pwned"] == []
        assert state["status"] == ""  # nothing staged, modified, untracked or ignored
    assert hostile["after_dry"]["head"] == hostile["before"]["head"]  # a dry run records nothing
    assert open(os.path.join(repo.git_dir, "config"), "rb").read() == hostile["before"]["config"]
    assert not os.path.exists(os.path.join(repo.git_dir, "MERGE_HEAD"))
    assert os.listdir(os.path.join(repo.git_dir, "modelgit", "tmp")) == []
    assert not os.path.exists(os.path.join(str(hostile["root"]), "pwned"))
    # and the next push runs no contributor's hook
    result = subprocess.run(["git", "push", "-q", "origin", "HEAD"], cwd=repo.root, capture_output=True)
    assert result.returncode == 0 and not os.path.exists(os.path.join(repo.root, "pwned"))
