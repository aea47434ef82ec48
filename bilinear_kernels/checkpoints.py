"""Load one bilinear layer, and the readout that gives its output directions, from a checkpoint.

Only safetensors files are read (lazily: just the tensors asked for); pickled formats (.bin, .pt,
.pth, .ckpt, .pkl) are refused and never unpickled. Layouts understood:

  bilinear-lm     config.json + model.safetensors of the published bilinear transformers:
                  transformer.h.{i}.mlp.w.weight (2h, d) packed [W; V], transformer.h.{i}.mlp.p.weight
                  (d, h) (older files: mlp.o.weight), optional mlp.w.bias (2h,), lm_head.weight /
                  transformer.wte.weight (vocab, d) as readout.
  bilinear-image  the published image classifiers: embed.weight (d, d_input), blocks.{i}.weight
                  (2d, d) packed, optional blocks.{i}.bias, head.weight (classes, d) as readout.
                  The blocks have no output projection (P = identity).
  llama           Hugging Face Llama-style models: model.layers.{i}.mlp.{gate,up,down}_proj.weight,
                  lm_head.weight or the tied model.embed_tokens.weight as readout. Only
                  hidden_act "linear" is a bilinear layer; gated activations are refused unless
                  `allow_gated=True` (then the activation is dropped and (gate x) ⊙ (up x) is used).
  plain           a safetensors file with w, v (h, d), optional p (o, h), w_bias, v_bias (h,).

A sharded checkpoint (model.safetensors.index.json) is read shard by shard.
"""
from __future__ import annotations

import hashlib
import json
import re
import struct
from dataclasses import dataclass, field
from pathlib import Path

import torch

from .layer import BilinearLayer

PICKLE_SUFFIXES = (".bin", ".pt", ".pth", ".ckpt", ".pkl", ".pickle")
LAYOUTS = ("bilinear-lm", "bilinear-image", "llama", "plain")
# activations under which gate_proj x ⊙ up_proj x is the layer itself
LINEAR_ACTIVATIONS = ("linear", "identity", "none")
# a safetensors header is JSON; anything bigger than this is not a header we will parse
MAX_HEADER_BYTES = 100 * 2**20


class CheckpointError(ValueError):
    """A checkpoint that cannot be read as asked; the message says what was expected."""


class CheckpointNotFoundError(CheckpointError, FileNotFoundError):
    """The checkpoint path, or a file it needs, does not exist."""


@dataclass
class LoadedLayer:
    """One bilinear layer of a checkpoint and what is needed to pick its output directions.

    layer         the BilinearLayer (on the requested device)
    layout        one of LAYOUTS
    index         the layer index in the model (None for a plain file)
    n_layers      how many bilinear layers the checkpoint holds
    readout       (n, o) rows that map the layer's output to classes or tokens (head, unembedding),
                  or None when the outputs themselves are the directions of interest
    readout_name  the tensor the readout came from (with any folded norm), for messages and metadata
    files         the files read (config, index, the weight files tensors came from), for hashing
    notes         facts the user should know about what was decomposed
    """

    layer: BilinearLayer
    layout: str
    index: int | None
    n_layers: int
    readout: torch.Tensor | None = None
    readout_name: str | None = None
    files: list[Path] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    config: dict = field(default_factory=dict)

    def describe(self) -> dict:
        """JSON-able summary for metadata."""
        return {
            "layout": self.layout, "layer": self.index, "n_layers": self.n_layers,
            "d_in": self.layer.d_in, "d_hidden": self.layer.d_hidden, "d_out": self.layer.d_out,
            "bias": self.layer.has_bias, "readout": self.readout_name, "notes": list(self.notes),
        }


def load_layer(path, layer: int | None = None, *, allow_gated: bool = False,
               fold_embedding: bool = False, fold_norms: bool = False,
               device=None, dtype=None) -> LoadedLayer:
    """Load bilinear layer `layer` of the checkpoint at `path` (a directory or a .safetensors file).

    allow_gated     accept a gated (SiLU, GELU...) Llama-style MLP and decompose its bilinear part
                    (gate x) ⊙ (up x); that is not the function the model computes
    fold_embedding  image models, layer 0: fold embed.weight into W and V, so the layer acts on
                    the raw input (pixels) instead of the embedding
    fold_norms      language models: fold the RMSNorm gain before the MLP into W and V, and the
                    final norm's gain into the readout rows (the published analyses do this)
    device, dtype   where and in which float dtype to put the weights (default: as stored, on CPU)
    """
    source = open_checkpoint(path)
    layout = detect_layout(source)
    loader = {"bilinear-lm": _load_bilinear_lm, "bilinear-image": _load_bilinear_image,
              "llama": _load_llama, "plain": _load_plain}[layout]
    if fold_embedding and layout != "bilinear-image":
        raise CheckpointError(f"fold_embedding applies to image models (embed.weight before blocks.0); {source.name} is a {layout} checkpoint")
    if fold_norms and layout not in ("bilinear-lm", "llama"):
        raise CheckpointError(f"fold_norms applies to language models; {source.name} is a {layout} checkpoint")
    loaded = loader(source, layer, allow_gated=allow_gated, fold_embedding=fold_embedding,
                    fold_norms=fold_norms)
    if device is not None or dtype is not None:
        dtype = _float_dtype(dtype)
        loaded.layer = loaded.layer.to(device=device, dtype=dtype)
        if loaded.readout is not None:
            loaded.readout = loaded.readout.to(device=device, dtype=dtype)
    loaded.files = source.files_read()
    return loaded


def checkpoint_sha256(files, hashes: dict | None = None) -> str:
    """SHA-256 identifying a checkpoint: of the file itself when there is one, else of the sorted
    "name:sha256" lines of its files (config, index, shards). `hashes` maps file -> SHA-256 of
    files already hashed."""
    files = [Path(f) for f in files]
    hashes = {Path(f): h for f, h in (hashes or {}).items()}
    digests = {f: hashes.get(f) or file_sha256(f) for f in files}
    if len(files) == 1:
        return digests[files[0]]
    lines = sorted(f"{f.name}:{h}" for f, h in digests.items())
    return hashlib.sha256("\n".join(lines).encode()).hexdigest()


def file_sha256(path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(2**24), b""):
            digest.update(block)
    return digest.hexdigest()


# -- reading files ---------------------------------------------------------------------------

class TensorSource:
    """Named tensors of one checkpoint (one file or several shards), read one at a time."""

    def __init__(self, name: str, weight_map: dict[str, Path], config: dict, files: list[Path]):
        self.name = name  # how the checkpoint is called in messages
        self.weight_map = weight_map
        self.config = config
        self.files = files  # config / index files, then the weight files
        self.read: set[Path] = set()  # weight files a tensor was read from

    def files_read(self) -> list[Path]:
        """The config and index files and the weight files actually read: what identifies the
        layer (a sharded model's other shards do not matter to it)."""
        weights = set(self.weight_map.values())
        return [f for f in self.files if f not in weights or f in self.read]

    @property
    def names(self) -> list[str]:
        return sorted(self.weight_map)

    def __contains__(self, name: str) -> bool:
        return name in self.weight_map

    def shape(self, name: str) -> tuple[int, ...]:
        with _safe_open(self.weight_map[name]) as f:
            return tuple(f.get_slice(name).get_shape())

    def get(self, name: str, expected: tuple | None = None, why: str = "") -> torch.Tensor:
        """The tensor `name`, checked against `expected` (None entries match any size)."""
        if name not in self.weight_map:
            shape = f" (expected shape {_fmt_shape(expected)})" if expected else ""
            raise CheckpointError(f"tensor {name!r} is missing from {self.name}{shape}{why}")
        shape = self.shape(name)
        if expected is not None and (len(shape) != len(expected) or
                                     any(e is not None and e != s for e, s in zip(expected, shape))):
            raise CheckpointError(f"tensor {name!r} in {self.name} has shape {_fmt_shape(shape)}; "
                                  f"expected {_fmt_shape(expected)}{why}")
        try:
            with _safe_open(self.weight_map[name]) as f:
                t = f.get_tensor(name)
            self.read.add(self.weight_map[name])
        except CheckpointError:
            raise
        except Exception as err:  # noqa: BLE001 - the library's errors name no file
            raise CheckpointError(f"could not read tensor {name!r} from {self.weight_map[name]}: {err}") from None
        if not t.is_floating_point():
            raise CheckpointError(f"tensor {name!r} in {self.name} has dtype {t.dtype}; expected a floating-point weight")
        return t

    def optional(self, name: str, expected: tuple | None = None, why: str = "") -> torch.Tensor | None:
        return self.get(name, expected, why) if name in self.weight_map else None


def open_checkpoint(path) -> TensorSource:
    """Find the config and safetensors files of a checkpoint directory or file, refusing pickles."""
    path = Path(path)
    if not path.exists():
        raise CheckpointNotFoundError(f"checkpoint not found: {path}")
    if path.is_dir():
        return _open_directory(path)
    if path.name.endswith(".index.json"):
        return _open_sharded(path, _read_config(path.parent))
    if path.suffix == ".json":
        return _open_directory(path.parent)
    _refuse_pickle(path)
    _check_safetensors(path)
    config_path = path.parent / "config.json"
    config = _read_config(path.parent) if path.name == "model.safetensors" or config_path.exists() else {}
    files = ([config_path] if config else []) + [path]
    return TensorSource(str(path), {n: path for n in _safetensors_names(path)}, config, files)


def _open_directory(path: Path) -> TensorSource:
    config = _read_config(path)
    if (path / "model.safetensors").exists():
        weights = path / "model.safetensors"
    elif (path / "model.safetensors.index.json").exists():
        return _open_sharded(path / "model.safetensors.index.json", config)
    else:
        candidates = sorted(path.glob("*.safetensors"))
        if len(candidates) == 1:
            weights = candidates[0]
        else:
            pickles = sorted(p.name for p in path.iterdir() if p.suffix in PICKLE_SUFFIXES)
            if candidates:
                raise CheckpointError(f"{path} holds several .safetensors files ({', '.join(p.name for p in candidates)}) "
                                      "and no model.safetensors; pass the file to use")
            if pickles:
                raise CheckpointError(f"{path} has no safetensors weights, only {', '.join(pickles)}: pickled files "
                                      "are never loaded (unpickling can run arbitrary code); convert the checkpoint "
                                      "to safetensors first")
            raise CheckpointNotFoundError(f"no model.safetensors (or other .safetensors file) in {path}")
    _check_safetensors(weights)
    files = ([path / "config.json"] if (path / "config.json").exists() else []) + [weights]
    return TensorSource(str(path), {n: weights for n in _safetensors_names(weights)}, config, files)


def _open_sharded(index_path: Path, config: dict) -> TensorSource:
    try:
        index = json.loads(index_path.read_text())
        weight_map = index["weight_map"]
        if not isinstance(weight_map, dict):
            raise TypeError("weight_map is not an object")
    except (OSError, ValueError, KeyError, TypeError) as err:
        raise CheckpointError(f"{index_path} is not a valid safetensors index ({err})") from None
    shards = {}
    for shard in sorted(set(weight_map.values())):
        shard_path = index_path.parent / shard
        if not shard_path.exists():
            raise CheckpointNotFoundError(f"shard {shard} listed in {index_path} is missing")
        _refuse_pickle(shard_path)
        _check_safetensors(shard_path)
        shards[shard] = shard_path
    config_path = index_path.parent / "config.json"
    files = ([config_path] if config_path.exists() else []) + [index_path] + list(shards.values())
    return TensorSource(str(index_path.parent), {n: shards[s] for n, s in weight_map.items()}, config, files)


def _read_config(directory: Path) -> dict:
    path = directory / "config.json"
    if not path.exists():
        return {}
    try:
        config = json.loads(path.read_text())
    except (OSError, ValueError) as err:
        raise CheckpointError(f"{path} is not valid JSON ({err})") from None
    if not isinstance(config, dict):
        raise CheckpointError(f"{path} must hold a JSON object, got {type(config).__name__}")
    return config


def _refuse_pickle(path: Path) -> None:
    """Refuse pickled formats by name, before anything is read."""
    if path.suffix in PICKLE_SUFFIXES:
        raise CheckpointError(_pickle_message(path, path.suffix))


def _pickle_message(path: Path, what: str) -> str:
    return (f"{path} is a pickled checkpoint ({what}); it is never loaded, because unpickling can run "
            "arbitrary code. Convert it to safetensors first (e.g. safetensors.torch.save_file(state_dict, "
            "'model.safetensors') in a trusted environment)")


def _check_safetensors(path: Path) -> None:
    """A clear error for a file that is not safetensors, before the library's own; pickles by
    content are named as such. (Checked in this order because a valid header length can begin
    with the pickle opcode byte 0x80.)"""
    size = path.stat().st_size
    with open(path, "rb") as f:
        head = f.read(9)
    if len(head) == 9:
        (n,) = struct.unpack("<Q", head[:8])
        if n <= min(size - 8, MAX_HEADER_BYTES) and head[8:9] == b"{":
            return
    if head[:1] == b"\x80" and head[1:2] in (b"\x02", b"\x03", b"\x04", b"\x05"):
        raise CheckpointError(_pickle_message(path, "pickle data"))
    if head[:4] == b"PK\x03\x04":
        raise CheckpointError(_pickle_message(path, "a zip archive, as torch.save writes"))
    detail = f"only {size} bytes" if size < 9 else "corrupt or truncated header"
    raise CheckpointError(f"{path} is not a valid safetensors file ({detail})")


def _safetensors_names(path: Path) -> list[str]:
    try:
        with _safe_open(path) as f:
            return list(f.keys())
    except CheckpointError:
        raise
    except Exception as err:  # noqa: BLE001
        raise CheckpointError(f"{path} is not a valid safetensors file ({err})") from None


def _safe_open(path: Path):
    from safetensors import safe_open

    try:
        return safe_open(str(path), framework="pt")
    except Exception as err:  # noqa: BLE001 - corrupt headers, truncated data
        raise CheckpointError(f"{path} is not a valid safetensors file ({err})") from None


# -- layouts ---------------------------------------------------------------------------------

_PATTERNS = {
    "bilinear-lm": re.compile(r"^transformer\.h\.(\d+)\.mlp\.w\.weight$"),
    "bilinear-image": re.compile(r"^blocks\.(\d+)\.weight$"),
    "llama": re.compile(r"^model\.layers\.(\d+)\.mlp\.gate_proj\.weight$"),
}


def detect_layout(source: TensorSource) -> str:
    names = source.names
    for layout, pattern in _PATTERNS.items():
        if any(pattern.match(n) for n in names):
            return layout
    if "w" in source and "v" in source:
        return "plain"
    shown = ", ".join(names[:8]) + (", ..." if len(names) > 8 else "")
    raise CheckpointError(
        f"{source.name} matches no known bilinear layout (tensors: {shown or 'none'}); expected "
        "transformer.h.{i}.mlp.w.weight (bilinear LM), blocks.{i}.weight (bilinear image model), "
        "model.layers.{i}.mlp.gate_proj.weight (Llama-style) or w and v (plain)")


def _layer_count(source: TensorSource, layout: str, config_key: str) -> int:
    found = {int(m.group(1)) for n in source.names if (m := _PATTERNS[layout].match(n))}
    configured = source.config.get(config_key)
    return int(configured) if isinstance(configured, int) and configured > 0 else max(found) + 1


def _layer_index(index, n_layers: int, source: TensorSource) -> int:
    if index is None:
        if n_layers == 1:
            return 0
        raise CheckpointError(f"{source.name} has {n_layers} layers; choose one with layer= (--layer 0..{n_layers - 1})")
    if isinstance(index, bool) or not isinstance(index, int):
        raise CheckpointError(f"layer must be an int, got {type(index).__name__}")
    if not -n_layers <= index < n_layers:
        raise CheckpointError(f"layer {index} is out of range: {source.name} has {n_layers} layer(s) (valid: 0..{n_layers - 1})")
    return index % n_layers


def _packed_shapes(source: TensorSource, name: str, d: int | None, h: int | None) -> tuple[int, int]:
    """(h, d) of a packed (2h, d) weight, from the config when it says, else from the tensor."""
    if name not in source:
        raise CheckpointError(f"tensor {name!r} is missing from {source.name} (expected shape "
                              f"{_fmt_shape((None if h is None else 2 * h, d))})")
    shape = source.shape(name)
    if h is None or d is None:
        if len(shape) != 2 or shape[0] % 2:
            raise CheckpointError(f"tensor {name!r} in {source.name} has shape {_fmt_shape(shape)}; expected (2h, d), "
                                  "a packed [W; V] with an even number of rows")
        h = shape[0] // 2 if h is None else h
        d = shape[1] if d is None else d
    return h, d


def _load_bilinear_lm(source, index, *, allow_gated, fold_embedding, fold_norms) -> LoadedLayer:
    cfg = source.config
    n_layers = _layer_count(source, "bilinear-lm", "n_layer")
    i = _layer_index(index, n_layers, source)
    prefix = f"transformer.h.{i}.mlp"
    h, d = _packed_shapes(source, f"{prefix}.w.weight", _cfg_int(cfg, "d_model"), _cfg_int(cfg, "d_hidden"))
    w = source.get(f"{prefix}.w.weight", (2 * h, d))
    p_name = f"{prefix}.p.weight" if f"{prefix}.p.weight" in source or f"{prefix}.o.weight" not in source else f"{prefix}.o.weight"
    p = source.get(p_name, (d, h))
    bias = source.optional(f"{prefix}.w.bias", (2 * h,))
    notes = []
    if f"{prefix}.p.bias" in source:
        notes.append(f"{prefix}.p.bias adds a constant to the output; it is not part of the quadratic form")
    if fold_norms:
        w = _fold_input_norm(source, w, f"transformer.h.{i}.n2.weight", d, notes)
    layer = BilinearLayer.from_packed(w, p, bias)
    readout, readout_name = _unembedding(source, ("lm_head.weight", "transformer.wte.weight"), d,
                                         "transformer.n_f.weight" if fold_norms else None, notes)
    return LoadedLayer(layer, "bilinear-lm", i, n_layers, readout, readout_name, notes=notes, config=cfg)


def _load_bilinear_image(source, index, *, allow_gated, fold_embedding, fold_norms) -> LoadedLayer:
    cfg = source.config
    n_layers = _layer_count(source, "bilinear-image", "n_layer")
    i = _layer_index(index, n_layers, source)
    d_hidden = _cfg_int(cfg, "d_hidden")
    h, d = _packed_shapes(source, f"blocks.{i}.weight", d_hidden, d_hidden)
    w = source.get(f"blocks.{i}.weight", (2 * h, d))
    bias = source.optional(f"blocks.{i}.bias", (2 * h,))
    notes = []
    if fold_embedding:
        if i != 0:
            raise CheckpointError(f"fold_embedding needs layer 0 (the block that reads the embedding), got layer {i}")
        embed = source.get("embed.weight", (d, _cfg_int(cfg, "d_input")), " (the input embedding to fold)")
        w = w.to(torch.promote_types(w.dtype, embed.dtype)) @ embed.to(torch.promote_types(w.dtype, embed.dtype))
        notes.append(f"embed.weight folded into W and V: the layer acts on the {embed.shape[1]}-dim input")
    layer = BilinearLayer.from_packed(w, None, bias)
    readout = source.optional("head.weight", (_cfg_int(cfg, "d_output"), h))
    if readout is not None and i != n_layers - 1 and not cfg.get("residual", False):
        notes.append(f"head.weight reads the last block's output; block {i} feeds later blocks, so head rows "
                     "describe it only as a direct readout")
    return LoadedLayer(layer, "bilinear-image", i, n_layers, readout,
                       "head.weight" if readout is not None else None, notes=notes, config=cfg)


def _load_llama(source, index, *, allow_gated, fold_embedding, fold_norms) -> LoadedLayer:
    cfg = source.config
    n_layers = _layer_count(source, "llama", "num_hidden_layers")
    i = _layer_index(index, n_layers, source)
    prefix = f"model.layers.{i}.mlp"
    notes = []
    act = cfg.get("hidden_act", cfg.get("hidden_activation"))
    if act is None or str(act).lower() not in LINEAR_ACTIVATIONS:
        why = (f"hidden_act is {act!r}" if act is not None
               else "no config.json gives its hidden_act")
        if not allow_gated:
            raise CheckpointError(
                f"{source.name}: {why}, so {prefix} computes act(gate_proj x) ⊙ (up_proj x), which is not a "
                "quadratic form in x: its eigendecomposition would not explain the layer. Only hidden_act "
                "\"linear\" (a bilinear layer) is decomposed exactly. To decompose the bilinear part "
                "(gate_proj x) ⊙ (up_proj x) anyway, pass allow_gated=True (--allow-gated)")
        notes.append(f"{why}: decomposing the bilinear part (gate_proj x) ⊙ (up_proj x) with the activation "
                     "removed, which is not the function the model computes")
    d, h = _cfg_int(cfg, "hidden_size"), _cfg_int(cfg, "intermediate_size")
    if d is None or h is None:
        h, d = source.shape(f"{prefix}.gate_proj.weight") if f"{prefix}.gate_proj.weight" in source else (h, d)
    w = source.get(f"{prefix}.gate_proj.weight", (h, d))
    v = source.get(f"{prefix}.up_proj.weight", (h, d))
    p = source.get(f"{prefix}.down_proj.weight", (d, h))
    w_bias = source.optional(f"{prefix}.gate_proj.bias", (h,))
    v_bias = source.optional(f"{prefix}.up_proj.bias", (h,))
    if f"{prefix}.down_proj.bias" in source:
        notes.append(f"{prefix}.down_proj.bias adds a constant to the output; it is not part of the quadratic form")
    if fold_norms:
        gain = source.get(f"model.layers.{i}.post_attention_layernorm.weight", (d,), " (the norm gain to fold)")
        w, v = w * gain, v * gain
        notes.append(f"model.layers.{i}.post_attention_layernorm.weight folded into W and V")
    layer = BilinearLayer(w, v, p, w_bias, v_bias)
    readout, readout_name = _unembedding(source, ("lm_head.weight", "model.embed_tokens.weight"), d,
                                         "model.norm.weight" if fold_norms else None, notes)
    return LoadedLayer(layer, "llama", i, n_layers, readout, readout_name, notes=notes, config=cfg)


def _load_plain(source, index, *, allow_gated, fold_embedding, fold_norms) -> LoadedLayer:
    if index not in (None, 0):
        raise CheckpointError(f"layer {index} is out of range: {source.name} holds a single layer (w, v, p); omit the layer or use 0")
    w = source.get("w")
    if w.ndim != 2:
        raise CheckpointError(f"tensor 'w' in {source.name} has shape {_fmt_shape(tuple(w.shape))}; expected (h, d)")
    h, d = w.shape
    v = source.get("v", (h, d), " (the shape of 'w')")
    p = source.get("p", (None, h)) if "p" in source else None
    w_bias = source.optional("w_bias", (h,))
    v_bias = source.optional("v_bias", (h,))
    layer = BilinearLayer(w, v, p, w_bias, v_bias)
    return LoadedLayer(layer, "plain", None, 1, None, None, config=source.config)


def _fold_input_norm(source, packed_w, name, d, notes):
    gain = source.get(name, (d,), " (the norm gain to fold)")
    notes.append(f"{name} folded into W and V")
    return packed_w * gain


def _unembedding(source, names, d, final_norm, notes):
    """The first of `names` present, as readout rows (vocab, d), with the final norm's gain folded
    in when `final_norm` names it."""
    for name in names:
        if name in source:
            rows = source.get(name, (None, d))
            if name != names[0]:
                notes.append(f"no {names[0]}: using the tied {name} as unembedding")
            if final_norm is not None:
                gain = source.get(final_norm, (d,), " (the final norm gain to fold)")
                rows = rows * gain
                notes.append(f"{final_norm} folded into the unembedding rows")
                return rows, f"{name} * {final_norm}"
            return rows, name
    return None, None


def _cfg_int(cfg: dict, key: str) -> int | None:
    value = cfg.get(key)
    return value if isinstance(value, int) and not isinstance(value, bool) and value > 0 else None


def _float_dtype(dtype):
    if dtype is None or isinstance(dtype, torch.dtype):
        return dtype
    resolved = getattr(torch, str(dtype), None)
    if not isinstance(resolved, torch.dtype) or not resolved.is_floating_point:
        raise ValueError(f"dtype must be a floating-point torch dtype name such as 'float32', got {dtype!r}")
    return resolved


def _fmt_shape(shape) -> str:
    if shape is None:
        return "?"
    inner = ", ".join("?" if s is None else str(s) for s in shape)
    return f"({inner},)" if len(shape) == 1 else f"({inner})"
