"""decompose(): validate, choose a method, chunk the directions, run the solver, order and sign.

Method choice for method="auto" (d is the form's dimension, d + 1 with biases):
  "support"  when every direction of the call has c = Pᵀu with s nonzeros, 2s < d and s < h
             (s bounded without forming c: solvers/support.py): exact, a 2s×2s problem per
             direction instead of a d×d one (one-hot directions of a layer without P: s = 1).
             The choice is made for the whole call: a call mixing sparse and dense directions
             takes the rule below for all of them (split it to get both routes);
  "lowrank"  when 2h < d: exact, and the per-direction work no longer depends on d;
  "lanczos"  when k is given, d ≥ 512 and k ≤ d/32: the matrix-free Krylov basis stays far
             below d columns, so its products cost less than forming Q (2·h·d² per direction) and
             a dense eigh (measured crossover on CPU: d ≈ 256–512 for k = 4, h = 4d);
  "eigh"     otherwise (full spectra, small d, large k).
Within "lanczos", `choose_krylov_route` picks the products (matrix-free, or against Q formed once)
and the block size by a cost model measured on a CPU.
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
from .scaling import ScaledLayer, rescale, times_power_of_two_
from .solvers.dense import check_backend, dense_bytes_per_direction, dense_topk
from .solvers.formed_krylov import formed_apply_rows, formed_bytes_per_direction
from .solvers.krylov import default_block_size, default_max_basis, krylov_topk
from .solvers.lowrank import LowRankReduction, lowrank_bytes_per_direction
from .solvers.matrix_free import MatrixFreeProduct
from .solvers.selection import WHICH, fix_signs
from .solvers.support import support_bytes_per_direction, support_size_bound, support_topk
from .threads import cpu_threads

METHODS = ("auto", "eigh", "lanczos", "lowrank", "support")
DEFAULT_TOL = {torch.float32: 1e-4, torch.float64: 1e-8}
LANCZOS_MIN_D = 512
LANCZOS_MAX_K_FRACTION = 1 / 32
# widest batch of Krylov columns (directions × block) advanced in one product
LANCZOS_MAX_COLUMNS = 4096
# the direct methods compute residuals with the solve when k · this ≤ d, else when they are first read
EAGER_RESIDUAL_RATIO = 16
# the key under which a runner leaves a function computing its residuals on first read
RESIDUALS_ON_READ = "residuals_on_read"


def choose_method(d: int, h: int, k: int | None) -> str:
    """The rule behind method="auto" (see the module docstring)."""
    if 2 * h < d:
        return "lowrank"
    if k is not None and d >= LANCZOS_MIN_D and k <= d * LANCZOS_MAX_K_FRACTION:
        return "lanczos"
    return "eigh"


def support_qualifies(d: int, h: int, sizes: torch.Tensor) -> bool:
    """The "support" part of the auto rule, for the directions' support sizes (b,) (bounds)."""
    return bool((2 * sizes < d).all()) and int(sizes.max()) < h


def direction_support_bounds(layer: BilinearLayer, dirs) -> torch.Tensor:
    """Upper bounds (b,) of |supp Pᵀu| for parsed directions (solvers/support.py)."""
    return support_size_bound(layer.d_hidden, layer.p, dirs.indices, dirs.vectors)


KRYLOV_ROUTES = ("auto", "matrix-free", "formed")
# Cost model of the two Krylov routes on a CPU, in flops at the speed of a square GEMM, with
# constants measured by benchmarks/bench_topk_routes.py (float32, one thread; see the README):
# - a matrix-free step reads all of W and V twice, so it costs as much as a product of
#   (columns + MATRIX_FREE_IDLE_COLUMNS) columns at 8·h·d flops each: narrow steps are memory-bound;
# - a product against formed Q (a batched GEMV-like bmm, reading Q) runs at
#   FORMED_PRODUCT_EFFICIENCY of the square GEMM speed; forming Q costs 2·h·d² at full speed;
# - products to converge on the hardest (random) spectra, tol 1e-4, d ≈ 1024, measured for
#   k = 16..64 and p = 2..16: about 80 + 20·p + 2.8·k (trained-like decaying spectra need ~2.5× fewer).
MATRIX_FREE_IDLE_COLUMNS = 48
FORMED_PRODUCT_EFFICIENCY = 0.15
CPU_BLOCK_SIZES = (2, 4, 8, 16)


def expected_products(k: int, p: int) -> float:
    """Products per direction the Krylov run needs on a random spectrum (cost model above)."""
    return 80 + 20 * p + 2.8 * k


def krylov_route_cost(route: str, d: int, h: int, b: int, k: int, p: int) -> float:
    """Modelled cost of method="lanczos" by `route` with block p, in square-GEMM flops."""
    products = expected_products(k, p)
    if route == "formed":
        return b * (2 * h * d * d + products * 2 * d * d / FORMED_PRODUCT_EFFICIENCY)
    return products / p * 8 * h * d * (b * p + MATRIX_FREE_IDLE_COLUMNS)


def choose_krylov_route(d: int, h: int, b: int, k: int, device, block_size: int | None = None):
    """(route, block size) for method="lanczos" on b directions: on a CPU the cheaper of the
    two routes by the cost model above, with the block (among CPU_BLOCK_SIZES, unless given)
    that makes it cheapest. On a GPU, matrix-free with default_block_size (wide GEMMs; the model
    is not measured there)."""
    if torch.device(device).type != "cpu":
        return "matrix-free", min(block_size or default_block_size(k, d, device), d)
    blocks = [block_size] if block_size else [p for p in CPU_BLOCK_SIZES if p <= d] or [min(d, 2)]
    options = [(krylov_route_cost(route, d, h, b, k, p), route, p) for route in ("formed", "matrix-free")
               for p in blocks]
    _, route, p = min(options)
    return route, min(p, d)


class SolverOptions(NamedTuple):
    """Checked options with their defaults resolved: equal requests written differently (k=None
    or k=d, method="auto" or what it picks) resolve alike."""
    k: int
    which: str
    method: str
    tol: float
    dtype: torch.dtype


def resolve_options(layer: BilinearLayer, k, which: str, method: str, tol, dtype, dirs=None) -> SolverOptions:
    """Validate decompose's solver options for `layer` (clear errors naming the argument) and
    resolve their defaults. With the parsed directions `dirs`, method="auto" may pick "support";
    without them it resolves by shape alone."""
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
        if dirs is not None and support_qualifies(d, h, direction_support_bounds(layer, dirs)):
            method = "support"
        else:
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
              eigh_backend: str = "auto", krylov_route: str = "auto") -> DecompositionResult:
    """Eigendecompose Q(u) for each direction u and keep the k most important eigenpairs.

    layer       a BilinearLayer
    directions  output indices (int, sequence, integer tensor) or float directions (o,) / (b, o)
    k           eigenpairs per direction, 1..d; None keeps the full spectrum (d + 1 with biases)
    which       "LM" largest |λ|, "LA" largest, "SA" smallest, "BE" half from each end
    method      "auto", "eigh", "lanczos", "lowrank" or "support" (module docstring: the auto rule)
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
    krylov_route  products of method="lanczos": "auto", "matrix-free" (through W and V) or
                  "formed" (against Q formed once per direction); see choose_krylov_route

    Returns a DecompositionResult in the layer's framework and device. The result does not depend
    on the weights' scale (scaling.py); eigenvalues the working dtype cannot hold are refused with
    a ValueError.
    """
    _check_layer(layer)
    dirs = parse_directions(directions, layer.d_out)
    check_backend(eigh_backend, layer.device)
    knobs = check_krylov_knobs(block_size, max_basis, max_products, seed)
    if krylov_route not in KRYLOV_ROUTES:
        raise ValueError(f"krylov_route must be one of {KRYLOV_ROUTES}, got {krylov_route!r}")
    opts = resolve_options(layer, k, which, method, tol, dtype, dirs)
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
    solver = {"eigh": _run_eigh, "lanczos": _run_lanczos, "lowrank": _run_lowrank, "support": _run_support}[method]
    extra = {}
    # many small factorizations gain nothing from a second CPU thread and lose much on a busy
    # machine (threads.py): the order of the matrices the solver factorizes decides
    factorized = {"lowrank": 2 * layer.d_hidden, "support": 2}.get(method, d)
    with cpu_threads(factorized, layer.device):
        for start, stop, v, u, r in solver(layer, dirs, k_eff, which, work, budget, progress, tol,
                                            dict(knobs, eigh_backend=eigh_backend, krylov_route=krylov_route),
                                            extra):
            vals[start:stop] = v
            if r is not None:
                resid[start:stop] = r
            fix_signs(u, out=vecs[start:stop])

    fw = layer.framework
    on_read = extra.pop(RESIDUALS_ON_READ, None)
    metadata = {"k": k_eff, "tol": tol, "dtype": str(work).replace("torch.", ""), "has_bias": layer.has_bias,
                "seconds": round(time.perf_counter() - started, 6), **extra}
    return DecompositionResult(
        eigenvalues=to_framework(vals, fw), eigenvectors=to_framework(vecs, fw),
        residuals=(lambda: to_framework(on_read(vals, vecs), fw)) if on_read else to_framework(resid, fw),
        method=method, which=which,
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
    d = layer.d_form
    solver_bytes = dense_bytes_per_direction(d, dtype.itemsize)
    # A residual costs one GEMM of the k vectors against the formed Q: next to the solve it is
    # free for a few vectors, but for a full spectrum it is a d³ GEMM, as large as a sizeable share
    # of forming Q and of eigh; eigh is backward stable, so there they are left for the reader.
    # Read later, ‖Q‖ is the largest |λ| returned, which holds it when the selection includes both
    # ends of the spectrum (LM, BE, or everything).
    eager = _eager_residuals(d, k, which)
    for start, stop, q, e in iter_scaled_interaction_chunks(layer, dirs, dtype, budget, solver_bytes, progress,
                                                            "method='eigh'", exact_symmetry=False):
        vals, vecs, resid, norm = dense_topk(q, k, which, knobs["eigh_backend"], residuals=eager)
        yield start, stop, rescale(vals, e, norm, "the eigenvalues", start), vecs, resid
    if not eager:
        extra[RESIDUALS_ON_READ] = _residuals_on_read(layer, dirs, dtype, budget)


def _run_lowrank(layer, dirs, k, which, dtype, budget, progress, tol, knobs, extra):
    scaled = ScaledLayer(layer, dtype)
    reduction = LowRankReduction(scaled.w, scaled.v)
    per = lowrank_bytes_per_direction(layer.d_hidden, layer.d_form, k, dtype.itemsize)
    step = chunk_size(len(dirs), per, budget, "method='lowrank'")
    # the reduced residuals cost (2h)²·k a direction, as much as the lift for many pairs: left for
    # the reader on the same terms as method="eigh"
    eager = _eager_residuals(layer.d_form, k, which)
    for start in chunk_starts(len(dirs), step, progress, "lowrank"):
        sub = dirs.chunk(start, min(start + step, len(dirs)))
        c, e = scaled.coefficients(sub)
        vals, vecs, resid, norm = reduction.topk(c, k, which, residuals=eager)
        yield start, start + len(sub), rescale(vals, e + scaled.exponent, norm, "the eigenvalues", start), vecs, resid
    if not eager:
        extra[RESIDUALS_ON_READ] = _residuals_on_read(layer, dirs, dtype, budget)


def _run_support(layer, dirs, k, which, dtype, budget, progress, tol, knobs, extra):
    scaled = ScaledLayer(layer, dtype)
    largest = int(direction_support_bounds(layer, dirs).max())
    per = support_bytes_per_direction(layer.d_hidden, layer.d_form, k, largest, dtype.itemsize)
    step = chunk_size(len(dirs), per, budget, "method='support'")
    # residuals come from 2s×2s problems: always computed with the solve
    for start in chunk_starts(len(dirs), step, progress, "support"):
        sub = dirs.chunk(start, min(start + step, len(dirs)))
        c, e = scaled.coefficients(sub)
        vals, vecs, resid, norm = support_topk(scaled.w, scaled.v, c, k, which, start)
        yield start, start + len(sub), rescale(vals, e + scaled.exponent, norm, "the eigenvalues", start), vecs, resid


def _eager_residuals(d: int, k: int, which: str) -> bool:
    """Whether a direct method computes residuals with the solve: for a few pairs (cheap), or
    when the selection may miss the largest |λ| that a later computation takes as ‖Q‖."""
    return k * EAGER_RESIDUAL_RATIO <= d or (which in ("LA", "SA") and k < d)


def _run_lanczos(layer, dirs, k, which, dtype, budget, progress, tol, knobs, extra):
    d, h = layer.d_form, layer.d_hidden
    route, p = choose_krylov_route(d, h, len(dirs), k, layer.device, knobs["block_size"])
    if knobs["krylov_route"] != "auto":
        route = knobs["krylov_route"]
        if not knobs["block_size"]:
            p = min(min(CPU_BLOCK_SIZES, key=lambda q: krylov_route_cost(route, d, h, len(dirs), k, q))
                    if layer.device.type == "cpu" else default_block_size(k, d, layer.device), d)
    m = min(knobs["max_basis"] or default_max_basis(k, p, d), d)
    spent, widened = [], {}
    # both routes work on operands scaled by powers of two (scaling.py): e is each direction's
    # exponent, by which the eigenvalues are scaled back
    if route == "formed":
        per = lambda p_, m_: _krylov_state_bytes(d, k, p_, m_, dtype) + formed_bytes_per_direction(d, dtype.itemsize)  # noqa: E731
        chunks = ((start, stop, q, e, formed_apply_rows) for start, stop, q, e in iter_scaled_interaction_chunks(
            layer, dirs, dtype, budget, _krylov_state_bytes(d, k, p, m, dtype), progress, "method='lanczos'"))
    else:
        scaled = ScaledLayer(layer, dtype)
        op = MatrixFreeProduct(scaled.w, scaled.v)
        per = lambda p_, m_: _krylov_state_bytes(d, k, p_, m_, dtype) + 4 * h * p_ * dtype.itemsize  # noqa: E731
        step = min(chunk_size(len(dirs), per(p, m), budget, "method='lanczos'"), max(1, LANCZOS_MAX_COLUMNS // p))

        def matrix_free_chunks():
            for start in chunk_starts(len(dirs), step, progress, "lanczos"):
                stop = min(start + step, len(dirs))
                c, e = scaled.coefficients(dirs.chunk(start, stop))
                yield start, stop, c, e + scaled.exponent, op.apply_rows

        chunks = matrix_free_chunks()
    for start, stop, operand, e, apply_rows in chunks:
        vals, vecs, res, norms, products, blocks = _lanczos_resolving_clusters(
            apply_rows, operand, d, k, which, tol, p, m, per, budget, knobs)
        spent.append(products)
        widened.update({start + i: int(b) for i, b in enumerate(blocks.tolist()) if b > p})
        # the Krylov recurrence gives ‖Q y − θ y‖ without another product (tests hold it to the truth)
        yield start, stop, rescale(vals, e, norms, "the eigenvalues", start), vecs, res
    products = torch.cat(spent).float()
    extra.update(krylov_route=route, block_size=p, max_basis=m, products_mean=round(float(products.mean()), 1),
                 products_max=int(products.max()))
    if widened:
        # directions whose wanted eigenvalues held a cluster as wide as the block, rerun with a
        # wider one: position in the directions given -> the block size that resolved it
        extra.update(widened_block={str(i): b for i, b in sorted(widened.items())})


def _krylov_state_bytes(d, k, p, m, dtype):
    """A direction's Krylov state: the basis and T, the block and its product, the final vectors."""
    return (d * m + m * m + 2 * d * p + 2 * d * k) * dtype.itemsize


def _lanczos_resolving_clusters(apply_rows, operand, d, k, which, tol, p, m, bytes_per, budget, knobs):
    """krylov_topk on `operand` (coefficient rows c for the matrix-free product, formed Q for the
    formed one), rerun with a doubled block for the directions whose wanted eigenvalues hold a
    cluster (values equal within their residual bounds) as wide as the block: a block of p
    vectors finds at most p copies of an eigenvalue, so a cluster of p may be part of a larger
    one whose other copies belong among the k wanted. Once the block is wider than k no wanted
    cluster can fill it. `bytes_per(p, m)` is a direction's memory at block p and basis m.
    Returns values, vectors, residuals, ‖Q‖ estimates, products (each direction's total over its
    runs) and the block size that settled each direction."""
    run = krylov_topk(apply_rows, operand, d, k, which, tol, block_size=p, max_basis=m,
                      max_products=knobs["max_products"], seed=knobs["seed"])
    vals, vecs, res, norms, products = run.values, run.vectors, run.residuals, run.norms, run.products.clone()
    blocks = torch.full((operand.shape[0],), p, dtype=torch.int64)
    # only converged directions are judged: an unconverged one has been warned about, and its
    # loose residual bounds would chain unrelated values into one "cluster"
    converged = lambda r: (r.residuals <= tol).all(-1).cpu()  # noqa: E731
    suspect = (run.largest_cluster.cpu() >= p) & converged(run)
    while bool(suspect.any()) and p <= k and p < d:
        p = min(2 * p, k + 1, d)
        m = min(max(knobs["max_basis"] or 0, default_max_basis(k, p, d)), d)
        rows = torch.nonzero(suspect).flatten()
        step = min(chunk_size(len(rows), bytes_per(p, m), budget, "method='lanczos'"),
                   max(1, LANCZOS_MAX_COLUMNS // p))
        still = torch.zeros_like(suspect)
        for first in range(0, len(rows), step):
            ids = rows[first:first + step]
            at = ids.to(operand.device)
            again = krylov_topk(apply_rows, operand[at], d, k, which, tol, block_size=p, max_basis=m,
                                max_products=knobs["max_products"], seed=knobs["seed"] + 1)
            vals[at], vecs[at], res[at], norms[at] = again.values, again.vectors, again.residuals, again.norms
            products[at] += again.products
            blocks[ids] = p
            still[ids] = (again.largest_cluster.cpu() >= p) & converged(again)
        suspect = still
    return vals, vecs, res, norms, products, blocks


def _residuals_on_read(layer, dirs, dtype, budget):
    """A function (values, vectors) -> relative residuals ‖Q v − λ v‖ / ‖Q‖ (b, k), by one
    matrix-free product per vector (8·h·d flops each), chunked under `budget`: what a direct
    method's result computes when its residuals are first read. ‖Q‖ is taken as the largest
    |λ| of the values, so they must include both ends of each spectrum. The product runs on the
    operands scaled by powers of two, against the values scaled the same way, so that nothing
    overflows or underflows whatever the weights' scale (scaling.py)."""
    @torch.no_grad()  # read outside decompose's no_grad, from weights that may be Parameters
    def compute(vals, vecs):
        scaled = ScaledLayer(layer, dtype)
        op = InteractionOperator(scaled.w, scaled.v)
        b, d, k = vecs.shape
        out = torch.empty(b, k, dtype=dtype, device=vals.device)
        per = (2 * op.h * k + 3 * d * k) * dtype.itemsize
        step = chunk_size(b, per, budget, "computing residuals")
        for start in range(0, b, step):
            stop = min(start + step, b)
            c, e = scaled.coefficients(dirs.chunk(start, stop))
            sub_vals = times_power_of_two_(vals[start:stop].clone(), -(e + scaled.exponent)[:, None])
            out[start:stop] = _residuals(op, c, sub_vals, vecs[start:stop], sub_vals.abs().amax(-1))
        return out
    return compute


def _residuals(op: InteractionOperator, c, vals, vecs, norm) -> torch.Tensor:
    """True relative residuals ‖Q v − λ v‖ / ‖Q‖ by one matrix-free product per vector."""
    r = torch.linalg.vector_norm(op.apply(c, vecs) - vecs * vals[:, None, :], dim=-2)
    return r / torch.where(norm > 0, norm, torch.ones_like(norm))[:, None]
