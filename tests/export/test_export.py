"""`modelgit export` end to end: a tiny repository with a release (two reviewed LoRAs merged,
both in the library, an arrow router) exported both ways and loaded by transformers + peft in a
subprocess where `import modelgit` fails, with the same logits as inside modelgit; the refusals."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

from gitutil import git, modelgit
from workflow_helpers import model_dir, train_adapter

from modelgit.errors import UsageError

IDS = [[1, 2, 3, 4, 5, 6], [7, 8, 9, 10, 11, 12]]

# runs with a clean environment (no PYTHONPATH: the editable install would find modelgit, so it
# is blocked outright) and prints {name: logits} as JSON
_LOAD = r"""
import json, sys
sys.modules["modelgit"] = None
try:
    import modelgit  # noqa: F401
except ImportError:
    pass
else:
    raise SystemExit("modelgit is importable")
import torch
from peft import PeftModel
from transformers import AutoModelForCausalLM

root, layout, ids = sys.argv[1], sys.argv[2], torch.tensor(json.loads(sys.argv[3]))
out = {}
with torch.no_grad():
    if layout == "merged":
        out["merged"] = AutoModelForCausalLM.from_pretrained(root).eval()(ids).logits.tolist()
    else:
        import os
        base = AutoModelForCausalLM.from_pretrained(root).eval()
        out["base"] = base(ids).logits.tolist()
        names = sorted(os.listdir(os.path.join(root, "adapters")))
        model = PeftModel.from_pretrained(base, os.path.join(root, "adapters", names[0]),
                                          adapter_name=names[0])
        for name in names[1:]:
            model.load_adapter(os.path.join(root, "adapters", name), adapter_name=name)
        for name in names:
            model.set_adapter(name)
            out[name] = model(ids).logits.tolist()
print(json.dumps(out))
"""


def load_without_modelgit(root, layout: str) -> dict:
    """Logits of the export computed by a Python that cannot import modelgit."""
    env = {"PATH": os.environ["PATH"], "HOME": os.environ.get("HOME", "/tmp"),
           "HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": "1"}
    done = subprocess.run([sys.executable, "-c", _LOAD, str(root), layout, json.dumps(IDS)],
                          capture_output=True, text=True, env=env, cwd=str(root), timeout=600)
    assert done.returncode == 0, done.stderr[-2000:]
    return json.loads(done.stdout.splitlines()[-1])


def reference_logits(repo, tag: str) -> dict:
    """The same logits inside modelgit: the checked-out release and its library's cache."""
    import torch
    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    from modelgit.route.release_library import library

    ids = torch.tensor(IDS)
    out = {}
    with torch.no_grad():
        out["merged"] = AutoModelForCausalLM.from_pretrained(model_dir(repo))(ids).logits
        lib = library(repo, tag)
        base = AutoModelForCausalLM.from_pretrained(lib.base_dir).eval()
        out["base"] = base(ids).logits
        for adapter in lib.adapters:
            tuned = PeftModel.from_pretrained(
                AutoModelForCausalLM.from_pretrained(lib.base_dir).eval(), adapter.directory)
            out[adapter.name] = tuned(ids).logits
    return out


def _close(got, expected, what: str) -> None:
    import torch

    diff = (torch.tensor(got) - expected).abs().max().item()
    assert diff <= 1e-5, f"{what}: the export's logits differ by {diff}"


@pytest.fixture
def released(hub, contributor, domain_data, suites, tmp_path):
    """The maintainer's repository with release v2: two accepted LoRAs merged, an arrow router."""
    from modelgit.route.release_router import ReleaseRouter
    from modelgit.workflow import contribute, release, review

    repo, _remote = hub
    for domain in ("animals", "cooking"):
        clone = contributor(domain)
        adapter = train_adapter(model_dir(clone), domain_data[domain]["train"],
                                str(tmp_path / f"{domain}-adapter"))
        contribute(clone, adapter, f"{domain}-lora", f"LoRA on {domain}",
                   author=f"{domain} <{domain}@example.org>", domain=domain, remote="origin")
    review(repo, suites, remote="origin")
    release(repo, suites, router=ReleaseRouter(kind="arrow", evaluate=False))
    return repo


@pytest.mark.slow
def test_export_both_layouts_load_without_modelgit(released, tmp_path):
    repo = released
    root = repo.root
    expected = reference_logits(repo, "v2")
    assert not any(torch_equal(expected["base"], expected[n]) for n in ("animals-lora", "cooking-lora"))

    # merged: one model with real weights and the release's card
    merged = tmp_path / "out" / "merged"
    got = json.loads(modelgit(root, "export", "v2", "--merged", "-o", str(merged), "--json").stdout)
    assert got["layout"] == "merged" and got["tag"] == "v2" and got["onnx"] is None
    names = sorted(os.listdir(merged))
    assert {"config.json", "model.safetensors", "README.md", "tokenizer.json",
            "modelgit_export.json"} <= set(names), names
    assert ".gitattributes" not in names
    assert (merged / "model.safetensors").read_bytes()[8:9] == b"{"  # a safetensors header
    assert (merged / "README.md").read_text() == (tmp_path / "maintainer" / "model" / "README.md").read_text()
    _close(load_without_modelgit(merged, "merged")["merged"], expected["merged"], "merged")
    assert [p for p in os.listdir(merged.parent) if p != "merged"] == []  # no scratch left

    # library (the default, newest release): base + adapters/ + router/, the card with usage
    lib_dir = tmp_path / "lib"
    out = modelgit(root, "export", "-o", str(lib_dir)).stdout
    assert "exported release v2" in out and "animals-lora, cooking-lora" in out and "+ router" in out
    for name in ("animals-lora", "cooking-lora"):
        assert {"adapter_config.json", "adapter_model.safetensors"} <= set(os.listdir(lib_dir / "adapters" / name))
    assert sorted(os.listdir(lib_dir / "router")) == ["router.json", "router.safetensors"]
    assert not any(f.startswith(".modelgit") for _d, _s, fs in os.walk(lib_dir) for f in fs)
    card = (lib_dir / "README.md").read_text()
    assert card.startswith("---\n") and card.index("## Using this export") > card.index("\n---\n", 4)
    assert "PeftModel.from_pretrained" in card and "`cooking-lora`" in card
    record = json.loads((lib_dir / "modelgit_export.json").read_text())
    assert record["layout"] == "library" and record["adapters"] == ["animals-lora", "cooking-lora"]
    loaded = load_without_modelgit(lib_dir, "library")
    assert set(loaded) == {"base", "animals-lora", "cooking-lora"}
    for name, logits in loaded.items():
        _close(logits, expected[name], name)

    # one adapter; an existing output is refused, replaced with --force
    again = modelgit(root, "export", "v2", "--adapters", "cooking-lora", "-o", str(lib_dir), check=False)
    assert again.returncode == 2 and "not empty" in again.stderr and "--force" in again.stderr
    modelgit(root, "export", "v2", "--adapters", "cooking-lora", "-o", str(lib_dir), "--force")
    assert os.listdir(lib_dir / "adapters") == ["cooking-lora"]
    assert sorted(os.listdir(tmp_path)).count("lib") == 1 and not any(
        ".modelgit-tmp-" in p for p in os.listdir(tmp_path))

    _refusals(repo, tmp_path)
    _served_names(repo)


def _served_names(repo) -> None:
    """`serve` of this release (it merged its contributions: new weights) serves its library on
    the base the adapters were reviewed on, named by that base's tag, and refuses the release's
    own tag with the command that serves its weights, rather than answering with other weights
    (the export above is that command's other half)."""
    from modelgit.errors import UsageError
    from modelgit.serve.catalog import open_catalog

    catalog = open_catalog(repo.root, "v2")
    assert catalog.names == ["base", "v1", "animals-lora", "cooking-lora", "auto"]
    assert catalog.resolve("v1").kind == "base"
    with pytest.raises(UsageError, match="v2 merged its contributions.*modelgit export v2 --merged"):
        catalog.resolve("v2")


def torch_equal(a, b) -> bool:
    import torch

    return torch.allclose(a, b)


def _refusals(repo, tmp_path) -> None:
    root = repo.root
    target = str(tmp_path / "refused")
    for args, message in (
            (("v22",), "did you mean 'v2'"),
            (("v2", "--adapters", "cooking-lra"), "did you mean 'cooking-lora'"),
            (("v1",), "records no adapter library"),  # the base alone: --merged exports it
            (("v2", "--merged", "--onnx"), "is a decoder"),
            (("v2", "--merged", "--adapters", "cooking-lora"), "drop --merged")):
        done = modelgit(root, "export", *args, "-o", target, check=False)
        assert done.returncode == 2 and message in done.stderr, (args, done.stderr)
        assert "Traceback" not in done.stderr and not os.path.exists(target)
    assert "--merged" in modelgit(root, "export", "v1", "-o", target, check=False).stderr
    # the output is the repository, or holds it
    for bad in (root, os.path.dirname(root)):
        done = modelgit(root, "export", "v2", "--merged", "-o", bad, "--force", check=False)
        assert done.returncode == 2 and "holds it" in done.stderr
    # a revision that holds no release
    git(root, "switch", "-q", "-c", "no-release")
    git(root, "rm", "-q", "-r", "releases")
    git(root, "commit", "-q", "-m", "no releases here")
    done = modelgit(root, "export", "no-release", "--merged", "-o", target, check=False)
    assert done.returncode == 2 and "holds no release" in done.stderr
    git(root, "switch", "-q", "main")
    # the Python API names the same errors
    from modelgit.export import export_release

    with pytest.raises(UsageError, match="did you mean 'v2'"):
        export_release(repo, target, rev="v2x")
    result = export_release(repo, target, rev="v1", merged=True)
    assert result.merged and result.tag == "v1" and result.adapters == ()
    assert os.path.isfile(os.path.join(target, "README.md"))  # v1 has no card: a plain one
