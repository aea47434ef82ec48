"""Whole networks: decompose_network against the only exact alternative, the polynomial coefficients.

Question: what does an exact decomposition of a stack of L bilinear layers cost, against forming
the network's polynomial coefficient tensor (degree 2^L) with einsum, the one exact route a
researcher has without this package? For each stream width d and depth L a residual image model
(embedding d_in → d, L packed blocks, head → classes; random weights, float32 as the published
checkpoints) is decomposed along every class, top-k by |μ|, and the peer
(benchmarks/network_polynomial.py: one opt_einsum contraction in the cheapest order its
dynamic-programming search finds; for one layer followed by the published code's symmetrize and
full eigh of every class) is timed interleaved with it where its contraction fits the memory
budget. Where it does not, the row says so with the bytes the coefficient tensor alone would take
(a lower bound on what forming it needs). Exponents: time ∝ d^a at each L and ∝ L^b at each d,
least-squares slopes in log-log.

Before timing, both routes are checked against each other and against the forward pass at a tiny
shape (float64, nothing truncated): the peer's polynomial and decompose_network's outputs must
equal the network's output, and for one layer the peer's top eigenvalues must equal ours.

    python -m benchmarks.bench_network                 # writes benchmarks/results/network-cpu-<date>.{json,md}
    python -m benchmarks.bench_network --d 64,256 --layers 1,2,3
    python -m benchmarks.bench_network --threads 1     # -threads1 in the file name: one thread for both routes
    python -m benchmarks.bench_network --quick         # a smoke test
"""
from __future__ import annotations

import argparse
import json
import math
import shlex
import sys
import time
from datetime import datetime
from pathlib import Path

import torch

import bilinear_kernels as bk
from bilinear_kernels.memory import format_bytes

from . import network_polynomial as npoly
from . import report
from .measure import MEMORY_METHOD, OutOfMemory, measure_interleaved

RESULTS = Path(__file__).resolve().parent / "results"
OURS, PEER = "decompose_network", "polynomial coefficients (opt_einsum)"
CHECK_SAMPLES = 8
CHECK_RTOL = 1e-9  # float64, nothing truncated: the routes agree to rounding


def random_network(L: int, d: int, d_in: int, classes: int, residual: bool, dtype, seed: int) -> bk.BilinearNetwork:
    """An image model of the published shape with Gaussian weights scaled by 1/√fan-in."""
    gen = torch.Generator().manual_seed(seed)

    def randn(*shape):
        return (torch.randn(*shape, generator=gen, dtype=torch.float64) / math.sqrt(shape[-1])).to(dtype)

    layers = [bk.BilinearLayer.from_packed(randn(2 * d, d)) for _ in range(L)]
    return bk.BilinearNetwork(layers, residual, randn(d, d_in), randn(classes, d))


def exactness_check(residual: bool, seed: int) -> list[dict]:
    """Both routes against the forward pass at a tiny float64 shape (module docstring); raises if
    they disagree, so no timing is ever recorded for a peer that computes something else."""
    rows = []
    for L in (1, 2):
        net = random_network(L, 5, 6, 3, residual, torch.float64, seed)
        z = torch.randn(CHECK_SAMPLES, net.d_in, generator=torch.Generator().manual_seed(seed + 1), dtype=torch.float64)
        y = net(z)
        scale = float(y.abs().max())
        plan = npoly.plan(net, torch.eye(net.d_out, dtype=torch.float64))
        coeffs = npoly.coefficients(plan)
        ours = bk.decompose_network(net, list(range(net.d_out)))
        row = {"layers": L, "d_in": 6, "d": 5, "classes": 3,
               "peer_vs_forward": float((npoly.evaluate(coeffs, z, plan.lifted) - y).abs().max()) / scale,
               "ours_vs_forward": float((ours.outputs(z) - y).abs().max()) / scale}
        if L == 1:
            values, _ = npoly.published_decomposition(coeffs)
            row["top_eigenvalues_peer_vs_ours"] = top_eigenvalue_error(values, ours.eigenvalues)
        rows.append(row)
        bad = {key: value for key, value in row.items() if key.endswith(("forward", "ours")) and not value < CHECK_RTOL}
        if bad:
            raise AssertionError(f"the routes disagree at the tiny shape (L = {L}): {bad}")
    return rows


def top_eigenvalue_error(values: torch.Tensor, ours: torch.Tensor) -> float:
    """Largest difference between ours (b, k), largest |μ| first, and the top-k by |λ| of the peer's
    full spectra (b, n), relative to the largest |λ|. (Ours always carries the constant coordinate;
    a form without one has a zero eigenvalue there, outside any top-k that matters.)"""
    k = min(ours.shape[1], values.shape[1])
    peer = torch.gather(values, 1, values.abs().argsort(1, descending=True)[:, :k]).sort(1).values
    return float((peer - ours[:, :k].to(values.dtype).sort(1).values).abs().max() / values.abs().max())


def peer_plan_or_refusal(net, directions, budget: int):
    """(plan, None) when the contraction fits `budget`, else (None, reason naming the bytes)."""
    plan = npoly.plan(net, directions, dtype=net.dtype)
    itemsize = torch.empty((), dtype=net.dtype).element_size()
    result_bytes = plan.result_bytes(itemsize)
    if result_bytes > budget:
        return None, result_bytes, (f"the coefficient tensor alone needs {result_bytes:.3g} bytes "
                                    f"({_bytes_text(result_bytes)}: {directions.shape[0]} × "
                                    f"{plan.result_shape[1]}^{len(plan.result_shape) - 1} numbers), over the "
                                    f"{format_bytes(budget)} budget")
    largest = npoly.path_info(plan).largest_intermediate * itemsize
    if largest > budget:
        return None, largest, (f"its cheapest contraction holds an intermediate of {_bytes_text(largest)}, over "
                               f"the {format_bytes(budget)} budget")
    return plan, result_bytes, None


def _bytes_text(n: float) -> str:
    return format_bytes(int(n)) if n < 2**50 else f"{n / 2**40:.3g} TiB"


def run_point(L: int, d: int, args, log) -> dict:
    net = random_network(L, d, args.d_in, args.classes, args.residual, torch.float32, args.seed)
    directions = torch.eye(args.classes, dtype=net.dtype)
    classes = list(range(args.classes))
    plan, peer_bytes, refusal = peer_plan_or_refusal(net, directions, args.peer_budget)
    z = torch.randn(CHECK_SAMPLES, args.d_in, generator=torch.Generator().manual_seed(args.seed + 2))
    y = net.to(dtype=torch.float64)(z.double())
    k = args.k

    def ours(cap, warmup):
        return bk.decompose_network(net, classes, k=k)

    def peer(cap, warmup):
        if refusal:
            raise OutOfMemory(refusal)
        coeffs = npoly.coefficients(plan)
        return (coeffs, npoly.published_decomposition(coeffs)) if L == 1 else (coeffs, None)

    def check_ours(res):
        return {"k": res.k, "ranks": res.ranks}

    def check_peer(result):
        coeffs, eig = result
        got = npoly.evaluate(coeffs.double(), z.double(), plan.lifted)
        out = {"relative_error_vs_forward": float((got - y).abs().max() / y.abs().max())}
        if eig is not None:
            top = bk.decompose_network(net.to(dtype=torch.float64), classes, k=k).eigenvalues
            out["top_eigenvalue_error_vs_ours"] = top_eigenvalue_error(eig[0].double(), top)
        return out

    rows = measure_interleaved({OURS: ours, PEER: peer}, device="cpu", repeats=args.repeats,
                               time_caps={OURS: args.time_cap, PEER: args.time_cap}, repeat_budget=args.time_cap,
                               count_warmup={OURS: True, PEER: True},
                               check={OURS: check_ours, PEER: check_peer},
                               log=lambda name, row: log(f"  L = {L}, d = {d}: {name}: {row['status']}"
                                                         + (f" ({row['reason']})" if row["reason"] else "")))
    rows[PEER]["extra"]["bytes_needed"] = peer_bytes
    point = {"layers": L, "d": d, "d_in": args.d_in, "classes": args.classes, "k": k, "residual": args.residual,
             "rows": rows}
    ours_s = rows[OURS]["seconds"]["median"] if rows[OURS]["status"] == "ok" else None
    peer_s = rows[PEER]["seconds"]["median"] if rows[PEER]["status"] == "ok" else None
    point["speedup"] = peer_s / ours_s if ours_s and peer_s else None
    return point


def exponents(points: list[dict]) -> dict:
    """Slopes of log(time) of ours against log(d) at each L, and against log(L) at each d."""
    ok = [(p["layers"], p["d"], p["rows"][OURS]["seconds"]["median"]) for p in points
          if p["rows"][OURS]["status"] == "ok"]
    by_l = {L: report.fitted_exponent([(d, t) for LL, d, t in ok if LL == L]) for L in sorted({p[0] for p in ok})}
    by_d = {d: report.fitted_exponent([(L, t) for L, dd, t in ok if dd == d]) for d in sorted({p[1] for p in ok})}
    return {"in_d_at_L": by_l, "in_L_at_d": by_d}


def _cell_seconds(row: dict) -> str:
    if row["status"] != "ok":
        return report.STATUS_TEXT.get(row["status"], row["status"])
    s = row["seconds"]
    return f"{report._secs(s['median'])} ({report._secs(s['min'])}–{report._secs(s['max'])})"


def markdown(results: dict) -> str:
    env, st = results["environment"], results["settings"]
    out = [f"# Whole networks: decompose_network against the polynomial coefficients, cpu, {results['date']}", "",
           f"Command: `{results['command']}`.", "",
           *report.machine_header(env, st["threads"]),
           f"Networks: d_in = {st['d_in']} → stream d → {st['classes']} classes, L packed blocks with P = identity, "
           f"{'residual' if st['residual'] else 'sequential'}, no biases, Gaussian weights, float32. Ours: "
           f"`decompose_network(net, every class, k={st['k']})` (exact: every level keeps every numerically "
           f"non-zero singular value). Peer: the network's polynomial coefficients in [1; z] (degree 2^L) by one "
           f"opt_einsum contraction (optimize='{npoly.OPTIMIZE}'), plus for L = 1 the published code's symmetrize "
           f"and full eigh of every class; run only where the contraction fits {format_bytes(st['peer_budget'])}. "
           f"Median (min–max) of up to {st['repeats']} interleaved rounds, seconds; peak memory: {MEMORY_METHOD['cpu']}.",
           "", "## Exactness check (float64, tiny shape, nothing truncated)", "",
           "| L | d_in | d | peer polynomial vs forward | decompose_network outputs vs forward | top eigenvalues, peer vs ours |",
           "|---|---|---|---|---|---|"]
    for r in results["exactness_check"]:
        out.append(f"| {r['layers']} | {r['d_in']} | {r['d']} | {r['peer_vs_forward']:.1e} | {r['ours_vs_forward']:.1e} | "
                   f"{report._sci(r.get('top_eigenvalues_peer_vs_ours'))} |")
    out += ["", "Relative to the largest |output| (eigenvalues: to the largest |λ|).", "",
            "## Time and peak memory", "",
            "| L | d | ranks kept | ours: s | ours: peak | peer: s | peer: peak or bytes needed | peer / ours | peer checks |",
            "|---|---|---|---|---|---|---|---|---|"]
    for p in results["points"]:
        ours, peer = p["rows"][OURS], p["rows"][PEER]
        ranks = (ours.get("accuracy") or {}).get("ranks")
        if peer["status"] == "ok":
            peer_mem = report._bytes(peer["peak_bytes"])
            acc = peer.get("accuracy") or {}
            checks = f"vs forward {report._sci(acc.get('relative_error_vs_forward'))}" + (
                f", top λ vs ours {report._sci(acc['top_eigenvalue_error_vs_ours'])}"
                if acc.get("top_eigenvalue_error_vs_ours") is not None else "")
        else:
            peer_mem = f"needs {_bytes_text(peer['extra']['bytes_needed'])}"
            checks = "–"
        out.append(f"| {p['layers']} | {p['d']} | {ranks} | {_cell_seconds(ours)} | {report._bytes(ours['peak_bytes'])} | "
                   f"{_cell_seconds(peer)} | {peer_mem} | {report._ratio(p['speedup'])} | {checks} |")
    ex = results["exponents"]
    fmt = lambda x: "–" if x is None else f"{x:.2f}"  # noqa: E731
    out += ["", "## How the time of decompose_network grows", "",
            "Least-squares slopes of log(time) (median) against log(d) at each L, and against log(L) at each d.", "",
            "| time ∝ d^a | " + " | ".join(f"L = {L}" for L in ex["in_d_at_L"]) + " |",
            "|---|" + "---|" * len(ex["in_d_at_L"]),
            "| a | " + " | ".join(fmt(v) for v in ex["in_d_at_L"].values()) + " |", "",
            "| time ∝ L^b | " + " | ".join(f"d = {d}" for d in ex["in_L_at_d"]) + " |",
            "|---|" + "---|" * len(ex["in_L_at_d"]),
            "| b | " + " | ".join(fmt(v) for v in ex["in_L_at_d"].values()) + " |", ""]
    return "\n".join(out).rstrip() + "\n"


def parse_args(argv):
    ap = argparse.ArgumentParser(prog="python -m benchmarks.bench_network", description=__doc__.split("\n\n")[0])
    ap.add_argument("--layers", default="1,2,3,4", help="comma-separated depths L (default: 1,2,3,4)")
    ap.add_argument("--d", default="64,256,512", help="comma-separated stream widths (default: 64,256,512)")
    ap.add_argument("--d-in", type=int, default=784, help="input width (default: 784, MNIST pixels)")
    ap.add_argument("--classes", type=int, default=10, help="outputs, every one decomposed (default: 10)")
    ap.add_argument("--k", type=int, default=16, help="eigenpairs by |μ| per class (default: 16)")
    ap.add_argument("--residual", action=argparse.BooleanOptionalAction, default=True,
                    help="residual blocks (default; --no-residual for a sequential stack)")
    ap.add_argument("--peer-budget", type=float, default=4.0, help="GiB the peer's contraction may take (default: 4)")
    ap.add_argument("--repeats", type=int, default=3, help="interleaved timed rounds at most (default: 3)")
    ap.add_argument("--time-cap", type=float, default=120.0, help="seconds of timed repeats per route (default: 120)")
    ap.add_argument("--threads", type=int, default=None, help="torch CPU threads (default: torch's own)")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--quick", action="store_true", help="L = 1, 2; d = 8, 12; d_in 6; 3 classes; k = 4: a smoke test")
    ap.add_argument("--out", type=Path, default=RESULTS)
    args = ap.parse_args(argv)
    if args.quick:
        args.layers, args.d, args.d_in, args.classes, args.k, args.repeats = "1,2", "8,12", 6, 3, 4, 2
    try:
        args.depths = sorted({int(x) for x in args.layers.split(",") if x.strip()})
        args.sizes = sorted({int(x) for x in args.d.split(",") if x.strip()})
    except ValueError:
        ap.error(f"--layers and --d must be comma-separated integers, got {args.layers!r} and {args.d!r}")
    if not args.depths or min(args.depths) < 1:
        ap.error(f"--layers must be depths ≥ 1, got {args.layers!r}")
    if not args.sizes or min(args.sizes) < 1:
        ap.error(f"--d must be widths ≥ 1, got {args.d!r}")
    for name in ("d_in", "classes", "k", "repeats"):
        if getattr(args, name) < 1:
            ap.error(f"--{name.replace('_', '-')} must be ≥ 1, got {getattr(args, name)}")
    if not args.peer_budget > 0 or not args.time_cap > 0:
        ap.error("--peer-budget and --time-cap must be positive")
    args.peer_budget = int(args.peer_budget * 2**30)
    return args


def main(argv=None) -> dict:
    argv = sys.argv[1:] if argv is None else list(argv)
    args = parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    log = lambda text: print(text, file=sys.stderr, flush=True)  # noqa: E731
    now = datetime.now().astimezone()
    started = time.perf_counter()
    results = {"question": "cost of decompose_network against forming the network's polynomial coefficients",
               "date": now.date().isoformat(), "created": now.isoformat(timespec="seconds"),
               "command": " ".join(["python -m benchmarks.bench_network", shlex.join(argv)]).strip(),
               "environment": report.environment("cpu"),
               "settings": {"device": "cpu", "repeats": args.repeats, "time_cap": args.time_cap, "seed": args.seed,
                            "threads": torch.get_num_threads(), "d_in": args.d_in, "classes": args.classes,
                            "k": args.k, "residual": args.residual, "peer_budget": args.peer_budget,
                            "layers": args.depths, "d": args.sizes, "dtype": "float32",
                            "memory_method": MEMORY_METHOD["cpu"], "peer_optimize": npoly.OPTIMIZE},
               "points": []}
    results["exactness_check"] = exactness_check(args.residual, args.seed)
    log(f"exactness check passed: {results['exactness_check']}")
    for d in args.sizes:
        for L in args.depths:
            results["points"].append(run_point(L, d, args, log))
    results["seconds_total"] = round(time.perf_counter() - started, 1)
    report.finish_environment(results["environment"])
    results["exponents"] = exponents(results["points"])
    args.out.mkdir(parents=True, exist_ok=True)
    stem = (f"network-cpu-{results['date']}" + (f"-threads{args.threads}" if args.threads else "")
            + ("-quick" if args.quick else ""))
    (args.out / f"{stem}.json").write_text(json.dumps(report.json_safe(results), indent=1) + "\n")
    (args.out / f"{stem}.md").write_text(markdown(results))
    log(f"wrote {args.out / stem}.{{json,md}} in {results['seconds_total']} s")
    return results


if __name__ == "__main__":
    main()
