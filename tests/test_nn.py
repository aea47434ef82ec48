"""bilinear_kernels.nn.Bilinear: parameters and their names, conversions, the fused path and the
unfused fallback that hooks rely on."""
import importlib

import pytest
import torch
from torch import nn

import bilinear_kernels as bk
from bilinear_kernels.functional import bilinear_reference
from bilinear_kernels.nn import Bilinear, llama_to_packed, packed_to_llama

functional = importlib.import_module("bilinear_kernels.functional")

CUDA = torch.cuda.is_available()
DEVICE = "cuda" if CUDA else "cpu"


def kernel_available() -> bool:
    if importlib.util.find_spec("triton") is None:
        return False
    from bilinear_kernels.ops._launch import INTERPRETING

    return CUDA or INTERPRETING


kernel_runs = pytest.mark.skipif(not kernel_available(), reason="needs Triton with CUDA or TRITON_INTERPRET=1")


def make_module(d_in=7, d_hidden=5, d_out=3, bias=False, seed=0, device="cpu"):
    torch.manual_seed(seed)
    module = Bilinear(d_in, d_hidden, d_out, bias=bias, device=device)
    if bias:  # nn.Linear's default init leaves biases small; make them matter
        with torch.no_grad():
            module.in_proj.bias.normal_()
            if module.out_proj is not None:
                module.out_proj.bias.normal_()
    return module


def close(a, b, tol=1e-5):
    return (a - b).abs().max().item() <= tol * max(b.abs().max().item(), 1e-30)


@pytest.mark.parametrize("bias, d_out, keys", [
    (False, 3, {"in_proj.weight", "out_proj.weight"}),
    (True, 3, {"in_proj.weight", "in_proj.bias", "out_proj.weight", "out_proj.bias"}),
    (False, None, {"in_proj.weight"}),
])
def test_state_dict_names_and_shapes(bias, d_out, keys):
    module = Bilinear(7, 5, d_out, bias=bias)
    state = module.state_dict()
    assert set(state) == keys
    assert state["in_proj.weight"].shape == (10, 7)
    assert (module.d_in, module.d_hidden, module.d_out) == (7, 5, d_out or 5)
    # W and V are the two halves of the packed weight, as views
    assert module.w.data_ptr() == module.in_proj.weight.data_ptr()
    assert torch.equal(torch.cat([module.w, module.v]), module.in_proj.weight)


@pytest.mark.parametrize("bias", [False, True])
@pytest.mark.parametrize("d_out", [3, None])
def test_forward_is_the_bilinear_layer(bias, d_out):
    module = make_module(d_out=d_out, bias=bias)
    x = torch.randn(2, 4, 7)
    wb, vb = module.in_proj.bias.chunk(2) if bias else (None, None)
    expected = bilinear_reference(x, module.w, module.v, module.p, wb, vb)
    if bias and d_out is not None:
        expected = expected + module.out_proj.bias
    assert close(module(x), expected)
    assert close(module.forward_unfused(x), expected)


def test_bad_arguments():
    for args in [(0, 5, 3), (7, 1.5, 3), (7, 5, -1), (True, 5, 3)]:
        with pytest.raises(ValueError, match="must be a positive int"):
            Bilinear(*args)
    with pytest.raises(ValueError, match="d_in = 7"):
        Bilinear(7, 5, 3)(torch.randn(2, 6))


def test_llama_conversion_round_trip():
    torch.manual_seed(1)
    gate, up, down = nn.Linear(7, 5, bias=True), nn.Linear(7, 5, bias=True), nn.Linear(5, 3, bias=True)
    module = Bilinear.from_llama(gate, up, down)
    x = torch.randn(6, 7)
    assert close(module(x), down(gate(x) * up(x)))
    # state dicts: Llama names -> packed names -> Llama names, other keys untouched, prefix kept
    llama = {f"mlp.{name}.{kind}": getattr(m, kind).detach()
             for name, m in (("gate_proj", gate), ("up_proj", up), ("down_proj", down)) for kind in ("weight", "bias")}
    llama["norm.weight"] = torch.ones(7)
    packed = llama_to_packed(llama, prefix="mlp.")
    assert set(packed) == {"mlp.in_proj.weight", "mlp.in_proj.bias", "mlp.out_proj.weight", "mlp.out_proj.bias",
                           "norm.weight"}
    assert torch.equal(packed["mlp.in_proj.weight"], torch.cat([gate.weight, up.weight]))
    back = packed_to_llama(packed, prefix="mlp.")
    assert set(back) == set(llama) and all(torch.equal(back[k], llama[k]) for k in llama)
    assert set(module.llama_state_dict()) == {f"{n}.{k}" for n in ("gate_proj", "up_proj", "down_proj")
                                              for k in ("weight", "bias")}


def test_llama_conversion_from_tensors_and_bad_pairs():
    w, v, p = torch.randn(5, 7), torch.randn(5, 7), torch.randn(3, 5)
    module = Bilinear.from_llama(w, v, p)
    assert torch.equal(module.w, w) and torch.equal(module.v, v) and torch.equal(module.p, p)
    assert module.in_proj.bias is None and module.out_proj.bias is None
    with pytest.raises(ValueError, match="must come together"):
        llama_to_packed({"gate_proj.weight": w})
    with pytest.raises(ValueError, match="differ in shape"):
        llama_to_packed({"gate_proj.weight": w, "up_proj.weight": v[:4]})
    with pytest.raises(TypeError, match="gate_proj"):
        Bilinear.from_llama("w", v, p)


def test_layer_round_trip_and_decomposition_identity():
    module = make_module(bias=False, seed=2)
    layer = module.to_layer()
    assert isinstance(layer, bk.BilinearLayer) and layer.w.data_ptr() == module.in_proj.weight.data_ptr()
    x = torch.randn(8, 7, dtype=torch.float64)
    u = torch.randn(3, dtype=torch.float64)
    q = bk.interaction_matrices(module.double().to_layer(), u)[0]
    # uᵀ f(x) = xᵀ Q(u) x ties the module's forward to the decomposition of its layer
    assert close(module(x) @ u, torch.einsum("ni,ij,nj->n", x, q, x), 1e-10)
    again = Bilinear.from_layer(layer.to(dtype=torch.float64))
    assert close(again(x), module(x), 1e-12)


def test_from_layer_with_one_bias_fills_zeros():
    w, v, p, a = torch.randn(5, 7), torch.randn(5, 7), torch.randn(3, 5), torch.randn(5)
    layer = bk.BilinearLayer(w, v, p, w_bias=a)
    module = Bilinear.from_layer(layer)
    x = torch.randn(4, 7)
    assert close(module(x), layer(x))
    assert torch.equal(module.in_proj.bias[5:], torch.zeros(5))


# -- fused path and hook fallback --------------------------------------------------------------

@pytest.fixture
def fused_calls(monkeypatch):
    """Send the module's forward to the fused kernel whatever the device (under the interpreter on
    CPU) and count how often it is taken."""
    from bilinear_kernels.ops.bilinear_forward import bilinear_fused

    calls = []

    def choose(*args):
        def run(*inputs):
            calls.append(1)
            return bilinear_fused(*inputs)
        return run

    monkeypatch.setattr(functional, "bilinear_forward_kernel", choose)
    return calls


@kernel_runs
@pytest.mark.parametrize("bias", [False, True])
def test_fused_path_matches_unfused_forward_and_gradients(fused_calls, bias):
    module = make_module(d_in=19, d_hidden=17, d_out=6, bias=bias, seed=3, device=DEVICE)
    x = torch.randn(3, 11, 19, device=DEVICE, requires_grad=True)
    grad_y = torch.randn(3, 11, 6, device=DEVICE)
    y = module(x)
    assert fused_calls == [1]
    grads = torch.autograd.grad(y, [x, *module.parameters()], grad_y)
    y_ref = module.forward_unfused(x)
    grads_ref = torch.autograd.grad(y_ref, [x, *module.parameters()], grad_y)
    assert close(y, y_ref)
    for got, want in zip(grads, grads_ref):
        assert got.shape == want.shape and close(got, want, 1e-5)


@kernel_runs
def test_hooks_on_sub_projections_take_the_unfused_path(fused_calls):
    module = make_module(d_in=9, d_hidden=6, d_out=4, seed=4, device=DEVICE)
    x = torch.randn(5, 9, device=DEVICE)
    seen = {}
    handle = module.in_proj.register_forward_hook(lambda m, inp, out: seen.__setitem__("pre", out))
    y = module(x)
    assert fused_calls == [] and "pre" in seen
    w_x, v_x = seen["pre"].chunk(2, dim=-1)  # the hook sees both pre-activations
    assert close(w_x, x @ module.w.t()) and close(v_x, x @ module.v.t())
    handle.remove()

    handle = module.out_proj.register_forward_pre_hook(lambda m, inp: seen.__setitem__("hidden", inp[0]))
    module(x)
    assert fused_calls == [] and close(seen["hidden"], w_x * v_x)
    handle.remove()

    # a hook that edits the hidden product changes the output: it runs on the real path
    handle = module.out_proj.register_forward_pre_hook(lambda m, inp: (torch.zeros_like(inp[0]),))
    assert torch.equal(module(x), module.out_proj.bias.expand(5, 4) if module.out_proj.bias is not None
                       else torch.zeros(5, 4, device=DEVICE))
    handle.remove()

    assert close(module(x), y) and fused_calls == [1]  # no hooks left: fused again


@kernel_runs
def test_global_module_hook_takes_the_unfused_path(fused_calls):
    module = make_module(d_in=9, d_hidden=6, d_out=4, seed=5, device=DEVICE)
    seen = []
    handle = nn.modules.module.register_module_forward_hook(lambda m, inp, out: seen.append(type(m).__name__))
    try:
        module(torch.randn(2, 9, device=DEVICE))
    finally:
        handle.remove()
    assert fused_calls == [] and seen.count("Linear") == 2


@pytest.mark.skipif(not CUDA, reason="needs a CUDA device")
def test_cuda_module_dispatches_to_the_kernel():
    from bilinear_kernels.ops.bilinear_forward import bilinear_fused

    module = make_module(d_in=64, d_hidden=128, d_out=32, device="cuda")
    x = torch.randn(16, 64, device="cuda")
    assert functional.bilinear_forward_kernel(x, module.w, module.v, module.p) is bilinear_fused
