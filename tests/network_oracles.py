"""Float64 NumPy oracles for whole networks, from the definition alone (DESIGN.md §8):
random network weights, the forward pass, and each level's quadratic forms formed explicitly."""
from __future__ import annotations

import math

import numpy as np
import torch

import bilinear_kernels as bk


def random_network_weights(d, L, *, d_in=None, o=None, hidden=None, bias=False, residual=False, seed=0):
    """A dict of NumPy float64 weights: layers (list of {w, v, p, w_bias, v_bias, out_bias}),
    embedding (d, d_in) or None, head (o, d) or None, head_bias, residual. hidden=None: no P."""
    rng = np.random.default_rng(seed)
    layers = []
    for _ in range(L):
        h = d if hidden is None else hidden
        layers.append(dict(
            w=rng.standard_normal((h, d)) / math.sqrt(d),
            v=rng.standard_normal((h, d)) / math.sqrt(d),
            p=None if hidden is None else rng.standard_normal((d, h)) / math.sqrt(h),
            w_bias=0.5 * rng.standard_normal(h) if bias else None,
            v_bias=0.5 * rng.standard_normal(h) if bias else None,
            out_bias=0.5 * rng.standard_normal(d) if bias else None,
        ))
    return dict(
        layers=layers, residual=residual,
        embedding=None if d_in is None else rng.standard_normal((d, d_in)) / math.sqrt(d_in),
        head=None if o is None else rng.standard_normal((o, d)) / math.sqrt(d),
        head_bias=0.5 * rng.standard_normal(o) if (o is not None and bias) else None,
    )


def make_network(weights, dtype=torch.float64):
    def t(a):
        return None if a is None else torch.from_numpy(np.array(a, dtype=np.float64)).to(dtype)

    layers = [bk.BilinearLayer(t(ly["w"]), t(ly["v"]), t(ly["p"]), t(ly["w_bias"]), t(ly["v_bias"]))
              for ly in weights["layers"]]
    return bk.BilinearNetwork(layers, weights["residual"], t(weights["embedding"]), t(weights["head"]),
                              head_bias=t(weights["head_bias"]),
                              output_biases=[t(ly["out_bias"]) for ly in weights["layers"]])


def forward(weights, z):
    """The network's output for inputs z (n, d_in), float64 NumPy."""
    r = z if weights["embedding"] is None else z @ weights["embedding"].T
    for ly in weights["layers"]:
        left = r @ ly["w"].T + (0 if ly["w_bias"] is None else ly["w_bias"])
        right = r @ ly["v"].T + (0 if ly["v_bias"] is None else ly["v_bias"])
        f = left * right
        if ly["p"] is not None:
            f = f @ ly["p"].T
        if ly["out_bias"] is not None:
            f = f + ly["out_bias"]
        r = r + f if weights["residual"] else f
    if weights["head"] is not None:
        r = r @ weights["head"].T
        if weights["head_bias"] is not None:
            r = r + weights["head_bias"]
    return r


def lifted_forms(layer, a_prev, c_prev, residual):
    """T[i] (d+1, n, n), i = 0 the constant, for the lifted stream [1; r_l] as quadratic forms in
    g_{l-1}, given r̃_{l-1} = [1; r_{l-1}] = a_prev g_{l-1} and c_prevᵀ g_{l-1} = 1 (the math of
    DESIGN §8 with the constant first, formed explicitly)."""
    d = a_prev.shape[0] - 1
    n = a_prev.shape[1]
    w = np.concatenate([(np.zeros(len(layer["w"])) if layer["w_bias"] is None else layer["w_bias"])[:, None],
                        layer["w"]], axis=1) @ a_prev
    v = np.concatenate([(np.zeros(len(layer["v"])) if layer["v_bias"] is None else layer["v_bias"])[:, None],
                        layer["v"]], axis=1) @ a_prev
    p = np.eye(d) if layer["p"] is None else layer["p"]
    sym = 0.5 * (np.einsum("ka,kb->kab", w, v) + np.einsum("ka,kb->kab", v, w))
    forms = np.zeros((d + 1, n, n))
    cc = np.outer(c_prev, c_prev)
    forms[0] = cc
    forms[1:] = np.einsum("ik,kab->iab", p, sym)
    if layer["out_bias"] is not None:
        forms[1:] += layer["out_bias"][:, None, None] * cc
    if residual:
        for i in range(1, d + 1):
            forms[i] += 0.5 * (np.outer(c_prev, a_prev[i]) + np.outer(a_prev[i], c_prev))
    return forms


def levels(weights, tol=1e-10, rank=None):
    """Per orthogonalized level l = 1..L-1: (singular values, U, V, A_l, c_l), and the top forms
    T_L (d+1, n, n) on g_{L-1}, with level 0 = [1; z]. Features: g_l = V_lᵀ vec(g_{l-1} g_{l-1}ᵀ).
    `rank` (an int) keeps the top `rank` singular triplets per level; the singular values listed
    are all those above tol either way."""
    d = len(weights["layers"][0]["w"][0])
    emb = weights["embedding"]
    d_in = d if emb is None else emb.shape[1]
    a = np.zeros((d + 1, d_in + 1))
    a[0, 0] = 1
    a[1:, 1:] = np.eye(d) if emb is None else emb
    c = np.zeros(d_in + 1)
    c[0] = 1
    out = []
    for layer in weights["layers"][:-1]:
        forms = lifted_forms(layer, a, c, weights["residual"])
        m = forms.reshape(d + 1, -1)
        u, s, vt = np.linalg.svd(m, full_matrices=False)
        keep = s > tol * s[0]
        s = s[keep]
        r = len(s) if rank is None else min(rank, len(s))
        u, vt = u[:, :r], vt[:r]
        a = u * s[:r]
        c = a[0]
        out.append((s, u, vt, a, c))
    top = lifted_forms(weights["layers"][-1], a, c, weights["residual"])
    return out, top


def top_form(weights, top, u):
    """The top interaction matrix at head-output direction u (or a stream direction without a head)."""
    if weights["head"] is None:
        ut = np.concatenate([[0.0], u])
    else:
        hb = 0.0 if weights["head_bias"] is None else float(weights["head_bias"] @ u)
        ut = np.concatenate([[hb], weights["head"].T @ u])
    return np.einsum("i,iab->ab", ut, top)


def oracle_features(weights, level_list, z):
    """g_0 … g_{L-1} for inputs z (n, d_in), by the definition g_l = V_lᵀ vec(g g ᵀ)."""
    g = np.concatenate([np.ones((len(z), 1)), z], axis=1)
    feats = [g]
    for s, u, vt, a, c in level_list:
        outer = np.einsum("na,nb->nab", g, g).reshape(len(z), -1)
        g = outer @ vt.T
        feats.append(g)
    return feats


def top_activations(weights, level_list, top, z, directions):
    """(eigenvalues (b, n), activations (n_samples, b, n)) of the top forms at these head-output
    directions (rows of a (b, o) array), every eigenvalue, sorted by |λ| descending."""
    g = oracle_features(weights, level_list, z)[-1]
    values, acts = [], []
    for u in directions:
        lam, vec = np.linalg.eigh(top_form(weights, top, u))
        order = np.argsort(-np.abs(lam), kind="stable")
        lam, vec = lam[order], vec[:, order]
        values.append(lam)
        acts.append((g @ vec) ** 2 * lam)
    return np.array(values), np.stack(acts, axis=1)
