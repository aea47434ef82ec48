"""Interaction matrices Q(u), the full interaction tensor and the matrix-free operator, against
float64 einsum oracles built from the definition of B."""
import numpy as np
import pytest
import torch

import bilinear_kernels as bk
import bilinear_kernels.interaction as interaction
from bilinear_kernels.directions import parse_directions
from bilinear_kernels.interaction import InteractionOperator
from bilinear_kernels.memory import memory_budget
from helpers import as_float64, homogeneous, make_layer, one_hot, oracle_q, oracle_tensor, random_weights

# Entrywise, relative to max |Q|: float64 is exact to rounding; float32 sums h products.
Q_RTOL = {torch.float64: 1e-13, torch.float32: 1e-6}

LAYERS = {
    "p": dict(d=9, h=7, o=5, bias=False),
    "no p": dict(d=9, h=7, o=None, bias=False),
    "bias": dict(d=8, h=6, o=4, bias=True),
    "h=1": dict(d=5, h=1, o=3, bias=False),
    "d=1": dict(d=1, h=4, o=2, bias=True),
}


def _weights(name, seed=0):
    spec = LAYERS[name]
    return random_weights(spec["d"], spec["h"], spec["o"], bias=spec["bias"], seed=seed)


def _close(actual, expected, dtype):
    scale = max(np.abs(expected).max(), np.finfo(np.float64).tiny)
    np.testing.assert_allclose(np.asarray(actual, np.float64), expected, rtol=0, atol=Q_RTOL[dtype] * scale)


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
@pytest.mark.parametrize("name", list(LAYERS))
def test_interaction_matrices_match_the_oracle(name, dtype):
    weights = _weights(name, seed=1)
    layer = make_layer(weights, dtype=dtype)
    indices = list(range(layer.d_out))[::-1]
    q = bk.interaction_matrices(layer, indices)
    assert q.dtype == dtype and q.shape == (len(indices), layer.d_form, layer.d_form)
    assert torch.equal(q, q.mT), "Q must be exactly symmetric"
    _close(q.numpy(), oracle_q(as_float64(weights, dtype), one_hot(layer.d_out, indices)), dtype)


def test_dtype_override():
    weights = _weights("bias", seed=2)
    layer = make_layer(weights, dtype=torch.float32)
    q = bk.interaction_matrices(layer, [0, 1], dtype=torch.float64)
    assert q.dtype == torch.float64
    _close(q.numpy(), oracle_q(as_float64(weights, torch.float32), one_hot(4, [0, 1])), torch.float64)


def test_numpy_layer_gives_numpy():
    weights = _weights("p", seed=3)
    q = bk.interaction_matrices(make_layer(weights, framework="numpy"), [1, 2])
    assert isinstance(q, np.ndarray)
    _close(q, oracle_q(weights, one_hot(5, [1, 2])), torch.float64)


# -- chunking under a memory budget --------------------------------------------------------------
def _smallest_working_budget(call):
    """The smallest power-of-two byte budget under which `call(budget)` does not refuse."""
    budget = 256
    while True:
        try:
            return budget, call(budget)
        except MemoryError:
            budget *= 2
            assert budget < 2**30, "refused even a 1 GiB budget"


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
def test_chunking_under_a_tiny_budget_gives_the_same_matrices(monkeypatch, dtype):
    weights = _weights("bias", seed=4)
    weights["p"] = np.random.default_rng(0).standard_normal((23, 6))  # 23 directions
    layer = make_layer(weights, dtype=dtype)
    whole = bk.interaction_matrices(layer, range(23))

    calls = []
    real = interaction.build_interaction
    monkeypatch.setattr(interaction, "build_interaction", lambda w, v, c: calls.append(len(c)) or real(w, v, c))
    budget, chunked = _smallest_working_budget(
        lambda m: bk.interaction_matrices(layer, range(23), max_memory=m))
    assert len(calls) > 1 and sum(calls) == 23, f"expected several chunks under {budget} bytes, got {calls}"
    # the same numbers up to the rounding of one GEMM (batched and single GEMMs may round apart)
    eps = torch.finfo(dtype).eps
    torch.testing.assert_close(chunked, whole, rtol=0, atol=4 * eps * float(whole.abs().max()))
    _close(chunked.numpy(), oracle_q(as_float64(weights, dtype), np.eye(23)), dtype)


def test_a_budget_too_small_for_one_direction_is_refused():
    layer = make_layer(_weights("p"))
    with pytest.raises(MemoryError, match="max_memory"):
        bk.interaction_matrices(layer, [0], max_memory=16)


def _wide_tiny_layer(d=4096, o=4096):
    """d = 4096 with one hidden unit: nothing big to hold, but (o, d, d) results are 256 GiB."""
    g = torch.Generator().manual_seed(0)
    return bk.BilinearLayer(torch.randn(1, d, generator=g), torch.randn(1, d, generator=g),
                            torch.randn(o, 1, generator=g))


@pytest.mark.parametrize("max_memory", [None, 2**30])
def test_a_result_over_the_budget_is_refused_up_front_with_its_bytes(max_memory):
    layer = _wide_tiny_layer()
    result = 4096 * 4096 * 4096 * 4  # (4096, 4096, 4096) float32
    budget = memory_budget(layer.device, max_memory)
    with pytest.raises(MemoryError, match=rf"interaction_matrices of 4096 direction.*\b{result} bytes.*result"
                                          rf".*budget of {budget} bytes"):
        bk.interaction_matrices(layer, range(4096), max_memory=max_memory)


# -- the full tensor -----------------------------------------------------------------------------
@pytest.mark.parametrize("name", list(LAYERS))
def test_interaction_tensor_is_the_symmetrized_tensor(name):
    weights = _weights(name, seed=5)
    layer = make_layer(weights)
    s = bk.interaction_tensor(layer)
    assert s.shape == (layer.d_out, layer.d_form, layer.d_form)
    assert torch.equal(s, s.mT)
    _close(s.numpy(), oracle_tensor(weights), torch.float64)


@pytest.mark.parametrize("name", ["p", "no p", "bias"])
def test_interaction_tensor_raw_b(name):
    weights = _weights(name, seed=6)
    layer = make_layer(weights)
    b = bk.interaction_tensor(layer, symmetric=False)
    expected = oracle_tensor(weights, symmetric=False)
    _close(b.numpy(), expected, torch.float64)
    assert not np.allclose(expected, expected.transpose(0, 2, 1))  # B itself, not its symmetric part
    np.testing.assert_allclose(bk.interaction_tensor(make_layer(weights, framework="numpy"), symmetric=False),
                               b.numpy(), rtol=0, atol=0)


@pytest.mark.parametrize("dtype, itemsize", [(torch.float64, 8), (torch.float32, 4)])
@pytest.mark.parametrize("symmetric", [True, False])
def test_interaction_tensor_refusal_names_the_bytes(dtype, itemsize, symmetric):
    layer = make_layer(_weights("bias", seed=7), dtype=dtype)  # o = 4, h = 6, d + 1 = 9
    needed = 4 * 9 * 9 * itemsize
    # beside the result, one output's temporaries: the scaled (h, d) copy and two (d, d) products
    one_output = (6 * 9 + 2 * 9 * 9) * itemsize
    with pytest.raises(MemoryError, match=rf"\b{needed} bytes"):
        bk.interaction_tensor(layer, symmetric=symmetric, max_memory=needed - 1)
    # the result alone fits, but not the work beside it: max_memory bounds both together
    with pytest.raises(MemoryError, match=rf"\b{needed} bytes.*result.*budget of {needed + one_output - 1} bytes"):
        bk.interaction_tensor(layer, symmetric=symmetric, max_memory=needed + one_output - 1)
    assert bk.interaction_tensor(layer, symmetric=symmetric, max_memory=needed + one_output).shape == (4, 9, 9)


# -- scale ---------------------------------------------------------------------------------------
def _times(layer, e_w, e_v, e_p):
    """The layer with w (and w_bias), v (and v_bias), p times powers of two (exact)."""
    times = lambda t, e: None if t is None else t * 2.0**e  # noqa: E731
    return bk.BilinearLayer(times(layer.w, e_w), times(layer.v, e_v), times(layer.p, e_p),
                            times(layer.w_bias, e_w), times(layer.v_bias, e_v))


@pytest.mark.parametrize("dtype, exponents", [
    (torch.float32, (83, -100, 83)),     # (c ⊙ W) overflows float32 on the way; Q ~ 2^66
    (torch.float32, (-66, 66, -66)),     # ... underflows; Q ~ 2^-66
    (torch.float64, (-600, 600, -600)),  # Q ~ 2^-600
    (torch.float64, (600, -300, 500)),   # Q ~ 2^800
])
@pytest.mark.parametrize("fn", ["interaction_matrices", "interaction_tensor", "raw tensor", "float directions"])
def test_matrices_do_not_depend_on_the_weights_scale(fn, dtype, exponents):
    # o = 3 well below h = 24: 40 float directions take the output route (S built once)
    weights = random_weights(8, 24, 3, bias=True, seed=8)
    layer = _times(make_layer(weights, dtype=dtype), *exponents)
    u = np.random.default_rng(4).standard_normal((40, 3))
    if fn == "interaction_matrices":
        got, expected = bk.interaction_matrices(layer, [2, 0]), oracle_q(as_float64(weights, dtype), one_hot(3, [2, 0]))
    elif fn == "float directions":
        assert _route(layer, torch.as_tensor(u, dtype=dtype))
        got, expected = bk.interaction_matrices(layer, torch.as_tensor(u, dtype=dtype)), oracle_q(as_float64(weights, dtype), u)
    else:
        symmetric = fn == "interaction_tensor"
        got = bk.interaction_tensor(layer, symmetric=symmetric)
        expected = oracle_tensor(as_float64(weights, dtype), symmetric=symmetric)
    assert torch.isfinite(got).all()
    _close(got.double().numpy() * 2.0**-sum(exponents), expected, dtype)


@pytest.mark.parametrize("e, limit", [(-50, "below the smallest normal float32"), (50, "above the largest float32")])
@pytest.mark.parametrize("fn", ["interaction_matrices", "interaction_tensor"])
def test_matrices_float32_cannot_hold_are_refused(fn, e, limit):
    weights = _weights("p", seed=9)
    layer = _times(make_layer(weights, dtype=torch.float32), e, e, e)  # Q ~ 2^(3e)
    call = (lambda **kw: bk.interaction_matrices(layer, [1], **kw)) if fn == "interaction_matrices" \
        else (lambda **kw: bk.interaction_tensor(layer, **kw))
    with pytest.raises(ValueError, match=rf"entries of Q .*{limit}.*dtype=torch.float64"):
        call()
    got = call(dtype=torch.float64)
    expected = oracle_q(as_float64(weights, torch.float32), one_hot(5, [1])) if fn == "interaction_matrices" \
        else oracle_tensor(as_float64(weights, torch.float32))
    _close(got.numpy() * 2.0**(-3 * e), expected, torch.float64)


# -- matrix-free products ------------------------------------------------------------------------
@pytest.mark.parametrize("name", ["p", "bias", "h=1", "d=1"])
def test_operator_products_match_the_formed_matrices(name):
    weights = _weights(name, seed=8)
    w, v = homogeneous(weights)
    d = w.shape[1]
    o = weights["p"].shape[0] if weights["p"] is not None else w.shape[0]
    u = np.random.default_rng(1).standard_normal((3, o))
    c = u @ weights["p"] if weights["p"] is not None else u
    q = oracle_q(weights, u)  # (3, d, d)
    x = np.random.default_rng(2).standard_normal((3, d, 4))
    op = InteractionOperator(torch.from_numpy(w), torch.from_numpy(v))
    cols = op.apply(torch.from_numpy(c), torch.from_numpy(x))
    assert cols.shape == (3, d, 4)
    np.testing.assert_allclose(cols.numpy(), q @ x, rtol=0, atol=1e-13 * np.abs(q @ x).max())
    rows = op.apply_rows(torch.from_numpy(c), torch.from_numpy(x.transpose(0, 2, 1).copy()))
    assert rows.shape == (3, 4, d)
    np.testing.assert_allclose(rows.numpy(), (q @ x).transpose(0, 2, 1), rtol=0, atol=1e-13 * np.abs(q @ x).max())


def test_layer_type_is_checked():
    with pytest.raises(TypeError, match="BilinearLayer"):
        bk.interaction_matrices(object(), [0])
    with pytest.raises(TypeError, match="BilinearLayer"):
        bk.interaction_tensor("layer")


# -- the output-space route: S built once, Q = Σ_a u_a S[a] ----------------------------------------
def _wide_hidden_weights(seed):
    """o well below h, so many float directions take the output-space route."""
    return random_weights(8, 24, 3, bias=True, seed=seed)


def _route(layer, directions, max_memory=None):
    dirs = parse_directions(directions, layer.d_out)
    budget = memory_budget(layer.device, max_memory)
    return interaction.InteractionChunks(layer, dirs, layer.dtype, budget).output_space


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
def test_output_space_route_matches_the_oracle(dtype):
    weights = _wide_hidden_weights(seed=30)
    layer = make_layer(weights, dtype=dtype)
    u = np.random.default_rng(1).standard_normal((40, 3))
    assert _route(layer, torch.as_tensor(u, dtype=dtype)), "40 directions through o=3, h=24 should take it"
    q = bk.interaction_matrices(layer, torch.as_tensor(u, dtype=dtype))
    assert torch.equal(q, q.mT), "Q must be exactly symmetric"
    _close(q.numpy(), oracle_q(as_float64(weights, dtype), u), dtype)


def test_output_space_route_only_where_it_pays():
    layer = make_layer(_wide_hidden_weights(seed=31))
    many = torch.randn(40, 3, dtype=torch.float64)
    assert not _route(layer, list(range(3)) * 10), "index directions: Q(e_a) is S[a], nothing to share"
    assert not _route(layer, many[:1]), "one direction: building S costs more than it saves"
    # S (3 × 9 × 9 float64 = 1944 bytes) must fit in half the budget
    assert not _route(layer, many, max_memory=3000)
    assert _route(layer, many, max_memory=4000)
    no_p = make_layer(random_weights(8, 24, None, seed=32))
    assert not _route(no_p, torch.randn(40, 24, dtype=torch.float64)), "without P, o = h: nothing to save"


def test_output_space_route_under_a_tight_budget_gives_the_same_matrices():
    weights = _wide_hidden_weights(seed=33)
    layer = make_layer(weights)
    u = torch.randn(40, 3, dtype=torch.float64)
    # room for S and a few chunks of directions, not for all 40 at once
    budget = 3 * 81 * 8 * 2 + 4 * 2 * 81 * 8
    assert _route(layer, u, max_memory=budget)
    chunks = list(interaction.iter_interaction_chunks(layer, parse_directions(u, 3), torch.float64, budget))
    assert len(chunks) > 1 and [c[1] for c in chunks][-1] == 40, "expected several chunks of directions"
    # interaction_matrices counts its (40, 9, 9) result in max_memory on top
    q = bk.interaction_matrices(layer, u, max_memory=budget + 40 * 81 * 8)
    _close(q.numpy(), oracle_q(weights, u.numpy()), torch.float64)
