"""torch.distributed for sweeps: start from a torchrun environment, split the chunks of a sweep
across ranks, coordinate the few moments ranks must agree on, and show every rank's progress.

Ranks share nothing but the store directory (a shared filesystem across nodes) and a handful of
collective calls: rank 0 sets the store up and broadcasts the outcome, every rank computes the
chunks `chunks_for_rank` gives it, and after a barrier rank 0 finalizes the manifest. Those calls
run on a gloo group of their own even when the default group is NCCL, with a long timeout: ranks
can wait for one another for as long as the slowest rank computes.
"""
from __future__ import annotations

import os
import sys
import threading
from dataclasses import dataclass, field
from datetime import timedelta

import torch

DEFAULT_TIMEOUT = timedelta(hours=72)


def chunks_for_rank(n_chunks: int, rank: int, world_size: int) -> range:
    """The chunks rank `rank` computes: every world_size-th, starting at its rank. Depends on
    nothing else (not on what earlier runs finished), so a resumed sweep gives each chunk to the
    same rank, and chunk boundaries do not depend on the number of ranks at all."""
    check_rank(rank, world_size)
    return range(rank, n_chunks, world_size)


def check_rank(rank: int, world_size: int) -> None:
    for name, value in (("rank", rank), ("world_size", world_size)):
        if isinstance(value, bool) or not isinstance(value, int):
            raise TypeError(f"{name} must be an int, got {type(value).__name__}")
    if world_size < 1 or not 0 <= rank < world_size:
        raise ValueError(f"need 0 <= rank < world_size, got rank={rank}, world_size={world_size}")


# -- process group ---------------------------------------------------------------------------
@dataclass
class DistributedContext:
    """Where this process stands: rank, world size, local rank, its device and the process group
    it created (if any; `close` destroys only that)."""

    rank: int = 0
    world_size: int = 1
    local_rank: int = 0
    device: torch.device = field(default_factory=lambda: torch.device("cpu"))
    backend: str | None = None
    owns_group: bool = False

    @property
    def distributed(self) -> bool:
        return self.world_size > 1

    def close(self) -> None:
        import torch.distributed as dist

        if self.owns_group and dist.is_initialized():
            dist.destroy_process_group()
            self.owns_group = False


def launched_by_torchrun() -> bool:
    """True in a process started by torchrun (or any launcher setting RANK and WORLD_SIZE)."""
    return "RANK" in os.environ and "WORLD_SIZE" in os.environ


def init_from_env(backend: str | None = None, timeout: timedelta = DEFAULT_TIMEOUT) -> DistributedContext:
    """Join the process group torchrun describes (RANK, WORLD_SIZE, LOCAL_RANK, MASTER_ADDR,
    MASTER_PORT): NCCL with one GPU per local rank where CUDA is available, gloo on CPU. Uses a group
    that is already initialized; outside torchrun (or with WORLD_SIZE=1) returns a single-process
    context without any process group."""
    import torch.distributed as dist

    if dist.is_available() and dist.is_initialized():
        rank, world = dist.get_rank(), dist.get_world_size()
        local = int(os.environ.get("LOCAL_RANK", rank))
        used = dist.get_backend()
        device = torch.device("cuda", local) if "nccl" in str(used) else torch.device("cpu")
        return DistributedContext(rank, world, local, device, str(used), owns_group=False)
    if not launched_by_torchrun() or int(os.environ["WORLD_SIZE"]) <= 1:
        return DistributedContext()
    if not dist.is_available():
        raise RuntimeError("this torch build has no torch.distributed; run the sweep as one process")
    rank, world = int(os.environ["RANK"]), int(os.environ["WORLD_SIZE"])
    local = int(os.environ.get("LOCAL_RANK", 0))
    if backend is None:
        backend = "nccl" if torch.cuda.is_available() else "gloo"
    if backend == "nccl":
        if local >= torch.cuda.device_count():
            raise RuntimeError(f"local rank {local} has no GPU ({torch.cuda.device_count()} visible); "
                               "start at most one process per GPU (--nproc-per-node)")
        torch.cuda.set_device(local)
        device = torch.device("cuda", local)
    else:
        device = torch.device("cpu")
    dist.init_process_group(backend, timeout=timeout)
    return DistributedContext(rank, world, local, device, backend, owns_group=True)


class Coordinator:
    """The collective calls of a sweep: a barrier and a broadcast from rank 0, on a gloo group of
    their own. With world_size 1 both are no-ops and torch.distributed is never touched."""

    def __init__(self, rank: int, world_size: int, timeout: timedelta = DEFAULT_TIMEOUT):
        check_rank(rank, world_size)
        self.rank, self.world_size, self.group = rank, world_size, None
        if world_size == 1:
            return
        import torch.distributed as dist

        if not (dist.is_available() and dist.is_initialized()):
            raise ValueError(f"world_size={world_size} needs an initialized torch.distributed process group "
                             "(launch with torchrun and call distributed.init_from_env() first)")
        if dist.get_rank() != rank or dist.get_world_size() != world_size:
            raise ValueError(f"rank={rank}, world_size={world_size} disagree with the process group "
                             f"(rank {dist.get_rank()} of {dist.get_world_size()})")
        # every rank creates this group at the same point of run_sweep, as new_group requires
        self.group = dist.new_group(backend="gloo", timeout=timeout)

    def barrier(self) -> None:
        if self.group is not None:
            import torch.distributed as dist

            dist.barrier(group=self.group)

    def broadcast(self, obj):
        """Rank 0's `obj` on every rank (picklable objects built by this package only)."""
        if self.group is None:
            return obj
        import torch.distributed as dist

        box = [obj if self.rank == 0 else None]
        dist.broadcast_object_list(box, src=0, group=self.group)
        return box[0]

    def gather(self, obj) -> list:
        """Every rank's `obj` (small dicts of numbers), in rank order, on every rank."""
        if self.group is None:
            return [obj]
        import torch.distributed as dist

        out = [None] * self.world_size
        dist.all_gather_object(out, obj, group=self.group)
        return out

    def close(self) -> None:
        if self.group is not None:
            import torch.distributed as dist

            if dist.is_initialized():
                dist.destroy_process_group(self.group)
            self.group = None


# -- progress --------------------------------------------------------------------------------
class SweepProgress:
    """Progress of every rank on rank 0's terminal: a bar for the whole sweep and, with several
    ranks, one bar per rank, each with directions/s and ETA.

    Fed by the shard records that all ranks write into the shared store, read by a polling
    thread on rank 0: ranks never wait on one another for progress. Other ranks show nothing.
    """

    def __init__(self, finished_chunks, chunk_sizes: list[int], world_size: int, *, enabled: bool,
                 interval: float = 1.0, file=None):
        self._finished_chunks = finished_chunks  # () -> set of finished chunk indices
        self.chunk_sizes = chunk_sizes
        self.world_size = world_size
        self.enabled = enabled
        self.interval = interval
        self.file = file if file is not None else sys.stderr
        self._bars = []
        self._stop = threading.Event()
        self._thread = None

    def counts(self, finished: set[int]) -> list[int]:
        """Directions finished per rank."""
        done = [0] * self.world_size
        for index in finished:
            if index < len(self.chunk_sizes):
                done[index % self.world_size] += self.chunk_sizes[index]
        return done

    def totals(self) -> list[int]:
        totals = [0] * self.world_size
        for index, size in enumerate(self.chunk_sizes):
            totals[index % self.world_size] += size
        return totals

    def start(self) -> "SweepProgress":
        if not self.enabled:
            return self
        from tqdm.auto import tqdm

        done = self.counts(self._finished_chunks())
        totals = self.totals()
        common = dict(unit="dir", unit_scale=True, dynamic_ncols=True, file=self.file, smoothing=0.1)
        self._bars = [tqdm(total=sum(totals), initial=sum(done), desc="sweep", position=0, **common)]
        if self.world_size > 1:
            self._bars += [tqdm(total=totals[r], initial=done[r], desc=f"rank {r}", position=r + 1,
                                leave=False, **common) for r in range(self.world_size)]
        self._thread = threading.Thread(target=self._poll, name="sweep-progress", daemon=True)
        self._thread.start()
        return self

    def _refresh(self) -> None:
        done = self.counts(self._finished_chunks())
        values = [sum(done)] + (done if self.world_size > 1 else [])
        for bar, value in zip(self._bars, values):
            if value > bar.n:
                bar.update(value - bar.n)
            else:
                bar.refresh()  # no chunk finished: redraw anyway, so elapsed time and rate move on

    def _poll(self) -> None:
        while not self._stop.wait(self.interval):
            try:
                self._refresh()
            except OSError:
                pass  # a transient listing error on a network filesystem: try again next time

    def close(self) -> None:
        if self._thread is not None:
            self._stop.set()
            self._thread.join()
            self._thread = None
            self._refresh()
        for bar in reversed(self._bars):
            bar.close()
        self._bars = []

