"""Output directions u and their hidden-space coefficients c = Pᵀ u.

A direction is given as output indices (one-hot u: an int, a sequence of ints, a 1-D integer
tensor or array) or as float vectors in output space of shape (o,) or (b, o).
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from ._arrays import _is_cupy, check_finite
from .layer import BilinearLayer


@dataclass
class Directions:
    """Parsed directions: exactly one of `indices` (b,) int64 or `vectors` (b, o) is set."""

    indices: torch.Tensor | None
    vectors: torch.Tensor | None

    def __len__(self) -> int:
        return len(self.indices) if self.indices is not None else self.vectors.shape[0]

    def chunk(self, start: int, stop: int) -> "Directions":
        if self.indices is not None:
            return Directions(self.indices[start:stop], None)
        return Directions(None, self.vectors[start:stop])

    def coefficients(self, layer: BilinearLayer, dtype: torch.dtype) -> torch.Tensor:
        """c = Pᵀ u for every direction, (b, h) in `dtype` on the layer's device."""
        if self.indices is not None:
            idx = self.indices.to(layer.device)
            if layer.p is None:
                c = torch.zeros(len(idx), layer.d_hidden, dtype=dtype, device=layer.device)
                c[torch.arange(len(idx), device=layer.device), idx] = 1
                return c
            return layer.p.to(dtype)[idx]
        u = self.vectors.to(device=layer.device, dtype=dtype)
        return u if layer.p is None else u @ layer.p.to(dtype)


def parse_directions(directions, d_out: int) -> Directions:
    """Validate `directions` against the layer's output size `d_out`."""
    if isinstance(directions, bool) or isinstance(directions, (np.bool_,)):
        raise TypeError("directions must be output indices or float direction vectors, got a bool")
    if isinstance(directions, (int, np.integer)):
        directions = [int(directions)]
    if isinstance(directions, (list, tuple, range)):
        if len(directions) == 0:
            raise ValueError("directions is empty: give at least one output index or direction")
        if all(isinstance(i, (int, np.integer)) and not isinstance(i, bool) for i in directions):
            t = torch.tensor([int(i) for i in directions], dtype=torch.int64)
        else:
            t = torch.as_tensor(np.asarray(directions, dtype=np.float64))
    elif isinstance(directions, torch.Tensor):
        t = directions
    elif isinstance(directions, np.ndarray):
        t = torch.from_numpy(np.ascontiguousarray(directions))
    elif _is_cupy(directions):
        t = torch.from_dlpack(directions)
    else:
        raise TypeError(
            "directions must be an int, a sequence of ints, an integer tensor of indices, or a float "
            f"tensor of shape (o,) or (b, o); got {type(directions).__name__}"
        )

    if t.dtype == torch.bool or t.is_complex():
        raise TypeError(f"directions must be integer indices or real float vectors, got dtype {t.dtype}")
    if not t.is_floating_point():
        if t.ndim > 1:
            raise ValueError(f"index directions must be 0-D or 1-D, got shape {tuple(t.shape)}")
        t = t.reshape(-1).to(torch.int64)
        if t.numel() == 0:
            raise ValueError("directions is empty: give at least one output index or direction")
        bad = (t < 0) | (t >= d_out)
        if bool(bad.any()):
            first = int(t[bad][0])
            raise ValueError(f"direction index {first} is out of range for a layer with d_out = {d_out} (valid: 0..{d_out - 1})")
        return Directions(t.cpu(), None)

    if t.ndim not in (1, 2) or t.shape[-1] != d_out:
        raise ValueError(f"float directions must have shape (o,) or (b, o) with o = d_out = {d_out}, got {tuple(t.shape)}")
    if t.ndim == 1:
        t = t[None]
    if t.shape[0] == 0:
        raise ValueError("directions is empty: give at least one output index or direction")
    check_finite(t, "directions")
    return Directions(None, t)
