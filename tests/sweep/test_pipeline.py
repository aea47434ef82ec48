"""The pipeline library: checkpoint or layer + directions -> results in memory, a file or a store,
with the user's own direction ids kept in order; the CLI and the demo only call it."""
import ast
import re
from pathlib import Path

import pytest
import torch

import bilinear_kernels as bk
from bilinear_kernels.io import checkpoints as bk_checkpoints
from bilinear_kernels.sweep import pipeline
from bilinear_kernels.result import DecompositionResult
from tests.tiny_checkpoints import write_bilinear_image, write_bilinear_lm, write_plain

ROOT = Path(__file__).resolve().parents[2]


def assert_same(result, direct, atol=1e-10):
    torch.testing.assert_close(torch.as_tensor(result.eigenvalues), torch.as_tensor(direct.eigenvalues),
                               atol=atol, rtol=0)
    overlap = torch.einsum("bdk,bdk->bk", torch.as_tensor(result.eigenvectors), torch.as_tensor(direct.eigenvectors))
    torch.testing.assert_close(overlap.abs(), torch.ones_like(overlap), atol=1e-8, rtol=0)


def test_checkpoint_in_memory_keeps_the_token_ids_in_order(tmp_path):
    t = write_bilinear_lm(tmp_path / "lm")
    res = pipeline.decompose_checkpoint(tmp_path / "lm", layer=1, directions="5,1,0", k=3, device="cpu")
    layer = bk.BilinearLayer.from_packed(t["transformer.h.1.mlp.w.weight"], t["transformer.h.1.mlp.p.weight"])
    assert_same(res, bk.decompose(layer, t["lm_head.weight"][[5, 1, 0]], k=3))
    assert res.metadata["direction_ids"] == [5, 1, 0] and res.metadata["layer"] == 1
    assert res.metadata["options"]["k"] == 3 and len(res.metadata["checkpoint_sha256"]) == 64


def test_sae_rows_and_contrasts_carry_their_ids(tmp_path):
    t = write_bilinear_lm(tmp_path / "lm")
    from safetensors.torch import save_file

    enc = torch.randn(6, 8, dtype=torch.float64)
    save_file({"W_enc": enc}, str(tmp_path / "sae.safetensors"))
    rows = pipeline.decompose_checkpoint(tmp_path / "lm", layer=0, directions=f"{tmp_path / 'sae.safetensors'}:W_enc:4,2",
                                         k=2)
    assert rows.metadata["direction_ids"] == [4, 2]
    every = pipeline.resolve_target(tmp_path / "lm", layer=0, directions=f"{tmp_path / 'sae.safetensors'}:W_enc")
    assert every.ids == list(range(6))
    contrast = pipeline.resolve_target(tmp_path / "lm", layer=0, directions="contrast:3:1,2")
    assert contrast.ids == [3]
    torch.testing.assert_close(contrast.directions[0],
                               t["lm_head.weight"][3] - t["lm_head.weight"][[1, 2]].mean(0))


def test_layer_in_memory_with_own_ids_to_a_file(tmp_path):
    gen = torch.Generator().manual_seed(0)
    layer = bk.BilinearLayer(torch.randn(5, 7, generator=gen, dtype=torch.float64),
                             torch.randn(5, 7, generator=gen, dtype=torch.float64),
                             torch.randn(4, 5, generator=gen, dtype=torch.float64))
    features = torch.randn(3, 4, generator=gen, dtype=torch.float64)
    target = pipeline.target_from_layer(layer, features, ids=[12, 40, 7])
    res = pipeline.run_target(target, k=3, out=tmp_path / "f.safetensors", chunk=2)
    assert_same(res, bk.decompose(layer, features, k=3))
    loaded = DecompositionResult.load(tmp_path / "f.safetensors")
    assert loaded.metadata["direction_ids"] == [12, 40, 7] and loaded.metadata["layout"] == "in-memory"
    indices = pipeline.target_from_layer(layer, [3, 0])
    assert indices.ids == [3, 0]
    with pytest.raises(ValueError, match="ids has 2 entries for 3 directions"):
        pipeline.target_from_layer(layer, features, ids=[1, 2])
    with pytest.raises(ValueError, match="ids repeat"):
        pipeline.target_from_layer(layer, features, ids=[1, 1, 2])
    with pytest.raises(TypeError, match="bk.BilinearLayer"):
        pipeline.target_from_layer(torch.nn.Linear(3, 3), [0])


def test_store_is_indexed_by_the_targets_ids(tmp_path):
    write_plain(tmp_path / "layer.safetensors", h=3, d=9, o=6)
    target = pipeline.resolve_target(tmp_path / "layer.safetensors", directions="5,1,0")
    report = pipeline.run_target(target, k=2, out=tmp_path / "store", progress=False)
    assert report.n_directions == 3
    stored = bk.open_results(tmp_path / "store")
    assert torch.as_tensor(stored.load().indices).tolist() == [5, 1, 0]
    alone = bk.decompose(target.layer, [5], k=2)
    torch.testing.assert_close(torch.as_tensor(stored[5].eigenvalues), alone.eigenvalues[0])
    with pytest.raises(KeyError):
        stored[2]


def test_notes_are_reported_before_the_work_and_kept(tmp_path):
    write_bilinear_lm(tmp_path / "lm", norms=None)
    seen = []
    res = pipeline.decompose_checkpoint(tmp_path / "lm", layer=0, directions="1", k=100, fold_norms=True,
                                        on_note=seen.append)
    assert res.k == 8 and res.metadata["options"]["k_used"] == 8
    assert any("is the identity" in n for n in seen) and any("k=100 is more than the 8 eigenpairs" in n for n in seen)
    assert res.metadata["notes"] == seen


@pytest.mark.parametrize("out, kind", [(None, "memory"), ("r.safetensors", "file"), ("store", "store"),
                                       ("run.v2/", "store")])
def test_plan_output(tmp_path, out, kind):
    plan = pipeline.plan_output(None if out is None else f"{tmp_path}/{out}")
    assert plan.kind == kind


def test_plan_output_refusals(tmp_path):
    with pytest.raises(ValueError, match=r"ends in '\.pt'.*end the name with '/'"):
        pipeline.plan_output(tmp_path / "x.pt")
    (tmp_path / "file").write_text("x")
    with pytest.raises(pipeline.OutputError, match="exists and is not a directory"):
        pipeline.plan_output(tmp_path / "file")
    with pytest.raises(pipeline.OutputError, match="does not exist"):
        pipeline.plan_output(tmp_path / "nowhere" / "r.safetensors")
    import os

    os.mkfifo(tmp_path / "pipe.safetensors")
    with pytest.raises(pipeline.OutputError, match="exists and is not a regular file"):
        pipeline.plan_output(tmp_path / "pipe.safetensors")


def test_output_is_checked_before_the_checkpoint_is_read(tmp_path):
    with pytest.raises(ValueError, match="ends in '.npz'"):
        pipeline.decompose_checkpoint(tmp_path / "does-not-exist", directions="1", out=tmp_path / "x.npz")


@pytest.mark.parametrize("device, message", [("meta", "meta tensors hold no data"), ("mps", "got 'mps'"),
                                             ("gpu", "device must be")])
def test_resolve_device_refuses_what_the_engine_does_not_run_on(device, message):
    with pytest.raises(ValueError, match=message):
        pipeline.resolve_device(device)
    assert pipeline.resolve_device("cpu") == torch.device("cpu")


def test_solver_options_are_refused_before_any_work(tmp_path):
    write_bilinear_image(tmp_path / "img")
    target = pipeline.resolve_target(tmp_path / "img", layer=0, directions="classes")
    seen = []
    with pytest.raises(ValueError, match="which must be one of"):
        pipeline.run_target(target, k=2, which="XX", on_note=seen.append)
    assert seen == []


def test_cli_holds_no_domain_logic_and_demo_does_not_import_it():
    from bilinear_kernels import cli

    for name in ("DecompositionTarget", "resolve_target", "iter_decomposition_chunks", "decompose_target",
                 "concatenate", "resolve_device", "effective_k"):
        assert not hasattr(cli, name), name
    for path in (ROOT / "bilinear_kernels" / "demo").glob("*.py"):
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.ImportFrom):
                assert "cli" not in (node.module or "").split("."), f"{path.name} imports {node.module}"
            elif isinstance(node, ast.Import):
                assert not any("cli" in a.name.split(".") for a in node.names), path.name


def test_the_documented_pipeline_example_runs(tmp_path, monkeypatch, capsys):
    text = (ROOT / "docs" / "guides" / "sweeps.md").read_text()
    section = text[text.index("## From Python: the pipeline"):]
    code = re.search(r"```python\n(.*?)```", section, flags=re.S).group(1)
    write_bilinear_lm(tmp_path / "model")
    monkeypatch.chdir(tmp_path)
    namespace = {}
    exec(compile(code, "docs/guides/sweeps.md", "exec"), namespace)
    assert "[4, 0, 7]" in capsys.readouterr().out
    assert namespace["report"].n_directions == 11 and len(namespace["stored"]) == 11
    assert DecompositionResult.load(tmp_path / "features.safetensors").metadata["direction_ids"] == [12, 40, 7]


def test_default_chunk_keeps_full_spectra_of_wide_layers_inside_the_budget():
    # the result counts in decompose's memory budget, so 256 full spectra at d = 2048 (4.3 GB in
    # float32) would be refused; the default chunk must shrink to fit, and stay 256 where it fits
    from bilinear_kernels.memory import memory_budget

    wide = bk.BilinearLayer(torch.randn(1, 2048), torch.randn(1, 2048))
    chunk = pipeline.default_chunk(wide, None)
    per_direction = (2048 + 2) * 2048 * 4
    assert 1 <= chunk < pipeline.DEFAULT_CHUNK
    assert chunk * per_direction <= memory_budget(wide.device) // pipeline.RESULT_SHARE_OF_BUDGET
    assert pipeline.default_chunk(wide, None, torch.float64) <= chunk // 2 + 1
    assert pipeline.default_chunk(wide, 16) == pipeline.DEFAULT_CHUNK
    narrow = bk.BilinearLayer(torch.randn(4, 8), torch.randn(4, 8))
    assert pipeline.default_chunk(narrow, None) == pipeline.DEFAULT_CHUNK


def _image_logits(t: dict, z: torch.Tensor, bias: bool) -> torch.Tensor:
    """Class logits of a one-block image model (no residual) on inputs z, in float64."""
    x = z @ t["embed.weight"].T
    pre = x @ t["blocks.0.weight"].T + (t["blocks.0.bias"] if bias else 0)
    left, right = pre.chunk(2, dim=-1)
    return (left * right) @ t["head.weight"].T


@pytest.mark.parametrize("bias", [False, True])
def test_map_embedding_is_the_published_mode_and_rebuilds_the_logits(tmp_path, bias):
    t = write_bilinear_image(tmp_path / "img", n_layer=1, bias=bias)
    res = pipeline.decompose_checkpoint(tmp_path / "img", layer=0, directions="classes", map_embedding=True,
                                        progress=False)
    hidden = pipeline.decompose_checkpoint(tmp_path / "img", layer=0, directions="classes", progress=False)
    d_input = t["embed.weight"].shape[1]
    assert res.eigenvectors.shape == (5, d_input + (1 if bias else 0), hidden.k)
    assert res.metadata["map_embedding"] and any("published mode" in n for n in res.metadata["notes"])
    torch.testing.assert_close(res.eigenvalues, hidden.eigenvalues)
    z = torch.randn(7, d_input, dtype=torch.float64)
    torch.testing.assert_close(res.activations(z).sum(-1), _image_logits(t, z, bias), rtol=1e-9, atol=1e-9)
    exact = pipeline.decompose_checkpoint(tmp_path / "img", layer=0, directions="classes", fold_embedding=True,
                                          progress=False)
    torch.testing.assert_close(exact.activations(z).sum(-1), _image_logits(t, z, bias), rtol=1e-9, atol=1e-9)
    assert not torch.allclose(exact.eigenvalues[:, :3], res.eigenvalues[:, :3], rtol=1e-3)


def test_map_embedding_refusals(tmp_path):
    write_bilinear_image(tmp_path / "img", n_layer=2)
    write_bilinear_lm(tmp_path / "lm")
    with pytest.raises(ValueError, match="exclusive"):
        pipeline.resolve_target(tmp_path / "img", layer=0, directions="classes", map_embedding=True,
                                fold_embedding=True)
    with pytest.raises(bk_checkpoints.CheckpointError, match="needs layer 0"):
        pipeline.resolve_target(tmp_path / "img", layer=1, directions="classes", map_embedding=True)
    with pytest.raises(bk_checkpoints.CheckpointError, match="input embedding"):
        pipeline.resolve_target(tmp_path / "lm", layer=0, directions="0", map_embedding=True)
    target = pipeline.resolve_target(tmp_path / "img", layer=0, directions="classes", map_embedding=True)
    with pytest.raises(ValueError, match="sweep store keeps the exact eigenvectors"):
        pipeline.run_target(target, k=2, out=tmp_path / "store", progress=False)
    assert not (tmp_path / "store").exists()


def test_ignore_biases_decomposes_the_unbiased_form_and_says_so(tmp_path):
    t = write_plain(tmp_path / "layer.safetensors", bias=True)
    notes = []
    res = pipeline.decompose_checkpoint(tmp_path / "layer.safetensors", directions="0,2", ignore_biases=True,
                                        progress=False, on_note=notes.append)
    plain = bk.BilinearLayer(t["w"], t["v"], t["p"])
    want = bk.decompose(plain, [0, 2])
    assert res.eigenvectors.shape == want.eigenvectors.shape  # d dimensions, not d + 1
    torch.testing.assert_close(res.eigenvalues, want.eigenvalues, rtol=1e-10, atol=1e-10)
    assert any("biases ignored" in n for n in notes) and res.metadata["ignore_biases"]
    biased = pipeline.decompose_checkpoint(tmp_path / "layer.safetensors", directions="0,2", progress=False)
    assert biased.eigenvectors.shape[1] == want.eigenvectors.shape[1] + 1
