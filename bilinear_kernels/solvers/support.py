"""Exact reduction to the support of c = Pᵀu (method="support").

Q(c) = Σ_{k ∈ S} c_k sym(w_k v_kᵀ), S = supp c with s elements, lives in span{w_k, v_k : k ∈ S}.
This is lowrank.py's reduction applied per direction to the support instead of once to all of
[V; W]: one thin QR [V_S; W_S]ᵀ = U R reduces Q to the 2s×2s K = R M_c Rᵀ, whose eigenpairs (μ, y)
give Q's as (μ, U y); the other d − 2s eigenvalues are exactly zero, with eigenvectors completing
U to an orthonormal basis. Directions of equal support size are solved as one batch, and nothing of
size d×d is formed (unless d eigenvectors are asked for).

One feature (s = 1) has a closed form: sym(w vᵀ) has eigenvalues ½(wᵀv ± ‖w‖‖v‖) = ±¼‖w‖‖v‖‖ŵ ± v̂‖²
with eigenvectors ŵ ± v̂ (ŵ = w/‖w‖, v̂ = v/‖v‖). Written with ‖ŵ ± v̂‖² the small eigenvalue keeps
its relative accuracy when w and v are nearly parallel. A degenerate feature (w or v zero, or
ŵ = ±v̂) goes through the general reduction instead.
"""
from __future__ import annotations

import torch

from .dense import eigh
from .selection import select


def support_size_bound(w_rows: int, p: torch.Tensor | None, indices: torch.Tensor | None,
                       vectors: torch.Tensor | None) -> torch.Tensor:
    """An upper bound (b,) int64 of |supp Pᵀu| for each direction, without forming Pᵀu: the sum of
    the support sizes of the rows of P that u touches (P = identity when None), at most `w_rows`
    (h). Exact for one-hot directions and for a layer without P."""
    if p is None:
        if indices is not None:
            return torch.ones(len(indices), dtype=torch.int64)
        return (vectors != 0).sum(-1).to(torch.int64).cpu()
    row_sizes = (p != 0).sum(-1)  # (o,)
    if indices is not None:
        sizes = row_sizes[indices.to(p.device)]
    else:
        # counts as float64 are exact far beyond any layer's h
        sizes = ((vectors.to(p.device) != 0).to(torch.float64) @ row_sizes.to(torch.float64)).to(torch.int64)
    return sizes.clamp(max=w_rows).cpu()


def support_topk(w: torch.Tensor, v: torch.Tensor, c: torch.Tensor, k: int, which: str, first: int = 0):
    """values (b, k), unit eigenvectors (b, d, k), relative residuals (b, k) and the exact ‖Q‖
    (b,) of Q(c) = ½(Wᵀ diag(c) V + Vᵀ diag(c) W) for coefficient rows c (b, h) and w, v (h, d).

    Every direction must have 2·|supp c| < d (else a ValueError naming the first that does not,
    at batch position `first` + its row). Residuals are exact from the reduced problem:
    ‖Q U y − μ U y‖ = ‖K y − μ y‖ as U has orthonormal columns (the closed form's are computed by
    the product through w and v); a structural zero's vector is orthogonal to the span of Q and
    has residual 0."""
    b, d = c.shape[0], w.shape[1]
    present = c != 0
    sizes = torch.count_nonzero(c, dim=-1)
    too_large = 2 * sizes >= d
    if bool(too_large.any()):
        i = int(too_large.nonzero()[0])
        raise ValueError(f"method='support' needs 2·|supp Pᵀu| < d = {d} for every direction; the direction at "
                         f"position {first + i} has {int(sizes[i])} nonzero coefficients (use 'eigh' or 'lanczos')")
    vals = torch.empty(b, k, dtype=w.dtype, device=w.device)
    vecs = torch.empty(b, d, k, dtype=w.dtype, device=w.device)
    resid = torch.empty(b, k, dtype=w.dtype, device=w.device)
    norm = torch.empty(b, dtype=w.dtype, device=w.device)
    for s in sizes.unique().tolist():
        rows = (sizes == s).nonzero().flatten()
        if s == 0:  # Q = 0: every eigenvalue is zero, any orthonormal basis is an eigenbasis
            mu = torch.zeros(len(rows), 0, dtype=w.dtype, device=w.device)
            span = torch.zeros(len(rows), d, 0, dtype=w.dtype, device=w.device)
            out = _select_and_complete(mu, span, mu, d, k, which)
        else:
            # row-major nonzero() lists each row's support in order: s entries per row
            rows_present, rows_c = (present, c) if len(rows) == b else (present[rows], c[rows])
            features = rows_present.nonzero()[:, 1].reshape(len(rows), s)
            coeffs = torch.gather(rows_c, 1, features)
            out = _solve_group(w[features], v[features], coeffs, d, k, which)
        vals[rows], vecs[rows], resid[rows], norm[rows] = out
    return vals, vecs, resid, norm


def support_bytes_per_direction(h: int, d: int, k: int, s: int, itemsize: int) -> int:
    """Working memory of one direction with support size at most s: its coefficient row, the
    gathered rows and their QR, the lifted pairs, the result and a completion of the basis."""
    n = 2 * s
    return h * (itemsize + 1) + (5 * n * d + n * n * 4 + 3 * d * k + 2 * d) * itemsize


def _solve_group(ws: torch.Tensor, vs: torch.Tensor, coeffs: torch.Tensor, d: int, k: int, which: str):
    """The directions of one support size s: ws, vs (g, s, d) their features' rows, coeffs (g, s)."""
    g, s = coeffs.shape
    mu = torch.empty(g, 2 * s, dtype=ws.dtype, device=ws.device)
    span = torch.empty(g, d, 2 * s, dtype=ws.dtype, device=ws.device)
    resid = torch.empty(g, 2 * s, dtype=ws.dtype, device=ws.device)
    general = torch.ones(g, dtype=torch.bool, device=ws.device)
    if s == 1:
        ok, out = _closed_form(ws[:, 0], vs[:, 0], coeffs[:, 0])
        mu[ok], span[ok], resid[ok] = out
        general = ~ok
    if bool(general.any()):
        mu[general], span[general], resid[general] = _reduced(ws[general], vs[general], coeffs[general])
    return _select_and_complete(mu, span, resid, d, k, which)


def _closed_form(w: torch.Tensor, v: torch.Tensor, c: torch.Tensor):
    """(ok (g,), (μ (n, 2), vectors (n, d, 2), absolute residuals (n, 2))) for the n directions
    where the closed form is well defined (ok): w and v nonzero and not parallel."""
    nw = torch.linalg.vector_norm(w, dim=-1)
    nv = torch.linalg.vector_norm(v, dim=-1)
    ok = (nw > 0) & (nv > 0)
    safe = lambda n: torch.where(n > 0, n, torch.ones_like(n))[:, None]  # noqa: E731
    w_hat, v_hat = w / safe(nw), v / safe(nv)
    plus, minus = w_hat + v_hat, w_hat - v_hat
    plus_sq, minus_sq = (plus * plus).sum(-1), (minus * minus).sum(-1)
    scale = 0.25 * c * nw * nv
    mu = torch.stack([scale * plus_sq, -scale * minus_sq], dim=-1)
    # the longer of ŵ ± v̂ (norm ≥ √2) is accurate as it is; the shorter one is made exactly
    # orthogonal to it, which removes the rounding that its cancellation leaves in the span
    plus_longer = (plus_sq >= minus_sq)[:, None]
    longer = torch.where(plus_longer, plus, minus)
    shorter = torch.where(plus_longer, minus, plus)
    longer = longer / torch.linalg.vector_norm(longer, dim=-1, keepdim=True).clamp_min(torch.finfo(w.dtype).tiny)
    shorter = shorter - (shorter * longer).sum(-1, keepdim=True) * longer
    shorter_norm = torch.linalg.vector_norm(shorter, dim=-1)
    ok &= shorter_norm > 0
    shorter = shorter / safe(shorter_norm)
    vectors = torch.stack([torch.where(plus_longer, longer, shorter), torch.where(plus_longer, shorter, longer)], dim=-1)
    # Q x = ½ c (w (v·x) + v (w·x)), O(d) a vector
    qx = 0.5 * c[:, None, None] * (w[:, :, None] * (v[:, :, None] * vectors).sum(1, keepdim=True)
                                    + v[:, :, None] * (w[:, :, None] * vectors).sum(1, keepdim=True))
    resid = torch.linalg.vector_norm(qx - vectors * mu[:, None, :], dim=1)
    return ok, (mu[ok], vectors[ok], resid[ok])


def _reduced(ws: torch.Tensor, vs: torch.Tensor, coeffs: torch.Tensor):
    """(μ (g, 2s), U y (g, d, 2s), absolute residuals (g, 2s)) by the thin QR of [V_S; W_S]ᵀ."""
    s = coeffs.shape[1]
    u, r = torch.linalg.qr(torch.cat([vs, ws], dim=1).transpose(1, 2))  # (g, d, 2s), (g, 2s, 2s)
    r_v, r_w = r[:, :, :s], r[:, :, s:]  # coordinates of the v_k and the w_k in U
    m = (r_w * coeffs[:, None, :]) @ r_v.transpose(1, 2)
    reduced = 0.5 * (m + m.transpose(1, 2))
    mu, y = eigh(reduced)
    resid = torch.linalg.vector_norm(reduced @ y - y * mu[:, None, :], dim=-2)
    return mu, u @ y, resid


def _select_and_complete(mu, span, resid, d: int, k: int, which: str):
    """Pick the k wanted of the n = 2s computed pairs (mu (g, n), span (g, d, n) orthonormal,
    absolute resid (g, n)) and the d − n structural zeros, as lowrank.py does; a picked zero's
    vector is a column completing `span` to an orthonormal basis. Returns values, vectors,
    relative residuals and ‖Q‖."""
    g, n = mu.shape
    # min(k, d − n) zeros stand for all d − n: no selection of k values takes more of them
    zeros = torch.zeros(g, min(k, d - n), dtype=mu.dtype, device=mu.device)
    idx = select(torch.cat([mu, zeros], dim=-1), k, which)
    vals = torch.gather(torch.cat([mu, zeros], dim=-1), -1, idx)
    inside = idx < n
    norm = mu.abs().amax(-1) if n else torch.zeros(g, dtype=mu.dtype, device=mu.device)
    if n:
        take = idx.clamp(max=n - 1)
        vecs = torch.gather(span, -1, take[:, None, :].expand(-1, d, -1))
        r = torch.where(inside, torch.gather(resid, -1, take), torch.zeros_like(vals))
    else:
        vecs = torch.empty(g, d, k, dtype=mu.dtype, device=mu.device)
        r = torch.zeros_like(vals)
    r = r / torch.where(norm > 0, norm, torch.ones_like(norm))[:, None]
    if not bool(inside.all()):
        outside = (idx - n).clamp(min=0)
        complement = complete_basis(span, int(outside.max()) + 1)
        picked = torch.gather(complement, -1, outside[:, None, :].expand(-1, d, -1))
        vecs = torch.where(inside[:, None, :], vecs, picked)
    return vals, vecs, r, norm


def complete_basis(q: torch.Tensor, m: int) -> torch.Tensor:
    """m orthonormal columns (g, d, m) orthogonal to the orthonormal columns of q (g, d, n),
    n + m ≤ d: columns n..n+m of the Householder Q of q, never the whole d×d matrix."""
    g, d, n = q.shape
    if n == 0:
        return torch.eye(d, m, dtype=q.dtype, device=q.device).expand(g, d, m)
    reflectors, tau = torch.geqrf(q)
    padded = torch.cat([reflectors, torch.zeros(g, d, m, dtype=q.dtype, device=q.device)], dim=-1)
    return torch.linalg.householder_product(padded, tau)[:, :, n:]
