"""network_truncation_curve against the float64 oracle of the truncated network (network_oracles.py)."""
import numpy as np
import pytest
import torch

import bilinear_kernels as bk
from network_oracles import forward, levels, make_network, random_network_weights, top_activations


def _setup(L=3, residual=True, seed=4):
    weights = random_network_weights(5, L, d_in=6, o=3, hidden=7, bias=True, residual=residual, seed=seed)
    net = make_network(weights)
    z = np.random.default_rng(1).standard_normal((50, 6))
    return weights, net, z


def test_curve_matches_the_oracle_truncated_network_and_ends_exact():
    weights, net, z = _setup()
    y = forward(weights, z)
    labels = np.random.default_rng(2).integers(0, 3, len(z))
    points = bk.network_truncation_curve(net, torch.from_numpy(z), labels=labels, ranks=[1, 3, 6])
    assert [p["rank"] for p in points] == [1, 3, 6]
    assert [p["ranks"] for p in points] == [[1, 1], [3, 3], [6, 6]]
    for point in points:
        lv, top = levels(weights, rank=point["rank"])
        truncated = top_activations(weights, lv, top, z, np.eye(3))[1].sum(-1)
        assert point["relative_error"] == pytest.approx(np.linalg.norm(truncated - y) / np.linalg.norm(y),
                                                        rel=1e-8, abs=1e-12)
        assert point["accuracy"] == pytest.approx(np.mean(truncated.argmax(1) == labels))
        assert point["network_accuracy"] == pytest.approx(np.mean(y.argmax(1) == labels))
    assert points[0]["relative_error"] > 1e-2 and points[-1]["relative_error"] < 1e-12


def test_default_sweep_is_geometric_up_to_the_full_rank_and_directions_may_be_vectors():
    weights, net, z = _setup(L=2, residual=False)
    u = np.random.default_rng(3).standard_normal((2, 3))
    points = bk.network_truncation_curve(net, z, directions=torch.from_numpy(u))
    assert [p["rank"] for p in points] == [1, 2, 4, 6]
    assert "accuracy" not in points[0]
    assert points[-1]["relative_error"] < 1e-12


def test_one_layer_network_has_the_single_exact_point():
    weights, net, z = _setup(L=1)
    points = bk.network_truncation_curve(net, z, ranks=[1, 2])
    assert len(points) == 1 and points[0]["ranks"] == [] and points[0]["relative_error"] < 1e-12


def test_bad_input_gets_one_line_errors_naming_the_argument():
    _, net, z = _setup(L=2)
    cases = [
        (lambda: bk.network_truncation_curve(net, z, ranks=[0, 2]), ValueError, "^ranks must be"),
        (lambda: bk.network_truncation_curve(net, z, ranks=[]), ValueError, "^ranks must be"),
        (lambda: bk.network_truncation_curve(net, z, ranks=[1.5]), ValueError, "^ranks must be"),
        (lambda: bk.network_truncation_curve(net, z, labels=np.zeros(3, dtype=int)), ValueError, "^labels must be"),
        (lambda: bk.network_truncation_curve(net, z[:, :4]), ValueError, "^inputs must end in"),
        (lambda: bk.network_truncation_curve(net, z, directions=[5]), ValueError, "direction index 5"),
        (lambda: bk.network_truncation_curve(net.layers[0], z), TypeError, "^net must be"),
    ]
    for call, error, message in cases:
        with pytest.raises(error, match=message) as info:
            call()
        assert "\n" not in str(info.value)
