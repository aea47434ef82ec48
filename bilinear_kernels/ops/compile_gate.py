"""Compile every Triton kernel for sm_90 (Hopper) without a GPU, and check what the compiler made.

For each kernel, operand dtype and fp32 precision, and each configuration the autotuner may pick
there (its precision class's list after pruning by the shared-memory estimate), the kernel is
compiled through triton.compile for GPUTarget("cuda", 90, 32), specialized exactly as a launch on
contiguous, aligned tensors would be. A case fails when it does not compile, when its shared
memory passes sm_90's 232448 bytes or the estimate the pruner trusts, or when a pointer offset is
computed in int32 (it would wrap past 2³¹ elements). Registers, spill stack and the SASS op mix
(tensor-core HGMMA/HMMA against FFMA, local-memory LDL/STL) are reported per case.

    python -m bilinear_kernels.ops.compile_gate                      # check, print the table
    python -m bilinear_kernels.ops.compile_gate --write bilinear_kernels/ops/COMPILE_TABLE.md
    python -m bilinear_kernels.ops.compile_gate --ieee     # fp32 without tensor cores, to compare

Results are cached per case under ~/.cache/bilinear_kernels/compile-sm90 (or
$BILINEAR_KERNELS_COMPILE_CACHE), keyed by the kernel sources, the case and the Triton version, so
a rerun on unchanged kernels takes seconds. Must run without TRITON_INTERPRET (it refuses).
"""
from __future__ import annotations

import argparse
import collections
import concurrent.futures
import dataclasses
import hashlib
import json
import multiprocessing
import os
import re
import subprocess
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
SOURCES = ("_launch.py", "bilinear_forward.py", "interaction.py")
SM90_ARCH = 90
DTYPES = {"fp32": "float32", "fp16": "float16", "bf16": "bfloat16"}
# (operand dtype, tl.dot precision): every pair a launch can reach (see _launch.dot_precision)
MODES = [("fp32", "tf32x3"), ("fp32", "tf32"), ("fp16", None), ("bf16", None)]
# For comparison only (--ieee): fp32 FMA without tensor cores, which no launch selects; compiled
# with the configurations "highest" uses (tf32x3's).
IEEE_MODE = ("fp32", "ieee")
SASS_OPS = ("HGMMA", "HMMA", "FFMA", "LDL", "STL", "LDGSTS")
I32_ADDPTR = re.compile(r"tt\.addptr [^\n]*, (?:tensor<[0-9x]+xi32>|i32)(?:\s|$)", re.MULTILINE)


def source_hash() -> str:
    """sha256 of the kernel sources: the committed table names the sources it was made from."""
    digest = hashlib.sha256()
    for name in SOURCES:
        digest.update(name.encode() + b"\0" + (HERE / name).read_bytes())
    return digest.hexdigest()[:16]


@dataclasses.dataclass
class Case:
    kernel: str  # "forward", "backward" or "interaction"
    dtype: str
    precision: str | None
    config: dict  # BLOCK_* and num_warps, num_stages

    @property
    def label(self) -> str:
        return f"{self.dtype}-{self.precision}" if self.precision else self.dtype

    def config_text(self) -> str:
        blocks = " ".join(f"{k.removeprefix('BLOCK_')}={v}" for k, v in self.config.items()
                          if k.startswith("BLOCK_"))
        return f"{blocks} w{self.config['num_warps']} s{self.config['num_stages']}"

    def key(self, triton_version: str, sources: str) -> str:
        text = json.dumps([sources, triton_version, self.kernel, self.dtype, self.precision, self.config],
                          sort_keys=True)
        return hashlib.sha256(text.encode()).hexdigest()[:24]


def _modules():
    from . import bilinear_forward, interaction

    return {"forward": bilinear_forward, "backward": bilinear_forward, "interaction": interaction}


def cases(ieee: bool = False) -> list[Case]:
    """Every (kernel, dtype, precision, configuration) the autotuner may launch on sm_90 (with
    `ieee`, only the IEEE_MODE comparison cases)."""
    import torch

    from . import _launch

    out = []
    for kernel, module in _modules().items():
        union = _launch.union_configs(module.GPU_CONFIGS)
        for dtype, precision in [IEEE_MODE] if ieee else MODES:
            klass = "tf32x3" if precision == "ieee" else _launch.precision_class(precision)
            ids = {_launch.config_id(c) for c in _launch.class_configs(module.GPU_CONFIGS, klass)}
            itemsize = getattr(torch, DTYPES[dtype]).itemsize
            for c in _launch.prune_configs(union, ids, itemsize, module.shared_bytes, _launch.SM90_SHARED_MEMORY):
                out.append(Case(kernel, dtype, precision,
                                dict(c.kwargs, num_warps=c.num_warps, num_stages=c.num_stages)))
    return out


def _launch_arguments(case: Case):
    """(jit function, positional args, keyword args) of a launch on contiguous aligned tensors.
    Tiny CPU tensors stand in for the operands: only their dtype and alignment matter."""
    import torch

    modules = _modules()
    t = torch.empty(64, dtype=getattr(torch, DTYPES[case.dtype]))
    blocks = {k: v for k, v in case.config.items() if k.startswith(("BLOCK_", "GROUP_"))}
    options = dict(num_warps=case.config["num_warps"], num_stages=case.config["num_stages"])
    m, n, k = 4096, 2048, 512  # rows, hidden units, inputs: all multiples of 16, as in real layers
    if case.kernel == "forward":
        fn = modules["forward"]._hidden_kernel.fn
        args = (t, t, t, t, t, t, m, n, k, m, k, 1, k, 1, k, 1, 1, 1, n, 1)
        kwargs = dict(HAS_W_BIAS=True, HAS_V_BIAS=True, PRECISION=case.precision)
    elif case.kernel == "backward":
        fn = modules["backward"]._hidden_grad_kernel.fn
        args = (t, t, t, t, t, t, t, t, m, n, k, m, k, 1, k, 1, k, 1, 1, 1, n, 1, 2 * n, 1, n, 1)
        kwargs = dict(HAS_W_BIAS=True, HAS_V_BIAS=True, WRITE_HIDDEN=True, PRECISION=case.precision)
    else:
        fn = modules["interaction"]._interaction_kernel.fn
        b, h, d = 64, 4096, 1024
        args = (t, t, t, t, b, h, d, b, d, 1, d, 1, h, 1, d * d, d, 1)
        kwargs = dict(WRITE_UPPER=True, WRITE_LOWER=True, PRECISION=case.precision)
    return fn, args, dict(kwargs, **blocks, **options)


def _compile(case: Case):
    """triton.compile of the case for sm_90, specialized the way JITFunction.run would."""
    import triton
    from triton.backends.compiler import GPUTarget
    from triton.compiler.compiler import make_backend
    from triton.runtime.jit import create_function_from_signature

    fn, args, kwargs = _launch_arguments(case)
    target = GPUTarget("cuda", SM90_ARCH, 32)
    backend = make_backend(target)
    binder = create_function_from_signature(fn.signature, fn.params, backend)
    bound, specialization, options = binder(*args, **kwargs)
    options, signature, constexprs, attrs = fn._pack_args(backend, kwargs, bound, specialization, options)
    source = triton.compiler.ASTSource(fn, signature, constexprs, attrs)
    return triton.compile(source, target=target, options=options.__dict__)


def _cuobjdump() -> str:
    import triton

    return str(Path(triton.__file__).parent / "backends" / "nvidia" / "bin" / "cuobjdump")


def measure(case: Case) -> dict:
    """Compile one case and read its resources; never raises (a failure is a row)."""
    started = time.perf_counter()
    row = {"kernel": case.kernel, "mode": case.label, "config": case.config_text()}
    try:
        compiled = _compile(case)
    except Exception as exc:  # noqa: BLE001 - the gate reports every failure, it does not stop at one
        row.update(error=f"{type(exc).__name__}: {str(exc).splitlines()[0][:300] if str(exc) else ''}",
                   seconds=round(time.perf_counter() - started, 1))
        return row
    with tempfile.TemporaryDirectory() as tmp:
        cubin = Path(tmp) / "kernel.cubin"
        cubin.write_bytes(compiled.asm["cubin"])
        usage = subprocess.run([_cuobjdump(), "--dump-resource-usage", str(cubin)],
                               capture_output=True, text=True, check=True).stdout
        sass = subprocess.run([_cuobjdump(), "--dump-sass", str(cubin)],
                              capture_output=True, text=True, check=True).stdout
    found = re.search(r"REG:(\d+) STACK:(\d+)", usage)
    ops = collections.Counter(re.findall(r"\b(" + "|".join(SASS_OPS) + r")\b", sass))
    row.update(
        shared=int(compiled.metadata.shared),
        registers=int(found[1]) if found else None,
        stack=int(found[2]) if found else None,
        ops={op: ops.get(op, 0) for op in SASS_OPS},
        i32_offsets=len(I32_ADDPTR.findall(compiled.asm["ttir"])),
        seconds=round(time.perf_counter() - started, 1),
    )
    return row


def problems(case: Case, row: dict) -> list[str]:
    """Why this row fails the gate (empty when it passes)."""
    import torch

    from . import _launch

    if "error" in row:
        return [f"does not compile: {row['error']}"]
    found = []
    if row["shared"] > _launch.SM90_SHARED_MEMORY:
        found.append(f"shared memory {row['shared']} B over sm_90's {_launch.SM90_SHARED_MEMORY} B")
    module = _modules()[case.kernel]
    import triton

    config = triton.Config({k: v for k, v in case.config.items() if not k.startswith("num_")},
                           num_warps=case.config["num_warps"], num_stages=case.config["num_stages"])
    estimate = module.shared_bytes(config, getattr(torch, DTYPES[case.dtype]).itemsize)
    row["estimate"] = estimate
    if row["shared"] > estimate:
        found.append(f"shared memory {row['shared']} B over the pruner's estimate {estimate} B")
    if row["i32_offsets"]:
        found.append(f"{row['i32_offsets']} pointer offsets computed in int32")
    return found


def cache_dir() -> Path:
    env = os.environ.get("BILINEAR_KERNELS_COMPILE_CACHE")
    return Path(env) if env else Path.home() / ".cache" / "bilinear_kernels" / "compile-sm90"


def _cached_measure(args) -> dict:
    case, path = args  # path None: no cache
    if path is not None and path.is_file():
        try:
            return dict(json.loads(path.read_text()), cached=True)
        except (OSError, ValueError):
            pass
    row = measure(case)
    if path is not None and "error" not in row:  # failures are retried, never remembered
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_text(json.dumps(row))
        except OSError:
            pass
    return row


def run(jobs: int | None = None, use_cache: bool = True, ieee: bool = False) -> list[tuple[Case, dict, list[str]]]:
    """Compile every case (in `jobs` processes), returning (case, row, problems) for each."""
    import triton

    all_cases = cases(ieee)
    sources = source_hash()
    directory = cache_dir()
    work = [(c, directory / f"{c.key(triton.__version__, sources)}.json" if use_cache else None) for c in all_cases]
    jobs = jobs or min(len(work), os.cpu_count() or 1)
    if jobs <= 1:
        rows = [_cached_measure(w) for w in work]
    else:
        method = "fork" if "fork" in multiprocessing.get_all_start_methods() else "spawn"
        with concurrent.futures.ProcessPoolExecutor(jobs, mp_context=multiprocessing.get_context(method)) as pool:
            rows = list(pool.map(_cached_measure, work))
    return [(case, row, problems(case, row)) for case, row in zip(all_cases, rows)]


def render(results, triton_version: str) -> str:
    from . import _launch

    lines = [
        "# Triton kernels compiled for sm_90",
        "",
        "Made by `python -m bilinear_kernels.ops.compile_gate --write bilinear_kernels/ops/COMPILE_TABLE.md`"
        " without a GPU (triton.compile for GPUTarget(\"cuda\", 90, 32); registers, spill stack and SASS from"
        " Triton's cuobjdump). CI reruns the check (tests/ops/test_compile_gate.py) with its own Triton;"
        " these numbers are from the version below.",
        "",
        f"- kernel sources: `{source_hash()}` (sha256 of {', '.join('ops/' + s for s in SOURCES)}, first 16 hex digits)",
        f"- triton: {triton_version}",
        f"- shared-memory limit: {_launch.SM90_SHARED_MEMORY} B; estimate = the pruner's `shared_bytes`",
        "- every configuration the autotuner may pick after pruning, per dtype and tl.dot precision; forward and"
        " backward with both biases (backward also writing H), interaction writing both triangles",
        "",
        "| kernel | mode | config | regs | spill stack B | LDL/STL | shared B | estimate B | HGMMA | HMMA | FFMA"
        " | int32 offsets | compile s | status |",
        "|---|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---|",
    ]
    if any(case.precision == "ieee" for case, _, _ in results):
        lines[8:8] = ["- fp32-ieee: a comparison no launch selects, compiled with the configurations of fp32-tf32x3"]
    for case, row, found in results:
        if "error" in row:
            lines.append(f"| {row['kernel']} | {row['mode']} | {row['config']} | | | | | | | | | | "
                         f"{row['seconds']} | FAIL: {row['error']} |")
            continue
        ops = row["ops"]
        status = "ok" if not found else "FAIL: " + "; ".join(found)
        lines.append(
            f"| {row['kernel']} | {row['mode']} | {row['config']} | {row['registers']} | {row['stack']} | "
            f"{ops['LDL']}/{ops['STL']} | {row['shared']} | {row.get('estimate', '')} | {ops['HGMMA']} | "
            f"{ops['HMMA']} | {ops['FFMA']} | {row['i32_offsets']} | {row['seconds']} | {status} |")
    return "\n".join(lines) + "\n"


def committed_source_hash(table: Path) -> str | None:
    found = re.search(r"kernel sources: `([0-9a-f]+)`", table.read_text()) if table.is_file() else None
    return found[1] if found else None


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bilinear_kernels.ops.compile_gate", description=__doc__.split("\n")[0])
    parser.add_argument("--write", type=Path, help="write the Markdown table here")
    parser.add_argument("--json", type=Path, help="write the rows as JSON here")
    parser.add_argument("--jobs", type=int, default=None, help="compiling processes (default: one per core)")
    parser.add_argument("--no-cache", action="store_true", help="compile every case again")
    parser.add_argument("--ieee", action="store_true",
                        help="compile only the fp32 IEEE (no tensor core) cases, for comparison (slow: minutes each)")
    args = parser.parse_args(argv)
    if os.environ.get("TRITON_INTERPRET", "").strip() not in ("", "0"):
        print("error: unset TRITON_INTERPRET: interpreted kernels cannot be compiled", file=sys.stderr)
        return 2
    try:
        import triton
    except ImportError:
        print("error: triton is not installed", file=sys.stderr)
        return 2
    started = time.perf_counter()
    results = run(args.jobs, use_cache=not args.no_cache, ieee=args.ieee)
    table = render(results, triton.__version__)
    if args.write:
        args.write.write_text(table)
    if args.json:
        args.json.write_text(json.dumps([dict(r, problems=p) for _, r, p in results], indent=1))
    print(table)
    failed = [(c, p) for c, _, p in results if p]
    for case, found in failed:
        print(f"FAIL {case.kernel} {case.label} {case.config_text()}: {'; '.join(found)}", file=sys.stderr)
    print(f"{len(results)} cases, {len(failed)} failed, {time.perf_counter() - started:.0f} s", file=sys.stderr)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
