"""Core engine against the peer, in one run, at the sizes where the choice of route matters.

Question: is `decompose` faster than what researchers run, at matched accuracy? The peer of each
case is the fastest of the published routes and the plain per-direction route (benchmarks/peers.py:
whole-tensor einsum where it is not extra work, opt_einsum in batches of 32, per-direction einsum;
each then symmetrize, torch.linalg.eigh, select), measured in the same run as ours, interleaved
round by round, on the same random layer and directions. Cases (CASES):

  image-full      d = 784, h = 256, o = 10: every class of an image model, full spectrum
  full-d512       d = 512, h = 2048, 64 output indices, full spectrum
  topk-d1024-b4   d = 1024, h = 4096, 4 direction vectors, top-16 and top-64 by |λ|
  topk-d1024-b64  the same with 64 directions
  topk-d2048-b4   d = 2048, h = 8192, 4 direction vectors, top-16 and top-64

each on gaussian random weights (the hardest spectra) and the top-k cases also on decaying
weights (like trained layers). The peer computes the full spectrum whatever k is, so its routes are
timed once per case with the largest k and that time stands for the smaller k too (the selection
differs by one argsort). Accuracy of every row, on a subsample of directions, against a float64
oracle (benchmarks/measure.py). PASS/FAIL lines: benchmarks/targets.py.

    python -m benchmarks.bench_core            # writes benchmarks/results/core-cpu-<date>.{json,md}
    python -m benchmarks.bench_core --quick    # tiny shapes, a smoke test
    python -m benchmarks.bench_core --only topk-d1024-b4,topk-d1024-b64 --threads 2
"""
from __future__ import annotations

import argparse
import json
import shlex
import sys
import time
from dataclasses import dataclass, replace
from datetime import datetime
from pathlib import Path

import torch

from . import report
from .measure import Oracle, measure_interleaved
from .peers import Context, Ours, PlainPerDirection, PublishedBatched, PublishedTensor
from .targets import evaluate, verdict
from .workloads import Workload, make_directions, make_layer

RESULTS = Path(__file__).resolve().parent / "results"
BOTH = ("gaussian", "decaying")


@dataclass(frozen=True)
class Case:
    """One layer shape and direction set; `ks` the k values asked of ours (None: full spectrum)."""

    workload: Workload
    ks: tuple = (None,)
    weights: tuple = ("gaussian",)

    @property
    def name(self) -> str:
        return self.workload.name


def _topk(name, d, n, ks=(16, 64)):
    return Case(Workload(name, f"top-k by |λ|, {n} direction vectors", d=d, h=4 * d, o=d, n_directions=n,
                         directions="vectors", k=max(ks)), ks, BOTH)


CASES = (
    Case(Workload("image-full", "image model, every class, full spectrum", d=784, h=256, o=10,
                  n_directions=10, directions="indices", k=None)),
    Case(Workload("full-d512", "full spectrum, 64 output indices", d=512, h=2048, o=512,
                  n_directions=64, directions="indices", k=None)),
    _topk("topk-d1024-b4", 1024, 4),
    _topk("topk-d1024-b64", 1024, 64),
    _topk("topk-d2048-b4", 2048, 4),
)
QUICK = (
    Case(Workload("image-full", "image model, every class, full spectrum", d=40, h=12, o=10,
                  n_directions=10, directions="indices", k=None)),
    Case(Workload("full-d48", "full spectrum, 8 output indices", d=48, h=192, o=48,
                  n_directions=8, directions="indices", k=None)),
    _topk("topk-d128-b4", 128, 4, ks=(4, 8)),
)


def parse_args(argv):
    ap = argparse.ArgumentParser(prog="python -m benchmarks.bench_core", description=__doc__.split("\n\n")[0])
    ap.add_argument("--quick", action="store_true", help="tiny shapes, 2 rounds: a smoke test")
    ap.add_argument("--only", default=None, help="comma-separated case names (default: all)")
    ap.add_argument("--weights", default=None, choices=BOTH, help="only this kind of weights (default: each case's)")
    ap.add_argument("--all-methods", action="store_true",
                    help="also time ours with method eigh, lanczos and lowrank (default: auto only)")
    ap.add_argument("--repeats", type=int, default=3, help="timed rounds at most (default: 3)")
    ap.add_argument("--budget", type=float, default=30.0,
                    help="seconds of timed runs after which a row stops repeating (default: 30)")
    ap.add_argument("--time-cap", type=float, default=600.0, help="seconds one run may take (default: 600)")
    ap.add_argument("--threads", type=int, default=None, help="torch CPU threads (default: torch's own)")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--oracle-directions", type=int, default=2, help="directions checked in float64 (default: 2)")
    ap.add_argument("--out", type=Path, default=RESULTS)
    args = ap.parse_args(argv)
    cases = QUICK if args.quick else CASES
    if args.quick:
        args.repeats = min(args.repeats, 2)
    if args.only:
        wanted = [n.strip() for n in args.only.split(",") if n.strip()]
        unknown = [n for n in wanted if n not in {c.name for c in cases}]
        if unknown or not wanted:
            ap.error(f"--only: unknown {unknown or args.only!r}; choose from {', '.join(c.name for c in cases)}")
        cases = tuple(c for c in cases if c.name in wanted)
    if args.repeats < 1 or args.budget <= 0 or args.time_cap <= 0 or args.oracle_directions < 1:
        ap.error("--repeats and --oracle-directions must be ≥ 1, --budget and --time-cap positive")
    args.cases = cases
    return args


def run_case(case: Case, weights: str, args, log) -> list[dict]:
    """Measure the peer's routes once and ours for each k; one workload record per k."""
    wl = case.workload
    layer = make_layer(wl, "cpu", weights, args.seed)
    dirs = make_directions(wl, "cpu", args.seed)
    ctx = Context(workload=wl, layer=layer, directions=dirs, device="cpu", seed=args.seed)
    peers = [PublishedTensor(), PublishedBatched(), PlainPerDirection()]
    ours_methods = ["auto"] + (["eigh", "lanczos", "lowrank"] if args.all_methods else [])
    runs, checks, caps, counted, meta = {}, {}, {}, {}, {}
    oracles = {}
    for m in peers:
        runs[m.name] = lambda cap, warmup, m=m: m(ctx, cap, warmup)
        meta[m.name] = (m, None)
    for k in case.ks:
        wl_k = wl if k == wl.k else replace(wl, k=k)
        ctx_k = replace(ctx, workload=wl_k)
        oracles[k] = Oracle(layer, dirs, wl_k.k_eff, args.oracle_directions)
        for method in ours_methods:
            m = Ours(method)
            name = m.name if len(case.ks) == 1 else f"{m.name}@k{k}"
            runs[name] = lambda cap, warmup, m=m, c=ctx_k: m(c, cap, warmup)
            meta[name] = (m, k)
            checks[name] = oracles[k].check
    top = oracles[wl.k] if wl.k in oracles else Oracle(layer, dirs, wl.k_eff, args.oracle_directions)
    for m in peers:
        checks[m.name] = top.check
    for name, (m, _) in meta.items():
        caps[name] = args.time_cap
        counted[name] = not m.warmup_differs

    def log_warmup(name, row):
        sec = (row.get("seconds") or {}).get("warmup")
        acc = row.get("accuracy") or {}
        text = f"  {name:<20} {row['status']:<15}"
        if sec is not None:
            text += f" {sec:9.3f} s (warm-up)  residual {acc.get('max_residual', float('nan')):.1e}"
        if row.get("reason"):
            text += f"  ({row['reason']})"
        log(text)

    log(f"{wl.name} ({weights}): {report.shape_line(wl.shapes())}" + (f", k = {case.ks}" if wl.k else ""))
    rows = measure_interleaved(runs, device="cpu", repeats=args.repeats, time_caps=caps,
                               repeat_budget=args.budget, count_warmup=counted, check=checks, log=log_warmup)
    records = []
    for k in case.ks:
        wl_k = wl if k == wl.k else replace(wl, k=k)
        out = []
        for name, row in rows.items():
            m, row_k = meta[name]
            if row_k is not None and row_k != k:
                continue
            out.append({"method": m.name, "label": m.label, "family": m.family, **row,
                        **({"timed_with_k": wl.k_eff} if row_k is None and k != wl.k else {})})
        title = wl.title if k is None else wl.title.replace("top-k", f"top-{k}")
        records.append({"name": wl.name if len(case.ks) == 1 else f"{wl.name}-k{k}", "title": title,
                        "weights": weights, "shapes": wl_k.shapes(), "rows": out})
    return records


def markdown(results: dict) -> str:
    env, st = results["environment"], results["settings"]
    out = [f"# Core engine against the peer: cpu, {results['date']}", "", f"Command: `{results['command']}`.", "",
           *report.machine_header(env)]
    out += [f"Median of up to {st['repeats']} interleaved rounds after a warm-up (a row stops repeating once "
            f"its runs add up to {st['budget']:g} s; the warm-up counts as a sample when it alone took a quarter "
            "of that). The peer is the fastest peer route in each table; its routes compute the full spectrum "
            "whatever k is, so for the smaller k they are the same runs as for the largest (`timed_with_k`). "
            f"Accuracy on {st['oracle_directions']} directions against float64.", "",
            "## Targets", ""]
    for line in results["targets"]:
        out.append(f"- **{verdict(line)}** {line['target']}: {line['detail']}")
    out.append("")
    for w in results["workloads"]:
        table = report.workload_table(w)
        table[0] = f"## {w['name']} ({w['weights']}): {w['title']}"
        out += table
    return "\n".join(out).rstrip() + "\n"


def main(argv=None) -> dict:
    argv = sys.argv[1:] if argv is None else list(argv)
    args = parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    log = lambda text: print(text, flush=True)  # noqa: E731
    now = datetime.now().astimezone()
    started = time.perf_counter()
    results = {"suite": "bilinear_kernels core engine against the peer",
               "date": now.date().isoformat(), "created": now.isoformat(timespec="seconds"),
               "command": " ".join(["python -m benchmarks.bench_core", shlex.join(argv)]).strip(),
               "environment": report.environment("cpu"),
               "settings": {"device": "cpu", "scale": 1, "repeats": args.repeats, "budget": args.budget,
                            "time_cap": args.time_cap, "seed": args.seed, "threads": torch.get_num_threads(),
                            "oracle_directions": args.oracle_directions, "all_methods": args.all_methods},
               "workloads": []}
    for case in args.cases:
        for weights in (case.weights if args.weights is None else (args.weights,)):
            results["workloads"] += run_case(case, weights, args, log)
    results["seconds_total"] = round(time.perf_counter() - started, 1)
    report.finish_environment(results["environment"])
    results["targets"] = evaluate(results)
    args.out.mkdir(parents=True, exist_ok=True)
    stem = f"core-cpu-{results['date']}" + ("-quick" if args.quick else "") + ("-only" if args.only else "")
    paths = {"json": args.out / f"{stem}.json", "markdown": args.out / f"{stem}.md"}
    paths["json"].write_text(json.dumps(report.json_safe(results), indent=1) + "\n")
    paths["markdown"].write_text(markdown(results))
    for line in results["targets"]:
        log(f"{verdict(line)}: {line['target']}: {line['detail']}")
    log(f"wrote {paths['json']} and {paths['markdown']} in {results['seconds_total']} s")
    return {"results": results, "paths": paths}


if __name__ == "__main__":
    main()
