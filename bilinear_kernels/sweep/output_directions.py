"""Output directions u to decompose along, built from a model's readout.

A bilinear layer's output is read by something: a classifier head, an unembedding, an SAE encoder.
The rows of that readout are the directions whose interaction matrices explain the model, so these
helpers turn class indices, token ids and matrices in files into what `decompose` accepts.

`resolve_directions(spec, readout, d_out)` parses the command line's --directions:
  classes | vocab | all     every readout row (every output index when there is no readout)
  0,5,7                     those readout rows (those output indices when there is no readout)
  contrast:T[:A,B,...]      row T minus the mean of rows A, B, ... (default: of every other row)
  FILE.safetensors:NAME[:T][:0,5,7]
                            rows of the matrix NAME in FILE (`:T`: its columns, for matrices
                            stored as (d, n) such as some SAE encoders), optionally only some
"""
from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path

import torch

_INTS = re.compile(r"^\s*-?\d+(\s*,\s*-?\d+)*\s*,?\s*$")


@dataclass
class ResolvedDirections:
    """directions: int64 (b,) output indices or float (b, o) vectors; ids: the readout rows,
    classes or tokens they stand for (the row numbers of a matrix from a file, the target row of
    a contrast), in order; description: for messages."""

    directions: torch.Tensor
    ids: list[int] | None
    description: str

    def __len__(self) -> int:
        return self.directions.shape[0]


def class_indices(n_classes: int) -> torch.Tensor:
    """0..n_classes-1 as output indices (one-hot directions)."""
    if isinstance(n_classes, bool) or not isinstance(n_classes, int) or n_classes < 1:
        raise ValueError(f"n_classes must be a positive int, got {n_classes!r}")
    return torch.arange(n_classes)


def readout_rows(readout: torch.Tensor, ids) -> torch.Tensor:
    """Rows `ids` of a readout matrix (n, o), e.g. the unembedding rows of some tokens: (b, o)."""
    ids = _check_ids(ids, readout.shape[0], "readout")
    return readout[torch.as_tensor(ids, device=readout.device)]


def contrastive_directions(readout: torch.Tensor, target: int, others=None) -> torch.Tensor:
    """readout[target] − mean(readout[others]), (1, o): what makes `target` win over `others`
    (default: every other row)."""
    n = readout.shape[0]
    (target,) = _check_ids([target], n, "readout")
    if others is None:
        others = [i for i in range(n) if i != target]
    others = _check_ids(others, n, "readout")
    if not others:
        raise ValueError(f"a contrastive direction needs at least one other row, and the readout has only {n}")
    if target in others:
        raise ValueError(f"the contrasted row {target} is also among the others {others}")
    rest = readout[torch.as_tensor(others, device=readout.device)]
    return (readout[target] - rest.mean(dim=0))[None]


def matrix_rows(path, name: str, *, rows=None, transpose: bool = False, d_out: int | None = None) -> torch.Tensor:
    """Rows of the 2-D tensor `name` in the safetensors file `path` (columns when `transpose`),
    optionally only `rows`; checked to have length `d_out` when it is given."""
    from ..io.checkpoints import CheckpointError, TensorSource, open_checkpoint

    source: TensorSource = open_checkpoint(path)
    if name not in source:
        shown = ", ".join(source.names[:8]) + (", ..." if len(source.names) > 8 else "")
        raise CheckpointError(f"tensor {name!r} is missing from {path} (it holds: {shown or 'nothing'})")
    m = source.get(name)
    if m.ndim != 2:
        raise CheckpointError(f"tensor {name!r} in {path} has shape {tuple(m.shape)}; expected a 2-D matrix (n, {d_out or 'o'})")
    if transpose:
        m = m.t()
    if d_out is not None and m.shape[1] != d_out:
        hint = (" (its columns have that length: take them with transpose=True, ':T' on the command line)"
                if m.shape[0] == d_out else "")
        raise CheckpointError(f"tensor {name!r} in {path} gives rows of length {m.shape[1]} (shape {tuple(m.shape)}"
                              f"{', transposed' if transpose else ''}); the layer's output has d_out = {d_out}{hint}")
    if rows is not None:
        m = m[torch.as_tensor(_check_ids(rows, m.shape[0], f"{name!r}"))]
    return m.contiguous()


def resolve_directions(spec: str, readout: torch.Tensor | None, d_out: int,
                       readout_name: str | None = None) -> ResolvedDirections:
    """Parse a --directions string (module docstring) against a readout (n, d_out) or, when
    there is none, against the layer's d_out outputs."""
    if not isinstance(spec, str) or not spec.strip():
        raise ValueError("directions must be a non-empty string such as 'classes', 'vocab', '0,5,7', "
                         "'contrast:3' or 'file.safetensors:NAME'")
    spec = spec.strip()
    what = readout_name or "outputs"
    n = readout.shape[0] if readout is not None else d_out
    if readout is not None and readout.shape[1] != d_out:
        name = f" {readout_name}" if readout_name else ""
        raise ValueError(f"the readout{name} has rows of length {readout.shape[1]}; the layer's output has d_out = {d_out}")

    if spec in ("classes", "vocab", "all"):
        ids = list(range(n))
        return ResolvedDirections(_pick(readout, ids), ids, f"all {n} rows of {what}" if readout is not None else f"all {n} outputs")
    if spec.startswith("contrast:"):
        parts = spec.split(":")
        if len(parts) not in (2, 3) or not _INTS.match(parts[1]) or len(_ints(parts[1])) != 1 or \
                (len(parts) == 3 and not _INTS.match(parts[2])):
            raise ValueError(f"contrastive directions are written contrast:T or contrast:T:A,B,...; got {spec!r}")
        target = _ints(parts[1])[0]
        others = _ints(parts[2]) if len(parts) == 3 else None
        matrix = readout if readout is not None else torch.eye(d_out)
        u = contrastive_directions(matrix, target, others)
        vs = "the mean of " + (f"rows {others}" if others is not None else "every other row")
        return ResolvedDirections(u, [target], f"row {target} of {what} minus {vs}")
    if ".safetensors:" in spec:
        path, _, rest = spec.partition(".safetensors:")
        path = Path(path + ".safetensors")
        parts = rest.split(":")
        name, transpose, rows = parts[0], False, None
        for extra in parts[1:]:
            if extra == "T" and not transpose:
                transpose = True
            elif _INTS.match(extra) and rows is None:
                rows = _ints(extra)
            else:
                raise ValueError(f"matrix directions are written FILE.safetensors:NAME[:T][:0,5,7]; got {spec!r}")
        if not name:
            raise ValueError(f"name the matrix in the file: FILE.safetensors:NAME, got {spec!r}")
        m = matrix_rows(path, name, rows=rows, transpose=transpose, d_out=d_out)
        sel = f"rows {rows} of " if rows is not None else ""
        ids = rows if rows is not None else list(range(m.shape[0]))  # the matrix's own row numbers
        return ResolvedDirections(m, ids, f"{sel}{name}{'ᵀ' if transpose else ''} from {path} ({m.shape[0]} directions)")
    if _INTS.match(spec):
        ids = _check_ids(_ints(spec), n, what)
        return ResolvedDirections(_pick(readout, ids), ids, f"rows {ids} of {what}" if readout is not None else f"outputs {ids}")
    raise ValueError(f"unrecognised directions {spec!r}: use classes, vocab, a list of ids such as 0,5,7, "
                     "contrast:T[:A,B], or FILE.safetensors:NAME")


def _pick(readout: torch.Tensor | None, ids: list[int]) -> torch.Tensor:
    if readout is None:
        return torch.as_tensor(ids, dtype=torch.int64)
    return readout_rows(readout, ids)


def _ints(text: str) -> list[int]:
    return [int(t) for t in text.replace(" ", "").split(",") if t]


def _check_ids(ids, n: int, what: str) -> list[int]:
    ids = [int(i) for i in (ids.tolist() if isinstance(ids, torch.Tensor) else ids)]
    if not ids:
        raise ValueError(f"no ids given for {what}")
    bad = [i for i in ids if not 0 <= i < n]
    if bad:
        raise ValueError(f"id {bad[0]} is out of range for {what} with {n} rows (valid: 0..{n - 1})")
    return ids
