"""What transfers cost: push, clone and pull of a ~256 MB model, bytes and CPU seconds.

Two versions of a 256 MB fp32 model (v2 a fine-tune of v1, so most of its chunks are deltas
against v1's) are added to a local store; then, timed, each a median of ``--runs``:

* push v1 to an empty remote store (standalone objects);
* push v2 to a remote that has v1 (delta objects whose parents do not travel: verifying one
  decodes its parent from the local store; since issue 12 the remote is kept newest whole, so
  v2 is stored whole there and v1 re-encoded as deltas on it);
* clone: fetch v2 (with whatever it needs) into an empty store;
* pull: fetch v2 into a store that has v1.

Wall time and CPU time of the process (all threads), page cache warm, and the bytes each step
moved (``TransferResult.bytes``) and how many objects were hard-linked. Run it with the code to
compare on ``PYTHONPATH`` (``PYTHONPATH=src python3 benchmarks/transfer.py``); set
``MODELGIT_LINKS=0`` to copy instead of hard-linking between these local stores.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import tempfile
import time

import numpy as np


def _model(rng, rows: int, cols: int, layers: int) -> dict[str, np.ndarray]:
    return {f"layers.{i}.w": (rng.standard_normal((rows, cols)) * 0.02).astype(np.float32)
            for i in range(layers)}


def _timed(fn) -> tuple[float, float, int, int]:
    """(wall s, CPU s, bytes moved, objects linked) of a push or fetch."""
    wall, cpu = time.perf_counter(), time.process_time()
    result = fn()
    return (time.perf_counter() - wall, time.process_time() - cpu, result.bytes,
            getattr(result, "linked", 0))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--mb", type=int, default=256, help="model size in MB (of 4 MiB layers)")
    parser.add_argument("--workdir", help="where the stores go (default: a temporary directory)")
    args = parser.parse_args()

    import modelgit
    from modelgit.git.transfer import fetch_objects, push_objects
    from modelgit.store import Store

    root = tempfile.mkdtemp(prefix="mg-transfer-", dir=args.workdir)
    try:
        rng = np.random.default_rng(0)
        layers = max(1, args.mb * 10**6 // (1024 * 1024 * 4))
        v1 = _model(rng, 1024, 1024, layers)
        v2 = {k: v + (rng.standard_normal(v.shape) * 1e-4).astype(np.float32) for k, v in v1.items()}
        from safetensors.numpy import save_file

        local = Store.open(os.path.join(root, "local"), create=True)
        manifests = []
        for i, tensors in enumerate((v1, v2)):
            path = os.path.join(root, f"v{i + 1}.safetensors")
            save_file(tensors, path)
            manifests.append(modelgit.add(local, path, parent=manifests[-1] if manifests else None,
                                          progress=False))
        ids1, ids2 = manifests[0].object_ids(), manifests[1].object_ids()
        rows: dict[str, list[tuple[float, float, int, int]]] = {
            "push v1": [], "push v2 onto v1": [], "clone v2 (fetch into an empty store)": [],
            "pull v2 (fetch into a store with v1)": []}
        for run in range(args.runs):
            remote = Store.open(os.path.join(root, f"remote-{run}"), create=True)
            rows["push v1"].append(_timed(lambda: push_objects(local, remote, ids1, progress=False)))
            pulling = Store.open(os.path.join(root, f"pulling-{run}"), create=True)
            fetch_objects(pulling, [("origin", remote)], ids1, progress=False)  # a clone of v1
            rows["push v2 onto v1"].append(_timed(lambda: push_objects(local, remote, ids2, progress=False)))
            fresh = Store.open(os.path.join(root, f"fetched-{run}"), create=True)
            rows["clone v2 (fetch into an empty store)"].append(
                _timed(lambda: fetch_objects(fresh, [("origin", remote)], ids2, progress=False)))
            rows["pull v2 (fetch into a store with v1)"].append(
                _timed(lambda: fetch_objects(pulling, [("origin", remote)], ids2, progress=False)))
            remote_mb = sum(remote.stored_size(o) for o in remote.iter_objects()) / 1e6
            for store in (fresh, pulling, remote):
                shutil.rmtree(store.url)
        stored = sum(local.stored_size(o) for o in local.iter_objects()) / 1e6
        report = {"modelgit": modelgit.__file__, "model_mb": round(sum(v.nbytes for v in v1.values()) / 1e6),
                  "stored_mb_both_versions": round(stored), "remote_mb_both_versions": round(remote_mb),
                  "links": os.environ.get("MODELGIT_LINKS", "1") != "0", "runs": args.runs,
                  "median": {name: {"wall_s": round(statistics.median(r[0] for r in runs), 3),
                                    "cpu_s": round(statistics.median(r[1] for r in runs), 3),
                                    "mb_moved": round(statistics.median(r[2] for r in runs) / 1e6, 1),
                                    "objects_linked": statistics.median(r[3] for r in runs)}
                             for name, runs in rows.items()}}
        print(json.dumps(report, indent=2))
    finally:
        shutil.rmtree(root, ignore_errors=True)


if __name__ == "__main__":
    main()
