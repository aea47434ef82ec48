"""Exact first and second moments of output projections of one or two layers under Gaussian input.

For x ~ N(m, S), y_i = u_iᵀ f_a(x) and z_j = u'_jᵀ f_b(x) are quadratic forms in x̃ = [x; 1]:
y = x̃ᵀ Q̃ x̃. With m̃ = [m; 1] and S̃ = diag(S, 0), Isserlis' theorem gives

    E[y]    = tr(Q̃ S̃) + m̃ᵀ Q̃ m̃
    E[y z]  = E[y] E[z] + 2 tr(Q̃_a S̃ Q̃_b S̃) + 4 m̃ᵀ Q̃_a S̃ Q̃_b m̃

and each term is a closed form in hidden space. With the shifted biases â = W m + a, b̂ = V m + b
(the hidden pre-activations at the mean: what `project_input` folds an offset into):

    tr(Q̃ S̃) + m̃ᵀ Q̃ m̃   = cᵀ (rowsum((W S) ⊙ V) + â ⊙ b̂)
    2 Q̃ m̃, first d rows = g = Wᵀ (c ⊙ b̂) + Vᵀ (c ⊙ â),        so 4 m̃ᵀ Q̃_a S̃ Q̃_b m̃ = g_aᵀ S g_b
    tr(Q̃_a S̃ Q̃_b S̃)     = c_aᵀ M^S_ab c_b,  M^S_ab = ½((W_a S W_bᵀ) ⊙ (V_a S V_bᵀ) + (W_a S V_bᵀ) ⊙ (V_a S W_bᵀ))

M^S_ab is the cross Gram matrix of form_inner.py with S inside (W_a S, V_a S on the left), built
in row blocks, so Q is never formed. Cost: 4·h_a·h_b·d (half within one layer), plus 2·h·d² per
layer for W S and V S and a d³ eigenvalue check of S when a covariance is given. A
`BilinearLayer` has no output offset (adapters leave constant output offsets out), so f here is
exactly P((W x + a) ⊙ (V x + b)).
"""
from __future__ import annotations

import torch

from .._arrays import as_tensor, check_finite, to_framework
from ..layer import BilinearLayer
from ..memory import budget_after_result, memory_budget
from .form_inner import coefficient_gram, form_pair


def check_mean(mean, layer: BilinearLayer, dtype: torch.dtype) -> torch.Tensor | None:
    """`mean` (d,) as a finite tensor of the working precision on the layer's device, or None."""
    if mean is None:
        return None
    t = as_tensor(mean, "mean")
    if t.shape != (layer.d_in,):
        raise ValueError(f"mean must be ({layer.d_in},) to match the layers' input width, got {tuple(t.shape)}")
    if t.device != layer.device:
        raise ValueError(f"mean is on {t.device} but the layers are on {layer.device}")
    check_finite(t, "mean")
    return t.to(dtype)


def check_covariance(cov, layer: BilinearLayer, dtype: torch.dtype) -> torch.Tensor | None:
    """`cov` (d, d) symmetric positive semi-definite, as a tensor of the working precision, or None.

    Symmetric and PSD are checked to within √eps of the working precision, relative to the
    largest entry and the largest eigenvalue (rounding in a covariance estimated from data stays
    far below that; a Cholesky factor or an indefinite matrix does not); the symmetric part is
    then used."""
    if cov is None:
        return None
    t = as_tensor(cov, "cov")
    d = layer.d_in
    if t.shape != (d, d):
        raise ValueError(f"cov must be ({d}, {d}) to match the layers' input width, got {tuple(t.shape)}")
    if t.device != layer.device:
        raise ValueError(f"cov is on {t.device} but the layers are on {layer.device}")
    check_finite(t, "cov")
    t = t.to(dtype)
    tol = torch.finfo(dtype).eps ** 0.5
    with torch.no_grad():
        scale = float(t.abs().max())
        asymmetry = float((t - t.mT).abs().max())
        if asymmetry > tol * scale:
            raise ValueError(f"cov must be symmetric: its largest |cov - cov.T| entry is {asymmetry:.3g}, "
                             f"{asymmetry / scale:.3g} of its largest entry")
        symmetric = 0.5 * (t + t.mT)
        values = torch.linalg.eigvalsh(symmetric)
        lowest, highest = float(values[0]), float(values[-1])
        if lowest < -tol * max(highest, 0.0) or (highest <= 0 and lowest < 0):
            raise ValueError(f"cov must be positive semi-definite: its smallest eigenvalue is {lowest:.3g} "
                             f"against a largest of {highest:.3g}")
    return 0.5 * (t + t.mT)


def _pieces(layer: BilinearLayer, c: torch.Tensor, mean, cov, dtype):
    """(W, V, first, g) of one layer: its unlifted weights, E[y] for every direction (b,), and the
    rows g (b, d) of the mean term (module docstring)."""
    w, v = layer.w.to(dtype), layer.v.to(dtype)
    zeros = torch.zeros(layer.d_hidden, dtype=dtype, device=layer.device)
    a = zeros if layer.w_bias is None else layer.w_bias.to(dtype)
    b = zeros if layer.v_bias is None else layer.v_bias.to(dtype)
    if mean is not None:
        a, b = a + w @ mean, b + v @ mean
    traces = ((w if cov is None else w @ cov) * v).sum(1)  # tr(S sym(w_k, v_k)) = w_kᵀ S v_k
    first = c @ (traces + a * b)
    g = (c * b) @ w + (c * a) @ v
    return w, v, first, g


def gaussian_moments(layer_a: BilinearLayer, dirs_a, layer_b: BilinearLayer | None = None, dirs_b=None,
                     mean=None, cov=None, *, dtype=None, max_memory=None):
    """(first_a (b_a,), first_b (b_b,), second (b_a, b_b)): exact E[u_iᵀ f_a(x)], E[u'_jᵀ f_b(x)]
    and E[(u_iᵀ f_a(x)) (u'_jᵀ f_b(x))] for x ~ N(mean, cov), by Isserlis' theorem in hidden space
    (module docstring), never forming Q and never sampling.

    layer_b defaults to layer_a and dirs_b to dirs_a; directions as in `decompose`; the layers
    must share the input width d. Biases are included. mean: (d,), default 0; cov: (d, d)
    symmetric positive semi-definite (singular allowed), default the identity. Temporaries stay
    under `max_memory`. Differentiable in the weights, float directions, mean and cov (through its
    symmetric part, so its gradient is symmetric). Results in
    layer_a's framework and the working precision (float64 if either layer is, else float32;
    `dtype=` overrides it).
    """
    pair = form_pair(layer_a, dirs_a, layer_b, dirs_b, dtype)
    work, layer_a, layer_b = pair.dtype, pair.layer_a, pair.layer_b
    mean_t = check_mean(mean, layer_a, work)
    cov_t = check_covariance(cov, layer_a, work)
    budget = memory_budget(layer_a.device, max_memory)
    c_a, c_b = pair.coefficients()
    d = layer_a.d_in
    # W S and V S of layer a, and the (b, d) mean-term rows of both layers, live through the call
    resident = ((0 if cov_t is None else 2 * layer_a.d_hidden * d) + (c_a.shape[0] + c_b.shape[0]) * d) * work.itemsize
    one_row = 6 * layer_b.d_hidden * work.itemsize
    left = budget_after_result(budget, resident, one_row, "gaussian_moments", hint="compare fewer directions per call")
    w_a, v_a, first_a, g_a = _pieces(layer_a, c_a, mean_t, cov_t, work)
    if pair.same_layer:
        w_b, v_b = w_a, v_a
        first_b, g_b = (first_a, g_a) if pair.same_directions else _pieces(layer_a, c_b, mean_t, cov_t, work)[2:]
    else:
        w_b, v_b, first_b, g_b = _pieces(layer_b, c_b, mean_t, cov_t, work)
    left_w, left_v = (w_a, v_a) if cov_t is None else (w_a @ cov_t, v_a @ cov_t)
    trace_term = coefficient_gram(c_a, left_w, left_v, c_b, w_b, v_b, left, "gaussian_moments (one row of M_ab)",
                                  symmetric=pair.same_layer)
    mean_term = g_a @ (g_b if cov_t is None else g_b @ cov_t).mT
    second = first_a[:, None] * first_b[None, :] + 2 * trace_term + mean_term
    if not bool(torch.isfinite(second.detach()).all()):
        raise ValueError(f"the second moments overflow {str(work).replace('torch.', '')}: pass dtype=torch.float64")
    fw = layer_a.framework
    return to_framework(first_a, fw), to_framework(first_b, fw), to_framework(second, fw)
