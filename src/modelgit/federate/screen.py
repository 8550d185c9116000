"""Which replies of a round are aggregated, and why the others are not.

Every reply is a stranger's: it is checked whole before it is used. A client is excluded, with
its reason logged and committed, when it sent no reply before the round's timeout (it dropped
out or was too slow), replied with an error, trained on another base (fingerprint), sent
unexpected keys, dtypes or shapes, NaN or infinite values, an impossible example count, no
Fisher when the aggregation needs one, or an update whose norm is an outlier among the round's:
above ``median + k · MAD`` of the accepted clients' update norms (with at least 3 of them; the
MAD taken as at least a tenth of the median, so that the honest spread of a few non-IID clients
is not mistaken for an attack).
"""

from __future__ import annotations

import statistics
from dataclasses import dataclass
from logging import getLogger
from typing import Callable

from .aggregate import ClientUpdate, update_norm
from .payload import array_bytes, decode_lora

__all__ = ["Exclusion", "Screened", "screen_replies", "MAX_EXAMPLES"]

MAX_EXAMPLES = 10 ** 9  # an example count above this is not a count
MAD_FLOOR = 0.1  # the MAD used is at least this share of the median norm (see _outliers)
_LOG = getLogger("modelgit.federate")


@dataclass(frozen=True)
class Exclusion:
    client: str
    reason: str


@dataclass(frozen=True)
class Screened:
    """The round's accepted updates, exclusions, and bytes each client sent up."""

    updates: tuple[ClientUpdate, ...]
    excluded: tuple[Exclusion, ...]
    bytes_up: dict[str, int]
    norms: dict[str, float]


@dataclass(frozen=True)
class Expectations:
    """What an acceptable reply of this round looks like."""

    start: dict  # the round's global LoRA state
    fingerprint: str
    needs_fisher: bool
    outlier_k: float

    def shapes(self) -> dict:
        return {m: {k: tuple(t.shape) for k, t in parts.items()} for m, parts in self.start.items()}


def _count(metrics) -> tuple[int | None, str | None]:
    value = metrics.get("num-examples") if metrics is not None else None
    if isinstance(value, bool) or not isinstance(value, (int, float)) or value != int(value):
        return None, f"no valid example count (num-examples {value!r})"
    if not 1 <= int(value) <= MAX_EXAMPLES:
        return None, f"example count {int(value)} is outside 1..{MAX_EXAMPLES}"
    return int(value), None


def _read(reply, expect: Expectations, client: str) -> tuple[ClientUpdate | None, str | None]:
    """The update in one reply, or the reason it is refused."""
    if reply.has_error():
        reason = (reply.error.reason or "")[:300]
        return None, f"failed on the client (code {reply.error.code}): {reason}"
    content = reply.content
    if "arrays" not in content.array_records or "metrics" not in content.metric_records:
        return None, "malformed reply: no 'arrays' ArrayRecord or no 'metrics' MetricRecord"
    info = content.config_records.get("config")
    fingerprint = info.get("fingerprint") if info is not None else None
    if fingerprint != expect.fingerprint:
        return None, (f"trained on another base: fingerprint {str(fingerprint)[:24]!r}, the "
                      f"run's is {expect.fingerprint[:24]!r}")
    examples, problem = _count(content.metric_records["metrics"])
    if problem:
        return None, problem
    lora, problem = decode_lora(content.array_records["arrays"], expect.shapes())
    if problem:
        return None, problem
    fisher = None
    if expect.needs_fisher:
        if "fisher" not in content.array_records:
            return None, "no Fisher estimate ('fisher' ArrayRecord), which this aggregation needs"
        fisher, problem = decode_lora(content.array_records["fisher"], expect.shapes(), "Fisher")
        if problem:
            return None, problem
        if any(bool((t < 0).any()) for parts in fisher.values() for t in parts.values()):
            return None, "negative values in its Fisher estimate"
    return ClientUpdate(client, examples, lora, fisher), None


def _reply_bytes(reply) -> int:
    if reply.has_error():
        return 0
    return sum(array_bytes(r) for r in reply.content.array_records.values())


def _outliers(updates: list[ClientUpdate], norms: dict[str, float], k: float) -> dict[str, str]:
    if k <= 0 or len(updates) < 3:
        return {}
    values = [norms[u.client] for u in updates]
    median = statistics.median(values)
    mad = statistics.median(abs(v - median) for v in values)
    # with few clients the MAD is tiny (3 honest non-IID clients measured 3.24, 3.345, 3.663 on
    # SmolLM2: MAD 0.105, so 3·MAD excluded the third); a floor of a tenth of the median keeps
    # honest spread in, while a poisoned update (orders of magnitude larger) stays out
    mad = max(mad, MAD_FLOOR * median, 1e-12)
    limit = median + k * mad
    return {u.client: f"update norm {norms[u.client]:.4g} is an outlier (above median "
                      f"{median:.4g} + {k:g}·MAD {mad:.4g} = {limit:.4g})"
            for u in updates if norms[u.client] > limit}


def screen_replies(sent: list[int], replies, expect: Expectations,
                   anonymize: Callable[[int], str]) -> Screened:
    """Check every reply of a round.

    Args:
        sent: the node ids the round's messages went to.
        replies: the replies received (Flower ``Message`` objects) before the timeout.
        expect: the round's :class:`Expectations`.
        anonymize: node id -> the anonymous id recorded for it.
    Returns:
        A :class:`Screened`; each exclusion is also logged with its reason.
    """
    by_node = {}
    for reply in replies:
        node = reply.metadata.src_node_id
        if node in sent and node not in by_node:  # a second reply of a node is ignored
            by_node[node] = reply
    updates, excluded, bytes_up = [], [], {}
    for node in sorted(sent, key=anonymize):
        client = anonymize(node)
        reply = by_node.get(node)
        if reply is None:
            excluded.append(Exclusion(client, "no reply before the round's timeout (dropped out "
                                              "or too slow)"))
            continue
        bytes_up[client] = _reply_bytes(reply)
        update, reason = _read(reply, expect, client)
        if update is None:
            excluded.append(Exclusion(client, reason))
        else:
            updates.append(update)
    norms = {u.client: update_norm(u.lora, expect.start) for u in updates}
    outliers = _outliers(updates, norms, expect.outlier_k)
    excluded += [Exclusion(c, r) for c, r in outliers.items()]
    updates = [u for u in updates if u.client not in outliers]
    for item in excluded:
        _LOG.warning("excluded client %s: %s", item.client, item.reason)
    return Screened(tuple(updates), tuple(excluded), bytes_up, norms)
