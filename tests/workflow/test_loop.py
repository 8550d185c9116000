"""The collaborative loop end to end on a tiny model: contribute, review, release, consume, rebase."""

from __future__ import annotations

import json
import os

import pytest

from workflow_helpers import DOMAINS, model_dir, train_adapter

from modelgit.fingerprint import fingerprint_dir, fingerprint_rev
from modelgit.git import setup
from modelgit.workflow import contribute, rebase, release, review
from modelgit.workflow.reviews import format_blind_report

AUTHORS = {"animals": "Alice Liddell <alice@example.org>", "cooking": "Bob Dylan <bob@example.org>",
           "weather": "Carol Shaw <carol@example.org>"}


def _contribute_all(contributor, domain_data, tmp_path, domains=tuple(DOMAINS)):
    for domain in domains:
        clone = contributor(domain)
        adapter = train_adapter(model_dir(clone), domain_data[domain]["train"],
                                str(tmp_path / f"{domain}-adapter"))
        contribute(clone, adapter, f"{domain}-lora", f"LoRA on {domain}", author=AUTHORS[domain],
                   domain=domain, remote="origin")


def test_loop_end_to_end(hub, contributor, domain_data, suites, tmp_path):
    repo, remote = hub
    _contribute_all(contributor, domain_data, tmp_path)
    seen = []
    report = review(repo, suites, remote="origin", on_blind=lambda r: seen.append(
        (format_blind_report(r), json.dumps(r.blind()), r.recorded)))
    # the blind report was shown before anything was recorded, and names nobody
    text, data, recorded = seen[0]
    assert not recorded
    for author in AUTHORS.values():
        for part in (author, author.split()[0], author.split("<")[1].rstrip(">")):
            assert part not in text and part not in data
    for domain in DOMAINS:
        assert f"{domain}-lora" not in text and f"{domain}-lora" not in data
    assert "contrib/" not in text + data
    # every contribution improves its own domain on this data, so the policy accepts all three
    assert {e.decision for e in report.entries} == {"accept"}
    assert report.recorded and len(report.commits) == 3
    revealed = {r["name"]: r["author"] for r in report.revealed()}
    assert revealed == {f"{d}-lora": a for d, a in AUTHORS.items()}
    for domain in DOMAINS:
        record = json.loads(open(os.path.join(repo.root, "reviews", f"{domain}-lora.json")).read())
        assert record["decision"] == "accept" and record["target_suite"] == domain
        assert record["scores"][domain]["adapter"] < record["scores"][domain]["base"]
        assert os.path.isfile(os.path.join(repo.root, "contributions", f"{domain}-lora",
                                           "adapter_model.safetensors"))
    # nothing pending any more
    assert review(repo, suites, remote="origin").entries == []

    v1 = fingerprint_rev(repo, "v1", "model")
    done = release(repo, suites, push="origin")
    assert done.tag == "v2" and repo.rev_parse("v2") == done.commit
    assert fingerprint_dir(model_dir(repo)) == fingerprint_rev(repo, "v2", "model") != v1
    results = {r["suite"]: r for r in done.record["results"]}
    print({d: (r["base_value"], r["value"]) for d, r in results.items()})
    # the release beats the base on average over the domains
    assert sum(r["value"] / r["base_value"] for r in results.values()) < len(results)
    kept = {c["name"]: c["review"]["kept_gain"] for c in done.record["contributions"]}
    print(kept)
    assert set(kept) == {f"{d}-lora" for d in DOMAINS}
    assert repo.git("status", "--porcelain").strip() == b""

    # a consumer clones the release: the card is there and parses with huggingface_hub
    from huggingface_hub import ModelCard

    consumer = setup.clone(remote, str(tmp_path / "consumer"), branch="v2")
    card = ModelCard.load(os.path.join(consumer.root, "model", "README.md"))
    assert card.data.base_model == "example/tiny-llama"
    assert card.data.to_dict()["base_model_relation"] == "merge"
    assert {r.dataset_name for r in card.data.eval_results} == set(DOMAINS)
    assert fingerprint_dir(os.path.join(consumer.root, "model")) == fingerprint_dir(model_dir(repo))
    with pytest.raises(Exception, match="nothing to release"):
        release(repo, suites)

    # an adapter trained on v1 is carried onto v2 and evaluated on both
    old = str(tmp_path / "animals-adapter")
    out = str(tmp_path / "animals-on-v2")
    moved = rebase(repo, old, "v2", out, suites=suites)
    assert moved.from_revision == repo.rev_parse("v1")
    assert [r["suite"] for r in moved.before] == [r["suite"] for r in moved.after] == list(DOMAINS)
    config = json.loads(open(os.path.join(out, "training_config.json")).read())
    assert config["resolved"]["base_fingerprint"] == fingerprint_rev(repo, "v2", "model")
    assert config["resolved"]["rebased_from"]["base_fingerprint"] == v1
    # ... and is accepted as a contribution against v2 (it was refused against v1's base)
    contribute(repo, out, "animals-v2", "carried onto v2", remote=None)


def test_rebase_with_retraining(hub, contributor, domain_data, suites, tmp_path):
    repo, _ = hub
    _contribute_all(contributor, domain_data, tmp_path, ("cooking",))
    review(repo, suites, remote="origin")
    release(repo, suites, tag="v2")
    moved = rebase(repo, str(tmp_path / "cooking-adapter"), "v2", str(tmp_path / "re"),
                   suites=suites, retrain_data=domain_data["cooking"]["train"], retrain_steps=5,
                   retrain_lr=1e-2)
    assert moved.retrained is not None
    config = json.loads(open(tmp_path / "re" / "training_config.json").read())
    assert config["config"]["init_adapter"] and config["resolved"]["rebased_from"]
    assert config["resolved"]["base_fingerprint"] == fingerprint_rev(repo, "v2", "model")


def test_release_searches_scale_density_and_weights_on_validation_data(hub, contributor, domain_data,
                                                                       suites, tmp_path):
    repo, _ = hub
    _contribute_all(contributor, domain_data, tmp_path, ("animals", "cooking"))
    review(repo, suites, remote="origin")
    done = release(repo, suites, search=True, search_budget=4)
    search = done.record["search"]
    assert 1 < len(search["trials"]) <= 4
    assert set(search["best"]["params"]) == {"lambda", "density", "weight:animals-lora",
                                             "weight:cooking-lora"}
    assert search["best"]["score"] == max(t["score"] for t in search["trials"])
    for key, value in search["best"]["params"].items():  # the release used the best settings
        assert done.record["parameters"][key] == value
    recipe = done.record["recipe"]
    assert "validation" not in recipe and "animals-lora" in recipe


def test_the_card_records_data_cards_not_data(hub, contributor, domain_data, suites, tmp_path):
    repo, _ = hub
    _contribute_all(contributor, domain_data, tmp_path, ("weather",))
    review(repo, suites, remote="origin")
    done = release(repo, suites)
    (entry,) = done.record["contributions"]
    from modelgit.data import data_card

    expected = data_card(domain_data["weather"]["train"])
    assert entry["data_card"] == {k: expected[k] for k in ("records", "bytes", "sha256")}
    card = open(os.path.join(model_dir(repo), "README.md")).read()
    assert expected["sha256"][:12] in card
    assert "rain falls" not in card and "weather-train" not in card  # no text, no file names


def test_release_with_continued_pretraining(hub, contributor, domain_data, suites, tmp_path):
    repo, _ = hub
    _contribute_all(contributor, domain_data, tmp_path, ("cooking",))
    review(repo, suites, remote="origin")
    done = release(repo, suites, pretrain=domain_data["weather"]["train"], pretrain_steps=3,
                   pretrain_lr=1e-3)
    pre = done.record["pretraining"]
    assert pre["steps"] == 3 and pre["lr"] == 1e-3
    from modelgit.data import data_card

    assert pre["data_card"]["sha256"] == data_card(domain_data["weather"]["train"])["sha256"]
    card = open(os.path.join(model_dir(repo), "README.md")).read()
    assert "## Continued pretraining" in card and "learning rate 0.001" in card
    # every weight moved, not just the adapters' q/v projections
    from safetensors.torch import load_file

    v1 = os.path.join(str(tmp_path), "v1")
    setup.clone(hub[1], v1, branch="v1")
    old = load_file(os.path.join(v1, "model", "model.safetensors"))
    new = load_file(os.path.join(model_dir(repo), "model.safetensors"))
    assert sorted(old) == sorted(new)
    moved = [n for n in old if not (old[n] == new[n]).all()]
    assert any("mlp" in n for n in moved) and any("embed" in n for n in moved)
