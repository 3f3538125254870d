"""The fast read of one programmed crossbar tile, in four stages split at the ADC code.

Both fast backends read a tile (:class:`~snuc.runtime.plan_tiles.TileChip`) with these
stages; the NumPy backend calls all four in turn, the simulator's ``mvm`` instruction the
first three and its ``adc`` instruction the last (SPEC §6, docs/quantization.md; the
reference is the interpreter's tile, with ``snuc.ir.crossbar``'s converters)::

    convert   x_q   = DAC(x[..., r0:r1])                     float64, over dac, dac_bits
    currents  I     = x_q @ G  (+ sqrt(x_q**2 @ var) * n)    column sums (+ read noise)
    codes     code  = rint(clip(I / F, -1, 1) * m)           the ADC's integer codes
    values    y     = dtype(code * F / m * s * alpha)        digital scale, compensation

Every element-wise step is the same float64 operation, in the same order, as
``crossbar.dac_quantize`` / ``adc_quantize`` and the interpreter's tile, so each element
rounds identically; only the matrix products may sum in another order (BLAS picks its
kernel by the matrix shape). A few steps are left out or merged where that cannot change a
result: the DAC's grid origin is skipped when it is 0 (that changes at most the sign of a
zero, which no later step sees), its clip is a maximum and a minimum (one ``clip`` where
neither bound is 0: the same values, signed zeros included), the ADC's clip is left out
when no input can reach it (:func:`never_clips`), and the codes are integers held in
float64 (so that a NaN input stays NaN).

The simulator calls the stages once per timestep on a few hundred elements, where a NumPy
call costs more than its arithmetic: the scalars are 0-d float64 arrays (a Python float is
converted at every call), outputs are passed positionally, the rows window is taken only
when it is not the whole operand, and a product of one row takes ``np.dot``
(:func:`row_product`).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING, NamedTuple

import numpy as np

from snuc.ir.crossbar import adc_max_code, dac_grid
from snuc.runtime import np_fast

if TYPE_CHECKING:
    from snuc.runtime.plan_tiles import TileChip


class Stages(NamedTuple):
    """The four stages of one tile's read (module docstring), each writing in place.

    Attributes:
        convert: ``convert(x, x_q, squared)``: the DAC's output of the operand ``x``
            ``[M, K]`` (all the weight's rows; the tile takes its window) into ``x_q``
            ``[M, r]`` float64, and ``x_q**2`` into ``squared`` (only for a noisy tile
            with multi-bit inputs, else None).
        currents: ``currents(x_q, squared, current, spread, spread_flat, normals)``: the
            column currents ``[M, c]`` into ``current``; a noisy tile adds the read noise
            through its scratch ``spread`` ``[M, c]`` (``spread_flat``: the same array,
            flat) from ``normals``, ``M * c`` standard normals in row order (noiseless:
            all three None).
        codes: ``codes(current, codes)``: the ADC's codes of the currents (``current`` is
            overwritten; ``codes`` may be ``current``).
        values: ``values(codes, scratch, gain, out, assign)``: the values of the codes,
            in float64 in ``scratch`` (may be ``codes``) times ``gain`` (``s * alpha``,
            broadcast), rounded once into ``out`` (``assign``: by assignment, for a dtype
            that takes float64 ``same_kind``; else ``copyto``, which checks the cast).
    """

    convert: Callable[[np.ndarray, np.ndarray, np.ndarray | None], None]
    currents: Callable[..., None]
    codes: Callable[[np.ndarray, np.ndarray], None]
    values: Callable[..., None]


def tile_stages(chip: TileChip) -> Stages:
    """The stages of ``chip``'s read, its constants prepared once."""
    return Stages(_convert(chip), _currents(chip), _codes(chip), _values(chip))


def _convert(chip: TileChip) -> Callable[[np.ndarray, np.ndarray, np.ndarray | None], None]:
    """``crossbar.dac_quantize`` of the window, in place (module docstring)."""
    rows = None if chip.rows == slice(0, chip.operand_rows) else chip.rows
    binary = chip.binary_input
    lo, hi = chip.dac
    origin, step = dac_grid(lo, hi, chip.dac_bits)
    origin_, step_ = _scalar(origin), _scalar(step)
    clip = _clipper(lo, hi)
    subtract, add, divide, multiply, rint = np.subtract, np.add, np.divide, np.multiply, np.rint

    def convert(x: np.ndarray, x_q: np.ndarray, squared: np.ndarray | None) -> None:
        x_q[...] = x if rows is None else x[:, rows]
        if binary:  # 0 and 1 pass the DAC unchanged
            return
        clip(x_q)
        if origin:
            subtract(x_q, origin_, x_q)
        divide(x_q, step_, x_q)
        rint(x_q, x_q)
        multiply(x_q, step_, x_q)
        if origin:
            add(x_q, origin_, x_q)
        if squared is not None:
            multiply(x_q, x_q, squared)

    return convert


def _currents(chip: TileChip) -> Callable[..., None]:
    """The column currents, with read noise on a noisy tile (module docstring)."""
    conductance, variance = chip.conductance_us, chip.variance_us2
    binary = chip.binary_input
    float64 = np.dtype(np.float64)
    by_row = row_product(conductance, float64) and (
        variance is None or row_product(variance, float64)
    )
    matmul, dot, sqrt, multiply, add = np.matmul, np_fast.dot, np.sqrt, np.multiply, np.add

    def currents(
        x_q: np.ndarray,
        squared: np.ndarray | None,
        current: np.ndarray,
        spread: np.ndarray | None,
        spread_flat: np.ndarray | None,
        normals: np.ndarray | None,
    ) -> None:
        product = dot if by_row and x_q.shape[0] == 1 else matmul
        product(x_q, conductance, current)
        if variance is None:
            return
        # x_q**2 == x_q for x_q in {0, 1}.
        product(x_q if binary else squared, variance, spread)
        sqrt(spread, spread)
        multiply(spread_flat, normals, spread_flat)
        add(current, spread, current)

    return currents


def _codes(chip: TileChip) -> Callable[[np.ndarray, np.ndarray], None]:
    """The ADC's codes: ``crossbar.adc_quantize`` up to its rounding."""
    full_scale, m = _scalar(chip.adc_range), _scalar(adc_max_code(chip.adc_bits))
    clip = _clipper(-1.0, 1.0) if chip.noisy or not never_clips(chip) else None
    divide, multiply, rint = np.divide, np.multiply, np.rint

    def codes(current: np.ndarray, out: np.ndarray) -> None:
        divide(current, full_scale, current)
        if clip is not None:
            clip(current)
        multiply(current, m, current)
        rint(current, out)

    return codes


def _values(chip: TileChip) -> Callable[..., None]:
    """The rest of ``crossbar.adc_quantize`` and the tile's gain, rounded once."""
    full_scale, m = _scalar(chip.adc_range), _scalar(adc_max_code(chip.adc_bits))
    multiply, divide, copyto = np.multiply, np.divide, np.copyto

    def values(
        codes: np.ndarray, scratch: np.ndarray, gain: np.ndarray, out: np.ndarray, assign: bool
    ) -> None:
        multiply(codes, full_scale, scratch)
        divide(scratch, m, scratch)
        multiply(scratch, gain, scratch)
        if assign:
            out[...] = scratch
        else:
            copyto(out, scratch, casting="same_kind")

    return values


class Workspace:
    """Float64 scratch of one tile's reads of up to ``rows`` input rows.

    Attributes:
        rows: the most rows one read may have.
        x_q: the converted input ``[rows, r]``.
        squared: ``x_q ** 2`` (noisy tiles with multi-bit inputs), else None.
        current: the column currents ``[rows, c]``.
        spread, spread_flat: the read noise's scratch ``[rows, c]`` and its flat view
            (noisy tiles), else None.
        driven: rows driven with a non-zero input by the last conversion (the simulator's
            count, kept with a conversion that tiles share).
    """

    def __init__(self, chip: TileChip, rows: int) -> None:
        self.rows = rows = max(1, rows)
        k, c = chip.n_rows, chip.n_cols
        self.x_q = np.empty((rows, k))
        noisy = chip.noisy
        self.squared = np.empty((rows, k)) if noisy and not chip.binary_input else None
        self.current = np.empty((rows, c))
        self.spread = np.empty((rows, c)) if noisy else None
        self.spread_flat = None if self.spread is None else self.spread.reshape(-1)
        self.driven = 0


def row_product(weight: np.ndarray, dtype: np.dtype) -> bool:
    """Whether ``np.dot(x, weight, out)`` computes ``np.matmul(x, weight, out)`` bit for
    bit for one row x ``[1, K]`` of ``dtype`` with unit stride (and out ``[1, N]``, C
    order, of that dtype), at about half its cost per call.

    Both hand such a row to BLAS's gemv with the same arguments (row major, transposed,
    K by N, leading dimension N, unit strides) when the weight is C-contiguous and of
    the row's dtype, float32 or float64, with more than one row and column (with one,
    NumPy takes other paths, which may differ).
    """
    k, n = weight.shape
    return (
        weight.flags.c_contiguous
        and weight.dtype == dtype
        and dtype in (np.dtype(np.float32), np.dtype(np.float64))
        and k > 1
        and n > 1
    )


def never_clips(chip: TileChip) -> bool:
    """Whether no input can drive a column of a noiseless tile past the ADC's full scale.

    ``|I_j| <= max(|lo|, |hi|) * sum_i |G_ij|`` for every DAC output; when that is at most
    the full scale F (as for the quantize pass's default ranges; 1e-9 relative is allowed
    for the order of the sums), ``|I / F|`` exceeds 1 by at most about 1e-9, so ``rint(I
    / F * m)`` is m, what the clip to ``[-1, 1]`` would give: the clip can be left out.
    """
    drive = max(abs(chip.dac[0]), abs(chip.dac[1]))
    bound = drive * float(np.abs(chip.conductance_us).sum(axis=0).max(initial=0.0))
    return bound <= chip.adc_range * (1 + 1e-9)


def _scalar(value: float) -> np.ndarray:
    """A float64 operand of every element: a 0-d array, which NumPy takes without the
    conversion a Python float costs at each call (the same float64 value)."""
    return np.asarray(value, np.float64)


def _clipper(lo: float, hi: float) -> Callable[[np.ndarray], None]:
    """Clip a float64 array to ``[lo, hi]`` in place, as ``maximum`` then ``minimum``.

    NumPy's ``clip`` computes the same values (NaN stays NaN) in one call, except that
    the sign of a zero at a bound of 0 may differ; ``maximum``/``minimum`` are kept for
    such a bound.
    """
    lo_, hi_ = _scalar(lo), _scalar(hi)
    if lo and hi:
        clip = np_fast.clip

        def clip_both(a: np.ndarray) -> None:
            clip(a, lo_, hi_, a)

        return clip_both

    def clip_by_parts(a: np.ndarray) -> None:
        np.maximum(a, lo_, out=a)
        np.minimum(a, hi_, out=a)

    return clip_by_parts
