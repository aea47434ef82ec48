"""The network benchmark: its peer (the polynomial coefficient tensor) is exact against the forward
pass from the definition, and the benchmark runs end to end at tiny shapes."""
import json

import numpy as np
import pytest
import torch

pytest.importorskip("opt_einsum")  # the peer's contraction (the bench extra installs it)

from benchmarks import network_polynomial as npoly  # noqa: E402
from tests.network_oracles import forward, make_network, random_network_weights  # noqa: E402

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


def test_bench_network_quick_checks_exactness_and_times_both_routes(tmp_path):
    from benchmarks import bench_network

    threads = torch.get_num_threads()
    try:
        results = bench_network.main(["--quick", "--threads", "1", "--out", str(tmp_path)])
    finally:
        torch.set_num_threads(threads)
    (js,) = tmp_path.glob("network-cpu-*-threads1-quick.json")
    data = json.loads(js.read_text())
    assert [(p["layers"], p["d"]) for p in data["points"]] == [(1, 8), (2, 8), (1, 12), (2, 12)]
    for check in data["exactness_check"]:
        assert check["peer_vs_forward"] < 1e-12 and check["ours_vs_forward"] < 1e-12
    assert data["exactness_check"][0]["top_eigenvalues_peer_vs_ours"] < 1e-12
    for p in results["points"]:
        assert p["rows"][bench_network.OURS]["status"] == "ok" and p["rows"][bench_network.PEER]["status"] == "ok"
        assert p["rows"][bench_network.PEER]["accuracy"]["relative_error_vs_forward"] < 1e-4  # float32
    assert data["exponents"]["in_d_at_L"]["1"] is not None and data["exponents"]["in_L_at_d"]["8"] is not None
    md = js.with_suffix(".md").read_text()
    assert "## Exactness check" in md and "| time ∝ d^a |" in md


def test_peer_refuses_with_the_bytes_it_would_need():
    from benchmarks import bench_network

    net = bench_network.random_network(2, 4, 784, 10, True, torch.float32, 0)
    plan, needed, reason = bench_network.peer_plan_or_refusal(net, torch.eye(10), 2**30)
    assert plan is None and needed == 10 * 785**4 * 4
    assert "coefficient tensor alone needs" in reason and "10 × 785^4" in reason


@pytest.mark.parametrize("argv, message", [(["--layers", "0"], "--layers"), (["--d", "x"], "--layers and --d"),
                                           (["--k", "0"], "--k"), (["--peer-budget", "0"], "--peer-budget")])
def test_bench_network_refuses_bad_arguments(argv, message, capsys):
    from benchmarks import bench_network

    with pytest.raises(SystemExit):
        bench_network.parse_args(argv)
    assert message in capsys.readouterr().err
