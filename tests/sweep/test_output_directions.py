"""Output-direction helpers and the --directions grammar."""
import pytest
import torch
from safetensors.torch import save_file

import bilinear_kernels as bk
from bilinear_kernels.io.checkpoints import CheckpointError
from bilinear_kernels.sweep.output_directions import (class_indices, contrastive_directions, matrix_rows,
                                                      readout_rows, resolve_directions)


@pytest.fixture
def readout():
    return torch.randn(6, 4, dtype=torch.float64, generator=torch.Generator().manual_seed(0))


def test_class_indices():
    assert class_indices(3).tolist() == [0, 1, 2]
    for bad in (0, -1, 2.5, True):
        with pytest.raises(ValueError, match="n_classes"):
            class_indices(bad)


def test_readout_rows_and_range_check(readout):
    torch.testing.assert_close(readout_rows(readout, [4, 1]), readout[[4, 1]], rtol=0, atol=0)
    with pytest.raises(ValueError, match="id 6 is out of range .* 6 rows"):
        readout_rows(readout, [1, 6])


def test_contrastive_direction_is_row_minus_mean_of_the_others(readout):
    u = contrastive_directions(readout, 2)
    others = readout[[0, 1, 3, 4, 5]].mean(0)
    torch.testing.assert_close(u, (readout[2] - others)[None])
    u = contrastive_directions(readout, 2, [0, 5])
    torch.testing.assert_close(u, (readout[2] - (readout[0] + readout[5]) / 2)[None])
    with pytest.raises(ValueError, match="also among the others"):
        contrastive_directions(readout, 2, [2, 3])


def test_contrastive_logit_difference_is_what_the_direction_explains(readout):
    # uᵀ f(x) with u = r_t − mean(r_others) is logit_t − mean(logit_others) of a model read by `readout`
    gen = torch.Generator().manual_seed(1)
    layer = bk.BilinearLayer(torch.randn(3, 5, generator=gen, dtype=torch.float64),
                             torch.randn(3, 5, generator=gen, dtype=torch.float64),
                             torch.randn(4, 3, generator=gen, dtype=torch.float64))
    x = torch.randn(7, 5, generator=gen, dtype=torch.float64)
    logits = layer(x) @ readout.T
    res = bk.decompose(layer, contrastive_directions(readout, 1, [3, 4]))
    torch.testing.assert_close(res.activations(x).sum(-1)[:, 0], logits[:, 1] - logits[:, [3, 4]].mean(1))


def test_spec_classes_vocab_and_ids(readout):
    for spec in ("classes", "vocab", "all"):
        r = resolve_directions(spec, readout, 4, "head.weight")
        torch.testing.assert_close(r.directions, readout, rtol=0, atol=0)
        assert r.ids == list(range(6)) and "head.weight" in r.description
    r = resolve_directions(" 5, 0 ,3 ", readout, 4)
    torch.testing.assert_close(r.directions, readout[[5, 0, 3]], rtol=0, atol=0)
    # no readout: output indices, which decompose takes as one-hot directions
    r = resolve_directions("classes", None, 3)
    assert r.directions.dtype == torch.int64 and r.directions.tolist() == [0, 1, 2]
    assert resolve_directions("2", None, 3).directions.tolist() == [2]
    with pytest.raises(ValueError, match="id 3 is out of range"):
        resolve_directions("0,3", None, 3)


def test_spec_contrast(readout):
    r = resolve_directions("contrast:1:0,2", readout, 4)
    torch.testing.assert_close(r.directions, contrastive_directions(readout, 1, [0, 2]))
    r = resolve_directions("contrast:2", None, 3)  # one-hot outputs: e_2 − (e_0 + e_1)/2
    torch.testing.assert_close(r.directions, torch.tensor([[-0.5, -0.5, 1.0]]))
    for bad in ("contrast:", "contrast:1,2", "contrast:x", "contrast:1:a"):
        with pytest.raises(ValueError, match="contrast:T"):
            resolve_directions(bad, readout, 4)


def test_spec_matrix_rows_from_a_file(tmp_path):
    enc = torch.randn(7, 4, dtype=torch.float64)
    save_file({"W_enc": enc, "W_enc_t": enc.T.contiguous(), "b": torch.zeros(7, dtype=torch.float64)},
              str(tmp_path / "sae.safetensors"))
    path = tmp_path / "sae.safetensors"
    r = resolve_directions(f"{path}:W_enc", None, 4)
    torch.testing.assert_close(r.directions, enc, rtol=0, atol=0)
    assert r.ids == list(range(7))  # the SAE's own feature numbers
    r = resolve_directions(f"{path}:W_enc_t:T:6,1", None, 4)
    torch.testing.assert_close(r.directions, enc[[6, 1]], rtol=0, atol=0)
    assert r.ids == [6, 1]
    torch.testing.assert_close(matrix_rows(path, "W_enc", rows=[2]), enc[[2]], rtol=0, atol=0)
    with pytest.raises(CheckpointError, match=r"rows of length 7 .*d_out = 4.*':T'"):
        resolve_directions(f"{path}:W_enc_t", None, 4)
    with pytest.raises(CheckpointError, match=r"'nope' is missing .*W_enc"):
        resolve_directions(f"{path}:nope", None, 4)
    with pytest.raises(CheckpointError, match="2-D"):
        resolve_directions(f"{path}:b", None, 4)
    with pytest.raises(ValueError, match="out of range"):
        resolve_directions(f"{path}:W_enc:9", None, 4)
    with pytest.raises(CheckpointError, match="not found"):
        resolve_directions(f"{tmp_path}/missing.safetensors:W", None, 4)


def test_unrecognised_specs(readout):
    for bad in ("", "  ", "tokens", "1;2", "file.npy:W"):
        with pytest.raises(ValueError):
            resolve_directions(bad, readout, 4)
    with pytest.raises(ValueError, match="rows of length 4; .*d_out = 5"):
        resolve_directions("classes", readout, 5)
