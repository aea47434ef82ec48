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
    residuals    (b, k)     ‖Q v − λ v‖ / ‖Q‖ (may be given as a function computing them,
                            called when they are first read)
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
