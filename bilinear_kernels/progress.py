"""Progress bars over chunks of directions, and the points where abandoned work stops.

Every chunk loop of the solvers goes through `chunk_starts`, so between two chunks is where a
computation can be told to stop: a sweep that is interrupted (Ctrl-C) abandons the chunk it was
computing on a worker thread and sets that thread's cancel event (`cancel_scope`); the worker then
raises Cancelled at its next chunk instead of computing on for nothing.
"""
from __future__ import annotations

import threading
from contextlib import contextmanager

from tqdm.auto import tqdm

_scope = threading.local()


class Cancelled(Exception):
    """Work abandoned by the thread that waited for it (see cancel_scope)."""


@contextmanager
def cancel_scope(event: threading.Event):
    """Within this block, on this thread, chunk loops raise Cancelled once `event` is set."""
    previous = getattr(_scope, "event", None)
    _scope.event = event
    try:
        yield
    finally:
        _scope.event = previous


def check_cancelled() -> None:
    """Raise Cancelled if this thread's work has been abandoned (a no-op outside cancel_scope)."""
    event = getattr(_scope, "event", None)
    if event is not None and event.is_set():
        raise Cancelled("the computation was abandoned (interrupted)")


def chunk_starts(n: int, step: int, progress: bool | None, desc: str):
    """range(0, n, step), wrapped in a tqdm bar when `progress` is True, or when it is None and
    there is more than one chunk; checks for cancellation before each chunk."""
    starts = range(0, n, step)
    show = (len(starts) > 1) if progress is None else bool(progress)
    iterable = tqdm(starts, desc=desc, unit="chunk", disable=not show, leave=False) if show else starts
    return _checked(iterable)


def _checked(iterable):
    for start in iterable:
        check_cancelled()
        yield start
