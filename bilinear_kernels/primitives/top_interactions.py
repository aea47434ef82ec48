"""The k largest entries |Q(u)[i, j]|, i ≤ j, of each interaction matrix, exact, tile by tile.

Q is never held: the upper triangle is visited in T × T tiles, and each tile's own top k is merged
into a running top k. Two ways to make a tile:
  hidden route   Q[R, C] = ½((c ⊙ W_R)ᵀ V_C + (c ⊙ V_R)ᵀ W_C): the work of forming Q (h·d²
                 multiply-adds per direction), memory a few tiles and 2·h·T scaled columns.
  basis route    for the layer on a basis B (d, F) (`basis=`): Q' = Bᵀ Q B with Q formed once in the
                 layer's own d dimensions, then Q B (d × F), then tiles B_Rᵀ (Q B)_C: h·d² + d²·F +
                 d·F²/2 multiply-adds where projecting first costs h·F² (7× more at d = 1024,
                 h = 4096, F = 16384), and no (h, F) projected weights. Taken when it is less work.
So a 16384 × 16384 Q (a layer on an SAE basis) needs no 1 GiB buffer.
"""
from __future__ import annotations

import numbers

import torch

from .._arrays import to_framework, working_dtype
from ..directions import parse_directions
from ..interaction import _check_layer, build_interaction
from ..layer import BilinearLayer
from ..memory import chunk_size, memory_budget

DEFAULT_TILE = 1024  # square tiles this wide keep the GEMMs efficient on CPU and GPU
INDEX_BYTES = 8


def tile_bytes_per_direction(h: int, tile: int, k: int, itemsize: int) -> int:
    """Temporaries of one direction on the hidden route: the scaled row block (2·h·T), the two tile
    products and the tile's magnitudes (3·T²), and the running and candidate top k (values,
    magnitudes, indices)."""
    return (2 * h * tile + 3 * tile * tile) * itemsize + _top_k_bytes(k, itemsize)


def basis_bytes_per_direction(h: int, d: int, size: int, tile: int, k: int, itemsize: int) -> int:
    """Temporaries of one direction on the basis route: forming Q (a scaled (h, d) copy and two
    d × d products), Q B (d × size), a tile and its magnitudes (2·T²), and the running top k."""
    return (h * d + 2 * d * d + d * size + 2 * tile * tile) * itemsize + _top_k_bytes(k, itemsize)


def _top_k_bytes(k: int, itemsize: int) -> int:
    return 4 * k * (2 * itemsize + INDEX_BYTES)


def basis_route_is_cheaper(h: int, d: int, size: int) -> bool:
    """Multiply-adds per direction: forming Q in d dimensions, Q B and the triangle of Bᵀ (Q B),
    against projecting the weights (2·h·d·F, once) and scanning the triangle on the hidden route."""
    through_q = h * d * d + d * d * size + d * size * size / 2
    projected = h * size * size
    return through_q < projected


@torch.no_grad()  # values to read, not part of a training graph (weights may be Parameters)
def top_interactions(layer: BilinearLayer, directions, k: int, *, basis=None, offset=None, dtype=None,
                     max_memory=None, tile: int | None = None):
    """The k entries of largest |Q(u)[i, j]| with i ≤ j, for each direction.

    Returns (values, rows, cols), each (b, k): signed values ordered by decreasing magnitude
    (entries of equal magnitude at the k-th place are chosen arbitrarily), rows ≤ cols as int64.
    k: 1 .. d(d+1)/2 (d + 1 in place of d for a biased layer). `tile` (default 1024, narrowed to
    fit `max_memory`) is the side of the square tiles the triangle is scanned in. Results in the
    layer's framework and working precision.

    basis (d, F), offset (d,): the same for the layer on basis coordinates, x = basis @ z + offset,
    exactly what `top_interactions(layer.project_input(basis, offset), ...)` gives (indices count
    basis vectors; F is the constant's index when there is a bias or an offset), computed through
    Q in the layer's own d dimensions when that is less work (F and h above d: an SAE basis).
    """
    _check_layer(layer)
    dirs = parse_directions(directions, layer.d_out)
    basis_t, offset_t, size = layer.form_on_basis(basis, offset)
    h = layer.d_hidden
    entries = size * (size + 1) // 2
    if isinstance(k, bool) or not isinstance(k, numbers.Integral):
        raise TypeError(f"k must be an int, got {type(k).__name__}")
    k = int(k)
    if not 1 <= k <= entries:
        raise ValueError(f"k must be in [1, d(d+1)/2] = [1, {entries}] for interaction matrices of size {size}, got {k}")
    if tile is not None and (isinstance(tile, bool) or not isinstance(tile, numbers.Integral) or tile < 1):
        raise ValueError(f"tile must be a positive int, got {tile!r}")
    if basis is not None:
        if not basis_route_is_cheaper(h, layer.d_form, size):
            projected = layer.project_input(basis_t, offset_t, max_memory=max_memory)
            return top_interactions(projected, directions, k, dtype=dtype, max_memory=max_memory, tile=tile)
        return _top_through_basis(layer, dirs, k, basis_t, offset_t, dtype, max_memory, tile)

    work = working_dtype(layer.dtype, dtype)
    budget = memory_budget(layer.device, max_memory)
    side = _fit_side(size, tile, lambda t: tile_bytes_per_direction(h, t, k, work.itemsize), budget)
    step = chunk_size(len(dirs), tile_bytes_per_direction(h, side, k, work.itemsize), budget,
                      f"top_interactions with k={k}")

    w, v = layer.homogeneous(work)
    return _collect(layer, dirs, k, step, size, work, lambda c: _hidden_tiles(w, v, c, side))


def _fit_side(size: int, tile: int | None, bytes_of, budget: int) -> int:
    side = min(size, tile or DEFAULT_TILE)
    while side > 1 and bytes_of(side) > budget:
        side //= 2  # narrower tiles until one direction fits
    return side


def _collect(layer, dirs, k, step, size, work, tiles_of):
    """Run the scan chunk by chunk of directions; rows and cols from the flat indices."""
    b = len(dirs)
    values = torch.empty(b, k, dtype=work, device=layer.device)
    flat = torch.empty(b, k, dtype=torch.int64, device=layer.device)
    for start in range(0, b, step):
        stop = min(start + step, b)
        c = dirs.chunk(start, stop).coefficients(layer, work)
        values[start:stop], flat[start:stop] = _scan(tiles_of(c), stop - start, size, k, work, layer.device)
    rows, cols = flat // size, flat % size
    fw = layer.framework
    return to_framework(values, fw), to_framework(rows, fw), to_framework(cols, fw)


def _top_through_basis(layer, dirs, k, basis, offset, dtype, max_memory, tile):
    """The basis route: Q̃ (b, d̃, d̃) formed in the layer's own coordinates, then Bᵀ Q̃ B tile by tile,
    with B̃ = [[basis, offset], [0, 1]] when the projected layer has a constant coordinate."""
    work = working_dtype(torch.promote_types(layer.dtype, basis.dtype), dtype)
    w, v, b_tilde = layer.homogeneous_on_basis(basis, offset, work)
    d_tilde, size = b_tilde.shape
    h = layer.d_hidden
    budget = memory_budget(layer.device, max_memory) - b_tilde.numel() * work.itemsize
    bytes_of = lambda t: basis_bytes_per_direction(h, d_tilde, size, t, k, work.itemsize)  # noqa: E731
    side = _fit_side(size, tile, bytes_of, budget)
    step = chunk_size(len(dirs), bytes_of(side), budget, f"top_interactions with k={k} on a basis of {basis.shape[1]}")

    def tiles_of(c):
        q_basis = torch.matmul(build_interaction(w, v, c), b_tilde)  # (b, d̃, size)
        for r0 in range(0, size, side):
            r1 = min(r0 + side, size)
            rows_t = b_tilde[:, r0:r1].mT
            for c0 in range(r0, size, side):
                c1 = min(c0 + side, size)
                yield r0, r1, c0, c1, torch.matmul(rows_t, q_basis[:, :, c0:c1])

    return _collect(layer, dirs, k, step, size, work, tiles_of)


def _hidden_tiles(w: torch.Tensor, v: torch.Tensor, c: torch.Tensor, side: int):
    """Q[R, C] for coefficient rows c (b, h), upper-triangle tiles in order, on the hidden route."""
    size = w.shape[1]
    for r0 in range(0, size, side):
        r1 = min(r0 + side, size)
        scaled_w = c[:, :, None] * w[None, :, r0:r1]  # (b, h, tr)
        scaled_v = c[:, :, None] * v[None, :, r0:r1]
        for c0 in range(r0, size, side):
            c1 = min(c0 + side, size)
            q = torch.matmul(scaled_w.mT, v[:, c0:c1])
            q.add_(torch.matmul(scaled_v.mT, w[:, c0:c1])).mul_(0.5)  # Q[R, C], (b, tr, tc)
            yield r0, r1, c0, c1, q


def _scan(tiles, b: int, size: int, k: int, dtype: torch.dtype, device):
    """Running top k over upper-triangle tiles (r0, r1, c0, c1, Q[R, C] (b, tr, tc)): the signed
    values and flat indices i·size + j, (b, k) each, by decreasing magnitude."""
    best_mag = torch.full((b, k), -1.0, dtype=dtype, device=device)  # below any |Q_ij|: replaced
    best_val = torch.zeros(b, k, dtype=dtype, device=device)
    best_idx = torch.zeros(b, k, dtype=torch.int64, device=device)
    for r0, r1, c0, c1, q in tiles:
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
