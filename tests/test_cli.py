"""The `bilinear-kernels` command: through a subprocess (`python -m bilinear_kernels`) for what a
user runs, in-process (`cli.main`) for the many error paths."""
import hashlib
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

import bilinear_kernels as bk
from bilinear_kernels import cli
from bilinear_kernels.result import DecompositionResult
from tests.tiny_checkpoints import write_bilinear_image, write_bilinear_lm, write_llama, write_plain

ROOT = Path(__file__).resolve().parents[1]


def run_module(*args, env_extra=None):
    env = {**os.environ, "PYTHONPATH": str(ROOT) + os.pathsep + os.environ.get("PYTHONPATH", "")}
    env.update(env_extra or {})
    return subprocess.run([sys.executable, "-m", "bilinear_kernels", *map(str, args)], capture_output=True,
                          text=True, cwd=ROOT, env=env, timeout=300)


def assert_same(result, direct):
    torch.testing.assert_close(torch.as_tensor(result.eigenvalues), torch.as_tensor(direct.eigenvalues),
                               atol=1e-10, rtol=0)
    overlap = torch.einsum("bdk,bdk->bk", torch.as_tensor(result.eigenvectors), torch.as_tensor(direct.eigenvectors))
    torch.testing.assert_close(overlap.abs(), torch.ones_like(overlap), atol=1e-8, rtol=0)


def test_decompose_subprocess_plain_file_matches_the_direct_api(tmp_path):
    t = write_plain(tmp_path / "layer.safetensors", h=3, d=9, o=4)
    out = tmp_path / "res.safetensors"
    proc = run_module("decompose", tmp_path / "layer.safetensors", "--directions", "classes", "--k", "5",
                      "--out", out)
    assert proc.returncode == 0, proc.stderr
    assert "decomposed 4 direction(s)" in proc.stdout and "max residual" in proc.stdout and str(out) in proc.stdout
    result = DecompositionResult.load(out)
    direct = bk.decompose(bk.BilinearLayer(t["w"], t["v"], t["p"]), [0, 1, 2, 3], k=5)
    assert_same(result, direct)
    assert result.method == direct.method == "lowrank" and result.indices.tolist() == [0, 1, 2, 3]
    meta = result.metadata
    assert meta["checkpoint_sha256"] == hashlib.sha256((tmp_path / "layer.safetensors").read_bytes()).hexdigest()
    assert meta["package_version"] == bk.__version__ and meta["layout"] == "plain" and meta["layer"] is None
    assert meta["options"]["k"] == 5 and meta["options"]["which"] == "LM" and meta["directions"] == "classes"


def test_decompose_subprocess_lm_tokens_in_chunks(tmp_path):
    t = write_bilinear_lm(tmp_path / "lm", bias=True)
    out = tmp_path / "res.safetensors"
    proc = run_module("decompose", tmp_path / "lm", "--layer", "1", "--directions", "4,0,7", "--k", "all",
                      "--which", "BE", "--chunk", "2", "--dtype", "float64", "--out", out)
    assert proc.returncode == 0, proc.stderr
    assert "decompose" in proc.stderr  # the tqdm bar over chunks
    result = DecompositionResult.load(out)
    layer = bk.BilinearLayer.from_packed(t["transformer.h.1.mlp.w.weight"], t["transformer.h.1.mlp.p.weight"],
                                         t["transformer.h.1.mlp.w.bias"])
    direct = bk.decompose(layer, t["lm_head.weight"][[4, 0, 7]], which="BE")
    assert_same(result, direct)
    assert result.k == 9  # d + 1: the biased form, full spectrum
    meta = result.metadata
    assert meta["layer"] == 1 and meta["direction_ids"] == [4, 0, 7] and meta["options"]["chunk"] == 2
    assert set(meta["checkpoint_files"]) == {"config.json", "model.safetensors"}


def test_info_subprocess_prints_backends():
    proc = run_module("info")
    assert proc.returncode == 0, proc.stderr
    assert f"bilinear-kernels {bk.__version__}" in proc.stdout
    for key, value in bk.backends().items():
        assert key in proc.stdout
    assert torch.__version__ in proc.stdout


def test_errors_are_one_line_without_traceback(tmp_path):
    proc = run_module("decompose", tmp_path / "missing", "--directions", "classes", "--out", tmp_path / "r.safetensors")
    assert proc.returncode == 2
    assert "Traceback" not in proc.stderr
    assert proc.stderr.strip() == f"bilinear-kernels decompose: error: checkpoint not found: {tmp_path / 'missing'}"
    proc = run_module("decompose", tmp_path / "missing", "--directions", "classes", "--out", tmp_path / "r.safetensors",
                      env_extra={"BILINEAR_KERNELS_TRACEBACK": "1"})
    assert proc.returncode != 0 and "Traceback" in proc.stderr and "CheckpointNotFoundError" in proc.stderr


def decompose_main(capsys, *args):
    code = cli.main(["decompose", *map(str, args), "--quiet"])
    captured = capsys.readouterr()
    return code, captured.out, captured.err


def test_in_process_chunks_give_the_same_result_as_one_call(tmp_path, capsys):
    write_bilinear_image(tmp_path / "img", d_output=5)
    for chunk, name in ((2, "a"), (100, "b")):
        code, _, err = decompose_main(capsys, tmp_path / "img", "--layer", "1", "--directions", "classes",
                                      "--k", "3", "--chunk", chunk, "--out", tmp_path / f"{name}.safetensors")
        assert code == 0, err
    a, b = DecompositionResult.load(tmp_path / "a.safetensors"), DecompositionResult.load(tmp_path / "b.safetensors")
    torch.testing.assert_close(a.eigenvalues, b.eigenvalues, rtol=0, atol=0)
    torch.testing.assert_close(a.eigenvectors, b.eigenvectors, rtol=0, atol=0)


def test_fold_embedding_decomposes_in_input_space(tmp_path, capsys):
    t = write_bilinear_image(tmp_path / "img", d_input=16, d_hidden=6)
    code, _, err = decompose_main(capsys, tmp_path / "img", "--layer", "0", "--fold-embedding", "--directions", "1,3",
                                  "--k", "4", "--out", tmp_path / "r.safetensors")
    assert code == 0, err
    assert "note: embed.weight folded" in err
    result = DecompositionResult.load(tmp_path / "r.safetensors")
    w, v = t["blocks.0.weight"].chunk(2)
    layer = bk.BilinearLayer(w @ t["embed.weight"], v @ t["embed.weight"])
    assert_same(result, bk.decompose(layer, t["head.weight"][[1, 3]], k=4))
    assert result.eigenvectors.shape == (2, 16, 4) and result.method == "lowrank"


def test_matrix_rows_from_a_file_as_directions(tmp_path, capsys):
    t = write_llama(tmp_path / "llama")
    sae = torch.randn(3, 8, dtype=torch.float64)
    from safetensors.torch import save_file

    save_file({"encoder": sae}, str(tmp_path / "sae.safetensors"))
    code, _, err = decompose_main(capsys, tmp_path / "llama", "--layer", "0", "--directions",
                                  f"{tmp_path / 'sae.safetensors'}:encoder", "--k", "2", "--out", tmp_path / "r.safetensors")
    assert code == 0, err
    layer = bk.BilinearLayer(t["model.layers.0.mlp.gate_proj.weight"], t["model.layers.0.mlp.up_proj.weight"],
                             t["model.layers.0.mlp.down_proj.weight"])
    assert_same(DecompositionResult.load(tmp_path / "r.safetensors"), bk.decompose(layer, sae, k=2))


@pytest.mark.parametrize("case, message", [
    ("pickle", "never loaded"),
    ("misshapen", r"'transformer.h.0.mlp.p.weight' in .* has shape (6, 8); expected (8, 6)"),
    ("layer", "layer 5 is out of range"),
    ("gated", "not a quadratic form"),
    ("directions", "unrecognised directions 'tokens'"),
    ("token", "id 99 is out of range"),
    ("out-folder", "the folder of --out does not exist"),
    ("device", "torch sees no CUDA device"),
    ("method", "method='lowrank' needs 2h < d"),
])
def test_bad_input_gives_a_one_line_error(tmp_path, capsys, case, message):
    lm = tmp_path / "lm"
    t = write_bilinear_lm(lm)
    out = tmp_path / "r.safetensors"
    args = [lm, "--layer", "0", "--directions", "classes", "--out", out]
    if case == "pickle":
        (tmp_path / "model.bin").write_bytes(b"\x80\x04K\x01.")
        args[0] = tmp_path / "model.bin"
    elif case == "misshapen":
        from safetensors.torch import save_file

        t["transformer.h.0.mlp.p.weight"] = t["transformer.h.0.mlp.p.weight"].T.contiguous()
        save_file(t, str(lm / "model.safetensors"))
    elif case == "layer":
        args[2] = "5"
    elif case == "gated":
        write_llama(tmp_path / "llama", act="silu")
        args[0] = tmp_path / "llama"
    elif case == "directions":
        args[4] = "tokens"
    elif case == "token":
        args[4] = "1,99"
    elif case == "out-folder":
        args[-1] = tmp_path / "nowhere" / "r.safetensors"
    elif case == "device":
        if torch.cuda.is_available():
            pytest.skip("this machine has CUDA")
        args += ["--device", "cuda"]
    elif case == "method":
        args += ["--method", "lowrank"]  # h = 6, d = 8: 2h ≥ d
    code, stdout, err = decompose_main(capsys, *args)
    assert code == 2 and stdout == ""
    lines = err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("bilinear-kernels decompose: error: ")
    import re

    assert re.search(message.replace("(", r"\(").replace(")", r"\)") if case == "misshapen" else message, lines[0])
    assert not out.exists()


def test_argument_errors_exit_with_usage(capsys):
    with pytest.raises(SystemExit) as err:
        cli.main(["decompose", "x", "--directions", "classes", "--out", "r.safetensors", "--k", "0"])
    assert err.value.code == 2 and "positive integer" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        cli.main(["decompose", "x", "--out", "r.safetensors"])  # --directions is required
    assert "--directions" in capsys.readouterr().err
    assert cli.main([]) == 2


def test_info_json_and_readable_nested_values(capsys):
    assert cli.main(["info", "--json"]) == 0
    import json

    assert json.loads(capsys.readouterr().out)["backends"]["torch"] == torch.__version__
    lines = cli.format_mapping({"triton": None, "devices": [], "extension": {"loaded": True, "ops": ["a", "b"]}})
    assert lines == ["triton:    not available", "devices:   none", "extension:", "  loaded: yes", "  ops:    a, b"]


def test_decompose_into_a_store_resumes_and_matches_a_file(tmp_path):
    """--out DIR streams into a resumable store; a rerun computes nothing and the stored eigenpairs
    equal those of a single results file."""
    write_plain(tmp_path / "layer.safetensors", h=3, d=9, o=6)
    common = ["decompose", tmp_path / "layer.safetensors", "--directions", "classes", "--k", "4", "--quiet"]
    store, single = tmp_path / "sweep", tmp_path / "res.safetensors"
    first = run_module(*common, "--chunk", "4", "--out", store)
    assert first.returncode == 0, first.stderr
    assert "6 computed now" in first.stdout
    again = run_module(*common, "--out", store)
    assert again.returncode == 0, again.stderr
    assert "0 computed now" in again.stdout
    assert run_module(*common, "--out", single).returncode == 0
    stored = bk.open_results(store).load()
    assert torch.as_tensor(stored.indices).tolist() == [0, 1, 2, 3, 4, 5]
    assert_same(stored, DecompositionResult.load(single))
    changed = run_module(*common, "--which", "LA", "--out", store)
    assert changed.returncode != 0 and "which" in changed.stderr
