"""The fp32 precision policy (bilinear_kernels/ops/PRECISION.md): which tl.dot precision each
torch matmul setting selects, each mode of both kernels against the float64 twin, and the accuracy
each mode is documented to have, measured on a model of its arithmetic.

The interpreter accepts every mode but computes every fp32 dot in plain fp32 (numpy), so on CPU
the kernel tests check that each mode runs and is wired through, at fp32's tolerance; on a GPU the
same tests hold each mode to its own documented tolerance.
"""
import pytest
import torch

pytest.importorskip("triton")

from bilinear_kernels.functional import bilinear_reference  # noqa: E402
from bilinear_kernels.interaction import build_interaction_reference  # noqa: E402
from bilinear_kernels.ops._launch import FP32_PRECISION, INTERPRETING, dot_precision  # noqa: E402
from bilinear_kernels.ops.bilinear_forward import bilinear_fused  # noqa: E402
from bilinear_kernels.ops.interaction import build_interaction_triton  # noqa: E402

CUDA = torch.cuda.is_available()
DEVICE = "cuda" if CUDA else "cpu"
kernel_runs = pytest.mark.skipif(not (CUDA or INTERPRETING), reason="needs CUDA or TRITON_INTERPRET=1")

# Largest error relative to the largest |entry| of the float64 result, per tl.dot precision
# (PRECISION.md): tf32x3 is held to fp32's bound, one TF32 product to fp16's.
ACCURACY = {"ieee": 1e-5, "tf32x3": 1e-5, "tf32": 4e-3}
# The modes the interpreter computes as written; the others it runs as "ieee".
INTERPRETER_EMULATES = {"ieee"}


def tolerance(precision: str) -> float:
    if INTERPRETING and precision not in INTERPRETER_EMULATES:
        return ACCURACY["ieee"]
    return ACCURACY[precision]


@pytest.fixture(params=["highest", "high", "medium"])
def matmul_precision(request):
    saved = torch.get_float32_matmul_precision()
    torch.set_float32_matmul_precision(request.param)
    yield request.param
    torch.set_float32_matmul_precision(saved)


def relative_max_error(actual, expected) -> float:
    expected = expected.double()
    return (actual.double() - expected).abs().max().item() / max(expected.abs().max().item(), 1e-30)


def test_policy_maps_each_matmul_setting(matmul_precision):
    expected = {"highest": "tf32x3", "high": "tf32", "medium": "tf32"}[matmul_precision]
    assert dot_precision(torch.float32) == expected == FP32_PRECISION[matmul_precision]
    assert dot_precision(torch.float16) is None and dot_precision(torch.bfloat16) is None


@kernel_runs
def test_forward_in_each_mode_matches_float64(matmul_precision):
    g = torch.Generator().manual_seed(5)
    x, w, v = (torch.randn(*s, generator=g) for s in ((37, 45), (29, 45), (29, 45)))
    wb, vb = torch.randn(29, generator=g), torch.randn(29, generator=g)
    x, w, v, wb, vb = (t.to(DEVICE) for t in (x, w, v, wb, vb))
    # no output projection: P's GEMM is torch's, which "medium" may run in bf16
    y = bilinear_fused(x, w, v, None, wb, vb)
    expected = bilinear_reference(*[t.double() for t in (x, w, v)], None, wb.double(), vb.double())
    assert relative_max_error(y, expected) <= tolerance(dot_precision(torch.float32))


@kernel_runs
def test_interaction_in_each_mode_matches_float64(matmul_precision):
    g = torch.Generator().manual_seed(6)
    w, v, c = (torch.randn(*s, generator=g).to(DEVICE) for s in ((41, 35), (41, 35), (3, 41)))
    q = build_interaction_triton(w, v, c)
    expected = build_interaction_reference(w.double(), v.double(), c.double())
    assert relative_max_error(q, expected) <= tolerance(dot_precision(torch.float32))


# -- the documented accuracy of each mode, on a model of its arithmetic ----------------------------

def to_tf32(x: torch.Tensor, rounding: str) -> torch.Tensor:
    """fp32 values kept to TF32's 10 stored mantissa bits: 'truncate' drops the low 13 bits (what
    a tensor core reads from an fp32 operand), 'nearest' rounds half away from zero (the
    cvt.rna.tf32 that splits an operand for tf32x3)."""
    bits = x.contiguous().view(torch.int32)
    if rounding == "nearest":
        bits = bits + (1 << 12)  # half of the lowest kept bit, added to the magnitude bits
    return (bits & ~0x1FFF).view(torch.float32)


def model_dot(a: torch.Tensor, b: torch.Tensor, precision: str) -> torch.Tensor:
    """a @ b the way tl.dot computes it for fp32 operands, accumulated in fp32."""
    if precision == "ieee":
        return a @ b
    if precision == "tf32":
        return to_tf32(a, "truncate") @ to_tf32(b, "truncate")
    big_a, big_b = to_tf32(a, "nearest"), to_tf32(b, "nearest")
    small_a, small_b = to_tf32(a - big_a, "nearest"), to_tf32(b - big_b, "nearest")
    return big_a @ small_b + small_a @ big_b + big_a @ big_b


def test_tf32_model_keeps_ten_mantissa_bits():
    x = torch.tensor([1.0, 1.0 + 2.0 ** -10, 1.0 + 2.0 ** -11, -(1.0 + 2.0 ** -11), 3.0 + 2.0 ** -12])
    assert to_tf32(x, "truncate").tolist() == [1.0, 1.0 + 2.0 ** -10, 1.0, -1.0, 3.0]
    assert to_tf32(x, "nearest").tolist() == [1.0, 1.0 + 2.0 ** -10, 1.0 + 2.0 ** -10, -(1.0 + 2.0 ** -10), 3.0]


@pytest.mark.parametrize("k", [64, 1024])
def test_documented_accuracy_of_each_mode(k):
    """PRECISION.md's table: relative max error of an (64, k) @ (k, 64) product of standard normal
    fp32 inputs against float64. tf32x3 stays within fp32's bound; one TF32 product does not,
    and needs fp16's."""
    g = torch.Generator().manual_seed(k)
    a, b = torch.randn(64, k, generator=g), torch.randn(k, 64, generator=g)
    exact = a.double() @ b.double()
    errors = {mode: relative_max_error(model_dot(a, b, mode), exact) for mode in ("ieee", "tf32x3", "tf32")}
    assert errors["ieee"] <= ACCURACY["ieee"]
    assert errors["tf32x3"] <= ACCURACY["tf32x3"]
    assert ACCURACY["ieee"] < errors["tf32"] <= ACCURACY["tf32"]
    assert errors["tf32x3"] < errors["tf32"] / 50
