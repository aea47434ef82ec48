"""layer.project_input, layer.without_biases and DecompositionResult.map_input (published mode)
against float64 oracles."""
import numpy as np
import pytest
import torch

import bilinear_kernels as bk

from helpers import make_layer, one_hot, oracle_forward, oracle_q, random_weights, to_numpy

SHAPES = [(5, 7, 4, False), (5, 7, 4, True), (1, 3, 2, True), (6, 4, 1, False), (4, 6, None, True)]


def lift(basis, offset):
    """[[basis, offset], [0, 1]]: x̃ = lift z̃ for x = basis z + offset."""
    d, f = basis.shape
    out = np.zeros((d + 1, f + 1))
    out[:d, :f], out[:d, f], out[d, f] = basis, offset, 1.0
    return out


@pytest.mark.parametrize("d, h, o, bias", SHAPES)
@pytest.mark.parametrize("with_offset", [False, True])
@pytest.mark.parametrize("framework", ["torch", "numpy"])
def test_projected_interactions_are_basis_t_q_basis(d, h, o, bias, with_offset, framework):
    weights = random_weights(d, h, o, bias=bias, seed=h)
    layer = make_layer(weights, framework)
    rng = np.random.default_rng(5)
    f = 3 * d + 2  # more basis vectors than inputs
    basis = rng.standard_normal((d, f))
    offset = rng.standard_normal(d) if with_offset else None
    as_fw = (lambda a: a) if framework == "numpy" else torch.from_numpy
    projected = layer.project_input(as_fw(basis), None if offset is None else as_fw(offset))
    assert projected.framework == layer.framework and projected.d_in == f
    assert projected.has_bias == (bias or with_offset)
    out = h if o is None else o
    u = rng.standard_normal((2, out))
    q = oracle_q(weights, u)
    if bias or with_offset:
        full = q if bias else np.pad(q, ((0, 0), (0, 1), (0, 1)))  # the constant's rows are zero
        m = lift(basis, np.zeros(d) if offset is None else offset)
        expected = m.T @ full @ m
    else:
        expected = basis.T @ q @ basis
    got = bk.interaction_matrices(projected, u)
    np.testing.assert_allclose(to_numpy(got), expected, rtol=1e-11, atol=1e-11 * np.abs(expected).max())
    # and the projected layer computes f(basis z + offset)
    z = rng.standard_normal((6, f))
    x = z @ basis.T + (0 if offset is None else offset)
    np.testing.assert_allclose(to_numpy(projected.forward(torch.from_numpy(z))), oracle_forward(x, weights),
                               rtol=1e-11, atol=1e-11)


def test_projection_works_in_the_wider_precision_and_refuses_past_the_budget():
    layer = make_layer(random_weights(4, 8, 2), dtype=torch.float32)
    wide = layer.project_input(torch.eye(4, dtype=torch.float64))
    assert wide.dtype == torch.float64
    assert layer.project_input(torch.eye(4, dtype=torch.float16)).dtype == torch.float32
    with pytest.raises(MemoryError, match=r"2 × \(8, 100\) in torch.float32: 6400 bytes"):
        layer.project_input(torch.zeros(4, 100), max_memory=6000)


@pytest.mark.parametrize("basis, offset, error, match", [
    (np.zeros((3, 5)), None, ValueError, r"basis must be \(d, F\) with d = 4"),
    (np.zeros(4), None, ValueError, "basis must be"),
    (np.zeros((4, 0)), None, ValueError, "F ≥ 1"),
    (np.zeros((4, 2)), np.zeros(3), ValueError, r"offset must be \(4,\)"),
    (np.full((4, 2), np.nan), None, ValueError, "basis contains"),
    (np.zeros((4, 2), dtype=np.int64), None, TypeError, "basis must have a floating-point dtype"),
    ([[1.0]], None, TypeError, "basis must be a torch tensor"),
])
def test_bad_bases_are_refused_by_name(basis, offset, error, match):
    layer = make_layer(random_weights(4, 3, 2))
    with pytest.raises(error, match=match):
        layer.project_input(basis, offset)


def test_without_biases_drops_them_and_nothing_else():
    weights = random_weights(3, 5, 2, bias=True)
    layer = make_layer(weights, "numpy")
    plain = layer.without_biases()
    assert not plain.has_bias and plain.d_form == 3 and plain.framework == "numpy"
    no_bias = dict(weights, w_bias=None, v_bias=None)
    np.testing.assert_allclose(bk.interaction_matrices(plain, [0, 1]), oracle_q(no_bias, one_hot(2, [0, 1])),
                               rtol=1e-12, atol=1e-12)
    assert layer.has_bias  # the original keeps them


def _embedding_model(bias, seed=0):
    """A layer on a d-dim hidden space, an embedding E (d, F) from F pixels, class directions."""
    rng = np.random.default_rng(seed)
    d, f, h, o = 5, 7, 6, 3
    weights = random_weights(d, h, o, bias=bias, seed=seed)
    return weights, rng.standard_normal((d, f)), rng.standard_normal(d), rng.standard_normal((2, o))


@pytest.mark.parametrize("framework", ["torch", "numpy"])
def test_published_mode_maps_hidden_eigenvectors_and_still_rebuilds_the_output(framework):
    weights, e, _, u = _embedding_model(bias=False)
    layer = make_layer(weights, framework)
    res = bk.decompose(layer, u if framework == "numpy" else torch.from_numpy(u))
    mapped = res.map_input(e)
    vecs = to_numpy(res.eigenvectors)
    np.testing.assert_allclose(to_numpy(mapped.eigenvectors), np.einsum("df,bdk->bfk", e, vecs), rtol=1e-12)
    assert isinstance(mapped.eigenvectors, np.ndarray if framework == "numpy" else torch.Tensor)
    np.testing.assert_array_equal(to_numpy(mapped.eigenvalues), to_numpy(res.eigenvalues))
    assert "published mode" in mapped.metadata["mapped_input"]
    # Σ λ ((Eᵀv)ᵀ z)² = uᵀ f(E z) exactly, though the mapped vectors are not orthonormal
    z = np.random.default_rng(2).standard_normal((9, e.shape[1]))
    np.testing.assert_allclose(to_numpy(mapped.activations(z)).sum(-1), oracle_forward(z @ e.T, weights) @ u.T,
                               rtol=1e-10, atol=1e-10)
    gram = np.einsum("bfk,bfl->bkl", to_numpy(mapped.eigenvectors), to_numpy(mapped.eigenvectors))
    assert np.abs(gram - np.eye(gram.shape[-1])).max() > 1e-3
    # ... and they differ from the exact pixel-space decomposition
    exact = bk.decompose(layer.project_input(e), u)
    assert not np.allclose(np.sort(to_numpy(exact.eigenvalues), -1)[:, -3:],
                           np.sort(to_numpy(mapped.eigenvalues), -1)[:, -3:], rtol=1e-3)


def test_published_mode_of_a_biased_layer_carries_the_constant_and_the_offset():
    weights, e, e0, u = _embedding_model(bias=True, seed=1)
    res = bk.decompose(make_layer(weights), torch.from_numpy(u))
    mapped = res.map_input(torch.from_numpy(e), torch.from_numpy(e0), biased=True)
    assert mapped.eigenvectors.shape == (2, e.shape[1] + 1, res.k)
    z = np.random.default_rng(3).standard_normal((9, e.shape[1]))
    z1 = np.concatenate([z, np.ones((9, 1))], 1)
    np.testing.assert_allclose(mapped.activations(torch.from_numpy(z1)).sum(-1).numpy(),
                               oracle_forward(z @ e.T + e0, weights) @ u.T, rtol=1e-10, atol=1e-10)


def test_map_input_reads_from_the_result_whether_its_layer_was_biased():
    weights, e, e0, u = _embedding_model(bias=True, seed=1)
    res = bk.decompose(make_layer(weights), torch.from_numpy(u))
    inferred = res.map_input(torch.from_numpy(e), torch.from_numpy(e0))
    told = res.map_input(torch.from_numpy(e), torch.from_numpy(e0), biased=True)
    torch.testing.assert_close(inferred.eigenvectors, told.eigenvectors, rtol=0, atol=0)
    z = np.random.default_rng(4).standard_normal((9, e.shape[1]))  # F columns: the constant 1 appended
    np.testing.assert_allclose(inferred.activations(torch.from_numpy(z)).sum(-1).numpy(),
                               oracle_forward(z @ e.T + e0, weights) @ u.T, rtol=1e-10, atol=1e-10)


def test_map_input_refuses_mismatched_embeddings():
    weights, e, e0, u = _embedding_model(bias=True)
    res = bk.decompose(make_layer(weights), torch.from_numpy(u))
    with pytest.raises(ValueError, match=r"embedding must be \(d, F\) with d = 6"):
        res.map_input(e, biased=False)  # 5 rows against a biased result's 6 taken as unbiased
    with pytest.raises(ValueError, match="needs biased=True"):
        res.map_input(np.zeros((6, 7)), e0, biased=False)
    with pytest.raises(ValueError, match=r"offset must be \(5,\)"):
        res.map_input(e, np.zeros(4), biased=True)
    with pytest.raises(ValueError, match="embedding contains"):
        res.map_input(np.full((5, 7), np.inf), biased=True)
