"""Checkpoint loaders: every layout round-trips to the layer the model computes, and every bad input
gets a CheckpointError that names the problem."""
import json
import pickle
import zipfile

import pytest
import torch
from safetensors.torch import save_file

import bilinear_kernels as bk
from bilinear_kernels.io.checkpoints import (CheckpointError, CheckpointNotFoundError, checkpoint_sha256,
                                             file_sha256, load_layer)
from tests.tiny_checkpoints import write_bilinear_image, write_bilinear_lm, write_llama, write_plain


def assert_same_decomposition(a, b, atol=1e-10):
    torch.testing.assert_close(a.eigenvalues, b.eigenvalues, atol=atol, rtol=0)
    overlap = torch.einsum("bdk,bdk->bk", a.eigenvectors, b.eigenvectors).abs()
    torch.testing.assert_close(overlap, torch.ones_like(overlap), atol=1e-8, rtol=0)


# -- layouts round-trip -----------------------------------------------------------------------

def test_plain_file_round_trips_to_the_direct_api(tmp_path):
    t = write_plain(tmp_path / "layer.safetensors")
    loaded = load_layer(tmp_path / "layer.safetensors")
    assert loaded.layout == "plain" and loaded.index is None and loaded.readout is None
    direct = bk.BilinearLayer(t["w"], t["v"], t["p"])
    for name in ("w", "v", "p"):
        torch.testing.assert_close(getattr(loaded.layer, name), t[name], rtol=0, atol=0)
    assert_same_decomposition(bk.decompose(loaded.layer, [0, 2], k=4), bk.decompose(direct, [0, 2], k=4))


def test_plain_file_with_biases_and_no_p(tmp_path):
    t = write_plain(tmp_path / "layer.safetensors", with_p=False, bias=True)
    layer = load_layer(tmp_path / "layer.safetensors").layer
    assert layer.p is None and layer.has_bias and layer.d_form == t["w"].shape[1] + 1
    torch.testing.assert_close(layer.w_bias, t["w_bias"], rtol=0, atol=0)
    torch.testing.assert_close(layer.v_bias, t["v_bias"], rtol=0, atol=0)


def test_bilinear_lm_layer_is_the_packed_mlp(tmp_path):
    t = write_bilinear_lm(tmp_path, bias=True)
    loaded = load_layer(tmp_path, 1)
    assert (loaded.layout, loaded.index, loaded.n_layers) == ("bilinear-lm", 1, 2)
    # the module the published models run: Linear(d, 2h) -> chunk(2) -> left * right -> p
    x = torch.randn(4, 8, dtype=torch.float64)
    left, right = torch.nn.functional.linear(x, t["transformer.h.1.mlp.w.weight"],
                                             t["transformer.h.1.mlp.w.bias"]).chunk(2, dim=-1)
    expected = (left * right) @ t["transformer.h.1.mlp.p.weight"].T
    torch.testing.assert_close(loaded.layer(x), expected)
    torch.testing.assert_close(loaded.readout, t["lm_head.weight"], rtol=0, atol=0)
    assert loaded.readout_name == "lm_head.weight"


def test_bilinear_lm_old_output_name_and_tied_unembedding(tmp_path):
    t = write_bilinear_lm(tmp_path, old_p_name=True, lm_head=False)
    loaded = load_layer(tmp_path, -1)
    assert loaded.index == 1 and loaded.n_layers == 2
    torch.testing.assert_close(loaded.layer.p, t["transformer.h.1.mlp.o.weight"], rtol=0, atol=0)
    torch.testing.assert_close(loaded.readout, t["transformer.wte.weight"], rtol=0, atol=0)
    assert any("tied" in n for n in loaded.notes)


def test_bilinear_lm_without_config_is_refused_unless_allow_gated(tmp_path):
    """Nothing but the config says whether the packed MLP is gated: as for Llama, refuse."""
    t = write_bilinear_lm(tmp_path, config=False)
    with pytest.raises(CheckpointError, match=r"no config\.json to say whether the MLP is gated.*allow_gated"):
        load_layer(tmp_path, 0)
    loaded = load_layer(tmp_path, 0, allow_gated=True)
    torch.testing.assert_close(loaded.layer.w, t["transformer.h.0.mlp.w.weight"][:6], rtol=0, atol=0)
    assert any("decomposing only the bilinear part (W x) ⊙ (V x) of transformer.h.0.mlp" in n for n in loaded.notes)


@pytest.mark.parametrize("gate, act", [("silu", "silu"), ("gelu", "gelu"), (True, "relu")])
def test_gated_bilinear_lm_is_refused_unless_allow_gated(tmp_path, gate, act):
    """config "gate": "silu" (the later code), or true (the 2406.03947 code, where it is a ReLU)."""
    t = write_bilinear_lm(tmp_path, gate=gate)
    with pytest.raises(CheckpointError) as err:
        load_layer(tmp_path, 1)
    message = str(err.value)
    assert f'config.json gives "gate": {json.dumps(gate)}' in message and f"{act}(W x) ⊙ (V x)" in message
    assert "not a quadratic form" in message
    assert "allow_gated=True (--allow-gated)" in message
    loaded = load_layer(tmp_path, 1, allow_gated=True)
    torch.testing.assert_close(loaded.layer.v, t["transformer.h.1.mlp.w.weight"][6:], rtol=0, atol=0)
    (note,) = [n for n in loaded.notes if "decomposing only" in n]
    assert f"the bilinear part (W x) ⊙ (V x) of transformer.h.1.mlp" in note and f"{act}(W x) ⊙ (V x)" in note


@pytest.mark.parametrize("config", [{"bilinear": False}, {"mlp": "mlp"}])
def test_lm_whose_mlp_is_not_bilinear_is_refused_even_with_allow_gated(tmp_path, config):
    write_bilinear_lm(tmp_path)
    cfg = json.loads((tmp_path / "config.json").read_text())
    (tmp_path / "config.json").write_text(json.dumps({**cfg, **config}))
    for allow in (False, True):
        with pytest.raises(CheckpointError, match="no bilinear part to decompose"):
            load_layer(tmp_path, 0, allow_gated=allow)


def test_early_snapshot_mlp_kinds(tmp_path):
    write_bilinear_lm(tmp_path)
    cfg = json.loads((tmp_path / "config.json").read_text())
    for key in ("gate", "bilinear"):
        cfg.pop(key)
    (tmp_path / "config.json").write_text(json.dumps({**cfg, "mlp": "glp"}))
    with pytest.raises(CheckpointError, match=r'"mlp": "glp".*gelu\(W x\)'):
        load_layer(tmp_path, 0)
    (tmp_path / "config.json").write_text(json.dumps({**cfg, "mlp": "blp"}))
    assert not load_layer(tmp_path, 0).notes


@pytest.mark.parametrize("norms, gain_name, final_name", [
    ("snapshot", "transformer.h.0.n2.norm.weight", "transformer.n_f.norm.weight"),
    ("plain", "transformer.h.0.n2.weight", "transformer.n_f.weight"),
])
def test_bilinear_lm_fold_norms_scales_inputs_and_unembedding(tmp_path, norms, gain_name, final_name):
    """The 2406.03947 checkpoints keep the gains as n2.norm.weight (with a zero .norm.bias) and
    n_f.norm.weight; older research code as n2.weight and n_f.weight."""
    t = write_bilinear_lm(tmp_path, norms=norms)
    plain, folded = load_layer(tmp_path, 0), load_layer(tmp_path, 0, fold_norms=True)
    gain, final = t[gain_name], t[final_name]
    torch.testing.assert_close(folded.layer.w, plain.layer.w * gain)
    torch.testing.assert_close(folded.layer.v, plain.layer.v * gain)
    torch.testing.assert_close(folded.readout, t["lm_head.weight"] * final)
    # the folded layer on x equals the raw layer on the norm's output g ⊙ x
    x = torch.randn(3, 8, dtype=torch.float64)
    torch.testing.assert_close(folded.layer(x), plain.layer(x * gain))
    assert folded.readout_name == f"lm_head.weight * {final_name}"
    assert f"{gain_name} folded into W and V" in folded.notes


def test_fold_norms_without_gains_is_the_identity_and_says_so(tmp_path):
    """The later models' RMSNorm has no parameters."""
    t = write_bilinear_lm(tmp_path, norms=None)
    plain, folded = load_layer(tmp_path, 0), load_layer(tmp_path, 0, fold_norms=True)
    torch.testing.assert_close(folded.layer.w, plain.layer.w, rtol=0, atol=0)
    torch.testing.assert_close(folded.readout, t["lm_head.weight"], rtol=0, atol=0)
    assert folded.readout_name == "lm_head.weight"
    identity = [n for n in folded.notes if "is the identity" in n]
    assert len(identity) == 2 and "transformer.h.0.n2 has no gain" in identity[0]
    assert "transformer.n_f has no gain" in identity[1] and "its RMSNorm has no parameters" in identity[1]
    write_bilinear_lm(tmp_path / "plain", norms=None, normalization=False)
    assert "the model has no normalization" in load_layer(tmp_path / "plain", 0, fold_norms=True).notes[0]


def test_fold_norms_refuses_a_norm_with_a_bias(tmp_path):
    write_bilinear_lm(tmp_path, norm_bias=torch.full((8,), 0.5, dtype=torch.float64))
    with pytest.raises(CheckpointError, match=r"transformer\.h\.0\.n2\.norm\.bias is not zero.*not a pure gain"):
        load_layer(tmp_path, 0, fold_norms=True)
    assert load_layer(tmp_path, 0).layer.d_in == 8  # without folding the bias does not matter


def test_bilinear_image_layer_readout_and_folded_embedding(tmp_path):
    t = write_bilinear_image(tmp_path, bias=True)
    loaded = load_layer(tmp_path, 0)
    assert loaded.layout == "bilinear-image" and loaded.layer.p is None
    torch.testing.assert_close(loaded.readout, t["head.weight"], rtol=0, atol=0)
    assert any("direct readout" in n for n in loaded.notes)  # block 0 of 2, not residual
    folded = load_layer(tmp_path, 0, fold_embedding=True)
    assert folded.layer.d_in == 16
    pixels = torch.randn(5, 16, dtype=torch.float64)
    torch.testing.assert_close(folded.layer(pixels), loaded.layer(pixels @ t["embed.weight"].T))
    last = load_layer(tmp_path, 1)
    assert not any("direct readout" in n for n in last.notes)


def test_fold_embedding_needs_layer_zero_of_an_image_model(tmp_path):
    write_bilinear_image(tmp_path / "img")
    with pytest.raises(CheckpointError, match="layer 0"):
        load_layer(tmp_path / "img", 1, fold_embedding=True)
    write_bilinear_lm(tmp_path / "lm")
    with pytest.raises(CheckpointError, match="image models"):
        load_layer(tmp_path / "lm", 0, fold_embedding=True)


def test_llama_linear_mlp_is_gate_up_down(tmp_path):
    t = write_llama(tmp_path, mlp_bias=True)
    loaded = load_layer(tmp_path, 1)
    pre = "model.layers.1.mlp"
    x = torch.randn(4, 8, dtype=torch.float64)
    gate = torch.nn.functional.linear(x, t[f"{pre}.gate_proj.weight"], t[f"{pre}.gate_proj.bias"])
    up = torch.nn.functional.linear(x, t[f"{pre}.up_proj.weight"], t[f"{pre}.up_proj.bias"])
    torch.testing.assert_close(loaded.layer(x), (gate * up) @ t[f"{pre}.down_proj.weight"].T)
    torch.testing.assert_close(loaded.readout, t["lm_head.weight"], rtol=0, atol=0)


def test_llama_tied_embeddings_and_fold_norms(tmp_path):
    t = write_llama(tmp_path, tie=True)
    loaded = load_layer(tmp_path, 0, fold_norms=True)
    torch.testing.assert_close(loaded.readout, t["model.embed_tokens.weight"] * t["model.norm.weight"])
    torch.testing.assert_close(loaded.layer.w,
                               t["model.layers.0.mlp.gate_proj.weight"] * t["model.layers.0.post_attention_layernorm.weight"])


@pytest.mark.parametrize("act", ["silu", "gelu_pytorch_tanh"])
def test_gated_llama_is_refused_with_the_reason(tmp_path, act):
    write_llama(tmp_path, act=act)
    with pytest.raises(CheckpointError) as err:
        load_layer(tmp_path, 0)
    message = str(err.value)
    assert act in message and "not a quadratic form" in message and "allow_gated" in message


def test_gated_llama_opt_in_decomposes_the_bilinear_part(tmp_path):
    t = write_llama(tmp_path, act="silu")
    loaded = load_layer(tmp_path, 0, allow_gated=True)
    torch.testing.assert_close(loaded.layer.w, t["model.layers.0.mlp.gate_proj.weight"], rtol=0, atol=0)
    assert any("not the function the model computes" in n for n in loaded.notes)


def test_llama_without_config_cannot_be_assumed_linear(tmp_path):
    write_llama(tmp_path, config=False)
    with pytest.raises(CheckpointError, match="no config.json"):
        load_layer(tmp_path, 0)


def test_sharded_llama_reads_only_the_shards_it_needs(tmp_path):
    t = write_llama(tmp_path, sharded=True, dtype=torch.bfloat16)
    loaded = load_layer(tmp_path, 1, dtype="float32")
    assert loaded.layer.dtype == torch.float32
    torch.testing.assert_close(loaded.layer.p, t["model.layers.1.mlp.down_proj.weight"].float(), rtol=0, atol=0)
    names = sorted(f.name for f in loaded.files)
    # the layer is in shard 2, the unembedding in shard 1: both are read; config and index too
    assert names == ["config.json", "model-00001-of-00002.safetensors", "model-00002-of-00002.safetensors",
                     "model.safetensors.index.json"]
    assert len(checkpoint_sha256(loaded.files)) == 64


def test_checkpoint_file_can_be_given_directly(tmp_path):
    write_bilinear_lm(tmp_path)
    loaded = load_layer(tmp_path / "model.safetensors", 0)
    assert loaded.layout == "bilinear-lm" and [f.name for f in loaded.files] == ["config.json", "model.safetensors"]


def test_single_file_hash_is_its_sha256(tmp_path):
    write_plain(tmp_path / "layer.safetensors")
    loaded = load_layer(tmp_path / "layer.safetensors")
    import hashlib

    expected = hashlib.sha256((tmp_path / "layer.safetensors").read_bytes()).hexdigest()
    assert checkpoint_sha256(loaded.files) == expected == file_sha256(tmp_path / "layer.safetensors")


# -- bad input --------------------------------------------------------------------------------

def test_missing_checkpoint(tmp_path):
    with pytest.raises(CheckpointNotFoundError, match="not found"):
        load_layer(tmp_path / "nope")
    assert issubclass(CheckpointNotFoundError, FileNotFoundError)
    (tmp_path / "empty").mkdir()
    with pytest.raises(CheckpointNotFoundError, match="no weights in .*expected model.safetensors"):
        load_layer(tmp_path / "empty")


def test_missing_tensor_is_named_with_its_expected_shape(tmp_path):
    t = write_bilinear_lm(tmp_path)
    del t["transformer.h.1.mlp.p.weight"]
    save_file(t, str(tmp_path / "model.safetensors"))
    with pytest.raises(CheckpointError, match=r"'transformer\.h\.1\.mlp\.p\.weight' is missing .*\(8, 6\)"):
        load_layer(tmp_path, 1)


def test_misshapen_tensor_is_named_with_its_expected_shape(tmp_path):
    t = write_bilinear_lm(tmp_path)
    t["transformer.h.0.mlp.p.weight"] = t["transformer.h.0.mlp.p.weight"].T.contiguous()
    save_file(t, str(tmp_path / "model.safetensors"))
    with pytest.raises(CheckpointError, match=r"'transformer\.h\.0\.mlp\.p\.weight'.*shape \(6, 8\); expected \(8, 6\)"):
        load_layer(tmp_path, 0)


def test_config_and_weights_that_disagree(tmp_path):
    write_bilinear_image(tmp_path, d_hidden=6)
    config = json.loads((tmp_path / "config.json").read_text())
    config["d_hidden"] = 7
    (tmp_path / "config.json").write_text(json.dumps(config))
    with pytest.raises(CheckpointError, match=r"'blocks\.0\.weight'.*expected \(14, 7\)"):
        load_layer(tmp_path, 0)


def test_plain_file_with_mismatched_v(tmp_path):
    save_file({"w": torch.randn(4, 5), "v": torch.randn(3, 5)}, str(tmp_path / "bad.safetensors"))
    with pytest.raises(CheckpointError, match=r"'v'.*\(3, 5\); expected \(4, 5\)"):
        load_layer(tmp_path / "bad.safetensors")


def test_integer_weights_are_refused(tmp_path):
    save_file({"w": torch.ones(4, 5, dtype=torch.int32), "v": torch.ones(4, 5, dtype=torch.int32)},
              str(tmp_path / "int.safetensors"))
    with pytest.raises(CheckpointError, match="dtype torch.int32"):
        load_layer(tmp_path / "int.safetensors")


# -- torch.save files: torch.load(weights_only=True) only ---------------------------------------

@pytest.mark.parametrize("name, legacy", [("pytorch_model.bin", False), ("model.pt", True), ("model.ckpt", False)])
def test_torch_state_dicts_are_read_with_weights_only(tmp_path, name, legacy):
    t = write_plain(tmp_path / "layer.safetensors", bias=True)
    torch.save(t, tmp_path / name, _use_new_zipfile_serialization=not legacy)
    loaded = load_layer(tmp_path / name)
    for key in ("w", "v", "p", "w_bias", "v_bias"):
        torch.testing.assert_close(getattr(loaded.layer, key), t[key], rtol=0, atol=0)
    assert f"{name} read with torch.load(weights_only=True)" in loaded.notes
    assert [f.name for f in loaded.files] == [name]


def test_torch_file_is_read_once(tmp_path, monkeypatch):
    t = write_plain(tmp_path / "layer.safetensors")
    torch.save(t, tmp_path / "layer.pt")
    calls = []
    real = torch.load
    monkeypatch.setattr(torch, "load", lambda *a, **kw: calls.append(kw) or real(*a, **kw))
    load_layer(tmp_path / "layer.pt")
    assert len(calls) == 1 and calls[0]["weights_only"] is True


def test_torch_checkpoint_folder_and_state_dict_under_a_key(tmp_path):
    t = write_bilinear_lm(tmp_path / "lm")
    (tmp_path / "lm" / "model.safetensors").unlink()
    torch.save({"state_dict": t, "epoch": 3}, tmp_path / "lm" / "pytorch_model.bin")
    loaded = load_layer(tmp_path / "lm", 1)
    torch.testing.assert_close(loaded.layer.p, t["transformer.h.1.mlp.p.weight"], rtol=0, atol=0)
    assert any("under its 'state_dict' entry" in n for n in loaded.notes)
    assert sorted(f.name for f in loaded.files) == ["config.json", "pytorch_model.bin"]


def test_sharded_torch_checkpoint_with_an_index(tmp_path):
    t = write_llama(tmp_path, sharded=True)
    index = json.loads((tmp_path / "model.safetensors.index.json").read_text())
    for shard in sorted(set(index["weight_map"].values())):
        from safetensors.torch import load_file

        torch.save(load_file(str(tmp_path / shard)), tmp_path / shard.replace(".safetensors", ".bin"))
        (tmp_path / shard).unlink()
    (tmp_path / "model.safetensors.index.json").unlink()
    index["weight_map"] = {k: v.replace(".safetensors", ".bin") for k, v in index["weight_map"].items()}
    (tmp_path / "pytorch_model.bin.index.json").write_text(json.dumps(index))
    loaded = load_layer(tmp_path, 1)
    torch.testing.assert_close(loaded.layer.w, t["model.layers.1.mlp.gate_proj.weight"], rtol=0, atol=0)
    assert "pytorch_model.bin.index.json" in {f.name for f in loaded.files}


def test_pickle_with_code_is_refused_and_never_runs(tmp_path):
    marker = tmp_path / "ran"

    class Payload:
        def __reduce__(self):
            return (open, (str(marker), "w"))

    torch.save({"w": torch.ones(2, 3), "v": torch.ones(2, 3), "x": Payload()}, tmp_path / "model.pt")
    with pytest.raises(CheckpointError) as err:
        load_layer(tmp_path / "model.pt")
    message = str(err.value)
    assert "torch.load(weights_only=True) refused it (Unsupported global: GLOBAL io.open" in message
    assert "\n" not in message and not marker.exists()


@pytest.mark.parametrize("content, message", [
    (pickle.dumps({"w": [1.0]}), "refused it"),          # not torch.save's format
    (b"PK\x03\x04 not really a zip", "could not be read by torch.load"),
])
def test_unreadable_torch_files(tmp_path, content, message):
    (tmp_path / "model.bin").write_bytes(content)
    with pytest.raises(CheckpointError, match=message):
        load_layer(tmp_path / "model.bin")


def test_torch_file_that_is_not_a_state_dict(tmp_path):
    torch.save([torch.ones(2)], tmp_path / "a.pt")
    with pytest.raises(CheckpointError, match="holds a list, not a state dict"):
        load_layer(tmp_path / "a.pt")
    torch.save({"epoch": 3, "lr": 0.1}, tmp_path / "b.pt")
    with pytest.raises(CheckpointError, match="not a state dict of named tensors .*'epoch'"):
        load_layer(tmp_path / "b.pt")


def test_pickle_named_safetensors_is_refused_by_content(tmp_path):
    path = tmp_path / "model.safetensors"
    path.write_bytes(pickle.dumps({"w": [1.0]}, protocol=4))
    with pytest.raises(CheckpointError, match="named .safetensors but holds pickle data.*rename it to .pt"):
        load_layer(path)
    with zipfile.ZipFile(tmp_path / "zipped.safetensors", "w") as z:  # torch.save's format
        z.writestr("archive/data.pkl", b"x")
    with pytest.raises(CheckpointError, match="holds a zip archive"):
        load_layer(tmp_path / "zipped.safetensors")


def test_safetensors_whose_header_length_starts_like_a_pickle_is_read(tmp_path):
    # header length 0x0280 is stored as b"\x80\x02...", the opening bytes of a protocol-2 pickle
    header = json.dumps({"w": {"dtype": "F32", "shape": [2, 2], "data_offsets": [0, 16]},
                         "v": {"dtype": "F32", "shape": [2, 2], "data_offsets": [16, 32]}}).encode()
    header += b" " * (0x280 - len(header))
    data = torch.arange(8, dtype=torch.float32).numpy().tobytes()
    path = tmp_path / "layer.safetensors"
    path.write_bytes((0x280).to_bytes(8, "little") + header + data)
    assert path.read_bytes()[:2] == b"\x80\x02"
    layer = load_layer(path).layer
    torch.testing.assert_close(layer.v, torch.tensor([[4.0, 5.0], [6.0, 7.0]]))


@pytest.mark.parametrize("content", [b"", b"garbage", b"\x10\x00\x00\x00\x00\x00\x00\x00{\"w\": oops}    ",
                                     b"\xff" * 64])
def test_corrupt_safetensors(tmp_path, content):
    path = tmp_path / "bad.safetensors"
    path.write_bytes(content)
    with pytest.raises(CheckpointError, match="not a valid safetensors file"):
        load_layer(path)


def test_truncated_safetensors(tmp_path):
    write_plain(tmp_path / "full.safetensors", h=40, d=50)
    data = (tmp_path / "full.safetensors").read_bytes()
    (tmp_path / "cut.safetensors").write_bytes(data[: len(data) // 2])
    with pytest.raises(CheckpointError, match="cut.safetensors"):
        load_layer(tmp_path / "cut.safetensors")


def test_layer_index_out_of_range(tmp_path):
    write_bilinear_lm(tmp_path)
    with pytest.raises(CheckpointError, match=r"layer 2 is out of range.*2 layer\(s\) \(valid: 0\.\.1\)"):
        load_layer(tmp_path, 2)
    with pytest.raises(CheckpointError, match="layer -3 is out of range"):
        load_layer(tmp_path, -3)
    with pytest.raises(CheckpointError, match="has 2 layers; choose one"):
        load_layer(tmp_path)
    write_plain(tmp_path / "p.safetensors")
    with pytest.raises(CheckpointError, match="single layer"):
        load_layer(tmp_path / "p.safetensors", 1)


def test_unknown_layout_lists_what_it_found(tmp_path):
    save_file({"encoder.weight": torch.randn(3, 3)}, str(tmp_path / "x.safetensors"))
    with pytest.raises(CheckpointError, match=r"no known bilinear layout \(tensors: encoder\.weight\)"):
        load_layer(tmp_path / "x.safetensors")


def test_broken_config_and_index(tmp_path):
    write_bilinear_lm(tmp_path / "a")
    (tmp_path / "a" / "config.json").write_text("{not json")
    with pytest.raises(CheckpointError, match="not valid JSON"):
        load_layer(tmp_path / "a", 0)
    write_llama(tmp_path / "b", sharded=True)
    (tmp_path / "b" / "model-00002-of-00002.safetensors").unlink()
    with pytest.raises(CheckpointNotFoundError, match="model-00002-of-00002.safetensors"):
        load_layer(tmp_path / "b", 1)


# -- files that are not what they claim ---------------------------------------------------------

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


@pytest.mark.parametrize("which", ["model.safetensors", "config.json"])
def test_fifo_is_refused_without_blocking(tmp_path, which, no_hang):
    """Opening a FIFO for reading blocks until a writer comes; the file type is checked first."""
    import os

    write_bilinear_lm(tmp_path)
    (tmp_path / which).unlink()
    os.mkfifo(tmp_path / which)
    with pytest.raises(CheckpointError, match=rf"{which} is a FIFO \(named pipe\); expected a regular file"):
        load_layer(tmp_path, 0)
    with pytest.raises(CheckpointError, match="is a FIFO"):
        load_layer(tmp_path / which, 0)


def test_device_file_is_refused(tmp_path):
    with pytest.raises(CheckpointError, match="/dev/null is a device"):
        load_layer("/dev/null")


def test_config_nested_too_deeply(tmp_path):
    write_bilinear_lm(tmp_path)
    (tmp_path / "config.json").write_text("[" * 100000 + "]" * 100000)
    with pytest.raises(CheckpointError, match="config.json is not valid JSON for a config: it is nested too deeply"):
        load_layer(tmp_path, 0)


@pytest.mark.parametrize("weight_map, message", [
    (5, "needs a \"weight_map\" object"),
    ({"w": 5}, "weight_map gives 5 for tensor 'w'"),
    ({"w": "../x.safetensors"}, "gives '../x.safetensors'"),
])
def test_index_whose_weight_map_is_not_names_of_files(tmp_path, weight_map, message):
    write_llama(tmp_path, sharded=True)
    (tmp_path / "model.safetensors.index.json").write_text(json.dumps({"weight_map": weight_map}))
    with pytest.raises(CheckpointError, match=message):
        load_layer(tmp_path, 0)


def test_index_listing_a_tensor_its_shard_lacks(tmp_path):
    write_llama(tmp_path, sharded=True)
    index = json.loads((tmp_path / "model.safetensors.index.json").read_text())
    index["weight_map"]["model.layers.1.mlp.up_proj.weight"] = "model-00001-of-00002.safetensors"
    (tmp_path / "model.safetensors.index.json").write_text(json.dumps(index))
    with pytest.raises(CheckpointError, match="could not read tensor 'model.layers.1.mlp.up_proj.weight' from .*00001"):
        load_layer(tmp_path, 1)


def test_header_larger_than_the_library_reads_gets_an_honest_message(tmp_path):
    """A well-formed header of 101 MiB is past the 100 MB the safetensors library reads; the file is
    sparse (length, then '{', then the declared size) so the test writes almost nothing."""
    n = 101 * 2**20
    path = tmp_path / "big.safetensors"
    with open(path, "wb") as f:
        f.write(n.to_bytes(8, "little") + b'{"w":')
        f.truncate(8 + n + 16)
    with pytest.raises(CheckpointError) as err:
        load_layer(path)
    message = str(err.value)
    assert f"header of {n} bytes" in message and "at most 100000000 bytes" in message
    assert "corrupt" not in message and "truncated" not in message


def test_folder_of_models_in_subfolders(tmp_path):
    """<repo>/<model-name>/config.json, as models are laid out on the hub."""
    t = write_bilinear_image(tmp_path / "repo" / "mnist-a")
    loaded = load_layer(tmp_path / "repo", 0)
    torch.testing.assert_close(loaded.readout, t["head.weight"], rtol=0, atol=0)
    assert any("holds one model, in its subfolder mnist-a" in n for n in loaded.notes)
    write_bilinear_image(tmp_path / "repo" / "mnist-b")
    (tmp_path / "repo" / "notes").mkdir()
    with pytest.raises(CheckpointError, match=r"holds 2 models in subfolders; pass the one .*mnist-a, .*mnist-b$"):
        load_layer(tmp_path / "repo", 0)
    assert load_layer(tmp_path / "repo" / "mnist-b", 0).layout == "bilinear-image"


def test_image_model_without_config_says_how_it_was_read(tmp_path):
    write_bilinear_image(tmp_path)
    (tmp_path / "config.json").unlink()
    loaded = load_layer(tmp_path, 0)
    assert loaded.layout == "bilinear-image"
    assert any("has no config.json: read as a bilinear image model from its tensor names" in n for n in loaded.notes)


def test_tensors_of_two_layouts_are_ambiguous(tmp_path):
    t = write_plain(tmp_path / "x.safetensors")
    t["blocks.0.weight"] = torch.randn(10, 5, dtype=torch.float64)
    t["transformer.h.0.mlp.w.weight"] = torch.randn(10, 5, dtype=torch.float64)
    save_file(t, str(tmp_path / "x.safetensors"))
    with pytest.raises(CheckpointError, match=r"several layouts \(bilinear-lm, bilinear-image\)"):
        load_layer(tmp_path / "x.safetensors")


def test_folder_with_several_weight_files_of_other_names_is_ambiguous(tmp_path):
    t = write_plain(tmp_path / "layer.safetensors")
    assert load_layer(tmp_path).layout == "plain"  # one file: that one
    torch.save(t, tmp_path / "other.pt")
    with pytest.raises(CheckpointError, match=r"several weight files \(layer\.safetensors, other\.pt\).*pass the file"):
        load_layer(tmp_path)
    torch.save(t, tmp_path / "pytorch_model.bin")  # a standard name decides
    assert "pytorch_model.bin read with torch.load(weights_only=True)" in load_layer(tmp_path).notes
