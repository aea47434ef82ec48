"""Exact pixel-space decomposition of every class logit of the trained digits model.

With the embedding E folded into the bilinear layer (W' = W E, V' = V E) and the head row of a
class as output direction (c = Pᵀ Hᵀ e_class), the class logit is xᵀ Q x with Q a 64 × 64
symmetric matrix: logit(x) = Σ_i λ_i (v_iᵀ x)² over its eigenpairs, exactly (the model has no
biases, so there is no linear or constant term to account for).
"""
from __future__ import annotations

import copy
import time
from dataclasses import dataclass

import numpy as np
import torch

from ..adapters.data_analysis import truncation_curve
from ..decompose import decompose
from ..layer import BilinearLayer
from ..result import DecompositionResult
from .training import DigitsBilinear

MAX_TRUNCATION_K = 20


@dataclass
class PixelDecomposition:
    """The folded layer, the head rows used as directions, and the full spectrum of each class."""

    layer: BilinearLayer
    directions: torch.Tensor
    result: DecompositionResult
    seconds: float


def pixel_space_layer(model: DigitsBilinear, dtype: torch.dtype = torch.float64) -> tuple[BilinearLayer, torch.Tensor]:
    """(layer on pixels, class directions (10, d)): W E, V E, P and the head rows, in `dtype`."""
    with torch.no_grad():
        e = model.embed.weight.to(dtype)
        layer = BilinearLayer(model.w.weight.to(dtype) @ e, model.v.weight.to(dtype) @ e,
                              model.p.weight.to(dtype))
        return layer, model.head.weight.to(dtype).clone()


def exact_method(layer: BilinearLayer) -> str:
    """The exact solver for this shape: the low-rank reduction when 2h < d, else dense eigh."""
    return "lowrank" if 2 * layer.d_hidden < layer.d_form else "eigh"


def decompose_classes(model: DigitsBilinear) -> PixelDecomposition:
    """Every eigenpair of every class's interaction matrix, in float64, largest |λ| first."""
    layer, directions = pixel_space_layer(model)
    started = time.perf_counter()
    result = decompose(layer, directions, k=None, which="LM", method=exact_method(layer))
    return PixelDecomposition(layer, directions, result, time.perf_counter() - started)


def eigen_logits(result: DecompositionResult, x: torch.Tensor, k: int | None = None) -> torch.Tensor:
    """Logits (n, classes) rebuilt from the top-k eigenpairs of each class (all when k is None):
    Σ_{i<k} λ_i (v_iᵀ x)²."""
    acts = result.activations(x.to(result.eigenvectors.dtype).to(result.eigenvectors.device))
    return (acts if k is None else acts[..., :k]).sum(-1)


def reconstruction_error(model: DigitsBilinear, result: DecompositionResult, x: torch.Tensor) -> float:
    """max |model logit − Σ λ (vᵀx)²| / max |model logit| over `x`, both in float64: the check
    that the decomposition is exact (it is, up to rounding)."""
    reference = copy.deepcopy(model).to(device=result.eigenvectors.device, dtype=torch.float64)
    with torch.no_grad():
        logits = reference(x.to(device=result.eigenvectors.device, dtype=torch.float64))
    rebuilt = eigen_logits(result, x)
    return float((logits - rebuilt).abs().max() / logits.abs().max())


def truncation_points(result: DecompositionResult, x: torch.Tensor, y: torch.Tensor,
                      max_k: int = MAX_TRUNCATION_K) -> list[dict]:
    """Test accuracy (and the logits' relative error and correlation) when each class keeps only
    its top-k eigenvectors by |λ|, k = 1..max_k: `truncation_curve` in the report's terms."""
    ks = range(1, min(max_k, result.k) + 1)
    curve = truncation_curve(result, x, ks, targets=y)
    return [{"k": r["k"], "test_accuracy": r["accuracy"], "relative_error": r["relative_error"],
             "mean_correlation": r["mean_correlation"]} for r in curve.records()]


def effective_rank(eigenvalues, share: float = 0.9) -> list[int]:
    """Per class: the fewest eigenvalues (largest |λ| first) whose squares hold `share` of Σλ²."""
    values = np.asarray(eigenvalues, dtype=np.float64)
    energy = np.sort(values**2, axis=-1)[..., ::-1]
    cumulative = np.cumsum(energy, axis=-1) / energy.sum(-1, keepdims=True)
    return [int(n) for n in (cumulative < share - 1e-12).sum(-1) + 1]
