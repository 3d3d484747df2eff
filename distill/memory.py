"""The process's peak resident memory, stage by stage.

Linux keeps a high-water mark of resident memory (`VmHWM` in /proc/self/status) and resets it
when "5" is written to /proc/self/clear_refs, so a stage's peak is read after resetting the
mark at its start. Process-wide: stages running at once in threads share one peak. Elsewhere
(no /proc) nothing is measured and the peak is None.

glibc keeps memory a stage freed in its heap rather than giving it back, so the next stage
would start from the last one's high-water mark; `return_freed_memory` hands it back.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import functools
import re
from pathlib import Path

STATUS = Path("/proc/self/status")
CLEAR_REFS = Path("/proc/self/clear_refs")
RESET_PEAK = "5"  # proc(5): "reset the peak resident set size ("high water mark")"


def reset_peak() -> bool:
    """Start a new high-water mark at today's resident size; False where that is not possible."""
    try:
        CLEAR_REFS.write_text(RESET_PEAK)
    except OSError:
        return False
    return True


def peak_bytes() -> int | None:
    """The highest resident memory since the process started or the last `reset_peak`."""
    try:
        found = re.search(r"^VmHWM:\s+(\d+) kB$", STATUS.read_text(), re.MULTILINE)
    except OSError:
        return None
    return int(found.group(1)) * 1024 if found else None


@functools.cache
def _libc() -> ctypes.CDLL | None:
    name = ctypes.util.find_library("c")
    library = ctypes.CDLL(name) if name else None
    return library if library is not None and hasattr(library, "malloc_trim") else None


def return_freed_memory() -> bool:
    """Give the heap's freed pages back to the system (glibc `malloc_trim`); False where the C
    library has no such call (musl, macOS, Windows), which is harmless."""
    libc = _libc()
    if libc is None:
        return False
    libc.malloc_trim(0)
    return True
