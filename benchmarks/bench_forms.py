"""Many small forms: the engine against the routes researchers run today, case by case.

Question: what does the exact structure of many small forms save over forming each one?

  autoencoder  a bilinear autoencoder's latents (tdooms/bae layout: left, right (F, d), no P) at
               d = 1024, F = 16384 (the published Qwen3-0.6B scale, expansion 16): the top-3
               eigenpairs by |λ| of `--latents` single latents, and of as many mixes of 5 latents
               (overlap_mix_direction on a random mixing `down` (2d, F), as the analysis does),
               by three routes:
                 ours       bk.decompose(layer, latents, k=3): method="support" (2×2 closed form,
                            10×10 per mix), all of them;
                 published  what the bae analysis runs per latent: the density
                            einsum(vals, left[inds], right[inds]) symmetrized, then a dense
                            torch.linalg.eigh and the top 3 by |λ|; timed on `--sample` of them
                            and scaled to all (per-form time × count: each form is independent);
                 eigh       bk.decompose(method="eigh") (forms Q through all F rows, batched eigh),
                            also timed on the sample and scaled the same way.
               Every row reports the largest difference of the top-3 eigenvalues from the
               published route on the sample, relative to the largest |λ|.

  comparison   interaction_similarity and gaussian_moments against forming every Q and against
               Monte Carlo: benchmarks/forms_comparison.py, run from here with its own results file.

Rows run interleaved (ours, published, eigh,
ours, ...) for `--repeats` rounds after a warm-up; a row reports median seconds.

    python -m benchmarks.bench_forms --only autoencoder     # the full shapes (a few minutes on a CPU)
    python -m benchmarks.bench_forms --only comparison      # the comparing-forms rows (forms_comparison)
    python -m benchmarks.bench_forms --quick                # tiny shapes, a smoke test
"""
from __future__ import annotations

import argparse
import json
import shlex
import statistics
import sys
import time
from datetime import date
from pathlib import Path

import torch

import bilinear_kernels as bk

from . import forms_comparison, report

RESULTS = Path(__file__).resolve().parent / "results"
FULL = dict(d=1024, features=16384, latents=2048, sample=8)
QUICK = dict(d=32, features=128, latents=16, sample=2)
MIXED = 5  # latents per mix
TOP_K = 3


def parse_args(argv):
    ap = argparse.ArgumentParser(prog="python -m benchmarks.bench_forms", description=__doc__.split("\n\n")[0])
    ap.add_argument("--only", action="append", choices=sorted([*CASES, COMPARISON]),
                    help="run only this case (repeatable; default: every case)")
    ap.add_argument("--latents", type=int, default=None, help=f"forms per workload (default {FULL['latents']})")
    ap.add_argument("--sample", type=int, default=None,
                    help=f"forms the per-form routes are timed on, then scaled (default {FULL['sample']})")
    ap.add_argument("--repeats", type=int, default=3, help="timed rounds after the warm-up (default 3)")
    ap.add_argument("--quick", action="store_true", help="tiny shapes and 1 round: a smoke test")
    ap.add_argument("--note", default="", help="a sentence recorded with the results (e.g. what else the machine ran)")
    ap.add_argument("--out", type=Path, default=RESULTS)
    args = ap.parse_args(argv)
    shape = QUICK if args.quick else FULL
    if args.quick:
        args.repeats = 1
    args.d, args.features = shape["d"], shape["features"]
    args.latents = shape["latents"] if args.latents is None else args.latents
    args.sample = shape["sample"] if args.sample is None else args.sample
    for name in ("latents", "sample", "repeats"):
        if getattr(args, name) < 1:
            ap.error(f"--{name} must be at least 1, got {getattr(args, name)}")
    if args.sample > args.latents:
        ap.error(f"--sample must be at most --latents ({args.latents}), got {args.sample}")
    if args.latents > args.features:
        ap.error(f"--latents must be at most the {args.features} latents of the autoencoder, got {args.latents}")
    args.only = args.only or sorted([*CASES, COMPARISON])
    return args


# -- the autoencoder case -------------------------------------------------------------------------
def random_autoencoder(d: int, features: int, seed: int = 0):
    """Weights of the bae layout: left, right (F, d) and the mixing down (2d, F), float32."""
    g = torch.Generator().manual_seed(seed)
    left = torch.randn(features, d, generator=g) / d**0.5
    right = torch.randn(features, d, generator=g) / d**0.5
    down = torch.randn(2 * d, features, generator=g) / features**0.5
    return left, right, down


def published_top(left, right, mixes, inds) -> torch.Tensor:
    """The bae analysis per form: the density by einsum, symmetrized, dense eigh, top 3 by |λ|."""
    out = []
    for vals, idx in zip(mixes, inds):
        form = torch.einsum("o,oi,oj->ij", vals, left[idx], right[idx])
        form = 0.5 * (form + form.T)
        eigvals, eigvecs = torch.linalg.eigh(form.float())
        top = eigvals.abs().topk(TOP_K).indices
        out.append(eigvals[top])
    return torch.stack(out)


def _relative_difference(ours: torch.Tensor, peer: torch.Tensor) -> float:
    # the same eigenvalues, each set sorted (a ± pair of near-equal |λ| may come in either order)
    ours, peer = ours.double().sort(-1).values, peer.double().sort(-1).values
    return float((ours - peer).abs().max() / peer.abs().max().clamp_min(1e-300))


def autoencoder_case(args) -> list[dict]:
    d, features = args.d, args.features
    left, right, down = random_autoencoder(d, features)
    module = _Autoencoder(left, right, down)
    layer = bk.BilinearLayer.from_module(module)
    g = torch.Generator().manual_seed(1)
    latents = torch.randperm(features, generator=g)[: args.latents]
    sample = latents[: args.sample]
    mixes = bk.overlap_mix_direction(module, latents, n=MIXED)  # (latents, F), 5 nonzeros each
    rows = []
    for name, directions in (("single latents", latents), (f"mixes of {MIXED} latents", mixes)):
        if directions.is_floating_point():
            sample_dirs = directions[: args.sample]
            inds = [row.nonzero().flatten() for row in sample_dirs]
            vals = [row[i] for row, i in zip(sample_dirs, inds)]
        else:
            sample_dirs = sample
            inds = [i.reshape(1) for i in sample]
            vals = [torch.ones(1) for _ in sample]
        runs = {
            "ours": lambda: bk.decompose(layer, directions, k=TOP_K),
            "published": lambda: published_top(left, right, vals, inds),
            "eigh": lambda: bk.decompose(layer, sample_dirs, k=TOP_K, method="eigh"),
        }
        counts = {"ours": len(directions), "published": len(sample_dirs), "eigh": len(sample_dirs)}
        row = _interleaved(runs, args.repeats)
        ours_res, peer_vals, eigh_res = row.pop("_results")
        row.update(name=name, shape=dict(d=d, F=features, forms=len(directions), k=TOP_K, sample=len(sample_dirs)),
                   method_ran=ours_res.method)
        for who in ("ours", "published", "eigh"):
            row[who]["forms_timed"] = counts[who]
            row[who]["seconds_all"] = row[who]["median"] * len(directions) / counts[who]
            row[who]["scaled"] = counts[who] != len(directions)
        for who in ("published", "eigh"):
            row[f"{who}_over_ours"] = row[who]["seconds_all"] / row["ours"]["seconds_all"]
        n = len(sample_dirs)
        row["max_relative_difference"] = {
            "ours_vs_published": _relative_difference(ours_res.eigenvalues[:n], peer_vals),
            "eigh_vs_published": _relative_difference(eigh_res.eigenvalues, peer_vals),
        }
        rows.append(row)
    return rows


class _Autoencoder(torch.nn.Module):
    """The bae layout around given weights (latents of the normalised input)."""

    def __init__(self, left, right, down):
        super().__init__()
        self.left, self.right, self.down = (torch.nn.Parameter(t, requires_grad=False) for t in (left, right, down))

    def forward(self, x):
        x = x / x.norm(dim=-1, keepdim=True)
        return torch.nn.functional.linear(x, self.left) * torch.nn.functional.linear(x, self.right)


def _interleaved(runs: dict, repeats: int) -> dict:
    """A warm-up of each run (its result kept), then `repeats` rounds of all runs in turn."""
    row = {who: {"samples": []} for who in runs}
    results = []
    for who, fn in runs.items():
        started = time.perf_counter()
        results.append(fn())
        row[who]["warmup_seconds"] = time.perf_counter() - started
    for _ in range(repeats):
        for who, fn in runs.items():
            started = time.perf_counter()
            fn()
            row[who]["samples"].append(time.perf_counter() - started)
    for who in runs:
        row[who]["median"] = statistics.median(row[who]["samples"])
    row["_results"] = results
    return row


CASES = {"autoencoder": autoencoder_case}
# comparing forms has its own shapes, rows and results file: bench_forms hands it over whole
COMPARISON = "comparison"


# -- the run and its record -----------------------------------------------------------------------
def main(argv=None) -> dict:
    argv = sys.argv[1:] if argv is None else list(argv)
    args = parse_args(argv)
    if COMPARISON in args.only:
        forms_comparison.main((["--quick"] if args.quick else []) + (["--note", args.note] if args.note else [])
                              + ["--out", str(args.out)])
    own = [name for name in args.only if name in CASES]
    if not own:
        return {}
    args.only = own
    env = report.environment("cpu")
    cases = {name: CASES[name](args) for name in args.only}
    results = {
        "question": "many small forms: the engine against forming each form",
        "command": "python -m benchmarks.bench_forms " + shlex.join(argv),
        "machine": report.finish_environment(env),
        "note": args.note,
        "settings": {"repeats": args.repeats, "latents": args.latents, "sample": args.sample, "dtype": "float32",
                     "quick": args.quick},
        "cases": cases,
    }
    stem = f"forms-cpu-{date.today().isoformat()}-{'-'.join(args.only)}" + ("-quick" if args.quick else "")
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / f"{stem}.json").write_text(json.dumps(report.json_safe(results), indent=1) + "\n")
    (args.out / f"{stem}.md").write_text(markdown(results))
    return results


def markdown(r: dict) -> str:
    lines = [
        "# Many small forms", "",
        f"Command: `{r['command']}`", "",
        *report.machine_header(r["machine"]),
        f"Float32; {r['settings']['repeats']} interleaved rounds after a warm-up, median seconds.", "",
        *([f"Note: {r['note']}", ""] if r.get("note") else []),
    ]
    if "autoencoder" in r["cases"]:
        rows = r["cases"]["autoencoder"]
        lines += [
            "## Bilinear autoencoder latents (top-3 eigenpairs by |λ|)", "",
            "The published route and decompose(method=\"eigh\") are timed on a sample of the forms and scaled "
            "to all of them (seconds per form × forms; every form is independent work): the "
            "\"timed on\" column says how many forms each timing covered.", "",
            "| forms | shape | ours (s, all) | published (s, scaled) | eigh (s, scaled) | published / ours | "
            "eigh / ours | timed on (ours, published, eigh) | max rel. diff. of λ vs published (ours, eigh) | "
            "ours ran |",
            "|---|---|---|---|---|---|---|---|---|---|",
        ]
        for row in rows:
            shape = ", ".join(f"{k}={v}" for k, v in row["shape"].items())
            diff = row["max_relative_difference"]
            lines.append(
                f"| {row['name']} | {shape} | {row['ours']['seconds_all']:.3g} | {row['published']['seconds_all']:.3g} | "
                f"{row['eigh']['seconds_all']:.3g} | {row['published_over_ours']:.0f}× | {row['eigh_over_ours']:.0f}× | "
                f"{row['ours']['forms_timed']}, {row['published']['forms_timed']}, {row['eigh']['forms_timed']} | "
                f"{diff['ours_vs_published']:.1e}, {diff['eigh_vs_published']:.1e} | {row['method_ran']} |")
        lines.append("")
    return "\n".join(lines)


if __name__ == "__main__":
    main()
