"""Per-stage peak memory: the process's high-water mark, reset at each stage's start."""

import numpy as np

from distill import memory

MB = 2**20


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
