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


def gather_pairs(values: torch.Tensor, vectors: torch.Tensor, idx: torch.Tensor):
    """values (b, n), vectors (b, d, n), idx (b, k) -> (b, k), (b, d, k)."""
    vals = torch.gather(values, -1, idx)
    vecs = torch.gather(vectors, -1, idx[:, None, :].expand(-1, vectors.shape[1], -1))
    return vals, vecs


def fix_signs(vectors: torch.Tensor, out: torch.Tensor | None = None) -> torch.Tensor:
    """Flip each column (b, d, k) so that its largest-|entry| is positive (first such entry on ties);
    written into `out` when given (saves a copy of every vector)."""
    peak = vectors.abs().argmax(dim=-2, keepdim=True)
    sign = torch.sign(torch.gather(vectors, -2, peak))
    sign[sign == 0] = 1
    return torch.mul(vectors, sign, out=out)
