"""The files of a ``.snuc`` artefact (SPEC §5): their layout, atomic writing, verified reading.

An artefact is a directory, or a zip file of the same members:

* ``manifest.json`` -- format and snuc versions, the target's parameters, the model's
  input and output specs, its source file name, and the sha256 and size of every other
  member;
* ``graph.ir`` -- the final IR in its text form (``snuc.ir.text``);
* ``arrays.npz`` -- the graph's large constants under ``constants/<name>`` and any other
  arrays (calibration data, ...) under ``extra/<name>``;
* ``program.s`` -- the simulator's assembly, when there is one;
* ``report.json`` -- the compile report (SPEC §7).

Writing is atomic: the members are built under a hidden temporary name beside the target
(``.<name>.<pid>-<random>.tmp``) and put in place only once complete, by one rename or, to
replace a directory, one atomic exchange (Linux ``renameat2``), so an existing artefact is
replaced only by a whole new one and the destination is never missing; the next write to
a path removes the temporaries of earlier writers that were killed. Reading never executes
code and never unpickles and does no work before its limits are checked: only regular
files are read (no links, devices or FIFOs); every member's size is checked against its
limit and, in a zip, against the size the zip declares before anything is inflated; JSON
goes through :func:`snuc.ir.limits.load_json`; every array's ``.npy`` header is checked
before the array is read (``allow_pickle=False``); every member's checksum is verified
before its content is interpreted. What the members mean (an
:class:`~snuc.runtime.artefact.Artefact`) is :mod:`snuc.runtime.artefact`'s.
"""

from __future__ import annotations

import contextlib
import ctypes
import errno
import hashlib
import json
import os
import re
import secrets
import shutil
import stat
import tempfile
import zipfile
import zlib
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any, Protocol

import numpy as np

from snuc.ir.errors import SnucError
from snuc.ir.limits import MAX_TENSOR_BYTES_ENV, check_tensor_bytes, load_json, max_tensor_bytes

FORMAT_VERSION = 2
"""The artefact layout this snuc writes and reads; bump it on any incompatible change.

2: the neuron family's ops in the IR (``snu.lif_sub``, ``snu.if``, ``snu.cuba``,
``snu.li``), the neuron units' target keys and costs, the report's ``neurons``.
1: the first layout (``snu.layer`` only). An artefact of another version is not read: its
program and report would not be what its graph compiles to now; it is recompiled."""

MANIFEST = "manifest.json"
GRAPH = "graph.ir"
ARRAYS = "arrays.npz"
PROGRAM = "program.s"
REPORT = "report.json"
REQUIRED_MEMBERS = (GRAPH, ARRAYS, REPORT)

_CONSTANTS_PREFIX = "constants/"
_EXTRA_PREFIX = "extra/"
_SHA256_RE = re.compile(r"[0-9a-f]{64}")
_CHUNK_BYTES = 1 << 20
# Zip members are copied out before they are parsed (np.load must seek, and seeking in a
# compressed zip member re-reads it); copies up to this size stay in memory.
_SPOOL_BYTES = 32 << 20
# Limits checked against what the manifest and the zip directory declare, before a byte is
# inflated or copied (issue "Hardening"): a manifest is a few KB, the text members of the
# largest shipped model (PTB) under 2 MB; the arrays follow the tensor limit of
# snuc.ir.limits, raised with its environment variable for a genuinely larger model.
MAX_MANIFEST_BYTES = 16 << 20
MAX_TEXT_MEMBER_BYTES = 256 << 20
_ARRAYS_PER_TENSOR_LIMIT = 4
"""``arrays.npz`` may hold this many times the one-tensor limit in all."""

# What reading a damaged or foreign zip member raises: a bad CRC or header, corrupt
# compressed data, an unsupported compression method, encryption.
_DAMAGED_MEMBER_ERRORS = (
    zipfile.BadZipFile,
    zlib.error,
    EOFError,
    NotImplementedError,
    RuntimeError,
)


@dataclass(frozen=True)
class StoredArtefact:
    """An artefact's members as read and verified, not yet interpreted.

    Attributes:
        manifest: ``manifest.json``, checked for its version and shape.
        texts: the text members (``graph.ir``, ``report.json``, ``program.s`` when
            present) by name.
        constants: the graph's large constants by name.
        extra_arrays: the other arrays by name.
    """

    manifest: dict[str, Any]
    texts: dict[str, str]
    constants: dict[str, np.ndarray]
    extra_arrays: dict[str, np.ndarray]


def write_artefact(
    path: str | os.PathLike[str],
    *,
    texts: Mapping[str, bytes],
    constants: Mapping[str, np.ndarray],
    extra_arrays: Mapping[str, np.ndarray],
    fields: Mapping[str, Any],
    zip: bool = False,
) -> Path:
    """Write an artefact's members to ``path``, atomically.

    Args:
        path: where to write; a zip file when it ends with ``.zip`` or ``zip`` is true,
            otherwise a directory. An existing artefact there is replaced only once the
            new one is complete; anything else there is left alone (an error).
        texts: the text members by name, serialised.
        constants: the graph's large constants, for ``arrays.npz``.
        extra_arrays: the other arrays, for ``arrays.npz``.
        fields: the manifest's fields after its versions (source, target, inputs,
            outputs); the checksums of the members follow them.
        zip: write a zip file whatever the name.

    Returns:
        The path written.

    Raises:
        SnucError: the parent directory is missing or unwritable, the path holds
            something that is not an artefact, or a write failed. Nothing is left
            behind and an existing artefact is untouched.
    """
    dest = Path(path)
    as_zip = zip or dest.name.endswith(".zip")
    parent = _output_parent(dest)
    _check_replaceable(dest)
    remove_leftovers(dest)
    arrays = {_CONSTANTS_PREFIX + k: v for k, v in constants.items()}
    arrays.update({_EXTRA_PREFIX + k: v for k, v in extra_arrays.items()})
    staging: Path | None = None
    packed: Path | None = None
    try:
        staging = _claim_sibling(dest, os.mkdir)
        _write_members(staging, texts, arrays, fields)
        built = staging
        if as_zip:
            packed = _claim_sibling(dest, _create_file)
            _pack_zip(staging, packed)
            built = packed
        _install(built, dest)
    except OSError as e:
        raise SnucError(
            f"cannot write artefact {path}: {e.strerror or e}; check that {parent} "
            "is a writable directory with free space"
        ) from None
    finally:
        if staging is not None:
            _remove(staging)
        if packed is not None:
            _remove(packed)
    return dest


def _write_members(
    staging: Path,
    texts: Mapping[str, bytes],
    arrays: Mapping[str, np.ndarray],
    fields: Mapping[str, Any],
) -> None:
    """Every member into ``staging``; the manifest last, with the others' checksums."""
    for name, data in texts.items():
        _write_file(staging / name, data)
    _write_npz(staging / ARRAYS, arrays)
    version = _snuc_version()
    manifest = {
        "format_version": FORMAT_VERSION,
        "snuc_version": version,
        "created_by": f"snuc {version}",
        **fields,
        "members": {name: _digest_file(staging / name) for name in sorted([*texts, ARRAYS])},
    }
    _write_file(staging / MANIFEST, json_bytes(manifest))


def _snuc_version() -> str:
    # Imported here: the ``snuc`` package re-exports :func:`load` (SPEC §8), so importing
    # it at the top of this module would be circular.
    from snuc import __version__

    return __version__


# --------------------------------------------------------------------------- writing


def json_bytes(data: object) -> bytes:
    text = json.dumps(data, indent=2, ensure_ascii=False, allow_nan=False, default=_json_value)
    return (text + "\n").encode("utf-8")


def _json_value(value: object) -> object:
    """NumPy scalars and arrays, which reports naturally hold, as plain JSON values."""
    if isinstance(value, np.generic | np.ndarray):
        return value.tolist()
    raise TypeError(f"{type(value).__name__} is not JSON serialisable")


def _output_parent(dest: Path) -> Path:
    """The directory ``dest`` goes in; it must exist."""
    if dest.name in ("", ".", ".."):
        raise SnucError(f"cannot write artefact {dest}: expected a file or directory name")
    parent = dest.parent
    if not parent.exists():
        raise SnucError(
            f"cannot write artefact {dest}: directory {parent} does not exist; create it first"
        )
    if not parent.is_dir():
        raise SnucError(f"cannot write artefact {dest}: {parent} is not a directory")
    return parent


def _check_replaceable(dest: Path) -> None:
    """Refuse to overwrite anything but an artefact (or an empty directory)."""
    if not os.path.lexists(dest):
        return
    if dest.is_dir():
        if (dest / MANIFEST).is_file() or not any(dest.iterdir()):
            return
    elif dest.is_file() and _is_zip_artefact(dest):
        return
    raise SnucError(
        f"cannot write artefact {dest}: it exists and is not a .snuc artefact; "
        "remove it or choose another output path"
    )


def _is_zip_artefact(path: Path) -> bool:
    try:
        with zipfile.ZipFile(path) as zf:
            return _zip_root(zf.namelist()) is not None
    except (zipfile.BadZipFile, OSError):
        return False


def _claim_sibling(dest: Path, create: Callable[[Path], None]) -> Path:
    """A new hidden temporary path beside ``dest``, made by ``create`` (which fails with
    FileExistsError if the path exists). Unlike ``tempfile``'s, it gets the default
    permissions, which the finished artefact keeps."""
    while True:
        candidate = sibling_name(dest, "tmp")
        try:
            create(candidate)
        except FileExistsError:
            continue
        return candidate


def sibling_name(dest: Path, tag: str) -> Path:
    """An unused hidden name beside ``dest``."""
    while True:
        # The writer's pid lets a later write tell a killed writer's leftovers from a
        # live one's (see remove_leftovers).
        candidate = dest.with_name(f".{dest.name}.{os.getpid()}-{secrets.token_hex(6)}.{tag}")
        if not os.path.lexists(candidate):
            return candidate


def _create_file(path: Path) -> None:
    with open(path, "xb"):
        pass


def _write_file(path: Path, data: bytes) -> None:
    with open(path, "xb") as f:
        f.write(data)
        f.flush()
        os.fsync(f.fileno())


def _write_npz(path: Path, arrays: Mapping[str, np.ndarray]) -> None:
    """An ``.npz`` as ``np.savez`` writes it, but with keys taken verbatim (``np.savez``
    takes them as keyword arguments, so a key such as ``file`` would clash)."""
    with open(path, "xb") as f:
        with zipfile.ZipFile(f, "w", zipfile.ZIP_STORED, allowZip64=True) as zf:
            for key, array in arrays.items():
                with zf.open(f"{key}.npy", "w", force_zip64=True) as member:
                    np.lib.format.write_array(member, np.asanyarray(array), allow_pickle=False)
        f.flush()
        os.fsync(f.fileno())


def _digest_file(path: Path) -> dict[str, Any]:
    with open(path, "rb") as f:
        sha256, size = _digest_stream(f)
    return {"sha256": sha256, "size": size}


def _digest_stream(f: IO[bytes], limit: int | None = None) -> tuple[str, int]:
    """The sha256 and size of the stream's bytes, of its first ``limit`` at most."""
    digest = hashlib.sha256()
    size = 0
    while chunk := f.read(_CHUNK_BYTES if limit is None else min(_CHUNK_BYTES, limit - size)):
        digest.update(chunk)
        size += len(chunk)
    return digest.hexdigest(), size


def _pack_zip(staging: Path, packed: Path) -> None:
    """Zip the staged members into ``packed``: the manifest first, the arrays stored
    uncompressed so that reading them back needs no inflation."""
    names = [MANIFEST, *sorted(p.name for p in staging.iterdir() if p.name != MANIFEST)]
    with open(packed, "wb") as f:
        with zipfile.ZipFile(f, "w", allowZip64=True) as zf:
            for name in names:
                method = zipfile.ZIP_STORED if name == ARRAYS else zipfile.ZIP_DEFLATED
                zf.write(staging / name, arcname=name, compress_type=method)
        f.flush()
        os.fsync(f.fileno())


def _install(built: Path, dest: Path) -> None:
    """Put the finished artefact at ``dest`` with no moment at which ``dest`` is missing:
    one rename, or one exchange of the two paths when ``dest`` is a directory (the old
    artefact is then at ``built``'s name, which the caller removes)."""
    if not os.path.lexists(dest):
        os.rename(built, dest)
        return
    if built.is_file() and dest.is_file() and not dest.is_symlink():
        os.replace(built, dest)
        return
    if _exchange(built, dest):
        return
    # No atomic exchange here (not Linux, or a file system without it): move the old one
    # aside first, and back if the new one cannot take its place. A kill between the two
    # renames leaves the old artefact at the hidden ``.old`` name.
    aside = sibling_name(dest, "old")
    os.rename(dest, aside)
    try:
        os.rename(built, dest)
    except BaseException:
        os.rename(aside, dest)
        raise
    _remove(aside)


_AT_FDCWD = -100
_RENAME_EXCHANGE = 2


def _exchange(a: Path, b: Path) -> bool:
    """Swap paths ``a`` and ``b`` in one atomic step (Linux ``renameat2`` with
    ``RENAME_EXCHANGE``); False where the system or the file system cannot."""
    try:
        renameat2 = ctypes.CDLL(None, use_errno=True).renameat2
    except (AttributeError, OSError):
        return False
    if renameat2(_AT_FDCWD, os.fsencode(a), _AT_FDCWD, os.fsencode(b), _RENAME_EXCHANGE) == 0:
        return True
    err = ctypes.get_errno()
    if err in (errno.EINVAL, errno.ENOSYS, errno.EOPNOTSUPP):
        return False
    raise OSError(err, os.strerror(err), str(b))


def remove_leftovers(dest: Path) -> None:
    """Remove the hidden temporaries of earlier writes to ``dest`` whose process is gone
    (killed mid-write); a live writer's are left alone."""
    pattern = re.compile(rf"\.{re.escape(dest.name)}\.(\d+)-[0-9a-f]{{12}}\.(?:tmp|old)")
    try:
        entries = list(dest.parent.iterdir())
    except OSError:
        return
    for entry in entries:
        match = pattern.fullmatch(entry.name)
        if match and not _process_alive(int(match.group(1))):
            _remove(entry)


def _process_alive(pid: int) -> bool:
    if pid == os.getpid():
        return True
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except (PermissionError, OverflowError):
        return True  # someone else's process, or a name that is no pid: leave it
    return True


def _remove(path: Path) -> None:
    """Delete a file or directory tree if it exists; a leftover is not worth an error."""
    if path.is_dir() and not path.is_symlink():
        shutil.rmtree(path, ignore_errors=True)
    else:
        with contextlib.suppress(OSError):
            path.unlink(missing_ok=True)


# --------------------------------------------------------------------------- reading


def read_artefact(path: str | os.PathLike[str]) -> StoredArtefact:
    """Read an artefact's members (a directory or a zip file) and verify them.

    Every member the manifest lists must be present with the recorded size and sha256;
    members it does not list are never read. Sizes are checked before any work: a zip
    member's declared size must be the manifest's and within the member's limit
    (:data:`MAX_MANIFEST_BYTES`, :data:`MAX_TEXT_MEMBER_BYTES`, the arrays' from
    :func:`~snuc.ir.limits.max_tensor_bytes`) before it is inflated, and every array's
    header is checked before the array is read. Only regular files are read: symbolic
    links, devices and FIFOs are refused. Arrays are read with ``allow_pickle=False``.

    Raises:
        SnucError: one line naming the artefact and what is wrong with it (missing, not an
            artefact, another format version, a missing, truncated, oversized or tampered
            member, a member that is not a regular file, an unsafe zip, arrays that would
            need unpickling).
    """
    where = str(path)
    try:
        mode = os.stat(path).st_mode
    except FileNotFoundError:
        raise SnucError(f"artefact {where} does not exist") from None
    except OSError as e:
        raise SnucError(f"cannot read artefact {where}: {e.strerror or e}") from None
    if stat.S_ISDIR(mode):
        return _read(_DirMembers(Path(path), where), where)
    if not stat.S_ISREG(mode):
        raise SnucError(
            f"{where} is not a .snuc artefact: it is neither a directory nor a regular "
            "file (a device, FIFO or socket is never read)"
        )
    try:
        zf = zipfile.ZipFile(path)
    except zipfile.BadZipFile:
        raise SnucError(
            f"{where} is not a .snuc artefact: it is neither a directory nor a zip file "
            "(or the zip file is truncated)"
        ) from None
    except OSError as e:
        raise SnucError(f"cannot read artefact {where}: {e.strerror or e}") from None
    with zf:
        return _read(_ZipMembers(zf, where), where)


class _Members(Protocol):
    """The members of an artefact, by name, wherever they are stored."""

    def has(self, name: str) -> bool: ...

    def size(self, name: str) -> int:
        """The member's size as stored (a zip: as its directory declares), read before
        anything of it; a SnucError if it is not a regular file."""
        ...

    def open(self, name: str, limit: int) -> contextlib.AbstractContextManager[IO[bytes]]:
        """A readable, seekable stream of the member's first ``limit`` + 1 bytes at most."""
        ...


class _DirMembers:
    def __init__(self, root: Path, where: str) -> None:
        self.root = root
        self.where = where

    def has(self, name: str) -> bool:
        return os.path.lexists(self.root / name)

    def size(self, name: str) -> int:
        info = os.lstat(self.root / name)
        if not stat.S_ISREG(info.st_mode):
            kind = "a symbolic link" if stat.S_ISLNK(info.st_mode) else "not a regular file"
            raise SnucError(
                f"artefact {self.where}: member {name} is {kind}; snuc reads only regular "
                "files, recompile the model"
            )
        return info.st_size

    @contextlib.contextmanager
    def open(self, name: str, limit: int) -> Iterator[IO[bytes]]:
        # O_NOFOLLOW: a member swapped for a link after size() is still not followed.
        fd = os.open(self.root / name, os.O_RDONLY | getattr(os, "O_NOFOLLOW", 0))
        with open(fd, "rb") as f:
            yield f


class _ZipMembers:
    def __init__(self, zf: zipfile.ZipFile, where: str) -> None:
        infos = zf.infolist()
        for info in infos:
            if not _is_safe_name(info.filename.rstrip("/")):
                raise SnucError(
                    f"artefact {where}: unsafe zip member name {info.filename!r} (absolute, "
                    "or with '..'); refusing to read it"
                )
            # The file type in the Unix mode, where the zip records one (a mode of bare
            # permission bits, as zipfile writes by default, is a regular file).
            kind = stat.S_IFMT(info.external_attr >> 16)
            if kind and kind not in (stat.S_IFREG, stat.S_IFDIR):
                raise SnucError(
                    f"artefact {where}: zip member {info.filename!r} is a symbolic link or "
                    "another non-regular file; refusing to read it"
                )
        names = [info.filename for info in infos]
        self.zf = zf
        self.where = where
        # A zip of the artefact directory itself holds its members under one folder.
        self.prefix = _zip_root(names) or ""
        self.names = set(names)

    def has(self, name: str) -> bool:
        return self.prefix + name in self.names

    def size(self, name: str) -> int:
        return self.zf.getinfo(self.prefix + name).file_size

    @contextlib.contextmanager
    def open(self, name: str, limit: int) -> Iterator[IO[bytes]]:
        with (
            self.zf.open(self.prefix + name) as member,
            tempfile.SpooledTemporaryFile(max_size=_SPOOL_BYTES) as copy,
        ):
            # Never more than the limit and one byte: a directory that lies about the
            # size is caught by the size comparison, not by inflating it all.
            left = limit + 1
            while left > 0 and (chunk := member.read(min(_CHUNK_BYTES, left))):
                copy.write(chunk)
                left -= len(chunk)
            copy.seek(0)
            yield copy


def _zip_root(names: list[str]) -> str | None:
    """Where the manifest sits: ``""`` at the top, ``"dir/"`` under one folder, else None."""
    if MANIFEST in names:
        return ""
    tops = {name.split("/", 1)[0] for name in names}
    if len(tops) == 1 and f"{next(iter(tops))}/{MANIFEST}" in names:
        return f"{next(iter(tops))}/"
    return None


def _is_safe_name(name: str) -> bool:
    """A relative path that stays inside the artefact: no root, drive, ``..`` or ``\\``."""
    if not name or "\\" in name or "\0" in name or name.startswith("/"):
        return False
    if re.match(r"[A-Za-z]:", name):
        return False
    return all(part not in ("", ".", "..") for part in name.split("/"))


def member_limit(name: str) -> int:
    """The largest size, in bytes, that member ``name`` may have."""
    if name == MANIFEST:
        return MAX_MANIFEST_BYTES
    if name == ARRAYS:
        return _ARRAYS_PER_TENSOR_LIMIT * max_tensor_bytes()
    return MAX_TEXT_MEMBER_BYTES


def _read(members: _Members, where: str) -> StoredArtefact:
    manifest = _read_manifest(members, where)
    listed: dict[str, dict[str, Any]] = manifest["members"]
    for name in listed:
        if not members.has(name):
            raise SnucError(
                f"artefact {where}: member {name} is missing; the artefact is incomplete, "
                "recompile the model"
            )
    texts: dict[str, str] = {}
    arrays: dict[str, np.ndarray] = {}
    for name, entry in listed.items():
        with _verified(members, name, entry, where) as f:
            if name == ARRAYS:
                arrays = _read_arrays(f, where)
            elif name in (GRAPH, PROGRAM, REPORT):
                texts[name] = _decode(f.read(), name, where)
    return StoredArtefact(
        manifest=manifest,
        texts=texts,
        constants=_unprefixed(arrays, _CONSTANTS_PREFIX),
        extra_arrays=_unprefixed(arrays, _EXTRA_PREFIX),
    )


def _unprefixed(arrays: Mapping[str, np.ndarray], prefix: str) -> dict[str, np.ndarray]:
    return {k.removeprefix(prefix): v for k, v in arrays.items() if k.startswith(prefix)}


def _read_manifest(members: _Members, where: str) -> dict[str, Any]:
    """The manifest, checked for its size, the version and the shape this snuc expects."""
    if not members.has(MANIFEST):
        raise SnucError(
            f"{where} is not a .snuc artefact: it has no {MANIFEST} (or it is incomplete)"
        )
    try:
        _check_size(MANIFEST, members.size(MANIFEST), where)
        with members.open(MANIFEST, MAX_MANIFEST_BYTES) as f:
            raw = f.read(MAX_MANIFEST_BYTES + 1)
    except OSError as e:
        raise SnucError(f"artefact {where}: cannot read {MANIFEST}: {e.strerror or e}") from None
    except _DAMAGED_MEMBER_ERRORS as e:
        raise SnucError(f"artefact {where}: {MANIFEST} is unreadable ({one_line(e)})") from None
    _check_size(MANIFEST, len(raw), where)
    data = load_json(raw, f"artefact {where}: {MANIFEST}")
    if not isinstance(data, dict):
        raise _malformed(where, "it is not a JSON object")
    version = data.get("format_version")
    if not isinstance(version, int) or isinstance(version, bool):
        raise _malformed(where, "format_version is missing or not an integer")
    if version != FORMAT_VERSION:
        raise SnucError(
            f"artefact {where} has format version {version} (written by {_writer(data)}), "
            f"but this snuc ({_snuc_version()}) reads format version {FORMAT_VERSION}; "
            "recompile the model"
        )
    for key, kind in (
        ("snuc_version", str),
        ("source", str),
        ("target", dict),
        ("inputs", list),
        ("outputs", list),
        ("members", dict),
    ):
        if not isinstance(data.get(key), kind):
            raise _malformed(where, f"{key} is missing or not a JSON {_JSON_KINDS[kind]}")
    for name, entry in data["members"].items():
        _check_member_entry(name, entry, where)
    for name in REQUIRED_MEMBERS:
        if name not in data["members"]:
            raise _malformed(where, f"it does not list {name}")
    return data


def _writer(manifest: dict[str, Any]) -> str:
    """Which snuc wrote a manifest (its ``created_by``), shown safely on one line."""
    created_by = manifest.get("created_by")
    if isinstance(created_by, str) and created_by.isprintable() and 0 < len(created_by) <= 60:
        return created_by
    return "an unknown snuc"


def _check_size(name: str, size: int, where: str) -> None:
    """Refuse a member larger than its limit, saying how to raise the arrays' one."""
    limit = member_limit(name)
    if size <= limit:
        return
    how = (
        f"; if the model really is this large, raise it with {MAX_TENSOR_BYTES_ENV}=<bytes>"
        if name == ARRAYS
        else "; no compiled model has one this large, recompile the model"
    )
    raise SnucError(
        f"artefact {where}: member {name} is {size} bytes, over the limit of {limit} bytes{how}"
    )


_JSON_KINDS = {str: "string", dict: "object", list: "array"}


def _check_member_entry(name: str, entry: object, where: str) -> None:
    if not _is_safe_name(name) or name == MANIFEST:
        raise _malformed(where, f"member name {name!r} is not allowed")
    if not isinstance(entry, dict):
        raise _malformed(where, f"the entry of {name} is not an object")
    sha256, size = entry.get("sha256"), entry.get("size")
    if not isinstance(sha256, str) or not _SHA256_RE.fullmatch(sha256):
        raise _malformed(where, f"the sha256 of {name} is not 64 lowercase hex digits")
    if not isinstance(size, int) or isinstance(size, bool) or size < 0:
        raise _malformed(where, f"the size of {name} is not a non-negative integer")
    _check_size(name, size, where)


def _malformed(where: str, problem: str) -> SnucError:
    return SnucError(f"artefact {where}: {MANIFEST} is malformed: {problem}; recompile the model")


@contextlib.contextmanager
def _verified(
    members: _Members, name: str, entry: Mapping[str, Any], where: str
) -> Iterator[IO[bytes]]:
    """The member's bytes, rewound, once its size and sha256 match the manifest's; the
    size it declares is compared first, so that nothing of a mismatched member is read."""
    expected = entry["size"]
    with contextlib.ExitStack() as stack:
        try:
            declared = members.size(name)
            if declared != expected:
                raise _tampered(name, f"{declared} bytes", entry, where)
            f = stack.enter_context(members.open(name, expected))
            sha256, size = _digest_stream(f, expected + 1)
        except OSError as e:
            raise SnucError(f"artefact {where}: cannot read {name}: {e.strerror or e}") from None
        except _DAMAGED_MEMBER_ERRORS as e:
            raise SnucError(
                f"artefact {where}: member {name} is unreadable ({one_line(e)}); it is "
                "tampered or truncated, recompile the model"
            ) from None
        if size != expected or sha256 != entry["sha256"]:
            found = f"{size} bytes" if size != expected else "a different sha256"
            raise _tampered(name, found, entry, where)
        f.seek(0)
        yield f


def _tampered(name: str, found: str, entry: Mapping[str, Any], where: str) -> SnucError:
    return SnucError(
        f"artefact {where}: member {name} is tampered or truncated ({found}; the "
        f"manifest says {entry['size']} bytes, sha256 {entry['sha256'][:12]}...); "
        "recompile the model"
    )


def _decode(data: bytes, name: str, where: str) -> str:
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError as e:
        raise SnucError(f"artefact {where}: {name} is not UTF-8 text ({e})") from None


def _read_arrays(f: IO[bytes], where: str) -> dict[str, np.ndarray]:
    """Every array of ``arrays.npz`` by key, refusing anything that needs unpickling and
    any array whose header declares more than the limits allow, before reading it."""
    npz = open_npz(f, f"artefact {where}: {ARRAYS}", "an .npz archive")
    arrays = {}
    with npz:
        _check_array_headers(npz, where)
        for key in npz.files:
            try:
                arrays[key] = npz[key]
            except (ValueError, OSError, EOFError, zipfile.BadZipFile, zlib.error) as e:
                raise SnucError(
                    f"artefact {where}: array {key!r} in {ARRAYS} cannot be read "
                    f"({one_line(e)}); snuc never unpickles"
                ) from None
    return arrays


def open_npz(
    source: IO[bytes] | str | os.PathLike, what: str, expected: str
) -> np.lib.npyio.NpzFile:
    """``source`` opened as an ``.npz`` archive whose arrays are read lazily, never
    unpickled; ``what`` names it in the one-line errors, ``expected`` says what it should
    be when it is a single ``.npy`` array instead.

    Raises:
        SnucError: not readable as NumPy data, or a single array.
    """
    try:
        npz = np.load(source, allow_pickle=False)
    except (ValueError, OSError, EOFError, zipfile.BadZipFile) as e:
        raise SnucError(f"{what} cannot be read ({one_line(e)})") from None
    if not isinstance(npz, np.lib.npyio.NpzFile):
        raise SnucError(f"{what} is a single .npy array, not {expected}")
    return npz


def _check_array_headers(npz: np.lib.npyio.NpzFile, where: str) -> None:
    """Every member of ``arrays.npz`` is an ``.npy`` array of numbers under an expected
    name, each within the one-tensor limit and all together within the arrays' limit, as
    their headers declare (NumPy reads exactly what a header declares)."""
    from snuc.runtime.io import npy_header

    total = 0
    for info in npz.zip.infolist():
        key = info.filename.removesuffix(".npy")
        if not info.filename.endswith(".npy") or not key.startswith(
            (_CONSTANTS_PREFIX, _EXTRA_PREFIX)
        ):
            raise SnucError(
                f"artefact {where}: {ARRAYS} holds an unexpected member {info.filename!r}; "
                f"expected .npy arrays under {_CONSTANTS_PREFIX} or {_EXTRA_PREFIX}"
            )
        what = f"artefact {where}: array {key!r} in {ARRAYS}"
        try:
            with npz.zip.open(info) as member:
                shape, dtype = npy_header(member, what)
        except (OSError, EOFError, zipfile.BadZipFile, zlib.error) as e:
            raise SnucError(f"{what} cannot be read ({one_line(e)})") from None
        if dtype.hasobject:
            raise SnucError(f"{what} cannot be read: it holds Python objects; snuc never unpickles")
        check_tensor_bytes(what, shape, dtype.itemsize)
        total += int(np.prod(shape, dtype=object)) * dtype.itemsize
        _check_size(ARRAYS, total, where)


def one_line(error: BaseException) -> str:
    """An exception's message on one line (its type's name when it has none)."""
    return " ".join(str(error).split()) or type(error).__name__
