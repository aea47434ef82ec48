"""The store says what it holds and nothing else: directions are found by the user's own ids (in a
store and in a results file alike), the manifest, the ids file and every record are checked on read,
a rerun repairs what it can and refuses the rest, and bad lookups get clear errors."""
from __future__ import annotations

import errno
import json
import os
import shutil
from pathlib import Path

import pytest
import torch
from safetensors.torch import save_file

import bilinear_kernels as bk
from bilinear_kernels import cli
from bilinear_kernels.io import store
from bilinear_kernels.io.checkpoints import load_layer
from bilinear_kernels.result import DecompositionResult
from bilinear_kernels.io.store import (CorruptShardError, DamagedStoreError, StoreError, StoreWarning,
                                       StoreWriteError)
from bilinear_kernels.sweep.sweep import run_sweep
from tests.tiny_checkpoints import write_bilinear_image, write_bilinear_lm, write_plain

D, H, O = 10, 14, 22   # 22 directions in chunks of 4 -> 6 chunks
CHUNK, K = 4, 3


@pytest.fixture(scope="module")
def layer():
    gen = torch.Generator().manual_seed(5)
    return bk.BilinearLayer(torch.randn(H, D, generator=gen), torch.randn(H, D, generator=gen),
                            torch.randn(O, H, generator=gen))


def sweep(layer, path, **kw):
    return run_sweep(layer, range(O), path, **{"k": K, "method": "eigh", "chunk": CHUNK, "progress": False, **kw})


@pytest.fixture(scope="module")
def reference(layer, tmp_path_factory):
    path = tmp_path_factory.mktemp("reference") / "store"
    sweep(layer, path)
    return path


def copy_of(reference, tmp_path) -> Path:
    path = tmp_path / "s"
    shutil.copytree(reference, path)
    return path


def assert_same_store(a, b):
    ra, rb = bk.open_results(a), bk.open_results(b)
    assert ra.complete and rb.complete
    assert [s["sha256"] for s in ra.manifest["shards"]] == [s["sha256"] for s in rb.manifest["shards"]]
    x, y = ra.load(), rb.load()
    for name in ("eigenvalues", "eigenvectors", "residuals", "indices"):
        assert torch.equal(getattr(x, name), getattr(y, name)), name


def edit_manifest(path, change, *, checksum: bool):
    """Edit manifest.json as a user or a tool might; checksum=True also forges a matching checksum."""
    file = path / "manifest.json"
    manifest = json.loads(file.read_text())
    change(manifest)
    if checksum:
        manifest["checksum"] = store.manifest_checksum(manifest)
    file.write_text(json.dumps(manifest))


# -- A1: the user's own ids -------------------------------------------------------------------
def _checkpoints(tmp_path):
    write_bilinear_lm(tmp_path / "lm")
    write_bilinear_image(tmp_path / "img")
    write_plain(tmp_path / "plain.safetensors", h=5, d=7, o=6)
    enc = torch.randn(9, 8, dtype=torch.float64, generator=torch.Generator().manual_seed(2))
    save_file({"W_enc": enc}, str(tmp_path / "sae.safetensors"))
    return {
        "vocab subset": (["lm", "--layer", "0", "--directions", "5,1,0"], [5, 1, 0]),
        "contrast": (["lm", "--layer", "1", "--directions", "contrast:3"], [3]),
        "SAE rows": (["lm", "--layer", "0", "--directions", f"{tmp_path / 'sae.safetensors'}:W_enc:6,1"], [6, 1]),
        "classes": (["img", "--layer", "1", "--directions", "classes"], [0, 1, 2, 3, 4]),
        "indices": (["plain.safetensors", "--directions", "4,2"], [4, 2]),
    }


@pytest.mark.parametrize("kind", ["vocab subset", "contrast", "SAE rows", "classes", "indices"])
def test_store_and_file_are_indexed_by_the_users_ids(tmp_path, monkeypatch, kind):
    monkeypatch.chdir(tmp_path)
    args, ids = _checkpoints(tmp_path)[kind]
    common = ["decompose", *args, "--k", "4", "--quiet", "--device", "cpu"]
    assert cli.main([*common, "--out", "st"]) == 0
    assert cli.main([*common, "--out", "f.safetensors"]) == 0
    stored, single = bk.open_results("st"), DecompositionResult.load("f.safetensors")
    assert stored.direction_ids.tolist() == ids and single.direction_ids == ids
    for row, i in enumerate(ids):
        one, same = stored[i], single[i]
        assert one.direction_id == same.direction_id == i and single.index_of(i) == row
        torch.testing.assert_close(one.eigenvalues, same.eigenvalues)
        torch.testing.assert_close(one.eigenvalues, stored.load().eigenvalues[row])
    assert stored.get(ids[::-1]).direction_ids == ids[::-1]
    absent = max(ids) + 1
    with pytest.raises(KeyError, match=f"direction {absent} is not"):
        stored[absent]
    with pytest.raises(KeyError, match=f"direction {absent} is not"):
        single[absent]


def test_token_ids_of_a_vocab_subset_name_the_tokens_eigenpairs(tmp_path, monkeypatch):
    """`--directions 5,1,0`: [5] is token 5's eigendecomposition and [0] token 0's, not row 0's."""
    monkeypatch.chdir(tmp_path)
    write_bilinear_lm(tmp_path / "lm")
    assert cli.main(["decompose", "lm", "--layer", "0", "--directions", "5,1,0", "--k", "4", "--quiet",
                     "--device", "cpu", "--out", "st"]) == 0
    loaded = load_layer(tmp_path / "lm", 0)
    stored = bk.open_results("st")
    for token in (5, 1, 0):
        truth = bk.decompose(loaded.layer, loaded.readout[token], k=4)
        torch.testing.assert_close(stored[token].eigenvalues, truth.eigenvalues[0], rtol=1e-10, atol=1e-12)


def test_sweep_ids_of_float_directions_are_checked(layer, tmp_path):
    vectors = torch.randn(3, O, generator=torch.Generator().manual_seed(1))
    run_sweep(layer, vectors, tmp_path / "s", ids=[50, 7, 9], k=K, method="eigh", progress=False)
    stored = bk.open_results(tmp_path / "s")
    assert stored.direction_ids.tolist() == [50, 7, 9] and stored.load().direction_ids == [50, 7, 9]
    torch.testing.assert_close(stored[7].eigenvalues, bk.decompose(layer, vectors[1], k=K, method="eigh").eigenvalues[0])
    bad = {"repeat id 7": [7, 7, 9], "names 2 directions": [1, 2], "must be ints": [1, 2.0, 3],
           "sequence of ints": "abc", "own ids": None}
    for message, ids in bad.items():
        directions = [0, 1, 2] if message == "own ids" else vectors
        with pytest.raises((ValueError, TypeError), match=message):
            run_sweep(layer, directions, tmp_path / "t", ids=[5, 6, 7] if ids is None else ids, k=K, progress=False)
    assert not (tmp_path / "t" / "manifest.json").exists()


def test_a_result_is_indexed_by_ids_and_checks_them_on_load(layer, tmp_path):
    res = bk.decompose(layer, [4, 2, 9], k=K)
    assert res.direction_ids == [4, 2, 9] and res.index_of(9) == 2
    assert torch.equal(res[2].eigenvectors, res.eigenvectors[1]) and res[2].direction_id == 2
    assert [r.direction_id for r in res] == [4, 2, 9]
    sub = res.get([9, 4])
    assert sub.direction_ids == [9, 4] and torch.equal(sub.eigenvalues, res.eigenvalues[[2, 0]])
    with pytest.raises(KeyError, match="direction 0 is not in this result"):
        res[0]
    vec = bk.decompose(layer, torch.randn(2, O, generator=torch.Generator().manual_seed(0)), k=K)
    assert vec.direction_ids == [0, 1]  # float directions without ids: row numbers, as in a store
    res.metadata["direction_ids"] = [4, 2]  # a file whose ids do not match its rows
    res.save(tmp_path / "bad.safetensors")
    with pytest.raises(ValueError, match="names 2 directions, and the result holds 3"):
        DecompositionResult.load(tmp_path / "bad.safetensors")


# -- B11: lookups that cannot be answered -----------------------------------------------------
def test_bad_lookups_get_clear_errors(layer, reference):
    stored = bk.open_results(reference)
    res = stored.load()
    for view in (stored, res):
        with pytest.raises(KeyError, match="direction 1000000000000000000000000000000 is not"):
            view[10**30]
        with pytest.raises(TypeError, match=r"a direction id must be an int, got str \('a'\)"):
            view.get(["a"])
        with pytest.raises(TypeError, match="sequence of ints, got str"):
            view.get("ab")
        with pytest.raises(TypeError, match="got a bool"):
            view[True]
        with pytest.raises(TypeError, match="got float"):
            view[1.5]
        with pytest.raises(ValueError, match="empty"):
            view.get([])
    assert 10**30 not in stored and "a" not in stored


# -- A7: self-checking metadata ---------------------------------------------------------------
def test_an_edited_manifest_is_refused_and_no_resume_starts_over(layer, reference, tmp_path):
    path = copy_of(reference, tmp_path)

    def claim_k3_sa(manifest):
        manifest["options"]["k"], manifest["options"]["which"] = 3 - 1, "SA"

    edit_manifest(path, claim_k3_sa, checksum=False)
    with pytest.raises(DamagedStoreError, match="does not match its checksum"):
        bk.open_results(path)
    before = {p: p.read_bytes() for p in path.rglob("*") if p.is_file()}
    with pytest.raises(DamagedStoreError, match="--no-resume"):
        sweep(layer, path, k=2, which="SA")  # the edited claim does not make a resume
    assert {p: p.read_bytes() for p in path.rglob("*") if p.is_file()} == before
    with pytest.warns(StoreWarning, match="removing manifest.json, directions.safetensors, 6 shard"):
        report = sweep(layer, path, k=2, which="SA", resume=False)
    assert report.chunks_computed == 6
    stored = bk.open_results(path)
    assert stored.metadata["options"]["k"] == 2 and stored.load().eigenvalues.shape == (O, 2)


def test_a_manifest_edited_with_a_forged_checksum_serves_no_data(layer, reference, tmp_path):
    path = copy_of(reference, tmp_path)

    def claim_sa(manifest):
        manifest["options"]["which"] = "SA"

    edit_manifest(path, claim_sa, checksum=True)
    with pytest.warns(RuntimeWarning, match="under other settings") as caught:
        stored = bk.open_results(path)
    assert len(caught) == 6 and not stored.complete and len(stored) == 0
    with pytest.raises(KeyError, match="not finished"):
        stored[0]
    assert sorted(stored.verify()) == [f"{i:08d}.json" for i in range(6)]
    # a manifest claiming another k, with its records forged to match, still meets the shapes
    edit_manifest(path, lambda m: m["options"].update(which="LM", k=K - 1) or m.update(complete=False, shards=[]),
                  checksum=True)
    digest = store.header_digest(json.loads((path / "manifest.json").read_text()))
    for record_file in sorted((path / "shards").glob("*.json")):
        record_file.write_text(json.dumps({**json.loads(record_file.read_text()), "header_sha256": digest}))
    with pytest.raises(CorruptShardError, match=rf"eigenvalues of shape \(4, {K}\); the manifest says \(4, {K - 1}\)"):
        bk.open_results(path)[0]


def _interrupted_store(layer, path, monkeypatch, finished=4):
    """A store whose sweep stopped (disk full) after `finished` chunks."""
    write_all, writes = store._write_all, []

    def fills_up(fd, data, target):
        if target.parent.name == "shards" and target.suffix == ".safetensors":
            writes.append(target)
            if len(writes) > finished:
                raise OSError(errno.ENOSPC, "No space left on device")
        write_all(fd, data, target)

    monkeypatch.setattr(store, "_write_all", fills_up)
    with pytest.raises(StoreWriteError):
        sweep(layer, path)
    monkeypatch.setattr(store, "_write_all", write_all)


def test_swapped_records_are_refused_then_recomputed(layer, reference, tmp_path, monkeypatch):
    path = tmp_path / "s"
    _interrupted_store(layer, path, monkeypatch)
    one, two = path / "shards" / "00000001.json", path / "shards" / "00000002.json"
    a, b = one.read_bytes(), two.read_bytes()
    one.write_bytes(b)
    two.write_bytes(a)
    with pytest.warns(RuntimeWarning, match="does not belong to chunk 1"):
        stored = bk.open_results(path)
    assert stored.missing_chunks() == [1, 2, 4, 5] and len(stored) == 2 * CHUNK
    with pytest.raises(KeyError, match="not finished"):
        stored[7]  # chunk 1: never direction 10 of chunk 2's record
    assert sorted(stored.verify()) == ["00000001.json", "00000002.json"]
    with pytest.warns(RuntimeWarning, match="recomputing"):
        report = sweep(layer, path)
    assert (report.chunks_repaired, report.chunks_computed, report.chunks_skipped) == (2, 4, 2)
    assert_same_store(reference, path)


def test_a_record_naming_other_ids_is_refused(layer, tmp_path, monkeypatch):
    path = tmp_path / "s"
    _interrupted_store(layer, path, monkeypatch, finished=2)
    file = path / "shards" / "00000001.json"
    record = json.loads(file.read_text())
    record["ids"] = record["ids"][::-1]
    file.write_text(json.dumps(record))
    with pytest.warns(RuntimeWarning, match="other direction ids"):
        stored = bk.open_results(path)
    assert stored.missing_chunks() == [1, 2, 3, 4, 5]


@pytest.mark.parametrize("damage", ["truncated", "permuted", "missing"])
def test_a_damaged_ids_file_is_refused_then_rewritten(layer, reference, tmp_path, damage):
    path = copy_of(reference, tmp_path)
    file = path / "directions.safetensors"
    if damage == "truncated":
        file.write_bytes(file.read_bytes()[:-16])
    elif damage == "permuted":
        save_file({"ids": torch.arange(O).flip(0)}, str(file))
    else:
        file.unlink()
    with pytest.raises(DamagedStoreError, match="directions.safetensors"):
        bk.open_results(path)
    if damage == "missing":
        report = sweep(layer, path)
    else:
        with pytest.warns(StoreWarning, match="rewriting it"):
            report = sweep(layer, path)
    assert (report.chunks_computed, report.chunks_skipped) == (0, 6)
    assert_same_store(reference, path)


# -- B9: damaged manifests, --no-resume -------------------------------------------------------
def test_no_resume_over_a_truncated_manifest_starts_over_saying_what_it_removes(layer, reference, tmp_path):
    path = copy_of(reference, tmp_path)
    text = (path / "manifest.json").read_text()
    (path / "manifest.json").write_text(text[: len(text) // 2])
    with pytest.raises(DamagedStoreError, match="not valid JSON.*--no-resume"):
        sweep(layer, path)
    with pytest.warns(StoreWarning, match=r"the store is damaged .*removing manifest.json, directions.safetensors, "
                                          r"6 shard\(s\) and 6 record\(s\)"):
        report = sweep(layer, path, resume=False)
    assert report.chunks_computed == 6
    assert_same_store(reference, path)


def test_no_resume_never_removes_foreign_files(layer, reference, tmp_path):
    path = copy_of(reference, tmp_path)
    (path / "manifest.json").write_text("{")
    (path / "notes.txt").write_text("precious")
    with pytest.raises(StoreError, match="notes.txt"):
        sweep(layer, path, resume=False)
    assert (path / "notes.txt").read_text() == "precious" and (path / "manifest.json").read_text() == "{"
    # a JSON file of another tool is not ours to remove either
    other = tmp_path / "other"
    other.mkdir()
    (other / "manifest.json").write_text('{"name": "another tool"}')
    with pytest.raises(StoreError, match="not a sweep manifest"):
        sweep(layer, other, resume=False)
    assert os.listdir(other) == ["manifest.json"]


def test_a_manifest_without_options_is_a_store_error(layer, reference, tmp_path):
    path = copy_of(reference, tmp_path)
    edit_manifest(path, lambda m: m.pop("options"), checksum=True)
    for attempt in (lambda: bk.open_results(path), lambda: sweep(layer, path)):
        with pytest.raises(DamagedStoreError, match="has no 'options' field"):
            attempt()
    with pytest.warns(StoreWarning):
        sweep(layer, path, resume=False)
    assert_same_store(reference, path)
