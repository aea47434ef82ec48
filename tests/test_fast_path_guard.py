"""fast_path_guard: every fast path (Triton forward, backward and Q construction, cuSOLVER eigh)
runs a canary against its twin the first time it runs for a (dtype, mode, device); a path that
raises or returns wrong numbers is switched off with one warning and its twin gives the answer;
BILINEAR_KERNELS_STRICT=1 raises instead; no second canary.

The paths are driven on CPU by fault injection: the "can this path take these tensors" checks are
patched so the guarded path is taken, and the kernel entry points are replaced by fakes that
raise, return wrong numbers, or return the twin's (correct) numbers. Oracles are float64 twins."""
import importlib
import types
import warnings

import pytest
import torch

import bilinear_kernels as bk
from bilinear_kernels import fast_path_guard as guard
from bilinear_kernels import functional, interaction
from bilinear_kernels.solvers import cusolver, dense



@pytest.fixture
def forward_ops():
    """The Triton forward's module (the fused path's autograd Function, kernels and canaries)."""
    pytest.importorskip("triton")
    return importlib.import_module("bilinear_kernels.ops.bilinear_forward")


@pytest.fixture
def interaction_ops():
    pytest.importorskip("triton")
    return importlib.import_module("bilinear_kernels.ops.interaction")


def out_of_resources(required, limit):
    """What Triton raises when a configuration does not fit the device."""
    return importlib.import_module("triton.runtime.errors").OutOfResources(required, limit, "shared memory")

FP32_TOL = 1e-5


@pytest.fixture(autouse=True)
def fresh_guard(monkeypatch):
    """No strict mode (the suite sets it) and no checks left from other tests."""
    monkeypatch.delenv(guard.STRICT_SWITCH, raising=False)
    guard.reset()
    yield
    guard.reset()


def relative(got, want):
    return (got.double() - want.double()).abs().max().item() / want.double().abs().max().item()


def guard_warnings(record):
    return [w for w in record if issubclass(w.category, RuntimeWarning) and "fast path" in str(w.message)]


def checks(path):
    """The checks bk.backends() reports for a path, each with its key's parts."""
    found = bk.backends()["fast_paths"][path.name]["checks"]
    return [dict(zip(("dtype", "mode", "device"), key.split()), **check) for key, check in found.items()]


class Counting:
    """A fake kernel: counts its calls and does what `behave` says."""

    def __init__(self, behave):
        self.behave, self.calls = behave, 0

    def __call__(self, *args, **kwargs):
        self.calls += 1
        return self.behave(*args, **kwargs)


def raising(exc):
    def fail(*args, **kwargs):
        raise exc
    return fail


def counting_canary(monkeypatch, module, name):
    """Wrap module.name (a canary) so its runs are counted."""
    real = getattr(module, name)
    counter = Counting(real)
    monkeypatch.setattr(module, name, counter)
    return counter


# -- Triton forward ---------------------------------------------------------------------------

@pytest.fixture
def forward_inputs(monkeypatch):
    """Float32 CPU inputs that the forward dispatcher sends to the fused (guarded) path."""
    monkeypatch.setattr(functional, "triton_unsupported_reason", lambda *tensors: None)
    g = torch.Generator().manual_seed(0)
    x, w, v, p = (torch.randn(*s, generator=g) for s in ((6, 5), (7, 5), (7, 5), (3, 7)))
    want = functional.bilinear_reference(x.double(), w.double(), v.double(), p.double())
    return (x, w, v, p), want


def wrong_hidden(forward_ops):
    return lambda *args: forward_ops.bilinear_hidden_reference(*args) * 1.01


@pytest.mark.parametrize("fault", ["raises", "wrong numbers"])
def test_forward_fault_gives_the_right_answer_with_one_warning(monkeypatch, forward_inputs, fault, forward_ops):
    inputs, want = forward_inputs
    kernel = Counting(raising(out_of_resources(262144, 232448)) if fault == "raises" else wrong_hidden(forward_ops))
    monkeypatch.setattr(forward_ops, "bilinear_hidden_triton", kernel)
    canary = counting_canary(monkeypatch, forward_ops, "forward_canary")
    with warnings.catch_warnings(record=True) as record:
        warnings.simplefilter("always")
        first = bk.bilinear(*inputs)
        second = bk.bilinear(*inputs)
    assert relative(first, want) <= FP32_TOL and relative(second, want) <= FP32_TOL
    found = guard_warnings(record)
    assert len(found) == 1
    message = str(found[0].message)
    assert "triton_forward" in message and "BILINEAR_KERNELS_DISABLE_TRITON=1" in message
    assert ("OutOfResources" in message) if fault == "raises" else ("tolerance" in message)
    assert canary.calls == 1 and kernel.calls == 1  # the canary alone touched the kernel
    assert functional.bilinear_forward_kernel(*inputs) is functional.bilinear_reference
    (check,) = checks(guard.TRITON_FORWARD)
    assert check["state"] == "failed" and check["dtype"] == "float32" and check["device"] == "cpu"
    assert check["canary_ms"] is not None and check["canary_ms"] >= 0


def test_forward_passing_path_runs_one_canary_and_is_used(monkeypatch, forward_inputs, forward_ops):
    inputs, want = forward_inputs
    kernel = Counting(forward_ops.bilinear_hidden_reference)  # a correct kernel
    monkeypatch.setattr(forward_ops, "bilinear_hidden_triton", kernel)
    canary = counting_canary(monkeypatch, forward_ops, "forward_canary")
    with warnings.catch_warnings(record=True) as record:
        warnings.simplefilter("always")
        for _ in range(3):
            assert relative(bk.bilinear(*inputs), want) <= FP32_TOL
    assert not guard_warnings(record)
    assert canary.calls == 1 and kernel.calls == 1 + 3  # one canary, then every call on the kernel
    (check,) = checks(guard.TRITON_FORWARD)
    assert check["state"] == "passed" and check["canary_error"] <= check["tolerance"] == FP32_TOL


def test_forward_failing_after_its_canary_hands_over_to_the_twin(monkeypatch, forward_inputs, forward_ops):
    inputs, want = forward_inputs

    def only_small(x, *rest):  # right on the canary, a launch failure on the real call
        if x.shape[0] == forward_ops.CANARY_SHAPE[0]:
            return forward_ops.bilinear_hidden_reference(x, *rest)
        raise RuntimeError("CUDA error: an illegal memory access was encountered")

    monkeypatch.setattr(forward_ops, "bilinear_hidden_triton", only_small)
    with pytest.warns(RuntimeWarning, match="triton_forward .* raised RuntimeError: CUDA error") as record:
        assert relative(bk.bilinear(*inputs), want) <= FP32_TOL
    assert len(guard_warnings(record)) == 1
    assert checks(guard.TRITON_FORWARD)[0]["state"] == "failed"


def test_forward_strict_mode_raises(monkeypatch, forward_inputs, forward_ops):
    inputs, _ = forward_inputs
    monkeypatch.setenv(guard.STRICT_SWITCH, "1")
    monkeypatch.setattr(forward_ops, "bilinear_hidden_triton", wrong_hidden(forward_ops))
    canary = counting_canary(monkeypatch, forward_ops, "forward_canary")
    for _ in range(2):  # the path stays failed, and each call says so
        with pytest.raises(guard.FastPathError, match="triton_forward .*tolerance.*BILINEAR_KERNELS_STRICT=1"):
            bk.bilinear(*inputs)
    assert canary.calls == 1
    assert bk.backends()["strict"] is True


def test_argument_errors_are_the_callers():
    def run(fast):
        return guard.run(guard.TRITON_FORWARD, torch.float32, "tf32x3", "cpu", fast, lambda *a: "twin", (),
                         lambda: (0.0, 1.0))

    assert run(lambda: "fast") == "fast"
    for error in (ValueError("bad argument"), TypeError("bad argument"), torch.OutOfMemoryError("bad argument")):
        with pytest.raises(type(error), match="bad argument"):
            run(raising(error))
    assert checks(guard.TRITON_FORWARD)[0]["state"] == "passed"
    assert run(lambda: "fast") == "fast"


def test_a_nan_canary_fails(monkeypatch, forward_inputs, forward_ops):
    inputs, want = forward_inputs
    monkeypatch.setattr(forward_ops, "bilinear_hidden_triton",
                        lambda *a: torch.full_like(forward_ops.bilinear_hidden_reference(*a), float("nan")))
    with pytest.warns(RuntimeWarning, match="differs .* by nan"):
        assert relative(bk.bilinear(*inputs), want) <= FP32_TOL


# -- Triton backward ----------------------------------------------------------------------------

@pytest.mark.parametrize("fault", ["raises", "wrong numbers"])
def test_backward_fault_gives_the_right_gradients_with_one_warning(monkeypatch, forward_inputs, fault, forward_ops):
    inputs, _ = forward_inputs
    monkeypatch.setattr(forward_ops, "bilinear_hidden_triton", forward_ops.bilinear_hidden_reference)

    def wrong(*args, **kwargs):
        g, h = forward_ops.bilinear_hidden_grad_reference(*args, **kwargs)
        return -g, h

    kernel = Counting(raising(RuntimeError("triton.compiler.errors.CompilationError: at 12:4")) if fault == "raises"
                      else wrong)
    monkeypatch.setattr(forward_ops, "bilinear_hidden_grad_triton", kernel)
    canary = counting_canary(monkeypatch, forward_ops, "backward_canary")
    leaves = [t.clone().requires_grad_() for t in inputs]
    leaves64 = [t.double().requires_grad_() for t in inputs]
    grad_y = torch.randn(6, 3, generator=torch.Generator().manual_seed(1))
    with warnings.catch_warnings(record=True) as record:
        warnings.simplefilter("always")
        for _ in range(2):
            for t in leaves:
                t.grad = None
            bk.bilinear(*leaves).backward(grad_y)
    functional.bilinear_reference(*leaves64).backward(grad_y.double())
    for got, want in zip(leaves, leaves64):
        assert relative(got.grad, want.grad) <= FP32_TOL
    found = guard_warnings(record)
    assert len(found) == 1 and "triton_backward" in str(found[0].message)
    assert canary.calls == 1 and kernel.calls == 1
    assert checks(guard.TRITON_BACKWARD)[0]["state"] == "failed"
    assert checks(guard.TRITON_FORWARD)[0]["state"] == "passed"


def test_backward_strict_mode_raises(monkeypatch, forward_inputs, forward_ops):
    inputs, _ = forward_inputs
    monkeypatch.setenv(guard.STRICT_SWITCH, "1")
    monkeypatch.setattr(forward_ops, "bilinear_hidden_triton", forward_ops.bilinear_hidden_reference)
    monkeypatch.setattr(forward_ops, "bilinear_hidden_grad_triton", raising(RuntimeError("CUDA error: launch failure")))
    leaves = [t.clone().requires_grad_() for t in inputs]
    y = bk.bilinear(*leaves)
    with pytest.raises(guard.FastPathError, match="triton_backward .*CUDA error: launch failure"):
        y.sum().backward()


# -- Triton Q construction ----------------------------------------------------------------------

@pytest.fixture
def interaction_layer(monkeypatch):
    g = torch.Generator().manual_seed(2)
    w, v, p = (torch.randn(*s, generator=g) for s in ((9, 6), (9, 6), (4, 9)))
    want = bk.interaction_matrices(bk.BilinearLayer(w.double(), v.double(), p.double()), [0, 2, 3])
    monkeypatch.setattr(interaction, "triton_unsupported_reason", lambda *tensors: None)
    return bk.BilinearLayer(w, v, p), want


@pytest.mark.parametrize("fault", ["raises", "wrong numbers"])
def test_interaction_fault_gives_the_right_matrices_with_one_warning(monkeypatch, interaction_layer, fault, interaction_ops):
    layer, want = interaction_layer

    def wrong(w, v, c):
        return interaction.build_interaction_reference(w, v, c).flip(-1)

    kernel = Counting(raising(out_of_resources(300000, 232448)) if fault == "raises" else wrong)
    monkeypatch.setattr(interaction_ops, "build_interaction_triton", kernel)
    canary = counting_canary(monkeypatch, interaction, "interaction_canary")
    with warnings.catch_warnings(record=True) as record:
        warnings.simplefilter("always")
        for _ in range(2):
            assert relative(bk.interaction_matrices(layer, [0, 2, 3]), want) <= FP32_TOL
    found = guard_warnings(record)
    assert len(found) == 1 and "triton_interaction" in str(found[0].message)
    assert canary.calls == 1 and kernel.calls == 1
    assert interaction.interaction_kernel(layer.w, layer.v, layer.p) is interaction.build_interaction_reference


def test_interaction_passing_path_is_used(monkeypatch, interaction_layer, interaction_ops):
    layer, want = interaction_layer
    kernel = Counting(interaction.build_interaction_reference)
    monkeypatch.setattr(interaction_ops, "build_interaction_triton", kernel)
    canary = counting_canary(monkeypatch, interaction, "interaction_canary")
    for _ in range(2):
        assert relative(bk.interaction_matrices(layer, [0, 2, 3]), want) <= FP32_TOL
    assert canary.calls == 1 and kernel.calls == 1 + 2
    assert checks(guard.TRITON_INTERACTION)[0]["state"] == "passed"


def test_interaction_strict_mode_raises(monkeypatch, interaction_layer, interaction_ops):
    layer, _ = interaction_layer
    monkeypatch.setenv(guard.STRICT_SWITCH, "1")
    monkeypatch.setattr(interaction_ops, "build_interaction_triton", raising(out_of_resources(1, 0)))
    with pytest.raises(guard.FastPathError, match="triton_interaction .*OutOfResources"):
        bk.interaction_matrices(layer, [0])


# -- cuSOLVER eigh ------------------------------------------------------------------------------

@pytest.fixture
def symmetric_batch(monkeypatch):
    """A float64 CPU batch that dense.eigh(q, "cusolver") sends to the guarded cuSOLVER path."""
    monkeypatch.setattr(cusolver, "available", lambda: True)
    g = torch.Generator().manual_seed(3)
    a = torch.randn(4, 9, 9, generator=g, dtype=torch.float64)
    return (a + a.mT) / 2


def test_eigh_missing_symbol_falls_back_to_torch_with_one_warning(monkeypatch, symmetric_batch):
    q = symmetric_batch
    solver = Counting(raising(AttributeError("undefined symbol: cusolverDnXsyevBatched")))
    monkeypatch.setattr(cusolver, "eigh", solver)
    canary = counting_canary(monkeypatch, dense, "eigh_canary")
    want_values, want_vectors = torch.linalg.eigh(q)
    with warnings.catch_warnings(record=True) as record:
        warnings.simplefilter("always")
        for _ in range(2):
            values, vectors = dense.eigh(q, "cusolver")
            torch.testing.assert_close(values, want_values, rtol=0, atol=1e-12)
            torch.testing.assert_close(vectors.abs(), want_vectors.abs(), rtol=0, atol=1e-10)
    found = guard_warnings(record)
    assert len(found) == 1
    assert "cusolver_eigh" in str(found[0].message) and "BILINEAR_KERNELS_DISABLE_EXTENSION=1" in str(found[0].message)
    assert canary.calls == 1 and solver.calls == 1


def test_eigh_wrong_numbers_fall_back_to_torch(monkeypatch, symmetric_batch):
    q = symmetric_batch

    def wrong(a):
        values, vectors = torch.linalg.eigh(a)
        return values * 1.001, vectors

    monkeypatch.setattr(cusolver, "eigh", wrong)
    with pytest.warns(RuntimeWarning, match="cusolver_eigh .*differs from torch.linalg.eigh"):
        values, _ = dense.eigh(q, "cusolver")
    torch.testing.assert_close(values, torch.linalg.eigvalsh(q), rtol=0, atol=1e-12)
    (check,) = checks(guard.CUSOLVER_EIGH)
    assert check["state"] == "failed" and check["mode"] == "-" and check["canary_error"] > check["tolerance"]


def test_eigh_passing_solver_runs_one_canary(monkeypatch, symmetric_batch):
    q = symmetric_batch
    solver = Counting(torch.linalg.eigh)
    monkeypatch.setattr(cusolver, "eigh", solver)
    canary = counting_canary(monkeypatch, dense, "eigh_canary")
    for _ in range(2):
        dense.eigh(q, "cusolver")
    assert canary.calls == 1 and solver.calls == 2 + 2  # two canary batches, then both calls
    (check,) = checks(guard.CUSOLVER_EIGH)
    assert check["state"] == "passed" and check["tolerance"] == pytest.approx(4 * 40 * torch.finfo(torch.float64).eps)


def test_eigh_strict_mode_raises(monkeypatch, symmetric_batch):
    monkeypatch.setenv(guard.STRICT_SWITCH, "1")
    monkeypatch.setattr(cusolver, "eigh", raising(OSError("libcusolver.so.12: cannot open shared object file")))
    with pytest.raises(guard.FastPathError, match="cusolver_eigh .*OSError: libcusolver"):
        dense.eigh(symmetric_batch, "cusolver")


# -- the eigh choice and torch's version --------------------------------------------------------

def cuda_stand_in(batch, n, dtype=torch.float32, requires_grad=False):
    """What eigh_backend reads of a CUDA batch, without a GPU."""
    return types.SimpleNamespace(is_cuda=True, dtype=dtype, shape=(batch, n, n), ndim=3,
                                 requires_grad=requires_grad, device=torch.device("cuda", 0))


@pytest.mark.parametrize("version, batch, n, dtype, route", [
    ("2.11.0+cu128", 64, 32, torch.float32, "syevj_batched"), ("2.11.0+cu128", 64, 32, torch.float64, "syevj_batched"),
    ("2.11.0+cu128", 64, 33, torch.float32, "syevj_loop"), ("2.11.0", 64, 512, torch.float32, "syevj_loop"),
    ("2.11.0", 64, 513, torch.float32, "syevd_loop"), ("2.9.1", 64, 64, torch.float64, "syevd_loop"),
    ("2.12.0", 64, 512, torch.float32, "syev_batched"), ("2.12.0", 64, 8, torch.float64, "syev_batched"),
    ("2.14.0+cu130", 4096, 1024, torch.float32, "syev_batched"), ("3.0.0", 2, 64, torch.float32, "syev_batched"),
    ("2.14.0", 1, 64, torch.float32, "single_matrix"), ("2.11.0", 1, 64, torch.float32, "single_matrix"),
])
def test_torch_eigh_route_follows_the_version(version, batch, n, dtype, route):
    assert dense.torch_eigh_route(n, batch, dtype, version) == route


@pytest.mark.parametrize("version, batch, n, backend", [
    ("2.11.0+cu128", 64, 512, "cusolver"),  # torch loops one matrix at a time: the extension batches
    ("2.11.0+cu128", 64, 1024, "cusolver"),
    ("2.11.0+cu128", 64, 32, "torch"),  # torch batches (Jacobi)
    ("2.11.0+cu128", 1, 512, "torch"),  # one matrix: nothing to batch
    ("2.12.0", 64, 512, "torch"),  # torch batches every size
    ("2.14.0+cu130", 4096, 64, "torch"),
])
def test_auto_prefers_the_extension_only_where_torch_loops(monkeypatch, version, batch, n, backend):
    monkeypatch.setattr(torch, "__version__", version)
    monkeypatch.setattr(cusolver, "available", lambda: True)
    assert dense.eigh_backend(cuda_stand_in(batch, n)) == backend
    assert dense.eigh_backend(cuda_stand_in(batch, n), "cusolver") == "cusolver"  # an explicit choice is honoured


def test_auto_keeps_torch_without_the_extension_a_gradient_or_a_working_path(monkeypatch):
    monkeypatch.setattr(torch, "__version__", "2.11.0")
    monkeypatch.setattr(cusolver, "available", lambda: False)
    assert dense.eigh_backend(cuda_stand_in(64, 512)) == "torch"
    monkeypatch.setattr(cusolver, "available", lambda: True)
    assert dense.eigh_backend(cuda_stand_in(64, 512, requires_grad=True)) == "torch"
    assert dense.eigh_backend(cuda_stand_in(64, 512, dtype=torch.float16)) == "torch"
    monkeypatch.setattr(cusolver, "eigh", raising(RuntimeError("cusolver error")))
    with pytest.warns(RuntimeWarning, match="cusolver_eigh"):
        guard.run(guard.CUSOLVER_EIGH, torch.float32, None, "cuda:0", cusolver.eigh, torch.linalg.eigh,
                  (torch.eye(2)[None],), lambda: dense.eigh_canary(torch.float32, "cpu"))
    assert dense.eigh_backend(cuda_stand_in(64, 512)) == "torch"  # switched off for this key
    assert dense.eigh_backend(cuda_stand_in(64, 512, dtype=torch.float64)) == "cusolver"  # another key (syevd loop)


def test_torch_version_refuses_what_it_cannot_read():
    assert dense.torch_version("2.12.0a0+git1234") == (2, 12)
    with pytest.raises(ValueError, match="cannot read a torch version from 'nightly'"):
        dense.torch_version("nightly")


# -- the real kernels under the interpreter -----------------------------------------------------

def test_the_real_canaries_pass_and_are_recorded(forward_ops):
    if not importlib.import_module("bilinear_kernels.ops._launch").INTERPRETING:
        pytest.skip("runs the kernels under TRITON_INTERPRET=1 (on a GPU the CUDA tests run them)")
    x, w, v = (torch.randn(*s, generator=torch.Generator().manual_seed(4)) for s in ((5, 4), (3, 4), (3, 4)))
    forward_ops.bilinear_fused(x.requires_grad_(), w, v).sum().backward()
    interaction.build_interaction_guarded(w, v, torch.ones(2, 3))
    for path in (guard.TRITON_FORWARD, guard.TRITON_BACKWARD, guard.TRITON_INTERACTION):
        (check,) = checks(path)
        assert check["state"] == "passed" and check["canary_error"] <= check["tolerance"]
        assert (check["dtype"], check["mode"], check["device"]) == ("float32", "tf32x3", "cpu")
        assert 0 < check["canary_ms"] < 60_000
    assert checks(guard.CUSOLVER_EIGH) == []
