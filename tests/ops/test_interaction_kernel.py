"""The fused symmetric interaction kernel against its plain-torch twin.

On CPU the kernel runs under TRITON_INTERPRET=1 (tests/conftest.py) on small odd shapes; on a GPU
the same tests run on CUDA, plus bfloat16, real sizes and the public functions that use it.
"""
import importlib

import pytest
import torch

pytest.importorskip("triton")

import bilinear_kernels as bk  # noqa: E402
from bilinear_kernels.interaction import build_interaction_reference  # noqa: E402
from bilinear_kernels.ops._launch import INTERPRETING  # noqa: E402
from bilinear_kernels.ops.interaction import build_interaction_triton  # noqa: E402

backends = importlib.import_module("bilinear_kernels.backends")  # the package exports a function of that name
interaction = importlib.import_module("bilinear_kernels.interaction")

CUDA = torch.cuda.is_available()
DEVICE = "cuda" if CUDA else "cpu"
kernel_runs = pytest.mark.skipif(not (CUDA or INTERPRETING), reason="needs CUDA or TRITON_INTERPRET=1")
requires_cuda = pytest.mark.skipif(not CUDA, reason="needs a CUDA device")

# Largest error allowed, relative to the largest |entry| of the float64 reference from the same
# (rounded) inputs: fp32 accumulation throughout; in half precision the scaled operand c ⊙ V is
# rounded before the tensor-core product and Q is rounded on output.
TOLERANCE = {torch.float32: 1e-5, torch.float16: 2e-3, torch.bfloat16: 2e-2}
DTYPES = [torch.float32, torch.float16] + ([torch.bfloat16] if CUDA else [])

# (b, h, d): none a multiple of the interpreter's 16-wide blocks; d = 1, h = 1
SHAPES = [(1, 1, 1), (3, 19, 37), (2, 40, 17), (2, 33, 1), (4, 1, 33)]


def assert_close_scaled(actual, expected, tol, what="Q"):
    expected = expected.double()
    err = (actual.double() - expected).abs().max().item()
    scale = expected.abs().max().item()
    assert err <= tol * max(scale, 1e-30), f"{what}: max error {err:.3g} over scale {scale:.3g} > {tol}"


def make_inputs(b, h, d, dtype, seed=0):
    g = torch.Generator().manual_seed(seed)
    w, v, c = (torch.randn(*s, generator=g).to(DEVICE, dtype) for s in ((h, d), (h, d), (b, h)))
    return w, v, c


def reference64(w, v, c):
    return build_interaction_reference(w.double(), v.double(), c.double())


@kernel_runs
@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("shape", SHAPES, ids=str)
def test_matches_reference_and_is_exactly_symmetric(dtype, shape):
    w, v, c = make_inputs(*shape, dtype)
    q = build_interaction_triton(w, v, c)
    b, _, d = shape
    assert q.shape == (b, d, d) and q.dtype == dtype
    assert torch.equal(q, q.mT)
    assert_close_scaled(q, reference64(w, v, c), TOLERANCE[dtype])


@kernel_runs
@pytest.mark.parametrize("triangle", ["upper", "lower"])
def test_one_triangle_leaves_the_other_untouched(triangle):
    w, v, c = make_inputs(3, 21, 35, torch.float32, seed=1)
    full = build_interaction_triton(w, v, c)
    out = torch.full_like(full, float("nan"))
    assert build_interaction_triton(w, v, c, triangle=triangle, out=out) is out
    keep = torch.ones(35, 35, dtype=torch.bool, device=DEVICE)
    keep = keep.triu() if triangle == "upper" else keep.tril()
    assert torch.equal(out[:, keep], full[:, keep])
    assert out[:, ~keep].isnan().all()
    # what a one-triangle consumer reads: eigh with the matching UPLO
    uplo = "U" if triangle == "upper" else "L"
    expected = torch.linalg.eigvalsh(reference64(w, v, c))
    assert_close_scaled(torch.linalg.eigvalsh(out.double(), UPLO=uplo), expected, 1e-5, "eigenvalues")


@kernel_runs
def test_non_contiguous_inputs_and_output():
    b, h, d = 3, 22, 19
    g = torch.Generator().manual_seed(2)
    w = torch.randn(d, h, generator=g).t().to(DEVICE)  # transposed storage
    v = torch.randn(h, 3 * d, generator=g)[:, ::3].to(DEVICE)  # column stride 3
    c = torch.randn(h, b, generator=g).t().to(DEVICE)
    big = torch.zeros(b + 2, d, d + 5, device=DEVICE)
    out = big[1:-1, :, 2:-3]  # a window of a larger buffer
    assert not any(t.is_contiguous() for t in (w, v, c, out))
    build_interaction_triton(w, v, c, out=out)
    assert_close_scaled(out, reference64(w, v, c), TOLERANCE[torch.float32])
    assert torch.equal(big[0], torch.zeros_like(big[0])) and torch.equal(big[1:-1, :, :2], torch.zeros_like(big[1:-1, :, :2]))


@kernel_runs
def test_empty_batch_and_zero_hidden():
    w, v, c = make_inputs(2, 5, 4, torch.float32)
    assert build_interaction_triton(w, v, c[:0]).shape == (0, 4, 4)
    q = build_interaction_triton(w[:0], v[:0], c[:, :0])
    assert torch.equal(q, torch.zeros(2, 4, 4, device=DEVICE))


def test_bad_arguments_raise_value_error():
    w, v, c = make_inputs(2, 5, 4, torch.float32)
    with pytest.raises(ValueError, match="w and v"):
        build_interaction_triton(w, v[:, :3], c)
    with pytest.raises(ValueError, match="c must be"):
        build_interaction_triton(w, v, c[:, :4])
    with pytest.raises(ValueError, match="triangle"):
        build_interaction_triton(w, v, c, triangle="both")
    with pytest.raises(ValueError, match="out must be"):
        build_interaction_triton(w, v, c, out=torch.empty(2, 4, 5, device=DEVICE))


# -- the dispatcher ----------------------------------------------------------------------------

def test_dispatch_cpu_tensors_take_the_reference():
    w, v, c = (torch.ones(*s) for s in ((3, 2), (3, 2), (1, 3)))
    assert interaction.interaction_kernel(w, v, c) is build_interaction_reference
    assert "not a CUDA device" in backends.triton_unsupported_reason(w, v, c)


def test_dispatch_env_switch(triton_disabled):
    w, v, c = (torch.ones(*s) for s in ((3, 2), (3, 2), (1, 3)))
    assert "BILINEAR_KERNELS_DISABLE_TRITON" in backends.triton_unsupported_reason(w, v, c)


@requires_cuda
def test_dispatch_cuda_takes_the_kernel():
    w, v, c = make_inputs(2, 5, 4, torch.float32)
    # the kernel behind its canary (fast_path_guard)
    assert interaction.interaction_kernel(w, v, c) is interaction.build_interaction_guarded
    assert interaction.interaction_kernel(w.double(), v.double(), c.double()) is build_interaction_reference


@requires_cuda
def test_dispatch_cuda_env_switch(triton_disabled):
    w, v, c = make_inputs(2, 5, 4, torch.float32)
    assert interaction.interaction_kernel(w, v, c) is build_interaction_reference


# -- real sizes and the public functions on the GPU ---------------------------------------------

@requires_cuda
@pytest.mark.gpu
@pytest.mark.parametrize("dtype", DTYPES, ids=str)
def test_real_size(dtype, no_tf32):
    w, v, c = make_inputs(64, 2048, 512, dtype, seed=3)
    q = build_interaction_triton(w, v, c)
    assert torch.equal(q, q.mT)
    assert_close_scaled(q, reference64(w, v, c), TOLERANCE[dtype])


@requires_cuda
@pytest.mark.gpu
def test_interaction_matrices_and_eigh_on_cuda(no_tf32):
    g = torch.Generator().manual_seed(4)
    w, v, p = (torch.randn(*s, generator=g) for s in ((384, 200), (384, 200), (10, 384)))
    layer_cpu = bk.BilinearLayer(w.double(), v.double(), p.double())
    layer = bk.BilinearLayer(w.cuda(), v.cuda(), p.cuda())
    q = bk.interaction_matrices(layer, [0, 3, 7])
    assert_close_scaled(q.cpu(), bk.interaction_matrices(layer_cpu, [0, 3, 7]), TOLERANCE[torch.float32])
    res = bk.decompose(layer, [0, 3], k=8, method="eigh")
    ref = bk.decompose(layer_cpu, [0, 3], k=8, method="eigh")
    assert_close_scaled(res.eigenvalues.cpu(), ref.eigenvalues, 1e-4, "eigenvalues")
