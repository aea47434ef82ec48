"""decompose(): validate, choose a method, chunk the directions, run the solver, order and sign.

Method choice for method="auto" (d is the form's dimension, d + 1 with biases):
  "lowrank"  when 2h < d: exact, and the per-direction work no longer depends on d;
  "lanczos"  when k is given, d ≥ 512 and k ≤ d/32: the matrix-free Krylov basis stays far
             below d columns, so its products cost less than forming Q (2·h·d² per direction) and
             a dense eigh (measured crossover on CPU: d ≈ 256–512 for k = 4, h = 4d);
  "eigh"     otherwise (full spectra, small d, large k).
"""
from __future__ import annotations

import math
import numbers
import time
from typing import NamedTuple

import torch

from ._arrays import to_framework, working_dtype
from .directions import parse_directions
from .interaction import InteractionOperator, _check_layer, iter_scaled_interaction_chunks
from .layer import BilinearLayer
from .memory import budget_after_result, chunk_size, memory_budget
from .progress import chunk_starts
from .result import DecompositionResult
from .scaling import ScaledLayer, rescale
from .solvers.dense import check_backend, dense_bytes_per_direction, dense_topk
from .solvers.krylov import default_block_size, default_max_basis, krylov_topk
from .solvers.lowrank import LowRankReduction, lowrank_bytes_per_direction
from .solvers.selection import WHICH, fix_signs

METHODS = ("auto", "eigh", "lanczos", "lowrank")
DEFAULT_TOL = {torch.float32: 1e-4, torch.float64: 1e-8}
LANCZOS_MIN_D = 512
LANCZOS_MAX_K_FRACTION = 1 / 32
# widest batch of Krylov columns (directions × block) advanced in one product
LANCZOS_MAX_COLUMNS = 4096


def choose_method(d: int, h: int, k: int | None) -> str:
    """The rule behind method="auto" (see the module docstring)."""
    if 2 * h < d:
        return "lowrank"
    if k is not None and d >= LANCZOS_MIN_D and k <= d * LANCZOS_MAX_K_FRACTION:
        return "lanczos"
    return "eigh"


class SolverOptions(NamedTuple):
    """Checked options with their defaults resolved: equal requests written differently (k=None
    or k=d, method="auto" or what it picks) resolve alike."""
    k: int
    which: str
    method: str
    tol: float
    dtype: torch.dtype


def resolve_options(layer: BilinearLayer, k, which: str, method: str, tol, dtype) -> SolverOptions:
    """Validate decompose's solver options for `layer` (clear errors naming the argument) and
    resolve their defaults."""
    work = working_dtype(layer.dtype, dtype)
    d, h = layer.d_form, layer.d_hidden
    if which not in WHICH:
        raise ValueError(f"which must be one of {WHICH}, got {which!r}")
    if method not in METHODS:
        raise ValueError(f"method must be one of {METHODS}, got {method!r}")
    if k is not None:
        if isinstance(k, bool) or not isinstance(k, numbers.Integral):
            raise TypeError(f"k must be an int or None, got {type(k).__name__}")
        k = int(k)
        if not 1 <= k <= d:
            raise ValueError(f"k must be in [1, d] = [1, {d}] for this layer, got {k}")
    if tol is not None:
        if isinstance(tol, bool) or not isinstance(tol, numbers.Real):
            raise TypeError(f"tol must be a float or None, got {type(tol).__name__} {tol!r}")
        if not (math.isfinite(tol) and tol > 0):
            raise ValueError(f"tol must be positive and finite, got {tol!r}")
        eps = torch.finfo(work).eps
        if tol < eps:
            # residuals are computed in the working precision: they cannot get below its rounding
            raise ValueError(f"tol={tol:g} is below the {str(work).replace('torch.', '')} machine epsilon "
                             f"{eps:.3g}, which no residual in this precision can reach; use tol >= {eps:.3g} "
                             "or dtype=torch.float64")
    if method == "auto":
        method = choose_method(d, h, k)
    if method == "lowrank" and 2 * h >= d:
        raise ValueError(f"method='lowrank' needs 2h < d, got h={h}, d={d} (use 'eigh' or 'lanczos')")
    return SolverOptions(d if k is None else k, which, method,
                         DEFAULT_TOL[work] if tol is None else float(tol), work)


@torch.no_grad()  # eigenpairs are results, not part of a training graph (weights may be Parameters)
def decompose(layer: BilinearLayer, directions, k: int | None = None, which: str = "LM",
              method: str = "auto", tol: float | None = None, dtype=None, *,
              max_memory: int | None = None, progress: bool | None = None,
              block_size: int | None = None, max_basis: int | None = None,
              max_products: int | None = None, seed: int = 0,
              eigh_backend: str = "auto") -> DecompositionResult:
    """Eigendecompose Q(u) for each direction u and keep the k most important eigenpairs.

    layer       a BilinearLayer
    directions  output indices (int, sequence, integer tensor) or float directions (o,) / (b, o)
    k           eigenpairs per direction, 1..d; None keeps the full spectrum (d + 1 with biases)
    which       "LM" largest |λ|, "LA" largest, "SA" smallest, "BE" half from each end
    method      "auto", "eigh", "lanczos" or "lowrank" (module docstring: the auto rule)
    tol         residual tolerance ‖Q v − λ v‖/‖Q‖ for "lanczos" (default 1e-4 in float32,
                1e-8 in float64; at least the working dtype's eps); the direct methods are exact
                to working precision
    dtype       working precision (float32 or float64); default: the weights' own, half upcast
    max_memory  bytes of the result and the temporaries together (default: a few GiB, at most
                half of free memory); a result that cannot fit is refused up front (MemoryError)
    progress    show a progress bar over chunks (default: when there is more than one chunk)
    block_size, max_basis, max_products, seed: knobs of the Krylov solver
    eigh_backend  batched eigensolver of method="eigh": "auto", "torch" or "cusolver"
                  (solvers/dense.py)

    Returns a DecompositionResult in the layer's framework and device. The result does not depend
    on the weights' scale (scaling.py); eigenvalues the working dtype cannot hold are refused with
    a ValueError.
    """
    _check_layer(layer)
    dirs = parse_directions(directions, layer.d_out)
    check_backend(eigh_backend, layer.device)
    knobs = check_krylov_knobs(block_size, max_basis, max_products, seed)
    opts = resolve_options(layer, k, which, method, tol, dtype)
    work, k_eff, method, tol = opts.dtype, opts.k, opts.method, opts.tol
    d = layer.d_form
    # the result is allocated whole below: count it first, refuse up front when it cannot fit
    budget = budget_after_result(
        memory_budget(layer.device, max_memory), len(dirs) * (d + 2) * k_eff * work.itemsize, 0,
        f"decompose of {len(dirs)} direction(s) with k={k_eff} at d={d} in {str(work).replace('torch.', '')}",
        hint="ask for fewer directions per call or a smaller k")

    vals = torch.empty(len(dirs), k_eff, dtype=work, device=layer.device)
    vecs = torch.empty(len(dirs), d, k_eff, dtype=work, device=layer.device)
    resid = torch.empty(len(dirs), k_eff, dtype=work, device=layer.device)
    started = time.perf_counter()
    solver = {"eigh": _run_eigh, "lanczos": _run_lanczos, "lowrank": _run_lowrank}[method]
    extra = {}
    for start, stop, v, u, r in solver(layer, dirs, k_eff, which, work, budget, progress, tol,
                                        dict(knobs, eigh_backend=eigh_backend), extra):
        vals[start:stop], resid[start:stop] = v, r
        fix_signs(u, out=vecs[start:stop])

    fw = layer.framework
    metadata = {"k": k_eff, "tol": tol, "dtype": str(work).replace("torch.", ""), "has_bias": layer.has_bias,
                "seconds": round(time.perf_counter() - started, 6), **extra}
    return DecompositionResult(
        eigenvalues=to_framework(vals, fw), eigenvectors=to_framework(vecs, fw),
        residuals=to_framework(resid, fw), method=method, which=which,
        indices=None if dirs.indices is None else to_framework(dirs.indices.to(layer.device), fw),
        metadata=metadata,
    )


def check_krylov_knobs(block_size, max_basis, max_products, seed) -> dict:
    """The Krylov knobs as Python ints (None takes the default), refusing what is not a positive
    int, or a seed that is not an int torch's generators take."""
    knobs = {}
    for name, value in (("block_size", block_size), ("max_basis", max_basis), ("max_products", max_products)):
        if value is not None:
            if isinstance(value, bool) or not isinstance(value, numbers.Integral):
                raise TypeError(f"{name} must be a positive int or None, got {type(value).__name__} {value!r}")
            if value < 1:
                raise ValueError(f"{name} must be a positive int or None, got {value!r}")
            value = int(value)
        knobs[name] = value
    if isinstance(seed, bool) or not isinstance(seed, numbers.Integral):
        raise TypeError(f"seed must be an int, got {type(seed).__name__} {seed!r}")
    if not -2**63 <= seed < 2**64:
        raise ValueError(f"seed must be an int in [-2**63, 2**64), got {seed!r}")
    return dict(knobs, seed=int(seed))


# Every solver works on the layer's operands divided by powers of two (scaling.py) and scales
# the eigenvalues back at the end: results do not depend on the weights' scale, and what the
# working dtype cannot hold is refused. Eigenvectors and relative residuals need no scaling.
def _run_eigh(layer, dirs, k, which, dtype, budget, progress, tol, knobs, extra):
    solver_bytes = dense_bytes_per_direction(layer.d_form, dtype.itemsize)
    for start, stop, q, e in iter_scaled_interaction_chunks(layer, dirs, dtype, budget, solver_bytes, progress,
                                                            "method='eigh'", exact_symmetry=False):
        vals, vecs, resid, norm = dense_topk(q, k, which, knobs["eigh_backend"])
        yield start, stop, rescale(vals, e, norm, "the eigenvalues", start), vecs, resid


def _run_lowrank(layer, dirs, k, which, dtype, budget, progress, tol, knobs, extra):
    scaled = ScaledLayer(layer, dtype)
    reduction = LowRankReduction(scaled.w, scaled.v)
    op = InteractionOperator(scaled.w, scaled.v)
    per = lowrank_bytes_per_direction(layer.d_hidden, layer.d_form, k, dtype.itemsize)
    step = chunk_size(len(dirs), per, budget, "method='lowrank'")
    for start in chunk_starts(len(dirs), step, progress, "lowrank"):
        sub = dirs.chunk(start, min(start + step, len(dirs)))
        c, e = scaled.coefficients(sub)
        vals, vecs, norm = reduction.topk(c, k, which)
        resid = _residuals(op, c, vals, vecs, norm)
        yield start, start + len(sub), rescale(vals, e + scaled.exponent, norm, "the eigenvalues", start), vecs, resid


def _run_lanczos(layer, dirs, k, which, dtype, budget, progress, tol, knobs, extra):
    scaled = ScaledLayer(layer, dtype)
    h, d = scaled.w.shape
    op = InteractionOperator(scaled.w, scaled.v)
    p = min(knobs["block_size"] or default_block_size(k, d, layer.device), d)
    m = min(knobs["max_basis"] or default_max_basis(k, p, d), d)
    # basis and T, the two product temporaries of width p, and the final vectors
    per = (d * m + m * m + 4 * h * p + 2 * d * p + 2 * d * k) * dtype.itemsize
    step = min(chunk_size(len(dirs), per, budget, "method='lanczos'"), max(1, LANCZOS_MAX_COLUMNS // p))
    spent = []
    for start in chunk_starts(len(dirs), step, progress, "lanczos"):
        sub = dirs.chunk(start, min(start + step, len(dirs)))
        c, e = scaled.coefficients(sub)
        run = krylov_topk(op.apply_rows, c, d, k, which, tol, block_size=p, max_basis=m,
                          max_products=knobs["max_products"], seed=knobs["seed"])
        spent.append(run.products)
        # the Krylov recurrence gives ‖Q y − θ y‖ without another product (tests hold it to the truth)
        values = rescale(run.values, e + scaled.exponent, run.norms, "the eigenvalues", start)
        yield start, start + len(sub), values, run.vectors, run.residuals
    products = torch.cat(spent).float()
    extra.update(block_size=p, max_basis=m, products_mean=round(float(products.mean()), 1),
                 products_max=int(products.max()))


def _residuals(op: InteractionOperator, c, vals, vecs, norm) -> torch.Tensor:
    """True relative residuals ‖Q v − λ v‖ / ‖Q‖ by one matrix-free product per vector."""
    r = torch.linalg.vector_norm(op.apply(c, vecs) - vecs * vals[:, None, :], dim=-2)
    return r / torch.where(norm > 0, norm, torch.ones_like(norm))[:, None]
