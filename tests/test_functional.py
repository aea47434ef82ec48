"""bilinear(): the forward pass against a float64 NumPy oracle, and its errors."""
import numpy as np
import pytest
import torch

import bilinear_kernels as bk
from helpers import as_float64, oracle_forward, random_weights

# Relative to the largest |output|: float64 is exact to rounding; float32 accumulates over h and d.
FORWARD_RTOL = {torch.float64: 1e-12, torch.float32: 1e-5}


def _forward_args(weights, dtype):
    return {name: None if a is None else torch.from_numpy(np.asarray(a)).to(dtype)
            for name, a in weights.items()}


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
@pytest.mark.parametrize("o", [None, 5])
@pytest.mark.parametrize("bias", ["none", "w", "v", "both"])
@pytest.mark.parametrize("x_shape", [(7,), (4, 7), (2, 3, 7)])
def test_forward_matches_oracle(dtype, o, bias, x_shape):
    weights = random_weights(7, 6, o, bias=bias != "none", seed=11)
    if bias == "w":
        weights["v_bias"] = None
    if bias == "v":
        weights["w_bias"] = None
    x = np.random.default_rng(1).standard_normal(x_shape)
    args = _forward_args(weights, dtype)
    y = bk.bilinear(torch.from_numpy(x).to(dtype), **args)

    expected = oracle_forward(torch.from_numpy(x).to(dtype).double().numpy(), as_float64(weights, dtype))
    assert isinstance(y, torch.Tensor) and y.dtype == dtype
    assert y.shape == x_shape[:-1] + (o or 6,)
    scale = np.abs(expected).max()
    np.testing.assert_allclose(y.double().numpy(), expected, rtol=0, atol=FORWARD_RTOL[dtype] * scale)


def test_layer_call_is_the_forward():
    weights = random_weights(5, 4, 3, bias=True, seed=2)
    layer = bk.BilinearLayer(*(torch.from_numpy(weights[n]) for n in ("w", "v", "p", "w_bias", "v_bias")))
    x = np.random.default_rng(0).standard_normal((6, 5))
    np.testing.assert_allclose(layer(torch.from_numpy(x)).numpy(), oracle_forward(x, weights), rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("dtype", [np.float64, np.float32])
def test_numpy_in_numpy_out(dtype):
    weights = random_weights(6, 4, 3, seed=3)
    x = np.random.default_rng(0).standard_normal((5, 6)).astype(dtype)
    y = bk.bilinear(x, weights["w"].astype(dtype), weights["v"].astype(dtype), weights["p"].astype(dtype))
    assert isinstance(y, np.ndarray) and y.dtype == dtype and y.shape == (5, 3)
    expected = oracle_forward(x.astype(np.float64), as_float64(weights, torch.float32 if dtype == np.float32 else torch.float64))
    tol = FORWARD_RTOL[torch.float32 if dtype == np.float32 else torch.float64] * np.abs(expected).max()
    np.testing.assert_allclose(y, expected, rtol=0, atol=tol)


def test_output_follows_the_framework_of_x():
    weights = random_weights(6, 4, None, seed=4)
    x = np.random.default_rng(0).standard_normal((2, 6))
    y = bk.bilinear(torch.from_numpy(x), weights["w"], weights["v"])  # NumPy weights, torch x
    assert isinstance(y, torch.Tensor)
    np.testing.assert_allclose(y.numpy(), oracle_forward(x, weights), rtol=1e-12, atol=1e-12)


# -- errors --------------------------------------------------------------------------------------
def _w(h=4, d=3, dtype=torch.float64):
    return torch.randn(h, d, dtype=dtype)


def test_x_of_the_wrong_width_names_both_shapes():
    with pytest.raises(ValueError, match=r"\(5, 4\).*\(4, 3\)"):
        bk.bilinear(torch.randn(5, 4, dtype=torch.float64), _w(), _w())


def test_w_and_v_of_different_shapes_name_both():
    with pytest.raises(ValueError, match=r"\(4, 3\).*\(4, 2\)"):
        bk.bilinear(torch.randn(5, 3, dtype=torch.float64), _w(), _w(4, 2))


def test_p_of_the_wrong_shape_names_both():
    with pytest.raises(ValueError, match=r"p.*\(2, 5\).*\(4, 3\)"):
        bk.bilinear(torch.randn(5, 3, dtype=torch.float64), _w(), _w(), torch.randn(2, 5, dtype=torch.float64))


@pytest.mark.parametrize("name", ["w_bias", "v_bias"])
def test_bias_of_the_wrong_shape_names_both(name):
    # a (5,) bias for h = 4 hidden units: a mismatched shape, to be refused with both shapes named
    with pytest.raises(ValueError, match=rf"{name}.*\(5,\).*\(4, 3\)|{name}.*\(4, 3\).*\(5,\)"):
        bk.bilinear(torch.randn(2, 3, dtype=torch.float64), _w(), _w(), **{name: torch.randn(5, dtype=torch.float64)})


@pytest.mark.parametrize("which", ["x", "w", "v", "p", "w_bias"])
def test_integer_dtypes_are_refused(which):
    args = dict(x=torch.randn(2, 3), w=_w(dtype=torch.float32), v=_w(dtype=torch.float32),
                p=torch.randn(2, 4), w_bias=torch.randn(4))
    args[which] = args[which].to(torch.int64)
    with pytest.raises(TypeError, match=rf"{which}.*int64"):
        bk.bilinear(**args)


def test_unsupported_array_types_are_refused():
    with pytest.raises(TypeError, match="x"):
        bk.bilinear([[1.0, 2.0, 3.0]], _w(), _w())


def test_mixed_precision_x_is_computed_or_refused_clearly():
    # float32 x with float64 weights: either a correct result or a TypeError naming both dtypes,
    # never an error from inside the matmul
    weights = random_weights(3, 4, None, seed=5)
    x = np.random.default_rng(0).standard_normal((2, 3)).astype(np.float32)
    try:
        y = bk.bilinear(torch.from_numpy(x), torch.from_numpy(weights["w"]), torch.from_numpy(weights["v"]))
    except TypeError as err:
        assert "float32" in str(err) and "float64" in str(err)
        return
    expected = oracle_forward(x.astype(np.float64), weights)
    np.testing.assert_allclose(np.asarray(y, np.float64), expected, rtol=0, atol=1e-5 * np.abs(expected).max())
