"""decompose_network: exact eigendecomposition of a whole BilinearNetwork through depth (DESIGN §8).

Level 0 is g_0 = [z; 1] (the constant last, where `decompose` puts it for a biased layer). Given
features g_{l-1} with [r_{l-1}; 1] = A_{l-1} g_{l-1} (so the last row c of A_{l-1} has cᵀ g_{l-1} = 1),
layer l's lifted output [r_l; 1] is ONE bilinear layer on g_{l-1}, "the lift" (`lift_layer`):

    units (w'_k, v'_k) = rows of (W A + a cᵀ, V A + b cᵀ)   (`project_input(A)`, biases through c)
          P̃[:d, k] = P[:, k]
    unit  (c, c)       P̃[:d] = the layer's output bias, P̃[d] = 1      (the constant, (cᵀg)² = 1)
    units (c, A[i])    P̃[i] = 1, for i < d, residual stacks only      ((cᵀg)(A[i]g) = r_{l-1, i})

Orthogonalize: the lift's output-mode SVD (`output_svd`, its (d+1)² Gram, in float64) gives
U_l Σ_l; the features g_l = Σ_l⁻¹ U_lᵀ lift(g_{l-1}) are orthonormal polynomial features and
A_l = U_l Σ_l. Truncation keeps the top ρ_l columns: the smaller network it defines is evaluated
by the same formula on the truncated features. Diagonalize: the top lift with the head folded into
its output projection is a bilinear layer from g_{L-1} to the network's output, and `decompose`
of it at the output directions gives uᵀ y = Σ_j μ_j (w_jᵀ g_{L-1})² exactly. Expand: feature
wᵀ g_l is the lift of layer l at output direction U_l Σ_l⁻¹ w, decomposed one level down.
"""
from __future__ import annotations

import json
import math
import numbers
import os
from dataclasses import dataclass, field

import torch

from .._arrays import working_dtype
from ..decompose import decompose
from ..directions import parse_directions
from ..layer import BilinearLayer
from ..primitives.output_svd import output_svd
from ..result import DecompositionResult
from .network import BilinearNetwork, network_inputs

FORMAT = "bilinear_kernels.network_decomposition/1"
# A level's Gram eigenvalue σ² is resolved to about (d+1)·eps·σ₁² in float64; singular values
# whose square is not this many times above that rounding are numerically zero (rank=None drops them).
RANK_TOL_FACTOR = 100


@dataclass
class Level:
    """One orthogonalized level: the lift of its layer on the previous level's features (float64),
    the left singular vectors U (d+1, ρ) and singular values (ρ,) of the lift's output unfolding
    (every numerically non-zero one), and `rank`, how many of them the features keep."""

    lift: BilinearLayer
    u: torch.Tensor
    singular_values: torch.Tensor
    rank: int

    @property
    def basis(self) -> torch.Tensor:
        """A_l = U Σ (d+1, rank): [r_l; 1] = A_l g_l."""
        return self.u[:, :self.rank] * self.singular_values[:self.rank]

    def features(self, g: torch.Tensor) -> torch.Tensor:
        """g_l = Σ⁻¹ Uᵀ lift(g_{l-1}) in g's dtype, for rows g (n, n_{l-1})."""
        lift = self.lift.to(dtype=g.dtype)
        return (lift.forward(g) @ self.u[:, :self.rank].to(g.dtype)) / self.singular_values[:self.rank].to(g.dtype)


@dataclass
class NetworkDecomposition:
    """The exact decomposition of a network's output through depth (see the module docstring).

    eigenvalues   (b, k)     μ_j of the top form per direction, most important first by `which`
    eigenvectors  (b, n, k)  w_j in the last level's feature coordinates g_{L-1} (n = its rank;
                             for a one-layer network, [z; 1])
    singular_values  one descending float64 tensor per orthogonalized level (L − 1 of them),
                     every numerically non-zero value; `ranks` says how many each level keeps
    direction_ids    the output indices asked for, or row numbers for float directions
    network_info     what was decomposed (n_layers, residual, biases, d_in, d, d_out, ...)

    uᵀ y(z) = Σ_j μ_j (w_jᵀ g_{L-1}(z))² over the full spectrum when nothing is truncated.
    """

    eigenvalues: torch.Tensor
    eigenvectors: torch.Tensor
    levels: list
    top: BilinearLayer
    which: str
    direction_ids: list
    network_info: dict
    metadata: dict = field(default_factory=dict)

    @property
    def singular_values(self) -> list[torch.Tensor]:
        return [level.singular_values for level in self.levels]

    @property
    def ranks(self) -> list[int]:
        return [level.rank for level in self.levels]

    @property
    def k(self) -> int:
        return self.eigenvalues.shape[-1]

    @property
    def dtype(self) -> torch.dtype:
        return self.eigenvalues.dtype

    def __len__(self) -> int:
        return self.eigenvalues.shape[0]

    def __repr__(self) -> str:
        b, n, k = self.eigenvectors.shape
        return (f"NetworkDecomposition(directions={b}, n_layers={self.network_info['n_layers']}, ranks={self.ranks}, "
                f"n={n}, k={k}, which={self.which!r})")

    # -- on data --------------------------------------------------------------------------
    def features(self, z) -> list[torch.Tensor]:
        """g_0 … g_{L-1} for inputs z (n_samples, d_in): g_0 = [z, 1], then each level's features
        of the (truncated) level below, in the result's dtype. Each (n_samples, n_l)."""
        z = network_inputs(z, self.network_info["d_in"], self.dtype, self.eigenvalues.device)
        if z.ndim != 2:
            raise ValueError(f"z must be (n_samples, d_in), got {tuple(z.shape)}")
        g = torch.cat([z, torch.ones(len(z), 1, dtype=z.dtype, device=z.device)], dim=1)
        out = [g]
        for level in self.levels:
            g = level.features(g)
            out.append(g)
        return out

    def activations(self, z) -> torch.Tensor:
        """(n_samples, b, k): μ_j (w_jᵀ g_{L-1}(z))² per direction and eigenvector."""
        g = self.features(z)[-1]
        projections = torch.einsum("sn,bnk->sbk", g, self.eigenvectors)
        return projections.square() * self.eigenvalues

    def outputs(self, z) -> torch.Tensor:
        """(n_samples, b): the activations summed over k; the network's output along each
        direction when nothing is truncated (neither levels nor eigenvectors)."""
        return self.activations(z).sum(-1)

    # -- the tree -------------------------------------------------------------------------
    def expand(self, i: int, j: int, k: int | None = None, which: str = "LM") -> DecompositionResult:
        """The DecompositionResult of top eigenvector j of direction row i one level down: its
        feature w_jᵀ g_{L-1} as a quadratic form in g_{L-2} (at level 0: [z; 1], the constant
        last as `decompose` places it for a biased layer). Walk further with `expand_vector`."""
        b, n, k_top = self.eigenvectors.shape
        for name, value, size in (("i", i, b), ("j", j, k_top)):
            if isinstance(value, bool) or not isinstance(value, numbers.Integral):
                raise TypeError(f"{name} must be an int, got {type(value).__name__}")
            if not 0 <= value < size:
                raise ValueError(f"{name} = {value} is out of range: this result has {size} "
                                 f"{'directions' if name == 'i' else 'eigenvectors per direction'} (valid: 0..{size - 1})")
        return self.expand_vector(len(self.levels), self.eigenvectors[i, :, j], k, which)

    def expand_vector(self, level: int, vector, k: int | None = None, which: str = "LM") -> DecompositionResult:
        """The feature vectorᵀ g_level (level 1..L-1, vector of that level's width) as a quadratic
        form in g_{level-1}, decomposed: its eigenvectors are the next level down of the tree."""
        if isinstance(level, bool) or not isinstance(level, numbers.Integral):
            raise TypeError(f"level must be an int, got {type(level).__name__}")
        if not self.levels:
            raise ValueError("level: a one-layer network's eigenvectors are already in level 0 coordinates "
                             "([z; 1]): there is no level below to expand into")
        if not 1 <= level <= len(self.levels):
            raise ValueError(f"level = {level} is out of range: features of levels 1..{len(self.levels)} can be "
                             "expanded (level 0 is the input)")
        below = self.levels[level - 1]
        vector = torch.as_tensor(vector).to(device=below.u.device, dtype=torch.float64).reshape(-1)
        if vector.shape != (below.rank,):
            raise ValueError(f"vector must have the {below.rank} coordinates of level {level}, got {tuple(vector.shape)}")
        direction = below.u[:, :below.rank] @ (vector / below.singular_values[:below.rank])
        result = decompose(below.lift, direction, k, which, dtype=self.dtype)
        result.metadata.update(level=level - 1, has_bias=level - 1 == 0,
                               expanded=f"a level-{level} feature as a form in level-{level - 1} features")
        return result

    # -- files ----------------------------------------------------------------------------
    def save(self, path) -> None:
        """Write to a safetensors file: the eigenpairs and every level's lift and singular vectors
        (so features, activations and expand work after `load`), with JSON metadata."""
        from safetensors.torch import save_file

        tensors = {"eigenvalues": self.eigenvalues, "eigenvectors": self.eigenvectors}
        for name, layer in [*((f"level{i}", lv.lift) for i, lv in enumerate(self.levels)), ("top", self.top)]:
            tensors[f"{name}.w"], tensors[f"{name}.v"] = layer.w, layer.v
            if layer.p is not None:
                tensors[f"{name}.p"] = layer.p
        for i, level in enumerate(self.levels):
            tensors[f"level{i}.u"], tensors[f"level{i}.singular_values"] = level.u, level.singular_values
        tensors = {name: t.detach().cpu().contiguous() for name, t in tensors.items()}
        meta = {"format": FORMAT, "which": self.which, "ranks": json.dumps(self.ranks),
                "direction_ids": json.dumps(self.direction_ids), "network_info": json.dumps(self.network_info),
                "metadata": json.dumps(self.metadata)}
        save_file(tensors, str(path), metadata=meta)

    @classmethod
    def load(cls, path) -> "NetworkDecomposition":
        """Read a file written by `save` (torch tensors on the CPU)."""
        from safetensors import SafetensorError, safe_open

        if os.path.isdir(path):
            raise ValueError(f"{path} is a directory, not a network decomposition file")
        try:
            with safe_open(str(path), framework="pt") as f:
                meta = f.metadata() or {}
                if meta.get("format") != FORMAT:
                    raise ValueError(f"{path} is not a network decomposition file (format {meta.get('format')!r})")
                tensors = {name: f.get_tensor(name) for name in f.keys()}
        except SafetensorError as err:
            raise ValueError(f"{path} is not a readable safetensors file: {err}") from None
        try:
            ranks = json.loads(meta["ranks"])

            def layer(name):
                return BilinearLayer(tensors[f"{name}.w"], tensors[f"{name}.v"], tensors.get(f"{name}.p"))

            levels = [Level(layer(f"level{i}"), tensors[f"level{i}.u"], tensors[f"level{i}.singular_values"], int(r))
                      for i, r in enumerate(ranks)]
            return cls(tensors["eigenvalues"], tensors["eigenvectors"], levels, layer("top"), meta["which"],
                       json.loads(meta["direction_ids"]), json.loads(meta["network_info"]),
                       json.loads(meta.get("metadata", "{}")))
        except (KeyError, json.JSONDecodeError, TypeError) as err:
            raise ValueError(f"{path} is not a valid network decomposition file: missing or bad entry {err}") from None


@torch.no_grad()  # results, not part of a training graph
def decompose_network(net: BilinearNetwork, directions, k: int | None = None, which: str = "LM", rank=None,
                      dtype=None, *, max_memory: int | None = None, progress: bool | None = None,
                      _first_level: Level | None = None) -> NetworkDecomposition:
    """Decompose a BilinearNetwork's output along `directions` exactly through depth.

    directions  as in `decompose`: output indices or float vectors in the head's output space
                (in stream space without a head)
    k, which    eigenpairs of the top form kept per direction, and their order (as `decompose`);
                k=None keeps all (the last level's rank)
    rank        features kept per orthogonalized level: None every numerically non-zero singular
                value (exact); an int r the top r; a float in (0, 1) the fewest holding that share
                of Σσ²; or a list of L − 1 of these, one per level
    dtype       working precision of the top eigenproblems and of features on data (default: the
                network's, half upcast); the (d+1)-sized levels are built in float64 always
    max_memory  bytes per step (a lift's weights, its Gram, the top decomposition), as elsewhere

    (`_first_level`: this network's `first_level`, which no truncation changes, for a sweep over
    ranks to compute once; network_truncation_curve passes it.)
    """
    if not isinstance(net, BilinearNetwork):
        raise TypeError(f"net must be a BilinearNetwork, got {type(net).__name__}")
    work = working_dtype(net.dtype, dtype)
    try:  # checked before any work; the message names the argument, the network's output width being d_out
        dirs = parse_directions(directions, net.d_out)
    except ValueError as err:
        raise ValueError(f"directions: {err}") from None
    rules = _rank_rules(rank, net.n_layers - 1)
    d = net.d_stream
    basis = _input_basis(net)
    levels = []
    for i, (layer, out_bias, rule) in enumerate(zip(net.layers[:-1], net.output_biases[:-1], rules)):
        full = _first_level if i == 0 and _first_level is not None else \
            orthogonalized_level(layer, out_bias, basis, net.residual, max_memory)
        level = Level(full.lift, full.u, full.singular_values, _kept_rank(full.singular_values, rule))
        levels.append(level)
        basis = level.basis
    top = lift_layer(net.layers[-1], net.output_biases[-1], basis, net.residual, max_memory)
    top = BilinearLayer(top.w, top.v, _head_map(net) @ top.p)
    result = decompose(top, directions, k, which, dtype=work, max_memory=max_memory, progress=progress)
    info = {"n_layers": net.n_layers, "residual": net.residual, "biases": net.has_bias, "d_in": net.d_in,
            "d": d, "d_out": net.d_out, "embedding": net.embedding is not None, "head": net.head is not None}
    ids = dirs.indices.tolist() if dirs.indices is not None else list(range(len(dirs)))
    # the top residuals are left unread: for a full spectrum they cost a GEMM per direction (decompose.py)
    metadata = {"dtype": str(work).replace("torch.", ""), "method": result.method, "k": result.k}
    return NetworkDecomposition(torch.as_tensor(result.eigenvalues), torch.as_tensor(result.eigenvectors), levels, top,
                                which, ids, info, metadata)


def orthogonalized_level(layer: BilinearLayer, out_bias, basis: torch.Tensor, residual: bool,
                         max_memory=None) -> Level:
    """The level after `layer` on features with [r; 1] = basis g, at its full numerical rank."""
    lift = lift_layer(layer, out_bias, basis, residual, max_memory)
    singular_values, u = output_svd(lift, dtype=torch.float64, max_memory=max_memory)
    numerical = _numerical_rank(singular_values, layer.d_in + 1)
    return Level(lift, u[:, :numerical], singular_values[:numerical], numerical)


def first_level(net: BilinearNetwork, max_memory=None) -> Level | None:
    """Level 1 of `net` at its full numerical rank (None for a one-layer network): it depends on
    no truncation, so a sweep over ranks computes it once."""
    if net.n_layers == 1:
        return None
    return orthogonalized_level(net.layers[0], net.output_biases[0], _input_basis(net), net.residual, max_memory)


def lift_layer(layer: BilinearLayer, out_bias, basis: torch.Tensor, residual: bool, max_memory=None) -> BilinearLayer:
    """Layer l as one bilinear layer on the previous features g (float64): its output is [r_l; 1]
    where [r_{l-1}; 1] = basis g and basis[-1] g = 1 (module docstring)."""
    f64 = torch.float64
    d = layer.d_in
    c = basis[d]
    projected = layer.to(dtype=f64).project_input(basis[:d], max_memory=max_memory)
    w, v = projected.w, projected.v
    # the biases multiply the constant, which is cᵀ g on the features
    if projected.w_bias is not None:
        w = w + projected.w_bias[:, None] * c
    if projected.v_bias is not None:
        v = v + projected.v_bias[:, None] * c
    p = torch.eye(d, dtype=f64, device=basis.device) if layer.p is None else layer.p.to(f64)
    h = w.shape[0]
    constant = torch.zeros(d + 1, 1, dtype=f64, device=basis.device)
    constant[d] = 1
    if out_bias is not None:
        constant[:d, 0] = out_bias.to(f64)
    ws, vs = [w, c[None]], [v, c[None]]
    columns = [torch.cat([p, torch.zeros(1, h, dtype=f64, device=basis.device)]), constant]
    if residual:  # (cᵀg)(A[i] g) = r_{l-1, i}
        ws.append(c.expand(d, -1))
        vs.append(basis[:d])
        columns.append(torch.eye(d + 1, d, dtype=f64, device=basis.device))
    return BilinearLayer(torch.cat(ws), torch.cat(vs), torch.cat(columns, dim=1))


def _input_basis(net: BilinearNetwork) -> torch.Tensor:
    """A_0 (d+1, d_in+1): [x; 1] = A_0 [z; 1]."""
    f64 = torch.float64
    d, d_in = net.d_stream, net.d_in
    basis = torch.zeros(d + 1, d_in + 1, dtype=f64, device=net.device)
    basis[:d, :d_in] = torch.eye(d, dtype=f64, device=net.device) if net.embedding is None else net.embedding.to(f64)
    if net.embedding_bias is not None:
        basis[:d, d_in] = net.embedding_bias.to(f64)
    basis[d, d_in] = 1
    return basis


def _head_map(net: BilinearNetwork) -> torch.Tensor:
    """(d_out, d+1): the network's output as a linear map of [r_L; 1]."""
    f64 = torch.float64
    d = net.d_stream
    if net.head is None:
        return torch.eye(d, d + 1, dtype=f64, device=net.device)
    bias = torch.zeros(net.d_out, 1, dtype=f64, device=net.device) if net.head_bias is None else net.head_bias.to(f64)[:, None]
    return torch.cat([net.head.to(f64), bias], dim=1)


def _numerical_rank(singular_values: torch.Tensor, size: int) -> int:
    """How many singular values (descending) stand above the rounding of the Gram they come from."""
    top = float(singular_values[0]) if len(singular_values) else 0.0
    if top == 0.0:
        return 1
    tol = top * math.sqrt(RANK_TOL_FACTOR * size * torch.finfo(torch.float64).eps)
    return max(1, int((singular_values > tol).sum()))


def _rank_rules(rank, n_levels: int) -> list:
    """One checked rule per level from `rank` (None, int, float share, or a list of those)."""
    def check(rule, where):
        if rule is None:
            return None
        if isinstance(rule, bool) or not isinstance(rule, numbers.Real):
            raise ValueError(f"rank{where} must be None, a positive int or a float in (0, 1), got {rule!r}")
        if isinstance(rule, numbers.Integral):
            if rule < 1:
                raise ValueError(f"rank{where} must be a positive int (features kept per level), got {rule}")
            return int(rule)
        if not (0 < rule < 1):
            raise ValueError(f"rank{where} as a float is the share of Σσ² kept per level and must be in (0, 1), got {rule!r}")
        return float(rule)

    if isinstance(rank, (list, tuple)):
        if len(rank) != n_levels:
            raise ValueError(f"rank as a list needs one entry per orthogonalized level ({n_levels}: L − 1), got {len(rank)}")
        return [check(r, f"[{i}]") for i, r in enumerate(rank)]
    return [check(rank, "")] * n_levels


def _kept_rank(singular_values: torch.Tensor, rule) -> int:
    n = len(singular_values)
    if rule is None:
        return n
    if isinstance(rule, int):
        return min(rule, n)
    energy = singular_values.square()
    share = torch.cumsum(energy, 0) / energy.sum()
    return min(n, int((share < rule).sum()) + 1)
