"""Frobenius norms ‖Q(u)‖_F of interaction matrices, differentiable in the weights.

Two exact routes, the cheaper one taken (multiply-adds, b directions, d the form's size):
  gram      ‖Q(u)‖²_F = cᵀ M c with the h × h matrix M of hidden_gram.py, by row blocks:
            4·h²·d + b·h², whatever b is: the route for many directions;
  matrices  Q(u) formed per direction and its norm taken: b·h·d², the route for a few
            directions through a wide layer (a training penalty on some outputs of an LM layer).
Both are plain torch without no_grad, so the norms can be a training loss. When a gradient is
wanted each block is checkpointed (recomputed in the backward pass), so the backward pass keeps
within the memory budget as the forward does.
"""
from __future__ import annotations

import torch
from torch.utils.checkpoint import checkpoint

from .._arrays import to_framework, working_dtype
from ..directions import parse_directions
from ..interaction import _check_layer, build_interaction_reference, interaction_bytes_per_direction
from ..layer import BilinearLayer
from ..memory import chunk_size, memory_budget
from .hidden_gram import gram_block, gram_rows_per_block

ROUTES = ("auto", "gram", "matrices")


def choose_route(h: int, d: int, b: int) -> str:
    """The cheaper exact route by multiply-adds (module docstring)."""
    return "gram" if 4 * h * h * d + b * h * h <= b * h * d * d else "matrices"


def interaction_norms(layer: BilinearLayer, directions, *, route: str = "auto", dtype=None, max_memory=None):
    """‖Q(u)‖_F for every direction, (b,), never forming the o×d×d tensor.

    Differentiable with respect to the weights (and float directions) when they require grad.
    route: "auto" (the cheaper, module docstring), "gram" or "matrices"; both exact.
    Temporaries stay under `max_memory`. Results in the layer's framework and working precision.
    """
    _check_layer(layer)
    if route not in ROUTES:
        raise ValueError(f"route must be one of {ROUTES}, got {route!r}")
    dirs = parse_directions(directions, layer.d_out)
    work = working_dtype(layer.dtype, dtype)
    budget = memory_budget(layer.device, max_memory)
    h, d, b = layer.d_hidden, layer.d_form, len(dirs)
    if route == "auto":
        route = choose_route(h, d, b)
    w, v = layer.homogeneous(work)
    c = dirs.coefficients(layer, work)  # (b, h)
    squared = _by_gram(w, v, c, budget) if route == "gram" else _by_matrices(w, v, c, budget)
    # clamp: rounding can leave cᵀMc a hair below 0 for Q = 0; sqrt'(0) is infinite, so guard it
    norms = torch.sqrt(squared.clamp_min(torch.finfo(work).tiny))
    norms = torch.where(squared > 0, norms, torch.zeros_like(norms))
    return to_framework(norms, layer.framework)


def _needs_grad(*tensors) -> bool:
    return torch.is_grad_enabled() and any(t.requires_grad for t in tensors)


def _by_gram(w, v, c, budget) -> torch.Tensor:
    h, b = w.shape[0], c.shape[0]
    step = gram_rows_per_block(h, w.dtype.itemsize, budget, 2 * b * w.dtype.itemsize,
                               "interaction_norms (one row of the h × h matrix)")
    grad = _needs_grad(w, v, c)
    total = torch.zeros(b, dtype=w.dtype, device=w.device)
    for start in range(0, h, step):
        stop = min(start + step, h)
        if grad:
            part = checkpoint(_gram_part, w, v, c, start, stop, use_reentrant=False)
        else:
            part = _gram_part(w, v, c, start, stop)
        total = total + part
    return total


def _gram_part(w, v, c, start: int, stop: int) -> torch.Tensor:
    """Σ_{k in R} c_k (M[R, :] c)_k for every direction: (b,)."""
    block = gram_block(w, v, start, stop)  # (r, h)
    return ((block @ c.mT) * c[:, start:stop].mT).sum(0)


def _by_matrices(w, v, c, budget) -> torch.Tensor:
    h, d = w.shape
    step = chunk_size(c.shape[0], interaction_bytes_per_direction(h, d, w.dtype.itemsize), budget,
                      "interaction_norms (one interaction matrix)")
    grad = _needs_grad(w, v, c)
    parts = []
    for start in range(0, c.shape[0], step):
        sub = c[start:start + step]
        parts.append(checkpoint(_matrix_part, w, v, sub, use_reentrant=False) if grad else _matrix_part(w, v, sub))
    return torch.cat(parts)


def _matrix_part(w, v, c) -> torch.Tensor:
    q = build_interaction_reference(w, v, c)  # plain torch: differentiable on every device
    return (q * q).sum((-1, -2))
