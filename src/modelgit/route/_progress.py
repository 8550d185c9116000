"""Progress of route build / eval: a bar on a terminal, plain periodic lines elsewhere.

``progress``: True shows a bar, False nothing, None (the CLI's default) lets
``MODELGIT_PROGRESS`` decide (``0``, ``1``, ``lines``), else a bar when stderr is a terminal and
lines (``route eval: 3/12 (25%), 0.5 step/s, ETA 18s, debian: router examples``) when it is not,
at most every ``MODELGIT_PROGRESS_INTERVAL`` seconds (default 20; 0: every step).
"""

from __future__ import annotations

import os
import sys
import time

__all__ = ["Steps"]


def _mode(requested: bool | None) -> str:
    if requested is not None:
        return "bar" if requested else "off"
    setting = os.environ.get("MODELGIT_PROGRESS")
    if setting in ("0", "1", "lines"):
        return {"0": "off", "1": "bar", "lines": "lines"}[setting]
    try:
        return "bar" if sys.stderr.isatty() else "lines"
    except (AttributeError, ValueError):
        return "off"


def _interval() -> float:
    try:
        value = float(os.environ.get("MODELGIT_PROGRESS_INTERVAL", 20))
    except ValueError:
        return 20.0
    return value if value >= 0 else 20.0


def _duration(seconds: float) -> str:
    seconds = int(round(seconds))
    return f"{seconds}s" if seconds < 60 else f"{seconds // 60}m{seconds % 60:02d}s"


class Steps:
    """Counts ``total`` steps; ``step(what)`` marks one done (``what``: the next one's name)."""

    def __init__(self, total: int, desc: str, progress: bool | None = None):
        self.total, self.desc, self.mode = total, desc, _mode(progress)
        self.done, self.start = 0, time.monotonic()
        self.last, self.interval, self.printed = self.start, _interval(), 0
        self.bar = None
        if self.mode == "bar":
            from tqdm import tqdm

            self.bar = tqdm(total=total, desc=desc, unit="step", file=sys.stderr, leave=False)

    def __enter__(self):
        return self

    def step(self, what: str = "") -> None:
        self.done += 1
        if self.bar is not None:
            self.bar.set_postfix_str(what[:40], refresh=False)
            self.bar.update(1)
        elif self.mode == "lines":
            now = time.monotonic()
            if now - self.last >= self.interval:
                self.last, self.printed = now, self.printed + 1
                rate = self.done / max(now - self.start, 1e-9)
                eta = f", ETA {_duration((self.total - self.done) / rate)}" if self.done < self.total else ""
                print(f"{self.desc}: {self.done}/{self.total} ({100 * self.done / self.total:.0f}%), "
                      f"{rate:.3g} step/s{eta}" + (f", {what}" if what else ""),
                      file=sys.stderr, flush=True)

    def __exit__(self, *exc) -> None:
        if self.bar is not None:
            self.bar.close()
        elif self.printed:
            print(f"{self.desc}: done, {self.done} steps in "
                  f"{_duration(time.monotonic() - self.start)}", file=sys.stderr, flush=True)
