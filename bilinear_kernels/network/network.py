"""BilinearNetwork: a stack of bilinear layers on one stream, with an optional embedding and head.

    x = E z (+ e)                       embedding E (d, d_in), optional shift e; none: x = z
    r_l = f_l(r_{l-1}) (+ r_{l-1})      f_l(r) = P_l((W_l r + a_l) ⊙ (V_l r + b_l)) + p_l, residual or not
    y = H r_L (+ head_bias)             head H (o, d); none: y = r_L

Every layer maps the stream of width d to itself (P_l is d × h_l, or absent with h_l = d). The
whole function is a polynomial of degree 2^L in z; `decompose_network` (network_decomposition.py)
decomposes it exactly through depth. Nothing here is not polynomial: `from_module` refuses norms,
activations and attention with a message naming what it found.
"""
from __future__ import annotations

import torch
from torch import nn

from .._arrays import as_tensor, check_finite
from ..adapters.module_adapters import CHECK_RTOL, read_module, unwrap_traced
from ..layer import BilinearLayer

# What makes a stack non-polynomial: norms and attention by class-name fragment (any library's
# spelling: LayerNorm, LlamaRMSNorm, GPT2Attention...), activations by torch class.
NOT_POLYNOMIAL_NAMES = ("Norm", "Attention")
ACTIVATIONS = (nn.ReLU, nn.GELU, nn.SiLU, nn.Sigmoid, nn.Tanh, nn.Softmax, nn.Mish, nn.ELU, nn.SELU, nn.CELU,
               nn.LeakyReLU, nn.Softplus, nn.Hardswish, nn.Hardtanh, nn.Hardsigmoid, nn.PReLU, nn.GLU,
               nn.MultiheadAttention)
CHECK_ROWS = 6


class BilinearNetwork:
    """A stack of `BilinearLayer`s on a stream of width d (see the module docstring).

    layers          list of BilinearLayer, each (d -> d); biases allowed
    residual        r_l = r_{l-1} + f_l(r_{l-1}) when True
    embedding       E (d, d_in) or None (then d_in = d)
    head            H (o, d) or None (then the output is the stream, o = d)
    head_bias       (o,) added to the head's output (needs a head)
    embedding_bias  (d,) shift e of the embedding, x = E z + e
    output_biases   a list of L entries, (d,) or None: the constant p_l each layer adds to its
                    output (a down projection's bias), which `BilinearLayer` does not hold

    Tensors may be torch, NumPy or CuPy; they are held as torch tensors in one dtype (the widest
    given) on one device. `net(z)` runs the forward pass in that dtype.
    """

    def __init__(self, layers, residual=False, embedding=None, head=None, *, head_bias=None,
                 embedding_bias=None, output_biases=None):
        if isinstance(layers, BilinearLayer):
            layers = [layers]
        if not isinstance(layers, (list, tuple)) or not layers:
            raise TypeError(f"layers must be a non-empty list of BilinearLayer, got {type(layers).__name__}")
        for i, layer in enumerate(layers):
            if not isinstance(layer, BilinearLayer):
                raise TypeError(f"layers[{i}] must be a BilinearLayer, got {type(layer).__name__}")
        if not isinstance(residual, (bool, int)) or residual not in (0, 1):
            raise TypeError(f"residual must be a bool, got {residual!r}")
        devices = {layer.device for layer in layers}
        if len(devices) > 1:
            raise ValueError(f"layers must all be on one device, got {sorted(map(str, devices))}")
        device = layers[0].device

        def tensor(x, name, ndim):
            if x is None:
                return None
            t = as_tensor(x, name)
            if t.ndim != ndim:
                raise ValueError(f"{name} must be {ndim}-D, got shape {tuple(t.shape)}")
            if t.device != device:
                raise ValueError(f"{name} is on {t.device} but the layers are on {device}")
            check_finite(t, name)
            return t

        embedding = tensor(embedding, "embedding", 2)
        head = tensor(head, "head", 2)
        head_bias = tensor(head_bias, "head_bias", 1)
        embedding_bias = tensor(embedding_bias, "embedding_bias", 1)
        d = embedding.shape[0] if embedding is not None else layers[0].d_in
        for i, layer in enumerate(layers):
            if layer.d_in != d or layer.d_out != d:
                source = "the embedding's rows" if embedding is not None else "layers[0].d_in"
                raise ValueError(f"layers[{i}] maps {layer.d_in} -> {layer.d_out}, but every layer must map the "
                                 f"stream of width d = {d} ({source}) to itself: mismatched widths")
        if embedding_bias is not None and embedding_bias.shape != (d,):
            raise ValueError(f"embedding_bias must be ({d},) to match the stream width, got {tuple(embedding_bias.shape)}")
        if embedding_bias is not None and embedding is None:
            raise ValueError("embedding_bias needs an embedding")
        if head is not None and head.shape[1] != d:
            raise ValueError(f"head must be (o, d) with d = {d} (the stream width), got {tuple(head.shape)}: mismatched widths")
        if head_bias is not None:
            if head is None:
                raise ValueError("head_bias needs a head")
            if head_bias.shape != (head.shape[0],):
                raise ValueError(f"head_bias must be ({head.shape[0]},) to match head {tuple(head.shape)}, got {tuple(head_bias.shape)}")
        if output_biases is None:
            output_biases = [None] * len(layers)
        if not isinstance(output_biases, (list, tuple)) or len(output_biases) != len(layers):
            raise ValueError(f"output_biases must be a list of {len(layers)} entries ((d,) or None), one per layer")
        output_biases = [tensor(b, f"output_biases[{i}]", 1) for i, b in enumerate(output_biases)]
        for i, b in enumerate(output_biases):
            if b is not None and b.shape != (d,):
                raise ValueError(f"output_biases[{i}] must be ({d},) to match the stream width, got {tuple(b.shape)}")

        dtype = layers[0].dtype
        for t in [*(layer.dtype for layer in layers),
                  *(x.dtype for x in (embedding, head, head_bias, embedding_bias, *output_biases) if x is not None)]:
            dtype = torch.promote_types(dtype, t)
        if dtype in (torch.float16, torch.bfloat16):
            dtype = torch.float32  # a stack of squarings overflows half precision at once

        def cast(t):
            return None if t is None else t.to(dtype)

        self.layers = [layer if layer.dtype == dtype else layer.to(dtype=dtype) for layer in layers]
        self.residual = bool(residual)
        self.embedding, self.head = cast(embedding), cast(head)
        self.head_bias, self.embedding_bias = cast(head_bias), cast(embedding_bias)
        self.output_biases = [cast(b) for b in output_biases]

    # -- shapes ---------------------------------------------------------------------------
    @property
    def n_layers(self) -> int:
        return len(self.layers)

    @property
    def d_stream(self) -> int:
        return self.layers[0].d_in

    @property
    def d_in(self) -> int:
        return self.embedding.shape[1] if self.embedding is not None else self.d_stream

    @property
    def d_out(self) -> int:
        return self.head.shape[0] if self.head is not None else self.d_stream

    @property
    def dtype(self) -> torch.dtype:
        return self.layers[0].dtype

    @property
    def device(self) -> torch.device:
        return self.layers[0].device

    @property
    def has_bias(self) -> bool:
        """Whether any constant enters the stream (layer, output or embedding biases)."""
        return (any(layer.has_bias for layer in self.layers) or any(b is not None for b in self.output_biases)
                or self.embedding_bias is not None)

    def __repr__(self) -> str:
        parts = [f"n_layers={self.n_layers}", f"d_in={self.d_in}", f"d={self.d_stream}", f"d_out={self.d_out}"]
        if self.residual:
            parts.append("residual")
        if self.has_bias:
            parts.append("bias")
        return f"BilinearNetwork({', '.join(parts)}, dtype={self.dtype}, device={self.device})"

    def to(self, device=None, dtype=None) -> "BilinearNetwork":
        """A copy on `device` and/or in `dtype` (torch semantics)."""
        def move(t):
            return None if t is None else t.to(device=device, dtype=dtype)

        return BilinearNetwork([layer.to(device=device, dtype=dtype) for layer in self.layers], self.residual,
                               move(self.embedding), move(self.head), head_bias=move(self.head_bias),
                               embedding_bias=move(self.embedding_bias),
                               output_biases=[move(b) for b in self.output_biases])

    # -- forward --------------------------------------------------------------------------
    def stream(self, z) -> list[torch.Tensor]:
        """The residual stream r_0 … r_L for inputs z (..., d_in), in the network's dtype."""
        z = network_inputs(z, self.d_in, self.dtype, self.device)
        r = z if self.embedding is None else z @ self.embedding.T
        if self.embedding_bias is not None:
            r = r + self.embedding_bias
        out = [r]
        for layer, bias in zip(self.layers, self.output_biases):
            f = layer.forward(r)
            if bias is not None:
                f = f + bias
            r = r + f if self.residual else f
            out.append(r)
        return out

    def forward(self, z) -> torch.Tensor:
        """y (..., d_out) for inputs z (..., d_in)."""
        r = self.stream(z)[-1]
        if self.head is not None:
            r = r @ self.head.T
            if self.head_bias is not None:
                r = r + self.head_bias
        return r

    __call__ = forward

    # -- from the modules users hold ----------------------------------------------------------
    @classmethod
    def from_module(cls, module, *, residual=None, check: bool = True) -> "BilinearNetwork":
        """The network of an nn.Module:

        - the published image model (`embed`, `blocks`, `head`; residual from `config.residual` or a
          `residual` attribute; any number of blocks);
        - an nn.Sequential or list of modules `BilinearLayer.from_module` reads (this package's
          `nn.Bilinear`, the published MLPs and packed blocks, transformers MLPs...), with a plain
          nn.Linear first read as the embedding and one last as the head; `residual` as given
          (default False).

        Anything not polynomial (a norm, an activation, attention) is refused with a
        ValueError naming it. With check=True the network is compared against the module's own
        forward on random inputs (a residual stack given as a list or Sequential has no forward of
        that function: each layer is checked against its own module instead).
        """
        module = unwrap_traced(module)
        _refuse_non_polynomial(module)
        if isinstance(module, nn.Module) and {"embed", "blocks", "head"} <= dict(module.named_children()).keys():
            net = _from_image_model(module, residual, check)
            whole_forward = True
        elif isinstance(module, (nn.Sequential, nn.ModuleList, list, tuple)):
            parts = list(module)
            net = _from_stack(parts, bool(residual) if residual is not None else False, check)
            whole_forward = isinstance(module, nn.Sequential) and not net.residual
        else:
            raise TypeError(
                f"cannot read a network from {type(module).__name__}: pass the published image model (embed, "
                "blocks, head) or an nn.Sequential / list of bilinear layers (optionally a plain nn.Linear "
                "first as the embedding and one last as the head)")
        if check and whole_forward:
            _check_against_forward(module, net)
        return net


# -- reading modules ------------------------------------------------------------------------------
def _refuse_non_polynomial(module) -> None:
    modules = list(module) if isinstance(module, (list, tuple)) else [module]
    for i, m in enumerate(modules):
        if not isinstance(m, nn.Module):
            continue
        for name, sub in m.named_modules():
            kind = type(sub).__name__
            if any(fragment in kind for fragment in NOT_POLYNOMIAL_NAMES) or isinstance(sub, ACTIVATIONS):
                where = ".".join(x for x in (str(i) if len(modules) > 1 else "", name) if x) or "the module itself"
                raise ValueError(f"module: found {kind} at {where}; a network with norms, activations or attention "
                                 "is not a polynomial of its input and cannot be decomposed exactly")


def _from_image_model(model, residual, check) -> "BilinearNetwork":
    config = getattr(model, "config", None)
    found = getattr(config, "residual", None) if config is not None else None
    if found is None:
        found = getattr(model, "residual", None)
    if found is None and residual is None:
        raise ValueError("residual: the image model has no config.residual or residual attribute; pass residual=")
    if found is not None and residual is not None and bool(found) != bool(residual):
        raise ValueError(f"residual={residual!r} contradicts the model's own residual={bool(found)}")
    residual = bool(found if found is not None else residual)
    for name in ("embed", "head"):  # the published classes subclass nn.Linear (an identity gate, train-time noise)
        if not isinstance(getattr(model, name), nn.Linear):
            raise TypeError(f"module.{name} must be an nn.Linear, got {type(getattr(model, name)).__name__}")
    layers, out_biases = [], []
    for i, block in enumerate(model.blocks):
        weights = read_module(block, check=check)
        layers.append(BilinearLayer(weights.w, weights.v, weights.p, weights.w_bias, weights.v_bias))
        out_biases.append(weights.out_offset)
    if not layers:
        raise ValueError("module.blocks is empty: a network needs at least one layer")
    return BilinearNetwork(layers, residual, model.embed.weight.detach(), model.head.weight.detach(),
                           head_bias=_bias(model.head), embedding_bias=_bias(model.embed), output_biases=out_biases)


def _from_stack(parts, residual, check) -> "BilinearNetwork":
    embedding = head = None
    if parts and type(parts[0]) is nn.Linear:
        embedding, parts = parts[0], parts[1:]
    if parts and type(parts[-1]) is nn.Linear:
        head, parts = parts[-1], parts[:-1]
    if not parts:
        raise ValueError("module holds no bilinear layer (only plain nn.Linear maps)")
    layers, out_biases = [], []
    for i, part in enumerate(parts):
        if type(part) is nn.Linear:
            raise ValueError(f"module: found a plain nn.Linear between bilinear layers (position {i + (embedding is not None)}); "
                             "only the first (embedding) and last (head) may be linear")
        weights = read_module(part, check=check)
        layers.append(BilinearLayer(weights.w, weights.v, weights.p, weights.w_bias, weights.v_bias))
        out_biases.append(weights.out_offset)
    return BilinearNetwork(layers, residual,
                           None if embedding is None else embedding.weight.detach(),
                           None if head is None else head.weight.detach(),
                           head_bias=None if head is None else _bias(head),
                           embedding_bias=None if embedding is None else _bias(embedding),
                           output_biases=out_biases)


def _bias(linear) -> torch.Tensor | None:
    bias = getattr(linear, "bias", None)
    return None if bias is None else bias.detach()


def _check_against_forward(module, net: "BilinearNetwork") -> None:
    generator = torch.Generator(device="cpu").manual_seed(0)
    z = torch.randn(CHECK_ROWS, net.d_in, generator=generator, dtype=torch.float64)
    z = z.to(device=net.device, dtype=net.dtype)
    training = module.training
    try:
        module.eval()
        with torch.no_grad():
            expected = module(z)
            got = net(z)
    except Exception as error:  # noqa: BLE001 - a forward we cannot run is a module we cannot check
        raise TypeError(f"could not run {type(module).__name__} on inputs of shape {tuple(z.shape)} to check the "
                        f"network read from it ({type(error).__name__}: {error})") from error
    finally:
        module.train(training)
    if not isinstance(expected, torch.Tensor) or expected.shape != got.shape:
        shape = tuple(expected.shape) if isinstance(expected, torch.Tensor) else type(expected).__name__
        raise TypeError(f"module: its forward returned {shape}, but the network read from it gives {tuple(got.shape)}")
    scale = expected.abs().max().clamp_min(torch.finfo(expected.dtype).tiny)
    error = float((expected - got).abs().max() / scale)
    rtol = CHECK_RTOL.get(net.dtype, 1e-4) * 4 ** net.n_layers  # rounding grows with the degree 2^L
    if not error <= rtol:
        raise TypeError(f"module: its forward disagrees with the network read from it (relative error {error:.2e} > "
                        f"{rtol:.0e}), so it is not the stack of bilinear layers its names suggest; refusing it")


def network_inputs(z, d_in: int, dtype: torch.dtype, device: torch.device, name: str = "z") -> torch.Tensor:
    """z as a torch tensor (..., d_in) in `dtype` on `device` (integer pixels allowed); errors name
    the argument `name`."""
    if not isinstance(z, torch.Tensor):
        import numpy as np

        if isinstance(z, np.ndarray) and z.dtype.kind in "iu":
            z = z.astype(np.float64)
        z = as_tensor(z, name)
    if z.is_complex() or z.dtype == torch.bool:
        raise TypeError(f"{name} must hold real numbers, got dtype {z.dtype}")
    if z.ndim == 0 or z.shape[-1] != d_in:
        raise ValueError(f"{name} must end in d_in = {d_in} (the network's input width), got {name} {tuple(z.shape)}")
    return z.to(device=device, dtype=dtype)
