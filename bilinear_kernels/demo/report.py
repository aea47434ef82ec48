"""report.json and report.md: the demo's numbers, machine-readable and readable."""
from __future__ import annotations

import json
from pathlib import Path


def write_json(report: dict, path: Path) -> Path:
    path.write_text(json.dumps(report, indent=2) + "\n")
    return path


def write_markdown(report: dict, path: Path) -> Path:
    tr, acc, dec = report["training"], report["accuracy"], report["decomposition"]
    lines = [
        "# Bilinear digits classifier: eigendecomposition of every class logit",
        "",
        f"Data: scikit-learn digits, {report['dataset']['train']} training and {report['dataset']['test']} "
        "test images of 8×8 pixels.",
        f"Model: embedding 64 → {report['model']['hidden']}, bilinear layer P((W e) ⊙ (V e)) with "
        f"d = {report['model']['hidden']}, head → 10, no biases ({report['model']['parameters']} parameters).",
        f"Training: {tr['epochs']} epochs, seed {tr['seed']}, on {tr['device']}, {tr['seconds']:.1f} s.",
        "",
        "| | accuracy |",
        "|---|---|",
        f"| train | {100 * acc['train']:.2f}% |",
        f"| test | {100 * acc['test']:.2f}% |",
        "",
        "## Decomposition",
        "",
        f"Each logit is xᵀ Q x in pixel space (embedding folded into W and V); all {dec['eigenpairs_per_class']} "
        f"eigenpairs per class by method `{dec['method']}` in {dec['seconds']:.3f} s.",
        f"Exactness: max |logit − Σ λ (vᵀx)²| / max |logit| = {dec['relative_reconstruction_error']:.2e} on the test set.",
        "",
        "| digit | largest-\\|λ\\| λ | top positive λ | top negative λ | share of Σλ² in the top 5 |",
        "|---|---|---|---|---|",
    ]
    for row in dec["classes"]:
        lines.append(f"| {row['digit']} | {row['top_abs_eigenvalue']:+.3f} | {row['top_positive']:+.3f} | "
                     f"{row['top_negative']:+.3f} | {100 * row['top5_share_of_squared_eigenvalues']:.0f}% |")
    pub = report["published_mode"]["classes"]
    lines += ["", "## Published mode beside the exact one", "",
              "The published analyses eigendecompose each class in the model's hidden space and map the "
              "eigenvectors to pixels as Eᵀv (`eigenvectors_published.png`); the exact mode decomposes the "
              "pixel-space form Eᵀ Q E itself. Both rebuild the logits exactly; they disagree on the "
              "eigenvalues and the vectors. Each row compares the two modes' own largest-|λ| pairs; "
              "where the modes put different patterns first, |cos| is small and the λ may differ in sign.", "",
              "| digit | exact top λ | published top λ | relative difference | \\|cos\\| of the top eigenvectors |",
              "|---|---|---|---|---|"]
    for row in pub:
        lines.append(f"| {row['digit']} | {row['exact_top_eigenvalue']:+.3f} | {row['published_top_eigenvalue']:+.3f} | "
                     f"{100 * row['relative_difference']:.0f}% | {row['top_eigenvector_abs_cos']:.2f} |")
    svd = report["output_svd"]
    top = ", ".join(f"{x:.3g}" for x in svd["singular_values"][:10])
    shares = ", ".join(f"top {n}: {100 * v:.0f}%" for n, v in svd["share_of_squares_top"].items())
    lines += ["", "## Output SVD of the layer", "",
              f"Singular values of {svd['of']} (`output_svd.png`), largest first: {top}, ...",
              f"Share of Σσ² — {shares}; {svd['components_for_90_percent']} output components hold 90%."]
    lines += ["", "## Truncation", "",
              "Test accuracy when each class keeps only its top-k eigenvectors by |λ| "
              f"(full model: {100 * acc['test']:.2f}%):", "",
              "| k | test accuracy |", "|---|---|"]
    for point in report["truncation"]:
        lines.append(f"| {point['k']} | {100 * point['test_accuracy']:.2f}% |")
    within = report["truncation_summary"]["smallest_k_within_1pt"]
    lines += ["", (f"The top {within} eigenvector(s) per class come within one percentage point of the full model."
                   if within is not None else "No k ≤ 20 comes within one percentage point of the full model."),
              ""]
    lines += _depth_lines(report["depth"]) + _weight_decay_lines(report["weight_decay"]) + ["## Files", ""]
    lines += [f"- `{name}`: {what}" for name, what in report["files"].items()]
    path.write_text("\n".join(lines) + "\n")
    return path


def _depth_lines(depth: dict) -> list[str]:
    model, tr, acc, dec = depth["model"], depth["training"], depth["accuracy"], depth["decomposition"]
    few = depth["few_features"]
    lines = ["## Through depth: a 3-layer residual model", "",
             f"Model: embedding 64 → {model['hidden']}, {model['layers']} residual bilinear blocks r ← r + (W r) ⊙ (V r) "
             f"(packed, no output projection), head → 10, no biases ({model['parameters']} parameters), as the "
             f"published image models. Training as theirs: {tr['optimizer']}, weight decay {tr['weight_decay']}, "
             f"lr {tr['lr']} with {tr['schedule']}, {tr['epochs']} epochs of batches of {tr['batch_size']}, "
             f"{tr['seconds']:.1f} s. Test accuracy {100 * acc['test']:.2f}% (train {100 * acc['train']:.2f}%).", "",
             f"`decompose_network` writes each class logit, a polynomial of degree {2 ** model['layers']} in the pixels, as "
             f"Σ_j μ_j (w_jᵀ g)² over orthonormal features g of the last level, in {dec['seconds']:.3f} s; the levels "
             f"keep {dec['ranks']} features (every numerically non-zero singular value). Exactness: max |logit − Σ μ (wᵀg)²| / "
             f"max |logit| = {dec['relative_reconstruction_error']:.2e} on the test set. `network_tree.png` expands the "
             "top two features of digits " + ", ".join(depth["tree"]) + " to pixels.", "",
             "Test accuracy keeping the top r features at every level (the smaller network this defines):", "",
             "| r per level | test accuracy | relative error of the logits |", "|---|---|---|"]
    for p in depth["truncation"]:
        lines.append(f"| {p['rank']} | {100 * p['accuracy']:.2f}% | {p['relative_error']:.2e} |")
    kept = "; ".join(f"the top {k['rank']} keep {100 * k['accuracy']:.1f}% ({100 * k['share_of_accuracy']:.0f}% of "
                     "the network's accuracy)" for k in few["kept"])
    within = few["smallest_rank_within_1pt"]
    lines += ["", f"Per level, {kept}. " + (f"{within} features per level come within one point of the full network "
              f"({100 * few['network_accuracy']:.2f}%)." if within is not None else ""), ""]
    return lines


def _weight_decay_lines(wd: dict) -> list[str]:
    w, wo = wd["with"], wd["without"]
    lines = ["## Weight decay and low rank (the 1-layer model)", "",
             f"The 1-layer model trained again with weight decay 0 (all else equal). Effective rank of each digit: "
             f"the fewest eigenvalues holding {100 * wd['share']:.0f}% of Σλ².", "",
             "| | test accuracy | " + " | ".join(f"digit {c}" for c in range(len(w["effective_rank"]))) + " | mean |",
             "|---|---|" + "---|" * (len(w["effective_rank"]) + 1)]
    for label, row in ((f"weight decay {w['weight_decay']}", w), ("no weight decay", wo)):
        lines.append(f"| {label} | {100 * row['test_accuracy']:.2f}% | "
                     + " | ".join(str(r) for r in row["effective_rank"]) + f" | {row['mean']:.1f} |")
    return lines + [""]
