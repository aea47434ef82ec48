"""Small decompositions with one CPU thread against torch's default, on a quiet or a busy machine.

Question: why did 32 directions at d = 64 take seconds with torch's default threads on a busy
2-core machine and a tenth of a second with one, and where do more threads start to pay?

Each row is timed with 1 thread and with torch's default thread count, the two interleaved round by
round (medians, min–max):
  decompose   bk.decompose(layer, 32 directions), full spectrum (auto picks eigh), for each d
  form Q      bk.interaction_matrices alone, same shapes
  eigh        torch.linalg.eigh of the (32, d, d) stack alone
and, once, the number of torch operations one decompose call runs (torch.profiler) and the time
a set_num_threads round trip costs. Layers: d in --d (default 64, 128, 256, 512), h = 4d, o = d.

`--load N` starts N busy processes (plain Python loops, ended by their ids when the run finishes)
beside the measurement, to reproduce a busy machine on a quiet one; `--load 0` measures the machine
as it is. The load average at the start and end is recorded.

    python -m benchmarks.bench_threads                  # writes benchmarks/results/threads-cpu-<date>.{json,md}
    python -m benchmarks.bench_threads --load 2         # the same beside two busy processes
    python -m benchmarks.bench_threads --quick          # a smoke test
"""
from __future__ import annotations

import argparse
import json
import multiprocessing as mp
import shlex
import statistics
import sys
import time
from datetime import datetime
from pathlib import Path

import torch

import bilinear_kernels as bk
from bilinear_kernels import threads as engine_threads

from . import report

RESULTS = Path(__file__).resolve().parent / "results"
DIRECTIONS = 32


def _spin(stop_at: float) -> None:
    """A busy process: burn one core until `stop_at` (a time.time() value), then exit."""
    x = 0
    while time.time() < stop_at:
        x += 1


def start_load(n: int, seconds: float) -> list[mp.Process]:
    procs = [mp.get_context("spawn").Process(target=_spin, args=(time.time() + seconds,), daemon=True)
             for _ in range(n)]
    for p in procs:
        p.start()
    return procs


def stop_load(procs: list[mp.Process]) -> None:
    for p in procs:
        if p.is_alive():
            p.terminate()
        p.join(timeout=5)


def layer_for(d: int, seed: int = 0) -> bk.BilinearLayer:
    g = torch.Generator().manual_seed(seed)
    h = 4 * d
    return bk.BilinearLayer(torch.randn(h, d, generator=g) / d**0.5, torch.randn(h, d, generator=g) / d**0.5,
                            torch.randn(d, h, generator=g) / h**0.5)


def operations_per_call(fn) -> int:
    """How many torch operations one call of `fn` runs (top-level and nested, as the profiler sees them)."""
    from torch.profiler import ProfilerActivity, profile

    with profile(activities=[ProfilerActivity.CPU]) as prof:
        fn()
    return sum(e.count for e in prof.key_averages())


def switch_seconds(threads: int, rounds: int = 20) -> float:
    """Median time of set_num_threads(1) then set_num_threads(threads)."""
    samples = []
    for _ in range(rounds):
        t0 = time.perf_counter()
        torch.set_num_threads(1)
        torch.set_num_threads(threads)
        samples.append(time.perf_counter() - t0)
    return statistics.median(samples)


def interleave(fns: dict, thread_counts: tuple, repeats: int) -> dict:
    """name -> {threads: summary}: every (row, threads) once per round, warm-up first. The
    engine's own thread rule (bilinear_kernels.threads) is switched off meanwhile, so that each
    row runs on the thread count it is labelled with."""
    samples = {(n, t): [] for n in fns for t in thread_counts}
    default = torch.get_num_threads()
    rule = engine_threads.cpu_threads_for
    engine_threads.cpu_threads_for = lambda *args, **kwargs: None
    try:
        for t in thread_counts:  # warm-up
            torch.set_num_threads(t)
            for fn in fns.values():
                fn()
        for r in range(repeats):
            order = thread_counts if r % 2 == 0 else thread_counts[::-1]
            for t in order:
                torch.set_num_threads(t)
                for n, fn in fns.items():
                    t0 = time.perf_counter()
                    fn()
                    samples[(n, t)].append(time.perf_counter() - t0)
    finally:
        torch.set_num_threads(default)
        engine_threads.cpu_threads_for = rule
    out = {}
    for (n, t), s in samples.items():
        out.setdefault(n, {})[str(t)] = {"median": statistics.median(s), "min": min(s), "max": max(s),
                                         "samples": [round(x, 6) for x in s]}
    return out


def run_d(d: int, thread_counts: tuple, repeats: int) -> dict:
    layer = layer_for(d)
    dirs = list(range(DIRECTIONS))
    q = bk.interaction_matrices(layer, dirs)
    fns = {"decompose": lambda: bk.decompose(layer, dirs, progress=False),
           "form Q": lambda: bk.interaction_matrices(layer, dirs),
           "eigh": lambda: torch.linalg.eigh(q)}
    rows = interleave(fns, thread_counts, repeats)
    return {"d": d, "h": 4 * d, "o": d, "directions": DIRECTIONS,
            "method": bk.decompose(layer, dirs[:1], progress=False).method, "rows": rows}


def markdown(results: dict) -> str:
    env, st = results["environment"], results["settings"]
    default = str(st["default_threads"])
    out = [f"# One thread against torch's default ({default}) for small decompositions: cpu, {results['date']}", "",
           f"Command: `{results['command']}`. {st['load']} busy processes started beside the run.", "",
           *report.machine_header(env, st["default_threads"])]
    out += [f"{DIRECTIONS} directions, h = 4d, full spectrum; median of {st['repeats']} interleaved rounds "
            f"(min–max). One decompose call at d = {results['sizes'][0]['d']} runs "
            f"{results['operations_per_decompose']} torch operations; a set_num_threads round trip costs "
            f"{results['switch_seconds'] * 1e6:.0f} µs.", "",
            f"| d | row | 1 thread, s | {default} threads, s | {default} threads / 1 thread |", "|---|---|---|---|---|"]
    for size in results["sizes"]:
        for name, by in size["rows"].items():
            one, many = by["1"], by[default] if default in by else None
            ratio = "–" if many is None else f"{many['median'] / one['median']:.2f}×"
            span = lambda s: f"{s['median']:.4f} ({s['min']:.4f}–{s['max']:.4f})"  # noqa: E731
            out.append(f"| {size['d']} | {name} | {span(one)} | {'–' if many is None else span(many)} | {ratio} |")
    out.append("")
    return "\n".join(out)


def main(argv=None) -> dict:
    argv = sys.argv[1:] if argv is None else list(argv)
    ap = argparse.ArgumentParser(prog="python -m benchmarks.bench_threads", description=__doc__.split("\n\n")[0])
    ap.add_argument("--d", default="64,128,256,512", help="comma-separated d values (default: 64,128,256,512)")
    ap.add_argument("--repeats", type=int, default=7, help="interleaved rounds (default: 7)")
    ap.add_argument("--load", type=int, default=0, help="busy processes to start beside the run (default: 0)")
    ap.add_argument("--quick", action="store_true", help="d = 32, 3 rounds: a smoke test")
    ap.add_argument("--out", type=Path, default=RESULTS)
    args = ap.parse_args(argv)
    if args.quick:
        args.d, args.repeats = "32", 3
    try:
        sizes = [int(x) for x in args.d.split(",") if x.strip()]
    except ValueError:
        ap.error(f"--d must be comma-separated integers, got {args.d!r}")
    if not sizes or min(sizes) < 4 or args.repeats < 1 or args.load < 0:
        ap.error("--d values must be ≥ 4, --repeats ≥ 1 and --load ≥ 0")

    default = torch.get_num_threads()
    counts = (1,) if default == 1 else (1, default)
    now = datetime.now().astimezone()
    env = report.environment("cpu")
    load = start_load(args.load, seconds=3600)
    try:
        small = layer_for(sizes[0])
        ops = operations_per_call(lambda: bk.decompose(small, list(range(DIRECTIONS)), progress=False))
        results = {"question": "small decompositions: one thread against torch's default",
                   "date": now.date().isoformat(), "created": now.isoformat(timespec="seconds"),
                   "command": " ".join(["python -m benchmarks.bench_threads", shlex.join(argv)]).strip(),
                   "environment": env,
                   "settings": {"repeats": args.repeats, "load": args.load, "default_threads": default},
                   "operations_per_decompose": ops, "switch_seconds": switch_seconds(default),
                   "sizes": [run_d(d, counts, args.repeats) for d in sizes]}
    finally:
        stop_load(load)
    report.finish_environment(env)
    args.out.mkdir(parents=True, exist_ok=True)
    stem = f"threads-cpu-{results['date']}" + ("-quick" if args.quick else "") + (f"-load{args.load}" if args.load else "")
    (args.out / f"{stem}.json").write_text(json.dumps(report.json_safe(results), indent=1) + "\n")
    (args.out / f"{stem}.md").write_text(markdown(results))
    print(markdown(results))
    return results


if __name__ == "__main__":
    main()
