"""BilinearLayer: the weights of f(x) = P((W x + a) ⊙ (V x + b)) and the views the solvers need."""
from __future__ import annotations

import torch

from ._arrays import TORCH, as_tensor, check_finite, framework_of


class BilinearLayer:
    """Weights of a bilinear layer (a GLU with no activation).

    w, v: (h, d) the two input projections; p: (o, h) the output projection, or None (then o = h).
    w_bias, v_bias: (h,) optional biases of the two projections. A biased layer is a quadratic form
    in x̃ = [x; 1], so it is decomposed in d + 1 dimensions (`d_form`); the last coordinate of each
    eigenvector is the weight of the constant.

    Accepts torch tensors, NumPy arrays or CuPy arrays; results of functions taking this layer come
    back in the same framework (`framework`).
    """

    def __init__(self, w, v, p=None, w_bias=None, v_bias=None):
        self.framework = framework_of(w, "w")
        w = as_tensor(w, "w")
        v = as_tensor(v, "v")
        if w.ndim != 2 or v.ndim != 2:
            raise ValueError(f"w and v must be 2-D (h, d), got w {tuple(w.shape)} and v {tuple(v.shape)}")
        if w.shape != v.shape:
            raise ValueError(f"w and v must have the same shape (h, d), got w {tuple(w.shape)} and v {tuple(v.shape)}")
        if w.shape[0] == 0 or w.shape[1] == 0:
            raise ValueError(f"w and v must be non-empty, got shape {tuple(w.shape)}")
        h = w.shape[0]
        if p is not None:
            p = as_tensor(p, "p")
            if p.ndim != 2 or p.shape[1] != h or p.shape[0] == 0:
                raise ValueError(f"p must be (o, h) with h = {h} (the rows of w), got p {tuple(p.shape)} and w {tuple(w.shape)}")
        biases = {}
        for name, b in (("w_bias", w_bias), ("v_bias", v_bias)):
            if b is not None:
                b = as_tensor(b, name)
                if b.shape != (h,):
                    raise ValueError(f"{name} must be ({h},) to match w {tuple(w.shape)}, got {tuple(b.shape)}")
            biases[name] = b
        tensors = {"w": w, "v": v, "p": p, **biases}
        devices = {t.device for t in tensors.values() if t is not None}
        if len(devices) > 1:
            raise ValueError(f"all weights must be on one device, got {sorted(map(str, devices))}")
        for name, t in tensors.items():
            if t is not None:
                check_finite(t, name)
        self.w, self.v, self.p = w, v, p
        self.w_bias, self.v_bias = biases["w_bias"], biases["v_bias"]

    @classmethod
    def from_packed(cls, weight, p=None, bias=None):
        """From the packed (2h, d) weight of an `nn.Linear(d, 2h)` whose output is `chunk(2)`-ed into
        (W x, V x); `bias` is its optional (2h,) bias."""
        framework = framework_of(weight, "weight")
        weight = as_tensor(weight, "weight")
        if weight.ndim != 2 or weight.shape[0] % 2 != 0 or weight.shape[0] == 0:
            raise ValueError(f"packed weight must be (2h, d) with an even, non-zero first dimension, got {tuple(weight.shape)}")
        w, v = weight.chunk(2, dim=0)
        w_bias = v_bias = None
        if bias is not None:
            bias = as_tensor(bias, "bias")
            if bias.shape != (weight.shape[0],):
                raise ValueError(f"packed bias must be ({weight.shape[0]},) to match weight {tuple(weight.shape)}, got {tuple(bias.shape)}")
            w_bias, v_bias = bias.chunk(2)
        layer = cls(w, v, p, w_bias, v_bias)
        layer.framework = framework
        return layer

    # -- shapes ---------------------------------------------------------------------------
    @property
    def d_in(self) -> int:
        return self.w.shape[1]

    @property
    def d_hidden(self) -> int:
        return self.w.shape[0]

    @property
    def d_out(self) -> int:
        return self.p.shape[0] if self.p is not None else self.d_hidden

    @property
    def has_bias(self) -> bool:
        return self.w_bias is not None or self.v_bias is not None

    @property
    def d_form(self) -> int:
        """Dimension of the quadratic form: d, or d + 1 for a biased layer."""
        return self.d_in + (1 if self.has_bias else 0)

    @property
    def device(self) -> torch.device:
        return self.w.device

    @property
    def dtype(self) -> torch.dtype:
        return self.w.dtype

    def __repr__(self) -> str:
        bias = ", bias" if self.has_bias else ""
        return (f"BilinearLayer(d_in={self.d_in}, d_hidden={self.d_hidden}, d_out={self.d_out}"
                f"{bias}, dtype={self.dtype}, device={self.device})")

    # -- conversion -----------------------------------------------------------------------
    def to(self, device=None, dtype=None) -> "BilinearLayer":
        """A copy on `device` and/or in `dtype` (torch semantics); the framework becomes torch."""
        def move(t):
            return None if t is None else t.to(device=device, dtype=dtype)

        layer = BilinearLayer(move(self.w), move(self.v), move(self.p), move(self.w_bias), move(self.v_bias))
        layer.framework = TORCH
        return layer

    # -- views used by the solvers --------------------------------------------------------
    def homogeneous(self, dtype: torch.dtype) -> tuple[torch.Tensor, torch.Tensor]:
        """(W̃, Ṽ) in `dtype`: W and V, with the bias appended as a last column when there is one,
        so that (W̃ x̃) ⊙ (Ṽ x̃) with x̃ = [x; 1] is the biased layer's hidden activation."""
        w, v = self.w.to(dtype), self.v.to(dtype)
        if self.has_bias:
            zeros = torch.zeros(self.d_hidden, dtype=dtype, device=self.device)
            wb = self.w_bias.to(dtype) if self.w_bias is not None else zeros
            vb = self.v_bias.to(dtype) if self.v_bias is not None else zeros
            w = torch.cat([w, wb[:, None]], dim=1)
            v = torch.cat([v, vb[:, None]], dim=1)
        return w, v

    def homogeneous_on_basis(self, basis: torch.Tensor, offset: torch.Tensor | None, dtype: torch.dtype):
        """(W̃, Ṽ, B̃) in `dtype` with W̃ᵀ diag(c) Ṽ's symmetric part Q̃ such that B̃ᵀ Q̃ B̃ is the
        interaction matrix of `project_input(basis, offset)`: B̃ = basis, or [[basis, offset], [0, 1]]
        (a zero offset when None) when the layer has a bias or there is an offset, W̃ and Ṽ then
        carrying a bias column (zero without a bias). Checked arguments (`check_basis`)."""
        w, v = self.homogeneous(dtype)
        b_tilde = basis.to(dtype)
        if not (self.has_bias or offset is not None):
            return w, v, b_tilde
        if not self.has_bias:  # an offset alone: the constant enters through the basis only
            zero = torch.zeros(self.d_hidden, 1, dtype=dtype, device=self.device)
            w, v = torch.cat([w, zero], dim=1), torch.cat([v, zero], dim=1)
        last = torch.zeros(self.d_in + 1, 1, dtype=dtype, device=self.device)
        last[-1] = 1
        if offset is not None:
            last[:-1, 0] = offset.to(dtype)
        top = torch.cat([b_tilde, torch.zeros(1, b_tilde.shape[1], dtype=dtype, device=self.device)], dim=0)
        return w, v, torch.cat([top, last], dim=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """f(x) = P((W x + a) ⊙ (V x + b)) in plain torch, for x of shape (..., d)."""
        from .functional import bilinear

        return bilinear(x, self.w, self.v, self.p, self.w_bias, self.v_bias)

    __call__ = forward

    # -- from the modules users hold ----------------------------------------------------------
    @classmethod
    def from_module(cls, module, *, allow_gated: bool = False, check: bool = True) -> "BilinearLayer":
        """The bilinear layer of an nn.Module: a transformers gate_proj/up_proj/down_proj MLP with
        hidden_act="linear", a TransformerLens GatedMLP whose act_fn was set to torch.nn.Identity(),
        the published bilinear models' MLPs and blocks, a bilinear autoencoder (`left`, `right`
        and optionally `down`: its latents, of the normalised input), `bilinear_kernels.nn.Bilinear`,
        or a tuple (left, right[, out]) of nn.Linear meaning out(left(x) * right(x)). See
        `bilinear_kernels.adapters.module_adapters` for each layout.

        A gated module (SiLU, GELU... on W x) raises ValueError; allow_gated=True decomposes its
        bilinear part with the activation removed, and warns. The reading is checked against the
        module's own forward on random inputs (check=False skips that). Constant output offsets
        (the down projection's bias, TransformerLens' b_in @ W_out + b_out) are part of no
        interaction matrix and are left out. Weights are detached views, not copies.
        """
        from .adapters.module_adapters import read_module

        weights = read_module(module, allow_gated=allow_gated, check=check)
        return cls(weights.w, weights.v, weights.p, weights.w_bias, weights.v_bias)

    # -- derived layers -------------------------------------------------------------------
    def check_basis(self, basis, offset=None) -> tuple[torch.Tensor, torch.Tensor | None]:
        """`basis` (d, F) and `offset` (d,) or None as tensors on this layer's device, finite, or a
        ValueError saying what is wrong (the arguments of `project_input`)."""
        basis_t = as_tensor(basis, "basis")
        d = self.d_in
        if basis_t.ndim != 2 or basis_t.shape[0] != d or basis_t.shape[1] == 0:
            raise ValueError(f"basis must be (d, F) with d = {d} (the columns of w) and F ≥ 1, "
                             f"got basis {tuple(basis_t.shape)} and w {tuple(self.w.shape)}")
        offset_t = None
        if offset is not None:
            offset_t = as_tensor(offset, "offset")
            if offset_t.shape != (d,):
                raise ValueError(f"offset must be ({d},) to match w {tuple(self.w.shape)}, got {tuple(offset_t.shape)}")
        for name, t in (("basis", basis_t), ("offset", offset_t)):
            if t is not None:
                if t.device != self.device:
                    raise ValueError(f"{name} is on {t.device} but the layer is on {self.device}")
                check_finite(t, name)
        return basis_t, offset_t

    def form_on_basis(self, basis, offset=None) -> tuple[torch.Tensor | None, torch.Tensor | None, int]:
        """(basis, offset, size) for the functions that read interactions on an optional basis:
        the checked tensors (None, None without a basis) and the size of the interaction matrices
        there, F (+ 1 for the constant with a bias or an offset), or this layer's own `d_form`."""
        if basis is None:
            if offset is not None:
                raise ValueError("offset is the origin of a basis: pass basis as well")
            return None, None, self.d_form
        basis_t, offset_t = self.check_basis(basis, offset)
        return basis_t, offset_t, basis_t.shape[1] + (1 if self.has_bias or offset_t is not None else 0)

    def project_input(self, basis, offset=None, *, max_memory: int | None = None) -> "BilinearLayer":
        """The layer on coordinates z in `basis`: x = basis @ z + offset, basis (d, F), offset (d,).

        W' = W basis, V' = V basis, and the offset folded into the biases (a' = W offset + a,
        b' = V offset + b), so the new layer's interaction matrices are basisᵀ Q basis, in the
        homogeneous form [[basis, offset], [0, 1]] when there is a bias or an offset. F may be far
        above d (an SAE decoder, an embedding's rows transposed: `project_input(embedding.T)`
        gives token × token interactions). Cost: two (h, d) × (d, F) GEMMs; the new weights
        (2·h·F numbers) must fit in `max_memory` (default: the package's budget), else a
        MemoryError names the bytes. Work is in the working precision of the layer and the basis
        together (float32 unless either is float64); the result keeps this layer's framework.
        """
        from .memory import format_bytes, memory_budget
        from ._arrays import working_dtype

        basis_t, offset_t = self.check_basis(basis, offset)
        dtype = working_dtype(torch.promote_types(self.dtype, basis_t.dtype))
        needed = 2 * self.d_hidden * basis_t.shape[1] * dtype.itemsize
        budget = memory_budget(self.device, max_memory)
        if needed > budget:
            raise MemoryError(
                f"projecting onto a basis of {basis_t.shape[1]} vectors makes weights of 2 × "
                f"({self.d_hidden}, {basis_t.shape[1]}) in {dtype}: {needed} bytes ({format_bytes(needed)}), "
                f"over the memory budget of {format_bytes(budget)}; raise max_memory or use fewer basis vectors")
        basis_t = basis_t.to(dtype)
        w, v = self.w.to(dtype), self.v.to(dtype)
        biases = [None if b is None else b.to(dtype) for b in (self.w_bias, self.v_bias)]
        if offset_t is not None:
            offset_t = offset_t.to(dtype)
            shifts = (w @ offset_t, v @ offset_t)
            biases = [s if b is None else b + s for b, s in zip(biases, shifts)]
        p = None if self.p is None else self.p.to(dtype)
        layer = BilinearLayer(w @ basis_t, v @ basis_t, p, *biases)
        layer.framework = self.framework
        return layer

    def without_biases(self) -> "BilinearLayer":
        """The same layer with its biases dropped: f(x) = P((W x) ⊙ (V x)). The published analyses
        decompose this form; use it to reproduce their numbers. It is a different function from a
        biased layer (decompose keeps the biases by default, exactly, in d + 1 dimensions)."""
        layer = BilinearLayer(self.w, self.v, self.p)
        layer.framework = self.framework
        return layer
