"""Checkpoint (or layer) + directions -> eigendecomposition results, in memory, in a file or in a
resumable sweep store: the library behind `bilinear-kernels decompose`, for scripts and for other
libraries, called with keyword arguments.

    from bilinear_kernels.sweep import pipeline
    res = pipeline.decompose_checkpoint("path/to/model", layer=2, directions="11,42,7", k=16)
    res.metadata["direction_ids"]        # [11, 42, 7]: the user's own ids, in order
    report = pipeline.decompose_checkpoint("path/to/model", layer=2, directions="vocab", k=16,
                                           out="sweeps/layer2/")   # a store; bk.open_results reads it

The steps, each usable on its own:
  resolve_target(checkpoint, layer=, directions=)  checkpoint + layer + directions -> DecompositionTarget
  target_from_layer(layer, directions, ids=)       a BilinearLayer in memory -> DecompositionTarget
  run_target(target, k=, ..., out=)                -> DecompositionResult, or a SweepReport for a store
and below them iter_decomposition_chunks (chunk by chunk), decompose_target (all chunks, with
the metadata to reproduce them), concatenate and resolve_device.
A whole image model through depth: decompose_network_checkpoint(checkpoint, directions=, k=, rank=).

Everything the user should know about what was decided (a tied unembedding, a gated MLP read with
allow_gated, k capped at d, a norm without gain) is a note: in `target.notes`, in the results'
metadata, and passed to `on_note` as soon as it is known.
"""
from __future__ import annotations

import os
import stat
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import torch

from ..decompose import decompose
from ..decompose import resolve_options as check_solver_options
from ..directions import parse_directions
from ..io.checkpoints import CheckpointError, checkpoint_sha256, file_sha256, load_layer
from ..layer import BilinearLayer
from ..result import DecompositionResult
from .output_directions import resolve_directions

DEFAULT_CHUNK = 256
# A call's result counts in its memory budget; a default chunk keeps it to this share of the budget,
# so the rest is left for the solver's temporaries.
RESULT_SHARE_OF_BUDGET = 4
RESULT_SUFFIX = ".safetensors"


class OutputError(OSError):
    """An output path that cannot be written as asked; the message says why."""


# -- what to decompose --------------------------------------------------------------------------

@dataclass
class DecompositionTarget:
    """A layer, the directions to decompose it along, and the metadata that identifies both.

    directions: int64 (b,) output indices or float (b, o) vectors; rows are independent, so any
    slice [start:stop] is a valid sub-problem (what chunked and resumable runs rely on).
    ids: the user's own id of each direction (readout rows, classes, token ids, rows of a matrix
    in a file, the target row of a contrast), or None when the directions have no ids.
    """

    layer: BilinearLayer
    directions: torch.Tensor
    description: str
    metadata: dict = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)
    ids: list[int] | None = None
    # published mode: an embedding E (d, F) that each eigenvector is mapped through (Eᵀ v) after
    # decomposing, see DecompositionResult.map_input; None for the exact decomposition
    input_map: torch.Tensor | None = None

    def __len__(self) -> int:
        return self.directions.shape[0]


def resolve_target(checkpoint, *, layer: int | None = None, directions: str, allow_gated: bool = False,
                   fold_embedding: bool = False, fold_norms: bool = False, ignore_biases: bool = False,
                   map_embedding: bool = False, device=None, hash_checkpoint: bool = True) -> DecompositionTarget:
    """Load layer `layer` of `checkpoint` onto `device` and parse `directions` (a string such as
    "classes", "vocab", "0,5,7", "contrast:3", "sae.safetensors:W_enc:T"; see output_directions)
    against its readout. The metadata holds the checkpoint's SHA-256 (hash_checkpoint=False skips
    hashing, e.g. for a quick look at a large model).

    ignore_biases: decompose P((W x) ⊙ (V x)) with the biases dropped, as the published analyses
    do (a different function from the layer's own; the default keeps them, exactly).
    map_embedding: the published mode of image models: decompose layer 0 in its own (hidden) space
    and map each eigenvector through the embedding, Eᵀ v (not orthonormal in pixel space);
    fold_embedding is the exact pixel-space decomposition instead. The two are exclusive."""
    if map_embedding and fold_embedding:
        raise ValueError("map_embedding and fold_embedding are exclusive: the published mode maps hidden-space "
                         "eigenvectors through the embedding, the exact mode decomposes the pixel-space form")
    dev = resolve_device(device)
    loaded = load_layer(checkpoint, layer, allow_gated=allow_gated, fold_embedding=fold_embedding,
                        fold_norms=fold_norms, device=dev)
    resolved = resolve_directions(directions, loaded.readout, loaded.layer.d_out, loaded.readout_name)
    meta = {"checkpoint": str(checkpoint), **loaded.describe(), "directions": directions,
            "direction_ids": resolved.ids, "direction_description": resolved.description,
            "n_directions": len(resolved), "allow_gated": allow_gated, "fold_embedding": fold_embedding,
            "fold_norms": fold_norms}
    notes = list(loaded.notes)
    decomposed = loaded.layer
    if ignore_biases:
        meta["ignore_biases"] = True
        if decomposed.has_bias:
            decomposed = decomposed.without_biases()
            meta["bias"] = False
            notes.append("biases ignored (as the published analyses do): decomposing P((W x) ⊙ (V x)), "
                         "which is not the layer's own function")
    input_map = None
    if map_embedding:
        input_map = _embedding_to_map(checkpoint, loaded, dev)
        meta["map_embedding"] = True
        notes.append(f"published mode: eigenvectors found in the layer's {decomposed.d_in}-dim hidden space, "
                     f"then mapped to the {input_map.shape[1]}-dim input as embed.weightᵀ v (not orthonormal "
                     "there; --fold-embedding gives the exact input-space eigenvectors)")
    if hash_checkpoint:
        hashes = {f: file_sha256(f) for f in loaded.files}
        meta["checkpoint_sha256"] = checkpoint_sha256(loaded.files, hashes)
        meta["checkpoint_files"] = {f.name: h for f, h in hashes.items()}
    return DecompositionTarget(decomposed, resolved.directions.to(dev), resolved.description, meta,
                               notes, resolved.ids, input_map)


def _embedding_to_map(checkpoint, loaded, device) -> torch.Tensor:
    """embed.weight (d_hidden, d_input) of an image model whose layer 0 was loaded."""
    from ..io.checkpoints import open_checkpoint

    if loaded.layout != "bilinear-image":
        raise CheckpointError(f"map_embedding needs a model with an input embedding (an image model's "
                              f"embed.weight); {checkpoint} is a {loaded.layout} checkpoint")
    if loaded.index != 0:
        raise CheckpointError(f"map_embedding needs layer 0 (the block that reads the embedding), got layer {loaded.index}")
    embed = open_checkpoint(checkpoint).get("embed.weight", (loaded.layer.d_in, None), " (the input embedding to map through)")
    return embed.to(device=device, dtype=loaded.layer.dtype)


def target_from_layer(layer: BilinearLayer, directions, *, ids=None, description: str | None = None,
                      device=None) -> DecompositionTarget:
    """A target for a layer in memory. `directions` as bk.decompose takes them (output indices, or
    float vectors (b, o)); `ids` the user's own id of each (default: the indices themselves, or
    none for vectors), kept in order through to the results."""
    if not isinstance(layer, BilinearLayer):
        raise TypeError(f"layer must be a bk.BilinearLayer, got {type(layer).__name__}")
    if device is not None:
        layer = layer.to(device=resolve_device(device))
    parsed = parse_directions(directions, layer.d_out)
    tensor = parsed.indices if parsed.indices is not None else parsed.vectors
    if ids is None and parsed.indices is not None:
        ids = parsed.indices.tolist()
    elif ids is not None:
        ids = _check_ids(ids, len(parsed))
    what = description or (f"outputs {ids}" if parsed.indices is not None else f"{len(parsed)} direction vectors")
    meta = {"layout": "in-memory", "layer": None, "d_in": layer.d_in, "d_hidden": layer.d_hidden,
            "d_out": layer.d_out, "bias": layer.has_bias, "direction_ids": ids, "direction_description": what,
            "n_directions": len(parsed)}
    return DecompositionTarget(layer, tensor.to(layer.device), what, meta, [], ids)


def _check_ids(ids, n: int) -> list[int]:
    values = ids.tolist() if isinstance(ids, torch.Tensor) else list(ids)
    if any(isinstance(i, bool) or not isinstance(i, int) for i in values):
        raise TypeError(f"ids must be integers, one per direction, got {values[:5]!r}")
    if len(values) != n:
        raise ValueError(f"ids has {len(values)} entries for {n} directions; give one id per direction")
    if len(set(values)) != len(values):
        raise ValueError("ids repeat; give each direction its own id")
    return values


def resolve_device(device=None) -> torch.device:
    """'auto' (or None): the first CUDA device when torch sees one, else the CPU. Only 'cpu',
    'cuda' and 'cuda:N' are accepted: the engine runs there (a 'meta' tensor holds no numbers)."""
    if device is None or str(device) == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        dev = torch.device(device)
    except (RuntimeError, TypeError) as err:
        raise ValueError(f"device must be 'auto', 'cpu', 'cuda' or 'cuda:N', got {device!r} ({err})") from None
    if dev.type not in ("cpu", "cuda"):
        why = " (meta tensors hold no data to decompose)" if dev.type == "meta" else ""
        raise ValueError(f"device must be 'auto', 'cpu', 'cuda' or 'cuda:N', got {str(device)!r}{why}")
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise ValueError(f"device {str(dev)!r} was asked for, but torch sees no CUDA device")
    if dev.type == "cuda" and dev.index is not None and dev.index >= torch.cuda.device_count():
        raise ValueError(f"device {str(dev)!r} was asked for, but torch sees {torch.cuda.device_count()} CUDA device(s)")
    return dev


# -- where results go -------------------------------------------------------------------------

@dataclass
class OutputPlan:
    """kind: "memory" (out=None), "file" (a .safetensors file) or "store" (a sweep directory)."""

    kind: str
    path: Path | None


def plan_output(out) -> OutputPlan:
    """Decide what `out` names and check that it can be written, before anything is computed.

    A name ending in .safetensors is a results file; an existing directory, a name ending in '/',
    or a name without a suffix is a sweep store. Anything else (x.pt, x.npz) is refused rather
    than guessed."""
    if out is None:
        return OutputPlan("memory", None)
    text = os.fspath(out)
    if not isinstance(text, str) or not text.strip():
        raise ValueError(f"out must be a file or directory path, got {out!r}")
    path = Path(text)
    exists_as_dir = path.is_dir()
    if path.suffix == RESULT_SUFFIX and not exists_as_dir:
        _check_can_create(path, "results file")
        return OutputPlan("file", path)
    if exists_as_dir or text.endswith(("/", os.sep)) or not path.suffix:
        if path.exists() and not exists_as_dir:
            raise OutputError(f"out {text!r} exists and is not a directory; a sweep store is a directory")
        if not path.exists():  # the store makes missing parents; the nearest existing one must be writable
            ancestor = next(p for p in path.absolute().parents if p.exists())
            if not ancestor.is_dir() or not os.access(ancestor, os.W_OK | os.X_OK):
                raise OutputError(f"cannot create the sweep store directory {path}: {ancestor} is not a writable directory")
        return OutputPlan("store", path)
    raise ValueError(
        f"out {text!r} ends in {path.suffix!r}: results are written to a {RESULT_SUFFIX} file, or streamed into "
        f"a sweep store directory. Name a file ending in {RESULT_SUFFIX}, or end the name with '/' "
        f"({text}/) for a directory")


def _check_can_create(path: Path, what: str) -> None:
    parent = path.parent
    if not parent.exists():
        raise OutputError(f"the folder of the {what} does not exist: {parent}")
    if not parent.is_dir():
        raise OutputError(f"the folder of the {what} is not a directory: {parent}")
    if path.exists():
        mode = path.stat().st_mode
        if not stat.S_ISREG(mode):
            raise OutputError(f"the {what} {path} exists and is not a regular file")
    if not os.access(parent, os.W_OK | os.X_OK):
        raise OutputError(f"cannot write the {what} {path}: its folder {parent} is not writable")


def save_result(result: DecompositionResult, path) -> None:
    """result.save(path), with any failure (a full disk, a file-size limit, a read-only or
    special filesystem) as one OutputError naming the file. The library writes a temporary
    file and renames it, so a failed write leaves no partial file."""
    try:
        result.save(path)
    except Exception as err:  # noqa: BLE001 - safetensors' SafetensorError wraps the OS error, no OSError
        raise OutputError(f"could not write {path}: {' '.join(str(err).split())}") from None


# -- running ------------------------------------------------------------------------------------

def effective_k(k: int | None, layer: BilinearLayer) -> tuple[int | None, str | None]:
    """k capped at the form's dimension d (None: the full spectrum), and a note when capped."""
    if k is None:
        return None, None
    if isinstance(k, bool) or not isinstance(k, int) or k < 1:
        raise ValueError(f"k must be a positive int or None (the full spectrum), got {k!r}")
    d = layer.d_form
    if k > d:
        form = f"d = {d}" + (f": {d - 1} inputs and the constant 1 of the biases" if layer.has_bias else "")
        return d, f"k={k} is more than the {d} eigenpairs each direction has ({form}): computing all {d}"
    return k, None


def default_chunk(layer: BilinearLayer, k: int | None, dtype=None) -> int:
    """Directions per decompose call when none is asked: DEFAULT_CHUNK, or fewer where their
    result (eigenvectors, eigenvalues, residuals) would take more than a quarter of the memory
    budget, as full spectra of wide layers do."""
    from .._arrays import working_dtype
    from ..memory import memory_budget

    d = layer.d_form
    k_used = d if k is None else min(k, d)
    itemsize = torch.empty((), dtype=working_dtype(layer.w.dtype, dtype)).element_size()
    per_direction = (d + 2) * k_used * itemsize
    fits = memory_budget(layer.device) // (RESULT_SHARE_OF_BUDGET * per_direction)
    return int(max(1, min(DEFAULT_CHUNK, fits)))


def iter_decomposition_chunks(target: DecompositionTarget, *, k: int | None, which: str = "LM",
                              method: str = "auto", dtype=None, tol: float | None = None,
                              chunk: int | None = None, start: int = 0, progress: bool = True):
    """Yield (start, stop, DecompositionResult) over chunks of `chunk` directions from `start`
    (default: default_chunk), with a progress bar over the chunks. k above d is capped at d."""
    from tqdm.auto import tqdm

    if chunk is None:
        chunk = default_chunk(target.layer, k, dtype)
    if isinstance(chunk, bool) or not isinstance(chunk, int) or chunk < 1:
        raise ValueError(f"chunk must be a positive number of directions, got {chunk!r}")
    n = len(target)
    if isinstance(start, bool) or not isinstance(start, int) or not 0 <= start <= n:
        raise ValueError(f"start must be in [0, {n}], got {start!r}")
    k, _ = effective_k(k, target.layer)
    bar = tqdm(range(start, n, chunk), desc="decompose", unit="chunk", disable=not progress, leave=False)
    for begin in bar:
        stop = min(begin + chunk, n)
        part = decompose(target.layer, target.directions[begin:stop], k=k, which=which, method=method,
                         tol=tol, dtype=dtype, progress=False)
        bar.set_postfix(directions=f"{stop}/{n}")
        yield begin, stop, part


def decompose_target(target: DecompositionTarget, *, k: int | None, which: str = "LM", method: str = "auto",
                     dtype=None, tol: float | None = None, chunk: int | None = None,
                     progress: bool = True, options: dict | None = None) -> DecompositionResult:
    """Every chunk of the target, concatenated into one result whose metadata reproduces it:
    the target's metadata and notes, the options as asked (k None: the full spectrum) and as used
    (k capped at d), and the versions."""
    started = time.perf_counter()
    k_used, k_note = effective_k(k, target.layer)
    if chunk is None:
        chunk = default_chunk(target.layer, k_used, dtype)
    parts = [part for _, _, part in iter_decomposition_chunks(
        target, k=k, which=which, method=method, dtype=dtype, tol=tol, chunk=chunk, progress=progress)]
    result = concatenate(parts)
    if target.input_map is not None:
        result = result.map_input(target.input_map)
    from .. import __version__

    result.metadata.update(target.metadata)
    result.metadata.update({
        "direction_ids": target.ids,
        "notes": list(target.notes) + ([k_note] if k_note else []),
        "options": {"k": k, "k_used": k_used, "which": which, "method": method,
                    "dtype": None if dtype is None else str(dtype).replace("torch.", ""),
                    "tol": tol, "chunk": chunk, **(options or {})},
        "seconds": round(time.perf_counter() - started, 6),
        "package_version": __version__, "torch_version": torch.__version__,
    })
    return result


def concatenate(parts: list[DecompositionResult]) -> DecompositionResult:
    """One result from the results of consecutive chunks of directions."""
    if not parts:
        raise ValueError("no results to concatenate")
    methods = sorted({p.method for p in parts})
    first = parts[0]
    cat = (lambda xs: torch.cat([torch.as_tensor(x) for x in xs]))
    indices = None if first.indices is None else cat([p.indices for p in parts])
    meta = dict(first.metadata)
    meta["solver_seconds"] = round(sum(p.metadata.get("seconds", 0.0) for p in parts), 6)
    meta.pop("seconds", None)
    return DecompositionResult(cat([p.eigenvalues for p in parts]), cat([p.eigenvectors for p in parts]),
                               cat([p.residuals for p in parts]), "+".join(methods), first.which,
                               indices, meta)


def run_target(target: DecompositionTarget, *, k: int | None = None, which: str = "LM", method: str = "auto",
               dtype=None, tol: float | None = None, chunk: int | None = None, out=None, resume: bool = True,
               progress: bool | None = None, on_note: Callable[[str], None] | None = None):
    """Decompose every direction of `target`.

    out=None              -> the DecompositionResult, in memory
    out="x.safetensors"   -> the same, also saved there
    out="dir/" (or a name without suffix, or an existing directory)
                          -> a resumable sweep store (one shard per chunk), returns its SweepReport;
                             read it with bk.open_results(dir). resume=False starts it anew.
    k None is the full spectrum; k above d is capped at d, with a note. chunk: directions per
    decompose call (default 256 in memory, fewer where their result would take over a quarter
    of the memory budget; a store's default is about 128 MiB of eigenvectors).
    on_note(text) is called with each note (the target's, then the run's) before computing."""
    plan = plan_output(out)
    if chunk is not None and (isinstance(chunk, bool) or not isinstance(chunk, int) or chunk < 1):
        raise ValueError(f"chunk must be a positive number of directions, got {chunk!r}")
    k_used, k_note = effective_k(k, target.layer)
    check_solver_options(target.layer, k_used, which, method, tol, dtype)  # refuse before any note or work
    if on_note is not None:
        for note in target.notes + ([k_note] if k_note else []):
            on_note(note)
    if progress is None:
        import sys

        progress = sys.stderr.isatty()
    if plan.kind == "store":
        if target.input_map is not None:
            raise ValueError("map_embedding writes a result file or returns the result; a sweep store keeps the "
                             "exact eigenvectors only (decompose into a .safetensors file, or map each chunk with "
                             "DecompositionResult.map_input)")
        return _run_store(target, plan.path, k=k_used, which=which, method=method, tol=tol, dtype=dtype,
                          chunk=chunk, resume=resume, progress=progress)
    result = decompose_target(target, k=k, which=which, method=method, dtype=dtype, tol=tol,
                              chunk=chunk, progress=progress,
                              options={"device": str(target.layer.device)})
    if plan.kind == "file":
        save_result(result, plan.path)
    return result


def _run_store(target: DecompositionTarget, path: Path, *, k, which, method, tol, dtype, chunk, resume, progress):
    """Stream into a resumable sweep store (one process, or one rank under torchrun), indexed by
    the target's own direction ids."""
    from . import sweep

    keys = ("checkpoint_sha256", "layer", "layout", "directions", "fold_embedding", "fold_norms", "allow_gated")
    fingerprint = {key: target.metadata.get(key) for key in keys if key in target.metadata}
    if "checkpoint_sha256" not in fingerprint:
        fingerprint["layer_sha256"] = sweep.layer_fingerprint(target.layer)
    return sweep.run_sweep_from_env(target.layer, target.directions, path, ids=target.ids, k=k, which=which,
                                    method=method, tol=tol, dtype=dtype, chunk=chunk, resume=resume,
                                    fingerprint=fingerprint, progress=progress)


def decompose_checkpoint(checkpoint, *, directions: str, layer: int | None = None, k: int | None = None,
                         which: str = "LM", method: str = "auto", dtype=None, tol: float | None = None,
                         chunk: int | None = None, device=None, out=None, resume: bool = True,
                         allow_gated: bool = False, fold_embedding: bool = False, fold_norms: bool = False,
                         ignore_biases: bool = False, map_embedding: bool = False, progress: bool | None = None, on_note: Callable[[str], None] | None = None):
    """resolve_target, then run_target: one layer of a checkpoint along `directions`, into memory,
    a .safetensors file or a sweep store (see run_target for `out`). The output path is checked
    before the checkpoint is read."""
    plan_output(out)
    target = resolve_target(checkpoint, layer=layer, directions=directions, allow_gated=allow_gated,
                            fold_embedding=fold_embedding, fold_norms=fold_norms, ignore_biases=ignore_biases,
                            map_embedding=map_embedding, device=device)
    return run_target(target, k=k, which=which, method=method, dtype=dtype, tol=tol, chunk=chunk, out=out,
                      resume=resume, progress=progress, on_note=on_note)


# -- whole networks ---------------------------------------------------------------------------

def decompose_network_checkpoint(checkpoint, *, directions: str, k: int | None = None, which: str = "LM",
                                 rank=None, dtype=None, device=None, out=None, residual: bool | None = None,
                                 max_memory: int | None = None, hash_checkpoint: bool = True,
                                 progress: bool | None = None, on_note: Callable[[str], None] | None = None):
    """A whole published image model (any n_layer, residual or not, biases) decomposed through
    depth along `directions` (a string as for one layer, e.g. "classes", "0,5,7", "contrast:3",
    read against the network's outputs): `checkpoints.load_network`, then `decompose_network`.
    Returns the NetworkDecomposition, also saved to `out` (a .safetensors file) when given; its
    metadata holds the checkpoint's SHA-256, what was read, the notes, the options and the versions.

    k        eigenpairs of the top form per direction (None: all); above the largest possible
             number (d_in + 1 for one layer, d + 1 deeper) it is capped, with a note
    rank     features kept per level: None exact, an int the top r, a float in (0, 1) that share of Σσ²
    residual needed only for a checkpoint without config.json (see load_network)
    on_note(text) is called with each note before the work starts."""
    from ..io.checkpoints import load_network
    from ..network.network_decomposition import decompose_network

    plan = plan_output(out)  # before the checkpoint is read
    if plan.kind == "store":
        raise ValueError(f"out {os.fspath(out)!r}: a network decomposition is written to one {RESULT_SUFFIX} file "
                         f"(name one ending in {RESULT_SUFFIX}); sweep stores hold single-layer results")
    started = time.perf_counter()
    loaded = load_network(checkpoint, residual=residual, device=resolve_device(device))
    net = loaded.network
    resolved = resolve_directions(directions, None, net.d_out, "the network's outputs")
    notes = list(loaded.notes)
    largest = net.d_in + 1 if net.n_layers == 1 else net.d_stream + 1
    if k is not None and (isinstance(k, bool) or not isinstance(k, int) or k < 1):
        raise ValueError(f"k must be a positive int or None (every eigenpair), got {k!r}")
    k_used = k
    if k is not None and k > largest:
        k_used = None
        notes.append(f"k={k} is more than the at most {largest} eigenpairs each direction has "
                     f"({'d_in + 1: the inputs and the constant' if net.n_layers == 1 else 'd + 1: the stream and the constant'}): "
                     "computing all")
    if on_note is not None:
        for note in notes:
            on_note(note)
    if progress is None:
        import sys

        progress = sys.stderr.isatty()
    result = decompose_network(net, resolved.directions, k=k_used, which=which, rank=rank, dtype=dtype,
                               max_memory=max_memory, progress=progress)
    if resolved.ids is not None:
        result.direction_ids = list(resolved.ids)
    from .. import __version__

    meta = {"checkpoint": str(checkpoint), **loaded.describe(), "notes": notes, "directions": directions,
            "direction_ids": result.direction_ids, "direction_description": resolved.description,
            "n_directions": len(resolved),
            "options": {"k": k, "k_used": result.k, "which": which,
                        "rank": rank if rank is None or isinstance(rank, (int, float)) else list(rank),
                        "dtype": None if dtype is None else str(dtype).replace("torch.", ""),
                        "device": str(net.device), "residual": residual},
            "ranks": result.ranks, "seconds": round(time.perf_counter() - started, 6),
            "package_version": __version__, "torch_version": torch.__version__}
    if hash_checkpoint:
        hashes = {f: file_sha256(f) for f in loaded.files}
        meta["checkpoint_sha256"] = checkpoint_sha256(loaded.files, hashes)
        meta["checkpoint_files"] = {f.name: h for f, h in hashes.items()}
    result.metadata.update(meta)
    if plan.kind == "file":
        try:
            result.save(plan.path)
        except Exception as err:  # noqa: BLE001 - safetensors wraps the OS error in its own type
            raise OutputError(f"could not write {plan.path}: {' '.join(str(err).split())}") from None
    return result


__all__ = ["CheckpointError", "DecompositionTarget", "OutputError", "OutputPlan", "concatenate",
           "decompose_checkpoint", "decompose_network_checkpoint", "decompose_target", "effective_k", "iter_decomposition_chunks",
           "plan_output", "resolve_device", "resolve_target", "run_target", "save_result", "target_from_layer"]
