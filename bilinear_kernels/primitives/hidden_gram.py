"""The h × h matrix M behind whole-tensor quantities, by row blocks under the memory budget.

For the symmetrized tensor S[a] = ½(B[a] + B[a]ᵀ), B[a] = Wᵀ diag(P[a]) V (homogeneous W̃, Ṽ for
a biased layer), the Frobenius inner products are ⟨Q(c), Q(c')⟩ = cᵀ M c' with

    M = ½ ((W Wᵀ) ⊙ (V Vᵀ) + (W Vᵀ) ⊙ (V Wᵀ))

(⟨B(c), B(c')⟩ = cᵀ((WWᵀ) ⊙ (VVᵀ))c' and tr(B(c) B(c')) = cᵀ((WVᵀ) ⊙ (VWᵀ))c'). So ‖Q(u)‖²_F =
cᵀ M c and the o × o Gram matrix of the (o, d²) unfolding is P M Pᵀ. A block of r rows costs four
(r, d) × (d, h) GEMMs; the whole M, 4·h²·d multiply-adds.

Two layers a, b of the same input width give the cross Gram matrix M_ab (h_a × h_b), the same
expression with W_a, V_a on the left and W_b, V_b on the right: ⟨Q_a(c), Q_b(c')⟩ = cᵀ M_ab c'.
"""
from __future__ import annotations

import torch

from ..memory import chunk_size

# the four (r, h) products and the two Hadamard products of a block, per row, in numbers
BLOCK_NUMBERS_PER_ROW = 6


def gram_block(w: torch.Tensor, v: torch.Tensor, start: int, stop: int) -> torch.Tensor:
    """Rows start..stop of M, (r, h). Out of place, so autograd can differentiate it."""
    return cross_gram_block(w[start:stop], v[start:stop], w, v)


def cross_gram_block(w_rows: torch.Tensor, v_rows: torch.Tensor, w: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
    """½((W_r Wᵀ) ⊙ (V_r Vᵀ) + (W_r Vᵀ) ⊙ (V_r Wᵀ)), (r, h): the rows W_r, V_r of the left layer
    against all of the right layer's W, V. Out of place, so autograd can differentiate it."""
    return 0.5 * ((w_rows @ w.mT) * (v_rows @ v.mT) + (w_rows @ v.mT) * (v_rows @ w.mT))


def gram_rows_per_block(h: int, itemsize: int, budget: int, extra_per_row: int = 0, what: str = "a row of M") -> int:
    """Rows of M per block so that a block's temporaries and `extra_per_row` bytes per row fit."""
    return chunk_size(h, BLOCK_NUMBERS_PER_ROW * h * itemsize + extra_per_row, budget, what)
