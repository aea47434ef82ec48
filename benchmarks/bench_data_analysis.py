"""Streamed data-side analysis against the straightforward loop, in one interleaved run.

Question: how much faster (and lighter) are bk.truncation_curve and bk.top_activations than the
loop research code writes for the same numbers: every activation λ_i (v_iᵀ x)² of every input held
at once (DecompositionResult.activations), then, per k, the partial sum, its error against the
full sum and np.corrcoef per direction; and torch.topk over all inputs for the top examples?

Both sides get the same result (b directions, d, k eigenpairs: the full spectrum, so the true
output is the full sum) and the same n inputs; the loop is handed them at once, ours as a stream of
batches. Each repeat times ours and the loop back to back (order alternating), and the ratio is
the median loop time over the median of ours, in wall time and in this process's CPU time. The numbers of both sides are compared (they must
agree to float64 rounding) before any time counts.

    python -m benchmarks.bench_data_analysis                  # d=256, b=64, n=8192, ks = 1..64
    python -m benchmarks.bench_data_analysis --quick          # tiny shapes, a smoke test
    python -m benchmarks.bench_data_analysis --out benchmarks/results/data-analysis-cpu-DATE
"""
from __future__ import annotations

import argparse
import json
import shlex
import statistics
import sys
import time
from pathlib import Path

import numpy as np
import torch

import bilinear_kernels as bk

from . import report


def parse_args(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--d", type=int, default=256)
    ap.add_argument("--hidden", type=int, default=512)
    ap.add_argument("--directions", type=int, default=64)
    ap.add_argument("--rows", type=int, default=8192)
    ap.add_argument("--batch", type=int, default=1024, help="rows per batch of the stream")
    ap.add_argument("--max-k", type=int, default=64, help="the curve's ks are 1..max-k")
    ap.add_argument("--top", type=int, default=16, help="n of top_activations")
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--threads", type=int, default=None, help="torch CPU threads (default: torch's own)")
    ap.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    ap.add_argument("--quick", action="store_true", help="tiny shapes: checks that the script runs")
    ap.add_argument("--out", default=None, help="write <out>.json and <out>.md")
    ap.add_argument("--note", default="", help="a line recorded with the results (e.g. the machine's load)")
    args = ap.parse_args(argv)
    if args.quick:
        args.d, args.hidden, args.directions, args.rows, args.batch = 24, 16, 4, 300, 64
        args.max_k, args.top, args.repeats = 8, 3, 1
    return args


def loop_curve(res, x, ks):
    """The straightforward route: every activation at once, then one partial sum per k."""
    acts = res.activations(x)  # (n, b, k)
    truth = acts.sum(-1)
    out = []
    for k in ks:
        r = acts[..., :k].sum(-1)
        rel = (torch.linalg.norm(r - truth, dim=0) / torch.linalg.norm(truth, dim=0)).cpu().numpy()
        rc, tc = r.cpu().numpy(), truth.cpu().numpy()
        corr = np.array([np.corrcoef(rc[:, j], tc[:, j])[0, 1] for j in range(rc.shape[1])])
        out.append((rel, corr))
    return out


def loop_top(res, x, n):
    acts = res.activations(x).permute(1, 2, 0)  # (b, k, n)
    idx = acts.abs().topk(n, dim=-1).indices
    return acts.gather(-1, idx), idx


def stream(x, batch):
    for s in range(0, x.shape[0], batch):
        yield x[s:s + batch]


def sync(device):
    if str(device).startswith("cuda"):
        torch.cuda.synchronize()


def timed(fn, device):
    """(wall seconds, this process's CPU seconds): on a loaded CPU machine the second is the
    steadier measure of the work (with one thread, it is the time the work held a core)."""
    sync(device)
    t0, c0 = time.perf_counter(), time.process_time()
    fn()
    sync(device)
    return time.perf_counter() - t0, time.process_time() - c0


def main(argv=None):
    args = parse_args(argv)
    if args.threads is not None:
        torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    dev = torch.device(args.device)
    d, h, b = args.d, args.hidden, args.directions
    layer = bk.BilinearLayer(torch.randn(h, d, dtype=torch.float64, device=dev) / d ** 0.5,
                             torch.randn(h, d, dtype=torch.float64, device=dev) / d ** 0.5,
                             torch.randn(b, h, dtype=torch.float64, device=dev) / h ** 0.5)
    res = bk.decompose(layer, list(range(b)), k=None, method="eigh")
    x = torch.randn(args.rows, d, dtype=torch.float64, device=dev)
    ks = list(range(1, min(args.max_k, d) + 1))

    ours_curve = bk.truncation_curve(res, stream(x, args.batch), ks, device=dev)
    for i, (rel, corr) in enumerate(loop_curve(res, x, ks)):
        np.testing.assert_allclose(ours_curve.relative_error[i].numpy(), rel, rtol=1e-8, atol=1e-12)
        np.testing.assert_allclose(ours_curve.correlation[i].numpy(), corr, rtol=1e-8, atol=1e-10)
    ours_top = bk.top_activations(res, stream(x, args.batch), args.top, device=dev)
    loop_vals, _ = loop_top(res, x, args.top)
    np.testing.assert_allclose(ours_top.values.numpy(), loop_vals.cpu().numpy(), rtol=1e-10)

    cases = {
        "truncation_curve": (lambda: bk.truncation_curve(res, stream(x, args.batch), ks, device=dev),
                             lambda: loop_curve(res, x, ks)),
        "top_activations": (lambda: bk.top_activations(res, stream(x, args.batch), args.top, device=dev),
                            lambda: loop_top(res, x, args.top)),
    }
    rows = []
    for name, (ours, loop) in cases.items():
        t_ours, t_loop = [], []
        for rep in range(args.repeats):  # interleaved, the order alternating
            pair = [(t_ours, ours), (t_loop, loop)]
            for store, fn in (pair if rep % 2 == 0 else pair[::-1]):
                store.append(timed(fn, dev))
        m_ours, m_loop = (statistics.median(t[0] for t in ts) for ts in (t_ours, t_loop))
        c_ours, c_loop = (statistics.median(t[1] for t in ts) for ts in (t_ours, t_loop))
        rows.append({"analysis": name, "ours_s": m_ours, "loop_s": m_loop, "speedup": m_loop / m_ours,
                     "ours_cpu_s": c_ours, "loop_cpu_s": c_loop, "cpu_time_speedup": c_loop / c_ours,
                     "ours_all_s": t_ours, "loop_all_s": t_loop,
                     "loop_holds_bytes": args.rows * b * res.k * 8})
    env = report.environment(str(dev))
    shapes = {"d": d, "hidden": h, "directions": b, "rows": args.rows, "batch": args.batch,
              "eigenpairs": res.k, "ks": f"1..{ks[-1]}", "top": args.top, "dtype": "float64",
              "repeats": args.repeats}
    result = {"question": __doc__.split("\n\n")[1].replace("\n", " "), "command": shlex.join(["python", "-m", "benchmarks.bench_data_analysis", *(sys.argv[1:] if argv is None else argv)]),
              "environment": env, "shapes": shapes, "rows": rows, "note": args.note}
    lines = [f"# Data-side analysis: streamed vs the straightforward loop ({dev})", "",
             f"Command: `{result['command']}`", ""] + ([f"Note: {args.note}", ""] if args.note else []) + [
             ", ".join(f"{k}: {v}" for k, v in shapes.items()), "",
             f"CPU {env['cpu']}, {env['torch_threads']} torch threads, torch {env['torch']}, numpy {env['numpy']}", "",
             "| analysis | ours (s) | loop (s) | loop / ours | CPU s: ours | CPU s: loop | loop / ours (CPU time) | loop holds |",
             "|---|---|---|---|---|---|---|---|"]
    for r in rows:
        lines.append(f"| {r['analysis']} | {r['ours_s']:.4f} | {r['loop_s']:.4f} | {r['speedup']:.2f}× | "
                     f"{r['ours_cpu_s']:.4f} | {r['loop_cpu_s']:.4f} | {r['cpu_time_speedup']:.2f}× | "
                     f"{r['loop_holds_bytes'] / 2**20:.0f} MiB of activations |")
    text = "\n".join(lines) + "\n"
    print(text)
    if args.out:
        out = Path(args.out)
        out.parent.mkdir(parents=True, exist_ok=True)
        out.with_suffix(".json").write_text(json.dumps(result, indent=2, default=str) + "\n")
        out.with_suffix(".md").write_text(text)
    return result


if __name__ == "__main__":
    main()
