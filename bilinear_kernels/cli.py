"""The `bilinear-kernels` command (also `python -m bilinear_kernels`): parses arguments, calls the
library (pipeline.py for `decompose`, demo/ for `demo`, backends for `info`) and prints.

  bilinear-kernels demo [--out DIR] [--seed N] [--hidden D] [--epochs E] [--device DEV]
  bilinear-kernels decompose CHECKPOINT --directions SPEC --out FILE|DIR [--layer I] [--k K] ...
  bilinear-kernels decompose CHECKPOINT --network --directions SPEC --out FILE.safetensors [--rank R] [--k K]
  bilinear-kernels info [--json]

Errors in what the user gave (missing files, bad tensors, bad options, unwritable outputs) are
printed as one line and exit with status 2; set BILINEAR_KERNELS_TRACEBACK=1 to see the traceback
instead.
"""
from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path

import torch

from .sweep import pipeline, sweep
from .arguments import positive_float, positive_int, tracebacks_wanted
from .io.checkpoints import CheckpointError
from .decompose import METHODS
from .solvers.selection import WHICH

PROG = "bilinear-kernels"
DEFAULT_K = 16
# what a user can get wrong; anything else is a bug and keeps its traceback
USER_ERRORS = (CheckpointError, ValueError, TypeError, MemoryError, OSError, ImportError, RecursionError)


# -- commands -----------------------------------------------------------------------------------

def cmd_decompose(args) -> int:
    if args.network:
        return cmd_decompose_network(args)
    for name in ("rank", "residual"):
        if getattr(args, name) is not None:
            raise ValueError(f"--{name} applies to --network (a whole image model); one layer is decomposed exactly")
    plan = pipeline.plan_output(args.out)  # before the checkpoint is read
    target = pipeline.resolve_target(args.checkpoint, layer=args.layer, directions=args.directions,
                                     allow_gated=args.allow_gated, fold_embedding=args.fold_embedding,
                                     fold_norms=args.fold_norms, ignore_biases=args.ignore_biases,
                                     map_embedding=args.map_embedding, device=args.device)
    outcome = pipeline.run_target(target, k=args.k, which=args.which, method=args.method, dtype=args.dtype,
                                  tol=args.tol, chunk=args.chunk, out=args.out, resume=args.resume,
                                  progress=not args.quiet, on_note=_print_note)
    if plan.kind == "store":
        if outcome.rank == 0:
            print(f"decomposed {len(target)} direction(s) into {outcome.path}: {target.description}")
            print(f"  {outcome.directions_computed} computed now, the rest resumed; {outcome.seconds:.3g} s")
            print(f"  read with bk.open_results({str(outcome.path)!r})")
        return 0
    layer, meta = target.layer, outcome.metadata
    where = f"layer {meta['layer']} of " if meta.get("layer") is not None else ""
    residual = float(torch.as_tensor(outcome.residuals).abs().max())
    print(f"decomposed {len(outcome)} direction(s): {target.description}")
    print(f"  {where}{args.checkpoint} ({meta['layout']}): d_in={layer.d_in} d_hidden={layer.d_hidden} d_out={layer.d_out}"
          f"{' with bias' if layer.has_bias else ''}")
    print(f"  k={outcome.k} which={outcome.which} method={outcome.method} dtype={meta.get('dtype')} "
          f"device={meta['options']['device']}")
    print(f"  time {meta['seconds']:.3g} s, max residual {residual:.2e}")
    print(f"  saved to {plan.path}")
    return 0


# options of a single layer, with their defaults: none of them means anything for a whole network
_LAYER_ONLY = {"layer": None, "allow_gated": False, "fold_embedding": False, "map_embedding": False,
               "ignore_biases": False, "fold_norms": False, "method": "auto", "tol": None, "chunk": None, "resume": True}


def cmd_decompose_network(args) -> int:
    given = [name for name, default in _LAYER_ONLY.items() if getattr(args, name) != default]
    if given:
        flags = ", ".join("--no-resume" if n == "resume" else "--" + n.replace("_", "-") for n in given)
        raise ValueError(f"{flags}: --network decomposes the whole image model (every block, embedding to head); "
                         "options of a single layer do not apply")
    res = pipeline.decompose_network_checkpoint(
        args.checkpoint, directions=args.directions, k=args.k, which=args.which, rank=args.rank,
        dtype=args.dtype, device=args.device, out=args.out, residual=args.residual,
        progress=not args.quiet, on_note=_print_note)
    info, meta = res.network_info, res.metadata
    full = [len(s) for s in res.singular_values]
    kept = ", ".join(f"{r} of {n}" for r, n in zip(res.ranks, full)) or "none (one layer)"
    print(f"decomposed {len(res)} direction(s) through {info['n_layers']} layer(s): {meta['direction_description']}")
    print(f"  {args.checkpoint} ({meta['layout']}): d_in={info['d_in']} d={info['d']} d_out={info['d_out']}, "
          f"{'residual' if info['residual'] else 'sequential'}{', with biases' if meta['bias'] else ''}")
    print(f"  features kept per level: {kept} ({'exact' if res.ranks == full else 'truncated'})")
    print(f"  k={res.k} which={res.which} method={meta['method']} dtype={meta['dtype']} device={meta['options']['device']}")
    print(f"  time {meta['seconds']:.3g} s")
    print(f"  saved to {args.out} (read with bk.NetworkDecomposition.load)")
    return 0


def _print_note(note: str) -> None:
    print(f"note: {note}", file=sys.stderr)


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
    depth, wd = report["depth"], report["weight_decay"]
    few = ", ".join(f"top {k['rank']}: {100 * k['accuracy']:.1f}%" for k in depth["few_features"]["kept"])
    print(f"{depth['model']['layers']}-layer residual model: test accuracy {100 * depth['accuracy']['test']:.2f}%, "
          f"decomposed through depth (relative error {depth['decomposition']['relative_reconstruction_error']:.1e}); "
          f"features kept per level, {few}")
    print(f"effective rank per digit (90% of Σλ²), 1-layer model: mean {wd['with']['mean']:.1f} with weight decay "
          f"{wd['with']['weight_decay']}, {wd['without']['mean']:.1f} without")
    print(f"wrote to {out}:")
    for name, what in report["files"].items():
        print(f"  {name:<17} {what}")
    return 0


# -- parsing ------------------------------------------------------------------------------------

def _k(text: str) -> int | None:
    return None if text == "all" else positive_int(text)


def _rank(text: str):
    """--rank: 'exact' (every numerically non-zero singular value), an int r, or a share in (0, 1)."""
    if text == "exact":
        return None
    try:
        value = float(text) if any(c in text for c in ".eE") else int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected 'exact', a positive int or a share in (0, 1), got {text!r}") from None
    if isinstance(value, int) and value < 1 or isinstance(value, float) and not 0 < value < 1:
        raise argparse.ArgumentTypeError(f"expected 'exact', a positive int or a share in (0, 1), got {text!r}")
    return value


def _layer(text: str) -> int:
    try:
        return int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a layer index (an integer, negative counts from the end), got {text!r}") from None


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
    demo.add_argument("--hidden", type=positive_int, default=64, metavar="D", help="hidden size d (default: 64)")
    demo.add_argument("--epochs", type=positive_int, default=None, metavar="E",
                      help="training epochs (default: 60; fewer train faster at some cost in accuracy)")
    demo.add_argument("--device", default="auto", help="auto (default), cpu, cuda or cuda:N")
    demo.add_argument("--quiet", action="store_true", help="no progress bar")
    demo.set_defaults(handler=cmd_demo)

    dec = sub.add_parser(
        "decompose", help="decompose one layer of a checkpoint (or, with --network, a whole image model) along output directions",
        formatter_class=argparse.RawDescriptionHelpFormatter,
        description="Eigendecompose the interaction matrices of one bilinear layer of a checkpoint.\n\n"
                    "CHECKPOINT: a folder with config.json + model.safetensors (bilinear LM or image model,\n"
                    "Llama-style with hidden_act linear), a sharded folder with an index, a folder of\n"
                    "models in subfolders (pass the one to use), or a single weights file (also a plain\n"
                    "one holding w, v and optionally p, w_bias, v_bias). .pt/.bin files are read with\n"
                    "torch.load(weights_only=True) only, which refuses anything but tensors.\n\n"
                    "--directions:\n"
                    "  classes | vocab          every row of the head / unembedding (every output without one)\n"
                    "  0,5,7                    those rows (class indices, token ids) or outputs\n"
                    "  contrast:T[:A,B]         row T minus the mean of rows A,B (default: all others)\n"
                    "  FILE.safetensors:NAME[:T][:0,5,7]\n"
                    "                           rows of matrix NAME (:T its columns), e.g. SAE encoder rows")
    dec.add_argument("checkpoint", help="checkpoint folder, or a .safetensors / .pt / .bin file")
    dec.add_argument("--layer", type=_layer, default=None, metavar="I",
                     help="layer index (required when the checkpoint has several; negative counts from the end)")
    dec.add_argument("--network", action="store_true",
                     help="decompose the whole image model through depth (every block, embedding to head) "
                          "instead of one --layer; results in a .safetensors file read by bk.NetworkDecomposition.load")
    dec.add_argument("--rank", type=_rank, default=None, metavar="R",
                     help="with --network: features kept per level: 'exact' (default), an int, or a share of "
                          "Σσ² in (0, 1)")
    dec.add_argument("--residual", action=argparse.BooleanOptionalAction, default=None,
                     help="with --network, for a checkpoint without config.json: whether the blocks are residual")
    dec.add_argument("--directions", required=True, metavar="SPEC", help="output directions (see above)")
    dec.add_argument("--k", type=_k, default=DEFAULT_K, metavar="K",
                     help=f"eigenpairs per direction, or 'all' (default: {DEFAULT_K}, at most d)")
    dec.add_argument("--which", choices=WHICH, default="LM",
                     help="LM largest |λ| (default), LA largest, SA smallest, BE half from each end")
    dec.add_argument("--method", choices=METHODS, default="auto", help="solver (default: auto)")
    dec.add_argument("--device", default="auto", help="auto (default), cpu, cuda or cuda:N")
    dec.add_argument("--dtype", choices=("float32", "float64"), default=None,
                     help="working precision (default: the weights', half precision upcast to float32)")
    dec.add_argument("--tol", type=positive_float, default=None, help="residual tolerance of method lanczos")
    dec.add_argument("--chunk", type=positive_int, default=None, metavar="N",
                     help=f"directions per chunk (default: {pipeline.DEFAULT_CHUNK} for a file, fewer where their result "
                          "would take over a quarter of the memory budget; for a store, about "
                          "128 MiB of eigenvectors, at most 1024, and a resumed store keeps its own)")
    dec.add_argument("--out", required=True, metavar="FILE|DIR",
                     help="a .safetensors file to write, or a sweep store directory (an existing one, a name "
                          "ending in '/', or one without suffix): results streamed shard by shard, and a rerun "
                          "resumes where it stopped; other suffixes (.pt, ...) are refused")
    dec.add_argument("--resume", action=argparse.BooleanOptionalAction, default=True,
                     help="with --out DIR: continue a store made with the same settings (default; other "
                          "settings are refused); --no-resume empties the store and starts anew")
    dec.add_argument("--allow-gated", action="store_true",
                     help="decompose the bilinear part (W x) ⊙ (V x) of a gated (SiLU, GELU, ReLU) MLP, or of "
                          "a model whose config does not say, dropping the activation")
    dec.add_argument("--fold-embedding", action="store_true",
                     help="image models, layer 0: fold embed.weight in, so eigenvectors live in input space")
    dec.add_argument("--map-embedding", action="store_true",
                     help="image models, layer 0: the published mode: eigenvectors of the hidden-space form, "
                          "mapped to the input as embed.weightᵀ v (not orthonormal there; exclusive with "
                          "--fold-embedding, the exact input-space decomposition)")
    dec.add_argument("--ignore-biases", action="store_true",
                     help="drop the layer's biases and decompose P((W x) ⊙ (V x)), as the published analyses do "
                          "(the default keeps them, exactly, in d + 1 dimensions)")
    dec.add_argument("--fold-norms", action="store_true",
                     help="language models: fold the gain of the norm before the MLP into W, V and the final "
                          "norm's into the unembedding (a norm without parameters: the identity, said in a note)")
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
        if tracebacks_wanted():
            raise
        print(f"{PROG} {args.command}: error: {err}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
