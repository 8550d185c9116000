"""The server side: the loop of rounds, each screened, aggregated, evaluated and committed.

:func:`run_rounds` drives one run over any Flower ``Grid`` (the simulation's or a SuperLink's):
it opens or resumes the run (:mod:`.history`), and for each round sends the global LoRA
(:class:`.strategy.ModelgitStrategy`), waits up to the timeout for replies, aggregates, writes
the aggregate as a PEFT adapter, evaluates it on the maintainer's suites and commits it. A round
that fails (too few clients) raises before its commit, so the branch keeps the last good round.
"""

from __future__ import annotations

import os
import sys
import time
from dataclasses import dataclass, fields
from logging import getLogger

from flwr.app import ConfigRecord, Context
from flwr.serverapp import Grid, ServerApp

from ..errors import UsageError
from .best import best_round, round_history
from .config import FederateConfig
from .history import RunState, branch_of, commit_round, open_run
from .local import base_fingerprint, write_lora_dir
from .payload import array_bytes, arrays_to_lora, lora_to_arrays
from .strategy import ModelgitStrategy

__all__ = ["FederateResult", "run_rounds", "make_server_app", "app", "config_from_run_config"]

_LOG = getLogger("modelgit.federate")


@dataclass(frozen=True)
class FederateResult:
    """A run's outcome: its branch, the rounds committed now, where it started from."""

    run: str
    branch: str
    resumed_from: int  # the first round this invocation ran (1: a new run)
    rounds: tuple[dict, ...]  # the round records committed by this invocation
    base_evaluation: tuple[dict, ...]
    best: dict | None = None  # the best round of the whole branch by the suites (.best)


def _say(text: str) -> None:
    print(f"federate: {text}", file=sys.stderr, flush=True)


def _wait_for_nodes(grid: Grid, count: int, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while len(list(grid.get_node_ids())) < count:
        if time.monotonic() > deadline:
            raise UsageError(f"only {len(list(grid.get_node_ids()))} client(s) connected within "
                             f"{timeout:g} s, {count} needed: start more SuperNodes or lower "
                             "--min-clients")
        time.sleep(0.5)


def _evaluate(repo, base_dir: str, adapter_dir: str | None, suites, fingerprint: str) -> list[dict]:
    from ..eval import evaluate_suites, without_documents
    from ..workflow.basecache import evaluate_base

    results = evaluate_base(repo, base_dir, fingerprint, suites) if adapter_dir is None else \
        evaluate_suites(base_dir, adapter_dir, suites)
    return [{"suite": r["suite"], "metric": r["metric"], "value": r["value"],
             "interval": r.get("interval"), "examples": r.get("examples")}
            for r in without_documents(results)]


@dataclass(frozen=True)
class _Run:
    """What the loop carries from round to round."""

    repo: object
    config: FederateConfig
    base_dir: str
    fingerprint: str
    suites: list
    scratch: str
    base_record: dict


def _one_round(run: _Run, strategy: ModelgitStrategy, grid: Grid, state: RunState, arrays,
               number: int) -> tuple[dict, object, str]:
    cfg = run.config
    began = time.monotonic()
    messages = strategy.configure_train(number, arrays, ConfigRecord(), grid)
    replies = grid.send_and_receive(messages, timeout=cfg.timeout)
    merged, _ = strategy.aggregate_train(number, replies)
    adapter = write_lora_dir(os.path.join(run.scratch, f"round-{number}"), arrays_to_lora(merged),
                             cfg.rank, cfg.alpha)
    evaluation = _evaluate(run.repo, run.base_dir, adapter, run.suites, run.fingerprint) \
        if run.suites else []
    record = {"run": cfg.run, "round": number, "method": cfg.method, "recipe": cfg.recipe(),
              **run.base_record, **strategy.report.to_dict(), "evaluation": evaluation,
              "seconds": round(time.monotonic() - began, 3)}
    commit = commit_round(run.repo, state, record, adapter, run.scratch)
    return record, merged, commit


def _summary(record: dict) -> str:
    scores = ", ".join(f"{e['suite']} {e['value']:.4g}" for e in record["evaluation"])
    return (f"round {record['round']}: {len(record['participants'])} client(s) aggregated, "
            f"{len(record['excluded'])} excluded, {record['bytes']['down']} B down, "
            f"{record['bytes']['up']} B up, {record['seconds']:.1f} s" +
            (f"; {scores}" if scores else ""))


def _prepare(repo, config: FederateConfig, scratch: str) -> tuple[RunState, _Run]:
    from ..eval import load_suites
    from ..fingerprint import tensor_infos_dir
    from ..workflow.gitops import export_dir
    from ..workflow.project import read_project

    state = open_run(repo, config, scratch)
    model_path = read_project(repo, state.start_commit).model
    base_dir = export_dir(repo, state.start_commit, model_path, os.path.join(scratch, "base"))
    fingerprint = base_fingerprint(base_dir)
    suites = load_suites(config.suites) if config.suites else []
    full = sum(4 * _numel(shape) for _, shape in tensor_infos_dir(base_dir).values())
    base_record = {"base": {"commit": state.start_commit, "fingerprint": fingerprint,
                            "full_weights_bytes_float32": full}}
    if suites:
        base_record["base"]["evaluation"] = _evaluate(repo, base_dir, None, suites, fingerprint)
    return state, _Run(repo, config, base_dir, fingerprint, suites, scratch, base_record)


def _numel(shape) -> int:
    out = 1
    for n in shape:
        out *= n
    return out


def run_rounds(grid: Grid, config: FederateConfig, wait_for: int | None = None) -> FederateResult:
    """Run (or resume) ``config.run`` over ``grid`` up to ``config.rounds``.

    Args:
        grid: Flower's grid of the ServerApp.
        config: the run's settings (validated here).
        wait_for: clients to wait for before round 1 (default ``config.min_clients``).
    Returns:
        A :class:`FederateResult`.
    Raises:
        RoundFailed: a round had too few acceptable clients (nothing committed for it).
        UsageError: invalid settings, a resume with other settings, no suites file...
    """
    from ..git.repo import find_repo
    from ..workflow.gitops import scratch_dir
    from .initial import initial_lora

    config.validate()
    repo = find_repo(config.repo)
    with scratch_dir(repo, "federate") as scratch:
        state, run = _prepare(repo, config, scratch)
        first = state.next_round
        if first > config.rounds:
            _say(f"run {config.run} already has {first - 1} round(s) on {branch_of(config.run)}")
            return FederateResult(config.run, branch_of(config.run), first, (), (),
                                  best_round(round_history(repo, config.run)))
        lora = state.lora or initial_lora(run.base_dir, config.rank, config.alpha, config.targets,
                                          config.seed)
        arrays = lora_to_arrays(lora)
        _say(f"run {config.run}: rounds {first}..{config.rounds}, {config.method}, "
             f"{array_bytes(arrays)} B of LoRA per client and direction"
             + (f" (resumed after round {first - 1})" if first > 1 else ""))
        _wait_for_nodes(grid, wait_for or config.min_clients, config.timeout)
        strategy = ModelgitStrategy(config, run.fingerprint, state.salt)
        records = []
        for number in range(first, config.rounds + 1):
            record, arrays, commit = _one_round(run, strategy, grid, state, arrays, number)
            state = RunState(state.run, commit, state.start_commit, number + 1, None, state.salt)
            records.append(record)
            _say(_summary(record))
            if config.stop_after is not None and number >= config.stop_after:
                _say(f"stopping after round {number} (--stop-after): run again to resume")
                break
        return FederateResult(config.run, branch_of(config.run), first, tuple(records),
                              tuple(run.base_record["base"].get("evaluation", [])),
                              best_round(round_history(repo, config.run)))


def config_from_run_config(run_config: dict) -> FederateConfig:
    """A :class:`FederateConfig` from Flower's run config (``[tool.flwr.app.config]`` or
    ``flwr run --run-config``): keys are the field names, ``-`` or ``_``.

    Raises:
        UsageError: an unknown key (naming the closest), or invalid settings.
    """
    import difflib

    known = {f.name: f for f in fields(FederateConfig)}
    values = {}
    for key, value in run_config.items():
        name = key.replace("-", "_")
        if name not in known:
            close = difflib.get_close_matches(name, list(known), n=1)
            raise UsageError(f"unknown run config key {key!r}"
                             + (f" (did you mean {close[0]}?)" if close else ""))
        values[name] = None if value == "" else value
    config = FederateConfig(**values)
    config.validate()
    return config


def make_server_app(config: FederateConfig | None = None, wait_for: int | None = None,
                    outcome: dict | None = None) -> ServerApp:
    """A ServerApp running :func:`run_rounds`.

    Args:
        config: the run's settings; None: from the run config (a real deployment).
        wait_for: clients to wait for before round 1.
        outcome: a dict that receives ``result`` or ``error`` (the simulation reads it: Flower
            logs a ServerApp's exception instead of raising it).
    """
    server = ServerApp()

    @server.main()
    def main(grid: Grid, context: Context) -> None:
        settings = config or config_from_run_config(dict(context.run_config))
        try:
            result = run_rounds(grid, settings, wait_for)
        except Exception as exc:
            if outcome is None:
                raise
            outcome["error"] = exc
            return
        if outcome is not None:
            outcome["result"] = result

    return server


#: the ServerApp of a real deployment (``serverapp = "modelgit.federate.server:app"``)
app = make_server_app()
