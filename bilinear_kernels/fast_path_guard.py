"""Self-checking fast paths: a canary against the plain-torch twin before a fast path is trusted.

The first time in a process that a fast path runs for a given (path, dtype, precision mode,
device), `run` first solves a small canary problem with both the fast path and its twin (the
canary is written next to the path) and compares them at the tolerance of PRECISION.md's table
(`tolerance`). On an exception from the fast path (a Triton compile error or OutOfResources, a
CUDA error, a missing cuSOLVER symbol) or a mismatch, that (path, dtype, mode, device) is switched
off for the rest of the process: the twin serves this call and every later one, and one warning
names the path, what happened and the environment switch that disables it for good. A fast path
that passed its canary is still watched: an exception from a later call switches it off the same
way. Argument errors (ValueError, TypeError) and out-of-memory errors are the caller's, not the
path's, and are raised as they are.

With BILINEAR_KERNELS_STRICT=1 each of those failures raises FastPathError instead (the CUDA
tests and benchmarks.gpu_check set it, so a broken kernel fails loudly there).

Every check is recorded, with its state and what its canary cost, in `states()`, which
`bilinear_kernels.backends()` reports. This module knows the paths by name only; it imports
nothing of the package but `_env`, so every fast path can use it.
"""
from __future__ import annotations

import dataclasses
import threading
import time
import warnings

import torch

from ._env import env_flag

STRICT_SWITCH = "BILINEAR_KERNELS_STRICT"


@dataclasses.dataclass(frozen=True)
class FastPath:
    name: str
    twin: str  # the plain-torch function that serves in its place
    switch: str  # the environment variable that keeps it off for good


TRITON_FORWARD = FastPath("triton_forward", "ops.bilinear_forward.bilinear_hidden_reference",
                          "BILINEAR_KERNELS_DISABLE_TRITON")
TRITON_BACKWARD = FastPath("triton_backward", "ops.bilinear_forward.bilinear_hidden_grad_reference",
                           "BILINEAR_KERNELS_DISABLE_TRITON")
TRITON_INTERACTION = FastPath("triton_interaction", "interaction.build_interaction_reference",
                              "BILINEAR_KERNELS_DISABLE_TRITON")
CUSOLVER_EIGH = FastPath("cusolver_eigh", "torch.linalg.eigh", "BILINEAR_KERNELS_DISABLE_EXTENSION")
PATHS = (TRITON_FORWARD, TRITON_BACKWARD, TRITON_INTERACTION, CUSOLVER_EIGH)

# Relative max error (over the largest |entry| of the float64 twin) a canary may show, from
# ops/PRECISION.md: fp32 at fp32's tolerance (plain fp32 or tf32x3), TF32 and fp16 at fp16's,
# bf16 at its own; float64 (cuSOLVER only) near its rounding.
TOLERANCE = {("float32", "tf32"): 4e-3, "float32": 1e-5, "float16": 4e-3, "bfloat16": 3e-2, "float64": 1e-10}

# Raised by the caller's own checks or by running out of memory: not a sign of a broken path.
CALLER_ERRORS = (ValueError, TypeError, MemoryError, torch.OutOfMemoryError)


class FastPathError(RuntimeError):
    """A fast path failed its canary or a call while BILINEAR_KERNELS_STRICT=1."""


@dataclasses.dataclass
class Check:
    path: str
    dtype: str
    mode: str
    device: str
    state: str = "checking"  # then "passed" or "failed"
    canary_ms: float | None = None
    canary_error: float | None = None  # relative max error of the canary
    tolerance: float | None = None
    failure: str | None = None


_checks: dict[tuple[str, str, str, str], Check] = {}
_lock = threading.RLock()


def strict() -> bool:
    return env_flag(STRICT_SWITCH)


def tolerance(dtype: torch.dtype, mode: str | None) -> float:
    """The canary tolerance of a dtype under a tl.dot precision mode (None: not a Triton dot)."""
    name = str(dtype).replace("torch.", "")
    return TOLERANCE.get((name, mode), TOLERANCE[name])


def relative_error(got: torch.Tensor, want: torch.Tensor) -> float:
    """max |got − want| / max |want| in float64 (NaN or inf when got is not finite)."""
    got, want = got.double(), want.double()
    scale = want.abs().max().item()
    return (got - want).abs().max().item() / (scale if scale > 0 else 1.0)


def run(path: FastPath, dtype: torch.dtype, mode: str | None, device, fast, twin, args: tuple, canary):
    """fast(*args), or twin(*args) when this (path, dtype, mode, device) failed its canary or a
    call. `canary()` runs the fast path and its twin on a small fixed problem and returns
    (relative error, tolerance)."""
    check = _check_for(path, dtype, mode, device, canary)
    if check.state == "failed":
        if strict():
            raise FastPathError(_message(check, path))
        return twin(*args)
    try:
        return fast(*args)
    except CALLER_ERRORS:
        raise
    except Exception as exc:  # noqa: BLE001 - any other failure of the launch means a broken path
        _fail(check, path, f"raised {type(exc).__name__}: {_first_line(exc)}", exc)
        return twin(*args)


def usable(path: FastPath, dtype: torch.dtype, mode: str | None, device) -> bool:
    """False when this (path, dtype, mode, device) has been switched off in this process (never
    in strict mode: there the path is taken again, and raises again)."""
    if strict():
        return True
    check = _checks.get(_key(path, dtype, mode, device))
    return check is None or check.state != "failed"


def states() -> list[dict]:
    """Every check of this process: path, dtype, mode, device, state, canary cost and error."""
    with _lock:
        return [dataclasses.asdict(c) for c in _checks.values()]


def reset() -> None:
    """Forget every check (the next call of each path runs its canary again)."""
    with _lock:
        _checks.clear()


def _key(path: FastPath, dtype, mode, device) -> tuple[str, str, str, str]:
    return path.name, str(dtype).replace("torch.", ""), mode or "-", str(torch.device(device))


def _check_for(path: FastPath, dtype, mode, device, canary) -> Check:
    key = _key(path, dtype, mode, device)
    check = _checks.get(key)
    if check is not None and check.state != "checking":
        return check
    with _lock:  # one canary per key, even when threads arrive together
        check = _checks.get(key)
        if check is not None:
            return check  # "checking" here is this thread's own canary re-entering: trust it
        check = _checks[key] = Check(*key)
        started = time.perf_counter()
        try:
            error, tol = canary()
        except CALLER_ERRORS:
            del _checks[key]
            raise
        except Exception as exc:  # noqa: BLE001 - see run()
            check.canary_ms = _ms_since(started)
            _fail(check, path, f"its canary raised {type(exc).__name__}: {_first_line(exc)}", exc)
            return check
        check.canary_ms, check.canary_error, check.tolerance = _ms_since(started), error, tol
        if not error <= tol:  # NaN fails too
            _fail(check, path, f"its canary differs from {path.twin} by {error:.3g} (relative), "
                               f"over the tolerance {tol:.3g}")
            return check
        check.state = "passed"
        return check


def _fail(check: Check, path: FastPath, what: str, cause: BaseException | None = None) -> None:
    check.state, check.failure = "failed", what
    if strict():
        raise FastPathError(_message(check, path)) from cause
    warnings.warn(_message(check, path), RuntimeWarning, stacklevel=4)


def _message(check: Check, path: FastPath) -> str:
    where = f"{check.dtype}{'' if check.mode == '-' else ', ' + check.mode}, {check.device}"
    if strict():
        return (f"fast path {path.name} ({where}) {check.failure} "
                f"({STRICT_SWITCH}=1 makes this an error; {path.switch}=1 switches the path off)")
    return (f"fast path {path.name} ({where}) {check.failure}; {path.twin} serves this and every later "
            f"call in this process. Set {path.switch}=1 to switch it off for good.")


def _ms_since(started: float) -> float:
    return round((time.perf_counter() - started) * 1e3, 3)


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip()
    return text.splitlines()[0][:200] if text else "(no message)"
