"""Which eigenpairs to keep, in which order, and their deterministic sign."""
from __future__ import annotations

import torch

WHICH = ("LM", "LA", "SA", "BE")


def select(values: torch.Tensor, k: int, which: str) -> torch.Tensor:
    """Indices (b, k) of the k eigenvalues wanted by `which`, most important first.

    LM: largest |λ| first (ties: positive first); LA: largest first; SA: smallest first;
    BE: the ⌈k/2⌉ largest and ⌊k/2⌋ smallest, ordered by |λ| like LM.
    """
    if which == "LA":
        return torch.argsort(values, dim=-1, descending=True, stable=True)[..., :k]
    if which == "SA":
        return torch.argsort(values, dim=-1, stable=True)[..., :k]
    if which == "LM":
        return _by_magnitude(values, torch.argsort(values, dim=-1, descending=True, stable=True))[..., :k]
    if which == "BE":
        descending = torch.argsort(values, dim=-1, descending=True, stable=True)
        n, n_low, n_high = values.shape[-1], k // 2, k - k // 2
        chosen = torch.cat([descending[..., :n_high], descending[..., n - n_low:]], dim=-1)
        return _by_magnitude(values, chosen)
    raise ValueError(f"which must be one of {WHICH}, got {which!r}")


def _by_magnitude(values: torch.Tensor, candidates: torch.Tensor) -> torch.Tensor:
    """Reorder `candidates` (already in descending-λ order) by |λ| descending, stably, so that
    among a ± pair of equal magnitude the positive one comes first."""
    mags = torch.gather(values, -1, candidates).abs()
    order = torch.argsort(mags, dim=-1, descending=True, stable=True)
    return torch.gather(candidates, -1, order)


def positive_first(values: torch.Tensor, slack: torch.Tensor) -> torch.Tensor:
    """Permutation (b, k) of values (b, k), already ordered by |λ| descending, that puts a positive
    λ before a negative one whose |λ| agrees with it within their combined `slack` (b, k), the
    uncertainty of each value (an iterative solver's residual bound): for such values the order
    by magnitude is not known, and the rule "positive first on ties" decides it. Only pairs of
    opposite sign move, each positive past negatives within slack of its own |λ| (no chaining), by
    odd–even transposition passes; same-sign values keep their order."""
    b, k = values.shape
    perm = torch.arange(k, device=values.device).expand(b, k).clone()
    vals, slack = values.clone(), slack.clone()
    for _ in range(k):
        moved = False
        for first in (0, 1):
            i = torch.arange(first, k - 1, 2, device=values.device)
            if not i.numel():
                continue
            j = i + 1
            left, right = vals[:, i], vals[:, j]
            swap = (left < 0) & (right > 0) & ((left.abs() - right.abs()).abs() <= slack[:, i] + slack[:, j])
            if not bool(swap.any()):
                continue
            moved = True
            for t in (vals, slack, perm):
                a, c = t[:, i].clone(), t[:, j].clone()
                t[:, i] = torch.where(swap, c, a)
                t[:, j] = torch.where(swap, a, c)
        if not moved:
            break
    return perm


def largest_cluster(values: torch.Tensor, slack: torch.Tensor) -> torch.Tensor:
    """Size (b,) of the largest group among values (b, k) that may all be one eigenvalue: values
    chained by neighbours (in sorted order) closer than their combined `slack` (b, k)."""
    b, k = values.shape
    if k == 0:
        return torch.zeros(b, dtype=torch.int64, device=values.device)
    ordered, order = values.sort(dim=-1)
    slack = torch.gather(slack, -1, order)
    apart = (ordered[:, 1:] - ordered[:, :-1]) > slack[:, 1:] + slack[:, :-1]
    group = torch.cat([torch.zeros(b, 1, dtype=torch.int64, device=values.device),
                       torch.cumsum(apart.long(), dim=-1)], dim=-1)
    sizes = torch.zeros(b, k, dtype=torch.int64, device=values.device).scatter_add_(1, group, torch.ones_like(group))
    return sizes.amax(dim=-1)


def gather_pairs(values: torch.Tensor, vectors: torch.Tensor, idx: torch.Tensor):
    """values (b, n), vectors (b, d, n), idx (b, k) -> (b, k), (b, d, k)."""
    vals = torch.gather(values, -1, idx)
    vecs = torch.gather(vectors, -1, idx[:, None, :].expand(-1, vectors.shape[1], -1))
    return vals, vecs


def fix_signs(vectors: torch.Tensor, out: torch.Tensor | None = None) -> torch.Tensor:
    """Flip each column (b, d, k) so that its largest-|entry| is positive (first such entry on ties);
    written into `out` when given (saves a copy of every vector)."""
    # the column's max and min give its sign in one pass with no |v| copy (2× faster at
    # (512, 64, 64)); only columns whose max and -min tie need the first peak's own sign
    low, high = torch.aminmax(vectors, dim=-2, keepdim=True)
    sign = torch.where(high >= -low, 1.0, -1.0).to(vectors.dtype)
    tie = high == -low
    if bool(tie.any()):
        peak = vectors.abs().argmax(dim=-2, keepdim=True)
        first = torch.sign(torch.gather(vectors, -2, peak))
        first[first == 0] = 1
        sign = torch.where(tie, first, sign)
    return torch.mul(vectors, sign, out=out)
