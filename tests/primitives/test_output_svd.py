"""output_svd against np.linalg.svd of the formed (o, d²) unfolding of the symmetrized tensor."""
import numpy as np
import pytest
import torch

import bilinear_kernels as bk

from helpers import make_layer, oracle_tensor, random_weights, to_numpy

SHAPES = [(5, 7, 4, False), (5, 7, 4, True), (1, 3, 2, True), (6, 4, 1, False), (4, 6, None, True), (3, 8, 12, False)]


def oracle_svd(weights):
    s = oracle_tensor(weights)
    u, sigma, _ = np.linalg.svd(s.reshape(s.shape[0], -1), full_matrices=True)
    # o > d² leaves o − d² singular values that are exactly zero
    return np.concatenate([sigma, np.zeros(u.shape[0] - len(sigma))]), u


def check_svd(sigma, vectors, weights, k, rtol):
    ref_sigma, ref_u = oracle_svd(weights)
    sigma, vectors = to_numpy(sigma), to_numpy(vectors)
    o = ref_u.shape[0]
    assert sigma.shape == (k,) and vectors.shape == (o, k)
    top = ref_sigma[0]
    # through the Gram matrix σ² is exact to rounding of σ₁² (so a zero σ comes out near √eps·σ₁)
    np.testing.assert_allclose(sigma**2, ref_sigma[:k]**2, rtol=0, atol=rtol * top**2)
    assert np.all(np.diff(sigma) <= 0)
    np.testing.assert_allclose(vectors.T @ vectors, np.eye(k), atol=rtol)
    peak = vectors[np.abs(vectors).argmax(0), np.arange(k)]
    assert np.all(peak > 0)
    for i in range(k):
        # a well-separated singular value's vector is the oracle's up to sign
        gaps = np.abs(np.delete(ref_sigma, i) - ref_sigma[i]) if o > 1 else np.array([np.inf])
        if gaps.min() > 1e-3 * top and ref_sigma[i] > 1e-3 * top:
            assert abs(ref_u[:, i] @ vectors[:, i]) == pytest.approx(1.0, abs=1e-8)


@pytest.mark.parametrize("d, h, o, bias", SHAPES)
@pytest.mark.parametrize("framework", ["torch", "numpy"])
def test_output_svd_matches_the_formed_unfolding(d, h, o, bias, framework):
    weights = random_weights(d, h, o, bias=bias, seed=3 * d + h)
    layer = make_layer(weights, framework)
    sigma, vectors = bk.output_svd(layer)
    assert isinstance(sigma, np.ndarray if framework == "numpy" else torch.Tensor)
    check_svd(sigma, vectors, weights, h if o is None else o, 1e-12)


def test_the_gram_formula_itself_in_float64():
    # G = P M Pᵀ with M = ½((WWᵀ)⊙(VVᵀ) + (WVᵀ)⊙(VWᵀ)) on the homogeneous weights, vs S Sᵀ
    from helpers import homogeneous
    weights = random_weights(4, 5, 3, bias=True, seed=11)
    w, v = homogeneous(weights)
    p = weights["p"]
    m = 0.5 * ((w @ w.T) * (v @ v.T) + (w @ v.T) * (v @ w.T))
    s = oracle_tensor(weights).reshape(3, -1)
    np.testing.assert_allclose(p @ m @ p.T, s @ s.T, rtol=1e-12, atol=1e-12)


def test_top_k_and_a_small_budget_for_the_hidden_blocks():
    weights = random_weights(6, 10, 5, seed=2)
    layer = make_layer(weights)
    # G and its eigenvectors: 2·25·8 = 400 bytes; a row block of M: 6·10·8 + 5·8 = 520 bytes
    sigma, vectors = bk.output_svd(layer, k=3, max_memory=400 + 3 * 520)
    check_svd(sigma, vectors, weights, 3, 1e-12)


def test_float32_has_float32_accuracy():
    weights = random_weights(8, 16, 6, seed=4)
    layer = make_layer(weights, dtype=torch.float32)
    sigma, vectors = bk.output_svd(layer, k=2)
    assert sigma.dtype == torch.float32
    ref_sigma, _ = oracle_svd(weights)
    np.testing.assert_allclose(sigma.numpy(), ref_sigma[:2], rtol=1e-5)
    assert (vectors.T @ vectors - torch.eye(2)).abs().max() <= 1e-5


def test_a_rank_deficient_tensor_gives_zero_not_nan():
    weights = random_weights(3, 2, 6, seed=1)  # rank of the unfolding ≤ h = 2 < o = 6
    sigma, vectors = bk.output_svd(make_layer(weights))
    assert np.all(np.isfinite(sigma.numpy())) and np.all(sigma.numpy() >= 0)
    assert sigma[2:].max() <= 1e-7 * sigma[0]


@pytest.mark.parametrize("k, error, match", [(0, ValueError, r"\[1, 4\]"), (5, ValueError, "got 5"),
                                             (1.5, TypeError, "k must be an int")])
def test_bad_k(k, error, match):
    layer = make_layer(random_weights(3, 5, 4))
    with pytest.raises(error, match=match):
        bk.output_svd(layer, k=k)


def test_a_gram_matrix_over_the_budget_names_its_bytes():
    layer = make_layer(random_weights(3, 5, 40))
    with pytest.raises(MemoryError, match=r"25600 bytes"):  # 2 · 40² · 8
        bk.output_svd(layer, max_memory=10000)
    with pytest.raises(MemoryError, match="one row of the h × h matrix"):
        bk.output_svd(layer, max_memory=25600 + 10)
