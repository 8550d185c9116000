"""The Hugging Face model card of a release: ``README.md`` with YAML front matter.

The metadata follows the Hub's model-card spec (https://huggingface.co/docs/hub/model-cards and
https://github.com/huggingface/hub-docs/blob/main/modelcard.md): ``base_model`` with
``base_model_relation: merge`` (the Hub knows ``adapter``, ``merge``, ``quantized`` and
``finetune``), ``library_name``, ``pipeline_tag``, ``tags`` and a ``model-index`` whose results
``huggingface_hub`` reads back as one ``EvalResult`` per held-out suite. It is written canonically
(keys sorted at every level, lists in the order the release recorded them), so equal releases give
equal bytes.

The body credits every contribution and says how to rebuild the weights, but never carries a word
of training or evaluation data: only the data cards' record counts, sizes and SHA-256 digests.
"""

from __future__ import annotations

import json
import math
import re

import yaml

from ..errors import UsageError

__all__ = ["render_model_card", "card_metadata"]

_PIPELINE_TAGS = {"causal_lm": "text-generation", "classification": "text-classification"}

#: modelgit metric -> (Hub metric id from hf.co/metrics, display name, metric args)
_HUB_METRICS = {
    "perplexity": ("perplexity", "Perplexity", None),
    "accuracy": ("accuracy", "Accuracy", None),
    "macro_f1": ("f1", "Macro F1", {"average": "macro"}),
    "f1": ("f1", "F1", None),
}

_LOWER_IS_BETTER = {"perplexity", "loss"}

# The Hub's repo-id rule (huggingface_hub.utils.validate_repo_id): an optional namespace and a
# name of word characters, "-" and ".", at most 96 characters, no "--" or "..".
_REPO_ID = re.compile(r"^(\b[\w\-.]+\b/)?\b[\w\-.]{1,96}\b$")

_SHORT = 12  # hex characters shown for commits and content ids in tables


def card_metadata(release: dict) -> dict:
    """The YAML front matter of the release's card, as a dict with keys sorted at every level.

    ``base_model`` (and ``base_model_relation: merge``) appear only when the release names a base
    that is a valid Hub repo id; a local path is described in the body instead. ``model-index``
    holds one result per suite with a finite value, under the Hub's metric ids (``perplexity``,
    ``accuracy``, ``f1`` with ``average: macro`` for macro-F1).

    Args:
        release: the release record (see :func:`render_model_card`).
    Returns:
        A dict ready for ``yaml.safe_dump``: only str, int, float, bool, list and dict values.
    Raises:
        UsageError: the release lacks ``name`` or ``tag``, or a list field is not a list.
    """
    _check(release)
    meta: dict = {"library_name": "transformers"}
    base = release.get("base_model")
    if _is_repo_id(base):
        meta["base_model"] = base
        meta["base_model_relation"] = "merge"
    pipeline = _PIPELINE_TAGS.get(release.get("task"))
    if pipeline:
        meta["pipeline_tag"] = pipeline
    if release.get("license"):
        meta["license"] = str(release["license"])
    if release.get("language"):
        language = release["language"]
        languages = [language] if isinstance(language, str) else language
        meta["language"] = [str(code) for code in languages]
    method = release.get("method")
    tags = ["modelgit", "merge", "lora"] + ([str(method).lower()] if method else [])
    meta["tags"] = list(dict.fromkeys(tags))
    results = [entry for entry in map(_model_index_result, _list(release, "results")) if entry]
    if results:
        meta["model-index"] = [{"name": str(release["name"]), "results": results}]
    return _sorted(meta)


def render_model_card(release: dict) -> str:
    """Render the card of a release: YAML front matter, then Markdown.

    Args:
        release: ``name``, ``tag`` and optionally ``date``, ``commit`` (the previous base),
            ``base_model``, ``task``, ``license``, ``language``, ``method``, ``parameters``,
            ``recipe`` (mergekit YAML text), ``search``, ``contributions``, ``results`` and
            ``lineage`` (earlier releases, oldest first), as ``modelgit release`` records them.
    Returns:
        The text of ``README.md``, ending in a newline. Equal releases give equal text.
    Raises:
        UsageError: as :func:`card_metadata`.
    """
    meta = card_metadata(release)
    front = yaml.safe_dump(meta, sort_keys=True, allow_unicode=True, default_flow_style=False,
                           width=4096)
    sections = [_summary(release), _results_section(release), _contributions_section(release),
                _library_section(release),
                _recipe_section(release), _search_section(release), _pretraining_section(release),
                _lineage_section(release),
                _build_section(release)]
    body = "\n\n".join(section for section in sections if section)
    return f"---\n{front}---\n\n{body}\n"


# -- metadata ---------------------------------------------------------------------------------


def _check(release) -> None:
    if not isinstance(release, dict):
        raise UsageError(f"a release must be a dict, got {type(release).__name__}")
    problems = [f"missing '{key}'" for key in ("name", "tag") if not release.get(key)]
    problems += [f"'{key}' must be a list, got {type(release[key]).__name__}"
                 for key in ("contributions", "results", "lineage")
                 if release.get(key) is not None and not isinstance(release[key], list)]
    if problems:
        raise UsageError("cannot write the model card: the release record has "
                         + "; ".join(problems) + " (re-run `modelgit release` to record it again)")


def _list(release: dict, key: str) -> list:
    return release.get(key) or []


def _is_repo_id(name) -> bool:
    return (isinstance(name, str) and bool(_REPO_ID.match(name)) and "--" not in name
            and ".." not in name and not name.endswith(".git"))


def _model_index_result(result: dict) -> dict | None:
    value = _plain(result.get("value"))
    if not isinstance(value, (int, float)) or isinstance(value, bool) or not math.isfinite(value):
        return None  # the Hub wants a number; the body still shows the row
    metric = str(result.get("metric", ""))
    hub_type, hub_name, args = _HUB_METRICS.get(metric, (metric, metric, None))
    entry = {"type": hub_type, "value": float(value), "name": f"{hub_name} (held-out)"}
    if args:
        entry["args"] = dict(args)
    suite = str(result.get("suite"))
    task = _PIPELINE_TAGS.get(result.get("task"), "text-generation")
    return {"task": {"type": task}, "dataset": {"name": suite, "type": suite}, "metrics": [entry]}


def _plain(value):
    """Numpy and torch scalars as Python numbers, so YAML and JSON can write them."""
    if hasattr(value, "item") and not isinstance(value, (bool, int, float, str)):
        return value.item()
    return value


def _sorted(value):
    if isinstance(value, dict):
        return {key: _sorted(value[key]) for key in sorted(value)}
    if isinstance(value, list):
        return [_sorted(item) for item in value]
    return value


# -- formatting helpers -----------------------------------------------------------------------


def _num(value) -> str:
    """A table number: 4 decimals, or 4 significant digits when huge (as `modelgit eval`)."""
    value = _plain(value)
    if value is None:
        return "—"
    if isinstance(value, float):
        if not math.isfinite(value):
            return str(value)
        text = f"{value:.4f}" if abs(value) < 1e6 else f"{value:.4g}"
        return "0.0000" if text == "-0.0000" else text
    return str(value)


def _cell(value) -> str:
    """Text that cannot break a Markdown table row or open an HTML tag."""
    if value is None or value == "":
        return "—"
    text = " ".join(str(value).split())
    return text.replace("|", "\\|").replace("<", "&lt;").replace(">", "&gt;")


def _code(value, short: bool = False) -> str:
    if not value:
        return "—"
    text = str(value)[:_SHORT] if short else str(value)
    return f"`{text.replace('`', '')}`"


def _author(author) -> str:
    """The author's name without the e-mail address: the card is public, the address need not be."""
    return re.sub(r"\s*<[^>]*>\s*$", "", str(author or "")).strip()


def _table(header: list[str], rows: list[list[str]], align: str = "") -> str:
    rule = [("---:" if align[i:i + 1] == "r" else "---") for i in range(len(header))]
    lines = [header, rule] + rows
    return "\n".join("| " + " | ".join(line) + " |" for line in lines)


def _fence(text: str, lang: str) -> str:
    longest = max((len(run) for run in re.findall(r"`+", text)), default=0)
    fence = "`" * max(3, longest + 1)
    return f"{fence}{lang}\n{text.rstrip()}\n{fence}"


def _json(value) -> str:
    return json.dumps(value, sort_keys=True, ensure_ascii=False, separators=(", ", ": "),
                      default=_plain)


def _size(n) -> str:
    if not isinstance(n, int) or isinstance(n, bool):
        return _cell(n)
    for unit in ("B", "KiB", "MiB", "GiB"):
        if n < 1024 or unit == "GiB":
            return f"{n} B" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    return f"{n} B"  # unreachable


def _names(contributions) -> str:
    names = [c.get("name") if isinstance(c, dict) else c for c in contributions or []]
    return ", ".join(_cell(name) for name in names) if names else "—"


# -- body -------------------------------------------------------------------------------------


def _summary(release: dict) -> str:
    name, tag = _cell(release["name"]), _cell(release["tag"])
    count = len(_list(release, "contributions"))
    base = release.get("base_model")
    if base and _is_repo_id(base):
        base_text = f"[`{base}`](https://huggingface.co/{base})"
    else:
        base_text = _code(base) if base else "its base model"
    if count:
        plural = "contribution" if count == 1 else "contributions"
        what = (f"merges {count} accepted LoRA {plural} into {base_text} with the "
                f"{_code(release.get('method'))} method")
    else:
        what = f"carries no merged contributions: its weights are those of {base_text}"
    when = f", released {_cell(release['date'])}" if release.get("date") else ""
    review = (" Each contribution was reviewed blind on held-out evaluation suites before it "
              "was accepted." if count else "")
    return (f"# {name} {tag}\n\nRelease **{tag}** of **{name}** {what}{when}.{review} "
            f"The release was built and recorded by modelgit.")


def _change(result: dict) -> str:
    value, base = _plain(result.get("value")), _plain(result.get("base_value"))
    if not all(isinstance(x, (int, float)) and math.isfinite(x) for x in (value, base)):
        return "—"
    delta = value - base
    higher = result.get("higher_is_better")
    if higher is None:
        higher = result.get("metric") not in _LOWER_IS_BETTER
    verdict = "same" if delta == 0 else ("better" if (delta > 0) == bool(higher) else "worse")
    relative = f" ({100 * delta / abs(base):+.2f}%)" if base else ""
    sign = "+" if delta >= 0 else ""
    return f"{sign}{_num(float(delta))}{relative} {verdict}"


def _span(value, percent: bool = False) -> str:
    """`` [low, high]`` of a recorded interval (a pair of finite numbers), else ""."""
    value = _plain(value)
    if not (isinstance(value, list) and len(value) == 2
            and all(isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)
                    for v in value)):
        return ""
    if percent:
        return f" [{100 * value[0]:+.2f}%, {100 * value[1]:+.2f}%]"
    return f" [{_num(float(value[0]))}, {_num(float(value[1]))}]"


def _level(rows) -> str:
    levels = {_plain(r.get("confidence")) for r in rows if _span(r.get("interval"))}
    level = next(iter(levels)) if len(levels) == 1 else None
    return f"{level:.0%}" if isinstance(level, float) and 0 < level < 1 else "95%"


def _results_section(release: dict) -> str:
    results = _list(release, "results")
    if not results:
        return "## Evaluation\n\nNo held-out suite was evaluated for this release."
    rows = []
    for r in results:
        higher = r.get("higher_is_better")
        if higher is None:
            higher = r.get("metric") not in _LOWER_IS_BETTER
        arrow = "↑" if higher else "↓"
        rows.append([_cell(r.get("suite")), f"{_cell(r.get('metric'))} {arrow}",
                     _num(r.get("base_value")), _num(r.get("value")) + _span(r.get("interval")),
                     _change(r) + _span(r.get("gain_interval"), percent=True)])
    table = _table(["suite", "metric", "base", "release", "change"], rows, "llrrr")
    shown = any(_span(r.get("interval")) for r in results)
    note = (f" Brackets: {_level(results)} bootstrap intervals over the suite's documents (of "
            "the release's score, and of its relative gain over the base, both resampled on "
            "the same documents)." if shown else "")
    return ("## Evaluation\n\nHeld-out suites kept by the maintainers (never seen by "
            f"contributors); ↑ higher is better, ↓ lower is better.{note}\n\n" + table
            + _comparison_section(release))


def _comparison_section(release: dict) -> str:
    comparison = release.get("comparison")
    if not isinstance(comparison, dict) or not isinstance(comparison.get("methods"), list):
        return ""
    rows = []
    for m in comparison["methods"]:
        if not isinstance(m, dict):
            continue
        gains = ", ".join(f"{_cell(r.get('suite'))} {100 * r['gain']:+.2f}%"
                          for r in m.get("results") or [] if isinstance(r, dict)
                          and isinstance(_plain(r.get("gain")), (int, float))
                          and math.isfinite(_plain(r["gain"])))
        chosen = " (released)" if m.get("method") == comparison.get("chosen") else ""
        rows.append([_cell(m.get("method")) + chosen, _num(m.get("objective")), gains or "—"])
    return ("\n\n### Methods compared\n\nEach method merged the same contributions; the one "
            f"with the best {_cell(comparison.get('basis'))} was released.\n\n"
            + _table(["method", "objective", "gain per suite"], rows, "lrl"))


def _review_score(contribution: dict) -> str:
    review = contribution.get("review") or {}
    score = (review.get("scores") or {}).get(review.get("target_suite")) or {}
    if not score:
        return "—"
    return (f"{_num(score.get('base'))} → {_num(score.get('adapter'))}"
            + _span(score.get("gain_interval"), percent=True))


def _contributions_section(release: dict) -> str:
    contributions = _list(release, "contributions")
    if not contributions:
        return "## Contributions\n\nNone: this release merges no adapters."
    rows, cards = [], []
    for c in contributions:
        review = c.get("review") or {}
        alpha = f" (α {_num(c['alpha'])})" if c.get("alpha") is not None else ""
        rows.append([_cell(c.get("name")), _cell(_author(c.get("author"))),
                     _code(c.get("adapter_id"), short=True), f"{_num(c.get('rank'))}{alpha}",
                     _cell(", ".join(map(str, c.get("target_modules") or [])) or None),
                     _cell(review.get("target_suite")), _review_score(c)])
        card = c.get("data_card") or {}
        cards.append([_cell(c.get("name")), _num(card.get("records")),
                      _size(card.get("bytes")) if card.get("bytes") is not None else "—",
                      _code(card.get("sha256"))])
    header = ["contribution", "author", "adapter", "rank", "targets", "target suite",
              "review: base → adapter"]
    return ("## Contributions\n\n" + _table(header, rows) + "\n\n"
            "### Training data\n\nThe training data stays with its contributors; only its data "
            "card is recorded.\n\n" + _table(["contribution", "records", "size", "sha256"], cards,
                                             "lrrl"))


def _own_gain(adapter: dict) -> str:
    """The adapter's relative gain on its own domain at review, with its interval."""
    score = (adapter.get("scores") or {}).get(adapter.get("domain")) or {}
    gain = _plain(score.get("gain"))
    if not isinstance(gain, (int, float)) or isinstance(gain, bool) or not math.isfinite(gain):
        return "—"
    return f"{100 * gain:+.2f}%" + _span(score.get("gain_interval"), percent=True)


def _library_section(release: dict) -> str:
    library = release.get("library")
    if not isinstance(library, dict):
        return ""
    base = library.get("base") or {}
    adapters = [a for a in library.get("adapters") or [] if isinstance(a, dict)]
    refused = [r for r in library.get("refused") or [] if isinstance(r, dict)]
    where = _code(base.get("tag")) if base.get("tag") else _code(base.get("commit"), short=True)
    text = [f"## Adapter library\n\nAdapters reviewed on the weights of {where} (fingerprint "
            f"{_code(base.get('fingerprint'), short=True)}), each available beside the merged "
            "weights (`modelgit adapters --rev " + _cell(release["tag"]) + "`; fetch with "
            "`modelgit adapters fetch`). *accept*: merged into the weights; *specialist*: kept "
            "apart, reached through the router."]
    if adapters:
        rows = [[_cell(a.get("name")), _cell(a.get("domain")), _cell(a.get("decision")),
                 _own_gain(a), _code(a.get("adapter_id"), short=True)] for a in adapters]
        text.append(_table(["adapter", "domain", "decision", "gain on its domain", "adapter"],
                           rows, "lllrl"))
    else:
        text.append("No adapter was reviewed on these weights.")
    if refused:
        text.append("Not in the library:\n\n" + "\n".join(
            f"- {_cell(r.get('name'))}: {_cell(r.get('reason'))}" for r in refused))
    router = library.get("router")
    if isinstance(router, dict):
        text.append(_router_text(router))
    return "\n\n".join(text)


def _router_text(router: dict) -> str:
    threshold = _plain(router.get("threshold"))
    line = (f"### Router\n\nA {_code(router.get('kind'))} router ({_cell(router.get('mode'))} "
            f"routing, threshold {_num(threshold) if threshold is not None else 'none'}) sends "
            f"each input to one of the library's adapters or to the base: "
            f"{_code(router.get('path'))} (`modelgit.route.load(repo, rev)`).")
    rows = [[_cell(e.get("suite")), _num(e.get("base")), _num(e.get("oracle")),
             _num(e.get("merged")), _num(e.get("router")),
             f"{100 * e['accuracy']:.0f}%" if isinstance(e.get("accuracy"), (int, float)) else "—"]
            for e in router.get("evaluation") or [] if isinstance(e, dict)]
    if rows:
        line += ("\n\nOn the held-out suites (oracle: the best single adapter per suite; "
                 "accuracy: inputs routed where the oracle goes):\n\n"
                 + _table(["suite", "base", "oracle", "release", "router", "accuracy"], rows,
                          "lrrrrr"))
    return line


def _recipe_section(release: dict) -> str:
    method = release.get("method")
    recipe = release.get("recipe")
    if not recipe:
        if not method and not release.get("parameters"):
            return ""
        recipe = yaml.safe_dump(_sorted({"merge_method": method,
                                         "parameters": release.get("parameters") or {}}),
                                allow_unicode=True, default_flow_style=False)
    return (f"## Merge recipe\n\nMethod {_code(method)}. The exact recipe that built the "
            f"weights:\n\n" + _fence(str(recipe), "yaml"))


def _search_section(release: dict) -> str:
    search = release.get("search")
    if not search:
        return ""
    trials = search.get("trials") or []
    lines = [f"## Weight search\n\nObjective: {_cell(search.get('objective'))}; "
             f"{len(trials)} {'trial' if len(trials) == 1 else 'trials'}."]
    best = search.get("best")
    if best:
        if isinstance(best, dict) and "params" in best:
            score = _num(best.get("score"))
            lines.append(f"Best: {_code(_json(best.get('params')))} with score {score}.")
        else:
            lines.append(f"Best: {_code(_json(best))}.")
    if trials:
        rows = [[str(i), _code(_json(t.get("params"))), _num(t.get("score"))]
                for i, t in enumerate(trials, 1)]
        lines.append(_table(["trial", "params", "score"], rows, "rlr"))
    return "\n\n".join(lines)


def _pretraining_section(release: dict) -> str:
    pre = release.get("pretraining")
    if not pre:
        return ""
    card = pre.get("data_card") or {}
    lr = pre.get("lr")
    return ("## Continued pretraining\n\nAfter the merge, every weight was trained further on the "
            f"maintainers' data ({_num(card.get('records'))} records, {_size(card.get('bytes'))}, "
            f"sha256 {_code(card.get('sha256'), short=True)}): {pre.get('steps')} steps at learning "
            f"rate {format(lr, 'g') if isinstance(lr, (int, float)) else _cell(lr)}, training loss "
            f"{_num(pre.get('start_loss', pre.get('first_loss')))} → "
            f"{_num(pre.get('final_loss', pre.get('last_loss')))}"
            + (f" (each the mean of {_num(pre.get('loss_window'))} steps)." if pre.get("loss_window")
               else "."))


def _lineage_section(release: dict) -> str:
    rows = [[_cell(e.get("tag")), _cell(e.get("date")), _code(e.get("commit"), short=True),
             _code(e.get("method")), _names(e.get("contributions"))]
            for e in _list(release, "lineage")]
    rows.append([f"**{_cell(release['tag'])}** (this release)", _cell(release.get("date")),
                 _code(release.get("commit"), short=True), _code(release.get("method")),
                 _names(_list(release, "contributions"))])
    return ("## Lineage\n\nReleases of this model, oldest first (commit: the base each release "
            "started from).\n\n" + _table(["release", "date", "commit", "method",
                                          "contributions"], rows))


def _build_section(release: dict) -> str:
    inputs = []
    if release.get("base_model"):
        at = f" at commit {_code(release['commit'])}" if release.get("commit") else ""
        inputs.append(f"- base: {_code(release['base_model'])}{at}")
    elif release.get("commit"):
        inputs.append(f"- base: commit {_code(release['commit'])}")
    for c in _list(release, "contributions"):
        commit = f" (commit {_code(c['commit'])})" if c.get("commit") else ""
        inputs.append(f"- {_cell(c.get('name'))}: adapter {_code(c.get('adapter_id'))}{commit}")
    for r in _list(release, "results"):
        examples = f"{r['examples']} examples, " if r.get("examples") is not None else ""
        inputs.append(f"- held-out suite {_cell(r.get('suite'))}: {examples}"
                      f"data sha256 {_code(r.get('data_sha256'))}")
    text = ("## How it was built\n\nBuilt with modelgit (`modelgit release`). The weights are "
            "reproducible from the recorded merge recipe and its inputs")
    text += (", named here by their content ids and commits:\n\n" + "\n".join(inputs)
             if inputs else ".")
    return (text + "\n\nNo training or evaluation data is part of this release or this card: "
            "data is described only by record counts, sizes and SHA-256 digests.")
