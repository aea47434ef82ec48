"""Frobenius inner products and cosines of interaction matrices, of one layer or of two, never forming Q.

For layers a, b of the same input width and coefficient rows c = P_aᵀu, c' = P_bᵀu':

    ⟨Q_a(u), Q_b(u')⟩_F = cᵀ M_ab c'     M_ab = ½((W_a W_bᵀ) ⊙ (V_a V_bᵀ) + (W_a V_bᵀ) ⊙ (V_a W_bᵀ))

(hidden_gram.py). The h_a × h_b matrix M_ab is built in row blocks under the memory budget and
each block is contracted with the coefficients at once, so neither Q nor the whole M is held.
Cost: 4·h_a·h_b·d multiply-adds for M_ab, against (b_a·h_a + b_b·h_b)·d² to form every Q. Within
one layer M is symmetric and only its upper triangle is built (about half the work).

A biased layer's form lives on x̃ = [x; 1] (d + 1), as in `decompose`; when one layer of the pair
has a bias and the other does not, the bias-free form is taken on x̃ as well (a zero last row and
column), so the inner product is that of the two (d + 1) × (d + 1) matrices.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
from torch.utils.checkpoint import checkpoint

from .._arrays import to_framework, working_dtype
from ..directions import Directions, parse_directions
from ..layer import BilinearLayer
from ..memory import budget_after_result, memory_budget
from ..threads import cpu_threads
from .hidden_gram import BLOCK_NUMBERS_PER_ROW, cross_gram_block, gram_rows_per_block

# a symmetric M is built in at least this many row blocks: the upper triangle of n blocks costs
# (n + 1) / (2n) of the whole (0.56 at 8)
MIN_TRIANGLE_BLOCKS = 8


@dataclass
class FormPair:
    """Checked arguments of a comparison: the two layers (b is a when not given), their parsed
    directions, whether both sides are the same layer (M symmetric) and the same directions too,
    and the working precision of the pair."""

    layer_a: BilinearLayer
    layer_b: BilinearLayer
    dirs_a: Directions
    dirs_b: Directions
    same_layer: bool
    same_directions: bool
    dtype: torch.dtype

    def coefficients(self) -> tuple[torch.Tensor, torch.Tensor]:
        """(C_a (b_a, h_a), C_b (b_b, h_b)): c = Pᵀu for every direction, in the working precision."""
        c_a = self.dirs_a.coefficients(self.layer_a, self.dtype)
        c_b = c_a if self.same_directions else self.dirs_b.coefficients(self.layer_b, self.dtype)
        return c_a, c_b


def _parse(directions, layer: BilinearLayer, name: str) -> Directions:
    try:
        return parse_directions(directions, layer.d_out)
    except (TypeError, ValueError) as err:
        raise type(err)(f"{name}: {err}") from None


def form_pair(layer_a, dirs_a, layer_b=None, dirs_b=None, dtype=None) -> FormPair:
    """Check a comparison's arguments: layer_b defaults to layer_a and dirs_b to dirs_a; both
    layers on one device and of one input width; each direction valid for its layer. The working
    precision is float64 when either layer is float64 (or `dtype` says so), else float32."""
    for name, layer in (("layer_a", layer_a), ("layer_b", layer_b)):
        if (layer is not None or name == "layer_a") and not isinstance(layer, BilinearLayer):
            raise TypeError(f"{name} must be a BilinearLayer, got {type(layer).__name__}")
    same_layer = layer_b is None or layer_b is layer_a
    layer_b = layer_a if layer_b is None else layer_b
    if layer_b.d_in != layer_a.d_in:
        raise ValueError(f"layer_b has input width d = {layer_b.d_in} but layer_a has d = {layer_a.d_in}: "
                         "only forms on the same input can be compared")
    if layer_b.device != layer_a.device:
        raise ValueError(f"layer_b is on {layer_b.device} but layer_a is on {layer_a.device}")
    parsed_a = _parse(dirs_a, layer_a, "dirs_a")
    if dirs_b is None:
        parsed_b = parsed_a if same_layer else _parse(dirs_a, layer_b, "dirs_a (taken for layer_b: dirs_b is None)")
    else:
        parsed_b = _parse(dirs_b, layer_b, "dirs_b")
    work = working_dtype(torch.promote_types(layer_a.dtype, layer_b.dtype), dtype)
    return FormPair(layer_a, layer_b, parsed_a, parsed_b, same_layer, same_layer and dirs_b is None, work)


def lifted_weights(layer: BilinearLayer, dtype: torch.dtype, lift: bool) -> tuple[torch.Tensor, torch.Tensor]:
    """(W̃, Ṽ) of `layer` in `dtype`: with the bias column when it has a bias, and with a zero
    column when `lift` asks for the constant coordinate and it has none."""
    w, v = layer.homogeneous(dtype)
    if lift and not layer.has_bias:
        zero = torch.zeros(layer.d_hidden, 1, dtype=dtype, device=layer.device)
        w, v = torch.cat([w, zero], dim=1), torch.cat([v, zero], dim=1)
    return w, v


def pair_weights(pair: FormPair):
    """(W̃_a, Ṽ_a, W̃_b, Ṽ_b) on one coordinate: x̃ = [x; 1] when either layer has a bias."""
    lift = pair.layer_a.has_bias or pair.layer_b.has_bias
    w_a, v_a = lifted_weights(pair.layer_a, pair.dtype, lift)
    if pair.same_layer:
        return w_a, v_a, w_a, v_a
    return (w_a, v_a, *lifted_weights(pair.layer_b, pair.dtype, lift))


# -- C_a M_ab C_bᵀ by row blocks of M_ab ----------------------------------------------------------
def _needs_grad(*tensors) -> bool:
    return torch.is_grad_enabled() and any(t.requires_grad for t in tensors)


def coefficient_gram(c_a, w_a, v_a, c_b, w_b, v_b, budget: int, what: str, *, symmetric: bool = False,
                     diagonal: bool = False) -> torch.Tensor:
    """C_a M_ab C_bᵀ (b_a, b_b), M_ab the cross Gram matrix of (w_a, v_a) against (w_b, v_b).

    symmetric=True says M_ab is symmetric (both sides the same layer; the left pair may carry a
    symmetric factor, W S and V S) and builds only its upper triangle. diagonal=True (symmetric,
    c_b the same as c_a) returns only the diagonal, (b_a,): the squared norms ‖Q(u)‖²_F.
    Plain torch, differentiable; when a gradient is wanted each block is checkpointed (rebuilt in
    the backward pass), so the backward pass keeps within the budget as the forward does.
    A MemoryError names the bytes when the result and one row of M do not fit in `budget`.
    """
    h_a, h_b = w_a.shape[0], w_b.shape[0]
    b_a, b_b = c_a.shape[0], c_b.shape[0]
    item = w_a.dtype.itemsize
    if symmetric:
        # the result, a block's two (b, h) products with the upper triangle; per row, the
        # triangle's mask and the masked block
        resident = ((b_a if diagonal else b_a * b_b) + (b_a + b_b) * h_b) * item
        per_row = 2 * h_b * item
    else:
        resident, per_row = b_a * b_b * item, b_b * item  # the block's (r, b_b) product with C_bᵀ
    left = budget_after_result(budget, resident, BLOCK_NUMBERS_PER_ROW * h_b * item + per_row, what,
                               hint="compare fewer directions per call")
    step = gram_rows_per_block(h_b, item, left, per_row, what)
    if symmetric:
        step = min(step, max(1, -(-h_a // MIN_TRIANGLE_BLOCKS)))
    part = _upper_part if symmetric else _rows_part
    grad = _needs_grad(c_a, w_a, v_a, c_b, w_b, v_b)
    total = None
    # a block is a dozen small operations, each ending at a thread barrier: on a busy CPU they take
    # the engine's one-thread rule (threads.py) with n the block's rows (on the loaded 2-core
    # machine two threads made the call several times slower and its time erratic)
    with cpu_threads(step, w_a.device):
        for start in range(0, h_a, step):
            stop = min(start + step, h_a)
            args = (c_a, w_a, v_a, c_b, w_b, v_b, start, stop, diagonal)
            piece = checkpoint(part, *args, use_reentrant=False) if grad else part(*args)
            total = piece if total is None else total + piece
    return total


def _rows_part(c_a, w_a, v_a, c_b, w_b, v_b, start: int, stop: int, diagonal: bool) -> torch.Tensor:
    """C_a[:, R] M_ab[R, :] C_bᵀ for the rows R = start..stop."""
    block = cross_gram_block(w_a[start:stop], v_a[start:stop], w_b, v_b)
    return c_a[:, start:stop] @ (block @ c_b.mT)


def _upper_part(c_a, w_a, v_a, c_b, w_b, v_b, start: int, stop: int, diagonal: bool) -> torch.Tensor:
    """The rows R = start..stop of M's upper triangle U (its diagonal halved, so M = U + Uᵀ), and
    their share of C_a U C_bᵀ + C_a Uᵀ C_bᵀ (or of the diagonal 2·cᵀ U c)."""
    block = cross_gram_block(w_a[start:stop], v_a[start:stop], w_b[start:], v_b[start:])  # M[R, start:]
    r = stop - start
    keep = torch.ones(r, block.shape[1], dtype=block.dtype, device=block.device)
    keep[:, :r] = torch.triu(keep[:, :r], 1) + 0.5 * torch.eye(r, dtype=block.dtype, device=block.device)
    upper = block * keep
    x = c_a[:, start:stop] @ upper  # (b_a, h - start)
    if diagonal:
        return 2 * (x * c_a[:, start:]).sum(1)
    y = c_b[:, start:stop] @ upper  # (b_b, h - start)
    return x @ c_b[:, start:].mT + c_a[:, start:] @ y.mT


def _check_finite_result(t: torch.Tensor, what: str) -> torch.Tensor:
    if not bool(torch.isfinite(t.detach()).all()):
        raise ValueError(f"{what} overflow {str(t.dtype).replace('torch.', '')}: pass dtype=torch.float64")
    return t


def pair_inner(pair: FormPair, budget: int) -> torch.Tensor:
    """⟨Q_a(u_i), Q_b(u'_j)⟩_F for a checked pair, (b_a, b_b), as a torch tensor."""
    c_a, c_b = pair.coefficients()
    w_a, v_a, w_b, v_b = pair_weights(pair)
    inner = coefficient_gram(c_a, w_a, v_a, c_b, w_b, v_b, budget, "interaction_inner (one row of M_ab)",
                             symmetric=pair.same_layer)
    return _check_finite_result(inner, "the inner products")


# -- public ------------------------------------------------------------------------------------------
def interaction_inner(layer_a: BilinearLayer, dirs_a, layer_b: BilinearLayer | None = None, dirs_b=None, *,
                      dtype=None, max_memory=None):
    """⟨Q_a(u_i), Q_b(u'_j)⟩_F for every pair of directions: (b_a, b_b), never forming Q.

    layer_b defaults to layer_a and dirs_b to dirs_a; directions as in `decompose` (output
    indices or float vectors of each layer's output width). The layers must share the input
    width d; biased forms are taken on x̃ = [x; 1] (module docstring). Cost 4·h_a·h_b·d
    (about half that within one layer) plus a few (b, h) GEMMs, temporaries under `max_memory`.
    Differentiable in the weights and float directions. Results in layer_a's framework, in the
    working precision (float64 if either layer is, else float32; `dtype=` overrides it).
    """
    pair = form_pair(layer_a, dirs_a, layer_b, dirs_b, dtype)
    budget = memory_budget(pair.layer_a.device, max_memory)
    return to_framework(pair_inner(pair, budget), pair.layer_a.framework)


def interaction_similarity(layer_a: BilinearLayer, dirs_a, layer_b: BilinearLayer | None = None, dirs_b=None, *,
                           dtype=None, max_memory=None):
    """Cosines ⟨Q_a(u_i), Q_b(u'_j)⟩_F / (‖Q_a(u_i)‖_F ‖Q_b(u'_j)‖_F): (b_a, b_b) in [-1, 1].

    Arguments as `interaction_inner`. A form that is zero to working precision (‖Q‖²_F at most
    eps·(Σ_k |c_k| ‖w̃_k‖ ‖ṽ_k‖)², which covers c = 0) has no direction: its cosines are NaN.
    Within one layer the norms come from the same pass over M as the inner products (one pass
    for dirs_a and dirs_b stacked); across two layers each layer's norms take a pass over its
    own M (half of it, by symmetry). Differentiable where the cosine is defined.
    """
    pair = form_pair(layer_a, dirs_a, layer_b, dirs_b, dtype)
    budget = memory_budget(pair.layer_a.device, max_memory)
    c_a, c_b = pair.coefficients()
    w_a, v_a, w_b, v_b = pair_weights(pair)
    what = "interaction_similarity (one row of M_ab)"
    if pair.same_layer:
        stacked = c_a if pair.same_directions else torch.cat([c_a, c_b])
        gram = coefficient_gram(stacked, w_a, v_a, stacked, w_a, v_a, budget, what, symmetric=True)
        b_a = c_a.shape[0]
        inner = gram if pair.same_directions else gram[:b_a, b_a:]
        squared = gram.diagonal()
        squared_a, squared_b = squared[:b_a], squared if pair.same_directions else squared[b_a:]
    else:
        inner = coefficient_gram(c_a, w_a, v_a, c_b, w_b, v_b, budget, what)
        squared_a = coefficient_gram(c_a, w_a, v_a, c_a, w_a, v_a, budget, what, symmetric=True, diagonal=True)
        squared_b = coefficient_gram(c_b, w_b, v_b, c_b, w_b, v_b, budget, what, symmetric=True, diagonal=True)
    for t in (inner, squared_a, squared_b):
        _check_finite_result(t, "the inner products")
    norm_a = _norms_or_nan(squared_a, c_a, w_a, v_a)
    norm_b = _norms_or_nan(squared_b, c_b, w_b, v_b)
    cosines = (inner / (norm_a[:, None] * norm_b[None, :])).clamp(-1, 1)
    return to_framework(cosines, pair.layer_a.framework)


def _norms_or_nan(squared: torch.Tensor, c: torch.Tensor, w: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
    """‖Q‖_F from ‖Q‖²_F, NaN where the form is zero to working precision: ‖Q‖²_F ≤ eps·bound²,
    bound = Σ_k |c_k| ‖w̃_k‖ ‖ṽ_k‖ ≥ ‖Q‖_F (rounding in cᵀMc is of order eps·bound²)."""
    with torch.no_grad():
        bound = c.abs() @ (torch.linalg.vector_norm(w, dim=1) * torch.linalg.vector_norm(v, dim=1))
        zero = squared.detach() <= torch.finfo(squared.dtype).eps * bound * bound
    safe = torch.where(zero, torch.ones_like(squared), squared)  # no NaN gradient through sqrt(0)
    return torch.where(zero, torch.full_like(squared, float("nan")), safe.sqrt())
