"""The compiled extension bilinear_kernels._C (csrc/) and its use by the dense path.

CPU (CI): the extension is built where the toolchain is, imports, reports its versions, and refuses
clearly without a GPU; the dense path falls back to torch.linalg.eigh. GPU: results against
torch.linalg.eigh in float64 on random and adversarial batches, every algorithm, both dtypes,
vectors on and off, non-default streams, CuPy in and out.
"""
from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

import bilinear_kernels as bk
from bilinear_kernels import extension
from bilinear_kernels.solvers import cusolver, dense

ROOT = Path(__file__).resolve().parents[1]
CUDA = torch.cuda.is_available()
EXT = extension.load()

skip_if_no_cuda = pytest.mark.skipif(not CUDA, reason="needs a CUDA device")
skip_if_cuda = pytest.mark.skipif(CUDA, reason="checks behaviour on a machine without a GPU")
needs_extension = pytest.mark.skipif(EXT is None, reason=f"extension unavailable: {extension.unavailable_reason()}")


def gpu_test(fn):
    """A test of the extension on a CUDA device: skipped without one."""
    return pytest.mark.gpu(skip_if_no_cuda(needs_extension(fn)))


def _extension_required() -> bool:
    """CI machines have nvcc and install the cuSOLVER wheel: there the extension must be built."""
    ci = os.environ.get("CI", "").strip().lower() in ("1", "true", "yes")
    forced = os.environ.get("BILINEAR_KERNELS_BUILD_EXTENSION", "").strip() == "1"
    return (ci or forced) and shutil.which("nvcc") is not None


def _run_python(code: str, **env) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=300,
                          env={**os.environ, "PYTHONPATH": str(ROOT), **env})


# -- build, load, report ------------------------------------------------------------------------


def test_extension_is_built_where_the_toolchain_is():
    if not _extension_required():
        pytest.skip("only required on CI or with BILINEAR_KERNELS_BUILD_EXTENSION=1 (and nvcc on PATH)")
    status = extension.extension_status()
    assert status["loaded"], f"nvcc is here but the extension is not usable: {status['error']}"


def test_status_reports_build_and_versions():
    status = bk.backends()["extension"]
    assert status == extension.extension_status()
    assert status["loaded"] == (EXT is not None)
    if EXT is None:
        assert isinstance(status["error"], str) and status["error"]
        return
    assert status["built"] and status["error"] is None
    code = EXT.CUSOLVER_BUILD_VERSION
    assert status["cusolver_build"] == f"{code // 1000}.{code % 1000 // 100}.{code % 100}"
    major, minor, patch = (int(x) for x in status["cusolver_runtime"].split("."))
    # the loaded library is the major version the module was linked against
    assert major == code // 1000 and minor >= 0 and patch >= 0
    assert status["cuda_runtime_build"].split(".")[0] == str(EXT.CUDART_BUILD_VERSION // 1000)
    assert status["syev_batched"] == (code >= 11701)


def test_disable_switch_keeps_the_extension_unloaded():
    out = _run_python(
        "import json, torch, bilinear_kernels as bk\n"
        "from bilinear_kernels.solvers import cusolver, dense\n"
        "s = bk.backends()['extension']\n"
        "try:\n"
        "    cusolver.eigh(torch.eye(3))\n"
        "    err = None\n"
        "except RuntimeError as e:\n"
        "    err = str(e)\n"
        "print(json.dumps([s['loaded'], s['error'], dense.eigh_backend(torch.eye(3)), err]))\n",
        BILINEAR_KERNELS_DISABLE_EXTENSION="1")
    assert out.returncode == 0, out.stderr
    loaded, error, backend, err = json.loads(out.stdout.strip().splitlines()[-1])
    assert loaded is False and "BILINEAR_KERNELS_DISABLE_EXTENSION" in error
    assert backend == "torch"
    assert err is not None and "BILINEAR_KERNELS_DISABLE_EXTENSION" in err


def test_unavailable_extension_raises_runtime_error(monkeypatch):
    monkeypatch.setattr(extension, "_load", lambda: (None, "not built (simulated)"))
    assert not cusolver.available()
    q = torch.eye(4, dtype=torch.float64)
    with pytest.raises(RuntimeError, match=r"unavailable: not built \(simulated\)"):
        cusolver.eigh(q)
    with pytest.raises(RuntimeError, match="unavailable"):
        dense.eigh(q[None], "cusolver")
    assert dense.eigh_backend(q[None]) == "torch"


# -- without a GPU: clear errors, never a crash --------------------------------------------------


@skip_if_cuda
@needs_extension
def test_low_level_calls_without_gpu_raise_runtime_error():
    with pytest.raises(RuntimeError, match="no usable CUDA GPU"):
        EXT.device_count()
    args = dict(device=0, stream=0, dtype="float32", n=8, batch=2, vectors=True, algorithm="auto", a=0, w=0)
    with pytest.raises(RuntimeError, match="no usable CUDA GPU"):
        EXT.workspace_bytes(**args)
    with pytest.raises(RuntimeError, match="no usable CUDA GPU"):
        EXT.eigh(**args, info=0, work=0, work_bytes=0)


@skip_if_cuda
@needs_extension
def test_public_calls_without_gpu_raise_runtime_error():
    q = torch.randn(3, 6, 6, dtype=torch.float64)
    q = q + q.mT
    with pytest.raises(RuntimeError, match="no usable CUDA GPU"):
        cusolver.eigh(q)
    with pytest.raises(RuntimeError, match="no usable CUDA GPU"):
        cusolver.eigvalsh(q)
    with pytest.raises(RuntimeError, match="no usable CUDA GPU"):
        dense.eigh(q, "cusolver")
    # decompose checks its argument first: cuSOLVER never takes CPU tensors, GPU or not
    layer = bk.BilinearLayer(torch.randn(8, 6, dtype=torch.float64), torch.randn(8, 6, dtype=torch.float64))
    with pytest.raises(ValueError, match="eigh_backend='cusolver' runs on CUDA tensors only; these are on cpu"):
        bk.decompose(layer, [0, 1], method="eigh", eigh_backend="cusolver")


@skip_if_cuda
def test_benchmark_refuses_without_cuda():
    out = subprocess.run([sys.executable, str(ROOT / "benchmarks" / "bench_eigh.py"), "--quick"], cwd=ROOT,
                         capture_output=True, text=True, timeout=300, env={**os.environ, "PYTHONPATH": str(ROOT)})
    assert out.returncode != 0
    assert "needs a CUDA GPU" in out.stderr and "Traceback" not in out.stderr


def test_benchmark_report_names_torchs_route_and_the_canary():
    from benchmarks import bench_eigh

    meta = {"dtype": "float32", "vectors": True, "device": "NVIDIA H100", "capability": "9.0", "torch": "2.11.0",
            "torch_batches_every_size": False, "torch_cuda": "12.8", "extension": {}, "date": "2026-12-05",
            "fast_paths": [{"path": "cusolver_eigh", "dtype": "float32", "mode": "-", "device": "cuda:0",
                            "state": "passed", "canary_ms": 3.5, "canary_error": 2e-7, "tolerance": 1.9e-5,
                            "failure": None}]}
    row = {"batch": 64, "n": 1024, "row": "torch", "route": dense.torch_eigh_route(1024, 64, torch.float32, "2.11.0"),
           "auto_backend": "cusolver", "launched": {"launches": 1280, "names": ["syevd_kernel"]}, "seconds": 1.0,
           "matrices_per_second": 64.0, "gflops": 1.0,
           "speedup_of_ours": 2.0, "max_rel_eigenvalue_error": 1e-7}
    text = bench_eigh.markdown(meta, [row])
    assert "torch 2.11.0 (loops over the matrices above n = 32;" in text
    assert "| torch (syevd_loop, 1280 GPU launches; auto: cusolver) |" in text
    assert "cuSOLVER eigh canary: float32 passed in 3.5 ms (error 2e-07, tolerance 1.9e-05)." in text
    assert "canary: not run." in bench_eigh.markdown({**meta, "fast_paths": []}, [row])
    assert "(syevd_loop, launches not profiled;" in bench_eigh.markdown(meta, [{**row, "launched": {"error": "x"}}])


# -- argument checks (before any GPU work) -------------------------------------------------------


@pytest.mark.parametrize("bad, error, match", [
    (np.eye(3), TypeError, "torch tensor or a CuPy array"),
    (torch.ones(2, 3), ValueError, r"square matrices \(\.\.\., n, n\), got shape \(2, 3\)"),
    (torch.ones(3), ValueError, r"got shape \(3,\)"),
    (torch.ones(2, 3, 3, dtype=torch.int32), TypeError, "float32 or float64, got torch.int32"),
    (torch.ones(2, 3, 3, dtype=torch.float16), TypeError, "float32 or float64, got torch.float16"),
])
def test_bad_input_is_refused(bad, error, match):
    with pytest.raises(error, match=match):
        cusolver.eigh(bad)


def test_bad_options_are_refused():
    q = torch.eye(3)
    with pytest.raises(ValueError, match="algorithm must be one of"):
        cusolver.eigh(q, algorithm="qr")
    with pytest.raises(ValueError, match="max_sweeps must be a positive int"):
        cusolver.eigh(q, max_sweeps=0)
    with pytest.raises(ValueError, match="eigh backend must be one of"):
        dense.eigh(q[None], "magma")


@needs_extension
def test_algorithm_rule_and_batch_limit():
    limit = 2**31 - 1
    for n in (1, 32, 33, 512, 4096, 46340, 46341):
        assert EXT.max_batch_per_call(n) == limit // (n * n)
    assert EXT.max_batch_per_call(46341) == 0  # one matrix no longer fits 32-bit indexing
    batched = "syev_batched" if EXT.HAS_SYEV_BATCHED else None
    assert EXT.choose_algorithm(64, 1) == "syevd"
    assert EXT.choose_algorithm(64, 4096) == (batched or "syevd")
    assert EXT.choose_algorithm(16, 4096) == (batched or "syevj_batched")
    assert EXT.choose_algorithm(46341, 2) == "syevd"
    for name in EXT.ALGORITHMS[1:]:
        if name == "syev_batched" and not EXT.HAS_SYEV_BATCHED:
            continue
        assert EXT.choose_algorithm(64, 8, name) == name
    with pytest.raises(ValueError, match="32-bit"):
        EXT.choose_algorithm(46341, 2, "syevj_batched")
    with pytest.raises(ValueError, match="algorithm must be one of"):
        EXT.choose_algorithm(4, 2, "jacobi")


# -- the dense path's dispatch --------------------------------------------------------------------


def test_dense_auto_uses_torch_on_cpu(monkeypatch):
    def fail(*args, **kwargs):
        raise AssertionError("the cuSOLVER path must not run for CPU tensors")

    monkeypatch.setattr(cusolver, "eigh", fail)
    g = torch.Generator().manual_seed(0)
    q = torch.randn(5, 7, 7, dtype=torch.float64, generator=g)
    q = q + q.mT
    assert dense.eigh_backend(q) == "torch"
    values, vectors = dense.eigh(q)
    ref_values, ref_vectors = torch.linalg.eigh(q)
    assert torch.equal(values, ref_values) and torch.equal(vectors, ref_vectors)
    assert dense.eigh_backend(q, "cusolver") == "cusolver"  # an explicit choice is honoured


def test_decompose_threads_eigh_backend():
    g = torch.Generator().manual_seed(1)
    w, v = torch.randn(12, 9, generator=g), torch.randn(12, 9, generator=g)
    layer = bk.BilinearLayer(w, v, torch.randn(4, 12, generator=g))
    auto = bk.decompose(layer, [0, 2, 3], k=4, method="eigh")
    forced = bk.decompose(layer, [0, 2, 3], k=4, method="eigh", eigh_backend="torch")
    assert torch.equal(auto.eigenvalues, forced.eigenvalues)
    assert torch.equal(auto.eigenvectors, forced.eigenvectors)
    with pytest.raises(ValueError, match="eigh_backend must be one of"):
        bk.decompose(layer, [0], method="eigh", eigh_backend="lapack")


# -- GPU: correctness against torch.linalg.eigh in float64 ----------------------------------------

EPS = {torch.float32: torch.finfo(torch.float32).eps, torch.float64: torch.finfo(torch.float64).eps}
_REFERENCE: dict = {}


def _random_symmetric(batch: int, n: int, seed: int, device="cuda") -> torch.Tensor:
    g = torch.Generator(device=device).manual_seed(seed)
    a = torch.randn(batch, n, n, dtype=torch.float64, device=device, generator=g)
    return (a + a.mT) / 2


def _adversarial(batch: int, n: int, seed: int, device="cuda") -> torch.Tensor:
    """Matrices known to trouble eigensolvers, cycling through kinds along the batch: zero,
    identity, one eigenvalue repeated, ± pairs (a bilinear form's inertia), a tight cluster, rank
    one, diagonal, eigenvalues over 12 decades, and tiny and huge scales."""
    g = torch.Generator().manual_seed(seed)
    f64 = dict(dtype=torch.float64)
    lams = []
    for i in range(batch):
        kind = i % 10
        if kind in (0, 6):
            lam = torch.zeros(n, **f64)  # kind 6 is replaced by a diagonal matrix below
        elif kind == 1:
            lam = torch.ones(n, **f64)
        elif kind == 2:
            lam = torch.full((n,), 3.0, **f64)
            lam[: n // 3] = -1.0
        elif kind == 3:
            half = torch.rand(n // 2 + 1, generator=g, **f64)
            lam = torch.cat([half, -half])[:n]
        elif kind == 4:
            lam = 1.0 + 1e-7 * torch.arange(n, **f64)
        elif kind == 5:
            lam = torch.zeros(n, **f64)
            lam[-1] = 5.0
        elif kind == 7:
            lam = torch.logspace(-12, 0, n, **f64) if n > 1 else torch.ones(1, **f64)
        else:
            lam = torch.randn(n, generator=g, **f64) * (1e-8 if kind == 8 else 1e8)
        lams.append(lam)
    lam = torch.stack(lams).to(device)
    q, _ = torch.linalg.qr(torch.randn(batch, n, n, generator=g, **f64).to(device))
    out = (q * lam[:, None, :]) @ q.mT
    out = (out + out.mT) / 2
    diagonal = torch.arange(6, batch, 10, device=device)
    out[diagonal] = torch.diag_embed(torch.randn(len(diagonal), n, generator=g, **f64).to(device))
    return out


def _reference_values(a64: torch.Tensor, chunk: int = 256) -> torch.Tensor:
    return torch.cat([torch.linalg.eigvalsh(a64[i:i + chunk]) for i in range(0, a64.shape[0], chunk)])


def _check(a64: torch.Tensor, values, vectors, dtype, ref_values=None, chunk: int = 256):
    """Eigenvalues within c·n·eps·‖A‖ of float64 torch.linalg.eigh; eigenvectors through the
    residual ‖A v − λ v‖ and orthonormality (sign- and degeneracy-free), each matrix by its norm."""
    n = a64.shape[-1]
    ref = _reference_values(a64, chunk) if ref_values is None else ref_values
    norm = ref.abs().amax(dim=-1).clamp_min(torch.finfo(torch.float64).tiny)
    tol = 4 * n * EPS[dtype]
    assert values.dtype == dtype and values.shape == ref.shape
    err = ((values.double() - ref).abs().amax(dim=-1) / norm)
    assert float(err.max()) <= tol, f"eigenvalue error {float(err.max()):.2e} > {tol:.2e} at {int(err.argmax())}"
    if vectors is None:
        return
    assert vectors.dtype == dtype and vectors.shape == a64.shape
    for s in range(0, a64.shape[0], chunk):
        a, v, lam = a64[s:s + chunk], vectors[s:s + chunk].double(), values[s:s + chunk].double()
        resid = torch.linalg.vector_norm(a @ v - v * lam[:, None, :], dim=-2).amax(dim=-1) / norm[s:s + chunk]
        assert float(resid.max()) <= tol, f"residual {float(resid.max()):.2e} > {tol:.2e}"
        eye = torch.eye(n, dtype=torch.float64, device=a.device)
        ortho = (v.mT @ v - eye).abs().amax()
        assert float(ortho) <= tol, f"orthonormality error {float(ortho):.2e} > {tol:.2e}"


def _cached(kind: str, batch: int, n: int, dtype):
    """The problem in `dtype` and float64 eigenvalues of exactly that input, kept for the next
    parametrization (vectors on/off) of the same problem."""
    key = (kind, batch, n, dtype)
    if key not in _REFERENCE:
        _REFERENCE.clear()  # one problem and its reference in memory at a time
        a64 = _random_symmetric(batch, n, seed=n) if kind == "random" else _adversarial(batch, n, seed=n)
        a = a64.to(dtype)
        del a64
        _REFERENCE[key] = a, _reference_values(a.double())
    return _REFERENCE[key]


# vectors varies fastest, the shape slowest, so each problem's reference is computed once per dtype
SHAPES = [(1, 1), (4096, 1), (1, 31), (4096, 31), (1, 32), (4096, 32), (1, 33), (4096, 33), (1, 64), (4096, 64),
          (1, 512), (64, 512), (1, 1024), (8, 1024),
          pytest.param(4096, 512, marks=pytest.mark.slow), pytest.param(512, 1024, marks=pytest.mark.slow)]


@gpu_test
@pytest.mark.parametrize("vectors", [True, False])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("batch, n", SHAPES)
def test_random_batches_match_torch(batch, n, dtype, vectors):
    a, ref = _cached("random", batch, n, dtype)
    values, vecs = cusolver.eigh(a) if vectors else (cusolver.eigvalsh(a), None)
    _check(a.double(), values, vecs, dtype, ref_values=ref)


@gpu_test
@pytest.mark.parametrize("vectors", [True, False])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("batch, n", [(40, 1), (40, 31), (40, 32), (40, 33), (40, 64), (20, 512), (4096, 33)])
def test_adversarial_batches_match_torch(batch, n, dtype, vectors):
    a, ref = _cached("adversarial", batch, n, dtype)
    values, vecs = cusolver.eigh(a) if vectors else (cusolver.eigvalsh(a), None)
    _check(a.double(), values, vecs, dtype, ref_values=ref)


@gpu_test
@pytest.mark.parametrize("algorithm, n", [("syevd", 8), ("syevd", 100), ("syev_batched", 8), ("syev_batched", 100),
                                          ("syevj_batched", 8), ("syevj_batched", 32)])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_every_algorithm_matches_torch(algorithm, n, dtype):
    if algorithm == "syev_batched" and not EXT.HAS_SYEV_BATCHED:
        pytest.skip("built against cuSOLVER < 11.7.1")
    a64 = _random_symmetric(50, n, seed=7)
    values, vectors = cusolver.eigh(a64.to(dtype), algorithm=algorithm)
    _check(a64.to(dtype).double(), values, vectors, dtype)


@gpu_test
def test_reads_the_lower_triangle_and_leaves_input_alone():
    a64 = _random_symmetric(16, 20, seed=3)
    junk = a64.clone()
    upper = torch.ones(20, 20, dtype=torch.bool, device="cuda").triu(1)
    junk[:, upper] = 1e3  # torch.linalg.eigh's default ignores the strict upper triangle too
    before = junk.clone()
    values, vectors = cusolver.eigh(junk)
    assert torch.equal(junk, before)
    _check(a64, values, vectors, torch.float64)


@gpu_test
def test_batch_dimensions_and_non_contiguous_input():
    a64 = _random_symmetric(6, 12, seed=4).reshape(2, 3, 12, 12)
    view = a64.transpose(0, 1)  # (3, 2, 12, 12), not contiguous
    values, vectors = cusolver.eigh(view)
    assert values.shape == (3, 2, 12) and vectors.shape == (3, 2, 12, 12)
    _check(view.reshape(6, 12, 12), values.reshape(6, 12), vectors.reshape(6, 12, 12), torch.float64)
    empty_values, empty_vectors = cusolver.eigh(torch.empty(0, 5, 5, device="cuda"))
    assert empty_values.shape == (0, 5) and empty_vectors.shape == (0, 5, 5)


@gpu_test
@pytest.mark.slow
def test_batches_past_the_32_bit_limit_are_chunked():
    n = 4096
    per_call = EXT.max_batch_per_call(n)
    batch = per_call + 3
    g = torch.Generator(device="cuda").manual_seed(5)
    a = torch.randn(batch, n, n, dtype=torch.float32, device="cuda", generator=g)
    a = (a + a.mT) / 2
    values = cusolver.eigvalsh(a)
    pick = torch.tensor([0, per_call - 1, per_call, batch - 1], device="cuda")  # both sides of the chunk seam
    _check(a[pick].double(), values[pick], None, torch.float32)


@gpu_test
def test_non_default_streams():
    EXT.clear_handles()
    streams = [torch.cuda.Stream(), torch.cuda.Stream()]
    results = []
    for i, s in enumerate(streams):
        with torch.cuda.stream(s):
            a = _random_symmetric(256, 48, seed=10 + i)
            results.append((a, *cusolver.eigh(a.float())))
    torch.cuda.synchronize()
    assert EXT.cached_handles() == 2  # one handle per stream
    for a, values, vectors in results:
        _check(a.float().double(), values, vectors, torch.float32)


@gpu_test
def test_failures_name_the_matrix():
    a = _random_symmetric(8, 16, seed=6)
    a[5, 2, 3] = float("nan")
    with pytest.raises(ValueError, match="first at batch index 5"):
        cusolver.eigh(a)
    # one Jacobi sweep cannot reach machine precision: cuSOLVER's info array reports it
    b = _random_symmetric(8, 32, seed=8)
    with pytest.raises(EXT.EighError, match=r"could not decompose matrix \d+ of 8"):
        cusolver.eigh(b, algorithm="syevj_batched", max_sweeps=1)


@gpu_test
def test_dense_auto_uses_the_extension_where_torch_loops():
    # torch <= 2.11 loops one matrix at a time above n = 32; from 2.12 it batches every size
    loops = dense.torch_version() < dense.TORCH_BATCHES_EVERY_SIZE
    q = _random_symmetric(4, 40, seed=9)
    assert dense.eigh_backend(q) == ("cusolver" if loops else "torch")
    assert dense.eigh_backend(_random_symmetric(4, 10, seed=9)) == "torch"  # torch batches these
    assert dense.eigh_backend(q.requires_grad_()) == "torch"  # autograd stays with torch
    values, _ = dense.eigh(q.detach(), "cusolver")  # behind its canary, which passes (strict mode)
    torch.testing.assert_close(values, torch.linalg.eigvalsh(q.detach()), rtol=1e-10, atol=1e-10)
    g = torch.Generator(device="cuda").manual_seed(2)
    layer = bk.BilinearLayer(torch.randn(24, 16, device="cuda", generator=g, dtype=torch.float64),
                             torch.randn(24, 16, device="cuda", generator=g, dtype=torch.float64))
    ours = bk.decompose(layer, [0, 5, 9], k=6, method="eigh", eigh_backend="cusolver")
    ref = bk.decompose(layer, [0, 5, 9], k=6, method="eigh", eigh_backend="torch")
    torch.testing.assert_close(ours.eigenvalues, ref.eigenvalues, rtol=1e-10, atol=1e-10)
    overlap = (ours.eigenvectors * ref.eigenvectors).sum(dim=-2).abs()
    torch.testing.assert_close(overlap, torch.ones_like(overlap), rtol=0, atol=1e-8)


@gpu_test
def test_cupy_in_cupy_out():
    cupy = pytest.importorskip("cupy")
    a64 = _random_symmetric(128, 40, seed=11)
    with cupy.cuda.Stream():
        a = cupy.from_dlpack(a64.float())
        values, vectors = cusolver.eigh(a)
        only = cusolver.eigvalsh(a)
        cupy.cuda.get_current_stream().synchronize()
    assert isinstance(values, cupy.ndarray) and isinstance(vectors, cupy.ndarray) and isinstance(only, cupy.ndarray)
    v_t, w_t = torch.from_dlpack(vectors), torch.from_dlpack(values)
    _check(a64.float().double(), w_t, v_t, torch.float32)
    _check(a64.float().double(), torch.from_dlpack(only), None, torch.float32)


@pytest.mark.gpu
@needs_extension
@pytest.mark.skipif(torch.cuda.device_count() < 2, reason="needs two CUDA devices")
def test_second_device_leaves_current_device_alone():
    torch.cuda.set_device(0)
    a64 = _random_symmetric(32, 24, seed=12, device="cuda:1")
    values, vectors = cusolver.eigh(a64)
    assert torch.cuda.current_device() == 0 and values.device == a64.device
    _check(a64, values, vectors, torch.float64)
