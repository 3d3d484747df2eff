"""The process's peak resident memory, stage by stage.

Linux keeps a high-water mark of resident memory (`VmHWM` in /proc/self/status) and resets it
when "5" is written to /proc/self/clear_refs, so a stage's peak is read after resetting the
mark at its start. Process-wide: stages running at once in threads share one peak. Elsewhere
(no /proc) nothing is measured and the peak is None.

glibc keeps memory a stage freed in its heap rather than giving it back, so the next stage
would start from the last one's high-water mark; `return_freed_memory` hands it back.

Inside a stage, training frees and allocates the same large tensors every step (activations,
gradients). glibc serves a block from its own mapping only above a threshold that it raises to
the size of every mapped block freed (up to 32 MiB), so after the first steps those tensors come
from the heap and fragment it: the default student stage held ~250 MiB of free heap pages.
`keep_large_blocks_out_of_heap` fixes the threshold instead (measured in the benchmarks' memory
section: ~160 MiB less peak in that stage at the same step time).

Some work takes far more memory for a moment than it leaves behind (exporting a large teacher to
ONNX: ~4 GiB for MPNet's 0.4 GiB of weights). `in_child_process` runs it in a fresh process that
gives all of it back when it ends; the caller's peak counts the child's, so a stage's reported
peak stays the machine's.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import functools
import multiprocessing
import re
from collections.abc import Callable
from concurrent.futures import ProcessPoolExecutor
from concurrent.futures.process import BrokenProcessPool
from pathlib import Path
from typing import TypeVar

T = TypeVar("T")

STATUS = Path("/proc/self/status")
CLEAR_REFS = Path("/proc/self/clear_refs")
RESET_PEAK = "5"  # proc(5): "reset the peak resident set size ("high water mark")"
M_MMAP_THRESHOLD = -3  # mallopt(3)'s parameter number (malloc.h)
# Blocks from this size up get their own mapping, returned to the system when freed. Measured on
# the default student stage (80 steps, 2 runs each): 1 MiB saved ~210 MiB of peak but made steps
# ~20% slower (fresh pages for the many 1-2 MiB activations); 2 MiB saved ~160 MiB at the same
# step time (within 2%). On MPNet fine-tuning (768 wide: most activations are 2-32 MiB) it saved
# ~0.5 GiB of peak but made steps ~10% slower (docs/benchmarks.md, memory notes).
LARGE_BLOCK_BYTES = 2 * 2**20


# The highest of (this process's resident size + a waited-on child's peak) since the last
# `reset_peak`: the machine held both at once.
_with_children = 0


def reset_peak() -> bool:
    """Start a new high-water mark at today's resident size; False where that is not possible."""
    global _with_children
    _with_children = 0
    try:
        CLEAR_REFS.write_text(RESET_PEAK)
    except OSError:
        return False
    return True


def _status_bytes(field: str) -> int | None:
    try:
        found = re.search(rf"^{field}:\s+(\d+) kB$", STATUS.read_text(), re.MULTILINE)
    except OSError:
        return None
    return int(found.group(1)) * 1024 if found else None


def resident_bytes() -> int | None:
    """This process's resident memory now (None without /proc)."""
    return _status_bytes("VmRSS")


def peak_bytes() -> int | None:
    """The highest resident memory since the process started or the last `reset_peak`,
    counting a child `in_child_process` waited on (with what this process held meanwhile)."""
    own = _status_bytes("VmHWM")
    return None if own is None else max(own, _with_children)


def in_child_process(work: Callable[[], T]) -> T:
    """`work()` (picklable) run in a fresh spawned process while this one waits: what it
    allocates goes back to the system when it ends, not into this process's heap. Runs here
    instead where this process may not start children (a daemonic worker)."""
    global _with_children
    if multiprocessing.current_process().daemon:
        return work()
    held = resident_bytes() or 0
    spawn = multiprocessing.get_context("spawn")
    try:
        with ProcessPoolExecutor(max_workers=1, mp_context=spawn) as child:
            result, child_peak = child.submit(_measured, work).result()
    except BrokenProcessPool as error:
        raise RuntimeError(
            f"a child process running {work!r} ended without an answer (killed, out of memory, "
            "or it could not start: a script that runs distillery must guard its entry point "
            "with `if __name__ == '__main__':`, as Python's spawned processes import it again)"
        ) from error
    _with_children = max(_with_children, held + (child_peak or 0))
    return result


def _measured(work: Callable[[], T]) -> tuple[T, int | None]:
    """In the child: the same allocator policy as the caller's stages, then the work."""
    keep_large_blocks_out_of_heap()
    return work(), peak_bytes()


@functools.cache
def _libc() -> ctypes.CDLL | None:
    name = ctypes.util.find_library("c")
    library = ctypes.CDLL(name) if name else None
    return library if library is not None and hasattr(library, "malloc_trim") else None


def keep_large_blocks_out_of_heap() -> bool:
    """Serve blocks of LARGE_BLOCK_BYTES and more from their own mappings from now on, in this
    process; False where the C library cannot, which is harmless. Idempotent."""
    return set_mmap_threshold(LARGE_BLOCK_BYTES)


def set_mmap_threshold(size: int) -> bool:
    """Blocks of `size` bytes and more get their own mapping from now on, in this process
    (glibc `mallopt(M_MMAP_THRESHOLD)`, which also stops glibc from raising the threshold);
    False where the C library has no such call."""
    libc = _libc()
    if libc is None or not hasattr(libc, "mallopt"):
        return False
    return bool(libc.mallopt(M_MMAP_THRESHOLD, size))


def return_freed_memory() -> bool:
    """Give the heap's freed pages back to the system (glibc `malloc_trim`); False where the C
    library has no such call (musl, macOS, Windows), which is harmless."""
    libc = _libc()
    if libc is None:
        return False
    libc.malloc_trim(0)
    return True
