"""How many CPU threads torch should use for one decomposition: one where more only wait.

Why: torch's CPU operations, and MKL's or OpenBLAS's LAPACK inside eigh, split each operation
across the intra-op threads and wait at a barrier until every thread is done. A dense eigh of an
n×n matrix passes O(n) such barriers. On a machine whose cores are busy with other processes a
thread may wait a whole scheduler time slice (milliseconds) for its partner to be scheduled, so each
barrier costs milliseconds instead of microseconds. Measured (benchmarks/bench_threads.py, 2-core
AMD EPYC, MKL with OpenMP, load average 10-12): 32 directions at d = 64 took 5.5 s with two threads
and 0.24 s with one; the (32, 64, 64) eigh alone 3.0 s against 0.10 s; at d = 256 eigh took 20 s
against 0.74 s. Forming Q (one GEMM per chunk) suffers far less: 1.4x. At load average 1.4-3:
d = 64 2.6 s against 0.02 s, d = 256 1.3 s against 0.35 s, d = 512 33 s against 2.5 s, and at
d = 1024 two threads won (10.3 s against 15.9 s).

On a quiet machine the second thread pays at every size measured (same benchmark, load average
below 1.5: two threads took 0.85x the time of one at d = 64, 0.62x at d = 256, 0.61x at 512, 0.59x
at 1024), so the rule (`cpu_threads_for`) only acts on an oversubscribed machine: on a CPU, one
thread when the 1-minute load average is at least BUSY_LOAD_PER_CORE per usable core and the
matrices factorized are smaller than BUSY_MAX_N; otherwise torch's own setting is left alone.
Nothing changes on a GPU or when torch already uses one thread.

torch.set_num_threads is process-wide: `cpu_threads` restores the previous count on exit, but
another Python thread running torch at the same moment sees the change too.
"""
from __future__ import annotations

import contextlib
import os

import torch

# NOTE from benchmarks/bench_threads.py on a 2-core machine: busy, one thread won at d <= 512;
# at d = 1024 two threads won already at load average 1.4-3
BUSY_LOAD_PER_CORE = 1.5
BUSY_MAX_N = 1024


def usable_cores() -> int:
    try:
        return len(os.sched_getaffinity(0))
    except (AttributeError, OSError):
        return os.cpu_count() or 1


def machine_is_busy(load: float | None = None, cores: int | None = None) -> bool:
    """Whether more processes want to run than there are cores (the 1-minute load average)."""
    if load is None:
        try:
            load = os.getloadavg()[0]
        except (AttributeError, OSError):
            return False
    cores = usable_cores() if cores is None else cores
    return load >= BUSY_LOAD_PER_CORE * cores


def cpu_threads_for(n: int, device, *, busy: bool | None = None, current: int | None = None) -> int | None:
    """Threads to use while factorizing n×n matrices on `device`: 1, or None to leave torch's
    setting alone (module docstring). `busy` and `current` default to the machine's state."""
    if torch.device(device).type != "cpu":
        return None
    current = torch.get_num_threads() if current is None else current
    if current <= 1:
        return None
    if n < BUSY_MAX_N and (machine_is_busy() if busy is None else busy):
        return 1
    return None


@contextlib.contextmanager
def cpu_threads(n: int, device):
    """Run the block with the thread count `cpu_threads_for(n, device)` asks for, then restore."""
    threads = cpu_threads_for(n, device)
    if threads is None:
        yield
        return
    before = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        yield
    finally:
        torch.set_num_threads(before)
