"""Bilinear: the nn.Module of y = P((W x + a) ⊙ (V x + b)) + p_bias on the fused forward/backward.

Parameters live in two sub-projections whose names say what they hold:
  in_proj.weight   (2h, d)  the packed [W; V], as an nn.Linear(d, 2h) whose output is chunk(2)-ed
  in_proj.bias     (2h,)    [a; b]                                        (bias=True only)
  out_proj.weight  (o, h)   P                                             (absent when d_out=None)
  out_proj.bias    (o,)                                                   (bias=True only)
`llama_to_packed` / `packed_to_llama` convert those state dicts from and to the Llama-style MLP
names gate_proj (W), up_proj (V), down_proj (P).

On CUDA the forward runs the fused kernel (`functional.bilinear_forward_kernel` decides). When a hook
is attached to `in_proj` or `out_proj` (or a global module hook is set), the module runs the
unfused path instead, calling both sub-projections, so hooks see the pre-activations [W x; V x]
and the hidden product (the input of out_proj) exactly as in a plain implementation.
"""
from __future__ import annotations

import torch
from torch import nn
from torch.nn.modules import module as _module_hooks

from .layer import BilinearLayer

_LLAMA = {"gate_proj": "w", "up_proj": "v", "down_proj": "p"}


class Bilinear(nn.Module):
    """A bilinear layer (a GLU with no activation): d_in -> d_hidden -> d_out.

    d_out=None leaves out the output projection (the module returns the hidden product).
    bias=True gives both sub-projections a bias.
    """

    def __init__(self, d_in: int, d_hidden: int, d_out: int | None, bias: bool = False, *,
                 device=None, dtype=None):
        super().__init__()
        for name, value in (("d_in", d_in), ("d_hidden", d_hidden), ("d_out", d_out)):
            if name == "d_out" and value is None:
                continue
            if not isinstance(value, int) or isinstance(value, bool) or value < 1:
                raise ValueError(f"{name} must be a positive int, got {value!r}")
        factory = {"device": device, "dtype": dtype}
        self.in_proj = nn.Linear(d_in, 2 * d_hidden, bias=bias, **factory)
        self.out_proj = nn.Linear(d_hidden, d_out, bias=bias, **factory) if d_out is not None else None

    # -- shapes and weight views ----------------------------------------------------------
    @property
    def d_in(self) -> int:
        return self.in_proj.in_features

    @property
    def d_hidden(self) -> int:
        return self.in_proj.out_features // 2

    @property
    def d_out(self) -> int:
        return self.out_proj.out_features if self.out_proj is not None else self.d_hidden

    @property
    def w(self) -> torch.Tensor:
        return self.in_proj.weight[: self.d_hidden]

    @property
    def v(self) -> torch.Tensor:
        return self.in_proj.weight[self.d_hidden:]

    @property
    def p(self) -> torch.Tensor | None:
        return self.out_proj.weight if self.out_proj is not None else None

    def extra_repr(self) -> str:
        bias = self.in_proj.bias is not None
        return f"d_in={self.d_in}, d_hidden={self.d_hidden}, d_out={self.d_out}, bias={bias}"

    # -- forward --------------------------------------------------------------------------
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.shape[-1:] != (self.d_in,):
            raise ValueError(f"x must end in d_in = {self.d_in}, got x {tuple(x.shape)}")
        if self.hooks_attached():
            return self.forward_unfused(x)
        from .functional import bilinear_forward_kernel

        h = self.d_hidden
        bias = self.in_proj.bias
        w_bias, v_bias = (None, None) if bias is None else (bias[:h], bias[h:])
        forward = bilinear_forward_kernel(x, self.w, self.v, self.p, w_bias, v_bias)
        y = forward(x, self.w, self.v, self.p, w_bias, v_bias)
        if self.out_proj is not None and self.out_proj.bias is not None:
            y = y + self.out_proj.bias
        return y

    def forward_unfused(self, x: torch.Tensor) -> torch.Tensor:
        """The plain path through both sub-projections (what hooks on them observe)."""
        w_x, v_x = self.in_proj(x).chunk(2, dim=-1)
        hidden = w_x * v_x
        return self.out_proj(hidden) if self.out_proj is not None else hidden

    def hooks_attached(self) -> bool:
        """Whether a hook would miss the fused path: any forward, pre-forward or backward hook on
        in_proj or out_proj, or a global module hook."""
        for sub in (self.in_proj, self.out_proj):
            if sub is not None and (sub._forward_hooks or sub._forward_pre_hooks
                                    or sub._backward_hooks or sub._backward_pre_hooks):
                return True
        global_hooks = ("_global_forward_hooks", "_global_forward_pre_hooks",
                        "_global_backward_hooks", "_global_backward_pre_hooks")
        return any(getattr(_module_hooks, name, None) for name in global_hooks)

    # -- conversions ----------------------------------------------------------------------
    def to_layer(self) -> BilinearLayer:
        """The weights as a BilinearLayer (detached views, no copy) for decomposition. The output
        bias is a constant offset of y, not part of any interaction matrix, so it is left out."""
        h = self.d_hidden
        bias = self.in_proj.bias
        w_bias, v_bias = (None, None) if bias is None else (bias.detach()[:h], bias.detach()[h:])
        p = self.p.detach() if self.p is not None else None
        return BilinearLayer(self.w.detach(), self.v.detach(), p, w_bias, v_bias)

    @classmethod
    def from_layer(cls, layer: BilinearLayer) -> "Bilinear":
        """A module holding copies of a BilinearLayer's weights (torch tensors, same device/dtype)."""
        if not isinstance(layer, BilinearLayer):
            raise TypeError(f"layer must be a BilinearLayer, got {type(layer).__name__}")
        module = cls(layer.d_in, layer.d_hidden, layer.d_out if layer.p is not None else None,
                     bias=False, device=layer.device, dtype=layer.dtype)
        with torch.no_grad():
            module.in_proj.weight.copy_(torch.cat([layer.w, layer.v]))
            if layer.has_bias:  # a missing one of the two biases is a zero bias
                zeros = torch.zeros(layer.d_hidden, dtype=layer.dtype, device=layer.device)
                w_bias = layer.w_bias if layer.w_bias is not None else zeros
                v_bias = layer.v_bias if layer.v_bias is not None else zeros
                module.in_proj.bias = nn.Parameter(torch.cat([w_bias, v_bias]))
            if layer.p is not None:
                module.out_proj.weight.copy_(layer.p)
        return module

    @classmethod
    def from_llama(cls, gate_proj, up_proj, down_proj=None) -> "Bilinear":
        """From a Llama-style MLP's projections (nn.Linear modules or weight tensors): gate_proj
        is W, up_proj is V, down_proj is P. Biases are taken when the modules have them."""
        state = {}
        for name, item in (("gate_proj", gate_proj), ("up_proj", up_proj), ("down_proj", down_proj)):
            if item is None:
                continue
            if isinstance(item, nn.Linear):
                state[f"{name}.weight"] = item.weight.detach()
                if item.bias is not None:
                    state[f"{name}.bias"] = item.bias.detach()
            elif isinstance(item, torch.Tensor):
                state[f"{name}.weight"] = item.detach()
            else:
                raise TypeError(f"{name} must be an nn.Linear or a tensor, got {type(item).__name__}")
        return cls.from_state_dict(llama_to_packed(state))

    @classmethod
    def from_state_dict(cls, state_dict: dict) -> "Bilinear":
        """A module shaped and filled from a packed state dict (in_proj.*, out_proj.*)."""
        if "in_proj.weight" not in state_dict:
            raise ValueError(f"state_dict needs 'in_proj.weight', got keys {sorted(state_dict)}")
        packed = state_dict["in_proj.weight"]
        if packed.ndim != 2 or packed.shape[0] % 2:
            raise ValueError(f"in_proj.weight must be (2h, d) with an even first dimension, got {tuple(packed.shape)}")
        out = state_dict.get("out_proj.weight")
        # built without biases, then given exactly the ones the state dict holds
        module = cls(packed.shape[1], packed.shape[0] // 2, None if out is None else out.shape[0],
                     bias=False, device=packed.device, dtype=packed.dtype)
        if "in_proj.bias" in state_dict:
            module.in_proj.bias = nn.Parameter(torch.empty_like(state_dict["in_proj.bias"]))
        if out is not None and "out_proj.bias" in state_dict:
            module.out_proj.bias = nn.Parameter(torch.empty_like(state_dict["out_proj.bias"]))
        module.load_state_dict(state_dict)
        return module

    def llama_state_dict(self) -> dict:
        """This module's parameters under the Llama-style names (gate_proj, up_proj, down_proj)."""
        return packed_to_llama(self.state_dict())


def llama_to_packed(state_dict: dict, prefix: str = "") -> dict:
    """Rename a Llama-style MLP state dict (gate_proj/up_proj/down_proj under `prefix`) into
    Bilinear's packed names; other keys pass through unchanged."""
    out, parts = {}, {}
    for key, value in state_dict.items():
        rest = key[len(prefix):] if key.startswith(prefix) else None
        name, _, kind = (rest or "").partition(".")
        if rest is not None and name in _LLAMA and kind in ("weight", "bias"):
            parts[(name, kind)] = value
        else:
            out[key] = value
    for kind in ("weight", "bias"):
        gate, up = parts.get(("gate_proj", kind)), parts.get(("up_proj", kind))
        if (gate is None) != (up is None):
            raise ValueError(f"gate_proj.{kind} and up_proj.{kind} must come together")
        if gate is not None:
            if gate.shape != up.shape:
                raise ValueError(f"gate_proj.{kind} {tuple(gate.shape)} and up_proj.{kind} {tuple(up.shape)} differ in shape")
            out[f"{prefix}in_proj.{kind}"] = torch.cat([gate, up])
        if ("down_proj", kind) in parts:
            out[f"{prefix}out_proj.{kind}"] = parts[("down_proj", kind)]
    return out


def packed_to_llama(state_dict: dict, prefix: str = "") -> dict:
    """The inverse of `llama_to_packed`: split in_proj into gate_proj (W) and up_proj (V), rename
    out_proj to down_proj; other keys pass through unchanged."""
    out = {}
    for key, value in state_dict.items():
        rest = key[len(prefix):] if key.startswith(prefix) else None
        name, _, kind = (rest or "").partition(".")
        if name == "in_proj" and kind in ("weight", "bias"):
            if value.shape[0] % 2:
                raise ValueError(f"{key} must have an even first dimension (2h), got {tuple(value.shape)}")
            gate, up = value.chunk(2, dim=0)
            out[f"{prefix}gate_proj.{kind}"] = gate
            out[f"{prefix}up_proj.{kind}"] = up
        elif name == "out_proj" and kind in ("weight", "bias"):
            out[f"{prefix}down_proj.{kind}"] = value
        else:
            out[key] = value
    return out
