"""A figure of a network truncation curve: accuracy and relative error against the rank kept per level.

    curve = bk.network_truncation_curve(net, x_test, labels=y_test)
    plot_network_truncation(curve, "truncation.png", full_accuracy=0.97)

`curve` is what `network_truncation_curve` returns: one dict per point with "rank" (kept per
level), "relative_error" and, when labels were given, "accuracy". Needs matplotlib.
"""
from __future__ import annotations

from pathlib import Path


def _pyplot():
    try:
        import matplotlib  # noqa: F401
    except ImportError as err:
        raise ImportError("plot_network_truncation needs matplotlib: pip install matplotlib") from err
    import matplotlib.pyplot as plt  # matplotlib picks a file-only backend where there is no display

    return plt


def plot_network_truncation(curve, path=None, *, full_accuracy: float | None = None, title: str | None = None,
                            ax=None):
    """Draw accuracy (left axis, when the points have it) and relative error (right axis, log scale)
    against the rank kept per level; `full_accuracy` (default: the points' "network_accuracy") draws
    the untruncated network's accuracy as a dashed line. Writes `path` (a .png, .pdf or .svg) when given and returns it; with `ax`, draws
    there and returns the axes."""
    points = _checked(curve)
    ranks = [p["rank"] for p in points]
    errors = [p["relative_error"] for p in points]
    has_accuracy = all(p.get("accuracy") is not None for p in points)
    if full_accuracy is None and points[0].get("network_accuracy") is not None:
        full_accuracy = points[0]["network_accuracy"]  # what network_truncation_curve records with labels
    plt = _pyplot()
    own_figure = ax is None
    if own_figure:
        fig, ax = plt.subplots(figsize=(6.4, 4.0), layout="constrained")
    error_ax = ax.twinx() if has_accuracy else ax
    if has_accuracy:
        ax.plot(ranks, [100 * p["accuracy"] for p in points], "o-", color="tab:blue", label="accuracy")
        if full_accuracy is not None:
            ax.axhline(100 * full_accuracy, color="tab:blue", linestyle="--", linewidth=1,
                       label=f"full network ({100 * full_accuracy:.1f}%)")
        ax.set_ylabel("accuracy (%)", color="tab:blue")
        ax.legend(loc="center right", fontsize=8)
    positive = [e for e in errors if e > 0]
    error_ax.plot(ranks, errors, "s-", color="tab:red", label="relative error")
    if positive and max(positive) / min(positive) > 10:
        error_ax.set_yscale("log")
    error_ax.set_ylabel("relative error ‖y_r − y‖ / ‖y‖", color="tab:red")
    ax.set_xscale("log", base=2)
    ax.set_xticks(ranks, [str(r) for r in ranks])
    ax.minorticks_off()
    ax.set_xlabel("rank kept per level")
    ax.set_title(title or "Network truncation: keeping the top-r singular values at every level")
    if not own_figure:
        return ax
    if path is None:
        return fig
    path = Path(path)
    fig.savefig(path, dpi=130)
    plt.close(fig)
    return path


def _checked(curve) -> list[dict]:
    if not isinstance(curve, (list, tuple)) or not curve:
        raise ValueError("curve must be a non-empty list of points, as network_truncation_curve returns")
    for i, p in enumerate(curve):
        if not isinstance(p, dict) or "rank" not in p or "relative_error" not in p:
            raise ValueError(f"curve[{i}] must be a dict with 'rank' and 'relative_error' "
                             "(a point of network_truncation_curve)")
    return sorted(curve, key=lambda p: p["rank"])
