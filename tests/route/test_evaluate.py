"""route eval: the table's rows, the oracle, routing accuracy, the cost figure."""

from __future__ import annotations

import pytest

from modelgit.eval import SuiteConfig
from modelgit.route import BuildRequest, RoutedModel, build_router, evaluate_routers, format_report

from route_texts import ANIMALS, CODE


@pytest.fixture(scope="module")
def report(domains, library, runtime):
    models = [RoutedModel(build_router(library, request, runtime), library, runtime=runtime)
              for request in (BuildRequest("arrow", layers=2),
                              BuildRequest("examples", examples={"animals": ANIMALS, "code": CODE},
                                           threshold=None))]
    suites = [SuiteConfig(name=n, data=domains["files"][n], task="causal_lm", metric="perplexity")
              for n in ("animals", "code", "shop")]
    return evaluate_routers(models, suites, merged=domains["animals"].rsplit("/", 1)[0] + "/base",
                            labels=["arrow", "examples"], cost_samples=2)


def test_rows_oracle_and_accuracy(report, domains):
    from modelgit.eval import evaluate_suite

    by_suite = {s["suite"]: s for s in report["suites"]}
    animals, code = by_suite["animals"], by_suite["code"]
    assert animals["oracle"] == "animals" and code["oracle"] == "code"
    rows = list(animals["values"])
    assert rows[:5] == ["base", "adapter animals", "adapter code", "oracle", "merged"]
    assert {"router arrow hard", "router arrow soft", "router examples hard",
            "router examples soft"} <= set(rows)
    assert animals["values"]["oracle"] == animals["values"]["adapter animals"]
    assert animals["values"]["merged"] == pytest.approx(animals["values"]["base"], rel=1e-5)
    for suite in (animals, code):
        assert suite["routing_accuracy"]["router examples hard"] == 1.0
        assert suite["values"]["router examples hard"] == pytest.approx(suite["values"]["oracle"],
                                                                        rel=1e-5)
        assert suite["gain_kept"]["router examples hard"] == pytest.approx(1.0, abs=1e-4)
    shop = by_suite["shop"]
    expected = evaluate_suite(report["library"]["base"], None, SuiteConfig(
        name="shop", data=domains["files"]["shop"], task="causal_lm", metric="perplexity"))["value"]
    assert shop["values"]["base"] == pytest.approx(expected, rel=1e-5)


def test_cost_is_a_ratio_of_cpu_times(report):
    for label in ("arrow", "examples"):
        cost = report["cost"][label]
        assert cost["inputs"] == 6 and cost["router_cpu_s"] > 0 and cost["base_cpu_s"] > 0
        assert cost["ratio"] == pytest.approx(cost["router_cpu_s"] / cost["base_cpu_s"])


def test_the_table_shows_every_row_and_column(report):
    table = format_report(report)
    lines = table.splitlines()
    assert lines[0].split()[:2] == ["model", "animals"] and "accuracy" in lines[0]
    assert any(line.startswith("oracle") and "[animals]" in line for line in lines)
    router = next(line for line in lines if line.startswith("router examples hard"))
    assert "(100%)" in router and router.rstrip().endswith("%")


def test_hard_rows_reuse_per_text_scores_and_equal_a_routed_pass(domains, library, runtime):
    """A hard router's value is assembled from the per-text scores each target gave alone; it
    must equal scoring the suite through the routed model (mixed adapters in one batch)."""
    import math

    from modelgit.route.router import Decision

    model = RoutedModel(build_router(library, BuildRequest("arrow", layers=2), runtime), library,
                        runtime=runtime)
    texts = domains["texts"]["animals"] + domains["texts"]["code"]
    path = domains["files"]["animals"].rsplit("/", 1)[0] + "/mixed.txt"
    with open(path, "w", encoding="utf-8") as handle:
        handle.write("\n".join(texts) + "\n")
    suite = SuiteConfig(name="mixed", data=path, task="causal_lm", metric="perplexity")
    # every other text to each adapter, the rest to the base: a mixed batch of three targets
    targets = ["animals", "code", "base"]
    decisions = [Decision(t, 1.0, {} if t == "base" else {t: 1.0})
                 for t in (targets[i % 3] for i in range(len(texts)))]

    class Fixed(RoutedModel):
        def route(self, texts):
            return decisions[:len(texts)]

        def with_settings(self, **_):
            return self

    fixed = Fixed(model.router, library, runtime=runtime)
    report = evaluate_routers([fixed], [suite], modes=("hard",), labels=["fixed"], cost_samples=0)
    value = report["suites"][0]["values"]["router fixed hard"]
    scored = model.score(texts, 8, decisions)
    direct = math.exp(sum(s.nll * s.tokens for s in scored) / sum(s.tokens for s in scored))
    assert value == pytest.approx(direct, rel=1e-5)
    assert report["suites"][0]["chosen"]["router fixed hard"] == {
        t: sum(d.adapter == t for d in decisions) for t in targets}
