"""Progress bars over chunks of directions."""
from __future__ import annotations

from tqdm.auto import tqdm


def chunk_starts(n: int, step: int, progress: bool | None, desc: str):
    """range(0, n, step), wrapped in a tqdm bar when `progress` is True, or when it is None and
    there is more than one chunk."""
    starts = range(0, n, step)
    show = (len(starts) > 1) if progress is None else bool(progress)
    return tqdm(starts, desc=desc, unit="chunk", disable=not show, leave=False) if show else starts
