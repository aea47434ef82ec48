"""Tiny checkpoints in every layout the loaders read, written by the tests themselves.

Each writer returns the tensors it wrote (float64 unless said otherwise), so tests can compare
what the loader gives back with what went in.
"""
from __future__ import annotations

import json
from pathlib import Path

import torch
from safetensors.torch import save_file


def _randn(gen, *shape, dtype=torch.float64):
    return torch.randn(*shape, generator=gen, dtype=dtype)


def write_plain(path: Path, *, h=5, d=7, o=3, with_p=True, bias=False, seed=0) -> dict:
    gen = torch.Generator().manual_seed(seed)
    tensors = {"w": _randn(gen, h, d), "v": _randn(gen, h, d)}
    if with_p:
        tensors["p"] = _randn(gen, o, h)
    if bias:
        tensors["w_bias"] = _randn(gen, h)
        tensors["v_bias"] = _randn(gen, h)
    save_file(tensors, str(path))
    return tensors


def write_bilinear_lm(folder: Path, *, n_layer=2, d_model=8, d_hidden=6, n_vocab=11, bias=False,
                      norms="snapshot", lm_head=True, old_p_name=False, config=True, gate=None,
                      bilinear=True, norm_bias=None, normalization=True, seed=1) -> dict:
    """The published bilinear transformers' names (attention weights included, unused).

    norms: "snapshot" the arXiv 2406.03947 checkpoints' n2.norm.weight / n2.norm.bias (zero) and
    n_f.norm.weight / .norm.bias; "plain" n2.weight and n_f.weight (older research code); None the
    later models, whose RMSNorm has no parameters. norm_bias: a tensor for the n2 norm's bias.
    gate, bilinear, normalization: the config fields that say whether the MLP is gated / bilinear
    and whether the model normalizes at all."""
    gen = torch.Generator().manual_seed(seed)
    folder.mkdir(parents=True, exist_ok=True)
    t = {"transformer.wte.weight": _randn(gen, n_vocab, d_model)}
    norm = {"snapshot": ".norm", "plain": ""}.get(norms)
    for i in range(n_layer):
        t[f"transformer.h.{i}.attn.qkv.weight"] = _randn(gen, 3 * d_model, d_model)
        t[f"transformer.h.{i}.mlp.w.weight"] = _randn(gen, 2 * d_hidden, d_model)
        t[f"transformer.h.{i}.mlp.{'o' if old_p_name else 'p'}.weight"] = _randn(gen, d_model, d_hidden)
        if bias:
            t[f"transformer.h.{i}.mlp.w.bias"] = _randn(gen, 2 * d_hidden)
        if norm is not None:
            t[f"transformer.h.{i}.n1{norm}.weight"] = 1 + 0.1 * _randn(gen, d_model)
            t[f"transformer.h.{i}.n2{norm}.weight"] = 1 + 0.1 * _randn(gen, d_model)
            if norms == "snapshot":
                t[f"transformer.h.{i}.n1.norm.bias"] = torch.zeros(d_model, dtype=torch.float64)
                t[f"transformer.h.{i}.n2.norm.bias"] = (torch.zeros(d_model, dtype=torch.float64)
                                                        if norm_bias is None else norm_bias.clone())
    if norm is not None:
        t[f"transformer.n_f{norm}.weight"] = 1 + 0.1 * _randn(gen, d_model)
        if norms == "snapshot":
            t["transformer.n_f.norm.bias"] = torch.zeros(d_model, dtype=torch.float64)
    if lm_head:
        t["lm_head.weight"] = _randn(gen, n_vocab, d_model)
    save_file(t, str(folder / "model.safetensors"))
    if config:
        (folder / "config.json").write_text(json.dumps(
            {"n_layer": n_layer, "d_model": d_model, "d_hidden": d_hidden, "n_vocab": n_vocab, "bias": bias,
             "bilinear": bilinear, "gate": gate, "normalization": normalization}))
    return t


def write_bilinear_image(folder: Path, *, n_layer=2, d_input=16, d_hidden=6, d_output=5, bias=False,
                         residual=False, seed=2) -> dict:
    gen = torch.Generator().manual_seed(seed)
    folder.mkdir(parents=True, exist_ok=True)
    t = {"embed.weight": _randn(gen, d_hidden, d_input), "head.weight": _randn(gen, d_output, d_hidden)}
    for i in range(n_layer):
        t[f"blocks.{i}.weight"] = _randn(gen, 2 * d_hidden, d_hidden)
        if bias:
            t[f"blocks.{i}.bias"] = _randn(gen, 2 * d_hidden)
    save_file(t, str(folder / "model.safetensors"))
    (folder / "config.json").write_text(json.dumps(
        {"d_input": d_input, "d_hidden": d_hidden, "d_output": d_output, "n_layer": n_layer,
         "bias": bias, "residual": residual}))
    return t


def write_llama(folder: Path, *, n_layers=2, hidden=8, inter=5, vocab=9, act="linear", tie=False,
                mlp_bias=False, sharded=False, config=True, dtype=torch.float64, seed=3) -> dict:
    """Hugging Face Llama names; `sharded` splits the layers over two files with an index."""
    gen = torch.Generator().manual_seed(seed)
    folder.mkdir(parents=True, exist_ok=True)
    t = {"model.embed_tokens.weight": _randn(gen, vocab, hidden, dtype=dtype),
         "model.norm.weight": 1 + 0.1 * _randn(gen, hidden, dtype=dtype)}
    for i in range(n_layers):
        pre = f"model.layers.{i}"
        t[f"{pre}.self_attn.q_proj.weight"] = _randn(gen, hidden, hidden, dtype=dtype)
        t[f"{pre}.mlp.gate_proj.weight"] = _randn(gen, inter, hidden, dtype=dtype)
        t[f"{pre}.mlp.up_proj.weight"] = _randn(gen, inter, hidden, dtype=dtype)
        t[f"{pre}.mlp.down_proj.weight"] = _randn(gen, hidden, inter, dtype=dtype)
        t[f"{pre}.post_attention_layernorm.weight"] = 1 + 0.1 * _randn(gen, hidden, dtype=dtype)
        if mlp_bias:
            t[f"{pre}.mlp.gate_proj.bias"] = _randn(gen, inter, dtype=dtype)
            t[f"{pre}.mlp.up_proj.bias"] = _randn(gen, inter, dtype=dtype)
    if not tie:
        t["lm_head.weight"] = _randn(gen, vocab, hidden, dtype=dtype)
    if sharded:
        first = {k: v for k, v in t.items() if not k.startswith("model.layers.") or k.startswith("model.layers.0.")}
        second = {k: v for k, v in t.items() if k not in first}
        save_file(first, str(folder / "model-00001-of-00002.safetensors"))
        save_file(second, str(folder / "model-00002-of-00002.safetensors"))
        weight_map = {k: "model-00001-of-00002.safetensors" for k in first}
        weight_map.update({k: "model-00002-of-00002.safetensors" for k in second})
        (folder / "model.safetensors.index.json").write_text(json.dumps({"metadata": {}, "weight_map": weight_map}))
    else:
        save_file(t, str(folder / "model.safetensors"))
    if config:
        (folder / "config.json").write_text(json.dumps(
            {"architectures": ["LlamaForCausalLM"], "hidden_act": act, "hidden_size": hidden,
             "intermediate_size": inter, "num_hidden_layers": n_layers, "vocab_size": vocab,
             "tie_word_embeddings": tie, "mlp_bias": mlp_bias}))
    return t
