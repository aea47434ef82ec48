"""interaction_norms: ‖Q(u)‖_F against the formed float64 Q, both routes, and its gradient against
autograd through the formed Q."""
import numpy as np
import pytest
import torch

import bilinear_kernels as bk
from bilinear_kernels.primitives.norms import choose_route

from helpers import make_layer, one_hot, oracle_q, random_weights, to_numpy

SHAPES = [(5, 7, 4, False), (5, 7, 4, True), (1, 3, 2, True), (6, 4, 1, False), (4, 6, None, True)]


@pytest.mark.parametrize("d, h, o, bias", SHAPES)
@pytest.mark.parametrize("route", ["gram", "matrices"])
@pytest.mark.parametrize("framework", ["torch", "numpy"])
def test_norms_match_the_formed_matrices(d, h, o, bias, route, framework):
    weights = random_weights(d, h, o, bias=bias, seed=d + 2 * h)
    layer = make_layer(weights, framework)
    out = h if o is None else o
    u = np.random.default_rng(0).standard_normal((3, out))
    for dirs, uu in (([0, out - 1], one_hot(out, [0, out - 1])), (u, u)):
        got = bk.interaction_norms(layer, dirs, route=route)
        assert isinstance(got, np.ndarray if framework == "numpy" else torch.Tensor)
        ref = np.linalg.norm(oracle_q(weights, uu), axis=(1, 2))
        np.testing.assert_allclose(to_numpy(got), ref, rtol=1e-12)


@pytest.mark.parametrize("route", ["gram", "matrices"])
def test_small_budget_chunks_and_stays_exact(route):
    weights = random_weights(6, 10, 5, bias=True, seed=3)
    layer = make_layer(weights)
    # a row block of M: 6·10·8 + 2·5·8 bytes = 560; one interaction matrix: (10·7 + 2·49)·8 = 1344
    got = bk.interaction_norms(layer, range(5), route=route, max_memory=1400)
    ref = np.linalg.norm(oracle_q(weights, one_hot(5, range(5))), axis=(1, 2))
    np.testing.assert_allclose(got.numpy(), ref, rtol=1e-12)


def test_a_zero_direction_has_norm_zero_and_a_finite_gradient():
    weights = random_weights(4, 5, 3)
    w = torch.tensor(weights["w"], requires_grad=True)
    layer = bk.BilinearLayer(w, torch.tensor(weights["v"]), torch.tensor(weights["p"]))
    n = bk.interaction_norms(layer, torch.zeros(1, 3, dtype=torch.float64), route="gram")
    assert float(n.detach()[0]) == 0.0
    n.sum().backward()
    assert torch.isfinite(w.grad).all()


def _formed_norms(w, v, p, wb, vb, u):
    """‖Q(u)‖_F through the formed Q, plain autograd: the oracle of the gradient."""
    w_h = torch.cat([w, wb[:, None]], 1)
    v_h = torch.cat([v, vb[:, None]], 1)
    c = u @ p
    b = torch.einsum("bk,ki,kj->bij", c, w_h, v_h)
    q = 0.5 * (b + b.mT)
    return torch.linalg.matrix_norm(q)


@pytest.mark.parametrize("route", ["gram", "matrices"])
@pytest.mark.parametrize("max_memory", [None, 700])  # 700 bytes: checkpointed blocks of one row
def test_gradient_matches_autograd_through_the_formed_matrix(route, max_memory):
    weights = random_weights(4, 6, 3, bias=True, seed=9)
    tensors = {n: torch.tensor(weights[n], requires_grad=True) for n in ("w", "v", "p", "w_bias", "v_bias")}
    u = torch.tensor(np.random.default_rng(1).standard_normal((2, 3)), requires_grad=True)
    weight = torch.tensor([0.7, -1.3], dtype=torch.float64)
    layer = bk.BilinearLayer(*(tensors[n] for n in ("w", "v", "p", "w_bias", "v_bias")))
    ours = bk.interaction_norms(layer, u, route=route, max_memory=max_memory)
    grads = torch.autograd.grad((ours * weight).sum(), [*tensors.values(), u])
    ref = _formed_norms(*(tensors[n] for n in ("w", "v", "p", "w_bias", "v_bias")), u)
    ref_grads = torch.autograd.grad((ref * weight).sum(), [*tensors.values(), u])
    torch.testing.assert_close(ours.detach(), ref.detach(), rtol=1e-12, atol=0)
    for name, g, r in zip([*tensors, "u"], grads, ref_grads):
        torch.testing.assert_close(g, r, rtol=1e-10, atol=1e-12, msg=name)


def test_a_training_step_lowers_the_penalty():
    torch.manual_seed(0)
    w = torch.nn.Parameter(torch.randn(8, 5))
    v = torch.nn.Parameter(torch.randn(8, 5))
    opt = torch.optim.SGD([w, v], lr=1e-3)
    before = bk.interaction_norms(bk.BilinearLayer(w, v), [0, 3]).pow(2).sum()
    before.backward()
    opt.step()
    after = bk.interaction_norms(bk.BilinearLayer(w, v), [0, 3]).pow(2).sum()
    assert float(after.detach()) < float(before.detach())


def test_route_choice_and_bad_route():
    assert choose_route(h=64, d=32, b=1000) == "gram"      # many directions
    assert choose_route(h=16384, d=4096, b=4) == "matrices"  # a few directions of a wide layer
    with pytest.raises(ValueError, match="route must be one of"):
        bk.interaction_norms(make_layer(random_weights(3, 4, 2)), 0, route="svd")


def test_a_budget_too_small_names_the_bytes():
    layer = make_layer(random_weights(3, 64, 2))
    with pytest.raises(MemoryError, match="interaction_norms"):
        bk.interaction_norms(layer, 0, route="gram", max_memory=100)
