"""How the cost grows with d: time against d, log-log, for each method and the peer.

Question: when a user's layer is twice as wide, how much longer does each route take? For each d
(h = 4d, o = d, the same direction vectors, top-k by |λ|) the peer's routes and bk.decompose with
each method are timed interleaved (benchmarks.run's harness), and each curve's exponent is the slope
of a least-squares line through log(time) against log(d): time ∝ d^exponent over the range measured.
The peer's curve takes the fastest peer route at each d.

    python -m benchmarks.bench_scaling                   # writes benchmarks/results/scaling-cpu-<date>.{json,md,png}
    python -m benchmarks.bench_scaling --d 256,512,1024,2048 --directions 64 --k 32
    python -m benchmarks.bench_scaling --quick           # a smoke test
"""
from __future__ import annotations

import argparse
import json
import shlex
import sys
import time
from datetime import datetime
from pathlib import Path

import torch

from . import report
from .peers import default_method_names, method_names
from .run import PEER_CAP_FACTOR, run_decomposition
from .workloads import SWEEP_H_OVER_D, WEIGHTS, Workload

RESULTS = Path(__file__).resolve().parent / "results"


def sweep_workload(d: int, directions: int, k: int) -> Workload:
    return Workload(f"d{d}", f"h = {SWEEP_H_OVER_D}d, top-{k} by |λ|", d=d, h=SWEEP_H_OVER_D * d, o=d,
                    n_directions=directions, directions="vectors", k=min(k, d))


def parse_args(argv):
    ap = argparse.ArgumentParser(prog="python -m benchmarks.bench_scaling", description=__doc__.split("\n\n")[0])
    ap.add_argument("--d", default="64,128,256,512,1024", help="comma-separated d (default: 64,128,256,512,1024)")
    ap.add_argument("--directions", type=int, default=16, help="direction vectors per d (default: 16)")
    ap.add_argument("--k", type=int, default=16, help="eigenpairs by |λ| (default: 16)")
    ap.add_argument("--methods", default=None, help=f"comma-separated subset of {', '.join(method_names())} "
                    "(default: the peer's routes and ours)")
    ap.add_argument("--weights", choices=WEIGHTS, default="gaussian")
    ap.add_argument("--repeats", type=int, default=3, help="interleaved timed rounds at most (default: 3)")
    ap.add_argument("--time-cap", type=float, default=60.0,
                    help=f"seconds a run may take ({PEER_CAP_FACTOR:g}x for the peer's routes and ours; default: 60)")
    ap.add_argument("--threads", type=int, default=None, help="torch CPU threads (default: torch's own)")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--quick", action="store_true", help="d = 16, 32, 64, 4 directions, k = 4: a smoke test")
    ap.add_argument("--out", type=Path, default=RESULTS)
    args = ap.parse_args(argv)
    if args.quick:
        args.d, args.directions, args.k, args.repeats = "16,32,64", 4, 4, 2
    try:
        args.sizes = sorted({int(x) for x in args.d.split(",") if x.strip()})
    except ValueError:
        ap.error(f"--d must be comma-separated integers, got {args.d!r}")
    if len(args.sizes) < 2 or args.sizes[0] < 8 or args.directions < 1 or args.k < 1 or args.repeats < 1:
        ap.error("--d needs two or more values ≥ 8; --directions, --k and --repeats must be ≥ 1")
    names = method_names()
    args.methods = (tuple(default_method_names()) if args.methods is None
                    else tuple(m.strip() for m in args.methods.split(",") if m.strip()))
    unknown = [m for m in args.methods if m not in names]
    if unknown or not args.methods:
        ap.error(f"--methods: unknown {unknown or args.methods!r}; choose from {', '.join(names)}")
    # what run_decomposition reads from the suite's arguments
    args.device, args.cpu_peers, args.oracle_directions = "cpu", True, 2
    return args


def markdown(results: dict) -> str:
    env, st = results["environment"], results["settings"]
    out = [f"# Time against d: cpu, {results['date']}", "", f"Command: `{results['command']}`.", "",
           *report.machine_header(env, st["threads"]),
           f"{st['weights'].capitalize()} weights. Median of up to {st['repeats']} interleaved rounds.", ""]
    out += report.sweep_table(results["sweep"])
    out += [f"![time against d]({results['plot']})", ""] if results.get("plot") else []
    return "\n".join(out).rstrip() + "\n"


def main(argv=None) -> dict:
    argv = sys.argv[1:] if argv is None else list(argv)
    args = parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    log = lambda text: print(text, file=sys.stderr, flush=True)  # noqa: E731
    now = datetime.now().astimezone()
    started = time.perf_counter()
    results = {"question": "time against d for each method and the peer",
               "date": now.date().isoformat(), "created": now.isoformat(timespec="seconds"),
               "command": " ".join(["python -m benchmarks.bench_scaling", shlex.join(argv)]).strip(),
               "environment": report.environment("cpu"),
               "settings": {"device": "cpu", "scale": 1, "repeats": args.repeats, "time_cap": args.time_cap,
                            "weights": args.weights, "seed": args.seed, "threads": torch.get_num_threads(),
                            "methods": list(args.methods)},
               "workloads": [], "sweep": []}
    for d in args.sizes:
        wl = sweep_workload(d, args.directions, args.k)
        log(f"{wl.name}: {report.shape_line(wl.shapes())}")
        results["sweep"].append(run_decomposition(wl, args, log))
    results["seconds_total"] = round(time.perf_counter() - started, 1)
    report.finish_environment(results["environment"])
    results["exponents"] = {label: report.fitted_exponent(points)
                            for label, points in report.sweep_series(results["sweep"]).items()}
    args.out.mkdir(parents=True, exist_ok=True)
    stem = f"scaling-cpu-{results['date']}" + ("-quick" if args.quick else "")
    png = args.out / f"{stem}.png"
    results["plot"] = png.name if report.plot_sweep(results, png) else None
    (args.out / f"{stem}.json").write_text(json.dumps(report.json_safe(results), indent=1) + "\n")
    (args.out / f"{stem}.md").write_text(markdown(results))
    for label, slope in results["exponents"].items():
        log(f"  {label}: time ∝ d^{slope:.2f}" if slope is not None else f"  {label}: one point")
    log(f"wrote {args.out / stem}.{{json,md,png}} in {results['seconds_total']} s")
    return results


if __name__ == "__main__":
    main()
