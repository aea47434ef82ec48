"""The `bilinear-kernels` command (also `python -m bilinear_kernels`).

  bilinear-kernels demo [--out DIR] [--seed N] [--hidden D] [--epochs E] [--device DEV]
  bilinear-kernels decompose CHECKPOINT --directions SPEC --out FILE [--layer I] [--k K] ...
  bilinear-kernels info [--json]

`decompose` is three steps, kept apart so other modes (a resumable sweep writing chunk files into
a folder, a distributed run) can reuse the first two:
  resolve_target(...)            checkpoint + layer + directions -> DecompositionTarget
  iter_decomposition_chunks(...) the target's directions chunk by chunk -> partial results
  decompose_target(...)          all chunks, concatenated, with the metadata to reproduce them

Errors in what the user gave (missing files, bad tensors, bad options) are printed as one line and
exit with status 2; set BILINEAR_KERNELS_TRACEBACK=1 to see the traceback instead.
"""
from __future__ import annotations

import argparse
import json
import os
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

import torch

from . import sweep
from .checkpoints import CheckpointError, checkpoint_sha256, file_sha256, load_layer
from .decompose import METHODS, decompose
from .layer import BilinearLayer
from .output_directions import resolve_directions
from .result import DecompositionResult
from .solvers.selection import WHICH

PROG = "bilinear-kernels"
DEFAULT_K = 16
DEFAULT_CHUNK = 256
# what a user can get wrong; anything else is a bug and keeps its traceback
USER_ERRORS = (CheckpointError, ValueError, TypeError, MemoryError, OSError, ImportError)


# -- resolving what to decompose ----------------------------------------------------------------

@dataclass
class DecompositionTarget:
    """A layer, the directions to decompose it along, and the metadata that identifies both.

    directions: int64 (b,) output indices or float (b, o) vectors; rows are independent, so any
    slice [start:stop] is a valid sub-problem (what chunked and resumable runs rely on).
    """

    layer: BilinearLayer
    directions: torch.Tensor
    description: str
    metadata: dict = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)

    def __len__(self) -> int:
        return self.directions.shape[0]


def resolve_target(checkpoint, layer: int | None, directions: str, *, allow_gated: bool = False,
                   fold_embedding: bool = False, fold_norms: bool = False, device=None,
                   hash_checkpoint: bool = True) -> DecompositionTarget:
    """Load layer `layer` of `checkpoint` onto `device` and parse `directions` against its
    readout (output_directions.resolve_directions). The metadata holds the checkpoint's SHA-256."""
    dev = resolve_device(device)
    loaded = load_layer(checkpoint, layer, allow_gated=allow_gated, fold_embedding=fold_embedding,
                        fold_norms=fold_norms, device=dev)
    resolved = resolve_directions(directions, loaded.readout, loaded.layer.d_out, loaded.readout_name)
    meta = {"checkpoint": str(checkpoint), **loaded.describe(), "directions": directions,
            "direction_ids": resolved.ids, "direction_description": resolved.description,
            "n_directions": len(resolved)}
    if hash_checkpoint:
        hashes = {f: file_sha256(f) for f in loaded.files}
        meta["checkpoint_sha256"] = checkpoint_sha256(loaded.files, hashes)
        meta["checkpoint_files"] = {f.name: h for f, h in hashes.items()}
    return DecompositionTarget(loaded.layer, resolved.directions.to(dev), resolved.description, meta,
                               list(loaded.notes))


def resolve_device(device=None) -> torch.device:
    """'auto' (or None): the first CUDA device when torch sees one, else the CPU."""
    if device is None or str(device) == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        dev = torch.device(device)
    except (RuntimeError, TypeError) as err:
        raise ValueError(f"device must be 'auto', 'cpu', 'cuda' or 'cuda:N', got {device!r} ({err})") from None
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise ValueError(f"device {str(dev)!r} was asked for, but torch sees no CUDA device")
    return dev


# -- running ------------------------------------------------------------------------------------

def effective_k(k: int | None, layer: BilinearLayer) -> int | None:
    """k capped at the form's dimension (None: the full spectrum)."""
    return None if k is None else min(k, layer.d_form)


def iter_decomposition_chunks(target: DecompositionTarget, *, k: int | None, which: str = "LM",
                              method: str = "auto", dtype=None, tol: float | None = None,
                              chunk: int = DEFAULT_CHUNK, start: int = 0, progress: bool = True):
    """Yield (start, stop, DecompositionResult) over chunks of `chunk` directions from `start`,
    with a progress bar over the chunks."""
    from tqdm.auto import tqdm

    if isinstance(chunk, bool) or not isinstance(chunk, int) or chunk < 1:
        raise ValueError(f"chunk must be a positive number of directions, got {chunk!r}")
    n = len(target)
    if not 0 <= start <= n:
        raise ValueError(f"start must be in [0, {n}], got {start}")
    k = effective_k(k, target.layer)
    starts = range(start, n, chunk)
    bar = tqdm(starts, desc="decompose", unit="chunk", disable=not progress, leave=False)
    for begin in bar:
        stop = min(begin + chunk, n)
        part = decompose(target.layer, target.directions[begin:stop], k=k, which=which, method=method,
                         tol=tol, dtype=dtype, progress=False)
        bar.set_postfix(directions=f"{stop}/{n}")
        yield begin, stop, part


def decompose_target(target: DecompositionTarget, *, k: int | None, which: str = "LM", method: str = "auto",
                     dtype=None, tol: float | None = None, chunk: int = DEFAULT_CHUNK,
                     progress: bool = True, options: dict | None = None) -> DecompositionResult:
    """Every chunk of the target, concatenated into one result whose metadata reproduces it:
    the target's metadata, the options as asked (k None: the full spectrum; k above d is capped)
    and the versions."""
    started = time.perf_counter()
    parts = [part for _, _, part in iter_decomposition_chunks(
        target, k=k, which=which, method=method, dtype=dtype, tol=tol, chunk=chunk, progress=progress)]
    result = concatenate(parts)
    from . import __version__

    result.metadata.update(target.metadata)
    result.metadata.update({
        "options": {"k": k, "which": which, "method": method, "dtype": None if dtype is None else str(dtype),
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


# -- commands -----------------------------------------------------------------------------------

def cmd_decompose(args) -> int:
    out = Path(args.out)
    streamed = sweep.wants_store(out)
    if not out.parent.exists():
        raise CheckpointError(f"the folder of --out does not exist: {out.parent}")
    target = resolve_target(args.checkpoint, args.layer, args.directions, allow_gated=args.allow_gated,
                            fold_embedding=args.fold_embedding, fold_norms=args.fold_norms, device=args.device)
    for note in target.notes:
        print(f"note: {note}", file=sys.stderr)
    if streamed:
        return _decompose_into_store(args, target)
    result = decompose_target(target, k=args.k, which=args.which, method=args.method, dtype=args.dtype,
                              tol=args.tol, chunk=args.chunk or DEFAULT_CHUNK, progress=not args.quiet,
                              options={"device": str(resolve_device(args.device)), "allow_gated": args.allow_gated,
                                       "fold_embedding": args.fold_embedding, "fold_norms": args.fold_norms})
    result.save(out)
    layer, meta = target.layer, result.metadata
    where = f"layer {meta['layer']} of " if meta.get("layer") is not None else ""
    residual = float(torch.as_tensor(result.residuals).abs().max())
    print(f"decomposed {len(result)} direction(s): {target.description}")
    print(f"  {where}{args.checkpoint} ({meta['layout']}): d_in={layer.d_in} d_hidden={layer.d_hidden} d_out={layer.d_out}"
          f"{' with bias' if layer.has_bias else ''}")
    print(f"  k={result.k} which={result.which} method={result.method} dtype={meta.get('dtype')} "
          f"device={meta['options']['device']}")
    print(f"  time {meta['seconds']:.3g} s, max residual {residual:.2e}")
    print(f"  saved to {out}")
    return 0


def _decompose_into_store(args, target: DecompositionTarget) -> int:
    """--out DIR: stream into a resumable sweep store (one process, or one rank under torchrun)."""
    fingerprint = {key: target.metadata.get(key) for key in
                   ("checkpoint_sha256", "layer", "layout", "directions", "fold_embedding", "fold_norms")}
    fingerprint["allow_gated"] = args.allow_gated
    report = sweep.run_sweep_from_env(target.layer, target.directions, args.out,
                                      ids=target.metadata.get("direction_ids"), chunk=args.chunk,
                                      resume=args.resume, fingerprint=fingerprint,
                                      k=effective_k(args.k, target.layer), which=args.which, method=args.method,
                                      tol=args.tol, dtype=args.dtype, progress=not args.quiet)
    if report.rank == 0:
        print(f"decomposed {len(target)} direction(s) into {report.path}: {target.description}")
        print(f"  {report.directions_computed} computed now, the rest resumed; {report.seconds:.3g} s")
        print(f"  read with bk.open_results({str(report.path)!r})")
    return 0


def cmd_info(args) -> int:
    from . import __version__
    from .backends import backends

    info = backends()
    if args.json:
        print(json.dumps({"bilinear_kernels": __version__, "backends": info}, indent=2, default=str))
        return 0
    import numpy
    import scipy

    print(f"bilinear-kernels {__version__}")
    print(f"python {sys.version.split()[0]}, numpy {numpy.__version__}, scipy {scipy.__version__}")
    print("backends:")
    for line in format_mapping(info, indent=2):
        print(line)
    return 0


def format_mapping(mapping: dict, indent: int = 0) -> list[str]:
    """Readable lines for a nested dict: None as 'not available', lists joined, booleans yes/no."""
    lines = []
    width = max((len(str(k)) for k in mapping), default=0)
    for key, value in mapping.items():
        pad = " " * indent
        if isinstance(value, dict):
            lines.append(f"{pad}{key}:")
            lines.extend(format_mapping(value, indent + 2) if value else [f"{pad}  (none)"])
            continue
        if value is None:
            text = "not available"
        elif isinstance(value, bool):
            text = "yes" if value else "no"
        elif isinstance(value, (list, tuple)):
            text = ", ".join(map(str, value)) if value else "none"
        else:
            text = str(value)
        lines.append(f"{pad}{str(key) + ':':<{width + 1}} {text}")
    return lines


def cmd_demo(args) -> int:
    from .demo import run_demo

    report = run_demo(args.out, seed=args.seed, hidden=args.hidden, epochs=args.epochs, device=args.device,
                      progress=not args.quiet)
    out = Path(args.out).resolve()
    acc, trunc = report["accuracy"], report["truncation_summary"]
    print(f"test accuracy {100 * acc['test']:.2f}% (train {100 * acc['train']:.2f}%), trained in "
          f"{report['training']['seconds']:.1f} s on {report['training']['device']}")
    print(f"decomposition: {report['decomposition']['eigenpairs_per_class']} eigenpairs per digit by "
          f"'{report['decomposition']['method']}', relative reconstruction error "
          f"{report['decomposition']['relative_reconstruction_error']:.1e}")
    if trunc["smallest_k_within_1pt"] is not None:
        print(f"keeping the top {trunc['smallest_k_within_1pt']} eigenvectors per digit comes within 1 point "
              "of the full model")
    print(f"wrote to {out}:")
    for name, what in report["files"].items():
        print(f"  {name:<17} {what}")
    return 0


# -- parsing ------------------------------------------------------------------------------------

def _positive_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {text!r}") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {value}")
    return value


def _k(text: str) -> int | None:
    return None if text == "all" else _positive_int(text)


def _layer(text: str) -> int:
    try:
        return int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a layer index (an integer, negative counts from the end), got {text!r}") from None


def _positive_float(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a positive number, got {text!r}") from None
    if not value > 0:
        raise argparse.ArgumentTypeError(f"expected a positive number, got {text}")
    return value


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog=PROG, description="Exact eigendecomposition of bilinear layers f(x) = P((W x) ⊙ (V x)).",
        epilog="Set BILINEAR_KERNELS_TRACEBACK=1 to get tracebacks instead of one-line errors.")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")

    demo = sub.add_parser("demo", help="train a bilinear digits classifier and decompose every class in pixel space",
                          description="Train a bilinear classifier on scikit-learn's bundled 8x8 digits, "
                                      "decompose every class logit exactly in pixel space, and write figures "
                                      "and a report.")
    demo.add_argument("--out", default="demo_out", metavar="DIR", help="output folder (default: %(default)s)")
    demo.add_argument("--seed", type=int, default=0, help="seed for initialisation, shuffling and noise (default: 0)")
    demo.add_argument("--hidden", type=_positive_int, default=64, metavar="D", help="hidden size d (default: 64)")
    demo.add_argument("--epochs", type=_positive_int, default=None, metavar="E",
                      help="training epochs (default: 60; fewer train faster at some cost in accuracy)")
    demo.add_argument("--device", default="auto", help="auto (default), cpu, cuda or cuda:N")
    demo.add_argument("--quiet", action="store_true", help="no progress bar")
    demo.set_defaults(handler=cmd_demo)

    dec = sub.add_parser(
        "decompose", help="decompose one layer of a checkpoint along output directions",
        formatter_class=argparse.RawDescriptionHelpFormatter,
        description="Eigendecompose the interaction matrices of one bilinear layer of a checkpoint.\n\n"
                    "CHECKPOINT: a folder with config.json + model.safetensors (bilinear LM or image model,\n"
                    "Llama-style with hidden_act linear), a sharded folder, or a .safetensors file\n"
                    "(also a plain one holding w, v and optionally p, w_bias, v_bias). Pickled files\n"
                    "(.bin, .pt) are refused.\n\n"
                    "--directions:\n"
                    "  classes | vocab          every row of the head / unembedding (every output without one)\n"
                    "  0,5,7                    those rows (class indices, token ids) or outputs\n"
                    "  contrast:T[:A,B]         row T minus the mean of rows A,B (default: all others)\n"
                    "  FILE.safetensors:NAME[:T][:0,5,7]\n"
                    "                           rows of matrix NAME (:T its columns), e.g. SAE encoder rows")
    dec.add_argument("checkpoint", help="checkpoint folder or .safetensors file")
    dec.add_argument("--layer", type=_layer, default=None, metavar="I",
                     help="layer index (required when the checkpoint has several; negative counts from the end)")
    dec.add_argument("--directions", required=True, metavar="SPEC", help="output directions (see above)")
    dec.add_argument("--k", type=_k, default=DEFAULT_K, metavar="K",
                     help=f"eigenpairs per direction, or 'all' (default: {DEFAULT_K}, at most d)")
    dec.add_argument("--which", choices=WHICH, default="LM",
                     help="LM largest |λ| (default), LA largest, SA smallest, BE half from each end")
    dec.add_argument("--method", choices=METHODS, default="auto", help="solver (default: auto)")
    dec.add_argument("--device", default="auto", help="auto (default), cpu, cuda or cuda:N")
    dec.add_argument("--dtype", choices=("float32", "float64"), default=None,
                     help="working precision (default: the weights', half precision upcast to float32)")
    dec.add_argument("--tol", type=_positive_float, default=None, help="residual tolerance of method lanczos")
    dec.add_argument("--chunk", type=_positive_int, default=None, metavar="N",
                     help=f"directions per chunk (default: {DEFAULT_CHUNK} for a file; for a store, about "
                          "128 MiB of eigenvectors, at most 1024, and a resumed store keeps its own)")
    dec.add_argument("--out", required=True, metavar="FILE|DIR",
                     help="a .safetensors file to write, or a sweep store directory: results streamed shard "
                          "by shard, and a rerun resumes where it stopped")
    dec.add_argument("--resume", action=argparse.BooleanOptionalAction, default=True,
                     help="with --out DIR: continue a store made with the same settings (default; other "
                          "settings are refused); --no-resume empties the store and starts anew")
    dec.add_argument("--allow-gated", action="store_true",
                     help="decompose the bilinear part of a gated (SiLU, GELU) MLP, dropping the activation")
    dec.add_argument("--fold-embedding", action="store_true",
                     help="image models, layer 0: fold embed.weight in, so eigenvectors live in input space")
    dec.add_argument("--fold-norms", action="store_true",
                     help="language models: fold the RMSNorm gains into W, V and the unembedding")
    dec.add_argument("--quiet", action="store_true", help="no progress bar")
    dec.set_defaults(handler=cmd_decompose)

    info = sub.add_parser("info", help="show the available backends and devices")
    info.add_argument("--json", action="store_true", help="print as JSON")
    info.set_defaults(handler=cmd_info)
    return parser


def main(argv=None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.command is None:
        parser.print_help(sys.stderr)
        return 2
    try:
        return args.handler(args)
    except KeyboardInterrupt as err:
        print(f"{PROG}: interrupted{f': {err}' if str(err) else ''}", file=sys.stderr)
        if isinstance(err, sweep.SweepInterrupted):
            print(f"to resume, run: {sweep.resume_command([PROG, *(sys.argv[1:] if argv is None else argv)])}",
                  file=sys.stderr)
            if sweep.abandoned_work():  # a chunk still computing on its thread: leave now, not after it
                sys.stderr.flush()
                os._exit(130)
        return 130
    except USER_ERRORS as err:
        if os.environ.get("BILINEAR_KERNELS_TRACEBACK", "").strip() not in ("", "0"):
            raise
        print(f"{PROG} {args.command}: error: {err}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
