"""The only exact alternative to decompose_network a researcher has: the network's polynomial
coefficient tensor, formed with one opt_einsum contraction.

A stack of L bilinear layers is a polynomial of degree 2^L in its input z. In the lifted input
z̃ = [1; z] (the constant first) it is homogeneous: each lifted layer maps r̃ = [1; r] to
r̃' = P̃ ((W̃ r̃) ⊙ (Ṽ r̃)), with hidden units

  the layer's own h units        rows [a | W], [b | V] (biases as column 0), into rows 1..d of P̃
  one constant unit (e_0, e_0)   into row 0 (r̃'[0] = 1·1)
  d residual units (e_0, e_j)    into row j (r̃'[j] += r[j]·1), for a residual stack only

so the output along directions u is one contraction of the head-folded readout [c·u; Hᵀu], every
lifted layer of the 2^L − 1 nodes of the binary tree, and 2^L copies of [[1, 0], [e, E]] — the
coefficients C[b, a_1, ..., a_{2^L}] with uᵀy = Σ C[b, a...] z̃_{a_1} ⋯ z̃_{a_{2^L}} (not
symmetrized: symmetrizing costs more and changes no value of the polynomial). A network without
biases, residual or head bias is homogeneous in z itself and is contracted without the constant.
opt_einsum picks the contraction order (the published analyses use it); its result alone holds
b·n^(2^L) numbers, which is what rules it out past one layer at MNIST sizes.

For one layer, `published_decomposition` adds what the published image code does next: symmetrize
each direction's (n, n) form and take its full eigh.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch

OPTIMIZE = "dp"  # opt_einsum's dynamic-programming search: the cheapest order by flop count


@dataclass
class PolynomialPlan:
    """One network's contraction: the einsum equation, its operands' shapes, and the result's."""

    equation: str
    operands: list[torch.Tensor]
    lifted: bool  # the input carries the constant coordinate 1 (first)
    result_shape: tuple[int, ...]

    @property
    def result_numel(self) -> int:
        n = 1
        for s in self.result_shape:
            n *= s
        return n

    def result_bytes(self, itemsize: int = 8) -> int:
        """Bytes of the coefficient tensor alone: a lower bound on what forming it needs."""
        return self.result_numel * itemsize


def needs_constant(net) -> bool:
    """Whether the polynomial has terms below degree 2^L (biases, residual, a head bias)."""
    return bool(net.residual or net.head_bias is not None or net.has_bias)


def lifted_layer(layer, d: int, residual: bool, lifted: bool, dtype,
                 output_bias=None) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(P̃ (d', m), W̃ (m, d'), Ṽ (m, d')) of one layer on the lifted stream (module docstring; an
    output bias p enters through the constant unit's column [1; p]); without `lifted`, the layer's
    own (P, W, V) (no biases, no residual)."""
    w, v = layer.w.to(dtype), layer.v.to(dtype)
    h = w.shape[0]
    p = torch.eye(h, dtype=dtype) if layer.p is None else layer.p.to(dtype)
    if not lifted:
        return p, w, v
    zeros = torch.zeros(h, 1, dtype=dtype)
    wb = zeros if layer.w_bias is None else layer.w_bias.to(dtype)[:, None]
    vb = zeros if layer.v_bias is None else layer.v_bias.to(dtype)[:, None]
    e0 = torch.zeros(1, d + 1, dtype=dtype)
    e0[0, 0] = 1.0
    w_rows = [torch.cat([wb, w], 1), e0]
    v_rows = [torch.cat([vb, v], 1), e0]
    constant = e0.T.clone()
    if output_bias is not None:
        constant[1:, 0] = output_bias.to(dtype)
    p_cols = [torch.cat([torch.zeros(1, h, dtype=dtype), p], 0), constant]
    if residual:
        w_rows.append(e0.expand(d, d + 1))
        v_rows.append(torch.cat([torch.zeros(d, 1, dtype=dtype), torch.eye(d, dtype=dtype)], 1))
        p_cols.append(torch.cat([torch.zeros(1, d, dtype=dtype), torch.eye(d, dtype=dtype)], 0))
    return torch.cat(p_cols, 1), torch.cat(w_rows, 0), torch.cat(v_rows, 0)


def readout(net, directions: torch.Tensor, lifted: bool, dtype) -> torch.Tensor:
    """(b, d') rows giving uᵀy from the lifted last stream: [u·head_bias; Hᵀu] (or Hᵀu)."""
    u = directions.to(dtype)
    rows = u if net.head is None else u @ net.head.to(dtype)
    if not lifted:
        return rows
    const = (u @ net.head_bias.to(dtype) if net.head_bias is not None
             else torch.zeros(u.shape[0], dtype=dtype))
    return torch.cat([const[:, None], rows], 1)


def input_map(net, lifted: bool, dtype) -> torch.Tensor:
    """(d', n') map from the (lifted) input to the (lifted) first stream: [[1, 0], [e, E]] (e the
    embedding's shift, if any)."""
    e = torch.eye(net.d_in, dtype=dtype) if net.embedding is None else net.embedding.to(dtype)
    if not lifted:
        return e
    out = torch.zeros(e.shape[0] + 1, e.shape[1] + 1, dtype=dtype)
    out[0, 0] = 1.0
    out[1:, 1:] = e
    if getattr(net, "embedding_bias", None) is not None:
        out[1:, 0] = net.embedding_bias.to(dtype)
    return out


def plan(net, directions: torch.Tensor, dtype=torch.float64) -> PolynomialPlan:
    """The contraction forming the coefficients of uᵀy for each row u of `directions` (b, d_out)."""
    from opt_einsum import get_symbol

    lifted = needs_constant(net)
    d = net.d_stream
    layers = [lifted_layer(layer, d, net.residual, lifted, dtype, bias)
              for layer, bias in zip(net.layers, net.output_biases)]
    emb = input_map(net, lifted, dtype)
    counter = iter(range(10**6))
    symbol = lambda: get_symbol(next(counter))  # noqa: E731
    terms, operands, outputs = [], [], []

    def stream(level: int, index: str) -> None:
        """Append the terms that give lifted stream coordinate `index` after layer `level`."""
        if level == 0:
            leaf = symbol()
            terms.append(index + leaf)
            operands.append(emb)
            outputs.append(leaf)
            return
        p, w, v = layers[level - 1]
        unit, left, right = symbol(), symbol(), symbol()
        terms.extend([index + unit, unit + left, unit + right])
        operands.extend([p, w, v])
        stream(level - 1, left)
        stream(level - 1, right)

    batch, top = symbol(), symbol()
    terms.append(batch + top)
    operands.append(readout(net, directions, lifted, dtype))
    stream(net.n_layers, top)
    equation = ",".join(terms) + "->" + batch + "".join(outputs)
    n = emb.shape[1]
    return PolynomialPlan(equation, operands, lifted, (directions.shape[0],) + (n,) * len(outputs))


def path_info(p: PolynomialPlan):
    """opt_einsum's path for the plan, from the shapes alone (nothing is allocated)."""
    import opt_einsum

    shapes = [tuple(t.shape) for t in p.operands]
    return opt_einsum.contract_path(p.equation, *shapes, shapes=True, optimize=OPTIMIZE)[1]


def coefficients(p: PolynomialPlan) -> torch.Tensor:
    """Form the coefficient tensor (b, n', ..., n')."""
    import opt_einsum

    return opt_einsum.contract(p.equation, *p.operands, optimize=OPTIMIZE)


def evaluate(coeffs: torch.Tensor, z: torch.Tensor, lifted: bool) -> torch.Tensor:
    """The polynomial at inputs z (s, n): (s, b), contracting one input index at a time."""
    z = z.to(coeffs.dtype)
    if lifted:
        z = torch.cat([torch.ones(z.shape[0], 1, dtype=z.dtype), z], 1)
    out = coeffs.unsqueeze(0).expand(z.shape[0], *coeffs.shape)
    for _ in range(coeffs.ndim - 1):
        out = torch.einsum("s...a,sa->s...", out, z)
    return out


def published_decomposition(coeffs: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """One layer: symmetrize each direction's (n, n) form and take its full eigh, as the published
    image code does after forming the tensor."""
    if coeffs.ndim != 3:
        raise ValueError(f"the eigendecomposition applies to a one-layer network's (b, n, n) coefficients, "
                         f"got {coeffs.ndim - 1} input indices")
    return torch.linalg.eigh(0.5 * (coeffs + coeffs.mT))
