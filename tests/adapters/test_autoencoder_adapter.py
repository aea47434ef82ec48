"""Bilinear autoencoders (the tdooms/bae layout): BilinearLayer.from_module against the module's
own forward (and features() of the mixed variant) on unit-norm inputs, in float64, and
overlap_mix_direction against the overlap matrix formed in full."""
from __future__ import annotations

import numpy as np
import pytest
import torch
from torch import nn

import bilinear_kernels as bk
from helpers import check_result, oracle_q
from published_modules import BilinearAutoencoder, MixedAutoencoder

D, F, B = 6, 10, 4


def unit_inputs(n, d, seed):
    x = torch.randn(n, d, generator=torch.Generator().manual_seed(seed), dtype=torch.float64)
    return x / x.norm(dim=-1, keepdim=True)


def as_weights(layer):
    def np_(t):
        return None if t is None else t.detach().numpy()
    return dict(w=np_(layer.w), v=np_(layer.v), p=None, w_bias=np_(layer.w_bias), v_bias=np_(layer.v_bias))


@pytest.mark.parametrize("module", [
    BilinearAutoencoder(D, F),
    BilinearAutoencoder(D, F, linear=True),
    BilinearAutoencoder(D, F, bottleneck=B),
    MixedAutoencoder(D, F, bottleneck=B),
], ids=["parameters", "linear+bias", "mixed", "mixed+features"])
def test_latents_are_the_quadratic_forms_of_the_normalised_input(module):
    torch.manual_seed(0)
    module = module.double()
    if isinstance(module.left, nn.Linear):
        nn.init.normal_(module.left.bias)
        nn.init.normal_(module.right.bias)
    layer = bk.BilinearLayer.from_module(module)
    assert (layer.d_in, layer.d_hidden, layer.d_out, layer.p) == (D, F, F, None)
    assert layer.has_bias == isinstance(module.left, nn.Linear)
    x = unit_inputs(7, D, seed=1)
    with torch.no_grad():
        latents = module(2.5 * x)  # the module normalises: any scale of x gives the same latents
    res = bk.decompose(layer, list(range(F)), k=None)
    xt = torch.cat([x, torch.ones(7, 1, dtype=x.dtype)], 1) if layer.has_bias else x
    torch.testing.assert_close(res.activations(xt).sum(-1), latents, rtol=1e-9, atol=1e-9)


def test_a_module_that_mixes_otherwise_than_its_down_is_refused():
    class Wrong(MixedAutoencoder):
        def features(self, x):
            return nn.functional.linear(self(x), self.down.flip(0))

    with pytest.raises(TypeError, match="disagrees with the weights"):
        bk.BilinearLayer.from_module(Wrong(D, F, bottleneck=B).double())


def test_bad_autoencoder_layouts_are_refused():
    module = BilinearAutoencoder(D, F).double()
    module.right = nn.Parameter(torch.zeros(F + 1, D, dtype=torch.float64))
    with pytest.raises(ValueError, match="left and right must have one shape"):
        bk.BilinearLayer.from_module(module)
    module = BilinearAutoencoder(D, F).double()
    del module.right
    module.right = nn.Linear(D, F).double()
    with pytest.raises(TypeError, match="both be \\(F, d\\) parameters or both nn.Linear"):
        bk.BilinearLayer.from_module(module)
    module = BilinearAutoencoder(D, F, bottleneck=B).double()
    module.down = nn.Parameter(torch.zeros(B, F + 1, dtype=torch.float64))
    with pytest.raises(ValueError, match=r"down must mix the 10 latents"):
        bk.BilinearLayer.from_module(module)


def test_overlap_mix_direction_against_the_full_overlap_matrix():
    torch.manual_seed(2)
    module = MixedAutoencoder(12, F, bottleneck=B).double()  # 2·4 mixed latents < d = 12
    down = module.down.detach().numpy()
    cols = down / np.linalg.norm(down, axis=0, keepdims=True)
    g = cols.T @ cols  # (F, F), formed in full by the oracle
    u = bk.overlap_mix_direction(module, 3, n=4)
    assert u.shape == (F,) and int((u != 0).sum()) == 4
    top = np.argsort(-np.abs(g[3]), kind="stable")[:4]
    np.testing.assert_allclose(u.numpy()[top], np.abs(g[3, top]), rtol=1e-12)
    signed = bk.overlap_mix_direction(module, [3, 7], n=4, signed=True)
    assert signed.shape == (2, F)
    np.testing.assert_allclose(signed[0].numpy()[top], g[3, top], rtol=1e-12)
    # the mix decomposes by method="support" and equals the dense decomposition of its form
    layer = bk.BilinearLayer.from_module(module)
    res = bk.decompose(layer, signed, k=3)
    assert res.method == "support"
    check_result(res, oracle_q(as_weights(layer), signed.numpy()), "LM", torch.float64)


def test_overlap_mix_direction_refuses_bad_input():
    with pytest.raises(TypeError, match="mixing `down`"):
        bk.overlap_mix_direction(BilinearAutoencoder(D, F), 0)
    module = MixedAutoencoder(D, F, bottleneck=B)
    with pytest.raises(ValueError, match=r"n must be an int in \[1, 10\]"):
        bk.overlap_mix_direction(module, 0, n=11)
    with pytest.raises(ValueError, match="latents index 10 is out of range"):
        bk.overlap_mix_direction(module, 10)


def test_the_documented_example_runs_as_written():
    import re
    from pathlib import Path

    text = (Path(__file__).resolve().parents[2] / "docs" / "guides" / "features.md").read_text()
    section = text[text.index("## Bilinear autoencoders"):]
    (code,) = re.findall(r"```python\n(.*?)```", section, re.S)
    torch.manual_seed(3)
    scope = {"bk": bk, "autoencoder": MixedAutoencoder(24, 2048, bottleneck=8).double()}
    exec(code, scope)
    assert scope["singles"].method == scope["mixes"].method == "support"
    assert scope["mixes"].eigenvalues.shape == (2048, 3)
