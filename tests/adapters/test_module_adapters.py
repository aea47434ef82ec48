"""BilinearLayer.from_module against the real libraries' modules and the published layouts.

For every adapter: uᵀ (module(x) − offset) = Σ λ_i (v_iᵀ x̃)² with the module's own forward, on
random inputs, in float64; gated activations refused unless allow_gated (then warned); modules that
are not bilinear refused with a TypeError. Tiny random modules only, nothing downloaded.
"""
from __future__ import annotations

import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")

import pytest  # noqa: E402
import torch  # noqa: E402
from torch import nn  # noqa: E402

import bilinear_kernels as bk  # noqa: E402
from bilinear_kernels.nn import Bilinear  # noqa: E402
from published_modules import ImageModel, PublishedMLP  # noqa: E402

D, H = 6, 5


def check_identity(module, layer, offset=None, *, n=7, seed=0):
    """uᵀ (module(x) − offset) = Σ λ (vᵀ x̃)² for random u and x, all in float64."""
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(n, layer.d_in, generator=g, dtype=torch.float64)
    u = torch.randn(2, layer.d_out, generator=g, dtype=torch.float64)
    with torch.no_grad():
        y = module(x) if not isinstance(module, tuple) else module[2](module[0](x) * module[1](x))
    if offset is not None:
        y = y - offset
    res = bk.decompose(layer, u, k=None, method="eigh")
    xt = torch.cat([x, torch.ones(n, 1, dtype=x.dtype)], 1) if layer.has_bias else x
    rebuilt = res.activations(xt).sum(-1)  # (n, 2)
    torch.testing.assert_close(rebuilt, y @ u.T, rtol=1e-9, atol=1e-9)


# -- this package and plain modules ---------------------------------------------------------------
@pytest.mark.parametrize("bias", [False, True])
def test_package_bilinear(bias):
    module = Bilinear(D, H, 4, bias=bias, dtype=torch.float64)
    layer = bk.BilinearLayer.from_module(module)
    assert (layer.d_in, layer.d_hidden, layer.d_out, layer.has_bias) == (D, H, 4, bias)
    check_identity(module, layer, None if not bias else module.out_proj.bias.detach())


def test_linear_tuple():
    torch.manual_seed(0)
    left, right, out = (nn.Linear(D, H).double(), nn.Linear(D, H).double(), nn.Linear(H, 3).double())
    layer = bk.BilinearLayer.from_module((left, right, out))
    check_identity((left, right, out), layer, out.bias.detach())
    pair = bk.BilinearLayer.from_module((left, right))
    assert pair.p is None and pair.d_out == H


def test_linear_tuple_bad_shapes():
    with pytest.raises(ValueError, match="same shape"):
        bk.BilinearLayer.from_module((nn.Linear(D, H), nn.Linear(D, H + 1)))
    with pytest.raises(ValueError, match="out must take"):
        bk.BilinearLayer.from_module((nn.Linear(D, H), nn.Linear(D, H), nn.Linear(H + 1, 2)))
    with pytest.raises(TypeError, match="tuple module"):
        bk.BilinearLayer.from_module((nn.Linear(D, H), nn.ReLU()))


def test_unrecognised_modules_are_refused_with_the_list():
    for module in (nn.ReLU(), nn.Sequential(nn.Linear(D, H)), nn.Conv1d(2, 2, 1)):
        with pytest.raises(TypeError, match="supported: transformers"):
            bk.BilinearLayer.from_module(module)
    with pytest.raises(TypeError, match="plain nn.Linear is a linear map"):
        bk.BilinearLayer.from_module(nn.Linear(D, 2 * H))
    with pytest.raises(TypeError, match="must be an nn.Module"):
        bk.BilinearLayer.from_module(torch.zeros(3, 3))


def test_a_module_whose_forward_is_not_what_its_names_say_is_refused():
    class Imposter(nn.Module):  # gate/up/down names, but the product is replaced by a sum
        def __init__(self):
            super().__init__()
            self.gate_proj, self.up_proj, self.down_proj = nn.Linear(D, H), nn.Linear(D, H), nn.Linear(H, D)
            self.act_fn = nn.Identity()

        def forward(self, x):
            return self.down_proj(self.gate_proj(x) + self.up_proj(x))

    with pytest.raises(TypeError, match="disagrees with the weights"):
        bk.BilinearLayer.from_module(Imposter().double())
    layer = bk.BilinearLayer.from_module(Imposter().double(), check=False)  # the caller's word
    assert layer.d_hidden == H


# -- published layouts ----------------------------------------------------------------------------
@pytest.mark.parametrize("down", ["p", "o"])
@pytest.mark.parametrize("bias", [False, True])
def test_published_language_mlp(down, bias):
    torch.manual_seed(1)
    module = PublishedMLP(D, H, bias=bias, down=down).double()
    layer = bk.BilinearLayer.from_module(module)
    assert (layer.d_in, layer.d_hidden, layer.d_out, layer.has_bias) == (D, H, D, bias)
    down_bias = getattr(module, down).bias
    check_identity(module, layer, None if down_bias is None else down_bias.detach())


def test_published_gated_mlp_is_refused_unless_allowed():
    module = PublishedMLP(D, H, gate=nn.ReLU()).double()
    with pytest.raises(ValueError, match="gated MLP"):
        bk.BilinearLayer.from_module(module)
    with pytest.warns(UserWarning, match="activation removed"):
        layer = bk.BilinearLayer.from_module(module, allow_gated=True)
    torch.testing.assert_close(layer.w, module.w.weight.detach()[:H])


def test_published_image_blocks():
    torch.manual_seed(2)
    model = ImageModel().double()
    for block in model.blocks:
        layer = bk.BilinearLayer.from_module(block)
        assert layer.p is None and layer.d_out == D
        check_identity(block, layer)


# -- transformers ---------------------------------------------------------------------------------
transformers = pytest.importorskip("transformers")


def hf_mlp(family, act="linear", bias=False):
    module = __import__(f"transformers.models.{family}.modeling_{family}", fromlist=["x"])
    config_cls = {"llama": "LlamaConfig", "mistral": "MistralConfig", "qwen2": "Qwen2Config",
                  "gemma": "GemmaConfig", "phi3": "Phi3Config"}[family]
    mlp_cls = {"llama": "LlamaMLP", "mistral": "MistralMLP", "qwen2": "Qwen2MLP",
               "gemma": "GemmaMLP", "phi3": "Phi3MLP"}[family]
    kwargs = dict(hidden_size=D, intermediate_size=H, hidden_act=act, num_attention_heads=2,
                  num_key_value_heads=2)
    if family == "llama":
        kwargs["mlp_bias"] = bias
    config = getattr(transformers, config_cls)(**kwargs)
    torch.manual_seed(3)
    mlp = getattr(module, mlp_cls)(config).double()
    if bias:  # nonzero biases, so a missed one shows
        with torch.no_grad():
            for lin in (mlp.gate_proj, mlp.up_proj, mlp.down_proj):
                lin.bias.normal_()
    return mlp


@pytest.mark.parametrize("family", ["llama", "mistral", "qwen2", "gemma", "phi3"])
def test_transformers_linear_mlp(family):
    mlp = hf_mlp(family)
    layer = bk.BilinearLayer.from_module(mlp)
    assert (layer.d_in, layer.d_hidden, layer.d_out) == (D, H, D)
    check_identity(mlp, layer)


def test_transformers_llama_mlp_with_biases():
    mlp = hf_mlp("llama", bias=True)
    layer = bk.BilinearLayer.from_module(mlp)
    assert layer.has_bias
    torch.testing.assert_close(layer.w_bias, mlp.gate_proj.bias.detach())
    check_identity(mlp, layer, mlp.down_proj.bias.detach())


@pytest.mark.parametrize("family", ["llama", "phi3"])
def test_transformers_gated_mlp_refused_unless_allowed(family):
    mlp = hf_mlp(family, act="silu")
    with pytest.raises(ValueError, match="gated MLP"):
        bk.BilinearLayer.from_module(mlp)
    with pytest.warns(UserWarning, match="SiLU.*activation removed"):
        layer = bk.BilinearLayer.from_module(mlp, allow_gated=True)
    # the bilinear part: the same module with the activation replaced by the identity
    mlp_linear = hf_mlp(family, act="linear")
    mlp_linear.load_state_dict(mlp.state_dict())
    check_identity(mlp_linear, layer)


def test_transformers_model_layer_mlp():
    config = transformers.LlamaConfig(hidden_size=8, intermediate_size=12, hidden_act="linear",
                                      num_hidden_layers=2, num_attention_heads=2, num_key_value_heads=2,
                                      vocab_size=30, max_position_embeddings=16)
    torch.manual_seed(4)
    model = transformers.LlamaForCausalLM(config).double()
    layer = bk.BilinearLayer.from_module(model.model.layers[1].mlp)
    check_identity(model.model.layers[1].mlp, layer)


# -- TransformerLens ------------------------------------------------------------------------------
def tl_mlp(act="silu"):
    pytest.importorskip("transformer_lens")
    from transformer_lens import HookedTransformerConfig
    from transformer_lens.components import GatedMLP

    cfg = HookedTransformerConfig(d_model=D, d_mlp=H, n_layers=1, n_ctx=4, d_head=2, act_fn=act,
                                  gated_mlp=True, dtype=torch.float64, d_vocab=11)
    mlp = GatedMLP(cfg)
    torch.manual_seed(5)
    with torch.no_grad():
        for p in mlp.parameters():
            p.normal_()
    return mlp


def test_transformer_lens_gated_mlp_with_identity_activation():
    mlp = tl_mlp()
    mlp.act_fn = nn.Identity()  # how a bilinear TransformerLens model is made: its activation replaced
    layer = bk.BilinearLayer.from_module(mlp)
    torch.testing.assert_close(layer.w, mlp.W_gate.detach().T)
    torch.testing.assert_close(layer.p, mlp.W_out.detach().T)
    offset = mlp.b_in.detach() @ mlp.W_out.detach() + mlp.b_out.detach()
    check_identity(mlp, layer, offset)


def test_transformer_lens_gated_activation_refused_unless_allowed():
    mlp = tl_mlp()
    with pytest.raises(ValueError, match="TransformerLens GatedMLP applies silu"):
        bk.BilinearLayer.from_module(mlp)
    with pytest.warns(UserWarning, match="activation removed"):
        layer = bk.BilinearLayer.from_module(mlp, allow_gated=True)
    mlp.act_fn = nn.Identity()
    check_identity(mlp, layer, mlp.b_in.detach() @ mlp.W_out.detach() + mlp.b_out.detach())


def test_transformer_lens_model_block():
    pytest.importorskip("transformer_lens")
    from transformer_lens import HookedTransformer, HookedTransformerConfig

    cfg = HookedTransformerConfig(d_model=8, d_mlp=12, n_layers=2, n_ctx=5, d_head=4, act_fn="gelu",
                                  gated_mlp=True, d_vocab=17, normalization_type="RMS", dtype=torch.float64)
    model = HookedTransformer(cfg)
    for block in model.blocks:
        block.mlp.act_fn = nn.Identity()
    layer = bk.BilinearLayer.from_module(model.blocks[0].mlp)
    assert (layer.d_in, layer.d_hidden, layer.d_out) == (8, 12, 8)


def test_check_keeps_the_mode_and_accepts_half_precision():
    class WithDropout(PublishedMLP):
        def __init__(self):
            super().__init__(D, H)
            self.drop = nn.Dropout(0.5)

        def forward(self, x):
            return self.drop(super().forward(x))

    module = WithDropout().double().train()
    layer = bk.BilinearLayer.from_module(module)  # the check runs in eval mode: dropout off
    assert module.training and module.w.training
    assert layer.d_hidden == H
    for dtype in (torch.bfloat16, torch.float16):
        half = bk.BilinearLayer.from_module(Bilinear(D, H, 3, bias=True, dtype=dtype))
        assert half.dtype == dtype
