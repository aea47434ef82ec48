"""Fused bilinear forward (and forward+backward) against torch in the same run.

Question: how much faster, and how much lighter in training memory, is the fused Triton forward
H = (X Wᵀ) ⊙ (X Vᵀ), Y = H Pᵀ than torch eager and torch.compile of the same two formulations
    separate  (x @ Wᵀ) * (x @ Vᵀ) @ Pᵀ
    packed    linear(x, [W; V]).chunk(2) -> a * b @ Pᵀ
at LM shapes (tokens n, d, h; o = d) in bf16 and fp32?

Reports per implementation: median time (CUDA events), achieved TFLOP/s on the nominal model
flops (forward 2·n·(2·h·d + h·o), forward+backward 3× that, for every implementation alike, so
the fused backward's recompute is counted as overhead, not as work), peak memory above the inputs,
and for training the memory autograd keeps between forward and backward (activation memory).
Ratios are against each peer measured in this run. Results go to benchmarks/results/ as JSON and
Markdown with device, versions and shapes.

    python benchmarks/bench_forward.py                     # GPU, the shapes below
    python benchmarks/bench_forward.py --device cpu        # smoke test at tiny sizes (interpreter)

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
GPU_SHAPES = "8192x1024x4096,8192x4096x16384"
CPU_SHAPES = "40x24x33"


def parse_args():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--device", default="cuda", choices=["cuda", "cpu"])
    ap.add_argument("--shapes", default=None, help=f"comma list of NxDxH (o = d); default {GPU_SHAPES}")
    ap.add_argument("--dtypes", default="bfloat16,float32")
    ap.add_argument("--modes", default="forward,train", help="forward (no grad) and/or train (forward+backward)")
    ap.add_argument("--warmup", type=int, default=5)
    ap.add_argument("--reps", type=int, default=30)
    ap.add_argument("--no-compile", action="store_true", help="leave out the torch.compile peers")
    ap.add_argument("--matmul-precision", choices=("highest", "high"), default="highest",
                    help="torch.set_float32_matmul_precision for every fp32 implementation (default: highest)")
    ap.add_argument("--out", default=None, help="results path without extension "
                    "(default on CUDA: benchmarks/results/forward_<device>)")
    return ap.parse_args()


args = parse_args()
if args.device == "cpu":
    # kernels are decorated at import: the interpreter must be chosen first
    os.environ.setdefault("TRITON_INTERPRET", "1")
sys.path.insert(0, str(ROOT))

import torch  # noqa: E402

from benchmarks.kernel_timing import kernel_environment as environment, peak_bytes, time_ms  # noqa: E402
from benchmarks.measure import synchronize  # noqa: E402
import torch.nn.functional as F  # noqa: E402

from bilinear_kernels.ops.bilinear_forward import bilinear_fused  # noqa: E402


# -- implementations -----------------------------------------------------------------------------

def eager_separate(x, w, v, wv, p):
    return ((x @ w.t()) * (x @ v.t())) @ p.t()


def eager_packed(x, w, v, wv, p):
    a, b = F.linear(x, wv).chunk(2, dim=-1)
    return (a * b) @ p.t()


def fused(x, w, v, wv, p):
    return bilinear_fused(x, w, v, p)


def implementations(compile_peers: bool):
    """Fresh per case, so no compiled peer ever hits dynamo's recompile limit and falls back to
    eager without saying so."""
    impls = {"eager_separate": eager_separate, "eager_packed": eager_packed}
    if compile_peers:
        torch._dynamo.reset()
        impls["compile_separate"] = torch.compile(eager_separate, dynamic=False)
        impls["compile_packed"] = torch.compile(eager_packed, dynamic=False)
    impls["fused"] = fused
    return impls


# -- measurement ----------------------------------------------------------------------------------

def activation_bytes(impl, inputs, device):
    """Memory autograd holds between forward and backward, beyond the output itself."""
    if device != "cuda":
        return None
    synchronize(device)
    base = torch.cuda.memory_allocated()
    y = impl(*inputs)
    synchronize(device)
    held = torch.cuda.memory_allocated() - base - y.numel() * y.element_size()
    del y
    return held


def make_inputs(n, d, h, dtype, device, train):
    g = torch.Generator(device="cpu").manual_seed(0)
    x = torch.randn(n, d, generator=g).to(device, dtype)
    wv = (torch.randn(2 * h, d, generator=g) / d ** 0.5).to(device, dtype)
    p = (torch.randn(d, h, generator=g) / h ** 0.5).to(device, dtype)
    if train:
        x.requires_grad_(True)
        wv.requires_grad_(True)
        p.requires_grad_(True)
    w, v = wv[:h], wv[h:]  # views: the separate form and the packed form share one weight
    return x, w, v, wv, p


def check_agreement(impls, inputs, dtype):
    with torch.no_grad():
        ref = eager_separate(*inputs).double()
        got = impls["fused"](*inputs).double()
    err = ((got - ref).abs().max() / ref.abs().max()).item()
    limit = {torch.float32: 1e-4, torch.float16: 1e-2, torch.bfloat16: 5e-2}[dtype]
    if not err <= limit:
        raise SystemExit(f"fused output differs from eager by {err:.3g} (relative to max), over {limit}")
    return err


def run_case(n, d, h, dtype, mode, args):
    train = mode == "train"
    impls = implementations(compile_peers=not args.no_compile and args.device == "cuda")
    inputs = make_inputs(n, d, h, dtype, args.device, train)
    agreement = check_agreement(impls, inputs, dtype)
    grad_y = torch.randn(n, d, device=args.device, dtype=dtype)
    flops = 2 * n * (2 * h * d + h * d) * (3 if train else 1)
    rows = []
    for name, impl in impls.items():
        if train:
            def step(impl=impl):
                y = impl(*inputs)
                y.backward(grad_y)
                for t in (inputs[0], inputs[3], inputs[4]):
                    t.grad = None
        else:
            def step(impl=impl):
                with torch.no_grad():
                    impl(*inputs)
        ms = time_ms(step, args.device, args.warmup, args.reps)
        rows.append({
            "impl": name, "n": n, "d": d, "h": h, "o": d, "dtype": str(dtype).replace("torch.", ""),
            "mode": mode, "ms": ms, "tflops": flops / (ms * 1e-3) / 1e12,
            "peak_bytes": peak_bytes(step, args.device),
            "activation_bytes": activation_bytes(impl, inputs, args.device) if train else None,
            "max_rel_err_vs_eager": agreement if name == "fused" else None,
        })
        print(f"  {mode:7s} {rows[-1]['dtype']:8s} n={n} d={d} h={h} {name:17s} {ms:9.3f} ms "
              f"{rows[-1]['tflops']:7.2f} TFLOP/s", flush=True)
    fused_row = rows[-1]
    for row in rows[:-1]:
        row["fused_speedup"] = row["ms"] / fused_row["ms"]
        if row["activation_bytes"]:
            row["fused_activation_saving"] = 1 - fused_row["activation_bytes"] / row["activation_bytes"]
    return rows


def markdown(env, rows):
    lines = ["# Fused bilinear forward vs torch", "",
             ", ".join(f"{k}: {v}" for k, v in env.items()), "",
             "| mode | dtype | n×d×h | impl | ms | TFLOP/s | peak MiB | activations MiB | fused speedup | fused activation saving |",
             "|---|---|---|---|---|---|---|---|---|---|"]

    def mib(b):
        return "" if b is None else f"{b / 2**20:.1f}"

    for r in rows:
        saving = r.get("fused_activation_saving")
        lines.append(
            f"| {r['mode']} | {r['dtype']} | {r['n']}×{r['d']}×{r['h']} | {r['impl']} | {r['ms']:.3f} | "
            f"{r['tflops']:.2f} | {mib(r['peak_bytes'])} | {mib(r['activation_bytes'])} | "
            f"{r.get('fused_speedup', float('nan')):.2f}× | {'' if saving is None else f'{100 * saving:.0f}%'} |")
    return "\n".join(lines) + "\n"


def main():
    if args.device == "cuda" and not torch.cuda.is_available():
        raise SystemExit("bench_forward.py measures GPU kernels and needs a CUDA device; "
                         "use --device cpu for a smoke test at tiny sizes")
    # one fp32 precision for every implementation: "highest" (default) is fp32 accuracy everywhere,
    # "high" lets torch and the kernels use TF32
    torch.set_float32_matmul_precision(args.matmul_precision)
    shapes = [tuple(int(s) for s in item.split("x"))
              for item in (args.shapes or (GPU_SHAPES if args.device == "cuda" else CPU_SHAPES)).split(",")]
    dtypes = [getattr(torch, name) for name in args.dtypes.split(",")]
    if args.device == "cpu":
        dtypes = [t for t in dtypes if t != torch.bfloat16] or [torch.float32]  # no bf16 in the interpreter
    env = environment(args.device)
    env["compile_peers"] = not args.no_compile and args.device == "cuda"
    rows = []
    for n, d, h in shapes:
        for dtype in dtypes:
            for mode in args.modes.split(","):
                rows.extend(run_case(n, d, h, dtype, mode, args))
    out = args.out
    if out is None and args.device == "cuda":
        slug = torch.cuda.get_device_name().replace(" ", "_").replace("/", "_")
        out = str(ROOT / "benchmarks" / "results" / f"forward_{slug}")
    if out is None:
        print("smoke run: results not written (pass --out to keep them)")
        return
    Path(out).parent.mkdir(parents=True, exist_ok=True)
    Path(out + ".json").write_text(json.dumps({"environment": env, "results": rows}, indent=2))
    Path(out + ".md").write_text(markdown(env, rows))
    print(f"wrote {out}.json and {out}.md")


if __name__ == "__main__":
    main()
