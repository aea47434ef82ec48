"""Reading the weights of a bilinear layer out of the nn.Modules users hold.

Each supported module is read in its own layout and orientation into `ModuleWeights`
(W, V, P, the two input biases, the constant output offset and the activation on W x).
Then the reading is checked against the module's own forward on a few random inputs, so a
module whose forward is not what its names suggest is refused instead of decomposed wrongly.

Supported (anything else is a TypeError listing these):
  transformers   `gate_proj` / `up_proj` / `down_proj` MLPs (Llama, Mistral, Qwen2/3, Gemma):
                 down(act(gate(x)) * up(x)); W = gate_proj, V = up_proj, P = down_proj.
                 `gate_up_proj` / `down_proj` MLPs (Phi-3): the packed gate first.
  TransformerLens GatedMLP: (act(x @ W_gate) * (x @ W_in) + b_in) @ W_out + b_out; its weights
                 are (d_model, d_mlp), so W = W_gateᵀ, V = W_inᵀ, P = W_outᵀ. b_in is added
                 after the product: it is a constant output offset (b_in @ W_out), like b_out.
  published      bilinear models (tdooms/bilinear-decomposition, bilinear-interp): an MLP with a
                 packed `w` (nn.Linear(d, 2h) subclass, its output chunk(2)-ed, `gate` on the left
                 half) and a down projection `p` (or `o` in the older snapshot); the image models'
                 blocks are that packed `w` alone (P = identity).
  this package   `bilinear_kernels.nn.Bilinear`.
  autoencoders   bilinear autoencoders (tdooms/bae): `left`, `right` (F, d) parameters (or nn.Linear
                 (d, F) with biases) and latents (left x̂) ⊙ (right x̂) of the normalised input
                 x̂ = x/‖x‖: W = left, V = right, no P. The mixed variant's `down` (B, F) mixing
                 is checked for shape (and against `features()`, where the module has one) but
                 is no part of the layer: the latents are its outputs. The check runs on unit-norm
                 inputs, where x̂ = x; eigenvectors then act on x̂.
  a tuple        (left, right) or (left, right, out) of nn.Linear: out(left(x) * right(x)).
An nnsight wrapper (NNsight, Envoy) of any of these is read through to the module it wraps.

The activation on W x must be the identity for the module to be bilinear: torch.nn.Identity,
or transformers' `hidden_act="linear"`. With any other activation the module is gated; reading it
with allow_gated=True returns the bilinear part P((W x + a) ⊙ (V x + b)), which is not the
module's function, and warns.

This module returns tensors only; `BilinearLayer.from_module` builds the layer from them.
"""
from __future__ import annotations

import sys
import warnings
from dataclasses import dataclass
from typing import Callable

import torch
from torch import nn

SUPPORTED = (
    "transformers MLPs with gate_proj/up_proj/down_proj (Llama, Mistral, Qwen2, Gemma) or "
    "gate_up_proj/down_proj (Phi-3); TransformerLens GatedMLP; the published bilinear models' "
    "MLPs (packed `w` + `p` or `o`) and image blocks (an nn.Linear subclass whose output is "
    "chunk(2)-ed and multiplied); bilinear_kernels.nn.Bilinear; bilinear autoencoders (`left`, `right` "
    "(F, d) parameters or nn.Linear, optional `down` (B, F)); a tuple (left, right[, out]) "
    "of nn.Linear meaning out(left(x) * right(x))"
)

# Largest max|module(x) − read(x)| / max|module(x)| accepted when checking a reading, per dtype.
# A misread layout (a transposed or swapped weight, a missed bias) is off by O(1).
CHECK_RTOL = {torch.float64: 1e-9, torch.float32: 1e-4, torch.float16: 3e-2, torch.bfloat16: 3e-2}
CHECK_ROWS = 6
# float32 on CUDA: TF32 matmuls (if the user enabled them) are good to ~1e-3; still far below a misreading
CUDA_FLOAT32_RTOL = 1e-2


@dataclass
class ModuleWeights:
    """What a module computes: out_offset + P(act(W x + a) ⊙ (V x + b)), weights detached.

    w, v: (h, d); p: (o, h) or None (P = identity); w_bias, v_bias: (h,) or None;
    out_offset: (o,) constant added to the output, or None; activation: the callable applied to
    W x + a, None when it is the identity; source: what was recognised, for messages.
    """

    w: torch.Tensor
    v: torch.Tensor
    p: torch.Tensor | None
    w_bias: torch.Tensor | None
    v_bias: torch.Tensor | None
    out_offset: torch.Tensor | None
    activation: Callable | None
    activation_name: str
    source: str
    unit_inputs: bool = False  # the module normalises its input: it is checked on the unit sphere
    mixing: torch.Tensor | None = None  # an autoencoder's `down` (B, F), checked against features()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """The module's function from the weights read, in plain torch (the check's reference)."""
        left = x @ self.w.T + (0 if self.w_bias is None else self.w_bias)
        right = x @ self.v.T + (0 if self.v_bias is None else self.v_bias)
        if self.activation is not None:
            left = self.activation(left)
        y = left * right
        if self.p is not None:
            y = y @ self.p.T
        return y if self.out_offset is None else y + self.out_offset


def read_module(module, *, allow_gated: bool = False, check: bool = True) -> ModuleWeights:
    """The weights of `module` (see the module docstring for what is supported).

    A gated module (an activation other than the identity on W x) raises ValueError unless
    allow_gated=True; then the bilinear part is returned with a warning. check=True runs the
    module's forward once on a few random inputs (in eval mode, under no_grad; hooks registered on
    it fire) and refuses a reading that disagrees with it.
    """
    module = unwrap_traced(module)
    weights = _recognise(module)
    if check:
        _check_against_forward(module, weights)
    if weights.activation is not None:
        if not allow_gated:
            raise ValueError(
                f"{weights.source} applies {weights.activation_name} to W x: it is a gated MLP, not "
                "a bilinear layer, and its function is not a quadratic form. Replace the activation "
                "by torch.nn.Identity() (transformers: hidden_act='linear') if the model was trained "
                "that way, or pass allow_gated=True to decompose only the bilinear part "
                "P((W x) ⊙ (V x)) with the activation removed")
        warnings.warn(
            f"{weights.source} applies {weights.activation_name} to W x; decomposing its bilinear "
            "part P((W x) ⊙ (V x)) with the activation removed, which is not what the module computes",
            UserWarning, stacklevel=3)
    return weights


# -- recognition ------------------------------------------------------------------------------
def unwrap_traced(obj):
    """The nn.Module inside an nnsight wrapper (NNsight, Envoy); anything else unchanged."""
    inner = getattr(obj, "_module", None)
    if isinstance(inner, nn.Module) and any(cls.__module__.split(".")[0] == "nnsight" for cls in type(obj).__mro__):
        return inner
    return obj


def _recognise(module) -> ModuleWeights:
    if isinstance(module, (tuple, list)):
        return _read_linear_tuple(module)
    if not isinstance(module, nn.Module):
        raise TypeError(f"module must be an nn.Module or a tuple of nn.Linear, got {type(module).__name__}; "
                        f"supported: {SUPPORTED}")
    if _is_package_bilinear(module):
        return _read_package_bilinear(module)
    if _defined_in(module, "transformer_lens", "GatedMLP"):
        return _read_transformer_lens(module)
    if hasattr(module, "left") and hasattr(module, "right"):
        return _read_autoencoder(module)
    children = dict(module.named_children())
    if {"gate_proj", "up_proj", "down_proj"} <= children.keys():
        return _read_gate_up_down(module)
    if {"gate_up_proj", "down_proj"} <= children.keys():
        return _read_gate_up_packed(module)
    if isinstance(children.get("w"), nn.Linear) and isinstance(children.get("p", children.get("o")), nn.Linear):
        return _read_published_mlp(module)
    if isinstance(module, nn.Linear) and type(module) is not nn.Linear:
        return _read_published_block(module)
    if type(module) is nn.Linear:
        raise TypeError("a plain nn.Linear is a linear map, not a bilinear layer; for two projections "
                        f"multiplied together pass a tuple (left, right[, out]). Supported: {SUPPORTED}")
    raise TypeError(f"cannot read a bilinear layer from {type(module).__name__} (pass the MLP module itself, "
                    f"e.g. model.model.layers[i].mlp or model.blocks[i].mlp); supported: {SUPPORTED}")


def _read_gate_up_down(module) -> ModuleWeights:
    gate, up, down = module.gate_proj, module.up_proj, module.down_proj
    _require_linear(gate=gate, up=up, down=down)
    act = _activation_of(module, "act_fn")
    return _weights(gate.weight, up.weight, down.weight, _bias(gate), _bias(up), _bias(down), act,
                    f"{type(module).__name__} (gate_proj/up_proj/down_proj)")


def _read_gate_up_packed(module) -> ModuleWeights:
    packed, down = module.gate_up_proj, module.down_proj
    _require_linear(gate_up_proj=packed, down_proj=down)
    w, v = _split_packed(packed, "gate_up_proj")
    bias = _bias(packed)
    wb, vb = (None, None) if bias is None else bias.chunk(2)
    act = _activation_of(module, "activation_fn")
    return _weights(w, v, down.weight, wb, vb, _bias(down), act,
                    f"{type(module).__name__} (gate_up_proj/down_proj)")


def _read_transformer_lens(module) -> ModuleWeights:
    if getattr(module, "ln", None) is not None or getattr(module, "hook_mid", None) is not None:
        raise ValueError("this TransformerLens GatedMLP uses a layer-norm activation (solu_ln): it is not "
                         "a bilinear layer even with the activation removed")
    for name in ("W_gate", "W_in", "W_out", "b_in", "b_out"):
        if not isinstance(getattr(module, name, None), torch.Tensor):
            raise TypeError(f"TransformerLens GatedMLP without a tensor {name}: this version's layout is not "
                            f"supported (expected W_gate, W_in (d_model, d_mlp), W_out (d_mlp, d_model), b_in, b_out)")
    act = _activation_of(module, "act_fn")
    # b_in is added after the product: (act(x W_gate) * (x W_in) + b_in) W_out + b_out
    w_out = module.W_out.detach()
    offset = module.b_in.detach() @ w_out + module.b_out.detach()
    return _weights(module.W_gate.T, module.W_in.T, w_out.T, None, None, offset, act,
                    "TransformerLens GatedMLP")


def _read_published_mlp(module) -> ModuleWeights:
    packed = module.w
    down = module.p if isinstance(getattr(module, "p", None), nn.Linear) else module.o
    w, v = _split_packed(packed, "w")
    bias = _bias(packed)
    wb, vb = (None, None) if bias is None else bias.chunk(2)
    act = _activation_of(packed, "gate") if hasattr(packed, "gate") else (None, "the identity")
    name = "p" if down is getattr(module, "p", None) else "o"
    return _weights(w, v, down.weight, wb, vb, _bias(down), act,
                    f"{type(module).__name__} (packed w, down projection {name})")


def _read_published_block(module) -> ModuleWeights:
    w, v = _split_packed(module, "weight")
    bias = _bias(module)
    wb, vb = (None, None) if bias is None else bias.chunk(2)
    act = _activation_of(module, "gate") if hasattr(module, "gate") else (None, "the identity")
    return _weights(w, v, None, wb, vb, None, act, f"{type(module).__name__} (packed block, P = identity)")


def _read_package_bilinear(module) -> ModuleWeights:
    h = module.d_hidden
    bias = _bias(module.in_proj)
    wb, vb = (None, None) if bias is None else (bias[:h], bias[h:])
    out = module.out_proj
    return _weights(module.w, module.v, None if out is None else out.weight, wb, vb,
                    None if out is None else _bias(out), (None, "the identity"), "bilinear_kernels.nn.Bilinear")


def _read_autoencoder(module) -> ModuleWeights:
    left, right = module.left, module.right
    if isinstance(left, nn.Linear) and isinstance(right, nn.Linear):
        w, v, wb, vb = left.weight, right.weight, _bias(left), _bias(right)
    elif isinstance(left, torch.Tensor) and isinstance(right, torch.Tensor):
        w, v, wb, vb = left, right, None, None
    else:
        raise TypeError(f"{type(module).__name__}: an autoencoder's left and right must both be (F, d) parameters or "
                        f"both nn.Linear, got {type(left).__name__} and {type(right).__name__}")
    if w.ndim != 2 or w.shape != v.shape:
        raise ValueError(f"{type(module).__name__}: left and right must have one shape (F, d), got "
                         f"{tuple(w.shape)} and {tuple(v.shape)}")
    down = getattr(module, "down", None)
    if isinstance(down, nn.Linear):
        down = down.weight
    if down is not None:
        if not isinstance(down, torch.Tensor) or down.ndim != 2 or down.shape[1] != w.shape[0]:
            shape = tuple(down.shape) if isinstance(down, torch.Tensor) else type(down).__name__
            raise ValueError(f"{type(module).__name__}: down must mix the {w.shape[0]} latents, (B, {w.shape[0]}), "
                             f"got {shape}")
        down = down.detach()
    weights = _weights(w, v, None, wb, vb, None, (None, "the identity"),
                       f"{type(module).__name__} (bilinear autoencoder left/right)")
    weights.unit_inputs, weights.mixing = True, down
    return weights


def _read_linear_tuple(parts) -> ModuleWeights:
    if len(parts) not in (2, 3) or not all(isinstance(m, nn.Linear) for m in parts):
        kinds = [type(m).__name__ for m in parts]
        raise TypeError(f"a tuple module must be (left, right) or (left, right, out) of nn.Linear, got {kinds}")
    left, right = parts[0], parts[1]
    out = parts[2] if len(parts) == 3 else None
    if left.weight.shape != right.weight.shape:
        raise ValueError(f"left and right must have the same shape (h, d), got {tuple(left.weight.shape)} "
                         f"and {tuple(right.weight.shape)}")
    if out is not None and out.in_features != left.out_features:
        raise ValueError(f"out must take the {left.out_features} hidden features of left/right, "
                         f"got out.in_features = {out.in_features}")
    return _weights(left.weight, right.weight, None if out is None else out.weight, _bias(left), _bias(right),
                    None if out is None else _bias(out), (None, "the identity"), "(left, right, out) nn.Linear tuple")


# -- pieces -----------------------------------------------------------------------------------
def _weights(w, v, p, w_bias, v_bias, out_offset, act, source) -> ModuleWeights:
    activation, name = act

    def det(t):
        return None if t is None else t.detach()

    tensors = [t for t in (w, v, p, w_bias, v_bias, out_offset) if t is not None]
    if any(t.is_meta for t in tensors):
        raise ValueError(f"{source} has weights on the meta device (not loaded); load them first")
    return ModuleWeights(det(w), det(v), det(p), det(w_bias), det(v_bias), det(out_offset), activation, name, source)


def _activation_of(module, attribute) -> tuple[Callable | None, str]:
    """(callable, name) of the activation held in module.<attribute>; (None, ...) for the identity."""
    if not hasattr(module, attribute):
        raise TypeError(f"{type(module).__name__} has no `{attribute}` attribute, so its activation cannot be "
                        "told; supported: " + SUPPORTED)
    act = getattr(module, attribute)
    if isinstance(act, nn.Identity) or _defined_in(act, "transformers", "LinearActivation"):
        return None, "the identity"
    name = getattr(act, "__name__", None) or type(act).__name__
    return act, name


def _is_package_bilinear(module) -> bool:
    # looked up without importing `.nn` (which builds on layer.py): an instance exists only if it is loaded
    package_nn = sys.modules.get(__name__.partition(".")[0] + ".nn")
    return package_nn is not None and isinstance(module, package_nn.Bilinear)


def _defined_in(obj, package: str, class_name: str) -> bool:
    """Whether obj's class, or a base of it, is `class_name` defined in `package` (any version's
    file layout; nothing is imported)."""
    return any(cls.__name__ == class_name and cls.__module__.split(".")[0] == package
               for cls in type(obj).__mro__)


def _require_linear(**modules) -> None:
    for name, m in modules.items():
        if not isinstance(m, nn.Linear):
            raise TypeError(f"{name} must be an nn.Linear, got {type(m).__name__}")


def _split_packed(linear: nn.Linear, name: str) -> tuple[torch.Tensor, torch.Tensor]:
    weight = linear.weight
    if weight.ndim != 2 or weight.shape[0] % 2:
        raise ValueError(f"{name} must be a packed (2h, d) weight with an even first dimension, got {tuple(weight.shape)}")
    return weight.chunk(2, dim=0)


def _bias(linear) -> torch.Tensor | None:
    return getattr(linear, "bias", None)


# -- the check --------------------------------------------------------------------------------
def _check_against_forward(module, weights: ModuleWeights) -> None:
    """Run the module on random inputs and compare with the function the reading says it has."""
    modules = list(module) if isinstance(module, (tuple, list)) else [module]
    w = weights.w
    generator = torch.Generator(device="cpu").manual_seed(0)
    x = torch.randn(2, CHECK_ROWS // 2, w.shape[1], generator=generator, dtype=torch.float64)
    if weights.unit_inputs:
        x = x / torch.linalg.vector_norm(x, dim=-1, keepdim=True)
    x = x.to(device=w.device, dtype=w.dtype)
    modes = [m.training for m in modules]
    try:
        for m in modules:
            m.eval()  # dropout / training-only noise would make the comparison meaningless
        with torch.no_grad():
            if len(modules) == 1:
                expected = module(x)
            else:
                hidden = modules[0](x) * modules[1](x)
                expected = modules[2](hidden) if len(modules) == 3 else hidden
            got = weights.forward(x)
            features = getattr(module, "features", None) if weights.mixing is not None else None
            if callable(features):
                # the mixed variant: features() gives the latents or their mixes down · latents
                mixed = features(x)
                if isinstance(mixed, torch.Tensor) and mixed.shape[-1] == weights.mixing.shape[0] != got.shape[-1]:
                    expected, got = torch.cat([expected, mixed], -1), torch.cat([got, got @ weights.mixing.T], -1)
                else:
                    expected, got = torch.cat([expected, mixed], -1), torch.cat([got, got], -1)
    except Exception as error:  # noqa: BLE001 - a forward we cannot run is a module we cannot check
        raise TypeError(f"could not run {weights.source} on inputs of shape {tuple(x.shape)} to check the "
                        f"weights read from it ({type(error).__name__}: {error}); supported: {SUPPORTED}") from error
    finally:
        for m, mode in zip(modules, modes):
            m.train(mode)
    if not isinstance(expected, torch.Tensor) or expected.shape != got.shape:
        shape = tuple(expected.shape) if isinstance(expected, torch.Tensor) else type(expected).__name__
        raise TypeError(f"{weights.source}: its forward returned {shape}, but the weights read from it give "
                        f"{tuple(got.shape)}; it does not compute out(act(W x) * (V x)). Supported: {SUPPORTED}")
    scale = expected.abs().max().clamp_min(torch.finfo(expected.dtype).tiny)
    error = float((expected - got).abs().max() / scale)
    rtol = CHECK_RTOL.get(w.dtype, 1e-4)
    if w.device.type == "cuda" and w.dtype == torch.float32:
        rtol = max(rtol, CUDA_FLOAT32_RTOL)  # the module's own matmuls may run in TF32
    if not error <= rtol:
        raise TypeError(f"{weights.source}: its forward disagrees with the weights read from it (relative error "
                        f"{error:.2e} > {rtol:.0e}), so it is not out(act(W x + a) * (V x + b)) in the layout "
                        f"its names suggest; refusing to decompose it. Supported: {SUPPORTED}")
