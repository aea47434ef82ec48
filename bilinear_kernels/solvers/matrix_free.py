"""Matrix-free products Q(c_i) X_i for the Krylov solver, laid out for narrow blocks.

Q x = ½ (Wᵀ (c ⊙ V x) + Vᵀ (c ⊙ W x)). The first GEMM forms [W X; V X] against the stacked
[W; V] (2h, d), as `interaction.InteractionOperator.apply_rows` does (its plain twin and oracle);
the second reads its transpose as rows, Zᵀ W and Zᵀ V, so that it multiplies a thin row-major
block into W and V kept as they are. With few columns (a handful of directions times a narrow
block) the column form Wᵀ Z, a transposed weight against a thin block, ran 10× slower on MKL (0.4
against 4 GFLOP/s at 8 columns, d = 1024, h = 4096, one thread), and its result needed a
transposing copy back into rows.
"""
from __future__ import annotations

import torch


class MatrixFreeProduct:
    """Products with Q(c) for a batch of coefficient rows, never forming Q (rows layout)."""

    def __init__(self, w: torch.Tensor, v: torch.Tensor):
        self.h, self.d = w.shape
        self.stacked = torch.cat([w, v], dim=0).contiguous()  # (2h, d)
        self.w, self.v = self.stacked[: self.h], self.stacked[self.h:]

    def apply_rows(self, c: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
        """Q(c_i) applied to the rows of x_i: c (b, h), x (b, m, d) -> (b, m, d)."""
        b, m, d = x.shape
        proj = self.stacked @ x.reshape(b * m, d).t()  # (2h, b·m) = [W X; V X]
        proj.view(2, self.h, b, m).mul_(0.5 * c.t()[None, :, :, None])
        rows = proj.t()  # (b·m, 2h) view: [(c ⊙ W X)ᵀ, (c ⊙ V X)ᵀ] / 2
        out = rows[:, self.h:] @ self.w  # (c ⊙ V X)ᵀ W / 2
        out.addmm_(rows[:, : self.h], self.v)  # + (c ⊙ W X)ᵀ V / 2
        return out.view(b, m, d)
