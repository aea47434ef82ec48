"""Unembedding rows and SAE directions/bases read from the real libraries' objects."""
from __future__ import annotations

import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")

import pytest  # noqa: E402
import torch  # noqa: E402
from torch import nn  # noqa: E402

import bilinear_kernels as bk  # noqa: E402
from bilinear_kernels.nn import Bilinear  # noqa: E402


def test_published_layout_unembedding_and_sae():
    class LM(nn.Module):
        def __init__(self):
            super().__init__()
            self.lm_head = nn.Linear(6, 11, bias=False)

    class DictionarySAE(nn.Module):  # w_enc (F, d), w_dec (d, F), b_dec (d,)
        def __init__(self, d=6, f=9):
            super().__init__()
            self.w_enc, self.w_dec = nn.Linear(d, f), nn.Linear(f, d, bias=False)
            self.b_dec = nn.Parameter(torch.randn(d))

    lm, sae = LM(), DictionarySAE()
    torch.testing.assert_close(bk.unembedding_directions(lm, [3, 1]), lm.lm_head.weight.detach()[[3, 1]])
    torch.testing.assert_close(bk.sae_encoder_directions(sae, 2), sae.w_enc.weight.detach()[[2]])
    basis, offset = bk.sae_decoder_basis(sae, [0, 4])
    z = torch.randn(2)
    torch.testing.assert_close(basis @ z + offset, sae.w_dec.weight.detach()[:, [0, 4]] @ z + sae.b_dec.detach())


def test_errors():
    with pytest.raises(TypeError, match="cannot find the unembedding"):
        bk.unembedding_directions(nn.Linear(2, 2))
    with pytest.raises(ValueError, match="out of range"):
        bk.unembedding_directions(_lm(), [99])
    with pytest.raises(TypeError, match="not a recognised SAE"):
        bk.sae_encoder_directions(nn.Linear(2, 2))


def _lm():
    m = nn.Module()
    m.lm_head = nn.Linear(4, 5)
    return m


# -- transformers and TransformerLens -------------------------------------------------------------
def test_transformers_unembedding_rows_give_the_logits():
    transformers = pytest.importorskip("transformers")
    config = transformers.LlamaConfig(hidden_size=8, intermediate_size=12, hidden_act="linear", num_hidden_layers=1,
                                      num_attention_heads=2, num_key_value_heads=2, vocab_size=30)
    model = transformers.LlamaForCausalLM(config).double()
    rows = bk.unembedding_directions(model, [5, 7])
    h = torch.randn(3, 8, dtype=torch.float64)
    with torch.no_grad():
        torch.testing.assert_close(h @ rows.T, model.lm_head(h)[:, [5, 7]])


def test_transformer_lens_unembedding_rows_give_the_logits():
    pytest.importorskip("transformer_lens")
    from transformer_lens import HookedTransformer, HookedTransformerConfig

    cfg = HookedTransformerConfig(d_model=8, d_mlp=12, n_layers=1, n_ctx=5, d_head=4, act_fn="gelu",
                                  gated_mlp=True, d_vocab=17, dtype=torch.float64)
    model = HookedTransformer(cfg)
    with torch.no_grad():
        model.b_U.normal_()
    rows = bk.unembedding_directions(model)
    assert rows.shape == (17, 8)
    h = torch.randn(2, 3, 8, dtype=torch.float64)
    with torch.no_grad():
        torch.testing.assert_close(h @ rows.T, model.unembed(h) - model.b_U)


# -- SAELens --------------------------------------------------------------------------------------
def saelens_sae(d_in=6, d_sae=10, apply_b_dec_to_input=True):
    sae_lens = pytest.importorskip("sae_lens")
    cfg = sae_lens.StandardSAEConfig(d_in=d_in, d_sae=d_sae, dtype="float64",
                                     apply_b_dec_to_input=apply_b_dec_to_input)
    sae = sae_lens.StandardSAE(cfg)
    torch.manual_seed(0)
    with torch.no_grad():
        for p in sae.parameters():
            p.normal_()
    return sae


def pre_activations(sae, y):
    _, cache = sae.run_with_cache(y)
    return cache["hook_sae_acts_pre"]


@pytest.mark.parametrize("apply_b_dec_to_input", [True, False])
def test_saelens_encoder_directions_explain_the_pre_activations(apply_b_dec_to_input):
    """An SAE on a bilinear layer's output: feature j's pre-activation minus its value at 0 is
    Σ λ (vᵀx)² of the interaction matrix of encoder direction j."""
    sae = saelens_sae(apply_b_dec_to_input=apply_b_dec_to_input)
    torch.manual_seed(1)
    mlp = Bilinear(5, 7, 6, dtype=torch.float64)
    features = [1, 4, 9]
    directions = bk.sae_encoder_directions(sae, features)
    assert directions.shape == (3, 6)
    res = bk.decompose(bk.BilinearLayer.from_module(mlp), directions, k=None, method="eigh")
    x = torch.randn(8, 5, dtype=torch.float64)
    with torch.no_grad():
        pre = pre_activations(sae, mlp(x))[:, features]
        constant = pre_activations(sae, torch.zeros(1, 6, dtype=torch.float64))[:, features]
    torch.testing.assert_close(res.activations(x).sum(-1), pre - constant, rtol=1e-9, atol=1e-9)


def test_saelens_decoder_basis_is_the_decoder():
    sae = saelens_sae()
    basis, offset = bk.sae_decoder_basis(sae)
    assert basis.shape == (6, 10) and offset.shape == (6,)
    z = torch.randn(4, 10, dtype=torch.float64)
    with torch.no_grad():
        torch.testing.assert_close(z @ basis.T + offset, sae.decode(z), rtol=1e-12, atol=1e-12)
    sub, _ = bk.sae_decoder_basis(sae, [2, 3])
    torch.testing.assert_close(sub, basis[:, [2, 3]])


def test_saelens_refusals():
    sae_lens = pytest.importorskip("sae_lens")
    cfg = sae_lens.StandardSAEConfig(d_in=4, d_sae=5, normalize_activations="layer_norm")
    with pytest.raises(ValueError, match="normalize_activations"):
        bk.sae_encoder_directions(sae_lens.StandardSAE(cfg))
    gated = sae_lens.GatedSAE(sae_lens.GatedSAEConfig(d_in=4, d_sae=5))
    with pytest.raises(ValueError, match="architecture 'gated' is not supported"):
        bk.sae_decoder_basis(gated)
    topk = sae_lens.TopKSAE(sae_lens.TopKSAEConfig(d_in=4, d_sae=5, k=2, rescale_acts_by_decoder_norm=True))
    with pytest.raises(ValueError, match="rescales its activations"):
        bk.sae_encoder_directions(topk)
