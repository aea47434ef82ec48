"""The on-disk result store of a sweep: one directory, a JSON manifest, safetensors shards.

Layout of a store directory
  manifest.json               what the sweep is (format, versions, fingerprint, layer, directions,
                              options), with a sha256 of itself ("checksum"); once finished, also
                              every shard with its sha256
  directions.safetensors      the direction ids in sweep order ("ids", int64): the user's own ids
                              (output indices, classes, token ids, row numbers of a matrix)
  shards/NNNNNNNN.safetensors chunk N: direction_ids, eigenvalues, eigenvectors, residuals
  shards/NNNNNNNN.json        chunk N's record (index, positions, its ids, sha256, size), written
                              only after the shard is durable: the journal while a sweep runs
  sweep.lock                  held (flock) by the one process that writes the store; it names
                              that process

Every file is written to a hidden temporary in the same directory, fsynced, renamed into place and
the directory fsynced, so a file is either absent or whole. A record is written only after its shard
is durable, and readers look at records only, so a shard being written (or left half-written by a
killed process) is never visible; each shard is checked against its record's sha256 when read.

Nothing is taken on trust: the manifest carries its own checksum, the ids file is checked against
the manifest's sha256 of the ids, every record must name the chunk its file name says, with exactly
the ids of those positions and the digest of the settings it was computed under, and every shard
must hold its record's chunk, ids and the shapes the manifest promises. What fails a check is
refused when read and recomputed (or rewritten) by a rerun of the same sweep.

Each chunk has exactly one writer and its own record file, so concurrent ranks never write the same
file; rank 0 holds the lock for the whole run and merges the records into the manifest once every
rank is done (`SweepStore.finalize`).
"""
from __future__ import annotations

import errno
import hashlib
import json
import operator
import os
import re
import socket
import struct
import sys
import warnings
from collections import OrderedDict
from datetime import datetime, timezone
from pathlib import Path
from typing import Iterator

import torch

from ..result import DirectionResult, as_direction_id, as_direction_ids

FORMAT = "bilinear_kernels.sweep/2"
SHARD_FORMAT = "bilinear_kernels.sweep.shard/2"
MANIFEST = "manifest.json"
DIRECTIONS = "directions.safetensors"
SHARDS = "shards"
LOCK = "sweep.lock"
# the header fields a resumed sweep must agree on, in the order mismatches are explained
COMPARED = ("version", "fingerprint", "layer", "directions", "options")
# what a manifest must hold to be read at all (beyond format and checksum)
REQUIRED = {"version": str, "fingerprint": dict, "layer": dict, "directions": dict, "options": dict,
            "n_chunks": int, "complete": bool, "shards": list}
REQUIRED_OPTIONS = ("k", "which", "method", "tol", "dtype", "seed", "chunk", "max_memory")
REQUIRED_DIRECTIONS = ("kind", "count", "sha256", "ids_sha256")
INT64 = (-2**63, 2**63 - 1)

_TEMP = re.compile(r"^\..+\.tmp$")
_SHARD = re.compile(r"^(\d{8})\.safetensors$")
_RECORD = re.compile(r"^(\d{8})\.json$")


class StoreError(ValueError):
    """A store directory that cannot be used as asked (not a store, unreadable manifest, ...)."""


class DamagedStoreError(StoreError):
    """A store whose manifest or ids file fails its own checks (edited, truncated, replaced)."""


class OptionsMismatchError(StoreError):
    """A resumed sweep asked for something other than what the store holds."""


class CorruptShardError(StoreError):
    """A shard or record that is missing, truncated, or does not match what its record and the
    manifest say (sha256, ids, shapes)."""


class StoreLockedError(StoreError):
    """Another process is writing the store."""


class StoreWarning(UserWarning):
    """Something the store did on its own: files removed on --no-resume, a damaged file repaired."""


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


def _canonical(obj) -> bytes:
    return json.dumps(obj, sort_keys=True, separators=(",", ":")).encode()


def sha256_bytes(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def ids_sha256(ids: torch.Tensor) -> str:
    """sha256 of direction ids (int64, in sweep order): what the manifest and records promise."""
    return sha256_bytes(ids.detach().cpu().to(torch.int64).contiguous().numpy().tobytes())


# -- the lock -------------------------------------------------------------------------------
class StoreLock:
    """An exclusive lock on a store directory (fcntl.flock on `sweep.lock`) for as long as one
    sweep writes it. The lock file names its holder (pid, host, command, start time), so a second
    writer is refused with a message that says who is at work. The kernel drops the lock when the
    holder exits, however it exits: a lock is never stale. On systems without fcntl (Windows) the
    store is not locked."""

    def __init__(self, path):
        self.path = Path(path)
        self.file = self.path / LOCK
        self._fd = None
        self._created = False

    def acquire(self) -> "StoreLock":
        path = self.path
        if path.exists() and not path.is_dir():
            raise StoreWriteError(errno.ENOTDIR, f"the sweep output {path} exists and is not a directory", str(path))
        try:
            path.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise _write_error(exc, path, "could not create the sweep directory") from exc
        try:
            import fcntl
        except ImportError:  # not POSIX: no advisory locks to take
            return self
        try:
            try:
                fd = os.open(self.file, os.O_RDWR | os.O_CREAT | os.O_EXCL, 0o644)
                self._created = True
            except FileExistsError:
                fd = os.open(self.file, os.O_RDWR)
        except OSError as exc:
            raise _write_error(exc, self.file, "could not create the lock file") from exc
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = _read_holder(fd)
            os.close(fd)
            raise StoreLockedError(
                f"the sweep store {path} is being written by another process ({holder}); a store has "
                "one writer at a time. Wait for that sweep to finish (or stop it), then run this one "
                "again, or write to another directory") from None
        except OSError as exc:
            os.close(fd)
            raise StoreWriteError(exc.errno or errno.ENOLCK, f"could not lock {self.file}: {exc.strerror or exc} "
                                  "(the filesystem may not support locks)", str(self.file)) from exc
        holder = {"pid": os.getpid(), "host": socket.gethostname(), "command": " ".join(sys.orig_argv)[:500],
                  "started": datetime.now(timezone.utc).isoformat(timespec="seconds")}
        try:
            os.ftruncate(fd, 0)
            os.pwrite(fd, _json_bytes(holder), 0)
        except OSError:
            pass  # the lock holds without the note; a refused writer then says less about us
        self._fd = fd
        return self

    def release(self, *, set_up: bool = True) -> None:
        """Drop the lock. set_up=False: no store was set up under it (say, in a foreign folder), so
        a lock file this lock created is removed too, leaving no trace."""
        if self._fd is not None:
            try:
                os.ftruncate(self._fd, 0)
                if self._created and not set_up:
                    os.unlink(self.file)
            except OSError:
                pass
            os.close(self._fd)  # closing drops the flock
            self._fd = None

    def __enter__(self) -> "StoreLock":
        return self.acquire()

    def __exit__(self, *exc) -> None:
        self.release()


def _read_holder(fd: int) -> str:
    try:
        info = json.loads(os.pread(fd, 4096, 0).decode())
        return (f"pid {info['pid']} on host {info['host']}, started {info['started']}, "
                f"command: {info['command']}")
    except (OSError, ValueError, KeyError, TypeError):
        return "a process that has not yet said who it is"


# -- manifest -------------------------------------------------------------------------------
def manifest_checksum(manifest: dict) -> str:
    """sha256 of the manifest without its "checksum" field (canonical JSON)."""
    return sha256_bytes(_canonical({k: v for k, v in manifest.items() if k != "checksum"}))


def header_digest(manifest: dict) -> str:
    """sha256 of what shapes the results (COMPARED fields and n_chunks); every shard and record
    carries it, so data computed under other settings is never taken for this store's."""
    return sha256_bytes(_canonical({k: manifest.get(k) for k in (*COMPARED, "n_chunks")}))


def _with_checksum(manifest: dict) -> dict:
    manifest = {k: v for k, v in manifest.items() if k != "checksum"}
    return {**manifest, "checksum": manifest_checksum(manifest)}


def read_manifest(path) -> dict | None:
    """The manifest of the store at `path`, or None when there is none. A manifest that is not
    JSON, lacks a field, or does not match its checksum raises DamagedStoreError; a JSON file of
    another format raises StoreError."""
    file = Path(path) / MANIFEST
    try:
        text = file.read_text()
    except (FileNotFoundError, NotADirectoryError):
        return None
    except (OSError, UnicodeDecodeError) as exc:
        raise DamagedStoreError(f"{file} cannot be read ({exc}); the store is damaged") from exc
    try:
        manifest = json.loads(text)
    except json.JSONDecodeError as exc:
        raise DamagedStoreError(f"{file} is not valid JSON ({exc}); the store is damaged") from exc
    if not isinstance(manifest, dict) or not str(manifest.get("format", "")).startswith("bilinear_kernels.sweep/"):
        found = manifest.get("format") if isinstance(manifest, dict) else None
        raise StoreError(f"{file} is not a sweep manifest (format {found!r}, expected {FORMAT!r})")
    if manifest["format"] != FORMAT:
        raise DamagedStoreError(f"{file} has format {manifest['format']!r}, which this version does not read "
                                f"(it reads {FORMAT!r}); recompute the sweep into a new store (--no-resume)")
    problem = _manifest_problem(manifest)
    if problem is not None:
        raise DamagedStoreError(f"{file} {problem}; the store is damaged")
    return manifest


def _manifest_problem(manifest: dict) -> str | None:
    if "checksum" not in manifest:
        return "has no checksum"
    if manifest["checksum"] != manifest_checksum(manifest):
        return ("does not match its checksum: it was edited or damaged after it was written, so what it "
                "says about the results (k, which, directions, ...) cannot be trusted")
    for key, kind in REQUIRED.items():
        if key not in manifest:
            return f"has no {key!r} field"
        if not isinstance(manifest[key], kind) or (kind is int and isinstance(manifest[key], bool)):
            return f"has a {key!r} field of type {type(manifest[key]).__name__}, expected {kind.__name__}"
    for group, keys in (("options", REQUIRED_OPTIONS), ("directions", REQUIRED_DIRECTIONS)):
        missing = [k for k in keys if k not in manifest[group]]
        if missing:
            return f"has no {group}.{missing[0]!r} field"
    return None


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


def _d_form(manifest: dict) -> int:
    layer = manifest["layer"]
    return int(layer["d_in"]) + (1 if layer.get("bias") else 0)


def _positions(manifest: dict, index: int) -> tuple[int, int]:
    chunk, n = int(manifest["options"]["chunk"]), int(manifest["directions"]["count"])
    return index * chunk, min((index + 1) * chunk, n)


def record_problem(record, index: int, manifest: dict, ids: torch.Tensor) -> str | None:
    """None when `record` is chunk `index`'s record in this store (its index, file, positions,
    ids and header digest all agree with the manifest and the ids file); otherwise what is wrong."""
    if not isinstance(record, dict):
        return "is not a record"
    start, stop = _positions(manifest, index)
    expected = {"index": index, "file": f"{index:08d}.safetensors", "start": start, "stop": stop,
                "header_sha256": header_digest(manifest), "ids_sha256": ids_sha256(ids[start:stop])}
    for key, value in expected.items():
        if record.get(key) != value:
            if key == "header_sha256":
                return "was computed under other settings than this store's manifest names"
            if key == "ids_sha256":
                return f"names other direction ids than positions {start}:{stop} of the sweep"
            return f"does not belong to chunk {index} of this store ({key}: {record.get(key)!r}, expected {value!r})"
    if "ids" in record and record["ids"] != ids[start:stop].tolist():
        return f"names other direction ids than positions {start}:{stop} of the sweep"
    if not isinstance(record.get("sha256"), str) or not isinstance(record.get("bytes"), int) \
            or not isinstance(record.get("method"), str):
        return "lacks its sha256, size or method"
    return None


# -- the writer side ------------------------------------------------------------------------
class SweepStore:
    """Write access to one store directory. `create_or_resume` (rank 0 only, holding the
    StoreLock) sets it up; every rank then opens it with `SweepStore(path, manifest)` and writes the
    shards of its chunks."""

    def __init__(self, path, manifest: dict | None = None):
        self.path = Path(path)
        self.shard_dir = self.path / SHARDS
        if manifest is None:
            manifest = read_manifest(self.path)
        if manifest is None:
            raise StoreError(f"{self.path} is not a sweep store (no {MANIFEST})")
        self.manifest = manifest
        self.header_sha256 = header_digest(manifest)
        self._ids = None

    # -- setup ------------------------------------------------------------------------------
    @classmethod
    def create_or_resume(cls, path, header: dict, ids: torch.Tensor, resume: bool) -> "SweepStore":
        """Set up the store at `path` for the sweep described by `header`, whose direction ids
        in sweep order are `ids`. The caller holds the StoreLock of `path`.

        resume=True: an existing store must match `header` (else OptionsMismatchError, listing every
        difference) and keeps its finished shards; a lost or damaged ids file is rewritten; an absent
        or empty directory starts a new store; a damaged manifest is refused (DamagedStoreError).
        resume=False: an existing store, damaged or not, is emptied (a StoreWarning says what is
        removed) and started anew.
        A directory holding anything a store does not make is refused, never written into.
        """
        path = Path(path)
        try:
            manifest = read_manifest(path)
            damage = None
        except DamagedStoreError as exc:
            if resume:
                raise DamagedStoreError(f"{exc}. Start it anew with resume=False (--no-resume), which "
                                        "removes only the files a store makes, or write to another directory") from None
            manifest, damage = None, str(exc)
        foreign = _foreign_entries(path)
        if foreign and (manifest is None or not resume):
            shown = ", ".join(foreign[:5]) + (", ..." if len(foreign) > 5 else "")
            what = "holds no sweep manifest" if damage is None and manifest is None else "is a sweep store that also holds other files"
            raise StoreError(f"{path} is not empty and {what} ({shown}); refusing to write a sweep into it")
        if manifest is not None and resume:
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
                removed = _store_entries(path)
                if removed:
                    why = f"the store is damaged ({damage})" if damage else "starting the sweep anew (resume=False)"
                    warnings.warn(f"{why}: removing {_describe(removed)} from {path}", StoreWarning, stacklevel=4)
                _empty_store(path)  # leftovers of a setup that was killed, or resume=False
                write_atomic(path / DIRECTIONS, _directions_bytes(ids))
                write_atomic(path / MANIFEST, _json_bytes(_with_checksum(
                    {**header, "format": FORMAT, "complete": False, "n_chunks": _n_chunks(header, ids), "shards": []})))
            else:
                problem = _directions_problem(path, manifest)
                if problem is not None:
                    # the run's ids are the manifest's (its ids_sha256 matched): rewrite them
                    if problem != "is missing":
                        warnings.warn(f"{path / DIRECTIONS} {problem}; rewriting it from this run's directions",
                                      StoreWarning, stacklevel=4)
                    write_atomic(path / DIRECTIONS, _directions_bytes(ids))
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

    @property
    def ids(self) -> torch.Tensor:
        if self._ids is None:
            self._ids = _read_ids(self.path, self.manifest)
        return self._ids

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

    def check_chunk(self, index: int, record: dict) -> str | None:
        """None when chunk `index` is finished and whole: its record belongs to it and its shard
        matches the record; otherwise what is wrong."""
        problem = record_problem(record, index, self.manifest, self.ids)
        if problem is not None:
            return f"shard record {self.record_path(index)} {problem}"
        try:
            _load_checked(self.shard_dir, record, self.manifest, self.ids, verify=True)
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
        bytes depend only on the results and the store's settings, so a recomputed chunk is
        byte-identical."""
        from safetensors.torch import save

        if (start, stop) != _positions(self.manifest, index):
            raise ValueError(f"chunk {index} covers positions {_positions(self.manifest, index)}, got {start}:{stop}")
        tensors = {"direction_ids": ids, "eigenvalues": eigenvalues, "eigenvectors": eigenvectors,
                   "residuals": residuals}
        tensors = {name: t.detach().to("cpu").contiguous() for name, t in tensors.items()}
        tensors["direction_ids"] = tensors["direction_ids"].to(torch.int64)
        # one metadata key: safetensors does not keep the order of several, and the bytes must
        # not depend on the process that wrote them, nor on settings that leave the numbers alone
        # (two stores that differ in max_memory alone hold the same shards); the record carries
        # the settings digest
        info = json.dumps({"format": SHARD_FORMAT, "index": index, "start": start, "stop": stop,
                           "method": method}, sort_keys=True)
        data = save(tensors, metadata={"bilinear_kernels": info})
        id_list = tensors["direction_ids"]
        record = {
            "index": index, "file": self.shard_path(index).name, "start": start, "stop": stop,
            "ids": id_list.tolist(), "ids_sha256": ids_sha256(id_list), "header_sha256": self.header_sha256,
            "sha256": sha256_bytes(data), "bytes": len(data), "method": method, "rank": rank,
        }
        write_atomic(self.shard_path(index), data)
        write_atomic(self.record_path(index), _json_bytes(record))
        return record

    def finalize(self) -> dict:
        """Merge every chunk's record into the manifest and mark it complete (rank 0, after all
        ranks are done). Raises StoreError if a chunk has no valid record."""
        records = [self.record(i) for i in range(self.n_chunks)]
        missing = [i for i, r in enumerate(records) if r is None]
        if missing:
            raise StoreError(
                f"cannot finalize {self.path}: {len(missing)} of {self.n_chunks} chunks have no shard "
                f"(first: {missing[:8]}); run the sweep again to compute them"
            )
        for index, record in enumerate(records):
            problem = record_problem(record, index, self.manifest, self.ids)
            if problem is not None:
                raise StoreError(f"cannot finalize {self.path}: shard record {self.record_path(index)} {problem}; "
                                 "run the sweep again to recompute it")
        # the manifest lists each shard without its id list: the ids file holds them, checked by sha256
        manifest = _with_checksum({**self.manifest, "complete": True,
                                   "method": sorted({r["method"] for r in records}),
                                   "shards": [{k: v for k, v in r.items() if k not in ("rank", "ids")} for r in records]})
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


def _read_ids(path: Path, manifest: dict) -> torch.Tensor:
    """The ids file, checked against the manifest's count and sha256 (DamagedStoreError if not)."""
    from safetensors.torch import load

    file = Path(path) / DIRECTIONS
    try:
        ids = load(file.read_bytes())["ids"]
    except FileNotFoundError:
        raise DamagedStoreError(f"{file} is missing, so the store cannot say which direction is which; run the "
                                "same sweep again to rewrite it") from None
    except Exception as exc:  # noqa: BLE001 - OSError, or safetensors' own error types
        raise DamagedStoreError(f"{file} cannot be read ({exc}); run the same sweep again to rewrite it") from None
    if ids.dtype != torch.int64 or ids.ndim != 1 or len(ids) != int(manifest["directions"]["count"]) \
            or ids_sha256(ids) != manifest["directions"]["ids_sha256"]:
        raise DamagedStoreError(f"{file} does not hold the direction ids the manifest names (truncated, "
                                "reordered or replaced), so the store cannot say which direction is which; run "
                                "the same sweep again to rewrite it")
    return ids


def _directions_problem(path: Path, manifest: dict) -> str | None:
    if not (Path(path) / DIRECTIONS).is_file():
        return "is missing"
    try:
        _read_ids(path, manifest)
    except DamagedStoreError:
        return "does not hold the direction ids the manifest names"
    return None


def _is_store_entry(name: str) -> bool:
    return name in (MANIFEST, DIRECTIONS, SHARDS, LOCK) or bool(_TEMP.match(name))


def _foreign_entries(path: Path) -> list[str]:
    """Entries of `path` that a store does not make (their presence means: not ours to write)."""
    names = sorted(n for n in os.listdir(path) if not _is_store_entry(n))
    shard_dir = path / SHARDS
    if shard_dir.is_dir():
        names += sorted(f"{SHARDS}/{n}" for n in os.listdir(shard_dir)
                        if not (_SHARD.match(n) or _RECORD.match(n) or _TEMP.match(n)))
    elif shard_dir.exists():
        names.append(SHARDS)
    return names


def _store_entries(path: Path) -> list[str]:
    """The files a store made that are in `path` now (what emptying it removes)."""
    found = [n for n in (MANIFEST, DIRECTIONS) if (path / n).exists()]
    shard_dir = path / SHARDS
    if shard_dir.is_dir():
        found += sorted(f"{SHARDS}/{n}" for n in os.listdir(shard_dir) if _SHARD.match(n) or _RECORD.match(n))
    return found


def _describe(entries: list[str]) -> str:
    top = [e for e in entries if "/" not in e]
    shards = sum(1 for e in entries if e.endswith(".safetensors") and "/" in e)
    records = sum(1 for e in entries if e.endswith(".json") and "/" in e)
    parts = top + ([f"{shards} shard(s) and {records} record(s) in {SHARDS}/"] if shards or records else [])
    return ", ".join(parts)


def _empty_store(path: Path) -> None:
    """Remove what a store made, manifest first, so an interrupted removal still reads as 'no store'.
    The lock file stays: it is held."""
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
    """Temporaries of writers that were killed; only called while holding the lock."""
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
    return record if isinstance(record, dict) else None


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


def _load_checked(shard_dir: Path, record: dict, manifest: dict, ids: torch.Tensor, verify: bool) -> dict:
    """The tensors of the shard of `record` (a record already checked by record_problem), checked
    against its sha256 (unless verify=False), the ids of its positions, the store's settings and
    the shapes the manifest promises."""
    from safetensors.torch import load

    file = shard_dir / record["file"]
    if verify:
        data = _read_verified(shard_dir, record)
    else:
        try:
            data = file.read_bytes()
        except OSError as exc:
            raise CorruptShardError(f"shard {file} cannot be read: {exc}") from exc
    try:
        tensors = load(data)
        info = json.loads(_shard_metadata(data).get("bilinear_kernels", "{}"))
    except Exception as exc:  # noqa: BLE001 - safetensors raises its own error types
        raise CorruptShardError(f"shard {file} is not a readable safetensors file: {exc}") from exc
    start, stop = record["start"], record["stop"]
    if not torch.equal(tensors.get("direction_ids", torch.empty(0)), ids[start:stop]):
        raise CorruptShardError(f"shard {file} does not hold the directions its record names")
    if info.get("index") != record["index"] or (info.get("start"), info.get("stop")) != (start, stop):
        raise CorruptShardError(f"shard {file} was computed for another chunk than its record names")
    n, d, k = stop - start, _d_form(manifest), int(manifest["options"]["k"])
    shapes = {"eigenvalues": (n, k), "eigenvectors": (n, d, k), "residuals": (n, k)}
    for name, shape in shapes.items():
        got = tuple(tensors[name].shape) if name in tensors else None
        if got != shape:
            raise CorruptShardError(f"shard {file} holds {name} of shape {got}; the manifest says {shape}")
    return tensors


def _shard_metadata(data: bytes) -> dict:
    """The string metadata of safetensors bytes (their JSON header's __metadata__)."""
    (n,) = struct.unpack("<Q", data[:8])
    return json.loads(data[8:8 + n]).get("__metadata__") or {}


# -- the reader side ------------------------------------------------------------------------
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
        manifest = read_manifest(self.path)
        if manifest is None:
            raise StoreError(f"{self.path} is not a sweep store (no {MANIFEST})")
        self.manifest = manifest
        self.chunk = int(manifest["options"]["chunk"])
        self._ids = _read_ids(self.path, manifest)
        order = torch.argsort(self._ids)
        self._order, self._sorted_ids = order, self._ids[order]
        if manifest.get("complete"):
            candidates = {}
            for entry in manifest["shards"]:
                index = entry.get("index") if isinstance(entry, dict) else None
                if isinstance(index, int) and 0 <= index < manifest["n_chunks"] and index not in candidates:
                    candidates[index] = entry
        else:
            # a sweep still running (or interrupted): its journal of records is the truth
            candidates = {}
            for index in sorted(_finished_chunks(self.shard_dir)):
                record = _read_record(self.shard_dir / f"{index:08d}.json")
                if record is not None:
                    candidates[index] = record
        records, self._rejected = {}, {}
        for index, record in sorted(candidates.items()):
            problem = record_problem(record, index, manifest, self._ids) if index < manifest["n_chunks"] \
                else f"is chunk {index}, and the sweep has {manifest['n_chunks']}"
            if problem is None:
                records[index] = record
            else:
                name = f"{index:08d}.json"
                self._rejected[name] = f"shard record {self.shard_dir / name} {problem}"
                warnings.warn(f"{self._rejected[name]}; its directions are treated as not finished "
                              "(running the same sweep again recomputes them)", RuntimeWarning, stacklevel=2)
        self._records = records
        self._cache.clear()

    @property
    def shard_dir(self) -> Path:
        return self.path / SHARDS

    # -- what is stored ---------------------------------------------------------------------
    @property
    def metadata(self) -> dict:
        """The manifest without the shard list: format, versions, fingerprint, layer, directions,
        options, n_chunks, complete."""
        return {k: v for k, v in self.manifest.items() if k not in ("shards", "checksum")}

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
        """Ids of the stored directions, in sweep order: the user's own ids (output indices,
        classes, token ids, rows of a matrix), or row numbers where none were given."""
        parts = [self._ids[r["start"]:r["stop"]] for r in self._records.values()]
        return torch.cat(parts) if parts else self._ids[:0]

    def missing_chunks(self) -> list[int]:
        return [i for i in range(int(self.manifest["n_chunks"])) if i not in self._records]

    def __repr__(self) -> str:
        state = "complete" if self.complete else f"{len(self._records)}/{self.manifest['n_chunks']} chunks"
        return f"StoredResults({str(self.path)!r}, directions={len(self)}/{self.n_directions}, {state})"

    # -- lookup ---------------------------------------------------------------------------
    def _position(self, direction_id) -> int:
        value = as_direction_id(direction_id)
        if INT64[0] <= value <= INT64[1]:
            at = int(torch.searchsorted(self._sorted_ids, torch.tensor(value, dtype=torch.int64)))
            if at < len(self._sorted_ids) and int(self._sorted_ids[at]) == value:
                return int(self._order[at])
        raise KeyError(f"direction {value} is not part of this sweep ({self.n_directions} directions, ids "
                       f"{_summary(self._ids)})")

    def __contains__(self, direction_id) -> bool:
        try:
            position = self._position(direction_id)
        except (KeyError, TypeError):
            return False
        return position // self.chunk in self._records

    def __getitem__(self, direction_id) -> DirectionResult:
        """The eigenpairs of the direction with id `direction_id` (the id the sweep was given,
        e.g. a token id), reading only the shard that holds it."""
        position = self._position(direction_id)
        index = position // self.chunk
        if index not in self._records:
            raise KeyError(f"direction {as_direction_id(direction_id)} is in chunk {index}, which is not finished yet")
        shard = self._shard(index)
        row = position - self._records[index]["start"]
        return DirectionResult(int(self._ids[position]), shard["eigenvalues"][row], shard["eigenvectors"][row],
                               shard["residuals"][row])

    def get(self, direction_ids):
        """Several directions as one DecompositionResult, in the order asked, reading only the
        shards that hold them."""
        ids = as_direction_ids(direction_ids)
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
        """Check every stored shard against its record, and every record against the manifest:
        {file: what is wrong}, empty when all are whole."""
        problems = dict(self._rejected)
        for record in self._records.values():
            try:
                self._load(record, verify=True)
            except CorruptShardError as exc:
                problems[record["file"]] = str(exc)
        return problems

    # -- internals ------------------------------------------------------------------------
    def _method(self) -> str:
        methods = sorted({r["method"] for r in self._records.values()})
        return methods[0] if len(methods) == 1 else "+".join(methods)

    def _result(self, vals, vecs, resid, ids, method, extra):
        """A DecompositionResult whose direction_ids are the stored ids; `indices` holds the
        output indices for index directions (None for float direction vectors, as from decompose)."""
        from ..result import DecompositionResult

        indices = ids if self.manifest["directions"]["kind"] == "indices" else None
        return DecompositionResult(eigenvalues=vals, eigenvectors=vecs, residuals=resid, method=method,
                                   which=self.manifest["options"]["which"], indices=indices,
                                   metadata={**self.manifest["options"], **extra,
                                             "direction_ids": [int(i) for i in ids]})

    def _shard(self, index: int) -> dict:
        if index in self._cache:
            self._cache.move_to_end(index)
            return self._cache[index]
        shard = self._load(self._records[index])
        self._cache[index] = shard
        while len(self._cache) > self._cache_size:
            self._cache.popitem(last=False)
        return shard

    def _load(self, record: dict, verify: bool | None = None) -> dict:
        verify = self.verify_on_load if verify is None else verify
        return _load_checked(self.shard_dir, record, self.manifest, self._ids, verify)


def _summary(ids: torch.Tensor) -> str:
    shown = ", ".join(str(i) for i in ids[:6].tolist())
    return f"[{shown}{', ...' if len(ids) > 6 else ''}]"


def open_results(path, *, verify: bool = True) -> StoredResults:
    """Open a sweep store lazily: index by direction id (the ids the sweep was given, e.g. token
    ids), iterate shards with `chunks()`, `len`, `metadata`. Nothing but the manifest and the
    direction ids is read until asked; the manifest is checked against its checksum and the ids
    against the manifest, each shard against its sha256 when loaded (verify=False skips that), its
    ids and the shapes the manifest promises; a damaged one raises CorruptShardError naming the
    file."""
    return StoredResults(path, verify=verify)
