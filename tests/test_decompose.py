"""decompose(): every method and every `which` against float64 NumPy/SciPy oracles, on random and
adversarial layers; the identity uᵀ f(x) = Σ λ_i (v_iᵀ x)²; precision, method choice, warnings,
determinism, frameworks and the safetensors round trip."""
import dataclasses
import math
import warnings

import numpy as np
import pytest
import torch

import bilinear_kernels as bk
from bilinear_kernels.decompose import choose_method
from helpers import (LANCZOS_DEFAULT_TOL, WHICHES, as_float64, check_result, make_layer, one_hot,
                     oracle_eigh, oracle_forward, oracle_q, orthogonal, random_weights, to_numpy)

METHODS = ("eigh", "lanczos", "lowrank", "auto")


def methods_for(weights, methods=METHODS):
    """The methods that apply to a layer: "lowrank" needs 2h < d (d + 1 with biases)."""
    h, d = np.shape(weights["w"])
    d_form = d + (weights["w_bias"] is not None or weights["v_bias"] is not None)
    return [m for m in methods if m != "lowrank" or 2 * h < d_form]


def cases(factories, methods=METHODS):
    """(name, method) pairs for every layer factory and every method that applies to it."""
    return [(name, m) for name, make in factories.items() for m in methods_for(_weights_of(make()), methods)]


def _weights_of(made):
    return made[0] if isinstance(made, tuple) else made


def check(res, weights, u, which, dtype=torch.float64, method=None, tol=None, **kwargs):
    """Compare a result with the oracle of directions u (b, o); iterative results are held to their
    residual tolerance, direct ones to the dtype's."""
    ran = res.method
    assert ran in ("eigh", "lanczos", "lowrank", "support")
    if method is not None and method != "auto":
        assert ran == method
    residual_tol = (tol or LANCZOS_DEFAULT_TOL[dtype]) if ran == "lanczos" else None
    check_result(res, oracle_q(as_float64(weights, dtype), u), which, dtype, residual_tol=residual_tol, **kwargs)


# -- random layers -----------------------------------------------------------------------------------
# SQUARE: 2h ≥ d, so eigh and lanczos (lanczos spans the whole space at this size);
# THIN: 2h < d + 1 with biases, so every method.
RANDOM = {
    "square": dict(d=24, h=16, o=6, bias=False),
    "thin+bias": dict(d=40, h=8, o=5, bias=True),
}


def _random(name, seed=0):
    spec = RANDOM[name]
    return random_weights(spec["d"], spec["h"], spec["o"], bias=spec["bias"], seed=seed)


RANDOM_FACTORIES = {name: (lambda name=name: _random(name)) for name in RANDOM}


@pytest.mark.parametrize("k", [1, 3, None])
@pytest.mark.parametrize("which", WHICHES)
@pytest.mark.parametrize("name, method", cases(RANDOM_FACTORIES))
def test_random_layer_matches_the_oracle(name, method, which, k):
    weights = _random(name, seed=1)
    layer = make_layer(weights)
    indices = [0, 2, layer.d_out - 1]
    res = bk.decompose(layer, indices, k=k, which=which, method=method)
    k_eff = layer.d_form if k is None else k
    assert res.eigenvalues.shape == (3, k_eff) and res.eigenvectors.shape == (3, layer.d_form, k_eff)
    assert res.residuals.shape == (3, k_eff) and res.which == which
    assert res.eigenvalues.dtype == torch.float64
    check(res, weights, one_hot(layer.d_out, indices), which, method=method)


@pytest.mark.parametrize("which", WHICHES)
@pytest.mark.parametrize("name, method", cases(RANDOM_FACTORIES, ["eigh", "lanczos", "lowrank"]))
def test_random_layer_float32(name, method, which):
    weights = _random(name, seed=2)
    layer = make_layer(weights, dtype=torch.float32)
    res = bk.decompose(layer, [0, 1, 4], k=4, which=which, method=method)
    assert res.eigenvalues.dtype == torch.float32 and res.eigenvectors.dtype == torch.float32
    check(res, weights, one_hot(layer.d_out, [0, 1, 4]), which, dtype=torch.float32, method=method)


def test_lanczos_float32_on_a_low_rank_matrix_meets_a_requested_tol():
    # rank Q ≤ 2h = 16 < d + 1 = 41: the Krylov basis meets an invariant subspace. float32 eigh
    # reaches ~3e-7 here, so tol = 1e-5 is within reach; the solver must meet it or say it did not.
    weights = _random("thin+bias", seed=2)
    layer = make_layer(weights, dtype=torch.float32)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        res = bk.decompose(layer, [0, 1, 4], k=4, method="lanczos", tol=1e-5)
    if not any(issubclass(w.category, bk.ConvergenceWarning) for w in caught):
        check(res, weights, one_hot(5, [0, 1, 4]), "LM", dtype=torch.float32, method="lanczos", tol=1e-5)


# Large enough that the Krylov basis (default 96 columns) must restart: the iterative path proper.
ITERATIVE = random_weights(128, 80, 40, seed=3)


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
@pytest.mark.parametrize("k", [1, 6])
@pytest.mark.parametrize("which", WHICHES)
def test_lanczos_with_restarts(which, k, dtype):
    layer = make_layer(ITERATIVE, dtype=dtype)
    res = bk.decompose(layer, [0, 7, 39], k=k, which=which, method="lanczos")
    check(res, ITERATIVE, one_hot(40, [0, 7, 39]), which, dtype=dtype, method="lanczos")


def test_lanczos_honours_tol():
    layer = make_layer(ITERATIVE)
    res = bk.decompose(layer, [3, 5], k=4, method="lanczos", tol=1e-6)
    check(res, ITERATIVE, one_hot(40, [3, 5]), "LM", method="lanczos", tol=1e-6)


@pytest.mark.parametrize("which", WHICHES)
def test_lanczos_with_a_small_block_and_basis(which):
    # block 2 and basis 12 on d = 48: many thick restarts, blocks narrower than k
    weights = random_weights(48, 30, 12, seed=4)
    layer = make_layer(weights)
    res = bk.decompose(layer, [0, 5, 11], k=3, which=which, method="lanczos", block_size=2, max_basis=12)
    check(res, weights, one_hot(12, [0, 5, 11]), which, method="lanczos")


# -- adversarial layers ------------------------------------------------------------------------------
def _layer_weights(w, v, p=None, w_bias=None, v_bias=None):
    return dict(w=w, v=v, p=p, w_bias=w_bias, v_bias=v_bias)


def _repeated():
    # W = V with orthonormal rows: Q(u) = Wᵀ diag(u) W, eigenvalues u (repeated) and zeros
    rows = orthogonal(16, seed=5)[:6]
    return _layer_weights(rows, rows.copy()), np.array([[2.0, 2.0, 2.0, 1.0, -1.0, -1.0]]), \
        [2, 2, 2, 1, -1, -1] + [0] * 10


def _plus_minus():
    # W, V orthonormal and mutually orthogonal rows: eigenvalues ±u_k/2 in exact pairs
    basis = orthogonal(14, seed=6)
    u = np.array([[3.0, 3.0, 2.0, 1.0, 0.5]])
    return _layer_weights(basis[:5], basis[5:10]), u, [1.5, 1.5, -1.5, -1.5, 1, -1, 0.5, -0.5, 0.25, -0.25, 0, 0, 0, 0]


def _zero_direction():
    return random_weights(10, 6, 4, seed=7), np.zeros((1, 4)), [0] * 10


def _zero_row_of_p():
    weights = random_weights(10, 6, 4, seed=8)
    weights["p"][1] = 0.0
    return weights, one_hot(4, [1, 0]), None


def _rank_deficient(which_factor):
    rng = np.random.default_rng(9)
    low = rng.standard_normal((8, 2)) @ rng.standard_normal((2, 20)) / 4  # rank 2
    full = rng.standard_normal((8, 20)) / 4
    w, v = (low, full) if which_factor == "w" else (full, low)
    return _layer_weights(w, v, rng.standard_normal((3, 8))), one_hot(3, [0, 1, 2]), None


def _zero_columns():
    # inputs 0 and 3 are unused: e_0 and e_3 are exact null vectors
    weights = random_weights(7, 5, 3, seed=10)
    weights["w"][:, [0, 3]] = 0.0
    weights["v"][:, [0, 3]] = 0.0
    return weights, one_hot(3, [0, 2]), None


ADVERSARIAL = {
    "repeated eigenvalues": _repeated,
    "± pairs": _plus_minus,
    "zero direction": _zero_direction,
    "zero row of p": _zero_row_of_p,
    "rank-deficient W": lambda: _rank_deficient("w"),
    "rank-deficient V": lambda: _rank_deficient("v"),
    "unused inputs": _zero_columns,
    "d = 1": lambda: (random_weights(1, 3, 2, seed=11), one_hot(2, [0, 1]), None),
    "d = 1, bias": lambda: (random_weights(1, 3, 2, bias=True, seed=12), one_hot(2, [0, 1]), None),
    "h = 1": lambda: (random_weights(9, 1, 3, seed=13), one_hot(3, [0, 1, 2]), None),
    "h = 1, bias, no p": lambda: (random_weights(9, 1, None, bias=True, seed=14), one_hot(1, [0]), None),
}


@pytest.mark.parametrize("which", WHICHES)
@pytest.mark.parametrize("case, method", cases(ADVERSARIAL, ["eigh", "lanczos", "lowrank"]))
def test_adversarial_layer(case, method, which):
    weights, u, exact = ADVERSARIAL[case]()
    layer = make_layer(weights)
    if exact is not None:  # the construction is what it claims to be
        np.testing.assert_allclose(oracle_eigh(oracle_q(weights, u[0]))[0], sorted(exact), atol=1e-13)
    for k in sorted({1, min(3, layer.d_form), layer.d_form}):
        res = bk.decompose(layer, torch.from_numpy(u), k=k, which=which, method=method)
        assert np.isfinite(to_numpy(res.eigenvectors)).all() and np.isfinite(to_numpy(res.residuals)).all()
        # exact ± ties make "positive first" a matter of rounding: accept either member at the cut
        check(res, weights, u, which, method=method, exact_selection=False)


@pytest.mark.parametrize("k", [2, 4, 6])
@pytest.mark.parametrize("which", ["LM", "BE"])
def test_lanczos_resolves_plus_minus_pairs_in_a_large_space(which, k):
    basis = orthogonal(120, seed=15)
    weights = _layer_weights(basis[:40], basis[40:80])
    u = np.array([[3.0, 3.0, 2.0, 1.0, 0.5] + [0.1] * 35])
    res = bk.decompose(make_layer(weights), torch.from_numpy(u), k=k, which=which, method="lanczos")
    check(res, weights, u, which, method="lanczos", exact_selection=False)
    np.testing.assert_allclose(np.sort(np.abs(to_numpy(res.eigenvalues)[0]))[::-1],
                               [1.5, 1.5, 1.5, 1.5, 1.0, 1.0][:k], atol=1e-8)


@pytest.mark.parametrize("which", ["LA", "SA"])
def test_lanczos_small_block_on_a_rank_two_matrix(which):
    # Without p, an index direction gives Q = ½(w_a v_aᵀ + v_a w_aᵀ): rank 2, one positive and one
    # negative eigenvalue, 62 zeros. The 6 largest are {λ₊, 0, 0, 0, 0, 0}; a basis of exactly k
    # columns that happens to be invariant must not be taken for the answer.
    weights = random_weights(64, 40, None, seed=7)
    layer = make_layer(weights)
    res = bk.decompose(layer, [0, 5, 9], k=6, which=which, method="lanczos", block_size=2, max_basis=14)
    check(res, weights, one_hot(40, [0, 5, 9]), which, method="lanczos")


# -- the identity uᵀ f(x) = Σ λ_i (v_iᵀ x̃)² ----------------------------------------------------------
IDENTITY_LAYERS = {
    "square": lambda: _random("square", seed=16),
    "thin+bias": lambda: _random("thin+bias", seed=17),
    "d = 1, bias": lambda: random_weights(1, 2, 3, bias=True, seed=18),
    "h = 1, bias": lambda: random_weights(6, 1, 2, bias=True, seed=19),
}


@pytest.mark.parametrize("name, method", cases(IDENTITY_LAYERS))
def test_full_spectrum_reproduces_the_forward(name, method):
    weights = IDENTITY_LAYERS[name]()
    layer = make_layer(weights)
    rng = np.random.default_rng(20)
    u = rng.standard_normal((2, layer.d_out))
    x = rng.standard_normal((16, layer.d_in))
    x_tilde = np.concatenate([x, np.ones((16, 1))], axis=1) if layer.has_bias else x
    expected = oracle_forward(x, weights) @ u.T  # (n, b)

    res = bk.decompose(layer, torch.from_numpy(u), k=None, method=method)
    vals, vecs = to_numpy(res.eigenvalues), to_numpy(res.eigenvectors)
    assert vecs.shape == (2, layer.d_form, layer.d_form)
    explained = np.einsum("bk,nbk->nb", vals, np.einsum("nd,bdk->nbk", x_tilde, vecs) ** 2)
    scale = np.abs(vals).max() * (np.linalg.norm(x_tilde, axis=1) ** 2).max()
    np.testing.assert_allclose(explained, expected, rtol=0, atol=1e-10 * scale)
    np.testing.assert_allclose(to_numpy(res.activations(torch.from_numpy(x_tilde))).sum(-1), expected,
                               rtol=0, atol=1e-10 * scale)


# -- directions as float vectors ---------------------------------------------------------------------
@pytest.mark.parametrize("method", METHODS)
@pytest.mark.parametrize("shape", ["(o,)", "(b, o)"])
def test_float_directions(shape, method):
    weights = _random("thin+bias", seed=21)
    layer = make_layer(weights)
    u = np.random.default_rng(0).standard_normal((3, 5))
    given = torch.from_numpy(u[0] if shape == "(o,)" else u)
    res = bk.decompose(layer, given, k=5, which="BE", method=method)
    b = 1 if shape == "(o,)" else 3
    assert res.eigenvalues.shape == (b, 5) and res.eigenvectors.shape == (b, 41, 5) and res.indices is None
    check(res, weights, u[:b], "BE", method=method)


# -- precision ---------------------------------------------------------------------------------------
@pytest.mark.parametrize("half", [torch.float16, torch.bfloat16])
@pytest.mark.parametrize("method", ["eigh", "lanczos", "lowrank"])
def test_half_precision_weights_are_upcast_to_float32(half, method):
    weights = _random("thin+bias", seed=22)
    layer = make_layer(weights, dtype=half)
    res = bk.decompose(layer, [0, 3], k=4, method=method)
    assert res.eigenvalues.dtype == torch.float32 and res.eigenvectors.dtype == torch.float32
    # the oracle sees the half-precision weights exactly, upcast to float64
    check_result(res, oracle_q(as_float64(weights, half), one_hot(5, [0, 3])), "LM", torch.float32,
                 residual_tol=LANCZOS_DEFAULT_TOL[torch.float32] if method == "lanczos" else None)


@pytest.mark.parametrize("override", [torch.float64, "float64"])
@pytest.mark.parametrize("method", ["eigh", "lanczos", "lowrank"])
def test_dtype_override_to_float64(method, override):
    weights = _random("thin+bias", seed=23)
    layer = make_layer(weights, dtype=torch.float32)
    res = bk.decompose(layer, [1, 2], k=4, which="LA", method=method, dtype=override)
    assert res.eigenvalues.dtype == torch.float64
    # the float32 weights are exact in float64: held to float64 tolerances
    check_result(res, oracle_q(as_float64(weights, torch.float32), one_hot(5, [1, 2])), "LA", torch.float64,
                 residual_tol=LANCZOS_DEFAULT_TOL[torch.float64] if method == "lanczos" else None)


@pytest.mark.parametrize("method", ["eigh", "lanczos", "lowrank"])
def test_dtype_override_to_float32(method):
    weights = _random("thin+bias", seed=24)
    res = bk.decompose(make_layer(weights), [0, 4], k=3, which="SA", method=method, dtype=torch.float32)
    assert res.eigenvalues.dtype == torch.float32 and res.metadata["dtype"] == "float32"
    check(res, weights, one_hot(5, [0, 4]), "SA", dtype=torch.float32, method=method)


# -- scale ---------------------------------------------------------------------------------------------
# Weights scaled by powers of two (exact, so the oracle is the unscaled layer's, its eigenvalues
# times 2^total): exponents (w, v, p, u) whose products overflow or underflow on the way although
# every eigenvalue is a normal number of the working dtype. Biases scale with their projection.
SCALES = {
    "float32 overflow on the way": (torch.float32, (83, -100, 83, 0)),       # λ ~ 2^66
    "float32 underflow on the way": (torch.float32, (-66, 66, -66, 0)),      # λ ~ 2^-66
    "float32 tiny directions": (torch.float32, (-40, 50, -60, -60)),         # c ~ 2^-120, λ ~ 2^-110
    "float64 underflow on the way": (torch.float64, (-600, 600, -600, 0)),   # λ ~ 2^-600
    "float64 overflow on the way": (torch.float64, (600, -300, 500, 0)),     # λ ~ 2^800
}


def _scaled_layer(weights, dtype, exponents):
    """The layer of `weights` in `dtype` with w (and w_bias), v (and v_bias), p times 2^e."""
    e_w, e_v, e_p, _ = exponents
    layer = make_layer(weights, dtype=dtype)
    times = lambda t, e: None if t is None else t * 2.0**e  # noqa: E731  (exact: powers of two)
    return bk.BilinearLayer(times(layer.w, e_w), times(layer.v, e_v), times(layer.p, e_p),
                            times(layer.w_bias, e_w), times(layer.v_bias, e_v))


@pytest.mark.parametrize("method", ["eigh", "lanczos", "lowrank"])
@pytest.mark.parametrize("case", list(SCALES))
def test_results_do_not_depend_on_the_weights_scale(case, method):
    dtype, exponents = SCALES[case]
    weights = _random("thin+bias", seed=41)
    u = np.random.default_rng(3).standard_normal((2, 5))
    res = bk.decompose(_scaled_layer(weights, dtype, exponents), torch.as_tensor(u * 2.0**exponents[3], dtype=dtype),
                       k=4, which="BE", method=method)
    values = torch.as_tensor(res.eigenvalues).double()
    assert torch.isfinite(values).all() and (values != 0).all()
    unscaled = dataclasses.replace(res, eigenvalues=values * 2.0**-sum(exponents))
    check_result(unscaled, oracle_q(as_float64(weights, dtype), u), "BE", dtype,
                 residual_tol=LANCZOS_DEFAULT_TOL[dtype] if method == "lanczos" else None)


@pytest.mark.parametrize("method", ["eigh", "lanczos", "lowrank"])
@pytest.mark.parametrize("e, limit", [(-50, "below the smallest normal float32"), (50, "above the largest float32")])
def test_eigenvalues_float32_cannot_hold_are_refused_and_float64_gives_them(method, e, limit):
    weights = _random("thin+bias", seed=42)
    layer = _scaled_layer(weights, torch.float32, (e, e, e, 0))  # λ ~ 2^(3e): outside float32
    with pytest.raises(ValueError, match=rf"eigenvalues of the direction at position 0 .*{limit}.*dtype=torch.float64"):
        bk.decompose(layer, [1, 3], k=3, method=method)
    res = bk.decompose(layer, [1, 3], k=3, method=method, dtype=torch.float64)
    unscaled = dataclasses.replace(res, eigenvalues=res.eigenvalues * 2.0**(-3 * e))
    check_result(unscaled, oracle_q(as_float64(weights, torch.float32), one_hot(5, [1, 3])), "LM", torch.float64,
                 residual_tol=LANCZOS_DEFAULT_TOL[torch.float64] if method == "lanczos" else None)


@pytest.mark.parametrize("method", ["eigh", "lanczos", "lowrank"])
def test_float64_weights_past_float32_range_work_in_float32(method):
    # w ~ 2^200 and v ~ 2^-200 are Inf and 0 in float32, but Q is of order one: normalized in
    # float64 before the cast, the float32 answer is right
    weights = _random("thin+bias", seed=45)
    res = bk.decompose(_scaled_layer(weights, torch.float64, (200, -200, 0, 0)), [0, 3], k=3, method=method,
                       dtype=torch.float32)
    assert res.eigenvalues.dtype == torch.float32
    check(res, weights, one_hot(5, [0, 3]), "LM", dtype=torch.float32, method=method)


def test_a_zero_direction_of_tiny_weights_is_still_zero():
    # ‖Q‖ = 0 is representable: nothing to refuse, every eigenvalue exactly 0
    weights = _random("thin+bias", seed=43)
    layer = _scaled_layer(weights, torch.float32, (-50, -50, -50, 0))
    res = bk.decompose(layer, torch.zeros(1, 5), k=2, method="eigh")
    assert torch.equal(res.eigenvalues, torch.zeros(1, 2))


# -- method="auto" -----------------------------------------------------------------------------------
# The shape rule in decompose.py: "lowrank" when 2h < d; else "lanczos" when k is given, d ≥ 512
# and k ≤ d/32; else "eigh" (d is the form's dimension, d + 1 with biases). It applies when some
# direction has a dense c = Pᵀu; sparse ones go to "support" (tests/test_solvers_support.py).
@pytest.mark.parametrize("d, h, k, expected", [
    (40, 8, None, "lowrank"),
    (40, 8, 3, "lowrank"),
    (16, 8, 3, "eigh"),          # 2h = d
    (24, 16, 1, "eigh"),         # small d
    (512, 256, 16, "lanczos"),   # k = d/32
    (512, 256, 17, "eigh"),      # k > d/32
    (512, 256, None, "eigh"),    # full spectrum
    (511, 256, 8, "eigh"),       # d < 512
    (1024, 512, 32, "lanczos"),
    (4096, 2048, 128, "lanczos"),
    (4096, 2047, 4096, "lowrank"),
])
def test_auto_rule(d, h, k, expected):
    assert choose_method(d, h, k) == expected


@pytest.mark.parametrize("d, h, bias, k, expected", [
    (40, 8, False, None, "lowrank"),
    (16, 8, False, 3, "eigh"),
    (16, 8, True, 3, "lowrank"),       # the bias makes the form d + 1 = 17 > 2h
    (511, 256, True, 16, "lanczos"),   # d + 1 = 512 and k = (d + 1)/32
])
def test_auto_picks_by_the_form_dimension(d, h, bias, k, expected):
    weights = random_weights(d, h, None, bias=bias, seed=25)
    dense = np.ones((1, h))  # every feature: s = h, so the shape rule decides
    res = bk.decompose(make_layer(weights, dtype=torch.float32), torch.from_numpy(dense).float(), k=k)
    assert res.method == expected
    if d < 100:
        check(res, weights, dense, "LM", dtype=torch.float32)


# -- convergence warning -----------------------------------------------------------------------------
def test_lanczos_warns_naming_how_many_directions_stopped_short():
    layer = make_layer(ITERATIVE)
    with pytest.warns(bk.ConvergenceWarning, match=r"\b3 of 3 direction"):
        res = bk.decompose(layer, [0, 1, 2], k=4, method="lanczos", max_products=1)
    reported = to_numpy(res.residuals)
    assert (reported.max(axis=1) > LANCZOS_DEFAULT_TOL[torch.float64]).all()
    # far from converged, the reported residuals still bound the true ones (their ‖Q‖ estimate,
    # the largest Ritz value so far, can only make them larger)
    for i, q in enumerate(oracle_q(ITERATIVE, one_hot(40, [0, 1, 2]))):
        vals, vecs = to_numpy(res.eigenvalues)[i], to_numpy(res.eigenvectors)[i]
        true = np.linalg.norm(q @ vecs - vecs * vals, axis=0) / np.abs(oracle_eigh(q)[0]).max()
        assert np.all(true <= 1.05 * reported[i]), (true, reported[i])


def test_lanczos_does_not_warn_when_converged():
    layer = make_layer(ITERATIVE)
    with warnings.catch_warnings():
        warnings.simplefilter("error", bk.ConvergenceWarning)
        bk.decompose(layer, [0, 1], k=4, method="lanczos")


# -- determinism, frameworks, chunking ---------------------------------------------------------------
@pytest.mark.parametrize("method", ["eigh", "lanczos", "lowrank"])
def test_deterministic(method):
    layer = make_layer(_random("thin+bias", seed=26))
    a = bk.decompose(layer, [0, 1, 2, 3], k=5, method=method)
    b = bk.decompose(layer, [0, 1, 2, 3], k=5, method=method)
    for field in ("eigenvalues", "eigenvectors", "residuals"):
        assert torch.equal(getattr(a, field), getattr(b, field)), field


@pytest.mark.parametrize("framework, kind", [("torch", torch.Tensor), ("numpy", np.ndarray)])
@pytest.mark.parametrize("method", ["eigh", "lanczos", "lowrank"])
def test_results_come_back_in_the_input_framework(method, framework, kind):
    weights = _random("thin+bias", seed=27)
    res = bk.decompose(make_layer(weights, framework=framework), [0, 2], k=3, method=method)
    for field in (res.eigenvalues, res.eigenvectors, res.residuals, res.indices):
        assert isinstance(field, kind)
    if framework == "torch":
        assert res.eigenvalues.device.type == "cpu"
    check(res, weights, one_hot(5, [0, 2]), "LM", method=method)


@pytest.mark.parametrize("method", ["eigh", "lanczos", "lowrank"])
def test_chunked_by_a_small_memory_budget(method):
    weights = _random("thin+bias", seed=28)
    weights["p"] = np.random.default_rng(1).standard_normal((11, 8))
    layer = make_layer(weights)
    # the smallest power-of-two budget that fits one direction fits fewer than two: one per chunk
    budget = 1024
    while True:
        try:
            res = bk.decompose(layer, range(11), k=3, method=method, max_memory=budget, progress=False)
            break
        except MemoryError:
            budget *= 2
    check(res, weights, np.eye(11), "LM", method=method)


@pytest.mark.parametrize("method", ["auto", "eigh", "lowrank"])
def test_a_result_over_the_budget_is_refused_up_front_with_its_bytes(method):
    # d = 4096 with one hidden unit: tiny weights, but 200 full spectra are 12.5 GiB of eigenvectors
    g = torch.Generator().manual_seed(0)
    layer = bk.BilinearLayer(torch.randn(1, 4096, generator=g), torch.randn(1, 4096, generator=g),
                             torch.randn(300, 1, generator=g))
    result = 200 * (4096 + 2) * 4096 * 4  # eigenvectors, eigenvalues and residuals in float32
    with pytest.raises(MemoryError, match=rf"decompose of 200 direction.*k=4096.*\b{result} bytes.*result"
                                          rf".*budget of {2**32} bytes"):
        bk.decompose(layer, range(200), method=method, max_memory=2**32)


def test_the_result_counts_in_the_budget_of_a_decomposition():
    weights = _random("square", seed=44)  # d = 24, k = 24: a result of 6 · 26 · 24 · 8 bytes
    result = 6 * 26 * 24 * 8
    with pytest.raises(MemoryError, match=rf"\b{result} bytes.*result"):
        bk.decompose(make_layer(weights), range(6), method="eigh", max_memory=result - 1)
    with pytest.raises(MemoryError, match=r"temporaries for a single direction.*0 B of the memory budget left"):
        bk.decompose(make_layer(weights), range(6), method="eigh", max_memory=result)
    res = bk.decompose(make_layer(weights), range(6), method="eigh", max_memory=4 * result)
    check(res, weights, np.eye(6), "LM", method="eigh")


# -- save / load -------------------------------------------------------------------------------------
@pytest.mark.parametrize("framework", ["torch", "numpy"])
@pytest.mark.parametrize("directions", ["indices", "vectors"])
def test_save_load_round_trip(tmp_path, framework, directions):
    weights = _random("thin+bias", seed=29)
    given = [4, 1] if directions == "indices" else torch.from_numpy(np.random.default_rng(0).standard_normal((2, 5)))
    res = bk.decompose(make_layer(weights, framework=framework), given, k=3, which="BE", method="lanczos")
    path = tmp_path / "result.safetensors"
    res.save(path)
    for load_as, kind in (("torch", torch.Tensor), ("numpy", np.ndarray)):
        back = bk.DecompositionResult.load(path, framework=load_as)
        assert back.method == "lanczos" and back.which == "BE" and back.metadata == res.metadata
        for field in ("eigenvalues", "eigenvectors", "residuals"):
            got = getattr(back, field)
            assert isinstance(got, kind)
            np.testing.assert_array_equal(to_numpy(got), to_numpy(getattr(res, field)))
        if directions == "indices":
            np.testing.assert_array_equal(to_numpy(back.indices), [4, 1])
        else:
            assert back.indices is None


def test_load_refuses_a_file_that_is_not_a_result(tmp_path):
    from safetensors.torch import save_file

    path = tmp_path / "other.safetensors"
    save_file({"x": torch.zeros(2)}, str(path))
    with pytest.raises(ValueError, match="not a decomposition result"):
        bk.DecompositionResult.load(path)


def test_metadata_records_the_run():
    res = bk.decompose(make_layer(ITERATIVE), [0], k=2, method="lanczos")
    assert res.metadata["k"] == 2 and res.metadata["dtype"] == "float64"
    assert math.isclose(res.metadata["tol"], LANCZOS_DEFAULT_TOL[torch.float64])


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
def test_eigh_through_the_output_space_route(dtype):
    # o = 3 well below h = 24 and 40 float directions: Q is formed as Σ_a u_a S[a]
    weights = random_weights(8, 24, 3, bias=True, seed=40)
    u = np.random.default_rng(2).standard_normal((40, 3))
    res = bk.decompose(make_layer(weights, dtype=dtype), torch.as_tensor(u, dtype=dtype), k=4, method="eigh")
    check_result(res, oracle_q(as_float64(weights, dtype), u), "LM", dtype)


def test_lanczos_basis_reaching_the_whole_space_stays_orthonormal():
    # Found by hypothesis: with d = 6 the last Krylov block is short against ‖Q‖, and normalizing
    # it after two Gram–Schmidt passes tilted it by ~1e-12 off the basis, so the eigenvectors were
    # not orthonormal and the reported (zero) residuals under-read the true ones.
    weights = dict(
        w=np.array([[-0.165513632, 0.491135494, -0.681867379, 0.107516365, 0.215494602],
                    [-0.358802662, 0.161048351, 0.000245503471, -0.416889237, -0.0492359127],
                    [-0.317799268, 0.536400141, 0.397278726, -0.443115091, 0.329899544],
                    [0.667791791, -0.530184381, -0.128724874, -0.254345283, -0.485191111],
                    [-0.323793023, 0.100384998, 0.0114402537, -0.520402988, 0.0333317046]]),
        v=np.array([[-0.67781453, 0.59554126, 0.70916057, -0.29434703, 0.79538046],
                    [0.71756407, 0.22048558, -0.15091853, 0.83362747, 0.51078728],
                    [0.04464285, -0.20365615, 0.14892034, 0.75572637, -0.1352913],
                    [-0.33015389, -0.23179973, 0.90522812, -0.2332852, 0.63919008],
                    [0.78787836, 0.32630529, -0.2382958, -0.67854213, -0.32447087]]),
        p=None,
        w_bias=np.array([-0.10343164, -0.16907616, 1.39472525, 0.29597764, -1.04935518]),
        v_bias=np.array([-1.31479936, -0.12743334, 1.26995507, 0.83595612, 0.78891372]),
    )
    res = bk.decompose(make_layer(weights), [0, 2, 0], method="lanczos")
    check_result(res, oracle_q(weights, one_hot(5, [0, 2, 0])), "LM", torch.float64,
                 residual_tol=LANCZOS_DEFAULT_TOL[torch.float64])


def test_eigenvalues_float64_cannot_hold_are_refused_naming_the_remedy():
    weights = _random("thin+bias", seed=46)
    layer = _scaled_layer(weights, torch.float64, (400, 400, 400, 0))  # λ ~ 2^1200
    with pytest.raises(ValueError, match=r"above the largest float64 number.*; rescale the weights$"):
        bk.decompose(layer, [0], k=2, method="eigh")
