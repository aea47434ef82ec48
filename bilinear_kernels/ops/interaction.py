"""Fused symmetric interaction matrices: Q_b = ½(Wᵀ diag(c_b) V + Vᵀ diag(c_b) W).

One program per (direction b, d×d output tile on or above the diagonal). It walks the hidden
dimension, scales the W and V tiles by c_b as they are loaded (no (b, h, d) scaled copy of the
weights ever exists), accumulates both products into one fp32 tile, and writes that tile and its
transpose. Only tiles with i ≤ j are computed, so the two products together cost what the one
GEMM of the plain form does (2·h·d² flops per direction), and the lower triangle is a copy of the
upper one, so the result is exactly symmetric.
`triangle="upper"` or `"lower"` writes a single triangle (diagonal included) for consumers that
read only one, such as cuSOLVER's or torch.linalg.eigh's UPLO.

Consecutive programs take the same tile for different directions, so the W and V tiles they load
are shared through L2.

The plain-torch twin is `interaction.build_interaction_reference`.
"""
from __future__ import annotations

import torch
import triton
import triton.language as tl

from ._launch import aligned_rows, configs, dot_precision, make_pruner

# Per precision class, what is worth tuning (COMPILE_TABLE.md has each one's registers, spills and
# shared memory on sm_90): four (BLOCK_H, BLOCK_D) tiles are staged per step, so fp32 tiles are
# kept to those that fit; tf32x3 keeps the ones that compiled without spilling under Triton 3.6
# (under Triton 3.9 the 128-wide tile spills 16 B, see the table).
GPU_CONFIGS = {
    "half": [
        dict(BLOCK_D=128, BLOCK_H=32, num_warps=8, num_stages=3),
        dict(BLOCK_D=128, BLOCK_H=64, num_warps=8, num_stages=3),
        dict(BLOCK_D=64, BLOCK_H=64, num_warps=4, num_stages=4),
        dict(BLOCK_D=64, BLOCK_H=32, num_warps=4, num_stages=4),
    ],
    "tf32": [
        dict(BLOCK_D=128, BLOCK_H=32, num_warps=8, num_stages=3),
        dict(BLOCK_D=64, BLOCK_H=32, num_warps=4, num_stages=4),
        dict(BLOCK_D=32, BLOCK_H=64, num_warps=4, num_stages=3),
    ],
    "tf32x3": [
        dict(BLOCK_D=128, BLOCK_H=32, num_warps=8, num_stages=3),
        dict(BLOCK_D=64, BLOCK_H=32, num_warps=4, num_stages=4),
    ],
}
_CONFIGS = configs(GPU_CONFIGS, interpreter=dict(BLOCK_D=16, BLOCK_H=16))
# Tuned per power-of-two bucket of the number of directions (a last, smaller chunk reuses the
# choice), per shape, triangle and precision; the operand dtype is part of every key already.
_KEY = ["B_BUCKET", "D", "H", "WRITE_UPPER", "WRITE_LOWER", "PRECISION"]
# The number of directions only enters the program-id arithmetic: no specialization is worth a compile.
_NOT_SPECIALIZED = ["B", "B_BUCKET"]


def shared_bytes(config: triton.Config, itemsize: int) -> int:
    """Shared memory of one block, an upper bound on sm_90 (COMPILE_TABLE.md checks it against the
    compiler): num_stages buffers of the four W and V tiles, plus barriers."""
    d, h = config.kwargs["BLOCK_D"], config.kwargs["BLOCK_H"]
    return config.num_stages * 4 * d * h * itemsize + 1024


_PRUNE = {"early_config_prune": make_pruner(GPU_CONFIGS, shared_bytes, pointer="w_ptr")}
TRIANGLES = (None, "upper", "lower")


@triton.jit
def _upper_tile(t):
    """The t-th tile (row ≤ column) of the upper triangle, enumerated column by column:
    column j holds tiles t in [j(j+1)/2, (j+1)(j+2)/2)."""
    j = ((tl.sqrt(8.0 * t.to(tl.float64) + 1.0) - 1.0) * 0.5).to(tl.int64)
    # the square root is exact to far below one tile; these two steps absorb its rounding
    j = tl.where(j * (j + 1) // 2 > t, j - 1, j)
    j = tl.where((j + 1) * (j + 2) // 2 <= t, j + 1, j)
    return t - j * (j + 1) // 2, j


@triton.autotune(configs=_CONFIGS, key=_KEY, prune_configs_by=_PRUNE)
@triton.jit(do_not_specialize=_NOT_SPECIALIZED)
def _interaction_kernel(w_ptr, v_ptr, c_ptr, q_ptr, B, H, D, B_BUCKET,
                        stride_wh, stride_wd, stride_vh, stride_vd, stride_cb, stride_ch,
                        stride_qb, stride_qi, stride_qj,
                        WRITE_UPPER: tl.constexpr, WRITE_LOWER: tl.constexpr, PRECISION: tl.constexpr,
                        BLOCK_D: tl.constexpr, BLOCK_H: tl.constexpr):
    pid = tl.program_id(0).to(tl.int64)
    batch = pid % B
    tile_i, tile_j = _upper_tile(pid // B)
    offs_i = tile_i * BLOCK_D + tl.arange(0, BLOCK_D)
    offs_j = tile_j * BLOCK_D + tl.arange(0, BLOCK_D)
    offs_k = tl.arange(0, BLOCK_H).to(tl.int64)  # int64 offsets: kk · stride_ch passes 2³¹ for a transposed c
    mask_i = offs_i[None, :] < D
    mask_j = offs_j[None, :] < D
    c_row = c_ptr + batch * stride_cb

    acc = tl.zeros((BLOCK_D, BLOCK_D), dtype=tl.float32)
    for k0 in range(0, H, BLOCK_H):
        kk = k0 + offs_k
        k_in = kk[:, None] < H
        rows = kk[:, None]
        w_i = tl.load(w_ptr + rows * stride_wh + offs_i[None, :] * stride_wd, mask=k_in & mask_i, other=0.0)
        v_i = tl.load(v_ptr + rows * stride_vh + offs_i[None, :] * stride_vd, mask=k_in & mask_i, other=0.0)
        w_j = tl.load(w_ptr + rows * stride_wh + offs_j[None, :] * stride_wd, mask=k_in & mask_j, other=0.0)
        v_j = tl.load(v_ptr + rows * stride_vh + offs_j[None, :] * stride_vd, mask=k_in & mask_j, other=0.0)
        c = tl.load(c_row + kk * stride_ch, mask=kk < H, other=0.0).to(tl.float32)[:, None]
        # diag(c) is applied to the j-side operands in fp32, then rounded to the operand dtype
        cv_j = (v_j.to(tl.float32) * c).to(v_j.dtype)
        cw_j = (w_j.to(tl.float32) * c).to(w_j.dtype)
        acc = tl.dot(tl.trans(w_i), cv_j, acc, input_precision=PRECISION)
        acc = tl.dot(tl.trans(v_i), cw_j, acc, input_precision=PRECISION)
    out = (0.5 * acc).to(q_ptr.dtype.element_ty)

    q = q_ptr + batch * stride_qb
    if WRITE_UPPER:
        ii = offs_i[:, None]
        jj = offs_j[None, :]
        tl.store(q + ii * stride_qi + jj * stride_qj, out, mask=(ii < D) & (jj < D) & (ii <= jj))
    if WRITE_LOWER:
        # Q[j, i] takes the value computed for Q[i, j] (stored as the transposed tile so rows stay
        # contiguous); the diagonal only when the upper triangle did not already write it.
        jj = offs_j[:, None]
        ii = offs_i[None, :]
        below = (ii < jj) if WRITE_UPPER else (ii <= jj)
        tl.store(q + jj * stride_qi + ii * stride_qj, tl.trans(out), mask=(ii < D) & (jj < D) & below)


def _check_operands(w, v, c):
    if w.ndim != 2 or w.shape != v.shape:
        raise ValueError(f"w and v must be 2-D of one shape (h, d), got w {tuple(w.shape)} and v {tuple(v.shape)}")
    if c.ndim != 2 or c.shape[1] != w.shape[0]:
        raise ValueError(f"c must be (b, h) with h = {w.shape[0]} (the rows of w), got c {tuple(c.shape)}")


def build_interaction_triton(w: torch.Tensor, v: torch.Tensor, c: torch.Tensor, *,
                             triangle: str | None = None, out: torch.Tensor | None = None) -> torch.Tensor:
    """Q for coefficient rows c (b, h): (b, d, d) in w's dtype, accumulated in fp32.

    triangle  None writes the whole, exactly symmetric Q; "upper" writes only entries with
              row ≤ column, "lower" only row ≥ column. The other triangle of `out` is left as it
              was (uninitialised memory when `out` is not given).
    out       an optional (b, d, d) tensor of w's dtype and device to write into (any strides).
    """
    _check_operands(w, v, c)
    if triangle not in TRIANGLES:
        raise ValueError(f"triangle must be one of {TRIANGLES}, got {triangle!r}")
    (h, d), b = w.shape, c.shape[0]
    w, v, c = aligned_rows(w), aligned_rows(v), aligned_rows(c)
    if out is None:
        out = torch.empty((b, d, d), dtype=w.dtype, device=w.device)
    elif out.shape != (b, d, d) or out.dtype != w.dtype or out.device != w.device:
        raise ValueError(f"out must be ({b}, {d}, {d}) {w.dtype} on {w.device}, got {tuple(out.shape)} "
                         f"{out.dtype} on {out.device}")
    if b == 0 or d == 0:
        return out
    if h == 0:
        return out.zero_()

    def grid(meta):
        n = triton.cdiv(d, meta["BLOCK_D"])
        return (b * (n * (n + 1) // 2),)  # directions × tiles on or above the diagonal

    _interaction_kernel[grid](
        w, v, c, out, b, h, d, triton.next_power_of_2(b),
        w.stride(0), w.stride(1), v.stride(0), v.stride(1), c.stride(0), c.stride(1),
        out.stride(0), out.stride(1), out.stride(2),
        WRITE_UPPER=triangle in (None, "upper"), WRITE_LOWER=triangle in (None, "lower"),
        PRECISION=dot_precision(w.dtype),
    )
    return out
