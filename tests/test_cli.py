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
    # float64 weights: other chunkings batch the BLAS calls differently, so agreement is to rounding
    assert a.eigenvalues.dtype == torch.float64
    scale = float(b.eigenvalues.abs().max())
    torch.testing.assert_close(a.eigenvalues, b.eigenvalues, rtol=0, atol=1e-12 * scale)
    assert_same(a, b)


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
    ("pickle", r"could not be read by torch.load\(weights_only=True\)"),
    ("misshapen", r"'transformer.h.0.mlp.p.weight' in .* has shape (6, 8); expected (8, 6)"),
    ("layer", "layer 5 is out of range"),
    ("gated", "not a quadratic form"),
    ("directions", "unrecognised directions 'tokens'"),
    ("token", "id 99 is out of range"),
    ("out-folder", "the folder of the results file does not exist"),
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

    assert re.search(message.replace("(", r"\(").replace(")", r"\)") if case == "misshapen" else message, lines[0]), lines[0]
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


# -- outputs and inputs that are not what they seem: one line, exit 2, nothing left behind ----------

def one_line_error(capsys, *args):
    """Run `decompose ... --quiet` in-process; the single stderr line of the error."""
    code, stdout, err = decompose_main(capsys, *args)
    lines = err.strip().splitlines()
    assert code == 2 and stdout == "" and len(lines) == 1, err
    assert lines[0].startswith("bilinear-kernels decompose: error: ")
    return lines[0]


@pytest.fixture
def no_hang():
    """Turn a blocking open (a FIFO) into a failure after 30 s instead of a hung suite."""
    import signal

    def fail(*_):
        raise AssertionError("blocked for 30 s")

    previous = signal.signal(signal.SIGALRM, fail)
    signal.alarm(30)
    yield
    signal.alarm(0)
    signal.signal(signal.SIGALRM, previous)


@pytest.mark.skipif(os.geteuid() == 0, reason="root writes into read-only directories")
def test_out_in_a_read_only_directory_is_refused_before_computing(tmp_path, capsys):
    write_plain(tmp_path / "layer.safetensors")
    ro = tmp_path / "ro"
    ro.mkdir()
    ro.chmod(0o500)
    try:
        line = one_line_error(capsys, tmp_path / "layer.safetensors", "--directions", "classes", "--k", "2",
                              "--out", ro / "r.safetensors")
    finally:
        ro.chmod(0o700)
    assert "is not writable" in line and not (ro / "r.safetensors").exists()


def test_out_under_proc_is_one_line(tmp_path, capsys):
    write_plain(tmp_path / "layer.safetensors")
    line = one_line_error(capsys, tmp_path / "layer.safetensors", "--directions", "classes", "--k", "2",
                          "--out", "/proc/bilinear-kernels-test.safetensors")
    assert "could not write /proc/bilinear-kernels-test.safetensors" in line or "is not writable" in line


def test_a_write_that_fails_midway_is_one_line_and_leaves_no_file(tmp_path):
    """A file-size limit makes the write fail past 4 KiB, as a full disk does."""
    write_bilinear_lm(tmp_path / "lm")
    out = tmp_path / "out" / "r.safetensors"
    out.parent.mkdir()
    script = ("import resource, signal, sys\n"
              "signal.signal(signal.SIGXFSZ, signal.SIG_IGN)\n"
              "resource.setrlimit(resource.RLIMIT_FSIZE, (4096, resource.getrlimit(resource.RLIMIT_FSIZE)[1]))\n"
              "from bilinear_kernels import cli\n"
              f"sys.exit(cli.main(['decompose', {str(tmp_path / 'lm')!r}, '--layer', '0', '--directions', 'vocab', "
              f"'--k', 'all', '--quiet', '--out', {str(out)!r}]))\n")
    env = {**os.environ, "PYTHONPATH": str(ROOT) + os.pathsep + os.environ.get("PYTHONPATH", "")}
    proc = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, cwd=ROOT, env=env,
                          timeout=300)
    assert proc.returncode == 2, proc.stderr
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith(f"bilinear-kernels decompose: error: could not write {out}")
    assert "File too large" in lines[0] and "Traceback" not in proc.stderr
    assert list(out.parent.iterdir()) == []


def test_device_meta_is_refused(tmp_path, capsys):
    write_plain(tmp_path / "layer.safetensors")
    line = one_line_error(capsys, tmp_path / "layer.safetensors", "--directions", "classes", "--device", "meta",
                          "--out", tmp_path / "r.safetensors")
    assert "got 'meta' (meta tensors hold no data" in line


def test_config_nested_100000_deep_is_one_line(tmp_path, capsys):
    write_bilinear_lm(tmp_path / "lm")
    (tmp_path / "lm" / "config.json").write_text("{\"a\":" * 100000 + "1" + "}" * 100000)
    line = one_line_error(capsys, tmp_path / "lm", "--layer", "0", "--directions", "vocab",
                          "--out", tmp_path / "r.safetensors")
    assert "nested too deeply" in line


def test_fifo_named_model_safetensors_does_not_block(tmp_path, capsys, no_hang):
    write_bilinear_lm(tmp_path / "lm")
    (tmp_path / "lm" / "model.safetensors").unlink()
    os.mkfifo(tmp_path / "lm" / "model.safetensors")
    line = one_line_error(capsys, tmp_path / "lm", "--layer", "0", "--directions", "vocab",
                          "--out", tmp_path / "r.safetensors")
    assert "is a FIFO (named pipe); expected a regular file" in line


# -- decisions the command used to make silently ---------------------------------------------------

def test_k_above_d_is_capped_and_said(tmp_path, capsys):
    write_plain(tmp_path / "layer.safetensors", h=3, d=9, o=4)
    code, _, err = decompose_main(capsys, tmp_path / "layer.safetensors", "--directions", "classes", "--k", "50",
                                  "--out", tmp_path / "r.safetensors")
    assert code == 0, err
    assert "note: k=50 is more than the 9 eigenpairs each direction has (d = 9): computing all 9" in err
    result = DecompositionResult.load(tmp_path / "r.safetensors")
    assert result.k == 9
    assert result.metadata["options"]["k"] == 50 and result.metadata["options"]["k_used"] == 9
    assert any("k=50" in n for n in result.metadata["notes"])


@pytest.mark.parametrize("name", ["x.pt", "x.npz", "res.safetensor"])
def test_out_with_another_suffix_is_refused_not_made_a_store(tmp_path, capsys, name):
    write_plain(tmp_path / "layer.safetensors")
    line = one_line_error(capsys, tmp_path / "layer.safetensors", "--directions", "classes",
                          "--out", tmp_path / name)
    assert f"ends in '{Path(name).suffix}'" in line and "end the name with '/'" in line
    assert not (tmp_path / name).exists()


def test_out_ending_in_a_slash_is_a_store(tmp_path, capsys):
    write_plain(tmp_path / "layer.safetensors", h=3, d=9, o=4)
    code, out, err = decompose_main(capsys, tmp_path / "layer.safetensors", "--directions", "0,2", "--k", "2",
                                    "--out", f"{tmp_path / 'run.v2'}/")
    assert code == 0, err
    assert "decomposed 2 direction(s) into" in out and (tmp_path / "run.v2").is_dir()
    assert torch.as_tensor(bk.open_results(tmp_path / "run.v2").load().indices).tolist() == [0, 2]


def test_folder_without_config_says_it_was_read_as_an_image_model(tmp_path, capsys):
    write_bilinear_image(tmp_path / "img")
    (tmp_path / "img" / "config.json").unlink()
    code, _, err = decompose_main(capsys, tmp_path / "img", "--layer", "1", "--directions", "classes", "--k", "2",
                                  "--out", tmp_path / "r.safetensors")
    assert code == 0, err
    assert "note: " in err and "has no config.json: read as a bilinear image model from its tensor names" in err


def test_gated_lm_is_refused_and_allowed_with_a_note(tmp_path, capsys):
    write_bilinear_lm(tmp_path / "lm", gate="silu")
    args = [tmp_path / "lm", "--layer", "0", "--directions", "3", "--k", "2", "--out", tmp_path / "r.safetensors"]
    line = one_line_error(capsys, *args)
    assert 'config.json gives "gate": "silu"' in line and "--allow-gated" in line
    code, _, err = decompose_main(capsys, *args, "--allow-gated")
    assert code == 0, err
    assert 'note: config.json gives "gate": "silu": decomposing only the bilinear part (W x) ⊙ (V x)' in err
    meta = DecompositionResult.load(tmp_path / "r.safetensors").metadata
    assert meta["allow_gated"] is True and any("decomposing only the bilinear part" in n for n in meta["notes"])


def test_fold_norms_names_what_it_folded(tmp_path, capsys):
    write_bilinear_lm(tmp_path / "lm")  # the 2406.03947 names: n2.norm.weight, n_f.norm.weight
    code, _, err = decompose_main(capsys, tmp_path / "lm", "--layer", "1", "--directions", "3", "--k", "2",
                                  "--fold-norms", "--out", tmp_path / "r.safetensors")
    assert code == 0, err
    assert "note: transformer.h.1.n2.norm.weight folded into W and V" in err
    assert "note: transformer.n_f.norm.weight folded into the unembedding rows" in err


def test_map_embedding_and_ignore_biases_from_the_command_line(tmp_path):
    write_bilinear_image(tmp_path / "img", n_layer=1, bias=True)
    out = tmp_path / "published.safetensors"
    proc = run_module("decompose", tmp_path / "img", "--layer", "0", "--directions", "classes", "--map-embedding",
                      "--ignore-biases", "--k", "3", "--out", out, "--quiet")
    assert proc.returncode == 0, proc.stderr
    assert "published mode" in proc.stderr and "biases ignored" in proc.stderr
    res = DecompositionResult.load(out)
    assert res.eigenvectors.shape == (5, 16, 3) and res.metadata["map_embedding"]
    both = run_module("decompose", tmp_path / "img", "--layer", "0", "--directions", "classes", "--map-embedding",
                      "--fold-embedding", "--out", tmp_path / "x.safetensors")
    assert both.returncode == 2 and len(both.stderr.strip().splitlines()) == 1 and "exclusive" in both.stderr
