"""Calibration of DAC input ranges and ADC full scales on sample sequences (``--calibrate``).

The float interpreter runs the graph on the samples with ``trace=True``; each crossbar
input's observed min and max become its DAC range, and each tile's largest |column
current| (DAC-quantised inputs, quantised conductances, no noise) its ADC full scale; with
the target's ``adc_rule = "ksigma"``, the largest over columns of the observed currents'
``|mean| + adc_k * std``, where that is lower (k-sigma over calibration data). The
driver passes the result to the ``quantize`` pass::

    cal = calibrate(graph, X, target)
    graph = Quantize(ranges=cal.ranges, adc=cal.adc).run(graph, target)

Run it on the graph the ``quantize`` pass will get (after ``tile``), so the tile numbers
of ``adc`` are that graph's; on a graph without tiles only the ranges are calibrated.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from types import MappingProxyType

import numpy as np

from snuc.ir.crossbar import dac_quantize, dac_range, guaranteed_ranges, tile_conductances
from snuc.ir.errors import SnucError
from snuc.ir.graph import Graph, Node
from snuc.ir.target import TargetSpec
from snuc.runtime.config import RunConfig
from snuc.runtime.interpreter import bind_inputs, run, sequence_extent

_CROSSBAR_OPS = ("xbar.mvm", "xbar.dense", "xbar.conv")


@dataclass(frozen=True)
class Calibration:
    """What calibration samples showed.

    Attributes:
        ranges: ``(min, max)`` observed of each crossbar input value, by value name
            (finite values only; a value never finite on the samples is left out).
        adc: largest |column current| of each tile (``adc_rule = "ksigma"``: the k-sigma
            bound of its columns' currents where lower), by tile number (tiles that drew
            no current are left out, so they keep the default full scale).
        steps: timesteps observed (T x B of the samples).
    """

    ranges: Mapping[str, tuple[float, float]] = field(default_factory=dict, hash=False)
    adc: Mapping[int, float] = field(default_factory=dict, hash=False)
    steps: int = 0

    def __post_init__(self) -> None:
        object.__setattr__(self, "ranges", MappingProxyType(dict(self.ranges)))
        object.__setattr__(self, "adc", MappingProxyType(dict(self.adc)))


class _Sequences:
    """Every value of a traced run as a sequence ``[T, ...]`` (inputs and states included)."""

    def __init__(
        self,
        graph: Graph,
        feeds: Mapping[str, np.ndarray],
        traced: Mapping[str, np.ndarray],
        extent: tuple[int, int],
    ) -> None:
        self.graph = graph
        self.known = {**feeds, **traced}
        self.extent = extent

    def of(self, name: str, visiting: frozenset[str] = frozenset()) -> np.ndarray:
        """The sequence of ``name``; a constant is one step of itself (the same range)."""
        if name in self.known:
            return self.known[name]
        if self.graph.is_constant(name):
            return self.graph.constants[name][None]
        steps, batch = self.extent
        type_ = self.graph.type_of(name)
        state = self.graph.state(name)
        if state.next in visiting:
            # States that only pass each other's values along hold their zeros forever.
            return np.zeros((steps, *type_.concrete(batch)), type_.np_dtype)
        later = self.of(state.next, visiting | {name})
        first = np.zeros((1, *type_.concrete(batch)), type_.np_dtype)
        self.known[name] = np.concatenate([first, later[: steps - 1]])
        return self.known[name]


def _observed(values: np.ndarray) -> tuple[float, float] | None:
    finite = values[np.isfinite(values)] if values.dtype.kind == "f" else values
    if finite.size == 0:
        return None
    return float(finite.min()), float(finite.max())


def _full_scale(
    node: Node, graph: Graph, x: np.ndarray, dac: tuple[float, float], target: TargetSpec
) -> float:
    """A tile's calibrated ADC full scale over the input sequence ``x``: the largest
    |column current|; with ``adc_rule = "ksigma"``, ``max_j |mean_j| + adc_k * std_j`` of
    the observed currents of each column, where that is below the largest."""
    op = node.op
    g_plus, g_minus, _ = tile_conductances(
        graph.constants[node.inputs[1]], op.rows, op.cols, target
    )
    conductance = g_plus.sum(axis=-1) - g_minus.sum(axis=-1)
    r0, r1 = op.rows
    peak = 0.0
    total = np.zeros(conductance.shape[1])
    squares = np.zeros(conductance.shape[1])
    count = 0
    for x_t in x:  # one step at a time: a convolution's patches are large
        x_q = dac_quantize(x_t[..., r0:r1], dac[0], dac[1], target.dac_bits)
        current = np.matmul(x_q, conductance).reshape(-1, conductance.shape[1])
        peak = max(peak, float(np.abs(current).max(initial=0.0)))
        total += current.sum(axis=0)
        squares += np.square(current).sum(axis=0)
        count += current.shape[0]
    if target.adc_rule != "ksigma" or count == 0:
        return peak
    mean = total / count
    std = np.sqrt(np.maximum(squares / count - np.square(mean), 0.0))
    bound = float((np.abs(mean) + target.adc_k * std).max(initial=0.0))
    return min(bound, peak) if bound > 0 else peak


def calibrate(
    graph: Graph, samples: np.ndarray | Mapping[str, np.ndarray], target: TargetSpec
) -> Calibration:
    """Observe DAC ranges and ADC full scales on sample sequences (see the module docstring).

    Args:
        graph: the step graph the ``quantize`` pass will get.
        samples: sequences ``[T, B, ...]`` as :func:`snuc.runtime.interpreter.run` takes
            them (one array, or a dict by input name).
        target: the chip; gives the conductances and the DAC resolution.

    Returns:
        The observed ranges and full scales.

    Raises:
        SnucError: samples that do not fit the graph's inputs (names the input, the
            expected and the actual shape) or hold no timestep; one line.
    """
    try:
        feeds = bind_inputs(graph, samples)
    except SnucError as exc:
        raise SnucError(f"calibration samples: {exc}") from None
    for name, array in feeds.items():
        if array.dtype.kind == "f" and not np.all(np.isfinite(array)):
            # Ranges observed through NaN or Inf would be meaningless; say so, not fall back.
            raise SnucError(f"calibration samples: input %{name} holds NaN or Inf")
    _, traced = run(graph, feeds, RunConfig(mode="float"), trace=True)
    steps, batch = sequence_extent(graph, feeds)
    if steps * batch == 0:
        raise SnucError(
            "calibration samples hold no timestep; give at least one step of one sequence"
        )

    sequences = _Sequences(graph, feeds, traced, (steps, batch))
    crossbar_nodes = [n for n in graph.nodes() if n.op.NAME in _CROSSBAR_OPS]
    ranges: dict[str, tuple[float, float]] = {}
    for node in crossbar_nodes:
        x = node.inputs[0]
        if x not in ranges:
            observed = _observed(sequences.of(x))
            if observed is not None:
                ranges[x] = observed

    guaranteed = guaranteed_ranges(graph)
    adc: dict[int, float] = {}
    for node in crossbar_nodes:
        if node.op.NAME != "xbar.mvm":
            continue
        x = node.inputs[0]
        dac = dac_range(guaranteed[x], ranges.get(x))
        full_scale = _full_scale(node, graph, sequences.of(x), dac, target)
        if full_scale > 0:
            adc[node.op.tile] = full_scale
    return Calibration(ranges=ranges, adc=adc, steps=steps * batch)
