"""The ``.snuc`` artefact (SPEC §5): a compiled model on disk, and reading it back safely.

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
and renamed into place only once complete, so an existing artefact is replaced only by a
whole new one. Reading never executes code and never unpickles: JSON and text are parsed,
arrays are read with ``allow_pickle=False``, and every member's checksum is verified before
its content is interpreted.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import re
import secrets
import shutil
import tempfile
import zipfile
import zlib
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any, Protocol

import numpy as np

from snuc.ir.errors import SnucError
from snuc.ir.graph import Graph
from snuc.ir.target import TargetSpec
from snuc.ir.text import large_constants, parse_graph, print_graph
from snuc.runtime.config import RunConfig, run_config

FORMAT_VERSION = 1
"""The artefact layout this snuc writes and reads; bump it on any incompatible change."""

MANIFEST = "manifest.json"
GRAPH = "graph.ir"
ARRAYS = "arrays.npz"
PROGRAM = "program.s"
REPORT = "report.json"
REQUIRED_MEMBERS = (GRAPH, ARRAYS, REPORT)

TIME = "T"
"""The symbolic time dimension leading every input and output spec's shape."""

_CONSTANTS_PREFIX = "constants/"
_EXTRA_PREFIX = "extra/"
_SHA256_RE = re.compile(r"[0-9a-f]{64}")
_CHUNK_BYTES = 1 << 20
# Zip members are copied out before they are parsed (np.load must seek, and seeking in a
# compressed zip member re-reads it); copies up to this size stay in memory.
_SPOOL_BYTES = 32 << 20

# What reading a damaged or foreign zip member raises: a bad CRC or header, corrupt
# compressed data, an unsupported compression method, encryption.
_DAMAGED_MEMBER_ERRORS = (
    zipfile.BadZipFile,
    zlib.error,
    EOFError,
    NotImplementedError,
    RuntimeError,
)

IOSpec = dict[str, Any]
"""``{"name": str, "shape": ["T", "B", 88], "dtype": "float32"}``."""


# --------------------------------------------------------------------------- I/O specs


def io_spec(graph: Graph) -> tuple[list[IOSpec], list[IOSpec]]:
    """The specs of a model's sequence inputs and outputs, as the manifest records them.

    A step graph's value is one timestep, so each sequence gains a leading ``"T"``; the
    batch dimension stays ``"B"`` and dtypes are NumPy names (``float32``, ``int64``).

    Args:
        graph: the compiled step graph.

    Returns:
        ``(inputs, outputs)``, each a list of ``{name, shape, dtype}`` in graph order.
    """
    return (
        [_value_spec(graph, name) for name in graph.inputs],
        [_value_spec(graph, name) for name in graph.outputs],
    )


def _value_spec(graph: Graph, name: str) -> IOSpec:
    type_ = graph.type_of(name)
    return {"name": name, "shape": [TIME, *type_.shape], "dtype": type_.np_dtype.name}


# --------------------------------------------------------------------------- the artefact


def _numpy_plan(
    graph: Graph, config: RunConfig, target: TargetSpec, program: str | None = None
) -> Any:
    from snuc.runtime.numpy_backend import Plan

    return Plan.build(graph, config, target=target)  # it runs the graph, not the program


def _sim_plan(
    graph: Graph, config: RunConfig, target: TargetSpec, program: str | None = None
) -> Any:
    from snuc.runtime.simulator import SimPlan

    return SimPlan.build(graph, config, target=target, program=program)


BACKENDS: dict[str, Callable[..., Any]] = {"numpy": _numpy_plan, "sim": _sim_plan}
"""Plan builders by backend name: ``build(graph, config, target, program) -> plan``
(``program``: the artefact's assembly, or None) whose ``plan.run(inputs, config,
progress=)`` returns outputs by name."""

_RUN_KEYWORDS = {
    "mode": "mode",
    "seed": "seed",
    "t_inference": "t_inference_s",
    "drift_compensation": "drift_compensation",
    "batch_size": "batch_size",
    "batch_offset": "batch_offset",
}
"""``Artefact.run``'s keyword options (SPEC §8) by the RunConfig field each sets."""


def artefact_run_config(config: RunConfig | None, options: Mapping[str, Any]) -> RunConfig:
    """The configuration ``Artefact.run`` gets: ``config`` (default: ``pcm`` mode) with
    the keyword options replaced; ``drift_compensation`` may also be True (``"global"``)
    or False (None).

    Raises:
        SnucError: the result is not a valid configuration.
        TypeError: an unknown keyword.
    """
    unknown = sorted(options.keys() - _RUN_KEYWORDS.keys())
    if unknown:
        raise TypeError(f"Artefact.run() got an unexpected keyword argument {unknown[0]!r}")
    fields = {_RUN_KEYWORDS[k]: v for k, v in options.items()}
    compensation = fields.get("drift_compensation")
    if isinstance(compensation, bool):
        fields["drift_compensation"] = "global" if compensation else None
    return run_config(config or RunConfig(mode="pcm"), fields)


@dataclass(frozen=True, eq=False)
class Artefact:
    """A compiled model: what ``snuc.compile`` returns and a ``.snuc`` path holds.

    Attributes:
        graph: the final compiled IR.
        target: the target's parameters by key (``TargetSpec.to_dict()``), JSON-ready.
        report: the contents of ``report.json`` (SPEC §7).
        program: the simulator's text assembly, or None when it was not emitted.
        source: the file name of the model it was compiled from.
        extra_arrays: arrays that are not graph constants (e.g. calibration samples).
    """

    graph: Graph
    target: dict[str, Any]
    report: dict[str, Any]
    program: str | None = None
    source: str = ""
    extra_arrays: dict[str, np.ndarray] = field(default_factory=dict)
    _plans: dict[tuple, Any] = field(default_factory=dict, init=False, repr=False)

    def __post_init__(self) -> None:
        for name, array in self.extra_arrays.items():
            if not isinstance(name, str) or not name:
                raise SnucError(f"extra array name {name!r} must be a non-empty string")
            if not isinstance(array, np.ndarray):
                raise SnucError(
                    f"extra array {name!r} must be a NumPy array, got {type(array).__name__}"
                )
            if array.dtype.hasobject:
                raise SnucError(
                    f"extra array {name!r} has dtype {array.dtype}; only arrays of numbers "
                    "can be saved (an artefact never holds pickled objects)"
                )

    @property
    def inputs(self) -> list[IOSpec]:
        """The sequence inputs' specs (see :func:`io_spec`)."""
        return io_spec(self.graph)[0]

    @property
    def outputs(self) -> list[IOSpec]:
        """The outputs' specs (see :func:`io_spec`)."""
        return io_spec(self.graph)[1]

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, Artefact):
            return NotImplemented
        return (
            self.graph == other.graph
            and self.target == other.target
            and self.report == other.report
            and self.program == other.program
            and self.source == other.source
            and self.extra_arrays.keys() == other.extra_arrays.keys()
            and all(
                _same_array(array, other.extra_arrays[name])
                for name, array in self.extra_arrays.items()
            )
        )

    __hash__ = None  # type: ignore[assignment]

    def run(
        self,
        inputs: np.ndarray | Mapping[str, np.ndarray],
        config: RunConfig | None = None,
        *,
        backend: str = "numpy",
        progress: bool = False,
        **options: Any,
    ) -> np.ndarray | dict[str, np.ndarray]:
        """Run sequences ``[T, B, ...]`` on the simulated chip (SPEC §6, §8).

        ``art.run(x, mode="pcm", seed=0, t_inference=86400.0)`` and
        ``art.run(x, config=RunConfig(mode="pcm", seed=0, t_inference_s=86400.0))`` are
        the same run.

        Args:
            inputs: the sequence input, or a dict by input name.
            config: the run's :class:`~snuc.runtime.config.RunConfig`; default: ``pcm``
                mode on chip 0, one hour after programming, global drift compensation.
            backend: ``"numpy"`` (fast) or ``"sim"`` (the cycle-level simulator).
            progress: show a progress bar on stderr.
            **options: fields of ``config`` to replace, by keyword:
                ``mode``: ``"float"``, ``"quantized"`` or ``"pcm"``.
                ``seed``: names one simulated chip (programming noise, drift exponents,
                read noise).
                ``t_inference``: seconds after programming.
                ``drift_compensation``: True (global), False/None (off), or
                ``"global"``/``"column"``.
                ``batch_size``: run the batch in chunks of this many sequences; pcm read
                noise is drawn per chunk, keyed also by the chunk's first sequence, so
                chunks do not repeat each other's noise.
                ``batch_offset``: pcm: the index of ``inputs``' first sequence when they
                are a chunk of a larger batch that the caller runs chunk by chunk (0: a
                whole batch); it keys the read noise as ``batch_size``'s chunks are keyed.

        Returns:
            The output ``[T, B, ...]``, or a dict by output name when there are several.

        Raises:
            SnucError: an unknown backend, a bad configuration, inputs that do not fit.
        """
        if backend not in BACKENDS:
            raise SnucError(f"unknown backend {backend!r}; expected one of {', '.join(BACKENDS)}")
        config = artefact_run_config(config, options)
        key = (backend, config.plan_config)
        plans = self._plans
        if key not in plans:
            plans.clear()  # one chip at a time: a plan holds every tile's conductances
            target = TargetSpec.from_dict(self.target)
            plans[key] = BACKENDS[backend](self.graph, config, target, self.program)
        outputs = plans[key].run(inputs, config, progress=progress)
        return next(iter(outputs.values())) if len(outputs) == 1 else outputs

    @property
    def last_stats(self) -> Any:
        """What the last run measured, when its backend measures anything (``sim``: a
        :class:`~snuc.runtime.simulator.SimStats`); else None."""
        return next((getattr(p, "last_stats", None) for p in self._plans.values()), None)

    def save(self, path: str | os.PathLike[str], *, zip: bool = False) -> Path:
        """Write the artefact to ``path``, atomically.

        Args:
            path: where to write; a zip file when it ends with ``.zip`` or ``zip`` is true,
                otherwise a directory. An existing artefact there is replaced only once
                the new one is complete; anything else there is left alone (an error).
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
        # Serialise before touching the disk: an error here leaves no trace at all.
        texts = self._text_members()
        staging: Path | None = None
        packed: Path | None = None
        try:
            staging = _claim_sibling(dest, os.mkdir)
            self._write_members(staging, texts)
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

    @staticmethod
    def load(path: str | os.PathLike[str]) -> Artefact:
        """Read and verify an artefact; see :func:`load`."""
        return load(path)

    def _text_members(self) -> dict[str, bytes]:
        texts = {GRAPH: print_graph(self.graph).encode("utf-8")}
        if self.program is not None:
            texts[PROGRAM] = self.program.encode("utf-8")
        texts[REPORT] = _json_bytes(self.report)
        return texts

    def _arrays(self) -> dict[str, np.ndarray]:
        """Every array of ``arrays.npz`` by key; prefixes keep the two kinds apart."""
        arrays = {_CONSTANTS_PREFIX + k: v for k, v in large_constants(self.graph).items()}
        arrays.update({_EXTRA_PREFIX + k: v for k, v in self.extra_arrays.items()})
        return arrays

    def _write_members(self, staging: Path, texts: Mapping[str, bytes]) -> None:
        """Every member into ``staging``; the manifest last, with the others' checksums."""
        for name, data in texts.items():
            _write_file(staging / name, data)
        _write_npz(staging / ARRAYS, self._arrays())
        inputs, outputs = io_spec(self.graph)
        version = _snuc_version()
        manifest = {
            "format_version": FORMAT_VERSION,
            "snuc_version": version,
            "created_by": f"snuc {version}",
            "source": self.source,
            "target": self.target,
            "inputs": inputs,
            "outputs": outputs,
            "members": {name: _digest_file(staging / name) for name in sorted([*texts, ARRAYS])},
        }
        _write_file(staging / MANIFEST, _json_bytes(manifest))


def _same_array(a: np.ndarray, b: np.ndarray) -> bool:
    return a.dtype == b.dtype and a.shape == b.shape and a.tobytes() == b.tobytes()


def _snuc_version() -> str:
    # Imported here: the ``snuc`` package re-exports :func:`load` (SPEC §8), so importing
    # it at the top of this module would be circular.
    from snuc import __version__

    return __version__


# --------------------------------------------------------------------------- writing


def _json_bytes(data: object) -> bytes:
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
        candidate = _sibling_name(dest, "tmp")
        try:
            create(candidate)
        except FileExistsError:
            continue
        return candidate


def _sibling_name(dest: Path, tag: str) -> Path:
    """An unused hidden name beside ``dest``."""
    while True:
        candidate = dest.with_name(f".{dest.name}.{secrets.token_hex(6)}.{tag}")
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


def _digest_stream(f: IO[bytes]) -> tuple[str, int]:
    digest = hashlib.sha256()
    size = 0
    while chunk := f.read(_CHUNK_BYTES):
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
    """Rename the finished artefact to ``dest``; an existing one goes only after that."""
    if not os.path.lexists(dest):
        os.rename(built, dest)
        return
    if built.is_file() and dest.is_file() and not dest.is_symlink():
        os.replace(built, dest)
        return
    # A directory cannot be replaced in one rename: move the old one aside first, and
    # back if the new one cannot take its place.
    aside = _sibling_name(dest, "old")
    os.rename(dest, aside)
    try:
        os.rename(built, dest)
    except BaseException:
        os.rename(aside, dest)
        raise
    _remove(aside)


def _remove(path: Path) -> None:
    """Delete a file or directory tree if it exists; a leftover is not worth an error."""
    if path.is_dir() and not path.is_symlink():
        shutil.rmtree(path, ignore_errors=True)
    else:
        with contextlib.suppress(OSError):
            path.unlink(missing_ok=True)


# --------------------------------------------------------------------------- reading


def load(path: str | os.PathLike[str]) -> Artefact:
    """Read an artefact (a directory or a zip file) and verify it completely.

    Every member the manifest lists must be present with the recorded size and sha256;
    members it does not list are never read. Arrays are read with ``allow_pickle=False``
    and the IR must parse and match the manifest's input and output specs.

    Args:
        path: the artefact.

    Returns:
        The artefact, with everything read into memory.

    Raises:
        SnucError: one line naming the artefact and what is wrong with it (missing, not an
            artefact, another format version, a missing, truncated or tampered member,
            an unsafe zip, arrays that would need unpickling, invalid IR).
    """
    where = str(path)
    source = Path(path)
    if not source.exists():
        raise SnucError(f"artefact {where} does not exist")
    if source.is_dir():
        return _read(_DirMembers(source), where)
    try:
        zf = zipfile.ZipFile(source)
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

    def open(self, name: str) -> contextlib.AbstractContextManager[IO[bytes]]:
        """A readable, seekable stream of the member's bytes."""
        ...


class _DirMembers:
    def __init__(self, root: Path) -> None:
        self.root = root

    def has(self, name: str) -> bool:
        return (self.root / name).is_file()

    @contextlib.contextmanager
    def open(self, name: str) -> Iterator[IO[bytes]]:
        with open(self.root / name, "rb") as f:
            yield f


class _ZipMembers:
    def __init__(self, zf: zipfile.ZipFile, where: str) -> None:
        names = zf.namelist()
        for name in names:
            if not _is_safe_name(name.rstrip("/")):
                raise SnucError(
                    f"artefact {where}: unsafe zip member name {name!r} (absolute, or "
                    "with '..'); refusing to read it"
                )
        self.zf = zf
        # A zip of the artefact directory itself holds its members under one folder.
        self.prefix = _zip_root(names) or ""
        self.names = set(names)

    def has(self, name: str) -> bool:
        return self.prefix + name in self.names

    @contextlib.contextmanager
    def open(self, name: str) -> Iterator[IO[bytes]]:
        with (
            self.zf.open(self.prefix + name) as member,
            tempfile.SpooledTemporaryFile(max_size=_SPOOL_BYTES) as copy,
        ):
            shutil.copyfileobj(member, copy, _CHUNK_BYTES)
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


def _read(members: _Members, where: str) -> Artefact:
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
    graph = _read_graph(texts[GRAPH], arrays, where)
    if [manifest["inputs"], manifest["outputs"]] != list(io_spec(graph)):
        raise SnucError(
            f"artefact {where}: manifest.json's inputs and outputs do not match graph.ir; "
            "recompile the model"
        )
    return Artefact(
        graph=graph,
        target=manifest["target"],
        report=_read_report(texts[REPORT], where),
        program=texts.get(PROGRAM),
        source=manifest["source"],
        extra_arrays={
            k.removeprefix(_EXTRA_PREFIX): v
            for k, v in arrays.items()
            if k.startswith(_EXTRA_PREFIX)
        },
    )


def _read_manifest(members: _Members, where: str) -> dict[str, Any]:
    """The manifest, checked for the version and the shape this snuc expects."""
    if not members.has(MANIFEST):
        raise SnucError(
            f"{where} is not a .snuc artefact: it has no {MANIFEST} (or it is incomplete)"
        )
    try:
        with members.open(MANIFEST) as f:
            raw = f.read()
    except OSError as e:
        raise SnucError(f"artefact {where}: cannot read {MANIFEST}: {e.strerror or e}") from None
    except _DAMAGED_MEMBER_ERRORS as e:
        raise SnucError(f"artefact {where}: {MANIFEST} is unreadable ({_one_line(e)})") from None
    try:
        data = json.loads(raw.decode("utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as e:
        raise SnucError(
            f"artefact {where}: {MANIFEST} is not valid JSON ({_one_line(e)})"
        ) from None
    if not isinstance(data, dict):
        raise _malformed(where, "it is not a JSON object")
    version = data.get("format_version")
    if not isinstance(version, int) or isinstance(version, bool):
        raise _malformed(where, "format_version is missing or not an integer")
    if version != FORMAT_VERSION:
        raise SnucError(
            f"artefact {where} has format version {version}, but this snuc "
            f"({_snuc_version()}) reads format version {FORMAT_VERSION}; recompile the model"
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


def _malformed(where: str, problem: str) -> SnucError:
    return SnucError(f"artefact {where}: {MANIFEST} is malformed: {problem}; recompile the model")


@contextlib.contextmanager
def _verified(
    members: _Members, name: str, entry: Mapping[str, Any], where: str
) -> Iterator[IO[bytes]]:
    """The member's bytes, rewound, once its size and sha256 match the manifest's."""
    with contextlib.ExitStack() as stack:
        try:
            f = stack.enter_context(members.open(name))
            sha256, size = _digest_stream(f)
        except OSError as e:
            raise SnucError(f"artefact {where}: cannot read {name}: {e.strerror or e}") from None
        except _DAMAGED_MEMBER_ERRORS as e:
            raise SnucError(
                f"artefact {where}: member {name} is unreadable ({_one_line(e)}); it is "
                "tampered or truncated, recompile the model"
            ) from None
        if size != entry["size"] or sha256 != entry["sha256"]:
            found = f"{size} bytes" if size != entry["size"] else "a different sha256"
            raise SnucError(
                f"artefact {where}: member {name} is tampered or truncated ({found}; the "
                f"manifest says {entry['size']} bytes, sha256 {entry['sha256'][:12]}...); "
                "recompile the model"
            )
        f.seek(0)
        yield f


def _decode(data: bytes, name: str, where: str) -> str:
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError as e:
        raise SnucError(f"artefact {where}: {name} is not UTF-8 text ({e})") from None


def _read_arrays(f: IO[bytes], where: str) -> dict[str, np.ndarray]:
    """Every array of ``arrays.npz`` by key, refusing anything that needs unpickling."""
    try:
        npz = np.load(f, allow_pickle=False)
    except (ValueError, OSError, EOFError, zipfile.BadZipFile) as e:
        raise SnucError(f"artefact {where}: {ARRAYS} cannot be read ({_one_line(e)})") from None
    if not isinstance(npz, np.lib.npyio.NpzFile):
        raise SnucError(f"artefact {where}: {ARRAYS} is a single .npy array, not an .npz archive")
    arrays = {}
    with npz:
        for key in npz.files:
            if not key.startswith((_CONSTANTS_PREFIX, _EXTRA_PREFIX)):
                raise SnucError(
                    f"artefact {where}: {ARRAYS} holds an unexpected array {key!r}; "
                    f"expected names under {_CONSTANTS_PREFIX} or {_EXTRA_PREFIX}"
                )
            try:
                arrays[key] = npz[key]
            except (ValueError, OSError, EOFError, zipfile.BadZipFile, zlib.error) as e:
                # An object array raises here: numpy refuses to unpickle it.
                raise SnucError(
                    f"artefact {where}: array {key!r} in {ARRAYS} cannot be read "
                    f"({_one_line(e)}); snuc never unpickles"
                ) from None
    return arrays


def _read_graph(text: str, arrays: Mapping[str, np.ndarray], where: str) -> Graph:
    constants = {
        k.removeprefix(_CONSTANTS_PREFIX): v
        for k, v in arrays.items()
        if k.startswith(_CONSTANTS_PREFIX)
    }
    try:
        graph = parse_graph(text, constants, filename=GRAPH)
    except SnucError as e:
        raise SnucError(f"artefact {where}: invalid IR: {e}") from None
    unused = sorted(constants.keys() - large_constants(graph).keys())
    if unused:
        raise SnucError(
            f"artefact {where}: {ARRAYS} holds constants that {GRAPH} does not declare: "
            f"{', '.join(unused)}"
        )
    return graph


def _read_report(text: str, where: str) -> dict[str, Any]:
    try:
        report = json.loads(text)
    except json.JSONDecodeError as e:
        raise SnucError(f"artefact {where}: {REPORT} is not valid JSON ({e})") from None
    if not isinstance(report, dict):
        raise SnucError(f"artefact {where}: {REPORT} is not a JSON object")
    return report


def _one_line(error: BaseException) -> str:
    return " ".join(str(error).split()) or type(error).__name__
