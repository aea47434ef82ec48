"""The truncation curve of a whole network: how much of its function the top features per level keep.

For each rank r of a sweep, `decompose_network(net, directions, rank=r)` keeps the top r features
at every orthogonalized level; the smaller network it defines is evaluated on the inputs
(`NetworkDecomposition.outputs`) and compared with the network's own outputs along the same
directions: relative error, and argmax accuracy against labels when given. The deep analogue of
`truncation_curve` (data_analysis.py), which truncates the eigenvectors of one layer.
"""
from __future__ import annotations

import numbers

import torch

from ..directions import parse_directions
from .network import BilinearNetwork, network_inputs
from .network_decomposition import decompose_network, first_level

# rows of inputs evaluated at once: a level's lift output and features per row stay small
CHUNK_ROWS = 1024


def default_ranks(net: BilinearNetwork) -> list[int]:
    """1, 2, 4, ... up to d + 1, the most a level can hold (the last point is exact)."""
    full = net.d_stream + 1
    ranks, r = [], 1
    while r < full:
        ranks.append(r)
        r *= 2
    return ranks + [full]


@torch.no_grad()
def network_truncation_curve(net: BilinearNetwork, inputs, *, labels=None, directions=None, ranks=None,
                             k: int | None = None, dtype=None) -> list[dict]:
    """One dict per rank r of the sweep (ascending):

    rank            r, the features kept per level (a level with fewer keeps them all)
    ranks           the ranks actually kept, one per orthogonalized level
    relative_error  ‖y_r − y‖ / ‖y‖ over all inputs and directions, y the network's own outputs
                    along the directions and y_r those of the truncated network
    accuracy        fraction of inputs whose argmax over the directions of y_r is the label
                    (with labels; labels are output indices, or row numbers for float directions)
    network_accuracy  the same for the network itself (with labels)

    inputs (n, d_in); directions as in `decompose_network` (default: every output); ranks a
    list of positive ints (default: 1, 2, 4, ... up to d + 1); k the top eigenpairs kept per
    direction (default all: only the levels are truncated). A one-layer network has no level to
    truncate: its curve is the single exact point.
    """
    if not isinstance(net, BilinearNetwork):
        raise TypeError(f"net must be a BilinearNetwork, got {type(net).__name__}")
    z = network_inputs(inputs, net.d_in, net.dtype, net.device, "inputs")
    if z.ndim != 2 or len(z) == 0:
        raise ValueError(f"inputs must be (n, d_in) with n ≥ 1, got {tuple(z.shape)}")
    if directions is None:
        directions = list(range(net.d_out))
    ranks = _checked_ranks(ranks, net)
    label_t = _checked_labels(labels, len(z), z.device)

    points = []
    reference = None
    shared = first_level(net)  # no truncation changes level 1: its Gram work is done once
    for r in ranks:
        result = decompose_network(net, directions, k=k, rank=r, dtype=dtype, _first_level=shared)
        if reference is None:
            reference = _reference(net, directions, z)
        approx = torch.cat([result.outputs(z[i:i + CHUNK_ROWS]) for i in range(0, len(z), CHUNK_ROWS)]).to(torch.float64)
        point = {"rank": int(r), "ranks": result.ranks,
                 "relative_error": float((approx - reference).norm() / reference.norm().clamp_min(torch.finfo(torch.float64).tiny))}
        if label_t is not None:
            ids = torch.tensor(result.direction_ids, device=z.device)
            point["accuracy"] = float((ids[approx.argmax(1)] == label_t).double().mean())
            point["network_accuracy"] = float((ids[reference.argmax(1)] == label_t).double().mean())
        points.append(point)
    return points


def _reference(net, directions, z) -> torch.Tensor:
    """The network's own outputs along the directions, (n, b) in float64."""
    y = torch.cat([net(z[i:i + CHUNK_ROWS]) for i in range(0, len(z), CHUNK_ROWS)]).to(torch.float64)
    dirs = parse_directions(directions, net.d_out)
    if dirs.indices is not None:
        return y[:, dirs.indices.to(y.device)]
    return y @ dirs.vectors.to(device=y.device, dtype=torch.float64).T


def _checked_ranks(ranks, net) -> list[int]:
    if net.n_layers == 1:
        return [net.d_stream + 1]
    if ranks is None:
        return default_ranks(net)
    if isinstance(ranks, numbers.Integral) and not isinstance(ranks, bool):
        ranks = [ranks]
    if not isinstance(ranks, (list, tuple, range)) or len(ranks) == 0:
        raise ValueError(f"ranks must be a non-empty list of positive ints, got {ranks!r}")
    for r in ranks:
        if isinstance(r, bool) or not isinstance(r, numbers.Integral) or r < 1:
            raise ValueError(f"ranks must be a non-empty list of positive ints, got the entry {r!r}")
    return sorted(int(r) for r in ranks)


def _checked_labels(labels, n: int, device) -> torch.Tensor | None:
    if labels is None:
        return None
    t = torch.as_tensor(labels)
    if t.is_floating_point() or t.is_complex() or t.dtype == torch.bool or t.shape != (n,):
        raise ValueError(f"labels must be ({n},) integer output indices, one per input, got {t.dtype} {tuple(t.shape)}")
    return t.to(device=device, dtype=torch.int64)
