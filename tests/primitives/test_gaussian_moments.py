"""gaussian_moments against the formed-Q Isserlis formulas in float64 (biases, a general mean and
covariance, one layer and two), a loose Monte Carlo check, its gradient against autograd through
the formed Q, and bad input."""
import numpy as np
import pytest
import torch

import bilinear_kernels as bk

from helpers import make_layer, one_hot, oracle_forward, oracle_q, random_weights, to_numpy


def lifted_q(weights, u, d):
    """Q̃ (b, d + 1, d + 1) on x̃ = [x; 1]: the biased form, or the bias-free one padded with zeros."""
    q = oracle_q(weights, u)
    pad = d + 1 - q.shape[-1]
    return np.pad(q, ((0, 0), (0, pad), (0, pad)))


def oracle_moments(wa, ua, wb, ub, mean, cov):
    """E[y], E[z], E[y z] for y = x̃ᵀ Q̃_a x̃, z = x̃ᵀ Q̃_b x̃, x ~ N(m, S), with m̃ = [m; 1] and
    S̃ = diag(S, 0): E[y] = tr(Q̃ S̃) + m̃ᵀ Q̃ m̃, E[y z] = E[y] E[z] + 2 tr(Q̃_a S̃ Q̃_b S̃) + 4 m̃ᵀ Q̃_a S̃ Q̃_b m̃."""
    d = wa["w"].shape[1]
    qa, qb = lifted_q(wa, ua, d), lifted_q(wb, ub, d)
    m = np.append(np.zeros(d) if mean is None else mean, 1.0)
    s = np.zeros((d + 1, d + 1))
    s[:d, :d] = np.eye(d) if cov is None else cov
    first_a = np.einsum("bij,ji->b", qa, s) + np.einsum("i,bij,j->b", m, qa, m)
    first_b = np.einsum("bij,ji->b", qb, s) + np.einsum("i,bij,j->b", m, qb, m)
    second = (np.outer(first_a, first_b) + 2 * np.einsum("aij,jk,bkl,li->ab", qa, s, qb, s)
              + 4 * np.einsum("i,aij,jk,bkl,l->ab", m, qa, s, qb, m))
    return first_a, first_b, second


def random_mean_cov(d, seed, rank=None):
    rng = np.random.default_rng(seed)
    a = rng.standard_normal((d, d if rank is None else rank))
    return rng.standard_normal(d), a @ a.T / d


def check(got, ref):
    for g, r in zip(got, ref):
        np.testing.assert_allclose(to_numpy(g), r, rtol=1e-11, atol=1e-11 * np.abs(r).max())


@pytest.mark.parametrize("d, h, o, bias", [(5, 7, 4, False), (5, 7, 4, True), (5, 3, None, True), (1, 4, 2, True)])
@pytest.mark.parametrize("gaussian", ["standard", "mean", "general", "singular"])
@pytest.mark.parametrize("framework", ["torch", "numpy"])
def test_one_layer_matches_the_formed_formulas(d, h, o, bias, gaussian, framework):
    weights = random_weights(d, h, o, bias=bias, seed=d * h)
    layer = make_layer(weights, framework)
    mean, cov = random_mean_cov(d, 1, rank=max(1, d - 2) if gaussian == "singular" else None)
    mean = None if gaussian == "standard" else mean
    cov = None if gaussian in ("standard", "mean") else cov
    out = h if o is None else o
    u = np.random.default_rng(2).standard_normal((2, out))
    cast = (lambda a: a) if framework == "numpy" else (lambda a: None if a is None else torch.from_numpy(a))
    for max_memory in (None, 3000):  # 3000 bytes: blocks of a row or two of M
        got = bk.gaussian_moments(layer, [0, out - 1], mean=cast(mean), cov=cast(cov), max_memory=max_memory)
        assert isinstance(got[2], np.ndarray if framework == "numpy" else torch.Tensor)
        check(got, oracle_moments(weights, one_hot(out, [0, out - 1]), weights, one_hot(out, [0, out - 1]), mean, cov))
        got = bk.gaussian_moments(layer, [0, out - 1], None, u, cast(mean), cast(cov), max_memory=max_memory)
        check(got, oracle_moments(weights, one_hot(out, [0, out - 1]), weights, u, mean, cov))


@pytest.mark.parametrize("bias_a, bias_b", [(True, False), (False, True), (True, True)])
def test_two_layers_match_the_formed_formulas(bias_a, bias_b):
    wa, wb = random_weights(4, 6, 3, bias=bias_a, seed=5), random_weights(4, 5, None, bias=bias_b, seed=6)
    mean, cov = random_mean_cov(4, 7)
    ub = np.random.default_rng(8).standard_normal((3, 5))
    for m, s in ((None, None), (mean, cov)):
        got = bk.gaussian_moments(make_layer(wa), [0, 1, 2], make_layer(wb), ub, m, s, max_memory=3000)
        check(got, oracle_moments(wa, one_hot(3, [0, 1, 2]), wb, ub, m, s))


def test_defaults_are_the_standard_normal():
    weights = random_weights(4, 6, 3, bias=True, seed=9)
    layer = make_layer(weights)
    plain = bk.gaussian_moments(layer, range(3))
    explicit = bk.gaussian_moments(layer, range(3), mean=torch.zeros(4, dtype=torch.float64),
                                   cov=torch.eye(4, dtype=torch.float64))
    for a, b in zip(plain, explicit):
        torch.testing.assert_close(a, b, rtol=1e-12, atol=1e-12)


def test_monte_carlo_agrees_within_its_standard_error():
    wa, wb = random_weights(3, 5, 2, bias=True, seed=10), random_weights(3, 4, 2, seed=11)
    mean, cov = random_mean_cov(3, 12)
    first_a, first_b, second = bk.gaussian_moments(make_layer(wa), [0, 1], make_layer(wb), [1, 0], mean, cov)
    rng = np.random.default_rng(13)
    n = 200_000
    x = mean + rng.standard_normal((n, 3)) @ np.linalg.cholesky(cov).T
    ya, yb = oracle_forward(x, wa), oracle_forward(x, wb)[:, [1, 0]]
    products = ya[:, :, None] * yb[:, None, :]
    for ours, samples in ((first_a, ya), (first_b, yb), (second, products)):
        estimate = samples.mean(0)
        standard_error = samples.std(0) / np.sqrt(n)
        assert np.all(np.abs(ours.numpy() - estimate) <= 6 * standard_error), (ours, estimate, standard_error)


def _formed_torch(w, v, p, wb, vb, u, d):
    w_h, v_h = torch.cat([w, wb[:, None]], 1), torch.cat([v, vb[:, None]], 1)
    b = torch.einsum("bk,ki,kj->bij", u @ p, w_h, v_h)
    return 0.5 * (b + b.mT)


def test_gradient_matches_autograd_through_the_formed_formulas():
    names = ("w", "v", "p", "w_bias", "v_bias")
    wa, wb = random_weights(3, 5, 2, bias=True, seed=14), random_weights(3, 4, 3, bias=True, seed=15)
    ta = {n: torch.tensor(wa[n], requires_grad=True) for n in names}
    tb = {n: torch.tensor(wb[n], requires_grad=True) for n in names}
    mean_np, cov_np = random_mean_cov(3, 16)
    mean = torch.tensor(mean_np, requires_grad=True)
    cov = torch.tensor(cov_np, requires_grad=True)
    ua = torch.tensor([[1.0, -0.5], [0.3, 2.0]], dtype=torch.float64, requires_grad=True)
    ub = torch.eye(3, dtype=torch.float64)[[0, 2]]
    leaves = [*ta.values(), *tb.values(), mean, cov, ua]
    weights = [torch.tensor(np.random.default_rng(s).standard_normal(shape)) for s, shape in ((1, 2), (2, 2), (3, (2, 2)))]
    ours = bk.gaussian_moments(bk.BilinearLayer(*ta.values()), ua, bk.BilinearLayer(*tb.values()), [0, 2], mean, cov,
                               max_memory=2000)
    qa, qb = _formed_torch(*ta.values(), ua, 3), _formed_torch(*tb.values(), ub, 3)
    m = torch.cat([mean, torch.ones(1, dtype=torch.float64)])
    s = torch.zeros(4, 4, dtype=torch.float64)
    s = s.index_put((torch.arange(3)[:, None], torch.arange(3)[None]), cov)
    fa = torch.einsum("bij,ji->b", qa, s) + torch.einsum("i,bij,j->b", m, qa, m)
    fb = torch.einsum("bij,ji->b", qb, s) + torch.einsum("i,bij,j->b", m, qb, m)
    second = (fa[:, None] * fb[None] + 2 * torch.einsum("aij,jk,bkl,li->ab", qa, s, qb, s)
              + 4 * torch.einsum("i,aij,jk,bkl,l->ab", m, qa, s, qb, m))
    ref = (fa, fb, second)
    for a, b in zip(ours, ref):
        torch.testing.assert_close(a.detach(), b.detach(), rtol=1e-12, atol=1e-12)
    loss = lambda out: sum((o * wt).sum() for o, wt in zip(out, weights))  # noqa: E731
    grads = torch.autograd.grad(loss(ours), leaves)
    ref_grads = torch.autograd.grad(loss(ref), leaves)
    for g, r, leaf in zip(grads, ref_grads, leaves):
        if leaf is cov:  # the moments read cov's symmetric part, so its gradient is symmetric
            r = 0.5 * (r + r.mT)
        torch.testing.assert_close(g, r, rtol=1e-10, atol=1e-11)


def test_bad_input_gets_one_line_errors_naming_the_argument():
    layer = make_layer(random_weights(3, 4, 2))
    _, cov = random_mean_cov(3, 17)
    lower = np.linalg.cholesky(cov)
    with pytest.raises(ValueError, match=r"^cov must be symmetric: its largest \|cov - cov.T\| entry"):
        bk.gaussian_moments(layer, 0, cov=lower)
    with pytest.raises(ValueError, match=r"^cov must be positive semi-definite: its smallest eigenvalue is -"):
        bk.gaussian_moments(layer, 0, cov=cov - 2 * np.abs(np.linalg.eigvalsh(cov)).max() * np.eye(3))
    with pytest.raises(ValueError, match=r"^cov must be \(3, 3\)"):
        bk.gaussian_moments(layer, 0, cov=np.eye(4))
    with pytest.raises(ValueError, match=r"^cov contains 1 non-finite"):
        bk.gaussian_moments(layer, 0, cov=np.diag([1.0, np.nan, 1.0]))
    with pytest.raises(ValueError, match=r"^mean must be \(3,\)"):
        bk.gaussian_moments(layer, 0, mean=np.zeros(2))
    with pytest.raises(TypeError, match=r"^mean must be a torch tensor, NumPy array or CuPy array"):
        bk.gaussian_moments(layer, 0, mean=[0.0, 0.0, 0.0])
    with pytest.raises(ValueError, match=r"^layer_b has input width d = 4 but layer_a has d = 3"):
        bk.gaussian_moments(layer, 0, make_layer(random_weights(4, 4, 2)), 0)
    with pytest.raises(ValueError, match=r"^dirs_b: float directions must have shape"):
        bk.gaussian_moments(layer, 0, None, np.ones((2, 3)))
