"""`modelgit.predict.predict` on tiny models: each task, each input format, the router and
adapters, against the models called directly."""

from __future__ import annotations

import math

import numpy as np
import pytest

from predict_texts import TEXTS

from modelgit.errors import FormatError, UsageError
from modelgit.predict import predict


def _run(tmp_path, source, input_path, task, name="out.parquet", **options):
    import pyarrow.parquet as pq

    out = tmp_path / name
    result = predict(source=source, input=input_path, output=str(out), task=task,
                     batch_rows=options.pop("batch_rows", 5), **options)
    return result, pq.read_table(out)


def test_score_of_a_plain_model_is_evals_per_text_nll(tmp_path, lm_base, inputs):
    from modelgit.adapters.loading import load_model, load_tokenizer
    from modelgit.eval.metrics import nll_per_document

    result, table = _run(tmp_path, lm_base, inputs["parquet"], "score", id_column="key")
    assert result.rows == len(TEXTS) and result.batches == 5 and result.resumed == 0
    assert table.column_names == ["row", "key", "nll", "perplexity", "tokens"]
    assert table.column("row").to_pylist() == list(range(len(TEXTS)))
    assert table.column("key").to_pylist() == [1000 + i for i in range(len(TEXTS))]
    tokenizer = load_tokenizer(lm_base)
    model = load_model(lm_base, "causal_lm", pad_token_id=tokenizer.pad_token_id)
    rows = table.to_pylist()
    for i, text in enumerate(TEXTS):
        if text is None:
            assert rows[i]["nll"] is None and rows[i]["tokens"] is None
            continue
        total, tokens = nll_per_document(model, tokenizer, [text])  # alone: no padding
        assert rows[i]["tokens"] == tokens[0]
        if tokens[0] == 0:  # one token: nothing to predict
            assert rows[i]["nll"] is None and rows[i]["perplexity"] is None
        else:
            assert rows[i]["nll"] == pytest.approx(total[0] / tokens[0], rel=1e-5)
            assert rows[i]["perplexity"] == pytest.approx(math.exp(total[0] / tokens[0]), rel=1e-5)


def test_parquet_csv_and_jsonl_inputs_give_the_same_output(tmp_path, lm_base, inputs):
    tables = {kind: _run(tmp_path, lm_base, path, "score", f"{kind}.parquet",
                         id_column="key")[1] for kind, path in inputs.items()}
    assert tables["csv"].equals(tables["parquet"])
    assert tables["jsonl"].equals(tables["parquet"])


def test_an_adapter_scores_as_peft_does_and_the_router_as_the_routed_model(tmp_path, lm_library,
                                                                          inputs):
    from modelgit.route import load
    from modelgit.route.router import Decision

    routed = load(lm_library["router"])
    present = [t for t in TEXTS if t is not None]
    _, alone = _run(tmp_path, lm_library["router"], inputs["jsonl"], "score", "cats.parquet",
                    adapter="cats")
    assert set(alone.column("adapter").to_pylist()) == {"cats", None}  # None: the null text
    want = routed.score(present, batch_size=1,
                        decisions=[Decision("cats", 1.0, {"cats": 1.0}, {})] * len(present))
    got = [r for r in alone.to_pylist() if r["tokens"] is not None]
    assert [r["tokens"] for r in got] == [w.tokens for w in want]
    for row, expected in zip(got, want):
        if row["nll"] is not None:
            assert row["nll"] == pytest.approx(expected.nll, rel=1e-4)
    _, base = _run(tmp_path, lm_library["router"], inputs["jsonl"], "score", "base.parquet")
    assert set(base.column("adapter").drop_null().to_pylist()) == {"base"}
    assert base.column("nll").to_pylist() != alone.column("nll").to_pylist()

    _, routed_table = _run(tmp_path, lm_library["router"], inputs["jsonl"], "score",
                           "routed.parquet", router=True)
    decisions = routed.route(present)
    assert [r["adapter"] for r in routed_table.to_pylist() if r["tokens"] is not None] == \
        [d.adapter for d in decisions]
    assert {d.adapter for d in decisions} == {"cats", "birds"}  # both are used
    want = routed.score(present, batch_size=1)
    for row, expected in zip([r for r in routed_table.to_pylist() if r["tokens"] is not None],
                             want):
        if row["nll"] is not None:
            assert row["nll"] == pytest.approx(expected.nll, rel=1e-4)


def test_generate_continues_each_prompt_greedily(tmp_path, lm_library, inputs):
    from modelgit.adapters.loading import load_model, load_tokenizer

    _, table = _run(tmp_path, lm_library["base"], inputs["parquet"], "generate",
                    adapter=lm_library["birds"], max_new_tokens=4)
    assert table.column_names == ["row", "generation"]
    tokenizer = load_tokenizer(lm_library["base"])
    model = load_model(lm_library["base"], "causal_lm", adapter_dir=lm_library["birds"],
                       pad_token_id=tokenizer.pad_token_id)
    rows = table.column("generation").to_pylist()
    for i in (0, 5, 13, 18):
        batch = tokenizer([TEXTS[i]], return_tensors="pt")
        batch.pop("token_type_ids", None)
        out = model.generate(**batch, max_new_tokens=4, do_sample=False,
                             pad_token_id=tokenizer.pad_token_id)
        assert rows[i] == tokenizer.decode(out[0, batch["input_ids"].shape[1]:],
                                           skip_special_tokens=True)
    assert rows[16] is None
    assert all(isinstance(r, str) and r for i, r in enumerate(rows) if i != 16)


def test_classify_with_an_adapter_and_the_router(tmp_path, cls_library, inputs):
    import torch

    from modelgit.adapters.loading import load_model, load_tokenizer
    from modelgit.route import load

    _, table = _run(tmp_path, cls_library["router"], inputs["csv"], "classify",
                    adapter="tone", id_column="key")
    assert table.column_names == ["row", "key", "label", "label_id", "probability", "adapter"]
    tokenizer = load_tokenizer(cls_library["base"])
    model = load_model(cls_library["base"], "classification", adapter_dir=cls_library["tone"])
    for row in table.to_pylist():
        text = TEXTS[row["row"]]
        if text is None:
            assert row["label"] is None
            continue
        with torch.no_grad():
            probs = torch.softmax(model(**tokenizer([text], return_tensors="pt")).logits, -1)[0]
        assert row["label_id"] == int(probs.argmax())
        assert row["label"] == ("neg", "pos")[row["label_id"]]
        assert row["probability"] == pytest.approx(float(probs.max()), rel=1e-4)
    _, routed = _run(tmp_path, cls_library["router"], inputs["csv"], "classify", "r.parquet",
                     router=True)
    present = [t for t in TEXTS if t is not None]
    want = load(cls_library["router"]).classify(present, batch_size=1)
    got = [r for r in routed.to_pylist() if r["label"] is not None]
    assert [(r["label"], r["adapter"]) for r in got] == [(w.label, w.decision.adapter) for w in want]


def test_embed_mean_pools_the_last_hidden_states(tmp_path, lm_base, cls_base, inputs):
    import pyarrow as pa
    import torch

    from modelgit.adapters.loading import load_model, load_tokenizer

    for base, task in ((lm_base, "causal_lm"), (cls_base, "classification")):
        _, table = _run(tmp_path, base, inputs["parquet"], "embed", f"{task}.parquet")
        assert table.schema.field("embedding").type.value_type == pa.float32()
        tokenizer = load_tokenizer(base)
        model = load_model(base, task)
        rows = table.column("embedding").to_pylist()
        assert rows[16] is None
        for i in (0, 3, 17, 22):
            batch = tokenizer([TEXTS[i]], return_tensors="pt")
            if task == "causal_lm":
                batch.pop("token_type_ids", None)
            with torch.no_grad():
                hidden = model(**batch, output_hidden_states=True).hidden_states[-1][0]
            np.testing.assert_allclose(rows[i], hidden.mean(0).numpy(), rtol=1e-4, atol=1e-5)


def test_limit_and_long_texts(tmp_path, lm_base, inputs):
    result, table = _run(tmp_path, lm_base, inputs["parquet"], "score", limit=7, max_length=4)
    assert table.num_rows == 7 and result.batches == 2
    assert max(table.column("tokens").to_pylist()) == 3  # 4 tokens: 3 predicted
    assert result.truncated == sum(1 for t in TEXTS[:7] if len(t.split()) + 1 > 4)
    _, small = _run(tmp_path, lm_base, inputs["parquet"], "score", "small.parquet",
                    tokens_per_pass=8)  # one text per pass: the same numbers
    _, large = _run(tmp_path, lm_base, inputs["parquet"], "score", "large.parquet")
    np.testing.assert_allclose(np.array(small.column("nll").to_pylist(), dtype=float),
                               np.array(large.column("nll").to_pylist(), dtype=float), rtol=1e-5)


def test_errors_say_what_to_do(tmp_path, lm_base, lm_library, inputs):
    with pytest.raises(UsageError, match=r"has no column 'txt' \(did you mean 'text'\?\); its "
                                         r"columns: key, text, other: give --text-column"):
        _run(tmp_path, lm_base, inputs["parquet"], "score", text_column="txt")
    with pytest.raises(UsageError, match="column 'key' holds int64, not text"):
        _run(tmp_path, lm_base, inputs["parquet"], "score", text_column="key")
    garbage = tmp_path / "bad.parquet"
    garbage.write_bytes(b"not a parquet file at all" * 10)
    with pytest.raises(FormatError, match="cannot be read as parquet"):
        _run(tmp_path, lm_base, str(garbage), "score")
    with pytest.raises(UsageError, match="--task classify needs a classification model; this one "
                                         "is a language model: use --task generate or score or embed"):
        _run(tmp_path, lm_library["router"], inputs["parquet"], "classify", router=True)
    with pytest.raises(UsageError, match="is not a classifier .*: classify needs a sequence-"
                                         "classification model or a classification adapter"):
        _run(tmp_path, lm_base, inputs["parquet"], "classify")
    with pytest.raises(UsageError, match="the library has no adapter 'cat' \\(did you mean 'cats'"):
        _run(tmp_path, lm_library["router"], inputs["parquet"], "score", adapter="cat")
    with pytest.raises(UsageError, match="unknown task 'scores' \\(did you mean 'score'\\?\\)"):
        _run(tmp_path, lm_base, inputs["parquet"], "scores")
    (tmp_path / "texts.txt").write_text("a text\n")
    with pytest.raises(UsageError, match="cannot tell the format of .*texts.txt from its suffix "
                                         ".txt: name it .parquet, .csv, .tsv or .jsonl, or give "
                                         "--format"):
        _run(tmp_path, lm_base, str(tmp_path / "texts.txt"), "score")
    _run(tmp_path, lm_base, inputs["parquet"], "score", "exists.parquet")
    with pytest.raises(UsageError, match="already exists; pass --force"):
        _run(tmp_path, lm_base, inputs["parquet"], "score", "exists.parquet")
    with pytest.raises(UsageError, match="--router needs a repository"):
        _run(tmp_path, lm_base, inputs["parquet"], "score", router=True)
