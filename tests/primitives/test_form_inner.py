"""interaction_inner and interaction_similarity against inner products of the formed float64 Q
(one layer and two, biased and not, index and float directions, chunked), their gradients against
autograd through the formed Q, zero forms, and bad input."""
import numpy as np
import pytest
import torch

import bilinear_kernels as bk

from helpers import make_layer, one_hot, oracle_q, random_weights, to_numpy

# (d, h, o, bias)
LAYERS = [(5, 7, 4, False), (5, 7, 4, True), (5, 3, None, True), (5, 9, None, False)]


def formed(weights, u, size):
    """The formed Q of each direction, padded with zero rows and columns to `size` (a bias-free
    form taken on x̃ = [x; 1] when the other layer has a bias)."""
    q = oracle_q(weights, u)
    pad = size - q.shape[-1]
    return np.pad(q, ((0, 0), (0, pad), (0, pad)))


def directions_of(weights, kind, seed):
    o = weights["w"].shape[0] if weights["p"] is None else weights["p"].shape[0]
    if kind == "index":
        idx = [0, o - 1, 1]
        return idx, one_hot(o, idx)
    u = np.random.default_rng(seed).standard_normal((2, o))
    return u, u


def oracle_inner(wa, ua, wb, ub):
    size = max(_form_size(wa), _form_size(wb))
    qa, qb = formed(wa, ua, size), formed(wb, ub, size)
    return np.einsum("aij,bij->ab", qa, qb), np.linalg.norm(qa, axis=(1, 2)), np.linalg.norm(qb, axis=(1, 2))


def _form_size(weights):
    return weights["w"].shape[1] + (1 if weights["w_bias"] is not None or weights["v_bias"] is not None else 0)


@pytest.mark.parametrize("shape", LAYERS)
@pytest.mark.parametrize("kind", ["index", "float"])
@pytest.mark.parametrize("framework", ["torch", "numpy"])
def test_one_layer_matches_the_formed_matrices(shape, kind, framework):
    d, h, o, bias = shape
    weights = random_weights(d, h, o, bias=bias, seed=h + d)
    layer = make_layer(weights, framework)
    dirs, u = directions_of(weights, kind, 1)
    ref, norms, _ = oracle_inner(weights, u, weights, u)
    for max_memory in (None, 2000):  # 2000 bytes: row blocks of one or two rows of M
        got = bk.interaction_inner(layer, dirs, max_memory=max_memory)
        assert isinstance(got, np.ndarray if framework == "numpy" else torch.Tensor)
        np.testing.assert_allclose(to_numpy(got), ref, rtol=1e-12, atol=1e-12 * np.abs(ref).max())
        cos = to_numpy(bk.interaction_similarity(layer, dirs, max_memory=max_memory))
        np.testing.assert_allclose(cos, ref / np.outer(norms, norms), rtol=0, atol=1e-12)
    # other directions on the same layer: the inner products between the two sets
    other, uo = directions_of(weights, "float" if kind == "index" else "index", 2)
    ref2, na, nb = oracle_inner(weights, u, weights, uo)
    got = bk.interaction_inner(layer, dirs, None, other, max_memory=2000)
    np.testing.assert_allclose(to_numpy(got), ref2, rtol=1e-12, atol=1e-12 * np.abs(ref2).max())
    cos = to_numpy(bk.interaction_similarity(layer, dirs, layer, other))
    np.testing.assert_allclose(cos, ref2 / np.outer(na, nb), rtol=0, atol=1e-12)


@pytest.mark.parametrize("shape_a, shape_b", [(LAYERS[0], LAYERS[1]), (LAYERS[1], LAYERS[3]), (LAYERS[2], LAYERS[0])])
def test_two_layers_match_the_formed_matrices(shape_a, shape_b):
    wa = random_weights(*shape_a[:3], bias=shape_a[3], seed=3)
    wb = random_weights(*shape_b[:3], bias=shape_b[3], seed=4)
    la, lb = make_layer(wa, "numpy"), make_layer(wb)
    da, ua = directions_of(wa, "float", 5)
    db, ub = directions_of(wb, "index", 6)
    ref, na, nb = oracle_inner(wa, ua, wb, ub)
    for max_memory in (None, 2000):
        got = bk.interaction_inner(la, da, lb, db, max_memory=max_memory)
        assert isinstance(got, np.ndarray)  # layer_a's framework
        np.testing.assert_allclose(got, ref, rtol=1e-12, atol=1e-12 * np.abs(ref).max())
        cos = bk.interaction_similarity(la, da, lb, db, max_memory=max_memory)
        np.testing.assert_allclose(cos, ref / np.outer(na, nb), rtol=0, atol=1e-12)


def test_dirs_b_defaults_to_dirs_a_on_the_other_layer():
    wa, wb = random_weights(4, 6, 3, seed=1), random_weights(4, 5, 3, bias=True, seed=2)
    got = bk.interaction_inner(make_layer(wa), [0, 2], make_layer(wb))
    ref, _, _ = oracle_inner(wa, one_hot(3, [0, 2]), wb, one_hot(3, [0, 2]))
    np.testing.assert_allclose(got.numpy(), ref, rtol=1e-12, atol=1e-12 * np.abs(ref).max())


def test_float32_follows_its_tolerance():
    weights = random_weights(6, 8, 5, bias=True, seed=7)
    layer = make_layer(weights, dtype=torch.float32)
    got = bk.interaction_inner(layer, range(5))
    assert got.dtype == torch.float32
    ref, norms, _ = oracle_inner(weights, one_hot(5, range(5)), weights, one_hot(5, range(5)))
    # rounding the weights to float32 alone moves each product by about 1e-7 of ‖Q_a‖‖Q_b‖
    np.testing.assert_allclose(got.numpy(), ref, rtol=0, atol=1e-5 * norms.max() ** 2)
    cos = bk.interaction_similarity(layer, range(5)).numpy()
    np.testing.assert_allclose(cos, ref / np.outer(norms, norms), rtol=0, atol=1e-5)
    assert np.all(np.abs(cos) <= 1)


def test_zero_forms_have_nan_cosines():
    weights = random_weights(4, 6, None, seed=8)
    # hidden units 0 and 1 identical: u = e_0 - e_1 is a zero form through cancellation
    weights["w"][1], weights["v"][1] = weights["w"][0], weights["v"][0]
    layer = make_layer(weights)
    u = np.zeros((3, 6))
    u[0, 0], u[0, 1] = 1.0, -1.0   # cancels
    u[2, 3] = 1.0                  # a genuine form; row 1 is zero
    cos = bk.interaction_similarity(layer, u).numpy()
    assert np.isnan(cos[:2]).all() and np.isnan(cos[:, :2]).all()
    assert abs(cos[2, 2] - 1) < 1e-12
    cross = bk.interaction_similarity(layer, u, make_layer(random_weights(4, 3, 2, seed=9)), [0, 1]).numpy()
    assert np.isnan(cross[:2]).all() and np.isfinite(cross[2]).all()


def _formed_torch(w, v, p, wb, vb, u):
    w_h = torch.cat([w, wb[:, None]], 1)
    v_h = torch.cat([v, vb[:, None]], 1)
    b = torch.einsum("bk,ki,kj->bij", u @ p, w_h, v_h)
    return 0.5 * (b + b.mT)


@pytest.mark.parametrize("max_memory", [None, 1500])  # 1500 bytes: checkpointed blocks of a row or two
def test_gradients_match_autograd_through_the_formed_matrices(max_memory):
    names = ("w", "v", "p", "w_bias", "v_bias")
    wa, wb = random_weights(4, 6, 3, bias=True, seed=10), random_weights(4, 5, 2, bias=True, seed=11)
    ta = {n: torch.tensor(wa[n], requires_grad=True) for n in names}
    tb = {n: torch.tensor(wb[n], requires_grad=True) for n in names}
    ua = torch.tensor(np.random.default_rng(1).standard_normal((2, 3)), requires_grad=True)
    ub = torch.tensor(np.random.default_rng(2).standard_normal((3, 2)))
    weight = torch.tensor(np.random.default_rng(3).standard_normal((2, 3)))
    la, lb = bk.BilinearLayer(*ta.values()), bk.BilinearLayer(*tb.values())
    leaves = [*ta.values(), *tb.values(), ua]
    qa, qb = _formed_torch(*ta.values(), ua), _formed_torch(*tb.values(), ub)
    for fn, ref in ((bk.interaction_inner, torch.einsum("aij,bij->ab", qa, qb)),
                    (bk.interaction_similarity, torch.einsum("aij,bij->ab", qa, qb)
                     / torch.linalg.matrix_norm(qa)[:, None] / torch.linalg.matrix_norm(qb)[None])):
        ours = fn(la, ua, lb, ub, max_memory=max_memory)
        torch.testing.assert_close(ours.detach(), ref.detach(), rtol=1e-12, atol=1e-12)
        grads = torch.autograd.grad((ours * weight).sum(), leaves)
        ref_grads = torch.autograd.grad((ref * weight).sum(), leaves, retain_graph=True)
        for g, r in zip(grads, ref_grads):
            torch.testing.assert_close(g, r, rtol=1e-10, atol=1e-12)
    # within one layer (the upper-triangle pass)
    ours = bk.interaction_inner(la, ua, max_memory=max_memory)
    ref = torch.einsum("aij,bij->ab", qa, qa)
    grads = torch.autograd.grad((ours * weight[:, :2]).sum(), [*ta.values(), ua])
    ref_grads = torch.autograd.grad((ref * weight[:, :2]).sum(), [*ta.values(), ua])
    for g, r in zip(grads, ref_grads):
        torch.testing.assert_close(g, r, rtol=1e-10, atol=1e-12)


def test_bad_input_gets_one_line_errors_naming_the_argument():
    la = make_layer(random_weights(4, 6, 3))
    with pytest.raises(ValueError, match=r"^layer_b has input width d = 5 but layer_a has d = 4") as err:
        bk.interaction_inner(la, 0, make_layer(random_weights(5, 6, 3)))
    assert "\n" not in str(err.value)
    with pytest.raises(ValueError, match=r"^dirs_b: float directions must have shape .* o = d_out = 2"):
        bk.interaction_similarity(la, 0, make_layer(random_weights(4, 6, 2)), np.ones(3))
    with pytest.raises(ValueError, match=r"^dirs_a \(taken for layer_b: dirs_b is None\): direction index 2"):
        bk.interaction_inner(la, [2], make_layer(random_weights(4, 6, 2)))
    with pytest.raises(ValueError, match=r"^dirs_a: direction index 3 is out of range"):
        bk.gaussian_moments(la, [3])
    with pytest.raises(TypeError, match=r"^layer_b must be a BilinearLayer"):
        bk.interaction_inner(la, 0, "layer")
    with pytest.raises(TypeError, match=r"^layer_a must be a BilinearLayer"):
        bk.interaction_similarity(np.ones((3, 4)), 0)
    with pytest.raises(TypeError, match=r"^layer_a must be a BilinearLayer, got NoneType"):
        bk.interaction_inner(None, 0)
    with pytest.raises(MemoryError, match="interaction_inner"):
        bk.interaction_inner(make_layer(random_weights(3, 64, 2)), [0, 1], max_memory=100)


def test_overflow_in_float32_is_refused_not_returned():
    weights = random_weights(4, 6, 3, seed=12)
    big = {n: None if a is None else a * 1e12 for n, a in weights.items()}
    layer = make_layer(big, dtype=torch.float32)
    for fn in (bk.interaction_inner, bk.interaction_similarity):
        with pytest.raises(ValueError, match=r"overflow float32: pass dtype=torch.float64$"):
            fn(layer, [0, 1])
    ref, norms, _ = oracle_inner(big, one_hot(3, [0, 1]), big, one_hot(3, [0, 1]))
    got = bk.interaction_inner(layer, [0, 1], dtype=torch.float64).numpy()
    np.testing.assert_allclose(got, ref, rtol=0, atol=1e-6 * norms.max() ** 2)  # the weights rounded to float32
