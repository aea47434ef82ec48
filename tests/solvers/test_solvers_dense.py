"""The direct methods' residuals: a full spectrum by eigh leaves them to be computed when first read
(no d³ GEMM inside the solve); lowrank computes them in the reduced coordinates. Float64 oracles."""
import numpy as np
import pytest
import torch

import bilinear_kernels as bk
from bilinear_kernels.solvers.dense import dense_topk
from helpers import TOLERANCES, as_float64, make_layer, one_hot, oracle_q, random_weights, to_numpy


def true_residuals(q, vals, vecs):
    scale = np.abs(np.linalg.eigvalsh(q)).max(axis=-1)
    r = np.linalg.norm(q @ vecs - vecs * vals[:, None, :], axis=-2)
    return r / scale[:, None]


@pytest.mark.parametrize("framework", ["torch", "numpy"])
@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
def test_full_spectrum_residuals_are_computed_when_first_read(dtype, framework):
    weights = random_weights(20, 16, 4, bias=True, seed=3)
    res = bk.decompose(make_layer(weights, framework=framework, dtype=dtype), [0, 3], method="eigh")
    # left for the reader: the solve did not spend a d³ GEMM on them
    assert callable(object.__getattribute__(res, "residuals"))
    got = to_numpy(res.residuals)
    assert isinstance(res.residuals, torch.Tensor if framework == "torch" else np.ndarray)
    assert got.shape == (2, 21) and res.residuals is res.residuals  # computed once
    q = oracle_q(as_float64(weights, dtype), one_hot(4, [0, 3]))
    want = true_residuals(q, to_numpy(res.eigenvalues).astype(np.float64), to_numpy(res.eigenvectors).astype(np.float64))
    np.testing.assert_allclose(got, want, rtol=0, atol=TOLERANCES[dtype]["match"])


def test_full_spectrum_residuals_survive_save_and_load(tmp_path):
    weights = random_weights(12, 8, 3, seed=4)
    res = bk.decompose(make_layer(weights), [1, 2], method="eigh")
    res.save(tmp_path / "r.safetensors")
    back = bk.DecompositionResult.load(tmp_path / "r.safetensors")
    np.testing.assert_array_equal(to_numpy(back.residuals), to_numpy(res.residuals))


def test_a_few_eigh_pairs_get_their_residuals_with_the_solve():
    weights = random_weights(64, 40, 3, seed=5)
    res = bk.decompose(make_layer(weights), [0, 1], k=4, method="eigh")
    assert isinstance(object.__getattribute__(res, "residuals"), torch.Tensor)
    want = true_residuals(oracle_q(weights, one_hot(3, [0, 1])), res.eigenvalues.numpy(), res.eigenvectors.numpy())
    np.testing.assert_allclose(res.residuals.numpy(), want, rtol=0, atol=TOLERANCES[torch.float64]["match"])


def test_dense_topk_without_residuals_returns_the_same_pairs():
    q = torch.as_tensor(oracle_q(random_weights(10, 8, 2, seed=6), np.eye(2)))
    with_r = dense_topk(q, 3, "LM", "torch", residuals=True)
    without = dense_topk(q, 3, "LM", "torch", residuals=False)
    assert without[2] is None
    for a, b in zip((with_r[0], with_r[1], with_r[3]), (without[0], without[1], without[3])):
        assert torch.equal(a, b)


@pytest.mark.parametrize("k, later", [(2, False), (20, True), (41, True)])
@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
def test_lowrank_residuals_match_the_true_ones(dtype, k, later):
    # k = 2: from the reduced problem with the solve; k = 20, 41 (all, with structural zeros): on read
    weights = random_weights(40, 6, 3, bias=True, seed=7)  # 2h = 12 < d + 1: includes structural zeros
    res = bk.decompose(make_layer(weights, dtype=dtype), [0, 2], k=k, method="lowrank")
    assert callable(object.__getattribute__(res, "residuals")) == later
    q = oracle_q(as_float64(weights, dtype), one_hot(3, [0, 2]))
    want = true_residuals(q, to_numpy(res.eigenvalues).astype(np.float64), to_numpy(res.eigenvectors).astype(np.float64))
    np.testing.assert_allclose(to_numpy(res.residuals), want, rtol=0, atol=TOLERANCES[dtype]["match"])


def test_residuals_read_later_from_parameters_carry_no_graph():
    weights = random_weights(12, 8, 3, seed=8)
    layer = bk.BilinearLayer(*(torch.nn.Parameter(torch.as_tensor(weights[n])) for n in ("w", "v", "p")))
    res = bk.decompose(layer, [0, 1], method="eigh")
    assert not res.residuals.requires_grad


@pytest.mark.parametrize("which, later", [("LM", True), ("BE", True), ("LA", False), ("SA", False)])
def test_residuals_are_read_later_only_where_the_values_hold_the_norm(which, later):
    # k = d/2 > d/16: worth deferring, but ‖Q‖ is the largest returned |λ| only for LM and BE
    weights = random_weights(32, 20, 3, seed=10)
    res = bk.decompose(make_layer(weights), [0, 2], k=16, which=which, method="eigh")
    assert callable(object.__getattribute__(res, "residuals")) == later
    q = oracle_q(weights, one_hot(3, [0, 2]))
    want = true_residuals(q, res.eigenvalues.numpy(), res.eigenvectors.numpy())
    np.testing.assert_allclose(res.residuals.numpy(), want, rtol=0, atol=TOLERANCES[torch.float64]["match"])
