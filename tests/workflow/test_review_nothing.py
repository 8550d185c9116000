"""A review with nothing pending says so, and why each contribution branch was skipped."""

from __future__ import annotations

import json

from gitutil import git, modelgit


def test_nothing_to_review_says_so_without_an_empty_table(hub, suites, tmp_path):
    repo, _ = hub
    suites_file = tmp_path / "private" / "suites.yaml"
    result = modelgit(repo.root, "review", "--suites", str(suites_file))
    assert "blind review" not in result.stdout and "contribution" not in result.stdout.split(":")[0]
    assert result.stdout.strip() == "nothing to review: no local or origin's contrib/* branches"

    # a branch whose current commit is already reviewed is skipped, and the reason listed
    git(repo.root, "branch", "contrib/weather-lora")
    commit = git(repo.root, "rev-parse", "contrib/weather-lora").stdout.strip()
    (tmp_path / "maintainer" / "reviews").mkdir()
    (tmp_path / "maintainer" / "reviews" / "weather-lora.json").write_text(
        json.dumps({"contribution": "weather-lora", "commit": commit, "decision": "reject"}))
    git(repo.root, "add", "reviews")
    git(repo.root, "commit", "-qm", "review weather-lora")
    result = modelgit(repo.root, "review", "--suites", str(suites_file), "--no-fetch")
    lines = result.stdout.strip().splitlines()
    assert lines[0].startswith("nothing to review: every local contrib/* branch is reviewed")
    assert lines[1:] == [f"  contrib/weather-lora: already reviewed at {commit[:12]} (reject)"]
