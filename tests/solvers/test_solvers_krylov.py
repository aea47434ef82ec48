"""The Krylov path on spectra that trap block methods: eigenvalues repeated more often than the
block is wide, and ± pairs of exactly equal magnitude. Float64 oracles from NumPy/SciPy."""
import numpy as np
import pytest
import torch

import bilinear_kernels as bk
from bilinear_kernels.decompose import choose_krylov_route, krylov_route_cost
from bilinear_kernels.solvers.selection import largest_cluster, positive_first
from helpers import (LANCZOS_DEFAULT_TOL, as_float64, check_result, expected_selection, make_layer,
                     oracle_eigh, oracle_q, random_weights)


def repeated_blocks(copies, d_block=8, h_block=16, rest=0, seed=0):
    """W = I_copies ⊗ W_b (and V alike), plus `rest` input dimensions with weights of their own,
    read out by one direction whose coefficients repeat across the copies: every eigenvalue of
    the repeated part has multiplicity `copies`. The rest's coefficients are small, so the top
    eigenvalues are the repeated ones."""
    rng = np.random.default_rng(seed)
    wb, vb = rng.standard_normal((2, h_block, d_block))
    cb = rng.standard_normal(h_block)
    blocks_w, blocks_v, c = [wb] * copies, [vb] * copies, [cb] * copies
    if rest:
        blocks_w.append(rng.standard_normal((2 * rest, rest)))
        blocks_v.append(rng.standard_normal((2 * rest, rest)))
        c.append(0.05 * rng.standard_normal(2 * rest))
    w = _block_diag(blocks_w)
    v = _block_diag(blocks_v)
    return dict(w=w, v=v, p=np.concatenate(c)[None], w_bias=None, v_bias=None)


def _block_diag(blocks):
    rows, cols = sum(b.shape[0] for b in blocks), sum(b.shape[1] for b in blocks)
    out = np.zeros((rows, cols))
    r = c = 0
    for b in blocks:
        out[r:r + b.shape[0], c:c + b.shape[1]] = b
        r, c = r + b.shape[0], c + b.shape[1]
    return out


ROUTES = ("formed", "matrix-free")


@pytest.mark.parametrize("route", ROUTES)
@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
@pytest.mark.parametrize("copies, rest", [(32, 0), (20, 96)])
def test_an_eigenvalue_repeated_beyond_the_block_width_is_found_every_time(copies, rest, dtype, route):
    weights = repeated_blocks(copies, rest=rest)
    layer = make_layer(weights, dtype=dtype)
    assert layer.d_form >= 256  # the Krylov basis stays far below d: no exact Rayleigh–Ritz
    res = bk.decompose(layer, [0], k=16, method="lanczos", krylov_route=route)
    assert res.metadata["krylov_route"] == route
    assert res.metadata["block_size"] < copies
    q = oracle_q(as_float64(weights, dtype), np.ones((1, 1)))
    top = expected_selection(oracle_eigh(q[0])[0], 16, "LM")
    assert np.allclose(top, top[0])  # the wanted 16 are all one eigenvalue of multiplicity `copies`
    check_result(res, q, "LM", dtype, residual_tol=LANCZOS_DEFAULT_TOL[dtype])
    assert "0" in res.metadata["widened_block"]


def test_a_cluster_as_wide_as_the_block_is_rerun_and_a_true_cluster_of_that_size_kept():
    # exactly 4 copies and a block of 4: the rerun with a block of 8 confirms there are only 4
    weights = repeated_blocks(4, d_block=8, h_block=16, rest=224, seed=3)
    weights["p"][0, :64] *= 20  # the repeated part dominates
    layer = make_layer(weights)
    res = bk.decompose(layer, [0], k=6, method="lanczos", block_size=4)
    check_result(res, oracle_q(weights, np.ones((1, 1))), "LM", torch.float64,
                 residual_tol=LANCZOS_DEFAULT_TOL[torch.float64])
    assert res.metadata["widened_block"] == {"0": 7}  # min(2p, k + 1)


@pytest.mark.parametrize("route", ROUTES)
@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
@pytest.mark.parametrize("which", ["LM", "BE"])
def test_lanczos_puts_plus_before_minus_of_equal_magnitude_on_a_diagonal_q(which, dtype, route):
    # W = V = I and c = (λ_1, −λ_1, λ_2, −λ_2, ...): Q = diag(c), every |λ| exactly twice
    d = 300
    mags = np.linspace(1.0, 0.1, d // 2)
    c = np.empty(d)
    c[0::2], c[1::2] = mags, -mags
    weights = dict(w=np.eye(d), v=np.eye(d), p=c[None], w_bias=None, v_bias=None)
    res = bk.decompose(make_layer(weights, dtype=dtype), [0], k=10, which=which, method="lanczos",
                       krylov_route=route)
    vals = res.eigenvalues[0].double().numpy()
    np.testing.assert_allclose(vals, expected_selection(c, 10, which), rtol=0, atol=1e-4)
    assert np.all(vals[0::2] > 0) and np.all(vals[1::2] < 0), vals
    check_result(res, oracle_q(as_float64(weights, dtype), np.ones((1, 1))), which, dtype,
                 residual_tol=LANCZOS_DEFAULT_TOL[dtype])


def test_positive_first_moves_only_opposite_signs_within_slack():
    vals = torch.tensor([[-2.0, 1.99999, 1.5, -1.0, -1.0, 1.0, 1.0]])
    slack = torch.full_like(vals, 1e-4)
    perm = positive_first(vals, slack)
    assert perm.tolist() == [[1, 0, 2, 5, 6, 3, 4]]
    # a positive that is smaller by more than the slack stays behind
    vals = torch.tensor([[-2.0, 1.9]])
    assert positive_first(vals, torch.full_like(vals, 1e-3)).tolist() == [[0, 1]]


def test_largest_cluster_counts_values_equal_within_their_slack():
    vals = torch.tensor([[3.0, 1.0, 3.00001, 1.00001, 2.99999, -3.0],
                         [1.0, 2.0, 3.0, 4.0, 5.0, 6.0]])
    slack = torch.full_like(vals, 1e-4)
    assert largest_cluster(vals, slack).tolist() == [3, 1]


@pytest.mark.parametrize("route", ROUTES)
@pytest.mark.parametrize("which", ["LM", "LA", "SA", "BE"])
def test_both_krylov_routes_match_the_oracle(which, route):
    weights = random_weights(160, 96, 5, bias=True, seed=11)
    u = np.random.default_rng(3).standard_normal((3, 5))
    res = bk.decompose(make_layer(weights), torch.as_tensor(u), k=6, which=which, method="lanczos",
                       krylov_route=route)
    assert res.metadata["krylov_route"] == route
    check_result(res, oracle_q(weights, u), which, torch.float64, residual_tol=LANCZOS_DEFAULT_TOL[torch.float64])


def test_the_route_follows_the_cost_model():
    # few directions: Q formed once beats narrow, memory-bound matrix-free steps; many
    # directions at large d: matrix-free steps are wide and each costs 4·h·d per column, not 2·h·d²
    assert choose_krylov_route(1024, 4096, 4, 16, "cpu")[0] == "formed"
    assert choose_krylov_route(4096, 16384, 64, 16, "cpu")[0] == "matrix-free"
    assert choose_krylov_route(1024, 4096, 4, 16, "cpu", block_size=8) == ("formed", 8)
    assert choose_krylov_route(1024, 4096, 4, 16, "cuda")[0] == "matrix-free"
    for route in ROUTES:
        assert krylov_route_cost(route, 1024, 4096, 8, 16, 4) == pytest.approx(
            2 * krylov_route_cost(route, 1024, 4096, 4, 16, 4), rel=0.5)


def test_an_unknown_krylov_route_is_refused():
    with pytest.raises(ValueError, match="krylov_route"):
        bk.decompose(make_layer(random_weights(8, 4, 2, seed=1)), [0], k=2, krylov_route="dense")

