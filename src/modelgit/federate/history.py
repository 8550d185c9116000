"""Every round is a revision: the round's global LoRA and its record, committed on ``fed/<run>``.

A round's commit holds ``federated/<run>/adapter/`` (a PEFT adapter: the aggregate, which can be
contributed and reviewed like any other adapter) and ``federated/<run>/round.json``: the recipe,
the base (commit and fingerprint), the participating clients under anonymous ids with their
example counts and bytes, the excluded ones with their reasons, bytes sent down and up, and the
round's evaluation on the maintainer's held-out suites (values only, never data). The branch
moves by compare-and-swap, so a commit is either the branch's next round or nothing; a killed
run resumes from the branch's last round (:func:`open_run`).
"""

from __future__ import annotations

import os
import secrets
from dataclasses import dataclass

from .._files import write_json
from ..errors import UsageError
from ..untrusted import loads_json

__all__ = ["RunState", "open_run", "commit_round", "round_path", "branch_of"]

_ZERO = "0" * 40
MAX_RECORD_BYTES = 16 * 1024 * 1024  # a round.json read back from the branch


def branch_of(run: str) -> str:
    return f"fed/{run}"


def round_path(run: str) -> str:
    return f"federated/{run}"


@dataclass(frozen=True)
class RunState:
    """Where a run stands: its branch tip (None before round 1), next round, base and LoRA."""

    run: str
    tip: str | None
    start_commit: str
    next_round: int
    lora: dict | None  # the last committed global LoRA (None: make the initial one)
    salt: str


def _salt(repo, run: str) -> str:
    """The run's anonymisation salt: local to this repository (never committed), kept so that a
    resumed run gives the same clients the same ids."""
    path = os.path.join(repo.git_dir, "modelgit", "federate", f"{run}.salt")
    if not os.path.isfile(path):
        from .._outputs import remove, temporary_path

        os.makedirs(os.path.dirname(path), exist_ok=True)
        tmp = temporary_path(path)
        try:
            with open(tmp, "w", encoding="utf-8") as handle:
                handle.write(secrets.token_hex(16))
                handle.flush()
                os.fsync(handle.fileno())
            # a hard link never replaces: of two processes starting the run, one salt wins and
            # both read it back; a killed process leaves no half-written salt
            os.link(tmp, path)
        except FileExistsError:
            pass
        finally:
            remove(tmp)
    with open(path, encoding="utf-8") as handle:
        salt = handle.read().strip()
    if len(salt) != 32:
        raise UsageError(f"{path} does not hold a run's salt: remove it (the run's clients then "
                         "get new anonymous ids)")
    return salt


def _read_record(repo, tip: str, run: str) -> dict:
    spec = f"{tip}:{round_path(run)}/round.json"
    blob = repo.read_blob(spec)
    if blob is None:
        raise UsageError(f"branch {branch_of(run)} exists but its tip has no "
                         f"{round_path(run)}/round.json: it is not a federated run; choose "
                         "another --run")
    record = loads_json(blob, spec, max_bytes=MAX_RECORD_BYTES)
    if not isinstance(record, dict) or not isinstance(record.get("round"), int):
        raise UsageError(f"{spec} is not a round record: choose another --run")
    return record


def _read_lora(repo, tip: str, run: str, scratch: str) -> dict:
    from ..merge.lora import load_adapter
    from ..workflow.gitops import export_dir

    path = export_dir(repo, tip, f"{round_path(run)}/adapter", os.path.join(scratch, "resume"))
    return {m: {"A": p["A"].float(), "B": p["B"].float()} for m, p in load_adapter(path).lora.items()}


def open_run(repo, config, scratch: str) -> RunState:
    """The state of ``config.run``: new (from ``config.start``) or resumed from its branch.

    Raises:
        UsageError: the branch exists with another recipe, or is not a federated run.
    """
    tip = repo.rev_parse(f"refs/heads/{branch_of(config.run)}")
    salt = _salt(repo, config.run)
    if tip is None:
        return RunState(config.run, None, repo.resolve(config.start), 1, None, salt)
    record = _read_record(repo, tip, config.run)
    recipe = config.recipe()
    if record.get("recipe") != recipe:
        old = record.get("recipe") or {}
        changed = sorted(k for k in set(old) | set(recipe) if old.get(k) != recipe.get(k))
        raise UsageError(f"run {config.run!r} (branch {branch_of(config.run)}) was started with "
                         f"other settings ({', '.join(f'{k}: {old.get(k)!r}' for k in changed)}): "
                         "resume it with the same settings, or start a new --run")
    start = (record.get("base") or {}).get("commit")
    if not isinstance(start, str) or repo.rev_parse(start) is None:
        raise UsageError(f"run {config.run!r}: its base commit {start!r} is not in this repository")
    return RunState(config.run, tip, start, record["round"] + 1,
                    _read_lora(repo, tip, config.run, scratch), salt)


def commit_round(repo, state: RunState, record: dict, adapter_dir: str, scratch: str) -> str:
    """Commit the round on ``fed/<run>`` (on the branch tip, or the run's start for round 1).

    Returns:
        The new commit.
    Raises:
        UsageError: the branch moved meanwhile (another process ran the same run).
    """
    from ..workflow.gitops import commit_files

    base = round_path(state.run)
    record_file = os.path.join(scratch, f"round-{record['round']}.json")
    write_json(record_file, record)
    files = {f"{base}/round.json": record_file,
             **{f"{base}/adapter/{name}": os.path.join(adapter_dir, name)
                for name in ("adapter_config.json", "adapter_model.safetensors")}}
    parent = state.tip or state.start_commit
    evaluation = ", ".join(f"{s['suite']} {s['metric']} {s['value']:.4g}"
                           for s in record.get("evaluation") or [])
    message = (f"federated run {state.run}: round {record['round']} ({record['method']}, "
               f"{len(record['participants'])} clients, {len(record['excluded'])} excluded)"
               + (f"\n\n{evaluation}\n" if evaluation else "\n"))
    commit = commit_files(repo, parent, files, message)
    ref = f"refs/heads/{branch_of(state.run)}"
    result = repo.git("update-ref", ref, commit, state.tip or _ZERO, check=False)
    if repo.rev_parse(ref) != commit:
        raise UsageError(f"branch {branch_of(state.run)} moved while round {record['round']} ran "
                         f"({result!r}): another process runs {state.run!r}; nothing was committed")
    return commit

