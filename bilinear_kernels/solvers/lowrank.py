"""Exact low-rank path for 2h < d.

With A = [V; W] (2h, d), Q(c) = Aᵀ M_c A, M_c = ½[[0, D_c], [D_c, 0]]. One thin QR Aᵀ = U R,
shared by every direction, reduces each Q to the 2h×2h matrix K = R M_c Rᵀ: its eigenpairs (μ, s)
give Q's as (μ, U s), and the other d − 2h eigenvalues are exactly zero, with eigenvectors spanning
the orthogonal complement of U. Exact, no iteration, cost independent of d after the QR.
"""
from __future__ import annotations

import torch

from .dense import eigh
from .selection import gather_pairs, select


class LowRankReduction:
    """The shared QR of [V; W]ᵀ and the per-direction reduced matrices."""

    def __init__(self, w: torch.Tensor, v: torch.Tensor):
        h, d = w.shape
        if 2 * h >= d:
            raise ValueError(f"method='lowrank' needs 2h < d, got h={h}, d={d} (use 'eigh' or 'lanczos')")
        self.h, self.d = h, d
        self._stacked_t = torch.cat([v, w], dim=0).t()  # Aᵀ, (d, 2h)
        self.u, r = torch.linalg.qr(self._stacked_t)  # (d, 2h), (2h, 2h)
        # V = R_Vᵀ Uᵀ and W = R_Wᵀ Uᵀ: the layer's weights in the 2h-dim coordinates of U
        self.v_reduced = r[:, :h].t().contiguous()  # (h, 2h)
        self.w_reduced = r[:, h:].t().contiguous()  # (h, 2h)
        self._complement = None

    def complement(self) -> torch.Tensor:
        """An orthonormal basis (d, d − 2h) of the null space of Q, computed once when needed."""
        if self._complement is None:
            full, _ = torch.linalg.qr(self._stacked_t, mode="complete")
            self._complement = full[:, 2 * self.h:]
        return self._complement

    def topk(self, c: torch.Tensor, k: int, which: str, residuals: bool = True):
        """values (b, k), unit eigenvectors (b, d, k), relative residuals (b, k) (None when not
        asked) and the exact ‖Q‖ (b,) of Q(c) for coefficient rows c (b, h): ‖Q‖ is the largest
        |μ|, since the rest of the spectrum is zero.

        Residuals come from the reduced problem: Q U s − μ U s = U (K s − μ s) and U has
        orthonormal columns, so ‖Q v − μ v‖ = ‖K s − μ s‖ (a product with the 2h×2h K, not with
        Q), exact but for the rounding of the shared QR; a structural zero's vector spans the
        null space of Q and has residual 0."""
        from ..interaction import build_interaction

        reduced = build_interaction(self.w_reduced, self.v_reduced, c)  # (b, 2h, 2h)
        mu, s = eigh(reduced)
        norm = mu.abs().amax(-1)
        b, n = mu.shape
        zeros = torch.zeros(b, self.d - n, dtype=mu.dtype, device=mu.device)
        idx = select(torch.cat([mu, zeros], dim=-1), k, which)
        in_range = idx < n
        vals = torch.gather(torch.cat([mu, zeros], dim=-1), -1, idx)
        inside = idx.clamp(max=n - 1)
        resid = None
        if k > n:
            # more wanted than the 2h non-structural pairs: work on those n once, then pick
            if residuals:
                all_resid = torch.linalg.vector_norm(reduced @ s - s * mu[:, None, :], dim=-2)
                resid = torch.gather(all_resid, -1, inside)
            lifted = torch.gather(self.u @ s, -1, inside[:, None, :].expand(-1, self.d, -1))
        else:
            _, coeffs = gather_pairs(mu, s, inside)
            if residuals:
                resid = torch.linalg.vector_norm(reduced @ coeffs - coeffs * vals[:, None, :], dim=-2)
            lifted = self.u @ coeffs
        if resid is not None:
            resid = torch.where(in_range, resid, torch.zeros_like(resid))
            resid = resid / torch.where(norm > 0, norm, torch.ones_like(norm))[:, None]
        if bool(in_range.all()):
            return vals, lifted, resid, norm
        # Some wanted eigenvalues are structural zeros: their vectors are columns of U⊥.
        from_complement = self.complement()[:, (idx - n).clamp(min=0)].permute(1, 0, 2)  # (b, d, k)
        vecs = torch.where(in_range[:, None, :], lifted, from_complement)
        return vals, vecs, resid, norm


def lowrank_bytes_per_direction(h: int, d: int, k: int, itemsize: int) -> int:
    n = 2 * h
    return (h * n + 4 * n * n + 2 * d * k) * itemsize
