"""Bad input gets a ValueError or TypeError whose message names the problem (DESIGN.md §2):
mismatched shapes naming both, non-finite weights or directions, integer dtypes, k outside
[1, d], unknown which/method, direction indices out of range, empty batches."""
import math

import numpy as np
import pytest
import torch

import bilinear_kernels as bk
from helpers import make_layer, random_weights


def _t(*shape, dtype=torch.float64):
    return torch.randn(*shape, dtype=dtype)


@pytest.fixture(scope="module")
def layer():
    return make_layer(random_weights(6, 4, 3, seed=31))  # d = 6, h = 4, o = 3


# -- the layer -----------------------------------------------------------------------------------
def test_w_and_v_shapes_must_agree_and_both_are_named():
    with pytest.raises(ValueError, match=r"\(4, 6\).*\(4, 5\)"):
        bk.BilinearLayer(_t(4, 6), _t(4, 5))


def test_w_must_be_two_dimensional():
    with pytest.raises(ValueError, match=r"2-D.*\(4, 6, 1\)"):
        bk.BilinearLayer(_t(4, 6, 1), _t(4, 6, 1))


def test_empty_weights_are_refused():
    with pytest.raises(ValueError, match=r"\(0, 6\)"):
        bk.BilinearLayer(_t(0, 6), _t(0, 6))


def test_p_must_match_the_hidden_size_and_both_are_named():
    with pytest.raises(ValueError, match=r"p.*\(3, 5\).*\(4, 6\)"):
        bk.BilinearLayer(_t(4, 6), _t(4, 6), _t(3, 5))


@pytest.mark.parametrize("name", ["w_bias", "v_bias"])
def test_bias_must_match_the_hidden_size_and_both_are_named(name):
    with pytest.raises(ValueError, match=rf"{name}.*\(4,\).*\(4, 6\).*\(5,\)"):
        bk.BilinearLayer(_t(4, 6), _t(4, 6), **{name: _t(5)})


def test_packed_weight_needs_an_even_first_dimension():
    with pytest.raises(ValueError, match=r"\(7, 6\)"):
        bk.BilinearLayer.from_packed(_t(7, 6))


def test_packed_bias_must_match_and_both_are_named():
    with pytest.raises(ValueError, match=r"\(8,\).*\(8, 6\).*\(6,\)"):
        bk.BilinearLayer.from_packed(_t(8, 6), bias=_t(6))


@pytest.mark.parametrize("name", ["w", "v", "p", "w_bias", "v_bias"])
@pytest.mark.parametrize("bad", [math.nan, math.inf, -math.inf])
def test_non_finite_weights_are_refused(name, bad):
    args = dict(w=_t(4, 6), v=_t(4, 6), p=_t(3, 4), w_bias=_t(4), v_bias=_t(4))
    args[name].view(-1)[1] = bad
    with pytest.raises(ValueError, match=rf"{name}\b.*non-finite"):
        bk.BilinearLayer(**args)


def test_non_finite_packed_weight_is_refused():
    weight = _t(8, 6)
    weight[5, 2] = math.nan
    with pytest.raises(ValueError, match="non-finite"):
        bk.BilinearLayer.from_packed(weight)


@pytest.mark.parametrize("name", ["w", "v", "p", "w_bias"])
@pytest.mark.parametrize("dtype", [torch.int64, torch.int32, torch.bool])
def test_integer_weights_are_refused(name, dtype):
    args = dict(w=_t(4, 6), v=_t(4, 6), p=_t(3, 4), w_bias=_t(4))
    args[name] = args[name].to(dtype)
    with pytest.raises(TypeError, match=rf"{name}\b.*{str(dtype).replace('torch.', '')}"):
        bk.BilinearLayer(**args)


def test_integer_numpy_weights_are_refused():
    with pytest.raises(TypeError, match="w.*int"):
        bk.BilinearLayer(np.ones((4, 6), dtype=np.int32), np.ones((4, 6)))


def test_unsupported_weight_types_are_refused():
    with pytest.raises(TypeError, match="list"):
        bk.BilinearLayer([[1.0] * 6] * 4, [[1.0] * 6] * 4)


def test_a_layer_is_required():
    with pytest.raises(TypeError, match="BilinearLayer"):
        bk.decompose({"w": _t(4, 6)}, [0])


# -- directions ----------------------------------------------------------------------------------
@pytest.mark.parametrize("fn", ["decompose", "interaction_matrices"])
@pytest.mark.parametrize("bad", [3, 7, -1, [0, 3], torch.tensor([2, 5]), np.array([-2])])
def test_direction_index_out_of_range_is_named(layer, fn, bad):
    with pytest.raises(ValueError, match=r"index -?\d+ is out of range.*d_out = 3"):
        getattr(bk, fn)(layer, bad)


@pytest.mark.parametrize("fn", ["decompose", "interaction_matrices"])
@pytest.mark.parametrize("empty", [[], (), range(0), torch.zeros(0, dtype=torch.int64), np.zeros((0, 3))])
def test_empty_batch_is_refused(layer, fn, empty):
    with pytest.raises(ValueError, match="empty"):
        getattr(bk, fn)(layer, empty)


@pytest.mark.parametrize("bad", [math.nan, math.inf])
@pytest.mark.parametrize("fn", ["decompose", "interaction_matrices"])
def test_non_finite_directions_are_refused(layer, fn, bad):
    u = _t(2, 3)
    u[1, 2] = bad
    with pytest.raises(ValueError, match="directions.*non-finite"):
        getattr(bk, fn)(layer, u)


def _shape_pattern(shape):
    """A regex for a shape as Python prints it: (4,) or (2, 4)."""
    return r"\(" + r", ".join(str(s) for s in shape) + (r",\)" if len(shape) == 1 else r"\)")


@pytest.mark.parametrize("fn", ["decompose", "interaction_matrices"])
@pytest.mark.parametrize("shape", [(4,), (2, 4), (2, 3, 1)])
def test_float_directions_of_the_wrong_shape_name_both_sizes(layer, fn, shape):
    with pytest.raises(ValueError, match=rf"d_out = 3.*{_shape_pattern(shape)}"):
        getattr(bk, fn)(layer, _t(*shape))


def test_two_dimensional_indices_are_refused(layer):
    with pytest.raises(ValueError, match=r"0-D or 1-D.*\(1, 2\)"):
        bk.decompose(layer, torch.tensor([[0, 1]]))


@pytest.mark.parametrize("bad", [True, torch.tensor([True, False]), torch.tensor([1j, 0j, 0j])])
def test_boolean_or_complex_directions_are_refused(layer, bad):
    with pytest.raises(TypeError, match="directions"):
        bk.decompose(layer, bad)


def test_unsupported_direction_types_are_refused(layer):
    with pytest.raises(TypeError, match="directions"):
        bk.decompose(layer, "0")


# -- decompose's arguments -----------------------------------------------------------------------
@pytest.mark.parametrize("k", [0, -1, 7, 100])
def test_k_outside_1_to_d_is_refused(layer, k):
    with pytest.raises(ValueError, match=rf"k must be in \[1, d\].*6.*got {k}"):
        bk.decompose(layer, [0], k=k)


def test_k_counts_the_bias_dimension():
    biased = make_layer(random_weights(6, 4, 3, bias=True, seed=32))
    assert bk.decompose(biased, [0], k=7).eigenvalues.shape == (1, 7)
    with pytest.raises(ValueError, match=r"\[1, 7\].*got 8"):
        bk.decompose(biased, [0], k=8)


@pytest.mark.parametrize("k", [2.0, "3", True])
def test_k_must_be_an_int(layer, k):
    with pytest.raises(TypeError, match="k must be an int"):
        bk.decompose(layer, [0], k=k)


@pytest.mark.parametrize("which", ["lm", "XX", "", None])
def test_unknown_which_is_named(layer, which):
    with pytest.raises(ValueError, match=rf"which must be one of.*{which!r}" if which else "which must be one of"):
        bk.decompose(layer, [0], which=which)


@pytest.mark.parametrize("method", ["dense", "Eigh", "arpack"])
def test_unknown_method_is_named(layer, method):
    with pytest.raises(ValueError, match=rf"method must be one of.*{method!r}"):
        bk.decompose(layer, [0], method=method)


def test_lowrank_needs_2h_below_d(layer):
    with pytest.raises(ValueError, match=r"2h < d.*h=4.*d=6"):
        bk.decompose(layer, [0], method="lowrank")


@pytest.mark.parametrize("tol", [0, -1e-6, math.nan])
def test_tol_must_be_positive(layer, tol):
    with pytest.raises(ValueError, match="tol must be positive"):
        bk.decompose(layer, [0], method="lanczos", tol=tol)


@pytest.mark.parametrize("fn", ["decompose", "interaction_matrices", "interaction_tensor"])
@pytest.mark.parametrize("dtype", [torch.float16, torch.int64, "int32"])
def test_working_dtype_must_be_float32_or_float64(layer, fn, dtype):
    args = (layer,) if fn == "interaction_tensor" else (layer, [0])
    with pytest.raises(TypeError, match="dtype must be torch.float32 or torch.float64"):
        getattr(bk, fn)(*args, dtype=dtype)


@pytest.mark.parametrize("max_memory", [0, -5, "1GiB"])
def test_max_memory_must_be_a_positive_number(layer, max_memory):
    with pytest.raises(ValueError, match="max_memory"):
        bk.decompose(layer, [0], max_memory=max_memory)
