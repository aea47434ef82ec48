"""Shared oracles and layer factories for the tests.

Every oracle here is built from NumPy/SciPy in float64 and from the math of DESIGN.md §1 alone
(the interaction tensor by einsum, symmetrized), never from the package's own code paths.
"""
from __future__ import annotations

import math

import numpy as np
import scipy.linalg
import torch

import bilinear_kernels as bk

# Per-dtype tolerances, all relative to ‖Q‖₂ of the oracle matrix.
#   residual:  largest true ‖Q v − λ v‖ / ‖Q‖ a direct method (eigh, lowrank) may leave
#   ortho:     largest |VᵀV − I| entry of the returned eigenvectors
#   floor:     the float64 oracle's own error, added to the bounds derived from residuals
#   match:     largest |reported − recomputed| residual for the direct methods
TOLERANCES = {
    torch.float64: dict(residual=1e-12, ortho=1e-12, floor=1e-12, match=1e-12),
    torch.float32: dict(residual=1e-5, ortho=1e-5, floor=1e-6, match=1e-5),
}
# Default residual tolerance of method="lanczos" per working precision (decompose's docstring).
LANCZOS_DEFAULT_TOL = {torch.float64: 1e-8, torch.float32: 1e-4}
# Eigenvectors of a cluster: eigenvalues closer than this (relative to ‖Q‖) count as one cluster
# when measuring the angle between a returned vector and the oracle's eigenspace.
CLUSTER_RTOL = {torch.float64: 1e-7, torch.float32: 1e-3}

WHICHES = ("LM", "LA", "SA", "BE")


# -- layers ---------------------------------------------------------------------------------------
def random_weights(d, h, o=None, *, bias=False, seed=0):
    """Random float64 weights {w, v, p, w_bias, v_bias} as NumPy arrays (p None when o is None)."""
    rng = np.random.default_rng(seed)
    weights = dict(
        w=rng.standard_normal((h, d)) / math.sqrt(d),
        v=rng.standard_normal((h, d)) / math.sqrt(d),
        p=None if o is None else rng.standard_normal((o, h)) / math.sqrt(h),
        w_bias=rng.standard_normal(h) if bias else None,
        v_bias=rng.standard_normal(h) if bias else None,
    )
    return weights


def make_layer(weights, framework="torch", dtype=torch.float64):
    """A BilinearLayer from NumPy float64 weights, handed over as torch tensors or NumPy arrays
    in `dtype`."""
    def convert(a):
        if a is None:
            return None
        t = torch.from_numpy(np.array(a, dtype=np.float64)).to(dtype)
        if framework == "torch":
            return t
        if framework == "numpy":
            return t.numpy()
        raise ValueError(framework)

    return bk.BilinearLayer(*(convert(weights[n]) for n in ("w", "v", "p", "w_bias", "v_bias")))


def as_float64(weights, dtype):
    """The weights as the package sees them after rounding to `dtype`, back in float64: the
    oracle for a layer built in lower precision."""
    out = {}
    for name, a in weights.items():
        out[name] = None if a is None else torch.from_numpy(np.asarray(a)).to(dtype).double().numpy()
    return out


def orthogonal(n, seed):
    """A random n×n orthogonal matrix (QR of a Gaussian, signs fixed)."""
    rng = np.random.default_rng(seed)
    q, r = np.linalg.qr(rng.standard_normal((n, n)))
    return q * np.sign(np.diag(r))


def to_numpy(x):
    if isinstance(x, torch.Tensor):
        return x.detach().cpu().numpy()
    return np.asarray(x)


# -- oracles ----------------------------------------------------------------------------------------
def homogeneous(weights):
    """(W̃, Ṽ) in float64: the bias (zero where absent) appended as a last column when any bias is set."""
    w, v = np.asarray(weights["w"], np.float64), np.asarray(weights["v"], np.float64)
    a, b = weights.get("w_bias"), weights.get("v_bias")
    if a is None and b is None:
        return w, v
    h = w.shape[0]
    a = np.zeros(h) if a is None else np.asarray(a, np.float64)
    b = np.zeros(h) if b is None else np.asarray(b, np.float64)
    return np.concatenate([w, a[:, None]], axis=1), np.concatenate([v, b[:, None]], axis=1)


def oracle_forward(x, weights):
    """f(x) = P((W x + a) ⊙ (V x + b)) in float64 NumPy, x (..., d) -> (..., o)."""
    x = np.asarray(x, np.float64)
    w, v, p = weights["w"], weights["v"], weights.get("p")
    hw = x @ np.asarray(w, np.float64).T
    hv = x @ np.asarray(v, np.float64).T
    if weights.get("w_bias") is not None:
        hw = hw + weights["w_bias"]
    if weights.get("v_bias") is not None:
        hv = hv + weights["v_bias"]
    hidden = hw * hv
    return hidden if p is None else hidden @ np.asarray(p, np.float64).T


def oracle_tensor(weights, symmetric=True):
    """B[a,i,j] = Σ_k P[a,k] W̃[k,i] Ṽ[k,j] by einsum, symmetrized when asked: (o, D, D)."""
    w, v = homogeneous(weights)
    p = weights.get("p")
    p = np.eye(w.shape[0]) if p is None else np.asarray(p, np.float64)
    b = np.einsum("ak,ki,kj->aij", p, w, v)
    return 0.5 * (b + b.transpose(0, 2, 1)) if symmetric else b


def oracle_q(weights, u):
    """Q(u) = Σ_a u_a S[a] for float directions u (o,) or (b, o): (D, D) or (b, D, D), contracted
    straight from the definition of B by einsum (B itself is skipped to keep the oracle cheap)."""
    w, v = homogeneous(weights)
    p = weights.get("p")
    p = np.eye(w.shape[0]) if p is None else np.asarray(p, np.float64)
    q = np.einsum("...a,ak,ki,kj->...ij", np.asarray(u, np.float64), p, w, v, optimize=True)
    return 0.5 * (q + np.swapaxes(q, -1, -2))


def oracle_q_on_basis(weights, u, basis, offset=None):
    """(b, F', F'): the matrices of the layer on basis coordinates x = basis @ z + offset, from the
    definition: B̃ᵀ Q̃ B̃ with B̃ = [[basis, offset], [0, 1]] when the layer has a bias or an offset
    (F' = F + 1, its last coordinate the constant), else basisᵀ Q basis."""
    q = oracle_q(weights, u)
    basis = np.asarray(basis, np.float64)
    d, f = basis.shape
    if weights.get("w_bias") is None and weights.get("v_bias") is None and offset is None:
        return np.einsum("if,bij,jg->bfg", basis, q, basis)
    if weights.get("w_bias") is None and weights.get("v_bias") is None:  # the form gains a zero constant
        q = np.pad(q, ((0, 0), (0, 1), (0, 1)))
    b_tilde = np.zeros((d + 1, f + 1))
    b_tilde[:d, :f] = basis
    b_tilde[:d, f] = 0 if offset is None else offset
    b_tilde[d, f] = 1
    return np.einsum("if,bij,jg->bfg", b_tilde, q, b_tilde)


def one_hot(o, indices):
    u = np.zeros((len(indices), o))
    u[np.arange(len(indices)), indices] = 1.0
    return u


def oracle_eigh(q):
    """Full float64 spectrum of a symmetric matrix, ascending, by SciPy (LAPACK syevd)."""
    return scipy.linalg.eigh(np.asarray(q, np.float64))


def expected_selection(values, k, which):
    """The documented selection of k eigenvalues, most important first, by plain Python sorting.

    LM: by |λ| descending, a positive λ before a negative one of equal |λ|; LA: descending;
    SA: ascending; BE: the ⌈k/2⌉ largest and ⌊k/2⌋ smallest, then ordered like LM.
    """
    values = [float(x) for x in values]
    by_magnitude = lambda x: (-abs(x), -x)  # noqa: E731
    if which == "LA":
        return np.array(sorted(values, reverse=True)[:k])
    if which == "SA":
        return np.array(sorted(values)[:k])
    if which == "LM":
        return np.array(sorted(values, key=by_magnitude)[:k])
    if which == "BE":
        ascending = sorted(values)
        high, low = ascending[::-1][: math.ceil(k / 2)], ascending[: k // 2]
        return np.array(sorted(high + low, key=by_magnitude))
    raise ValueError(which)


def importance(values, which):
    """The key that `which` orders by, descending: |λ| for LM and BE, λ for LA, −λ for SA."""
    values = np.asarray(values, np.float64)
    return {"LM": np.abs(values), "BE": np.abs(values), "LA": values, "SA": -values}[which]


# -- checks -----------------------------------------------------------------------------------------
def check_eigenpairs(q_ref, values, vectors, residuals, which, dtype, *, residual_tol=None,
                     exact_selection=True):
    """Check one direction's result (values (k,), vectors (d, k), reported residuals (k,)) against
    the float64 oracle matrix q_ref, and return the recomputed relative residuals.

    - the true relative residuals ‖Q v − λ v‖/‖Q‖ are at most `residual_tol` (default: the dtype's
      residual tolerance for the direct methods);
    - the reported residuals match the recomputed ones (within the dtype's `match`; for an
      iterative method given `residual_tol`, see the bounds below);
    - the columns are orthonormal and signed so that their largest-|entry| is positive;
    - the values are the documented selection for `which`, in order: compared with the oracle's
      selection within the bound ‖R‖_F that the residuals R = QV − VΛ give (Kahan), plus the
      oracle's own rounding;
    - every vector lies in the oracle eigenspace of its eigenvalue's cluster: sin∠ ≤ ‖r‖/δ
      (Davis–Kahan, δ the distance to the rest of the spectrum), which for a simple eigenvalue is
      the check 1 − |v_refᵀ v| ≈ 0.
    """
    tols = TOLERANCES[dtype]
    q_ref = np.asarray(q_ref, np.float64)
    values = np.asarray(to_numpy(values), np.float64)
    vectors = np.asarray(to_numpy(vectors), np.float64)
    residuals = np.asarray(to_numpy(residuals), np.float64)
    d, k = vectors.shape
    assert values.shape == (k,) and residuals.shape == (k,)
    ref_vals, ref_vecs = oracle_eigh(q_ref)
    norm = float(np.abs(ref_vals).max()) if d else 0.0
    scale = norm if norm > 0 else 1.0

    # residuals: small, and what the result reports
    r_abs = np.linalg.norm(q_ref @ vectors - vectors * values[None, :], axis=0)
    r_rel = r_abs / scale
    limit = tols["residual"] if residual_tol is None else residual_tol
    assert r_rel.max() <= limit, f"true relative residuals {r_rel} exceed {limit:g}"
    if residual_tol is None:
        assert np.abs(residuals - r_rel).max() <= tols["match"], \
            f"reported residuals {residuals} differ from recomputed {r_rel}"
    else:
        # an iterative estimate, its ‖Q‖ estimated by the largest Ritz value (≤ ‖Q‖, so it errs
        # high): within the tolerance, never below the truth beyond rounding (`match`), and not
        # above it by more than a factor 2
        assert residuals.max() <= residual_tol, f"reported residuals {residuals} exceed tol {residual_tol:g}"
        assert np.all(r_rel <= 1.05 * residuals + tols["match"]), \
            f"reported residuals {residuals} under-report the true ones {r_rel}"
        assert np.all(residuals <= 2 * r_rel + tols["match"]), \
            f"reported residuals {residuals} are far above the true ones {r_rel}"

    # orthonormal columns, deterministic sign
    gram = vectors.T @ vectors
    assert np.abs(gram - np.eye(k)).max() <= tols["ortho"], "eigenvectors are not orthonormal"
    peak = vectors[np.abs(vectors).argmax(axis=0), np.arange(k)]
    assert np.all(peak > 0), f"largest-|entry| of each eigenvector must be positive, got {peak}"

    # values: the documented selection, in order
    eig_atol = math.sqrt(float(np.sum(r_abs**2))) * 1.0001 + tols["floor"] * scale
    key = importance(values, which)
    assert np.all(key[:-1] >= key[1:] - 2 * eig_atol), f"{which} ordering violated: {values}"
    expected = expected_selection(ref_vals, k, which)
    np.testing.assert_allclose(importance(values, which), importance(expected, which), rtol=0, atol=eig_atol,
                               err_msg=f"{which}: importance of the selected eigenvalues")
    nearest = np.abs(values[:, None] - ref_vals[None, :]).min(axis=1)
    assert nearest.max() <= eig_atol, f"values {values} are not eigenvalues {ref_vals}"
    if exact_selection or which != "LM":
        np.testing.assert_allclose(np.sort(values), np.sort(expected), rtol=0, atol=eig_atol,
                                   err_msg=f"{which}: selected eigenvalues")

    # vectors: in the oracle eigenspace of their cluster
    cluster_tol = CLUSTER_RTOL[dtype] * scale
    for i in range(k):
        gap = np.abs(ref_vals - values[i])
        in_cluster = gap <= max(cluster_tol, 2 * eig_atol)
        basis = ref_vecs[:, in_cluster]
        sin = np.linalg.norm(vectors[:, i] - basis @ (basis.T @ vectors[:, i]))
        delta = gap[~in_cluster].min() if (~in_cluster).any() else np.inf
        bound = r_abs[i] / delta + 1e-9
        assert sin <= bound, (f"eigenvector {i} (λ={values[i]:.6g}) is off its eigenspace: "
                              f"sin∠ = {sin:.3g} > {bound:.3g}")
    return r_rel


def check_result(res, q_refs, which, dtype, **kwargs):
    """check_eigenpairs for every direction of a DecompositionResult."""
    vals, vecs, resid = to_numpy(res.eigenvalues), to_numpy(res.eigenvectors), to_numpy(res.residuals)
    assert vals.shape[0] == len(q_refs)
    for i, q in enumerate(q_refs):
        check_eigenpairs(q, vals[i], vecs[i], resid[i], which, dtype, **kwargs)


skip_if_no_cuda = __import__("pytest").mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
