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
import os
import sys
import time
import warnings
from dataclasses import asdict, dataclass, field
from datetime import datetime, timezone
from pathlib import Path

import torch

from . import distributed
from .decompose import METHODS, decompose
from .decompose import resolve_options as decompose_options
from .directions import Directions, parse_directions
from .interaction import _check_layer
from .layer import BilinearLayer
from .memory import memory_budget
from .solvers.selection import WHICH
from .store import (CorruptShardError, OptionsMismatchError, StoreError, StoreWriteError, SweepStore,
                    read_manifest)

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


def direction_ids(dirs: Directions) -> tuple[torch.Tensor, dict]:
    """Ids in sweep order (output indices, or row numbers of float directions) and the manifest's
    description of the directions, with a sha256 that tells one set of directions from another."""
    digest = hashlib.sha256()
    if dirs.indices is not None:
        ids = dirs.indices.to(torch.int64)
        if torch.unique(ids).numel() != ids.numel():
            values, counts = torch.unique(ids, return_counts=True)
            raise ValueError(f"directions repeat output index {int(values[counts > 1][0])}; a sweep stores "
                             "each direction once, so give each index once")
        digest.update(ids.contiguous().numpy().tobytes())
        return ids, {"kind": "indices", "count": len(ids), "sha256": digest.hexdigest()}
    vectors = dirs.vectors.detach()
    digest.update(f"{tuple(vectors.shape)};".encode())
    for start in range(0, vectors.shape[0], _HASH_ROWS):
        digest.update(vectors[start:start + _HASH_ROWS].to("cpu", torch.float64).contiguous().numpy().tobytes())
    ids = torch.arange(vectors.shape[0], dtype=torch.int64)
    return ids, {"kind": "vectors", "count": len(ids), "sha256": digest.hexdigest()}


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
def run_sweep(layer: BilinearLayer, directions, out_dir, *, k: int | None = None, which: str = "LM",
              method: str = "auto", tol: float | None = None, dtype=None, chunk: int | None = None,
              resume: bool = True, fingerprint: dict | None = None, progress: bool | None = None,
              rank: int = 0, world_size: int = 1, seed: int = 0,
              max_memory: int | None = None) -> SweepReport:
    """Decompose `directions` of `layer` into the result store `out_dir`, one chunk at a time.

    k, which, method, tol, dtype, seed, max_memory: as for decompose (each chunk is one decompose
    call with these, so memory holds one chunk's results at a time).
    chunk       directions per shard; default about 128 MiB of eigenvectors (at most 1024). The
                unit of loss: a killed sweep loses at most the chunks in flight.
    resume      True: continue a store made with the same settings (finished shards are kept,
                damaged ones recomputed; other settings are refused with OptionsMismatchError,
                naming each difference); a new or empty directory starts a new store.
                False: empty an existing store and start anew.
                chunk and max_memory left at None take the store's values on resume.
    fingerprint JSON-able dict naming what is decomposed (a checkpoint hash and layer index);
                default {"layer_sha256": layer_fingerprint(layer)}. Part of the resume check.
    progress    a bar with directions/s and ETA on rank 0, one per rank when distributed
                (default: when stderr is a terminal)
    rank, world_size  this process among the sweep's processes; world_size > 1 needs an
                initialized torch.distributed group (distributed.init_from_env) and a directory
                that all ranks see (a shared filesystem across nodes)

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
    ids, described = direction_ids(dirs)
    out_dir = Path(out_dir)

    coordinator = distributed.Coordinator(rank, world_size)
    bar = None
    try:
        # -- rank 0 sets the store up; everyone learns the outcome --------------------------
        def set_up():
            header = _header(layer, fingerprint, described, options, chunk, max_memory, out_dir, resume)
            return SweepStore.create_or_resume(out_dir, header, ids, resume)

        store = _on_rank_zero(coordinator, rank, set_up, share=lambda created: {"manifest": created.manifest})
        if rank != 0:
            store = SweepStore(out_dir, manifest=store["manifest"])
        chunk_size = int(store.manifest["options"]["chunk"])
        budget = int(store.manifest["options"]["max_memory"])
        n = len(ids)
        sizes = [min(chunk_size, n - start) for start in range(0, n, chunk_size)]

        # -- this rank's chunks ----------------------------------------------------------------
        show = (sys.stderr.isatty() if progress is None else bool(progress)) and rank == 0
        bar = distributed.SweepProgress(store.finished_chunks, sizes, world_size, enabled=show).start()
        counts = {"computed": 0, "skipped": 0, "repaired": 0, "directions": 0}
        compute_seconds = 0.0
        for index in distributed.chunks_for_rank(len(sizes), rank, world_size):
            record = store.record(index)
            if record is not None:
                problem = store.check_shard(record)
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
            result = decompose(layer, sub, k=options["k"], which=options["which"], method=options["method"],
                               tol=options["tol"], dtype=options["dtype"], max_memory=budget,
                               progress=False, seed=options["seed"])
            if layer.device.type == "cuda":
                torch.cuda.synchronize(layer.device)  # charge the kernels to compute, not to the write
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
    finally:
        if bar is not None:
            bar.close()
        coordinator.close()
    return SweepReport(
        path=str(out_dir), rank=rank, world_size=world_size, n_directions=len(ids), n_chunks=len(sizes),
        chunks_computed=sum(r["computed"] for r in per_rank), chunks_skipped=sum(r["skipped"] for r in per_rank),
        chunks_repaired=sum(r["repaired"] for r in per_rank),
        directions_computed=sum(r["directions"] for r in per_rank),
        seconds=time.perf_counter() - started, per_rank=per_rank, compute_seconds=compute_seconds,
    )


def _header(layer, fingerprint, described, options, chunk, max_memory, out_dir, resume) -> dict:
    """The manifest header of this run; chunk and max_memory left at None take the existing
    store's values on resume, or the defaults for a new store."""
    from . import __version__

    existing = read_manifest(out_dir) if resume and out_dir.is_dir() else None
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


_ERRORS = {cls.__name__: cls for cls in (StoreError, OptionsMismatchError, CorruptShardError, ValueError, TypeError)}


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


def add_arguments(parser: argparse.ArgumentParser, *, out: bool = True) -> None:
    """Add the options of streamed sweeps to `parser`: --out DIR (unless out=False, for a parser that
    has its own --out), --resume/--no-resume and --chunk."""
    group = parser.add_argument_group("streamed sweeps")
    if out:
        group.add_argument("--out", metavar="DIR", help="sweep store directory: results are streamed into "
                           "it shard by shard, and a rerun resumes where it stopped")
    group.add_argument("--resume", action=argparse.BooleanOptionalAction, default=True,
                       help="continue a store made with the same settings (default; other settings are "
                       "refused); --no-resume empties the store and starts anew")
    group.add_argument("--chunk", type=int, default=None, metavar="N",
                       help="directions per shard (default: about 128 MiB of eigenvectors, at most 1024; "
                       "a resumed store keeps its own)")


def run_from_args(args: argparse.Namespace, layer: BilinearLayer, directions, *, fingerprint: dict | None,
                  k: int | None = None, which: str = "LM", method: str = "auto", tol: float | None = None,
                  dtype=None, seed: int = 0, max_memory: int | None = None,
                  progress: bool | None = None) -> SweepReport:
    """Run a sweep from options added by `add_arguments` (args.out, args.resume, args.chunk), as one
    process or, under torchrun, as one rank of many: joins the process group (NCCL on GPUs, one
    per local rank, the layer moved there; gloo on CPU) and leaves it when done."""
    ctx = distributed.init_from_env()
    try:
        if ctx.distributed and ctx.device.type == "cuda" and layer.device != ctx.device:
            layer = layer.to(device=ctx.device)
        return run_sweep(layer, directions, args.out, k=k, which=which, method=method, tol=tol, dtype=dtype,
                         chunk=args.chunk, resume=args.resume, fingerprint=fingerprint, progress=progress,
                         rank=ctx.rank, world_size=ctx.world_size, seed=seed, max_memory=max_memory)
    finally:
        ctx.close()


# -- python -m bilinear_kernels.sweep -------------------------------------------------------
def parse_direction_spec(spec: str, d_out: int) -> list[int]:
    """"all", or comma-separated indices and ranges start:stop (stop excluded): "0:100,512"."""
    if spec.strip() == "all":
        return list(range(d_out))
    out = []
    for part in spec.split(","):
        part = part.strip()
        try:
            if ":" in part:
                start, stop = part.split(":")
                out.extend(range(int(start or 0), int(stop) if stop else d_out))
            else:
                out.append(int(part))
        except ValueError:
            raise ValueError(f"--directions: cannot read {part!r} (use 'all', indices and ranges like 0:100,512)") from None
    return out


def load_layer(path) -> BilinearLayer:
    """A BilinearLayer from a safetensors file with "w", "v" and optionally "p", "w_bias", "v_bias"."""
    from safetensors.torch import load_file

    tensors = load_file(str(path))
    missing = [name for name in ("w", "v") if name not in tensors]
    if missing:
        raise ValueError(f"{path} has no tensor {missing[0]!r} (found {sorted(tensors)}); expected w, v and optionally p, w_bias, v_bias")
    return BilinearLayer(tensors["w"], tensors["v"], tensors.get("p"), tensors.get("w_bias"), tensors.get("v_bias"))


def file_sha256(path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 24), b""):
            digest.update(block)
    return digest.hexdigest()


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bilinear_kernels.sweep",
                                     description="Stream a decomposition sweep of a layer saved as safetensors "
                                     "(w, v, optional p) into a resumable result store. Under torchrun, "
                                     "directions are split across the ranks.")
    parser.add_argument("weights", help="safetensors file with tensors w, v and optionally p, w_bias, v_bias")
    parser.add_argument("--directions", default="all", help="'all' (default) or indices and ranges: 0:100,512")
    parser.add_argument("--k", type=int, default=None, help="eigenpairs per direction (default: all)")
    parser.add_argument("--which", default="LM", choices=WHICH)
    parser.add_argument("--method", default="auto", choices=METHODS)
    parser.add_argument("--tol", type=float, default=None)
    parser.add_argument("--dtype", default=None, choices=("float32", "float64"))
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--max-memory", type=int, default=None, metavar="BYTES")
    parser.add_argument("--device", default="cpu", help="device of a single-process run (ranks under "
                        "torchrun with CUDA use their local GPU)")
    parser.add_argument("--progress", action=argparse.BooleanOptionalAction, default=None)
    parser.add_argument("--report", default=None, metavar="FILE", help="write rank 0's SweepReport here as JSON")
    add_arguments(parser)
    args = parser.parse_args(argv)
    if args.out is None:
        parser.error("--out DIR is required")
    layer = load_layer(args.weights)
    if args.device != "cpu" and not (distributed.launched_by_torchrun() and int(os.environ["WORLD_SIZE"]) > 1):
        layer = layer.to(device=args.device)
    directions = parse_direction_spec(args.directions, layer.d_out)
    fingerprint = {"weights_sha256": file_sha256(args.weights)}
    report = run_from_args(args, layer, directions, fingerprint=fingerprint, k=args.k, which=args.which,
                           method=args.method, tol=args.tol, dtype=args.dtype, seed=args.seed,
                           max_memory=args.max_memory, progress=args.progress)
    if report.rank == 0:
        summary = (f"{report.path}: {report.n_chunks} chunks, {report.chunks_computed} computed, "
                   f"{report.chunks_skipped} already done, {report.chunks_repaired} repaired; "
                   f"{report.directions_computed} directions in {report.seconds:.2f} s")
        print(summary, file=sys.stderr)
        if args.report:
            Path(args.report).write_text(json.dumps(report.as_dict(), indent=1) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
