"""The ``quantize`` pass: DAC input ranges and ADC full scales of every crossbar tile.

The conductances themselves are not stored: they are a pure function of the weight window
and the target (``snuc.ir.crossbar.tile_conductances``), so every stage recomputes the
same ones. What a tile needs beyond them is set here, on each ``xbar.mvm``:

* ``dac = (lo, hi)``: from calibration (the observed min and max of the tile's input on
  sample sequences, run through the float interpreter) where given; else from what the
  graph guarantees (spikes (0, 1), sigmoid (0, 1), ...; ``snuc.ir.crossbar.dac_range``),
  and (-1, 1) for other real values (SPEC §6).
* ``adc_range``: the calibrated full scale (the largest |column current| seen on the
  samples) where given; else the target's ``adc_rule``: ``"max"`` (the default), the
  largest current any input in the DAC range can draw, which never clips
  (``snuc.ir.crossbar.default_adc_range``); ``"ksigma"``, a bound ``adc_k`` standard
  deviations above a column current's mean, which may clip
  (``snuc.ir.crossbar.ksigma_adc_range``).

The driver calibrates with ``snuc.runtime.calibration.calibrate(graph, X, target)`` on the
graph this pass gets, then runs ``Quantize(ranges=cal.ranges, adc=cal.adc)``.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Mapping
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import TYPE_CHECKING, ClassVar

from snuc.ir.crossbar import adc_full_scale, dac_range, guaranteed_ranges, tile_conductances
from snuc.ir.errors import SnucError
from snuc.ir.graph import Graph
from snuc.ir.ops import CrossbarMVM
from snuc.ir.target import DEFAULT_TARGET, parse_target
from snuc.passes.base import Pass, register_pass

if TYPE_CHECKING:
    from snuc.ir.target import TargetSpec


def _frozen_ranges(
    ranges: Mapping[str, tuple[float, float]] | None,
) -> Mapping[str, tuple[float, float]]:
    checked: dict[str, tuple[float, float]] = {}
    for name, bounds in (ranges or {}).items():
        lo, hi = (float(v) for v in bounds)
        if not (math.isfinite(lo) and math.isfinite(hi) and lo <= hi):
            raise SnucError(
                f"quantize: calibrated range of %{name} is ({lo}, {hi}); expected finite "
                "bounds with lo <= hi (recalibrate on finite samples)"
            )
        checked[str(name)] = (lo, hi)
    return MappingProxyType(checked)


def _frozen_adc(adc: Mapping[int, float] | None) -> Mapping[int, float]:
    checked: dict[int, float] = {}
    for tile, full_scale in (adc or {}).items():
        value = float(full_scale)
        if not (math.isfinite(value) and value > 0):
            raise SnucError(
                f"quantize: calibrated ADC full scale of tile {tile} is {value}; expected a "
                "finite number > 0 (recalibrate, or leave the tile out for the default)"
            )
        checked[int(tile)] = value
    return MappingProxyType(checked)


@register_pass
@dataclass(frozen=True)
class Quantize(Pass):
    """Set every ``xbar.mvm``'s ``dac`` and ``adc_range`` (see the module docstring).

    Attributes:
        ranges: calibrated input ranges ``(min, max)`` by the name of a tile's input value
            (``Calibration.ranges``); values not named take their guaranteed range.
        adc: calibrated ADC full scales by tile number (``Calibration.adc``); tiles not
            named take the target's ``adc_rule``.
    """

    name: ClassVar[str] = "quantize"
    # Mappings are not hashable: the pass hashes by its (empty) rest, equality still
    # compares them.
    ranges: Mapping[str, tuple[float, float]] | None = field(default=None, hash=False)
    adc: Mapping[int, float] | None = field(default=None, hash=False)

    def __post_init__(self) -> None:
        object.__setattr__(self, "ranges", _frozen_ranges(self.ranges))
        object.__setattr__(self, "adc", _frozen_adc(self.adc))

    def run(self, graph: Graph, target: TargetSpec | None) -> Graph:
        """The graph with every tile's converters set; ``target`` None: the default target."""
        if target is None:
            target = parse_target(DEFAULT_TARGET)
        self._check_names(graph)
        graph = graph.copy()
        guaranteed = guaranteed_ranges(graph)
        for node in list(graph.nodes()):
            if node.op.NAME != CrossbarMVM.NAME:
                continue
            op = node.op
            x, w = node.inputs
            dac = dac_range(guaranteed[x], self.ranges.get(x))
            full_scale = self.adc.get(op.tile)
            if full_scale is None:
                g_plus, g_minus, _ = tile_conductances(graph.constants[w], op.rows, op.cols, target)
                full_scale = adc_full_scale(g_plus, g_minus, dac, target)
            graph.replace_op(node, dataclasses.replace(op, dac=dac, adc_range=full_scale))
        return graph

    def _check_names(self, graph: Graph) -> None:
        """Calibration must describe this graph: a stale one would silently not apply."""
        unknown = [n for n in self.ranges if not graph.has_value(n)]
        if unknown:
            raise SnucError(
                f"quantize: calibration names %{unknown[0]}, which graph @{graph.name} does "
                "not have; calibrate the graph that is being compiled"
            )
        tiles = {n.op.tile for n in graph.nodes() if n.op.NAME == CrossbarMVM.NAME}
        stray = sorted(set(self.adc) - tiles)
        if stray:
            raise SnucError(
                f"quantize: calibration has an ADC full scale for tile {stray[0]}, which graph "
                f"@{graph.name} does not have; calibrate after the tile pass"
            )
