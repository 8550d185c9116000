"""The adapter library of a release, end to end through the CLI on a tiny model: a specialist
review, the library and router every release records, `modelgit adapters` (list, fetch, the
repository form of routing), loading base + adapter with transformers + peft, a release of
specialists only, the rebase path into the next base's library, and the refusals."""

from __future__ import annotations

import json
import os
import subprocess

import pytest
import yaml

from gitutil import git, modelgit
from workflow_helpers import train_adapter

from modelgit.errors import UsageError
from modelgit.fingerprint import fingerprint_rev


def _suites_file(tmp_path, suites) -> str:
    path = tmp_path / "private-suites.yaml"
    path.write_text(yaml.safe_dump({"suites": [
        {"name": s.name, "data": s.data, "validation": s.validation, "metric": "perplexity"}
        for s in suites]}))
    return str(path)


def _contribute(tmp_path, remote, who: str, domain: str, data: str, name: str | None = None,
                adapter: str | None = None, extra=()) -> None:
    clone = tmp_path / who
    if not clone.exists():
        modelgit(tmp_path, "clone", str(remote), who)
    else:
        git(clone, "pull", "-q", "origin", "main")
    if adapter is None:
        adapter = train_adapter(str(clone / "model"), data, str(tmp_path / f"{who}-adapter"))
    modelgit(clone, "contribute", adapter, "--name", name or f"{domain}-lora", "-m",
             f"LoRA on {domain}", "--domain", domain, "--author", f"{who} <{who}@example.org>",
             *extra)


def _review(proj, suites_file, specialists: set[str]) -> dict:
    """Review, the contributions named in ``specialists`` decided specialist by the maintainer
    (anonymous ids from a dry run: the names are matched by the domains' scores)."""
    dry = json.loads(modelgit(proj, "review", "--suites", suites_file, "--dry-run", "--json").stdout)
    overrides = []
    for entry in dry["contributions"]:
        if entry["target_suite"] in specialists:
            overrides += ["--override", f"{entry['anon_id']}=specialist"]
    return json.loads(modelgit(proj, "review", "--suites", suites_file, "--json",
                               *overrides).stdout)


def test_specialist_library_router_fetch_rebase_and_refusals(tmp_path, tiny_base, domain_data,
                                                              suites):
    remote = tmp_path / "hub.git"
    subprocess.run(["git", "init", "-q", "--bare", "-b", "main", str(remote)], check=True)
    modelgit(tmp_path, "create", "proj", "--base", tiny_base, "--remote", str(remote))
    proj = tmp_path / "proj"
    suites_file = _suites_file(tmp_path, suites)
    _contribute(tmp_path, remote, "alice", "animals", domain_data["animals"]["train"])
    _contribute(tmp_path, remote, "bob", "cooking", domain_data["cooking"]["train"])

    # review: the maintainer decides the cooking adapter is a specialist
    bad = modelgit(proj, "review", "--suites", suites_file, "--override", "anon-1=merge",
                   check=False)
    assert bad.returncode == 2 and "ANON_ID=reject or ANON_ID=specialist" in bad.stderr
    done = _review(proj, suites_file, {"cooking"})
    decisions = {r["name"]: r["decision"] for r in done["revealed"]}
    assert decisions == {"animals-lora": "accept", "cooking-lora": "specialist"}
    record = json.loads((proj / "reviews" / "cooking-lora.json").read_text())
    assert record["decision"] == "specialist" and record["decided_by"] == "maintainer"
    # merged into the main line like an accepted one (its files are in the tree), two parents
    assert (proj / "contributions" / "cooking-lora" / "adapter_model.safetensors").is_file()
    merges = git(proj, "log", "--merges", "--format=%s").stdout
    assert "Review cooking-lora: specialist" in merges
    git(proj, "push", "-q", "origin", "main")

    # release v2 with a router: merges the accepted one only; the library holds both
    v1_fp = fingerprint_rev(_repo(proj), "v1", "model")
    dry = modelgit(proj, "release", "--suites", suites_file, "--router", "arrow", "--dry-run",
                   "--json")
    assert json.loads(dry.stdout)["library"]["router"]["kind"] == "arrow"
    assert not (proj / "routers").exists() and git(proj, "tag", "--list", "v2").stdout == ""
    out = modelgit(proj, "release", "--suites", suites_file, "--router", "examples",
                   "--push").stdout
    assert "released v2" in out and "router on animals" in out and "router cost" in out
    rel = json.loads((proj / "releases" / "v2.json").read_text())
    assert [c["name"] for c in rel["contributions"]] == ["animals-lora"]
    lib = rel["library"]
    assert lib["base"]["fingerprint"] == v1_fp and lib["base"]["tag"] == "v1"
    assert lib["base"]["commit"] == git(proj, "rev-parse", "v2^").stdout.strip()
    entries = {a["name"]: a for a in lib["adapters"]}
    assert {n: a["decision"] for n, a in entries.items()} == decisions
    assert entries["cooking-lora"]["domain"] == "cooking"
    assert entries["cooking-lora"]["path"] == "contributions/cooking-lora"
    assert entries["cooking-lora"]["adapter_id"] == record["adapter"]["content_id"]
    assert entries["cooking-lora"]["scores"]["cooking"]["adapter"] == record["scores"]["cooking"]["adapter"]
    assert lib["refused"] == [] and lib["router"]["path"] == "routers/v2"
    assert {r["suite"] for r in lib["router"]["evaluation"]} == {s.name for s in suites}
    # the router is committed in the release's commit, its safetensors tracked by modelgit
    tracked = git(proj, "show", "v2:routers/v2/router.safetensors").stdout
    assert tracked.startswith("modelgit") or "manifest" in tracked[:200].lower()
    assert git(proj, "status", "--porcelain").stdout == ""
    card = (proj / "model" / "README.md").read_text()
    assert "## Adapter library" in card and "cooking-lora" in card and "specialist" in card
    assert "### Router" in card and "routers/v2" in card

    # modelgit adapters: list (newest release by default), JSON
    listed = modelgit(proj, "adapters").stdout
    assert "release v2" in listed and "cooking-lora" in listed and "specialist" in listed
    assert json.loads(modelgit(proj, "adapters", "--rev", "v2", "--json").stdout)["tag"] == "v2"
    unknown = modelgit(proj, "adapters", "--rev", "v22", check=False)
    assert unknown.returncode == 2 and "did you mean 'v2'" in unknown.stderr

    # a consumer fetches from a fresh clone: v1's weights (the library's base) are not checked
    # out there, so their objects come from the remote
    modelgit(tmp_path, "clone", str(remote), "consumer")
    consumer = tmp_path / "consumer"
    got = json.loads(modelgit(consumer, "adapters", "fetch", "cooking-lora", "--base", "-o",
                              str(tmp_path / "fetched"), "--json").stdout)
    assert set(got) == {"cooking-lora", "base"}
    assert os.path.isdir(consumer / ".git" / "modelgit" / "library")
    assert git(consumer, "status", "--porcelain").stdout == ""
    again = modelgit(consumer, "adapters", "fetch", "cooking-lora", "-o", str(tmp_path / "fetched"),
                     check=False)
    assert again.returncode == 2 and "--force" in again.stderr
    typo = modelgit(consumer, "adapters", "fetch", "cooking-lra", "-o", str(tmp_path / "x"),
                    check=False)
    assert typo.returncode == 2 and "did you mean 'cooking-lora'" in typo.stderr
    _check_peft_load(tmp_path / "fetched", "cooking-lora", entries["cooking-lora"]["adapter_id"],
                     v1_fp)

    # the Python API: the library and the release's routed model
    from modelgit.route.release_library import library, load_release

    lib_obj = library(str(consumer), "v2")
    assert lib_obj.names == ("animals-lora", "cooking-lora") and lib_obj.base_fingerprint == v1_fp
    for path in (lib_obj.base_dir, *(a.directory for a in lib_obj.adapters)):
        assert path.startswith(os.path.join(str(consumer), ".git", "modelgit", "library"))
    routed = load_release(str(consumer), "v2")
    from modelgit import route  # the public form: a repository and a release
    assert route.load(str(consumer), "v2").spec == routed.spec
    decisions_made = routed.route(["boil the pasta in salted water", "the cat sat on the mat"])
    assert {d.adapter for d in decisions_made} <= {"animals-lora", "cooking-lora", "base"}
    assert len(routed.score(["chop the onion and fry it"])) == 1
    which = modelgit(consumer, "adapters", "which", "--rev", "v2", "stir the sauce").stdout
    assert which.split()[0] in ("animals-lora", "cooking-lora", "base")
    _predict_over_release(tmp_path, consumer, routed)

    # a specialist on v2 and the animals adapter carried from v1 to v2 by rebase
    git(proj, "pull", "-q", "origin", "main")
    _contribute(tmp_path, remote, "carol", "weather", domain_data["weather"]["train"])
    carried = str(tmp_path / "animals-v2")
    modelgit(proj, "rebase", str(proj / "contributions" / "animals-lora"), "--onto", "v2",
             "-o", carried)
    _contribute(tmp_path, remote, "alice", "animals", None, adapter=carried,
                extra=("--replace",))
    done = _review(proj, suites_file, {"weather", "animals"})
    assert {r["name"]: r["decision"] for r in done["revealed"]} == {
        "animals-lora": "specialist", "weather-lora": "specialist"}
    # only specialists pending: a release keeps the weights and records the new library
    out = modelgit(proj, "release", "--suites", suites_file, "--router", "arrow").stdout
    assert "released v3" in out and "the weights stay" in out
    repo = _repo(proj)
    assert fingerprint_rev(repo, "v3", "model") == fingerprint_rev(repo, "v2", "model")
    lib3 = json.loads((proj / "releases" / "v3.json").read_text())["library"]
    assert lib3["base"]["fingerprint"] == fingerprint_rev(repo, "v2", "model")
    assert lib3["base"]["tag"] == "v2"
    assert sorted(a["name"] for a in lib3["adapters"]) == ["animals-lora", "weather-lora"]
    refused = {r["name"]: r["reason"] for r in lib3["refused"]}
    assert list(refused) == ["cooking-lora"]
    assert "`modelgit rebase` it onto v2" in refused["cooking-lora"]
    assert v1_fp[:12] in refused["cooking-lora"] and "(v1)" in refused["cooking-lora"]
    assert "refused cooking-lora" in modelgit(proj, "adapters").stdout
    nothing = modelgit(proj, "release", "--suites", suites_file, check=False)
    assert nothing.returncode == 2 and "nothing to release" in nothing.stderr

    # refusals of the repository form: a router built for another base; one naming an adapter
    # the library lacks; a library entry whose files are not what review validated
    modelgit(proj, "adapters", "build", "--kind", "arrow", "--rev", "v2", "-o",
             str(tmp_path / "r2"))
    other = modelgit(proj, "adapters", "which", "--rev", "v3", "--router", str(tmp_path / "r2"),
                     "the cat", check=False)
    assert other.returncode == 2 and "built for another base" in other.stderr
    from modelgit.route import load

    with pytest.raises(UsageError, match="names adapter.*animals-lora.*that the library lacks"):
        load(str(proj / "routers" / "v3"), library=library(str(proj), "v3", ["weather-lora"]))
    _tampered_entry_is_refused(proj)


def _predict_over_release(tmp_path, consumer, routed) -> None:
    """`modelgit.predict` over the release (tests/predict has the rest): the release's own
    model, one adapter of its library, its router."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    from modelgit.adapters.loading import load_model, load_tokenizer
    from modelgit.eval.metrics import nll_per_document
    from modelgit.predict import predict

    texts = ["boil the pasta in salted water", "the cat sat on the mat"]
    source = tmp_path / "texts.parquet"
    pq.write_table(pa.table({"text": texts}), source)
    scores = {}
    for name, options in (("release", {}), ("adapter", {"adapter": "cooking-lora"}),
                          ("router", {"router": True})):
        out = tmp_path / f"predict-{name}.parquet"
        predict(source=str(consumer), rev="v2", input=str(source), output=str(out),
                task="score", **options)
        scores[name] = pq.read_table(out).to_pylist()
    tokenizer = load_tokenizer(str(consumer / "model"))  # the clone's work tree is v2
    model = load_model(str(consumer / "model"), "causal_lm", pad_token_id=tokenizer.pad_token_id)
    for row, text in zip(scores["release"], texts):
        total, tokens = nll_per_document(model, tokenizer, [text])
        assert "adapter" not in row and row["nll"] == pytest.approx(total[0] / tokens[0], rel=1e-4)
    assert [r["adapter"] for r in scores["adapter"]] == ["cooking-lora"] * 2
    assert [r["adapter"] for r in scores["router"]] == [d.adapter for d in routed.route(texts)]
    for row, want in zip(scores["router"], routed.score(texts, batch_size=1)):
        assert row["nll"] == pytest.approx(want.nll, rel=1e-4)


def _repo(path):
    from modelgit.git.repo import find_repo

    return find_repo(str(path))


def _check_peft_load(fetched, name: str, adapter_id: str, base_fp: str) -> None:
    """transformers + peft load the fetched base and adapter; the adapter changes the output."""
    import torch
    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    from modelgit.fingerprint import fingerprint_dir
    from modelgit.route.library import adapter_content_id

    assert fingerprint_dir(str(fetched / "base")) == base_fp
    assert adapter_content_id(str(fetched / name)) == adapter_id
    assert not (fetched / name / ".modelgit-verified.json").exists()
    base = AutoModelForCausalLM.from_pretrained(str(fetched / "base"))
    ids = torch.tensor([[1, 2, 3, 4]])
    with torch.no_grad():
        plain = base(ids).logits.clone()
        tuned = PeftModel.from_pretrained(base, str(fetched / name))(ids).logits
    assert not torch.allclose(plain, tuned)


def _tampered_entry_is_refused(proj) -> None:
    """A release record whose library entry names other content than the tree holds."""
    from modelgit.route.release_library import ReleaseLibrary, materialize_library, read_release

    release = read_release(str(proj), "v3")
    entry = dict(release.record["adapters"][0], adapter_id="0" * 64)
    forged = ReleaseLibrary("v3", release.commit, {**release.record, "adapters": [entry]})
    with pytest.raises(UsageError, match="its files changed after review"):
        materialize_library(str(proj), forged)
    assert not any(name.startswith("adapter-" + "0" * 8)
                   for name in os.listdir(proj / ".git" / "modelgit" / "library"))
