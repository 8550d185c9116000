"""Bad contributions are refused with messages that say what is wrong and what to do."""

from __future__ import annotations

import json
import os
import shutil

import pytest

from workflow_helpers import model_dir, train_adapter

from modelgit.errors import UsageError
from modelgit.workflow import ContributionError, contribute, review
from modelgit.workflow.contribution import BRANCH_PREFIX
from modelgit.workflow.gitops import commit_files
from modelgit.workflow.project import Policy

_ACCEPT_ALL = Policy(min_gain=-1.0, max_regression=1.0)


@pytest.fixture
def clone(contributor):
    return contributor("dana")


@pytest.fixture
def adapter(clone, domain_data, tmp_path):
    return train_adapter(model_dir(clone), domain_data["animals"]["train"], str(tmp_path / "ad"),
                         steps=2)


def _refused(clone, adapter, *fragments, name="bad", **kw):
    with pytest.raises(ContributionError) as info:
        contribute(clone, adapter, name, "test", remote=None, **kw)
    for fragment in fragments:
        assert fragment in str(info.value), str(info.value)
    assert clone.rev_parse(f"refs/heads/{BRANCH_PREFIX}{name}") is None  # nothing committed
    return str(info.value)


def _rewrite_tensors(adapter: str, change) -> None:
    from safetensors.torch import load_file, save_file

    path = os.path.join(adapter, "adapter_model.safetensors")
    tensors = load_file(path)
    change(tensors)
    save_file(tensors, path)


def test_a_good_adapter_is_accepted_and_pushed(clone, adapter, hub):
    done = contribute(clone, adapter, "good", "LoRA on animals", domain="animals")
    assert done.pushed_to == "origin" and done.summary["rank"] == 4
    remote_head = clone.git("ls-remote", "origin", f"refs/heads/{BRANCH_PREFIX}good").decode()
    assert remote_head.startswith(done.commit)
    files = clone.git("ls-tree", "-r", "--name-only", done.commit, "contributions/good").decode().split()
    assert sorted(os.path.basename(f) for f in files) == sorted(
        ["adapter_config.json", "adapter_model.safetensors", "contribution.json", "data_card.json",
         "metrics.json", "training_config.json"])
    record = json.loads(clone.read_blob(f"{done.commit}:contributions/good/contribution.json"))
    assert record["base_revision"] == clone.rev_parse("HEAD") and record["domain"] == "animals"
    assert "base" not in record["training"]["config"] and "data" not in record["training"]["config"]
    # the adapter's weights went through the modelgit filter: a manifest in git, objects pushed
    blob = clone.read_blob(f"{done.commit}:contributions/good/adapter_model.safetensors")
    assert blob.startswith(b"modelgit-manifest")
    with pytest.raises(UsageError, match="exists"):
        contribute(clone, adapter, "good", "again", remote=None)


def test_a_pickle_is_refused(clone, adapter):
    with open(os.path.join(adapter, "adapter_model.bin"), "wb") as handle:
        handle.write(b"\x80\x04pickle")
    _refused(clone, adapter, "adapter_model.bin", "pickled weights")


def test_code_is_refused(clone, adapter):
    with open(os.path.join(adapter, "modeling_evil.py"), "w") as handle:
        handle.write("import os\n")
    _refused(clone, adapter, "modeling_evil.py", "code is never accepted")


def test_nan_weights_are_refused(clone, adapter):
    def poison(tensors):
        name = sorted(n for n in tensors if "lora_B" in n)[0]
        tensors[name][0, 0] = float("nan")

    _rewrite_tensors(adapter, poison)
    _refused(clone, adapter, "NaN or infinite", "lower the learning rate")


def test_wrong_shapes_are_refused(clone, adapter):
    import torch

    def widen(tensors):
        name = sorted(n for n in tensors if "lora_A" in n)[0]
        tensors[name] = torch.zeros(tensors[name].shape[0], tensors[name].shape[1] + 3)

    _rewrite_tensors(adapter, widen)
    _refused(clone, adapter, "wrong shapes")


def test_an_adapter_of_a_different_base_is_refused(clone, tmp_path, domain_data):
    from modelgit.adapters.tiny import tiny_causal_lm

    other = tiny_causal_lm(tmp_path / "other", ["the cat sat on the mat"] * 3, seed=1, hidden=48)
    foreign = train_adapter(other, domain_data["animals"]["train"], str(tmp_path / "foreign"), steps=1)
    message = _refused(clone, foreign, "different base", "modelgit rebase")
    assert "wrong shapes" in message or "has no module" in message


def test_same_shapes_but_other_weights_is_a_different_base(clone, tmp_path, tiny_base, domain_data):
    other = str(tmp_path / "perturbed")
    shutil.copytree(tiny_base, other)
    from safetensors.torch import load_file, save_file

    tensors = load_file(os.path.join(other, "model.safetensors"))
    name = sorted(tensors)[0]
    tensors[name] = tensors[name] + 0.01
    save_file(tensors, os.path.join(other, "model.safetensors"), metadata={"format": "pt"})
    adapter = train_adapter(other, domain_data["animals"]["train"], str(tmp_path / "p"), steps=1)
    _refused(clone, adapter, "trained on a different base")


def test_an_oversized_rank_is_refused(clone, tmp_path, domain_data):
    adapter = train_adapter(model_dir(clone), domain_data["animals"]["train"], str(tmp_path / "r"),
                            steps=1, rank=16)
    with open(os.path.join(clone.root, "modelgit.yaml"), "a") as handle:
        handle.write("limits: {max_rank: 8}\n")
    clone.git("commit", "-qam", "limit ranks")
    _refused(clone, adapter, "rank 16 is over the project's limit of 8")


def test_a_name_that_points_outside_the_contribution_area_is_refused(clone, adapter):
    for name in ("../model", "a/b", "..", ".hidden", "UPPER"):
        _refused(clone, adapter, "outside the contribution area", name=name)


def test_every_problem_is_reported_at_once(clone, adapter):
    with open(os.path.join(adapter, "evil.pkl"), "wb") as handle:
        handle.write(b"x")
    _rewrite_tensors(adapter, lambda t: t[sorted(t)[0]].fill_(float("inf")))
    message = _refused(clone, adapter, "evil.pkl", "NaN or infinite")
    assert "2 problem(s)" in message


def test_review_rejects_a_branch_that_changes_files_outside_its_area(hub, clone, adapter, suites):
    repo, _ = hub
    # a hand-made contribution branch that also rewrites the base model's config
    config = os.path.join(model_dir(clone), "config.json")
    with open(config, "a") as handle:
        handle.write("\n")
    files = {f"contributions/sneaky/{f}": os.path.join(adapter, f)
             for f in ("adapter_config.json", "adapter_model.safetensors")}
    files["model/config.json"] = config
    commit = commit_files(clone, clone.rev_parse("HEAD"), files, "sneaky")
    clone.git("push", "-q", "origin", f"{commit}:refs/heads/{BRANCH_PREFIX}sneaky")
    report = review(repo, suites, remote="origin")
    (entry,) = report.entries
    assert entry.decision == "reject"
    assert "outside the contribution area" in entry.reasons[0] and "model/config.json" in entry.reasons[0]
    assert not os.path.exists(os.path.join(repo.root, "contributions", "sneaky"))
    record = json.loads(open(os.path.join(repo.root, "reviews", "sneaky.json")).read())
    assert record["decision"] == "reject" and record["scores"] == {}


def test_heldout_data_inside_the_repository_is_refused(hub, suites, tmp_path):
    from dataclasses import replace

    repo, _ = hub
    inside = os.path.join(repo.root, "heldout.jsonl")
    shutil.copyfile(suites[0].data, inside)
    with pytest.raises(UsageError, match="would be shared with contributors"):
        review(repo, [replace(suites[0], data=inside)], remote=None)
    with open(os.path.join(repo.git_dir, "info", "exclude"), "a") as handle:
        handle.write("heldout.jsonl\n")
    review(repo, [replace(suites[0], data=inside)], remote=None)  # ignored: fine


def test_dry_run_records_nothing_and_overrides_use_its_ids(hub, clone, adapter, suites):
    repo, _ = hub
    contribute(clone, adapter, "ok", "animals", domain="animals")
    head = repo.rev_parse("HEAD")
    first = review(repo, suites, dry_run=True)
    assert repo.rev_parse("HEAD") == head and not first.recorded
    with pytest.raises(UsageError, match="revealed only after"):
        first.revealed()
    anon = first.entries[0].anon_id
    flipped = "reject" if first.entries[0].decision == "accept" else "accept"
    second = review(repo, suites, overrides={anon: flipped})
    assert second.entries[0].anon_id == anon  # stable ids (a local secret)
    assert second.entries[0].decision == flipped and second.entries[0].decided_by == "maintainer"
    with pytest.raises(UsageError, match="unknown anonymous ids"):
        review(repo, suites, overrides={"anon-00000000": "accept"})


def test_a_second_version_replaces_the_first_with_exactly_what_was_validated(
        hub, clone, adapter, suites, tmp_path, domain_data):
    """Accepting a new version of an accepted contribution used to be a three-way merge that
    conflicted; now the area is replaced by the tree review validated, with no merge state."""
    repo, _ = hub
    contribute(clone, adapter, "twice", "first version", domain="animals")
    review(repo, suites, remote="origin", policy=_ACCEPT_ALL)
    again = train_adapter(model_dir(clone), domain_data["animals"]["train"], str(tmp_path / "v2"),
                          steps=3, seed=7)
    second = contribute(clone, again, "twice", "second version", domain="animals", replace=True)
    head = repo.rev_parse("HEAD")
    report = review(repo, suites, remote="origin", policy=_ACCEPT_ALL)
    assert [e.decision for e in report.entries] == ["accept"]
    merge = repo.rev_parse("HEAD")
    assert repo.git("rev-list", "--parents", "-n", "1", merge).decode().split()[1:] == [head, second.commit]
    area = lambda rev: repo.git("rev-parse", f"{rev}:contributions/twice").strip()  # noqa: E731
    assert area(merge) == area(second.commit)
    assert not os.path.exists(os.path.join(repo.git_dir, "MERGE_HEAD"))
    assert repo.git("status", "--porcelain").strip() == b""


def test_a_second_version_of_a_released_contribution_is_released_again(
        hub, clone, adapter, suites, tmp_path, domain_data):
    """Releases remember which reviewed commit they merged, not only the name: a new version,
    trained on the release and accepted, goes into the next release."""
    from modelgit.workflow import release

    repo, _ = hub
    contribute(clone, adapter, "twice", "first version", domain="animals")
    review(repo, suites, remote="origin", policy=_ACCEPT_ALL)
    first = release(repo, suites, push="origin")
    clone.git("pull", "-q", "origin", "main")
    again = train_adapter(model_dir(clone), domain_data["animals"]["train"], str(tmp_path / "v2"),
                          steps=3, seed=7)
    second = contribute(clone, again, "twice", "second version", domain="animals", replace=True)
    report = review(repo, suites, remote="origin", policy=_ACCEPT_ALL)
    assert [e.decision for e in report.entries] == ["accept"]
    done = release(repo, suites)
    assert done.tag != first.tag
    assert [(c["name"], c["commit"]) for c in done.record["contributions"]] == [("twice", second.commit)]
