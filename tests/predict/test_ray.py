"""The per-batch function under Ray Data (`map_batches` with a callable class), on a local
Ray: its predictions equal `modelgit predict`'s."""

from __future__ import annotations

import numpy as np
import pytest

from predict_texts import TEXTS


@pytest.fixture(scope="module")
def ray_local():
    try:
        import ray
    except ImportError as exc:  # pragma: no cover - ray is in the dev extra
        pytest.skip(f"Ray is not installed here ({exc}): pip install 'ray[data]'")
    # logical CPUs (slots, not threads): the actor holds one while the read tasks need another
    ray.init(num_cpus=4, include_dashboard=False, log_to_driver=False,
             runtime_env={"env_vars": {"OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1"}})
    yield ray
    ray.shutdown()


def test_map_batches_with_batch_predictor_equals_modelgit_predict(tmp_path, ray_local,
                                                                   lm_library, inputs):
    import pyarrow.parquet as pq

    from modelgit.predict import BatchPredictor, predict

    predict(source=lm_library["router"], input=inputs["parquet"], output=str(tmp_path / "o.parquet"),
            task="score", router=True, batch_rows=5, id_column="key")
    expected = {r["key"]: r for r in pq.read_table(tmp_path / "o.parquet").to_pylist()}

    dataset = ray_local.data.read_parquet(inputs["parquet"], override_num_blocks=2)
    scored = dataset.map_batches(BatchPredictor, batch_size=5, batch_format="numpy", concurrency=1,
                                 fn_constructor_kwargs={"source": lm_library["router"],
                                                        "task": "score", "router": True})
    rows = scored.take_all()
    assert sorted(r["key"] for r in rows) == sorted(expected)
    for row in rows:
        want = expected[row["key"]]
        assert row["text"] == TEXTS[want["row"]]
        assert row["other"] == "x"  # the batch's own columns pass through
        assert row["adapter"] == want["adapter"]
        if want["nll"] is None:
            assert np.isnan(row["nll"]) and (row["tokens"] == -1) == (want["tokens"] is None)
        else:
            # Ray may cut batches elsewhere: other padding, the same numbers to float32 noise
            assert row["nll"] == pytest.approx(want["nll"], rel=1e-4)
            assert row["tokens"] == want["tokens"]
