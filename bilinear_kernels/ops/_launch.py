"""What the Triton launchers share: interpreter detection, the dot precision of each dtype and
matmul setting (PRECISION.md says why), the autotuning configurations and their pruning by shared
memory, and the row alignment the kernels' loads want.

Configurations are listed per precision class ("half" for fp16/bf16 operands, "tf32", "tf32x3")
because what fits in shared memory and registers differs between them; the autotuner holds their
union and `prune_configs` keeps, before anything is compiled, the class's own configurations whose
estimated shared memory fits the device. Under the interpreter there is one small configuration:
timing is meaningless there and every extra configuration costs a full interpreted run.
"""
from __future__ import annotations

import functools

import torch
import triton

from ..backends import triton_interpreting

# Read once, like triton.jit itself: whether a kernel is interpreted is fixed when it is decorated.
INTERPRETING = triton_interpreting()

# fp32 operands: "highest" asks for fp32 accuracy, which the tensor cores give as three TF32
# products (Triton's tf32x3); "high" and "medium" allow TF32 (one product, 10-bit mantissa).
FP32_PRECISION = {"highest": "tf32x3", "high": "tf32", "medium": "tf32"}
PRECISION_CLASSES = ("half", "tf32", "tf32x3")

# The opt-in shared memory of one block on sm_90 (227 KiB), used where no device can be asked.
SM90_SHARED_MEMORY = 232448
# Row strides (in elements) the loads want: Triton specializes an integer argument divisible by 16,
# which proves every row starts 16-byte aligned (64 bytes for fp32) and lets it issue 16-byte
# cp.async copies; any other stride falls back to narrow, unvectorized loads.
ROW_ALIGNMENT = 16


def dot_precision(dtype) -> str | None:
    """The tl.dot input precision: for float32 operands the FP32_PRECISION of torch's
    float32_matmul_precision; half-precision operands have no choice to make (None keeps Triton's
    default)."""
    if dtype != torch.float32:
        return None
    return FP32_PRECISION[torch.get_float32_matmul_precision()]


def precision_class(precision: str | None) -> str:
    return "half" if precision is None else precision


def configs(gpu: dict[str, list[dict]], interpreter: dict) -> list[triton.Config]:
    """Autotuning candidates: the union of `gpu`'s per-class lists on a device, the single
    `interpreter` one under TRITON_INTERPRET."""
    return [_config(interpreter)] if INTERPRETING else union_configs(gpu)


def union_configs(gpu: dict[str, list[dict]]) -> list[triton.Config]:
    seen = {}
    for listed in gpu.values():
        for c in listed:
            seen.setdefault(config_id(_config(c)), _config(c))
    return list(seen.values())


def _config(c: dict) -> triton.Config:
    c = dict(c)
    warps, stages = c.pop("num_warps", 4), c.pop("num_stages", 2)
    return triton.Config(c, num_warps=warps, num_stages=stages)


def config_id(config: triton.Config) -> tuple:
    return tuple(sorted(config.kwargs.items())) + (("num_warps", config.num_warps), ("num_stages", config.num_stages))


def class_configs(gpu: dict[str, list[dict]], klass: str) -> list[triton.Config]:
    return [_config(c) for c in gpu[klass]]


@functools.lru_cache(maxsize=None)
def _device_shared_memory(index: int) -> int:
    props = triton.runtime.driver.active.utils.get_device_properties(index)
    return int(props["max_shared_mem"])


def shared_memory_limit() -> int:
    """Bytes of shared memory one block may use on the current device (sm_90's without one)."""
    if INTERPRETING or not torch.cuda.is_available():
        return SM90_SHARED_MEMORY
    try:
        return _device_shared_memory(torch.cuda.current_device())
    except Exception:  # noqa: BLE001 - a driver that cannot say: assume the smallest Hopper limit
        return SM90_SHARED_MEMORY


def make_pruner(gpu: dict[str, list[dict]], shared_bytes, pointer: str):
    """An `early_config_prune` for triton.autotune: the configurations of the call's precision
    class whose `shared_bytes(config, itemsize)` fits the device, smallest first if none does.
    `pointer` names an operand argument whose dtype gives the itemsize."""
    by_class = {k: {config_id(c) for c in class_configs(gpu, k)} for k in gpu}

    def prune(all_configs, named_args, **kwargs):
        if INTERPRETING:
            return list(all_configs)
        klass = precision_class(kwargs.get("PRECISION", named_args.get("PRECISION")))
        itemsize = named_args[pointer].element_size()
        return prune_configs(all_configs, by_class[klass], itemsize, shared_bytes, shared_memory_limit())

    return prune


def prune_configs(all_configs, allowed_ids, itemsize: int, shared_bytes, limit: int):
    mine = [c for c in all_configs if config_id(c) in allowed_ids]
    fitting = [c for c in mine if shared_bytes(c, itemsize) <= limit]
    return fitting or sorted(mine, key=lambda c: shared_bytes(c, itemsize))[:1]


def aligned_rows(t: torch.Tensor | None) -> torch.Tensor | None:
    """`t` itself when its rows are contiguous and start on ROW_ALIGNMENT-element boundaries,
    else a copy whose rows are padded to that multiple (a view of the first columns). Biased
    layers reach the kernels as (h, d + 1) weights, whose odd row stride would otherwise cost the
    16-byte copies; the copy is one pass over a tensor the kernel reads many times."""
    if t is None or t.ndim != 2 or t.numel() == 0:
        return t
    rows, cols = t.shape
    if t.stride(1) == 1 and (rows == 1 or t.stride(0) % ROW_ALIGNMENT == 0) and t.data_ptr() % 16 == 0:
        return t
    padded = -(-cols // ROW_ALIGNMENT) * ROW_ALIGNMENT
    out = torch.empty((rows, padded), dtype=t.dtype, device=t.device)[:, :cols]
    return out.copy_(t)
