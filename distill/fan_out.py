"""Fan-out: how independent units of work are run (the logit cache's shards, a sweep's cells).

The library only hands a list of zero-argument works to a `FanOut` and takes the results back in
order; the default runs them one after another here, the Prefect flow passes one that submits
each as a task to its task runner (a Dask cluster's workers: `tasks/stages.py`).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Protocol, TypeVar

A = TypeVar("A")


class FanOut(Protocol):
    """Runs independent units of work (each returns its artifact); results in the given order."""

    def __call__(self, name: str, works: Sequence[Callable[[], A]]) -> list[A]: ...


def run_each_here(name: str, works: Sequence[Callable[[], A]]) -> list[A]:
    """The default fan-out: one unit after another in this process."""
    return [work() for work in works]
