"""interaction_entries and interaction_diagonal against float64 oracles of the formed Q."""
import importlib

import numpy as np
import pytest
import torch

import bilinear_kernels as bk

from helpers import make_layer, one_hot, oracle_q, oracle_q_on_basis, random_weights, to_numpy

# (d, h, o, bias): biases, d = 1, o = 1, no P, and a form wider than the hidden size
SHAPES = [(5, 7, 4, False), (5, 7, 4, True), (1, 3, 2, True), (6, 4, 1, False), (4, 6, None, True), (9, 2, 3, False)]


def _directions(o, kind):
    if kind == "index":
        return [0, o - 1, 0], one_hot(o, [0, o - 1, 0])
    u = np.random.default_rng(1).standard_normal((3, o))
    return u, u


@pytest.mark.parametrize("d, h, o, bias", SHAPES)
@pytest.mark.parametrize("kind", ["index", "float"])
@pytest.mark.parametrize("framework", ["torch", "numpy"])
def test_entries_match_the_formed_matrix(d, h, o, bias, kind, framework):
    weights = random_weights(d, h, o, bias=bias, seed=d + h)
    layer = make_layer(weights, framework)
    out = h if o is None else o
    dirs, u = _directions(out, kind)
    if framework == "numpy" and kind == "float":
        dirs = np.asarray(dirs)
    size = d + bias
    rng = np.random.default_rng(2)
    rows, cols = rng.integers(0, size, 11), rng.integers(0, size, 11)
    rows[0], cols[0] = size - 1, size - 1  # the constant's own entry when biased
    got = bk.interaction_entries(layer, dirs, rows, cols)
    assert isinstance(got, np.ndarray if framework == "numpy" else torch.Tensor)
    q = oracle_q(weights, u)
    np.testing.assert_allclose(to_numpy(got), q[:, rows, cols], rtol=1e-12, atol=1e-12)
    diag = bk.interaction_diagonal(layer, dirs)
    assert diag.shape == (3, size)
    np.testing.assert_allclose(to_numpy(diag), np.diagonal(q, axis1=1, axis2=2), rtol=1e-12, atol=1e-12)


def test_entries_chunk_under_a_small_budget():
    weights = random_weights(6, 8, 5, bias=True)
    layer = make_layer(weights)
    rows = torch.arange(7).repeat(3)
    cols = torch.arange(7).flip(0).repeat(3)
    # 6·h·8 bytes = 384 per entry and 64 per direction: a 1 KiB budget forces many chunks of both
    got = bk.interaction_entries(layer, range(5), rows, cols, max_memory=1024)
    q = oracle_q(weights, one_hot(5, range(5)))
    np.testing.assert_allclose(got.numpy(), q[:, rows, cols], rtol=1e-12, atol=1e-12)


def test_entries_in_float32_follow_the_weights_precision():
    weights = random_weights(8, 16, 4)
    layer = make_layer(weights, dtype=torch.float32)
    got = bk.interaction_entries(layer, [1, 2], [0, 3, 7], [5, 3, 0])
    assert got.dtype == torch.float32
    q = oracle_q(weights, one_hot(4, [1, 2]))
    np.testing.assert_allclose(got.numpy(), q[:, [0, 3, 7], [5, 3, 0]], rtol=1e-5, atol=1e-5 * np.abs(q).max())


def test_entries_of_a_projected_layer_with_more_basis_vectors_than_inputs():
    weights = random_weights(4, 6, 3, bias=True)
    layer = make_layer(weights)
    basis = np.random.default_rng(3).standard_normal((4, 10))
    offset = np.random.default_rng(4).standard_normal(4)
    projected = layer.project_input(torch.from_numpy(basis), torch.from_numpy(offset))
    lift = np.zeros((5, 11))
    lift[:4, :10], lift[:4, 10], lift[4, 10] = basis, offset, 1.0
    q = lift.T @ oracle_q(weights, one_hot(3, [2]))[0] @ lift
    got = bk.interaction_entries(projected, 2, [0, 9, 10, 3], [9, 9, 10, 7])
    np.testing.assert_allclose(got.numpy()[0], q[[0, 9, 10, 3], [9, 9, 10, 7]], rtol=1e-12, atol=1e-12)


def test_no_entries_give_an_empty_result():
    layer = make_layer(random_weights(3, 4, 2))
    assert bk.interaction_entries(layer, [0, 1], [], []).shape == (2, 0)


@pytest.mark.parametrize("rows, cols, error, match", [
    ([0, 5], [1, 2], ValueError, "rows holds index 5"),
    ([0, 1], [-1, 2], ValueError, "cols holds index -1"),
    ([0, 1], [1], ValueError, "same length"),
    ([0.0, 1.0], [1, 2], TypeError, "rows must hold integer"),
    (np.array([[0, 1]]), np.array([[1, 2]]), ValueError, "rows must be 1-D"),
    (torch.tensor([0.5]), torch.tensor([1]), TypeError, "integer dtype"),
    ("01", [1, 2], TypeError, "rows must be a sequence"),
])
def test_bad_indices_are_refused_by_name(rows, cols, error, match):
    layer = make_layer(random_weights(5, 4, 2))
    with pytest.raises(error, match=match):
        bk.interaction_entries(layer, 0, rows, cols)


def test_a_biased_layer_accepts_the_constant_index_and_no_further():
    layer = make_layer(random_weights(3, 4, 2, bias=True))
    assert bk.interaction_entries(layer, 0, [3], [3]).shape == (1, 1)
    with pytest.raises(ValueError, match="index 4"):
        bk.interaction_entries(layer, 0, [4], [0])


def test_an_entry_that_cannot_fit_names_the_bytes():
    layer = make_layer(random_weights(3, 64, 2))
    # one direction (64·8 bytes) and one entry (6·64·8 bytes), twice over: 7168 bytes
    with pytest.raises(MemoryError, match=r"needs 7168 bytes .* budget of 100 B"):
        bk.interaction_entries(layer, 0, [0], [1], max_memory=100)


def test_parameters_as_weights_give_plain_results():
    weights = random_weights(4, 6, 3)
    params = [torch.nn.Parameter(torch.tensor(weights[n])) for n in ("w", "v", "p")]
    layer = bk.BilinearLayer(*params)
    q = oracle_q(weights, one_hot(3, [1]))
    entries = bk.interaction_entries(layer, 1, [0, 2], [3, 2])
    values, rows, cols = bk.top_interactions(layer, 1, 3)
    sigma, _ = bk.output_svd(layer)
    assert not entries.requires_grad and not values.requires_grad and not sigma.requires_grad
    np.testing.assert_allclose(entries.numpy()[0], q[0, [0, 2], [3, 2]], rtol=1e-12)
    np.testing.assert_allclose(values.numpy()[0], q[0, rows[0].numpy(), cols[0].numpy()], rtol=1e-12)


entries_module = importlib.import_module("bilinear_kernels.primitives.entries")


@pytest.mark.parametrize("bias, with_offset", [(False, False), (True, False), (False, True), (True, True)])
@pytest.mark.parametrize("route", ["columns", "through Q"])
@pytest.mark.parametrize("framework", ["torch", "numpy"])
def test_entries_on_a_basis_by_either_route_match_the_projected_matrices(bias, with_offset, route, framework):
    # columns: few entries over a narrow basis, three directions; through Q: one direction asks for
    # many entries over a basis far wider than d = 3
    d, h, f, n, dirs = (6, 4, 20, 3, [0, 1, 0]) if route == "columns" else (3, 9, 40, 200, [1])
    weights = random_weights(d, h, 2, bias=bias, seed=21)
    layer = make_layer(weights, framework)
    rng = np.random.default_rng(22)
    basis = rng.standard_normal((d, f))
    offset = rng.standard_normal(d) if with_offset else None
    size = f + (bias or with_offset)
    rows, cols = rng.integers(0, size, n), rng.integers(0, size, n)
    rows[0], cols[0] = size - 1, size - 1
    used = len(np.unique(np.concatenate([rows, cols])))
    d_tilde = d + (bias or with_offset)
    assert entries_module.columns_route_is_cheaper(h, d_tilde, used, n, len(dirs)) == (route == "columns")
    q = oracle_q_on_basis(weights, one_hot(2, dirs), basis, offset)
    got = bk.interaction_entries(layer, dirs, rows, cols, basis=basis, offset=offset)
    assert isinstance(got, np.ndarray if framework == "numpy" else torch.Tensor)
    scale = np.abs(q).max()
    np.testing.assert_allclose(to_numpy(got), q[:, rows, cols], rtol=0, atol=1e-12 * scale)
    diag = bk.interaction_diagonal(layer, dirs, basis=basis, offset=offset)
    np.testing.assert_allclose(to_numpy(diag), np.diagonal(q, axis1=1, axis2=2), rtol=0, atol=1e-12 * scale)


def test_entries_on_a_basis_under_a_small_budget_and_a_budget_too_small():
    weights = random_weights(3, 9, 2, seed=23)
    layer = make_layer(weights)
    rng = np.random.default_rng(24)
    basis = rng.standard_normal((3, 40))
    rows, cols = rng.integers(0, 40, 300), rng.integers(0, 40, 300)
    q = oracle_q_on_basis(weights, one_hot(2, [0, 1]), basis)
    got = bk.interaction_entries(layer, [0, 1], rows, cols, basis=basis, max_memory=4096)  # chunks of both
    np.testing.assert_allclose(to_numpy(got), q[:, rows, cols], rtol=0, atol=1e-12 * np.abs(q).max())
    with pytest.raises(MemoryError, match="interaction_entries on a basis of 40 needs"):
        bk.interaction_entries(layer, 0, rows, cols, basis=basis, max_memory=256)


def test_entries_on_a_basis_refuse_indices_past_the_basis_and_an_offset_alone():
    layer = make_layer(random_weights(3, 9, 2))
    basis = np.ones((3, 5))
    with pytest.raises(ValueError, match=r"rows holds index 5, out of range for interaction matrices of size 5"):
        bk.interaction_entries(layer, 0, [5], [0], basis=basis)
    with pytest.raises(ValueError, match="pass basis as well"):
        bk.interaction_entries(layer, 0, [0], [0], offset=np.ones(3))
    with pytest.raises(ValueError, match=r"basis must be \(d, F\) with d = 3"):
        bk.interaction_diagonal(layer, 0, basis=np.ones((2, 5)))
