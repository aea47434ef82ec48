"""Output-mode SVD of the whole symmetrized interaction tensor, never forming it.

The tensor S (o, d, d) unfolded as (o, d²) has left singular vectors and singular values given by
the eigenpairs of its o × o Gram matrix G = S Sᵀ = P M Pᵀ (hidden_gram.py), σᵢ = √λᵢ(G). Cost:
4·h²·d (M, by row blocks) + o·h² + o²·h (P M Pᵀ) + a dense o × o eigh, against o·h·d² to form S
and an SVD of an (o, d²) matrix. Component i is σᵢ · (output_vectors[:, i] ⊗ Q(uᵢ)/σᵢ): its
input-side factor Q(uᵢ)/σᵢ is what `decompose(layer, output_vectors.T)` eigendecomposes.

Precision: through the Gram matrix, a singular value σ is resolved to about eps·σ₁²/σ, so values
below √eps·σ₁ (3e-4·σ₁ in float32, 1e-8·σ₁ in float64) carry little relative accuracy; use
dtype=torch.float64 when the small ones matter.
"""
from __future__ import annotations

import numbers

import torch

from .._arrays import to_framework, working_dtype
from ..interaction import _check_layer
from ..layer import BilinearLayer
from ..memory import format_bytes, memory_budget
from ..solvers.selection import fix_signs
from .hidden_gram import gram_block, gram_rows_per_block


@torch.no_grad()  # singular vectors are results, not part of a training graph
def output_svd(layer: BilinearLayer, k: int | None = None, *, dtype=None, max_memory=None):
    """(singular_values (k,), output_vectors (o, k)) of the symmetrized tensor unfolded as (o, d²).

    k: 1..o, default o (all). Singular values descending; each output vector a unit column whose
    largest-|entry| is positive. A biased layer's tensor is that of its homogeneous form (d + 1).
    The o × o Gram matrix and its eigenvectors (2·o² numbers) must fit in `max_memory`, else a
    MemoryError names the bytes; the h × h work is done in row blocks within what is left.
    Results in the layer's framework and working precision.
    """
    _check_layer(layer)
    o, h = layer.d_out, layer.d_hidden
    if k is not None:
        if isinstance(k, bool) or not isinstance(k, numbers.Integral):
            raise TypeError(f"k must be an int or None, got {type(k).__name__}")
        if not 1 <= k <= o:
            raise ValueError(f"k must be in [1, o] = [1, {o}] for this layer, got {k}")
    k = o if k is None else int(k)
    work = working_dtype(layer.dtype, dtype)
    budget = memory_budget(layer.device, max_memory)
    resident = 2 * o * o * work.itemsize  # G and its eigenvectors
    if resident > budget:
        raise MemoryError(
            f"output_svd of a layer with d_out={o} holds the {o} × {o} Gram matrix and its eigenvectors "
            f"in {work}: {resident} bytes ({format_bytes(resident)}), over the memory budget of "
            f"{format_bytes(budget)}; raise max_memory")
    w, v = layer.homogeneous(work)
    gram = output_gram(w, v, None if layer.p is None else layer.p.to(work), budget - resident)
    eigenvalues, eigenvectors = torch.linalg.eigh(gram)
    order = torch.argsort(eigenvalues, descending=True, stable=True)[:k]
    # G is positive semi-definite: a negative eigenvalue is rounding, its singular value 0
    singular_values = eigenvalues[order].clamp_min(0).sqrt()
    vectors = fix_signs(eigenvectors[:, order][None])[0]
    return to_framework(singular_values, layer.framework), to_framework(vectors, layer.framework)


def output_gram(w: torch.Tensor, v: torch.Tensor, p: torch.Tensor | None, budget: int) -> torch.Tensor:
    """G = P M Pᵀ (o, o), or M itself when p is None, accumulated over row blocks of M whose
    temporaries stay within `budget`."""
    h = w.shape[0]
    o = h if p is None else p.shape[0]
    extra = 0 if p is None else o * w.dtype.itemsize  # the block's (r, o) product with Pᵀ
    step = gram_rows_per_block(h, w.dtype.itemsize, budget, extra, "output_svd (one row of the h × h matrix)")
    gram = torch.zeros(o, o, dtype=w.dtype, device=w.device)
    for start in range(0, h, step):
        stop = min(start + step, h)
        block = gram_block(w, v, start, stop)  # M[R, :]
        if p is None:
            gram[start:stop] = block
        else:
            gram.addmm_(p[:, start:stop], block @ p.mT)  # P[:, R] M[R, :] Pᵀ
    return gram
