"""Interaction matrices Q(u) = ½(Wᵀ diag(c) V + Vᵀ diag(c) W), c = Pᵀ u, without the o×d×d tensor.

Two forms: `interaction_matrices` builds Q for a batch of directions chunk by chunk, as one scaled
GEMM per chunk or, for many float directions through a layer with o well below h, from the
symmetric tensor S (o, d, d) built once (`InteractionChunks` picks the cheaper route);
`InteractionOperator` applies Q to vectors matrix-free, all directions of a batch in lockstep so a
product is two wide GEMMs against the stacked [W; V].
"""
from __future__ import annotations

import torch

from . import fast_path_guard as guard
from ._arrays import to_framework, working_dtype
from .backends import triton_unsupported_reason
from .directions import Directions, parse_directions
from .layer import BilinearLayer
from .memory import budget_after_result, chunk_size, format_bytes, memory_budget
from .scaling import ScaledLayer, rescale


def build_interaction_reference(w: torch.Tensor, v: torch.Tensor, c: torch.Tensor) -> torch.Tensor:
    """Plain-torch Q for coefficient rows c (b, h): (b, d, d), exactly symmetric.

    One batched GEMM on a scaled copy of W: (c ⊙ W)ᵀ V, then the symmetric part. On a CPU, without
    autograd, direction by direction instead: each scaled copy (h·d) is still in cache when its
    GEMM reads it, where the batched form writes all b out first (measured 1.3× faster forming at
    d = 512, h = 2048, 8 directions, one thread); the ½ goes into c (exact: a power of two).
    """
    wants_grad = torch.is_grad_enabled() and any(t.requires_grad for t in (w, v, c))
    if c.device.type != "cpu" or wants_grad or c.shape[0] < 2:
        g = torch.matmul((c[:, :, None] * w).mT, v)
        return 0.5 * (g + g.mT)
    half = 0.5 * c
    out = torch.empty(c.shape[0], w.shape[1], w.shape[1], dtype=torch.result_type(w, c), device=c.device)
    for i in range(c.shape[0]):
        g = torch.mm((half[i, :, None] * w).t(), v)
        torch.add(g, g.t(), out=out[i])
    return out


# The canary of the Triton kernel (fast_path_guard): (b, h, d). d and h are multiples of 16, as in
# most real calls, so the canary compiles the kernel variant those calls use (Triton specializes on
# divisibility by 16); d = 48 spans a partial tile of every configuration.
CANARY_SHAPE = (3, 32, 48)


def interaction_canary(dtype: torch.dtype, device) -> tuple[float, float]:
    """(relative error, tolerance) of the Triton kernel against its float64 twin on a small fixed
    problem."""
    from .ops._launch import dot_precision
    from .ops.interaction import build_interaction_triton

    b, h, d = CANARY_SHAPE
    g = torch.Generator().manual_seed(29)
    w, v, c = (torch.randn(*s, generator=g).to(device=device, dtype=dtype) for s in ((h, d), (h, d), (b, h)))
    got = build_interaction_triton(w, v, c)
    want = build_interaction_reference(w.double(), v.double(), c.double())
    return guard.relative_error(got, want), guard.tolerance(dtype, dot_precision(dtype))


def build_interaction_guarded(w: torch.Tensor, v: torch.Tensor, c: torch.Tensor) -> torch.Tensor:
    """The Triton kernel behind its canary; `build_interaction_reference` where it is switched off."""
    from .ops._launch import dot_precision
    from .ops.interaction import build_interaction_triton

    return guard.run(guard.TRITON_INTERACTION, w.dtype, dot_precision(w.dtype), w.device, build_interaction_triton,
                     build_interaction_reference, (w, v, c), lambda: interaction_canary(w.dtype, w.device))


def interaction_kernel(w: torch.Tensor, v: torch.Tensor, c: torch.Tensor):
    """The function that builds Q for these inputs: the fused Triton kernel behind its canary where
    it supports them and has not been switched off in this process, else
    `build_interaction_reference`."""
    if triton_unsupported_reason(w, v, c) is None:
        from .ops._launch import dot_precision

        if guard.usable(guard.TRITON_INTERACTION, w.dtype, dot_precision(w.dtype), w.device):
            return build_interaction_guarded
    return build_interaction_reference


def build_interaction(w: torch.Tensor, v: torch.Tensor, c: torch.Tensor) -> torch.Tensor:
    """Q for coefficient rows c: the fastest available implementation for these inputs."""
    return interaction_kernel(w, v, c)(w, v, c)


def interaction_bytes_per_direction(h: int, d: int, itemsize: int) -> int:
    # the scaled (h, d) copy, the unsymmetrized product and its symmetric part
    return (h * d + 2 * d * d) * itemsize


# the output-space route is taken when it costs at most this share of the hidden route's work
OUTPUT_SPACE_MAX_COST = 0.75


class InteractionChunks:
    """Q for chunks of parsed directions, by the cheaper of two exact routes.

    hidden route  Q(c) from c = Pᵀ u, one scaled GEMM per direction: h·d² multiply-adds each.
    output route  the symmetric tensor S (o, d, d) built once (o·h·d²), then Q = Σ_a u_a S[a]
                  as one GEMM over the chunk: o·d² per direction. It pays for many float
                  directions through a layer whose o is well below h (W3-like feature sweeps),
                  and is taken when it costs at most OUTPUT_SPACE_MAX_COST of the hidden route
                  and S fits in half the memory budget. Index directions never take it: Q(e_a)
                  is S[a] itself, so there is nothing to share.
    """

    def __init__(self, layer: BilinearLayer, dirs, dtype: torch.dtype, budget: int):
        self.layer, self.dirs, self.dtype, self.budget = layer, dirs, dtype, budget
        o, h, d, b = layer.d_out, layer.d_hidden, layer.d_form, len(dirs)
        tensor_bytes = o * d * d * dtype.itemsize
        self.output_space = (
            dirs.vectors is not None and layer.p is not None and tensor_bytes <= budget // 2
            and o * h + b * o <= OUTPUT_SPACE_MAX_COST * b * h
        )
        # S stays resident for the whole call; a chunk holds the product and its symmetric part
        self.resident_bytes = tensor_bytes if self.output_space else 0
        self.bytes_per_direction = (2 * d * d * dtype.itemsize if self.output_space
                                    else interaction_bytes_per_direction(h, d, dtype.itemsize))

    def iterate(self, step: int, progress=None, exact_symmetry: bool = True):
        """Yield (start, stop, Q) over chunks of `step` directions. With exact_symmetry=False the
        output route skips its symmetrizing pass and Q is symmetric to rounding only: enough for
        a solver that reads one triangle (every eigh backend here reads the lower one). Refuses
        (ValueError) a Q whose entries the working dtype cannot hold (scaling.rescale)."""
        for start, stop, q, e in self.iterate_scaled(step, progress, exact_symmetry):
            yield start, stop, rescale(q, e, None, "the entries of Q", start)

    def iterate_scaled(self, step: int, progress=None, exact_symmetry: bool = True):
        """Yield (start, stop, Q / 2^e, e), e (b,) int64: Q built from operands normalized by
        powers of two (scaling.py), for solvers that rescale only what they return."""
        from .progress import chunk_starts

        layer, dtype, d = self.layer, self.dtype, self.layer.d_form
        scaled = ScaledLayer(layer, dtype)
        if self.output_space:
            tensor, e_tensor = self._symmetric_tensor(scaled)
        for start in chunk_starts(len(self.dirs), step, progress, "interaction"):
            stop = min(start + step, len(self.dirs))
            sub = self.dirs.chunk(start, stop)
            if not self.output_space:
                c, e = scaled.coefficients(sub)
                yield start, stop, build_interaction(scaled.w, scaled.v, c), e + scaled.exponent
                continue
            u, e_u = scaled.vectors(sub)
            q = (u @ tensor).view(stop - start, d, d)
            # S[a] is exactly symmetric, but a GEMM need not sum (i, j) and (j, i) alike
            yield start, stop, torch.add(q, q.mT).mul_(0.5) if exact_symmetry else q, e_u + e_tensor

    def _symmetric_tensor(self, scaled: ScaledLayer) -> tuple[torch.Tensor, int]:
        """(S / 2^e, e) with S (o, d·d): row a is Q(e_a), formed from the rows of P / 2^e_p in
        chunks by the hidden route; one exponent for all rows keeps Σ_a u_a S[a] exact."""
        layer = self.layer
        o, d = layer.d_out, layer.d_form
        tensor = torch.empty(o, d, d, dtype=self.dtype, device=layer.device)
        p, e_p = scaled.output_projection()
        step = chunk_size(o, interaction_bytes_per_direction(layer.d_hidden, d, self.dtype.itemsize),
                          self.budget - self.resident_bytes, "forming the interaction tensor")
        for start in range(0, o, step):
            tensor[start:start + step] = build_interaction(scaled.w, scaled.v, p[start:start + step])
        return tensor.view(o, d * d), scaled.exponent + e_p


def iter_interaction_chunks(layer: BilinearLayer, dirs, dtype: torch.dtype, budget: int,
                            reserved_per_direction: int = 0, progress=None,
                            what: str = "forming an interaction matrix", exact_symmetry: bool = True):
    """Yield (start, stop, Q) over chunks of parsed directions, each chunk's Q together with
    `reserved_per_direction` bytes of the caller's own temporaries staying within `budget`
    (exact_symmetry: see InteractionChunks.iterate)."""
    chunks, step = _plan(layer, dirs, dtype, budget, reserved_per_direction, what)
    yield from chunks.iterate(step, progress, exact_symmetry)


def iter_scaled_interaction_chunks(layer: BilinearLayer, dirs, dtype: torch.dtype, budget: int,
                                   reserved_per_direction: int = 0, progress=None,
                                   what: str = "forming an interaction matrix",
                                   exact_symmetry: bool = True):
    """iter_interaction_chunks for solvers that rescale their own results: yields
    (start, stop, Q / 2^e, e) (InteractionChunks.iterate_scaled)."""
    chunks, step = _plan(layer, dirs, dtype, budget, reserved_per_direction, what)
    yield from chunks.iterate_scaled(step, progress, exact_symmetry)


def _plan(layer, dirs, dtype, budget, reserved_per_direction, what):
    chunks = InteractionChunks(layer, dirs, dtype, budget)
    step = chunk_size(len(dirs), chunks.bytes_per_direction + reserved_per_direction,
                      budget - chunks.resident_bytes, what)
    return chunks, step


def interaction_matrices(layer: BilinearLayer, directions, *, dtype=None, max_memory=None):
    """Symmetric interaction matrices Q(u), (b, d, d) (d + 1 for a biased layer).

    Formed chunk by chunk as scaled GEMMs; the full o×d×d tensor is never built. The result and
    the temporaries together stay under `max_memory` bytes (default: a few GiB, never more than
    half of free memory): a result that does not fit is refused up front (MemoryError).
    """
    _check_layer(layer)
    dirs = parse_directions(directions, layer.d_out)
    dtype = working_dtype(layer.dtype, dtype)
    budget = _budget_after_matrices(layer, len(dirs), dtype, memory_budget(layer.device, max_memory),
                                    "interaction_matrices")
    out = torch.empty(len(dirs), layer.d_form, layer.d_form, dtype=dtype, device=layer.device)
    for start, stop, q in iter_interaction_chunks(layer, dirs, dtype, budget):
        out[start:stop] = q
    return to_framework(out, layer.framework)


def interaction_tensor(layer: BilinearLayer, *, symmetric: bool = True, dtype=None, max_memory=None):
    """The whole (o, d, d) interaction tensor: S[a] = ½(B[a] + B[a]ᵀ), or B itself when
    `symmetric=False`. Refuses with a MemoryError when it would not fit in `max_memory`."""
    _check_layer(layer)
    dtype = working_dtype(layer.dtype, dtype)
    budget = memory_budget(layer.device, max_memory)
    o, d = layer.d_out, layer.d_form
    needed = o * d * d * dtype.itemsize
    if needed > budget:
        raise MemoryError(
            f"the interaction tensor of a layer with d_out={o}, d={d} in {dtype} needs {needed} bytes "
            f"({format_bytes(needed)}), over the memory budget of {format_bytes(budget)}; use "
            "interaction_matrices on the directions you need, or raise max_memory"
        )
    if symmetric:
        return interaction_matrices(layer, range(o), dtype=dtype, max_memory=budget)
    # B[a] = (P[a] ⊙ W̃)ᵀ Ṽ, chunk by chunk over the outputs, from operands normalized by powers
    # of two (one exponent for all rows, as for S) and scaled back with the same checks as Q
    budget = _budget_after_matrices(layer, o, dtype, budget, "interaction_tensor")
    scaled = ScaledLayer(layer, dtype)
    out = torch.empty(o, d, d, dtype=dtype, device=layer.device)
    every_output = Directions(torch.arange(o), None)
    step = chunk_size(o, interaction_bytes_per_direction(layer.d_hidden, d, dtype.itemsize), budget,
                      "forming the interaction tensor")
    for start in range(0, o, step):
        c, e = scaled.coefficients(every_output.chunk(start, start + step), per_row=False)
        b = torch.matmul((c[:, :, None] * scaled.w).mT, scaled.v)
        out[start:start + step] = rescale(b, e + scaled.exponent, None, "the entries of B", start)
    return to_framework(out, layer.framework)


def _budget_after_matrices(layer, b: int, dtype, budget: int, what: str) -> int:
    """The budget left once a (b, d, d) result is counted; refuses up front when it does not fit
    beside the temporaries of one direction."""
    d = layer.d_form
    return budget_after_result(budget, b * d * d * dtype.itemsize,
                               interaction_bytes_per_direction(layer.d_hidden, d, dtype.itemsize),
                               f"{what} of {b} direction(s) at d={d} in {str(dtype).replace('torch.', '')}",
                               hint="ask for fewer directions per call")


class InteractionOperator:
    """Matrix-free products with Q(c) for a batch of coefficient rows, never forming Q.

    Q x = ½ (Wᵀ (c ⊙ V x) + Vᵀ (c ⊙ W x)). With A = [W; V] stacked once, a product over all b
    directions and m vectors each is one GEMM of width b·m against A and two against its halves,
    which is what keeps the machine busy (a product per vector costs 4·h·d flops).
    """

    def __init__(self, w: torch.Tensor, v: torch.Tensor):
        self.h, self.d = w.shape
        self.stacked = torch.cat([w, v], dim=0).contiguous()  # (2h, d)
        self.w, self.v = self.stacked[: self.h], self.stacked[self.h:]

    def apply_rows(self, c: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
        """Q(c_i) applied to the rows of x_i: c (b, h), x (b, m, d) -> (b, m, d)."""
        b, m, d = x.shape
        # Column-major GEMMs (A Xᵀ, then Aᵀ Z) measured faster than their row-major twins on
        # MKL for narrow blocks; the transposes are views.
        proj = self.stacked @ x.reshape(b * m, d).t()  # (2h, b·m) = [W X; V X]
        proj.view(2, self.h, b, m).mul_(0.5 * c.t()[None, :, :, None])
        out = self.w.t() @ proj[self.h:]  # Wᵀ (c ⊙ V X) / 2
        out.addmm_(self.v.t(), proj[: self.h])  # + Vᵀ (c ⊙ W X) / 2
        return out.t().reshape(b, m, d)

    def apply(self, c: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
        """Q(c_i) x_i for c (b, h) and column blocks x (b, d, m) -> (b, d, m)."""
        return self.apply_rows(c, x.mT.contiguous()).mT


def _check_layer(layer) -> None:
    if not isinstance(layer, BilinearLayer):
        raise TypeError(f"layer must be a BilinearLayer, got {type(layer).__name__}")
