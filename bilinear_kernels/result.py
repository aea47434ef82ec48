"""DecompositionResult: eigenpairs of interaction matrices, with safetensors save/load."""
from __future__ import annotations

import json
import operator
from dataclasses import dataclass, field
from typing import NamedTuple

import numpy as np
import torch

from ._arrays import NUMPY, TORCH, framework_of, to_framework

FORMAT = "bilinear_kernels.decomposition/1"


class DirectionResult(NamedTuple):
    """The eigenpairs of one direction, found by its id."""

    direction_id: int
    eigenvalues: object    # (k,)
    eigenvectors: object   # (d, k) unit columns
    residuals: object      # (k,)


@dataclass
class DecompositionResult:
    """Top eigenpairs of Q(u) for a batch of directions.

    eigenvalues  (b, k)     most important first, by `which`
    eigenvectors (b, d, k)  unit columns, sign fixed so each column's largest-|entry| is positive
    residuals    (b, k)     ‖Q v − λ v‖ / ‖Q‖
    method       the solver that ran; `which` the selection rule; `indices` the output indices
    when directions were given as indices (else None); `metadata` free-form strings.

    Directions are found by their ids (`direction_ids`): the ids the user chose them by (class
    indices, token ids, SAE rows, the target of a contrast) when the result records them in
    metadata["direction_ids"], else the output indices, else row numbers. `res[5]` is the direction
    with id 5, as in a sweep store; `res.index_of(5)` is its row.
    """

    eigenvalues: object
    eigenvectors: object
    residuals: object
    method: str
    which: str
    indices: object = None
    metadata: dict = field(default_factory=dict)

    @property
    def k(self) -> int:
        return self.eigenvalues.shape[-1]

    def __len__(self) -> int:
        return self.eigenvalues.shape[0]

    def __repr__(self) -> str:
        b, d, k = self.eigenvectors.shape
        return f"DecompositionResult(directions={b}, d={d}, k={k}, which={self.which!r}, method={self.method!r})"

    # -- lookup by direction id -----------------------------------------------------------
    @property
    def direction_ids(self) -> list[int]:
        """The id of each row: metadata["direction_ids"] when recorded (the user's own ids),
        else the output indices, else the row numbers 0..b-1."""
        b = len(self)
        ids = self.metadata.get("direction_ids") if isinstance(self.metadata, dict) else None
        if ids is not None:
            if not isinstance(ids, (list, tuple)) or not all(isinstance(i, int) and not isinstance(i, bool) for i in ids):
                raise ValueError(f"metadata['direction_ids'] must be a list of ints, got {ids!r:.80}")
            if len(ids) != b:
                raise ValueError(f"metadata['direction_ids'] names {len(ids)} directions, and the result holds {b}; "
                                 "the file is inconsistent")
            return list(ids)
        if self.indices is not None:
            return [int(i) for i in torch.as_tensor(self.indices).reshape(-1).tolist()]
        return list(range(b))

    def index_of(self, direction_id) -> int:
        """The row of the direction with id `direction_id` (KeyError when there is none)."""
        value = as_direction_id(direction_id)
        ids = self.direction_ids
        rows = [row for row, i in enumerate(ids) if i == value]
        if not rows:
            shown = ", ".join(map(str, ids[:6])) + (", ..." if len(ids) > 6 else "")
            raise KeyError(f"direction {value} is not in this result ({len(ids)} directions, ids [{shown}])")
        if len(rows) > 1:
            raise KeyError(f"direction {value} appears {len(rows)} times in this result (rows {rows[:8]}); "
                           "index the arrays by row instead")
        return rows[0]

    def __getitem__(self, direction_id) -> DirectionResult:
        """The eigenpairs of the direction with id `direction_id` (not row `direction_id`: see
        `direction_ids`)."""
        row = self.index_of(direction_id)
        return DirectionResult(self.direction_ids[row], self.eigenvalues[row], self.eigenvectors[row],
                               self.residuals[row])

    def __iter__(self):
        """DirectionResults in row order."""
        for row, i in enumerate(self.direction_ids):
            yield DirectionResult(i, self.eigenvalues[row], self.eigenvectors[row], self.residuals[row])

    def get(self, direction_ids) -> "DecompositionResult":
        """The directions with these ids, in the order asked, as a DecompositionResult."""
        wanted = as_direction_ids(direction_ids)
        rows = [self.index_of(i) for i in wanted]
        fw = framework_of(self.eigenvalues)

        def take(array):
            t = torch.as_tensor(array)
            return to_framework(t[torch.as_tensor(rows, device=t.device)], fw)

        return DecompositionResult(take(self.eigenvalues), take(self.eigenvectors), take(self.residuals),
                                   self.method, self.which, None if self.indices is None else take(self.indices),
                                   {**self.metadata, "direction_ids": wanted})

    def activations(self, x):
        """Eigenvector activations λ_i (v_iᵀ x)² for x (n, d) -> (n, b, k); their sum over k is
        uᵀ f(x) when k is the full spectrum (for a biased layer, append a 1 to x)."""
        vecs = torch.as_tensor(self.eigenvectors)
        vals = torch.as_tensor(self.eigenvalues)
        x = torch.as_tensor(x).to(vecs)
        proj = torch.einsum("nd,bdk->nbk", x, vecs)
        return to_framework(vals[None] * proj**2, framework_of(self.eigenvalues))

    def save(self, path) -> None:
        """Write to a safetensors file (tensors plus JSON metadata; nothing is pickled)."""
        from safetensors.torch import save_file

        tensors = {
            "eigenvalues": _torch_cpu(self.eigenvalues),
            "eigenvectors": _torch_cpu(self.eigenvectors),
            "residuals": _torch_cpu(self.residuals),
        }
        if self.indices is not None:
            tensors["indices"] = _torch_cpu(self.indices)
        meta = {
            "format": FORMAT,
            "method": self.method,
            "which": self.which,
            "metadata": json.dumps(self.metadata),
        }
        save_file(tensors, str(path), metadata=meta)

    @classmethod
    def load(cls, path, framework: str = TORCH) -> "DecompositionResult":
        """Read a file written by `save`; arrays come back as torch tensors or, with
        framework="numpy", NumPy arrays."""
        from safetensors import safe_open

        with safe_open(str(path), framework="pt") as f:
            meta = f.metadata() or {}
            if meta.get("format") != FORMAT:
                raise ValueError(f"{path} is not a decomposition result file (format {meta.get('format')!r})")
            tensors = {name: f.get_tensor(name) for name in f.keys()}
        if framework not in (TORCH, NUMPY):
            raise ValueError(f"framework must be 'torch' or 'numpy', got {framework!r}")
        conv = (lambda t: t) if framework == TORCH else (lambda t: t.numpy())
        result = cls(
            eigenvalues=conv(tensors["eigenvalues"]),
            eigenvectors=conv(tensors["eigenvectors"]),
            residuals=conv(tensors["residuals"]),
            method=meta["method"],
            which=meta["which"],
            indices=conv(tensors["indices"]) if "indices" in tensors else None,
            metadata=json.loads(meta.get("metadata", "{}")),
        )
        result.direction_ids  # noqa: B018 - raises when the file's ids do not match its rows
        return result


def as_direction_id(direction_id) -> int:
    """A direction id as a Python int; TypeError for anything that is not an integer."""
    if isinstance(direction_id, (bool, np.bool_)):
        raise TypeError("a direction id must be an int, got a bool")
    if isinstance(direction_id, (torch.Tensor, np.ndarray)) and direction_id.ndim != 0:
        raise TypeError(f"a direction id must be an int, got an array of shape {tuple(direction_id.shape)} "
                        "(use .get() for several ids)")
    try:
        return operator.index(direction_id)
    except TypeError:
        raise TypeError(f"a direction id must be an int, got {type(direction_id).__name__} ({direction_id!r:.40})") from None


def as_direction_ids(direction_ids) -> list[int]:
    """Several direction ids as Python ints (TypeError for a string or a non-sequence)."""
    if isinstance(direction_ids, (str, bytes, dict)) or not hasattr(direction_ids, "__iter__"):
        raise TypeError(f"direction_ids must be a sequence of ints, got {type(direction_ids).__name__}")
    ids = [as_direction_id(i) for i in (direction_ids.tolist() if hasattr(direction_ids, "tolist") else direction_ids)]
    if not ids:
        raise ValueError("direction_ids is empty")
    return ids


def _torch_cpu(x) -> torch.Tensor:
    if isinstance(x, np.ndarray):
        return torch.from_numpy(np.ascontiguousarray(x))
    return torch.as_tensor(x).detach().cpu().contiguous()
