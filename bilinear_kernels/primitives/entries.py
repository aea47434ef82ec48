"""Single entries of interaction matrices, without forming the matrices.

Q(u)[i, j] = ½ Σ_k c_k (W[k, i] V[k, j] + V[k, i] W[k, j]), c = Pᵀ u: one dot product of length
h per entry and direction. For n entries the h × n matrix G[:, m] = W[:, i_m] ⊙ V[:, j_m] +
V[:, i_m] ⊙ W[:, j_m] is built once (in chunks of entries) and every direction's entries are then
one GEMM ½ C G: O(h) per entry, against h·d² to form a whole Q (or o·d² to index a formed tensor).

On a basis B (`basis=`: the entries of `project_input(B)`'s matrices Bᵀ Q B, without projecting
all of B) the cheaper of two routes is taken: project only the basis columns the entries touch and
go on as above (2·h·d per column, once), or form Q in the layer's own d dimensions per direction
and read Bᵀ Q B one entry at a time (h·d² + d²·n per direction: less when few directions ask for
entries spread over many basis columns).
"""
from __future__ import annotations

import numpy as np
import torch

from .._arrays import _is_cupy, to_framework, working_dtype
from ..directions import parse_directions
from ..interaction import _check_layer, build_interaction
from ..layer import BilinearLayer
from ..memory import chunk_size, format_bytes, memory_budget


def index_vector(x, name: str, size: int) -> torch.Tensor:
    """A 1-D int64 CPU tensor of indices into 0..size-1 from an int sequence, tensor or array."""
    if isinstance(x, (list, tuple, range)):
        if not all(isinstance(i, (int, np.integer)) and not isinstance(i, bool) for i in x):
            raise TypeError(f"{name} must hold integer indices, got {x!r:.80}")
        t = torch.tensor([int(i) for i in x], dtype=torch.int64)
    elif isinstance(x, torch.Tensor):
        t = x
    elif isinstance(x, np.ndarray):
        t = torch.from_numpy(np.ascontiguousarray(x))
    elif _is_cupy(x):
        t = torch.from_dlpack(x)
    else:
        raise TypeError(f"{name} must be a sequence of ints or a 1-D integer tensor or array, got {type(x).__name__}")
    if t.dtype == torch.bool or t.is_floating_point() or t.is_complex():
        raise TypeError(f"{name} must have an integer dtype, got {t.dtype}")
    if t.ndim != 1:
        raise ValueError(f"{name} must be 1-D, got shape {tuple(t.shape)}")
    t = t.to(device="cpu", dtype=torch.int64)
    bad = (t < 0) | (t >= size)
    if bool(bad.any()):
        raise ValueError(f"{name} holds index {int(t[bad][0])}, out of range for interaction matrices of "
                         f"size {size} (valid: 0..{size - 1})")
    return t


@torch.no_grad()  # values to read, not part of a training graph (weights may be Parameters)
def interaction_entries(layer: BilinearLayer, directions, rows, cols, *, basis=None, offset=None, dtype=None,
                        max_memory=None):
    """Q(u)[rows[m], cols[m]] for every direction u: (b, n), never forming Q.

    rows, cols: n indices each into 0..d-1 (0..d for a biased layer, whose last coordinate is the
    constant 1). Cost: 6·h elementwise per entry once, then a (b, h) × (h, n) GEMM; temporaries
    stay under `max_memory`. Results in the layer's framework and working precision.

    basis (d, F), offset (d,): the entries of the layer on basis coordinates, x = basis @ z +
    offset, as `interaction_entries(layer.project_input(basis, offset), ...)` gives (indices into
    0..F-1, and F for the constant when there is a bias or an offset), by the cheaper route of the
    module docstring.
    """
    _check_layer(layer)
    dirs = parse_directions(directions, layer.d_out)
    basis_t, offset_t, size = layer.form_on_basis(basis, offset)
    rows = index_vector(rows, "rows", size)
    cols = index_vector(cols, "cols", size)
    if rows.shape != cols.shape:
        raise ValueError(f"rows and cols must have the same length, got {len(rows)} and {len(cols)}")
    if basis_t is not None:
        return _entries_on_basis(layer, dirs, rows, cols, basis_t, offset_t, dtype, max_memory)
    work = working_dtype(layer.dtype, dtype)
    return to_framework(_entries_in_hidden_space(layer, dirs, rows, cols, work, max_memory), layer.framework)


def _entries_in_hidden_space(layer, dirs, rows, cols, work, max_memory) -> torch.Tensor:
    budget = memory_budget(layer.device, max_memory)
    w, v = layer.homogeneous(work)
    h, n, b = layer.d_hidden, len(rows), len(dirs)
    out = torch.empty(b, n, dtype=work, device=layer.device)
    # half the budget for the directions' coefficients, half for the entries' G columns
    # (four gathered columns, G and one product: 6 h numbers per entry)
    per_direction, per_entry = h * work.itemsize, 6 * h * work.itemsize
    if per_direction + per_entry > budget // 2:
        raise MemoryError(
            f"interaction_entries needs {2 * (per_direction + per_entry)} bytes "
            f"({format_bytes(2 * (per_direction + per_entry))}) for one direction and one entry of a layer "
            f"with h = {h} in {work}, over the memory budget of {format_bytes(budget)}; raise max_memory")
    dir_step = chunk_size(b, per_direction, budget // 2, "interaction_entries")
    entry_step = chunk_size(max(n, 1), per_entry, budget // 2, "interaction_entries")
    rows, cols = rows.to(layer.device), cols.to(layer.device)
    for start in range(0, b, dir_step):
        stop = min(start + dir_step, b)
        c = dirs.chunk(start, stop).coefficients(layer, work)
        for first in range(0, n, entry_step):
            last = min(first + entry_step, n)
            r, s = rows[first:last], cols[first:last]
            g = w[:, r] * v[:, s]
            g.addcmul_(v[:, r], w[:, s])
            out[start:stop, first:last] = torch.matmul(c, g).mul_(0.5)
    return out


def columns_route_is_cheaper(h: int, d: int, used: int, n: int, b: int) -> bool:
    """Multiply-adds: projecting the `used` basis columns (two (h, d) × (d, used) GEMMs) and O(h)
    per entry and direction, against forming Q (h·d²) and Q B for the entries' columns (d²·n) per
    direction."""
    columns = 2 * h * d * used + 3 * h * n + b * h * n
    through_q = b * (h * d * d + d * d * n + d * n)
    return columns <= through_q


def _entries_on_basis(layer, dirs, rows, cols, basis, offset, dtype, max_memory):
    work = working_dtype(torch.promote_types(layer.dtype, basis.dtype), dtype)
    w, v, b_tilde = layer.homogeneous_on_basis(basis, offset, work)
    d_tilde, h, n, b = b_tilde.shape[0], layer.d_hidden, len(rows), len(dirs)
    used, position = torch.unique(torch.cat([rows, cols]), return_inverse=True)
    budget = memory_budget(layer.device, max_memory)
    columns_bytes = 2 * h * len(used) * work.itemsize
    if columns_route_is_cheaper(h, d_tilde, len(used), n, b) and 2 * columns_bytes <= budget:
        # the layer on just the touched columns: its constant, if any, is one of them
        picked = b_tilde[:, used.to(layer.device)]
        narrow = BilinearLayer(w @ picked, v @ picked, layer.p)
        out = _entries_in_hidden_space(narrow, dirs, position[:n], position[n:], work, budget - columns_bytes)
        return to_framework(out, layer.framework)

    out = torch.empty(b, n, dtype=work, device=layer.device)
    # half the budget for forming Q̃ (a scaled (h, d̃) copy and two d̃ × d̃ products per direction),
    # half for the entries: two gathered basis columns and one column of Q̃ B̃ per direction
    per_direction = (h * d_tilde + 2 * d_tilde * d_tilde) * work.itemsize
    dir_step = chunk_size(b, per_direction, budget // 2, f"interaction_entries on a basis of {basis.shape[1]}")
    entry_step = chunk_size(max(n, 1), (dir_step + 2) * d_tilde * work.itemsize, budget // 2,
                            f"interaction_entries on a basis of {basis.shape[1]}")
    diagonal = torch.equal(rows, cols) and torch.equal(rows, torch.arange(n))  # slices, not gathers
    rows, cols = rows.to(layer.device), cols.to(layer.device)
    for start in range(0, b, dir_step):
        stop = min(start + dir_step, b)
        q = build_interaction(w, v, dirs.chunk(start, stop).coefficients(layer, work))  # (b, d̃, d̃)
        for first in range(0, n, entry_step):
            last = min(first + entry_step, n)
            if diagonal:
                left = right_basis = b_tilde[:, first:last]
            else:
                left, right_basis = b_tilde[:, rows[first:last]], b_tilde[:, cols[first:last]]
            right = torch.matmul(q, right_basis)  # (b, d̃, m)
            out[start:stop, first:last] = right.mul_(left).sum(dim=1)
    return to_framework(out, layer.framework)


def interaction_diagonal(layer: BilinearLayer, directions, *, basis=None, offset=None, dtype=None, max_memory=None):
    """The diagonals Q(u)[i, i], (b, d) (d + 1 for a biased layer): Σ_k c_k W[k, i] V[k, i], one
    (b, h) × (h, d) GEMM. Same conventions, `basis` and `offset` as `interaction_entries` (then
    (b, F), or F + 1 with a constant)."""
    _check_layer(layer)
    basis_t, offset_t, size = layer.form_on_basis(basis, offset)
    every = torch.arange(size)
    return interaction_entries(layer, directions, every, every, basis=basis_t, offset=offset_t, dtype=dtype,
                               max_memory=max_memory)
