"""The forward pass y = P((W x + a) ⊙ (V x + b)), accepting any of the supported array types."""
from __future__ import annotations

import torch

from . import fast_path_guard as guard
from ._arrays import as_tensor, framework_of, to_framework
from .backends import triton_unsupported_reason


def bilinear_reference(x, w, v, p=None, w_bias=None, v_bias=None):
    """Plain-torch forward on torch tensors: the oracle and fallback of every fused forward."""
    hidden = torch.nn.functional.linear(x, w, w_bias) * torch.nn.functional.linear(x, v, v_bias)
    return hidden if p is None else torch.nn.functional.linear(hidden, p)


def bilinear_forward_kernel(x, w, v, p=None, w_bias=None, v_bias=None):
    """The function that computes P((W x + a) ⊙ (V x + b)) for these torch tensors: the fused
    Triton forward (differentiable; its kernels run behind their canaries, fast_path_guard) where
    it supports them and has not been switched off in this process, else `bilinear_reference`.
    Under autocast the reference runs, so the projections follow autocast's casting rules."""
    if triton_unsupported_reason(x, w, v, p, w_bias, v_bias) is None and not _autocasting(x.device):
        from .ops._launch import dot_precision
        from .ops.bilinear_forward import bilinear_fused

        if guard.usable(guard.TRITON_FORWARD, x.dtype, dot_precision(x.dtype), x.device):
            return bilinear_fused
    return bilinear_reference


def _autocasting(device: torch.device) -> bool:
    try:
        return torch.is_autocast_enabled(device.type)
    except TypeError:  # torch < 2.4 takes no device type and answers for CUDA
        return torch.is_autocast_enabled()


def bilinear(x, w, v, p=None, w_bias=None, v_bias=None):
    """Forward of a bilinear layer: x (..., d), w and v (h, d), p (o, h) or None -> (..., o)."""
    framework = framework_of(x)
    x = as_tensor(x, "x")
    w, v = as_tensor(w, "w"), as_tensor(v, "v")
    if w.ndim != 2 or w.shape != v.shape:
        raise ValueError(f"w and v must be 2-D of one shape (h, d), got w {tuple(w.shape)} and v {tuple(v.shape)}")
    if x.shape[-1:] != w.shape[1:]:
        raise ValueError(f"x must end in d = {w.shape[1]} (the columns of w), got x {tuple(x.shape)} and w {tuple(w.shape)}")
    if p is not None:
        p = as_tensor(p, "p")
        if p.ndim != 2 or p.shape[1] != w.shape[0]:
            raise ValueError(f"p must be (o, h) with h = {w.shape[0]}, got p {tuple(p.shape)} and w {tuple(w.shape)}")
    biases = {}
    for name, b in (("w_bias", w_bias), ("v_bias", v_bias)):
        if b is not None:
            b = as_tensor(b, name)
            if b.shape != w.shape[:1]:
                raise ValueError(f"{name} must be ({w.shape[0]},) to match w {tuple(w.shape)}, got {tuple(b.shape)}")
        biases[name] = b
    w_bias, v_bias = biases["w_bias"], biases["v_bias"]
    dtypes = {name: t.dtype for name, t in (("x", x), ("w", w), ("v", v), ("p", p), *biases.items()) if t is not None}
    if len(set(dtypes.values())) > 1:
        listed = ", ".join(f"{name} {str(dt).replace('torch.', '')}" for name, dt in dtypes.items())
        raise TypeError(f"x and the weights must share one dtype, got {listed}; convert them first")
    forward = bilinear_forward_kernel(x, w, v, p, w_bias, v_bias)
    return to_framework(forward(x, w, v, p, w_bias, v_bias), framework)
