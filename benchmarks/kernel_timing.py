"""Timing, memory and the environment record of one GPU kernel call, shared by the kernel
benchmarks."""
from __future__ import annotations

import os
import platform
import statistics
import time

import torch

from .measure import synchronize


def time_ms(fn, device, warmup, reps):
    """Median milliseconds of fn() over `reps` runs after `warmup` (CUDA events on a GPU)."""
    for _ in range(warmup):
        fn()
    synchronize(device)
    times = []
    for _ in range(reps):
        if device == "cuda":
            start, stop = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
            start.record()
            fn()
            stop.record()
            torch.cuda.synchronize()
            times.append(start.elapsed_time(stop))
        else:
            t0 = time.perf_counter()
            fn()
            times.append(1e3 * (time.perf_counter() - t0))
    return statistics.median(times)


def peak_bytes(fn, device):
    """Peak memory allocated while fn runs, above what was allocated before (CUDA only)."""
    if device != "cuda":
        return None
    synchronize(device)
    torch.cuda.reset_peak_memory_stats()
    base = torch.cuda.memory_allocated()
    fn()
    synchronize(device)
    return torch.cuda.max_memory_allocated() - base


def kernel_environment(device) -> dict:
    """Versions, device and precision settings a kernel benchmark's results depend on."""
    import triton

    env = {"torch": torch.__version__, "triton": triton.__version__, "python": platform.python_version(),
           "device": device, "float32_matmul_precision": torch.get_float32_matmul_precision(),
           "triton_interpret": os.environ.get("TRITON_INTERPRET", "")}
    if device == "cuda":
        env.update(gpu=torch.cuda.get_device_name(), cuda=torch.version.cuda,
                   capability=".".join(map(str, torch.cuda.get_device_capability())))
    else:
        env.update(cpu=platform.processor() or platform.machine(), note="smoke test: numbers answer nothing")
    return env
