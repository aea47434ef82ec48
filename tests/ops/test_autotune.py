"""Safe autotuning: what the autotune keys hold, pruning by a shared-memory estimate before
anything compiles, no specialization where it only multiplies compiles, operand rows padded to
aligned strides. (The estimate is checked against the compiler, and int64 offsets in the compiled
code, by the compile gate: tests/ops/test_compile_gate.py.)"""
import pytest
import torch

pytest.importorskip("triton")

from bilinear_kernels.ops import _launch  # noqa: E402
from bilinear_kernels.ops import bilinear_forward as forward  # noqa: E402
from bilinear_kernels.ops import interaction  # noqa: E402

CUDA = torch.cuda.is_available()
DEVICE = "cuda" if CUDA else "cpu"
kernel_runs = pytest.mark.skipif(not (CUDA or _launch.INTERPRETING), reason="needs CUDA or TRITON_INTERPRET=1")
MODULES = {"forward": forward, "interaction": interaction}
KERNELS = {"forward": [forward._hidden_kernel, forward._hidden_grad_kernel], "interaction": [interaction._interaction_kernel]}


@pytest.mark.parametrize("name", ["forward", "interaction"])
def test_keys_hold_precision_and_a_size_bucket(name):
    bucket = {"forward": "M_BUCKET", "interaction": "B_BUCKET"}[name]
    for kernel in KERNELS[name]:
        assert "PRECISION" in kernel.keys and bucket in kernel.keys


@pytest.mark.parametrize("name", ["forward", "interaction"])
def test_varying_sizes_are_not_specialized(name):
    varying = {"forward": {"M", "M_BUCKET"}, "interaction": {"B", "B_BUCKET"}}[name]
    for kernel in KERNELS[name]:
        fn = kernel.fn  # a JITFunction, or under the interpreter the InterpretedFunction given the same options
        listed = set(fn.do_not_specialize if hasattr(fn, "do_not_specialize") else fn.kwargs["do_not_specialize"])
        assert varying <= listed
        # the shapes and strides that decide vectorized loads stay specialized
        assert not any(n.startswith("stride") or n in ("N", "K", "D", "H") for n in listed)


@pytest.mark.parametrize("name", ["forward", "interaction"])
@pytest.mark.parametrize("klass", _launch.PRECISION_CLASSES)
@pytest.mark.parametrize("itemsize", [2, 4])
def test_pruning_keeps_the_class_configs_that_fit(name, klass, itemsize):
    module = MODULES[name]
    if (klass == "half") != (itemsize == 2):
        pytest.skip("fp32 classes take 4-byte operands, half 2-byte")
    union = _launch.union_configs(module.GPU_CONFIGS)
    ids = {_launch.config_id(c) for c in _launch.class_configs(module.GPU_CONFIGS, klass)}
    kept = _launch.prune_configs(union, ids, itemsize, module.shared_bytes, _launch.SM90_SHARED_MEMORY)
    # every listed configuration fits sm_90: the lists hold nothing the pruner must throw away
    assert {_launch.config_id(c) for c in kept} == ids
    small = _launch.prune_configs(union, ids, itemsize, module.shared_bytes, 100 * 1024)
    assert small and all(module.shared_bytes(c, itemsize) <= 100 * 1024 for c in small) or len(small) == 1
    assert {_launch.config_id(c) for c in small} <= ids


def test_pruning_never_leaves_nothing():
    union = _launch.union_configs(interaction.GPU_CONFIGS)
    ids = {_launch.config_id(c) for c in union}
    kept = _launch.prune_configs(union, ids, 4, interaction.shared_bytes, 1)
    assert len(kept) == 1
    assert interaction.shared_bytes(kept[0], 4) == min(interaction.shared_bytes(c, 4) for c in union)


@pytest.mark.parametrize("name", ["forward", "interaction"])
def test_the_autotuner_prunes_with_the_shared_memory_estimate(name):
    for kernel in KERNELS[name]:
        assert kernel.early_config_prune is MODULES[name]._PRUNE["early_config_prune"]


# -- aligned rows ---------------------------------------------------------------------------------

def test_aligned_rows_pads_odd_strides_and_keeps_aligned_tensors():
    t = torch.randn(5, 17)
    padded = _launch.aligned_rows(t)
    assert padded.stride() == (32, 1) and torch.equal(padded, t)
    aligned = torch.randn(5, 32)
    assert _launch.aligned_rows(aligned) is aligned
    transposed = torch.randn(32, 5).t()
    fixed = _launch.aligned_rows(transposed)
    assert fixed.stride(1) == 1 and fixed.stride(0) % 16 == 0 and torch.equal(fixed, transposed)
    assert _launch.aligned_rows(None) is None


class Spy:
    """Stands in for an autotuned kernel: records the tensors of each launch, then launches."""

    def __init__(self, kernel):
        self.kernel, self.tensors = kernel, []

    def __getitem__(self, grid):
        def launch(*args, **kwargs):
            self.tensors.append([a for a in args if isinstance(a, torch.Tensor)])
            return self.kernel[grid](*args, **kwargs)
        return launch


@kernel_runs
def test_biased_layer_weights_reach_the_interaction_kernel_aligned(monkeypatch):
    g = torch.Generator().manual_seed(0)
    w, v = (torch.randn(24, 18, generator=g).to(DEVICE)[:, :17] for _ in range(2))  # (h, d + 1)-like strides
    c = torch.randn(3, 24, generator=g).to(DEVICE)
    spy = Spy(interaction._interaction_kernel)
    monkeypatch.setattr(interaction, "_interaction_kernel", spy)
    q = interaction.build_interaction_triton(w, v, c)
    operands = spy.tensors[0][:3]
    assert all(t.stride(0) % _launch.ROW_ALIGNMENT == 0 and t.stride(1) == 1 for t in operands)
    from bilinear_kernels.interaction import build_interaction_reference

    expected = build_interaction_reference(w.double(), v.double(), c.double())
    assert (q.double() - expected).abs().max() <= 1e-5 * expected.abs().max()


@kernel_runs
def test_forward_operands_reach_the_kernel_aligned(monkeypatch):
    g = torch.Generator().manual_seed(1)
    x = torch.randn(9, 21, generator=g).to(DEVICE)
    w, v = (torch.randn(13, 21, generator=g).to(DEVICE) for _ in range(2))
    spy = Spy(forward._hidden_kernel)
    monkeypatch.setattr(forward, "_hidden_kernel", spy)
    hidden = forward.bilinear_hidden_triton(x, w, v)
    assert all(t.stride(0) % _launch.ROW_ALIGNMENT == 0 for t in spy.tensors[0][:3])
    expected = forward.bilinear_hidden_reference(x.double(), w.double(), v.double())
    assert (hidden.double() - expected).abs().max() <= 1e-5 * expected.abs().max()
