"""Property tests over small random shapes: every result is a set of orthonormal eigenpairs of the
oracle Q, chosen and ordered as `which` says, whatever the method."""
import numpy as np
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import bilinear_kernels as bk
from helpers import (LANCZOS_DEFAULT_TOL, WHICHES, check_result, make_layer, oracle_forward, oracle_q,
                     random_weights, to_numpy)

SETTINGS = settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow])


@st.composite
def problems(draw):
    """A random small layer, a batch of float or index directions, and a decomposition request."""
    d = draw(st.integers(1, 10))
    h = draw(st.integers(1, 8))
    o = draw(st.one_of(st.none(), st.integers(1, 5)))
    bias = draw(st.booleans())
    seed = draw(st.integers(0, 2**31 - 1))
    weights = random_weights(d, h, o, bias=bias, seed=seed)
    d_form, d_out = d + bias, (o if o is not None else h)
    methods = ["eigh", "lanczos", "auto"] + (["lowrank"] if 2 * h < d_form else [])
    method = draw(st.sampled_from(methods))
    which = draw(st.sampled_from(WHICHES))
    k = draw(st.one_of(st.none(), st.integers(1, d_form)))
    b = draw(st.integers(1, 3))
    if draw(st.booleans()):
        u = np.random.default_rng(seed + 1).standard_normal((b, d_out))
        directions = torch.from_numpy(u)
    else:
        indices = draw(st.lists(st.integers(0, d_out - 1), min_size=b, max_size=b))
        u = np.eye(d_out)[indices]
        directions = indices
    return weights, directions, u, k, which, method


@SETTINGS
@given(problems())
def test_eigenpairs_match_the_oracle(problem):
    weights, directions, u, k, which, method = problem
    layer = make_layer(weights)
    res = bk.decompose(layer, directions, k=k, which=which, method=method)
    k_eff = layer.d_form if k is None else k
    assert to_numpy(res.eigenvectors).shape == (len(u), layer.d_form, k_eff)
    residual_tol = LANCZOS_DEFAULT_TOL[torch.float64] if res.method == "lanczos" else None
    # random spectra can hold exact ± ties (rank-deficient Q has many zeros): LM may take either
    check_result(res, oracle_q(weights, u), which, torch.float64, residual_tol=residual_tol,
                 exact_selection=False)


@SETTINGS
@given(problems(), st.integers(0, 2**31 - 1))
def test_full_spectrum_explains_the_output(problem, x_seed):
    weights, directions, u, _, _, method = problem
    layer = make_layer(weights)
    res = bk.decompose(layer, directions, k=None, method=method)
    x = np.random.default_rng(x_seed).standard_normal((5, layer.d_in))
    x_tilde = np.concatenate([x, np.ones((5, 1))], axis=1) if layer.has_bias else x
    vals, vecs = to_numpy(res.eigenvalues), to_numpy(res.eigenvectors)
    explained = np.einsum("bk,nbk->nb", vals, np.einsum("nd,bdk->nbk", x_tilde, vecs) ** 2)
    expected = oracle_forward(x, weights) @ u.T
    scale = max(np.abs(vals).max(), 1e-300) * (np.linalg.norm(x_tilde, axis=1) ** 2).max()
    np.testing.assert_allclose(explained, expected, rtol=0, atol=1e-10 * scale)
