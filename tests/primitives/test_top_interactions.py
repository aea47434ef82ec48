"""top_interactions: the k largest |Q_ij|, i ≤ j, against a sort of the formed float64 Q."""
import importlib

import numpy as np
import pytest
import torch

import bilinear_kernels as bk
top_interactions_module = importlib.import_module("bilinear_kernels.primitives.top_interactions")

from helpers import make_layer, one_hot, oracle_q, oracle_q_on_basis, random_weights, to_numpy

SHAPES = [(5, 7, 4, False), (5, 7, 4, True), (1, 3, 2, True), (6, 4, 1, False), (4, 6, None, True)]


def oracle_top(q, k):
    """Per matrix: the k largest |q_ij| over i ≤ j, as sorted magnitudes and the sets of (i, j)."""
    i, j = np.triu_indices(q.shape[-1])
    mags = np.abs(q[:, i, j])
    order = np.argsort(-mags, axis=1, kind="stable")[:, :k]
    return np.take_along_axis(mags, order, 1), i, j


def check(values, rows, cols, q, k):
    values, rows, cols = to_numpy(values), to_numpy(rows), to_numpy(cols)
    assert values.shape == rows.shape == cols.shape == (q.shape[0], k)
    assert np.all(rows <= cols)
    mags, _, _ = oracle_top(q, k)
    scale = np.abs(q).max()
    np.testing.assert_allclose(np.abs(values), mags, rtol=0, atol=1e-12 * scale)
    for b in range(q.shape[0]):
        np.testing.assert_allclose(values[b], q[b, rows[b], cols[b]], rtol=0, atol=1e-12 * scale)
        assert len({(int(r), int(c)) for r, c in zip(rows[b], cols[b])}) == k  # no entry twice
    assert np.all(np.diff(np.abs(values), axis=1) <= 1e-12 * scale)  # decreasing magnitude


@pytest.mark.parametrize("d, h, o, bias", SHAPES)
@pytest.mark.parametrize("framework", ["torch", "numpy"])
def test_top_interactions_match_the_sorted_triangle(d, h, o, bias, framework):
    weights = random_weights(d, h, o, bias=bias, seed=d * h)
    layer = make_layer(weights, framework)
    out = h if o is None else o
    u = np.random.default_rng(0).standard_normal((2, out))
    size = d + bias
    k = min(4, size * (size + 1) // 2)
    for dirs, uu in (([out - 1, 0], one_hot(out, [out - 1, 0])), (u, u)):
        values, rows, cols = bk.top_interactions(layer, dirs, k)
        assert isinstance(values, np.ndarray if framework == "numpy" else torch.Tensor)
        check(values, rows, cols, oracle_q(weights, uu), k)


@pytest.mark.parametrize("tile", [1, 2, 3, 16])
def test_tiles_of_every_width_give_the_same_top_k(tile):
    # d = 7 and tiles of 2 and 3 leave ragged edge tiles; k larger than one tile's entries
    weights = random_weights(7, 9, 3, seed=5)
    layer = make_layer(weights)
    values, rows, cols = bk.top_interactions(layer, [0, 1, 2], 12, tile=tile)
    check(values, rows, cols, oracle_q(weights, one_hot(3, [0, 1, 2])), 12)


def test_every_entry_of_the_triangle_when_k_is_all_of_it():
    weights = random_weights(4, 5, 2, bias=True)
    layer = make_layer(weights)
    values, rows, cols = bk.top_interactions(layer, 1, 15, tile=2)
    check(values, rows, cols, oracle_q(weights, one_hot(2, [1])), 15)


def test_a_small_budget_narrows_the_tiles_and_stays_exact():
    weights = random_weights(12, 6, 2, seed=7)
    layer = make_layer(weights)
    # a 12-wide tile needs (2·6·12 + 3·144)·8 + 4·5·24 bytes ≈ 5.1 KiB; 2 KiB forces narrower tiles
    values, rows, cols = bk.top_interactions(layer, [0, 1], 5, max_memory=2048)
    check(values, rows, cols, oracle_q(weights, one_hot(2, [0, 1])), 5)


def test_a_projected_layer_wider_than_its_input():
    weights = random_weights(3, 5, 2)
    layer = make_layer(weights)
    basis = np.random.default_rng(8).standard_normal((3, 20))
    projected = layer.project_input(basis)
    q = basis.T @ oracle_q(weights, one_hot(2, [0]))[0] @ basis
    values, rows, cols = bk.top_interactions(projected, 0, 10, tile=8)
    check(values, rows, cols, q[None], 10)


def test_float32_values_follow_the_weights_precision():
    weights = random_weights(10, 20, 3)
    layer = make_layer(weights, dtype=torch.float32)
    values, rows, cols = bk.top_interactions(layer, [2], 6)
    assert values.dtype == torch.float32 and rows.dtype == torch.int64
    q = oracle_q(weights, one_hot(3, [2]))[0]
    np.testing.assert_allclose(values.numpy()[0], q[rows[0].numpy(), cols[0].numpy()], rtol=1e-5,
                               atol=1e-5 * np.abs(q).max())


@pytest.mark.parametrize("k, error, match", [
    (0, ValueError, r"k must be in \[1, d\(d\+1\)/2\] = \[1, 10\]"),
    (11, ValueError, "got 11"),
    (2.0, TypeError, "k must be an int"),
    (True, TypeError, "k must be an int"),
])
def test_bad_k_is_refused(k, error, match):
    layer = make_layer(random_weights(4, 3, 2))
    with pytest.raises(error, match=match):
        bk.top_interactions(layer, 0, k)


def test_bad_tile_and_a_budget_too_small_for_anything():
    layer = make_layer(random_weights(4, 64, 2))
    with pytest.raises(ValueError, match="tile must be a positive int"):
        bk.top_interactions(layer, 0, 2, tile=0)
    with pytest.raises(MemoryError, match="top_interactions with k=2 needs"):
        bk.top_interactions(layer, 0, 2, max_memory=64)


@pytest.mark.parametrize("bias, with_offset", [(False, False), (True, False), (False, True), (True, True)])
@pytest.mark.parametrize("tile", [None, 7])
def test_the_basis_route_matches_the_projected_layer(bias, with_offset, tile):
    # h = 9 > d = 3 and F = 40: forming Q in three dimensions is less work than projecting
    weights = random_weights(3, 9, 2, bias=bias, seed=11)
    layer = make_layer(weights)
    rng = np.random.default_rng(12)
    basis = rng.standard_normal((3, 40))
    offset = rng.standard_normal(3) if with_offset else None
    assert top_interactions_module.basis_route_is_cheaper(9, 3 + bias, 40 + (bias or with_offset))
    q = oracle_q_on_basis(weights, one_hot(2, [1]), basis, offset)[0]
    values, rows, cols = bk.top_interactions(layer, 1, 25, basis=basis, offset=offset, tile=tile)
    check(values, rows, cols, q[None], 25)
    projected = layer.project_input(basis, offset)
    values_p, rows_p, cols_p = bk.top_interactions(projected, 1, 25, tile=tile)
    np.testing.assert_allclose(to_numpy(values), to_numpy(values_p), rtol=0, atol=1e-12 * np.abs(q).max())


@pytest.mark.parametrize("framework", ["torch", "numpy"])
def test_the_basis_route_for_float_directions_and_several_at_once(framework):
    weights = random_weights(4, 16, 3, seed=13)
    layer = make_layer(weights, framework)
    basis = np.random.default_rng(14).standard_normal((4, 30))
    u = np.random.default_rng(15).standard_normal((3, 3))
    values, rows, cols = bk.top_interactions(layer, u, 8, basis=basis if framework == "numpy" else torch.from_numpy(basis))
    assert isinstance(values, np.ndarray if framework == "numpy" else torch.Tensor)
    q = oracle_q_on_basis(weights, u, basis)
    check(values, rows, cols, q, 8)


def test_a_basis_that_is_cheaper_projected_takes_that_route_and_agrees():
    # h = 2 below d = 6: projecting first (h·F²) is less work than forming Q in d dimensions
    weights = random_weights(6, 2, 2, seed=16)
    layer = make_layer(weights)
    basis = np.random.default_rng(17).standard_normal((6, 8))
    assert not top_interactions_module.basis_route_is_cheaper(2, 6, 8)
    values, rows, cols = bk.top_interactions(layer, 0, 6, basis=basis)
    check(values, rows, cols, oracle_q_on_basis(weights, one_hot(2, [0]), basis), 6)


def test_the_basis_route_stays_exact_under_a_small_budget_and_refuses_what_cannot_fit():
    weights = random_weights(3, 9, 2, seed=18)
    layer = make_layer(weights)
    basis = np.random.default_rng(19).standard_normal((3, 24))
    q = oracle_q_on_basis(weights, one_hot(2, [0]), basis)[0]
    one = top_interactions_module.basis_bytes_per_direction(9, 3, 24, 24, 5, 8)
    values, rows, cols = bk.top_interactions(layer, [0, 0], 5, basis=basis, max_memory=one + 3 * 24 * 8)
    check(values, rows, cols, np.stack([q, q]), 5)
    with pytest.raises(MemoryError, match="top_interactions with k=5 on a basis of 24 needs"):
        bk.top_interactions(layer, 0, 5, basis=basis, max_memory=200)


def test_bad_bases_and_an_offset_alone_are_refused():
    layer = make_layer(random_weights(3, 9, 2))
    with pytest.raises(ValueError, match=r"basis must be \(d, F\) with d = 3"):
        bk.top_interactions(layer, 0, 2, basis=np.ones((4, 5)))
    with pytest.raises(ValueError, match=r"offset must be \(3,\)"):
        bk.top_interactions(layer, 0, 2, basis=np.ones((3, 5)), offset=np.ones(2))
    with pytest.raises(ValueError, match="pass basis as well"):
        bk.top_interactions(layer, 0, 2, offset=np.ones(3))
    with pytest.raises(ValueError, match=r"\[1, 15\]"):  # k counts entries of the 5 × 5 basis form
        bk.top_interactions(layer, 0, 16, basis=np.ones((3, 5)))


@pytest.mark.parametrize("d, h, o, bias", [(1, 3, 1, False), (1, 4, None, True), (2, 5, 1, True)])
def test_the_basis_route_at_the_smallest_shapes(d, h, o, bias):
    # d = 1 (a single input), o = 1 (a single output) and no P: the basis route still agrees
    weights = random_weights(d, h, o, bias=bias, seed=31)
    layer = make_layer(weights)
    basis = np.random.default_rng(32).standard_normal((d, 9))
    out = h if o is None else o
    assert top_interactions_module.basis_route_is_cheaper(h, d + bias, 9 + bias)
    q = oracle_q_on_basis(weights, one_hot(out, [out - 1]), basis)
    values, rows, cols = bk.top_interactions(layer, [out - 1], 7, basis=basis)
    check(values, rows, cols, q, 7)
    got = bk.interaction_diagonal(layer, [out - 1], basis=basis)
    np.testing.assert_allclose(to_numpy(got), np.diagonal(q, axis1=1, axis2=2), rtol=0, atol=1e-12 * np.abs(q).max())
