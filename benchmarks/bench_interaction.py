"""Fused symmetric interaction construction against the plain-torch forms, in the same run.

Question: how fast does the Triton kernel build Q_b = ½(Wᵀ diag(c_b) V + Vᵀ diag(c_b) W) for a
batch of b directions, in fp32 (TF32 off), compared with
    scaled_bmm  the best plain-torch form: scale a copy of W by c, one batched GEMM against V,
                then the symmetric part (interaction.build_interaction_reference)
    einsum      torch.einsum("bk,ki,kj->bij", c, W, V) and the symmetric part, the form of the
                research code this package replaces
and what fraction of the device's fp32 peak does each reach?

The torch forms need a (b, h, d) temporary, so they run over chunks of directions whose
temporaries stay under --max-memory (as interaction_matrices does); the kernel needs none and
takes all b at once. All write into one preallocated (b, d, d) output. Achieved TFLOP/s counts
the nominal 2·h·d² flops per direction of the one-GEMM form for every implementation. Results go
to benchmarks/results/ as JSON and Markdown with device, versions and shapes.

    python benchmarks/bench_interaction.py                 # GPU, the shapes below
    python benchmarks/bench_interaction.py --device cpu    # smoke test at tiny sizes (interpreter)

The CPU mode only checks that the script runs; its numbers answer nothing and are not written
to benchmarks/results/ unless --out is given.
"""
from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
GPU_SHAPES = "512x2048x4096,1024x4096x1024,4096x16384x64"
CPU_SHAPES = "37x21x5"

# Vendor datasheet fp32 (non-tensor-core) peaks in TFLOP/s, matched by device-name substring in
# this order; --peak-tflops overrides. Unknown devices report no fraction of peak.
FP32_PEAK_TFLOPS = [("H200 NVL", 60.0), ("H200", 67.0), ("H100 NVL", 60.0), ("H100 PCIe", 51.0),
                    ("H100", 67.0), ("A100", 19.5)]


def parse_args():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--device", default="cuda", choices=["cuda", "cpu"])
    ap.add_argument("--shapes", default=None, help=f"comma list of DxHxB; default {GPU_SHAPES}")
    ap.add_argument("--warmup", type=int, default=3)
    ap.add_argument("--reps", type=int, default=10)
    ap.add_argument("--max-memory", type=float, default=8.0, help="GiB of temporaries for the torch forms")
    ap.add_argument("--peak-tflops", type=float, default=None, help="the device's fp32 peak")
    ap.add_argument("--matmul-precision", choices=("highest", "high"), default="highest",
                    help="torch.set_float32_matmul_precision for every fp32 implementation (default: highest)")
    ap.add_argument("--out", default=None, help="results path without extension "
                    "(default on CUDA: benchmarks/results/interaction_<device>)")
    return ap.parse_args()


args = parse_args()
if args.device == "cpu":
    # kernels are decorated at import: the interpreter must be chosen first
    os.environ.setdefault("TRITON_INTERPRET", "1")
sys.path.insert(0, str(ROOT))

import torch  # noqa: E402

from benchmarks.kernel_timing import kernel_environment, peak_bytes, time_ms  # noqa: E402

from bilinear_kernels.interaction import build_interaction_reference  # noqa: E402
from bilinear_kernels.ops.interaction import build_interaction_triton  # noqa: E402


# -- implementations: each fills out (b, d, d) ----------------------------------------------------

def chunked(build, bytes_per_direction):
    def run(w, v, c, out):
        step = max(1, min(c.shape[0], int(args.max_memory * 2**30) // bytes_per_direction(w)))
        for start in range(0, c.shape[0], step):
            out[start:start + step] = build(w, v, c[start:start + step])
    return run


def einsum_form(w, v, c):
    q = torch.einsum("bk,ki,kj->bij", c, w, v)
    return 0.5 * (q + q.mT)


def temporaries(w):
    h, d = w.shape  # the scaled (h, d) copy, the unsymmetrized product and its symmetric part
    return (h * d + 2 * d * d) * w.element_size()


def fused(w, v, c, out):
    build_interaction_triton(w, v, c, out=out)


IMPLS = {
    "scaled_bmm": chunked(build_interaction_reference, temporaries),
    "einsum": chunked(einsum_form, temporaries),
    "fused": fused,
}


# -- measurement ----------------------------------------------------------------------------------

def fp32_peak(device):
    if args.peak_tflops is not None:
        return args.peak_tflops
    if device != "cuda":
        return None
    name = torch.cuda.get_device_name()
    return next((peak for key, peak in FP32_PEAK_TFLOPS if key in name), None)


def check_agreement(w, v, c, device):
    """The kernel against the float64 reference on the first few directions."""
    few = c[:4]
    ref = build_interaction_reference(w.double(), v.double(), few.double())
    got = build_interaction_triton(w, v, few)
    err = ((got.double() - ref).abs().max() / ref.abs().max()).item()
    if not err <= 1e-4:
        raise SystemExit(f"fused Q differs from the float64 reference by {err:.3g} (relative to max)")
    return err


def run_case(d, h, b, device):
    g = torch.Generator(device="cpu").manual_seed(0)
    w = (torch.randn(h, d, generator=g) / d ** 0.5).to(device)
    v = (torch.randn(h, d, generator=g) / d ** 0.5).to(device)
    c = torch.randn(b, h, generator=g).to(device)
    agreement = check_agreement(w, v, c, device)
    out = torch.empty(b, d, d, device=device)
    flops = 2 * h * d * d * b
    peak = fp32_peak(device)
    rows = []
    for name, impl in IMPLS.items():
        def call(impl=impl):
            impl(w, v, c, out)
        ms = time_ms(call, device, args.warmup, args.reps)
        tflops = flops / (ms * 1e-3) / 1e12
        rows.append({"impl": name, "d": d, "h": h, "b": b, "dtype": "float32", "ms": ms, "tflops": tflops,
                     "fraction_of_fp32_peak": tflops / peak if peak else None,
                     "peak_temporary_bytes": peak_bytes(call, device),
                     "max_rel_err_vs_float64": agreement if name == "fused" else None})
        print(f"  d={d} h={h} b={b} {name:11s} {ms:10.3f} ms {tflops:7.2f} TFLOP/s", flush=True)
    for row in rows[:-1]:
        row["fused_speedup"] = row["ms"] / rows[-1]["ms"]
    return rows


def environment(device):
    return {**kernel_environment(device), "fp32_peak_tflops": fp32_peak(device),
            "fp32_peak_source": "--peak-tflops" if args.peak_tflops is not None else "vendor datasheet table",
            "max_memory_gib": args.max_memory}


def markdown(env, rows):
    lines = ["# Fused symmetric interaction construction vs torch (fp32)", "",
             ", ".join(f"{k}: {v}" for k, v in env.items()), "",
             "| d×h×b | impl | ms | TFLOP/s | of fp32 peak | temporaries MiB | fused speedup |",
             "|---|---|---|---|---|---|---|"]
    for r in rows:
        frac = r["fraction_of_fp32_peak"]
        temp = r["peak_temporary_bytes"]
        lines.append(
            f"| {r['d']}×{r['h']}×{r['b']} | {r['impl']} | {r['ms']:.3f} | {r['tflops']:.2f} | "
            f"{'' if frac is None else f'{100 * frac:.0f}%'} | {'' if temp is None else f'{temp / 2**20:.1f}'} | "
            f"{r.get('fused_speedup', float('nan')):.2f}× |")
    return "\n".join(lines) + "\n"


def main():
    if args.device == "cuda" and not torch.cuda.is_available():
        raise SystemExit("bench_interaction.py measures GPU kernels and needs a CUDA device; "
                         "use --device cpu for a smoke test at tiny sizes")
    # one fp32 precision for every implementation: "highest" (default) is fp32 accuracy everywhere,
    # "high" lets torch and the kernels use TF32
    torch.set_float32_matmul_precision(args.matmul_precision)
    shapes = [tuple(int(s) for s in item.split("x"))
              for item in (args.shapes or (GPU_SHAPES if args.device == "cuda" else CPU_SHAPES)).split(",")]
    env = environment(args.device)
    rows = []
    for d, h, b in shapes:
        rows.extend(run_case(d, h, b, args.device))
    out = args.out
    if out is None and args.device == "cuda":
        slug = torch.cuda.get_device_name().replace(" ", "_").replace("/", "_")
        out = str(ROOT / "benchmarks" / "results" / f"interaction_{slug}")
    if out is None:
        print("smoke run: results not written (pass --out to keep them)")
        return
    Path(out).parent.mkdir(parents=True, exist_ok=True)
    Path(out + ".json").write_text(json.dumps({"environment": env, "results": rows}, indent=2))
    Path(out + ".md").write_text(markdown(env, rows))
    print(f"wrote {out}.json and {out}.md")


if __name__ == "__main__":
    main()
