"""Block Krylov on formed Q: the products of solvers/krylov.py against Q (b, d, d) itself.

Forming Q costs one GEMM of 2·h·d² flops per direction, at the speed of a square GEMM; after that
a product costs 2·d² flops per column instead of the 8·h·d of the matrix-free product (16× less at
h = 4d). It pays when the Krylov run needs more products than about d/4 per direction, or when
few directions make the matrix-free GEMMs too narrow to run near the machine's speed (each
matrix-free step reads all of W and V for a handful of columns).
"""
from __future__ import annotations

import torch


def formed_apply_rows(q: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
    """Q_i applied to the rows of x_i: q (b, d, d) symmetric, x (b, m, d) -> (b, m, d); for
    symmetric Q the rows of x Q are the products Q x."""
    return torch.bmm(x, q)


def formed_bytes_per_direction(d: int, itemsize: int) -> int:
    """Q itself, resident for the whole Krylov run (the state comes on top)."""
    return d * d * itemsize
