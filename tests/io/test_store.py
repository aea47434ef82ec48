"""The result store: atomic writes, lazy reads, damaged shards found by checksum and recomputed,
disk-full and unwritable directories reported with the path while the store stays consistent."""
from __future__ import annotations

import errno
import json
import os
import shutil

import pytest
import torch

import bilinear_kernels as bk
from bilinear_kernels.io import store
from bilinear_kernels.io.store import (CorruptShardError, StoreError, StoreWriteError, explain_mismatch,
                                       write_atomic)
from bilinear_kernels.sweep.sweep import run_sweep

D, H, O = 10, 14, 22   # 22 directions in chunks of 4 -> 6 chunks, the last of 2
CHUNK, K = 4, 3


@pytest.fixture(scope="module")
def layer():
    gen = torch.Generator().manual_seed(3)
    return bk.BilinearLayer(torch.randn(H, D, generator=gen), torch.randn(H, D, generator=gen),
                            torch.randn(O, H, generator=gen))


def sweep(layer, path, **kw):
    return run_sweep(layer, range(O), path, **{"k": K, "method": "lanczos", "chunk": CHUNK, "progress": False, **kw})


@pytest.fixture(scope="module")
def reference(layer, tmp_path_factory):
    path = tmp_path_factory.mktemp("reference") / "store"
    sweep(layer, path)
    return path


def assert_same_store(a, b):
    ra, rb = bk.open_results(a), bk.open_results(b)
    assert ra.complete and rb.complete
    assert [s["sha256"] for s in ra.manifest["shards"]] == [s["sha256"] for s in rb.manifest["shards"]]
    x, y = ra.load(), rb.load()
    for name in ("eigenvalues", "eigenvectors", "residuals", "indices"):
        assert torch.equal(getattr(x, name), getattr(y, name)), name


def shard(path, index):
    return path / "shards" / f"{index:08d}.safetensors"


def temporaries(path):
    return [p for p in path.rglob(".*") if p.name.endswith(".tmp")]


# -- atomic files -----------------------------------------------------------------------------
def test_write_atomic_replaces_whole_or_not_at_all(tmp_path, monkeypatch):
    target = tmp_path / "file.bin"
    write_atomic(target, b"old content")

    def disk_full(fd, data, path):
        os.write(fd, bytes(data[:3]))
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(store, "_write_all", disk_full)
    with pytest.raises(StoreWriteError) as info:
        write_atomic(target, b"new content that does not fit")
    assert isinstance(info.value, OSError) and info.value.errno == errno.ENOSPC
    assert str(target) in str(info.value)
    assert target.read_bytes() == b"old content" and temporaries(tmp_path) == []


# -- reading ----------------------------------------------------------------------------------
def test_reader_indexes_iterates_and_describes(layer, reference):
    stored = bk.open_results(reference)
    assert len(stored) == O and stored.complete and stored.missing_chunks() == []
    meta = stored.metadata
    assert meta["options"]["k"] == K and meta["options"]["chunk"] == CHUNK and meta["n_chunks"] == 6
    assert meta["layer"] == {"d_in": D, "d_hidden": H, "d_out": O, "bias": False, "dtype": "float32"}
    assert meta["version"] == bk.__version__ and "shards" not in meta
    parts = list(stored)
    assert [len(p) for p in parts] == [4, 4, 4, 4, 4, 2]
    assert torch.cat([p.indices for p in parts]).tolist() == list(range(O))
    whole = stored.load()
    one = stored[13]
    assert torch.equal(one.eigenvalues, whole.eigenvalues[13]) and torch.equal(one.eigenvectors, whole.eigenvectors[13])
    assert 13 in stored and 99 not in stored
    with pytest.raises(KeyError, match="direction 99 is not part of this sweep"):
        stored[99]
    with pytest.raises(TypeError, match="direction id"):
        stored[1.5]


def test_one_direction_reads_only_its_shard(reference, tmp_path):
    copy = tmp_path / "copy"
    shutil.copytree(reference, copy)
    for index in range(6):
        if index != 3:
            shard(copy, index).unlink()  # every other shard is gone
    stored = bk.open_results(copy)
    assert torch.equal(stored[13].eigenvalues, bk.open_results(reference)[13].eigenvalues)
    with pytest.raises(CorruptShardError, match="00000000.safetensors is missing"):
        stored[0]


def test_manifest_lists_every_shard_with_its_checksum(reference):
    manifest = json.loads((reference / "manifest.json").read_text())
    assert manifest["complete"] and [s["index"] for s in manifest["shards"]] == list(range(6))
    for entry in manifest["shards"]:
        data = shard(reference, entry["index"]).read_bytes()
        assert entry["bytes"] == len(data) and entry["sha256"] == store.sha256_bytes(data)
        assert entry["ids_sha256"] == store.ids_sha256(torch.arange(entry["start"], entry["stop"]))
    assert manifest["checksum"] == store.manifest_checksum(manifest)


# -- damaged shards ---------------------------------------------------------------------------
def test_corrupted_and_truncated_shards_are_detected_and_recomputed(layer, reference, tmp_path):
    path = tmp_path / "s"
    shutil.copytree(reference, path)
    flipped = bytearray(shard(path, 2).read_bytes())
    flipped[-5] ^= 0x40
    shard(path, 2).write_bytes(bytes(flipped))
    with open(shard(path, 4), "r+b") as f:
        f.truncate(100)

    stored = bk.open_results(path)
    with pytest.raises(CorruptShardError, match="00000002.safetensors is corrupted: sha256"):
        stored[2 * CHUNK]
    with pytest.raises(CorruptShardError, match="00000004.safetensors is truncated"):
        stored[4 * CHUNK]
    assert torch.equal(stored[0].eigenvalues, bk.open_results(reference)[0].eigenvalues)  # the rest still reads
    assert sorted(stored.verify()) == ["00000002.safetensors", "00000004.safetensors"]

    with pytest.warns(RuntimeWarning, match="recomputing") as caught:
        report = sweep(layer, path)
    assert len([w for w in caught if "recomputing" in str(w.message)]) == 2
    assert (report.chunks_repaired, report.chunks_computed, report.chunks_skipped) == (2, 2, 4)
    assert bk.open_results(path).verify() == {}
    assert_same_store(reference, path)


def test_a_shard_without_record_is_recomputed(layer, reference, tmp_path):
    # killed after the shard was renamed into place, before its record: not finished
    path = tmp_path / "s"
    shutil.copytree(reference, path)
    (path / "shards" / "00000001.json").unlink()
    shard(path, 1).write_bytes(b"whatever was there")
    report = sweep(layer, path)
    assert (report.chunks_computed, report.chunks_skipped) == (1, 5)
    assert_same_store(reference, path)


# -- disk full, unwritable, foreign directories -----------------------------------------------
@pytest.mark.parametrize("failing", ["shard", "record"])
def test_disk_full_mid_sweep_is_clear_and_leaves_the_store_consistent(layer, reference, tmp_path, monkeypatch, failing):
    path = tmp_path / "s"
    write_all = store._write_all
    writes = []

    def fills_up(fd, data, target):
        kind = "shard" if target.suffix == ".safetensors" else "record"
        if target.parent.name == "shards" and kind == failing:
            writes.append(target)
            if len(writes) == 3:
                os.write(fd, bytes(data[: len(data) // 2]))
                raise OSError(errno.ENOSPC, "No space left on device")
        write_all(fd, data, target)

    monkeypatch.setattr(store, "_write_all", fills_up)
    with pytest.raises(StoreWriteError) as info:
        sweep(layer, path)
    assert isinstance(info.value, OSError) and info.value.errno == errno.ENOSPC
    assert "No space left on device" in str(info.value) and str(path / "shards" / "0000000") in str(info.value)
    assert temporaries(path) == []
    stored = bk.open_results(path)  # consistent: the two finished chunks, nothing else
    assert stored.missing_chunks() == [2, 3, 4, 5] and len(stored) == 2 * CHUNK and stored.verify() == {}

    monkeypatch.setattr(store, "_write_all", write_all)  # space freed: resume
    report = sweep(layer, path)
    assert (report.chunks_computed, report.chunks_skipped) == (4, 2)
    assert_same_store(reference, path)


def test_disk_full_while_creating_the_store(layer, reference, tmp_path, monkeypatch):
    path = tmp_path / "s"

    def no_space(fd, data, target):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(store, "_write_all", no_space)
    with pytest.raises(StoreWriteError, match="No space left"):
        sweep(layer, path)
    assert not (path / "manifest.json").exists() and temporaries(path) == []
    monkeypatch.undo()
    sweep(layer, path)  # what the failed setup left is no obstacle
    assert_same_store(reference, path)


def test_unwritable_output_gives_a_clear_error(layer, tmp_path):
    blocker = tmp_path / "a_file"
    blocker.write_text("not a directory")
    with pytest.raises(OSError) as info:
        sweep(layer, blocker / "sweep")
    assert isinstance(info.value, StoreWriteError) and str(blocker / "sweep") in str(info.value)
    with pytest.raises(StoreWriteError, match="exists and is not a directory"):
        sweep(layer, blocker)
    assert blocker.read_text() == "not a directory"


@pytest.mark.skipif(os.name != "posix" or os.geteuid() == 0, reason="needs POSIX permissions that apply (not root)")
def test_read_only_directory_gives_a_clear_error(layer, tmp_path):
    path = tmp_path / "ro"
    path.mkdir()
    path.chmod(0o555)
    try:
        with pytest.raises(StoreWriteError) as info:
            sweep(layer, path)
        assert info.value.errno == errno.EACCES and str(path) in str(info.value)
    finally:
        path.chmod(0o755)
    assert sorted(os.listdir(path)) == []


def test_a_directory_that_is_not_a_store_is_refused(layer, tmp_path):
    path = tmp_path / "notes"
    path.mkdir()
    (path / "thesis.tex").write_text("precious")
    for resume in (True, False):
        with pytest.raises(StoreError, match="holds no sweep manifest .*thesis.tex"):
            sweep(layer, path, resume=resume)
    assert os.listdir(path) == ["thesis.tex"]
    with pytest.raises(StoreError, match="not a sweep store"):
        bk.open_results(path)


def test_finalize_refuses_missing_chunks(reference, tmp_path):
    path = tmp_path / "s"
    shutil.copytree(reference, path)
    (path / "shards" / "00000003.json").unlink()
    with pytest.raises(StoreError, match="1 of 6 chunks have no shard"):
        store.SweepStore(path).finalize()


def test_mismatch_explanations_name_each_field():
    stored = {"version": "1", "fingerprint": {"sha": "a"}, "layer": {"d_in": 4},
              "directions": {"count": 3}, "options": {"k": 2, "which": "LM"}}
    asked = {**stored, "fingerprint": {"sha": "b"}, "options": {"k": 3, "which": "LM"}}
    assert explain_mismatch(stored, asked) == [
        "fingerprint.sha: the store has 'a', this run asks for 'b'",
        "options.k: the store has 2, this run asks for 3",
    ]
    assert explain_mismatch(stored, dict(stored)) == []


def test_a_lost_directions_file_is_rewritten_on_resume(layer, reference, tmp_path):
    path = tmp_path / "s"
    shutil.copytree(reference, path)
    (path / "directions.safetensors").unlink()
    report = sweep(layer, path)
    assert (report.chunks_computed, report.chunks_skipped) == (0, 6)
    assert_same_store(reference, path)
