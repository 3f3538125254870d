"""The read-noise streams of one tile for one run: its standard normals, in order.

Read noise (SPEC §6, docs/targets.md "Random streams") is one stream of float32 standard
normals per tile and sequence, keyed by the sequence's global index
(``pcm.read_rng(seed, tile, s)``) and read step after step; a run of B sequences starting
at sequence ``offset`` uses ``pcm.read_noise_block(seed, tile, (T, B, *out),
offset=offset)``, in C order. Every backend takes it from a :class:`NoiseStream`, which
draws it piece by piece (at least 8,192 normals of every sequence at once: a short run's
whole block, a long run's in pieces), however the backend walks through time: the
interpreter a step at a time, the NumPy backend in blocks of rows
(:meth:`NoiseStream.take`, :meth:`NoiseStream.row_steps`), the simulator's copies of a
duplicated tile each the steps they serve (:meth:`NoiseStream.serving`). A run in pieces
(:mod:`snuc.runtime.run_state`) goes on where the previous piece's streams stopped
(:meth:`NoiseStream.position`, ``start=``).
"""

from __future__ import annotations

from collections import deque
from collections.abc import Iterable
from concurrent.futures import Executor, Future
from dataclasses import dataclass
from typing import Any

import numpy as np

from snuc.ir.errors import SnucError
from snuc.ir.types import BATCH, TensorType
from snuc.runtime import pcm

NOISE_BLOCK_ELEMENTS = 1 << 16
"""A :class:`NoiseStream` draws about this many normals per piece (at least one step)."""

NOISE_CALL_ELEMENTS = 1 << 13
"""...and at least this many per sequence (one generator call each), where the run has
them: a call costs about as much as drawing a few hundred normals."""

NOISE_LOOKAHEAD = 3
"""Pieces a :class:`NoiseStream` keeps drawing ahead on a background thread."""

CACHED_OFFSETS = 8
"""A stream keeps its sequences' first generator states for this many batch offsets."""


@dataclass(frozen=True)
class NoisePosition:
    """Where a tile's streams stand after a run: each sequence's generator state.

    Attributes:
        generators: ``bit_generator.state`` of each sequence of the chunk, in order (dicts
            of integers and a name).
    """

    generators: tuple[dict[str, Any], ...]

    def to_json(self) -> dict[str, Any]:
        return {"generators": list(self.generators)}

    @staticmethod
    def from_json(data: Any) -> NoisePosition:
        """The position :meth:`to_json` wrote.

        Raises:
            ValueError: not a position.
        """
        generators = data["generators"]
        if not isinstance(generators, list) or not all(isinstance(g, dict) for g in generators):
            raise ValueError("a read-noise position is a list of generator states")
        return NoisePosition(tuple(generators))


class NoiseStream:
    """One tile's read-noise normals for one run, handed out in stream order.

    The numbers are those of ``pcm.read_noise_block(seed, tile, (T, B, *out),
    offset=offset)`` read in C order: step after step, each step's sequences in turn.
    Each sequence's generator (:func:`snuc.runtime.pcm.read_rng`) fills its steps of a
    piece in one call, and the piece is transposed to step order. Pieces of about
    :data:`NOISE_BLOCK_ELEMENTS` are drawn ahead, on a background thread when the run gives
    one (NumPy releases the GIL while it fills an array): drawing normals costs more than
    all the rest of a noisy tile's read, and overlaps with it there.

    Attributes:
        per_step: normals per timestep (``B * prod(out)``).
        drawn: normals handed out since the run started.
        first_step: the global timestep of the run's first step (a run going on from an
            earlier piece's state starts past 0): a duplicated tile's step t reads copy
            ``(first_step + t) mod K``.
    """

    def __init__(
        self,
        seed: int,
        tile: int,
        steps: int,
        pool: Executor | None = None,
        *,
        sequences: int = 1,
        per_step: int,
        offset: int = 0,
        ahead: bool = True,
        start: NoisePosition | None = None,
        first_step: int = 0,
    ) -> None:
        """``steps``: T, the run's timesteps; ``pool``: a one-thread executor that draws
        ahead (its jobs run in order), or None; ``sequences``: B, the run's sequences (0:
        a value without a batch axis, shared by the batch, which reads sequence 0's
        stream whatever the offset: :func:`sequences_of`); ``per_step``: normals per
        step, ``B * prod(out)``; ``offset``: the global index of the run's first
        sequence; ``ahead``, ``start``, ``first_step``: see :meth:`restart`."""
        self._shared = sequences == 0
        sequences = max(1, sequences)
        if per_step % sequences:
            raise ValueError(f"{per_step} normals per step do not split into {sequences} sequences")
        self.per_step = per_step
        self._tile = tile
        self._sequences = sequences
        self._per_sequence = per_step // sequences
        base = pcm.chip_rng(seed, tile, "read")
        self._base = base.bit_generator
        self._base_state = base.bit_generator.state
        self._starts: dict[int, list[dict[str, Any]]] = {}
        self._rngs = [np.random.Generator(np.random.PCG64(0)) for _ in range(sequences)]
        self._ahead: deque[Future] = deque()
        self._steps_ahead: dict[int, np.ndarray] = {}
        self._servings: list[Serving] = []
        self.restart(steps, pool, offset=offset, ahead=ahead, start=start, first_step=first_step)

    def _first_states(self, offset: int) -> list[dict[str, Any]]:
        """Each sequence's generator state at its stream's start (cached by offset: a
        plan's runs at one offset repeat)."""
        if self._shared:
            offset = 0
        found = self._starts.get(offset)
        if found is None:
            if len(self._starts) >= CACHED_OFFSETS:
                self._starts.clear()
            found = []
            for s in range(offset, offset + self._sequences):
                self._base.state = self._base_state
                self._base.advance(s * pcm.READ_SEQUENCE_STRIDE)
                found.append(self._base.state)
            self._starts[offset] = found
        return found

    def restart(
        self,
        steps: int,
        pool: Executor | None = None,
        *,
        offset: int = 0,
        ahead: bool = True,
        start: NoisePosition | None = None,
        first_step: int = 0,
    ) -> None:
        """Start the streams over, for a new run of ``steps`` timesteps whose first
        sequence is ``offset`` (a global index), without seeding new generators (which
        costs more than a short run's draws). The previous run's pool must have finished
        its jobs.

        ``ahead``: ask the pool for the first :data:`NOISE_LOOKAHEAD` pieces now; a run
        of several streams sharing one pool passes False and calls :func:`draw_ahead`
        once they all exist, so their first pieces are drawn first.

        ``start``: go on from where the streams of an earlier piece of the run stood
        (:meth:`position`; None: the streams' beginnings); ``first_step``: the run's first
        global timestep (:attr:`first_step`).

        Raises:
            SnucError: ``start`` is not a position of these sequences' generators.
        """
        states = self._first_states(offset) if start is None else self._checked(start)
        try:
            for rng, state in zip(self._rngs, states, strict=True):
                rng.bit_generator.state = state
        except (TypeError, ValueError, KeyError, OverflowError) as e:
            raise SnucError(
                f"the run state's read-noise position of tile {self._tile} does not fit its "
                f"generators ({type(e).__name__}: {e})"
            ) from None
        self.first_step = first_step
        self._steps_left = steps
        self._total_steps = steps
        self._pool = pool
        self._ahead.clear()
        self._piece = np.empty(0, np.float32)
        self._used = 0
        self.drawn = 0
        self._steps_ahead.clear()
        for serving in self._servings:
            serving.restart()
        if ahead:
            draw_ahead([self])

    def _checked(self, start: NoisePosition) -> tuple[dict[str, Any], ...]:
        states = start.generators
        if len(states) != self._sequences or any(s.get("bit_generator") != "PCG64" for s in states):
            raise SnucError(
                f"the run state's read-noise position of tile {self._tile} holds "
                f"{len(states)} generator states, not {self._sequences} of PCG64"
            )
        return states

    def position(self) -> NoisePosition:
        """Where the streams stand once the run has taken all its normals: a later run
        given it as ``start`` goes on with the next step.

        Raises:
            RuntimeError: the run has not taken all its normals.
        """
        if self.drawn != self._total_steps * self.per_step:
            raise RuntimeError("a read-noise position is taken at the end of a run")
        return NoisePosition(tuple(rng.bit_generator.state for rng in self._rngs))

    def take(self, n: int) -> np.ndarray:
        """The next ``n`` normals of the stream, as a 1-D float32 array (:attr:`drawn`
        counts them: normals handed out since the run started).

        The array may be a view of a buffer of the stream: it is valid until the next call.
        """
        self.drawn += n
        start = self._used
        if start + n <= self._piece.size:
            self._used = start + n
            return self._piece[start : start + n]
        parts = [self._piece[start:]]
        need = n - parts[0].size
        while need > 0:
            self._piece = self._next_piece()
            self._used = min(need, self._piece.size)
            parts.append(self._piece[: self._used])
            need -= self._used
        return np.concatenate(parts)

    def row_steps(self, rows: int, row_size: int) -> np.ndarray:
        """The timestep of each of the next ``rows`` rows of ``row_size`` normals (rows
        do not straddle steps: ``row_size`` divides :attr:`per_step`)."""
        first = self.drawn // row_size  # rows handed out before these, this run
        return self.first_step + (first + np.arange(rows)) // (self.per_step // row_size)

    def step(self, t: int) -> np.ndarray:
        """``block[t]``, flat: the :attr:`per_step` normals of timestep t. Steps may be
        asked for out of order, each once: the steps before t not asked for yet are drawn
        (in stream order) and kept until they are."""
        while (drawn := self.drawn // self.per_step) <= t:
            self._steps_ahead[drawn] = self.take(self.per_step).copy()
        return self._steps_ahead.pop(t)

    def serving(self, k: int, j: int) -> Serving:
        """What copy j of a tile duplicated K times takes: steps j, j + K, j + 2K, ...
        in turn (a stream started over starts them over)."""
        serving = Serving(self, k, j)
        self._servings.append(serving)
        return serving

    def _draw(self, steps: int) -> np.ndarray:
        """The next ``steps`` steps of every sequence, flat in step order."""
        by_sequence = np.empty((self._sequences, steps, self._per_sequence), np.float32)
        for rng, out in zip(self._rngs, by_sequence, strict=True):
            rng.standard_normal(dtype=np.float32, out=out)
        if self._sequences == 1:
            return by_sequence.reshape(-1)
        return by_sequence.transpose(1, 0, 2).reshape(-1)  # a copy, in step order

    def _piece_steps(self) -> int:
        """Steps of the next piece: about :data:`NOISE_BLOCK_ELEMENTS` normals, at least
        :data:`NOISE_CALL_ELEMENTS` per sequence."""
        steps = max(
            1,
            NOISE_BLOCK_ELEMENTS // max(1, self.per_step),
            NOISE_CALL_ELEMENTS // max(1, self._per_sequence),
        )
        return min(steps, self._steps_left)

    def _request(self) -> None:
        steps = self._piece_steps()
        if steps > 0 and self._pool is not None:
            self._steps_left -= steps
            self._ahead.append(self._pool.submit(self._draw, steps))

    def _next_piece(self) -> np.ndarray:
        if self._ahead:
            piece = self._ahead.popleft().result()
            self._request()
            return piece
        # Nothing is being drawn ahead, so the generators are this thread's alone.
        steps = self._piece_steps()
        if steps == 0:
            raise RuntimeError(f"tile {self._tile}'s read noise is asked past the run's end")
        self._steps_left -= steps
        return self._draw(steps)


class Serving:
    """One copy's share of a duplicated tile's :class:`NoiseStream`, with a stream's
    ``take``: the copies share the tile's one block (SPEC §6), each taking the steps it
    serves, in its own order (copy j's read of step t may come before copy j-1's of step
    t - 1: the simulator starts the copies at different cycles)."""

    def __init__(self, stream: NoiseStream, k: int, j: int) -> None:
        self._stream = stream
        self._k = k
        self._j = j
        self.restart()

    def restart(self) -> None:
        """Serve the run's first step t of this copy: ``(first_step + t) mod K == j``."""
        self._next = (self._j - self._stream.first_step) % self._k

    def take(self, n: int) -> np.ndarray:
        """The normals of the next step this copy serves (``n`` of them: all the step's)."""
        if n != self._stream.per_step:
            raise RuntimeError(
                f"read noise of {self._stream.per_step} values per step, asked for {n}"
            )
        block = self._stream.step(self._next)
        self._next += self._k
        return block


def draw_ahead(streams: Iterable[NoiseStream]) -> None:
    """Ask the streams' pool for their first :data:`NOISE_LOOKAHEAD` pieces, each
    stream's first piece before any stream's second.

    A run's streams share one drawing thread, whose jobs run in the order asked, and a
    run reads every tile's stream in each block of steps: asking stream after stream for
    all its pieces would make the first block wait for the whole lookahead of every tile
    before it (on a 7-layer network at batch 64 that serialised most of the drawing with
    the reads: 94 ms a run against 69 ms once interleaved).
    """
    streams = list(streams)
    for _ in range(NOISE_LOOKAHEAD):
        for stream in streams:
            stream._request()


def sequences_of(type_: TensorType, batch: int) -> int:
    """The sequences whose read noise a tile's value of ``type_`` carries at batch
    ``batch``: B when it has the batch axis (which must lead: each step's normals are the
    sequences' in turn), else 0: a value computed once for the whole batch reads the
    stream of sequence 0, so that every chunk and group of a batch reads what the whole
    batch does.

    Raises:
        SnucError: the batch axis is not the value's first.
    """
    if not type_.has_batch:
        return 0
    if type_.shape[0] != BATCH:
        raise SnucError(f"a crossbar tile's value {type_} must have the batch axis first")
    return batch
