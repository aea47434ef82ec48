"""BilinearLayer: shapes, the packed constructor, biases as a quadratic form in d + 1 dimensions,
conversion with .to, and results in the caller's framework."""
import numpy as np
import pytest
import torch

import bilinear_kernels as bk
from helpers import (make_layer, one_hot, oracle_forward, oracle_q, random_weights, skip_if_no_cuda,
                     to_numpy)


@pytest.mark.parametrize("o, bias, expected", [
    (None, False, (9, 6, 6, 9)),
    (4, False, (9, 6, 4, 9)),
    (4, True, (9, 6, 4, 10)),
])
def test_shapes(o, bias, expected):
    layer = make_layer(random_weights(9, 6, o, bias=bias))
    assert (layer.d_in, layer.d_hidden, layer.d_out, layer.d_form) == expected
    assert layer.has_bias is bias


@pytest.mark.parametrize("only", ["w_bias", "v_bias"])
def test_a_single_bias_makes_the_form_d_plus_1(only):
    weights = random_weights(5, 3, bias=True)
    weights["v_bias" if only == "w_bias" else "w_bias"] = None
    layer = make_layer(weights)
    assert layer.has_bias and layer.d_form == 6


# -- from_packed ---------------------------------------------------------------------------------
def test_from_packed_equals_the_unpacked_layer():
    weights = random_weights(8, 5, 3, seed=1)
    packed = torch.from_numpy(np.concatenate([weights["w"], weights["v"]]))
    p = torch.from_numpy(weights["p"])
    layer = bk.BilinearLayer.from_packed(packed, p)
    plain = make_layer(weights)
    assert torch.equal(layer.w, plain.w) and torch.equal(layer.v, plain.v) and torch.equal(layer.p, plain.p)
    assert not layer.has_bias
    x = torch.randn(4, 8, dtype=torch.float64)
    assert torch.equal(layer(x), plain(x))
    assert torch.equal(bk.interaction_matrices(layer, [0, 2]), bk.interaction_matrices(plain, [0, 2]))
    a, b = bk.decompose(layer, [0, 1, 2], k=3), bk.decompose(plain, [0, 1, 2], k=3)
    assert torch.equal(a.eigenvalues, b.eigenvalues) and torch.equal(a.eigenvectors, b.eigenvectors)


def test_from_packed_is_an_nn_linear_chunked_in_two():
    torch.manual_seed(0)
    d, h, o = 6, 4, 3
    linear = torch.nn.Linear(d, 2 * h, dtype=torch.float64)
    p = torch.randn(o, h, dtype=torch.float64)
    layer = bk.BilinearLayer.from_packed(linear.weight.detach(), p, bias=linear.bias.detach())
    x = torch.randn(5, d, dtype=torch.float64)
    with torch.no_grad():
        gate, up = linear(x).chunk(2, dim=-1)
        expected = (gate * up) @ p.T
    torch.testing.assert_close(layer(x), expected, rtol=1e-12, atol=1e-12)
    # the packed bias is a (d + 1)-dimensional form: x̃ᵀ Q(u) x̃ = uᵀ f(x)
    q = bk.interaction_matrices(layer, [0, 1, 2])
    x_tilde = torch.cat([x, torch.ones(5, 1, dtype=torch.float64)], dim=1)
    torch.testing.assert_close(torch.einsum("ni,bij,nj->nb", x_tilde, q, x_tilde), expected,
                               rtol=1e-12, atol=1e-12)


def test_from_packed_numpy_stays_numpy():
    weights = random_weights(6, 3, seed=2)
    layer = bk.BilinearLayer.from_packed(np.concatenate([weights["w"], weights["v"]]))
    assert isinstance(bk.interaction_matrices(layer, 0), np.ndarray)
    assert isinstance(bk.decompose(layer, 0).eigenvalues, np.ndarray)


# -- biases --------------------------------------------------------------------------------------
@pytest.mark.parametrize("present", ["both", "w_bias", "v_bias"])
def test_biases_are_a_quadratic_form_in_d_plus_1(present):
    weights = random_weights(6, 5, 4, bias=True, seed=3)
    if present != "both":
        weights["v_bias" if present == "w_bias" else "w_bias"] = None
    layer = make_layer(weights)
    q = bk.interaction_matrices(layer, [0, 1, 2, 3])
    assert q.shape == (4, 7, 7)
    np.testing.assert_allclose(q.numpy(), oracle_q(weights, np.eye(4)), rtol=0, atol=1e-14)
    x = np.random.default_rng(0).standard_normal((10, 6))
    x_tilde = np.concatenate([x, np.ones((10, 1))], axis=1)
    np.testing.assert_allclose(np.einsum("ni,bij,nj->nb", x_tilde, q.numpy(), x_tilde),
                               oracle_forward(x, weights), rtol=1e-12, atol=1e-12)


# -- conversion ----------------------------------------------------------------------------------
def test_to_changes_dtype_and_keeps_values():
    weights = random_weights(5, 4, 3, bias=True, seed=4)
    layer = make_layer(weights, framework="numpy")
    single = layer.to(dtype=torch.float32)
    assert single.dtype == torch.float32 and single.framework == "torch"
    for name in ("w", "v", "p", "w_bias", "v_bias"):
        t = getattr(single, name)
        assert isinstance(t, torch.Tensor) and t.dtype == torch.float32
        np.testing.assert_array_equal(t.numpy(), np.asarray(weights[name]).astype(np.float32))
    assert layer.dtype == torch.float64 and layer.framework == "numpy"  # the original is untouched
    back = single.to("cpu", torch.float64)
    assert back.dtype == torch.float64 and back.device.type == "cpu"
    assert isinstance(bk.decompose(back, 0).eigenvalues, torch.Tensor)


@skip_if_no_cuda
def test_to_cuda_decomposes_on_the_gpu():
    from helpers import check_result

    weights = random_weights(12, 8, 4, seed=5)
    layer = make_layer(weights).to("cuda")
    assert layer.device.type == "cuda"
    res = bk.decompose(layer, [0, 3], k=4, method="eigh")
    assert res.eigenvalues.device.type == "cuda"
    check_result(res, oracle_q(weights, one_hot(4, [0, 3])), "LM", torch.float64)


# -- frameworks ----------------------------------------------------------------------------------
@pytest.mark.parametrize("dtype", [np.float64, np.float32])
def test_numpy_in_numpy_out(dtype):
    weights = random_weights(7, 5, 3, bias=True, seed=6)
    layer = bk.BilinearLayer(*(None if weights[n] is None else weights[n].astype(dtype)
                               for n in ("w", "v", "p", "w_bias", "v_bias")))
    x = np.random.default_rng(0).standard_normal((2, 7)).astype(dtype)
    y = layer(x)
    assert isinstance(y, np.ndarray) and y.dtype == dtype
    q = bk.interaction_matrices(layer, [0, 1])
    assert isinstance(q, np.ndarray) and q.dtype == dtype and q.shape == (2, 8, 8)
    res = bk.decompose(layer, [0, 2], k=3)
    for field in (res.eigenvalues, res.eigenvectors, res.residuals, res.indices):
        assert isinstance(field, np.ndarray)
    assert res.eigenvalues.dtype == dtype and res.eigenvectors.shape == (2, 8, 3)
    np.testing.assert_array_equal(res.indices, [0, 2])


def test_cupy_in_cupy_out():
    cupy = pytest.importorskip("cupy")
    if not torch.cuda.is_available():
        pytest.skip("needs a CUDA device")
    weights = random_weights(7, 5, 3, seed=7)
    layer = bk.BilinearLayer(cupy.asarray(weights["w"]), cupy.asarray(weights["v"]), cupy.asarray(weights["p"]))
    res = bk.decompose(layer, [0, 1], k=2)
    assert isinstance(res.eigenvalues, cupy.ndarray)
    np.testing.assert_allclose(cupy.asnumpy(res.eigenvalues),
                               to_numpy(bk.decompose(make_layer(weights), [0, 1], k=2).eigenvalues),
                               rtol=1e-10, atol=1e-12)


def test_repr_names_the_sizes():
    text = repr(make_layer(random_weights(9, 6, 4, bias=True)))
    assert "d_in=9" in text and "d_hidden=6" in text and "d_out=4" in text and "bias" in text
