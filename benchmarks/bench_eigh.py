"""Batched symmetric eigh on the GPU: our cuSOLVER binding against its peers, in one run.

Question: is the compiled extension's batched eigensolver (bilinear_kernels/solvers/cusolver.py)
never slower than torch.linalg.eigh and cupy.linalg.eigh, and at least 10x a per-matrix syevd loop
at (batch, n) = (4096, 512)? Rows, all on the same random symmetric batch per shape:
  ours            cusolver.eigh, algorithm "auto" (csrc/eigh.cpp's rule; the algorithm is recorded)
  ours-<alg>      the other algorithms that apply, to check the auto rule ("syevd" is the
                  per-matrix syevd loop, one cusolverDnXsyevd call per matrix)
  torch           torch.linalg.eigh of the installed torch (its own dispatch; the route it takes
                  by its version is recorded: solvers/dense.py's torch_eigh_route, with what
                  dense.eigh's "auto" picks for the shape)
  cupy            cupy.linalg.eigh (batched Jacobi), when CuPy is installed
Each row: median seconds of a call (including the input copy every peer makes), matrices per
second, GFLOP/s counting 4·n³ per matrix with vectors (4/3·n³ without), and the speed-up of
"ours" over the row (peer seconds / ours seconds). Accuracy is checked before timing: the
largest eigenvalue error of every row on the first matrices against float64 torch.linalg.eigh.

    python benchmarks/bench_eigh.py                  # the shapes below, fp32 with vectors
    python benchmarks/bench_eigh.py --quick          # small shapes, a smoke test
    python benchmarks/bench_eigh.py --shapes 256x64,64x1024 --dtype float64 --no-vectors

Before timing, cuSOLVER eigh's canary runs (fast_path_guard, through dense.eigh); its state is
recorded, and with BILINEAR_KERNELS_STRICT=1 a failing canary stops the run.

Writes benchmarks/results/eigh-<device>-<dtype>.{json,md}. Needs a CUDA GPU and the extension.
"""
from __future__ import annotations

import argparse
import json
import platform
import re
import statistics
import subprocess
import sys
import time
from datetime import datetime, timezone
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:  # run as a script from a source checkout
    sys.path.insert(0, str(ROOT))
RESULTS = ROOT / "benchmarks" / "results"
SHAPES = [(16384, 64), (4096, 128), (4096, 512), (1024, 1024), (64, 4096)]
# n = 32 is where the batched Jacobi solver is the alternative to the batched syev
QUICK = [(256, 32), (256, 64), (64, 256)]
CHECKED_MATRICES = 4


def parse_shapes(text: str) -> list[tuple[int, int]]:
    shapes = []
    for item in text.split(","):
        m = re.fullmatch(r"\s*(\d+)x(\d+)\s*", item)
        if not m:
            raise SystemExit(f"--shapes takes BATCHxN pairs separated by commas, got {item!r}")
        shapes.append((int(m.group(1)), int(m.group(2))))
    return shapes


def timed(fn):
    """(result, seconds) of one call with the device synchronized around it."""
    torch.cuda.synchronize()
    start = time.perf_counter()
    out = fn()
    torch.cuda.synchronize()
    return out, time.perf_counter() - start


def time_call(fn, warm: float, min_seconds: float, max_repeats: int, max_total: float) -> dict:
    """Median wall time of fn() after a warm-up call that took `warm` seconds: repeats until
    min_seconds have passed (at most max_repeats; once when the warm-up took over max_total)."""
    times = []
    while len(times) < max_repeats:
        times.append(timed(fn)[1])
        if warm > max_total or sum(times) >= min_seconds:
            break
    return {"seconds": statistics.median(times), "repeats": len(times), "warmup_seconds": warm}


def random_symmetric(batch: int, n: int, dtype: torch.dtype) -> torch.Tensor:
    g = torch.Generator(device="cuda").manual_seed(batch * 100003 + n)
    a = torch.randn(batch, n, n, device="cuda", dtype=dtype, generator=g)
    return (a + a.mT) / 2


def contenders(a: torch.Tensor, vectors: bool):
    """(name, callable) for every row of this shape."""
    from bilinear_kernels import extension
    from bilinear_kernels.solvers import cusolver

    ext = extension.require()
    batch, n = a.shape[0], a.shape[-1]
    solve = cusolver.eigh if vectors else cusolver.eigvalsh
    rows = [("ours", lambda: solve(a, check_finite=False))]
    auto = ext.choose_algorithm(n, batch)
    for alg in ("syev_batched", "syevj_batched", "syevd"):
        if alg == auto or (alg == "syev_batched" and not ext.HAS_SYEV_BATCHED):
            continue
        if alg != "syevd" and ext.max_batch_per_call(n) < 1:
            continue
        if alg == "syevj_batched" and n > 32:
            continue  # batched Jacobi is meant for matrices that fit on chip
        rows.append((f"ours-{alg}", lambda alg=alg: solve(a, algorithm=alg, check_finite=False)))
    rows.append(("torch", (lambda: torch.linalg.eigh(a)) if vectors else (lambda: torch.linalg.eigvalsh(a))))
    try:
        import cupy

        a_cp = cupy.from_dlpack(a)
        rows.append(("cupy", (lambda: cupy.linalg.eigh(a_cp)) if vectors else (lambda: cupy.linalg.eigvalsh(a_cp))))
    except ImportError:
        pass
    return rows


def torch_launches(fn) -> dict:
    """What one call of torch's eigh launched on the GPU (torch.profiler): the number of kernels and
    copies and their distinct names, the observed side of the route torch took (a loop over the
    matrices launches a few kernels per matrix, a batched solver a few in all)."""
    try:
        from torch.profiler import ProfilerActivity, profile

        with profile(activities=[ProfilerActivity.CUDA]) as prof:
            fn()
            torch.cuda.synchronize()
        names = [e.name for e in prof.events() if e.device_type == torch.autograd.DeviceType.CUDA]
        return {"launches": len(names), "names": sorted(set(names))[:12]}
    except Exception as exc:  # noqa: BLE001 - a profiler that cannot run is recorded, not fatal
        return {"error": f"{type(exc).__name__}: {str(exc).splitlines()[0][:200] if str(exc) else ''}"}


def values_of(out) -> torch.Tensor:
    values = out[0] if isinstance(out, tuple) else out
    if not isinstance(values, torch.Tensor):
        values = torch.from_dlpack(values)
    return values


def versions() -> dict:
    from bilinear_kernels import extension
    from bilinear_kernels.solvers import dense

    info = {
        "device": torch.cuda.get_device_name(),
        "capability": ".".join(map(str, torch.cuda.get_device_capability())),
        "torch": torch.__version__,
        "torch_batches_every_size": dense.torch_version() >= dense.TORCH_BATCHES_EVERY_SIZE,
        "torch_cuda": torch.version.cuda,
        "extension": extension.extension_status(),
        "python": platform.python_version(),
    }
    try:
        import cupy

        info["cupy"] = cupy.__version__
        info["cupy_cusolver"] = cupy.cuda.cusolver.getVersion()
        info["cuda_driver"] = cupy.cuda.runtime.driverGetVersion()
    except ImportError:
        info["cupy"] = None
    try:
        info["commit"] = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=ROOT, capture_output=True,
                                        text=True, timeout=10).stdout.strip() or None
    except OSError:
        info["commit"] = None
    return info


def bench_shape(batch: int, n: int, dtype: torch.dtype, vectors: bool, args) -> list[dict]:
    from bilinear_kernels.solvers import dense

    a = random_symmetric(batch, n, dtype)
    ref = torch.linalg.eigvalsh(a[:CHECKED_MATRICES].double())
    scale = ref.abs().amax().item()
    flops = (4 if vectors else 4 / 3) * n**3 * batch
    rows = []
    for name, fn in contenders(a, vectors):
        row = {"batch": batch, "n": n, "row": name}
        if name == "torch":  # the route torch's version takes, what it launched, and what "auto" picks
            row.update(route=dense.torch_eigh_route(n, batch, dtype), auto_backend=dense.eigh_backend(a),
                       launched=torch_launches(fn))
        try:
            out, warm = timed(fn)  # the warm-up call, also the accuracy check
            err = (values_of(out)[:CHECKED_MATRICES].double() - ref).abs().max().item() / scale
            del out
            row.update(time_call(fn, warm, args.min_seconds, args.max_repeats, args.max_seconds))
        except (RuntimeError, MemoryError) as exc:  # out of memory, a peer's own limits
            row["error"] = f"{type(exc).__name__}: {str(exc).splitlines()[0][:200]}"
            torch.cuda.empty_cache()
            print(f"  {batch}x{n} {name}: {row['error']}", file=sys.stderr)
            rows.append(row)
            continue
        row.update(max_rel_eigenvalue_error=err, matrices_per_second=batch / row["seconds"],
                   gflops=flops / row["seconds"] / 1e9)
        if name == "ours":
            from bilinear_kernels import extension

            row["algorithm"] = extension.require().choose_algorithm(n, batch)
        rows.append(row)
        print(f"  {batch}x{n} {name:>18}: {row['seconds']:.4g} s  {row['matrices_per_second']:.4g} mat/s  "
              f"{row['gflops']:.4g} GFLOP/s  err {err:.1e}", file=sys.stderr)
    ours = next((r["seconds"] for r in rows if r["row"] == "ours" and "seconds" in r), None)
    for r in rows:
        if ours is not None and "seconds" in r:
            r["speedup_of_ours"] = r["seconds"] / ours
    del a
    torch.cuda.empty_cache()
    return rows


def markdown(meta: dict, rows: list[dict]) -> str:
    ext = meta["extension"]
    lines = [
        f"# Batched eigh, {meta['dtype']}, vectors {'on' if meta['vectors'] else 'off'}",
        "",
        f"{meta['device']} (sm_{meta['capability'].replace('.', '')}), torch {meta['torch']} ("
        f"{'batches every size through syevBatched' if meta.get('torch_batches_every_size') else 'loops over the matrices above n = 32'}; CUDA "
        f"{meta['torch_cuda']}), cuSOLVER {ext.get('cusolver_runtime')} at run time / {ext.get('cusolver_build')} "
        f"at build, CuPy {meta.get('cupy')}, {meta['date']}, commit {meta.get('commit')}.",
        f"GFLOP/s counts {'4' if meta['vectors'] else '4/3'}·n³ per matrix. Speed-up of ours = row seconds / "
        "ours seconds. Error: max |λ − λ_ref| / max |λ_ref| on the first "
        f"{CHECKED_MATRICES} matrices against float64 torch.linalg.eigh. The torch row names the route torch "
        "takes by its version, the GPU launches one call made (torch.profiler; the JSON names them) and "
        "what dense.eigh's \"auto\" picks for the shape.",
        f"cuSOLVER eigh canary: {canary_summary(meta.get('fast_paths', []))}.",
        "",
        "| batch | n | row | seconds | matrices/s | GFLOP/s | speed-up of ours | error |",
        "|---:|---:|---|---:|---:|---:|---:|---:|",
    ]
    for r in rows:
        name = r["row"] + (f" ({r['algorithm']})" if "algorithm" in r else "")
        if "route" in r:
            launched = r.get("launched", {})
            seen = f"{launched['launches']} GPU launches" if "launches" in launched else "launches not profiled"
            name += f" ({r['route']}, {seen}; auto: {r['auto_backend']})"
        if "error" in r:
            lines.append(f"| {r['batch']} | {r['n']} | {name} | failed: {r['error']} | | | | |")
            continue
        lines.append(f"| {r['batch']} | {r['n']} | {name} | {r['seconds']:.4g} | {r['matrices_per_second']:.4g} | "
                     f"{r['gflops']:.4g} | {r.get('speedup_of_ours', float('nan')):.3g} | "
                     f"{r['max_rel_eigenvalue_error']:.1e} |")
    return "\n".join(lines) + "\n"


def canary_summary(checks: list[dict]) -> str:
    if not checks:
        return "not run"
    return "; ".join(f"{c['dtype']} {c['state']} in {c['canary_ms']} ms"
                     + (f" (error {c['canary_error']:.2g}, tolerance {c['tolerance']:.2g})" if c.get("canary_error") is not None else "")
                     + (f": {c['failure']}" if c.get("failure") else "") for c in checks)


def run_canary(dtype: torch.dtype) -> list[dict]:
    """cuSOLVER eigh's canary through dense.eigh; the checks it recorded (FastPathError in strict mode)."""
    from bilinear_kernels import fast_path_guard
    from bilinear_kernels.solvers import dense

    a = random_symmetric(4, 40, dtype)
    dense.eigh(a, "cusolver")
    return [c for c in fast_path_guard.states() if c["path"] == fast_path_guard.CUSOLVER_EIGH.name]


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--shapes", type=parse_shapes, default=None, help="BATCHxN,... (default: the issue's five)")
    parser.add_argument("--quick", action="store_true", help="small shapes, a smoke test")
    parser.add_argument("--dtype", choices=("float32", "float64"), default="float32")
    parser.add_argument("--no-vectors", dest="vectors", action="store_false", help="eigenvalues only")
    parser.add_argument("--min-seconds", type=float, default=1.0, help="time each row for at least this long")
    parser.add_argument("--max-repeats", type=int, default=10)
    parser.add_argument("--max-seconds", type=float, default=30.0,
                        help="a row whose warm-up call took longer is timed once")
    parser.add_argument("--out", type=Path, default=RESULTS)
    args = parser.parse_args(argv)

    if not torch.cuda.is_available():
        print("bench_eigh: needs a CUDA GPU (torch.cuda.is_available() is False); nothing was measured.",
              file=sys.stderr)
        return 2
    from bilinear_kernels import extension
    from bilinear_kernels.solvers import cusolver

    if not cusolver.available():
        why = extension.unavailable_reason() or extension.gpu_error()
        print(f"bench_eigh: needs a CUDA GPU and the compiled extension ({why}); nothing was measured.",
              file=sys.stderr)
        return 2
    torch.backends.cuda.matmul.allow_tf32 = False
    dtype = getattr(torch, args.dtype)
    shapes = args.shapes or (QUICK if args.quick else SHAPES)
    from bilinear_kernels.fast_path_guard import FastPathError

    try:
        canary = run_canary(dtype)
    except FastPathError as exc:
        print(f"bench_eigh: {exc}; nothing was measured.", file=sys.stderr)
        return 1
    meta = {**versions(), "dtype": args.dtype, "vectors": args.vectors, "fast_paths": canary,
            "date": datetime.now(timezone.utc).isoformat(timespec="seconds")}
    rows = []
    for batch, n in shapes:
        print(f"{batch} x {n}x{n} {args.dtype}", file=sys.stderr)
        rows += bench_shape(batch, n, dtype, args.vectors, args)

    args.out.mkdir(parents=True, exist_ok=True)
    device = re.sub(r"[^a-z0-9]+", "-", meta["device"].lower()).strip("-")
    stem = args.out / f"eigh-{device}-{args.dtype}{'' if args.vectors else '-values'}{'-quick' if args.quick else ''}"
    stem.with_suffix(".json").write_text(json.dumps({"meta": meta, "rows": rows}, indent=2) + "\n")
    stem.with_suffix(".md").write_text(markdown(meta, rows))
    print(f"wrote {stem}.json and {stem}.md", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
