"""Progress bars for slow operations: on stderr, only when it is a terminal (or forced)."""

from __future__ import annotations

import contextlib
import os
import sys

# tqdm (~20 ms to import) is loaded only when a bar is shown: git's filter process, which starts
# for every git command on tracked files, never shows one

__all__ = ["progress_bar"]


def _enabled(requested: bool | None) -> bool:
    if requested is not None:
        return requested
    if os.environ.get("MODELGIT_PROGRESS") in ("0", "1"):
        return os.environ["MODELGIT_PROGRESS"] == "1"
    return sys.stderr.isatty()


class _NoBar:
    def update(self, n: int = 1) -> None:
        pass


@contextlib.contextmanager
def progress_bar(total: int, desc: str, enabled: bool | None = None):
    """A byte-counting bar; yields an object with ``update(n)``."""
    if not _enabled(enabled):
        yield _NoBar()
        return
    from tqdm import tqdm

    with tqdm(total=total, desc=desc, unit="B", unit_scale=True, unit_divisor=1024,
              file=sys.stderr, leave=False) as bar:
        yield bar
