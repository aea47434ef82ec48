"""Output directions in every accepted form: indices (int, sequences, integer arrays) and float
vectors (o,) or (b, o), checked through the interaction matrices they select."""
import numpy as np
import pytest
import torch

import bilinear_kernels as bk
from bilinear_kernels.directions import parse_directions
from helpers import make_layer, one_hot, oracle_q, random_weights

O = 6
WEIGHTS = random_weights(5, 4, O, bias=True, seed=21)


@pytest.fixture(scope="module")
def layer():
    return make_layer(WEIGHTS)


@pytest.mark.parametrize("directions, indices", [
    (3, [3]),
    (np.int64(3), [3]),
    ([0, 5, 2], [0, 5, 2]),
    ((1, 1), [1, 1]),
    (range(2, 5), [2, 3, 4]),
    (torch.tensor([4, 0]), [4, 0]),
    (torch.tensor(2), [2]),
    (torch.tensor([1, 3], dtype=torch.int32), [1, 3]),
    (np.array([5, 1]), [5, 1]),
    (np.array([0, 2], dtype=np.uint8), [0, 2]),
])
def test_index_directions(layer, directions, indices):
    q = bk.interaction_matrices(layer, directions)
    np.testing.assert_allclose(q.numpy(), oracle_q(WEIGHTS, one_hot(O, indices)), rtol=0, atol=1e-14)
    res = bk.decompose(layer, directions, k=2)
    np.testing.assert_array_equal(res.indices.numpy(), indices)


def _float_directions(b, seed=0):
    return np.random.default_rng(seed).standard_normal((b, O))


@pytest.mark.parametrize("form", ["torch (o,)", "torch (b, o)", "numpy (b, o)", "list (b, o)", "list (o,)"])
def test_float_directions(layer, form):
    u = _float_directions(3)
    given = {
        "torch (o,)": torch.from_numpy(u[0]),
        "torch (b, o)": torch.from_numpy(u),
        "numpy (b, o)": u,
        "list (b, o)": u.tolist(),
        "list (o,)": u[0].tolist(),
    }[form]
    expected = oracle_q(WEIGHTS, u[:1] if "(o,)" in form else u)
    q = bk.interaction_matrices(layer, given)
    assert q.shape == expected.shape
    np.testing.assert_allclose(q.numpy(), expected, rtol=0, atol=1e-13)
    assert bk.decompose(layer, given, k=2).indices is None


def test_float_directions_in_another_precision_use_the_working_precision(layer):
    u = torch.from_numpy(_float_directions(2, seed=1)).float()
    q = bk.interaction_matrices(layer, u)
    assert q.dtype == torch.float64
    np.testing.assert_allclose(q.numpy(), oracle_q(WEIGHTS, u.double().numpy()), rtol=0, atol=1e-13)


def test_an_index_is_its_one_hot_direction(layer):
    by_index = bk.interaction_matrices(layer, [1, 4])
    by_vector = bk.interaction_matrices(layer, torch.from_numpy(one_hot(O, [1, 4])))
    torch.testing.assert_close(by_index, by_vector, rtol=0, atol=1e-15)


def test_directions_act_linearly(layer):
    u = _float_directions(2, seed=2)
    combined = bk.interaction_matrices(layer, torch.from_numpy(2.0 * u[0] - 0.5 * u[1]))[0]
    parts = bk.interaction_matrices(layer, torch.from_numpy(u))
    torch.testing.assert_close(combined, 2.0 * parts[0] - 0.5 * parts[1], rtol=0, atol=1e-13)


def test_without_p_directions_live_in_hidden_space():
    weights = random_weights(5, 4, None, seed=22)
    layer = make_layer(weights)
    assert layer.d_out == 4
    u = _float_directions(1)[:, :4]
    np.testing.assert_allclose(bk.interaction_matrices(layer, torch.from_numpy(u)).numpy(),
                               oracle_q(weights, u), rtol=0, atol=1e-14)
    np.testing.assert_allclose(bk.interaction_matrices(layer, [3]).numpy(),
                               oracle_q(weights, one_hot(4, [3])), rtol=0, atol=1e-14)


@pytest.mark.parametrize("indices", [True, False])
def test_coefficients_are_p_transposed_u(layer, indices):
    u = one_hot(O, [2, 0]) if indices else _float_directions(2, seed=3)
    dirs = parse_directions([2, 0] if indices else torch.from_numpy(u), O)
    c = dirs.coefficients(layer, torch.float64)
    np.testing.assert_allclose(c.numpy(), u @ WEIGHTS["p"], rtol=0, atol=1e-14)
