"""The k largest entries |Q(u)[i, j]|, i ≤ j, of each interaction matrix, exact, tile by tile.

Q is never held: the upper triangle is visited in T × T tiles, Q[R, C] = ½((c ⊙ W_R)ᵀ V_C +
(c ⊙ V_R)ᵀ W_C), and each tile's own top k is merged into a running top k. The work is that of
forming Q (h·d² multiply-adds per direction); the memory is a few tiles and 2·h·T scaled columns
per direction, so a 16384 × 16384 Q (a layer projected onto an SAE basis) needs no 1 GiB buffer.
"""
from __future__ import annotations

import numbers

import torch

from ._arrays import to_framework, working_dtype
from .directions import parse_directions
from .interaction import _check_layer
from .layer import BilinearLayer
from .memory import chunk_size, memory_budget

DEFAULT_TILE = 1024  # square tiles this wide keep the GEMMs efficient on CPU and GPU
INDEX_BYTES = 8


def tile_bytes_per_direction(h: int, tile: int, k: int, itemsize: int) -> int:
    """Temporaries of one direction: the scaled row block (2·h·T), the two tile products and the
    tile's magnitudes (3·T²), and the running and candidate top k (values, magnitudes, indices)."""
    return (2 * h * tile + 3 * tile * tile) * itemsize + 4 * k * (2 * itemsize + INDEX_BYTES)


@torch.no_grad()  # values to read, not part of a training graph (weights may be Parameters)
def top_interactions(layer: BilinearLayer, directions, k: int, *, dtype=None, max_memory=None,
                     tile: int | None = None):
    """The k entries of largest |Q(u)[i, j]| with i ≤ j, for each direction.

    Returns (values, rows, cols), each (b, k): signed values ordered by decreasing magnitude
    (entries of equal magnitude at the k-th place are chosen arbitrarily), rows ≤ cols as int64.
    k: 1 .. d(d+1)/2 (d + 1 in place of d for a biased layer). `tile` (default 1024, narrowed to
    fit `max_memory`) is the side of the square tiles the triangle is scanned in. Results in the
    layer's framework and working precision.
    """
    _check_layer(layer)
    dirs = parse_directions(directions, layer.d_out)
    size, h = layer.d_form, layer.d_hidden
    entries = size * (size + 1) // 2
    if isinstance(k, bool) or not isinstance(k, numbers.Integral):
        raise TypeError(f"k must be an int, got {type(k).__name__}")
    k = int(k)
    if not 1 <= k <= entries:
        raise ValueError(f"k must be in [1, d(d+1)/2] = [1, {entries}] for interaction matrices of size {size}, got {k}")
    if tile is not None and (isinstance(tile, bool) or not isinstance(tile, numbers.Integral) or tile < 1):
        raise ValueError(f"tile must be a positive int, got {tile!r}")
    work = working_dtype(layer.dtype, dtype)
    budget = memory_budget(layer.device, max_memory)
    side = min(size, tile or DEFAULT_TILE)
    while side > 1 and tile_bytes_per_direction(h, side, k, work.itemsize) > budget:
        side //= 2  # narrower tiles until one direction fits
    step = chunk_size(len(dirs), tile_bytes_per_direction(h, side, k, work.itemsize), budget,
                      f"top_interactions with k={k}")

    w, v = layer.homogeneous(work)
    b = len(dirs)
    values = torch.empty(b, k, dtype=work, device=layer.device)
    flat = torch.empty(b, k, dtype=torch.int64, device=layer.device)
    for start in range(0, b, step):
        stop = min(start + step, b)
        c = dirs.chunk(start, stop).coefficients(layer, work)
        values[start:stop], flat[start:stop] = _scan(w, v, c, k, side)
    rows, cols = flat // size, flat % size
    fw = layer.framework
    return to_framework(values, fw), to_framework(rows, fw), to_framework(cols, fw)


def _scan(w: torch.Tensor, v: torch.Tensor, c: torch.Tensor, k: int, side: int):
    """Running top k over the upper-triangle tiles for coefficient rows c (b, h): the signed values
    and flat indices i·d + j, (b, k) each, by decreasing magnitude."""
    b, size = c.shape[0], w.shape[1]
    device = w.device
    best_mag = torch.full((b, k), -1.0, dtype=w.dtype, device=device)  # below any |Q_ij|: replaced
    best_val = torch.zeros(b, k, dtype=w.dtype, device=device)
    best_idx = torch.zeros(b, k, dtype=torch.int64, device=device)
    for r0 in range(0, size, side):
        r1 = min(r0 + side, size)
        scaled_w = c[:, :, None] * w[None, :, r0:r1]  # (b, h, tr)
        scaled_v = c[:, :, None] * v[None, :, r0:r1]
        for c0 in range(r0, size, side):
            c1 = min(c0 + side, size)
            q = torch.matmul(scaled_w.mT, v[:, c0:c1])
            q.add_(torch.matmul(scaled_v.mT, w[:, c0:c1])).mul_(0.5)  # Q[R, C], (b, tr, tc)
            mag = q.abs()
            if c0 == r0:  # the diagonal tile: only i ≤ j counts
                i = torch.arange(r0, r1, device=device)[:, None]
                j = torch.arange(c0, c1, device=device)[None, :]
                mag.masked_fill_(i > j, -1.0)
            mag, q = mag.reshape(b, -1), q.reshape(b, -1)
            take = min(k, mag.shape[1])
            tile_mag, pos = torch.topk(mag, take, dim=1)
            tile_val = torch.gather(q, 1, pos)
            tc = c1 - c0
            tile_idx = (r0 + pos // tc) * size + (c0 + pos % tc)
            mags = torch.cat([best_mag, tile_mag], dim=1)
            keep = torch.topk(mags, k, dim=1).indices
            best_mag = torch.gather(mags, 1, keep)
            best_val = torch.gather(torch.cat([best_val, tile_val], dim=1), 1, keep)
            best_idx = torch.gather(torch.cat([best_idx, tile_idx], dim=1), 1, keep)
    # topk's order among the merged candidates is already by decreasing magnitude
    return best_val, best_idx
