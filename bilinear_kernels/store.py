"""The on-disk result store of a sweep: one directory, a JSON manifest, safetensors shards.

Layout of a store directory
  manifest.json               what the sweep is (format, versions, fingerprint, layer, directions,
                              options); once finished, also every shard with its sha256
  directions.safetensors      the direction ids in sweep order ("ids", int64)
  shards/NNNNNNNN.safetensors chunk N: direction_ids, eigenvalues, eigenvectors, residuals
  shards/NNNNNNNN.json        chunk N's record (positions, id range, sha256, size), written only
                              after the shard is durable: the journal while a sweep runs

Every file is written to a hidden temporary in the same directory, fsynced, renamed into place and
the directory fsynced, so a file is either absent or whole. A record is written only after its shard
is durable, and readers look at records only, so a shard being written (or left half-written by a
killed process) is never visible; each shard is checked against its record's sha256 when read.
Each chunk has exactly one writer and its own record file, so concurrent ranks never write the same
file; rank 0 merges the records into the manifest once every rank is done (`SweepStore.finalize`).
"""
from __future__ import annotations

import errno
import hashlib
import json
import operator
import os
import re
import warnings
from collections import OrderedDict
from pathlib import Path
from typing import Iterator, NamedTuple

import torch

FORMAT = "bilinear_kernels.sweep/1"
SHARD_FORMAT = "bilinear_kernels.sweep.shard/1"
MANIFEST = "manifest.json"
DIRECTIONS = "directions.safetensors"
SHARDS = "shards"
# the header fields a resumed sweep must agree on, in the order mismatches are explained
COMPARED = ("version", "fingerprint", "layer", "directions", "options")

_TEMP = re.compile(r"^\..+\.tmp$")
_SHARD = re.compile(r"^(\d{8})\.safetensors$")
_RECORD = re.compile(r"^(\d{8})\.json$")


class StoreError(ValueError):
    """A store directory that cannot be used as asked (not a store, unreadable manifest, ...)."""


class OptionsMismatchError(StoreError):
    """A resumed sweep asked for something other than what the store holds."""


class CorruptShardError(StoreError):
    """A shard that is missing, truncated or does not match the sha256 in its record."""


class StoreWriteError(OSError):
    """Writing to the store failed (disk full, unwritable directory, ...). Carries the errno and the
    path of the original error; what was durable before it is intact and a resumed sweep goes on
    from there."""


# -- durable writes -------------------------------------------------------------------------
def _write_all(fd: int, data: bytes, path: Path) -> None:
    """Write all of `data` to `fd` (the temporary of `path`); os.write may write less than asked."""
    view = memoryview(data)
    while view:
        view = view[os.write(fd, view):]


def fsync_dir(path: Path) -> None:
    """Make the entries of directory `path` (a rename, a new file) durable."""
    if os.name != "posix":
        return  # no directory fsync outside POSIX; the rename itself is still atomic
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    except OSError as exc:
        # some network and FUSE filesystems cannot fsync a directory; the rename is still atomic
        if exc.errno not in (errno.EINVAL, errno.ENOTSUP, errno.EBADF):
            raise
    finally:
        os.close(fd)


def write_atomic(path: Path, data: bytes) -> None:
    """Write `data` to `path` so that `path` is either its old self or the whole new content:
    temporary in the same directory, fsync, rename, fsync of the directory. On failure the
    temporary is removed and a StoreWriteError naming `path` is raised."""
    path = Path(path)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    fd = None
    try:
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
        _write_all(fd, data, path)
        os.fsync(fd)
        os.close(fd)
        fd = None
        os.replace(tmp, path)
        fsync_dir(path.parent)
    except BaseException as exc:
        if fd is not None:
            os.close(fd)
        try:
            os.unlink(tmp)
        except OSError:
            pass
        if isinstance(exc, OSError) and not isinstance(exc, StoreWriteError):
            raise _write_error(exc, path, "could not write") from exc
        raise


def _write_error(exc: OSError, path: Path, what: str) -> StoreWriteError:
    reason = exc.strerror or str(exc)
    return StoreWriteError(
        exc.errno or errno.EIO,
        f"{what} {path}: {reason}. The store keeps every shard finished before this error; "
        "free space or fix permissions and run the same sweep again to resume",
        str(path),
    )


def _json_bytes(obj) -> bytes:
    return (json.dumps(obj, indent=1, sort_keys=True) + "\n").encode()


def sha256_bytes(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


# -- manifest -------------------------------------------------------------------------------
def read_manifest(path) -> dict | None:
    """The manifest of the store at `path`, or None when there is none."""
    file = Path(path) / MANIFEST
    try:
        text = file.read_text()
    except FileNotFoundError:
        return None
    except NotADirectoryError:
        return None
    try:
        manifest = json.loads(text)
    except json.JSONDecodeError as exc:
        raise StoreError(f"{file} is not valid JSON ({exc}); the store is damaged") from exc
    if not isinstance(manifest, dict) or manifest.get("format") != FORMAT:
        raise StoreError(f"{file} is not a sweep manifest (format {manifest.get('format') if isinstance(manifest, dict) else None!r}, expected {FORMAT!r})")
    return manifest


def explain_mismatch(stored: dict, requested: dict) -> list[str]:
    """One line per header field (see COMPARED) where `requested` differs from `stored`."""
    lines = []
    for key in COMPARED:
        lines.extend(_diff(key, stored.get(key), requested.get(key)))
    return lines


def _diff(name: str, stored, requested) -> list[str]:
    if isinstance(stored, dict) and isinstance(requested, dict):
        out = []
        for key in sorted(set(stored) | set(requested)):
            out.extend(_diff(f"{name}.{key}", stored.get(key), requested.get(key)))
        return out
    if stored == requested:
        return []
    return [f"{name}: the store has {stored!r}, this run asks for {requested!r}"]


# -- the writer side ------------------------------------------------------------------------
class SweepStore:
    """Write access to one store directory. `create_or_resume` (rank 0 only) sets it up; every
    rank then opens it with `SweepStore(path)` and writes the shards of its chunks."""

    def __init__(self, path, manifest: dict | None = None):
        self.path = Path(path)
        self.shard_dir = self.path / SHARDS
        if manifest is None:
            manifest = read_manifest(self.path)
        if manifest is None:
            raise StoreError(f"{self.path} is not a sweep store (no {MANIFEST})")
        self.manifest = manifest

    # -- setup ------------------------------------------------------------------------------
    @classmethod
    def create_or_resume(cls, path, header: dict, ids: torch.Tensor, resume: bool) -> "SweepStore":
        """Set up the store at `path` for the sweep described by `header`, whose direction ids
        in sweep order are `ids`.

        resume=True: an existing store must match `header` (else OptionsMismatchError, listing every
        difference) and keeps its finished shards; an absent or empty directory starts a new store.
        resume=False: an existing store is emptied and started anew.
        A directory holding anything other than a store is refused, never written into.
        """
        path = Path(path)
        if path.exists() and not path.is_dir():
            raise StoreWriteError(errno.ENOTDIR, f"the sweep output {path} exists and is not a directory", str(path))
        try:
            path.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise _write_error(exc, path, "could not create the sweep directory") from exc
        manifest = read_manifest(path)
        if manifest is None:
            foreign = _foreign_entries(path)
            if foreign:
                raise StoreError(
                    f"{path} is not empty and holds no sweep manifest ({', '.join(foreign[:5])}"
                    f"{', ...' if len(foreign) > 5 else ''}); refusing to write a sweep into it"
                )
        elif resume:
            problems = explain_mismatch(manifest, header)
            if problems:
                raise OptionsMismatchError(
                    f"the sweep store {path} was made with other settings than this run:\n  "
                    + "\n  ".join(problems)
                    + "\nRun with the same settings to resume it, or start it anew with resume=False "
                    "(--no-resume), or write to another directory"
                )
        try:
            if manifest is None or not resume:
                _empty_store(path)  # leftovers of a setup that was killed, or resume=False
                write_atomic(path / DIRECTIONS, _directions_bytes(ids))
                write_atomic(path / MANIFEST, _json_bytes({**header, "format": FORMAT, "complete": False,
                                                           "n_chunks": _n_chunks(header, ids), "shards": []}))
            elif not (path / DIRECTIONS).is_file():
                write_atomic(path / DIRECTIONS, _directions_bytes(ids))  # same ids: the manifest's sha256 matched
            (path / SHARDS).mkdir(exist_ok=True)
            _remove_temporaries(path)
            _remove_temporaries(path / SHARDS)
        except StoreWriteError:
            raise
        except OSError as exc:
            raise _write_error(exc, Path(exc.filename or path), "could not set up the sweep store at") from exc
        return cls(path)

    # -- records and shards ---------------------------------------------------------------
    @property
    def n_chunks(self) -> int:
        return int(self.manifest["n_chunks"])

    def shard_path(self, index: int) -> Path:
        return self.shard_dir / f"{index:08d}.safetensors"

    def record_path(self, index: int) -> Path:
        return self.shard_dir / f"{index:08d}.json"

    def record(self, index: int) -> dict | None:
        """The record of chunk `index`, or None when it has none (not finished, or unreadable)."""
        return _read_record(self.record_path(index))

    def finished_chunks(self) -> set[int]:
        """Indices of the chunks that have a record (cheap: names only, for progress)."""
        return _finished_chunks(self.shard_dir)

    def check_shard(self, record: dict) -> str | None:
        """None when the shard of `record` is whole; otherwise what is wrong with it."""
        try:
            _read_verified(self.shard_dir, record)
        except CorruptShardError as exc:
            return str(exc)
        return None

    def discard(self, index: int) -> None:
        """Forget chunk `index`: its record first (so it is never listed without its shard)."""
        for file in (self.record_path(index), self.shard_path(index)):
            try:
                os.unlink(file)
            except FileNotFoundError:
                pass
            except OSError as exc:
                raise _write_error(exc, file, "could not remove") from exc
        fsync_dir(self.shard_dir)

    def write_shard(self, index: int, start: int, stop: int, ids: torch.Tensor, eigenvalues: torch.Tensor,
                    eigenvectors: torch.Tensor, residuals: torch.Tensor, method: str, rank: int = 0) -> dict:
        """Durably write chunk `index` (sweep positions start:stop), then its record. The shard
        bytes depend only on the results, so a recomputed chunk is byte-identical."""
        from safetensors.torch import save

        tensors = {"direction_ids": ids, "eigenvalues": eigenvalues, "eigenvectors": eigenvectors,
                   "residuals": residuals}
        tensors = {name: t.detach().to("cpu").contiguous() for name, t in tensors.items()}
        # one metadata key: safetensors does not keep the order of several, and the bytes must
        # not depend on the process that wrote them
        info = json.dumps({"format": SHARD_FORMAT, "index": index, "start": start, "stop": stop,
                           "method": method}, sort_keys=True)
        data = save(tensors, metadata={"bilinear_kernels": info})
        ids_list = tensors["direction_ids"]
        record = {
            "index": index, "file": self.shard_path(index).name, "start": start, "stop": stop,
            "first_id": int(ids_list.min()), "last_id": int(ids_list.max()),
            "sha256": sha256_bytes(data), "bytes": len(data), "method": method, "rank": rank,
        }
        write_atomic(self.shard_path(index), data)
        write_atomic(self.record_path(index), _json_bytes(record))
        return record

    def finalize(self) -> dict:
        """Merge every chunk's record into the manifest and mark it complete (rank 0, after all
        ranks are done). Raises StoreError if a chunk has no record."""
        records = [self.record(i) for i in range(self.n_chunks)]
        missing = [i for i, r in enumerate(records) if r is None]
        if missing:
            raise StoreError(
                f"cannot finalize {self.path}: {len(missing)} of {self.n_chunks} chunks have no shard "
                f"(first: {missing[:8]}); run the sweep again to compute them"
            )
        manifest = {**self.manifest, "complete": True,
                    "method": sorted({r["method"] for r in records}),
                    "shards": [{k: v for k, v in r.items() if k != "rank"} for r in records]}
        write_atomic(self.path / MANIFEST, _json_bytes(manifest))
        self.manifest = manifest
        return manifest


def _n_chunks(header: dict, ids: torch.Tensor) -> int:
    chunk = int(header["options"]["chunk"])
    return -(-len(ids) // chunk)


def _directions_bytes(ids: torch.Tensor) -> bytes:
    from safetensors.torch import save

    return save({"ids": ids.detach().cpu().to(torch.int64).contiguous()},
                metadata={"bilinear_kernels": json.dumps({"format": FORMAT})})


def _is_store_entry(name: str) -> bool:
    return name in (MANIFEST, DIRECTIONS, SHARDS) or bool(_TEMP.match(name))


def _foreign_entries(path: Path) -> list[str]:
    """Entries of `path` that a store does not make (their presence means: not ours to write)."""
    names = sorted(n for n in os.listdir(path) if not _is_store_entry(n))
    shard_dir = path / SHARDS
    if shard_dir.is_dir():
        names += sorted(f"{SHARDS}/{n}" for n in os.listdir(shard_dir)
                        if not (_SHARD.match(n) or _RECORD.match(n) or _TEMP.match(n)))
    return names


def _empty_store(path: Path) -> None:
    """Remove what a store made, manifest first, so an interrupted removal still reads as 'no store'."""
    for name in (MANIFEST, DIRECTIONS):
        try:
            os.unlink(path / name)
        except FileNotFoundError:
            pass
    shard_dir = path / SHARDS
    if shard_dir.is_dir():
        for name in sorted(os.listdir(shard_dir)):
            if _RECORD.match(name):  # records before shards, for the same reason
                os.unlink(shard_dir / name)
        for name in os.listdir(shard_dir):
            if _SHARD.match(name) or _TEMP.match(name):
                os.unlink(shard_dir / name)
        fsync_dir(shard_dir)
    fsync_dir(path)


def _remove_temporaries(path: Path) -> None:
    """Temporaries of writers that were killed; only called while nobody writes."""
    if path.is_dir():
        for name in os.listdir(path):
            if _TEMP.match(name):
                os.unlink(path / name)


def _finished_chunks(shard_dir: Path) -> set[int]:
    try:
        names = os.listdir(shard_dir)
    except FileNotFoundError:
        return set()
    return {int(m.group(1)) for m in map(_RECORD.match, names) if m}


def _read_record(file: Path) -> dict | None:
    try:
        record = json.loads(file.read_text())
    except FileNotFoundError:
        return None
    except (OSError, ValueError) as exc:
        # records are written atomically, so this is damage from outside: treat as not finished
        warnings.warn(f"ignoring the unreadable shard record {file} ({exc}); its chunk will be recomputed",
                      RuntimeWarning, stacklevel=3)
        return None
    return record if isinstance(record, dict) and "sha256" in record else None


def _read_verified(shard_dir: Path, record: dict) -> bytes:
    """The bytes of the shard of `record`, checked against its size and sha256."""
    file = shard_dir / record["file"]
    try:
        data = file.read_bytes()
    except FileNotFoundError:
        raise CorruptShardError(f"shard {file} is missing") from None
    except OSError as exc:
        raise CorruptShardError(f"shard {file} cannot be read: {exc}") from exc
    if len(data) != record["bytes"]:
        raise CorruptShardError(f"shard {file} is truncated or damaged: {len(data)} bytes, its record says {record['bytes']}")
    digest = sha256_bytes(data)
    if digest != record["sha256"]:
        raise CorruptShardError(f"shard {file} is corrupted: sha256 {digest}, its record says {record['sha256']}")
    return data


# -- the reader side ------------------------------------------------------------------------
class DirectionResult(NamedTuple):
    """The stored eigenpairs of one direction."""

    direction_id: int
    eigenvalues: torch.Tensor    # (k,)
    eigenvectors: torch.Tensor   # (d, k) unit columns
    residuals: torch.Tensor      # (k,)


class StoredResults:
    """Lazy, read-only view of a sweep store (see `open_results`)."""

    def __init__(self, path, *, verify: bool = True, cache_shards: int = 2):
        self.path = Path(path)
        self.verify_on_load = verify
        self._cache: OrderedDict[int, dict] = OrderedDict()
        self._cache_size = max(1, int(cache_shards))
        self.refresh()

    def refresh(self) -> None:
        """Re-read the manifest and records (to follow a sweep that is still running)."""
        from safetensors.torch import load_file

        manifest = read_manifest(self.path)
        if manifest is None:
            raise StoreError(f"{self.path} is not a sweep store (no {MANIFEST})")
        self.manifest = manifest
        self.chunk = int(manifest["options"]["chunk"])
        self._ids = load_file(str(self.path / DIRECTIONS))["ids"]
        order = torch.argsort(self._ids)
        self._order, self._sorted_ids = order, self._ids[order]
        if manifest.get("complete"):
            records = {int(r["index"]): r for r in manifest["shards"]}
        else:
            # a sweep still running (or interrupted): its journal of records is the truth
            records = {}
            for index in sorted(_finished_chunks(self.shard_dir)):
                record = _read_record(self.shard_dir / f"{index:08d}.json")
                if record is not None:
                    records[index] = record
        self._records = dict(sorted(records.items()))
        self._cache.clear()

    @property
    def shard_dir(self) -> Path:
        return self.path / SHARDS

    # -- what is stored ---------------------------------------------------------------------
    @property
    def metadata(self) -> dict:
        """The manifest without the shard list: format, versions, fingerprint, layer, directions,
        options, n_chunks, complete."""
        return {k: v for k, v in self.manifest.items() if k != "shards"}

    @property
    def complete(self) -> bool:
        return bool(self.manifest.get("complete")) and len(self._records) == int(self.manifest["n_chunks"])

    @property
    def n_directions(self) -> int:
        """Directions the sweep covers, finished or not."""
        return len(self._ids)

    def __len__(self) -> int:
        """Directions stored so far (all of them once the sweep is complete)."""
        return sum(r["stop"] - r["start"] for r in self._records.values())

    @property
    def direction_ids(self) -> torch.Tensor:
        """Ids of the stored directions, in sweep order: output indices for index directions,
        row numbers for float direction vectors."""
        parts = [self._ids[r["start"]:r["stop"]] for r in self._records.values()]
        return torch.cat(parts) if parts else self._ids[:0]

    def missing_chunks(self) -> list[int]:
        return [i for i in range(int(self.manifest["n_chunks"])) if i not in self._records]

    def __repr__(self) -> str:
        state = "complete" if self.complete else f"{len(self._records)}/{self.manifest['n_chunks']} chunks"
        return f"StoredResults({str(self.path)!r}, directions={len(self)}/{self.n_directions}, {state})"

    # -- lookup ---------------------------------------------------------------------------
    def _position(self, direction_id) -> int:
        if isinstance(direction_id, bool):
            raise TypeError("a direction id must be an int, got a bool")
        try:
            value = operator.index(direction_id)
        except TypeError:
            raise TypeError(f"a direction id must be an int, got {type(direction_id).__name__}") from None
        at = int(torch.searchsorted(self._sorted_ids, torch.tensor(value)))
        if at >= len(self._sorted_ids) or int(self._sorted_ids[at]) != value:
            raise KeyError(f"direction {value} is not part of this sweep ({self.n_directions} directions)")
        return int(self._order[at])

    def __contains__(self, direction_id) -> bool:
        try:
            position = self._position(direction_id)
        except (KeyError, TypeError):
            return False
        return position // self.chunk in self._records

    def __getitem__(self, direction_id) -> DirectionResult:
        """The eigenpairs of one direction, reading only the shard that holds it."""
        position = self._position(direction_id)
        index = position // self.chunk
        if index not in self._records:
            raise KeyError(f"direction {int(direction_id)} is in chunk {index}, which is not finished yet")
        shard = self._shard(index)
        row = position - self._records[index]["start"]
        return DirectionResult(int(direction_id), shard["eigenvalues"][row], shard["eigenvectors"][row],
                               shard["residuals"][row])

    def get(self, direction_ids):
        """Several directions as one DecompositionResult, in the order asked, reading only the
        shards that hold them."""
        ids = [int(i) for i in direction_ids]
        if not ids:
            raise ValueError("direction_ids is empty")
        rows = [self[i] for i in ids]
        return self._result(torch.stack([r.eigenvalues for r in rows]), torch.stack([r.eigenvectors for r in rows]),
                            torch.stack([r.residuals for r in rows]), torch.tensor(ids), self._method(), {})

    # -- chunks ---------------------------------------------------------------------------
    def chunks(self) -> Iterator:
        """One DecompositionResult per stored shard, in sweep order; one shard in memory at a time."""
        for index, record in self._records.items():
            shard = self._load(record)
            yield self._result(shard["eigenvalues"], shard["eigenvectors"], shard["residuals"],
                               shard["direction_ids"], record["method"],
                               {"chunk": index, "positions": [record["start"], record["stop"]]})

    __iter__ = chunks

    def load(self):
        """Every stored direction as one DecompositionResult (for stores that fit in memory)."""
        parts = list(self.chunks())
        if not parts:
            raise StoreError(f"{self.path} holds no finished shard yet")
        return self._result(torch.cat([p.eigenvalues for p in parts]), torch.cat([p.eigenvectors for p in parts]),
                            torch.cat([p.residuals for p in parts]), self.direction_ids, self._method(), {})

    def verify(self) -> dict[str, str]:
        """Check every stored shard against its record: {file: what is wrong}, empty when all
        are whole."""
        problems = {}
        for record in self._records.values():
            try:
                _read_verified(self.shard_dir, record)
            except CorruptShardError as exc:
                problems[record["file"]] = str(exc)
        return problems

    # -- internals ------------------------------------------------------------------------
    def _method(self) -> str:
        methods = sorted({r["method"] for r in self._records.values()})
        return methods[0] if len(methods) == 1 else "+".join(methods)

    def _result(self, vals, vecs, resid, ids, method, extra):
        """A DecompositionResult; `indices` holds the output indices for index directions (for
        float direction vectors, whose ids are row numbers, it is None, as from decompose)."""
        from .result import DecompositionResult

        indices = ids if self.manifest["directions"]["kind"] == "indices" else None
        return DecompositionResult(eigenvalues=vals, eigenvectors=vecs, residuals=resid, method=method,
                                   which=self.manifest["options"]["which"], indices=indices,
                                   metadata={**self.manifest["options"], **extra})

    def _shard(self, index: int) -> dict:
        if index in self._cache:
            self._cache.move_to_end(index)
            return self._cache[index]
        shard = self._load(self._records[index])
        self._cache[index] = shard
        while len(self._cache) > self._cache_size:
            self._cache.popitem(last=False)
        return shard

    def _load(self, record: dict) -> dict:
        from safetensors.torch import load

        if self.verify_on_load:
            data = _read_verified(self.shard_dir, record)
        else:
            try:
                data = (self.shard_dir / record["file"]).read_bytes()
            except OSError as exc:
                raise CorruptShardError(f"shard {self.shard_dir / record['file']} cannot be read: {exc}") from exc
        try:
            tensors = load(data)
        except Exception as exc:  # noqa: BLE001 - safetensors raises its own error types
            raise CorruptShardError(f"shard {self.shard_dir / record['file']} is not a readable safetensors file: {exc}") from exc
        expected = self._ids[record["start"]:record["stop"]]
        if not torch.equal(tensors.get("direction_ids", torch.empty(0)), expected):
            raise CorruptShardError(f"shard {self.shard_dir / record['file']} does not hold the directions its record names")
        return tensors


def open_results(path, *, verify: bool = True) -> StoredResults:
    """Open a sweep store lazily: index by direction id, iterate shards with `chunks()`, `len`,
    `metadata`. Nothing but the manifest and the direction ids is read until asked; each shard is
    checked against its sha256 when loaded (verify=False skips that), and a damaged one raises
    CorruptShardError naming the file."""
    return StoredResults(path, verify=verify)
