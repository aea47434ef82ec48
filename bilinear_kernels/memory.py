"""The temporary-memory budget that chunking keeps under."""
from __future__ import annotations

import os

import torch

DEFAULT_MAX_MEMORY = 4 * 2**30  # bytes; never more than half of what is free on the device


def free_bytes(device: torch.device) -> int:
    if device.type == "cuda":
        free, _ = torch.cuda.mem_get_info(device)
        return int(free)
    try:
        return os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
    except (ValueError, OSError, AttributeError):
        return 16 * 2**30


def memory_budget(device: torch.device, max_memory: int | None = None) -> int:
    """Bytes of temporaries a call may use: `max_memory` if given, else the default, and never more
    than half of the device's free memory."""
    if max_memory is not None:
        if not isinstance(max_memory, (int, float)) or max_memory <= 0:
            raise ValueError(f"max_memory must be a positive number of bytes, got {max_memory!r}")
        return int(max_memory)
    return max(1, min(DEFAULT_MAX_MEMORY, free_bytes(device) // 2))


def format_bytes(n: int) -> str:
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if abs(n) < 1024 or unit == "TiB":
            return f"{n:.1f} {unit}" if unit != "B" else f"{n} B"
        n /= 1024
    raise AssertionError("unreachable")


def chunk_size(n_items: int, bytes_per_item: int, budget: int, what: str) -> int:
    """How many items fit in `budget`; at least one, or a clear error if even one does not fit."""
    if bytes_per_item > budget:
        raise MemoryError(
            f"{what} needs {format_bytes(bytes_per_item)} for a single direction, over the memory budget "
            f"of {format_bytes(budget)}; raise max_memory or choose a method that needs less"
        )
    return max(1, min(n_items, budget // max(1, bytes_per_item)))
