"""Time and peak memory of decompose_network at the published image model's 3-layer shape.

Question: does the whole-network decomposition of the published default image model (d_in 784,
d 512, 3 residual layers, 10 classes) along every class, top-16, take seconds in well under 1 GiB
on a CPU? A resource check, not a comparison: the only exact alternative (forming the network's
polynomial coefficients, 785^8 numbers here) cannot run at this shape at all; the benchmark against
it at the sizes where it can is bench_network.py.

Random weights at the published scales (nn.Linear's default initialisation); float32, as the
published models are trained. Rows, each timed `--repeats` times after one untimed warm-up call (median, min–max):
  top-16      bk.decompose_network(net, range(10), k=16)
  full        bk.decompose_network(net, range(10)): every eigenpair, the exact reconstruction
Peak memory is the process's peak resident set (ru_maxrss) after each row, against its value once
the network is built (what the decomposition added on top of Python, torch and the weights).
The full row's relative error ‖outputs − net(z)‖ / ‖net(z)‖ on 256 random inputs is recorded.

    python -m benchmarks.network_published_shape            # writes benchmarks/results/network-shape-cpu-<date>.{json,md}
    python -m benchmarks.network_published_shape --quick    # a smoke test at d_in 16, d 8
"""
from __future__ import annotations

import argparse
import json
import resource
import shlex
import statistics
import sys
import time
from datetime import datetime
from pathlib import Path

import torch

import bilinear_kernels as bk

from . import report

RESULTS = Path(__file__).resolve().parent / "results"


def published_network(d_in: int, d: int, layers: int, classes: int, seed: int = 0) -> bk.BilinearNetwork:
    """Random weights with nn.Linear's default scale, embed → residual packed blocks → head."""
    g = torch.Generator().manual_seed(seed)

    def linear(out_features, in_features):
        bound = in_features ** -0.5
        return (torch.rand(out_features, in_features, generator=g) * 2 - 1) * bound

    blocks = [bk.BilinearLayer.from_packed(linear(2 * d, d)) for _ in range(layers)]
    return bk.BilinearNetwork(blocks, residual=True, embedding=linear(d, d_in), head=linear(classes, d))


def peak_rss_bytes() -> int:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024  # kilobytes on Linux


def measure(fn, repeats: int) -> dict:
    fn()  # warm-up, untimed: one-time imports and allocator growth are no part of the cost
    samples = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        result = fn()
        samples.append(time.perf_counter() - t0)
    return {"median": statistics.median(samples), "min": min(samples), "max": max(samples),
            "samples": [round(s, 4) for s in samples], "peak_rss_bytes": peak_rss_bytes(), "result": result}


def markdown(results: dict) -> str:
    s = results["shape"]
    out = [f"# decompose_network at the published 3-layer image shape: cpu, {results['date']}", "",
           f"Command: `{results['command']}`.", "", *report.machine_header(results["environment"])]
    out += [f"d_in {s['d_in']}, d {s['d']}, {s['layers']} residual layers (packed blocks, P = identity), "
            f"{s['classes']} classes, float32, random weights at nn.Linear's default scale; level ranks "
            f"{results['ranks']}. Peak resident memory of the process: {results['baseline_rss_bytes'] / 2**20:.0f} MiB "
            "once the network is built (Python, torch and the weights), then after each row. "
            f"Full spectrum relative error of the outputs against the forward pass: {results['full_relative_error']:.1e}.", "",
            "| row | seconds, median (min–max) | peak RSS after | added over the built network |", "|---|---|---|---|"]
    for name, row in results["rows"].items():
        added = row["peak_rss_bytes"] - results["baseline_rss_bytes"]
        out.append(f"| {name} | {row['median']:.2f} ({row['min']:.2f}–{row['max']:.2f}) | "
                   f"{row['peak_rss_bytes'] / 2**20:.0f} MiB | {added / 2**20:.0f} MiB |")
    out.append("")
    return "\n".join(out)


def main(argv=None) -> dict:
    argv = sys.argv[1:] if argv is None else list(argv)
    ap = argparse.ArgumentParser(prog="python -m benchmarks.network_published_shape", description=__doc__.split("\n\n")[0])
    ap.add_argument("--repeats", type=int, default=3, help="timed calls per row (default: 3)")
    ap.add_argument("--quick", action="store_true", help="d_in 16, d 8, one repeat: a smoke test")
    ap.add_argument("--out", type=Path, default=RESULTS)
    args = ap.parse_args(argv)
    if args.repeats < 1:
        ap.error("--repeats must be ≥ 1")
    shape = dict(d_in=16, d=8, layers=3, classes=10) if args.quick else dict(d_in=784, d=512, layers=3, classes=10)
    repeats = 1 if args.quick else args.repeats
    now = datetime.now().astimezone()
    env = report.environment("cpu")
    net = published_network(**shape)
    classes = range(shape["classes"])
    baseline = peak_rss_bytes()
    rows = {"top-16": measure(lambda: bk.decompose_network(net, classes, k=min(16, shape["d"] + 1)), repeats),
            "full": measure(lambda: bk.decompose_network(net, classes), repeats)}
    z = torch.randn(256, shape["d_in"], generator=torch.Generator().manual_seed(1))
    y = net(z)
    full = rows["full"].pop("result")
    top = rows["top-16"].pop("result")
    report.finish_environment(env)
    results = {"question": "decompose_network at the published 3-layer image shape: seconds and memory",
               "date": now.date().isoformat(), "created": now.isoformat(timespec="seconds"),
               "command": " ".join(["python -m benchmarks.network_published_shape", shlex.join(argv)]).strip(),
               "environment": env, "shape": shape, "ranks": top.ranks, "baseline_rss_bytes": baseline,
               "full_relative_error": float((full.outputs(z) - y).norm() / y.norm()), "rows": rows}
    args.out.mkdir(parents=True, exist_ok=True)
    stem = f"network-shape-cpu-{results['date']}" + ("-quick" if args.quick else "")
    (args.out / f"{stem}.json").write_text(json.dumps(report.json_safe(results), indent=1) + "\n")
    (args.out / f"{stem}.md").write_text(markdown(results))
    print(markdown(results))
    return results


if __name__ == "__main__":
    main()
