"""W5: forward and forward+backward of y = P((W x) ⊙ (V x)).

Compared: torch eager (three nn.functional.linear calls and a product: the baseline), bk.bilinear,
and the bilinear_kernels.nn.Bilinear module when the package has one. Each is timed on the forward
alone (no autograd) and on forward + backward of ⟨y, g⟩ for a fixed random g; errors of y and of
every gradient are measured against a float64 evaluation of the same inputs, relative to the
reference's largest entry.

Precision: bf16 on CUDA. On the CPU a probe GEMM decides: when bf16 runs at under a quarter of
float32's speed (CPUs without native bf16 matrix units emulate it), the CPU run uses float32 and
the results say so, with the probe's numbers.
"""
from __future__ import annotations

import time

import torch
import torch.nn.functional as F

import bilinear_kernels as bk

from .measure import measure, synchronize
from .workloads import ForwardWorkload, random_weights

PROBE_SHAPE = (256, 256, 256)


def torch_eager(x, w, v, p):
    return F.linear(F.linear(x, w) * F.linear(x, v), p)


def _gemm_rate(dtype: torch.dtype, device: str) -> float:
    m, k, n = PROBE_SHAPE
    a = torch.randn(m, k, device=device).to(dtype)
    b = torch.randn(k, n, device=device).to(dtype)
    a @ b
    synchronize(device)
    t0 = time.perf_counter()
    for _ in range(2):
        a @ b
    synchronize(device)
    return 2 * 2 * m * k * n / (time.perf_counter() - t0) / 1e9


def choose_dtype(device: str, requested: str = "auto") -> tuple[torch.dtype, str]:
    """The precision W5 runs in, and why."""
    if requested != "auto":
        return getattr(torch, requested), f"{requested}, as requested"
    if device.startswith("cuda"):
        return torch.bfloat16, "bfloat16"
    bf16, fp32 = _gemm_rate(torch.bfloat16, device), _gemm_rate(torch.float32, device)
    if bf16 < fp32 / 4:
        return torch.float32, (f"float32: bf16 is impractical on this CPU (a {PROBE_SHAPE} GEMM ran at "
                               f"{bf16:.2f} GFLOP/s in bf16 against {fp32:.1f} GFLOP/s in float32)")
    return torch.bfloat16, (f"bfloat16 (probe GEMM {bf16:.1f} GFLOP/s in bf16, {fp32:.1f} in float32)")


def nn_bilinear(w, v, p) -> torch.nn.Module:
    """The package's nn.Bilinear module holding (w, v, p)."""
    from bilinear_kernels.nn import Bilinear

    return Bilinear.from_layer(bk.BilinearLayer(w, v, p))


def _methods(w, v, p):
    """name -> (label, callable(x, w, v, p), parameters it owns) or the reason it is unavailable."""
    out = {"torch-eager": ("torch eager (F.linear ×3)", torch_eager, None),
           "bk-bilinear": ("bk.bilinear", bk.bilinear, None)}
    try:
        module = nn_bilinear(w, v, p)
        out["bk-nn-bilinear"] = ("bilinear_kernels.nn.Bilinear", lambda x, *_: module(x),
                                 list(module.parameters()))
    except Exception as exc:  # noqa: BLE001 - unbuildable here (e.g. no Triton): a row says why
        out["bk-nn-bilinear"] = ("bilinear_kernels.nn.Bilinear", exc, None)
    return out


def run_forward(wl: ForwardWorkload, device: str, repeats: int, time_cap: float, dtype: torch.dtype,
                weights: str = "gaussian", seed: int = 0, log=print) -> list[dict]:
    w32, v32, p32 = random_weights(wl.name, wl.d, wl.h, wl.o, weights, seed)
    gen = torch.Generator().manual_seed(seed + 5)
    x32 = torch.randn(wl.tokens, wl.d, generator=gen)
    g32 = torch.randn(wl.tokens, wl.o, generator=gen)

    # the float64 reference, on the device: output and gradients of <y, g>
    ref_in = [t.to(device, torch.float64).requires_grad_() for t in (x32, w32, v32, p32)]
    y_ref = torch_eager(*ref_in)
    ref_grads = torch.autograd.grad((y_ref * g32.to(device, torch.float64)).sum(), ref_in)
    ref = {"y": y_ref.detach()} | dict(zip(("dx", "dw", "dv", "dp"), ref_grads))
    del ref_in, y_ref, ref_grads

    leaves = [t.to(device=device, dtype=dtype) for t in (x32, w32, v32, p32)]
    g = g32.to(device=device, dtype=dtype)
    rows = []
    for name, (label, fn, owned) in _methods(*leaves[1:]).items():
        if isinstance(fn, Exception):
            rows.append({"method": name, "label": label, "family": "ours", "status": "not_applicable",
                         "reason": str(fn), "passes": {}})
            log(f"  W5 {name:<16} not_applicable  {fn}")
            continue
        row = {"method": name, "label": label, "family": "baseline" if name == "torch-eager" else "ours",
               "status": "ok", "reason": None, "passes": {}}

        def forward(_cap, _warmup, fn=fn):
            with torch.no_grad():
                return fn(*leaves)

        def forward_backward(_cap, _warmup, fn=fn, owned=owned):
            inputs = [t.detach().requires_grad_() for t in leaves]
            y = fn(*inputs)
            if owned is None:
                return y.detach(), torch.autograd.grad((y * g).sum(), inputs)
            # a module owns its weights: all gradients are computed, the input's is compared
            grads = torch.autograd.grad((y * g).sum(), [inputs[0], *owned])
            return y.detach(), (grads[0], None, None, None)

        def check_forward(y):
            return {"max_rel_error_y": _rel(y, ref["y"])}

        def check_backward(result):
            y, grads = result
            acc = {"max_rel_error_y": _rel(y, ref["y"])}
            for key, grad in zip(("dx", "dw", "dv", "dp"), grads):
                if grad is not None:
                    acc[f"max_rel_error_{key}"] = _rel(grad, ref[key])
            return acc

        for pass_name, fn_pass, check in (("forward", forward, check_forward),
                                          ("forward_backward", forward_backward, check_backward)):
            result = measure(fn_pass, device=device, repeats=repeats, time_cap=time_cap, check=check)
            row["passes"][pass_name] = result
            if result["status"] != "ok":
                row["status"], row["reason"] = result["status"], f"{pass_name}: {result['reason']}"
            sec = result["seconds"]["median"] if result["seconds"] else float("nan")
            log(f"  W5 {name:<16} {pass_name:<17} {result['status']:<8} {sec:9.4f} s")
        rows.append(row)
    return rows


def _rel(a: torch.Tensor, ref: torch.Tensor) -> float:
    scale = ref.abs().max().clamp_min(torch.finfo(torch.float64).tiny)
    return float((a.detach().to(ref.device, torch.float64) - ref).abs().max() / scale)
