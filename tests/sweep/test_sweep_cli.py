"""`python -m bilinear_kernels.sweep` as a user meets it: every mistake is one line and exit status
2, a second writer of a store is refused naming the first, and Ctrl-C stops within about a second
and says the command that resumes."""
from __future__ import annotations

import datetime
import io
import json
import os
import re
import shlex
import signal
import struct
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from safetensors.torch import save_file

import bilinear_kernels as bk
from bilinear_kernels.sweep import distributed
from bilinear_kernels.sweep.sweep import PROG, main

ROOT = Path(__file__).resolve().parents[2]
D, H, O = 12, 16, 30
CHUNK, K = 4, 3
SWEEP = ["--k", str(K), "--method", "eigh", "--chunk", str(CHUNK), "--no-progress"]


@pytest.fixture(scope="module")
def weights(tmp_path_factory) -> Path:
    gen = torch.Generator().manual_seed(7)
    path = tmp_path_factory.mktemp("layer") / "layer.safetensors"
    save_file({"w": torch.randn(H, D, generator=gen), "v": torch.randn(H, D, generator=gen),
               "p": torch.randn(O, H, generator=gen)}, str(path))
    return path


def _env(**extra) -> dict:
    env = dict(os.environ)
    env["PYTHONPATH"] = str(ROOT) + os.pathsep + env.get("PYTHONPATH", "")
    env.update(extra)
    return env


def _sparse_safetensors(path: Path, n: int) -> None:
    """A valid safetensors header for w, v of shape (n, n) float32, the data a hole (sparse file)."""
    size = n * n * 4
    header = json.dumps({"w": {"dtype": "F32", "shape": [n, n], "data_offsets": [0, size]},
                         "v": {"dtype": "F32", "shape": [n, n], "data_offsets": [size, 2 * size]}}).encode()
    header += b" " * (-len(header) % 8)
    with open(path, "wb") as f:
        f.write(struct.pack("<Q", len(header)) + header)
        f.truncate(8 + len(header) + 2 * size)


def _mistakes(tmp_path: Path, weights: Path) -> dict:
    good = [str(weights), "--out", str(tmp_path / "out")]
    gen = torch.Generator().manual_seed(0)
    tensors = {"w": torch.randn(H, D, generator=gen), "v": torch.randn(H, D, generator=gen)}
    torch.save({**tensors, "when": datetime.datetime(2026, 1, 1)}, tmp_path / "code.pt")  # a global torch refuses
    torch.save(tensors, tmp_path / "zip.safetensors")
    torch.save(tensors, tmp_path / "pickle.safetensors", _use_new_zipfile_serialization=False)
    (tmp_path / "truncated.safetensors").write_bytes(weights.read_bytes()[:300])
    nan = dict(tensors, w=tensors["w"].clone())
    nan["w"][2, 3] = float("nan")
    save_file(nan, str(tmp_path / "nan.safetensors"))
    _sparse_safetensors(tmp_path / "sparse.safetensors", 2**15)  # 8 GiB of weights, stored as a hole
    (tmp_path / "a_file").write_text("not a directory")
    return {
        "missing file": ([str(tmp_path / "nope.safetensors"), "--out", str(tmp_path / "o")], "checkpoint not found"),
        "pickle with code": ([str(tmp_path / "code.pt"), "--out", str(tmp_path / "o")],
                             "torch.load\\(weights_only=True\\) refused it"),
        "pickle by content": ([str(tmp_path / "pickle.safetensors"), "--out", str(tmp_path / "o")], "pickle data"),
        "zip": ([str(tmp_path / "zip.safetensors"), "--out", str(tmp_path / "o")], "zip archive"),
        "truncated file": ([str(tmp_path / "truncated.safetensors"), "--out", str(tmp_path / "o")],
                           "not a valid safetensors file"),
        "NaN weights": ([str(tmp_path / "nan.safetensors"), "--out", str(tmp_path / "o")], "non-finite"),
        "sparse huge file": ([str(tmp_path / "sparse.safetensors"), "--out", str(tmp_path / "o")],
                             "8.0 GiB of weights .* more than the 1.0 GiB of memory available"),
        "a folder as weights": ([str(tmp_path), "--out", str(tmp_path / "o")], "is not a file"),
        "directions out of range": ([*good, "--directions", "0:99"], "'0:99' is out of range .* d_out = 30"),
        "huge direction range": ([*good, "--directions", f"0:{2**62}"], "out of range"),
        "directions unreadable": ([*good, "--directions", "1-4"], "cannot read '1-4'"),
        "chunk 0": ([*good, "--chunk", "0"], "argument --chunk: expected a positive integer, got 0"),
        "k 0": ([*good, "--k", "0"], "argument --k: expected a positive integer, got 0"),
        "k above d": ([*good, "--k", str(D + 1)], r"k must be in \[1, d\]"),
        "max-memory -1": ([*good, "--max-memory", "-1"], "argument --max-memory: expected a positive integer"),
        "tol nan": ([*good, "--tol", "nan"], "argument --tol"),
        "bad device": ([*good, "--device", "gpu7"], "--device"),
        "no --out": ([str(weights)], "--out DIR is required"),
        "output under a file": ([str(weights), "--out", str(tmp_path / "a_file" / "s")], "Not a directory"),
        "output is a file": ([str(weights), "--out", str(tmp_path / "a_file")], "exists and is not a directory"),
        "output in /proc": ([str(weights), "--out", "/proc/bilinear-kernels-store"], "/proc/bilinear-kernels-store"),
    }


CASES = ["missing file", "pickle with code", "pickle by content", "zip", "truncated file", "NaN weights",
         "sparse huge file", "a folder as weights", "directions out of range", "huge direction range",
         "directions unreadable", "chunk 0", "k 0", "k above d", "max-memory -1", "tol nan", "bad device",
         "no --out", "output under a file", "output is a file", "output in /proc"]


@pytest.mark.parametrize("case", CASES)
def test_every_user_error_is_one_line_and_status_2(weights, tmp_path, capsys, monkeypatch, case):
    argv, expected = _mistakes(tmp_path, weights)[case]
    if case == "sparse huge file":  # whatever this machine has free, the file holds more
        monkeypatch.setattr("bilinear_kernels.memory.free_bytes", lambda device: 2**30)
    try:
        status = main(argv + ["--no-progress"])
    except SystemExit as exit_:  # argparse's own errors leave through SystemExit
        status = exit_.code
    err = capsys.readouterr().err
    assert status == 2, err
    lines = err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith(f"{PROG}: error: "), err
    import re

    assert re.search(expected, lines[0]), lines[0]
    assert "Traceback" not in err


def test_a_torch_save_layer_file_sweeps_like_a_safetensors_one(weights, tmp_path):
    tensors = {"w": torch.randn(H, D), "v": torch.randn(H, D)}
    torch.save(tensors, tmp_path / "layer.pt")
    save_file(tensors, str(tmp_path / "layer.safetensors"))
    for name in ("layer.pt", "layer.safetensors"):
        assert main([str(tmp_path / name), "--out", str(tmp_path / f"o-{name}"), "--k", "2", "--no-progress"]) == 0
    a, b = (bk.open_results(tmp_path / f"o-{name}").load() for name in ("layer.pt", "layer.safetensors"))
    torch.testing.assert_close(torch.as_tensor(a.eigenvalues), torch.as_tensor(b.eigenvalues))


def test_a_huge_sparse_file_is_refused_before_it_is_read(tmp_path):
    _sparse_safetensors(tmp_path / "huge.safetensors", 2**19)  # 2 TiB, as a hole: more than any machine has free
    run = subprocess.run([sys.executable, "-m", "bilinear_kernels.sweep", str(tmp_path / "huge.safetensors"),
                          "--out", str(tmp_path / "o")], cwd=ROOT, env=_env(), capture_output=True, text=True,
                         timeout=120)
    assert run.returncode == 2 and len(run.stderr.strip().splitlines()) == 1, run.stderr
    assert re.search("of weights .* more than|unable to mmap", run.stderr), run.stderr


@pytest.mark.skipif(os.name != "posix" or os.geteuid() == 0, reason="needs POSIX permissions that apply (not root)")
def test_a_read_only_output_directory_is_one_line(weights, tmp_path, capsys):
    ro = tmp_path / "ro"
    ro.mkdir()
    ro.chmod(0o555)
    try:
        assert main([str(weights), "--out", str(ro / "s"), *SWEEP]) == 2
    finally:
        ro.chmod(0o755)
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "Permission denied" in err[0]


def test_the_module_entry_point_prints_one_line(tmp_path):
    run = subprocess.run([sys.executable, "-m", "bilinear_kernels.sweep", str(tmp_path / "nope.safetensors"),
                          "--out", str(tmp_path / "o")], cwd=ROOT, env=_env(), capture_output=True, text=True,
                         timeout=120)
    assert run.returncode == 2
    assert run.stderr.strip().splitlines() == [f"{PROG}: error: checkpoint not found: {tmp_path / 'nope.safetensors'}"]


# -- one writer per store (real processes) ----------------------------------------------------
# After its first shard, the sweep waits until the file argv[1] exists: it is surely at work, and
# holds the store, while a second process starts.
HOLD_AFTER_FIRST_SHARD = """
import sys, time
from pathlib import Path
import bilinear_kernels.io.store as store
write = store.SweepStore.write_shard
def held(self, *args, **kwargs):
    record = write(self, *args, **kwargs)
    while not Path(sys.argv[1]).exists():
        time.sleep(0.02)
    return record
store.SweepStore.write_shard = held
from bilinear_kernels.sweep.sweep import main
sys.exit(main(sys.argv[2:]))
"""


def _start(driver: str, args) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-c", driver, *map(str, args)], cwd=ROOT, env=_env(OMP_NUM_THREADS="1"),
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def _records(out: Path) -> int:
    return len(list((out / "shards").glob("*.json"))) if (out / "shards").is_dir() else 0


def _wait_for(ready, proc, timeout=120):
    deadline = time.monotonic() + timeout
    while not ready():
        assert proc.poll() is None, f"the sweep ended early:\n{proc.stderr.read()}"
        assert time.monotonic() < deadline, "the sweep made no progress"
        time.sleep(0.02)


def _finish(procs):
    for p in procs:
        if p.poll() is None:
            p.kill()
            p.wait()


@pytest.mark.parametrize("second_k", [K, K - 1], ids=["same settings", "other k"])
def test_a_second_writer_is_refused_naming_the_first(weights, tmp_path, second_k):
    out, release = tmp_path / "s", tmp_path / "release"
    first = _start(HOLD_AFTER_FIRST_SHARD, [release, weights, "--out", out, *SWEEP])
    try:
        _wait_for(lambda: _records(out) >= 1, first)
        second = subprocess.run([sys.executable, "-m", "bilinear_kernels.sweep", str(weights), "--out", str(out),
                                 *SWEEP[:-1], "--k", str(second_k), "--no-progress"], cwd=ROOT, env=_env(),
                                capture_output=True, text=True, timeout=120)
        release.touch()
        assert first.wait(timeout=120) == 0, first.stderr.read()
    finally:
        _finish([first])
    assert second.returncode == 2
    (line,) = second.stderr.strip().splitlines()
    assert f"being written by another process (pid {first.pid} on host" in line and "command:" in line
    assert "free space" not in line
    stored = bk.open_results(out)
    assert stored.complete and stored.verify() == {} and stored.load().eigenvalues.shape == (O, K)


def test_writers_started_together_one_works_one_is_refused(weights, tmp_path):
    out, release = tmp_path / "s", tmp_path / "release"
    procs = [_start(HOLD_AFTER_FIRST_SHARD, [release, weights, "--out", out, *SWEEP]) for _ in range(2)]
    try:
        deadline = time.monotonic() + 120
        while all(p.poll() is None for p in procs):  # the one without the lock leaves; the other is held
            assert time.monotonic() < deadline, "neither writer was refused"
            time.sleep(0.02)
        release.touch()
        status = [p.wait(timeout=120) for p in procs]
    finally:
        _finish(procs)
    errors = [p.stderr.read() for p in procs]
    assert sorted(status) == [0, 2], errors
    loser = errors[status.index(2)]
    assert "being written by another process" in loser and "could not write" not in loser, loser
    stored = bk.open_results(out)
    assert stored.complete and stored.verify() == {} and len(stored) == O


# -- Ctrl-C -----------------------------------------------------------------------------------
# The second chunk's decompose sits in something that does not look at signals for 30 s, as one
# long batched eigh or GEMM does (SIGINT blocked on its thread stands in for C code).
UNINTERRUPTIBLE_SECOND_CHUNK = """
import signal, sys, time
from pathlib import Path
import bilinear_kernels.sweep.sweep as sweep
real, calls = sweep.decompose, []
def decompose(*args, **kwargs):
    calls.append(1)
    if len(calls) == 2:
        signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGINT})
        Path(sys.argv[1]).write_text("computing")
        time.sleep(30)
        signal.pthread_sigmask(signal.SIG_UNBLOCK, {signal.SIGINT})
    return real(*args, **kwargs)
sweep.decompose = decompose
sys.exit(sweep.main(sys.argv[2:]))
"""


def test_ctrl_c_stops_within_a_second_and_prints_the_resume_command(weights, tmp_path):
    out, marker = tmp_path / "s", tmp_path / "computing"
    argv = [weights, "--out", out, *SWEEP[:-1], "--progress", "--no-resume"]
    proc = _start(UNINTERRUPTIBLE_SECOND_CHUNK, [marker, *argv])
    try:
        _wait_for(marker.exists, proc)
        time.sleep(0.2)
        os.kill(proc.pid, signal.SIGINT)
        sent = time.monotonic()
        status = proc.wait(timeout=60)
        took = time.monotonic() - sent
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    err = proc.stderr.read()
    assert status == 130, err
    assert took < 3.0, f"took {took:.1f} s to stop"  # about a second, with room for a loaded machine
    assert "Traceback" not in err
    assert "interrupted: 1 of 8 chunks are saved in" in err
    (command,) = [line.split("to resume, run: ", 1)[1] for line in err.splitlines() if "to resume, run: " in line]
    args = shlex.split(command)
    assert args[:3] == [sys.executable, "-m", "bilinear_kernels.sweep"] and "--no-resume" not in args
    assert args[3:] == [str(a) for a in argv if a != "--no-resume"]
    resumed = subprocess.run(args, cwd=ROOT, env=_env(), capture_output=True, text=True, timeout=120)
    assert resumed.returncode == 0, resumed.stderr
    assert "7 computed, 1 already done" in resumed.stderr
    assert bk.open_results(out).complete


def test_abandoned_work_stops_at_its_next_chunk():
    """What a sweep abandons on Ctrl-C is told to stop; chunk loops raise at their next chunk."""
    import threading

    from bilinear_kernels.progress import Cancelled, cancel_scope, chunk_starts

    event, seen = threading.Event(), []
    with cancel_scope(event):
        with pytest.raises(Cancelled):
            for start in chunk_starts(10, 2, False, "test"):
                seen.append(start)
                if start == 4:
                    event.set()
    assert seen == [0, 2, 4]
    assert list(chunk_starts(5, 2, False, "test")) == [0, 2, 4]  # outside a scope: never cancelled


def test_the_progress_bar_keeps_moving_while_a_chunk_computes():
    sink = io.StringIO()
    bar = distributed.SweepProgress(lambda: {0}, [4, 4, 4], 1, enabled=True, interval=0.02, file=sink).start()
    time.sleep(0.5)
    drawn = sink.getvalue().count("\r")
    bar.close()
    assert drawn >= 5, sink.getvalue()  # redrawn (elapsed time, rate) although no chunk finished
