"""DecompositionResult: eigenpairs of interaction matrices, with safetensors save/load."""
from __future__ import annotations

import json
import operator
import os
from dataclasses import dataclass, field
from typing import NamedTuple

import numpy as np
import torch

from ._arrays import NUMPY, TORCH, check_tensor_storage, framework_of, numpy_to_torch, to_framework

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
    residuals    (b, k)     ‖Q v − λ v‖ / ‖Q‖ (may be given as a function computing them,
                            called when they are first read)
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

    def __getattribute__(self, name):
        value = object.__getattribute__(self, name)
        if name == "residuals" and callable(value):
            # residuals left for the reader (a direct method's full spectrum): computed once, here
            value = value()
            object.__setattr__(self, "residuals", value)
        return value

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
        """Eigenvector activations λ_i (v_iᵀ x)² for inputs x (..., d) -> (..., b, k); their sum
        over k is uᵀ f(x) when k is the full spectrum. A biased layer is decomposed in d + 1
        dimensions, the last standing for the constant 1: give x with d + 1 columns (the 1
        included) or with the layer's d columns, and the constant 1 is appended.

        x: a torch tensor, NumPy or CuPy array, or a (nested) list of numbers."""
        vecs = torch.as_tensor(self.eigenvectors)
        vals = torch.as_tensor(self.eigenvalues)
        x = _inputs(x).to(device=vecs.device, dtype=vecs.dtype)
        d = vecs.shape[-2]
        biased = bool(self.metadata.get("has_bias", False))
        widths = f"{d} (or {d - 1}, the constant 1 then appended)" if biased else f"{d}"
        if x.ndim == 0 or x.shape[-1] not in ((d, d - 1) if biased else (d,)):
            raise ValueError(f"x must have shape (..., {widths}) to match the eigenvectors {tuple(vecs.shape)}, "
                             f"got {tuple(x.shape)}")
        if x.shape[-1] == d - 1 and biased:
            x = torch.cat([x, torch.ones(*x.shape[:-1], 1, dtype=x.dtype, device=x.device)], dim=-1)
        proj = torch.einsum("...d,bdk->...bk", x, vecs)
        return to_framework(vals * proj**2, framework_of(self.eigenvalues))

    def map_input(self, embedding, offset=None, *, biased: bool | None = None) -> "DecompositionResult":
        """The published mode: eigenvectors found in the layer's own input space mapped through an
        embedding, v ↦ Eᵀ v, with E (d, F) the matrix of x = E z (`embed.weight` of an image
        model, the same matrix `layer.project_input` takes).

        The mapped vectors still rebuild the output exactly, uᵀ f(E z) = Σ λᵢ ((Eᵀvᵢ)ᵀ z)², but
        they are neither unit nor orthogonal, and they are not the eigenvectors of the exact
        z-space form Eᵀ Q E: for those, decompose `layer.project_input(E)`. Eigenvalues and
        residuals are kept as they are (they belong to the d-space decomposition); the vectors are
        not renormalized or re-signed (the sign is the d-space one).

        biased: the result is of a biased layer (d + 1 rows, the last one the constant 1), which is
        carried through: the map is [[E, offset], [0, 1]]ᵀ. `offset` (d,) is the embedding's own
        shift, x = E z + offset, and needs biased=True. None (default): what decompose recorded
        (metadata["has_bias"]); a result without that record is taken as unbiased.
        """
        from ._arrays import as_tensor, check_finite

        if biased is None:
            biased = bool(self.metadata.get("has_bias", False))

        framework = framework_of(self.eigenvectors)
        vecs = torch.as_tensor(self.eigenvectors)
        emb = as_tensor(embedding, "embedding").to(device=vecs.device, dtype=vecs.dtype)
        check_finite(emb, "embedding")
        rows = vecs.shape[1] - (1 if biased else 0)
        if emb.ndim != 2 or emb.shape[0] != rows:
            what = f"d = {rows} (the eigenvectors' {vecs.shape[1]} rows less the constant)" if biased else \
                f"d = {rows} (the eigenvectors' rows)"
            raise ValueError(f"embedding must be (d, F) with {what}, got embedding {tuple(emb.shape)}")
        if offset is not None and not biased:
            raise ValueError("an embedding offset needs biased=True: it maps into the constant coordinate "
                             "of a biased layer's result")
        mapped = torch.einsum("df,bdk->bfk", emb, vecs[:, :rows])
        if biased:
            constant = vecs[:, rows:]
            if offset is not None:
                shift = as_tensor(offset, "offset").to(device=vecs.device, dtype=vecs.dtype)
                if shift.shape != (rows,):
                    raise ValueError(f"offset must be ({rows},) to match embedding {tuple(emb.shape)}, got {tuple(shift.shape)}")
                constant = constant + torch.einsum("d,bdk->bk", shift, vecs[:, :rows])[:, None]
            mapped = torch.cat([mapped, constant], dim=1)
        metadata = dict(self.metadata, mapped_input=f"published mode: E^T v through an embedding of shape {tuple(emb.shape)}")
        return DecompositionResult(
            eigenvalues=self.eigenvalues, eigenvectors=to_framework(mapped, framework),
            residuals=self.residuals, method=self.method, which=self.which, indices=self.indices,
            metadata=metadata)

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
        from safetensors import SafetensorError, safe_open

        if framework not in (TORCH, NUMPY):
            raise ValueError(f"framework must be 'torch' or 'numpy', got {framework!r}")
        if os.path.isdir(path):
            raise ValueError(f"{path} is a directory, not a decomposition result file")
        try:
            with safe_open(str(path), framework="pt") as f:
                meta = f.metadata() or {}
                if meta.get("format") != FORMAT:
                    raise ValueError(f"{path} is not a decomposition result file (format {meta.get('format')!r})")
                tensors = {name: f.get_tensor(name) for name in f.keys()}
        except SafetensorError as err:
            raise ValueError(f"{path} is not a readable safetensors file: {err}") from None
        except FileNotFoundError:
            raise
        except OSError as err:
            raise OSError(f"could not read {path}: {err}") from None
        fields = _checked_fields(path, meta, tensors)
        conv = (lambda t: t) if framework == TORCH else (lambda t: t.numpy())
        result = cls(
            eigenvalues=conv(tensors["eigenvalues"]),
            eigenvectors=conv(tensors["eigenvectors"]),
            residuals=conv(tensors["residuals"]),
            indices=conv(tensors["indices"]) if "indices" in tensors else None,
            **fields,
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


def _inputs(x) -> torch.Tensor:
    """x as a real torch tensor, with a clear error for what is not an array of numbers."""
    if isinstance(x, torch.Tensor):
        check_tensor_storage(x, "x")
        t = x
    elif isinstance(x, np.ndarray):
        t = numpy_to_torch(x, "x", kinds="iuf")
    elif type(x).__module__.split(".")[0] == "cupy":
        t = torch.from_dlpack(x)
    elif isinstance(x, (list, tuple)):
        try:
            t = torch.from_numpy(np.asarray(x, dtype=np.float64))
        except (ValueError, TypeError) as err:
            raise ValueError(f"x given as a list must be a rectangular array of numbers ({err})") from None
    else:
        raise TypeError(f"x must be a torch tensor, NumPy or CuPy array, or a list of numbers, got {type(x).__name__}")
    if t.is_complex() or t.dtype == torch.bool:
        raise TypeError(f"x must hold real numbers, got dtype {t.dtype}")
    return t


def _checked_fields(path, meta: dict, tensors: dict) -> dict:
    """method, which and metadata of a result file, after checking that its tensors have the
    shapes a result has; a ValueError naming the file and what is wrong otherwise."""
    def bad(what):
        return ValueError(f"{path} is not a valid decomposition result file: {what}")

    for key in ("method", "which"):
        if not isinstance(meta.get(key), str):
            raise bad(f"its header has no {key!r}")
    try:
        metadata = json.loads(meta.get("metadata", "{}"))
    except json.JSONDecodeError as err:
        raise bad(f"its 'metadata' entry is not JSON ({err})") from None
    if not isinstance(metadata, dict):
        raise bad(f"its 'metadata' entry is a {type(metadata).__name__}, not a JSON object")
    missing = [n for n in ("eigenvalues", "eigenvectors", "residuals") if n not in tensors]
    if missing:
        raise bad(f"it has no tensor {', '.join(missing)}")
    vals, vecs, resid = tensors["eigenvalues"], tensors["eigenvectors"], tensors["residuals"]
    shapes = {n: tuple(t.shape) for n, t in tensors.items()}
    if vals.ndim != 2 or vecs.ndim != 3 or resid.shape != vals.shape or \
            (vecs.shape[0], vecs.shape[2]) != tuple(vals.shape):
        raise bad(f"its tensors do not have the shapes (b, k), (b, d, k), (b, k) of a result: {shapes}")
    if "indices" in tensors:
        idx = tensors["indices"]
        if idx.shape != (vals.shape[0],) or idx.is_floating_point():
            raise bad(f"its indices must be {vals.shape[0]} integers, got {idx.dtype} {tuple(idx.shape)}")
    return dict(method=meta["method"], which=meta["which"], metadata=metadata)


def _torch_cpu(x) -> torch.Tensor:
    if isinstance(x, np.ndarray):
        return torch.from_numpy(np.ascontiguousarray(x))
    return torch.as_tensor(x).detach().cpu().contiguous()
