"""Keep freed memory in the process instead of handing it back to the kernel at once.

glibc returns a freed chunk of more than its (adaptive, at most 32 MiB) mmap threshold to the
kernel at once, and trims the heap when more than twice that is free at its top. A command that
allocates and frees buffers of a few MiB thousands of times (a merge's blocks, the filter's
chunks) then touches fresh pages again and again, and on a VM whose free pages go back to the
host each first touch costs ~2.5-3 s per GB of kernel time. Freed buffers kept in the heap are
reused instead; the largest ones (above ``mmap_threshold``) still come and go with mmap, so a
whole tensor's working set is given back as soon as it is freed.
"""

from __future__ import annotations

import ctypes
import os

__all__ = ["keep_freed_memory"]

_M_TRIM_THRESHOLD = -1
_M_MMAP_THRESHOLD = -3


def keep_freed_memory(mmap_threshold: int = 32 << 20, trim_threshold: int = 128 << 20) -> bool:
    """Ask glibc to serve allocations up to ``mmap_threshold`` bytes from its heap and to keep up
    to ``trim_threshold`` bytes of free heap. ``MODELGIT_MALLOC=default`` leaves malloc alone.

    Returns:
        Whether the settings were applied (False on another C library or when disabled).
    """
    if os.environ.get("MODELGIT_MALLOC") == "default":
        return False
    try:
        libc = ctypes.CDLL(None)  # the C library this process runs on (find_library forks ldconfig)
        return bool(libc.mallopt(_M_TRIM_THRESHOLD, trim_threshold)) and \
            bool(libc.mallopt(_M_MMAP_THRESHOLD, mmap_threshold))
    except (OSError, AttributeError):
        return False  # not glibc: nothing to tune
