"""Comparing forms without forming them: interaction_similarity and gaussian_moments against the routes a user writes today.

Question: what do the closed forms in hidden space save over forming every interaction matrix, and
over estimating Gaussian moments by sampling, at the shapes of the published image models?

Layers as the published image models' first block with its head contracted (PUBLISHED_LAYOUTS.md:
the block is (2·d_hidden, d_hidden), so h = d; the head gives P (10, h), o = 10 classes, one-hot
directions), random weights scaled 1/√fan-in, float32, no biases (the published default). Model b
is a perturbed copy of model a (W_b = W_a + ½·fresh noise of the same scale, likewise V and P),
as two fine-tunes of one model would be.

  similarity, classes (d, h = d, o = 10):
      bk.interaction_similarity(a, range(10))          the 10 × 10 cosines of the class forms
      vs every Q formed by one GEMM per class, (Wᵀ diag(p_c) V + its transpose) / 2, flattened,
      one (10, d²) × (d², 10) GEMM, divided by the norms on its diagonal
  similarity, two models (same d):
      bk.interaction_similarity(a, range(10), b)       10 × 10 cosines across the models
      vs the 20 Qs formed as above, one cross GEMM of the flattened forms, their norms
  gaussian moments, x ~ N(0, I):
      bk.gaussian_moments(a, range(10)[, b])           exact E[y], E[z], E[y zᵀ]
      vs Monte Carlo: x drawn in batches of 16384, y = f_a(x), z = f_b(x), means and yᵀz / n
      (float64 accumulation), at the sample count n that gives 1% relative error of the second
      moments (‖estimate − exact‖_F / ‖exact‖_F, the exact value from gaussian_moments in float64).
      The count is measured: a pilot of 4 replicate estimates at n = 4096 predicts n by the
      1/√n law, rounded up to a power of two; replicates are run there (doubling while their
      root-mean-square error is above 1%), and the row records every (n, error) tried. Past
      `--max-samples` the count is extrapolated from the last error by the 1/√n law and the row
      says so; the timed Monte Carlo then runs at the cap (a lower bound on its time).

Rows run interleaved (ours, the peer, ours, ...) for `--repeats` rounds after a warm-up, fewer
once a row's rounds have taken `--budget` seconds (bench_primitives.run_pair); a row reports
median seconds, peak memory, the ratio peer / ours and the largest difference between the two
results relative to the peer's largest magnitude (for Monte Carlo: its sampling error).

    python -m benchmarks.forms_comparison                 # d = 512 and 1024 (minutes on a CPU)
    python -m benchmarks.forms_comparison --scale 0.125   # every d × 0.125
    python -m benchmarks.forms_comparison --quick         # tiny shapes, a smoke test
"""
from __future__ import annotations

import argparse
import json
import math
import shlex
import sys
import time
from datetime import date
from pathlib import Path

import torch

import bilinear_kernels as bk
from bilinear_kernels.memory import format_bytes

from . import report
from .bench_primitives import relative_difference, run_pair
from .measure import MEMORY_METHOD

RESULTS = Path(__file__).resolve().parent / "results"
D_VALUES = (512, 1024)
CLASSES = 10
TARGET_ERROR = 0.01
PILOT_SAMPLES = 4096
REPLICATES = 4
SAMPLE_BATCH = 16384
QUICK_SCALE = 1 / 32


def parse_args(argv):
    ap = argparse.ArgumentParser(prog="python -m benchmarks.forms_comparison", description=__doc__.split("\n\n")[0])
    ap.add_argument("--scale", type=float, default=1.0, help="multiply every d (default 1: d = 512 and 1024)")
    ap.add_argument("--repeats", type=int, default=5, help="timed rounds after the warm-up (default 5)")
    ap.add_argument("--budget", type=float, default=60.0,
                    help="seconds of timed rounds after which a row stops repeating (default 60)")
    ap.add_argument("--max-samples", type=int, default=2**21,
                    help="largest Monte Carlo sample count tried (default 2^21); past it the count is extrapolated")
    ap.add_argument("--quick", action="store_true", help=f"scale {QUICK_SCALE:g} and 1 round: a smoke test")
    ap.add_argument("--note", default="", help="a sentence recorded with the results (e.g. what else the machine ran)")
    ap.add_argument("--out", type=Path, default=RESULTS)
    args = ap.parse_args(argv)
    if args.quick:
        args.scale, args.repeats = QUICK_SCALE, 1
    for name in ("repeats", "max_samples"):
        if getattr(args, name) < 1:
            ap.error(f"--{name.replace('_', '-')} must be at least 1, got {getattr(args, name)}")
    for name in ("scale", "budget"):
        if not getattr(args, name) > 0:
            ap.error(f"--{name} must be positive, got {getattr(args, name):g}")
    return args


def image_layer(d: int, seed: int) -> bk.BilinearLayer:
    """A block of a published image model with its head as P: W, V (d, d), P (10, d)."""
    g = torch.Generator().manual_seed(seed)
    return bk.BilinearLayer(torch.randn(d, d, generator=g) / d**0.5, torch.randn(d, d, generator=g) / d**0.5,
                            torch.randn(CLASSES, d, generator=g) / d**0.5)


def perturbed(layer: bk.BilinearLayer, seed: int) -> bk.BilinearLayer:
    """The layer plus half as much fresh noise of the same scale in W, V and P."""
    g = torch.Generator().manual_seed(seed)
    d = layer.d_in

    def noisy(t):
        return t + 0.5 * torch.randn(t.shape, generator=g) / d**0.5

    return bk.BilinearLayer(noisy(layer.w), noisy(layer.v), noisy(layer.p))


# -- the hand-written routes -------------------------------------------------------------------------
def formed_forms(layer: bk.BilinearLayer, classes: int) -> torch.Tensor:
    """Every class form, one GEMM each, symmetrized and flattened: (classes, d²)."""
    d = layer.d_in
    out = torch.empty(classes, d, d)
    for a in range(classes):
        g = torch.mm((layer.p[a][:, None] * layer.w).t(), layer.v)  # Wᵀ diag(p_a) V
        torch.add(g, g.t(), out=out[a])
    return out.mul_(0.5).reshape(classes, d * d)


def peer_similarity(layer_a, layer_b=None) -> torch.Tensor:
    fa = formed_forms(layer_a, CLASSES)
    if layer_b is None:
        gram = fa @ fa.T
        norms = gram.diagonal().sqrt()
        return gram / norms[:, None] / norms[None, :]
    fb = formed_forms(layer_b, CLASSES)
    return (fa @ fb.T) / torch.linalg.vector_norm(fa, dim=1)[:, None] / torch.linalg.vector_norm(fb, dim=1)[None, :]


def monte_carlo(layer_a, layer_b, n: int, generator: torch.Generator):
    """(first_a, first_b, second) estimated from n draws of x ~ N(0, I), float64 sums."""
    d = layer_a.d_in
    first_a = torch.zeros(CLASSES, dtype=torch.float64)
    first_b = torch.zeros(CLASSES, dtype=torch.float64)
    second = torch.zeros(CLASSES, CLASSES, dtype=torch.float64)
    for start in range(0, n, SAMPLE_BATCH):
        x = torch.randn(min(SAMPLE_BATCH, n - start), d, generator=generator)
        y = layer_a(x)
        z = y if layer_b is None else layer_b(x)
        first_a += y.sum(0, dtype=torch.float64)
        first_b += z.sum(0, dtype=torch.float64)
        second += (y.T @ z).double()
    return first_a / n, first_b / n, second / n


def sample_count(layer_a, layer_b, exact: torch.Tensor, max_samples: int, seed: int) -> dict:
    """The Monte Carlo sample count whose second moments reach TARGET_ERROR (module docstring)."""
    g = torch.Generator().manual_seed(seed)

    def rms_error(n: int) -> float:
        errors = [float(torch.linalg.matrix_norm(monte_carlo(layer_a, layer_b, n, g)[2] - exact) /
                        torch.linalg.matrix_norm(exact)) for _ in range(REPLICATES)]
        return math.sqrt(sum(e * e for e in errors) / len(errors))

    tried = [(PILOT_SAMPLES, rms_error(PILOT_SAMPLES))]
    predicted = PILOT_SAMPLES * (tried[0][1] / TARGET_ERROR) ** 2
    n = max(PILOT_SAMPLES, 2 ** math.ceil(math.log2(predicted)))
    while tried[-1][1] > TARGET_ERROR:
        if n > max_samples:
            last_n, last_error = tried[-1]
            return {"samples": max_samples, "measured": False, "tried": tried,
                    "extrapolated_samples": round(last_n * (last_error / TARGET_ERROR) ** 2)}
        if n != tried[-1][0]:
            tried.append((n, rms_error(n)))
        n *= 2
    return {"samples": tried[-1][0], "measured": True, "tried": tried}


def monte_carlo_error(ours, peer) -> float:
    """The Monte Carlo second moments against the exact ones, relative (Frobenius)."""
    return float(torch.linalg.matrix_norm(peer[2] - ours[2].double()) / torch.linalg.matrix_norm(ours[2].double()))


# -- the run -----------------------------------------------------------------------------------------
def main(argv=None) -> dict:
    argv = sys.argv[1:] if argv is None else list(argv)
    args = parse_args(argv)
    env = report.environment("cpu")
    rows = []
    for d_full in D_VALUES:
        d = max(4, round(d_full * args.scale))
        a = image_layer(d, seed=d)
        b = perturbed(a, seed=d + 1)
        form_bytes = (2 * CLASSES * d * d + 2 * d * d) * 4
        shape = dict(d=d, h=d, o=CLASSES)
        rows.append(run_pair("similarity, classes", shape, lambda: bk.interaction_similarity(a, range(CLASSES)),
                             lambda: peer_similarity(a), form_bytes, args.repeats, relative_difference, args.budget))
        rows.append(run_pair("similarity, two models", shape,
                             lambda: bk.interaction_similarity(a, range(CLASSES), b),
                             lambda: peer_similarity(a, b), 2 * form_bytes, args.repeats, relative_difference,
                             args.budget))
        for name, other in (("gaussian moments, classes", None), ("gaussian moments, two models", b)):
            exact = bk.gaussian_moments(a.to(dtype=torch.float64), range(CLASSES),
                                        None if other is None else other.to(dtype=torch.float64))[2]
            started = time.perf_counter()
            count = sample_count(a, other, exact, args.max_samples, seed=d + 2)
            count["seconds_to_measure"] = time.perf_counter() - started
            g = torch.Generator().manual_seed(d + 3)
            n = count["samples"]
            row = run_pair(name, dict(shape, samples=n),
                           lambda: bk.gaussian_moments(a, range(CLASSES), other),
                           lambda: monte_carlo(a, other, n, g), None, args.repeats, monte_carlo_error, args.budget)
            row["monte_carlo"] = count
            rows.append(row)

    results = {
        "question": "interaction_similarity and gaussian_moments against forming every Q and against Monte Carlo",
        "command": "python -m benchmarks.forms_comparison " + shlex.join(argv),
        "machine": report.finish_environment(env),
        "note": args.note,
        "settings": {"scale": args.scale, "repeats": args.repeats, "budget_seconds": args.budget, "dtype": "float32",
                     "classes": CLASSES, "target_error": TARGET_ERROR, "replicates": REPLICATES,
                     "max_samples": args.max_samples, "memory_method": MEMORY_METHOD["cpu"]},
        "rows": rows,
    }
    stem = (f"forms-comparison-cpu-{date.today().isoformat()}"
            + ("-quick" if args.quick else "" if args.scale == 1 else f"-scale{args.scale:g}"))
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / f"{stem}.json").write_text(json.dumps(report.json_safe(results), indent=1) + "\n")
    (args.out / f"{stem}.md").write_text(markdown(results))
    return results


def _seconds(part: dict) -> str:
    return f"{part['median']:.3g}" if part.get("status") == "ok" else "–"


def _peak(part: dict) -> str:
    return format_bytes(part["peak_bytes"]) if part.get("peak_bytes") is not None else "–"


def _samples(count: dict) -> str:
    tried = ", ".join(f"{n}: {e:.2%}" for n, e in count["tried"])
    if count["measured"]:
        return f"n = {count['samples']} reaches 1% (tried {tried})"
    return (f"1% not reached by the cap: about {count['extrapolated_samples']} by the 1/√n law; timed at the cap "
            f"(tried {tried})")


def markdown(r: dict) -> str:
    s = r["settings"]
    lines = [
        "# Comparing forms: interaction_similarity and gaussian_moments against forming Q and Monte Carlo", "",
        f"Command: `{r['command']}`", "",
        *report.machine_header(r["machine"]),
        f"Float32, random weights of the published image models' shape (h = d, o = {s['classes']} one-hot classes, "
        "no biases; model b a perturbed copy of a); up to "
        f"{s['repeats']} interleaved rounds after a warm-up (fewer once a row's rounds took {s['budget_seconds']:g} s); "
        f"peak memory: {s['memory_method']}. Monte Carlo at the sample count measured to give "
        f"{s['target_error']:.0%} relative error of the second moments (root-mean-square of {s['replicates']} replicates).",
        "",
        *([f"Note: {r['note']}", ""] if r.get("note") else []),
        "| comparison | shape | ours (s) | peer (s) | peer / ours | ours peak | peer peak | max rel. difference | peer |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for row in r["rows"]:
        shape = ", ".join(f"{k}={v}" for k, v in row["shape"].items())
        ours, peer = row["ours"], row.get("peer", {})
        ratio = f"{row['ratio']:.2f}×" if "ratio" in row else "–"
        diff = f"{row['max_relative_difference']:.1e}" if "max_relative_difference" in row else "–"
        if "monte_carlo" in row:
            what = "Monte Carlo: " + _samples(row["monte_carlo"])
            diff = f"{row['max_relative_difference']:.2%} (sampling error)" if "max_relative_difference" in row else "–"
        else:
            what = "every Q formed, one GEMM of the flattened forms"
        if peer.get("status") not in ("ok", None):
            what += f"; {peer['status']}"
        lines.append(f"| {row['name']} | {shape} | {_seconds(ours)} | {_seconds(peer)} | {ratio} | {_peak(ours)} | "
                     f"{_peak(peer)} | {diff} | {what} |")
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    main()
