"""Streamed sweeps: results equal decompose chunk by chunk, survive SIGKILL and resume bit for bit,
refuse other settings on resume, and split across torch.distributed ranks with the same results.

Processes that get killed or launched by torchrun run `python -m bilinear_kernels.sweep` on a tiny
layer saved as safetensors; everything else runs in this process.
"""
from __future__ import annotations

import io
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from safetensors.torch import save_file

import bilinear_kernels as bk
from bilinear_kernels.sweep import distributed
from bilinear_kernels.io.store import OptionsMismatchError, StoreError
from bilinear_kernels.sweep.sweep import (load_layer, main, parse_direction_spec, run_sweep, wants_store)

ROOT = Path(__file__).resolve().parents[2]
D, H, O = 12, 16, 30          # tiny layer: 30 directions in chunks of 4 -> 8 chunks, the last of 2
CHUNK, K = 4, 3
SWEEP = ["--k", str(K), "--method", "lanczos", "--chunk", str(CHUNK), "--no-progress"]


@pytest.fixture(scope="module")
def weights(tmp_path_factory) -> Path:
    gen = torch.Generator().manual_seed(7)
    path = tmp_path_factory.mktemp("layer") / "layer.safetensors"
    save_file({"w": torch.randn(H, D, generator=gen), "v": torch.randn(H, D, generator=gen),
               "p": torch.randn(O, H, generator=gen)}, str(path))
    return path


@pytest.fixture(scope="module")
def reference(weights, tmp_path_factory) -> Path:
    """An uninterrupted run of `python -m bilinear_kernels.sweep` with SWEEP's settings."""
    path = tmp_path_factory.mktemp("reference") / "store"
    run = run_module([weights, "--out", path, *SWEEP])
    assert run.returncode == 0, run.stderr
    return path


def layer_of(weights: Path) -> bk.BilinearLayer:
    return load_layer(weights)


def _env(**extra) -> dict:
    env = dict(os.environ)
    env["PYTHONPATH"] = str(ROOT) + os.pathsep + env.get("PYTHONPATH", "")
    env.update(extra)
    return env


def run_module(args, **env) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "bilinear_kernels.sweep", *map(str, args)], cwd=ROOT,
                          env=_env(**env), capture_output=True, text=True, timeout=300)


def assert_same_store(a: Path, b: Path) -> None:
    """Bit-identical results: the same shard bytes (by sha256) and equal tensors."""
    ra, rb = bk.open_results(a), bk.open_results(b)
    assert ra.complete and rb.complete
    assert [s["sha256"] for s in ra.manifest["shards"]] == [s["sha256"] for s in rb.manifest["shards"]]
    for x, y in zip(ra.chunks(), rb.chunks()):
        for name in ("eigenvalues", "eigenvectors", "residuals", "indices"):
            assert torch.equal(getattr(x, name), getattr(y, name)), name


def records(store: Path) -> list[Path]:
    return sorted((store / "shards").glob("*.json"))


def temporaries(store: Path) -> list[Path]:
    return [p for p in store.rglob(".*") if p.name.endswith(".tmp")]


# -- results ----------------------------------------------------------------------------------
@pytest.mark.parametrize("method", ["eigh", "lanczos"])
def test_each_shard_equals_decompose_of_its_chunk(weights, tmp_path, method):
    layer = layer_of(weights)
    report = run_sweep(layer, range(O), tmp_path / "s", k=K, method=method, chunk=CHUNK, progress=False)
    assert (report.n_chunks, report.chunks_computed, report.directions_computed) == (8, 8, O)
    assert 0 < report.compute_seconds < report.seconds
    stored = bk.open_results(tmp_path / "s")
    assert stored.complete and len(stored) == O and stored.n_directions == O
    for n, part in enumerate(stored.chunks()):
        ids = list(range(n * CHUNK, min(O, (n + 1) * CHUNK)))
        ref = bk.decompose(layer, ids, k=K, method=method, max_memory=stored.metadata["options"]["max_memory"])
        assert part.indices.tolist() == ids and part.method == method
        for name in ("eigenvalues", "eigenvectors", "residuals"):
            assert torch.equal(getattr(part, name), getattr(ref, name)), name
        one = stored[ids[-1]]
        assert torch.equal(one.eigenvectors, ref.eigenvectors[-1]) and one.direction_id == ids[-1]


def test_float_directions_and_arbitrary_index_order(weights, tmp_path):
    layer = layer_of(weights)
    vectors = torch.randn(7, O, generator=torch.Generator().manual_seed(1))
    run_sweep(layer, vectors, tmp_path / "vec", k=K, method="eigh", chunk=3, progress=False)
    stored = bk.open_results(tmp_path / "vec")
    ref = bk.decompose(layer, vectors, k=K, method="eigh")
    assert stored.metadata["directions"]["kind"] == "vectors"
    assert torch.allclose(stored.load().eigenvalues, ref.eigenvalues, rtol=1e-5, atol=1e-6)
    assert stored.load().indices is None and stored.direction_ids.tolist() == list(range(7))

    ids = [29, 3, 17, 0, 8]
    run_sweep(layer, ids, tmp_path / "idx", k=K, method="eigh", chunk=2, progress=False)
    stored = bk.open_results(tmp_path / "idx")
    assert stored.direction_ids.tolist() == ids
    assert torch.equal(stored.get([17, 29]).eigenvalues, bk.decompose(layer, [17, 29], k=K, method="eigh").eigenvalues)
    with pytest.raises(KeyError, match="not part of this sweep"):
        stored[4]


def test_bad_arguments_are_refused(weights, tmp_path):
    layer = layer_of(weights)
    with pytest.raises(ValueError, match="repeat output index 3"):
        run_sweep(layer, [1, 3, 3], tmp_path / "a", k=K, progress=False)
    with pytest.raises(ValueError, match="chunk"):
        run_sweep(layer, range(4), tmp_path / "a", k=K, chunk=0, progress=False)
    with pytest.raises(ValueError, match="k must be in"):
        run_sweep(layer, range(4), tmp_path / "a", k=D + 1, progress=False)
    with pytest.raises(TypeError, match="fingerprint"):
        run_sweep(layer, range(4), tmp_path / "a", k=K, fingerprint="abc", progress=False)
    with pytest.raises(ValueError, match="rank"):
        run_sweep(layer, range(4), tmp_path / "a", k=K, rank=2, world_size=2, progress=False)
    assert not (tmp_path / "a").exists()  # nothing is written before the arguments are checked


# -- kill and resume --------------------------------------------------------------------------
# Slows the sweep down after each shard, so the test can kill it part-way.
SLOW_AFTER_EACH_SHARD = """
import sys, time
import bilinear_kernels.io.store as store
write = store.SweepStore.write_shard
def slow(self, *args, **kwargs):
    record = write(self, *args, **kwargs)
    time.sleep(1.0)
    return record
store.SweepStore.write_shard = slow
from bilinear_kernels.sweep.sweep import main
main(sys.argv[1:])
"""

# Writes half of the third shard's bytes into its temporary, then stalls: killed right there.
STALL_INSIDE_THIRD_SHARD = """
import os, sys, time
import bilinear_kernels.io.store as store
write_all = store._write_all
seen = []
def stalling(fd, data, path):
    if path.suffix == ".safetensors" and path.parent.name == "shards":
        seen.append(path)
        if len(seen) == 3:
            os.write(fd, bytes(data[: len(data) // 2]))
            os.fsync(fd)
            time.sleep(600)
    write_all(fd, data, path)
store._write_all = stalling
from bilinear_kernels.sweep.sweep import main
main(sys.argv[1:])
"""


def _start(driver: str, args) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-c", driver, *map(str, args)], cwd=ROOT, env=_env(),
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def _kill_when(proc: subprocess.Popen, ready, timeout=120) -> None:
    deadline = time.monotonic() + timeout
    try:
        while not ready():
            if proc.poll() is not None:
                raise AssertionError(f"the sweep ended before it was killed:\n{proc.stderr.read()}")
            if time.monotonic() > deadline:
                raise AssertionError("the sweep made no progress")
            time.sleep(0.02)
        os.kill(proc.pid, signal.SIGKILL)
    finally:
        if proc.poll() is None:
            proc.kill()
        proc.wait()
    assert proc.returncode == -signal.SIGKILL


def _half_written(folder: Path, prefix: str) -> bool:
    """A temporary named `prefix`... with some bytes in it exists (other temporaries come and go)."""
    try:
        return any(p.name.startswith(prefix) and p.stat().st_size > 0 for p in folder.iterdir())
    except OSError:
        return False


def test_sigkill_between_shards_then_resume_is_bit_identical(weights, reference, tmp_path):
    ref, out = reference, tmp_path / "out"

    proc = _start(SLOW_AFTER_EACH_SHARD, [weights, "--out", out, *SWEEP])
    _kill_when(proc, lambda: len(records(out)) >= 2)
    partial = bk.open_results(out)
    finished = len(partial.direction_ids) // CHUNK
    assert not partial.complete and 2 <= finished < 8 and partial.missing_chunks() == list(range(finished, 8))
    assert partial.verify() == {}
    assert torch.equal(partial.load().eigenvalues, bk.open_results(ref).load().eigenvalues[: len(partial)])

    resumed = run_module([weights, "--out", out, *SWEEP])
    assert resumed.returncode == 0, resumed.stderr
    assert f"{8 - finished} computed, {finished} already done" in resumed.stderr
    assert_same_store(ref, out)


def test_sigkill_inside_a_shard_write_leaves_nothing_visible(weights, reference, tmp_path):
    ref, out = reference, tmp_path / "out"

    proc = _start(STALL_INSIDE_THIRD_SHARD, [weights, "--out", out, *SWEEP])
    _kill_when(proc, lambda: _half_written(out / "shards", ".00000002.safetensors."))
    # the half-written shard is on disk, but no reader can see it
    (partial_file,) = temporaries(out)
    assert partial_file.name.startswith(".00000002.safetensors.")
    stored = bk.open_results(out)
    assert len(stored) == 2 * CHUNK and stored.missing_chunks() == list(range(2, 8)) and stored.verify() == {}
    assert len(list(stored.chunks())) == 2
    with pytest.raises(KeyError, match="not finished"):
        stored[2 * CHUNK]

    resumed = run_module([weights, "--out", out, *SWEEP])
    assert resumed.returncode == 0, resumed.stderr
    assert temporaries(out) == []
    assert_same_store(ref, out)


# -- resume rules -----------------------------------------------------------------------------
CHANGES = {
    "k": dict(k=K + 1),
    "which": dict(which="LA"),
    "method": dict(method="eigh"),
    "tol": dict(tol=1e-3),
    "dtype": dict(dtype=torch.float64),
    "seed": dict(seed=1),
    "chunk": dict(chunk=CHUNK + 1),
    "directions": dict(directions=range(O - 1)),
    "fingerprint": dict(fingerprint={"checkpoint_sha256": "another"}),
}


@pytest.mark.parametrize("field", sorted(CHANGES))
def test_resume_with_other_settings_is_refused(weights, tmp_path, field):
    layer = layer_of(weights)
    base = dict(directions=range(O), k=K, method="lanczos", chunk=CHUNK, fingerprint={"checkpoint_sha256": "one"})
    run_sweep(layer, base.pop("directions"), tmp_path / "s", **base, progress=False)
    manifest = (tmp_path / "s" / "manifest.json").read_bytes()
    changed = {**base, "directions": range(O), **CHANGES[field]}
    with pytest.raises(OptionsMismatchError, match=rf"{field}[.:\w]*: the store has .*, this run asks for") as info:
        run_sweep(layer, changed.pop("directions"), tmp_path / "s", **changed, progress=False)
    assert "--no-resume" in str(info.value)
    assert (tmp_path / "s" / "manifest.json").read_bytes() == manifest  # refused: nothing touched


def test_resume_adopts_the_stored_chunk_and_no_resume_starts_anew(weights, tmp_path):
    layer = layer_of(weights)
    run_sweep(layer, range(O), tmp_path / "s", k=K, chunk=CHUNK, progress=False)
    again = run_sweep(layer, range(O), tmp_path / "s", k=K, progress=False)  # chunk=None: the store's
    assert (again.chunks_computed, again.chunks_skipped) == (0, 8)
    assert again.compute_seconds == 0.0, "nothing was decomposed on resume"
    anew = run_sweep(layer, range(O), tmp_path / "s", k=K + 1, chunk=5, resume=False, progress=False)
    assert (anew.n_chunks, anew.chunks_computed) == (6, 6)
    stored = bk.open_results(tmp_path / "s")
    assert stored.complete and stored.metadata["options"]["k"] == K + 1 and len(records(tmp_path / "s")) == 6


def test_a_damaged_manifest_is_reported(weights, tmp_path):
    layer = layer_of(weights)
    run_sweep(layer, range(8), tmp_path / "s", k=K, chunk=CHUNK, progress=False)
    (tmp_path / "s" / "manifest.json").write_text('{"format": "bilinear_kernels.sweep/1", ')
    with pytest.raises(StoreError, match="manifest.json is not valid JSON"):
        run_sweep(layer, range(8), tmp_path / "s", k=K, chunk=CHUNK, progress=False)
    with pytest.raises(StoreError, match="not valid JSON"):
        bk.open_results(tmp_path / "s")


# -- torch.distributed ------------------------------------------------------------------------
def _torchrun(args, nproc=2) -> subprocess.CompletedProcess:
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc-per-node={nproc}",
           "-m", "bilinear_kernels.sweep", *map(str, args)]
    # one BLAS thread in every process, the single-process reference included: the comparison is
    # about how chunks are split across ranks, not about how a BLAS splits a GEMM across threads
    return subprocess.run(cmd, cwd=ROOT, env=_env(OMP_NUM_THREADS="1"), capture_output=True, text=True, timeout=300)


def test_torchrun_two_gloo_ranks_match_one_process(weights, tmp_path):
    ref, out = tmp_path / "ref", tmp_path / "out"
    single = run_module([weights, "--out", ref, *SWEEP], OMP_NUM_THREADS="1")
    assert single.returncode == 0, single.stderr
    run = _torchrun([weights, "--out", out, *SWEEP, "--report", tmp_path / "report.json"])
    assert run.returncode == 0, run.stderr
    assert_same_store(ref, out)
    writers = {json.loads(p.read_text())["rank"] for p in records(out)}
    assert writers == {0, 1}  # chunk j written by rank j mod 2
    report = json.loads((tmp_path / "report.json").read_text())
    assert report["world_size"] == 2 and [r["computed"] for r in report["per_rank"]] == [4, 4]

    # a store left unfinished by one process is finished by two, still bit-identical
    for index in (1, 4, 7):
        (out / "shards" / f"{index:08d}.json").unlink()
        (out / "shards" / f"{index:08d}.safetensors").unlink()
    run = _torchrun([weights, "--out", out, *SWEEP, "--report", tmp_path / "report.json"])
    assert run.returncode == 0, run.stderr
    report = json.loads((tmp_path / "report.json").read_text())
    assert (report["chunks_computed"], report["chunks_skipped"]) == (3, 5)
    assert_same_store(ref, out)


def test_chunks_for_rank_cover_every_chunk_once():
    for n_chunks in (0, 1, 7, 8):
        for world in (1, 2, 3, 5):
            assigned = [j for r in range(world) for j in distributed.chunks_for_rank(n_chunks, r, world)]
            assert sorted(assigned) == list(range(n_chunks))
    with pytest.raises(ValueError, match="rank"):
        distributed.chunks_for_rank(4, 3, 3)


def test_world_size_without_a_process_group_is_refused(weights, tmp_path):
    with pytest.raises(ValueError, match="initialized torch.distributed process group"):
        run_sweep(layer_of(weights), range(4), tmp_path / "s", k=K, rank=0, world_size=2, progress=False)


# -- progress ---------------------------------------------------------------------------------
def test_progress_counts_each_rank_and_reports_a_rate(weights, tmp_path):
    progress = distributed.SweepProgress(lambda: {0, 1, 3, 6}, [4, 4, 4, 4, 4, 4, 4, 2], 3, enabled=False)
    assert progress.totals() == [4 + 4 + 4, 4 + 4 + 2, 4 + 4]  # chunks 0,3,6 | 1,4,7 | 2,5
    assert progress.counts({0, 1, 3, 6}) == [4 + 4 + 4, 4, 0]

    sink = io.StringIO()
    bar = distributed.SweepProgress(lambda: {0, 2}, [4, 4, 2], 2, enabled=True, interval=0.01, file=sink).start()
    bar.close()
    text = sink.getvalue()
    assert "sweep" in text and "rank 0" in text and "rank 1" in text and "dir" in text

    run_sweep(layer_of(weights), range(8), tmp_path / "s", k=K, chunk=CHUNK, progress=True)  # runs clean


# -- command line helpers ---------------------------------------------------------------------
def test_direction_spec_and_output_kind(tmp_path):
    assert parse_direction_spec("all", 5) == [0, 1, 2, 3, 4]
    assert parse_direction_spec("0:3,7, 9:", 11) == [0, 1, 2, 7, 9, 10]
    with pytest.raises(ValueError, match="--directions"):
        parse_direction_spec("1-4", 10)
    assert wants_store(tmp_path / "sweep") and not wants_store(tmp_path / "result.safetensors")
    (tmp_path / "odd.safetensors").mkdir()
    assert wants_store(tmp_path / "odd.safetensors")


def test_module_entry_point_runs_in_process(weights, tmp_path, capsys):
    assert main([str(weights), "--out", str(tmp_path / "s"), "--directions", "0:6", *SWEEP]) == 0
    assert "2 chunks, 2 computed" in capsys.readouterr().err
    assert bk.open_results(tmp_path / "s").metadata["fingerprint"]["weights_sha256"]


def test_benchmark_runs_at_tiny_shapes(tmp_path):
    from benchmarks import bench_sweep

    result = bench_sweep.main(["--quick", "--nproc", "1", "--out", str(tmp_path)])
    (js,) = tmp_path.glob("sweep-cpu-*-quick.json")
    data = json.loads(js.read_text())
    assert data["machine"]["torch"] and data["shape"] == bench_sweep.QUICK
    assert set(data["overhead"]["median_seconds"]) == {"decompose", "decompose-chunked", "sweep"}
    assert all(t > 0 for t in data["overhead"]["median_seconds"].values())
    (run,) = data["overhead"]["in_run"]
    assert 0 < run["compute_seconds"] < run["seconds"]
    assert data["overhead"]["store_share"] == pytest.approx(run["seconds"] / run["compute_seconds"] - 1)
    assert [row["nproc"] for row in data["processes"]] == [1] and result["processes"][0]["directions_per_second"] > 0
    assert "sweep vs in-memory decompose" in js.with_suffix(".md").read_text()
