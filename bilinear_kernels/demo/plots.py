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


SIGN_NOTE = ("An eigenvector's sign is arbitrary (v and −v are the same eigenvector); each is shown with "
             "its largest-|entry| positive.")
PUBLISHED_SIGN_NOTE = ("An eigenvector's sign is arbitrary; each hidden-space eigenvector has its largest-|entry| "
                       "positive before it is mapped, so an image's own largest pixel may be negative.")


def eigenvector_grid(values: np.ndarray, vectors: np.ndarray, path: Path, n: int = 4,
                     class_means: np.ndarray | None = None, title: str | None = None,
                     note: str | None = None, sign_note: str = SIGN_NOTE) -> Path:
    """One row per digit: its n top positive then n top negative eigenvectors as 8×8 images.

    values (classes, k), vectors (classes, 64, k); class_means (classes, 64), optional, is shown
    in grey in a first column for reference. Each panel shows √|λ|·v, the pixel weights of its term
    λ (vᵀx)² = ±(√|λ| vᵀx)², and every panel of a row shares one colour scale (the bar at the row's
    end gives it), so a weak eigenvector looks weak beside a strong one of the same digit.
    """
    plt = _pyplot()
    classes = values.shape[0]
    lead = 1 if class_means is not None else 0
    cols = lead + 2 * n
    height = 1.22 * classes + 1.5
    fig, axes = plt.subplots(classes, cols, figsize=(1.15 * cols + 1.9, height), squeeze=False,
                             gridspec_kw={"wspace": 0.15, "hspace": 0.42, "left": 0.08, "right": 0.86,
                                          "top": 1 - 0.75 / height, "bottom": 0.7 / height})
    for ax in axes.flat:
        ax.set_xticks([])
        ax.set_yticks([])
        for spine in ax.spines.values():
            spine.set_visible(False)
    for c in range(classes):
        if lead:
            axes[c, 0].imshow(class_means[c].reshape(8, 8), cmap="Greys", interpolation="nearest")
        positive, negative = top_by_sign(values[c], n)
        slots = positive + [None] * (n - len(positive)) + negative + [None] * (n - len(negative))
        shown = [i for i in slots if i is not None]
        weights = {i: np.sqrt(abs(values[c, i])) * vectors[c, :, i] for i in shown}
        scale = max((float(np.abs(wt).max()) for wt in weights.values()), default=0.0) or 1.0
        image = None
        for j, i in enumerate(slots):
            if i is None:
                continue
            ax = axes[c, lead + j]
            image = ax.imshow(weights[i].reshape(8, 8), cmap=CMAP, vmin=-scale, vmax=scale, interpolation="nearest")
            ax.set_title(f"λ={values[c, i]:+.2f}", fontsize=7, pad=2)
        axes[c, 0].set_ylabel(f"digit {c}", fontsize=9, rotation=0, ha="right", va="center", labelpad=6)
        if image is not None:
            box = axes[c, -1].get_position()
            cax = fig.add_axes([box.x1 + 0.012, box.y0, 0.012, box.height])
            cbar = fig.colorbar(image, cax=cax, ticks=[-scale, 0, scale])
            cbar.ax.set_yticklabels([f"{-scale:.2g}", "0", f"{scale:.2g}"], fontsize=6)
    headers = (["mean"] if lead else []) + [f"+{j + 1}" for j in range(n)] + [f"−{j + 1}" for j in range(n)]
    for j, label in enumerate(headers):
        axes[0, j].annotate(label, (0.5, 1.32), xycoords="axes fraction", ha="center", va="bottom",
                            fontsize=8, weight="bold")
    fig.suptitle(title or ("Eigenvectors of each digit's logit in pixel space: "
                           f"+ the {n} largest positive λ (evidence for), − the {n} most negative (evidence against)"),
                 fontsize=9, y=0.998)
    fig.text(0.5, 0.45 / height, "Each panel shows √|λ|·v on one colour scale per row (the bar at the row's end). "
             + sign_note, ha="center", va="center", fontsize=7.5)
    if note:
        fig.text(0.5, 0.2 / height, note, ha="center", va="center", fontsize=7.5, style="italic")
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def output_spectrum(singular_values: np.ndarray, path: Path) -> Path:
    """The output-mode singular values of the whole interaction tensor, with their cumulative share
    of Σσ² (how many output directions carry the layer)."""
    plt = _pyplot()
    sigma = np.asarray(singular_values, dtype=float)
    share = np.cumsum(sigma**2) / max(float((sigma**2).sum()), np.finfo(float).tiny)
    fig, ax = plt.subplots(figsize=(6.0, 3.6))
    ranks = np.arange(1, len(sigma) + 1)
    ax.bar(ranks, sigma, color="#2c6fb0", width=0.85, label="σᵢ")
    ax.set_xlabel("output component i")
    ax.set_ylabel("singular value σᵢ")
    twin = ax.twinx()
    twin.plot(ranks, 100 * share, color="#c0392b", marker=".", ms=3, label="cumulative share of Σσ²")
    twin.set_ylabel("cumulative share of Σσ² (%)")
    twin.set_ylim(0, 101)
    ax.set_title("Output SVD of the layer's interaction tensor in pixel space, unfolded as (o, d²)", fontsize=9)
    handles = ax.get_legend_handles_labels()[0] + twin.get_legend_handles_labels()[0]
    ax.legend(handles, ["σᵢ", "cumulative share of Σσ²"], loc="center right", fontsize=8)
    fig.tight_layout()
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


def network_tree(digits: list[int], top_values: np.ndarray, leaves: dict, curve: list[dict], path: Path,
                 layers: int) -> Path:
    """The deep model's tree for a few digits, and its truncation curve.

    For each digit: a bar chart of its top-level eigenvalues μ_j (largest |μ| first), then one row
    per top feature j: the feature's top children one level down (by |λ|), each followed down to
    level 0 through its own top eigenvector and drawn as pixels, √|λ₀|·v, on one colour scale per
    row. `top_values` (classes, k) the top-level eigenvalues, `leaves[(digit, j)]` the list of
    `depth.Leaf` of that feature, `curve` the network truncation curve (with labels)."""
    from ..network.network_truncation_plot import plot_network_truncation

    plt = _pyplot()
    features = sorted({j for _, j in leaves})
    children = max(len(v) for v in leaves.values())
    rows = len(digits) * len(features)
    height = 1.25 * rows + 4.2
    fig = plt.figure(figsize=(2.6 + 1.25 * children + 0.8, height))
    grid = fig.add_gridspec(rows + 1, children + 2, width_ratios=[2.2] + [1] * children + [0.12],
                            height_ratios=[1] * rows + [2.9], hspace=0.7, wspace=0.25,
                            left=0.09, right=0.9, top=1 - 0.8 / height, bottom=0.45 / height)
    for n, digit in enumerate(digits):
        bars = fig.add_subplot(grid[n * len(features):(n + 1) * len(features), 0])
        shown = top_values[digit][:10]
        bars.bar(np.arange(1, len(shown) + 1), shown, color=np.where(shown >= 0, "#c0392b", "#2c6fb0"))
        bars.axhline(0, color="black", lw=0.6)
        bars.set_title(f"digit {digit}: top μ_j", fontsize=8)
        bars.set_xticks(np.arange(1, len(shown) + 1))
        bars.tick_params(labelsize=6)
        for f, j in enumerate(features):
            row = n * len(features) + f
            panels = leaves[(digit, j)]
            scale = max(float(np.abs(leaf.pixels).max()) for leaf in panels) or 1.0
            image = None
            for a, leaf in enumerate(panels):
                ax = fig.add_subplot(grid[row, 1 + a])
                image = ax.imshow(leaf.pixels.reshape(8, 8), cmap=CMAP, vmin=-scale, vmax=scale,
                                  interpolation="nearest")
                ax.set_xticks([])
                ax.set_yticks([])
                ax.set_title(" → ".join(f"{v:+.2g}" for v in leaf.eigenvalues), fontsize=6, pad=2)
                if a == 0:
                    ax.set_ylabel(f"μ_{j + 1}={top_values[digit][j]:+.2g}", fontsize=7)
            cax = fig.add_subplot(grid[row, children + 1])
            cbar = fig.colorbar(image, cax=cax, ticks=[-scale, 0, scale])
            cbar.ax.set_yticklabels([f"{-scale:.2g}", "0", f"{scale:.2g}"], fontsize=5)
    curve_ax = fig.add_subplot(grid[rows, :children + 1])
    plot_network_truncation(curve, ax=curve_ax, full_accuracy=curve[-1].get("network_accuracy"),
                            title="Truncation: test accuracy and relative error keeping the top r features per level")
    curve_ax.title.set_fontsize(9)
    fig.suptitle(f"The {layers}-layer residual model through depth: each digit's top features μ_j (w_jᵀ g)², "
                 "expanded to pixels", fontsize=9.5, y=0.997)
    fig.text(0.5, 1 - 0.5 / height, "Row: one top feature. Panel: one of its top children one level down, followed "
             "through top eigenvectors to pixels (titles: λ at each level down; below the first, their signs follow the "
             "arbitrary sign of the vector above), √|λ₀|·v on the row's colour scale, largest |pixel| positive.", ha="center", va="center", fontsize=6.5, wrap=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path
