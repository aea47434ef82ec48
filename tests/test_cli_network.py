"""`bilinear-kernels decompose CHECKPOINT --network`: a whole image model decomposed through depth,
checked against the forward pass from the definition; every misuse is a one-line error."""
import hashlib
import re

import pytest
import torch

import bilinear_kernels as bk
from bilinear_kernels import cli
from bilinear_kernels.io.checkpoints import load_network
from bilinear_kernels.sweep import pipeline
from tests.test_cli import run_module
from tests.tiny_checkpoints import write_bilinear_image, write_bilinear_lm


def image_forward(t, z, n_layer, residual, bias):
    """The published image model's forward from its tensors (float64)."""
    r = z @ t["embed.weight"].T
    for i in range(n_layer):
        w, v = t[f"blocks.{i}.weight"].chunk(2)
        a, b = t[f"blocks.{i}.bias"].chunk(2) if bias else (0, 0)
        f = (r @ w.T + a) * (r @ v.T + b)
        r = r + f if residual else f
    return r @ t["head.weight"].T


def decompose_main(capsys, *args):
    code = cli.main(["decompose", *map(str, args), "--quiet"])
    captured = capsys.readouterr()
    return code, captured.out, captured.err


def test_network_subprocess_rebuilds_the_models_outputs(tmp_path):
    t = write_bilinear_image(tmp_path / "img", n_layer=3, d_input=7, d_hidden=4, bias=True, residual=True)
    out = tmp_path / "net.safetensors"
    proc = run_module("decompose", tmp_path / "img", "--network", "--directions", "classes", "--k", "all",
                      "--out", out)
    assert proc.returncode == 0, proc.stderr
    assert "decomposed 5 direction(s) through 3 layer(s)" in proc.stdout and "(exact)" in proc.stdout
    assert "residual, with biases" in proc.stdout and str(out) in proc.stdout
    assert "note: read a bilinear image model: 3 block(s), residual" in proc.stderr
    res = bk.NetworkDecomposition.load(out)
    z = torch.randn(9, 7, dtype=torch.float64)
    expected = image_forward(t, z, 3, True, True)
    torch.testing.assert_close(res.outputs(z), expected, rtol=1e-9, atol=1e-9 * float(expected.abs().max()))
    meta = res.metadata
    files = sorted(f"{p.name}:{hashlib.sha256(p.read_bytes()).hexdigest()}"
                   for p in (tmp_path / "img" / "config.json", tmp_path / "img" / "model.safetensors"))
    assert meta["checkpoint_sha256"] == hashlib.sha256("\n".join(files).encode()).hexdigest()
    assert meta["n_layers"] == 3 and meta["residual"] and meta["options"]["k"] is None
    assert res.direction_ids == [0, 1, 2, 3, 4] and meta["package_version"] == bk.__version__


@pytest.mark.parametrize("residual", [False, True])
def test_rank_truncates_every_level_and_is_recorded(tmp_path, capsys, residual):
    write_bilinear_image(tmp_path / "img", n_layer=3, d_input=7, d_hidden=4, residual=residual)
    out = tmp_path / "r.safetensors"
    code, stdout, err = decompose_main(capsys, tmp_path / "img", "--network", "--directions", "0,3", "--rank", "2",
                                       "--k", "2", "--out", out)
    assert code == 0, err
    res = bk.NetworkDecomposition.load(out)
    assert res.ranks == [2, 2] and res.k == 2 and res.direction_ids == [0, 3]
    # the second level's count depends on the first's truncation (features of 2 kept features)
    assert re.search(r"features kept per level: 2 of 5, 2 of \d \(truncated\)", stdout), stdout
    assert res.metadata["options"]["rank"] == 2


def test_pipeline_matches_decompose_network_on_the_loaded_network(tmp_path):
    write_bilinear_image(tmp_path / "img", n_layer=2, d_input=7, d_hidden=4)
    notes = []
    res = pipeline.decompose_network_checkpoint(tmp_path / "img", directions="contrast:1", k=3, rank=0.9,
                                                on_note=notes.append)
    net = load_network(tmp_path / "img").network
    u = torch.eye(5, dtype=torch.float64)[1] - torch.eye(5, dtype=torch.float64)[[0, 2, 3, 4]].mean(0)
    direct = bk.decompose_network(net, u[None], k=3, rank=0.9)
    torch.testing.assert_close(res.eigenvalues, direct.eigenvalues, rtol=1e-12, atol=1e-12)
    assert res.direction_ids == [1] and res.ranks == direct.ranks
    assert any("2 block(s), sequential" in n for n in notes)


def test_k_above_the_largest_is_capped_with_a_note(tmp_path, capsys):
    write_bilinear_image(tmp_path / "img", n_layer=2, d_input=7, d_hidden=4)
    code, _, err = decompose_main(capsys, tmp_path / "img", "--network", "--directions", "0", "--k", "50",
                                  "--out", tmp_path / "r.safetensors")
    assert code == 0, err
    assert "k=50 is more than the at most 5 eigenpairs" in err
    assert bk.NetworkDecomposition.load(tmp_path / "r.safetensors").k == 5


def test_without_config_the_residual_flag_decides(tmp_path, capsys):
    t = write_bilinear_image(tmp_path / "img", n_layer=2, d_input=7, d_hidden=4)
    (tmp_path / "img" / "config.json").unlink()
    out = tmp_path / "r.safetensors"
    code, _, err = decompose_main(capsys, tmp_path / "img", "--network", "--directions", "classes", "--out", out)
    assert code == 2 and "pass residual=True or False (--residual / --no-residual)" in err
    code, _, err = decompose_main(capsys, tmp_path / "img", "--network", "--no-residual", "--directions", "classes",
                                  "--k", "all", "--out", out)
    assert code == 0, err
    z = torch.randn(4, 7, dtype=torch.float64)
    expected = image_forward(t, z, 2, False, False)
    got = bk.NetworkDecomposition.load(out).outputs(z)
    torch.testing.assert_close(got, expected, rtol=1e-9, atol=1e-9 * float(expected.abs().max()))


@pytest.mark.parametrize("extra, message", [
    (["--layer", "0"], r"--layer: --network decomposes the whole image model"),
    (["--fold-embedding", "--chunk", "2"], r"--fold-embedding, --chunk: --network"),
    (["--no-resume"], r"--no-resume: --network"),
    (["--directions", "9"], r"id 9 is out of range for the network's outputs with 5 rows"),
    (["--out", "store/"], r"written to one .safetensors file"),
    (["--lm"], r"load_network reads the published image models"),
])
def test_network_misuse_is_one_line(tmp_path, capsys, extra, message):
    write_bilinear_image(tmp_path / "img", n_layer=2)
    write_bilinear_lm(tmp_path / "lm")
    args = [tmp_path / "img", "--network", "--directions", "classes", "--out", tmp_path / "r.safetensors"]
    for i, a in enumerate(extra):
        if a == "--lm":
            args[0] = tmp_path / "lm"
        elif a in ("--directions", "--out"):
            args[args.index(a) + 1] = tmp_path / extra[i + 1] if a == "--out" else extra[i + 1]
        elif i == 0 or extra[i - 1] not in ("--directions", "--out"):
            args.append(a)
    code, stdout, err = decompose_main(capsys, *args)
    lines = err.strip().splitlines()
    assert code == 2 and stdout == "" and len(lines) == 1, err
    assert lines[0].startswith("bilinear-kernels decompose: error: ") and re.search(message, lines[0]), lines[0]
    assert not (tmp_path / "r.safetensors").exists()


def test_network_options_without_network_are_refused(tmp_path, capsys):
    write_bilinear_image(tmp_path / "img", n_layer=2)
    code, _, err = decompose_main(capsys, tmp_path / "img", "--layer", "0", "--rank", "2", "--directions", "classes",
                                  "--out", tmp_path / "r.safetensors")
    assert code == 2 and "--rank applies to --network" in err
    with pytest.raises(SystemExit):
        cli.main(["decompose", "x", "--network", "--rank", "0", "--directions", "classes", "--out", "r.safetensors"])
    assert "expected 'exact', a positive int or a share in (0, 1), got '0'" in capsys.readouterr().err


def test_the_documented_network_example_runs(tmp_path, monkeypatch):
    from pathlib import Path

    pytest.importorskip("matplotlib")
    text = (Path(__file__).resolve().parents[1] / "docs" / "guides" / "networks.md").read_text()
    section = text[text.index("## A whole image model from a checkpoint"):]
    code = re.search(r"```python\n(.*?)```", section, flags=re.S).group(1)
    write_bilinear_image(tmp_path / "mnist", n_layer=3, d_input=7, d_hidden=4, residual=True)
    monkeypatch.chdir(tmp_path)
    namespace = {"x_test": torch.randn(20, 7, dtype=torch.float64), "y_test": torch.randint(0, 5, (20,))}
    exec(compile(code, "docs/guides/networks.md", "exec"), namespace)
    assert namespace["res"].ranks == [5, 5] and namespace["net"].n_layers == 3
    assert namespace["curve"][-1]["relative_error"] < 1e-10
    assert (tmp_path / "truncation.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
