"""truncation_curve and top_activations against straightforward float64 NumPy loops."""
from __future__ import annotations

import numpy as np
import pytest
import torch

import bilinear_kernels as bk
from helpers import make_layer, oracle_forward, random_weights

D, H, O = 7, 5, 4


def setup(bias=False, n=40, seed=0):
    weights = random_weights(D, H, O, bias=bias, seed=seed)
    layer = make_layer(weights)
    rng = np.random.default_rng(seed + 1)
    x = rng.standard_normal((n, D))
    u = rng.standard_normal((3, O))
    return weights, layer, x, u


def oracle_curve(res, x_form, truth, ks, targets=None, labels=None):
    """Per k, straight from the definition: partial sums of λ (vᵀx)², their error, correlation, accuracy."""
    vals = res.eigenvalues.numpy()
    vecs = res.eigenvectors.numpy()
    acts = vals[None] * np.einsum("nd,bdk->nbk", x_form, vecs) ** 2
    out = []
    for k in ks:
        r = acts[..., :k].sum(-1)  # (n, b)
        rel = np.linalg.norm(r - truth, axis=0) / np.linalg.norm(truth, axis=0)
        total = np.linalg.norm(r - truth) / np.linalg.norm(truth)
        corr = np.array([np.corrcoef(r[:, j], truth[:, j])[0, 1] for j in range(r.shape[1])])
        acc = None
        if targets is not None:
            pred = r.argmax(1) if labels is None else np.asarray(labels)[r.argmax(1)]
            acc = float((pred == targets).mean())
        out.append((rel, total, corr, acc))
    return out


@pytest.mark.parametrize("bias", [False, True])
def test_truncation_curve_matches_the_loop(bias):
    weights, layer, x, u = setup(bias)
    res = bk.decompose(layer, torch.from_numpy(u), k=None, method="eigh")
    truth = oracle_forward(x, weights) @ u.T
    x_form = np.concatenate([x, np.ones((len(x), 1))], 1) if bias else x
    ks = [1, 3, layer.d_form]
    curve = bk.truncation_curve(res, torch.from_numpy(x_form), ks)
    assert curve.rows == len(x) and curve.accuracy is None
    for i, (rel, total, corr, _) in enumerate(oracle_curve(res, x_form, truth, ks)):
        np.testing.assert_allclose(curve.relative_error[i].numpy(), rel, rtol=1e-9, atol=1e-12)
        np.testing.assert_allclose(float(curve.total_error[i]), total, rtol=1e-9, atol=1e-12)
        np.testing.assert_allclose(curve.correlation[i].numpy(), corr, rtol=1e-9, atol=1e-12)
    assert float(curve.total_error[-1]) < 1e-12  # the full spectrum is exact


def test_accuracy_with_index_directions_and_streams():
    weights, layer, x, _ = setup(n=60)
    classes = [3, 0, 2]
    res = bk.decompose(layer, classes, k=None, method="eigh")
    truth = oracle_forward(x, weights)[:, classes]
    targets = np.random.default_rng(5).choice(classes, size=len(x))
    ks = [1, 2, 5]
    oracle = oracle_curve(res, x, truth, ks, targets, labels=classes)
    whole = bk.truncation_curve(res, x, ks, targets=targets)  # NumPy in
    stream = bk.truncation_curve(res, ((torch.from_numpy(x[i:i + 7]), torch.from_numpy(targets[i:i + 7]))
                                       for i in range(0, len(x), 7)), ks)
    tiny_chunks = bk.truncation_curve(res, torch.from_numpy(x), ks, targets=torch.from_numpy(targets), max_memory=1)
    for curve in (whole, stream, tiny_chunks):
        for i, (rel, _, corr, acc) in enumerate(oracle):
            assert float(curve.accuracy[i]) == pytest.approx(acc, abs=1e-12)
            np.testing.assert_allclose(curve.relative_error[i].numpy(), rel, rtol=1e-9, atol=1e-12)
            np.testing.assert_allclose(curve.correlation[i].numpy(), corr, rtol=1e-9, atol=1e-12)
    recs = whole.records()
    assert [r["k"] for r in recs] == ks and recs[0]["accuracy"] == pytest.approx(oracle[0][3])


def test_a_truncated_result_needs_the_true_outputs():
    weights, layer, x, u = setup()
    res = bk.decompose(layer, torch.from_numpy(u), k=3, method="eigh")
    with pytest.raises(ValueError, match="pass reference="):
        bk.truncation_curve(res, x, [1, 2])
    truth = oracle_forward(x, weights) @ u.T
    curve = bk.truncation_curve(res, x, [1, 3], reference=truth)
    for i, (rel, _, corr, _) in enumerate(oracle_curve(res, x, truth, [1, 3])):
        np.testing.assert_allclose(curve.relative_error[i].numpy(), rel, rtol=1e-9)
        np.testing.assert_allclose(curve.correlation[i].numpy(), corr, rtol=1e-9)
    full = bk.decompose(layer, torch.from_numpy(u), k=None, method="eigh")  # eigenpairs past k=2 unused
    torch.testing.assert_close(bk.truncation_curve(full, x, [1, 2], reference=truth).relative_error,
                               bk.truncation_curve(full, x, [1, 2]).relative_error, rtol=1e-9, atol=1e-12)
    batches = [{"inputs": x[:20], "reference": truth[:20]}, {"inputs": x[20:], "reference": truth[20:]}]
    torch.testing.assert_close(bk.truncation_curve(res, batches, [1, 3]).relative_error, curve.relative_error)


def test_truncation_curve_bad_arguments():
    _, layer, x, u = setup()
    res = bk.decompose(layer, torch.from_numpy(u), k=None, method="eigh")
    with pytest.raises(ValueError, match="ks must lie in 1..7"):
        bk.truncation_curve(res, x, [0])
    with pytest.raises(ValueError, match="ks must lie"):
        bk.truncation_curve(res, x, [8])
    with pytest.raises(ValueError, match=r"inputs must be rows \(n, 7\)"):
        bk.truncation_curve(res, x[:, :5], [1])
    with pytest.raises(ValueError, match="targets must be integer labels"):
        bk.truncation_curve(res, x, [1], targets=np.zeros(3, dtype=int))
    with pytest.raises(ValueError, match="inside each batch"):
        bk.truncation_curve(res, [x], [1], targets=np.zeros(len(x), dtype=int))
    with pytest.raises(ValueError, match="inputs is empty"):
        bk.truncation_curve(res, [], [1])
    with pytest.raises(TypeError, match="DecompositionResult"):
        bk.truncation_curve(layer, x, [1])


def test_top_activations_match_a_full_sort():
    _, layer, x, u = setup(n=50)
    res = bk.decompose(layer, torch.from_numpy(u), k=4, method="eigh")
    acts = res.eigenvalues.numpy()[None] * np.einsum("nd,bdk->nbk", x, res.eigenvectors.numpy()) ** 2
    top = bk.top_activations(res, (torch.from_numpy(x[i:i + 9]) for i in range(0, len(x), 9)), 5)
    assert top.values.shape == (3, 4, 5) and top.indices.shape == (3, 4, 5)
    for b in range(3):
        for k in range(4):
            order = np.argsort(-np.abs(acts[:, b, k]), kind="stable")[:5]
            np.testing.assert_array_equal(top.indices[b, k].numpy(), order)
            np.testing.assert_allclose(top.values[b, k].numpy(), acts[order, b, k], rtol=1e-12)
    first_two = bk.top_activations(res, x, 60, k=2)  # n beyond the rows: every row, ranked
    assert first_two.values.shape == (3, 2, 50)
    with pytest.raises(ValueError, match="k must be an int in 1..4"):
        bk.top_activations(res, x, 3, k=5)
    with pytest.raises(ValueError, match="n must be a positive int"):
        bk.top_activations(res, x, 0)


def test_targets_for_some_batches_only_are_refused():
    _, layer, x, _ = setup()
    res = bk.decompose(layer, [0, 1], k=None, method="eigh")
    y = np.zeros(10, dtype=int)
    for batches in ([x[:10], (x[10:20], y)], [(x[:10], y), x[10:20]]):
        with pytest.raises(ValueError, match="targets were given for 10 of 20"):
            bk.truncation_curve(res, batches, [1])
