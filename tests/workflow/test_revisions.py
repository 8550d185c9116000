"""The workflow's revision options name the closest branch or tag when they name nothing."""

from __future__ import annotations

import pytest

from modelgit.errors import UnknownRevisionError


def test_contribute_base_rev_names_the_closest_tag(hub, tmp_path):
    from modelgit.workflow import contribute

    repo, _ = hub
    with pytest.raises(UnknownRevisionError, match=r"--base-rev revision 'v11'.*did you mean 'v1'"):
        contribute(repo, str(tmp_path / "adapter"), "x-lora", "LoRA on x", base_rev="v11")


@pytest.mark.parametrize("option", ["onto", "from_rev"])
def test_rebase_revisions_name_the_closest_branch(hub, tmp_path, option):
    from modelgit.workflow import rebase

    repo, _ = hub
    adapter = tmp_path / "adapter"
    adapter.mkdir()
    (adapter / "adapter_config.json").write_text("{}")
    kwargs = {"onto": "HEAD", option: "mian"}
    with pytest.raises(UnknownRevisionError, match="did you mean 'main'"):
        rebase(repo, str(adapter), output=str(tmp_path / "out"), **kwargs)


def test_create_with_a_bare_remote_named_master_is_cloned_on_main(tmp_path, tiny_base):
    """`git init --bare` (no -b) names HEAD master; create pushes main: the hub's HEAD follows."""
    import subprocess

    from modelgit.git import setup
    from modelgit.workflow import Project, create_project

    remote = tmp_path / "hub.git"
    subprocess.run(["git", "-c", "init.defaultBranch=master", "init", "-q", "--bare", str(remote)],
                   check=True)
    create_project(str(tmp_path / "proj"), tiny_base, Project(name="tiny", base_model="x/tiny"),
                   remote=str(remote))
    head = subprocess.run(["git", "symbolic-ref", "HEAD"], cwd=remote, capture_output=True, text=True)
    assert head.stdout.strip() == "refs/heads/main"
    clone = subprocess.run(["git", "clone", "-q", str(remote), str(tmp_path / "plain")],
                           capture_output=True, text=True)
    assert clone.returncode == 0 and "nonexistent" not in clone.stderr, clone.stderr
    setup.clone(str(remote), str(tmp_path / "work"))
    assert (tmp_path / "work" / "modelgit.yaml").is_file()
