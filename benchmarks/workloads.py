"""The workloads: shapes from published bilinear models, random weights scaled like trained ones.

W1..W4 ask for eigenpairs of Q(u) for many output directions u; W5 times the layer's forward and
backward. `--scale s` shrinks every workload proportionally: d becomes round(s·d) (at least 16)
and every other size follows d's ratio, so h/d, o/d, directions/d and k/d stay as published (each
with a small floor so tiny scales still run). The d-sweep (time against d at fixed h/d = 4, k = 32)
scales the same way.
"""
from __future__ import annotations

import zlib
from dataclasses import dataclass, replace

import torch

import bilinear_kernels as bk

MIN_D = 16
SWEEP_D = (256, 512, 1024, 2048, 4096)
SWEEP_H_OVER_D = 4
SWEEP_K = 32
SWEEP_DIRECTIONS = 64
WEIGHTS = ("gaussian", "decaying")


@dataclass(frozen=True)
class Workload:
    """Decompose Q(u) of a (d, h, o) layer for `n_directions` directions, keeping k pairs by |λ|."""

    name: str
    title: str
    d: int
    h: int
    o: int
    n_directions: int
    directions: str        # "indices": output coordinates; "vectors": dense unit rows in R^o
    k: int | None          # None: the full spectrum
    which: str = "LM"
    full_d: int | None = None  # the published d, for the record

    @property
    def k_eff(self) -> int:
        return self.d if self.k is None else self.k

    def shapes(self) -> dict:
        return {"d": self.d, "h": self.h, "o": self.o, "directions": self.n_directions,
                "direction_kind": self.directions, "k": self.k_eff,
                "full_spectrum": self.k is None, "which": self.which}


@dataclass(frozen=True)
class ForwardWorkload:
    """Forward and backward of y = P((W x) ⊙ (V x)) on a (tokens, d) batch."""

    name: str
    title: str
    tokens: int
    d: int
    h: int
    o: int
    full_d: int | None = None

    def shapes(self) -> dict:
        return {"tokens": self.tokens, "d": self.d, "h": self.h, "o": self.o}


DECOMPOSITION = (
    Workload("W1", "classifier, pixel space, all classes, full spectrum",
             d=784, h=256, o=10, n_directions=10, directions="indices", k=None),
    Workload("W2", "small LM, all-vocabulary sweep, full spectrum",
             d=512, h=2048, o=512, n_directions=4096, directions="vectors", k=None),
    Workload("W3", "feature sweep (SAE encoder rows), top-64 by |λ|",
             d=1024, h=4096, o=1024, n_directions=8192, directions="vectors", k=64),
    Workload("W4", "wide layer, top-32 by |λ|",
             d=4096, h=16384, o=4096, n_directions=256, directions="indices", k=32),
)
FORWARD = ForwardWorkload("W5", "forward/backward", tokens=8192, d=1024, h=4096, o=1024)
NAMES = tuple(w.name for w in DECOMPOSITION) + (FORWARD.name,)


def _follow(n: int, ratio: float, floor: int) -> int:
    """n scaled by `ratio`, at least min(n, floor)."""
    return max(min(n, floor), round(n * ratio))


def scale_workload(w: Workload, s: float) -> Workload:
    d = max(MIN_D, round(w.d * s)) if s != 1 else w.d
    r = d / w.d
    h = _follow(w.h, r, 2)
    if (2 * w.h < w.d) != (2 * h < d):  # keep the low-rank property of the published shape
        h = (d - 1) // 2 if 2 * w.h < w.d else (d + 1) // 2
    o = _follow(w.o, r, 10)
    n = o if w.n_directions == w.o and w.directions == "indices" else _follow(w.n_directions, r, 4)
    if w.directions == "indices":
        n = min(n, o)
    k = None if w.k is None else max(1, min(_follow(w.k, r, 4), d // 3))
    return replace(w, d=d, h=h, o=o, n_directions=n, k=k, full_d=w.d)


def scale_forward(w: ForwardWorkload, s: float) -> ForwardWorkload:
    d = max(MIN_D, round(w.d * s)) if s != 1 else w.d
    r = d / w.d
    return replace(w, tokens=_follow(w.tokens, r, 16), d=d, h=_follow(w.h, r, 2),
                   o=_follow(w.o, r, 2), full_d=w.d)


def decomposition_workloads(s: float) -> list[Workload]:
    return [scale_workload(w, s) for w in DECOMPOSITION]


def sweep_workloads(s: float) -> list[Workload]:
    """Time against d: d = 256 .. 4096 (scaled), h = 4d, o = d, k = 32 (scaled), 64 directions."""
    out = []
    for d_full in SWEEP_D:
        base = Workload(f"sweep-d{d_full}", f"d-sweep, h/d = {SWEEP_H_OVER_D}, top-{SWEEP_K} by |λ|",
                        d=d_full, h=SWEEP_H_OVER_D * d_full, o=d_full,
                        n_directions=SWEEP_DIRECTIONS, directions="vectors", k=SWEEP_K)
        out.append(scale_workload(base, s))
    return out


def _generator(name: str, seed: int) -> torch.Generator:
    return torch.Generator().manual_seed(seed * 1_000_003 + zlib.crc32(name.encode()))


def random_weights(name: str, d: int, h: int, o: int, weights: str = "gaussian", seed: int = 0):
    """W, V (h, d) and P (o, h) in float32 on the CPU, scaled like trained layers: entries of
    W and V have variance 1/d and those of P 1/h, so activations keep unit scale.

    "gaussian" gives the hardest spectra (dense near both edges); "decaying" multiplies input
    coordinate i by (1 + i)^(-1/2) (renormalized), the faster decay trained layers show.
    Generated on the CPU from a fixed seed so every device sees the same numbers.
    """
    if weights not in WEIGHTS:
        raise ValueError(f"weights must be one of {WEIGHTS}, got {weights!r}")
    gen = _generator(name, seed)
    w = torch.randn(h, d, generator=gen) / d**0.5
    v = torch.randn(h, d, generator=gen) / d**0.5
    p = torch.randn(o, h, generator=gen) / h**0.5
    if weights == "decaying":
        decay = (1.0 + torch.arange(d, dtype=torch.float32)) ** -0.5
        decay *= d**0.5 / torch.linalg.vector_norm(decay)
        w, v = w * decay, v * decay
    return w, v, p


def make_layer(w: Workload, device: str, weights: str = "gaussian", seed: int = 0) -> bk.BilinearLayer:
    wt, vt, pt = random_weights(w.name, w.d, w.h, w.o, weights, seed)
    return bk.BilinearLayer(wt.to(device), vt.to(device), pt.to(device))


def make_directions(w: Workload, device: str, seed: int = 0) -> torch.Tensor:
    """Output indices (int64, (b,)) spread over the outputs, or unit direction rows (b, o)."""
    gen = _generator(w.name + "/directions", seed)
    if w.directions == "indices":
        return torch.randperm(w.o, generator=gen)[: w.n_directions].sort().values.to(device)
    u = torch.randn(w.n_directions, w.o, generator=gen)
    return (u / torch.linalg.vector_norm(u, dim=1, keepdim=True)).to(device)


def coefficients(layer: bk.BilinearLayer, directions: torch.Tensor, dtype=torch.float32) -> torch.Tensor:
    """c = Pᵀ u for each direction, (b, h): what every peer needs to build or apply Q(u)."""
    p = layer.p.to(dtype)
    if directions.dtype == torch.int64:
        return p[directions]
    return directions.to(dtype) @ p
