"""The fast read of one programmed crossbar tile, in four stages split at the ADC code.

Both fast backends read a tile (:class:`~snuc.runtime.plan_tiles.TileChip`) with these
stages; the NumPy backend runs all four in one call (:func:`dense_read`), the simulator's
``mvm`` instruction the first three in one call and its ``adc`` instruction the last
(SPEC §6, docs/quantization.md; the reference is the interpreter's tile, with
``snuc.ir.crossbar``'s converters)::

    convert   x_q   = DAC(x[..., r0:r1])                     float64, over dac, dac_bits
    currents  I     = x_q @ G  (+ sqrt(x_q**2 @ var) * n)    column sums (+ read noise)
                      (the noise term: x_q**2 @ var summed in float64 and rounded to
                      float32, its sqrt and the normals n float32, SPEC §6; added to the
                      float64 sums)
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

Each stage is written once, here, as the NumPy calls it makes (:func:`tile_code`,
specialised to the tile: no branch on its configuration at run time), and a backend
compiles the stages it runs together into one function (:func:`compile_read`), as
:mod:`snuc.runtime.neuron_kernels` compiles a neuron update: the simulator reads a tile
once per timestep on a few hundred elements, where a Python call costs as much as a NumPy
call's arithmetic. For the same reason the scalars are 0-d float64 arrays (a Python float
is converted at every call), outputs are passed positionally, the rows window is taken only
when it is not the whole operand, and a product of one row takes ``np.dot``
(:func:`row_product`).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING, Any, NamedTuple

import numpy as np

from snuc.ir.crossbar import adc_max_code, dac_grid
from snuc.runtime import np_fast

if TYPE_CHECKING:
    from snuc.runtime.plan_tiles import TileChip


class TileCode(NamedTuple):
    """A tile's read as Python statements, stage by stage (module docstring), specialised
    to the tile: each stage is the NumPy calls it makes, in order, over the names below,
    writing in place; :func:`compile_read` makes them a function.

    Attributes:
        convert: the DAC's output of the operand ``x`` ``[M, K]`` (all the weight's rows;
            the tile takes its window) into ``x_q`` ``[M, r]`` float64, and ``x_q**2``
            into ``squared`` ``[M, r]`` float64 (noisy tiles with multi-bit inputs).
        currents: the column currents ``[M, c]`` of ``x_q`` (and ``squared``) into
            ``current``; a noisy tile adds the read noise through its scratch ``spread``
            ``[M, c]`` float32 (``spread_flat``: the same array, flat) from ``normals``,
            ``M * c`` float32 standard normals in row order.
        codes: the ADC's codes of ``current`` (which it overwrites) into ``codes`` (which
            may be ``current``).
        values: the values of ``codes``, in float64 in ``scratch`` (may be ``codes``)
            times ``gain`` (``s * alpha``, broadcast), rounded once into ``out`` (by
            assignment where ``assign`` was asked, for a dtype that takes float64
            ``same_kind``; else ``copyto``, which checks the cast).
        names: the constants and NumPy functions the statements use, by name.
    """

    convert: tuple[str, ...]
    currents: tuple[str, ...]
    codes: tuple[str, ...]
    values: tuple[str, ...]
    names: dict[str, Any]


def tile_code(chip: TileChip, *, assign: bool = False) -> TileCode:
    """The statements of ``chip``'s read, its constants prepared once (``assign``: see
    :attr:`TileCode.values`)."""
    names: dict[str, Any] = {
        "subtract": np.subtract, "add": np.add, "divide": np.divide,
        "multiply": np.multiply, "rint": np.rint, "sqrt": np.sqrt, "matmul": np.matmul,
        "dot": np_fast.dot, "clip": np_fast.clip, "maximum": np.maximum,
        "minimum": np.minimum, "copyto": np.copyto,
    }  # fmt: skip
    return TileCode(
        _convert(chip, names),
        _currents(chip, names),
        _codes(chip, names),
        _values(chip, names, assign),
        names,
    )


def compile_read(code: TileCode, signature: str, lines: Sequence[str], label: str) -> Callable:
    """The function ``def read(signature): lines`` over ``code``'s names.

    ``lines`` are the caller's statements with the stages of ``code`` among them (text
    made from the tile's fixed statements and the caller's slot numbers, nothing read
    in); ``label`` names the function's source in tracebacks and profiles.
    """
    source = f"def read({signature}):" + "".join(f"\n    {line}" for line in lines) + "\n"
    namespace = dict(code.names)
    exec(compile(source, label, "exec"), namespace)
    return namespace["read"]


def dense_read(chip: TileChip) -> Callable[..., None]:
    """The four stages in one call, as the NumPy backend reads a block of rows:
    ``read(x, x_q, squared, current, spread, spread_flat, normals, out)`` with the names
    of :class:`TileCode` (the codes and the values' scratch are ``current``; the gain is
    the chip's; ``copyto`` rounds the values)."""
    code = tile_code(chip)
    code.names["gain"] = chip.gain
    stages = (*code.convert, *code.currents, *code.codes, *code.values)
    return compile_read(
        code,
        "x, x_q, squared, current, spread, spread_flat, normals, out",
        ["codes = scratch = current", *stages],
        f"<tile {chip.tile} read>",
    )


def _convert(chip: TileChip, names: dict[str, Any]) -> tuple[str, ...]:
    """``crossbar.dac_quantize`` of the window, in place (module docstring)."""
    lines = ["x_q[...] = x"]
    if chip.rows != slice(0, chip.operand_rows):
        names["dac_rows"] = chip.rows
        lines = ["x_q[...] = x[:, dac_rows]"]
    if chip.binary_input:  # 0 and 1 pass the DAC unchanged (and are their own squares)
        return tuple(lines)
    lo, hi = chip.dac
    origin, step = dac_grid(lo, hi, chip.dac_bits)
    names.update(dac_origin=_scalar(origin), dac_step=_scalar(step))
    lines += _clip("x_q", "dac", lo, hi, names)
    if origin:
        lines.append("subtract(x_q, dac_origin, x_q)")
    lines += ["divide(x_q, dac_step, x_q)", "rint(x_q, x_q)", "multiply(x_q, dac_step, x_q)"]
    if origin:
        lines.append("add(x_q, dac_origin, x_q)")
    return (*lines, *_squares(chip))


def _currents(chip: TileChip, names: dict[str, Any]) -> tuple[str, ...]:
    """The column currents, with read noise on a noisy tile (module docstring)."""
    conductance, variance = chip.conductance_us, chip.variance_us2
    names.update(conductance=conductance, variance=variance)
    lines = [f"{_product(conductance, np.float64)}(x_q, conductance, current)"]
    if variance is None:
        return tuple(lines)
    # The variance sum in float64, rounded to float32 as it is written into ``spread``:
    # a float32 product would round a row differently with the rows of the call (BLAS
    # picks its kernel by them), so the noise would change with the batch split. One
    # matmul for every row count: np.dot takes no float32 output for float64 operands.
    squared = "x_q" if chip.binary_input else "squared"  # x_q**2 == x_q for 0 and 1
    return (
        *lines,
        f"matmul({squared}, variance, spread)",
        "sqrt(spread, spread)",
        "multiply(spread_flat, normals, spread_flat)",
        "add(current, spread, current)",
    )


def _product(weight: np.ndarray, dtype: type) -> str:
    """The call computing ``operand @ weight`` into an output: ``np.dot`` for one row where
    that is the same (:func:`row_product`), else ``np.matmul``."""
    if row_product(weight, np.dtype(dtype)):
        return "(dot if x_q.shape[0] == 1 else matmul)"
    return "matmul"


def squares(chip: TileChip) -> bool:
    """Whether a read needs ``x_q**2`` in ``squared``: a noisy tile with multi-bit inputs
    (inputs of 0 and 1 are their own squares)."""
    return chip.noisy and not chip.binary_input


def _squares(chip: TileChip) -> tuple[str, ...]:
    """``x_q**2`` into ``squared``, where :func:`squares`."""
    return ("multiply(x_q, x_q, squared)",) if squares(chip) else ()


def _codes(chip: TileChip, names: dict[str, Any]) -> tuple[str, ...]:
    """The ADC's codes: ``crossbar.adc_quantize`` up to its rounding."""
    names.update(adc_scale=_scalar(chip.adc_range), adc_max=_scalar(adc_max_code(chip.adc_bits)))
    lines = ["divide(current, adc_scale, current)"]
    if chip.noisy or not never_clips(chip):
        lines += _clip("current", "adc", -1.0, 1.0, names)
    return (*lines, "multiply(current, adc_max, current)", "rint(current, codes)")


def _values(chip: TileChip, names: dict[str, Any], assign: bool) -> tuple[str, ...]:
    """The rest of ``crossbar.adc_quantize`` and the tile's gain, rounded once."""
    names.update(adc_scale=_scalar(chip.adc_range), adc_max=_scalar(adc_max_code(chip.adc_bits)))
    return (
        "multiply(codes, adc_scale, scratch)",
        "divide(scratch, adc_max, scratch)",
        "multiply(scratch, gain, scratch)",
        "out[...] = scratch" if assign else 'copyto(out, scratch, casting="same_kind")',
    )


class Workspace:
    """Scratch of one tile's reads of up to ``rows`` input rows.

    Attributes:
        rows: the most rows one read may have.
        x_q: the converted input ``[rows, r]``.
        squared: ``x_q ** 2`` (noisy tiles with multi-bit inputs), else None.
        current: the column currents ``[rows, c]``.
        spread, spread_flat: the read noise's float32 scratch ``[rows, c]`` and its flat
            view (noisy tiles), else None.
        driven: rows driven with a non-zero input by the last conversion (the simulator's
            count, kept with a conversion that tiles share).
    """

    def __init__(self, chip: TileChip, rows: int) -> None:
        self.rows = rows = max(1, rows)
        k, c = chip.n_rows, chip.n_cols
        self.x_q = np.empty((rows, k))
        self.squared = np.empty((rows, k)) if squares(chip) else None
        self.current = np.empty((rows, c))
        self.spread = np.empty((rows, c), np.float32) if chip.noisy else None
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


def _clip(array: str, prefix: str, lo: float, hi: float, names: dict[str, Any]) -> list[str]:
    """Statements clipping the float64 ``array`` to ``[lo, hi]`` in place, as ``maximum``
    then ``minimum``; the bounds are named ``{prefix}_lo`` and ``{prefix}_hi``.

    NumPy's ``clip`` computes the same values (NaN stays NaN) in one call, except that
    the sign of a zero at a bound of 0 may differ; ``maximum``/``minimum`` are kept for
    such a bound.
    """
    low, high = f"{prefix}_lo", f"{prefix}_hi"
    names.update({low: _scalar(lo), high: _scalar(hi)})
    if lo and hi:
        return [f"clip({array}, {low}, {high}, {array})"]
    return [f"maximum({array}, {low}, out={array})", f"minimum({array}, {high}, out={array})"]
