"""decompose_network against float64 oracles that form each level's quadratic forms explicitly
(tests/network_oracles.py): exact reconstruction, basis-independent numbers (level singular values,
top eigenvalues, activations, the features' sample Gram), truncation, the tree, files, bad input."""
import numpy as np
import pytest
import torch

import bilinear_kernels as bk
from network_oracles import (forward, levels, make_network, oracle_features, random_network_weights,
                             top_activations)
from published_modules import ImageModel

SHAPES = {"plain": {}, "all": dict(d_in=5, o=3, hidden=6), "p": dict(hidden=3), "embed": dict(d_in=6),
          "head": dict(o=2)}


def _inputs(net, n=12, seed=0):
    return np.random.default_rng(seed).standard_normal((n, net.d_in))


def _directions(net):
    return np.eye(net.d_out)


def _match_by_eigenvalue(ours, oracle):
    """Index into `oracle` (1-D) of the nearest value to each of `ours`."""
    return np.abs(ours[:, None] - oracle[None, :]).argmin(axis=1)


def _check_against_oracle(weights, result, z, rtol=1e-10):
    lv, top = levels(weights)
    scale = np.abs(forward(weights, z)).max()
    np.testing.assert_allclose(result.outputs(torch.from_numpy(z)).numpy(), forward(weights, z), rtol=0, atol=rtol * scale)
    assert len(result.singular_values) == len(lv)
    for ours, (s, *_) in zip(result.singular_values, lv):
        np.testing.assert_allclose(ours.numpy(), s, rtol=0, atol=rtol * s[0])
    values, acts = top_activations(weights, lv, top, z, _directions_of(weights, result))
    for row in range(len(result)):
        ours = result.eigenvalues[row].numpy()
        idx = _match_by_eigenvalue(ours, values[row])
        np.testing.assert_allclose(ours, values[row][idx], rtol=0, atol=rtol * np.abs(values[row]).max())
        np.testing.assert_allclose(result.activations(torch.from_numpy(z))[:, row].numpy(), acts[:, row][:, idx],
                                   rtol=0, atol=rtol * scale)
    # features are orthonormal up to a rotation: their sample Gram matrices are the oracle's
    for g, g_oracle in zip(result.features(torch.from_numpy(z)), oracle_features(weights, lv, z)):
        gram, gram_oracle = g.numpy() @ g.numpy().T, g_oracle @ g_oracle.T
        np.testing.assert_allclose(gram, gram_oracle, rtol=0, atol=rtol * np.abs(gram_oracle).max())


def _directions_of(weights, result):
    o = len(weights["head"]) if weights["head"] is not None else len(weights["layers"][0]["w"][0])
    return np.eye(o)[result.direction_ids]


@pytest.mark.parametrize("L", [1, 2, 3, 4])
@pytest.mark.parametrize("residual", [False, True])
@pytest.mark.parametrize("bias", [False, True])
@pytest.mark.parametrize("shape", ["plain", "all"])
def test_exact_reconstruction_and_invariants_match_the_oracle(L, residual, bias, shape):
    weights = random_network_weights(4, L, bias=bias, residual=residual, seed=10 * L + bias, **SHAPES[shape])
    net = make_network(weights)
    result = bk.decompose_network(net, list(range(net.d_out)))
    assert result.eigenvectors.shape[1] == (result.ranks[-1] if L > 1 else net.d_in + 1)
    _check_against_oracle(weights, result, _inputs(net))


@pytest.mark.parametrize("shape", ["p", "embed", "head"])
@pytest.mark.parametrize("residual", [False, True])
def test_partial_shapes_reconstruct_exactly(shape, residual):
    weights = random_network_weights(4, 2, bias=True, residual=residual, seed=3, **SHAPES[shape])
    net = make_network(weights)
    _check_against_oracle(weights, bk.decompose_network(net, list(range(net.d_out))), _inputs(net))


def test_float_directions_and_a_subset_of_indices():
    weights = random_network_weights(4, 3, bias=True, residual=True, seed=5, **SHAPES["all"])
    net = make_network(weights)
    z = _inputs(net)
    u = np.random.default_rng(2).standard_normal((2, 3))
    result = bk.decompose_network(net, torch.from_numpy(u))
    np.testing.assert_allclose(result.outputs(torch.from_numpy(z)).numpy(), forward(weights, z) @ u.T,
                               rtol=0, atol=1e-10 * np.abs(forward(weights, z)).max())
    subset = bk.decompose_network(net, [2, 0])
    assert subset.direction_ids == [2, 0]
    np.testing.assert_allclose(subset.outputs(torch.from_numpy(z)).numpy(), forward(weights, z)[:, [2, 0]],
                               rtol=0, atol=1e-10 * np.abs(forward(weights, z)).max())


def test_one_layer_network_is_decompose_of_its_layer():
    weights = random_network_weights(5, 1, bias=True, seed=1)
    net = bk.BilinearNetwork([make_network(weights).layers[0]])  # no output bias: the layer alone
    ours = bk.decompose_network(net, [0, 3])
    plain = bk.decompose(net.layers[0], [0, 3])
    torch.testing.assert_close(ours.eigenvalues, plain.eigenvalues, rtol=1e-10, atol=1e-12)
    # both put the constant last: the same vectors, up to sign
    overlap = torch.einsum("bdk,bdk->bk", ours.eigenvectors, plain.eigenvectors).abs()
    torch.testing.assert_close(overlap, torch.ones_like(overlap), rtol=0, atol=1e-8)


def test_float32_reconstructs_to_its_precision():
    weights = random_network_weights(4, 3, bias=True, residual=True, seed=7, **SHAPES["all"])
    net = make_network(weights, dtype=torch.float32)
    result = bk.decompose_network(net, [0, 1, 2])
    assert result.eigenvalues.dtype == torch.float32
    z = _inputs(net)
    expected = forward(weights, z)
    got = result.outputs(torch.from_numpy(z).float()).double().numpy()
    np.testing.assert_allclose(got, expected, rtol=0, atol=1e-4 * np.abs(expected).max())


@pytest.mark.parametrize("residual", [False, True])
def test_invariant_under_permuting_hidden_units_and_swapping_w_and_v(residual):
    weights = random_network_weights(4, 3, bias=True, residual=residual, seed=11, **SHAPES["all"])
    base = bk.decompose_network(make_network(weights), [0, 1, 2])
    rng = np.random.default_rng(0)
    changed = dict(weights, layers=[])
    for layer in weights["layers"]:
        perm = rng.permutation(len(layer["w"]))
        changed["layers"].append(dict(layer, w=layer["v"][perm], v=layer["w"][perm], p=layer["p"][:, perm],
                                      w_bias=layer["v_bias"][perm], v_bias=layer["w_bias"][perm]))
    other = bk.decompose_network(make_network(changed), [0, 1, 2])
    for a, b in zip(base.singular_values, other.singular_values):
        torch.testing.assert_close(a, b, rtol=0, atol=1e-12 * float(a[0]))
    scale = float(base.eigenvalues.abs().max())
    torch.testing.assert_close(base.eigenvalues, other.eigenvalues, rtol=0, atol=1e-11 * scale)


def test_truncation_error_falls_to_exact_as_rank_grows():
    weights = random_network_weights(5, 3, bias=True, residual=True, seed=4, **SHAPES["all"])
    net = make_network(weights)
    z = _inputs(net, 40)
    y = forward(weights, z)
    errors = []
    for r in range(1, 7):
        result = bk.decompose_network(net, [0, 1, 2], rank=r)
        assert result.ranks == [r, r]
        errors.append(np.linalg.norm(result.outputs(torch.from_numpy(z)).numpy() - y) / np.linalg.norm(y))
    assert errors[0] > 1e-2 and errors[-1] < 1e-12
    assert errors[-2] > errors[-1]
    exact = bk.decompose_network(net, [0, 1, 2])
    assert exact.ranks == [6, 6]


def test_a_truncated_result_is_the_smaller_network_it_defines():
    weights = random_network_weights(4, 3, bias=True, residual=True, seed=8, **SHAPES["all"])
    net = make_network(weights)
    z = _inputs(net, 20)
    result = bk.decompose_network(net, [0, 1, 2], rank=3)
    lv, top = levels(weights, rank=3)
    for ours, (s, *_) in zip(result.singular_values, lv):
        np.testing.assert_allclose(ours.numpy(), s, rtol=0, atol=1e-10 * s[0])
    values, acts = top_activations(weights, lv, top, z, np.eye(3))
    expected = acts.sum(-1)
    np.testing.assert_allclose(result.outputs(torch.from_numpy(z)).numpy(), expected, rtol=0,
                               atol=1e-10 * np.abs(expected).max())
    for row in range(3):
        idx = _match_by_eigenvalue(result.eigenvalues[row].numpy(), values[row])
        np.testing.assert_allclose(result.eigenvalues[row].numpy(), values[row][idx], rtol=0,
                                   atol=1e-10 * np.abs(values[row]).max())


def test_share_and_per_level_ranks():
    weights = random_network_weights(4, 3, bias=True, residual=False, seed=9, **SHAPES["all"])
    net = make_network(weights)
    full = bk.decompose_network(net, [0])
    result = bk.decompose_network(net, [0], rank=0.9)
    for s, r in zip(result.singular_values, result.ranks):
        share = np.cumsum(s.numpy() ** 2) / np.sum(s.numpy() ** 2)
        assert share[r - 1] >= 0.9 and (r == 1 or share[r - 2] < 0.9)
    mixed = bk.decompose_network(net, [0], rank=[2, None])
    assert mixed.ranks[0] == 2 and mixed.ranks[1] == len(mixed.singular_values[1])
    assert full.ranks == [len(s) for s in full.singular_values]


def test_numerical_rank_drops_structural_zeros():
    # one hidden unit per layer: the lifted stream spans at most 2 dimensions (the unit and the constant)
    weights = random_network_weights(4, 3, bias=False, residual=False, seed=2, hidden=1)
    net = make_network(weights)
    result = bk.decompose_network(net, list(range(4)))
    lv, _ = levels(weights)
    assert result.ranks == [len(s) for s, *_ in lv] == [2, 2]
    _check_against_oracle(weights, result, _inputs(net))


@pytest.mark.parametrize("L", [2, 3])
def test_expand_walks_the_tree_down_to_pixels(L):
    weights = random_network_weights(4, L, bias=True, residual=True, seed=12, **SHAPES["all"])
    net = make_network(weights)
    result = bk.decompose_network(net, [0, 1, 2])
    z = torch.from_numpy(_inputs(net))
    feats = result.features(z)
    vector, level = result.eigenvectors[1, :, 0], L - 1
    child = result.expand(1, 0)
    while True:
        value = feats[level] @ vector.double()
        rebuilt = ((feats[level - 1] @ child.eigenvectors[0]) ** 2 * child.eigenvalues[0]).sum(-1)
        torch.testing.assert_close(rebuilt, value, rtol=0, atol=1e-10 * float(value.abs().max()))
        assert child.metadata["level"] == level - 1
        level -= 1
        if level == 0:
            break
        vector = child.eigenvectors[0, :, 0]
        child = result.expand_vector(level, vector)
    # level 0 is [z; 1], the constant last as decompose places it for a biased layer
    assert child.eigenvectors.shape[1] == net.d_in + 1 and child.metadata["has_bias"]
    g0 = torch.cat([z, torch.ones(len(z), 1, dtype=z.dtype)], 1)
    torch.testing.assert_close(feats[0], g0)


def test_published_image_model_end_to_end():
    torch.manual_seed(3)
    model = ImageModel(d_input=8, d_hidden=6, n_layer=3, residual=True).double()
    net = bk.BilinearNetwork.from_module(model)
    result = bk.decompose_network(net, [0, 1, 2])
    z = torch.randn(10, 8, dtype=torch.float64)
    with torch.no_grad():
        expected = model(z)
    torch.testing.assert_close(result.outputs(z), expected, rtol=0, atol=1e-10 * float(expected.abs().max()))
    assert result.network_info["n_layers"] == 3 and result.network_info["residual"] is True


def test_save_load_round_trip(tmp_path):
    weights = random_network_weights(4, 3, bias=True, residual=True, seed=13, **SHAPES["all"])
    result = bk.decompose_network(make_network(weights), [2, 0], k=4, rank=4)
    path = tmp_path / "net.safetensors"
    result.save(path)
    loaded = bk.NetworkDecomposition.load(path)
    z = torch.from_numpy(_inputs(make_network(weights)))
    assert loaded.ranks == result.ranks and loaded.direction_ids == [2, 0] and loaded.which == "LM"
    assert loaded.network_info == result.network_info
    torch.testing.assert_close(loaded.eigenvalues, result.eigenvalues, rtol=0, atol=0)
    torch.testing.assert_close(loaded.outputs(z), result.outputs(z), rtol=0, atol=0)
    torch.testing.assert_close(loaded.expand(1, 2).eigenvalues, result.expand(1, 2).eigenvalues, rtol=0, atol=0)
    (tmp_path / "other.safetensors").write_bytes(b"not a file")
    with pytest.raises(ValueError, match="not a readable safetensors"):
        bk.NetworkDecomposition.load(tmp_path / "other.safetensors")
    bk.decompose(result.top, [0]).save(tmp_path / "layer.safetensors")
    with pytest.raises(ValueError, match="not a network decomposition file"):
        bk.NetworkDecomposition.load(tmp_path / "layer.safetensors")


def test_memory_budget_is_respected():
    weights = random_network_weights(4, 2, **SHAPES["all"])
    with pytest.raises(MemoryError):
        bk.decompose_network(make_network(weights), [0], max_memory=64)


def test_bad_input_gets_one_line_errors_naming_the_argument():
    weights = random_network_weights(4, 2, bias=True, residual=True, **SHAPES["all"])
    net = make_network(weights)
    one = make_network(random_network_weights(4, 1))
    result = bk.decompose_network(net, [0, 1], k=3)
    cases = [
        (lambda: bk.decompose_network(net, [0], rank=0), ValueError, "^rank must be a positive int"),
        (lambda: bk.decompose_network(net, [0], rank=-2), ValueError, "^rank must be a positive int"),
        (lambda: bk.decompose_network(net, [0], rank=1.5), ValueError, "^rank as a float"),
        (lambda: bk.decompose_network(net, [0], rank=1.0), ValueError, "^rank as a float"),
        (lambda: bk.decompose_network(net, [0], rank="3"), ValueError, "^rank must be None"),
        (lambda: bk.decompose_network(net, [0], rank=True), ValueError, "^rank must be None"),
        (lambda: bk.decompose_network(net, [0], rank=[2, 2]), ValueError, "^rank as a list"),
        (lambda: bk.decompose_network(net, [0], rank=[0]), ValueError, "^rank\\[0\\] must be"),
        (lambda: bk.decompose_network(net, [3]), ValueError, "^directions: direction index 3 is out of range"),
        (lambda: bk.decompose_network(net, np.ones(4)), ValueError, "^directions: float directions must have shape"),
        (lambda: bk.decompose_network(net, [0], k=0), ValueError, "^k must be in"),
        (lambda: bk.decompose_network(net.layers[0], [0]), TypeError, "^net must be a BilinearNetwork"),
        (lambda: result.expand(2, 0), ValueError, "^i = 2 is out of range"),
        (lambda: result.expand(0, 3), ValueError, "^j = 3 is out of range"),
        (lambda: result.expand_vector(2, torch.ones(6)), ValueError, "^level = 2 is out of range"),
        (lambda: result.expand_vector(1, torch.ones(2)), ValueError, "^vector must have"),
        (lambda: bk.decompose_network(one, [0]).expand(0, 0), ValueError, "^level: a one-layer network"),
        (lambda: result.features(torch.ones(3, 4, dtype=torch.float64)), ValueError, "^z must end in"),
    ]
    for call, error, message in cases:
        with pytest.raises(error, match=message) as info:
            call()
        assert "\n" not in str(info.value)
