"""The published decomposition of the digits model beside the exact one, and how far apart they are.

Published mode: eigendecompose each class's Q in the model's hidden space (the bilinear layer's own
input, x = E z), then map every eigenvector to pixels as Eᵀ v. The mapped vectors rebuild the
logits exactly but are not orthonormal in pixel space, so they are not the eigenvectors of the
pixel-space form Eᵀ Q E that the exact mode (analysis.decompose_classes) decomposes.
"""
from __future__ import annotations

import torch

from ..decompose import decompose
from ..layer import BilinearLayer
from ..result import DecompositionResult
from .training import DigitsBilinear


def published_decomposition(model: DigitsBilinear, dtype: torch.dtype = torch.float64) -> DecompositionResult:
    """Every hidden-space eigenpair of every class, largest |λ| first, mapped to pixels (Eᵀ v)."""
    with torch.no_grad():
        layer = BilinearLayer(model.w.weight.to(dtype), model.v.weight.to(dtype), model.p.weight.to(dtype))
        hidden = decompose(layer, model.head.weight.to(dtype), k=None, which="LM", method="eigh")
        return hidden.map_input(model.embed.weight.to(dtype))


def compare_modes(exact: DecompositionResult, published: DecompositionResult) -> list[dict]:
    """Per class: the largest-|λ| eigenvalue of each mode, their relative difference, and |cos| between
    the exact top eigenvector and the published one normalized."""
    rows = []
    for c in range(exact.eigenvalues.shape[0]):
        lam_exact, lam_pub = float(exact.eigenvalues[c, 0]), float(published.eigenvalues[c, 0])
        v_exact = exact.eigenvectors[c, :, 0]
        v_pub = published.eigenvectors[c, :, 0]
        cos = float((v_exact @ v_pub).abs() / torch.linalg.vector_norm(v_pub))
        rows.append({"digit": c, "exact_top_eigenvalue": lam_exact, "published_top_eigenvalue": lam_pub,
                     "relative_difference": abs(lam_pub - lam_exact) / abs(lam_exact),
                     "top_eigenvector_abs_cos": cos})
    return rows
