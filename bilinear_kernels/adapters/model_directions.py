"""Output directions and input bases read from the objects users hold: models, SAEs and autoencoders.

  unembedding_directions(model, tokens=None)   rows of the unembedding: (n, d) output directions
  sae_encoder_directions(sae, features=None)   an SAE's encoder directions: (n, d_in)
  sae_decoder_basis(sae, features=None)        an SAE's decoder as an input basis: (basis, offset)
  overlap_mix_direction(autoencoder, latents)  a bilinear autoencoder latent mixed from its top overlaps: (F,)

Everything comes back as detached torch tensors on the object's device; pass directions to
`decompose` and the basis to `layer.project_input(basis, offset)`.
"""
from __future__ import annotations

import torch
from torch import nn

# SAELens architectures whose encoder pre-activation is exactly sae_in @ W_enc + b_enc and whose
# decoder is feature_acts @ W_dec + b_dec, with sae_in = x − b_dec when apply_b_dec_to_input.
SAE_ARCHITECTURES = ("standard", "jumprelu", "topk", "batchtopk", "matryoshka_batchtopk")


def unembedding_directions(model, tokens=None) -> torch.Tensor:
    """The unembedding rows (vocab or len(tokens), d) of a transformers, TransformerLens or
    published bilinear language model: logit_t = row_t · h (+ bias) for the final hidden state h.

    h is what the unembedding reads, after the final norm: to use a row as an output direction of
    an MLP that writes into the residual stream before that norm, multiply it by the norm's gain
    (TransformerLens models loaded with fold_ln already have it folded into W_U). The unembedding
    bias, if any, is a constant and changes no interaction matrix.
    """
    weight = _unembedding(model)
    if tokens is None:
        return weight
    idx = torch.as_tensor(tokens)
    if idx.is_floating_point() or idx.dtype == torch.bool or idx.ndim > 1:
        raise TypeError(f"tokens must be an int or a 1-D sequence of token ids, got {idx.dtype} of shape {tuple(idx.shape)}")
    idx = idx.reshape(-1).long()
    bad = (idx < 0) | (idx >= weight.shape[0])
    if bool(bad.any()):
        raise ValueError(f"token id {int(idx[bad][0])} is out of range for a vocabulary of {weight.shape[0]}")
    return weight[idx.to(weight.device)]


def sae_encoder_directions(sae, features=None) -> torch.Tensor:
    """Encoder directions (n, d_in) of an SAE trained on a layer's output: feature j's
    pre-activation is row_j · f(x) + constant, so row_j is the output direction whose
    interaction matrix explains it.

    SAELens SAEs (`W_enc` (d_in, d_sae): its columns; the constant is b_enc − b_dec · W_enc when
    apply_b_dec_to_input) of the architectures in SAE_ARCHITECTURES, without activation
    normalisation; or a module with an `w_enc` nn.Linear(d, F) (the published layout: its rows).
    """
    kind = _sae_kind(sae)
    if kind == "saelens":
        weight = sae.W_enc.detach().T  # (d_sae, d_in)
    else:
        weight = sae.w_enc.weight.detach()
    return _select(weight, features, "features")


def sae_decoder_basis(sae, features=None) -> tuple[torch.Tensor, torch.Tensor | None]:
    """(basis (d_in, n), offset (d_in,)) of an SAE trained on a layer's input: the SAE's
    reconstruction is x̂ = basis @ z + offset for feature activations z, so
    `layer.project_input(basis, offset)` is the layer acting on SAE features.

    SAELens: basis = W_decᵀ (W_dec is (d_sae, d_in)), offset = b_dec. The published layout:
    basis = w_dec.weight (d, F), offset = b_dec (None when the module has none).
    """
    kind = _sae_kind(sae)
    if kind == "saelens":
        basis = sae.W_dec.detach().T  # (d_in, d_sae)
        offset = sae.b_dec.detach()
    else:
        basis = sae.w_dec.weight.detach()
        b_dec = getattr(sae, "b_dec", None)
        offset = None if b_dec is None else b_dec.detach()
    basis = _select(basis.T, features, "features").T
    return basis, offset


# -- pieces -----------------------------------------------------------------------------------
def _unembedding(model) -> torch.Tensor:
    w_u = getattr(model, "W_U", None)
    if isinstance(w_u, torch.Tensor) and _from_package(model, "transformer_lens"):
        return w_u.detach().T  # TransformerLens stores (d_model, d_vocab)
    get = getattr(model, "get_output_embeddings", None)
    head = None
    if callable(get):
        try:
            head = get()
        except (NotImplementedError, AttributeError):
            head = None
    if head is None:
        head = getattr(model, "lm_head", None)
    if isinstance(head, nn.Linear):
        return head.weight.detach()  # (vocab, d)
    raise TypeError(f"cannot find the unembedding of {type(model).__name__}: expected a TransformerLens model "
                    "(W_U), a transformers model (get_output_embeddings()) or a module with an lm_head nn.Linear")


def _sae_kind(sae) -> str:
    if isinstance(getattr(sae, "W_enc", None), torch.Tensor) and isinstance(getattr(sae, "W_dec", None), torch.Tensor):
        cfg = getattr(sae, "cfg", None)
        arch = getattr(cfg, "architecture", None)
        arch = arch() if callable(arch) else arch
        if arch not in SAE_ARCHITECTURES:
            raise ValueError(f"SAE architecture {arch!r} is not supported: its encoder is not sae_in @ W_enc + b_enc "
                             f"on the layer's output or its decoder not z @ W_dec + b_dec on its input "
                             f"(supported: {', '.join(SAE_ARCHITECTURES)})")
        if getattr(cfg, "rescale_acts_by_decoder_norm", False):
            raise ValueError("this SAE rescales its activations by the decoder norms, so W_enc's columns are not its "
                             "pre-activation directions; fold the rescaling into the weights first")
        for name in ("normalize_activations", "reshape_activations"):
            value = getattr(cfg, name, "none")
            if value not in ("none", None):
                raise ValueError(f"this SAE has {name}={value!r}: it transforms its input before W_enc (and its "
                                 "output after W_dec), so the weights alone are not its directions")
        return "saelens"
    if isinstance(getattr(sae, "w_enc", None), nn.Linear) and isinstance(getattr(sae, "w_dec", None), nn.Linear):
        return "published"
    raise TypeError(f"{type(sae).__name__} is not a recognised SAE: expected a SAELens SAE (W_enc, W_dec, b_dec) "
                    "or a module with w_enc and w_dec nn.Linear")


def _select(rows: torch.Tensor, which, name: str) -> torch.Tensor:
    if which is None:
        return rows
    idx = torch.as_tensor(which)
    if idx.is_floating_point() or idx.dtype == torch.bool or idx.ndim > 1:
        raise TypeError(f"{name} must be an int or a 1-D sequence of ints, got {idx.dtype} of shape {tuple(idx.shape)}")
    idx = idx.reshape(-1).long()
    bad = (idx < 0) | (idx >= rows.shape[0])
    if bool(bad.any()):
        raise ValueError(f"{name} index {int(idx[bad][0])} is out of range for {rows.shape[0]} {name}")
    return rows[idx.to(rows.device)]


def _from_package(obj, package: str) -> bool:
    return any(cls.__module__.split(".")[0] == package for cls in type(obj).__mro__)


def overlap_mix_direction(autoencoder, latents, n: int = 5, *, signed: bool = False) -> torch.Tensor:
    """A latent mixed from the top features of its row of the overlap matrix, as a sparse direction
    (F,) over the latents (or (b, F) for a sequence of latents), for the layer that
    `BilinearLayer.from_module(autoencoder)` reads.

    The mixed bilinear autoencoders' analysis (tdooms/bae) normalises the columns of the mixing
    `down` (B, F), takes the overlap G = downᵀ down (F, F), and mixes the n latents with the largest
    |G[latent, j]|, weighted by |G[latent, j]| (signed=True keeps the signs). Only the wanted rows
    of G are computed, never the F×F matrix. n nonzeros: decompose takes method="support".
    """
    down = getattr(autoencoder, "down", None)
    if isinstance(down, nn.Linear):
        down = down.weight
    if not isinstance(down, torch.Tensor) or down.ndim != 2:
        raise TypeError(f"autoencoder must have a mixing `down` (B, F) parameter or nn.Linear (the mixed bilinear "
                        f"autoencoder), got {type(autoencoder).__name__} without one")
    down = down.detach()
    n_latents = down.shape[1]
    if isinstance(n, bool) or not isinstance(n, int) or not 1 <= n <= n_latents:
        raise ValueError(f"n must be an int in [1, {n_latents}] (the number of latents mixed), got {n!r}")
    single = not isinstance(latents, (list, tuple, range)) and torch.as_tensor(latents).ndim == 0
    columns = down / torch.linalg.vector_norm(down, dim=0, keepdim=True)
    rows = _select(columns.T, latents, "latents")  # (b, B): the normalised columns of the wanted latents
    overlap = rows @ columns  # (b, F): those rows of G
    values, picked = overlap.abs().topk(n, dim=-1)
    if signed:
        values = torch.gather(overlap, -1, picked)
    out = torch.zeros_like(overlap).scatter_(-1, picked, values)
    return out[0] if single else out
