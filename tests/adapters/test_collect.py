"""collect_inputs: exactly what the module received, bounded, early-stopping, hooks always removed."""
from __future__ import annotations

import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")

import pytest  # noqa: E402
import torch  # noqa: E402
from torch import nn  # noqa: E402

import bilinear_kernels as bk  # noqa: E402


class Counting(nn.Module):
    def __init__(self, inner):
        super().__init__()
        self.inner, self.calls = inner, 0

    def forward(self, x):
        self.calls += 1
        return self.inner(x)


def small_model():
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(4, 6), nn.LayerNorm(6), nn.Linear(6, 3), Counting(nn.Linear(3, 2))).double()


def batches(n_batches=4, rows=5, seed=1):
    g = torch.Generator().manual_seed(seed)
    return [torch.randn(rows, 4, generator=g, dtype=torch.float64) for _ in range(n_batches)]


def reference_inputs(model, module, data):
    """The inputs seen by a plain forward hook over full forwards: the oracle."""
    seen = []
    handle = module.register_forward_hook(lambda m, args, out: seen.append(args[0].detach().clone()))
    try:
        with torch.no_grad():
            for x in data:
                model(x)
    finally:
        handle.remove()
    return torch.cat([s.reshape(-1, s.shape[-1]) for s in seen])


def test_inputs_are_exactly_what_the_module_received_after_the_norm():
    model, data = small_model(), batches()
    got = bk.collect_inputs(model, model[2], data)
    assert got.shape == (20, 6)
    assert torch.equal(got, reference_inputs(model, model[2], data))
    with torch.no_grad():  # and they are the norm's output
        torch.testing.assert_close(got, model[1](model[0](torch.cat(data))), rtol=1e-12, atol=1e-12)


def test_by_name_and_outputs():
    model, data = small_model(), batches()
    inputs, outputs = bk.collect_inputs(model, "2", data, outputs=True)
    with torch.no_grad():
        torch.testing.assert_close(outputs, model[2](inputs), rtol=1e-12, atol=1e-12)


def test_stop_early_skips_the_rest_of_the_model():
    model, data = small_model(), batches()
    bk.collect_inputs(model, model[2], data)
    assert model[3].calls == 0
    bk.collect_inputs(model, model[2], data, stop_early=False)
    assert model[3].calls == len(data)


def test_max_rows_cuts_and_stops_consuming_batches():
    model, data = small_model(), batches(n_batches=10, rows=4)
    consumed = []

    def stream():
        for i, x in enumerate(data):
            consumed.append(i)
            yield x

    got = bk.collect_inputs(model, model[2], stream(), max_rows=7)
    assert got.shape == (7, 6)
    assert consumed == [0, 1]
    assert torch.equal(got, reference_inputs(model, model[2], data[:2])[:7])
    inputs, outputs = bk.collect_inputs(model, model[2], data, max_rows=7, outputs=True)
    assert inputs.shape == (7, 6) and outputs.shape == (7, 3)


def test_memory_bound_and_hooks_removed_on_error():
    model, data = small_model(), batches()
    with pytest.raises(MemoryError, match="max_bytes"):
        bk.collect_inputs(model, model[2], data, max_bytes=100)
    assert not model[2]._forward_pre_hooks and not model[2]._forward_hooks

    def broken(m, batch):
        raise RuntimeError("boom")

    with pytest.raises(RuntimeError, match="boom"):
        bk.collect_inputs(model, model[2], data, forward=broken, outputs=True)
    assert not model[2]._forward_pre_hooks and not model[2]._forward_hooks


def test_bad_arguments():
    model = small_model()
    with pytest.raises(ValueError, match="not a submodule"):
        bk.collect_inputs(model, nn.Linear(2, 2), batches())
    with pytest.raises(ValueError, match="no submodule named"):
        bk.collect_inputs(model, "nope", batches())
    with pytest.raises(ValueError, match="max_rows"):
        bk.collect_inputs(model, model[2], batches(), max_rows=0)
    with pytest.raises(ValueError, match="never called"):
        bk.collect_inputs(model, model[2], [])


def test_device_argument_and_batch_kinds():
    model, data = small_model(), batches(2)
    got = bk.collect_inputs(model, model[2], [(x,) for x in data], device="cpu")
    assert torch.equal(got, bk.collect_inputs(model, model[2], data))


# -- the real libraries ---------------------------------------------------------------------------
def tiny_llama():
    transformers = pytest.importorskip("transformers")
    config = transformers.LlamaConfig(hidden_size=8, intermediate_size=12, hidden_act="linear",
                                      num_hidden_layers=2, num_attention_heads=2, num_key_value_heads=2,
                                      vocab_size=30, max_position_embeddings=16)
    torch.manual_seed(4)
    return transformers.LlamaForCausalLM(config).double().eval()


def token_batches(n=3, seed=0):
    g = torch.Generator().manual_seed(seed)
    return [{"input_ids": torch.randint(0, 30, (2, 5), generator=g)} for _ in range(n)]


def test_transformers_mlp_inputs_and_the_identity_on_them():
    model = tiny_llama()
    mlp = model.model.layers[1].mlp
    data = token_batches()
    x = bk.collect_inputs(model, mlp, data)
    assert x.shape == (30, 8)
    seen = []
    handle = mlp.register_forward_hook(lambda m, args, out: seen.append(args[0].detach().clone()))
    with torch.no_grad():
        for batch in data:
            model(**batch)
    handle.remove()
    assert torch.equal(x, torch.cat([s.reshape(-1, 8) for s in seen]))
    # on what the MLP really receives, the decomposition rebuilds its output
    layer = bk.BilinearLayer.from_module(mlp)
    res = bk.decompose(layer, [0, 3], k=None, method="eigh")
    with torch.no_grad():
        torch.testing.assert_close(res.activations(x).sum(-1), mlp(x)[:, [0, 3]], rtol=1e-9, atol=1e-9)


def test_transformer_lens_mlp_inputs_match_the_cache():
    pytest.importorskip("transformer_lens")
    from transformer_lens import HookedTransformer, HookedTransformerConfig

    cfg = HookedTransformerConfig(d_model=8, d_mlp=12, n_layers=2, n_ctx=5, d_head=4, act_fn="gelu",
                                  gated_mlp=True, d_vocab=17, normalization_type="RMS", dtype=torch.float64)
    model = HookedTransformer(cfg)
    tokens = torch.randint(0, 17, (2, 5), generator=torch.Generator().manual_seed(0))
    x = bk.collect_inputs(model, model.blocks[1].mlp, [tokens])
    _, cache = model.run_with_cache(tokens)
    torch.testing.assert_close(x, cache["blocks.1.ln2.hook_normalized"].reshape(-1, 8), rtol=0, atol=0)


def test_nnsight_trace_sees_the_same_inputs():
    nnsight = pytest.importorskip("nnsight")
    model = tiny_llama()
    batch = token_batches(1)[0]
    wrapped = nnsight.NNsight(model)
    with wrapped.trace(batch["input_ids"]):
        traced = wrapped.model.layers[1].mlp.input.save()
    x = bk.collect_inputs(model, model.model.layers[1].mlp, [batch])
    assert torch.equal(x, traced.reshape(-1, 8))


def test_nnsight_wrappers_are_read_through():
    nnsight = pytest.importorskip("nnsight")
    model = tiny_llama()
    wrapped = nnsight.NNsight(model)
    batches = token_batches(1)
    x = bk.collect_inputs(wrapped, wrapped.model.layers[1].mlp, batches)
    assert torch.equal(x, bk.collect_inputs(model, model.model.layers[1].mlp, batches))
    layer = bk.BilinearLayer.from_module(wrapped.model.layers[1].mlp)
    assert torch.equal(layer.w, model.model.layers[1].mlp.gate_proj.weight.detach())
