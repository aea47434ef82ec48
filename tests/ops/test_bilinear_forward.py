"""The fused bilinear forward/backward kernel against its plain-torch twin.

On CPU the kernel runs under TRITON_INTERPRET=1 (tests/conftest.py) on small odd shapes; on a GPU
the same tests run on CUDA, plus bfloat16 and real sizes.
"""
import importlib

import pytest
import torch

pytest.importorskip("triton")

from bilinear_kernels import bilinear  # noqa: E402
from bilinear_kernels.functional import bilinear_reference  # noqa: E402
from bilinear_kernels.ops._launch import INTERPRETING  # noqa: E402
from bilinear_kernels.ops.bilinear_forward import (FusedBilinearFunction, bilinear_fused,  # noqa: E402
                                                   bilinear_hidden_grad_reference,
                                                   bilinear_hidden_grad_triton)

backends = importlib.import_module("bilinear_kernels.backends")  # the package exports a function of that name
functional = importlib.import_module("bilinear_kernels.functional")

CUDA = torch.cuda.is_available()
DEVICE = "cuda" if CUDA else "cpu"
kernel_runs = pytest.mark.skipif(not (CUDA or INTERPRETING), reason="needs CUDA or TRITON_INTERPRET=1")
requires_cuda = pytest.mark.skipif(not CUDA, reason="needs a CUDA device")

# Largest error allowed, relative to the largest |entry| of the float64 reference computed from
# the same (rounded) inputs. Half precision rounds H before the output GEMM: ~2^-11 (fp16) and
# ~2^-8 (bf16) per entry, a few units of that after summation.
TOLERANCE = {torch.float32: 1e-5, torch.float16: 4e-3, torch.bfloat16: 3e-2}
DTYPES = [torch.float32, torch.float16] + ([torch.bfloat16] if CUDA else [])

# (n, d, h, o): none a multiple of the interpreter's 16-wide blocks, d or h = 1, o absent
SHAPES = [(1, 1, 1, 1), (5, 1, 3, None), (9, 7, 1, 4), (33, 19, 17, 5), (70, 40, 33, None)]


def assert_close_scaled(actual, expected, tol, what=""):
    expected = expected.double()
    err = (actual.double() - expected).abs().max().item()
    scale = expected.abs().max().item()
    assert err <= tol * max(scale, 1e-30), f"{what}: max error {err:.3g} over scale {scale:.3g} > {tol}"


def make_inputs(n, d, h, o, dtype, bias=False, seed=0):
    g = torch.Generator().manual_seed(seed)

    def rand(*shape):
        return torch.randn(*shape, generator=g).to(device=DEVICE, dtype=dtype)

    x, w, v = rand(n, d), rand(h, d) / d ** 0.5, rand(h, d) / d ** 0.5
    p = rand(o, h) / h ** 0.5 if o is not None else None
    wb, vb = (rand(h), rand(h)) if bias else (None, None)
    return x, w, v, p, wb, vb


def as64(tensors):
    return [t.double() if t is not None else None for t in tensors]


@kernel_runs
@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("shape", SHAPES, ids=str)
@pytest.mark.parametrize("bias", [False, True], ids=["nobias", "bias"])
def test_forward_matches_reference(dtype, shape, bias):
    inputs = make_inputs(*shape, dtype, bias=bias)
    y = bilinear_fused(*inputs)
    assert y.dtype == dtype and y.shape == (shape[0], shape[3] or shape[2])
    assert_close_scaled(y, bilinear_reference(*as64(inputs)), TOLERANCE[dtype], "y")


@kernel_runs
def test_non_contiguous_and_batched_inputs():
    n, d, h, o = 13, 21, 18, 7
    g = torch.Generator().manual_seed(1)
    x = torch.randn(d, 3, n, generator=g).permute(1, 2, 0).to(DEVICE)  # (3, n, d), d strided
    w = torch.randn(h, 2 * d, generator=g)[:, ::2].to(DEVICE)  # column stride 2
    v = torch.randn(d, h, generator=g).t().to(DEVICE)  # transposed storage
    p = torch.randn(h, o, generator=g).t().to(DEVICE)
    wb = torch.randn(2 * h, generator=g)[::2].to(DEVICE)
    assert not (x.is_contiguous() or w.is_contiguous() or v.is_contiguous() or p.is_contiguous())
    y = bilinear_fused(x, w, v, p, wb, None)
    assert y.shape == (3, n, o)
    expected = bilinear_reference(*as64([x, w, v, p, wb, None]))
    assert_close_scaled(y, expected, TOLERANCE[torch.float32], "y")


def grads_of(fn, inputs, grad_y):
    leaves = [t.detach().clone().requires_grad_(True) if t is not None else None for t in inputs]
    y = fn(*leaves)
    present = [t for t in leaves if t is not None]
    return y, torch.autograd.grad(y, present, grad_y)


@kernel_runs
@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("shape", [(33, 19, 17, 5), (6, 1, 20, None), (17, 23, 1, 2)], ids=str)
def test_backward_matches_twin(dtype, shape):
    inputs = make_inputs(*shape, dtype, bias=True, seed=2)
    grad_y = torch.randn(shape[0], shape[3] or shape[2], generator=torch.Generator().manual_seed(3))
    _, grads = grads_of(bilinear_fused, inputs, grad_y.to(DEVICE, dtype))
    _, expected = grads_of(bilinear_reference, as64(inputs), grad_y.to(DEVICE, torch.float64))
    names = ["x", "w", "v", "p", "w_bias", "v_bias"]
    names = [name for name, t in zip(names, inputs) if t is not None]
    # gradients sum over n or h products of rounded operands: one step looser than the forward
    for name, got, want in zip(names, grads, expected):
        assert got.dtype == dtype and got.shape == want.shape, name
        assert_close_scaled(got, want, 4 * TOLERANCE[dtype], f"d{name}")


@kernel_runs
def test_backward_only_requested_gradients():
    x, w, v, p, _, _ = make_inputs(11, 9, 10, 3, torch.float32)
    w.requires_grad_(True)
    y = bilinear_fused(x, w, v, p)
    (grad_w,) = torch.autograd.grad(y.sum(), [w])
    w64 = w.detach().double().requires_grad_(True)
    (want,) = torch.autograd.grad(bilinear_reference(*as64([x]), w64, *as64([v, p])).sum(), [w64])
    assert_close_scaled(grad_w, want, 4e-5, "dw")


@kernel_runs
@pytest.mark.parametrize("want_hidden", [False, True])
def test_hidden_grad_kernel_matches_twin(want_hidden):
    n, d, h = 37, 18, 21
    x, w, v, _, wb, vb = make_inputs(n, d, h, None, torch.float32, bias=True, seed=4)
    grad_hidden = torch.randn(h, n, generator=torch.Generator().manual_seed(5)).t().to(DEVICE)  # strided
    g, hidden = bilinear_hidden_grad_triton(x, w, v, wb, vb, grad_hidden, want_hidden)
    g_ref, hidden_ref = bilinear_hidden_grad_reference(*as64([x, w, v, wb, vb, grad_hidden]), want_hidden)
    assert g.shape == (n, 2 * h)
    assert_close_scaled(g, g_ref, TOLERANCE[torch.float32], "G")
    assert (hidden is None) == (not want_hidden)
    if want_hidden:
        assert_close_scaled(hidden, hidden_ref, TOLERANCE[torch.float32], "H")


@pytest.mark.parametrize("with_p", [True, False])
def test_hand_written_backward_gradcheck_float64(with_p):
    """The backward algebra (recompute, G, one GEMM for d[W; V], dP from the recomputed H) on the
    plain-torch twin, where float64 makes finite differences meaningful."""
    g = torch.Generator().manual_seed(6)
    n, d, h, o = 4, 3, 5, 2
    x, w, v, wb, vb = (torch.randn(*s, generator=g, dtype=torch.float64, requires_grad=True)
                       for s in ((n, d), (h, d), (h, d), (h,), (h,)))
    p = torch.randn(o, h, generator=g, dtype=torch.float64, requires_grad=True) if with_p else None

    def f(x, w, v, p, wb, vb):
        return FusedBilinearFunction.apply(x, w, v, p, wb, vb, False)

    assert torch.autograd.gradcheck(f, (x, w, v, p, wb, vb))
    assert torch.autograd.gradgradcheck(f, (x, w, v, p, wb, vb))


@kernel_runs
def test_double_backward_through_kernel_path():
    """With create_graph=True the backward runs the differentiable twin, so second derivatives
    (e.g. Hessian-vector products of the output) are those of the plain forward."""
    inputs = make_inputs(7, 5, 6, 3, torch.float32, seed=7)
    probe = torch.randn(5, generator=torch.Generator().manual_seed(8)).to(DEVICE)

    def hvp(fn, tensors):
        x = tensors[0].detach().clone().requires_grad_(True)
        y = fn(x, *tensors[1:])
        (grad_x,) = torch.autograd.grad(y.square().sum(), [x], create_graph=True)
        (second,) = torch.autograd.grad((grad_x * probe.to(grad_x.dtype)).sum(), [x])
        return second

    assert_close_scaled(hvp(bilinear_fused, inputs), hvp(bilinear_reference, as64(inputs)), 1e-4, "Hv")


@kernel_runs
def test_bad_shapes_raise_value_error():
    x, w, v, p, _, _ = make_inputs(4, 6, 5, 3, torch.float32)
    with pytest.raises(ValueError, match="x must be"):
        bilinear_fused(x[:, :5], w, v, p)
    with pytest.raises(ValueError, match="w and v"):
        bilinear_fused(x, w, v[:4], p)
    with pytest.raises(ValueError, match="p must be"):
        bilinear_fused(x, w, v, p[:, :4])
    with pytest.raises(ValueError, match="w_bias"):
        bilinear_fused(x, w, v, p, torch.zeros(4, device=DEVICE))


@kernel_runs
def test_fp32_dot_precision_follows_torch():
    from bilinear_kernels.ops._launch import dot_precision

    saved = torch.get_float32_matmul_precision()
    try:
        torch.set_float32_matmul_precision("highest")
        assert dot_precision(torch.float32) == "tf32x3" and dot_precision(torch.float16) is None
        torch.set_float32_matmul_precision("high")
        assert dot_precision(torch.float32) == "tf32"
        inputs = make_inputs(9, 20, 18, 5, torch.float32)
        # TF32 keeps 10 mantissa bits: the tolerance of fp16, not of fp32
        assert_close_scaled(bilinear_fused(*inputs), bilinear_reference(*as64(inputs)), TOLERANCE[torch.float16])
    finally:
        torch.set_float32_matmul_precision(saved)


# -- the dispatcher ----------------------------------------------------------------------------

def cpu_inputs(dtype=torch.float32):
    return [torch.ones(2, 3, dtype=dtype), torch.ones(4, 3, dtype=dtype), torch.ones(4, 3, dtype=dtype)]


def test_dispatch_cpu_tensors_take_the_reference():
    x, w, v = cpu_inputs()
    assert "not a CUDA device" in backends.triton_unsupported_reason(x, w, v)
    assert functional.bilinear_forward_kernel(x, w, v) is bilinear_reference


def test_dispatch_reasons_for_dtypes():
    x, w, v = cpu_inputs(torch.float64)
    assert "torch.float64" in backends.triton_unsupported_reason(x, w, v)
    assert "mix dtypes" in backends.triton_unsupported_reason(x.float(), w, v)


def test_dispatch_env_switch(triton_disabled):
    x, w, v = cpu_inputs()
    assert backends.triton_version() is None
    assert "BILINEAR_KERNELS_DISABLE_TRITON" in backends.triton_unsupported_reason(x, w, v)


@requires_cuda
def test_dispatch_cuda_takes_the_kernel():
    x, w, v, p, _, _ = make_inputs(4, 6, 5, 3, torch.float32)
    assert functional.bilinear_forward_kernel(x, w, v, p) is bilinear_fused
    assert functional.bilinear_forward_kernel(x.double(), w.double(), v.double(), p.double()) is bilinear_reference


@requires_cuda
def test_dispatch_cuda_env_switch(triton_disabled):
    x, w, v, p, _, _ = make_inputs(4, 6, 5, 3, torch.float32)
    assert functional.bilinear_forward_kernel(x, w, v, p) is bilinear_reference


@requires_cuda
def test_dispatch_cuda_autocast_takes_the_reference():
    x, w, v, p, _, _ = make_inputs(4, 6, 5, 3, torch.float32)
    with torch.autocast("cuda", dtype=torch.bfloat16):
        assert functional.bilinear_forward_kernel(x, w, v, p) is bilinear_reference


@requires_cuda
def test_public_bilinear_uses_the_kernel_on_cuda(no_tf32):
    inputs = make_inputs(64, 48, 80, 16, torch.float32, bias=True)
    assert torch.equal(bilinear(*inputs), bilinear_fused(*inputs))
    assert_close_scaled(bilinear(*inputs), bilinear_reference(*as64(inputs)), TOLERANCE[torch.float32])


# -- real sizes on the GPU -----------------------------------------------------------------------

@requires_cuda
@pytest.mark.gpu
@pytest.mark.parametrize("dtype", [torch.float32, torch.float16, torch.bfloat16], ids=str)
def test_real_size_forward_backward(dtype, no_tf32):
    n, d, h, o = 4096, 1024, 2048, 1024
    inputs = make_inputs(n, d, h, o, dtype, bias=False, seed=9)
    grad_y = torch.randn(n, o, generator=torch.Generator().manual_seed(10)).to(DEVICE)
    y, grads = grads_of(bilinear_fused, inputs, grad_y.to(dtype))
    y_ref, grads_ref = grads_of(bilinear_reference, as64(inputs), grad_y.double())
    assert_close_scaled(y, y_ref, TOLERANCE[dtype], "y")
    for name, got, want in zip(["x", "w", "v", "p"], grads, grads_ref):
        assert_close_scaled(got, want, 4 * TOLERANCE[dtype], f"d{name}")
