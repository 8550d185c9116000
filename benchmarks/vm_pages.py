"""How much a fresh page-cache page costs on this machine, and how fast freed pages go cold.

On a VM whose memory the host hands out on first touch (and takes back when the guest reports
pages free, as virtio-balloon free page reporting does), writing a file into pages nobody has
touched recently costs far more than writing into pages another file has just given back. This
script writes a file, deletes it, waits, and writes the next one, for several waits; then writes a file, leaves it
untouched for a while, deletes it and at once writes the next (what a checkout does); then
deletes a file written 128 KiB per call (as cp writes) and writes the next in pieces of several
sizes:

    python3 benchmarks/vm_pages.py [--mib 1024] [--dir /tmp]

A checkout writes its checkpoint into such pages: the figures say how much of a checkout's time
is the machine's and not the tool's (see benchmarks/README.md, git-integration benchmark).
"""

from __future__ import annotations

import argparse
import os
import tempfile
import time

WAITS = (0.0, 0.5, 1.0, 2.0, 3.0, 5.0, 0.0)
IDLE = (0.0, 1.0, 3.0, 6.0)
PIECES_KIB = (64, 128, 256, 512, 1024, 4096)


def write_file(path: str, mib: int, block: bytes, piece: int | None = None) -> tuple[float, float]:
    """(wall seconds, kernel CPU seconds) to write ``mib`` MiB into a new file, ``piece`` bytes
    per write call (default: the whole 4 MiB block)."""
    piece = piece or len(block)
    start, cpu = time.perf_counter(), os.times().system
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
    try:
        for _ in range(mib // 4):
            view = memoryview(block)
            while view:
                view = view[os.write(fd, view[:piece]):]
    finally:
        os.close(fd)
    return time.perf_counter() - start, os.times().system - cpu


def replace_after(root: str, previous: str, name: str, mib: int, block: bytes, first_piece: int,
                  idle: float, label: str, piece: int | None = None) -> str:
    """Delete ``previous``; write a file in ``first_piece`` pieces, leave it ``idle`` s, delete
    it and time writing the next one at once (in ``piece`` pieces). Returns the last file."""
    os.unlink(previous)
    first = os.path.join(root, f"{name}-first")
    write_file(first, mib, block, first_piece)
    time.sleep(idle)
    os.unlink(first)
    last = os.path.join(root, name)
    wall, kernel = write_file(last, mib, block, piece)
    print(f"| {label} | {wall:.2f} s | kernel {kernel:.2f} s |")
    return last


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--mib", type=int, default=1024, help="file size in MiB (default 1024)")
    parser.add_argument("--dir", default=None, help="where to write (default: the temp directory)")
    args = parser.parse_args(argv)
    block = os.urandom(4 << 20)
    with tempfile.TemporaryDirectory(dir=args.dir, prefix="vm-pages-") as root:
        previous = os.path.join(root, "first")
        wall, kernel = write_file(previous, args.mib, block)
        print(f"| write {args.mib} MiB into untouched pages | {wall:.2f} s | kernel {kernel:.2f} s |")
        for index, wait in enumerate(WAITS):
            os.unlink(previous)
            time.sleep(wait)
            previous = os.path.join(root, f"next-{index}")
            wall, kernel = write_file(previous, args.mib, block)
            print(f"| delete the last file, wait {wait:.1f} s, write {args.mib} MiB | {wall:.2f} s "
                  f"| kernel {kernel:.2f} s |")
        # a checkout's case: the file git deletes was written a while ago and not touched since
        for idle in IDLE:
            previous = replace_after(root, previous, f"idle-{idle}", args.mib, block, 4 << 20, idle,
                                     f"write a file, leave it {idle:.1f} s, delete it, write "
                                     f"{args.mib} MiB at once")
        # the size of the writes: a file written as cp writes (128 KiB per call) is deleted, and
        # the next is written in bigger or smaller pieces (Linux gives bigger pieces large folios)
        for kib in PIECES_KIB:
            previous = replace_after(root, previous, f"pieces-{kib}", args.mib, block, 128 << 10, 1.5,
                                     f"delete a file written in 128 KiB pieces, write {args.mib} MiB "
                                     f"in {kib} KiB pieces", piece=kib << 10)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
