"""Fused bilinear forward and backward: H = (X Wᵀ + a) ⊙ (X Vᵀ + b), Y = H Pᵀ.

Forward: one Triton kernel walks the packed [W; V] weight with two fp32 accumulators (the tiles of
X Wᵀ and X Vᵀ for the same output block) and multiplies them in the epilogue, so the two h-wide
pre-activations never reach memory; Y = H Pᵀ is a cuBLAS GEMM.

Backward: only X is saved. A second kernel recomputes the pre-activation tiles and writes
G = [dH ⊙ (X Vᵀ + b), dH ⊙ (X Wᵀ + a)] (and H itself when dP needs it) in the same epilogue. Then
  d[W; V] = Gᵀ X            one GEMM for both weights
  dX      = G_w W + G_v V   two GEMMs into one buffer
  dP      = dYᵀ H,  d[a; b] = column sums of G.
Recomputing costs one extra pass of the forward GEMM (2·n·2h·d flops) and saves the 3·n·h
activations torch keeps for backward (both pre-activations and H), which is what bounds the batch
size in training. When a graph of the backward itself is needed (create_graph=True, e.g. Hessians)
the backward runs in plain differentiable torch instead, so double backward stays exact.

The plain-torch twin of the forward is `functional.bilinear_reference`; the twins of the two
kernels are `bilinear_hidden_reference` and `bilinear_hidden_grad_reference` below. Each kernel
runs behind its canary (fast_path_guard): a kernel that fails it, or raises, hands its work to its
twin.
"""
from __future__ import annotations

import torch
import triton
import triton.language as tl

from .. import fast_path_guard as guard
from ._launch import aligned_rows, configs, dot_precision, make_pruner

# Per precision class, what is worth tuning (COMPILE_TABLE.md has each one's registers, spills and
# shared memory on sm_90): half and tf32 keep the tiles that fit in shared memory; tf32x3 keeps the
# ones that compiled without spilling under Triton 3.6 (its three products per dot hold more
# registers; under Triton 3.9 the 64×64×64 tile spills 168 B, see the table).
GPU_CONFIGS = {
    "half": [
        dict(BLOCK_M=128, BLOCK_N=128, BLOCK_K=32, GROUP_M=8, num_warps=8, num_stages=3),
        dict(BLOCK_M=128, BLOCK_N=128, BLOCK_K=64, GROUP_M=8, num_warps=8, num_stages=3),
        dict(BLOCK_M=128, BLOCK_N=64, BLOCK_K=64, GROUP_M=8, num_warps=4, num_stages=4),
        dict(BLOCK_M=64, BLOCK_N=64, BLOCK_K=64, GROUP_M=8, num_warps=4, num_stages=4),
    ],
    "tf32": [
        dict(BLOCK_M=128, BLOCK_N=128, BLOCK_K=32, GROUP_M=8, num_warps=8, num_stages=3),
        dict(BLOCK_M=128, BLOCK_N=64, BLOCK_K=32, GROUP_M=8, num_warps=4, num_stages=4),
        dict(BLOCK_M=64, BLOCK_N=64, BLOCK_K=64, GROUP_M=8, num_warps=4, num_stages=4),
    ],
    "tf32x3": [
        dict(BLOCK_M=128, BLOCK_N=64, BLOCK_K=32, GROUP_M=8, num_warps=8, num_stages=3),
        dict(BLOCK_M=64, BLOCK_N=64, BLOCK_K=32, GROUP_M=8, num_warps=4, num_stages=4),
        dict(BLOCK_M=64, BLOCK_N=64, BLOCK_K=64, GROUP_M=8, num_warps=8, num_stages=3),
    ],
}
_CONFIGS = configs(
    GPU_CONFIGS,
    # small blocks so that tiny test shapes still span several tiles in every direction
    interpreter=dict(BLOCK_M=16, BLOCK_N=16, BLOCK_K=16, GROUP_M=2),
)
# Tuned per power-of-two bucket of the row count, so varying token counts do not re-tune each
# call, and per precision (the dtype of the operands is part of every autotune key already): a
# configuration chosen under tf32x3 need not fit under tf32, whose tiles take more shared memory.
_KEY = ["M_BUCKET", "N", "K", "PRECISION"]
# The row count only bounds masks: specializing on its divisibility would only multiply compiles.
_NOT_SPECIALIZED = ["M", "M_BUCKET"]


def shared_bytes(config: triton.Config, itemsize: int) -> int:
    """Shared memory of one block, an upper bound on sm_90 (COMPILE_TABLE.md checks it against the
    compiler): num_stages buffers of the X tile and the W and V tiles, plus barriers."""
    m, n, k = (config.kwargs[name] for name in ("BLOCK_M", "BLOCK_N", "BLOCK_K"))
    return config.num_stages * (m * k + 2 * k * n) * itemsize + 1024


_PRUNE = {"early_config_prune": make_pruner(GPU_CONFIGS, shared_bytes, pointer="x_ptr")}


@triton.jit
def _tile_ids(M, N, BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, GROUP_M: tl.constexpr):
    # Grouped ordering: GROUP_M row blocks share each column block of [W; V] while it is in L2.
    pid = tl.program_id(0)
    num_m = tl.cdiv(M, BLOCK_M)
    num_n = tl.cdiv(N, BLOCK_N)
    per_group = GROUP_M * num_n
    first_m = (pid // per_group) * GROUP_M
    group_m = tl.minimum(num_m - first_m, GROUP_M)
    pid_m = first_m + (pid % per_group) % group_m
    pid_n = (pid % per_group) // group_m
    return pid_m, pid_n


@triton.jit
def _preactivations(x_ptr, w_ptr, v_ptr, wb_ptr, vb_ptr, offs_m, offs_n, M, N, K,
                    stride_xm, stride_xk, stride_wn, stride_wk, stride_vn, stride_vk, stride_wb, stride_vb,
                    HAS_W_BIAS: tl.constexpr, HAS_V_BIAS: tl.constexpr, PRECISION: tl.constexpr,
                    BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr):
    """fp32 tiles of X Wᵀ + a and X Vᵀ + b for rows offs_m and hidden units offs_n. Every offset
    is int64: a transposed X has stride_xk = n, and k · n passes 2³¹ on large inputs."""
    offs_k = tl.arange(0, BLOCK_K).to(tl.int64)
    rows = offs_m.to(tl.int64)
    cols = offs_n.to(tl.int64)
    acc_w = tl.zeros((BLOCK_M, BLOCK_N), dtype=tl.float32)
    acc_v = tl.zeros((BLOCK_M, BLOCK_N), dtype=tl.float32)
    for k0 in range(0, K, BLOCK_K):
        kk = k0 + offs_k
        x = tl.load(x_ptr + rows[:, None] * stride_xm + kk[None, :] * stride_xk,
                    mask=(offs_m[:, None] < M) & (kk[None, :] < K), other=0.0)
        wt_mask = (kk[:, None] < K) & (offs_n[None, :] < N)
        wt = tl.load(w_ptr + kk[:, None] * stride_wk + cols[None, :] * stride_wn, mask=wt_mask, other=0.0)
        vt = tl.load(v_ptr + kk[:, None] * stride_vk + cols[None, :] * stride_vn, mask=wt_mask, other=0.0)
        acc_w = tl.dot(x, wt, acc_w, input_precision=PRECISION)
        acc_v = tl.dot(x, vt, acc_v, input_precision=PRECISION)
    if HAS_W_BIAS:
        acc_w += tl.load(wb_ptr + cols * stride_wb, mask=offs_n < N, other=0.0).to(tl.float32)[None, :]
    if HAS_V_BIAS:
        acc_v += tl.load(vb_ptr + cols * stride_vb, mask=offs_n < N, other=0.0).to(tl.float32)[None, :]
    return acc_w, acc_v


@triton.autotune(configs=_CONFIGS, key=_KEY, prune_configs_by=_PRUNE)
@triton.jit(do_not_specialize=_NOT_SPECIALIZED)
def _hidden_kernel(x_ptr, w_ptr, v_ptr, wb_ptr, vb_ptr, h_ptr, M, N, K, M_BUCKET,
                   stride_xm, stride_xk, stride_wn, stride_wk, stride_vn, stride_vk, stride_wb, stride_vb,
                   stride_hm, stride_hn,
                   HAS_W_BIAS: tl.constexpr, HAS_V_BIAS: tl.constexpr, PRECISION: tl.constexpr,
                   BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr,
                   GROUP_M: tl.constexpr):
    pid_m, pid_n = _tile_ids(M, N, BLOCK_M, BLOCK_N, GROUP_M)
    offs_m = pid_m * BLOCK_M + tl.arange(0, BLOCK_M)
    offs_n = pid_n * BLOCK_N + tl.arange(0, BLOCK_N)
    a, b = _preactivations(x_ptr, w_ptr, v_ptr, wb_ptr, vb_ptr, offs_m, offs_n, M, N, K,
                           stride_xm, stride_xk, stride_wn, stride_wk, stride_vn, stride_vk, stride_wb, stride_vb,
                           HAS_W_BIAS, HAS_V_BIAS, PRECISION, BLOCK_M, BLOCK_N, BLOCK_K)
    mask = (offs_m[:, None] < M) & (offs_n[None, :] < N)
    out = h_ptr + offs_m.to(tl.int64)[:, None] * stride_hm + offs_n.to(tl.int64)[None, :] * stride_hn
    tl.store(out, (a * b).to(h_ptr.dtype.element_ty), mask=mask)


@triton.autotune(configs=_CONFIGS, key=_KEY, prune_configs_by=_PRUNE)
@triton.jit(do_not_specialize=_NOT_SPECIALIZED)
def _hidden_grad_kernel(x_ptr, w_ptr, v_ptr, wb_ptr, vb_ptr, dh_ptr, g_ptr, h_ptr, M, N, K, M_BUCKET,
                        stride_xm, stride_xk, stride_wn, stride_wk, stride_vn, stride_vk, stride_wb, stride_vb,
                        stride_dm, stride_dn, stride_gm, stride_gn, stride_hm, stride_hn,
                        HAS_W_BIAS: tl.constexpr, HAS_V_BIAS: tl.constexpr,
                        WRITE_HIDDEN: tl.constexpr, PRECISION: tl.constexpr,
                        BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr,
                        GROUP_M: tl.constexpr):
    pid_m, pid_n = _tile_ids(M, N, BLOCK_M, BLOCK_N, GROUP_M)
    offs_m = pid_m * BLOCK_M + tl.arange(0, BLOCK_M)
    offs_n = pid_n * BLOCK_N + tl.arange(0, BLOCK_N)
    a, b = _preactivations(x_ptr, w_ptr, v_ptr, wb_ptr, vb_ptr, offs_m, offs_n, M, N, K,
                           stride_xm, stride_xk, stride_wn, stride_wk, stride_vn, stride_vk, stride_wb, stride_vb,
                           HAS_W_BIAS, HAS_V_BIAS, PRECISION, BLOCK_M, BLOCK_N, BLOCK_K)
    mask = (offs_m[:, None] < M) & (offs_n[None, :] < N)
    rows = offs_m.to(tl.int64)[:, None]
    cols = offs_n.to(tl.int64)[None, :]
    dh = tl.load(dh_ptr + rows * stride_dm + cols * stride_dn, mask=mask, other=0.0).to(tl.float32)
    g = g_ptr + rows * stride_gm
    tl.store(g + cols * stride_gn, (dh * b).to(g_ptr.dtype.element_ty), mask=mask)  # pairs with W
    tl.store(g + (cols + N) * stride_gn, (dh * a).to(g_ptr.dtype.element_ty), mask=mask)  # pairs with V
    if WRITE_HIDDEN:
        out = h_ptr + rows * stride_hm + cols * stride_hn
        tl.store(out, (a * b).to(h_ptr.dtype.element_ty), mask=mask)


def _grid(M: int, N: int):
    return lambda meta: (triton.cdiv(M, meta["BLOCK_M"]) * triton.cdiv(N, meta["BLOCK_N"]),)


def _bias_strides(w_bias, v_bias):
    return (w_bias.stride(0) if w_bias is not None else 0), (v_bias.stride(0) if v_bias is not None else 0)


def _check_operands(x, w, v, w_bias, v_bias):
    if x.ndim != 2:
        raise ValueError(f"x must be 2-D (n, d) here, got {tuple(x.shape)}")
    if w.ndim != 2 or w.shape != v.shape:
        raise ValueError(f"w and v must be 2-D of one shape (h, d), got w {tuple(w.shape)} and v {tuple(v.shape)}")
    if x.shape[1] != w.shape[1]:
        raise ValueError(f"x must be (n, d) with d = {w.shape[1]}, got x {tuple(x.shape)} and w {tuple(w.shape)}")
    for name, bias in (("w_bias", w_bias), ("v_bias", v_bias)):
        if bias is not None and bias.shape != (w.shape[0],):
            raise ValueError(f"{name} must be ({w.shape[0]},) to match w {tuple(w.shape)}, got {tuple(bias.shape)}")


def bilinear_hidden_triton(x, w, v, w_bias=None, v_bias=None):
    """H = (x Wᵀ + a) ⊙ (x Vᵀ + b) for x (n, d), w and v (h, d): (n, h) in x's dtype, fp32 inside."""
    _check_operands(x, w, v, w_bias, v_bias)
    x, w, v = aligned_rows(x), aligned_rows(w), aligned_rows(v)
    (M, K), N = x.shape, w.shape[0]
    hidden = torch.empty((M, N), dtype=x.dtype, device=x.device)
    _hidden_kernel[_grid(M, N)](
        x, w, v, w_bias if w_bias is not None else w, v_bias if v_bias is not None else v, hidden, M, N, K, triton.next_power_of_2(M),
        x.stride(0), x.stride(1), w.stride(0), w.stride(1), v.stride(0), v.stride(1), *_bias_strides(w_bias, v_bias),
        hidden.stride(0), hidden.stride(1),
        HAS_W_BIAS=w_bias is not None, HAS_V_BIAS=v_bias is not None, PRECISION=dot_precision(x.dtype),
    )
    return hidden


def bilinear_hidden_grad_triton(x, w, v, w_bias, v_bias, grad_hidden, want_hidden: bool):
    """(G, H or None): G (n, 2h) = [dH ⊙ (x Vᵀ + b), dH ⊙ (x Wᵀ + a)], recomputed tile by tile."""
    _check_operands(x, w, v, w_bias, v_bias)
    (M, K), N = x.shape, w.shape[0]
    if grad_hidden.shape != (M, N):
        raise ValueError(f"grad_hidden must be ({M}, {N}), got {tuple(grad_hidden.shape)}")
    x, w, v, grad_hidden = aligned_rows(x), aligned_rows(w), aligned_rows(v), aligned_rows(grad_hidden)
    g = torch.empty((M, 2 * N), dtype=x.dtype, device=x.device)
    hidden = torch.empty((M, N), dtype=x.dtype, device=x.device) if want_hidden else None
    out = hidden if hidden is not None else g  # any valid pointer when H is not written
    _hidden_grad_kernel[_grid(M, N)](
        x, w, v, w_bias if w_bias is not None else w, v_bias if v_bias is not None else v,
        grad_hidden, g, out, M, N, K, triton.next_power_of_2(M),
        x.stride(0), x.stride(1), w.stride(0), w.stride(1), v.stride(0), v.stride(1), *_bias_strides(w_bias, v_bias),
        grad_hidden.stride(0), grad_hidden.stride(1), g.stride(0), g.stride(1), out.stride(0), out.stride(1),
        HAS_W_BIAS=w_bias is not None, HAS_V_BIAS=v_bias is not None, WRITE_HIDDEN=want_hidden,
        PRECISION=dot_precision(x.dtype),
    )
    return g, hidden


def bilinear_hidden_reference(x, w, v, w_bias=None, v_bias=None):
    """Plain-torch twin of `bilinear_hidden_triton`."""
    return torch.nn.functional.linear(x, w, w_bias) * torch.nn.functional.linear(x, v, v_bias)


def bilinear_hidden_grad_reference(x, w, v, w_bias, v_bias, grad_hidden, want_hidden: bool):
    """Plain-torch twin of `bilinear_hidden_grad_triton` (differentiable, so it also serves double
    backward)."""
    a = torch.nn.functional.linear(x, w, w_bias)
    b = torch.nn.functional.linear(x, v, v_bias)
    g = torch.cat([grad_hidden * b, grad_hidden * a], dim=1)
    return g, (a * b if want_hidden else None)


# -- canaries (fast_path_guard): one small fixed problem per kernel, about 0.2 MFLOP each. The
# row count is no multiple of a block, so the row masks are exercised; d and h are multiples of 16
# and there is no bias, as in most real calls, so the canary compiles the kernel variant those
# calls use (Triton specializes on divisibility by 16 and on the constexprs).
CANARY_SHAPE = (37, 48, 32)  # (n, d, h)


def _canary_operands(dtype, device):
    n, d, h = CANARY_SHAPE
    g = torch.Generator().manual_seed(23)
    x, w, v, grad_hidden = (torch.randn(*s, generator=g) for s in ((n, d), (h, d), (h, d), (n, h)))
    return [t.to(device=device, dtype=dtype) for t in (x, w, v)], grad_hidden.to(device=device, dtype=dtype)


def forward_canary(dtype, device) -> tuple[float, float]:
    """(relative error, tolerance) of `bilinear_hidden_triton` against its float64 twin."""
    (x, w, v), _ = _canary_operands(dtype, device)
    got = bilinear_hidden_triton(x, w, v)
    want = bilinear_hidden_reference(x.double(), w.double(), v.double())
    return guard.relative_error(got, want), guard.tolerance(dtype, dot_precision(dtype))


def backward_canary(dtype, device) -> tuple[float, float]:
    """(relative error, tolerance) of `bilinear_hidden_grad_triton` (G and H) against its float64 twin."""
    (x, w, v), grad_hidden = _canary_operands(dtype, device)
    g, hidden = bilinear_hidden_grad_triton(x, w, v, None, None, grad_hidden, want_hidden=True)
    g_ref, hidden_ref = bilinear_hidden_grad_reference(x.double(), w.double(), v.double(), None, None,
                                                       grad_hidden.double(), want_hidden=True)
    error = max(guard.relative_error(g, g_ref), guard.relative_error(hidden, hidden_ref))
    return error, guard.tolerance(dtype, dot_precision(dtype))


def bilinear_hidden_guarded(x, w, v, w_bias=None, v_bias=None):
    """`bilinear_hidden_triton` behind its canary; its twin where the kernel is switched off."""
    return guard.run(guard.TRITON_FORWARD, x.dtype, dot_precision(x.dtype), x.device, bilinear_hidden_triton,
                     bilinear_hidden_reference, (x, w, v, w_bias, v_bias), lambda: forward_canary(x.dtype, x.device))


def bilinear_hidden_grad_guarded(x, w, v, w_bias, v_bias, grad_hidden, want_hidden: bool):
    """`bilinear_hidden_grad_triton` behind its canary; its twin where the kernel is switched off."""
    return guard.run(guard.TRITON_BACKWARD, x.dtype, dot_precision(x.dtype), x.device, bilinear_hidden_grad_triton,
                     bilinear_hidden_grad_reference, (x, w, v, w_bias, v_bias, grad_hidden, want_hidden),
                     lambda: backward_canary(x.dtype, x.device))


class FusedBilinearFunction(torch.autograd.Function):
    """y = ((x Wᵀ + a) ⊙ (x Vᵀ + b)) Pᵀ on 2-D x, saving only x for backward.

    `use_kernel=False` runs the same forward/backward algebra with the plain-torch twins, which is
    how the hand-written backward is checked with gradcheck in float64 where Triton cannot run.
    """

    @staticmethod
    def forward(ctx, x, w, v, p, w_bias, v_bias, use_kernel: bool):
        hidden_fn = bilinear_hidden_guarded if use_kernel else bilinear_hidden_reference
        hidden = hidden_fn(x, w, v, w_bias, v_bias)
        ctx.use_kernel = use_kernel
        ctx.save_for_backward(x, w, v, p, w_bias, v_bias)
        return hidden if p is None else hidden @ p.t()

    @staticmethod
    def backward(ctx, grad_y):
        x, w, v, p, w_bias, v_bias = ctx.saved_tensors
        need_x, need_w, need_v, need_p, need_wb, need_vb, _ = ctx.needs_input_grad
        h = w.shape[0]
        grad_hidden = grad_y if p is None else grad_y @ p
        want_hidden = p is not None and need_p
        # Under create_graph the backward must itself be differentiable: take the torch twin.
        grad_fn = (bilinear_hidden_grad_guarded if ctx.use_kernel and not torch.is_grad_enabled()
                   else bilinear_hidden_grad_reference)
        g, hidden = grad_fn(x, w, v, w_bias, v_bias, grad_hidden, want_hidden)
        g_w, g_v = g[:, :h], g[:, h:]
        grad_x = grad_w = grad_v = grad_p = grad_wb = grad_vb = None
        if need_x:
            grad_x = torch.addmm(g_w @ w, g_v, v)
        if need_w or need_v:
            grad_wv = g.t() @ x  # (2h, d): d[W; V] in one GEMM
            grad_w = grad_wv[:h] if need_w else None
            grad_v = grad_wv[h:] if need_v else None
        if need_p:
            grad_p = grad_y.t() @ hidden
        if need_wb or need_vb:
            sums = g.sum(0, dtype=torch.float32).to(g.dtype) if g.dtype in (torch.float16, torch.bfloat16) else g.sum(0)
            grad_wb = sums[:h] if need_wb else None
            grad_vb = sums[h:] if need_vb else None
        return grad_x, grad_w, grad_v, grad_p, grad_wb, grad_vb, None


def bilinear_fused(x, w, v, p=None, w_bias=None, v_bias=None, *, use_kernel: bool = True):
    """Forward of a bilinear layer on the fused kernel, differentiable: x (..., d) -> (..., o).

    Takes torch tensors on one CUDA device (or any device under TRITON_INTERPRET=1) in one of
    float32, float16, bfloat16; `functional.bilinear_forward_kernel` decides when that holds.
    """
    if x.ndim == 0:
        raise ValueError("x must have at least one dimension (..., d), got a scalar")
    if p is not None and (p.ndim != 2 or p.shape[1] != w.shape[0]):
        raise ValueError(f"p must be (o, h) with h = {w.shape[0]}, got p {tuple(p.shape)} and w {tuple(w.shape)}")
    lead = x.shape[:-1]
    y = FusedBilinearFunction.apply(x.reshape(-1, x.shape[-1]), w, v, p, w_bias, v_bias, use_kernel)
    return y.reshape(*lead, y.shape[-1])
