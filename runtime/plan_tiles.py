"""Crossbar tiles of the NumPy backend in ``quantized`` and ``pcm`` modes, vectorised.

A tile reads (SPEC §6, docs/quantization.md; the reference is the interpreter's)::

    x_q   = DAC(x[..., r0:r1])                     float64, over dac = (lo, hi), dac_bits
    I     = x_q @ G  (+ sqrt(x_q**2 @ var) * n)    float64 column sums (+ read noise, pcm)
    I_hat = ADC(I)                                 full scale adc_range, adc_bits
    y     = float32(I_hat * s * alpha)             digital scale and drift compensation

Every element-wise step is the same float64 operation, in the same order, as
``snuc.ir.crossbar.dac_quantize`` / ``adc_quantize`` and the interpreter's tile, so each
element rounds identically; only the two matrix products may sum in another order (BLAS
picks its kernel by the matrix shape), which moves a column current by a few float64 ulps
and an ADC code only when the current lies that close to a decision boundary.

What the chip holds (``G``, ``var``, ``s * alpha``) is computed once per plan
(:func:`program_tiles`): conductances, programming noise and drift depend on the chip
(``seed``) and ``t_inference_s``, never on the input. Read noise is drawn per run from the
tile's own stream (:class:`NoiseStream`), in the order of ``pcm.read_noise_block(seed,
tile, (T, *out), offset=offset)``, however the backend walks through time (``offset``: a
chunk's first sequence within its batch, so chunks do not repeat each other's noise).

A duplicated tile (``place --duplicate K``, docs/isa.md "Tile duplication") is K
separately programmed arrays in ``pcm`` mode: step t reads copy ``t mod K``
(:attr:`TileChip.copies`), with the tile's one read-noise stream scaled by that copy's
σ. In ``quantized`` mode the copies hold the same conductances, so they are not made.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Iterable
from concurrent.futures import Executor, Future
from dataclasses import dataclass
from functools import cached_property

import numpy as np

from snuc.ir.crossbar import adc_max_code, dac_grid, dac_quantize, tile_conductances
from snuc.ir.graph import Graph, Node
from snuc.ir.target import TargetSpec
from snuc.runtime import pcm
from snuc.runtime.interpreter import crossbar_tiles
from snuc.runtime.plan_sparse import active_rows

ROW_BLOCK_ELEMENTS = 1 << 16
"""Rows of a tile's input are processed in blocks of about this many float64 elements of
the widest intermediate, so the dozen element-wise passes of a read run in cache."""

SPARSE_MIN_MULTIPLY_ADDS = 1 << 16
"""Blocks of spikes whose products have at least this many multiply-adds are searched
for silent rows (``plan_sparse.active_rows``, 1 to 5 us): a silent row reads as the
tile's :attr:`TileChip.silent_row` without its two float64 products, converters or noise
arithmetic. A read costs far more per multiply-add than a float product (two float64
products and a dozen element-wise passes), so the search pays from much smaller blocks:
a ``[20, 256] x [256, 128]`` read (an MNIST-size layer at batch 1) costs about 60 us."""

NOISE_BLOCK_ELEMENTS = 1 << 16
"""A :class:`NoiseStream` draws this many normals per generator call."""

NOISE_LOOKAHEAD = 3
"""Pieces a :class:`NoiseStream` keeps drawing ahead on a background thread."""


@dataclass(frozen=True, eq=False)
class TileChip:
    """One ``xbar.mvm`` tile as the chip holds it, set up once per plan.

    Attributes:
        node: the tile's node.
        tile: its tile number (keys the read-noise stream).
        rows: the window's input rows ``slice(r0, r1)``.
        dac: the DAC range ``(lo, hi)``; ``dac_bits`` its resolution.
        adc_range, adc_bits: the ADC's full scale and resolution.
        conductance_us: ``G`` ``[r, c]`` (G+ - G- per weight), float64.
        gain: ``s * alpha`` ``[c]``: digital scale times drift compensation, float64.
        variance_us2: read-noise variance per weight ``[r, c]`` (pcm), else None.
        dtype: the result's dtype.
        binary_input: the input is guaranteed to be exactly 0 or 1 and the DAC passes
            both unchanged, so ``x_q = x`` and ``x_q**2 = x_q`` (no DAC arithmetic).
        copies: a duplicated tile's copies 1 .. K-1 as programmed (pcm), each with its
            own conductances, variances and gain (and this tile's ``tile``: they share its
            read noise); step t reads copy ``t mod K`` (0: this one). Empty: no copies.
    """

    node: Node
    tile: int
    rows: slice
    dac: tuple[float, float]
    dac_bits: int
    adc_range: float
    adc_bits: int
    conductance_us: np.ndarray
    gain: np.ndarray
    variance_us2: np.ndarray | None
    dtype: np.dtype
    binary_input: bool
    copies: tuple[TileChip, ...] = ()

    @property
    def n_rows(self) -> int:
        return self.conductance_us.shape[0]

    @property
    def n_cols(self) -> int:
        return self.conductance_us.shape[1]

    @property
    def noisy(self) -> bool:
        return self.variance_us2 is not None

    def workspace(self, rows: int) -> Workspace:
        """Scratch float64 buffers for reads of up to ``rows`` input rows."""
        return Workspace(self, rows)

    def read(
        self,
        x: np.ndarray,
        out: np.ndarray,
        work: Workspace,
        noise: NoiseStream | None = None,
    ) -> None:
        """Read the tile for a block of inputs: ``out[m] = tile(x[m])`` for every row m.

        Args:
            x: inputs ``[M, K]`` (all the weight's rows; the tile takes its window).
            out: results ``[M, c]`` of the tile's dtype, written in place.
            work: the tile's workspace; more than ``work.rows`` rows are read in blocks of
                that many.
            noise: the run's read-noise stream of this tile (pcm); its next ``M * c``
                normals are used, in row order. Its position also tells a duplicated
                tile which timestep each row belongs to, so which copy reads it.
        """
        if self.copies and noise is not None:
            self._read_copies(x, out, work, noise)
            return
        total = x.shape[0]
        for start in range(0, total, work.rows):
            stop = min(start + work.rows, total)
            normals = None if noise is None else noise.take((stop - start) * self.n_cols)
            self._read_block(x[start:stop], out[start:stop], work, normals)

    def _read_copies(
        self, x: np.ndarray, out: np.ndarray, work: Workspace, noise: NoiseStream
    ) -> None:
        """Rows of any timesteps of a duplicated tile: each row read by the copy that
        serves its step (the rows of copy j's steps in one product, ``t mod K == j``)."""
        m, c = x.shape[0], self.n_cols
        first = noise.drawn // c  # rows read before these, this run
        normals = noise.take(m * c).reshape(m, c)
        steps = (first + np.arange(m)) // (noise.per_step // c)
        chips = (self, *self.copies)
        for j, chip in enumerate(chips):
            rows = np.flatnonzero(steps % len(chips) == j)
            if rows.size == m:
                chip._read_rows(x, out, work, normals)
            elif rows.size:
                part = np.empty((rows.size, c), out.dtype)
                chip._read_rows(x[rows], part, work, normals[rows])
                out[rows] = part

    def _read_rows(
        self, x: np.ndarray, out: np.ndarray, work: Workspace, normals: np.ndarray
    ) -> None:
        """:meth:`read` of ``x`` with the given read-noise normals ``[M, c]``."""
        total = x.shape[0]
        for start in range(0, total, work.rows):
            stop = min(start + work.rows, total)
            self._read_block(x[start:stop], out[start:stop], work, normals[start:stop])

    @cached_property
    def silent_row(self) -> np.ndarray:
        """What the tile reads for an input of zeros ``[c]``: its column currents are
        ``+0`` (a zero-initialised sum of ``0 * G`` terms, plus ``sqrt(+0) * n``, whose
        sum with ``+0`` is ``+0``), the ADC keeps ``+0``, and the gain multiplies it."""
        return np.multiply(0.0, self.gain).astype(self.dtype)

    def _read_block(
        self, x: np.ndarray, out: np.ndarray, work: Workspace, normals: np.ndarray | None
    ) -> None:
        """Read ``x`` ``[m, K]`` into ``out`` ``[m, c]`` with the given normals; spike rows
        without a spike read as :attr:`silent_row`, when enough of them are silent."""
        m, c = x.shape[0], self.n_cols
        if self.binary_input and m * self.n_rows * c >= SPARSE_MIN_MULTIPLY_ADDS:
            rows = active_rows(x[:, self.rows])
            if rows is not None:
                out[...] = self.silent_row
                if rows.size:
                    part = np.empty((rows.size, c), out.dtype)
                    if normals is not None:
                        normals = normals.reshape(m, c)[rows]
                    self._read_dense(x.take(rows, axis=0), part, work, normals)
                    out[rows] = part
                return
        self._read_dense(x, out, work, normals)

    def _read_dense(
        self, x: np.ndarray, out: np.ndarray, work: Workspace, normals: np.ndarray | None
    ) -> None:
        """Read every row of ``x`` ``[m, K]`` into ``out`` ``[m, c]``."""
        m, c = x.shape[0], self.n_cols
        x_q, current = work.x_q[:m], work.current[:m]
        np.copyto(x_q, x[:, self.rows])
        if not self.binary_input:
            _dac_in_place(x_q, self.dac, self.dac_bits)
        np.matmul(x_q, self.conductance_us, out=current)
        if self.variance_us2 is not None:
            spread = work.spread[:m]
            if self.binary_input:
                squared = x_q  # x_q**2 == x_q for x_q in {0, 1}
            else:
                squared = work.squared[:m]
                np.multiply(x_q, x_q, out=squared)
            np.matmul(squared, self.variance_us2, out=spread)
            np.sqrt(spread, out=spread)
            np.multiply(spread, normals.reshape(m, c), out=spread)
            np.add(current, spread, out=current)
        _adc_in_place(current, self.adc_range, self.adc_bits)
        np.multiply(current, self.gain, out=current)
        np.copyto(out, current, casting="same_kind")


class Workspace:
    """Float64 scratch of one tile for reads of up to ``rows`` rows (allocated once per run).

    Attributes:
        rows: the most rows one block may have.
    """

    def __init__(self, chip: TileChip, rows: int) -> None:
        self.rows = max(1, rows)
        k, c = chip.n_rows, chip.n_cols
        self.x_q = np.empty((self.rows, k))
        self.current = np.empty((self.rows, c))
        if chip.noisy:
            self.spread = np.empty((self.rows, c))
            if not chip.binary_input:
                self.squared = np.empty((self.rows, k))


def block_rows(chip: TileChip, total: int) -> int:
    """Rows per block for ``total`` rows: the whole input when it is small enough."""
    widest = max(chip.n_rows, chip.n_cols)
    return max(1, min(total, ROW_BLOCK_ELEMENTS // widest))


def _dac_in_place(x: np.ndarray, dac: tuple[float, float], bits: int) -> None:
    """``crossbar.dac_quantize`` on a float64 array, in place, with the same roundings."""
    lo, hi = dac
    origin, step = dac_grid(lo, hi, bits)
    np.clip(x, lo, hi, out=x)
    np.subtract(x, origin, out=x)
    np.divide(x, step, out=x)
    np.rint(x, out=x)
    np.multiply(x, step, out=x)
    np.add(x, origin, out=x)


def _adc_in_place(current: np.ndarray, full_scale: float, bits: int) -> None:
    """``crossbar.adc_quantize`` on a float64 array, in place, with the same roundings."""
    m = adc_max_code(bits)
    np.divide(current, full_scale, out=current)
    np.clip(current, -1.0, 1.0, out=current)
    np.multiply(current, m, out=current)
    np.rint(current, out=current)
    np.multiply(current, full_scale, out=current)
    np.divide(current, m, out=current)


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
            duplicated tile tells from :attr:`drawn` the timestep of the rows it reads.
    """

    def __init__(
        self,
        seed: int,
        tile: int,
        total: int,
        pool: Executor | None = None,
        *,
        offset: int = 0,
        per_step: int = 0,
        ahead: bool = True,
    ) -> None:
        """``total``: the size of the run's block (``T * prod(out)``); ``pool``: a
        one-thread executor that draws ahead (its jobs run in order), or None;
        ``offset``: the run's first sequence within the batch it is a chunk of;
        ``per_step``: ``prod(out)`` (0: not given); ``ahead``: see :meth:`restart`."""
        self.per_step = per_step
        self._seed = seed
        self._tile = tile
        self._seed_stream(offset)
        self._ahead: deque[Future] = deque()
        self.restart(total, pool, offset=offset, ahead=ahead)

    def _seed_stream(self, offset: int) -> None:
        self._offset = offset
        self._rng = pcm.chip_rng(self._seed, self._tile, "read", offset=offset)
        self._start = self._rng.bit_generator.state

    def restart(
        self, total: int, pool: Executor | None = None, *, offset: int = 0, ahead: bool = True
    ) -> None:
        """Start the stream over, for a new run with a block of ``total`` normals whose
        first sequence is ``offset`` within its batch: at the previous run's offset the
        same numbers again, without seeding a new generator (which costs more than a
        short run's draws). The previous run's pool must have finished its jobs.

        ``ahead``: ask the pool for the first :data:`NOISE_LOOKAHEAD` pieces now; a run
        of several streams sharing one pool passes False and calls :func:`draw_ahead`
        once they all exist, so their first pieces are drawn first."""
        if offset != self._offset:
            self._seed_stream(offset)
        self._rng.bit_generator.state = self._start
        self._left = total
        self._pool = pool
        self._ahead.clear()
        self._piece = np.empty(0)
        self._used = 0
        self.drawn = 0
        if ahead:
            draw_ahead([self])

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

    def _draw(self, n: int) -> np.ndarray:
        piece = np.empty(n)
        self._rng.standard_normal(out=piece)
        return piece

    def _request(self) -> None:
        n = min(NOISE_BLOCK_ELEMENTS, self._left)
        if n > 0 and self._pool is not None:
            self._left -= n
            self._ahead.append(self._pool.submit(self._draw, n))

    def _next_piece(self) -> np.ndarray:
        if self._ahead:
            piece = self._ahead.popleft().result()
            self._request()
            return piece
        # Nothing is being drawn ahead, so the generator is this thread's alone.
        n = max(1, min(NOISE_BLOCK_ELEMENTS, self._left))
        self._left -= n
        return self._draw(n)


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


def program_tiles(
    graph: Graph,
    nodes: Iterable[Node],
    *,
    mode: str,
    target: TargetSpec,
    seed: int,
    t_inference_s: float,
    drift_compensation: str | None,
    binary_values: Iterable[str] = (),
) -> dict[str, TileChip]:
    """Every ``xbar.mvm``'s chip, by node id: what the interpreter's run sets up per tile
    (in pcm mode with the copies of a duplicated tile, each programmed as its own tile
    number).

    Args:
        graph: the compiled (tiled and quantised) graph.
        nodes: its nodes.
        mode: ``"quantized"`` (quantised conductances, no noise) or ``"pcm"`` (the chip
            ``seed`` names, ``t_inference_s`` after programming, with read noise).
        target: the chip's parameters.
        seed, t_inference_s, drift_compensation: the pcm options (checked by the caller).
        binary_values: values guaranteed to hold only 0 and 1 (spikes).

    Raises:
        SnucError: an untiled ``xbar.dense`` or ``xbar.conv``, a tile without an ADC
            range, or two tiles with the same number; one line naming the node.
    """
    binary = set(binary_values)
    chips: dict[str, TileChip] = {}
    for node in crossbar_tiles(nodes, mode):
        op = node.op
        g_plus, g_minus, scale = tile_conductances(
            graph.constants[node.inputs[1]], op.rows, op.cols, target
        )
        lo, hi = op.dac
        passes_spikes = all(
            float(dac_quantize(v, lo, hi, target.dac_bits)) == v for v in (0.0, 1.0)
        )
        common = {
            "node": node,
            "tile": op.tile,
            "rows": slice(*op.rows),
            "dac": (lo, hi),
            "dac_bits": target.dac_bits,
            "adc_range": op.adc_range,
            "adc_bits": target.adc_bits,
            "dtype": graph.type_of(node.id).np_dtype,
            "binary_input": node.inputs[0] in binary and passes_spikes,
        }
        if mode == "quantized":
            conductance = g_plus.sum(axis=-1) - g_minus.sum(axis=-1)
            chips[node.id] = TileChip(
                conductance_us=conductance, gain=scale, variance_us2=None, **common
            )
            continue
        programmed = [
            _programmed(
                g_plus,
                g_minus,
                scale,
                target,
                seed,
                op.copy_tile(j),
                t_inference_s,
                drift_compensation,
            )
            for j in range(op.duplicates)
        ]
        copies = tuple(TileChip(**arrays, **common) for arrays in programmed[1:])
        chips[node.id] = TileChip(**programmed[0], **common, copies=copies)
    return chips


def _programmed(
    g_plus: np.ndarray,
    g_minus: np.ndarray,
    scale: np.ndarray,
    target: TargetSpec,
    seed: int,
    tile: int,
    t_inference_s: float,
    drift_compensation: str | None,
) -> dict[str, np.ndarray]:
    """One array of the chip ``seed`` names, programmed as tile number ``tile`` (its
    programming-noise and drift streams) and read ``t_inference_s`` later: the
    ``conductance_us``, ``gain`` and ``variance_us2`` of its :class:`TileChip`."""
    chip = pcm.program_array(g_plus, g_minus, target, seed=seed, tile=tile)
    drifted = chip.at(t_inference_s)
    alpha = pcm.compensation_scale(chip, t_inference_s, drift_compensation)
    return {
        "conductance_us": np.ascontiguousarray(drifted.weights_us),
        "gain": scale * alpha,
        "variance_us2": np.ascontiguousarray(drifted.read_variance_us2),
    }
