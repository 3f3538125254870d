"""The deterministic math of a crossbar tile: conductances, digital scales, DAC and ADC.

Shared by the ``quantize`` pass, the reference interpreter's ``quantized`` and ``pcm``
modes and the backends, so that every stage programs and reads a tile the same way.
Everything here is a pure function of the weights, the target and (for the DAC ranges)
the graph; nothing is random. The equations (docs/quantization.md):

* Digital scale per weight column j of a tile: ``s_j = max_i |W_ij| / (dpp * g_max)``
  over the tile's rows (``dpp`` = devices per polarity; target ``weight_scaling =
  "column"``, the default). With ``weight_scaling = "tile"`` (aihwkit's default) every
  column takes the tile's one scale ``max_ij |W_ij| / (dpp * g_max)``, so only the
  tile's largest weight reaches ``g_max``. Either way a column of zeros gets ``s_j = 0``:
  it carries no weight, so its output is exactly zero in every mode, however noisy its
  idle devices are.
* Target conductances: ``G+ = max(W / s, 0)``, ``G- = max(-W / s, 0)``, each split
  equally over the ``dpp`` devices of its polarity, so one device holds at most
  ``g_max``. With ``conductance_levels = L > 0`` every device is snapped to the nearest
  of the L levels ``g_max * k / (L - 1)``; ``L = 0`` is analog (no snapping).
* The quantised weight is ``W_q = s * (sum G+ - sum G-)`` (sums over the devices).
  Analog: ``W_q = W`` up to float64 rounding. With L levels each device is off by at most
  half a level, ``g_max / (L - 1) / 2``, and only one polarity of a weight is non-zero,
  so ``|W_ij - W_q,ij| <= s_j * dpp * g_max / (L - 1) / 2``.
* DAC over ``(lo, hi)`` with ``b`` bits: ``step = (hi - lo) / (2**b - 1)``,
  ``x_q = lo + rint((clip(x, lo, hi) - lo) / step) * step`` (round half to even). Both
  ends are grid points, so {0, 1} spikes with ``(0, 1)`` pass exactly.
* ADC of full scale ``F`` with ``b`` bits: ``m = 2**(b - 1) - 1``,
  ``code = rint(clip(I / F, -1, 1) * m)``, ``I_hat = code * F / m``.

Units: conductances in µS; a column current is in µS times the input's unit.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np
from numpy.typing import ArrayLike, NDArray

from snuc.ir import ops
from snuc.ir.elementwise import ELEMENTWISE
from snuc.ir.elementwise import RangeRule as ElementwiseRule
from snuc.ir.graph import Graph
from snuc.ir.neurons import NEURON_OPS, NeuronOp
from snuc.ir.ops import Op
from snuc.ir.target import TargetSpec

Window = tuple[int, int] | Sequence[int]


# --------------------------------------------------------------------------- conductances


def _window(weights: ArrayLike, rows: Window, cols: Window) -> NDArray[np.float64]:
    """The tile's window ``W[r0:r1, c0:c1]`` of the whole weight matrix, as float64."""
    (r0, r1), (c0, c1) = rows, cols
    # Cut first, convert second: converting the whole matrix per tile is quadratic work.
    return np.asarray(weights)[r0:r1, c0:c1].astype(np.float64)


def column_scales(w_tile: ArrayLike, target: TargetSpec) -> NDArray[np.float64]:
    """Digital scale of each column of a tile: ``s_j = max_i |W_ij| / (dpp * g_max)``, or
    the tile's one scale ``max_ij |W_ij| / (dpp * g_max)`` where ``target.weight_scaling``
    is ``"tile"``.

    A column of zeros gets 0 either way (see the module docstring).

    Args:
        w_tile: the tile's weights ``[rows, cols]``.
        target: gives ``weight_scaling``, ``devices_per_polarity`` and ``g_max_us``.

    Returns:
        ``[cols]`` float64, in weight units per µS.
    """
    peak = np.max(np.abs(np.asarray(w_tile, dtype=np.float64)), axis=0)
    if target.weight_scaling == "tile":
        peak = np.where(peak > 0, peak.max(initial=0.0), 0.0)
    return peak / (target.devices_per_polarity * target.g_max_us)


def snap_to_levels(g_us: ArrayLike, target: TargetSpec) -> NDArray[np.float64]:
    """Each device's conductance rounded to the nearest of ``conductance_levels`` levels.

    The levels are ``g_max * k / (L - 1)`` for ``k = 0 .. L - 1``; ``L = 0`` (analog)
    returns the input unchanged. Inputs must lie in ``[0, g_max]``.
    """
    g = np.asarray(g_us, dtype=np.float64)
    levels = target.conductance_levels
    if levels == 0:
        return g
    top = levels - 1
    # k / top is exactly 1.0 at the top level, so g_max itself stays exact.
    return target.g_max_us * (np.rint(g / target.g_max_us * top) / top)


def tile_conductances(
    weights: ArrayLike, rows: Window, cols: Window, target: TargetSpec
) -> tuple[NDArray[np.float64], NDArray[np.float64], NDArray[np.float64]]:
    """The target conductances and digital scales of one tile.

    Args:
        weights: the WHOLE weight matrix ``W[K, N]`` (the tile is a window of it).
        rows, cols: ``(start, stop)`` of the tile's window, as in ``xbar.mvm``.
        target: gives ``devices_per_polarity``, ``g_max_us`` and ``conductance_levels``.

    Returns:
        ``(g_plus, g_minus, scale)``: ``g_plus`` and ``g_minus`` ``[r, c, dpp]`` in µS,
        each device in ``[0, g_max]`` (on a level when the target has levels), and
        ``scale [c]`` in weight units per µS; all float64. ``scale * (g_plus.sum(-1) -
        g_minus.sum(-1))`` is the quantised window (:func:`weights_from_conductances`).
    """
    w = _window(weights, rows, cols)
    scale = column_scales(w, target)
    dpp = target.devices_per_polarity
    safe = np.where(scale > 0, scale, 1.0)
    # The column maximum divides to dpp * g_max up to rounding; the clip keeps every
    # device within its physical range.
    per_device_plus = np.clip(np.maximum(w / safe, 0.0) / dpp, 0.0, target.g_max_us)
    per_device_minus = np.clip(np.maximum(-w / safe, 0.0) / dpp, 0.0, target.g_max_us)
    devices = (*w.shape, dpp)
    g_plus = np.broadcast_to(snap_to_levels(per_device_plus, target)[..., None], devices).copy()
    g_minus = np.broadcast_to(snap_to_levels(per_device_minus, target)[..., None], devices).copy()
    return g_plus, g_minus, scale


def weights_from_conductances(
    g_plus: ArrayLike, g_minus: ArrayLike, scale: ArrayLike
) -> NDArray[np.float64]:
    """The weights a tile's conductances represent: ``s * (sum G+ - sum G-)`` ``[r, c]``."""
    g_plus, g_minus = np.asarray(g_plus, np.float64), np.asarray(g_minus, np.float64)
    return np.asarray(scale, np.float64) * (g_plus.sum(axis=-1) - g_minus.sum(axis=-1))


def quantized_weights(
    weights: ArrayLike, rows: Window, cols: Window, target: TargetSpec
) -> NDArray[np.float64]:
    """The quantised window ``W_q [r, c]`` of a tile (float64).

    Bound: ``|W - W_q| <= scale_j * dpp * g_max / (L - 1) / 2`` per element with L
    conductance levels; analog (L = 0): equal up to float64 rounding.
    """
    return weights_from_conductances(*tile_conductances(weights, rows, cols, target))


def level_error_bound(scale: ArrayLike, target: TargetSpec) -> NDArray[np.float64]:
    """Per column, the largest ``|W - W_q|`` the conductance levels allow (0 if analog)."""
    scale = np.asarray(scale, np.float64)
    if target.conductance_levels == 0:
        return np.zeros_like(scale)
    half_level = target.g_max_us / (target.conductance_levels - 1) / 2
    return scale * target.devices_per_polarity * half_level


# --------------------------------------------------------------------------- converters


def dac_grid(lo: float, hi: float, bits: int) -> tuple[float, float]:
    """The DAC's grid ``(origin, step)``: its levels are ``origin + k * step``.

    A range of one sign is unsigned: origin ``lo``, ``2**bits`` levels from ``lo`` to
    ``hi``. A range holding both signs is sign-magnitude, as pulse-width-modulated inputs
    are (a sign bit and the pulse length): origin 0, ``2**(bits-1) - 1`` levels each side
    up to ``max(-lo, hi)``, so zero converts exactly and a real-valued input that is 0
    drives nothing.
    """
    if lo < 0.0 < hi:
        return 0.0, max(-lo, hi) / max(2 ** (bits - 1) - 1, 1)
    return lo, (hi - lo) / (2**bits - 1)


def dac_step(lo: float, hi: float, bits: int) -> float:
    """The DAC's input step (see :func:`dac_grid`)."""
    return dac_grid(lo, hi, bits)[1]


def dac_quantize(x: ArrayLike, lo: float, hi: float, bits: int) -> NDArray[np.float64]:
    """The DAC: ``x_q = origin + rint((clip(x, lo, hi) - origin) / step) * step`` in float64.

    Round half to even; |x_q - x| <= step / 2 inside ``[lo, hi]``, and values outside are
    clipped to the ends. Grid points (and so zero, and {0, 1} spikes over ``(0, 1)``) pass
    unchanged: the function is idempotent. See :func:`dac_grid` for the grid.
    """
    origin, step = dac_grid(lo, hi, bits)
    clipped = np.clip(np.asarray(x, dtype=np.float64), lo, hi)
    return origin + np.rint((clipped - origin) / step) * step


def adc_max_code(bits: int) -> int:
    """Largest ADC code magnitude, ``2**(bits - 1) - 1``.

    A 1-bit ADC would have no code but zero; it is given codes {-1, 0, 1}, i.e. it tells
    currents beyond half the full scale either way from those within.
    """
    return max(2 ** (bits - 1) - 1, 1)


def adc_quantize(current: ArrayLike, full_scale: float, bits: int) -> NDArray[np.float64]:
    """The ADC: ``I_hat = rint(clip(I / F, -1, 1) * m) * F / m`` with ``m = 2**(bits-1) - 1``.

    Symmetric around zero (zero reads exactly zero); |I_hat - I| <= F / (2 m) inside
    ``[-F, F]``, and currents beyond are clipped to ``+-F``.
    """
    m = adc_max_code(bits)
    code = np.rint(np.clip(np.asarray(current, dtype=np.float64) / full_scale, -1.0, 1.0) * m)
    return code * full_scale / m


def default_adc_range(
    g_plus: ArrayLike, g_minus: ArrayLike, dac: tuple[float, float], target: TargetSpec
) -> float:
    """An ADC full scale that never clips an exact-conductance read.

    ``max_j sum_i |G+_ij - G-_ij| * max(|lo|, |hi|)``: the largest column current any
    input within the DAC range can draw. A tile of zero weights draws no current; it gets
    ``g_max * max(|lo|, |hi|)`` (any positive full scale reads zero exactly).
    """
    g_plus, g_minus = np.asarray(g_plus, np.float64), np.asarray(g_minus, np.float64)
    drive = max(abs(dac[0]), abs(dac[1]))
    per_column = np.abs(g_plus.sum(axis=-1) - g_minus.sum(axis=-1)).sum(axis=0)
    full_scale = float(per_column.max(initial=0.0)) * drive
    return full_scale if full_scale > 0 else target.g_max_us * drive


def ksigma_adc_range(
    g_plus: ArrayLike, g_minus: ArrayLike, dac: tuple[float, float], target: TargetSpec
) -> float:
    """A bounded ADC full scale: ``max_j |mu_j| + adc_k * sigma_j``, at most the default's.

    ``mu_j`` and ``sigma_j`` are the mean and standard deviation of column j's current
    when the inputs are independent and each sits at either end of the DAC range with
    equal probability (the largest variance a value within the range can have; a spike
    firing at rate 1/2): ``mu_j = (lo + hi) / 2 * sum_i G_ij`` and ``sigma_j =
    (hi - lo) / 2 * sqrt(sum_i G_ij**2)`` with ``G = G+ - G-``. By the central limit
    theorem a current then exceeds the full scale with probability about that of a
    normal beyond ``adc_k`` sigma; it is clipped (docs/quantization.md). Never above
    :func:`default_adc_range`, which no current can exceed.
    """
    g_plus, g_minus = np.asarray(g_plus, np.float64), np.asarray(g_minus, np.float64)
    never_clips = default_adc_range(g_plus, g_minus, dac, target)
    conductance = g_plus.sum(axis=-1) - g_minus.sum(axis=-1)
    lo, hi = dac
    mean = (lo + hi) / 2 * conductance.sum(axis=0)
    sigma = (hi - lo) / 2 * np.sqrt(np.square(conductance).sum(axis=0))
    bound = float((np.abs(mean) + target.adc_k * sigma).max(initial=0.0))
    return min(bound, never_clips) if bound > 0 else never_clips


def adc_full_scale(
    g_plus: ArrayLike, g_minus: ArrayLike, dac: tuple[float, float], target: TargetSpec
) -> float:
    """The ADC full scale ``target.adc_rule`` gives a tile without a calibrated one:
    ``"max"`` :func:`default_adc_range`, ``"ksigma"`` :func:`ksigma_adc_range`."""
    if target.adc_rule == "ksigma":
        return ksigma_adc_range(g_plus, g_minus, dac, target)
    return default_adc_range(g_plus, g_minus, dac, target)


def mvm_error_bound(
    x: ArrayLike,
    weights: ArrayLike,
    rows: Window,
    cols: Window,
    dac: tuple[float, float],
    adc_range: float,
    target: TargetSpec,
) -> NDArray[np.float64]:
    """The largest ``|quantized - exact|`` of each output of one tile, float rounding aside.

    With ``x_q`` the DAC's output, ``W_q`` the quantised window, ``s`` the scales and
    ``I = x_q @ (G+ - G-)`` the column currents, the quantised output is
    ``s * ADC(I)`` and the exact one ``x @ W``, so per output column j::

        |error_j| <= step / 2 * sum_i |W_ij|          (DAC rounding)
                   + sum_i |x_q,i| * dW_j              (conductance levels, level_error_bound)
                   + s_j * adc_range / (2 m)           (ADC rounding)

    It holds when every input lies in the DAC range and no current exceeds the ADC full
    scale (the default full scale never is exceeded; a calibrated one may be).

    Args:
        x: inputs ``[..., K]`` of the whole weight's rows (the tile reads its window).
        weights, rows, cols: the whole weight matrix and the tile's window.
        dac, adc_range: the tile's converter settings (``xbar.mvm`` attributes).
        target: gives the converter resolutions and the conductance levels.

    Returns:
        ``[..., cols]`` float64 bounds.
    """
    w = _window(weights, rows, cols)
    scale = column_scales(w, target)
    (r0, r1), (lo, hi) = rows, dac
    x_q = dac_quantize(np.asarray(x)[..., r0:r1], lo, hi, target.dac_bits)
    dac_part = dac_step(lo, hi, target.dac_bits) / 2 * np.abs(w).sum(axis=0)
    level_part = np.abs(x_q).sum(axis=-1, keepdims=True) * level_error_bound(scale, target)
    adc_part = scale * adc_range / (2 * adc_max_code(target.adc_bits))
    return dac_part + level_part + adc_part


# --------------------------------------------------------------------------- value ranges


@dataclass(frozen=True)
class ValueRange:
    """What the graph guarantees about a value: every element lies in ``[lo, hi]``.

    Attributes:
        lo, hi: bounds; ``-inf`` / ``inf`` where nothing is known.
        binary: every element is exactly 0 or 1 (spikes, booleans).
    """

    lo: float = -math.inf
    hi: float = math.inf
    binary: bool = False

    def __or__(self, other: ValueRange) -> ValueRange:
        """The smallest range holding both."""
        return ValueRange(
            min(self.lo, other.lo), max(self.hi, other.hi), self.binary and other.binary
        )

    @staticmethod
    def of(array: np.ndarray) -> ValueRange:
        """The range of a constant's elements (unknown for an empty or non-finite one)."""
        values = np.asarray(array)
        if values.size == 0:
            return UNKNOWN_RANGE
        if values.dtype == np.bool_:
            return SPIKES
        lo, hi = float(values.min()), float(values.max())
        if not (math.isfinite(lo) and math.isfinite(hi)):
            return UNKNOWN_RANGE
        return ValueRange(lo, hi, bool(np.all((values == 0) | (values == 1))))


UNKNOWN_RANGE = ValueRange()
SPIKES = ValueRange(0.0, 1.0, binary=True)
UNIT_INTERVAL = ValueRange(0.0, 1.0)
ZERO = ValueRange(0.0, 0.0, binary=True)

RangeRule = Callable[[Op, list[ValueRange]], tuple[ValueRange, ...]]


def _monotone(fn: Callable[[float], float], r: ValueRange, keeps_binary: bool) -> ValueRange:
    return ValueRange(fn(r.lo), fn(r.hi), r.binary and keeps_binary)


def _relu(v: float) -> float:
    return max(v, 0.0)


def _leaky(alpha: float) -> Callable[[float], float]:
    # 0 * -inf is nan: with alpha = 0 the negative side is 0.
    return lambda v: v if v >= 0 else (alpha * v if alpha > 0 else 0.0)


def _union(ranges: Sequence[ValueRange]) -> ValueRange:
    out = ranges[0]
    for r in ranges[1:]:
        out = out | r
    return out


def _with_padding(r: ValueRange, padded: bool) -> ValueRange:
    return r | ZERO if padded else r


def _cast(op: Op, r: list[ValueRange]) -> tuple[ValueRange, ...]:
    if op.to == "bool" or r[0].binary:
        return (SPIKES,)
    # Float to integer truncates toward zero: the result stays within the bounds.
    return (ValueRange(r[0].lo, r[0].hi),)


def _unknown(op: Op, r: list[ValueRange]) -> tuple[ValueRange, ...]:
    return (UNKNOWN_RANGE,) * op.RESULTS


def _neuron(op: NeuronOp, r: list[ValueRange]) -> tuple[ValueRange, ...]:
    """A neuron model's results take the ranges its definition names."""
    named = {
        "spikes": SPIKES,
        "unit": UNIT_INTERVAL,
        "nonnegative": ValueRange(0.0, math.inf),
        "unknown": UNKNOWN_RANGE,
    }
    return tuple(named[name] for name in op.result_ranges())


def _defined(rule: ElementwiseRule) -> RangeRule:
    """An element-wise op's rule (:mod:`snuc.ir.elementwise`) over :class:`ValueRange`."""

    def ranges(op: Op, r: list[ValueRange]) -> tuple[ValueRange, ...]:
        bounds = rule(op, r)
        return (UNKNOWN_RANGE if bounds is None else ValueRange(*bounds),)

    return ranges


RANGE_RULES: dict[type[Op], RangeRule] = {
    ops.Step: lambda op, r: (SPIKES,),
    ops.Sigmoid: lambda op, r: (UNIT_INTERVAL,),
    ops.Softmax: lambda op, r: (UNIT_INTERVAL,),
    ops.LogSoftmax: lambda op, r: (ValueRange(-math.inf, 0.0),),
    ops.Cast: _cast,
    **dict.fromkeys(NEURON_OPS.values(), _neuron),
    ops.Relu: lambda op, r: (_monotone(_relu, r[0], True),),
    ops.LeakyRelu: lambda op, r: (
        _monotone(_leaky(op.alpha), r[0], True) if op.alpha >= 0 else UNKNOWN_RANGE,
    ),
    ops.Where: lambda op, r: (r[1] | r[2],),
    ops.Reshape: lambda op, r: (r[0],),
    ops.Transpose: lambda op, r: (r[0],),
    ops.MaxPool: lambda op, r: (r[0],),
    ops.Concat: lambda op, r: (_union(r),),
    ops.Gather: lambda op, r: (r[0],),
    ops.Im2Col: lambda op, r: (_with_padding(r[0], any(op.pads)),),
    ops.ReduceMean: lambda op, r: (ValueRange(r[0].lo, r[0].hi),),
    ops.AvgPool: lambda op, r: (
        _with_padding(ValueRange(r[0].lo, r[0].hi), op.count_include_pad and any(op.pads)),
    ),
    **dict.fromkeys(
        (ops.Div, ops.ReduceSum, ops.MatMul, ops.Dense, ops.Conv, ops.DigitalConv, ops.CrossbarMVM),
        _unknown,
    ),
    **{cls: _defined(definition.ranges) for cls, definition in ELEMENTWISE.items()},
}
"""By op class, the ranges of an op's results from its operands' ranges; every op has one
(a registry test checks it). Matrix products, sums and division give :data:`UNKNOWN_RANGE`."""

_WIDEN_AFTER = 8
"""Rounds of the state fixed point after which a state still growing is taken as unknown."""


def _propagate(graph: Graph, state_ranges: dict[str, ValueRange]) -> dict[str, ValueRange]:
    ranges: dict[str, ValueRange] = dict(state_ranges)
    for name, array in graph.constants.items():
        ranges[name] = ValueRange.of(array)
    for name in graph.inputs:
        ranges[name] = SPIKES if graph.type_of(name).dtype == "bool" else UNKNOWN_RANGE
    for node in graph.nodes():
        rule = RANGE_RULES[type(node.op)]
        results = rule(node.op, [ranges[v] for v in node.inputs])
        ranges.update(zip(node.outputs, results, strict=True))
    return ranges


def guaranteed_ranges(graph: Graph) -> dict[str, ValueRange]:
    """What the graph guarantees about each value's elements, by value name.

    Spikes (``dig.step``, an SNU's ``y`` with ``h = step``, casts of booleans,
    comparisons) are binary; sigmoid outputs lie in ``[0, 1]``, tanh in ``[-1, 1]``;
    constants in their min and max; ranges pass through data movement (reshape,
    transpose, concat, gather, im2col, pooling) and interval arithmetic (add, sub, mul,
    neg, relu). Sequence inputs are unknown (booleans: binary). A state holds zeros at the
    first step and its ``next`` afterwards; the ranges of states are found by a fixed
    point over the time loop (a bound of a state still moving after a few rounds is
    taken as unbounded).
    """
    state_ranges = {s.name: ZERO for s in graph.states}
    rounds = 0
    while True:
        ranges = _propagate(graph, state_ranges)
        changed = False
        for s in graph.states:
            old = state_ranges[s.name]
            new = old | ranges[s.next]
            if new == old:
                continue
            if rounds >= _WIDEN_AFTER:
                # A bound still moving moves without end (a counter, an integrator).
                lo = old.lo if new.lo == old.lo else -math.inf
                hi = old.hi if new.hi == old.hi else math.inf
                new = ValueRange(lo, hi, new.binary)
            state_ranges[s.name] = new
            changed = True
        if not changed:
            return ranges
        rounds += 1


DEFAULT_DAC_RANGE = (-1.0, 1.0)
"""The DAC range of a real-valued input with no guarantee and no calibration (SPEC §6)."""


def dac_range(
    guaranteed: ValueRange, observed: tuple[float, float] | None = None
) -> tuple[float, float]:
    """The DAC input range ``(lo, hi)``, ``lo < hi``, of a tile whose input has these ranges.

    * Binary inputs (spikes) get ``(0, 1)``, which passes them exactly.
    * Else a calibrated ``observed`` range (min, max on calibration samples), kept within
      the guaranteed bounds.
    * Else the guaranteed bounds. An unknown bound is taken from :data:`DEFAULT_DAC_RANGE`
      (``-1`` below, ``1`` above; or one unit from the known bound where that would
      leave an empty range).

    A single value ``v`` (a range ``(v, v)``) is widened to take in zero, with ``v`` at
    one end so that it passes exactly; ``(0, 0)`` becomes ``(0, 1)``.
    """
    if guaranteed.binary:
        return (0.0, 1.0)
    lo, hi = guaranteed.lo, guaranteed.hi
    if observed is not None:
        lo, hi = (min(max(v, guaranteed.lo), guaranteed.hi) for v in observed)
    default_lo, default_hi = DEFAULT_DAC_RANGE
    if not math.isfinite(hi):
        hi = max(default_hi, lo + 1.0) if math.isfinite(lo) else default_hi
    if not math.isfinite(lo):
        lo = min(default_lo, hi - 1.0)
    if lo >= hi:
        lo, hi = min(lo, 0.0), max(hi, 0.0)
        if lo == hi:
            lo, hi = 0.0, 1.0
    return (float(lo), float(hi))
