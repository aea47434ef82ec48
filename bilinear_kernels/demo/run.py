"""`bilinear-kernels demo`: train, decompose every class logit in pixel space, write the figures
and the report; then the same through depth for a 3-layer residual model, and the effect of weight
decay on the 1-layer model's effective rank."""
from __future__ import annotations

import platform
import time
from dataclasses import replace
from pathlib import Path

import torch

from ..primitives.output_svd import output_svd
from .analysis import (MAX_TRUNCATION_K, decompose_classes, effective_rank, reconstruction_error,
                       truncation_points)
from .deep import DeepConfig, train_deep
from .depth import decompose_through_depth, feature_leaves, few_features_summary
from .depth import reconstruction_error as depth_reconstruction_error
from .depth import truncation as depth_truncation
from .plots import PUBLISHED_SIGN_NOTE, eigenvector_grid, network_tree, output_spectrum, spectra, truncation
from .published import compare_modes, published_decomposition
from .report import write_json, write_markdown
from .training import TrainingConfig, accuracy, load_digits_split, train

# the digits whose tree network_tree.png draws, the top features per digit and children per feature
TREE_DIGITS = (0, 3, 7)
TREE_FEATURES = 2
TREE_CHILDREN = 4

FILES = {
    "eigenvectors.png": "top positive and negative eigenvectors of each digit as 8×8 images",
    "eigenvectors_published.png": "the same for the published mode (hidden-space eigenvectors mapped to pixels, Eᵀv)",
    "output_svd.png": "output-mode singular values of the layer's whole interaction tensor in pixel space",
    "spectra.png": "eigenvalue spectrum of each digit's interaction matrix",
    "truncation.png": "test accuracy keeping the top-k eigenvectors per class, k = 1..20",
    "network_tree.png": "the 3-layer residual model through depth: top eigenvalues of a few digits, each top "
                        "feature expanded to pixels, and the truncation curve against the rank kept per level",
    "report.json": "every number of this run",
    "report.md": "this report",
}


def run_demo(out_dir="demo_out", *, seed: int = 0, hidden: int = 64, epochs: int | None = None,
             device=None, progress: bool = True) -> dict:
    """Train the digits classifier, decompose it and write FILES into `out_dir`; returns the report."""
    started = time.perf_counter()
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    from ..sweep.pipeline import resolve_device

    dev = resolve_device(device)
    config = TrainingConfig(hidden=hidden, seed=seed)
    if epochs is not None:
        config.epochs = epochs
    data = load_digits_split()
    trained = train(data, config, dev, progress=progress)
    model = trained.model

    pixel = decompose_classes(model)
    res = pixel.result
    vals = res.eigenvalues.detach().cpu().numpy()
    vecs = res.eigenvectors.detach().cpu().numpy()
    test_acc = accuracy(model, data.x_test.to(dev), data.y_test.to(dev))
    curve = truncation_points(res, data.x_test, data.y_test, MAX_TRUNCATION_K)

    means = torch.stack([data.x_test[data.y_test == c].mean(0) for c in range(vals.shape[0])]).numpy()
    eigenvector_grid(vals, vecs, out / "eigenvectors.png", class_means=means,
                     note="Exact mode: eigenvectors of each logit's pixel-space form Eᵀ Q E, orthonormal.")
    published = published_decomposition(model)
    eigenvector_grid(published.eigenvalues.cpu().numpy(), published.eigenvectors.cpu().numpy(),
                     out / "eigenvectors_published.png", class_means=means,
                     title="Published mode: each digit's eigenvectors found in hidden space, mapped to pixels as Eᵀv",
                     note="Published mode: Eᵀv rebuilds the logits exactly but is not orthonormal in pixel space, "
                          "so these are not the exact mode's eigenvectors.", sign_note=PUBLISHED_SIGN_NOTE)
    sigma, _ = output_svd(pixel.layer)
    sigma = sigma.cpu().numpy()
    output_spectrum(sigma, out / "output_svd.png")
    spectra(vals, out / "spectra.png")
    truncation(curve, test_acc, out / "truncation.png")

    depth = _through_depth(data, config, seed, dev, progress, out)
    weight_decay = _weight_decay_effect(data, config, vals, test_acc, dev, progress)

    within = next((p["k"] for p in curve if p["test_accuracy"] >= test_acc - 0.01), None)
    report = {
        "dataset": {"name": "scikit-learn digits (8x8)", "train": len(data.y_train), "test": len(data.y_test),
                    "split_seed": 0, "pixels": 64},
        "model": {"hidden": hidden, "biases": False,
                  "parameters": sum(p.numel() for p in model.parameters())},
        "training": {"seed": seed, "epochs": config.epochs, "batch_size": config.batch_size, "lr": config.lr,
                     "weight_decay": config.weight_decay, "input_noise": config.input_noise,
                     "device": str(dev), "seconds": round(trained.seconds, 3), "history": trained.history},
        "accuracy": {"train": accuracy(model, data.x_train.to(dev), data.y_train.to(dev)), "test": test_acc},
        "decomposition": {
            "method": res.method, "dtype": "float64", "seconds": round(pixel.seconds, 4),
            "eigenpairs_per_class": res.k,
            "relative_reconstruction_error": reconstruction_error(model, res, data.x_test),
            "max_residual": float(res.residuals.abs().max()),
            "classes": [_class_summary(c, vals[c]) for c in range(vals.shape[0])],
        },
        "published_mode": {
            "what": "hidden-space eigendecomposition of each class, eigenvectors mapped to pixels as E^T v",
            "classes": compare_modes(res, published),
        },
        "output_svd": _svd_summary(sigma),
        "truncation": curve,
        "truncation_summary": {"full_test_accuracy": test_acc, "smallest_k_within_1pt": within},
        "depth": depth,
        "weight_decay": weight_decay,
        "files": dict(FILES),
        "versions": {"bilinear_kernels": _version(), "torch": torch.__version__,
                     "python": platform.python_version()},
    }
    report["seconds_total"] = round(time.perf_counter() - started, 3)
    write_json(report, out / "report.json")
    write_markdown(report, out / "report.md")
    return report


def _through_depth(data, config, seed, dev, progress, out) -> dict:
    """Train the 3-layer residual model, decompose it through depth, draw its tree; the report's part."""
    deep_config = DeepConfig(epochs=config.epochs, seed=seed)
    trained = train_deep(data, deep_config, dev, progress=progress)
    depth = decompose_through_depth(trained.model)
    res = depth.result
    curve = depth_truncation(depth.network, data.x_test, data.y_test)
    leaves = {(digit, j): feature_leaves(res, digit, j, TREE_CHILDREN)
              for digit in TREE_DIGITS for j in range(TREE_FEATURES)}
    values = res.eigenvalues.cpu().numpy()
    network_tree(list(TREE_DIGITS), values, leaves, curve, out / "network_tree.png", deep_config.layers)
    return {
        "model": {"layers": deep_config.layers, "hidden": deep_config.hidden, "residual": True, "biases": False,
                  "parameters": sum(p.numel() for p in trained.model.parameters())},
        "training": {"optimizer": "AdamW", "schedule": "cosine annealing per epoch", "epochs": deep_config.epochs,
                     "batch_size": deep_config.batch_size, "lr": deep_config.lr,
                     "weight_decay": deep_config.weight_decay, "seed": seed, "seconds": round(trained.seconds, 3)},
        "accuracy": {"train": accuracy(trained.model, data.x_train.to(dev), data.y_train.to(dev)),
                     "test": accuracy(trained.model, data.x_test.to(dev), data.y_test.to(dev))},
        "decomposition": {"seconds": round(depth.seconds, 4), "ranks": res.ranks,
                          "singular_values": [[float(x) for x in s] for s in res.singular_values],
                          "eigenpairs_per_class": res.k,
                          "relative_reconstruction_error": depth_reconstruction_error(trained.model, res, data.x_test),
                          "top_eigenvalues": {str(c): [float(v) for v in values[c, :5]] for c in range(len(values))}},
        "truncation": curve,
        "few_features": few_features_summary(curve),
        "tree": {str(digit): [{"feature": j + 1, "mu": float(values[digit, j]),
                               "paths": [leaf.eigenvalues for leaf in leaves[(digit, j)]]}
                              for j in range(TREE_FEATURES)] for digit in TREE_DIGITS},
    }


def _weight_decay_effect(data, config, vals, test_acc, dev, progress) -> dict:
    """The 1-layer model trained again without weight decay (all else equal): effective rank per
    class (eigenvalues holding 90% of Σλ²) with and without."""
    without = train(data, replace(config, weight_decay=0.0), dev, progress=progress)
    values = decompose_classes(without.model).result.eigenvalues.cpu().numpy()
    with_rank, without_rank = effective_rank(vals), effective_rank(values)
    return {"share": 0.9, "with": {"weight_decay": config.weight_decay, "test_accuracy": test_acc,
                                   "effective_rank": with_rank, "mean": sum(with_rank) / len(with_rank)},
            "without": {"weight_decay": 0.0,
                        "test_accuracy": accuracy(without.model, data.x_test.to(dev), data.y_test.to(dev)),
                        "effective_rank": without_rank, "mean": sum(without_rank) / len(without_rank)}}


def _class_summary(digit: int, values) -> dict:
    """values: one class's eigenvalues, largest |λ| first."""
    energy = values ** 2
    return {"digit": digit, "top_abs_eigenvalue": float(values[0]),
            "top_positive": float(max(values.max(), 0.0)), "top_negative": float(min(values.min(), 0.0)),
            "top5_share_of_squared_eigenvalues": float(energy[:5].sum() / energy.sum()),
            "top_eigenvalues": [float(v) for v in values[:MAX_TRUNCATION_K]]}


def _svd_summary(sigma) -> dict:
    """The output-mode singular values of the pixel-space tensor and the share of Σσ² they hold."""
    energy = sigma**2
    share = energy.cumsum() / energy.sum()
    return {"of": "the bilinear layer in pixel space (W E, V E, P), tensor unfolded as (o, d^2)",
            "singular_values": [float(x) for x in sigma],
            "share_of_squares_top": {str(n): float(share[n - 1]) for n in (1, 5, 10) if n <= len(sigma)},
            "components_for_90_percent": int((share < 0.9).sum()) + 1}


def _version() -> str:
    from .. import __version__

    return __version__
