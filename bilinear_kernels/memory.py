"""The temporary-memory budget that chunking keeps under."""
from __future__ import annotations

import math
import numbers
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
    """Bytes a call may allocate, its result included: `max_memory` if given, else the default,
    and never more than half of the device's free memory."""
    if max_memory is not None:
        # any real number type (NumPy scalars included), finite and at least one byte
        if (isinstance(max_memory, bool) or not isinstance(max_memory, numbers.Real)
                or not math.isfinite(max_memory) or max_memory < 1):
            raise ValueError(f"max_memory must be a positive, finite number of bytes, got {max_memory!r}")
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
            f"{what} needs {format_bytes(bytes_per_item)} of temporaries for a single direction, over the "
            f"{format_bytes(budget)} of the memory budget left for them (max_memory bounds a call's result "
            "and its temporaries together); raise max_memory or choose a method that needs less"
        )
    return max(1, min(n_items, budget // max(1, bytes_per_item)))


def budget_after_result(budget: int, result_bytes: int, one_direction_bytes: int, what: str,
                        hint: str = "ask for fewer directions per call") -> int:
    """The budget left for temporaries once a call's result (allocated whole, up front) is counted.
    Refuses with a MemoryError naming the bytes when the result and the temporaries of a single
    direction do not fit together, before anything is allocated."""
    if result_bytes + one_direction_bytes > budget:
        raise MemoryError(
            f"{what} needs {result_bytes} bytes ({format_bytes(result_bytes)}) for its result and "
            f"{format_bytes(one_direction_bytes)} of temporaries for one direction, over the memory "
            f"budget of {budget} bytes ({format_bytes(budget)}); {hint}, or raise max_memory"
        )
    return budget - result_bytes
