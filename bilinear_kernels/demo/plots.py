"""The demo's figures: eigenvectors as 8×8 images, eigenvalue spectra, the truncation curve."""
from __future__ import annotations

from pathlib import Path

import numpy as np

CMAP = "RdBu_r"  # diverging: red positive, blue negative, white zero


def _pyplot():
    try:
        import matplotlib
    except ImportError as err:
        raise ImportError("the demo needs scikit-learn and matplotlib: pip install 'bilinear-kernels[demo]'") from err
    matplotlib.use("Agg")  # files only, no display needed
    import matplotlib.pyplot as plt

    return plt


def top_by_sign(values: np.ndarray, n: int) -> tuple[list[int], list[int]]:
    """Indices of the n largest positive and the n most negative eigenvalues of one class."""
    order = np.argsort(-values, kind="stable")
    positive = [int(i) for i in order if values[i] > 0][:n]
    negative = [int(i) for i in order[::-1] if values[i] < 0][:n]
    return positive, negative


def eigenvector_grid(values: np.ndarray, vectors: np.ndarray, path: Path, n: int = 4,
                     class_means: np.ndarray | None = None) -> Path:
    """One row per digit: its n top positive then n top negative eigenvectors as 8×8 images.

    values (classes, k), vectors (classes, 64, k); class_means (classes, 64), optional, is shown
    in grey in a first column for reference. Each eigenvector image is scaled to its own max
    |entry| with the colormap centred at zero, so a pixel's colour says its sign and relative weight.
    """
    plt = _pyplot()
    classes = values.shape[0]
    lead = 1 if class_means is not None else 0
    cols = lead + 2 * n
    fig, axes = plt.subplots(classes, cols, figsize=(1.15 * cols + 1.4, 1.22 * classes + 0.9), squeeze=False,
                             gridspec_kw={"wspace": 0.15, "hspace": 0.42, "left": 0.09, "right": 0.88,
                                          "top": 1 - 0.75 / (1.22 * classes + 0.9), "bottom": 0.01})
    for ax in axes.flat:
        ax.set_xticks([])
        ax.set_yticks([])
        for spine in ax.spines.values():
            spine.set_visible(False)
    image = None
    for c in range(classes):
        if lead:
            axes[c, 0].imshow(class_means[c].reshape(8, 8), cmap="Greys", interpolation="nearest")
        positive, negative = top_by_sign(values[c], n)
        slots = positive + [None] * (n - len(positive)) + negative + [None] * (n - len(negative))
        for j, i in enumerate(slots):
            if i is None:
                continue
            ax = axes[c, lead + j]
            img = vectors[c, :, i].reshape(8, 8)
            scale = float(np.abs(img).max()) or 1.0
            image = ax.imshow(img / scale, cmap=CMAP, vmin=-1, vmax=1, interpolation="nearest")
            ax.set_title(f"λ={values[c, i]:+.2f}", fontsize=7, pad=2)
        axes[c, 0].set_ylabel(f"digit {c}", fontsize=9, rotation=0, ha="right", va="center", labelpad=6)
    headers = (["mean"] if lead else []) + [f"+{j + 1}" for j in range(n)] + [f"−{j + 1}" for j in range(n)]
    for j, label in enumerate(headers):
        axes[0, j].annotate(label, (0.5, 1.32), xycoords="axes fraction", ha="center", va="bottom",
                            fontsize=8, weight="bold")
    fig.suptitle("Eigenvectors of each digit's logit in pixel space: "
                 f"+ the {n} largest positive λ (evidence for), − the {n} most negative (evidence against)",
                 fontsize=9, y=0.998)
    if image is not None:
        cax = fig.add_axes([0.905, 0.35, 0.015, 0.3])
        cbar = fig.colorbar(image, cax=cax, ticks=[-1, 0, 1])
        cbar.ax.set_yticklabels(["−max", "0", "+max"], fontsize=7)
        cbar.set_label("each image scaled to its own max |entry|", fontsize=7)
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def spectra(values: np.ndarray, path: Path, top: int = 5) -> Path:
    """Per digit, all its eigenvalues in decreasing order (bars coloured by sign); the title says
    what share of Σλ² (= ‖Q‖²_F) the `top` largest |λ| hold, i.e. how few eigenvectors carry it."""
    plt = _pyplot()
    classes = values.shape[0]
    cols = 5
    rows = -(-classes // cols)
    fig, axes = plt.subplots(rows, cols, figsize=(3.0 * cols, 2.3 * rows), sharex=True, squeeze=False)
    for c in range(classes):
        ax = axes[c // cols, c % cols]
        sorted_vals = np.sort(values[c])[::-1]
        colours = np.where(sorted_vals >= 0, "#c0392b", "#2c6fb0")
        ax.bar(np.arange(len(sorted_vals)), sorted_vals, color=colours, width=0.85)
        energy = np.sort(values[c] ** 2)[::-1]
        share = energy[:top].sum() / max(energy.sum(), np.finfo(float).tiny)
        ax.axhline(0, color="black", lw=0.6)
        ax.set_title(f"digit {c}: top {top} |λ| hold {100 * share:.0f}% of Σλ²", fontsize=8)
        ax.tick_params(labelsize=7)
    for j in range(classes, rows * cols):
        axes[j // cols, j % cols].set_visible(False)
    for ax in axes[-1]:
        ax.set_xlabel("eigenvalue rank (decreasing λ)", fontsize=8)
    for ax in axes[:, 0]:
        ax.set_ylabel("λ", fontsize=8)
    fig.suptitle("Eigenvalue spectrum of each digit's interaction matrix (red λ > 0, blue λ < 0)", fontsize=10)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def truncation(curve: list[dict], full_accuracy: float, path: Path) -> Path:
    """Test accuracy against k, the eigenvectors each class keeps, with the full model's line."""
    plt = _pyplot()
    ks = [p["k"] for p in curve]
    acc = [100 * p["test_accuracy"] for p in curve]
    fig, ax = plt.subplots(figsize=(6.0, 3.8))
    ax.plot(ks, acc, marker="o", ms=4, color="#2c6fb0", label="top-k eigenvectors per class")
    ax.axhline(100 * full_accuracy, color="#c0392b", ls="--", lw=1.2,
               label=f"full model ({100 * full_accuracy:.1f}%)")
    ax.set_xlabel("k (eigenvectors kept per class, by |λ|)")
    ax.set_ylabel("test accuracy (%)")
    ax.set_xticks(ks)
    ax.set_ylim(max(0.0, min(acc) - 5), 100.5)
    ax.grid(alpha=0.3)
    ax.legend(loc="lower right", fontsize=9)
    ax.set_title("Accuracy of the truncated decomposition", fontsize=10)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path
