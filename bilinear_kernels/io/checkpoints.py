"""Load one bilinear layer, and the readout that gives its output directions, from a checkpoint
(or a whole image model as a network).

Weights are read from safetensors files (lazily: just the tensors asked for) or from torch.save
files (.pt, .bin, .pth, .ckpt) through torch.load(weights_only=True) only, which refuses every
object but tensors and plain containers: a pickle is never fully unpickled. FIFOs, devices and
other non-regular files are refused before they are opened. Layouts understood:

  bilinear-lm     config.json + weights of the published bilinear transformers:
                  transformer.h.{i}.mlp.w.weight (2h, d) packed [W; V], transformer.h.{i}.mlp.p.weight
                  (d, h) (older files: mlp.o.weight), optional mlp.w.bias (2h,), lm_head.weight /
                  transformer.wte.weight (vocab, d) as readout. A config that says the MLP is gated
                  ("gate": "silu", or true in the arXiv 2406.03947 code, where it is a ReLU) or not
                  bilinear ("bilinear": false) is refused, as is a model without config.json, unless
                  `allow_gated=True` (then only the bilinear part (W x) ⊙ (V x) is decomposed).
  bilinear-image  the published image classifiers: embed.weight (d, d_input), blocks.{i}.weight
                  (2d, d) packed, optional blocks.{i}.bias, head.weight (classes, d) as readout.
                  The blocks have no output projection (P = identity).
  llama           Hugging Face Llama-style models: model.layers.{i}.mlp.{gate,up,down}_proj.weight,
                  lm_head.weight or the tied model.embed_tokens.weight as readout. Only
                  hidden_act "linear" is a bilinear layer; gated activations are refused unless
                  `allow_gated=True` (then the activation is dropped and (gate x) ⊙ (up x) is used).
  plain           a file with w, v (h, d), optional p (o, h), w_bias, v_bias (h,).

load_network reads a whole image model (any n_layer, residual or not, biases) as a BilinearNetwork,
for decomposition through depth; it refuses every other layout.

A sharded checkpoint (model.safetensors.index.json, pytorch_model.bin.index.json) is read shard by
shard; a folder holding models in subfolders (<repo>/<model-name>/config.json, as on the hub)
names its choices.
"""
from __future__ import annotations

import hashlib
import json
import re
import stat
import struct
from dataclasses import dataclass, field
from pathlib import Path

import torch

from ..layer import BilinearLayer
from ..network.network import BilinearNetwork

SAFETENSORS_SUFFIX = ".safetensors"
# torch.save files, read with torch.load(weights_only=True) only
TORCH_SUFFIXES = (".bin", ".pt", ".pth", ".ckpt", ".pkl", ".pickle")
# where training checkpoints keep the state dict
STATE_DICT_KEYS = ("state_dict", "model", "model_state_dict")
LAYOUTS = ("bilinear-lm", "bilinear-image", "llama", "plain")
# activations under which gate_proj x ⊙ up_proj x is the layer itself
LINEAR_ACTIVATIONS = ("linear", "identity", "none")
# the largest header the safetensors library reads (its MAX_HEADER_SIZE)
MAX_HEADER_BYTES = 100_000_000
# config.json and index files are small; anything bigger is not one
MAX_JSON_BYTES = 64 * 2**20


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
    """Load bilinear layer `layer` of the checkpoint at `path` (a directory, a weights file or an
    index).

    allow_gated     accept a gated (SiLU, GELU, ReLU...) MLP — a Llama-style one, a bilinear LM
                    whose config gives a gate, or one without config.json to say — and decompose
                    its bilinear part (gate x) ⊙ (up x), (W x) ⊙ (V x); a note says so, since that
                    is not the function the model computes
    fold_embedding  image models, layer 0: fold embed.weight into W and V, so the layer acts on
                    the raw input (pixels) instead of the embedding
    fold_norms      language models: fold the gain of the norm before the MLP into W and V, and the
                    final norm's gain into the readout rows, so the layer acts on the normalized
                    (unscaled) residual stream; the research code's own model classes offer the same
                    as fold_norms(). A norm with a non-zero bias is refused (folding a bias is not a
                    pure gain); a norm without parameters makes folding the identity, and a note says so
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
    loaded.notes[:0] = source.notes
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
    """Named tensors of one checkpoint (one file or several shards), read one at a time.

    Safetensors files are read lazily (only the tensors asked for); torch.save files are read
    once, whole, by torch.load(weights_only=True) and kept while the source lives."""

    def __init__(self, name: str, weight_map: dict[str, Path], config: dict, files: list[Path],
                 notes: list[str] | None = None, loaded: dict[Path, dict] | None = None):
        self.name = name  # how the checkpoint is called in messages
        self.weight_map = weight_map
        self.config = config
        self.files = files  # config / index files, then the weight files
        self.notes = list(notes or [])  # what opening the checkpoint decided, for the user
        self.read: set[Path] = set()  # weight files a tensor was read from
        self._state_dicts: dict[Path, dict] = dict(loaded or {})  # torch.save files, loaded once
        self._torch_files = {f for f in set(weight_map.values()) if _file_format(f) == "torch"}

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
        path = self.weight_map[name]
        if path in self._torch_files:
            return tuple(self._state_dict(path)[name].shape)
        try:
            with _safe_open(path) as f:
                return tuple(f.get_slice(name).get_shape())
        except CheckpointError:
            raise
        except Exception as err:  # noqa: BLE001 - e.g. an index that lists a tensor its shard lacks
            raise CheckpointError(f"could not read tensor {name!r} from {path}: {_one_line(err)}") from None

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
        path = self.weight_map[name]
        if path in self._torch_files:
            t = self._state_dict(path)[name]
        else:
            try:
                with _safe_open(path) as f:
                    t = f.get_tensor(name)
            except CheckpointError:
                raise
            except Exception as err:  # noqa: BLE001 - the library's errors name no file
                raise CheckpointError(f"could not read tensor {name!r} from {path}: {_one_line(err)}") from None
        self.read.add(path)
        if not t.is_floating_point():
            raise CheckpointError(f"tensor {name!r} in {self.name} has dtype {t.dtype}; expected a floating-point weight")
        return t

    def optional(self, name: str, expected: tuple | None = None, why: str = "") -> torch.Tensor | None:
        return self.get(name, expected, why) if name in self.weight_map else None

    def _state_dict(self, path: Path) -> dict:
        if path not in self._state_dicts:
            self._state_dicts[path], _ = load_torch_state_dict(path)
        return self._state_dicts[path]


def open_checkpoint(path) -> TensorSource:
    """Find the config and weight files of a checkpoint directory or file.

    Weights are safetensors files, or torch.save files (.pt, .bin, ...) read only through
    torch.load(weights_only=True), which refuses anything but tensors and plain containers; a
    pickle is never fully unpickled."""
    path = Path(path)
    if not path.exists():
        raise CheckpointNotFoundError(f"checkpoint not found: {path}")
    if path.is_dir():
        return _open_directory(path)
    _require_regular_file(path, "checkpoint")
    if path.name.endswith(".index.json"):
        return _open_sharded(path, _read_config(path.parent))
    if path.suffix == ".json":
        return _open_directory(path.parent)
    config_path = path.parent / "config.json"
    is_model_file = path.name in ("model.safetensors", "pytorch_model.bin")
    config = _read_config(path.parent) if is_model_file or config_path.exists() else {}
    files = ([config_path] if config else []) + [path]
    names, notes, loaded = _weight_names(path)
    return TensorSource(str(path), {n: path for n in names}, config, files, notes, loaded)


def _open_directory(path: Path) -> TensorSource:
    config = _read_config(path)
    config_files = [path / "config.json"] if (path / "config.json").exists() else []
    # the standard names first (safetensors before pickles), then a single weights file of any name
    if (path / "model.safetensors").exists():
        weights = path / "model.safetensors"
    elif (path / "model.safetensors.index.json").exists():
        return _open_sharded(path / "model.safetensors.index.json", config)
    elif (path / "pytorch_model.bin").exists():
        weights = path / "pytorch_model.bin"
    elif (path / "pytorch_model.bin.index.json").exists():
        return _open_sharded(path / "pytorch_model.bin.index.json", config)
    elif candidates := sorted(p for p in path.iterdir() if p.suffix in (SAFETENSORS_SUFFIX, *TORCH_SUFFIXES)):
        if len(candidates) > 1:
            raise CheckpointError(f"{path} holds several weight files ({', '.join(p.name for p in candidates)}) "
                                  "and no model.safetensors or pytorch_model.bin; pass the file to use")
        weights = candidates[0]
    else:
        return _open_model_subfolder(path)
    _require_regular_file(weights, "weights file")
    names, notes, loaded = _weight_names(weights)
    return TensorSource(str(path), {n: weights for n in names}, config, config_files + [weights], notes, loaded)


def _open_model_subfolder(path: Path) -> TensorSource:
    """A folder that holds models in subfolders, as repositories on the hub lay them out
    (<repo>/<model-name>/config.json): the only one, else a list of the choices."""
    models = sorted(p for p in path.iterdir() if p.is_dir() and _looks_like_model(p))
    if len(models) == 1:
        source = _open_directory(models[0])
        source.notes.insert(0, f"{path} holds one model, in its subfolder {models[0].name}: reading that")
        return source
    if models:
        shown = ", ".join(str(m) for m in models[:20]) + (", ..." if len(models) > 20 else "")
        raise CheckpointError(f"{path} holds {len(models)} models in subfolders; pass the one to decompose: {shown}")
    raise CheckpointNotFoundError(f"no weights in {path}: expected model.safetensors (or another .safetensors "
                                  "file), a sharded index, pytorch_model.bin / a .pt file, or subfolders holding models")


def _looks_like_model(folder: Path) -> bool:
    try:
        return any(p.name == "config.json" or p.suffix in (SAFETENSORS_SUFFIX, *TORCH_SUFFIXES)
                   for p in folder.iterdir())
    except OSError:
        return False


def _open_sharded(index_path: Path, config: dict) -> TensorSource:
    _require_regular_file(index_path, "index")
    try:
        index = json.loads(_read_small_text(index_path))
    except RecursionError:
        raise CheckpointError(f"{index_path} is not a valid index: its JSON is nested too deeply") from None
    except (OSError, ValueError) as err:
        raise CheckpointError(f"{index_path} is not a valid index ({_one_line(err)})") from None
    weight_map = index.get("weight_map") if isinstance(index, dict) else None
    if not isinstance(weight_map, dict) or not weight_map:
        raise CheckpointError(f"{index_path} is not a valid index: it needs a \"weight_map\" object mapping "
                              "each tensor name to the file that holds it")
    for name, shard in weight_map.items():
        if not isinstance(shard, str) or not shard or Path(shard).name != shard:
            raise CheckpointError(f"{index_path} is not a valid index: its weight_map gives {shard!r} for tensor "
                                  f"{name!r}; expected the name of a file in {index_path.parent}")
    shards = {}
    for shard in sorted(set(weight_map.values())):
        shard_path = index_path.parent / shard
        if not shard_path.exists():
            raise CheckpointNotFoundError(f"shard {shard} listed in {index_path} is missing")
        _require_regular_file(shard_path, "shard")
        if _file_format(shard_path) == "safetensors":
            _check_safetensors(shard_path)
        shards[shard] = shard_path
    config_path = index_path.parent / "config.json"
    files = ([config_path] if config_path.exists() else []) + [index_path] + list(shards.values())
    notes = ([f"{index_path.name}: shards read with torch.load(weights_only=True)"]
             if any(_file_format(p) == "torch" for p in shards.values()) else [])
    return TensorSource(str(index_path.parent), {n: shards[s] for n, s in weight_map.items()}, config, files, notes)


def _read_config(directory: Path) -> dict:
    path = directory / "config.json"
    if not path.exists():
        return {}
    _require_regular_file(path, "config")
    try:
        config = json.loads(_read_small_text(path))
    except RecursionError:
        raise CheckpointError(f"{path} is not valid JSON for a config: it is nested too deeply") from None
    except (OSError, ValueError) as err:
        raise CheckpointError(f"{path} is not valid JSON ({_one_line(err)})") from None
    if not isinstance(config, dict):
        raise CheckpointError(f"{path} must hold a JSON object, got {type(config).__name__}")
    return config


def _read_small_text(path: Path) -> str:
    """A JSON file's text; configs and indexes are kilobytes to a few megabytes, so anything past
    MAX_JSON_BYTES is not one (and is not read into memory)."""
    size = path.stat().st_size
    if size > MAX_JSON_BYTES:
        raise CheckpointError(f"{path} is {size} bytes; a config or index file is at most {MAX_JSON_BYTES} bytes")
    return path.read_text(encoding="utf-8")


def _require_regular_file(path: Path, what: str) -> None:
    """Refuse FIFOs, devices and sockets before anything opens them (opening a FIFO blocks)."""
    try:
        mode = path.stat().st_mode
    except OSError as err:
        raise CheckpointError(f"cannot read the {what} {path}: {err.strerror}") from None
    if not stat.S_ISREG(mode):
        kind = ("a FIFO (named pipe)" if stat.S_ISFIFO(mode) else "a device" if stat.S_ISCHR(mode) or stat.S_ISBLK(mode)
                else "a socket" if stat.S_ISSOCK(mode) else "a directory" if stat.S_ISDIR(mode) else "not a regular file")
        raise CheckpointError(f"the {what} {path} is {kind}; expected a regular file")


def _file_format(path: Path) -> str:
    """'safetensors' or 'torch' (a torch.save file: a zip archive or a legacy pickle), from the
    name and the first bytes."""
    if path.suffix == SAFETENSORS_SUFFIX:
        return "safetensors"
    if path.suffix in TORCH_SUFFIXES:
        return "torch"
    with open(path, "rb") as f:
        head = f.read(9)
    return "torch" if _is_zip(head) or _is_pickle(head) else "safetensors"


def _weight_names(path: Path) -> tuple[list[str], list[str], dict[Path, dict]]:
    """The tensor names in a weights file, notes on how it was read, and a torch.save file's
    tensors (read whole once, so they are kept rather than read again)."""
    if _file_format(path) == "torch":
        tensors, notes = load_torch_state_dict(path)
        return list(tensors), [f"{path.name} read with torch.load(weights_only=True)", *notes], {path: tensors}
    _check_safetensors(path)
    return _safetensors_names(path), [], {}


def load_torch_state_dict(path) -> tuple[dict[str, torch.Tensor], list[str]]:
    """The named tensors of a torch.save file, through torch.load(weights_only=True) only: it
    refuses every object but tensors and plain containers, so nothing in the file runs. A dict
    holding the state dict under "state_dict" or "model" (training checkpoints) is unwrapped."""
    import pickle
    import warnings

    path = Path(path)
    _require_regular_file(path, "weights file")
    with open(path, "rb") as f:
        zipped = _is_zip(f.read(4))
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # e.g. "Detected pickle protocol 4": the error says enough
            obj = torch.load(path, map_location="cpu", weights_only=True, mmap=zipped)
    except pickle.UnpicklingError as err:
        raise CheckpointError(
            f"{path}: torch.load(weights_only=True) refused it ({_weights_only_reason(err)}). Only tensors and "
            "plain containers are read, and the file is never fully unpickled, because unpickling can run "
            "arbitrary code. In a trusted environment, save its state_dict() with torch.save, or convert it "
            "with safetensors.torch.save_file") from None
    except Exception as err:  # noqa: BLE001 - corrupt zips, truncated files, wrong formats
        raise CheckpointError(f"{path} could not be read by torch.load(weights_only=True): {_one_line(err)}") from None
    return _state_dict_of(obj, path)


def _state_dict_of(obj, path: Path) -> tuple[dict[str, torch.Tensor], list[str]]:
    def named_tensors(d):
        return isinstance(d, dict) and bool(d) and all(isinstance(k, str) and isinstance(v, torch.Tensor)
                                                       for k, v in d.items())

    if named_tensors(obj):
        return dict(obj), []
    if isinstance(obj, dict):
        for key in STATE_DICT_KEYS:
            if named_tensors(obj.get(key)):
                return dict(obj[key]), [f"{path.name}: using the state dict under its {key!r} entry"]
        keys = ", ".join(map(repr, list(obj)[:8])) + (", ..." if len(obj) > 8 else "")
        raise CheckpointError(f"{path} holds a dict that is not a state dict of named tensors (keys: {keys or 'none'}); "
                              f"expected {{name: tensor}}, or one under {' or '.join(map(repr, STATE_DICT_KEYS))}")
    raise CheckpointError(f"{path} holds a {type(obj).__name__}, not a state dict of named tensors")


def _weights_only_reason(err: Exception) -> str:
    """The informative sentence of torch's long weights_only message (which global or opcode)."""
    text = str(err)
    found = re.search(r"WeightsUnpickler error:\s*(.+?)(?:\.\s|\.$|\n\s*\n|$)", text, flags=re.S)
    if found and found.group(1).strip():
        return " ".join(found.group(1).split())
    skip = ("weights only load failed", "(1)", "(2)", "please file an issue", "check the documentation")
    kept = [line.strip() for line in text.splitlines() if line.strip() and not line.strip().lower().startswith(skip)]
    return " ".join(" ".join(kept).split()).rstrip(".") or "it holds objects other than tensors"


def _is_zip(head: bytes) -> bool:
    return head[:4] == b"PK\x03\x04"


def _is_pickle(head: bytes) -> bool:
    return head[:1] == b"\x80" and head[1:2] in (b"\x02", b"\x03", b"\x04", b"\x05")


def _check_safetensors(path: Path) -> None:
    """A clear error for a file that is not safetensors, before the library's own; pickles by
    content are named as such. (Checked in this order because a valid header length can begin
    with the pickle opcode byte 0x80.)"""
    _require_regular_file(path, "weights file")
    size = path.stat().st_size
    with open(path, "rb") as f:
        head = f.read(9)
    if len(head) == 9:
        (n,) = struct.unpack("<Q", head[:8])
        if n <= size - 8 and head[8:9] == b"{":
            if n > MAX_HEADER_BYTES:
                raise CheckpointError(
                    f"{path} has a safetensors header of {n} bytes; the safetensors library reads headers of at "
                    f"most {MAX_HEADER_BYTES} bytes, so its tensors cannot be read. Save it again with less "
                    "metadata (the header holds the tensor names and the file's metadata)")
            return
    if _is_pickle(head) or _is_zip(head):
        what = "a zip archive" if _is_zip(head) else "pickle data"
        raise CheckpointError(f"{path} is named .safetensors but holds {what}, "
                              "as torch.save writes; rename it to .pt to read it with torch.load(weights_only=True)")
    detail = f"only {size} bytes" if size < 9 else "corrupt or truncated header"
    raise CheckpointError(f"{path} is not a valid safetensors file ({detail})")


def _safetensors_names(path: Path) -> list[str]:
    try:
        with _safe_open(path) as f:
            return list(f.keys())
    except CheckpointError:
        raise
    except Exception as err:  # noqa: BLE001
        raise CheckpointError(f"{path} is not a valid safetensors file ({_one_line(err)})") from None


def _safe_open(path: Path):
    from safetensors import safe_open

    try:
        return safe_open(str(path), framework="pt")
    except Exception as err:  # noqa: BLE001 - corrupt headers, truncated data
        raise CheckpointError(f"{path} is not a valid safetensors file ({_one_line(err)})") from None


def _one_line(err) -> str:
    return " ".join(str(err).split())


# -- layouts ---------------------------------------------------------------------------------

_PATTERNS = {
    "bilinear-lm": re.compile(r"^transformer\.h\.(\d+)\.mlp\.w\.weight$"),
    "bilinear-image": re.compile(r"^blocks\.(\d+)\.weight$"),
    "llama": re.compile(r"^model\.layers\.(\d+)\.mlp\.gate_proj\.weight$"),
}


def detect_layout(source: TensorSource) -> str:
    names = source.names
    found = [layout for layout, pattern in _PATTERNS.items() if any(pattern.match(n) for n in names)]
    if len(found) > 1:
        raise CheckpointError(f"{source.name} holds the tensors of several layouts ({', '.join(found)}), so which "
                              "layer to decompose is ambiguous; save the model's weights on their own")
    if found:
        return found[0]
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
    notes = []
    _check_bilinear_lm_gate(source, prefix, allow_gated, notes)
    h, d = _packed_shapes(source, f"{prefix}.w.weight", _cfg_int(cfg, "d_model"), _cfg_int(cfg, "d_hidden"))
    w = source.get(f"{prefix}.w.weight", (2 * h, d))
    p_name = f"{prefix}.p.weight" if f"{prefix}.p.weight" in source or f"{prefix}.o.weight" not in source else f"{prefix}.o.weight"
    p = source.get(p_name, (d, h))
    bias = source.optional(f"{prefix}.w.bias", (2 * h,))
    if f"{prefix}.p.bias" in source:
        notes.append(f"{prefix}.p.bias adds a constant to the output; it is not part of the quadratic form")
    final = None
    if fold_norms:
        gain, _ = _norm_gain(source, f"transformer.h.{i}.n2", d, notes)
        if gain is not None:
            w = w * gain
        final = _norm_gain(source, "transformer.n_f", d, notes, readout=True)
    layer = BilinearLayer.from_packed(w, p, bias)
    readout, readout_name = _unembedding(source, ("lm_head.weight", "transformer.wte.weight"), d, final, notes)
    return LoadedLayer(layer, "bilinear-lm", i, n_layers, readout, readout_name, notes=notes, config=cfg)


# the activation the 2406.03947 code applies when its config says "gate": true
_SNAPSHOT_BOOL_GATE = "relu"
# the early "mlp" config field of that code: "blp" bilinear, "glp" GELU-gated, "mlp" a plain GELU MLP
_SNAPSHOT_MLP_KINDS = {"blp": None, "glp": "gelu"}


def _check_bilinear_lm_gate(source, prefix, allow_gated, notes) -> None:
    """Refuse an MLP that its config says is not bilinear: gated ("gate": an activation name, or
    true), a plain MLP ("bilinear": false), or one without config that could be either. With
    allow_gated a gated MLP is read and the note says that only its bilinear part is decomposed."""
    cfg = source.config
    kind = cfg.get("mlp")
    if cfg.get("bilinear") is False or (isinstance(kind, str) and kind not in _SNAPSHOT_MLP_KINDS):
        said = '"bilinear": false' if cfg.get("bilinear") is False else f'"mlp": {kind!r}'
        raise CheckpointError(
            f"{source.name}: config.json says {said}, so {prefix} computes act(W x) with a single projection: "
            "it has no bilinear part to decompose (allow_gated does not change that)")
    gate = cfg.get("gate")
    if gate is True:
        gate = _SNAPSHOT_BOOL_GATE
    elif gate is False or gate is None:
        gate = _SNAPSHOT_MLP_KINDS.get(kind) if isinstance(kind, str) else None
    if not cfg:
        why, verb, computes = ("there is no config.json to say whether the MLP is gated", "may compute",
                               "act(W x) ⊙ (V x) for some activation")
    elif gate is not None:
        said = (f'"gate": {json.dumps(cfg["gate"])}' if cfg.get("gate") not in (None, False)
                else f'"mlp": {json.dumps(kind)}')
        why, verb, computes = f"config.json gives {said}", "computes", f"{gate}(W x) ⊙ (V x)"
    else:
        if "gate" not in cfg and "bilinear" not in cfg and "mlp" not in cfg:
            notes.append(f"{source.name}: config.json does not say whether the MLP is gated (no \"gate\" or "
                         "\"bilinear\"); read as bilinear")
        return
    bilinear_part = f"the bilinear part (W x) ⊙ (V x) of {prefix} (W, V: the halves of {prefix}.w.weight)"
    if not allow_gated:
        raise CheckpointError(
            f"{source.name}: {why}, so {prefix} {verb} {computes}, which is not a quadratic form in x: its "
            f"eigendecomposition would not explain the layer. To decompose {bilinear_part} anyway, pass "
            "allow_gated=True (--allow-gated)")
    notes.append(f"{why}: decomposing only {bilinear_part}, with the activation removed; the model {verb} "
                 f"{computes}, which this does not explain")


def _norm_gain(source, norm, d, notes, *, readout=False) -> tuple[torch.Tensor | None, str | None]:
    """The gain of the norm module `norm` (e.g. transformer.h.0.n2) to fold and its name:
    `norm.norm.weight` (the 2406.03947 checkpoints, whose norm wraps an RMSNorm) or `norm.weight`
    (older research code). (None, None), with a note,
    when the norm has no parameters (the later models' RMSNorm): folding is then the identity.
    A non-zero bias is refused: it adds a constant after the gain, which no gain can fold."""
    where = "the unembedding rows" if readout else "W and V"
    for bias_name in (f"{norm}.norm.bias", f"{norm}.bias"):
        if bias_name in source:
            bias = source.get(bias_name, (d,), " (the norm's bias)")
            if bool((bias != 0).any()):
                raise CheckpointError(
                    f"fold_norms: {bias_name} is not zero (largest |entry| {float(bias.abs().max()):.3g}): that norm "
                    "adds a constant after its gain, so folding it is not a pure gain. Decompose without fold_norms "
                    "(the layer then acts on the norm's output)")
    gains = [n for n in (f"{norm}.norm.weight", f"{norm}.weight") if n in source]
    if len(gains) > 1:
        raise CheckpointError(f"fold_norms: {source.name} holds both {gains[0]} and {gains[1]}; which is the gain is ambiguous")
    if gains:
        gain = source.get(gains[0], (d,), " (the norm gain to fold)")
        notes.append(f"{gains[0]} folded into {where}")
        return gain, gains[0]
    unknown = [n for n in source.names if n.startswith(norm + ".")]
    if unknown:
        raise CheckpointError(f"fold_norms: {norm} holds {', '.join(unknown)}, but no gain named {norm}.norm.weight "
                              f"or {norm}.weight; it is not a norm this loader can fold")
    normalization = source.config.get("normalization", True)
    what = "the model has no normalization" if normalization in (None, False, "none") else "its RMSNorm has no parameters"
    notes.append(f"fold_norms: {norm} has no gain in {source.name} ({what}), so folding it into {where} is the identity")
    return None, None


def _load_bilinear_image(source, index, *, allow_gated, fold_embedding, fold_norms) -> LoadedLayer:
    cfg = source.config
    n_layers = _layer_count(source, "bilinear-image", "n_layer")
    i = _layer_index(index, n_layers, source)
    d_hidden = _cfg_int(cfg, "d_hidden")
    h, d = _packed_shapes(source, f"blocks.{i}.weight", d_hidden, d_hidden)
    w = source.get(f"blocks.{i}.weight", (2 * h, d))
    bias = source.optional(f"blocks.{i}.bias", (2 * h,))
    notes = []
    if not cfg:
        notes.append(f"{source.name} has no config.json: read as a bilinear image model from its tensor names "
                     f"(blocks.{{i}}.weight), block {i} as (W x) ⊙ (V x) with no output projection, sizes from "
                     "the tensor shapes")
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


@dataclass
class LoadedNetwork:
    """A whole published image model as a BilinearNetwork, and what was read to build it.

    network   the BilinearNetwork (embedding, blocks, head, residual, biases)
    layout    "bilinear-image"
    files     the files read (config and weights), for hashing
    notes     what was read and decided (layers, residual, biases), for the user
    """

    network: BilinearNetwork
    layout: str
    files: list[Path] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    config: dict = field(default_factory=dict)

    def describe(self) -> dict:
        """JSON-able summary for metadata."""
        net = self.network
        return {"layout": self.layout, "n_layers": net.n_layers, "d_in": net.d_in, "d_stream": net.d_stream,
                "d_out": net.d_out, "residual": net.residual, "bias": net.has_bias or net.head_bias is not None,
                "readout": "head.weight" if net.head is not None else None, "notes": list(self.notes)}


# the tensors of the published image model; anything else (a norm, a gate) is not read silently
_IMAGE_TENSOR = re.compile(r"^(embed\.(weight|bias)|head\.(weight|bias)|blocks\.\d+\.(weight|bias))$")


def load_network(path, *, residual: bool | None = None, device=None, dtype=None) -> LoadedNetwork:
    """The whole published image model at `path` (any n_layer; the config.json + model.safetensors of
    both published codes, or a weights file) as a BilinearNetwork: x = embed.weight z, each block
    (W x + a) ⊙ (V x + b) from its packed blocks.{i}.weight (and .bias), residual or not as
    config.json says, then head.weight (and head.bias when there is one).

    residual   needed when there is no config.json to say (the two readings are different functions);
               when both are given they must agree
    Other layouts (language models, Llama-style, plain layer files) are refused: their layers are
    not a stack on one stream from pixels to classes (decompose them one layer at a time)."""
    source = open_checkpoint(path)
    layout = detect_layout(source)
    if layout != "bilinear-image":
        raise CheckpointError(
            f"load_network reads the published image models (embed.weight, blocks.{{i}}.weight, head.weight); "
            f"{source.name} is a {layout} checkpoint, whose layers are not one bilinear stack from input to output: "
            "decompose its layers one at a time (layer=, --layer)")
    if residual is not None and not isinstance(residual, bool):
        raise TypeError(f"residual must be a bool or None, got {residual!r}")
    cfg = source.config
    notes = list(source.notes)
    unknown = [n for n in source.names if not _IMAGE_TENSOR.match(n)]
    if unknown:
        shown = ", ".join(unknown[:6]) + (", ..." if len(unknown) > 6 else "")
        raise CheckpointError(f"{source.name} holds tensors the published image model does not have ({shown}); "
                              "a network read without them would not be the model's function, so it is refused")
    found = sorted({int(m.group(1)) for n in source.names if (m := _PATTERNS["bilinear-image"].match(n))})
    n_layers = _cfg_int(cfg, "n_layer")
    if n_layers is None:
        n_layers = len(found)
    if found != list(range(n_layers)):
        raise CheckpointError(f"{source.name}: config.json gives n_layer {n_layers} but the file holds blocks "
                              f"{found}; expected blocks.0 .. blocks.{n_layers - 1}")
    residual = _image_residual(source, residual, notes)
    d = _cfg_int(cfg, "d_hidden")
    embed = source.get("embed.weight", (d, _cfg_int(cfg, "d_input")), " (the input embedding)")
    d = embed.shape[0]
    head = source.get("head.weight", (_cfg_int(cfg, "d_output"), d), " (the class readout)")
    configured_bias = cfg.get("bias")
    layers = []
    for i in range(n_layers):
        weight = source.get(f"blocks.{i}.weight", (2 * d, d), " (a packed [W; V] block on the stream)")
        bias = source.optional(f"blocks.{i}.bias", (2 * d,))
        if configured_bias is True and bias is None:
            raise CheckpointError(f"{source.name}: config.json says \"bias\": true but blocks.{i}.bias is missing")
        layers.append(BilinearLayer.from_packed(weight, None, bias))
    head_bias = source.optional("head.bias", (head.shape[0],))
    embed_bias = source.optional("embed.bias", (d,))
    net = BilinearNetwork(layers, residual, embed, head, head_bias=head_bias, embedding_bias=embed_bias)
    if dtype is not None or device is not None:
        net = net.to(device=device, dtype=_float_dtype(dtype))
    biased = [f"blocks.{i}.bias" for i, layer in enumerate(layers) if layer.has_bias]
    biased += [name for name, t in (("embed.bias", embed_bias), ("head.bias", head_bias)) if t is not None]
    notes.append(f"read a bilinear image model: {n_layers} block(s), {'residual' if residual else 'sequential'}, "
                 f"input {net.d_in} -> stream {d} -> {net.d_out} outputs (head.weight), "
                 f"{'biases ' + ', '.join(biased) if biased else 'no biases'}")
    return LoadedNetwork(net, layout, source.files_read(), notes, cfg)


def _image_residual(source, residual, notes) -> bool:
    configured = source.config.get("residual")
    if configured is not None and not isinstance(configured, bool):
        raise CheckpointError(f"{source.name}: config.json gives residual {configured!r}; expected true or false")
    if configured is None and residual is None:
        raise CheckpointError(f"{source.name} has no config.json \"residual\" field, and a residual stack "
                              "(x + block(x)) is a different function from a sequential one: pass residual=True or "
                              "False (--residual / --no-residual)")
    if configured is not None and residual is not None and configured != residual:
        raise CheckpointError(f"residual={residual} contradicts {source.name}'s config.json (residual {configured})")
    if configured is None:
        notes.append(f"{source.name}: no \"residual\" in a config: read as {'residual' if residual else 'sequential'}, "
                     "as asked")
    return configured if configured is not None else residual


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
    final = None
    if fold_norms:
        gain = source.get(f"model.layers.{i}.post_attention_layernorm.weight", (d,), " (the norm gain to fold)")
        w, v = w * gain, v * gain
        notes.append(f"model.layers.{i}.post_attention_layernorm.weight folded into W and V")
        final = (source.get("model.norm.weight", (d,), " (the final norm gain to fold)"), "model.norm.weight")
        notes.append("model.norm.weight folded into the unembedding rows")
    layer = BilinearLayer(w, v, p, w_bias, v_bias)
    readout, readout_name = _unembedding(source, ("lm_head.weight", "model.embed_tokens.weight"), d, final, notes)
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


def _unembedding(source, names, d, final, notes):
    """The first of `names` present, as readout rows (vocab, d), with the final norm's gain folded
    in when `final` = (gain, its name) gives one."""
    for name in names:
        if name in source:
            rows = source.get(name, (None, d))
            if name != names[0]:
                notes.append(f"no {names[0]}: using the tied {name} as unembedding")
            if final is not None and final[0] is not None:
                return rows * final[0], f"{name} * {final[1]}"
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
