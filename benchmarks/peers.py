"""Every way of getting the top eigenpairs of Q(u) that the suite measures, on the same data.

The peer: what the published research code runs, rebuilt from the math and from what that code
is documented to do, plus the plain route a user would write. For each workload "the peer" is the
fastest of these that applies, measured in the same run (targets.peer_row):
  published-tensor   the image-model route: einsum the whole o×d×d interaction tensor, symmetrize,
                     batched eigh, select. Applies only where it is not more work than forming Q
                     per direction: output indices covering every output, or float directions
                     numerous enough that o·h + b·o ≤ b·h. Never where only some outputs are wanted.
  published-batched  the SAE/vocabulary route: per batch of 32 directions one einsum over
                     (W, V, P, u) with opt_einsum choosing the contraction order (without it
                     torch.einsum forms an h×d×d intermediate), symmetrize, batched eigh, select
  plain              per direction: Q by einsum, symmetrize, torch.linalg.eigh, select
Other tools (shown beside the peer, never part of it; not run by default):
  torch-eigh     torch.linalg.eigh on Q formed by bilinear_kernels (isolates the solver)
  torch-lobpcg   torch.lobpcg on formed Q, a largest and a smallest run merged for |λ| (needs d ≥ 3k)
  scipy-eigsh    scipy.sparse.linalg.eigsh (ARPACK) on formed Q, per direction (CPU)
  scipy-eigsh-mf the same on a matrix-free LinearOperator (CPU)
  cupy-eigh      cupy.linalg.eigh on formed Q, batched (CUDA, when CuPy is installed)
  cupyx-eigsh    cupyx.scipy.sparse.linalg.eigsh on formed Q (CUDA, when CuPy is installed)
Ours: bilinear_kernels.decompose with method "auto", "eigh", "lanczos" and "lowrank" (2h < d only).

Every method returns values (b, k) and unit vectors (b, d, k) on the workload's device. Methods
that loop over directions stop at the time cap; each has an up-front memory estimate, and a
method that cannot fit or does not apply raises, which the harness turns into a row saying why.
"""
from __future__ import annotations

import importlib
import warnings
from dataclasses import dataclass

import numpy as np
import torch

import bilinear_kernels as bk
from bilinear_kernels.memory import format_bytes, memory_budget

from .measure import Deadline, NotApplicable, OutOfMemory, Solution, free_bytes
from .workloads import Workload, coefficients

FLOAT32 = 4
# directions per chunk for batched solvers: small enough that the time cap is checked often
MAX_CHUNK = 256
# directions per einsum in the published batched route (its `Tracer.compute` default)
PUBLISHED_BATCH = 32


@dataclass
class Context:
    """One workload's data, shared by every method."""

    workload: Workload
    layer: bk.BilinearLayer        # float32, on `device`
    directions: torch.Tensor       # int64 (b,) output indices or float32 (b, o) unit rows
    device: str
    tol: float = 1e-4              # residual tolerance asked of iterative solvers
    seed: int = 0
    cpu_peers: bool = True         # run the CPU-only (SciPy) peers in a CUDA run too

    @property
    def b(self) -> int:
        return len(self.directions)

    @property
    def output_bytes(self) -> int:
        w = self.workload
        return self.b * (w.d + 1) * w.k_eff * FLOAT32


class Method:
    name = ""
    label = ""
    family = "peer"  # "peer" (a route the peer is the fastest of), "tool" or "ours"
    # True when the warm-up run differs from a timed run (so it never counts as a sample)
    warmup_differs = False

    def skip_reason(self, ctx: Context) -> str | None:
        return None

    def bytes_needed(self, ctx: Context) -> int:
        """Up-front estimate of the least memory a run needs (one chunk and the outputs)."""
        return ctx.output_bytes

    def solve(self, ctx: Context, deadline: Deadline, warmup: bool) -> Solution:
        raise NotImplementedError

    def __call__(self, ctx: Context, time_cap: float, warmup: bool = False) -> Solution:
        reason = self.skip_reason(ctx)
        if reason:
            raise NotApplicable(reason)
        need, free = self.bytes_needed(ctx), free_bytes(ctx.device)
        if need > free:
            raise OutOfMemory(f"needs about {format_bytes(need)} by an up-front estimate, "
                              f"{format_bytes(free)} free on {ctx.device}")
        return self.solve(ctx, Deadline(time_cap, ctx.b), warmup)


class _Output:
    """The (b, k) values and (b, d, k) vectors being filled chunk by chunk."""

    def __init__(self, ctx: Context):
        w = ctx.workload
        self.values = torch.empty(ctx.b, w.k_eff, device=ctx.device)
        self.vectors = torch.empty(ctx.b, w.d, w.k_eff, device=ctx.device)

    def put(self, start: int, values: torch.Tensor, vectors: torch.Tensor) -> None:
        n = values.shape[0]
        self.values[start:start + n] = values
        self.vectors[start:start + n] = vectors

    def solution(self, **extra) -> Solution:
        return Solution(self.values, self.vectors, extra)


def select_by_magnitude(values: torch.Tensor, vectors: torch.Tensor, k: int):
    """The k pairs of largest |λ| from eigh's output: values (n, d), vectors (n, d, d)."""
    idx = torch.argsort(values.abs(), dim=-1, descending=True, stable=True)[..., :k]
    vecs = torch.gather(vectors, -1, idx[..., None, :].expand(*vectors.shape[:-1], k))
    return torch.gather(values, -1, idx), vecs


def _chunk(ctx: Context, bytes_per_direction: int) -> int:
    budget = memory_budget(torch.device(ctx.device))
    return max(1, min(MAX_CHUNK, ctx.b, budget // max(1, bytes_per_direction)))


def _cpu_only(ctx: Context) -> str | None:
    if ctx.device.startswith("cuda") and not ctx.cpu_peers:
        return "a CPU-only peer; pass --cpu-peers to include it in a CUDA run"
    return None


# -- the peer: the published routes and the plain one --------------------------------------------
def _eigh_select(q: torch.Tensor, k: int):
    """Symmetrize (b, d, d), full torch.linalg.eigh, keep the k pairs of largest |λ|."""
    return select_by_magnitude(*torch.linalg.eigh(0.5 * (q + q.mT)), k)


def tensor_route_applies(w: Workload) -> bool:
    """Whether einsum-forming the whole tensor is no more work than forming each Q: for output
    indices only when every output is wanted; for float directions when o·h + b·o ≤ b·h (the
    tensor, then Q = Σ_a u_a S[a] per direction, against one h-long contraction per direction)."""
    if w.directions == "indices":
        return w.n_directions >= w.o
    return w.o * w.h + w.n_directions * w.o <= w.n_directions * w.h


class PublishedTensor(Method):
    name = "published-tensor"
    label = "published: whole-tensor einsum + eigh"

    @staticmethod
    def tensor_bytes(w: Workload) -> int:
        # einsum's (o, h, d) intermediate of P and W, the tensor B and its symmetric part
        return (w.o * w.h * w.d + 2 * w.o * w.d * w.d) * FLOAT32

    def skip_reason(self, ctx):
        w = ctx.workload
        if not tensor_route_applies(w):
            return ("only some outputs are wanted: the whole tensor is more work than Q per direction "
                    f"(o = {w.o}, h = {w.h}, {w.n_directions} {w.directions})")
        return None

    def bytes_needed(self, ctx):
        return ctx.output_bytes + self.tensor_bytes(ctx.workload)

    def solve(self, ctx, deadline, warmup):
        w, layer, dirs = ctx.workload, ctx.layer, ctx.directions
        out = _Output(ctx)
        tensor = torch.einsum("ak,ki,kj->aij", layer.p, layer.w, layer.v)
        sym = 0.5 * (tensor + tensor.mT)
        del tensor
        step = _chunk(ctx, 4 * w.d * w.d * FLOAT32)
        for start in range(0, ctx.b, step):
            deadline.check(start)
            sel = dirs[start:start + step]
            q = sym[sel] if dirs.dtype == torch.int64 else torch.einsum("bo,oij->bij", sel, sym)
            out.put(start, *select_by_magnitude(*torch.linalg.eigh(q), w.k_eff))
        return out.solution()


def opt_einsum_available() -> bool:
    return bool(torch.backends.opt_einsum.is_available())


class PublishedBatched(Method):
    name = "published-batched"
    label = f"published: opt_einsum in batches of {PUBLISHED_BATCH} + eigh"

    def skip_reason(self, ctx):
        if not opt_einsum_available():
            return ("opt_einsum is not installed (pip install opt-einsum): the published batched route "
                    "relies on it, and without it torch.einsum forms an h×d×d intermediate")
        return None

    def bytes_needed(self, ctx):
        w = ctx.workload
        b = min(PUBLISHED_BATCH, ctx.b)
        # the (b, h, d) intermediate opt_einsum's order makes, Q and eigh's output
        return ctx.output_bytes + b * (w.h * w.d + 4 * w.d * w.d) * FLOAT32

    def solve(self, ctx, deadline, warmup):
        w, layer, dirs = ctx.workload, ctx.layer, ctx.directions
        out = _Output(ctx)
        for start in range(0, ctx.b, PUBLISHED_BATCH):
            deadline.check(start)
            sel = dirs[start:start + PUBLISHED_BATCH]
            if dirs.dtype == torch.int64:
                q = torch.einsum("mi,mj,bm->bij", layer.w, layer.v, layer.p[sel])
            else:
                q = torch.einsum("mi,mj,om,bo->bij", layer.w, layer.v, layer.p, sel)
            out.put(start, *_eigh_select(q, w.k_eff))
        return out.solution()


class PlainPerDirection(Method):
    name = "plain"
    label = "plain: einsum Q per direction + eigh"

    def bytes_needed(self, ctx):
        w = ctx.workload
        return ctx.output_bytes + (w.h * w.d + 4 * w.d * w.d) * FLOAT32

    def solve(self, ctx, deadline, warmup):
        w, layer, dirs = ctx.workload, ctx.layer, ctx.directions
        out = _Output(ctx)
        for i in range(ctx.b):
            deadline.check(i)
            c = layer.p[dirs[i]] if dirs.dtype == torch.int64 else dirs[i] @ layer.p
            q = torch.einsum("k,ki,kj->ij", c, layer.w, layer.v)
            out.put(i, *_eigh_select(q[None], w.k_eff))
        return out.solution()


# -- torch ---------------------------------------------------------------------------------------
class TorchEigh(Method):
    family = "tool"
    name = "torch-eigh"
    label = "torch.linalg.eigh on our Q"

    def bytes_needed(self, ctx):
        w = ctx.workload
        return ctx.output_bytes + (w.h * w.d + 5 * w.d * w.d) * FLOAT32

    def solve(self, ctx, deadline, warmup):
        w = ctx.workload
        out = _Output(ctx)
        step = _chunk(ctx, (w.h * w.d + 5 * w.d * w.d) * FLOAT32)
        for start in range(0, ctx.b, step):
            deadline.check(start)
            q = bk.interaction_matrices(ctx.layer, ctx.directions[start:start + step])
            out.put(start, *select_by_magnitude(*torch.linalg.eigh(q), w.k_eff))
        return out.solution()


class TorchLobpcg(Method):
    family = "tool"
    name = "torch-lobpcg"
    label = "torch.lobpcg, largest + smallest merged"

    def skip_reason(self, ctx):
        w = ctx.workload
        if w.k is None:
            return "LOBPCG finds a few extreme pairs; this workload asks for the full spectrum"
        if w.d < 3 * w.k:
            return f"torch.lobpcg needs d ≥ 3k, got d = {w.d}, k = {w.k}"
        return None

    def bytes_needed(self, ctx):
        w = ctx.workload
        return ctx.output_bytes + (w.h * w.d + 2 * w.d * w.d + 12 * w.d * w.k) * FLOAT32

    def solve(self, ctx, deadline, warmup):
        w = ctx.workload
        out = _Output(ctx)
        gen = torch.Generator(device=ctx.device).manual_seed(ctx.seed)
        for i in range(ctx.b):
            deadline.check(i)
            q = bk.interaction_matrices(ctx.layer, ctx.directions[i:i + 1])[0]
            start = torch.randn(w.d, w.k, generator=gen, device=ctx.device)
            hi_vals, hi_vecs = torch.lobpcg(q, k=w.k, X=start.clone(), largest=True, tol=ctx.tol, method="ortho")
            lo_vals, lo_vecs = torch.lobpcg(q, k=w.k, X=start.clone(), largest=False, tol=ctx.tol, method="ortho")
            vals = torch.cat([hi_vals, lo_vals])[None]
            vecs = torch.cat([hi_vecs, lo_vecs], dim=1)[None]
            out.put(i, *select_by_magnitude(vals, vecs, w.k))
        return out.solution()


# -- SciPy (CPU) ---------------------------------------------------------------------------------
def _eigsh_skip(ctx: Context, what: str) -> str | None:
    w = ctx.workload
    if w.k is None or w.k >= w.d:
        return f"{what} needs k < d; this workload asks for the full spectrum"
    return _cpu_only(ctx)


def _start_vectors(ctx: Context) -> np.ndarray:
    """ARPACK's starting vectors, one per direction, from the run's seed (reproducible runs)."""
    rng = np.random.default_rng(ctx.seed)
    return rng.standard_normal((ctx.b, ctx.workload.d)).astype(np.float32)


def _to_device(ctx: Context, vals: np.ndarray, vecs: np.ndarray, k: int):
    v = torch.from_numpy(np.ascontiguousarray(vals, dtype=np.float32))[None].to(ctx.device)
    x = torch.from_numpy(np.ascontiguousarray(vecs, dtype=np.float32))[None].to(ctx.device)
    return select_by_magnitude(v, x, k)


class ScipyEigsh(Method):
    family = "tool"
    name = "scipy-eigsh"
    label = "scipy eigsh (ARPACK), formed Q"

    def skip_reason(self, ctx):
        return _eigsh_skip(ctx, "scipy.sparse.linalg.eigsh")

    def bytes_needed(self, ctx):
        w = ctx.workload
        return ctx.output_bytes + (w.h * w.d + 2 * w.d * w.d) * FLOAT32

    def solve(self, ctx, deadline, warmup):
        from scipy.sparse.linalg import eigsh

        w = ctx.workload
        layer = ctx.layer.to("cpu")
        dirs = ctx.directions.cpu()
        starts = _start_vectors(ctx)
        out = _Output(ctx)
        for i in range(ctx.b):
            deadline.check(i)
            q = bk.interaction_matrices(layer, dirs[i:i + 1])[0].numpy()
            vals, vecs = eigsh(q, k=w.k, which="LM", tol=ctx.tol, v0=starts[i])
            out.put(i, *_to_device(ctx, vals, vecs, w.k))
        return out.solution()


class ScipyEigshMatrixFree(Method):
    family = "tool"
    name = "scipy-eigsh-mf"
    label = "scipy eigsh (ARPACK), matrix-free"

    def skip_reason(self, ctx):
        return _eigsh_skip(ctx, "scipy.sparse.linalg.eigsh")

    def bytes_needed(self, ctx):
        w = ctx.workload
        return ctx.output_bytes + (3 * w.h * w.d + 4 * w.h) * FLOAT32

    def solve(self, ctx, deadline, warmup):
        from scipy.sparse.linalg import LinearOperator, eigsh

        w = ctx.workload
        wt = ctx.layer.w.cpu().numpy()
        vt = ctx.layer.v.cpu().numpy()
        coeffs = coefficients(ctx.layer, ctx.directions).cpu().numpy()
        starts = _start_vectors(ctx)
        out = _Output(ctx)
        for i in range(ctx.b):
            deadline.check(i)
            half_c = 0.5 * coeffs[i]

            def matvec(x, half_c=half_c):
                x = x.reshape(-1)
                return wt.T @ (half_c * (vt @ x)) + vt.T @ (half_c * (wt @ x))

            op = LinearOperator((w.d, w.d), matvec=matvec, dtype=np.float32)
            vals, vecs = eigsh(op, k=w.k, which="LM", tol=ctx.tol, v0=starts[i])
            out.put(i, *_to_device(ctx, vals, vecs, w.k))
        return out.solution()


# -- CuPy (CUDA) ---------------------------------------------------------------------------------
_CUPY = {}


def cupy_module():
    """CuPy with its allocations routed through torch's allocator (so peak memory counts them),
    or None when it is not installed or has no usable GPU."""
    if "module" in _CUPY:
        return _CUPY["module"]
    try:
        cupy = importlib.import_module("cupy")
        cupy.cuda.runtime.getDeviceCount()

        def torch_allocator(size: int):
            block = torch.empty(max(1, size), dtype=torch.uint8, device="cuda")
            memory = cupy.cuda.UnownedMemory(block.data_ptr(), size, block)
            return cupy.cuda.MemoryPointer(memory, 0)

        cupy.cuda.set_allocator(torch_allocator)
    except Exception:  # noqa: BLE001 - any failure means CuPy is not usable here
        cupy = None
    _CUPY["module"] = cupy
    return cupy


def _cupy_skip(ctx: Context) -> str | None:
    if not ctx.device.startswith("cuda"):
        return "a CUDA peer; this run is on the CPU"
    if cupy_module() is None:
        return "CuPy is not installed (or cannot see the GPU)"
    return None


class CupyEigh(Method):
    family = "tool"
    name = "cupy-eigh"
    label = "cupy.linalg.eigh on our Q"

    def skip_reason(self, ctx):
        return _cupy_skip(ctx)

    def bytes_needed(self, ctx):
        w = ctx.workload
        return ctx.output_bytes + (w.h * w.d + 5 * w.d * w.d) * FLOAT32

    def solve(self, ctx, deadline, warmup):
        cupy = cupy_module()
        w = ctx.workload
        out = _Output(ctx)
        step = _chunk(ctx, (w.h * w.d + 5 * w.d * w.d) * FLOAT32)
        for start in range(0, ctx.b, step):
            deadline.check(start)
            q = bk.interaction_matrices(ctx.layer, ctx.directions[start:start + step])
            vals, vecs = cupy.linalg.eigh(cupy.from_dlpack(q))
            out.put(start, *select_by_magnitude(torch.from_dlpack(vals), torch.from_dlpack(vecs), w.k_eff))
        return out.solution()


class CupyxEigsh(Method):
    family = "tool"
    name = "cupyx-eigsh"
    label = "cupyx eigsh, formed Q"

    def skip_reason(self, ctx):
        w = ctx.workload
        if w.k is None or w.k >= w.d:
            return "cupyx.scipy.sparse.linalg.eigsh needs k < d; this workload asks for the full spectrum"
        return _cupy_skip(ctx)

    def bytes_needed(self, ctx):
        w = ctx.workload
        return ctx.output_bytes + (w.h * w.d + 3 * w.d * w.d) * FLOAT32

    def solve(self, ctx, deadline, warmup):
        cupy = cupy_module()
        from cupyx.scipy.sparse.linalg import eigsh

        w = ctx.workload
        out = _Output(ctx)
        for i in range(ctx.b):
            deadline.check(i)
            q = bk.interaction_matrices(ctx.layer, ctx.directions[i:i + 1])[0]
            vals, vecs = eigsh(cupy.from_dlpack(q), k=w.k, which="LM", tol=ctx.tol)
            out.put(i, *select_by_magnitude(torch.from_dlpack(vals)[None], torch.from_dlpack(vecs)[None], w.k))
        return out.solution()


# -- ours ----------------------------------------------------------------------------------------
class Ours(Method):
    """bk.decompose. Its warm-up splits the directions into WARMUP_SPLITS calls so the time cap can
    stop a slow method; timed runs are one call over all directions, as a user would make."""

    family = "ours"
    warmup_differs = True
    WARMUP_SPLITS = 8

    def __init__(self, method: str):
        self.method = method
        self.name = f"ours-{method}"
        self.label = f"bk.decompose, method={method!r}"

    def skip_reason(self, ctx):
        w = ctx.workload
        if self.method == "lowrank" and 2 * w.h >= w.d:
            return f"method='lowrank' needs 2h < d, got h = {w.h}, d = {w.d}"
        return None

    def _decompose(self, ctx, directions):
        w = ctx.workload
        return bk.decompose(ctx.layer, directions, k=w.k, which=w.which, method=self.method,
                            tol=ctx.tol, progress=False)

    def solve(self, ctx, deadline, warmup):
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always", bk.ConvergenceWarning)
            if warmup:
                out, runs = _Output(ctx), []
                step = -(-ctx.b // self.WARMUP_SPLITS)
                for start in range(0, ctx.b, step):
                    deadline.check(start)
                    res = self._decompose(ctx, ctx.directions[start:start + step])
                    out.put(start, res.eigenvalues, res.eigenvectors)
                    runs.append((len(res), res.metadata))
                values, vectors = out.values, out.vectors
            else:
                res = self._decompose(ctx, ctx.directions)
                values, vectors, runs = res.eigenvalues, res.eigenvectors, [(len(res), res.metadata)]
        extra = {"method_ran": res.method, **_krylov_counts(runs)}
        notes = sorted({str(c.message) for c in caught if issubclass(c.category, bk.ConvergenceWarning)})
        if notes:
            extra["warnings"] = notes
        return Solution(values, vectors, extra)


def _krylov_counts(runs: list[tuple[int, dict]]) -> dict:
    """The Krylov solver's settings and products per direction, pooled over (count, metadata) calls."""
    meta = [(n, m) for n, m in runs if "products_mean" in m]
    if not meta:
        return {}
    total = sum(n for n, _ in meta)
    return {"block_size": meta[0][1]["block_size"], "max_basis": meta[0][1]["max_basis"],
            "products_mean": round(sum(n * m["products_mean"] for n, m in meta) / total, 1),
            "products_max": max(m["products_max"] for _, m in meta)}


OURS_METHODS = ("auto", "eigh", "lanczos", "lowrank")


def all_methods() -> list[Method]:
    """Every method in table order: the peer's routes, the other tools, then ours."""
    return [PublishedTensor(), PublishedBatched(), PlainPerDirection(), TorchEigh(), TorchLobpcg(),
            ScipyEigsh(), ScipyEigshMatrixFree(), CupyEigh(), CupyxEigsh()] + [Ours(m) for m in OURS_METHODS]


def method_names() -> list[str]:
    return [m.name for m in all_methods()]


def default_method_names() -> list[str]:
    """What a run measures unless told otherwise: the peer's routes and ours."""
    return [m.name for m in all_methods() if m.family != "tool"]
