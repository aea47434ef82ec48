"""Output directions u and their hidden-space coefficients c = Pᵀ u.

A direction is given as output indices (one-hot u: an int, a sequence of ints, a 1-D integer
tensor or array) or as float vectors in output space of shape (o,) or (b, o).
"""
from __future__ import annotations

import numbers
from dataclasses import dataclass

import numpy as np
import torch

from ._arrays import _is_cupy, check_finite, check_tensor_storage, numpy_to_torch
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
    if isinstance(directions, (bool, np.bool_)):
        raise TypeError("directions must be output indices or float direction vectors, got a bool")
    if isinstance(directions, numbers.Integral):
        directions = [directions]
    if isinstance(directions, (list, tuple, range)):
        t = _from_sequence(directions, d_out)
    elif isinstance(directions, torch.Tensor):
        check_tensor_storage(directions, "directions")
        t = directions
    elif isinstance(directions, np.ndarray):
        if directions.dtype.kind in "iu":
            _check_index_range(directions.reshape(-1), d_out)  # before a cast that could wrap
        t = numpy_to_torch(directions, "directions", kinds="iuf")
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
        t = t.reshape(-1)
        if t.numel() == 0:
            raise ValueError("directions is empty: give at least one output index or direction")
        _check_index_range(t, d_out)
        return Directions(t.to(torch.int64).cpu(), None)

    if t.ndim not in (1, 2) or t.shape[-1] != d_out:
        raise ValueError(f"float directions must have shape (o,) or (b, o) with o = d_out = {d_out}, got {tuple(t.shape)}")
    if t.ndim == 1:
        t = t[None]
    if t.shape[0] == 0:
        raise ValueError("directions is empty: give at least one output index or direction")
    check_finite(t, "directions")
    return Directions(None, t)


def _is_index(x) -> bool:
    """An int in any of its forms: Python, NumPy, or a 0-D integer tensor or array."""
    if isinstance(x, (bool, np.bool_)):
        return False
    if isinstance(x, numbers.Integral):
        return True
    if isinstance(x, torch.Tensor):
        return x.ndim == 0 and not (x.is_floating_point() or x.is_complex() or x.dtype == torch.bool)
    if isinstance(x, np.ndarray):
        return x.ndim == 0 and x.dtype.kind in "iu"
    return False


def _from_sequence(directions, d_out: int) -> torch.Tensor:
    """A list, tuple or range: all ints are output indices; anything else must be a rectangular
    (o,) or (b, o) list of real numbers."""
    if len(directions) == 0:
        raise ValueError("directions is empty: give at least one output index or direction")
    if all(_is_index(i) for i in directions):
        indices = [int(i) for i in directions]
        # range-checked as Python ints: 2**70 is out of range, not an overflow inside torch
        _check_index_range(indices, d_out)
        return torch.tensor(indices, dtype=torch.int64)
    try:
        array = np.asarray(directions, dtype=np.float64)
    except (ValueError, TypeError) as err:
        raise ValueError(
            "directions given as a list must be output indices (ints) or float vectors of one length "
            f"(a rectangular (o,) or (b, o) list); this one is not ({err})") from None
    return torch.from_numpy(array)


def _check_index_range(indices, d_out: int) -> None:
    if isinstance(indices, (torch.Tensor, np.ndarray)):
        bad = (indices < 0) | (indices >= d_out)
        first = int(indices[bad][0]) if bool(bad.any()) else None
    else:
        first = next((i for i in indices if not 0 <= i < d_out), None)
    if first is not None:
        raise ValueError(f"direction index {first} is out of range for a layer with d_out = {d_out} (valid: 0..{d_out - 1})")
