"""method="support": the exact reduction of Q(u) to the support of c = Pᵀu, against float64
oracles that form Q from the definition; the auto rule's choice of it; its refusals."""
import numpy as np
import pytest
import torch

import bilinear_kernels as bk
from bilinear_kernels.solvers.support import complete_basis, support_size_bound
from helpers import WHICHES, check_result, make_layer, one_hot, oracle_q, random_weights, to_numpy

D, H = 16, 12


def sparse_directions(h, sizes, seed):
    """Float directions (len(sizes), h), row i with sizes[i] random nonzeros."""
    rng = np.random.default_rng(seed)
    u = np.zeros((len(sizes), h))
    for i, s in enumerate(sizes):
        u[i, rng.choice(h, s, replace=False)] = rng.standard_normal(s)
    return u


@pytest.mark.parametrize("framework", ["torch", "numpy"])
@pytest.mark.parametrize("bias", [False, True])
@pytest.mark.parametrize("s", [1, 2, 3, 4, 5])
def test_support_equals_the_dense_eigendecomposition(s, bias, framework):
    weights = random_weights(D, H, bias=bias, seed=s)
    layer = make_layer(weights, framework=framework)
    u = sparse_directions(H, [s, s, s], seed=10 + s)
    given = u if framework == "numpy" else torch.from_numpy(u)
    for which in WHICHES:
        for k in (1, 3, 2 * s + 1, None):
            res = bk.decompose(layer, given, k=k, which=which, method="support")
            assert res.method == "support"
            assert isinstance(res.eigenvalues, np.ndarray if framework == "numpy" else torch.Tensor)
            k_eff = layer.d_form if k is None else k
            assert res.eigenvectors.shape == (3, layer.d_form, k_eff)
            check_result(res, oracle_q(weights, u), which, torch.float64)


@pytest.mark.parametrize("which", WHICHES)
def test_mixed_support_sizes_in_one_call_and_one_hot_directions(which):
    # several support sizes batched in one chunk, in an order that interleaves them
    weights = random_weights(D, H, bias=True, seed=3)
    layer = make_layer(weights)
    u = sparse_directions(H, [3, 1, 5, 1, 2, 3], seed=4)
    res = bk.decompose(layer, torch.from_numpy(u), k=4, which=which, method="support", max_memory=2**20)
    check_result(res, oracle_q(weights, u), which, torch.float64)
    res = bk.decompose(layer, [0, 5, 11], k=4, which=which)
    assert res.method == "support"
    check_result(res, oracle_q(weights, one_hot(H, [0, 5, 11])), which, torch.float64)


def test_support_through_a_sparse_output_projection():
    weights = random_weights(D, H, 5, seed=6)
    weights["p"][:, 4:] = 0  # every output reads features 0..3 only: s ≤ 4
    layer = make_layer(weights)
    res = bk.decompose(layer, [0, 2, 4], k=3)
    assert res.method == "support"
    check_result(res, oracle_q(weights, one_hot(5, [0, 2, 4])), "LM", torch.float64)
    u = np.random.default_rng(7).standard_normal((2, 5))
    res = bk.decompose(layer, torch.from_numpy(u), k=None, which="BE", method="support")
    check_result(res, oracle_q(weights, u), "BE", torch.float64)


def test_support_float32():
    weights = random_weights(D, H, seed=8)
    layer = make_layer(weights, dtype=torch.float32)
    u = sparse_directions(H, [1, 2, 4], seed=9)
    res = bk.decompose(layer, torch.from_numpy(u).float(), k=4, method="support")
    assert res.eigenvalues.dtype == torch.float32
    check_result(res, oracle_q(weights, u), "LM", torch.float32)


def test_degenerate_features_and_the_zero_direction():
    # w = v (rank one), w = −2v (rank one, negative), w = 0, w ∥ v by a tiny angle; and u = 0
    weights = random_weights(D, H, seed=11)
    w, v = weights["w"], weights["v"]
    w[0] = v[0]
    w[1] = -2 * v[1]
    w[2] = 0
    w[3] = v[3] + 1e-9 * v[4]
    layer = make_layer(weights)
    u = np.zeros((6, H))
    u[[0, 1, 2, 3], [0, 1, 2, 3]] = [1.0, 0.5, 2.0, -1.0]
    u[4, [0, 2]] = [1.0, 3.0]
    for which in WHICHES:
        for k in (2, 5, None):
            res = bk.decompose(layer, torch.from_numpy(u), k=k, which=which, method="support")
            check_result(res, oracle_q(weights, u), which, torch.float64)
    assert np.all(to_numpy(res.eigenvalues)[5] == 0)


def test_closed_form_keeps_the_small_eigenvalue_of_nearly_parallel_rows():
    # sym(w vᵀ) with v = w + ε z: the small eigenvalue −¼‖w‖‖v‖‖ŵ − v̂‖² ≈ −ε²/4 is kept to
    # relative accuracy, not lost to the cancellation in wᵀv − ‖w‖‖v‖
    rng = np.random.default_rng(12)
    w = rng.standard_normal(D)
    w /= np.linalg.norm(w)
    z = rng.standard_normal(D)
    z -= (z @ w) * w
    z /= np.linalg.norm(z)
    eps = 1e-5
    v = w + eps * z
    layer = bk.BilinearLayer(torch.from_numpy(np.stack([w, z])), torch.from_numpy(np.stack([v, z])))
    res = bk.decompose(layer, 0, k=2, which="SA", method="support")
    nv = np.linalg.norm(v)
    minus = w - v / nv
    expected = -0.25 * nv * (minus @ minus)  # exact in closed form, by hand
    np.testing.assert_allclose(float(res.eigenvalues[0, 0]), expected, rtol=1e-8)


def test_auto_rule_for_support():
    # auto takes "support" when every direction has 2s < d and s < h (bounded without forming c)
    layer = make_layer(random_weights(D, H, seed=13))
    dense = torch.from_numpy(np.random.default_rng(14).standard_normal((2, H)))
    sparse = torch.from_numpy(sparse_directions(H, [2, 7], seed=15))
    assert bk.decompose(layer, [0, 1], k=2).method == "support"           # one-hot, no P: s = 1
    assert bk.decompose(layer, sparse, k=2).method == "support"           # 2·7 < 16
    assert bk.decompose(layer, dense, k=2).method == "eigh"               # s = h: never
    assert bk.decompose(layer, torch.cat([sparse, dense]), k=2).method == "eigh"  # decided per call
    wide = torch.from_numpy(sparse_directions(H, [8], seed=16))
    assert bk.decompose(layer, wide, k=2).method == "eigh"                # 2·8 = d
    biased = make_layer(random_weights(D, H, bias=True, seed=17))
    assert bk.decompose(biased, wide, k=2).method == "support"            # 2·8 < d + 1
    with_p = make_layer(random_weights(D, H, 4, seed=18))
    assert bk.decompose(with_p, [0, 1], k=2).method == "eigh"             # a dense P: s = h
    thin = make_layer(random_weights(40, 8, seed=19))                     # 2h < d
    assert bk.decompose(thin, [0], k=2).method == "support"               # s = 1 < h
    assert bk.decompose(thin, torch.ones(8, dtype=torch.float64), k=2).method == "lowrank"  # s = h


def test_support_size_bound_is_exact_without_p_and_bounds_with_it():
    p = torch.tensor([[1.0, 0, 0, 2], [0, 3, 0, 4], [0, 0, 0, 0]])
    assert support_size_bound(4, p, torch.tensor([0, 1, 2]), None).tolist() == [2, 2, 0]
    u = torch.tensor([[1.0, 1.0, 0.0], [0.0, 0.0, 5.0]])
    assert support_size_bound(4, p, None, u).tolist() == [4, 0]        # a shared feature counted twice, at most h
    assert support_size_bound(4, None, None, u).tolist() == [2, 1]
    actual = (u @ p != 0).sum(-1)
    assert bool((actual <= support_size_bound(4, p, None, u)).all())


def test_complete_basis_is_orthonormal_and_orthogonal():
    q, _ = torch.linalg.qr(torch.randn(3, 10, 4, dtype=torch.float64, generator=torch.Generator().manual_seed(0)))
    extra = complete_basis(q, 5)
    both = torch.cat([q, extra], dim=-1)
    torch.testing.assert_close(both.transpose(1, 2) @ both, torch.eye(9, dtype=torch.float64).expand(3, 9, 9),
                               atol=1e-13, rtol=0)


def test_support_never_forms_a_d_by_d_matrix():
    # at d = 4000 one formed Q is 128 MB in float64; the support route fits in 16 MB
    weights = random_weights(4000, 6, seed=20)
    layer = make_layer(weights)
    with pytest.raises(MemoryError):
        bk.decompose(layer, [0, 1], k=2, method="eigh", max_memory=16 * 2**20)
    res = bk.decompose(layer, [0, 1], k=2, max_memory=16 * 2**20)
    assert res.method == "support"
    w, v = weights["w"], weights["v"]
    for i in (0, 1):
        nw, nv = np.linalg.norm(w[i]), np.linalg.norm(v[i])
        top = 0.5 * (w[i] @ v[i] + nw * nv)
        bottom = 0.5 * (w[i] @ v[i] - nw * nv)
        expected = max((top, bottom), key=abs)
        np.testing.assert_allclose(float(res.eigenvalues[i, 0]), expected, rtol=1e-12)


def test_explicit_support_refuses_a_direction_with_too_large_a_support():
    layer = make_layer(random_weights(D, H, seed=21))
    u = torch.from_numpy(sparse_directions(H, [2, 9], seed=22))
    with pytest.raises(ValueError, match=r"method='support' needs 2·\|supp Pᵀu\| < d = 16.*position 1 has 9"):
        bk.decompose(layer, u, k=2, method="support")
