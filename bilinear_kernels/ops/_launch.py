"""What the Triton launchers share: interpreter detection, the fp32 dot precision and the
autotuning configurations (one small configuration under the interpreter, where timing is
meaningless and every extra configuration costs a full interpreted run)."""
from __future__ import annotations

import triton

from ..backends import triton_interpreting

# Read once, like triton.jit itself: whether a kernel is interpreted is fixed when it is decorated.
INTERPRETING = triton_interpreting()


def dot_precision(dtype) -> str | None:
    """The tl.dot input precision. For float32 operands: TF32 only where torch itself would use it
    for float32 matmuls (torch.set_float32_matmul_precision), IEEE fp32 otherwise. Half-precision
    operands have no choice to make: None keeps Triton's default."""
    import torch

    if dtype != torch.float32:
        return None
    return "ieee" if torch.get_float32_matmul_precision() == "highest" else "tf32"


def configs(gpu: list[dict], interpreter: dict) -> list[triton.Config]:
    """Autotuning candidates: `gpu` on a device, the single `interpreter` one under TRITON_INTERPRET."""
    chosen = [interpreter] if INTERPRETING else gpu
    out = []
    for c in chosen:
        c = dict(c)
        warps, stages = c.pop("num_warps", 4), c.pop("num_stages", 2)
        out.append(triton.Config(c, num_warps=warps, num_stages=stages))
    return out
