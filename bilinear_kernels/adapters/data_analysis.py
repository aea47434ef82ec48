"""Data-side analysis of a decomposition: how its eigenvectors act on real inputs.

For each direction u (a row of the result) and each input x, the eigenvector activations are
a_i(x) = λ_i (v_iᵀ x)², and Σ_i a_i(x) = uᵀ f(x) over the full spectrum. Keeping the top k
(the result's order: most important first) gives the truncated reconstruction r_k(x).

  truncation_curve(result, inputs, ks, targets=None)   per k: error and correlation of r_k
                                                         against the true output, and accuracy
  top_activations(result, inputs, n)                    the n inputs exciting each eigenvector most

Both stream over the inputs in chunks (one (rows, b, k) block at a time, under `max_memory`),
accumulate in float64, and run on the GPU when there is one. Inputs are a tensor or array
(n, d), or an iterable of batches: tensors, (inputs, targets) tuples, or dicts with "inputs" and
optionally "targets" and "reference". For a biased layer (eigenvectors of length d + 1) the
inputs are [x, 1], as for `DecompositionResult.activations`.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Iterable, Iterator

import numpy as np
import torch

from ..memory import memory_budget
from ..result import DecompositionResult

DEFAULT_MAX_MEMORY = 512 * 2**20


@dataclass
class TruncationCurve:
    """Per k (rows) and direction (columns), against the true outputs uᵀ f(x).

    ks              (m,) the numbers of eigenpairs kept
    relative_error  (m, b) ‖r_k − uᵀf‖ / ‖uᵀf‖ over the inputs, per direction
    correlation     (m, b) Pearson correlation of r_k with uᵀf over the inputs (NaN where either
                    is constant)
    total_error     (m,) the relative error over every input and direction together
    accuracy        (m,) fraction of inputs whose argmax over directions of r_k is the target
                    (None without targets)
    rows            number of inputs seen
    """

    ks: torch.Tensor
    relative_error: torch.Tensor
    correlation: torch.Tensor
    total_error: torch.Tensor
    accuracy: torch.Tensor | None
    rows: int

    def records(self) -> list[dict]:
        """One dict per k: k, relative_error (total), mean_correlation, and accuracy when known."""
        out = []
        for i, k in enumerate(self.ks.tolist()):
            rec = {"k": int(k), "relative_error": float(self.total_error[i]),
                   "mean_correlation": float(np.nanmean(self.correlation[i].numpy()))
                   if bool(torch.isfinite(self.correlation[i]).any()) else float("nan")}
            if self.accuracy is not None:
                rec["accuracy"] = float(self.accuracy[i])
            out.append(rec)
        return out


@dataclass
class TopActivations:
    """values (b, k, n): the n largest-|activation| values λ_i (v_iᵀ x)² of each eigenvector,
    largest first; indices (b, k, n): their rows' positions in the input stream (0-based)."""

    values: torch.Tensor
    indices: torch.Tensor


def truncation_curve(result: DecompositionResult, inputs, ks, targets=None, *, reference=None,
                     device=None, max_memory: int | None = DEFAULT_MAX_MEMORY) -> TruncationCurve:
    """How well the top-k eigenpairs of each direction rebuild its output, for each k in `ks`.

    result     a DecompositionResult, eigenpairs most important first
    inputs     (n, d) rows, or an iterable of batches (module docstring)
    ks         an int or a sequence of ints in 1..result.k
    targets    (n,) class labels: accuracy of the argmax over directions (labels are output indices
               when the result was computed for index directions, else row numbers of the result)
    reference  (n, b) true outputs uᵀ f(x); default: the sum over the full spectrum, which is exact
               and needs the result to hold every eigenpair (k = d, or d + 1 with biases)
    device     where to compute (default: the result's device, or the GPU when there is one)
    """
    vals, vecs, dev = _spectrum(result, device)
    b, d, k_max = vecs.shape
    ks_t = _check_ks(ks, k_max)
    full = k_max == d
    m = len(ks_t)
    idx = (ks_t - 1).to(dev)
    indices = None if result.indices is None else torch.as_tensor(result.indices).to(dev).long()
    k_top = int(ks_t.max())
    flats = {}  # (d, b·k) copies of the eigenvectors, built only for the route a batch takes

    def activations(x, upto):
        if upto not in flats:
            flats[upto] = _flat(vecs[..., :upto])
        return _activations(x, flats[upto], vals[:, :upto])

    sq_err = torch.zeros(m, b, dtype=torch.float64, device=dev)
    moments = _CoMoments(m, b, dev)
    correct = torch.zeros(m, dtype=torch.float64, device=dev)
    rows = labelled_rows = 0
    for x, y, ref in _chunks(inputs, targets, reference, d, b, k_max, dev, vals.dtype, max_memory):
        # with the true outputs given, eigenpairs past the largest k are not needed
        acts = activations(x, k_max if ref is None else k_top)
        partial = acts.cumsum(-1).index_select(-1, idx).double()  # (n, b, m)
        if ref is None:
            if not full:
                raise ValueError(
                    f"the result holds {k_max} of {d} eigenpairs, so the true output is not their sum: "
                    "pass reference= (n, b) true outputs uᵀ f(x), or decompose with k=None")
            ref = acts.sum(-1)
        ref = ref.double()
        sq_err += ((partial - ref[..., None]) ** 2).sum(0).T
        moments.add(partial.permute(0, 2, 1), ref)
        if y is not None:
            pred = partial.argmax(1)  # (n, m)
            if indices is not None:
                pred = indices[pred]
            correct += (pred == y[:, None]).double().sum(0)
            labelled_rows += x.shape[0]
        rows += x.shape[0]
    if rows == 0:
        raise ValueError("inputs is empty: no rows to evaluate")
    if 0 < labelled_rows < rows:
        raise ValueError(f"targets were given for {labelled_rows} of {rows} input rows: give them for every batch or none")
    labelled = labelled_rows > 0

    ref_sq = moments.sum_sq_t.clamp_min(torch.finfo(torch.float64).tiny)
    rel = (sq_err / ref_sq).sqrt()
    total = (sq_err.sum(1) / ref_sq.sum()).sqrt()
    return TruncationCurve(ks=ks_t, relative_error=rel.cpu(), correlation=moments.correlation().cpu(), total_error=total.cpu(),
                           accuracy=(correct / rows).cpu() if labelled else None, rows=rows)


def top_activations(result: DecompositionResult, inputs, n: int, *, k: int | None = None, device=None,
                    max_memory: int | None = DEFAULT_MAX_MEMORY) -> TopActivations:
    """The n inputs with the largest |λ_i (v_iᵀ x)²| for each direction and each of its first k
    eigenvectors (default: all the result holds), streamed over `inputs`."""
    vals, vecs, dev = _spectrum(result, device)
    b, d, k_max = vecs.shape
    if k is not None:
        if isinstance(k, bool) or not isinstance(k, (int, np.integer)) or not 1 <= k <= k_max:
            raise ValueError(f"k must be an int in 1..{k_max} (the eigenpairs the result holds), got {k!r}")
        vals, vecs = vals[:, :k], vecs[..., :k]
    if isinstance(n, bool) or not isinstance(n, (int, np.integer)) or n < 1:
        raise ValueError(f"n must be a positive int, got {n!r}")
    k_eff = vecs.shape[-1]
    flat = _flat(vecs)
    best_vals = torch.empty(b, k_eff, 0, dtype=vals.dtype, device=dev)
    best_idx = torch.empty(b, k_eff, 0, dtype=torch.int64, device=dev)
    start = 0
    for x, _, _ in _chunks(inputs, None, None, d, b, k_eff + n, dev, vals.dtype, max_memory):
        acts = _activations(x, flat, vals).permute(1, 2, 0)  # (b, k, rows)
        # the batch's own top n first, then merged with the running top n: 2n candidates a pair
        batch_top = acts.abs().topk(min(n, acts.shape[-1]), dim=-1).indices
        cand_vals = torch.cat([best_vals, acts.gather(-1, batch_top)], -1)
        cand_idx = torch.cat([best_idx, batch_top + start], -1)
        order = cand_vals.abs().topk(min(n, cand_vals.shape[-1]), dim=-1).indices
        best_vals, best_idx = cand_vals.gather(-1, order), cand_idx.gather(-1, order)
        start += x.shape[0]
    if start == 0:
        raise ValueError("inputs is empty: no rows to rank")
    return TopActivations(values=best_vals.cpu(), indices=best_idx.cpu())


class _CoMoments:
    """Streamed means, variances and covariance of r (rows, m, b) against t (rows, b), merged
    batch by batch (Chan et al.'s pairwise update, stable where raw sums would cancel)."""

    def __init__(self, m, b, dev):
        zeros = dict(dtype=torch.float64, device=dev)
        self.n = 0
        self.mean_r, self.m2_r, self.cov = (torch.zeros(m, b, **zeros) for _ in range(3))
        self.mean_t, self.m2_t = torch.zeros(b, **zeros), torch.zeros(b, **zeros)
        self.sum_sq_t = torch.zeros(b, **zeros)

    def add(self, r, t):
        nb = r.shape[0]
        if nb == 0:
            return
        mean_r, mean_t = r.mean(0), t.mean(0)
        dr, dt = r - mean_r, t - mean_t
        m2_r, m2_t = (dr ** 2).sum(0), (dt ** 2).sum(0)
        cov = (dr * dt[:, None, :]).sum(0)
        n = self.n + nb
        delta_r, delta_t = mean_r - self.mean_r, mean_t - self.mean_t
        w = self.n * nb / n
        self.cov += cov + delta_r * delta_t * w
        self.m2_r += m2_r + delta_r ** 2 * w
        self.m2_t += m2_t + delta_t ** 2 * w
        self.mean_r += delta_r * nb / n
        self.mean_t += delta_t * nb / n
        self.sum_sq_t += (t ** 2).sum(0)
        self.n = n

    def correlation(self) -> torch.Tensor:
        """(m, b) Pearson correlations; NaN where r or t does not vary."""
        denom = (self.m2_r * self.m2_t).sqrt()
        tiny = torch.finfo(torch.float64).eps * (self.m2_r.abs().max() * self.m2_t.abs().max()).sqrt()
        corr = (self.cov / denom).clamp(-1, 1)
        return torch.where(denom > tiny, corr, torch.full_like(corr, float("nan")))


# -- shared pieces ----------------------------------------------------------------------------
def _spectrum(result, device):
    if not isinstance(result, DecompositionResult):
        raise TypeError(f"result must be a DecompositionResult, got {type(result).__name__}")
    vecs = _as_torch(result.eigenvectors)
    vals = _as_torch(result.eigenvalues)
    if device is None:
        device = vecs.device if vecs.device.type != "cpu" else ("cuda" if torch.cuda.is_available() else "cpu")
    dev = torch.device(device)
    dtype = torch.float64 if vecs.dtype == torch.float64 else torch.float32
    return vals.to(device=dev, dtype=dtype), vecs.to(device=dev, dtype=dtype), dev


def _flat(vecs: torch.Tensor) -> torch.Tensor:
    """(d, b·k): every eigenvector of every direction as a column, so that the projections of a
    batch are one GEMM (einsum's batched route over b is many times slower on CPU)."""
    b, d, k = vecs.shape
    return vecs.permute(1, 0, 2).reshape(d, b * k)


def _activations(x: torch.Tensor, flat: torch.Tensor, vals: torch.Tensor) -> torch.Tensor:
    """λ_i (v_iᵀ x)² for every row, direction and eigenpair: (rows, b, k)."""
    b, k = vals.shape
    return vals[None] * (x @ flat).reshape(x.shape[0], b, k) ** 2


def _check_ks(ks, k_max) -> torch.Tensor:
    if isinstance(ks, (int, np.integer)) and not isinstance(ks, bool):
        ks = [int(ks)]
    try:
        ks_t = torch.as_tensor(list(ks), dtype=torch.int64)
    except (TypeError, ValueError):
        raise TypeError(f"ks must be an int or a sequence of ints, got {ks!r}") from None
    if ks_t.ndim != 1 or ks_t.numel() == 0:
        raise ValueError(f"ks must be a non-empty sequence of ints, got {ks!r}")
    bad = (ks_t < 1) | (ks_t > k_max)
    if bool(bad.any()):
        raise ValueError(f"ks must lie in 1..{k_max} (the eigenpairs the result holds), got {int(ks_t[bad][0])}")
    return ks_t


def _as_torch(x) -> torch.Tensor:
    if isinstance(x, torch.Tensor):
        return x.detach()
    if isinstance(x, np.ndarray):
        return torch.from_numpy(np.ascontiguousarray(x))
    return torch.from_dlpack(x)  # CuPy


def _chunks(inputs, targets, reference, d, b, k, dev, dtype, max_memory) -> Iterator:
    """(x (rows, d), targets (rows,) or None, reference (rows, b) or None) on `dev`, with at most
    as many rows as keep a (rows, b, k) float64 block under the budget."""
    per_row = max(1, b * k * 8 * 3)
    rows = max(1, memory_budget(dev, max_memory) // per_row)
    for x, y, ref in _batches(inputs, targets, reference):
        x = _as_torch(x)
        if x.ndim != 2 or x.shape[1] != d:
            raise ValueError(f"inputs must be rows (n, {d}) matching the eigenvectors' length {d} (for a "
                             f"biased layer, [x, 1]: append a column of ones), got a batch of shape {tuple(x.shape)}")
        if not x.is_floating_point():
            raise TypeError(f"inputs must be floating point, got {x.dtype}")
        n = x.shape[0]
        if y is not None:
            y = _as_torch(y).reshape(-1)
            if y.shape[0] != n or y.is_floating_point():
                raise ValueError(f"targets must be integer labels, one per input row ({n}), got {tuple(y.shape)} {y.dtype}")
        if ref is not None:
            ref = _as_torch(ref)
            if ref.shape != (n, b):
                raise ValueError(f"reference must be (rows, b) = ({n}, {b}), got {tuple(ref.shape)}")
        for s in range(0, n, rows):
            xs = x[s:s + rows].to(device=dev, dtype=dtype)
            yield (xs, None if y is None else y[s:s + rows].to(dev).long(),
                   None if ref is None else ref[s:s + rows].to(device=dev))


def _batches(inputs, targets, reference) -> Iterable:
    if isinstance(inputs, (torch.Tensor, np.ndarray)) or type(inputs).__module__.split(".")[0] == "cupy":
        yield inputs, targets, reference
        return
    if targets is not None or reference is not None:
        raise ValueError("with an iterable of batches, give targets and reference inside each batch "
                         "((inputs, targets) tuples or dicts), not as arguments")
    for batch in inputs:
        if isinstance(batch, dict):
            unknown = set(batch) - {"inputs", "targets", "reference"}
            if "inputs" not in batch or unknown:
                raise ValueError(f"a dict batch needs 'inputs' and may have 'targets', 'reference'; got {sorted(batch)}")
            yield batch["inputs"], batch.get("targets"), batch.get("reference")
        elif isinstance(batch, (tuple, list)):
            if len(batch) != 2:
                raise ValueError(f"a tuple batch must be (inputs, targets), got {len(batch)} items")
            yield batch[0], batch[1], None
        else:
            yield batch, None, None
