"""How every row is measured: time, peak memory, accuracy against a float64 oracle.

Time: one warm-up run (it also measures memory and yields the result checked for accuracy), then up
to `repeats` timed runs; a row reports their median, min and max. A run slower than a quarter of the
repeat budget counts the warm-up as a sample (warm-up effects are small next to it), and repeats
stop once their total passes the budget (at least one is always made). The device is synchronized
around every timed region. `measure_interleaved` times several methods of one workload in rounds
(each round runs every method once, the order rotating from round to round), so that a machine whose
load drifts during the run slows every method alike instead of whichever ran last.

Peak memory (bytes above what was allocated when the run started):
  cuda: torch.cuda.max_memory_allocated (CuPy is routed through torch's allocator, so it counts);
  cpu:  the resident-set high-water mark, sampled every 2 ms by a background thread after returning
        freed heap to the system (malloc_trim); a lower bound, since spikes shorter than the
        sampling interval can be missed.

Accuracy: on a subsample of directions, Q(u) is formed in float64 and fully eigendecomposed. A
row reports the largest eigenvalue error (the k returned values against the oracle's k wanted
ones, both sorted, relative to ‖Q‖₂) and the largest residual ‖Q v − λ v‖ / ‖Q‖₂ of the returned
pairs, both in float64 on the returned numbers (not the solver's own estimate).
"""
from __future__ import annotations

import ctypes
import gc
import os
import statistics
import threading
import time
import traceback
from dataclasses import dataclass, field

import torch

import bilinear_kernels as bk
from bilinear_kernels import memory

RSS_SAMPLE_SECONDS = 0.002
MEMORY_METHOD = {
    "cuda": "torch.cuda.max_memory_allocated above the allocation at the start of the run "
            "(CuPy allocations routed through torch's allocator)",
    "cpu": "resident-set high-water mark above the start of the run, sampled every 2 ms after "
           "malloc_trim (a lower bound: spikes shorter than 2 ms can be missed)",
}


class TimeCapExceeded(Exception):
    """A run passed its time cap; `done` of `total` items were finished in `seconds`."""

    def __init__(self, done: int, total: int, seconds: float):
        self.done, self.total, self.seconds = done, total, seconds
        rate = f" ({seconds / done:.3g} s per direction)" if done else ""
        super().__init__(f"stopped at the time cap after {done} of {total} directions in "
                         f"{seconds:.1f} s{rate}")


class NotApplicable(Exception):
    """The method does not apply to this workload (the message says why)."""


class OutOfMemory(Exception):
    """An up-front estimate says the method cannot fit (the message gives the numbers)."""


class Deadline:
    """The time by which an interruptible run must stop; `check` raises TimeCapExceeded."""

    def __init__(self, seconds: float, total: int):
        self.start = time.perf_counter()
        self.stop = self.start + seconds
        self.total = total

    def check(self, done: int) -> None:
        now = time.perf_counter()
        if now > self.stop and done < self.total:
            raise TimeCapExceeded(done, self.total, now - self.start)


@dataclass
class Solution:
    """What a decomposition method returns: values (b, k), vectors (b, d, k), free-form notes."""

    values: torch.Tensor
    vectors: torch.Tensor
    extra: dict = field(default_factory=dict)


def synchronize(device: str) -> None:
    if device.startswith("cuda"):
        torch.cuda.synchronize()


def free_bytes(device: str) -> int:
    """Memory a method may still use: free GPU memory, or MemAvailable on the CPU."""
    if device.startswith("cuda"):
        return int(torch.cuda.mem_get_info()[0])
    try:
        with open("/proc/meminfo") as f:
            for line in f:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    return memory.free_bytes(torch.device("cpu"))


# -- peak memory -------------------------------------------------------------------------------
def _malloc_trim() -> None:
    try:
        ctypes.CDLL("libc.so.6").malloc_trim(0)
    except (OSError, AttributeError):
        pass


class _RssSampler(threading.Thread):
    def __init__(self):
        super().__init__(daemon=True)
        self._fd = os.open("/proc/self/statm", os.O_RDONLY)
        self._page = os.sysconf("SC_PAGE_SIZE")
        self._halt = threading.Event()
        self.start_rss = self.read()
        self.peak = self.start_rss

    def read(self) -> int:
        return int(os.pread(self._fd, 128, 0).split()[1]) * self._page

    def run(self):
        while not self._halt.wait(RSS_SAMPLE_SECONDS):
            self.peak = max(self.peak, self.read())

    def finish(self) -> int:
        self._halt.set()
        self.join()
        self.peak = max(self.peak, self.read())
        os.close(self._fd)
        return self.peak - self.start_rss


class PeakMemory:
    """Context manager: `.bytes` is the peak memory of the block above its start (module docstring)."""

    def __init__(self, device: str):
        self.device = device
        self.bytes = None

    def __enter__(self):
        gc.collect()
        if self.device.startswith("cuda"):
            torch.cuda.synchronize()
            torch.cuda.empty_cache()
            torch.cuda.reset_peak_memory_stats()
            self._start = torch.cuda.memory_allocated()
        else:
            _malloc_trim()
            self._sampler = None
            if os.path.exists("/proc/self/statm"):
                self._sampler = _RssSampler()
                self._sampler.start()
        return self

    def __exit__(self, *exc):
        if self.device.startswith("cuda"):
            torch.cuda.synchronize()
            self.bytes = int(torch.cuda.max_memory_allocated() - self._start)
        elif self._sampler is not None:
            self.bytes = int(self._sampler.finish())
        return False


# -- accuracy ------------------------------------------------------------------------------------
def oracle_subsample(n: int, count: int) -> list[int]:
    """`count` direction positions spread evenly over 0..n-1 (first and last included)."""
    if count >= n:
        return list(range(n))
    if count == 1:
        return [0]
    return sorted({round(i * (n - 1) / (count - 1)) for i in range(count)})


class Oracle:
    """Float64 Q(u) and its full spectrum for a subsample of a workload's directions."""

    def __init__(self, layer: bk.BilinearLayer, directions: torch.Tensor, k: int, count: int):
        self.positions = oracle_subsample(len(directions), count)
        sub = directions[self.positions]
        layer64 = layer.to(dtype=torch.float64)
        self.q = bk.interaction_matrices(layer64, sub)  # (s, d, d) float64
        values = torch.linalg.eigvalsh(self.q)
        self.norm = values.abs().amax(-1)  # ‖Q‖₂
        self.k = k
        wanted = torch.argsort(values.abs(), dim=-1, descending=True, stable=True)[:, :k]
        self.wanted = torch.gather(values, -1, wanted).sort(-1).values  # (s, k)

    def check(self, sol: Solution) -> dict:
        """Errors of the returned pairs on the subsample (module docstring)."""
        vals = sol.values[self.positions].to(self.q.device, torch.float64)
        vecs = sol.vectors[self.positions].to(self.q.device, torch.float64)
        if vals.shape != self.wanted.shape or vecs.shape[1:] != (self.q.shape[-1], self.k):
            raise ValueError(f"result shapes {tuple(sol.values.shape)}, {tuple(sol.vectors.shape)} do not "
                             f"match k = {self.k}, d = {self.q.shape[-1]}")
        scale = torch.where(self.norm > 0, self.norm, torch.ones_like(self.norm))[:, None]
        eig_err = (vals.sort(-1).values - self.wanted).abs() / scale
        resid = torch.linalg.vector_norm(self.q @ vecs - vecs * vals[:, None, :], dim=-2) / scale
        norm_err = (torch.linalg.vector_norm(vecs, dim=-2) - 1).abs()
        return {
            "max_rel_eig_error": float(eig_err.max()),
            "max_residual": float(resid.max()),
            "max_unit_norm_error": float(norm_err.max()),
            "directions_checked": len(self.positions),
        }


# -- the harness ---------------------------------------------------------------------------------
def summarize(samples: list[float]) -> dict:
    return {"median": statistics.median(samples), "min": min(samples), "max": max(samples),
            "samples": [round(s, 6) for s in samples]}


def measure(run, *, device: str, repeats: int, time_cap: float, repeat_budget: float | None = None,
            count_warmup: bool = True, check=None) -> dict:
    """Measure `run(time_cap, warmup) -> result` (module docstring): `time_cap` bounds one run,
    `repeat_budget` (default: the cap) the total of the timed repeats. `count_warmup=False` when
    the warm-up differs from a timed run, so it never counts as a sample. `check(result) -> dict`
    computes the accuracy of the warm-up's result. Returns the row's status, reason, seconds,
    peak_bytes, accuracy, the result's `extra` and the wall time the row took."""
    row = {"status": "ok", "reason": None, "seconds": None, "peak_bytes": None, "accuracy": None,
           "extra": {}}
    budget = time_cap if repeat_budget is None else repeat_budget
    row_started = time.perf_counter()
    try:
        with PeakMemory(device) as mem:
            synchronize(device)
            t0 = time.perf_counter()
            result = run(time_cap, True)
            synchronize(device)
            warmup = time.perf_counter() - t0
        row["peak_bytes"] = mem.bytes
        row["extra"] = dict(getattr(result, "extra", {}) or {})
        if check is not None:
            row["accuracy"] = check(result)
        del result
    except Exception as exc:  # noqa: BLE001 - every failure becomes a row that says why
        row.update(_failure(exc))
        _release(device)
        row["wall_seconds"] = round(time.perf_counter() - row_started, 3)
        return row
    _release(device)

    counted = count_warmup and warmup > budget / 4
    samples = [warmup] if counted else []
    while len(samples) < repeats and (sum(samples) < budget or not samples):
        try:
            synchronize(device)
            t0 = time.perf_counter()
            result = run(time_cap, False)
            synchronize(device)
            samples.append(time.perf_counter() - t0)
            del result  # freed by reference counting; a gc pass here would cost more than small runs
        except Exception as exc:  # noqa: BLE001 - keep the samples so far, say why it stopped
            row["extra"]["repeats_stopped"] = _failure(exc)["reason"]
            break
    if not samples:
        counted, samples = True, [warmup]
    row["seconds"] = {**summarize(samples), "warmup": round(warmup, 6), "warmup_counted": counted}
    row["wall_seconds"] = round(time.perf_counter() - row_started, 3)
    return row


def measure_interleaved(runs: dict, *, device: str, repeats: int, time_caps: dict, repeat_budget: float,
                        count_warmup: dict | None = None, check=None, log=None,
                        short_seconds: float = 0.0, max_repeats: int | None = None) -> dict:
    """Measure every `runs[name](time_cap, warmup) -> result` of one workload (module docstring).

    Every method first gets its warm-up (memory and accuracy, as in `measure`; a failure becomes its
    row); then rounds follow, each timing one run of every method that still needs samples, until
    each has `repeats` samples or its samples add up to `repeat_budget` seconds (at least one).
    Short runs take more: a method keeps sampling past `repeats` while its samples add up to less
    than `short_seconds`, up to `max_repeats` (a median of millisecond runs needs many to settle).
    `time_caps[name]` bounds one run; `count_warmup[name]=False` where the warm-up differs from a
    timed run; `check` is one accuracy function for all, or a dict of them by name. `log(name, row)` is called as each warm-up ends. Returns name -> row, in `runs`' order.
    """
    count_warmup = count_warmup or {}
    rows, samples, live = {}, {}, []
    for name, run in runs.items():
        row = {"status": "ok", "reason": None, "seconds": None, "peak_bytes": None, "accuracy": None,
               "extra": {}}
        started = time.perf_counter()
        try:
            with PeakMemory(device) as mem:
                synchronize(device)
                t0 = time.perf_counter()
                result = run(time_caps[name], True)
                synchronize(device)
                warmup = time.perf_counter() - t0
            row["peak_bytes"] = mem.bytes
            row["extra"] = dict(getattr(result, "extra", {}) or {})
            checker = check.get(name) if isinstance(check, dict) else check
            if checker is not None:
                row["accuracy"] = checker(result)
            del result
            counted = count_warmup.get(name, True) and warmup > repeat_budget / 4
            samples[name] = [warmup] if counted else []
            row["seconds"] = {"warmup": round(warmup, 6), "warmup_counted": counted}
            live.append(name)
        except Exception as exc:  # noqa: BLE001 - every failure becomes a row that says why
            row.update(_failure(exc))
        _release(device)
        row["wall_seconds"] = round(time.perf_counter() - started, 3)
        rows[name] = row
        if log is not None:
            log(name, row)

    most = max(repeats, max_repeats or repeats)

    def wants_more(name):
        got = samples[name]
        if not got:
            return True
        if sum(got) >= repeat_budget:
            return False
        return len(got) < repeats or (sum(got) < short_seconds and len(got) < most)

    turn = 0
    while True:
        pending = [n for n in live if wants_more(n)]
        if not pending:
            break
        shift = turn % len(pending)
        for name in pending[shift:] + pending[:shift]:
            started = time.perf_counter()
            try:
                synchronize(device)
                t0 = time.perf_counter()
                result = runs[name](time_caps[name], False)
                synchronize(device)
                samples[name].append(time.perf_counter() - t0)
                del result
            except Exception as exc:  # noqa: BLE001 - keep the samples so far, say why it stopped
                rows[name]["extra"]["repeats_stopped"] = _failure(exc)["reason"]
                live.remove(name)
                if not samples[name]:
                    samples[name] = [rows[name]["seconds"]["warmup"]]
                    rows[name]["seconds"]["warmup_counted"] = True
            rows[name]["wall_seconds"] += round(time.perf_counter() - started, 3)
        turn += 1
    for name in samples:
        rows[name]["seconds"] = {**summarize(samples[name]), **rows[name]["seconds"]}
    return rows


def _failure(exc: BaseException) -> dict:
    if isinstance(exc, TimeCapExceeded):
        return {"status": "time_cap", "reason": str(exc)}
    if isinstance(exc, NotApplicable):
        return {"status": "not_applicable", "reason": str(exc)}
    if isinstance(exc, OutOfMemory):
        return {"status": "out_of_memory", "reason": str(exc)}
    if isinstance(exc, (MemoryError, torch.OutOfMemoryError)):
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        return {"status": "out_of_memory", "reason": first[:300]}
    tb = traceback.extract_tb(exc.__traceback__)
    where = f" at {os.path.basename(tb[-1].filename)}:{tb[-1].lineno}" if tb else ""
    return {"status": "error", "reason": f"{type(exc).__name__}: {str(exc)[:300]}{where}"}


def _release(device: str) -> None:
    # CPU memory is returned by reference counting (PeakMemory collects cycles before measuring);
    # on CUDA the caching allocator keeps blocks until emptied
    if device.startswith("cuda"):
        gc.collect()
        torch.cuda.empty_cache()
