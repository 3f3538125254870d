"""Crossbar tiles of the NumPy backend in ``quantized`` and ``pcm`` modes, vectorised.

A tile (:class:`TileChip`) is what the chip holds for one ``xbar.mvm``
(:func:`snuc.runtime.chip.program_tile`: conductances, programming noise, drift and
compensation, computed once per plan: they depend on the chip ``seed`` and
``t_inference_s``, never on the input), read with the fast tile pipeline shared with the
simulator (:mod:`snuc.runtime.tile_read`: convert, currents, codes, values). This module
owns how the NumPy backend walks through a read: rows in blocks that stay in cache, silent
rows of spikes left out, and the copies of a duplicated tile.

Read noise is drawn per run from the tile's own stream
(:class:`~snuc.runtime.read_noise.NoiseStream`), in the order of
``pcm.read_noise_block(seed, tile, (T, B, *out), offset=offset)``, however the backend
walks through time.

A duplicated tile (``place --duplicate K``, docs/isa.md "Tile duplication") is K
separately programmed arrays in ``pcm`` mode: step t reads copy ``t mod K``
(:attr:`TileChip.copies`), with the tile's one read-noise stream scaled by that copy's
σ. In ``quantized`` mode the copies hold the same conductances, so they are not made.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from dataclasses import dataclass, replace
from functools import cached_property

import numpy as np

from snuc.ir.crossbar import dac_quantize
from snuc.ir.graph import Graph, Node
from snuc.ir.target import TargetSpec
from snuc.runtime.chip import program_tile
from snuc.runtime.interpreter import crossbar_tiles
from snuc.runtime.plan_sparse import active_rows
from snuc.runtime.read_noise import NoiseStream
from snuc.runtime.tile_read import Workspace, dense_read

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


@dataclass(frozen=True, eq=False)
class TileChip:
    """One ``xbar.mvm`` tile as the chip holds it, set up once per plan.

    Attributes:
        node: the tile's node.
        tile: its tile number (keys the read-noise stream).
        rows: the window's input rows ``slice(r0, r1)``.
        operand_rows: K, the rows of the whole weight (the operand's last axis).
        dac: the DAC range ``(lo, hi)``; ``dac_bits`` its resolution.
        adc_range, adc_bits: the ADC's full scale and resolution.
        conductance_us: ``G`` ``[r, c]`` (G+ - G- per weight), float64.
        gain: ``s * alpha`` ``[c]``: digital scale times drift compensation, float64.
        variance_us2: read-noise variance per weight ``[r, c]``, float64 (pcm), else
            None.
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
    operand_rows: int
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

    @cached_property
    def dense_read(self) -> Callable[..., None]:
        """The tile's read in one call (:func:`snuc.runtime.tile_read.dense_read`)."""
        return dense_read(self)

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
        steps = noise.row_steps(m, c)
        normals = noise.take(m * c).reshape(m, c)
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
        """Read every row of ``x`` ``[m, K]`` into ``out`` ``[m, c]``: the four stages in
        one call, in the workspace's first m rows."""
        m = x.shape[0]
        squared = None if work.squared is None else work.squared[:m]
        if normals is None:
            spread = spread_flat = None
        else:
            spread = work.spread[:m]
            spread_flat, normals = spread.reshape(-1), normals.reshape(-1)
        self.dense_read(
            x, work.x_q[:m], squared, work.current[:m], spread, spread_flat, normals, out
        )


def block_rows(chip: TileChip, total: int) -> int:
    """Rows per block for ``total`` rows: the whole input when it is small enough."""
    widest = max(chip.n_rows, chip.n_cols)
    return max(1, min(total, ROW_BLOCK_ELEMENTS // widest))


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
        lo, hi = op.dac
        passes_spikes = all(
            float(dac_quantize(v, lo, hi, target.dac_bits)) == v for v in (0.0, 1.0)
        )
        common = {
            "node": node,
            "tile": op.tile,
            "rows": slice(*op.rows),
            "operand_rows": graph.constants[node.inputs[1]].shape[0],
            "dac": (lo, hi),
            "dac_bits": target.dac_bits,
            "adc_range": op.adc_range,
            "adc_bits": target.adc_bits,
            "dtype": graph.type_of(node.id).np_dtype,
            "binary_input": node.inputs[0] in binary and passes_spikes,
        }
        first, *others = (
            TileChip(**arrays._asdict(), **common)
            for arrays in program_tile(
                graph, node, mode, target, seed, t_inference_s, drift_compensation
            )
        )
        chips[node.id] = replace(first, copies=tuple(others))
    return chips
