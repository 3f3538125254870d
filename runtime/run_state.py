"""A run's state between pieces of a sequence (SPEC §6, §8; issue 17 "inputs in pieces").

A long or streaming input runs in pieces: ``Artefact.run(X1, return_state=True)`` returns
the outputs and a :class:`RunState`, ``Artefact.run(X2, state=s, return_state=True)``
continues where the first piece stopped, and the pieces' outputs are those of one run over
the whole sequence, bit for bit, in every mode and backend. For that the state holds, per
run of a chunk of the batch (``batch_size``): every IR state value, and where each noisy
tile's read-noise streams stand, one per sequence
(:class:`~snuc.runtime.read_noise.NoisePosition`); and
for the whole run the timesteps run so far (a duplicated tile reads copy ``t mod K`` at
global step t) and the run's identity (the graph, the mode and chip, the batch and its
chunks), so a state from another configuration is refused in one line, not continued
into a wrong answer.

``snuc run --state-in/--state-out`` keep it in an ``.npz``: the identity, step count and
stream positions as UTF-8 JSON in the array ``meta`` (uint8), each state value as
``state/<chunk>/<name>``; read without unpickling, every header checked before its data.
"""

from __future__ import annotations

import hashlib
import json
import os
import zipfile
import zlib
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from snuc.ir.errors import SnucError
from snuc.ir.graph import Graph
from snuc.ir.limits import check_tensor_bytes, load_json
from snuc.ir.text import print_graph
from snuc.runtime.artefact_files import one_line, open_npz
from snuc.runtime.config import RunConfig
from snuc.runtime.read_noise import NoisePosition

STATE_FORMAT = 2
"""The version of the state file's layout; a file of another version is refused.
Format 2 holds a read-noise position per tile as one generator state per sequence (read
noise keyed per sequence, SPEC §6); format 1 held one generator per tile and cannot be
continued with the per-sequence streams. (Files written between the per-sequence change
and the bump, within session 7, had the new layout under format 1 and are refused too:
rerun the piece.)"""

_META = "meta"
_STATE_PREFIX = "state/"


def graph_fingerprint(graph: Graph) -> str:
    """sha256 of the graph's text and of every constant's bytes: a run state is for the
    graph it was taken from, weights included."""
    digest = hashlib.sha256(print_graph(graph).encode("utf-8"))
    for name, array in graph.constants.items():
        digest.update(f"{name}:{array.dtype.str}:{array.shape}".encode())
        digest.update(np.ascontiguousarray(array).tobytes())
    return digest.hexdigest()


def run_identity(
    fingerprint: str, config: RunConfig, batch: int, chunks: Iterable[int]
) -> dict[str, Any]:
    """What a run must share with the run whose state it continues: the graph, the mode
    (and in ``pcm`` mode the chip, its age and its compensation), the batch, how it is cut
    (``batch_size``) and where its chunks start (they key the read noise)."""
    identity: dict[str, Any] = {"graph": fingerprint, "mode": config.mode}
    if config.mode == "pcm":
        identity.update(
            seed=config.seed,
            t_inference_s=float(config.t_inference_s),
            drift_compensation=config.drift_compensation,
        )
    identity.update(
        batch=batch,
        batch_size=config.batch_size,
        batch_offset=config.batch_offset,
        chunks=[int(c) for c in chunks],
    )
    return identity


@dataclass
class ChunkState:
    """One chunk's state: its IR state values and its noisy tiles' stream positions.

    Attributes:
        values: every IR state value (``graph.states``) by name, at the chunk's batch.
        noise: where each noisy tile's read-noise stream stands, by tile number (a tile
            missing here has not drawn yet: its stream starts at its beginning).
    """

    values: dict[str, np.ndarray] = field(default_factory=dict)
    noise: dict[int, NoisePosition] = field(default_factory=dict)


@dataclass
class RunState:
    """Where a run stopped, to go on with the next piece of its sequences.

    Attributes:
        identity: the run's identity (:func:`run_identity`).
        step: timesteps run so far, over all pieces.
        chunks: each chunk's state, by the chunk's first sequence (``batch_offset + lo``).
    """

    identity: dict[str, Any]
    step: int
    chunks: dict[int, ChunkState]

    def check(self, identity: Mapping[str, Any]) -> None:
        """Refuse to continue a run of another configuration.

        Raises:
            SnucError: the identities differ; one line naming what differs.
        """
        if dict(identity) == self.identity:
            return
        keys = list(dict.fromkeys([*self.identity, *identity]))
        differ = [k for k in keys if self.identity.get(k) != identity.get(k)]
        if "graph" in differ:
            raise SnucError(
                "the run state is of another model (its graph or weights differ); continue a "
                "run with the artefact it started with"
            )
        was = ", ".join(f"{k}={self.identity.get(k)!r}" for k in differ)
        now = ", ".join(f"{k}={identity.get(k)!r}" for k in differ)
        raise SnucError(
            f"the run state is of a run with {was}, not {now}; continue a run with the "
            "configuration and batch it started with"
        )

    def chunk(self, offset: int) -> ChunkState:
        """The state of the chunk whose first sequence is ``offset``.

        Raises:
            SnucError: the state has no such chunk (its identity lists it, but a file
                may be edited); one line.
        """
        found = self.chunks.get(offset)
        if found is None:
            raise SnucError(
                f"the run state holds no chunk at sequence {offset} (it holds "
                f"{sorted(self.chunks)}); it is not a state of this run"
            )
        return found

    def save(self, path: str | os.PathLike[str]) -> Path:
        """Write the state to an ``.npz`` file, atomically (a failed write leaves nothing).

        Raises:
            SnucError: the path does not end in ``.npz`` or cannot be written.
        """
        from snuc.runtime.io import write_outputs

        path = Path(path)
        if path.suffix != ".npz":
            raise SnucError(f"the run state file {path} must be an .npz file")
        meta = {
            "format": STATE_FORMAT,
            "identity": self.identity,
            "step": self.step,
            "chunks": {
                str(offset): {
                    "values": list(chunk.values),
                    "noise": {str(t): p.to_json() for t, p in chunk.noise.items()},
                }
                for offset, chunk in self.chunks.items()
            },
        }
        arrays = {_META: np.frombuffer(json.dumps(meta).encode("utf-8"), np.uint8)}
        for offset, chunk in self.chunks.items():
            for name, value in chunk.values.items():
                arrays[f"{_STATE_PREFIX}{offset}/{name}"] = value
        return write_outputs(path, arrays)

    @staticmethod
    def load(path: str | os.PathLike[str]) -> RunState:
        """Read a state file written by :meth:`save`, never unpickling.

        Raises:
            SnucError: a missing, unreadable, malformed or foreign file; one line.
        """
        what = f"run state file {path}"
        arrays = _read_npz(Path(path), what)
        meta = _meta(arrays, what)
        try:
            chunks = {}
            for offset, entry in meta["chunks"].items():
                values = {n: arrays[f"{_STATE_PREFIX}{offset}/{n}"] for n in entry["values"]}
                noise = {int(t): NoisePosition.from_json(p) for t, p in entry["noise"].items()}
                chunks[int(offset)] = ChunkState(values, noise)
            state = RunState(dict(meta["identity"]), int(meta["step"]), chunks)
        except (KeyError, TypeError, ValueError, AttributeError) as e:
            raise SnucError(f"{what} is not a snuc run state ({type(e).__name__}: {e})") from None
        if state.step < 0:
            raise SnucError(f"{what} is not a snuc run state (negative step count)")
        return state


def check_values(
    chunk: ChunkState, shapes: Mapping[str, tuple[tuple[int, ...], np.dtype]], offset: int
) -> None:
    """Every state value a chunk needs, of its shape and dtype (a file may be edited).

    Raises:
        SnucError: a value missing, unknown, or of another shape or dtype; one line.
    """
    if chunk.values.keys() != shapes.keys():
        names = sorted(chunk.values.keys() ^ shapes.keys())
        raise SnucError(
            f"the run state's chunk at sequence {offset} does not hold the graph's states "
            f"(differing: {', '.join('%' + n for n in names)})"
        )
    for name, (shape, dtype) in shapes.items():
        value = chunk.values[name]
        if value.shape != shape or value.dtype != dtype:
            raise SnucError(
                f"the run state's %{name} at sequence {offset} is {value.dtype}"
                f"{list(value.shape)}; this run needs {dtype}{list(shape)}"
            )


def _read_npz(path: Path, what: str) -> dict[str, np.ndarray]:
    """Every array of an ``.npz`` file, each header checked before its data is read."""
    from snuc.runtime.io import npy_header

    if not path.is_file():
        raise SnucError(f"{what} does not exist or is not a regular file")
    npz = open_npz(path, what, "a run state (.npz)")
    arrays = {}
    with npz:
        try:
            for info in npz.zip.infolist():
                key = info.filename.removesuffix(".npy")
                with npz.zip.open(info) as member:
                    shape, dtype = npy_header(member, f"{what}: array {key!r}")
                if dtype.hasobject:
                    raise SnucError(
                        f"{what}: array {key!r} holds Python objects; snuc never unpickles"
                    )
                check_tensor_bytes(f"{what}: array {key!r}", shape, dtype.itemsize)
                arrays[key] = npz[key]
        except (ValueError, OSError, EOFError, zipfile.BadZipFile, zlib.error) as e:
            raise SnucError(f"{what} cannot be read ({one_line(e)})") from None
    return arrays


def _meta(arrays: Mapping[str, np.ndarray], what: str) -> dict[str, Any]:
    raw = arrays.get(_META)
    if raw is None or raw.dtype != np.uint8 or raw.ndim != 1:
        raise SnucError(f"{what} is not a snuc run state (no {_META!r} record)")
    meta = load_json(raw.tobytes(), f"{what}'s {_META!r} record")
    if not isinstance(meta, dict) or meta.get("format") != STATE_FORMAT:
        found = meta.get("format") if isinstance(meta, dict) else None
        raise SnucError(
            f"{what} is a run state of format {found!r}; this snuc reads format {STATE_FORMAT}"
        )
    return meta


class Resumption:
    """How one run (of a backend, over every chunk of its batch) starts from a
    :class:`RunState` and ends in one; inactive (no checks, no fingerprint) when the
    caller neither gives nor asks for a state.

    Attributes:
        step: the global timestep of the run's first step.
    """

    def __init__(
        self, graph: Graph, identity: dict[str, Any] | None, state: RunState | None
    ) -> None:
        self._graph = graph
        self._identity = identity
        self._state = state
        self.step = 0 if state is None else state.step

    @classmethod
    def of(
        cls,
        graph: Graph,
        config: RunConfig,
        batch: int,
        chunks: Iterable[tuple[int, int]],
        state: RunState | None,
        wanted: bool,
        fingerprint: str | None = None,
    ) -> Resumption:
        """The resumption of a run of ``graph`` in ``config`` over ``batch`` sequences cut
        into ``chunks`` (``[lo, hi)``), from ``state`` (None: from the start), ending in
        a state when ``wanted`` (``fingerprint``: the graph's, when the caller keeps it).

        Raises:
            SnucError: ``state`` is not a RunState, or is of another run; one line.
        """
        if state is None and not wanted:
            return cls(graph, None, None)
        if state is not None and not isinstance(state, RunState):
            raise SnucError(
                f"state must be a RunState (what a run with return_state=True returns), "
                f"not {type(state).__name__}"
            )
        offsets = [config.batch_offset + lo for lo, _ in chunks]
        identity = run_identity(fingerprint or graph_fingerprint(graph), config, batch, offsets)
        if state is not None:
            state.check(identity)
        return cls(graph, identity, state)

    @classmethod
    def of_plan(
        cls,
        plan: Any,
        config: RunConfig,
        batch: int,
        chunks: Iterable[tuple[int, int]],
        state: RunState | None,
        wanted: bool,
    ) -> Resumption:
        """:meth:`of` for a backend's plan: its ``graph``, and its ``fingerprint`` (made
        once per plan) only when a state is given or wanted."""
        if state is None and not wanted:
            return cls(plan.graph, None, None)
        return cls.of(plan.graph, config, batch, chunks, state, wanted, plan.fingerprint)

    @property
    def active(self) -> bool:
        """Whether the run starts from a state or ends in one (a run in pieces: its
        chunks run whole, each keeping where it ends)."""
        return self._identity is not None

    def start(self, offset: int, batch: int) -> ChunkState | None:
        """The state the chunk whose first sequence is ``offset`` (of ``batch``
        sequences) starts from; None: zeros and the streams' beginnings.

        Raises:
            SnucError: the state's values do not fit the chunk; one line.
        """
        if self._state is None:
            return None
        chunk = self._state.chunk(offset)
        types = self._graph.values()
        shapes = {
            s.name: (types[s.name].concrete(batch), types[s.name].np_dtype)
            for s in self._graph.states
        }
        check_values(chunk, shapes, offset)
        return chunk

    def zeros(self, batch: int) -> dict[str, np.ndarray]:
        """Every state at zeros of its type, at ``batch`` sequences."""
        types = self._graph.values()
        return {
            s.name: np.zeros(types[s.name].concrete(batch), types[s.name].np_dtype)
            for s in self._graph.states
        }

    def end(self, steps: int, chunks: dict[int, ChunkState]) -> RunState:
        """The state after a run of ``steps`` timesteps whose chunks ended in ``chunks``."""
        assert self._identity is not None, "a run that wants its state resumes with identity"
        return RunState(dict(self._identity), self.step + steps, chunks)
