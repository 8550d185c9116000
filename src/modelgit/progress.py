"""Progress of slow operations, on stderr: a bar on a terminal, periodic plain lines elsewhere.

One mechanism for every long command (add, materialize, push, merge, train, eval, review,
release). What is shown depends on the ``progress`` argument the command was given:

* ``True`` (``--progress``): a bar, even when stderr is not a terminal;
* ``False`` (``--no-progress``, and the default of library calls): nothing;
* ``None`` (the CLI's default): ``MODELGIT_PROGRESS`` decides when set (``0``: nothing, ``1``:
  bars, ``lines``: lines), else a bar when stderr is a terminal and plain lines when it is not
  (a CI log, ``nohup``, a pipe), so a long run is never silent.

A line reads ``train: step 120/400 (30%), 2.1 step/s, ETA 2m13s, loss 2.3141`` and is printed at
most every ``MODELGIT_PROGRESS_INTERVAL`` seconds (default 20; ``0`` prints every update, which
tests use so that nothing depends on the machine's speed), plus a closing line with the total
time when at least one line was printed.
"""

from __future__ import annotations

import contextlib
import os
import sys
import time

# tqdm (~20 ms to import) is loaded only when a bar is shown: git's filter process, which starts
# for every git command on tracked files, never shows one

__all__ = ["progress_bar", "progress_mode", "note", "DEFAULT_INTERVAL"]

#: seconds between two progress lines when stderr is not a terminal
DEFAULT_INTERVAL = 20.0


def progress_mode(requested: bool | None) -> str:
    """``"bar"``, ``"lines"`` or ``"off"`` for a command given ``progress=requested``."""
    if requested is not None:
        return "bar" if requested else "off"
    setting = os.environ.get("MODELGIT_PROGRESS")
    if setting in ("0", "1", "lines"):
        return {"0": "off", "1": "bar", "lines": "lines"}[setting]
    try:
        return "bar" if sys.stderr.isatty() else "lines"
    except (AttributeError, ValueError):  # a closed or replaced stderr
        return "off"


def _enabled(requested: bool | None) -> bool:
    """Whether a bar is shown (callers that draw their own tqdm bar)."""
    return progress_mode(requested) == "bar"


def _interval() -> float:
    try:
        value = float(os.environ.get("MODELGIT_PROGRESS_INTERVAL", DEFAULT_INTERVAL))
    except ValueError:
        return DEFAULT_INTERVAL
    return value if value >= 0 else DEFAULT_INTERVAL


def _duration(seconds: float) -> str:
    seconds = int(round(seconds))
    if seconds < 60:
        return f"{seconds}s"
    if seconds < 3600:
        return f"{seconds // 60}m{seconds % 60:02d}s"
    return f"{seconds // 3600}h{seconds % 3600 // 60:02d}m"


def _amount(value: float, unit: str) -> str:
    """``value`` bytes, scaled (``unit`` is always "B" today)."""
    for prefix in ("", "Ki", "Mi", "Gi"):
        if abs(value) < 1024 or prefix == "Gi":
            return f"{value:.0f} {prefix}B" if not prefix else f"{value:.1f} {prefix}B"
        value /= 1024
    return f"{value:.1f} GiB"  # pragma: no cover


def _stat(value) -> str:
    return f"{value:.4f}" if isinstance(value, float) else str(value)


class _NoBar:
    def update(self, n: int = 1, **stats) -> None:
        pass

    def set_postfix(self, **stats) -> None:
        pass


class _Lines:
    """Plain progress lines, at most one per interval (see the module docstring)."""

    def __init__(self, total: int, desc: str, unit: str, stream=None):
        self.total, self.desc, self.unit = total, desc, unit
        self.stream = stream or sys.stderr
        self.done, self.stats, self.printed = 0, {}, 0
        self.interval = _interval()
        self.start = self.last = time.monotonic()

    def set_postfix(self, **stats) -> None:
        self.stats.update(stats)

    def update(self, n: int = 1, **stats) -> None:
        self.done += n
        self.stats.update(stats)
        now = time.monotonic()
        if now - self.last >= self.interval:
            self.last = now
            self._print(now)

    def line(self, now: float) -> str:
        """``desc: step 120/400 (30%), 2.1 step/s, ETA 2m13s, loss 2.3141`` (bytes: scaled)."""
        if self.unit == "B":
            count = _amount(self.done, "B") + (f"/{_amount(self.total, 'B')}" if self.total else "")
        else:
            count = f"{self.unit} {self.done}" + (f"/{self.total}" if self.total else "")
        parts = [f"{self.desc}: {count}" + (f" ({100 * self.done / self.total:.0f}%)"
                                            if self.total else "")]
        elapsed = now - self.start
        if elapsed > 0 and self.done:
            rate = self.done / elapsed
            parts.append(f"{_amount(rate, 'B')}/s" if self.unit == "B" else f"{rate:.3g} {self.unit}/s")
            if self.total and self.done < self.total:
                parts.append(f"ETA {_duration((self.total - self.done) / rate)}")
        parts.extend(f"{k} {_stat(v)}" for k, v in self.stats.items())
        return ", ".join(parts)

    def _print(self, now: float) -> None:
        self.printed += 1
        print(self.line(now), file=self.stream, flush=True)

    def close(self) -> None:
        if self.printed:
            now = time.monotonic()
            stats = "".join(f", {k} {_stat(v)}" for k, v in self.stats.items())
            count = _amount(self.done, "B") if self.unit == "B" else f"{self.done} {self.unit}"
            print(f"{self.desc}: done, {count} in {_duration(now - self.start)}{stats}",
                  file=self.stream, flush=True)


@contextlib.contextmanager
def progress_bar(total: int, desc: str, enabled: bool | None = None, unit: str = "B"):
    """Progress of ``total`` units (bytes by default; 0: unknown); yields an object with
    ``update(n=1, **stats)`` and ``set_postfix(**stats)`` (stats such as ``loss=`` are shown
    beside the count).

    Args:
        enabled: True: a bar; False: nothing; None: see :func:`progress_mode`.
        unit: ``"B"`` (bytes, scaled) or a word such as ``"step"`` or ``"batch"``.
    """
    mode = progress_mode(enabled)
    if mode == "off":
        yield _NoBar()
        return
    if mode == "lines":
        lines = _Lines(total, desc, unit)
        try:
            yield lines
        finally:
            lines.close()
        return
    from tqdm import tqdm

    scaled = unit == "B"
    with tqdm(total=total or None, desc=desc, unit=unit, unit_scale=scaled,
              unit_divisor=1024 if scaled else 1000, file=sys.stderr, leave=False) as bar:
        yield _Bar(bar)


class _Bar:
    """A tqdm bar whose ``update`` also takes stats (shown as its postfix)."""

    def __init__(self, bar):
        self._bar = bar

    def update(self, n: int = 1, **stats) -> None:
        if stats:
            self._bar.set_postfix({k: _stat(v) for k, v in stats.items()}, refresh=False)
        self._bar.update(n)

    def set_postfix(self, **stats) -> None:
        self._bar.set_postfix({k: _stat(v) for k, v in stats.items()})


def note(message: str, enabled: bool | None = None) -> None:
    """One plain line on stderr (e.g. "review: evaluating anon-1a2b3c4d, 2 of 5") when progress
    is shown as lines; above the bars on a terminal; nothing when progress is off."""
    mode = progress_mode(enabled)
    if mode == "lines":
        print(message, file=sys.stderr, flush=True)
    elif mode == "bar":
        from tqdm import tqdm

        tqdm.write(message, file=sys.stderr)
