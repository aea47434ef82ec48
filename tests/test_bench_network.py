"""The network benchmark: its peer (the polynomial coefficient tensor) is exact against the forward
pass from the definition, and the benchmark runs end to end at tiny shapes."""
import numpy as np
import pytest
import torch

from benchmarks import network_polynomial as npoly
from tests.network_oracles import forward, make_network, random_network_weights

CASES = [  # (L, residual, bias, hidden, d_in, o)
    (1, False, False, None, 5, 3), (1, True, True, 6, 5, 3), (1, False, True, None, None, None),
    (2, False, False, None, 5, 3), (2, True, False, 6, None, 3), (2, False, True, None, 5, None),
    (2, True, True, 6, 5, 3), (3, True, True, None, 3, 2),
]


@pytest.mark.parametrize("L, residual, bias, hidden, d_in, o", CASES)
def test_polynomial_peer_is_the_network(L, residual, bias, hidden, d_in, o):
    weights = random_network_weights(4, L, d_in=d_in, o=o, hidden=hidden, bias=bias, residual=residual, seed=L)
    net = make_network(weights)
    u = torch.from_numpy(np.random.default_rng(1).standard_normal((2, net.d_out)))
    plan = npoly.plan(net, u)
    assert plan.lifted == (residual or bias)  # the constant only where the polynomial has lower degrees
    coeffs = npoly.coefficients(plan)
    assert coeffs.shape == plan.result_shape and coeffs.ndim == 1 + 2**L
    z = np.random.default_rng(2).standard_normal((7, net.d_in))
    expected = forward(weights, z) @ u.numpy().T
    got = npoly.evaluate(coeffs, torch.from_numpy(z), plan.lifted).numpy()
    np.testing.assert_allclose(got, expected, rtol=1e-10, atol=1e-10 * np.abs(expected).max())


def test_result_bytes_is_the_coefficient_count():
    weights = random_network_weights(4, 2, d_in=5, o=3, residual=True)
    plan = npoly.plan(make_network(weights), torch.eye(3, dtype=torch.float64))
    assert plan.result_bytes() == 3 * 6**4 * 8  # 3 directions, (5 pixels + the constant)^4, float64
    assert npoly.path_info(plan).largest_intermediate >= 3 * 6**4


def test_published_decomposition_needs_one_layer():
    with pytest.raises(ValueError, match="one-layer"):
        npoly.published_decomposition(torch.zeros(2, 3, 3, 3, 3))
