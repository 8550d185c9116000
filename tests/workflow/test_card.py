"""The release model card: Hub-parseable metadata, a complete body, same bytes for the same
release, and not a word of data. Offline: huggingface_hub only parses."""

from __future__ import annotations

import copy

import pytest
import yaml

from modelgit.errors import UsageError
from modelgit.workflow.card import card_metadata, render_model_card

hub = pytest.importorskip("huggingface_hub")

SECRET = "/secret/path"
RECIPE = """merge_method: ties
base_model: HuggingFaceTB/SmolLM2-135M-Instruct
parameters:
  density: 0.5
"""


def _contribution(name, author, anon, adapter_id, suite, base, adapted, **extra):
    return {"name": name, "author": author, "anon_id": anon, "message": "adds " + name,
            "commit": "c" * 40, "adapter_id": adapter_id, "rank": 8, "alpha": 16,
            "target_modules": ["q_proj", "v_proj"],
            "data_card": {"records": 400, "bytes": 123456, "sha256": "d" * 64, "path": SECRET,
                          "files": [{"name": "secret-file-name.jsonl"}]},
            "review": {"decision": "accept", "target_suite": suite,
                       "scores": {suite: {"base": base, "adapter": adapted}}}, **extra}


@pytest.fixture
def release() -> dict:
    return {
        "name": "demo-smollm2", "tag": "v2", "date": "2026-11-23T18:00:00Z", "commit": "b" * 40,
        "base_model": "HuggingFaceTB/SmolLM2-135M-Instruct", "task": "causal_lm",
        "license": "apache-2.0", "language": ["en"], "method": "ties",
        "parameters": {"density": 0.5, "weights": {"python-snippets": 1.0, "sql": 0.7}},
        "recipe": RECIPE,
        "search": {"objective": "mean relative perplexity", "trials": [
            {"params": {"sql": 0.5, "python-snippets": 1.0}, "score": 0.1},
            {"params": {"sql": 0.7, "python-snippets": 1.0}, "score": 0.05}],
            "best": {"params": {"sql": 0.7, "python-snippets": 1.0}, "score": 0.05}},
        "contributions": [
            _contribution("python-snippets", "Alice <alice@example.org>", "c-3f2a", "a1" * 32,
                          "python", 12.3, 9.1),
            _contribution("sql | joins", "Bob <bob@example.org>", "c-9b1c", "e2" * 32, "sql",
                          20.0, 15.5),
        ],
        "results": [
            {"suite": "python", "task": "causal_lm", "metric": "perplexity", "value": 9.8,
             "base_value": 12.3, "higher_is_better": False, "examples": 64,
             "data_sha256": "f" * 64, "data_text": SECRET},
            {"suite": "sql", "task": "causal_lm", "metric": "perplexity", "value": 16.25,
             "base_value": 20.0, "higher_is_better": False, "examples": 32,
             "data_sha256": "9" * 64},
        ],
        "lineage": [{"tag": "v1", "date": "2026-10-01T12:00:00Z", "commit": "1" * 40,
                     "method": None, "contributions": []}],
    }


def _classification_release() -> dict:
    return {"name": "sentiment", "tag": "v1", "task": "classification", "method": "task_arithmetic",
            "base_model": "org/tiny-bert", "contributions": [],
            "results": [
                {"suite": "reviews", "task": "classification", "metric": "accuracy",
                 "value": 0.875, "base_value": 0.8, "higher_is_better": True},
                {"suite": "tweets", "task": "classification", "metric": "macro_f1",
                 "value": 0.61, "base_value": 0.64, "higher_is_better": True}]}


def test_card_parses_with_the_hub_library(release):
    card = hub.ModelCard(render_model_card(release))
    data = card.data.to_dict()
    assert data["base_model"] == "HuggingFaceTB/SmolLM2-135M-Instruct"
    assert data["base_model_relation"] == "merge"
    assert data["library_name"] == "transformers"
    assert data["pipeline_tag"] == "text-generation"
    assert data["license"] == "apache-2.0" and data["language"] == ["en"]
    assert {"modelgit", "merge", "lora", "ties"} <= set(data["tags"])
    assert data["model-index"][0]["name"] == "demo-smollm2"


def test_eval_results_one_per_suite(release):
    card = hub.ModelCard(render_model_card(release))
    assert card.data.model_name == "demo-smollm2"
    results = card.data.eval_results
    assert [(r.dataset_type, r.dataset_name, r.task_type, r.metric_type, r.metric_value)
            for r in results] == [("python", "python", "text-generation", "perplexity", 9.8),
                                  ("sql", "sql", "text-generation", "perplexity", 16.25)]


def test_classification_metric_types():
    meta = card_metadata(_classification_release())
    assert meta["pipeline_tag"] == "text-classification"
    card = hub.ModelCard(render_model_card(_classification_release()))
    results = {r.dataset_type: r for r in card.data.eval_results}
    assert results["reviews"].metric_type == "accuracy" and results["reviews"].metric_value == 0.875
    assert results["tweets"].metric_type == "f1" and results["tweets"].metric_value == 0.61
    assert results["tweets"].metric_args == {"average": "macro"}
    assert {r.task_type for r in results.values()} == {"text-classification"}


def test_metadata_load_round_trips(release, tmp_path):
    path = tmp_path / "README.md"
    path.write_text(render_model_card(release), encoding="utf-8")
    assert hub.metadata_load(path) == card_metadata(release)


def test_model_index_round_trips_through_eval_results(release):
    from huggingface_hub.repocard_data import (eval_results_to_model_index,
                                               model_index_to_eval_results)

    index = card_metadata(release)["model-index"]
    name, results = model_index_to_eval_results(index)
    assert eval_results_to_model_index(name, results) == index


def test_metadata_is_canonical(release):
    meta = card_metadata(release)
    front = render_model_card(release).split("---\n")[1]
    assert yaml.safe_load(front) == meta
    assert list(meta) == sorted(meta)
    entry = meta["model-index"][0]["results"][0]
    assert list(entry) == sorted(entry) and list(entry["metrics"][0]) == sorted(entry["metrics"][0])
    # key order of the input does not change the bytes
    shuffled = dict(reversed(list(copy.deepcopy(release).items())))
    assert render_model_card(shuffled) == render_model_card(release)


def test_deterministic(release):
    assert render_model_card(release) == render_model_card(copy.deepcopy(release))
    assert render_model_card(release).encode() == render_model_card(release).encode()


def test_does_not_modify_the_release(release):
    before = copy.deepcopy(release)
    render_model_card(release)
    assert release == before


def test_body_sections(release):
    text = render_model_card(release)
    body = hub.ModelCard(text).text
    assert body.lstrip("\n").startswith("# demo-smollm2 v2\n")
    assert "merges 2 accepted LoRA contributions" in body and "`ties`" in body
    # results table: base, release, change
    assert "| python | perplexity ↓ | 12.3000 | 9.8000 | -2.5000 (-20.33%) better |" in body
    # contributors: short adapter id, rank, targets, target suite, review score; no e-mail
    assert ("| python-snippets | Alice | `" + "a1" * 6 + "` | 8 (α 16) | q_proj, v_proj | "
            "python | 12.3000 → 9.1000 |") in body
    assert "alice@example.org" not in text
    assert "sql \\| joins" in body  # a pipe in a name cannot break the table
    assert "```yaml\n" + RECIPE + "```" in body
    assert "## Weight search" in body and "2 trials" in body
    # lineage oldest first, ending with this release
    assert body.index("| v1 |") < body.index("| **v2** (this release)")
    assert "## How it was built" in body and "a1" * 32 in body  # full ids to rebuild
    assert "120.6 KiB" in body and "d" * 64 in body


def test_no_data_leaks(release):
    text = render_model_card(release)
    assert SECRET not in text
    assert "secret-file-name" not in text
    assert "adds python-snippets" not in text  # commit messages are not rendered either


def test_no_contributions_and_no_base_model():
    release = {"name": "empty", "tag": "v0", "task": "causal_lm"}
    text = render_model_card(release)
    card = hub.ModelCard(text)
    data = card.data.to_dict()
    assert "base_model" not in data and "base_model_relation" not in data
    assert "model-index" not in data
    assert data["tags"] == ["modelgit", "merge", "lora"]
    assert "carries no merged contributions" in card.text
    assert "| **v0** (this release)" in card.text


def test_local_base_model_stays_out_of_metadata(release):
    release["base_model"] = "/models/my base"
    data = hub.ModelCard(render_model_card(release)).data.to_dict()
    assert "base_model" not in data
    assert "`/models/my base`" in render_model_card(release)


def test_non_finite_values_are_left_out_of_the_model_index(release):
    release["results"][1]["value"] = float("inf")
    results = hub.ModelCard(render_model_card(release)).data.eval_results
    assert [r.dataset_type for r in results] == ["python"]
    assert "| sql | perplexity ↓ | 20.0000 | inf | — |" in render_model_card(release)


def test_numpy_scalars_are_written_as_numbers(release):
    np = pytest.importorskip("numpy")
    release["results"][0]["value"] = np.float32(9.75)
    assert card_metadata(release)["model-index"][0]["results"][0]["metrics"][0]["value"] == 9.75
    assert isinstance(hub.ModelCard(render_model_card(release)).data.eval_results[0].metric_value,
                      float)


def test_bad_release_reports_every_problem():
    with pytest.raises(UsageError) as info:
        render_model_card({"contributions": "x", "results": {}})
    message = str(info.value)
    for part in ("'name'", "'tag'", "'contributions' must be a list", "'results' must be a list"):
        assert part in message
