"""DecompositionResult: eigenpairs of interaction matrices, with safetensors save/load."""
from __future__ import annotations

import json
from dataclasses import dataclass, field

import numpy as np
import torch

from ._arrays import NUMPY, TORCH, framework_of, to_framework

FORMAT = "bilinear_kernels.decomposition/1"


@dataclass
class DecompositionResult:
    """Top eigenpairs of Q(u) for a batch of directions.

    eigenvalues  (b, k)     most important first, by `which`
    eigenvectors (b, d, k)  unit columns, sign fixed so each column's largest-|entry| is positive
    residuals    (b, k)     ‖Q v − λ v‖ / ‖Q‖
    method       the solver that ran; `which` the selection rule; `indices` the output indices
    when directions were given as indices (else None); `metadata` free-form strings.
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

    def activations(self, x):
        """Eigenvector activations λ_i (v_iᵀ x)² for x (n, d) -> (n, b, k); their sum over k is
        uᵀ f(x) when k is the full spectrum (for a biased layer, append a 1 to x)."""
        vecs = torch.as_tensor(self.eigenvectors)
        vals = torch.as_tensor(self.eigenvalues)
        x = torch.as_tensor(x).to(vecs)
        proj = torch.einsum("nd,bdk->nbk", x, vecs)
        return to_framework(vals[None] * proj**2, framework_of(self.eigenvalues))

    def map_input(self, embedding, offset=None, *, biased: bool = False) -> "DecompositionResult":
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
        shift, x = E z + offset, and needs biased=True.
        """
        from ._arrays import as_tensor, check_finite

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
        from safetensors import safe_open

        with safe_open(str(path), framework="pt") as f:
            meta = f.metadata() or {}
            if meta.get("format") != FORMAT:
                raise ValueError(f"{path} is not a decomposition result file (format {meta.get('format')!r})")
            tensors = {name: f.get_tensor(name) for name in f.keys()}
        if framework not in (TORCH, NUMPY):
            raise ValueError(f"framework must be 'torch' or 'numpy', got {framework!r}")
        conv = (lambda t: t) if framework == TORCH else (lambda t: t.numpy())
        return cls(
            eigenvalues=conv(tensors["eigenvalues"]),
            eigenvectors=conv(tensors["eigenvectors"]),
            residuals=conv(tensors["residuals"]),
            method=meta["method"],
            which=meta["which"],
            indices=conv(tensors["indices"]) if "indices" in tensors else None,
            metadata=json.loads(meta.get("metadata", "{}")),
        )


def _torch_cpu(x) -> torch.Tensor:
    if isinstance(x, np.ndarray):
        return torch.from_numpy(np.ascontiguousarray(x))
    return torch.as_tensor(x).detach().cpu().contiguous()
