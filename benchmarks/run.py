"""Run the end-to-end suite: `python -m benchmarks.run [--scale S] [--only W3] [--device cuda] ...`

Measures the peer's routes and bk.decompose (benchmarks.peers) on W1..W4 and the d-sweep, the
methods of each workload interleaved round by round, and the forward/backward comparison on W5,
then writes benchmarks/results/<device>-<date>.{json,md} and the PNG plots, with PASS/FAIL lines
against the peer (benchmarks.targets). The defaults keep a CPU run to a few minutes (scale 1/8 of
the published shapes); a CUDA run uses the full shapes.
"""
from __future__ import annotations

import argparse
import datetime as dt
import gc
import shlex
import sys
import time
from pathlib import Path

import torch

from . import report
from .forward import choose_dtype, run_forward
from .measure import Oracle, measure_interleaved
from .peers import Context, all_methods, default_method_names, method_names
from .workloads import (FORWARD, NAMES, WEIGHTS, Workload, decomposition_workloads, make_directions,
                        make_layer, scale_forward, sweep_workloads)

DEFAULTS = {  # per device: scale, repeats, time cap (s)
    "cpu": {"scale": 0.125, "repeats": 5, "time_cap": 15.0},
    "cuda": {"scale": 1.0, "repeats": 5, "time_cap": 120.0},
}
# the peer's routes and ours may run longer before they are stopped: without them no speedup can be
# computed (the other tools are stopped at the time cap itself)
PEER_CAP_FACTOR = 4.0
# W5's passes take milliseconds: more samples cost little and steady the median
FORWARD_MIN_REPEATS = 10
# so do W1..W4 at small scales: a method keeps sampling until its samples add up to this many
# seconds, up to SHORT_MAX_REPEATS runs
SHORT_SECONDS = 1.0
SHORT_MAX_REPEATS = 50
SWEEP = "sweep"
RESULTS_DIR = Path(__file__).resolve().parent / "results"


def parse_args(argv):
    ap = argparse.ArgumentParser(prog="python -m benchmarks.run", description=__doc__.split("\n\n")[0])
    ap.add_argument("--device", default="cpu", help="cpu (default) or cuda")
    ap.add_argument("--scale", type=float, default=None,
                    help="shrink every workload proportionally (default: 0.125 on cpu, 1 on cuda)")
    ap.add_argument("--only", default=None,
                    help=f"comma-separated subset of {', '.join(NAMES + (SWEEP,))} (default: all)")
    ap.add_argument("--methods", default=None,
                    help=f"comma-separated subset of {', '.join(method_names())} for W1-W4 and the sweep "
                         "(default: the peer's routes and ours; 'all' adds the other tools)")
    ap.add_argument("--repeats", type=int, default=None, help="timed runs per row (default: 5 cpu, 5 cuda)")
    ap.add_argument("--time-cap", type=float, default=None,
                    help="seconds after which a run is stopped, and the total its timed repeats may take "
                         f"(default: 15 cpu, 120 cuda; {PEER_CAP_FACTOR:g}x before a peer route or ours is stopped)")
    ap.add_argument("--weights", choices=WEIGHTS, default="gaussian",
                    help="random weights: gaussian (default; hardest spectra) or decaying (like trained layers)")
    ap.add_argument("--seed", type=int, default=0, help="seed of weights, directions and solver starts (default: 0)")
    ap.add_argument("--threads", type=int, default=None, help="torch CPU threads (default: torch's own)")
    ap.add_argument("--oracle-directions", type=int, default=4,
                    help="directions per workload checked against the float64 oracle (default: 4)")
    ap.add_argument("--cpu-peers", action="store_true",
                    help="also run the CPU-only SciPy peers in a CUDA run")
    ap.add_argument("--w5-dtype", choices=("auto", "bfloat16", "float32"), default="auto",
                    help="W5 precision (auto: bf16 on cuda, and on cpu unless bf16 is impractical there)")
    ap.add_argument("--out", type=Path, default=RESULTS_DIR, help="directory for the result files (default: benchmarks/results)")
    ap.add_argument("--stem", default=None, help="file name stem (default: <device>-<date>[-scale<s>][-<only>])")
    ap.add_argument("--quiet", action="store_true", help="no per-row progress lines")
    args = ap.parse_args(argv)

    kind = "cuda" if args.device.startswith("cuda") else "cpu"
    if args.device != "cpu" and kind != "cuda":
        ap.error(f"--device must be cpu or cuda, got {args.device!r}")
    if kind == "cuda" and not torch.cuda.is_available():
        ap.error("--device cuda asked for, but torch sees no CUDA device")
    for name, value in DEFAULTS[kind].items():
        if getattr(args, name) is None:
            setattr(args, name, value)
    if not 0 < args.scale <= 1:
        ap.error(f"--scale must be in (0, 1], got {args.scale}")
    if args.repeats < 1 or args.time_cap <= 0 or args.oracle_directions < 1:
        ap.error("--repeats and --oracle-directions must be ≥ 1 and --time-cap positive")
    args.only = _subset(ap, "--only", args.only, NAMES + (SWEEP,))
    if args.methods is None:
        args.methods = tuple(default_method_names())
    elif args.methods.strip() == "all":
        args.methods = tuple(method_names())
    else:
        args.methods = _subset(ap, "--methods", args.methods, tuple(method_names()))
    return args


def _subset(ap, flag: str, value: str | None, allowed: tuple) -> tuple:
    if value is None:
        return allowed
    chosen = tuple(v.strip() for v in value.split(",") if v.strip())
    unknown = [v for v in chosen if v not in allowed]
    if unknown or not chosen:
        ap.error(f"{flag}: unknown {unknown or value!r}; choose from {', '.join(allowed)}")
    return chosen


def run_decomposition(wl: Workload, args, log, weights: str | None = None) -> dict:
    """Every chosen method on one workload, interleaved (measure.measure_interleaved)."""
    weights = weights or args.weights
    layer = make_layer(wl, args.device, weights, args.seed)
    ctx = Context(workload=wl, layer=layer, directions=make_directions(wl, args.device, args.seed),
                  device=args.device, seed=args.seed, cpu_peers=args.device == "cpu" or args.cpu_peers)
    oracle = Oracle(layer, ctx.directions, wl.k_eff, args.oracle_directions)
    methods = [m for m in all_methods() if m.name in args.methods]
    runs = {m.name: (lambda c, warmup, m=m: m(ctx, c, warmup)) for m in methods}
    caps = {m.name: args.time_cap * (1.0 if m.family == "tool" else PEER_CAP_FACTOR) for m in methods}
    info = {m.name: m for m in methods}

    def log_warmup(name, row):
        _log_row(log, wl.name, {"method": name, **row})

    measured = measure_interleaved(runs, device=args.device, repeats=args.repeats, time_caps=caps,
                                   repeat_budget=args.time_cap,
                                   count_warmup={m.name: not m.warmup_differs for m in methods},
                                   check=oracle.check, log=log_warmup,
                                   short_seconds=SHORT_SECONDS, max_repeats=SHORT_MAX_REPEATS)
    rows = [{"method": n, "label": info[n].label, "family": info[n].family, **row} for n, row in measured.items()]
    return {"name": wl.name, "title": wl.title, "weights": weights, "shapes": wl.shapes(),
            "full_d": wl.full_d, "rows": rows}


def _log_row(log, name: str, row: dict) -> None:
    sec = (row.get("seconds") or {}).get("warmup")
    acc = row.get("accuracy") or {}
    text = f"  {name:<12} {row['method']:<16} {row['status']:<15}"
    if sec is not None:
        text += f" {sec:9.4f} s (warm-up)  residual {acc.get('max_residual', float('nan')):.1e}"
    if row.get("reason"):
        text += f"  ({row['reason']})"
    log(text)


def main(argv=None) -> dict:
    argv = sys.argv[1:] if argv is None else list(argv)
    args = parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    log = (lambda *_: None) if args.quiet else (lambda text: print(text, file=sys.stderr, flush=True))
    started = time.perf_counter()
    now = dt.datetime.now().astimezone()
    results = {
        "suite": "bilinear_kernels end-to-end decomposition benchmarks",
        "date": now.date().isoformat(),
        "created": now.isoformat(timespec="seconds"),
        "command": "python -m benchmarks.run " + shlex.join(argv),
        "environment": report.environment(args.device),
        "settings": {"device": args.device, "scale": args.scale, "repeats": args.repeats,
                     "short_runs": {"seconds": SHORT_SECONDS, "max_repeats": SHORT_MAX_REPEATS},
                     "forward_repeats": max(args.repeats, FORWARD_MIN_REPEATS),
                     "time_cap": args.time_cap, "peer_cap_factor": PEER_CAP_FACTOR,
                     "weights": args.weights, "seed": args.seed, "oracle_directions": args.oracle_directions,
                     "only": list(args.only), "methods": list(args.methods), "cpu_peers": args.cpu_peers,
                     "threads": torch.get_num_threads(),
                     "tf32_matmul": bool(torch.backends.cuda.matmul.allow_tf32),
                     "float32_matmul_precision": torch.get_float32_matmul_precision()},
        "workloads": [], "forward": None, "sweep": [],
    }
    # the objects alive now (modules, weights) live to the end: leave them out of every gc pass
    gc.freeze()
    try:
        _run_all(args, results, log)
    finally:
        gc.unfreeze()
    results["seconds_total"] = round(time.perf_counter() - started, 1)
    report.finish_environment(results["environment"])

    stem = args.stem or _default_stem(args, now)
    paths = report.write(results, args.out, stem)
    for line in results["targets"]:
        log(f"{report.verdict(line)}: {line['target']}: {line['detail']}")
    log(f"wrote {', '.join(str(p) for p in paths.values())} in {results['seconds_total']} s")
    return {"results": results, "paths": paths}


def _run_all(args, results: dict, log) -> None:
    for wl in decomposition_workloads(args.scale):
        if wl.name in args.only:
            log(f"{wl.name}: {wl.title} ({report.shape_line(wl.shapes())})")
            results["workloads"].append(run_decomposition(wl, args, log))
    if FORWARD.name in args.only:
        fwl = scale_forward(FORWARD, args.scale)
        dtype, note = choose_dtype(args.device, args.w5_dtype)
        log(f"{fwl.name}: {fwl.title} (tokens {fwl.tokens}, d {fwl.d}, h {fwl.h}, o {fwl.o}; {note})")
        rows = run_forward(fwl, args.device, results["settings"]["forward_repeats"], args.time_cap, dtype,
                           args.weights, args.seed, log)
        results["forward"] = {"name": fwl.name, "title": fwl.title, "shapes": fwl.shapes(),
                              "dtype": str(dtype).replace("torch.", ""), "dtype_note": note, "rows": rows}
    if SWEEP in args.only:
        for wl in sweep_workloads(args.scale):
            log(f"{wl.name}: {report.shape_line(wl.shapes())}")
            results["sweep"].append(run_decomposition(wl, args, log))


def _default_stem(args, now) -> str:
    kind = "cuda" if args.device.startswith("cuda") else "cpu"
    stem = f"{report.device_slug(args.device)}-{now.date().isoformat()}"
    if args.scale != DEFAULTS[kind]["scale"]:
        stem += f"-scale{args.scale:g}"
    if set(args.only) != set(NAMES + (SWEEP,)):
        stem += "-" + "-".join(args.only)
    return stem


if __name__ == "__main__":
    main()
