"""Progress bars for slow operations: on stderr, only when it is a terminal (or forced)."""

from __future__ import annotations

import contextlib
import os
import sys

from tqdm import tqdm

__all__ = ["progress_bar"]


def _enabled(requested: bool | None) -> bool:
    if requested is not None:
        return requested
    if os.environ.get("MODELGIT_PROGRESS") in ("0", "1"):
        return os.environ["MODELGIT_PROGRESS"] == "1"
    return sys.stderr.isatty()


@contextlib.contextmanager
def progress_bar(total: int, desc: str, enabled: bool | None = None):
    """A byte-counting bar; yields an object with ``update(n)``."""
    with tqdm(total=total, desc=desc, unit="B", unit_scale=True, unit_divisor=1024,
              disable=not _enabled(enabled), file=sys.stderr, leave=False) as bar:
        yield bar
