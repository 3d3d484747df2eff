"""Per-stage peak memory: the process's high-water mark, reset at each stage's start."""

import ctypes
import ctypes.util
import functools
import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from distill import memory

MB = 2**20
REPO = Path(__file__).resolve().parents[1]


def test_the_peak_follows_what_was_touched_since_the_last_reset():
    assert memory.reset_peak()  # Linux: /proc/self/clear_refs takes "5"
    baseline = memory.peak_bytes()
    block = np.ones(256 * MB // 8)  # 256 MB, every page written
    grown = memory.peak_bytes()
    assert grown - baseline >= 240 * MB
    del block
    # A high-water mark: freeing does not lower it (the kernel's counters lag by a few pages).
    assert memory.peak_bytes() >= grown - 4 * MB
    assert memory.reset_peak()
    assert memory.peak_bytes() <= grown - 200 * MB  # a new mark from today's resident size


def resident_bytes() -> int:
    status = Path("/proc/self/status").read_text()
    return int(re.search(r"^VmRSS:\s+(\d+) kB$", status, re.MULTILINE).group(1)) * 1024


def test_memory_freed_inside_the_heap_goes_back_to_the_system():
    # 4 KiB blocks come from the C heap, not mmap; a block kept after them stops free() from
    # trimming the heap's top, as objects a stage leaves alive do.
    blocks = [bytearray(4096) for _ in range(300 * MB // 4096)]
    kept = bytearray(4096)
    del blocks
    held = resident_bytes()
    assert memory.return_freed_memory()  # glibc
    assert resident_bytes() <= held - 200 * MB
    assert len(kept) == 4096


class MallInfo2(ctypes.Structure):
    """glibc's `struct mallinfo2` (malloc.h); `hblkhd` is the bytes in mapped blocks."""

    FIELDS = ("arena", "ordblks", "smblks", "hblks", "hblkhd")
    FIELDS += ("usmblks", "fsmblks", "uordblks", "fordblks", "keepcost")
    _fields_ = [(name, ctypes.c_size_t) for name in FIELDS]


def mapped_bytes(libc: ctypes.CDLL) -> int:
    libc.mallinfo2.restype = MallInfo2
    return libc.mallinfo2().hblkhd


def test_large_blocks_keep_their_own_mapping_after_a_larger_one_was_freed():
    # In a fresh process: in this one, earlier tests' freed heap chunks may serve a 4 MiB block
    # whatever the threshold (glibc maps a block only when neither a free chunk nor the top of
    # the heap can hold it), which would make the check depend on the order tests ran in.
    check = "from tests.test_memory import large_blocks_are_mapped; large_blocks_are_mapped()"
    done = subprocess.run([sys.executable, "-c", check], cwd=REPO, capture_output=True, text=True)
    assert done.returncode == 0, done.stderr


def large_blocks_are_mapped() -> None:
    libc = ctypes.CDLL(ctypes.util.find_library("c"))
    libc.malloc.restype = ctypes.c_void_p
    libc.free.argtypes = [ctypes.c_void_p]
    assert memory.keep_large_blocks_out_of_heap()  # glibc
    # Left to itself, glibc would now raise its threshold to 8 MiB and serve the next 4 MiB
    # block from the heap, where a training step's churn fragments it.
    libc.free(libc.malloc(8 * MB))
    before = mapped_bytes(libc)
    block = libc.malloc(4 * MB)
    try:
        assert mapped_bytes(libc) - before >= 4 * MB
    finally:
        libc.free(block)
    small = libc.malloc(MB)  # below the threshold: the heap, as before
    try:
        assert mapped_bytes(libc) == before
    finally:
        libc.free(small)


def touch_megabytes(size: int) -> tuple[int, int]:
    """In the child: `size` MB written page by page, then freed; its pid and the block's sum."""
    import os

    block = np.ones(size * MB // 8)
    total = int(block.sum())
    del block
    return os.getpid(), total


def fail_in_child() -> None:
    raise ValueError("the child's own error")


def test_work_in_a_child_process_leaves_its_memory_there_and_counts_its_peak():
    import os

    assert memory.reset_peak()
    before = memory.peak_bytes()
    pid, total = memory.in_child_process(functools.partial(touch_megabytes, 300))
    assert pid != os.getpid() and total == 300 * MB // 8
    # This process never held the block, but the stage's peak counts the child's with it.
    assert resident_bytes() < before + 100 * MB
    assert memory.peak_bytes() >= before + 280 * MB
    assert memory.reset_peak() and memory.peak_bytes() < before + 100 * MB


def test_an_error_in_the_child_reaches_the_caller():
    with pytest.raises(ValueError, match="the child's own error"):
        memory.in_child_process(fail_in_child)


def test_a_script_without_an_entry_point_guard_gets_an_error_that_says_so(tmp_path):
    script = tmp_path / "unguarded.py"
    script.write_text(
        "import functools\n"
        "from distill import memory\n"
        "memory.in_child_process(functools.partial(sum, [1, 2]))\n"
    )
    run = subprocess.run(
        [sys.executable, str(script)], cwd=REPO, capture_output=True, text=True, timeout=300
    )
    assert run.returncode != 0
    assert "if __name__ == '__main__':" in run.stderr.splitlines()[-1]
