"""Streamed, resumable, sharded sweeps: decompose many directions into a result store on disk.

`run_sweep` cuts the directions into fixed chunks (positions [j·chunk, (j+1)·chunk)), runs
`decompose` on one chunk at a time and writes each chunk as one durable shard (see store.py), so
memory holds one chunk's results at a time. Everything that shapes a chunk's numbers (chunk
boundaries, solver options, seed, memory budget, hence decompose's own inner chunking) is fixed
in the store's manifest when the sweep starts, so a sweep killed at any point and run again
recomputes only the chunks without a shard and, on the same hardware and software, gives the same
bytes as an uninterrupted run.

With torch.distributed (torchrun), chunk j is computed by rank j mod world_size, every rank writes
its own shards into the same store, and rank 0 finalizes the manifest (see distributed.py).

Command line, for a layer saved as a safetensors file with tensors "w", "v" and optionally "p",
"w_bias", "v_bias":

    python -m bilinear_kernels.sweep layer.safetensors --out DIR --directions 0:4096 --k 16
    torchrun --nproc-per-node 4 -m bilinear_kernels.sweep layer.safetensors --out DIR ...
"""
from __future__ import annotations

import argparse
import hashlib
import json
import math
import os
import shlex
import sys
import threading
import time
import warnings
from dataclasses import asdict, dataclass, field
from datetime import datetime, timezone
from pathlib import Path

import numpy as np
import torch

from ..arguments import positive_float, positive_int, tracebacks_wanted
from ..decompose import METHODS, decompose
from ..decompose import resolve_options as decompose_options
from ..directions import Directions, parse_directions
from ..interaction import _check_layer
from ..io.store import (INT64, CorruptShardError, DamagedStoreError, OptionsMismatchError, StoreError, StoreLock,
                        StoreLockedError, StoreWriteError, SweepStore, ids_sha256, read_manifest)
from ..layer import BilinearLayer
from ..memory import memory_budget
from ..progress import cancel_scope
from ..solvers.selection import WHICH
from . import distributed

# default chunk: shards of about this many bytes of eigenvectors, and never more directions than this
SHARD_TARGET_BYTES = 128 * 2**20
MAX_DEFAULT_CHUNK = 1024
_HASH_ROWS = 4096  # rows hashed at a time, so fingerprints of big weights need no big copies


@dataclass
class SweepReport:
    """What one call of run_sweep did. Counts are over all ranks; `per_rank` has each rank's own."""

    path: str
    rank: int
    world_size: int
    n_directions: int
    n_chunks: int
    chunks_computed: int
    chunks_skipped: int
    chunks_repaired: int
    directions_computed: int
    seconds: float
    per_rank: list = field(default_factory=list)
    # this rank's time inside decompose; the rest of `seconds` is the store (set-up, checks,
    # serializing, hashing, fsync), coordination and waiting for other ranks
    compute_seconds: float = 0.0

    @property
    def directions_per_second(self) -> float:
        return self.directions_computed / self.seconds if self.seconds > 0 else float("nan")

    def as_dict(self) -> dict:
        return {**asdict(self), "directions_per_second": self.directions_per_second}


# -- what a sweep is ------------------------------------------------------------------------
def layer_fingerprint(layer: BilinearLayer) -> str:
    """sha256 over the layer's weights (names, shapes, dtypes and bytes): identifies the layer
    when no checkpoint hash is at hand."""
    digest = hashlib.sha256()
    for name in ("w", "v", "p", "w_bias", "v_bias"):
        t = getattr(layer, name)
        if t is None:
            continue
        digest.update(f"{name}:{tuple(t.shape)}:{t.dtype};".encode())
        flat = t.detach().reshape(t.shape[0], -1) if t.ndim else t.detach().reshape(1, 1)
        for start in range(0, flat.shape[0], _HASH_ROWS):
            block = flat[start:start + _HASH_ROWS].to("cpu").contiguous().reshape(-1)
            digest.update(block.view(torch.uint8).numpy().tobytes())
    return digest.hexdigest()


def describe_layer(layer: BilinearLayer) -> dict:
    return {"d_in": layer.d_in, "d_hidden": layer.d_hidden, "d_out": layer.d_out, "bias": layer.has_bias,
            "dtype": str(layer.dtype).replace("torch.", "")}


def direction_ids(dirs: Directions, ids=None) -> tuple[torch.Tensor, dict]:
    """The ids of the directions in sweep order and the manifest's description of the directions
    (with a sha256 that tells one set of directions from another, and one of the ids).

    Index directions are their own ids (`ids`, if given, must equal them). Float directions take
    `ids` (the user's own: token ids of unembedding rows, SAE feature numbers, the target of a
    contrast), or their row numbers when none are given. Ids are unique ints."""
    digest = hashlib.sha256()
    if dirs.indices is not None:
        user = dirs.indices.to(torch.int64)
        if ids is not None and _id_tensor(ids, len(user)).tolist() != user.tolist():
            raise ValueError(f"ids: output-index directions are their own ids; got ids {_short(_id_tensor(ids, len(user)))} "
                             f"for the indices {_short(user)} (leave ids out, or give float directions)")
        digest.update(user.contiguous().numpy().tobytes())
        kind = "indices"
    else:
        vectors = dirs.vectors.detach()
        digest.update(f"{tuple(vectors.shape)};".encode())
        for start in range(0, vectors.shape[0], _HASH_ROWS):
            digest.update(vectors[start:start + _HASH_ROWS].to("cpu", torch.float64).contiguous().numpy().tobytes())
        user = torch.arange(vectors.shape[0], dtype=torch.int64) if ids is None else _id_tensor(ids, vectors.shape[0])
        kind = "vectors"
    values, counts = torch.unique(user, return_counts=True)
    if bool((counts > 1).any()):
        what = "output index" if kind == "indices" else "id"
        raise ValueError(f"directions repeat {what} {int(values[counts > 1][0])}; a sweep stores each direction "
                         "once under its id, so give each once")
    return user, {"kind": kind, "count": len(user), "sha256": digest.hexdigest(), "ids_sha256": ids_sha256(user)}


def _id_tensor(ids, n: int) -> torch.Tensor:
    """`ids` (a sequence of ints or a 1-D integer tensor/array) as int64, checked to name n directions."""
    if isinstance(ids, (str, bytes)) or not hasattr(ids, "__len__"):
        raise TypeError(f"ids must be a sequence of ints, one per direction, got {type(ids).__name__}")
    if isinstance(ids, (torch.Tensor, np.ndarray)):
        if ids.ndim != 1 or (ids.dtype.is_floating_point if isinstance(ids, torch.Tensor) else ids.dtype.kind not in "iu"):
            raise TypeError(f"ids must be a 1-D integer array, got shape {tuple(ids.shape)} and dtype {ids.dtype}")
        ids = ids.tolist()
    values = []
    for i in ids:
        if isinstance(i, bool) or not isinstance(i, (int, np.integer)):
            raise TypeError(f"ids must be ints, got {type(i).__name__} ({i!r:.40})")
        if not INT64[0] <= int(i) <= INT64[1]:
            raise ValueError(f"ids must fit in int64, got {int(i)}")
        values.append(int(i))
    if len(values) != n:
        raise ValueError(f"ids names {len(values)} directions, and there are {n}")
    return torch.tensor(values, dtype=torch.int64)


def _short(ids: torch.Tensor) -> str:
    shown = ", ".join(str(i) for i in ids[:6].tolist())
    return f"[{shown}{', ...' if len(ids) > 6 else ''}]"


def _on_rank_zero(coordinator, rank: int, action, share):
    """Run `action` on rank 0 only; every rank then learns `share(result)` (a JSON-able dict), or
    raises the same error rank 0 met, so no rank waits forever on a failed one. Rank 0 gets the
    result itself."""
    if rank == 0:
        try:
            result = action()
        except Exception as exc:
            coordinator.broadcast({"error": _describe_error(exc)})
            raise
        coordinator.broadcast(share(result))
        return result
    outcome = coordinator.broadcast(None)
    if "error" in outcome:
        raise _rebuild_error(outcome["error"])
    return outcome


def resolve_options(layer: BilinearLayer, k, which, method, tol, dtype, seed) -> dict:
    """Check the solver options as decompose would and resolve the defaults, so that equal
    requests written differently (k=None or k=d, method="auto" or what it picks) compare equal."""
    if isinstance(seed, bool) or not isinstance(seed, int):
        raise TypeError(f"seed must be an int, got {type(seed).__name__}")
    opts = decompose_options(layer, k, which, method, tol, dtype)
    return {"k": opts.k, "which": opts.which, "method": opts.method, "tol": opts.tol,
            "dtype": str(opts.dtype).replace("torch.", ""), "seed": seed}


def default_chunk(d: int, k: int, itemsize: int) -> int:
    """Directions per shard: about SHARD_TARGET_BYTES of eigenvectors, at most MAX_DEFAULT_CHUNK."""
    return int(max(1, min(MAX_DEFAULT_CHUNK, SHARD_TARGET_BYTES // max(1, d * k * itemsize))))


def _check_positive_int(value, name: str) -> None:
    if value is None:
        return
    if isinstance(value, bool) or not isinstance(value, int):
        raise TypeError(f"{name} must be a positive int or None, got {type(value).__name__}")
    if value < 1:
        raise ValueError(f"{name} must be a positive int, got {value}")


# -- the sweep ------------------------------------------------------------------------------
class SweepInterrupted(KeyboardInterrupt):
    """Ctrl-C (SIGINT) stopped a sweep. Every chunk finished before it is in the store; running
    the same sweep again resumes from there. `path`, `finished` and `n_chunks` say how far it got."""

    def __init__(self, path, finished: int, n_chunks: int):
        self.path, self.finished, self.n_chunks = str(path), finished, n_chunks
        super().__init__(f"{finished} of {n_chunks} chunks are saved in {path} (the chunk being computed is lost); "
                         "running the same sweep again resumes from there")


def run_sweep(layer: BilinearLayer, directions, out_dir, *, ids=None, k: int | None = None, which: str = "LM",
              method: str = "auto", tol: float | None = None, dtype=None, chunk: int | None = None,
              resume: bool = True, fingerprint: dict | None = None, progress: bool | None = None,
              rank: int = 0, world_size: int = 1, seed: int = 0,
              max_memory: int | None = None) -> SweepReport:
    """Decompose `directions` of `layer` into the result store `out_dir`, one chunk at a time.

    ids         the id of each direction, by which the store is indexed (`open_results(out)[id]`):
                index directions are their own ids; float directions (unembedding rows, SAE rows,
                contrasts) take these (e.g. token ids), else their row numbers. Unique ints.
    k, which, method, tol, dtype, seed, max_memory: as for decompose (each chunk is one decompose
                call with these, so memory holds one chunk's results at a time).
    chunk       directions per shard; default about 128 MiB of eigenvectors (at most 1024). The
                unit of loss: a killed sweep loses at most the chunks in flight.
    resume      True: continue a store made with the same settings (finished shards are kept,
                damaged ones recomputed, a damaged ids file rewritten; other settings are refused
                with OptionsMismatchError naming each difference, a damaged manifest with
                DamagedStoreError); a new or empty directory starts a new store.
                False: empty an existing store, damaged or not, and start anew (a StoreWarning
                lists what is removed; files a store does not make are never removed).
                chunk and max_memory left at None take the store's values on resume.
    fingerprint JSON-able dict naming what is decomposed (a checkpoint hash and layer index);
                default {"layer_sha256": layer_fingerprint(layer)}. Part of the resume check.
    progress    a bar with directions/s and ETA on rank 0, one per rank when distributed
                (default: when stderr is a terminal)
    rank, world_size  this process among the sweep's processes; world_size > 1 needs an
                initialized torch.distributed group (distributed.init_from_env) and a directory
                that all ranks see (a shared filesystem across nodes). run_sweep_from_env sets
                these from a torchrun launch.

    The store has one writer: rank 0 holds an exclusive lock on it for the whole run, and a
    second sweep on the same store is refused with StoreLockedError naming the process at work.
    Ctrl-C raises SweepInterrupted within a fraction of a second (the chunk being computed is
    abandoned; its worker thread stops at its next inner chunk).

    Returns a SweepReport (the same on every rank, but `rank`). Read the results with
    bk.open_results(out_dir).
    """
    started = time.perf_counter()
    _check_layer(layer)
    distributed.check_rank(rank, world_size)
    _check_positive_int(chunk, "chunk")
    _check_positive_int(max_memory, "max_memory")
    if fingerprint is not None and not isinstance(fingerprint, dict):
        raise TypeError(f"fingerprint must be a dict (e.g. a checkpoint hash and layer index), got {type(fingerprint).__name__}")
    dirs = parse_directions(directions, layer.d_out)
    options = resolve_options(layer, k, which, method, tol, dtype, seed)
    ids, described = direction_ids(dirs, ids)
    out_dir = Path(out_dir)

    coordinator = distributed.Coordinator(rank, world_size)
    bar = lock = None
    n_chunks, store = 0, None
    try:
        # -- rank 0 locks the store and sets it up; everyone learns the outcome ---------------
        def set_up():
            nonlocal lock
            lock = StoreLock(out_dir).acquire()
            header = _header(layer, fingerprint, described, options, chunk, max_memory, out_dir, resume)
            return SweepStore.create_or_resume(out_dir, header, ids, resume)

        store = _on_rank_zero(coordinator, rank, set_up, share=lambda created: {"manifest": created.manifest})
        if rank != 0:
            store = SweepStore(out_dir, manifest=store["manifest"])
        chunk_size = int(store.manifest["options"]["chunk"])
        budget = int(store.manifest["options"]["max_memory"])
        n = len(ids)
        sizes = [min(chunk_size, n - start) for start in range(0, n, chunk_size)]
        n_chunks = len(sizes)

        # -- this rank's chunks ----------------------------------------------------------------
        show = (sys.stderr.isatty() if progress is None else bool(progress)) and rank == 0
        bar = distributed.SweepProgress(store.finished_chunks, sizes, world_size, enabled=show).start()
        counts = {"computed": 0, "skipped": 0, "repaired": 0, "directions": 0}
        compute_seconds = 0.0
        for index in distributed.chunks_for_rank(len(sizes), rank, world_size):
            record = store.record(index)
            if record is not None:
                problem = store.check_chunk(index, record)
                if problem is None:
                    counts["skipped"] += 1
                    continue
                warnings.warn(f"{problem}; recomputing it", RuntimeWarning, stacklevel=2)
                store.discard(index)
                counts["repaired"] += 1
            start = index * chunk_size
            stop = start + sizes[index]
            sub = ids[start:stop] if dirs.indices is not None else dirs.vectors[start:stop]
            computing = time.perf_counter()
            result = compute_interruptibly(lambda: decompose(
                layer, sub, k=options["k"], which=options["which"], method=options["method"], tol=options["tol"],
                dtype=options["dtype"], max_memory=budget, progress=False, seed=options["seed"]), layer.device)
            compute_seconds += time.perf_counter() - computing
            store.write_shard(index, start, stop, ids[start:stop], torch.as_tensor(result.eigenvalues),
                              torch.as_tensor(result.eigenvectors), torch.as_tensor(result.residuals),
                              result.method, rank=rank)
            del result
            counts["computed"] += 1
            counts["directions"] += stop - start

        # -- all done: rank 0 finalizes the manifest -----------------------------------------
        coordinator.barrier()
        _on_rank_zero(coordinator, rank, store.finalize, share=lambda _: {})
        per_rank = coordinator.gather({"rank": rank, **counts, "compute_seconds": compute_seconds})
    except KeyboardInterrupt:
        finished = len(store.finished_chunks()) if store is not None else 0
        raise SweepInterrupted(out_dir, finished, n_chunks) from None
    finally:
        if bar is not None:
            bar.close()
        coordinator.close()
        if lock is not None:
            lock.release(set_up=store is not None)
    return SweepReport(
        path=str(out_dir), rank=rank, world_size=world_size, n_directions=len(ids), n_chunks=len(sizes),
        chunks_computed=sum(r["computed"] for r in per_rank), chunks_skipped=sum(r["skipped"] for r in per_rank),
        chunks_repaired=sum(r["repaired"] for r in per_rank),
        directions_computed=sum(r["directions"] for r in per_rank),
        seconds=time.perf_counter() - started, per_rank=per_rank, compute_seconds=compute_seconds,
    )


def compute_interruptibly(work, device: torch.device | None = None, poll: float = 0.05):
    """work() run on a worker thread while this thread waits for it.

    Python acts on Ctrl-C only in the main thread and only between bytecodes, so a chunk computed
    on the main thread ignores it for as long as one batched eigh or GEMM runs (tens of seconds
    at large d). Waiting here instead, in short timed waits, the main thread takes the
    KeyboardInterrupt at once; the worker is told to stop (progress.cancel_scope: it stops at its
    next inner chunk) and is abandoned. Errors of work() are raised here."""
    cancel, done = threading.Event(), threading.Event()
    outcome = {}

    def run():
        try:
            if device is not None and device.type == "cuda":
                torch.cuda.set_device(device)  # the current device is per thread
            with cancel_scope(cancel):
                outcome["value"] = work()
                if device is not None and device.type == "cuda":
                    torch.cuda.synchronize(device)  # charge the kernels to compute, not to the write
        except BaseException as exc:  # noqa: BLE001 - handed to the waiting thread
            outcome["error"] = exc
        finally:
            done.set()

    worker = threading.Thread(target=run, name="bilinear-kernels-sweep-chunk", daemon=True)
    worker.start()
    try:
        # an Event, not Thread.join: a join interrupted by Ctrl-C can mark a running thread stopped
        while not done.wait(poll):
            pass
    except BaseException:
        cancel.set()
        _ABANDONED.append(done)
        raise
    if "error" in outcome:
        raise outcome["error"]
    return outcome["value"]


_ABANDONED: list[threading.Event] = []  # the done events of chunks abandoned on Ctrl-C


def abandoned_work() -> bool:
    """True while a chunk abandoned on Ctrl-C is still running on its worker thread (a command
    line then leaves with os._exit rather than wait for it or finalize under it)."""
    _ABANDONED[:] = [done for done in _ABANDONED if not done.is_set()]
    return bool(_ABANDONED)


def run_sweep_from_env(layer: BilinearLayer, directions, out_dir, *, ids=None, k: int | None = None,
                       which: str = "LM", method: str = "auto", tol: float | None = None, dtype=None,
                       chunk: int | None = None, resume: bool = True, fingerprint: dict | None = None,
                       progress: bool | None = None, seed: int = 0,
                       max_memory: int | None = None) -> SweepReport:
    """run_sweep as this process's part of however it was launched: alone, or under torchrun as
    one rank of many. Joins the process group torchrun describes (NCCL on GPUs, one per local
    rank, the layer moved there; gloo on CPU), runs its share and leaves the group. The arguments
    are run_sweep's."""
    ctx = distributed.init_from_env()
    try:
        if ctx.distributed and ctx.device.type == "cuda" and layer.device != ctx.device:
            layer = layer.to(device=ctx.device)
        return run_sweep(layer, directions, out_dir, ids=ids, k=k, which=which, method=method, tol=tol, dtype=dtype,
                         chunk=chunk, resume=resume, fingerprint=fingerprint, progress=progress,
                         rank=ctx.rank, world_size=ctx.world_size, seed=seed, max_memory=max_memory)
    finally:
        ctx.close()


def _header(layer, fingerprint, described, options, chunk, max_memory, out_dir, resume) -> dict:
    """The manifest header of this run; chunk and max_memory left at None take the existing
    store's values on resume, or the defaults for a new store."""
    from .. import __version__

    existing = None
    if resume and out_dir.is_dir():
        try:
            existing = read_manifest(out_dir)
        except StoreError:
            existing = None  # create_or_resume explains what is wrong with it
    stored = existing["options"] if existing is not None else {}
    itemsize = torch.empty((), dtype=getattr(torch, options["dtype"])).element_size()
    if chunk is None:
        chunk = stored.get("chunk") or min(described["count"], default_chunk(layer.d_form, options["k"], itemsize))
    if max_memory is None:
        max_memory = stored.get("max_memory") or memory_budget(layer.device)
    if fingerprint is None:
        fingerprint = {"layer_sha256": layer_fingerprint(layer)}
    try:
        fingerprint = json.loads(json.dumps(fingerprint, sort_keys=True))
    except (TypeError, ValueError) as exc:
        raise TypeError(f"fingerprint must be JSON-serializable, got {fingerprint!r} ({exc})") from None
    import safetensors

    return {
        "version": __version__,
        "versions": {"bilinear_kernels": __version__, "torch": torch.__version__,
                     "safetensors": safetensors.__version__},
        "fingerprint": fingerprint,
        "layer": describe_layer(layer),
        "directions": described,
        "options": {**options, "chunk": int(chunk), "max_memory": int(max_memory)},
        "created": datetime.now(timezone.utc).isoformat(timespec="seconds"),
    }


_ERRORS = {cls.__name__: cls for cls in (StoreError, DamagedStoreError, OptionsMismatchError, CorruptShardError,
                                         StoreLockedError, ValueError, TypeError)}


def _describe_error(exc: BaseException) -> dict:
    return {"type": type(exc).__name__, "message": str(exc), "errno": getattr(exc, "errno", None),
            "filename": getattr(exc, "filename", None)}


def _rebuild_error(info: dict) -> Exception:
    """Rank 0's error, raised again on the other ranks (as plain data: nothing is unpickled but
    the broadcast's own strings and numbers)."""
    message = f"rank 0: {info['message']}"
    if info["type"] == "StoreWriteError" or info["errno"] is not None:
        return StoreWriteError(info["errno"], message, info["filename"])
    return _ERRORS.get(info["type"], RuntimeError)(message)


# -- what a command line needs --------------------------------------------------------------
def wants_store(path) -> bool:
    """True when an output path names a sweep store (a directory), False for a single result file
    (a name ending in .safetensors that is not an existing directory)."""
    path = Path(path)
    return path.is_dir() or path.suffix != ".safetensors"


def resume_command(command) -> str:
    """The shell command that resumes an interrupted sweep started by `command` (its arguments):
    the same command without --no-resume."""
    return shlex.join(str(a) for a in command if str(a) != "--no-resume")


def parse_direction_spec(spec: str, d_out: int) -> list[int]:
    """"all", or comma-separated indices and ranges start:stop (stop excluded): "0:100,512".
    Every index must lie in [0, d_out)."""
    if spec.strip() == "all":
        return list(range(d_out))
    out = []
    for part in spec.split(","):
        part = part.strip()
        try:
            if ":" in part:
                start_text, stop_text = part.split(":")
                start, stop = int(start_text or 0), int(stop_text) if stop_text else d_out
                if start >= stop:
                    raise ValueError
                bad = start if not 0 <= start < d_out else (stop if not 0 < stop <= d_out else None)
            else:
                start = stop = int(part)
                bad = start if not 0 <= start < d_out else None
        except ValueError:
            raise ValueError(f"--directions: cannot read {part!r} (use 'all', indices and ranges like 0:100,512, "
                             "each range start:stop with start < stop)") from None
        if bad is not None:
            raise ValueError(f"--directions: {part!r} is out of range for a layer with d_out = {d_out} "
                             f"(valid indices 0..{d_out - 1}, ranges up to {d_out})")
        out.extend(range(start, stop) if ":" in part else [start])
    return out


def load_layer(path) -> BilinearLayer:
    """A BilinearLayer from a safetensors file with "w", "v" and optionally "p", "w_bias", "v_bias"
    (read as checkpoints.py reads files: pickles refused, headers checked, clear errors)."""
    from ..io.checkpoints import CheckpointError, detect_layout, load_layer as load_checkpoint, open_checkpoint

    path = Path(path)
    if path.exists() and not path.is_file():
        raise CheckpointError(f"{path} is not a file; give a safetensors file with tensors w, v and optionally p "
                              "(model folders: bilinear-kernels decompose FOLDER --layer I --out DIR)")
    source = open_checkpoint(path)
    layout = detect_layout(source)
    if layout != "plain":
        raise CheckpointError(f"{path} is a {layout} checkpoint; this command takes a file with tensors w, v and "
                              "optionally p: use bilinear-kernels decompose CHECKPOINT --layer I --out DIR")
    if path.suffix == ".safetensors":  # torch.save files are read whole by open_checkpoint already
        _check_fits_in_memory(path, [n for n in ("w", "v", "p", "w_bias", "v_bias") if n in source])
    return load_checkpoint(path).layer


_ITEMSIZE = {"F64": 8, "F32": 4, "F16": 2, "BF16": 2, "I64": 8, "I32": 4, "I16": 2, "I8": 1, "U8": 1, "BOOL": 1}


def _check_fits_in_memory(path: Path, names: list[str]) -> None:
    """Refuse, before reading, weights that the machine's free memory cannot hold (a huge or
    sparse file would otherwise be read until the allocator or the kernel gives up)."""
    from safetensors import safe_open

    from ..memory import format_bytes, free_bytes

    with safe_open(str(path), framework="pt") as f:
        need = sum(math.prod(f.get_slice(n).get_shape()) * _ITEMSIZE.get(f.get_slice(n).get_dtype(), 8) for n in names)
    available = free_bytes(torch.device("cpu"))
    if need > available:
        raise MemoryError(f"{path} holds {format_bytes(need)} of weights ({', '.join(names)}), more than the "
                          f"{format_bytes(available)} of memory available; it cannot be loaded here")


def file_sha256(path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 24), b""):
            digest.update(block)
    return digest.hexdigest()


# -- python -m bilinear_kernels.sweep -------------------------------------------------------
PROG = "python -m bilinear_kernels.sweep"


class _Parser(argparse.ArgumentParser):
    """argparse, with its errors on one line ("PROG: error: ...", exit status 2)."""

    def error(self, message):
        self.exit(2, f"{self.prog}: error: {message}\n")


def add_arguments(parser: argparse.ArgumentParser, *, out: bool = True) -> None:
    """Add the options of streamed sweeps to `parser`: --out DIR (unless out=False, for a parser that
    has its own --out), --resume/--no-resume and --chunk."""
    group = parser.add_argument_group("streamed sweeps")
    if out:
        group.add_argument("--out", metavar="DIR", help="sweep store directory: results are streamed into "
                           "it shard by shard, and a rerun resumes where it stopped")
    group.add_argument("--resume", action=argparse.BooleanOptionalAction, default=True,
                       help="continue a store made with the same settings (default; other settings are "
                       "refused); --no-resume empties the store, damaged or not, and starts anew")
    group.add_argument("--chunk", type=positive_int, default=None, metavar="N",
                       help="directions per shard (default: about 128 MiB of eigenvectors, at most 1024; "
                       "a resumed store keeps its own)")


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(prog=PROG, description="Stream a decomposition sweep of a layer saved as safetensors "
                     "(w, v, optional p) into a resumable result store. Under torchrun, directions are split "
                     "across the ranks.", epilog="Set BILINEAR_KERNELS_TRACEBACK=1 to get tracebacks instead "
                     "of one-line errors.")
    parser.add_argument("weights", help="safetensors file with tensors w, v and optionally p, w_bias, v_bias")
    parser.add_argument("--directions", default="all", help="'all' (default) or indices and ranges: 0:100,512")
    parser.add_argument("--k", type=positive_int, default=None, help="eigenpairs per direction (default: all)")
    parser.add_argument("--which", default="LM", choices=WHICH)
    parser.add_argument("--method", default="auto", choices=METHODS)
    parser.add_argument("--tol", type=positive_float, default=None)
    parser.add_argument("--dtype", default=None, choices=("float32", "float64"))
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--max-memory", type=positive_int, default=None, metavar="BYTES")
    parser.add_argument("--device", default="cpu", help="device of a single-process run (ranks under "
                        "torchrun with CUDA use their local GPU)")
    parser.add_argument("--progress", action=argparse.BooleanOptionalAction, default=None)
    parser.add_argument("--report", default=None, metavar="FILE", help="write rank 0's SweepReport here as JSON")
    add_arguments(parser)
    return parser


# what a user can get wrong; anything else is a bug and keeps its traceback
USER_ERRORS = (ValueError, TypeError, MemoryError, OSError, ImportError)


def main(argv=None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.out is None:
        parser.error("--out DIR is required")
    if argv is None:
        command = list(sys.orig_argv)
    else:
        command = [sys.executable, "-m", "bilinear_kernels.sweep", *map(str, argv)]
    launched = distributed.launched_by_torchrun() and int(os.environ.get("WORLD_SIZE", "1")) > 1
    try:
        with warnings.catch_warnings():
            warnings.showwarning = _one_line_warning
            return _run(args)
    except SweepInterrupted as err:
        print(f"{PROG}: interrupted: {err}", file=sys.stderr)
        print("to resume, run the same torchrun command again" + (" without --no-resume" if not args.resume else "")
              if launched else f"to resume, run: {resume_command(command)}", file=sys.stderr)
        if abandoned_work():  # a chunk still computing on its thread: leave now, not after it
            sys.stdout.flush()
            sys.stderr.flush()
            os._exit(130)
        return 130
    except USER_ERRORS as err:
        if tracebacks_wanted():
            raise
        print(f"{PROG}: error: {' '.join(str(err).split())}", file=sys.stderr)
        return 2


def _one_line_warning(message, category, filename, lineno, file=None, line=None):
    print(f"{PROG}: warning: {' '.join(str(message).split())}", file=sys.stderr if file is None else file)


def _run(args) -> int:
    layer = load_layer(args.weights)
    if args.device != "cpu" and not (distributed.launched_by_torchrun() and int(os.environ["WORLD_SIZE"]) > 1):
        layer = layer.to(device=_device(args.device))
    directions = parse_direction_spec(args.directions, layer.d_out)
    fingerprint = {"weights_sha256": file_sha256(args.weights)}
    report = run_sweep_from_env(layer, directions, args.out, fingerprint=fingerprint, k=args.k, which=args.which,
                                method=args.method, tol=args.tol, dtype=args.dtype, seed=args.seed,
                                max_memory=args.max_memory, progress=args.progress, chunk=args.chunk,
                                resume=args.resume)
    if report.rank == 0:
        summary = (f"{report.path}: {report.n_chunks} chunks, {report.chunks_computed} computed, "
                   f"{report.chunks_skipped} already done, {report.chunks_repaired} repaired; "
                   f"{report.directions_computed} directions in {report.seconds:.2f} s")
        print(summary, file=sys.stderr)
        if args.report:
            Path(args.report).write_text(json.dumps(report.as_dict(), indent=1) + "\n")
    return 0


def _device(name: str) -> torch.device:
    try:
        device = torch.device(name)
    except (RuntimeError, TypeError) as err:
        raise ValueError(f"--device must be cpu, cuda or cuda:N, got {name!r} ({err})") from None
    if device.type == "cuda" and not torch.cuda.is_available():
        raise ValueError(f"--device {name}: torch sees no CUDA device")
    if device.type not in ("cpu", "cuda"):
        raise ValueError(f"--device must be cpu, cuda or cuda:N, got {name!r}")
    return device


if __name__ == "__main__":
    sys.exit(main())
