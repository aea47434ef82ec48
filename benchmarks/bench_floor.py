"""How fast could any exact solver be on one suite workload, on this machine?

Question: how far ahead of the peer can an exact method get on W3 at its CPU scale? This measures,
in one run on the suite's own data, the peer's routes beside the least work that each kind of exact
route cannot avoid:

  peer routes   benchmarks.peers' published and plain routes that apply (the peer is the fastest)
  ours          bk.decompose(method="auto")
  form Q        bk.interaction_matrices for every direction (shown for scale; the floors omit it)
  dense floor   torch.linalg.eigvalsh on Q formed beforehand: the Householder reduction to
                tridiagonal form that every dense symmetric solver starts with, and the
                eigenvalues alone (no eigenvectors, no selection, no residuals)
  krylov floor  on Q formed beforehand, the products alone that decompose(method="lanczos")
                needed on these directions (its mean per direction, in batched GEMMs of its block
                width): no orthogonalization, no Rayleigh–Ritz, no restarts

Each ratio is the peer's time over the row's. Both floors get Q for free, so a floor's ratio
bounds from above what its kind of route can reach here, whatever the implementation. The dense
floor's eigenvalues are checked against the peer's: it does the same job as far as it goes.

    python -m benchmarks.bench_floor               # W3 at the CPU scale, writes results/floor-*
    python -m benchmarks.bench_floor --quick       # tiny shapes, a smoke test
"""
from __future__ import annotations

import argparse
import json
import math
import shlex
import statistics
import sys
import time
from datetime import date
from pathlib import Path

import torch

import bilinear_kernels as bk

from . import report
from .peers import Context, PlainPerDirection, PublishedBatched, PublishedTensor
from .workloads import DECOMPOSITION, make_directions, make_layer, scale_workload

RESULTS = Path(__file__).resolve().parent / "results"
DEFAULT_SCALE = 0.125   # the suite's CPU scale
QUICK_SCALE = 0.03
TIME_CAP = 600.0        # the peer's runs are never stopped here: the ratios need their time


def parse_args(argv):
    ap = argparse.ArgumentParser(prog="python -m benchmarks.bench_floor", description=__doc__.split("\n\n")[0])
    ap.add_argument("--workload", default="W3", choices=[w.name for w in DECOMPOSITION if w.k is not None],
                    help="suite workload with a top-k request (default: W3)")
    ap.add_argument("--scale", type=float, default=DEFAULT_SCALE, help=f"(default: {DEFAULT_SCALE}, the suite's CPU scale)")
    ap.add_argument("--repeats", type=int, default=7, help="timed rounds, every row once a round (default: 7)")
    ap.add_argument("--quick", action="store_true", help=f"scale {QUICK_SCALE} and 2 rounds: a smoke test")
    ap.add_argument("--out", type=Path, default=RESULTS)
    args = ap.parse_args(argv)
    if args.quick:
        args.scale, args.repeats = QUICK_SCALE, 2
    if args.repeats < 1:
        ap.error("--repeats must be at least 1")
    return args


def krylov_products(q: torch.Tensor, columns: float, block: int) -> int:
    """Multiply each Q by `columns` Krylov columns (rounded up to whole blocks), block by block;
    returns the columns multiplied per matrix."""
    x = torch.randn(q.shape[0], q.shape[1], block, dtype=q.dtype)
    steps = math.ceil(columns / block)
    for _ in range(steps):
        x = torch.bmm(q, x)
        x = x / torch.linalg.vector_norm(x, dim=1, keepdim=True)  # keep the numbers finite
    return steps * block


def main(argv=None) -> dict:
    argv = sys.argv[1:] if argv is None else list(argv)
    args = parse_args(argv)
    base = next(w for w in DECOMPOSITION if w.name == args.workload)
    wl = scale_workload(base, args.scale)
    layer, dirs = make_layer(wl, "cpu"), make_directions(wl, "cpu")
    ctx = Context(wl, layer, dirs, "cpu")
    peers = [m for m in (PublishedTensor(), PublishedBatched(), PlainPerDirection()) if not m.skip_reason(ctx)]

    # what our Krylov solver needed on these directions, and the eigenvalues every row must match
    lanczos = bk.decompose(layer, dirs, k=wl.k, method="lanczos", progress=False)
    columns, block = lanczos.metadata["products_mean"], lanczos.metadata["block_size"]
    reference = peers[-1](ctx, TIME_CAP).values
    q = bk.interaction_matrices(layer, dirs)
    spectra = torch.linalg.eigvalsh(q)  # the dense floor's output
    wanted = torch.argsort(spectra.abs(), dim=-1, descending=True, stable=True)[:, : wl.k]
    floor_values = torch.gather(spectra, -1, wanted)
    scale = reference.abs().amax(-1, keepdim=True)
    floor_error = float(((floor_values - reference).abs() / scale).max())

    rows = {
        **{m.name: (lambda m=m: m(ctx, TIME_CAP)) for m in peers},
        "ours (auto)": lambda: bk.decompose(layer, dirs, k=wl.k, progress=False),
        "form Q": lambda: bk.interaction_matrices(layer, dirs),
        "dense floor": lambda: torch.linalg.eigvalsh(q),
        "krylov floor": lambda: krylov_products(q, columns, block),
    }
    for fn in rows.values():  # warm-up
        fn()
    samples = {name: [] for name in rows}
    for _ in range(args.repeats):  # interleaved rounds: the machine's drift hits every row alike
        for name, fn in rows.items():
            t0 = time.perf_counter()
            fn()
            samples[name].append(time.perf_counter() - t0)
    peer_name = min((m.name for m in peers), key=lambda n: statistics.median(samples[n]))
    peer_s = statistics.median(samples[peer_name])
    table = {name: {"median": statistics.median(s), "min": min(s), "max": max(s),
                    "speedup": peer_s / statistics.median(s), "samples": [round(x, 6) for x in s]}
             for name, s in samples.items()}
    results = {
        "question": "least time an exact dense or Krylov route needs against the peer",
        "peer": peer_name,
        "command": " ".join(["python -m benchmarks.bench_floor", shlex.join(argv)]).strip(),
        "date": date.today().isoformat(), "machine": report.environment("cpu"),
        "workload": {**wl.shapes(), "name": wl.name, "scale": args.scale, "weights": "gaussian"},
        "repeats": args.repeats,
        "krylov": {"products_per_direction": columns, "block_size": block, "d": wl.d,
                   "method_ran": lanczos.method},
        "floor_eigenvalue_error": floor_error,
        "rows": table,
    }
    args.out.mkdir(parents=True, exist_ok=True)
    # the default run keeps the plain name; any other workload or scale gets its own files
    stem = f"floor-cpu-{results['date']}"
    if args.quick:
        stem += "-quick"
    elif (args.workload, args.scale) != ("W3", DEFAULT_SCALE):
        stem += f"-{args.workload}-scale{args.scale:g}"
    (args.out / f"{stem}.json").write_text(json.dumps(results, indent=2) + "\n")
    (args.out / f"{stem}.md").write_text(markdown(results))
    print(markdown(results))
    return results


def markdown(r: dict) -> str:
    w, m, kr = r["workload"], r["machine"], r["krylov"]
    lines = [
        f"# What bounds {w['name']} on this machine: {m['device']}, {r['date']}", "",
        f"{m['cpu']} ({m['cpu_count']} cores, {m['torch_threads']} torch threads); torch {m['torch']}, "
        f"commit {(m['git_commit'] or '')[:10]}. Command: `{r['command']}`.", "",
        f"{w['name']} at scale {w['scale']:g}: d = {w['d']}, o = {w['o']}, {w['directions']} direction vectors, "
        f"top-{w['k']} by |λ|, {w['weights']} weights. Median of {r['repeats']} interleaved rounds.", "",
        "| route | median s | min–max s | the peer's time over it |",
        "|---|---|---|---|",
    ]
    for name, row in r["rows"].items():
        lines.append(f"| {name} | {row['median']:.3g} | {row['min']:.3g}–{row['max']:.3g} | {row['speedup']:.2f}× |")
    best = max(r["rows"]["dense floor"]["speedup"], r["rows"]["krylov floor"]["speedup"])
    lines += [
        "",
        f"- Dense floor: eigenvalues alone, no eigenvectors, of Q formed beforehand. Its top-{w['k']} "
        f"eigenvalues match the peer's to {r['floor_eigenvalue_error']:.1e} of ‖Q‖.",
        f"- Krylov floor: {kr['products_per_direction']} products per direction (of d = {kr['d']}) with Q "
        f"formed beforehand, in blocks of {kr['block_size']}: as many as `method='lanczos'` needed here, "
        "and nothing else.",
        f"- The peer is {r['peer']}; the better floor is {best:.2f}× its time: no exact route of "
        "either kind can be faster than that here.",
        "",
    ]
    return "\n".join(lines)


if __name__ == "__main__":
    main()
