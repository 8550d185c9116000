"""Rollouts: a model name whose traffic is split between variants by weight (A/B tests).

``NAME=A:0.9,B:0.1`` (or a YAML file ``{rollouts: {NAME: {A: 0.9, B: 0.1}}}``) makes requests
for ``NAME`` go to model ``A`` nine times in ten and to ``B`` once. A request carrying the sticky
header (``x-modelgit-user`` by default) always goes to the same variant for the same header
value: the variant is chosen by a hash of the rollout's name and that value, so a user keeps
one variant across requests and server restarts. Requests without it draw from a seeded random
generator (reproducible for a given order of requests). A variant may also name a revision of
the served repository (an A/B test between two releases): see :mod:`.revisions`.
"""

from __future__ import annotations

import hashlib
import os
import random
import threading
from dataclasses import dataclass

from ..errors import UsageError

__all__ = ["Rollout", "parse_rollout", "read_rollouts", "Chooser"]

_MAX_VARIANTS = 16


@dataclass(frozen=True)
class Rollout:
    """A model name served by weighted variants.

    Attributes:
        name: the name clients ask for.
        variants: ``((model name, weight), ...)``; weights are positive and normalized to 1.
    """

    name: str
    variants: tuple

    def pick(self, point: float) -> str:
        """The variant at ``point`` in [0, 1) of the cumulative weights."""
        total = 0.0
        for name, weight in self.variants:
            total += weight
            if point < total:
                return name
        return self.variants[-1][0]


def _make(name: str, pairs: list[tuple[str, float]], where: str) -> Rollout:
    problems = []
    if not name or not name.replace("-", "").replace("_", "").replace(".", "").isalnum():
        problems.append(f"name {name!r}: use letters, digits, '-', '_' and '.'")
    if not 2 <= len(pairs) <= _MAX_VARIANTS:
        problems.append(f"{len(pairs)} variant(s): give 2 to {_MAX_VARIANTS}")
    seen = set()
    for variant, weight in pairs:
        if variant in seen:
            problems.append(f"variant {variant!r} is given twice")
        seen.add(variant)
        if not isinstance(weight, (int, float)) or isinstance(weight, bool) or not weight > 0 \
                or weight != weight or weight == float("inf"):
            problems.append(f"variant {variant!r} has weight {weight!r}: give a positive number")
    if problems:
        raise UsageError(f"rollout {where}: " + "; ".join(problems))
    total = float(sum(w for _, w in pairs))
    return Rollout(name, tuple((v, float(w) / total) for v, w in pairs))


def parse_rollout(text: str) -> Rollout:
    """``NAME=A:0.9,B:0.1`` as a :class:`Rollout`.

    Raises:
        UsageError: not of that form, fewer than two variants, a weight that is not positive.
    """
    name, sep, rest = text.partition("=")
    pairs = []
    for item in rest.split(",") if sep else []:
        variant, colon, weight = item.strip().rpartition(":")
        try:
            pairs.append((variant, float(weight)) if colon and variant else None)
        except ValueError:
            pairs.append(None)
    if not sep or not pairs or None in pairs:
        raise UsageError(f"--rollout {text!r}: write NAME=MODEL_A:WEIGHT,MODEL_B:WEIGHT "
                         "(e.g. chat=v2:0.9,v3:0.1)")
    return _make(name.strip(), pairs, repr(text))


def read_rollouts(path: str) -> list[Rollout]:
    """The rollouts of a YAML file ``{rollouts: {NAME: {MODEL: WEIGHT, ...}, ...}}``.

    Raises:
        UsageError: a missing file, another shape, bad weights.
    """
    import yaml

    if not os.path.isfile(path) or os.path.getsize(path) > 1024 * 1024:
        raise UsageError(f"rollout file {path!r} does not exist or is over 1 MiB")
    with open(path, encoding="utf-8") as handle:
        try:
            data = yaml.safe_load(handle)
        except yaml.YAMLError as exc:
            raise UsageError(f"rollout file {path}: not YAML ({exc})") from None
    table = data.get("rollouts") if isinstance(data, dict) else None
    if not isinstance(table, dict) or not all(isinstance(v, dict) for v in table.values()):
        raise UsageError(f"rollout file {path}: expected {{rollouts: {{NAME: {{MODEL: WEIGHT}}}}}}")
    return [_make(str(name), [(str(k), v) for k, v in variants.items()], f"{name!r} of {path}")
            for name, variants in table.items()]


class Chooser:
    """Chooses variants: by the sticky header's hash when given, else from a seeded generator."""

    def __init__(self, seed: int = 0):
        self._random = random.Random(seed)
        self._lock = threading.Lock()

    def choose(self, rollout: Rollout, sticky: str | None) -> str:
        if sticky:
            digest = hashlib.sha256(f"{rollout.name}\0{sticky}".encode()).digest()
            point = int.from_bytes(digest[:8], "big") / 2.0 ** 64  # uniform in [0, 1)
        else:
            with self._lock:
                point = self._random.random()
        return rollout.pick(point)
