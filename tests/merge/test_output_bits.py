"""Output bytes pinned: every method writes exactly the bytes the engine wrote before issue 12.

``output_digests.json`` was made by ``make_output_digests.py`` with the engine of 6aac9f8 run on
one thread (``OMP_NUM_THREADS=1``; that engine's reductions — the L1 rescale, DELLA, model stock —
gave other bits with more threads, see ``make_output_digests.py``), and re-made with main's engine
of 33c6952 (one thread), whose mergekit parity changed two things on purpose: ``dtype:`` converts
float tensors only (the int64 ``model.step`` stays int64), and a recipe's top-level ``seed:``
reaches DARE (6aac9f8 ignored it; with seed 0 both give the same bits). Every float tensor of
every other recipe is the same as 6aac9f8's, bit for bit. Each recipe is merged here
sequentially and with the thread pool, with several intra-op thread counts: the bytes may depend
on neither.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest

HERE = Path(__file__).parent
EXPECTED = json.loads((HERE / "output_digests.json").read_text())["digests"]


def _make():
    import importlib.util

    spec = importlib.util.spec_from_file_location("make_output_digests", HERE / "make_output_digests.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


make = _make()


@pytest.fixture(scope="module")
def inputs(tmp_path_factory):
    root = tmp_path_factory.mktemp("pinned")
    return root, make.build_inputs(root / "inputs")


def test_every_method_is_pinned():
    from modelgit.merge.base import METHODS

    pinned = {make.recipes({k: Path(k) for k in _labels()})[name]["merge_method"] for name in EXPECTED}
    assert set(METHODS) <= pinned, f"no pinned output for {sorted(set(METHODS) - pinned)}"


def _labels():
    return ["base", "ft1", "ft2", "ft3", "base-bf16", "ft1-bf16", "ft2-bf16", "ft3-bf16", "adapter",
            "fisher-ft1", "fisher-ft2", "fisher-ft3"]


@pytest.mark.parametrize("workers,torch_threads", [("1", 1), ("3", 2)], ids=["sequential", "pool"])
@pytest.mark.parametrize("name", sorted(EXPECTED))
def test_output_bytes_unchanged(inputs, name, workers, torch_threads, monkeypatch):
    """Sequential (one worker) and on the pool (three workers, with the caller's torch set to
    two intra-op threads): the pinned bytes both times, and the caller's setting left as it was."""
    import torch

    from modelgit.merge.engine import run_merge
    from modelgit.merge.recipe import parse_recipe

    root, paths = inputs
    data = make.recipes(paths)[name]
    out = root / f"out-{name}-{workers}"
    monkeypatch.setenv("MODELGIT_THREADS", workers)
    before = torch.get_num_threads()
    torch.set_num_threads(torch_threads)
    try:
        run_merge(parse_recipe(data, json.dumps(data)), str(out), progress=False, max_shard_bytes=200_000)
        assert torch.get_num_threads() == torch_threads
    finally:
        torch.set_num_threads(before)
    assert make.output_digests(out) == EXPECTED[name]
    _check_provenance(out)


def _check_provenance(out: Path) -> None:
    """The content ids recorded (hashed as the merge read the inputs) are those a fresh read
    of each input gives, in the marker and in every shard's metadata alike."""
    from safetensors import safe_open

    from modelgit.merge.sources import open_source

    marker = json.loads((out / "modelgit_merge.json").read_text())
    for entry in marker["inputs"]:
        source = open_source(entry["spec"])
        try:
            assert entry["content_id"] == source.identity(), entry["spec"]
        finally:
            source.close()
    provenance = {k: v for k, v in marker.items() if k != "files"}
    for shard in sorted(out.glob("*.safetensors")):
        with safe_open(shard, framework="pt") as handle:
            assert json.loads(handle.metadata()["modelgit_merge"]) == provenance
