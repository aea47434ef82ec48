"""load_network: a published image checkpoint of any depth, in both published layouts, is read as the
BilinearNetwork the model computes (checked against the module mirror's forward and a forward from
the definition), and everything else is refused with an error naming the problem."""
import json

import pytest
import torch
from safetensors.torch import save_file

import bilinear_kernels as bk
from bilinear_kernels.io.checkpoints import CheckpointError, load_network
from tests.published_modules import ImageModel
from tests.tiny_checkpoints import write_bilinear_image, write_bilinear_lm, write_llama, write_plain

# the config fields of the two published codes (PUBLISHED_LAYOUTS.md)
SAVE_PRETRAINED = {"architectures": ["Model"], "dtype": "float32", "transformers_version": "4.44.0",
                   "lr": 0.001, "wd": 0.5, "epochs": 100, "batch_size": 2048, "seed": 42}
INTERP = {"lr": 0.001, "wd": 0.5, "epochs": 100, "batch_size": 2048, "seed": 42}


def save_image_model(folder, model, *, layout):
    folder.mkdir(parents=True, exist_ok=True)
    save_file({k: v.contiguous() for k, v in model.state_dict().items()}, str(folder / "model.safetensors"))
    extra = SAVE_PRETRAINED if layout == "save_pretrained" else INTERP
    (folder / "config.json").write_text(json.dumps({
        **extra, "d_hidden": model.embed.out_features, "n_layer": len(model.blocks),
        "d_input": model.embed.in_features, "d_output": model.head.out_features, "bias": False,
        "residual": model.residual}))


@pytest.mark.parametrize("layout", ["save_pretrained", "interp"])
@pytest.mark.parametrize("n_layer, residual", [(1, False), (2, True), (3, False), (3, True)])
def test_published_image_checkpoint_is_the_models_function(tmp_path, layout, n_layer, residual):
    torch.manual_seed(n_layer)
    model = ImageModel(d_input=8, d_hidden=5, n_layer=n_layer, residual=residual).double()
    save_image_model(tmp_path / "m", model, layout=layout)
    loaded = load_network(tmp_path / "m")
    net = loaded.network
    assert isinstance(net, bk.BilinearNetwork)
    assert (net.n_layers, net.residual, net.d_in, net.d_stream, net.d_out) == (n_layer, residual, 8, 5, 3)
    assert not net.has_bias and net.head_bias is None
    z = torch.randn(6, 8, dtype=torch.float64)
    with torch.no_grad():
        expected = model(z)
    torch.testing.assert_close(net(z), expected, rtol=1e-12, atol=1e-12 * float(expected.abs().max()))
    assert any(f"{n_layer} block(s), {'residual' if residual else 'sequential'}" in n and "no biases" in n
               for n in loaded.notes)
    assert loaded.describe()["n_layers"] == n_layer and (tmp_path / "m" / "model.safetensors") in loaded.files


def test_biases_are_read_and_named(tmp_path):
    t = write_bilinear_image(tmp_path, n_layer=2, bias=True, residual=True)
    loaded = load_network(tmp_path)
    z = torch.randn(4, 16, dtype=torch.float64)
    r = z @ t["embed.weight"].T
    for i in range(2):
        w, v = t[f"blocks.{i}.weight"].chunk(2)
        a, b = t[f"blocks.{i}.bias"].chunk(2)
        r = r + (r @ w.T + a) * (r @ v.T + b)
    expected = r @ t["head.weight"].T
    torch.testing.assert_close(loaded.network(z), expected, rtol=1e-12, atol=1e-12 * float(expected.abs().max()))
    assert any("biases blocks.0.bias, blocks.1.bias" in n for n in loaded.notes)


def test_head_and_embedding_biases_are_kept(tmp_path):
    t = write_bilinear_image(tmp_path, n_layer=1)
    t["head.bias"] = torch.randn(5, dtype=torch.float64)
    t["embed.bias"] = torch.randn(6, dtype=torch.float64)
    save_file(t, str(tmp_path / "model.safetensors"))
    net = load_network(tmp_path).network
    z = torch.randn(3, 16, dtype=torch.float64)
    x = z @ t["embed.weight"].T + t["embed.bias"]
    w, v = t["blocks.0.weight"].chunk(2)
    expected = ((x @ w.T) * (x @ v.T)) @ t["head.weight"].T + t["head.bias"]
    torch.testing.assert_close(net(z), expected, rtol=1e-12, atol=1e-12 * float(expected.abs().max()))


def test_without_config_residual_must_be_given(tmp_path):
    write_bilinear_image(tmp_path, n_layer=2)
    (tmp_path / "config.json").unlink()
    with pytest.raises(CheckpointError, match=r"no config.json \"residual\" field.*pass residual=True or False"):
        load_network(tmp_path)
    loaded = load_network(tmp_path, residual=True)
    assert loaded.network.residual and any("read as residual, as asked" in n for n in loaded.notes)


def test_residual_contradicting_the_config_is_refused(tmp_path):
    write_bilinear_image(tmp_path, residual=False)
    with pytest.raises(CheckpointError, match=r"residual=True contradicts .*residual False"):
        load_network(tmp_path, residual=True)
    assert not load_network(tmp_path, residual=False).network.residual


@pytest.mark.parametrize("writer", [write_bilinear_lm, write_llama])
def test_language_models_are_refused(tmp_path, writer):
    writer(tmp_path)
    with pytest.raises(CheckpointError, match=r"load_network reads the published image models.*decompose its layers one at a time"):
        load_network(tmp_path)


def test_plain_layer_file_is_refused(tmp_path):
    write_plain(tmp_path / "layer.safetensors")
    with pytest.raises(CheckpointError, match=r"is a plain checkpoint"):
        load_network(tmp_path / "layer.safetensors")


def test_unknown_tensors_are_refused(tmp_path):
    t = write_bilinear_image(tmp_path)
    t["blocks.0.norm.weight"] = torch.ones(6, dtype=torch.float64)
    save_file(t, str(tmp_path / "model.safetensors"))
    with pytest.raises(CheckpointError, match=r"tensors the published image model does not have \(blocks\.0\.norm\.weight\)"):
        load_network(tmp_path)


def test_missing_block_or_bias_is_refused(tmp_path):
    t = write_bilinear_image(tmp_path, n_layer=3, bias=True)
    del t["blocks.1.weight"], t["blocks.1.bias"]
    save_file(t, str(tmp_path / "model.safetensors"))
    with pytest.raises(CheckpointError, match=r"n_layer 3 but the file holds blocks \[0, 2\]"):
        load_network(tmp_path)
    t = write_bilinear_image(tmp_path, n_layer=2, bias=True)
    del t["blocks.1.bias"]
    save_file(t, str(tmp_path / "model.safetensors"))
    with pytest.raises(CheckpointError, match=r"\"bias\": true but blocks.1.bias is missing"):
        load_network(tmp_path)


def test_shapes_are_checked(tmp_path):
    t = write_bilinear_image(tmp_path, n_layer=2)
    t["head.weight"] = torch.randn(5, 7, dtype=torch.float64)
    save_file(t, str(tmp_path / "model.safetensors"))
    with pytest.raises(CheckpointError, match=r"head.weight.*has shape \(5, 7\); expected \(5, 6\)"):
        load_network(tmp_path)


def test_dtype_and_device(tmp_path):
    write_bilinear_image(tmp_path)
    net = load_network(tmp_path, dtype="float32", device="cpu").network
    assert net.dtype == torch.float32
    with pytest.raises(TypeError, match="residual must be a bool"):
        load_network(tmp_path, residual="yes")
