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


@pytest.mark.parametrize("max_memory", [np.int64(2**30), np.float64(2**30), 2.5e9])
def test_max_memory_takes_any_real_number_type(layer, max_memory):
    assert bk.decompose(layer, [0], max_memory=max_memory).eigenvalues.shape == (1, 6)


# -- weights changed in place after the layer was built ------------------------------------------
@pytest.mark.parametrize("name", ["w", "v", "p", "w_bias", "v_bias"])
@pytest.mark.parametrize("call", ["eigh", "lanczos", "lowrank", "interaction_matrices", "interaction_tensor"])
def test_weights_made_non_finite_after_construction_are_refused_at_use(call, name):
    thin = make_layer(random_weights(12, 4, 3, bias=True, seed=33))  # 2h < d: every method applies
    getattr(thin, name).view(-1)[2] = math.nan
    with pytest.raises(ValueError, match=rf"^{name} contains 1 non-finite"):
        if call.startswith("interaction"):
            getattr(bk, call)(thin, *([[0, 2]] if call == "interaction_matrices" else []))
        else:
            bk.decompose(thin, [0, 2], k=2, method=call)


# -- every other kind of bad argument: one table ----------------------------------------------------
def _result_file(tmp_path, name, *, header=None, tensors=None, raw=None):
    """A file that DecompositionResult.load is handed: raw bytes, or a safetensors file with the
    given header entries and tensors."""
    from safetensors.torch import save_file

    path = tmp_path / name
    if raw is not None:
        path.write_bytes(raw)
        return path
    tensors = tensors or {"eigenvalues": torch.zeros(2, 3), "eigenvectors": torch.zeros(2, 6, 3),
                          "residuals": torch.zeros(2, 3)}
    save_file(tensors, str(path), metadata=header)
    return path


_GOOD_HEADER = {"format": "bilinear_kernels.decomposition/1", "method": "eigh", "which": "LM", "metadata": "{}"}


def _without(header, key):
    return {k: v for k, v in header.items() if k != key}


def _numpy_layer(w_dtype=None, w=None):
    base = random_weights(6, 4, 3, seed=31)
    return bk.BilinearLayer(base["w"].astype(w_dtype) if w is None else w, base["v"], base["p"])


def _meta(*shape):
    return torch.empty(*shape, device="meta")


def _result(layer):
    return bk.decompose(layer, [0, 1])


# (call(layer, biased, tmp_path), exception, pattern the message must match)
BAD_ARGUMENTS = {
    "meta weights": (lambda L, B, tmp: bk.BilinearLayer(_meta(4, 6), _meta(4, 6)), ValueError, r"^w is a meta tensor"),
    "meta directions": (lambda L, B, tmp: bk.decompose(L, _meta(2, 3)), ValueError, r"^directions is a meta tensor"),
    "meta x": (lambda L, B, tmp: _result(L).activations(_meta(5, 6)), ValueError, r"^x is a meta tensor"),
    "sparse COO w": (lambda L, B, tmp: bk.BilinearLayer(_t(4, 6).to_sparse(), _t(4, 6)), TypeError,
                     r"^w has layout torch.sparse_coo.*to_dense"),
    "sparse CSR p": (lambda L, B, tmp: bk.BilinearLayer(_t(4, 6), _t(4, 6), _t(3, 4).to_sparse_csr()), TypeError,
                     r"^p has layout torch.sparse_csr"),
    "sparse directions": (lambda L, B, tmp: bk.decompose(L, _t(2, 3).to_sparse()), TypeError,
                          r"^directions has layout torch.sparse_coo"),
    "block_size=-1": (lambda L, B, tmp: bk.decompose(L, [0], method="lanczos", block_size=-1), ValueError,
                      r"block_size must be a positive int.*-1"),
    "block_size=2.5": (lambda L, B, tmp: bk.decompose(L, [0], method="lanczos", block_size=2.5), TypeError,
                       r"block_size must be a positive int.*2.5"),
    "max_basis=0": (lambda L, B, tmp: bk.decompose(L, [0], method="lanczos", max_basis=0), ValueError,
                    r"max_basis must be a positive int"),
    "max_products=-1": (lambda L, B, tmp: bk.decompose(L, [0], method="lanczos", max_products=-1), ValueError,
                        r"max_products must be a positive int.*-1"),
    "seed=1.5": (lambda L, B, tmp: bk.decompose(L, [0], method="lanczos", seed=1.5), TypeError, r"seed must be an int.*1.5"),
    "seed=2**70": (lambda L, B, tmp: bk.decompose(L, [0], method="lanczos", seed=2**70), ValueError, r"seed must be an int in"),
    "max_memory=inf": (lambda L, B, tmp: bk.decompose(L, [0], max_memory=math.inf), ValueError,
                       r"max_memory must be a positive, finite number of bytes, got inf"),
    "max_memory=nan": (lambda L, B, tmp: bk.interaction_matrices(L, [0], max_memory=math.nan), ValueError,
                       r"max_memory must be a positive, finite number of bytes, got nan"),
    "max_memory=True": (lambda L, B, tmp: bk.interaction_tensor(L, max_memory=True), ValueError, r"max_memory"),
    'tol="1e-3"': (lambda L, B, tmp: bk.decompose(L, [0], method="lanczos", tol="1e-3"), TypeError,
                   r"tol must be a float or None, got str '1e-3'"),
    "tol=1e-30": (lambda L, B, tmp: bk.decompose(L, [0], method="lanczos", tol=1e-30, max_products=10**12),
                  ValueError, r"tol=1e-30 is below the float64 machine epsilon 2.22e-16"),
    "tol=1e-9 in float32": (lambda L, B, tmp: bk.decompose(L, [0], method="lanczos", tol=1e-9, dtype=torch.float32),
                            ValueError, r"tol=1e-09 is below the float32 machine epsilon 1.19e-07.*dtype=torch.float64"),
    "tol=inf": (lambda L, B, tmp: bk.decompose(L, [0], method="lanczos", tol=math.inf), ValueError,
                r"tol must be positive and finite"),
    "x of the wrong width": (lambda L, B, tmp: _result(L).activations(_t(5, 4)), ValueError,
                             r"x must have shape \(\.\.\., 6\) to match the eigenvectors \(2, 6, 6\), got \(5, 4\)"),
    "1-D x of the wrong width": (lambda L, B, tmp: _result(L).activations(_t(5)), ValueError, r"\(\.\.\., 6\).*got \(5,\)"),
    "0-D x": (lambda L, B, tmp: _result(L).activations(torch.tensor(1.0)), ValueError, r"x must have shape.*got \(\)"),
    "x of a biased layer, 5 columns": (lambda L, B, tmp: _result(B).activations(_t(3, 5)), ValueError,
                                       r"\(\.\.\., 7 \(or 6, the constant 1 then appended\)\).*got \(3, 5\)"),
    "ragged list x": (lambda L, B, tmp: _result(L).activations([[0.0] * 6, [0.0] * 5]), ValueError,
                      r"x given as a list must be a rectangular array"),
    "complex x": (lambda L, B, tmp: _result(L).activations(np.zeros((2, 6), complex)), TypeError, r"x must have an"),
    "string x": (lambda L, B, tmp: _result(L).activations("x"), TypeError, r"x must be a torch tensor"),
    "list w": (lambda L, B, tmp: bk.BilinearLayer([[1.0] * 6] * 4, _t(4, 6)), TypeError,
               r"^w must be a torch tensor, NumPy array or CuPy array, got list \(convert it with np.asarray"),
    "list v": (lambda L, B, tmp: bk.BilinearLayer(_t(4, 6), [[1.0] * 6] * 4), TypeError, r"^v must be a torch tensor.*list"),
    "list packed weight": (lambda L, B, tmp: bk.BilinearLayer.from_packed([[1.0] * 6] * 8), TypeError,
                           r"^weight must be a torch tensor.*list"),
    "long double w": (lambda L, B, tmp: _numpy_layer(np.longdouble), TypeError, r"^w has NumPy dtype float128 \(long double\)"),
    "object w": (lambda L, B, tmp: _numpy_layer(object), TypeError, r"^w must have a floating-point dtype, got NumPy dtype object"),
    "complex w": (lambda L, B, tmp: _numpy_layer(np.complex128), TypeError, r"^w must have a floating-point dtype.*complex128"),
    "object directions": (lambda L, B, tmp: bk.decompose(L, np.array([0, 1], dtype=object)), TypeError,
                          r"^directions must have an integer or floating-point dtype, got NumPy dtype object"),
    "long double directions": (lambda L, B, tmp: bk.decompose(L, np.ones(3, np.longdouble)), TypeError,
                               r"^directions has NumPy dtype float128"),
    "ragged directions": (lambda L, B, tmp: bk.decompose(L, [[1.0, 0.0, 0.0], [1.0]]), ValueError,
                          r"directions given as a list must be .*rectangular"),
    "direction 2**70": (lambda L, B, tmp: bk.decompose(L, [2**70]), ValueError,
                        rf"direction index {2**70} is out of range.*d_out = 3"),
    "uint64 direction 2**63": (lambda L, B, tmp: bk.interaction_matrices(L, np.array([2**63], np.uint64)), ValueError,
                               rf"direction index {2**63} is out of range"),
    "load: not safetensors": (lambda L, B, tmp: bk.DecompositionResult.load(_result_file(tmp, "junk.st", raw=b"\x10" + b"\0" * 7 + b"{oops")),
                              ValueError, r"junk.st is not a readable safetensors file"),
    "load: no method": (lambda L, B, tmp: bk.DecompositionResult.load(_result_file(tmp, "m.st", header=_without(_GOOD_HEADER, "method"))),
                        ValueError, r"m.st is not a valid decomposition result file: its header has no 'method'"),
    "load: bad JSON": (lambda L, B, tmp: bk.DecompositionResult.load(_result_file(tmp, "j.st", header={**_GOOD_HEADER, "metadata": "{oops"})),
                       ValueError, r"j.st is not a valid decomposition result file: its 'metadata' entry is not JSON"),
    "load: no eigenvectors": (lambda L, B, tmp: bk.DecompositionResult.load(
        _result_file(tmp, "e.st", header=_GOOD_HEADER, tensors={"eigenvalues": torch.zeros(2, 3), "residuals": torch.zeros(2, 3)})),
        ValueError, r"e.st .*no tensor eigenvectors"),
    "load: shapes that disagree": (lambda L, B, tmp: bk.DecompositionResult.load(
        _result_file(tmp, "s.st", header=_GOOD_HEADER, tensors={"eigenvalues": torch.zeros(2, 3), "residuals": torch.zeros(2, 3),
                                                               "eigenvectors": torch.zeros(3, 6, 3)})),
        ValueError, r"s.st .*shapes"),
    "load: a directory": (lambda L, B, tmp: bk.DecompositionResult.load(tmp), ValueError, r"is a directory"),
    "eigh_backend=cusolver on CPU": (lambda L, B, tmp: bk.decompose(L, [0], method="eigh", eigh_backend="cusolver"),
                                     ValueError, r"eigh_backend='cusolver' runs on CUDA tensors only; these are on cpu"),
}


@pytest.mark.parametrize("case", list(BAD_ARGUMENTS))
def test_bad_arguments_get_a_clear_error(layer, tmp_path, case):
    call, error, pattern = BAD_ARGUMENTS[case]
    if "long double" in case and np.dtype(np.longdouble).itemsize <= 8:
        pytest.skip("long double is float64 on this platform")
    biased = make_layer(random_weights(6, 4, 3, bias=True, seed=34))
    with pytest.raises(error, match=pattern):
        call(layer, biased, tmp_path)


# -- inputs that used to be refused or misread, now taken as documented --------------------------
def test_big_endian_numpy_weights_and_directions_are_taken_exactly():
    base = random_weights(6, 4, 3, seed=35)
    native = bk.decompose(bk.BilinearLayer(base["w"], base["v"], base["p"]), np.array([[1.0, 2.0, 3.0]]))
    swapped = {k: base[k].astype(">f8") for k in ("w", "v", "p")}
    res = bk.decompose(bk.BilinearLayer(swapped["w"], swapped["v"], swapped["p"]), np.array([[1.0, 2.0, 3.0]], ">f8"))
    np.testing.assert_array_equal(res.eigenvalues, native.eigenvalues)
    np.testing.assert_array_equal(bk.decompose(bk.BilinearLayer(swapped["w"], swapped["v"], swapped["p"]),
                                               np.array([2, 0], ">i8")).indices, [2, 0])


def test_zero_dimensional_integer_tensors_in_a_list_are_indices(layer):
    # before: read as a float direction vector [2.0, 0.0, 1.0] of the three outputs
    res = bk.decompose(layer, [torch.tensor(2), np.int64(0), np.array(1)])
    np.testing.assert_array_equal(res.indices, [2, 0, 1])


def test_activations_of_a_biased_layer_take_the_layers_own_width():
    from helpers import oracle_forward

    weights = random_weights(6, 4, 3, bias=True, seed=36)
    res = bk.decompose(make_layer(weights), [0, 2])
    x = np.random.default_rng(5).standard_normal((5, 6))
    with_one = res.activations(np.concatenate([x, np.ones((5, 1))], axis=1))
    appended = res.activations(x)
    torch.testing.assert_close(appended, with_one, rtol=0, atol=1e-14)
    np.testing.assert_allclose(appended.sum(-1).numpy(), oracle_forward(x, weights)[:, [0, 2]], rtol=0, atol=1e-12)
    # inputs of any leading shape, lists included
    assert res.activations(x[0]).shape == (2, 7)
    assert res.activations(x.reshape(5, 1, 6).tolist()).shape == (5, 1, 2, 7)


def test_numpy_integers_are_taken_as_krylov_knobs(layer):
    as_python = bk.decompose(layer, [0, 1], k=2, method="lanczos", seed=3, block_size=2, max_products=500)
    as_numpy = bk.decompose(layer, [0, 1], k=2, method="lanczos", seed=np.int64(3), block_size=np.int32(2),
                            max_products=np.int64(500))
    torch.testing.assert_close(as_numpy.eigenvalues, as_python.eigenvalues, rtol=0, atol=1e-12)


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16, torch.float32, torch.float64])
@pytest.mark.parametrize("bad", [math.nan, math.inf, -math.inf])
@pytest.mark.parametrize("where", [0, 37, -1])  # first, inside, last: min and max must see each
def test_every_float_dtype_reports_a_single_non_finite_value_wherever_it_is(dtype, bad, where):
    from bilinear_kernels._arrays import check_finite

    t = torch.randn(8, 13).to(dtype)
    check_finite(t, "t")  # finite: no error
    t.view(-1)[where] = bad
    with pytest.raises(ValueError, match=r"t contains 1 non-finite value"):
        check_finite(t, "t")
    check_finite(torch.empty(0, 3, dtype=dtype), "empty")
