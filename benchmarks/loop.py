#!/usr/bin/env python3
"""The collaborative loop's figures: ``modelgit demo`` (SmolLM2-135M, three domains) measured.

Runs ``modelgit demo --json`` as a child process (``--quick`` for the tiny model) and reports
what issue #5 asks for: the per-domain perplexity table (base, each adapter, the release), how
much of each adapter's gain on its own domain the release keeps, the wall time of the whole
demo, and its peak memory: the largest sum of RSS over the demo's process tree (the demo, its git
commands and their filter processes), sampled from ``/proc`` every 100 ms.

Usage::

    python3 benchmarks/loop.py                 # SmolLM2-135M (~10 min on 2 cores)
    python3 benchmarks/loop.py --quick         # the tiny model
    python3 benchmarks/loop.py --json figures.json

The machine has 2 cores and is shared: the script waits until no other benchmark of this
repository runs, and training speed still swings several-fold when anything else uses a core
(torch's two threads stall on a busy core). Report the wall time with the load it ran under.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import threading
import time

OTHER_BENCHMARKS = ("benchmarks/store.py", "benchmarks/git.py", "benchmarks/merge.py")


def _tree_rss(root: int) -> int:
    """RSS bytes of ``root`` and its descendants."""
    children: dict[int, list[int]] = {}
    rss: dict[int, int] = {}
    for name in os.listdir("/proc"):
        if not name.isdigit():
            continue
        try:
            with open(f"/proc/{name}/stat") as handle:
                fields = handle.read().rsplit(")", 1)[1].split()
        except OSError:
            continue
        pid, ppid = int(name), int(fields[1])
        children.setdefault(ppid, []).append(pid)
        rss[pid] = int(fields[21]) * os.sysconf("SC_PAGE_SIZE")
    total, todo = 0, [root]
    while todo:
        pid = todo.pop()
        total += rss.get(pid, 0)
        todo.extend(children.get(pid, []))
    return total


def _wait_for_quiet() -> None:
    while True:
        busy = [b for b in OTHER_BENCHMARKS
                if subprocess.run(["pgrep", "-f", b], capture_output=True).returncode == 0]
        if not busy:
            return
        print(f"waiting for {', '.join(busy)} to finish ...", file=sys.stderr)
        time.sleep(30)


def run(quick: bool) -> dict:
    _wait_for_quiet()
    load_before = os.getloadavg()[0]
    out = tempfile.TemporaryFile(mode="w+")
    start = time.perf_counter()
    child = subprocess.Popen([sys.executable, "-m", "modelgit", "--no-progress", "demo", "--json",
                              *(["--quick"] if quick else [])], stdout=out, stderr=sys.stderr)
    peak = [0]

    def sample():
        while child.poll() is None:
            peak[0] = max(peak[0], _tree_rss(child.pid))
            time.sleep(0.1)

    sampler = threading.Thread(target=sample, daemon=True)
    sampler.start()
    code = child.wait()
    seconds = time.perf_counter() - start
    sampler.join()
    out.seek(0)
    text = out.read()
    if code != 0:
        sys.stdout.write(text)
        raise SystemExit(f"modelgit demo failed with exit code {code}")
    figures = json.loads(text[text.index("\n{") + 1:])
    figures.update(wall_seconds=seconds, peak_tree_rss_mb=peak[0] / 2**20,
                   load_before=load_before, load_after=os.getloadavg()[0],
                   table=text[text.index("per-domain perplexity"):text.index("\n{")].strip())
    return figures


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="the tiny model instead of SmolLM2")
    parser.add_argument("--json", help="also write the figures to this file")
    args = parser.parse_args()
    figures = run(args.quick)
    print(figures["table"])
    print(f"\nwall time {figures['wall_seconds']:.0f} s (target: 600 s for SmolLM2, 60 s --quick); "
          f"peak memory of the process tree {figures['peak_tree_rss_mb']:.0f} MB; load average "
          f"{figures['load_before']:.2f} before, {figures['load_after']:.2f} after")
    pulled = figures.get("pull_v1_to_v2") or {}
    if pulled:
        print(f"pull of v2 into a v1 clone: {pulled['objects']} objects, "
              f"{pulled['stored_bytes'] / 2**20:.1f} MiB of a {pulled['model_bytes'] / 2**20:.0f} MiB model")
    if args.json:
        with open(args.json, "w") as handle:
            json.dump(figures, handle, indent=2, sort_keys=True)


if __name__ == "__main__":
    main()
