"""The read-noise stream of one tile for one run: its standard normals, in order.

Read noise (SPEC §6, docs/targets.md "Random streams") is one block of standard normals
per tile and run, ``pcm.read_noise_block(seed, tile, (T, *out), offset=offset)``, keyed by
``pcm.chip_rng(seed, tile, "read", offset=offset)`` (``offset``: a chunk's first sequence
within its batch, so chunks do not repeat each other's noise). Every backend takes it
from a :class:`NoiseStream`, which draws the block piece by piece, so a run never holds
it whole, however the backend walks through time: the interpreter a step at a time, the
NumPy backend in blocks of rows (:meth:`NoiseStream.take`, :meth:`NoiseStream.row_steps`),
the simulator's copies of a duplicated tile each the steps they serve
(:meth:`NoiseStream.serving`). A run in pieces (:mod:`snuc.runtime.run_state`) goes on
where the previous piece's stream stopped (:meth:`NoiseStream.position`, ``start=``).
"""

from __future__ import annotations

import math
from collections import deque
from collections.abc import Iterable
from concurrent.futures import Executor, Future
from dataclasses import dataclass
from typing import Any

import numpy as np

from snuc.ir.errors import SnucError
from snuc.runtime import pcm

NOISE_BLOCK_ELEMENTS = 1 << 16
"""A :class:`NoiseStream` draws this many normals per generator call."""

NOISE_LOOKAHEAD = 3
"""Pieces a :class:`NoiseStream` keeps drawing ahead on a background thread."""


@dataclass(frozen=True)
class NoisePosition:
    """Where a stream stands: its generator's state before it drew the piece being handed
    out, and how many of that piece's normals are used. A NumPy generator cannot skip a
    count of normals (each takes a varying number of raw draws), so the state at a piece's
    start is kept, and a stream going on from here draws and drops ``used`` normals.

    Attributes:
        generator: ``bit_generator.state`` (a dict of integers and a name).
        used: normals of the piece handed out.
    """

    generator: dict[str, Any]
    used: int

    def to_json(self) -> dict[str, Any]:
        return {"generator": self.generator, "used": self.used}

    @staticmethod
    def from_json(data: Any) -> NoisePosition:
        """The position :meth:`to_json` wrote.

        Raises:
            ValueError: not a position.
        """
        generator, used = data["generator"], data["used"]
        if (
            not isinstance(generator, dict)
            or not isinstance(used, int)
            or not 0 <= used <= NOISE_BLOCK_ELEMENTS
        ):
            raise ValueError("a read-noise position is a generator state and a count")
        return NoisePosition(generator, used)


class NoiseStream:
    """One tile's read-noise normals for one run, handed out in stream order.

    The numbers are those of ``pcm.read_noise_block(seed, tile, (T, *out), offset=offset)``
    read in C order: a NumPy ``Generator`` fills arrays in C order, so drawing the block
    piece by piece yields the block itself, and a run never holds its whole block. Pieces of
    :data:`NOISE_BLOCK_ELEMENTS` are drawn ahead, on a background thread when the run
    gives one (NumPy releases the GIL while it fills an array): drawing normals costs more
    than all the rest of a noisy tile's read, and overlaps with it there.

    Attributes:
        per_step: normals per timestep (``prod(out)``), when the run gives it: a
            duplicated tile's reads need it (:meth:`row_steps`, :meth:`step`).
        drawn: normals handed out since the run started.
        first_step: the global timestep of the run's first step (a run going on from an
            earlier piece's state starts past 0): a duplicated tile's step t reads copy
            ``(first_step + t) mod K``.
    """

    def __init__(
        self,
        seed: int,
        tile: int,
        total: int | None = None,
        pool: Executor | None = None,
        *,
        offset: int = 0,
        per_step: int = 0,
        ahead: bool = True,
        start: NoisePosition | None = None,
        first_step: int = 0,
    ) -> None:
        """``total``: the size of the run's block (``T * prod(out)``; None: not known,
        the stream is drawn in whole pieces); ``pool``: a
        one-thread executor that draws ahead (its jobs run in order), or None;
        ``offset``: the run's first sequence within the batch it is a chunk of;
        ``per_step``: ``prod(out)`` (0: not given); ``ahead``, ``start``, ``first_step``:
        see :meth:`restart`."""
        self.per_step = per_step
        self._seed = seed
        self._tile = tile
        self._seed_stream(offset)
        self._ahead: deque[Future] = deque()
        self._steps_ahead: dict[int, np.ndarray] = {}
        self._servings: list[Serving] = []
        self.restart(total, pool, offset=offset, ahead=ahead, start=start, first_step=first_step)

    def _seed_stream(self, offset: int) -> None:
        self._offset = offset
        self._rng = pcm.chip_rng(self._seed, self._tile, "read", offset=offset)
        self._start = self._rng.bit_generator.state

    def restart(
        self,
        total: int | None,
        pool: Executor | None = None,
        *,
        offset: int = 0,
        ahead: bool = True,
        start: NoisePosition | None = None,
        first_step: int = 0,
    ) -> None:
        """Start the stream over, for a new run with a block of ``total`` normals whose
        first sequence is ``offset`` within its batch: at the previous run's offset the
        same numbers again, without seeding a new generator (which costs more than a
        short run's draws). The previous run's pool must have finished its jobs.

        ``ahead``: ask the pool for the first :data:`NOISE_LOOKAHEAD` pieces now; a run
        of several streams sharing one pool passes False and calls :func:`draw_ahead`
        once they all exist, so their first pieces are drawn first.

        ``start``: go on from where a stream of an earlier piece of the run stood
        (:meth:`position`; None: the stream's beginning); ``first_step``: the run's first
        global timestep (:attr:`first_step`).

        Raises:
            SnucError: ``start`` is not a position of this kind of generator.
        """
        if offset != self._offset:
            self._seed_stream(offset)
        self._rng.bit_generator.state = self._start
        self._piece_start = self._start
        if start is not None:
            self._seek(start)
            self._piece_start = self._rng.bit_generator.state
        self.first_step = first_step
        self._left = math.inf if total is None else total
        self._pool = pool
        self._ahead.clear()
        self._piece = np.empty(0)
        self._used = 0
        self.drawn = 0
        self._steps_ahead.clear()
        for serving in self._servings:
            serving.restart()
        if ahead:
            draw_ahead([self])

    def _seek(self, start: NoisePosition) -> None:
        try:
            self._rng.bit_generator.state = start.generator
        except (TypeError, ValueError, KeyError, OverflowError) as e:
            raise SnucError(
                f"the run state's read-noise position of tile {self._tile} does not fit its "
                f"generator ({type(e).__name__}: {e})"
            ) from None
        self._rng.standard_normal(start.used)  # dropped: the piece's normals already used

    def position(self) -> NoisePosition:
        """Where the stream stands after the normals handed out: a later run given it as
        ``start`` goes on with the next one. (Between runs; a run's pool drawing ahead
        moves the generator, not the position.)"""
        return NoisePosition(self._piece_start, self._used)

    def take(self, n: int) -> np.ndarray:
        """The next ``n`` normals of the stream, as a 1-D float64 array (:attr:`drawn`
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

    def _draw(self, n: int) -> tuple[dict[str, Any], np.ndarray]:
        """The generator's state, then the next ``n`` normals it draws from there."""
        state = self._rng.bit_generator.state
        piece = np.empty(n)
        self._rng.standard_normal(out=piece)
        return state, piece

    def _request(self) -> None:
        n = min(NOISE_BLOCK_ELEMENTS, self._left)
        if n > 0 and self._pool is not None:
            self._left -= n
            self._ahead.append(self._pool.submit(self._draw, n))

    def _next_piece(self) -> np.ndarray:
        if self._ahead:
            self._piece_start, piece = self._ahead.popleft().result()
            self._request()
            return piece
        # Nothing is being drawn ahead, so the generator is this thread's alone.
        n = max(1, min(NOISE_BLOCK_ELEMENTS, self._left))
        self._left -= n
        self._piece_start, piece = self._draw(n)
        return piece


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
