"""Matrix-free top-k: batched block Krylov–Schur (block Lanczos with full reorthogonalization and
thick restarts), all directions of a batch in lockstep.

State per direction: an orthonormal basis B (d, m), the projected matrix T = Bᵀ Q B (m, m) and
the next block X (d, p), orthonormal and orthogonal to B, such that Q B = B T + X C, where only the
last block's columns of C are non-zero. Each step multiplies X by Q (two wide GEMMs for the whole
batch through `apply`), appends it to B and orthogonalizes the product into the next X. Ritz pairs
(θ, B s) come from eigh(T) and their residual norms cost nothing: ‖Q B s − θ B s‖ = ‖C s‖.
When the basis is full, it is compressed to the most wanted Ritz vectors (thick restart); a
direction whose k wanted pairs have converged leaves the batch.

Blocks resolve clusters and ± pairs of equal magnitude, which single-vector Lanczos cannot: the
block size should be at least the largest cluster among the wanted eigenvalues. A block of p
vectors finds at most p copies of a repeated eigenvalue, and their residuals are as small as any,
so a run reports the largest group of wanted values equal within their residual bounds
(`largest_cluster`); `decompose` reruns a direction with a wider block when it reaches p. Ritz
values within their residual bounds of each other in magnitude and of opposite sign are ordered
positive first, as the direct methods order exact ties.
"""
from __future__ import annotations

import math
import warnings
from typing import NamedTuple

import torch

from .selection import largest_cluster, positive_first, select


# a new block row shorter than this share of ‖Q‖ is orthogonalized against the basis again: the
# tilt left after normalizing stays under 100·eps (see _next_block)
REORTHOGONALIZE_BELOW = 1e-2


class KrylovRun(NamedTuple):
    values: torch.Tensor     # (b, k) wanted Ritz values, most important first
    vectors: torch.Tensor    # (b, d, k) their unit Ritz vectors, as columns
    residuals: torch.Tensor  # (b, k) estimated ‖Q y − θ y‖ / ‖Q‖
    norms: torch.Tensor      # (b,) ‖Q‖ estimate used above: a lower bound (largest |Ritz value| or ‖Q x‖ seen)
    products: torch.Tensor   # (b,) columns multiplied by Q for each direction
    # (b,) size of the largest group of wanted values that may be one eigenvalue (equal within
    # their residual bounds): when it reaches the block size, copies of that eigenvalue may be
    # missing (a block of p vectors finds at most p copies of any eigenvalue), so the caller
    # reruns with a wider block
    largest_cluster: torch.Tensor


class ConvergenceWarning(UserWarning):
    """The matrix-free solver stopped at its product limit before every pair reached `tol`."""


def default_block_size(k: int, d: int, device: torch.device | str = "cpu") -> int:
    """Block width p. Krylov needs few products with narrow blocks, but a GPU wants wide GEMMs;
    a block also must be at least as wide as any cluster of equal wanted eigenvalues (± pairs sit
    at opposite ends of the spectrum and need no width)."""
    if torch.device(device).type == "cuda":
        p = min(max(k, 8), 32)
    else:
        p = min(max((k + 3) // 4, 4), 16)
    return max(1, min(d, p))


def default_max_basis(k: int, p: int, d: int) -> int:
    return min(d, max(2 * k + 2 * p, k + 8 * p, 96))


class _Batch:
    """Krylov state of the directions still running, stacked along the first dimension."""

    def __init__(self, ids, c, basis, t, x, scale):
        self.ids, self.c, self.basis, self.t, self.x, self.scale = ids, c, basis, t, x, scale

    def keep(self, mask: torch.Tensor) -> "_Batch":
        return _Batch(self.ids[mask], self.c[mask], self.basis[mask], self.t[mask], self.x[mask], self.scale[mask])


def krylov_topk(apply_rows, c: torch.Tensor, d: int, k: int, which: str, tol: float, *,
                block_size: int | None = None, max_basis: int | None = None,
                max_products: int | None = None, seed: int = 0) -> KrylovRun:
    """Top-k eigenpairs of Q(c_i) for coefficient rows c (b, h), through products
    `apply_rows(c, X)` that apply each Q(c_i) to the rows of X_i (b, m, d).

    Vectors are kept as rows (b, m, d) throughout, so every product and projection is a GEMM on
    contiguous row-major operands. Warns with ConvergenceWarning, naming how many directions
    stopped short, when `max_products` runs out.
    """
    b = c.shape[0]
    dtype, device = c.dtype, c.device
    p = min(block_size or default_block_size(k, d, device), d)
    # Ritz values are only trusted with p spare ones beside the k wanted (an invariant subspace
    # of exactly k columns would make every Ritz value "wanted" and "converged"), so checks start
    # at k + p columns, and the basis holds k + 2p so a restart always comes after a check.
    m_max = min(max(max_basis or default_max_basis(k, p, d), k + 2 * p), d)
    m_trusted = min(k + p, d)
    max_products = max_products or max(4 * m_max, 2 * d)
    keep_after_restart = min(m_max - p, k + (m_max - k) // 2)
    eps = torch.finfo(dtype).eps

    gen = torch.Generator(device=device).manual_seed(seed)
    start = torch.randn(b, p, d, generator=gen, dtype=dtype, device=device)
    state = _Batch(
        ids=torch.arange(b, device=device), c=c,
        basis=torch.zeros(b, m_max, d, dtype=dtype, device=device),
        t=torch.zeros(b, m_max, m_max, dtype=dtype, device=device),
        x=_orthonormal_rows(start), scale=torch.zeros(b, dtype=dtype, device=device),
    )
    out_vals = torch.zeros(b, k, dtype=dtype, device=device)
    out_vecs = torch.zeros(b, k, d, dtype=dtype, device=device)
    out_res = torch.zeros(b, k, dtype=dtype, device=device)
    out_norm = torch.zeros(b, dtype=dtype, device=device)
    products = torch.zeros(b, dtype=torch.int64, device=device)

    m, spent, since_check = 0, 0, 0
    while state.ids.numel():
        # -- expand: multiply the pending block, fold it into B and T ---------------------------
        x = state.x
        width = x.shape[1]
        qx = apply_rows(state.c, x)
        spent += width
        # ‖Q x‖ ≤ ‖Q‖ for unit x: a running lower bound on each operator's norm, for rank decisions
        state.scale = torch.maximum(state.scale, torch.linalg.vector_norm(qx, dim=-1).amax(-1))
        new = slice(m, m + width)
        state.basis[:, new] = x
        resid, coef = _orthogonalize(qx, state.basis[:, :new.stop])
        state.t[:, :m, new] = coef[:, :, :m].mT
        state.t[:, new, :m] = coef[:, :, :m]
        state.t[:, new, new] = 0.5 * (coef[:, :, new] + coef[:, :, new].mT)
        m += width
        since_check += 1

        # -- next block: orthonormal basis of what Q B adds outside B --------------------------
        room = min(p, d - m)
        if room > 0:
            state.x = _next_block(resid[:, :room], state.basis[:, :m], state.scale, gen, eps)
            c_last = state.x @ resid.mT  # (b, room, width): Q B = B T + X C on the last block
        else:
            c_last = None  # B spans the whole space: Rayleigh–Ritz is exact

        restart = room == 0 or m + room > m_max
        due = m >= m_trusted and (restart or spent >= max_products or since_check >= _check_every(m, d, p, state.c.shape[1]))
        if not due:
            continue
        since_check = 0

        # -- Rayleigh–Ritz and convergence ---------------------------------------------------
        theta, s = torch.linalg.eigh(state.t[:, :m, :m])
        wanted = select(theta, k, which)
        s_wanted = torch.gather(s, -1, wanted[:, None, :].expand(-1, m, -1))
        theta_wanted = torch.gather(theta, -1, wanted)
        # two lower bounds on ‖Q‖: the largest |Ritz value| and the largest ‖Q x‖ of a unit x seen
        # (for LA/SA the Ritz values may not have reached the other end of the spectrum yet)
        norm = torch.maximum(theta.abs().amax(-1), state.scale)
        if c_last is None:
            res = torch.zeros_like(theta_wanted)
        else:
            res = torch.linalg.vector_norm(c_last @ s_wanted[:, m - width:], dim=-2)
            res = res / norm.clamp_min(torch.finfo(dtype).tiny)[:, None]
        done = (res <= tol).all(-1) | (c_last is None) | (spent >= max_products)
        if bool(done.any()):
            ids = state.ids[done]
            out_vals[ids] = theta_wanted[done]
            out_vecs[ids] = s_wanted[done].mT @ state.basis[done][:, :m]
            out_res[ids] = res[done]
            out_norm[ids] = norm[done]
            products[ids] = spent
            state = state.keep(~done)
            theta, s = theta[~done], s[~done]
        if not state.ids.numel() or not restart:
            continue

        # -- thick restart: compress B to the most wanted Ritz vectors -----------------------
        # Q B s = B s θ + X C s: the kept vectors' coupling to X reappears in T at the next
        # expansion, through orthogonalization against the compressed basis.
        kept = select(theta, keep_after_restart, which)
        s_kept = torch.gather(s, -1, kept[:, None, :].expand(-1, m, -1))
        state.basis[:, :keep_after_restart] = s_kept.mT @ state.basis[:, :m]
        state.t.zero_()
        diag = torch.arange(keep_after_restart, device=device)
        state.t[:, diag, diag] = torch.gather(theta, -1, kept)
        m = keep_after_restart

    # Ritz values carry an error up to their absolute residual: within it, a ± pair of equal |λ|
    # is a tie, ordered positive first as the direct methods order exact ties.
    slack = out_res * out_norm[:, None] + 8 * eps * out_norm[:, None]
    if which in ("LM", "BE") and k > 1:
        perm = positive_first(out_vals, slack)
        out_vals, out_res, slack = (torch.gather(t, -1, perm) for t in (out_vals, out_res, slack))
        out_vecs = torch.gather(out_vecs, 1, perm[:, :, None].expand(-1, -1, d))
    clusters = largest_cluster(out_vals, slack)

    short = int((out_res > tol).any(-1).sum())
    if short:
        warnings.warn(
            f"{short} of {b} direction(s) did not reach tol={tol:g} within {max_products} products "
            f"(worst relative residual {float(out_res.max()):.2e}); raise max_products or use method='eigh'",
            ConvergenceWarning, stacklevel=4,
        )
    return KrylovRun(out_vals, out_vecs.mT, out_res, out_norm, products, clusters)


def _orthonormal_rows(x: torch.Tensor) -> torch.Tensor:
    """Orthonormalize the rows of x (b, p, d)."""
    return torch.linalg.qr(x.mT).Q.mT


def _orthogonalize(qx, basis):
    """Project the rows of qx (b, p, d) off the span of basis rows (b, m, d), twice (classical
    Gram–Schmidt with one reorthogonalization keeps full orthogonality in floating point).
    Returns the residual and the accumulated coefficients (b, p, m): T's new columns."""
    coef = qx @ basis.mT
    resid = torch.baddbmm(qx, coef, basis, alpha=-1)
    again = resid @ basis.mT
    return torch.baddbmm(resid, again, basis, alpha=-1), coef + again


def _next_block(resid, basis, scale, gen, eps):
    """Orthonormal rows spanning `resid` (b, p, d), already orthogonal to `basis` (b, m, d).

    Nothing of `resid` may be dropped, or Q B = B T + X C would stop holding and the residual
    estimates ‖C s‖ would read low. After two Gram–Schmidt passes a row still leans on the basis
    by about eps·‖Q‖ in absolute terms, so normalizing a row of norm r tilts it by eps·‖Q‖/r:
    rows small against ‖Q‖ (below REORTHOGONALIZE_BELOW of it: an invariant subspace is near,
    as for rank-deficient or low-rank Q, or B is about to span the whole space) are kept but
    re-orthogonalized; rows with nothing left in them (below one ulp of ‖Q‖, e.g. a zero Q) are
    replaced by random vectors, so the basis keeps growing."""
    q, r = torch.linalg.qr(resid.mT)
    q = q.mT
    diag = torch.diagonal(r, dim1=-2, dim2=-1).abs()
    level = scale[:, None]
    empty = diag <= eps * level
    small = diag <= REORTHOGONALIZE_BELOW * level
    if not bool(small.any()):
        return q
    noise = torch.randn(q.shape, generator=gen, dtype=q.dtype, device=q.device)
    q = torch.where(empty[:, :, None], noise, q)
    for _ in range(2):
        q = torch.baddbmm(q, q @ basis.mT, basis, alpha=-1)
        q = _orthonormal_rows(q)
    return q


def _check_every(m: int, d: int, p: int, h: int) -> int:
    """Steps between Rayleigh–Ritz checks, so that eigh of T (measured ~1.2e-10·m³ s per matrix
    on CPU) costs about a tenth of the products (4·h·d·p flops a step at ~130 GFLOP/s); skipping
    checks overshoots by (every − 1)/2 steps on average."""
    ratio = 160 * m**3 / max(1, 4 * h * d * p)
    return int(min(4, max(1, math.ceil(ratio))))
