"""Scale-free arithmetic: operands normalized by exact powers of two, results scaled back.

Q(u) = ½(W̃ᵀ diag(c) Ṽ + Ṽᵀ diag(c) W̃) is linear in each of W̃, Ṽ and c = Pᵀ u. Dividing an operand
by a power of two is exact in binary floating point (subnormals included), so the solvers work on
operands whose largest entry is about 1 and eigenvalues (or Q itself) are multiplied back by
2^(e_w + e_v + e_c) at the end. No product then overflows or underflows, whatever the weights'
scale, and eigenvectors and relative residuals are untouched. What the working dtype cannot hold
at the end (‖Q‖ past its largest number, or nonzero but below its smallest normal one) is refused
with a ValueError instead of coming back as Inf, NaN or zeros.

An operand whose largest entry is within 2^±NO_SCALING_WITHIN of 1 is used as it is, without a
copy: then neither a product of three of them nor a sum of h·d such products can leave the range
of float32. The pass that finds the largest entry also catches non-finite values at the point of
use (weights can be changed in place after their BilinearLayer was built).
"""
from __future__ import annotations

import math

import torch

from .layer import BilinearLayer

NO_SCALING_WITHIN = 16


def _peak(t: torch.Tensor, name: str, rows: bool = False) -> torch.Tensor:
    """Largest |entry| of t (float64, 0-D), or of each row when `rows`; refuses non-finite values."""
    if t.numel() == 0:
        return torch.zeros(t.shape[0] if rows else (), dtype=torch.float64, device=t.device)
    lo, hi = torch.aminmax(t.reshape(t.shape[0], -1) if rows else t, dim=-1 if rows else None)
    peak = torch.maximum(hi, -lo).to(torch.float64)  # NaN propagates
    if not bool(torch.isfinite(peak).all()):
        bad = int((~torch.isfinite(t)).sum())
        raise ValueError(f"{name} contains {bad} non-finite value(s) (NaN or Inf) (weights changed in "
                         "place after their BilinearLayer was built are checked again at every call)")
    return peak


def _exponent(peak: torch.Tensor) -> torch.Tensor:
    """int64 e with peak / 2^e in [½, 1), or 0 where the peak is already near 1 (or zero)."""
    _, e = torch.frexp(peak)
    e = e.to(torch.int64)
    return torch.where((e.abs() <= NO_SCALING_WITHIN) | (peak == 0), torch.zeros_like(e), e)


def _scaled(t: torch.Tensor, e: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    """t / 2^e in `dtype` (e 0-D, or (rows,) for one exponent per row); no copy when e is 0."""
    if not bool((e != 0).any()):
        return t.to(dtype)
    x = t.to(torch.float64)  # every float dtype converts to float64 exactly
    factor = -e.reshape(-1, *([1] * (t.ndim - 1))) if e.ndim else -e
    return times_power_of_two_(x.clone() if x is t else x, factor).to(dtype)


def times_power_of_two_(x: torch.Tensor, e: torch.Tensor) -> torch.Tensor:
    """x ·= 2^e in place (e broadcasts against x), in steps small enough that no factor leaves
    x's dtype: every step moves toward the final value, so nothing overflows on the way."""
    step_limit = 60 if x.dtype != torch.float64 else 500
    e = e.to(device=x.device, dtype=torch.int64)
    while bool((e != 0).any()):
        step = e.clamp(-step_limit, step_limit)
        x.mul_(torch.pow(2.0, step.to(torch.float64)).to(x.dtype))
        e = e - step
    return x


class ScaledLayer:
    """A layer's operands in the working dtype, each divided by a power of two.

    w, v      W̃ / 2^e_w and Ṽ / 2^e_v, (h, d_form) (bias columns appended, as `homogeneous`)
    exponent  e_w + e_v: Q of the layer is 2^(exponent + e_c) times Q of (w, v) and c / 2^e_c
    """

    def __init__(self, layer: BilinearLayer, dtype: torch.dtype):
        self.layer, self.dtype = layer, dtype
        w, e_w = self._normalized_pair(layer.w, layer.w_bias, "w", "w_bias")
        v, e_v = self._normalized_pair(layer.v, layer.v_bias, "v", "v_bias")
        self.w, self.v = w, v
        self.exponent = int(e_w + e_v)
        self._p = None

    def _normalized_pair(self, weight, bias, name, bias_name):
        peak = _peak(weight, name)
        if bias is not None:
            peak = torch.maximum(peak, _peak(bias, bias_name))
        e = _exponent(peak)
        out = _scaled(weight, e, self.dtype)
        if self.layer.has_bias:
            b = (_scaled(bias, e, self.dtype) if bias is not None
                 else torch.zeros(weight.shape[0], dtype=self.dtype, device=weight.device))
            out = torch.cat([out, b[:, None]], dim=1)
        return out, e

    def output_projection(self) -> tuple[torch.Tensor, int]:
        """(P / 2^e_p in the working dtype, e_p), computed once."""
        if self._p is None:
            e = _exponent(_peak(self.layer.p, "p"))
            self._p = (_scaled(self.layer.p, e, self.dtype), int(e))
        return self._p

    def vectors(self, dirs) -> tuple[torch.Tensor, torch.Tensor]:
        """(u / 2^e_u, e_u) for parsed float directions: (b, o) in the working dtype, (b,) int64."""
        u = dirs.vectors.to(self.layer.device)
        e_u = _exponent(_peak(u, "directions", rows=True))
        return _scaled(u, e_u, self.dtype), e_u

    def coefficients(self, dirs, per_row: bool = True) -> tuple[torch.Tensor, torch.Tensor]:
        """(c / 2^e_c, e_c) for parsed directions: rows (b, h) in the working dtype, int64 (b,)
        exponents on the layer's device. per_row=False keeps one exponent for all index
        directions (the rows of P / 2^e_p), so that sums over outputs stay exact."""
        layer, dtype, device = self.layer, self.dtype, self.layer.device
        b = len(dirs)
        if dirs.indices is not None:
            idx = dirs.indices.to(device)
            if layer.p is None:
                c = torch.zeros(b, layer.d_hidden, dtype=dtype, device=device)
                c[torch.arange(b, device=device), idx] = 1
                return c, torch.zeros(b, dtype=torch.int64, device=device)
            if not per_row:
                p, e_p = self.output_projection()
                return p[idx], torch.full((b,), e_p, dtype=torch.int64, device=device)
            rows = layer.p[idx]
            e = _exponent(_peak(rows, "p", rows=True))
            return _scaled(rows, e, dtype), e
        u, e_u = self.vectors(dirs)
        if layer.p is None:
            return u, e_u
        p, e_p = self.output_projection()
        c = u @ p
        e_c = _exponent(_peak(c, "the coefficients Pᵀu", rows=True))
        return _scaled(c, e_c, dtype), e_u + e_p + e_c


def rescale(x: torch.Tensor, exponents: torch.Tensor, norms: torch.Tensor | None, what: str,
            start: int = 0) -> torch.Tensor:
    """x (b, ...) times 2^exponents (b,), in place, refusing what x's dtype cannot hold.

    norms (b,): the largest |eigenvalue| of each direction before scaling (None: the largest
    |entry| of each row of x, as for matrices Q). Refused:
    a scaled value past the dtype's largest number, or a nonzero norm scaled below its smallest
    normal number (the answer would be rounded to a few bits or to zero). `what` names the
    values; `start` is the batch position of the first row, for the message."""
    exponents = exponents.to(device=x.device, dtype=torch.int64)
    if not bool((exponents != 0).any()):
        return x
    info = torch.finfo(x.dtype)
    # log2 of the scaled peaks, in float64 so that nothing overflows while checking
    peak_x = x.reshape(len(x), -1).abs().amax(-1).to(torch.float64)
    norms = peak_x if norms is None else norms
    top = torch.log2(peak_x) + exponents
    low = torch.log2(norms.to(device=x.device, dtype=torch.float64)) + exponents
    over = top >= math.log2(info.max)
    under = (norms != 0).to(x.device) & (low < math.log2(info.tiny))
    for bad, where, logs in ((over, "above the largest", top), (under, "below the smallest normal", low)):
        if bool(bad.any()):
            i = int(bad.nonzero()[0])
            limit = info.max if bad is over else info.tiny
            remedy = ("use dtype=torch.float64 (or rescale the weights)" if x.dtype != torch.float64
                      else "rescale the weights")
            raise ValueError(
                f"{what} of the direction at position {start + i} are about {_power_of_two(float(logs[i]))}, "
                f"{where} {str(x.dtype).replace('torch.', '')} number ({limit:.3g}): this working "
                f"precision cannot hold them; {remedy}"
            )
    return times_power_of_two_(x, exponents.reshape(-1, *([1] * (x.ndim - 1))))


def _power_of_two(log2: float) -> str:
    """2^log2 written in decimal, even where a float cannot hold it."""
    log10 = log2 * math.log10(2)
    exp = math.floor(log10)
    return f"{10 ** (log10 - exp):.2f}e{exp:+d}"
