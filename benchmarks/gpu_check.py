"""Verify a GPU machine in one command: `python -m benchmarks.gpu_check --out DIR`.

On a fresh machine with one CUDA GPU (the project installed with
`pip install --no-deps --no-build-isolation -e .`) it runs, each step in its own process with its
own time limit so that one failure or hang cannot eat the budget:

  extension     build the compiled extension in place and import it (which libcusolver it loaded)
  tests         every test file with CUDA-only tests (pytest, -n when pytest-xdist is there)
  forward/interaction/eigh   the kernel and eigh benchmarks at reduced repeats
  decompose     an end-to-end decompose of W2-W4 at reduced sizes against the research route and
                torch (benchmarks.run), under both fp32 precision modes

and writes DIR/gpu_check.json and DIR/gpu_check.md (device, driver, CUDA, torch, triton, CuPy, each
step's command, exit status, time and output tail, and the raw results of every benchmark) beside
the benchmarks' own files, ready to commit under benchmarks/results/. A failed step is recorded
and the next one runs. The whole plan fits in BUDGET_S; `--plan` prints it without running.
Without a CUDA device it refuses with one line and exit status 2.
"""
from __future__ import annotations

import argparse
import dataclasses
import datetime as dt
import importlib.util
import json
import os
import platform
import re
import shlex
import signal
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
BUDGET_S = 8 * 60
PRECISIONS = ("highest", "high")
# Test files holding tests that run only with a CUDA device (their CPU tests run too: they are quick).
CUDA_TEST_FILES = (
    "tests/ops/test_bilinear_forward.py", "tests/ops/test_interaction_kernel.py", "tests/ops/test_precision.py",
    "tests/ops/test_autotune.py", "tests/test_extension.py", "tests/test_nn.py", "tests/test_layer.py",
)
TAIL_CHARS = 4000
# every step's environment: fast paths raise instead of falling back (fast_path_guard)
STEP_ENV = (("BILINEAR_KERNELS_STRICT", "1"),)
# (batch, n) at which the report records the route torch's own CUDA eigh takes
EIGH_ROUTE_SHAPES = ((256, 32), (4096, 512), (64, 4096))


@dataclasses.dataclass(frozen=True)
class Step:
    name: str
    argv: tuple[str, ...]  # run from the repository root; "python" is this interpreter
    limit_s: int
    env: tuple[tuple[str, str], ...] = ()
    results: tuple[str, ...] = ()  # JSON files the step writes, relative to the output folder

    def command(self) -> list[str]:
        return [sys.executable if a == "python" else a for a in self.argv]


def _xdist() -> bool:
    return importlib.util.find_spec("xdist") is not None


def plan(out: Path, xdist: bool | None = None) -> list[Step]:
    """The steps and their time limits, in order."""
    xdist = _xdist() if xdist is None else xdist
    workers = ("-n", "8") if xdist else ()
    steps = [
        Step("extension-build", ("python", "setup.py", "build_ext", "--inplace"), 60,
             env=(("BILINEAR_KERNELS_BUILD_EXTENSION", "1"),)),
        Step("extension-import", ("python", "-m", "benchmarks.gpu_check", "--probe", str(out / "extension.json")), 20,
             results=("extension.json", "fast-paths-extension-import.json")),
        Step("tests", ("python", "-m", "pytest", "-q", "-p", "no:cacheprovider", "-rs", *workers,
                       "--junitxml", str(out / "tests.xml"), *CUDA_TEST_FILES), 120),
    ]
    for precision in PRECISIONS:
        steps.append(Step(f"forward-{precision}", (
            *_module_step(out, f"forward-{precision}", precision, "benchmarks.bench_forward"),
            "--device", "cuda", "--shapes", "8192x1024x4096",
            "--dtypes", "bfloat16,float32" if precision == "highest" else "float32", "--modes", "forward,train",
            "--warmup", "2", "--reps", "5", "--no-compile", "--matmul-precision", precision,
            "--out", str(out / f"forward-{precision}")), 40,
            results=(f"forward-{precision}.json", f"fast-paths-forward-{precision}.json")))
        steps.append(Step(f"interaction-{precision}", (
            "python", "benchmarks/bench_interaction.py", "--device", "cuda", "--shapes", "1024x4096x256",
            "--warmup", "1", "--reps", "3", "--matmul-precision", precision,
            "--out", str(out / f"interaction-{precision}")), 30, results=(f"interaction-{precision}.json",)))
    steps.append(Step("eigh", ("python", "benchmarks/bench_eigh.py", "--quick", "--min-seconds", "0.2",
                               "--max-repeats", "3", "--max-seconds", "5", "--out", str(out)), 40,
                      results=("eigh-*-float32-quick.json",)))
    for precision in PRECISIONS:
        steps.append(Step(f"decompose-{precision}", (
            *_module_step(out, f"decompose-{precision}", precision, "benchmarks.run"),
            "--device", "cuda", "--scale", "0.125", "--only", "W2,W3,W4", "--repeats", "1",
            "--time-cap", "5", "--quiet", "--out", str(out), "--stem", f"decompose-{precision}"), 35,
            results=(f"decompose-{precision}.json", f"fast-paths-decompose-{precision}.json")))
    return steps


def _module_step(out: Path, name: str, precision: str, module: str) -> tuple[str, ...]:
    """The start of a step that runs `python -m module` under a matmul precision and writes its
    process's canary checks to fast-paths-<name>.json; the module's own arguments follow."""
    return ("python", "-m", "benchmarks.gpu_check", "--matmul-precision", precision,
            "--fast-paths", str(out / f"fast-paths-{name}.json"), "--run-module", module, "--")


def run_step(step: Step, log_dir: Path) -> dict:
    """Run one step in its own process group, killed at its limit; never raises."""
    log = log_dir / f"{step.name}.log"
    env = dict(os.environ, PYTHONUNBUFFERED="1", **dict(STEP_ENV), **dict(step.env))
    env.pop("TRITON_INTERPRET", None)
    started = time.perf_counter()
    record = {"name": step.name, "command": shlex.join(step.argv), "limit_s": step.limit_s, "log": log.name}
    try:
        with open(log, "wb") as sink:
            proc = subprocess.Popen(step.command(), cwd=ROOT, env=env, stdout=sink, stderr=subprocess.STDOUT,
                                    start_new_session=True)
            try:
                record["returncode"] = proc.wait(timeout=step.limit_s)
                record["timed_out"] = False
            except subprocess.TimeoutExpired:
                os.killpg(proc.pid, signal.SIGKILL)
                proc.wait()
                record["returncode"], record["timed_out"] = None, True
    except OSError as exc:
        record.update(returncode=None, timed_out=False, error=str(exc))
    record["seconds"] = round(time.perf_counter() - started, 1)
    record["ok"] = record["returncode"] == 0
    record["output_tail"] = log.read_text(errors="replace")[-TAIL_CHARS:] if log.is_file() else ""
    return record


def _command_output(argv: list[str]) -> str | None:
    try:
        return subprocess.run(argv, capture_output=True, text=True, timeout=20, check=True).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return None


def environment() -> dict:
    import torch

    from bilinear_kernels.solvers import dense

    versions = {}
    for name in ("triton", "cupy", "numpy", "scipy"):
        try:
            versions[name] = __import__(name).__version__
        except Exception:  # noqa: BLE001 - absent or broken: recorded as None
            versions[name] = None
    props = torch.cuda.get_device_properties(0)
    return {
        "date": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"),
        "device": torch.cuda.get_device_name(0),
        "capability": ".".join(map(str, torch.cuda.get_device_capability(0))),
        "multiprocessors": props.multi_processor_count,
        "memory_gib": round(props.total_memory / 2 ** 30, 1),
        "driver": _command_output(["nvidia-smi", "--query-gpu=driver_version", "--format=csv,noheader"]),
        "cuda_runtime": torch.version.cuda,
        "nvcc": _command_output(["nvcc", "--version"]),
        "torch": torch.__version__,
        # fp32, by torch's version (solvers/dense.py): >= 2.12 batches every size, <= 2.11 loops above n = 32
        "torch_eigh_route": ", ".join(f"{b}x{n}: {dense.torch_eigh_route(n, b)}" for b, n in EIGH_ROUTE_SHAPES),
        **versions,
        "python": platform.python_version(),
        "cpu": platform.processor() or platform.machine(),
        "cpu_count": os.cpu_count(),
        "git_commit": _command_output(["git", "-C", str(ROOT), "rev-parse", "HEAD"]),
    }


def probe_extension(path: Path) -> int:
    """The extension's status, the libcusolver this process mapped, and the cuSOLVER eigh canary
    in float32 and float64 (run as its own step)."""
    from bilinear_kernels import extension

    status = extension.extension_status()
    status["gpu_error"] = extension.gpu_error() if status["loaded"] else None
    try:
        maps = Path("/proc/self/maps").read_text()
        status["libcusolver_loaded"] = sorted(set(re.findall(r"(/\S*libcusolver\S*\.so[.\d]*)", maps)))
    except OSError:
        status["libcusolver_loaded"] = None
    path.write_text(json.dumps(status, indent=2, default=str) + "\n")
    print(json.dumps(status, indent=2, default=str))
    if not status["loaded"] or status["gpu_error"]:
        return 1
    canaries_passed = eigh_canaries()
    write_fast_paths(path.parent / "fast-paths-extension-import.json")
    return 0 if canaries_passed else 1


def eigh_canaries() -> bool:
    """Run cusolver eigh behind its canary (dense.eigh) in float32 and float64; False when one fails."""
    import torch

    from bilinear_kernels.fast_path_guard import FastPathError
    from bilinear_kernels.solvers import dense

    passed = True
    for dtype in (torch.float32, torch.float64):
        a = torch.randn(4, 40, 40, dtype=dtype, device="cuda")
        try:
            dense.eigh((a + a.mT) / 2, "cusolver")
        except FastPathError as exc:
            print(f"cuSOLVER eigh canary, {dtype}: {exc}", file=sys.stderr)
            passed = False
    return passed


def write_fast_paths(path: Path) -> None:
    from bilinear_kernels import fast_path_guard

    path.write_text(json.dumps({"strict": fast_path_guard.strict(), "checks": fast_path_guard.states()}, indent=2)
                    + "\n")


def run_module(module: str, argv: list[str], precision: str, fast_paths: Path | None = None) -> int:
    """Run `python -m module argv...` under torch.set_float32_matmul_precision(precision); then,
    however it ended, write this process's canary checks to `fast_paths`."""
    import runpy

    import torch

    torch.set_float32_matmul_precision(precision)
    sys.argv = [module, *argv]
    try:
        runpy.run_module(module, run_name="__main__", alter_sys=True)
    finally:
        if fast_paths is not None:
            write_fast_paths(fast_paths)
    return 0


def _results(out: Path, step: Step) -> dict:
    found = {}
    for pattern in step.results:
        for path in sorted(out.glob(pattern)):
            try:
                found[path.name] = json.loads(path.read_text())
            except (OSError, ValueError) as exc:
                found[path.name] = {"unreadable": str(exc)}
    return found


def markdown(report: dict) -> str:
    env = report["environment"]
    lines = ["# GPU check", "", f"`{report['command']}`, {env['date']}, {report['seconds_total']} s of {BUDGET_S} s", ""]
    lines += [f"- {key}: {str(value).splitlines()[-1] if value else value}" for key, value in env.items()]
    lines += ["", "| step | status | seconds | limit | results |", "|---|---|---:|---:|---|"]
    for step in report["steps"]:
        status = "ok" if step["ok"] else ("timed out" if step["timed_out"] else f"failed (exit {step['returncode']})")
        lines.append(f"| {step['name']} | {status} | {step['seconds']} | {step['limit_s']} | "
                     f"{', '.join(step['results']) or '-'} |")
    lines += fast_path_lines(report)
    for step in report["steps"]:
        if not step["ok"]:
            lines += ["", f"## {step['name']}: last output", "", f"`{step['command']}`", "", "```",
                      step["output_tail"][-1500:], "```"]
    lines += ["", "Raw timings: gpu_check.json (each step's `results`) and the benchmarks' own .json/.md files here."]
    return "\n".join(lines) + "\n"


def fast_path_lines(report: dict) -> list[str]:
    """The canary checks every step recorded (fast-paths-*.json, and bench_eigh's meta), as a table."""
    rows = []
    for step in report["steps"]:
        for name, found in step["results"].items():
            if not isinstance(found, dict):
                continue
            checks = found.get("checks") if name.startswith("fast-paths-") else found.get("meta", {}).get("fast_paths")
            for c in checks if isinstance(checks, list) else []:
                error = "-" if c.get("canary_error") is None else f"{c['canary_error']:.2g} / {c['tolerance']:.2g}"
                rows.append(f"| {step['name']} | {c['path']} | {c['dtype']} | {c['mode']} | {c['device']} | "
                            f"{c['state']} | {c['canary_ms']} | {error} | {c.get('failure') or ''} |")
    lines = ["", "## Fast paths: canary checks (BILINEAR_KERNELS_STRICT=1 in every step)", ""]
    if not rows:
        return lines + ["No step recorded a canary check."]
    return lines + ["| step | path | dtype | mode | device | state | canary ms | error / tolerance | failure |",
                    "|---|---|---|---|---|---|---:|---:|---|", *rows]


def check(out: Path) -> dict:
    out.mkdir(parents=True, exist_ok=True)
    logs = out / "logs"
    logs.mkdir(exist_ok=True)
    started = time.perf_counter()
    report = {"command": "python -m benchmarks.gpu_check " + shlex.join(sys.argv[1:]),
              "budget_s": BUDGET_S, "environment": environment(), "steps": []}
    for step in plan(out):
        print(f"gpu_check: {step.name} (at most {step.limit_s} s)", file=sys.stderr, flush=True)
        record = run_step(step, logs)
        record["results"] = _results(out, step)
        report["steps"].append(record)
        print(f"gpu_check: {step.name}: {'ok' if record['ok'] else 'FAILED'} in {record['seconds']} s",
              file=sys.stderr, flush=True)
    report["seconds_total"] = round(time.perf_counter() - started, 1)
    (out / "gpu_check.json").write_text(json.dumps(report, indent=1, default=str) + "\n")
    (out / "gpu_check.md").write_text(markdown(report))
    return report


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.gpu_check", description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", type=Path, default=None,
                        help="output folder (default: benchmarks/results/gpu-check-<date>)")
    parser.add_argument("--plan", action="store_true", help="print the steps and their time limits, run nothing")
    parser.add_argument("--probe", type=Path, default=None, help=argparse.SUPPRESS)  # the extension-import step
    parser.add_argument("--run-module", default=None, help=argparse.SUPPRESS)  # a step under a matmul precision
    parser.add_argument("--matmul-precision", choices=PRECISIONS, default="highest", help=argparse.SUPPRESS)
    parser.add_argument("--fast-paths", type=Path, default=None, help=argparse.SUPPRESS)  # with --run-module
    parser.add_argument("rest", nargs=argparse.REMAINDER, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    out = args.out or ROOT / "benchmarks" / "results" / f"gpu-check-{dt.date.today().isoformat()}"
    if args.plan:
        for step in plan(out):
            print(f"{step.limit_s:4d} s  {step.name:22s} {shlex.join(step.argv)}")
        print(f"{sum(s.limit_s for s in plan(out)):4d} s  in all (budget {BUDGET_S} s)")
        return 0
    if args.run_module:
        rest = args.rest[1:] if args.rest[:1] == ["--"] else args.rest
        return run_module(args.run_module, rest, args.matmul_precision, args.fast_paths)
    import torch

    if not torch.cuda.is_available():
        print("error: gpu_check needs a CUDA device and torch sees none (torch.cuda.is_available() is False)",
              file=sys.stderr)
        return 2
    if args.probe:
        return probe_extension(args.probe)
    report = check(out)
    failed = [s["name"] for s in report["steps"] if not s["ok"]]
    print(f"gpu_check: wrote {out}/gpu_check.json and gpu_check.md in {report['seconds_total']} s; "
          f"{len(failed)} of {len(report['steps'])} steps failed{': ' + ', '.join(failed) if failed else ''}")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
