"""The deep model decomposed through depth: every class logit exactly, the tree of features down to
pixels, and how much accuracy the top features per level keep.

`decompose_network` orthogonalizes each level and diagonalizes the top: each class logit is
Σ_j μ_j (w_jᵀ g_{L-1})². Each top feature w_j is a quadratic form one level down (`expand`),
whose eigenvectors are features of the level below (`expand_vector`), down to level 0, where
eigenvectors are pixel weights (the constant coordinate last, not drawn).
"""
from __future__ import annotations

import copy
import time
from dataclasses import dataclass

import numpy as np
import torch

from ..network.network import BilinearNetwork
from ..network.network_decomposition import NetworkDecomposition, decompose_network
from ..network.network_truncation import network_truncation_curve

# the ranks kept per level in the demo's truncation curve (the full rank is added)
CURVE_RANKS = (1, 2, 3, 4, 6, 8, 12, 16, 24)
# "the top few features per level" that the report states the accuracy of
FEW = (2, 4, 8)


@dataclass
class DepthDecomposition:
    network: BilinearNetwork
    result: NetworkDecomposition
    seconds: float


def decompose_through_depth(model) -> DepthDecomposition:
    """The trained model read as a float64 BilinearNetwork and decomposed along every class, exactly."""
    with torch.no_grad():
        net = BilinearNetwork.from_module(copy.deepcopy(model).cpu().double())
    started = time.perf_counter()
    result = decompose_network(net, list(range(net.d_out)))
    return DepthDecomposition(net, result, time.perf_counter() - started)


def reconstruction_error(model, result: NetworkDecomposition, x: torch.Tensor) -> float:
    """max |model logit − Σ_j μ_j (w_jᵀ g(x))²| / max |model logit| over `x`, both in float64."""
    reference = copy.deepcopy(model).cpu().double()
    with torch.no_grad():
        logits = reference(x.cpu().double())
    rebuilt = result.outputs(x.cpu().double())
    return float((logits - rebuilt).abs().max() / logits.abs().max())


def truncation(net: BilinearNetwork, x: torch.Tensor, y: torch.Tensor) -> list[dict]:
    """Test accuracy and relative error of the network keeping the top r features per level."""
    full = net.d_stream + 1
    ranks = sorted({r for r in CURVE_RANKS if r < full} | {full})
    return network_truncation_curve(net, x.cpu().double(), labels=y.cpu(), ranks=ranks)


def few_features_summary(curve: list[dict]) -> dict:
    """Accuracy kept by the top FEW features per level, and the smallest rank within one point."""
    by_rank = {p["rank"]: p for p in curve}
    full = curve[-1]["network_accuracy"]
    within = next((p["rank"] for p in curve if p["accuracy"] >= full - 0.01), None)
    return {"network_accuracy": full,
            "kept": [{"rank": r, "accuracy": by_rank[r]["accuracy"], "relative_error": by_rank[r]["relative_error"],
                      "share_of_accuracy": by_rank[r]["accuracy"] / full if full else None}
                     for r in FEW if r in by_rank],
            "smallest_rank_within_1pt": within}


@dataclass
class Leaf:
    """One path down the tree from a top feature: the eigenvalue at each level below the top (λ of
    the child feature, then of its top child, ...) and the pixel eigenvector it ends in."""

    eigenvalues: list[float]
    pixels: np.ndarray  # (64,): √|λ₀| times the level-0 eigenvector's pixel part


def feature_leaves(result: NetworkDecomposition, row: int, j: int, children: int = 4) -> list[Leaf]:
    """Top feature j of direction row `row`, expanded to pixels: its top `children` features one
    level down (by |λ|), each followed down through its own top eigenvector to level 0."""
    levels = len(result.levels)
    if levels == 0:
        raise ValueError("a one-layer network's eigenvectors are already pixels: there is no tree to expand")
    below = result.expand(row, j)
    leaves = []
    for a in range(min(children, below.k)):
        values = [float(below.eigenvalues[0, a])]
        form, vector, level = below, below.eigenvectors[0, :, a], levels - 1
        while level > 0:
            form = result.expand_vector(level, vector, k=1)
            vector, level = form.eigenvectors[0, :, 0], level - 1
            values.append(float(form.eigenvalues[0, 0]))
        pixels = vector[:-1].cpu().numpy()  # the constant coordinate (last) is not a pixel
        if pixels.size and pixels[np.argmax(np.abs(pixels))] < 0:
            pixels = -pixels  # v and −v are the same eigenvector: show the largest |entry| positive
        leaves.append(Leaf(values, pixels * abs(values[-1]) ** 0.5))
    return leaves

