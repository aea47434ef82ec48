"""BilinearNetwork: construction, forward against a float64 oracle, from_module, bad input."""
import numpy as np
import pytest
import torch
from torch import nn

import bilinear_kernels as bk
from bilinear_kernels.nn import Bilinear
from published_modules import ImageModel, PackedBlock
from network_oracles import forward, make_network, random_network_weights


@pytest.mark.parametrize("L", [1, 2, 3])
@pytest.mark.parametrize("residual", [False, True])
@pytest.mark.parametrize("bias", [False, True])
@pytest.mark.parametrize("shape", ["plain", "p-embed-head"])
def test_forward_matches_definition(L, residual, bias, shape):
    kw = dict(d_in=7, o=3, hidden=5) if shape == "p-embed-head" else {}
    weights = random_network_weights(4, L, bias=bias, residual=residual, seed=L, **kw)
    net = make_network(weights)
    z = np.random.default_rng(1).standard_normal((9, net.d_in))
    expected = forward(weights, z)
    got = net(torch.from_numpy(z)).numpy()
    np.testing.assert_allclose(got, expected, rtol=1e-12, atol=1e-12 * np.abs(expected).max())
    assert (net.n_layers, net.d_stream, net.residual) == (L, 4, residual)
    assert net.d_in == (7 if shape != "plain" else 4) and net.d_out == (3 if shape != "plain" else 4)
    assert net.has_bias == bias


def test_to_converts_and_forward_accepts_numpy_and_batches():
    weights = random_network_weights(4, 2, d_in=5, o=2, bias=True, residual=True)
    net = make_network(weights)
    z = np.random.default_rng(0).standard_normal((2, 3, 5))
    expected = forward(weights, z.reshape(6, 5)).reshape(2, 3, 2)
    np.testing.assert_allclose(net(z).numpy(), expected, rtol=1e-12, atol=1e-12)
    single = net.to(dtype=torch.float32)
    assert single.dtype == torch.float32 and single.head_bias.dtype == torch.float32
    np.testing.assert_allclose(single(torch.from_numpy(z).float()).double().numpy(), expected, rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize("n_layer", [1, 2, 3])
@pytest.mark.parametrize("residual", [False, True])
def test_from_module_reads_the_published_image_model(n_layer, residual):
    torch.manual_seed(n_layer)
    model = ImageModel(d_input=8, d_hidden=6, n_layer=n_layer, residual=residual).double()
    net = bk.BilinearNetwork.from_module(model)
    assert (net.n_layers, net.residual, net.d_in, net.d_stream, net.d_out) == (n_layer, residual, 8, 6, 3)
    z = torch.randn(10, 8, dtype=torch.float64)
    with torch.no_grad():
        expected = model(z)
    torch.testing.assert_close(net(z), expected, rtol=1e-12, atol=1e-12 * float(expected.abs().max()))


class _Noise(nn.Module):
    """Train-time noise, the identity in eval mode (as the published components)."""

    def forward(self, x):
        return x + torch.randn_like(x) if self.training else x


class _GatedLinear(nn.Linear):
    """nn.Linear with a `gate` and `noise`, as the published image model's embed and head."""

    def __init__(self, d_in, d_out, gate=None):
        super().__init__(d_in, d_out, bias=False)
        self.noise, self.gate = _Noise(), gate if gate is not None else nn.Identity()

    def forward(self, x):
        return self.gate(super().forward(self.noise(x)))


class _ConfiguredImageModel(nn.Module):
    """The published image model's layout in full: config.residual, Linear subclasses for embed and
    head, a loss module as a child, and a forward that flattens its input."""

    def __init__(self, n_layer, residual, gate=None):
        super().__init__()
        self.config = type("Config", (), {"residual": residual, "n_layer": n_layer})()
        self.embed = _GatedLinear(8, 6, gate)
        self.blocks = nn.ModuleList([PackedBlock(6, 6) for _ in range(n_layer)])
        self.head = _GatedLinear(6, 3)
        self.criterion = nn.CrossEntropyLoss()

    def forward(self, x):
        x = self.embed(x.flatten(start_dim=1))
        for block in self.blocks:
            x = x + block(x) if self.config.residual else block(x)
        return self.head(x)


@pytest.mark.parametrize("residual", [False, True])
def test_from_module_reads_the_published_layout_in_full(residual):
    torch.manual_seed(5)
    model = _ConfiguredImageModel(3, residual).double().train()
    net = bk.BilinearNetwork.from_module(model)
    assert net.residual is residual and model.training  # the check ran in eval mode and restored the mode
    z = torch.randn(4, 2, 4, dtype=torch.float64)
    with torch.no_grad():
        expected = model.eval()(z)
    torch.testing.assert_close(net(z.flatten(1)), expected, rtol=1e-12, atol=1e-12 * float(expected.abs().max()))
    with pytest.raises(ValueError, match="^module: found ReLU at embed.gate"):
        bk.BilinearNetwork.from_module(_ConfiguredImageModel(1, residual, gate=nn.ReLU()))


def test_from_module_reads_config_residual_and_refuses_a_contradiction():
    model = ImageModel(n_layer=2, residual=False).double()
    del model.residual
    model.config = type("Config", (), {"residual": True})()
    model.forward = lambda x: None  # never reached: the contradiction is refused first
    with pytest.raises(ValueError, match="residual"):
        bk.BilinearNetwork.from_module(model, residual=False)
    assert bk.BilinearNetwork.from_module(model, check=False).residual is True


@pytest.mark.parametrize("residual", [False, True])
def test_from_module_reads_a_sequential_of_package_bilinear_with_embedding_and_head(residual):
    torch.manual_seed(0)
    stack = nn.Sequential(nn.Linear(7, 5, bias=True), Bilinear(5, 4, 5, bias=True), Bilinear(5, 4, 5, bias=True),
                          nn.Linear(5, 3, bias=True)).double()
    net = bk.BilinearNetwork.from_module(stack, residual=residual)
    assert (net.n_layers, net.d_in, net.d_stream, net.d_out, net.residual) == (2, 7, 5, 3, residual)
    z = torch.randn(6, 7, dtype=torch.float64)
    with torch.no_grad():
        r = stack[0](z)
        for block in stack[1:3]:
            r = r + block(r) if residual else block(r)
        expected = stack[3](r)
    torch.testing.assert_close(net(z), expected, rtol=1e-12, atol=1e-12)


def test_from_module_reads_a_list_of_published_blocks():
    torch.manual_seed(1)
    blocks = [PackedBlock(4, 4, bias=True).double() for _ in range(3)]
    net = bk.BilinearNetwork.from_module(blocks, residual=True)
    z = torch.randn(5, 4, dtype=torch.float64)
    with torch.no_grad():
        r = z
        for block in blocks:
            r = r + block(r)
    torch.testing.assert_close(net(z), r, rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("bad, found", [
    (nn.Sequential(Bilinear(4, 4, 4), nn.LayerNorm(4), Bilinear(4, 4, 4)), "LayerNorm"),
    (nn.Sequential(Bilinear(4, 4, 4), nn.ReLU(), Bilinear(4, 4, 4)), "ReLU"),
    (nn.Sequential(Bilinear(4, 4, 4), nn.MultiheadAttention(4, 1)), "MultiheadAttention"),
    ([PackedBlock(4, 4, gate=nn.SiLU())], "SiLU"),
])
def test_from_module_refuses_what_is_not_polynomial(bad, found):
    with pytest.raises(ValueError, match=f"^module: found {found}") as info:
        bk.BilinearNetwork.from_module(bad)
    assert "\n" not in str(info.value)


def test_from_module_refuses_a_norm_inside_the_image_model():
    model = ImageModel(n_layer=2)
    model.blocks.insert(1, nn.LayerNorm(6))
    with pytest.raises(ValueError, match="LayerNorm at blocks.1"):
        bk.BilinearNetwork.from_module(model)


def test_from_module_refuses_what_it_cannot_read():
    with pytest.raises(TypeError, match="cannot read a network from Linear"):
        bk.BilinearNetwork.from_module(nn.Linear(3, 3))
    with pytest.raises(ValueError, match="plain nn.Linear between"):
        bk.BilinearNetwork.from_module(nn.Sequential(Bilinear(4, 4, 4), nn.Linear(4, 4), Bilinear(4, 4, 4)))


def _layer(d, h=None, seed=0):
    g = torch.Generator().manual_seed(seed)
    h = h or d
    return bk.BilinearLayer(torch.randn(h, d, generator=g, dtype=torch.float64),
                            torch.randn(h, d, generator=g, dtype=torch.float64))


def test_bad_construction_gets_one_line_errors_naming_the_argument():
    cases = [
        (lambda: bk.BilinearNetwork([_layer(4), _layer(5)]), ValueError, "layers\\[1\\].*mismatched widths"),
        (lambda: bk.BilinearNetwork([_layer(4, h=3)]), ValueError, "layers\\[0\\] maps 4 -> 3"),
        (lambda: bk.BilinearNetwork([_layer(4)], embedding=torch.randn(5, 7, dtype=torch.float64)),
         ValueError, "layers\\[0\\].*mismatched widths"),
        (lambda: bk.BilinearNetwork([_layer(4)], head=torch.randn(3, 5)), ValueError, "head must be .*mismatched"),
        (lambda: bk.BilinearNetwork([_layer(4)], head_bias=torch.randn(3)), ValueError, "head_bias needs a head"),
        (lambda: bk.BilinearNetwork([_layer(4)], head=torch.randn(3, 4), head_bias=torch.randn(2)),
         ValueError, "head_bias must be"),
        (lambda: bk.BilinearNetwork([]), TypeError, "layers must be a non-empty list"),
        (lambda: bk.BilinearNetwork([_layer(4), "x"]), TypeError, "layers\\[1\\] must be a BilinearLayer"),
        (lambda: bk.BilinearNetwork([_layer(4)], output_biases=[None, None]), ValueError, "output_biases must be"),
        (lambda: bk.BilinearNetwork([_layer(4)], head=torch.full((3, 4), float("nan"))), ValueError, "head contains"),
        (lambda: bk.BilinearNetwork([_layer(4)], residual="yes"), TypeError, "residual must be a bool"),
        (lambda: bk.BilinearNetwork([_layer(4)])(torch.randn(2, 5, dtype=torch.float64)), ValueError, "z must end in"),
    ]
    for build, error, message in cases:
        with pytest.raises(error, match=message) as info:
            build()
        assert "\n" not in str(info.value)
