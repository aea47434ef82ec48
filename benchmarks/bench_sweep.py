"""Streamed sweeps: what the result store costs, and what a second process brings.

Questions, on one random layer, in one run:
  overhead   a streamed sweep (run_sweep: decompose chunk by chunk, each chunk serialized,
             checksummed, fsynced and renamed into the store) against the in-memory
             bk.decompose of the same directions with the same options. Target: under 5 %.
             Also against the same chunked decompose calls without a store, which separates
             the cost of writing from the cost of chunking.
  processes  directions/s of `torchrun --nproc-per-node N -m bilinear_kernels.sweep` for each N
             (gloo on CPU, each process given cores/N BLAS threads; NCCL, one GPU per process, on
             CUDA), timed inside rank 0 from the start of the sweep to the finalized manifest
             (process start-up, imports and process-group set-up excluded; wall time recorded too).
Repeats alternate the peers and report medians.

    python -m benchmarks.bench_sweep                    # writes benchmarks/results/sweep-cpu-<date>.{json,md}
    python -m benchmarks.bench_sweep --device cuda --nproc 1,2
    python -m benchmarks.bench_sweep --quick            # tiny shapes, a smoke test
    python -m benchmarks.bench_sweep --store-dir /shared/scratch   # time the store on that filesystem
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from datetime import date
from pathlib import Path

import numpy as np
import safetensors
import torch
from safetensors.torch import save_file

import bilinear_kernels as bk
from bilinear_kernels.sweep.sweep import resolve_options, run_sweep

from .report import cpu_model

RESULTS = Path(__file__).resolve().parent / "results"
ROOT = Path(__file__).resolve().parents[1]
OVERHEAD_TARGET = 0.05

# d, h, o (= directions swept), k, chunk
FULL = dict(d=256, h=512, o=2048, k=16, chunk=256)
QUICK = dict(d=32, h=48, o=96, k=4, chunk=16)


def random_layer(d, h, o, seed=0):
    """Random weights scaled like a trained layer's (unit-variance activations)."""
    g = torch.Generator().manual_seed(seed)
    return {"w": torch.randn(h, d, generator=g) / d**0.5, "v": torch.randn(h, d, generator=g) / d**0.5,
            "p": torch.randn(o, h, generator=g) / h**0.5}


def machine(device: str) -> dict:
    cpu = cpu_model()
    info = {"device": device, "cpu": cpu, "cores": os.cpu_count(), "torch_threads": torch.get_num_threads(),
            "python": platform.python_version(), "torch": torch.__version__, "numpy": np.__version__,
            "safetensors": safetensors.__version__, "bilinear_kernels": bk.__version__,
            "platform": platform.platform(), "date": date.today().isoformat()}
    if device.startswith("cuda"):
        info.update(gpu=torch.cuda.get_device_name(0), gpus=torch.cuda.device_count(), cuda=torch.version.cuda)
    return info


def _sync(device: str) -> None:
    if device.startswith("cuda"):
        torch.cuda.synchronize()


# -- store overhead --------------------------------------------------------------------------
def overhead(weights: dict, shape: dict, method: str, device: str, repeats: int, store_dir: Path) -> dict:
    layer = bk.BilinearLayer(weights["w"].to(device), weights["v"].to(device), weights["p"].to(device))
    n, chunk, k = shape["o"], shape["chunk"], shape["k"]
    options = resolve_options(layer, k, "LM", method, None, None, 0)
    budget = 2 * 2**30
    common = dict(k=k, method=options["method"], max_memory=budget, progress=False)

    def in_memory():
        result = bk.decompose(layer, range(n), **common)
        _sync(device)
        return result

    def chunked():
        for start in range(0, n, chunk):
            r = bk.decompose(layer, range(start, min(n, start + chunk)), **common)
            r.eigenvectors.cpu(), r.eigenvalues.cpu(), r.residuals.cpu()

    in_run = []  # (sweep seconds, its seconds inside decompose) of each streamed run

    def streamed():
        path = store_dir / "overhead"
        shutil.rmtree(path, ignore_errors=True)
        report = run_sweep(layer, range(n), path, chunk=chunk, resume=False, **common)
        in_run.append((report.seconds, report.compute_seconds))

    peers = {"decompose": in_memory, "decompose-chunked": chunked, "sweep": streamed}
    bk.decompose(layer, range(min(n, chunk)), **common)  # warm-up: lazy initialisation of the solvers
    times = {name: [] for name in peers}
    for _ in range(repeats):
        for name, fn in peers.items():
            start = time.perf_counter()
            fn()
            _sync(device)
            times[name].append(time.perf_counter() - start)
    med = {name: statistics.median(t) for name, t in times.items()}
    shutil.rmtree(store_dir / "overhead", ignore_errors=True)
    return {
        "method": options["method"], "directions": n, "chunk": chunk, "shards": -(-n // chunk),
        "max_memory": budget, "seconds": times, "median_seconds": med,
        "directions_per_second": {name: n / t for name, t in med.items()},
        "overhead_vs_decompose": med["sweep"] / med["decompose"] - 1,
        "overhead_vs_chunked": med["sweep"] / med["decompose-chunked"] - 1,
        # the sweep's own time beside its decompose calls, in the same run: free of the drift in
        # compute speed between runs that the end-to-end ratios above carry
        "in_run": [{"seconds": total, "compute_seconds": compute} for total, compute in in_run],
        "store_share": statistics.median((total - compute) / compute for total, compute in in_run),
    }


# -- processes -------------------------------------------------------------------------------
def processes(weights_file: Path, shape: dict, method: str, device: str, nprocs: list[int], repeats: int,
              store_dir: Path) -> list[dict]:
    cores = os.cpu_count() or 1
    rows = []
    for nproc in nprocs:
        env = dict(os.environ, PYTHONPATH=str(ROOT) + os.pathsep + os.environ.get("PYTHONPATH", ""))
        if not device.startswith("cuda"):
            env["OMP_NUM_THREADS"] = str(max(1, cores // nproc))
        rates, walls, seconds = [], [], []
        for rep in range(repeats):
            out = store_dir / f"nproc{nproc}-{rep}"
            shutil.rmtree(out, ignore_errors=True)
            report_file = store_dir / f"report-{nproc}-{rep}.json"
            cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc-per-node={nproc}",
                   "-m", "bilinear_kernels.sweep", str(weights_file), "--out", str(out), "--k", str(shape["k"]),
                   "--method", method, "--chunk", str(shape["chunk"]), "--max-memory", str(2 * 2**30),
                   "--no-progress", "--report", str(report_file), "--device", "cuda" if device.startswith("cuda") else "cpu"]
            start = time.perf_counter()
            run = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True)
            walls.append(time.perf_counter() - start)
            if run.returncode != 0:
                raise RuntimeError(f"{' '.join(cmd)} failed:\n{run.stderr[-4000:]}")
            report = json.loads(report_file.read_text())
            seconds.append(report["seconds"])
            rates.append(report["directions_per_second"])
            shutil.rmtree(out, ignore_errors=True)
            report_file.unlink()
        rows.append({"nproc": nproc, "threads_per_process": env.get("OMP_NUM_THREADS"),
                     "seconds": seconds, "wall_seconds": walls,
                     "directions_per_second": statistics.median(rates),
                     "median_wall_seconds": statistics.median(walls)})
    base = rows[0]["directions_per_second"]
    for row in rows:
        row["speedup_vs_first"] = row["directions_per_second"] / base
    return rows


# -- report ----------------------------------------------------------------------------------
def markdown(info: dict, shape: dict, over: dict, procs: list[dict], command: str) -> str:
    dev = info.get("gpu", info["cpu"])
    out = [f"# Streamed sweeps on {info['device']} ({info['date']})", "",
           f"{dev}; {info['cores']} cores, torch {info['torch']} ({info['torch_threads']} threads), "
           f"safetensors {info['safetensors']}, bilinear_kernels {info['bilinear_kernels']}, {info['platform']}.",
           f"Random layer d={shape['d']}, h={shape['h']}, o={shape['o']} (every output direction swept), "
           f"k={shape['k']}, method {over['method']}, float32, chunk {shape['chunk']} "
           f"({over['shards']} shards). Store at `{info['store_dir']}`.", "",
           f"Command: `{command}`", "",
           "## Store overhead (one process, medians)", "",
           "| peer | median s | min–max s | directions/s |", "|---|---:|---:|---:|"]
    for name, sec in over["median_seconds"].items():
        runs = over["seconds"][name]
        out.append(f"| {name} | {sec:.3f} | {min(runs):.3f}–{max(runs):.3f} | {over['directions_per_second'][name]:.1f} |")
    target = f"target < {100 * OVERHEAD_TARGET:.0f} %"
    spread = max(_spread(runs) for runs in over["seconds"].values())
    out += ["", f"- sweep vs in-memory decompose, end to end: {100 * over['overhead_vs_decompose']:+.1f} % "
                f"({target}): {'PASS' if over['overhead_vs_decompose'] < OVERHEAD_TARGET else 'FAIL'}. "
                f"The same call varied by up to {100 * spread:.0f} % (max/min − 1) between repeats on this machine.",
            f"- sweep vs the same chunks decomposed in memory, end to end: {100 * over['overhead_vs_chunked']:+.1f} %",
            f"- the sweep's own time beside its decompose calls, measured inside each streamed run "
            f"(set-up, serializing, sha256, fsync, renames, manifest): {100 * over['store_share']:+.1f} % of its "
            f"compute ({target}): {'PASS' if over['store_share'] < OVERHEAD_TARGET else 'FAIL'}", "",
            "## Processes (torchrun, timed inside rank 0, medians)", "",
            "| processes | BLAS threads each | directions/s | vs first row | wall s (incl. start-up) |",
            "|---:|---:|---:|---:|---:|"]
    for row in procs:
        out.append(f"| {row['nproc']} | {row['threads_per_process'] or '-'} | {row['directions_per_second']:.1f} | "
                   f"{row['speedup_vs_first']:.2f}x | {row['median_wall_seconds']:.1f} |")
    return "\n".join(out) + "\n"


def _spread(runs: list[float]) -> float:
    return max(runs) / min(runs) - 1


def main(argv=None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--quick", action="store_true", help="tiny shapes, one repeat (smoke test)")
    ap.add_argument("--device", default="cpu", help="cpu or cuda")
    ap.add_argument("--method", default="auto")
    ap.add_argument("--nproc", default="1,2", help="process counts to compare, e.g. 1,2 (GPUs on CUDA)")
    ap.add_argument("--repeats", type=int, default=None, help="default 7 (1 with --quick)")
    ap.add_argument("--store-dir", type=Path, default=None, help="where stores are written (default: a temporary directory)")
    ap.add_argument("--out", type=Path, default=RESULTS)
    args = ap.parse_args(argv)
    shape = QUICK if args.quick else FULL
    repeats = args.repeats or (1 if args.quick else 7)
    nprocs = [int(x) for x in args.nproc.split(",")]
    store_dir = Path(tempfile.mkdtemp(prefix="bench-sweep-", dir=args.store_dir))
    try:
        info = {**machine(args.device), "store_dir": str(store_dir.parent)}
        weights = random_layer(shape["d"], shape["h"], shape["o"])
        weights_file = store_dir / "layer.safetensors"
        save_file(weights, str(weights_file))
        over = overhead(weights, shape, args.method, args.device, repeats, store_dir)
        procs = processes(weights_file, shape, over["method"], args.device, nprocs, repeats, store_dir)
    finally:
        shutil.rmtree(store_dir, ignore_errors=True)
    command = "python -m benchmarks.bench_sweep " + " ".join(argv if argv is not None else sys.argv[1:])
    result = {"machine": info, "shape": shape, "repeats": repeats, "overhead": over, "processes": procs,
              "command": command.strip()}
    args.out.mkdir(parents=True, exist_ok=True)
    stem = args.out / f"sweep-{args.device.split(':')[0]}-{info['date']}{'-quick' if args.quick else ''}"
    stem.with_suffix(".json").write_text(json.dumps(result, indent=2) + "\n")
    stem.with_suffix(".md").write_text(markdown(info, shape, over, procs, command.strip()))
    print(f"wrote {stem}.json and {stem}.md")
    return result


if __name__ == "__main__":
    main()
