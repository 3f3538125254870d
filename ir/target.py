"""Targets as data: the chip a model is compiled for and simulated on (SPEC §3).

A :class:`TargetSpec` is a frozen record of every parameter a stage reads: crossbar size,
core and chip counts, device and converter figures, timing, energy and the PCM model's
constants. Each dataclass field carries its own metadata (range, unit, meaning, source),
so that one table drives validation, ``snuc targets`` and ``docs/targets.md``.

Targets are named ``pcm-RxC`` (R rows × C columns of devices, each in 8..4096) or given as
a TOML file whose ``base`` names one and whose other keys override parameters::

    base = "pcm-256x256"
    chips = 4
    g_max_us = 20.7

Defaults model IBM's 64-core PCM chip (Le Gallo et al., Nat. Electron. 6, 680-693, 2023;
HERMES core: Khaddam-Aljameh et al., IEEE JSSC 2022) and the PCM device model of
Nandakumar et al. 2019 and Joshi et al., Nat. Commun. 11, 2473, 2020.
"""

from __future__ import annotations

import dataclasses
import difflib
import math
import numbers
import os
import re
import tomllib
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from types import MappingProxyType
from typing import Any

from snuc.ir.errors import SnucError
from snuc.ir.limits import check_nesting
from snuc.ir.neurons import NEURON_OPS, cost_keys

DEFAULT_TARGET = "pcm-256x256"
"""The target used when none is given."""

MIN_DIM, MAX_DIM = 8, 4096
"""Bounds (inclusive) of R and C in a ``pcm-RxC`` name."""

_NAME_RE = re.compile(r"pcm-([0-9]{1,9})x([0-9]{1,9})")

_LE_GALLO = "Le Gallo et al., Nat. Electron. 2023"
_JOSHI = "Joshi et al., Nat. Commun. 2020; aihwkit PCMLikeNoiseModel"
_ASSUMED = "assumed (no published figure)"
_AIHWKIT = "aihwkit 1.2 inference tile (REFERENCE.md)"


@dataclass(frozen=True)
class ParamInfo:
    """What one target parameter means and which values it may take.

    Attributes:
        kind: ``int``, ``float`` or ``str``; the type of the parameter's default.
        allowed: inclusive intervals ``(lo, hi)``; a number must lie in one of them.
        unit: the unit of the value, as printed.
        meaning: one line saying what the parameter is.
        source: where the default comes from.
        choices: the values a ``str`` parameter may take.
        quiet_default: :meth:`TargetSpec.to_dict` leaves the key out at its default.
            Mapping choices added after artefacts were first written are quiet, so an
            artefact compiled with the defaults stays byte for byte what it was (a
            missing key reads back as its default).
    """

    kind: type
    allowed: tuple[tuple[float, float], ...]
    unit: str
    meaning: str
    source: str
    choices: tuple[str, ...] = ()
    quiet_default: bool = False

    def range_text(self) -> str:
        """The allowed values as text: ``8..4096``, ``1 or 2``, ``column or tile``."""
        if self.choices:
            return " or ".join(self.choices)
        parts = [_num(lo) if lo == hi else f"{_num(lo)}..{_num(hi)}" for lo, hi in self.allowed]
        return " or ".join(parts)

    def contains(self, value: float | str) -> bool:
        if self.choices:
            return value in self.choices
        return any(lo <= value <= hi for lo, hi in self.allowed)


def _num(x: float | str) -> str:
    """A bound or default as short text: ``4096``, ``0.1``, ``1e6`` (a string as it is)."""
    if isinstance(x, str):
        return x
    return f"{x:g}".replace("e+0", "e").replace("e+", "e")


def _param(
    default: int | float,
    allowed: tuple[float, float] | tuple[tuple[float, float], ...],
    *,
    unit: str,
    meaning: str,
    source: str,
    quiet_default: bool = False,
) -> Any:
    """A dataclass field whose metadata is its :class:`ParamInfo`.

    The default's type is the parameter's type: write ``20.0`` for a float parameter.
    """
    intervals = allowed if isinstance(allowed[0], tuple) else (allowed,)
    info = ParamInfo(type(default), intervals, unit, meaning, source, quiet_default=quiet_default)
    return field(default=default, metadata={"param": info})


def _choice(default: str, choices: tuple[str, ...], *, meaning: str, source: str) -> Any:
    """A dataclass field for a mapping choice: one of ``choices``, quiet at its default."""
    info = ParamInfo(str, (), "choice", meaning, source, choices=choices, quiet_default=True)
    return field(default=default, metadata={"param": info})


@dataclass(frozen=True)
class TargetSpec:
    """A simulated PCM chip: every parameter a stage reads, validated on construction.

    Build one with :func:`parse_target`, :func:`with_overrides` or :meth:`from_dict`;
    constructing it directly also validates every value (``name`` is then only a label).
    Parameters' ranges, units and meanings are in :data:`PARAMS` (and
    ``docs/targets.md``).
    """

    name: str = DEFAULT_TARGET
    rows: int = _param(
        256,
        (MIN_DIM, MAX_DIM),
        unit="devices",
        meaning="device rows per crossbar (from the name): the inputs of one MVM",
        source="SPEC §3",
    )
    cols: int = _param(
        256,
        (MIN_DIM, MAX_DIM),
        unit="devices",
        meaning="device columns per crossbar (from the name); one weight: 2 x devices_per_polarity",
        source="SPEC §3",
    )
    cores: int = _param(
        64, (1, 65536), unit="crossbars", meaning="crossbars (cores) per chip", source=_LE_GALLO
    )
    chips: int = _param(
        1,
        (1, 1_000_000),
        unit="chips",
        meaning="chips available (--chips N overrides)",
        source="SPEC §3",
    )
    devices_per_polarity: int = _param(
        1,
        ((1, 1), (2, 2)),
        unit="devices",
        meaning="PCM devices per polarity: a weight is G+ minus G-, each the sum of this many",
        source=f"{_LE_GALLO} (4 devices per unit cell)",
    )
    g_max_us: float = _param(
        25.0,
        (0.1, 1000.0),
        unit="uS",
        meaning="maximum programmed conductance of one device",
        source=_JOSHI,
    )
    conductance_levels: int = _param(
        0,
        ((0, 0), (2, 65536)),
        unit="levels",
        meaning="programmable conductance levels per device; 0 = analog (continuous)",
        source="SPEC §3",
    )
    dac_bits: int = _param(
        8, (1, 16), unit="bits", meaning="input (DAC) resolution of an MVM", source=_LE_GALLO
    )
    adc_bits: int = _param(
        8, (1, 16), unit="bits", meaning="output (ADC) resolution of an MVM", source=_LE_GALLO
    )
    input_phases: int = _param(
        1,
        (1, 16),
        unit="phases",
        meaning="MVM phases for a multi-bit input (1: pulse-width modulated; a spike takes 1)",
        source=f"{_LE_GALLO} (one-phase and four-phase modes)",
    )
    clock_ghz: float = _param(
        1.0,
        (0.01, 10.0),
        unit="GHz",
        meaning="clock frequency; sets the length of every *_cycles key",
        source="Khaddam-Aljameh et al., IEEE JSSC 2022",
    )
    mvm_cycles: int = _param(
        133,
        (1, 1_000_000),
        unit="cycles",
        meaning="one one-phase MVM including ADC conversion",
        source=f"{_LE_GALLO} (133 ns per MVM at 1 GHz)",
    )
    energy_mvm_pj: float = _param(
        13400.0,
        (0.0, 1e9),
        unit="pJ",
        meaning="one one-phase MVM with every row driven; scales with the driven rows",
        source=f"{_LE_GALLO} (9.76 TOPS/W: 102 fJ/op x 2 x 256 x 256)",
    )
    t0_s: float = _param(
        20.0,
        (1e-3, 1e6),
        unit="s",
        meaning="PCM drift reference time after programming",
        source=_JOSHI,
    )
    t_read_ns: float = _param(
        250.0,
        (1.0, 1e5),
        unit="ns",
        meaning="PCM read duration in the 1/f read-noise model",
        source=_JOSHI,
    )
    prog_noise_scale: float = _param(
        1.0,
        (0.0, 100.0),
        unit="x",
        meaning="multiplies the programming-noise standard deviation",
        source="SPEC §3",
    )
    read_noise_scale: float = _param(
        1.0,
        (0.0, 100.0),
        unit="x",
        meaning="multiplies the read-noise standard deviation",
        source="SPEC §3",
    )
    drift_scale: float = _param(
        1.0,
        (0.0, 100.0),
        unit="x",
        meaning="multiplies every device's drift exponent nu",
        source="SPEC §3",
    )
    digital_lanes: int = _param(
        32,
        (1, 65536),
        unit="elements/cycle",
        meaning="elements a digital unit processes per cycle in an element-wise vector op",
        source=f"{_ASSUMED}: a 256-element update of ~6 ops then fits in one MVM time",
    )
    energy_digital_op_pj: float = _param(
        1.0,
        (0.0, 1e6),
        unit="pJ",
        meaning="one element of a digital vector op (float32 add, multiply, compare)",
        source=f"{_ASSUMED}; Horowitz, ISSCC 2014: 45 nm float32 add 0.9 pJ, multiply 3.7 pJ",
    )
    noc_hop_cycles: int = _param(
        2,
        (0, 1_000_000),
        unit="cycles",
        meaning="latency of one hop of the on-chip network between cores",
        source=_ASSUMED,
    )
    noc_bytes_per_cycle: int = _param(
        32,
        (1, 1_000_000),
        unit="bytes/cycle",
        meaning="bandwidth of one on-chip network link",
        source=f"{_ASSUMED}: a 256-bit link moves one 256 x 8-bit MVM output in 8 cycles",
    )
    energy_noc_byte_pj: float = _param(
        1.0,
        (0.0, 1e6),
        unit="pJ",
        meaning="moving one byte over one on-chip network hop",
        source=_ASSUMED,
    )
    chip_link_cycles: int = _param(
        100,
        (0, 1_000_000_000),
        unit="cycles",
        meaning="latency of a transfer between two chips",
        source=_ASSUMED,
    )
    energy_chip_link_byte_pj: float = _param(
        10.0,
        (0.0, 1e9),
        unit="pJ",
        meaning="moving one byte between two chips",
        source=_ASSUMED,
    )
    weight_scaling: str = _choice(
        "column",
        ("column", "tile"),
        meaning="weight-to-conductance scale: one per weight column, or one per tile",
        source=f"column: SPEC §4; tile: {_AIHWKIT} default (abs max of the tile)",
    )
    adc_rule: str = _choice(
        "max",
        ("max", "ksigma"),
        meaning="ADC full scale: max never clips; ksigma: mean + adc_k sigma of a column current",
        source=f"max: SPEC §6; ksigma: docs/quantization.md (cf. {_AIHWKIT} out_bound = 12)",
    )
    adc_k: float = _param(
        4.0,
        (0.1, 1000.0),
        unit="sigma",
        meaning="standard deviations of a column current the ksigma ADC rule covers",
        source=f"{_ASSUMED}: a normal current exceeds 4 sigma with probability 6e-5",
        quiet_default=True,
    )

    # The neuron units' cost: two keys per neuron model (neuron_<model>_cycles and
    # neuron_<model>_energy_pj), with the defaults and source the model declares in
    # snuc.ir.neurons, so that a new model brings its keys along. A class body's
    # namespace is the dict locals() returns: the loop declares fields as written ones.
    for _model in NEURON_OPS.values():
        _cycles, _energy = cost_keys(_model)
        __annotations__[_cycles], __annotations__[_energy] = "int", "float"
        locals()[_cycles] = _param(
            _model.COST.cycles,
            (1, 1_000_000),
            unit="cycles",
            meaning=f"{_model.NAME} on the neuron units: digital_lanes neurons' update",
            source=_model.COST.source,
        )
        locals()[_energy] = _param(
            _model.COST.energy_pj,
            (0.0, 1e6),
            unit="pJ",
            meaning=f"{_model.NAME} on the neuron units: one neuron's update",
            source=_model.COST.source,
        )
    del _model, _cycles, _energy

    def __post_init__(self) -> None:
        if not isinstance(self.name, str) or not self.name or "\n" in self.name:
            raise SnucError(
                f"target name {self.name!r} is not valid; expected a non-empty one-line string"
            )
        for key in PARAMS:
            object.__setattr__(self, key, _checked(key, getattr(self, key)))

    @property
    def devices_per_weight(self) -> int:
        """PCM devices one signed weight takes: both polarities of the differential pair."""
        return 2 * self.devices_per_polarity

    @property
    def weight_cols(self) -> int:
        """Weight columns one crossbar holds: its device columns over devices per weight."""
        return self.cols // self.devices_per_weight

    @property
    def crossbars_available(self) -> int:
        """Crossbars on all chips together."""
        return self.cores * self.chips

    @property
    def devices_per_crossbar(self) -> int:
        return self.rows * self.cols

    @property
    def cycle_ns(self) -> float:
        """Length of one clock cycle."""
        return 1.0 / self.clock_ghz

    @property
    def mvm_ns(self) -> float:
        """Duration of one one-phase MVM."""
        return self.mvm_cycles * self.cycle_ns

    def to_dict(self) -> dict[str, str | int | float]:
        """``name`` and every parameter by key, in declaration order (JSON-ready); a quiet
        parameter (:class:`ParamInfo`) only where it differs from its default."""
        return {
            "name": self.name,
            **{
                key: getattr(self, key)
                for key, info in PARAMS.items()
                if not (info.quiet_default and getattr(self, key) == DEFAULTS[key])
            },
        }

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> TargetSpec:
        """The target :meth:`to_dict` gave; missing parameters take their defaults.

        Raises:
            SnucError: an unknown key (with the closest known one), a wrong type or an
                out-of-range value.
        """
        for key in data:
            if key != "name":
                _check_known(key)
        return cls(**dict(data))


PARAMS: Mapping[str, ParamInfo] = MappingProxyType(
    {f.name: f.metadata["param"] for f in dataclasses.fields(TargetSpec) if f.metadata}
)
"""Every parameter's :class:`ParamInfo`, by key, in declaration order."""

DEFAULTS: Mapping[str, int | float | str] = MappingProxyType(
    {f.name: f.default for f in dataclasses.fields(TargetSpec) if f.metadata}
)
"""Every parameter's default, by key."""


def _shown(name: str, limit: int = 40) -> str:
    """``repr(name)``, cut to about ``limit`` characters so that a message stays one line."""
    return repr(name) if len(name) <= limit else repr(name[: limit - 3] + "...")


def _checked(key: str, value: object) -> int | float | str:
    """``value`` converted to parameter ``key``'s type, or a SnucError naming both."""
    info = PARAMS[key]
    if info.kind is str:
        if not isinstance(value, str) or not info.contains(value):
            raise SnucError(
                f"target parameter {key!r} = {_shown(str(value))} must be one of "
                f"{', '.join(info.choices)}"
            )
        return value
    if info.kind is int:
        if isinstance(value, bool) or not isinstance(value, numbers.Integral):
            raise SnucError(
                f"target parameter {key!r} = {value!r} ({type(value).__name__}) must be an "
                f"integer in {info.range_text()}"
            )
        value = int(value)
    else:
        if isinstance(value, bool) or not isinstance(value, numbers.Real):
            raise SnucError(
                f"target parameter {key!r} = {value!r} ({type(value).__name__}) must be a "
                f"number in {info.range_text()}"
            )
        try:
            value = float(value)
        except OverflowError:  # an int beyond float's range is out of any range here
            value = math.inf
    if math.isnan(value) or not info.contains(value):
        raise SnucError(
            f"target parameter {key!r} = {value!r} is out of range; expected "
            f"{info.range_text()} ({info.unit})"
        )
    return value


def _check_known(key: str) -> None:
    if key in PARAMS:
        return
    close = difflib.get_close_matches(key, list(PARAMS), n=1)
    hint = f"; did you mean {close[0]!r}?" if close else "; `snuc targets` lists them"
    raise SnucError(f"unknown target parameter {key!r}{hint}")


def with_overrides(target: TargetSpec, **overrides: Any) -> TargetSpec:
    """``target`` with some parameters replaced, e.g. ``with_overrides(t, chips=4)``.

    ``name`` may be overridden too; otherwise the name is kept.

    Raises:
        SnucError: an unknown key (with the closest known one), a wrong type or an
            out-of-range value.
    """
    for key in overrides:
        if key != "name":
            _check_known(key)
    return dataclasses.replace(target, **overrides)


def resized_energy_mvm_pj(target: TargetSpec, rows: int, cols: int) -> float:
    """``target``'s ``energy_mvm_pj`` for an array of ``rows`` x ``cols`` devices.

    The chip's energy is quoted per operation (Le Gallo et al., Nat. Electron. 2023:
    9.76 TOPS/W, about 102 fJ per op, a multiply or an add of one device pair; REFERENCE
    "The chip"), so one full MVM costs in proportion to the devices it reads: the
    target's figure, which is for its own array, times ``rows * cols`` over
    ``target.rows * target.cols``. A study that resizes the array with the ``rows`` and
    ``cols`` keys gets this figure (presets and ``pcm-RxC`` names keep theirs).
    """
    return target.energy_mvm_pj * (rows * cols) / (target.rows * target.cols)


def _from_name(name: str, alternative: str = "") -> TargetSpec:
    """The target a ``pcm-RxC`` name denotes; raises SnucError for any other string.

    Args:
        name: the name to read.
        alternative: what else the caller would have accepted, for the error message.
    """
    match = _NAME_RE.fullmatch(name)
    if match is None:
        raise SnucError(
            f"unknown target {_shown(name)}; expected pcm-RxC with R and C in {MIN_DIM}..{MAX_DIM} "
            f"(e.g. {DEFAULT_TARGET}){alternative}"
        )
    rows, cols = int(match[1]), int(match[2])
    for what, n in (("rows", rows), ("columns", cols)):
        if not MIN_DIM <= n <= MAX_DIM:
            raise SnucError(
                f"target {name!r} has {n} {what}; expected {MIN_DIM}..{MAX_DIM} "
                f"(e.g. {DEFAULT_TARGET})"
            )
    return TargetSpec(name=f"pcm-{rows}x{cols}", rows=rows, cols=cols)


PRESETS: Mapping[str, TargetSpec] = MappingProxyType(
    {name: _from_name(name) for name in (DEFAULT_TARGET, "pcm-128x128", "pcm-512x512")}
)
"""Named targets listed by ``snuc targets``; the first is the default."""


def _from_toml(path: Path) -> TargetSpec:
    """The target a TOML file describes: ``base`` plus parameter overrides."""
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        reason = exc.strerror if isinstance(exc, OSError) and exc.strerror else str(exc)
        raise SnucError(f"cannot read target file {str(path)!r}: {reason}") from None
    check_nesting(text, f"target file {str(path)!r}")
    try:
        table = tomllib.loads(text)
    except (tomllib.TOMLDecodeError, ValueError) as exc:  # ValueError: a too-long integer
        detail = " ".join(str(exc).split())
        raise SnucError(f"target file {str(path)!r} is not valid TOML: {detail}") from None
    prefix = f"{path}: "
    base = table.pop("base", DEFAULT_TARGET)
    name = table.pop("name", path.name)
    try:
        if not isinstance(base, str):
            raise SnucError(f"'base' = {base!r} must be a target name such as {DEFAULT_TARGET!r}")
        if not isinstance(name, str):
            raise SnucError(f"'name' = {name!r} must be a string")
        return with_overrides(_from_name(base), name=name, **table)
    except SnucError as exc:
        raise SnucError(prefix + str(exc)) from None


def parse_target(spec: str | os.PathLike[str]) -> TargetSpec:
    """The target ``spec`` names: ``pcm-RxC`` (a preset or any R, C in 8..4096) or a TOML file.

    A string is a file path when it ends in ``.toml`` or names an existing file.

    Raises:
        SnucError: a bad name, an unreadable or invalid file, an unknown key (with the
            closest known one), a wrong type or an out-of-range value; one line.
    """
    if isinstance(spec, os.PathLike):
        return _from_toml(Path(spec))
    if not isinstance(spec, str):
        raise SnucError(f"target {spec!r} must be a name such as {DEFAULT_TARGET!r} or a path")
    if spec.endswith(".toml") or (not spec.startswith("pcm-") and os.path.isfile(spec)):
        return _from_toml(Path(spec))
    return _from_name(spec, alternative=" or a .toml file")


def describe_targets() -> dict[str, Any]:
    """Presets and every parameter, for ``snuc targets --json``."""
    return {
        "default": DEFAULT_TARGET,
        "names": f"pcm-RxC with R and C in {MIN_DIM}..{MAX_DIM}",
        "presets": {name: spec.to_dict() for name, spec in PRESETS.items()},
        "parameters": {
            key: {
                "type": info.kind.__name__,
                "default": DEFAULTS[key],
                "unit": info.unit,
                "range": info.range_text(),
                "allowed": list(info.choices) or [list(interval) for interval in info.allowed],
                "meaning": info.meaning,
                "source": info.source,
            }
            for key, info in PARAMS.items()
        },
    }


def format_targets() -> str:
    """A readable listing of presets and parameters, for ``snuc targets``."""
    presets = ", ".join(f"{n} (default)" if n == DEFAULT_TARGET else n for n in PRESETS)
    head = ("key", "default", "unit", "range", "meaning")
    rows = [head] + [
        (key, _num(DEFAULTS[key]), info.unit, info.range_text(), info.meaning)
        for key, info in PARAMS.items()
    ]
    widths = [max(len(row[i]) for row in rows) for i in range(len(head) - 1)]
    lines = [
        f"presets: {presets}",
        f"any pcm-RxC with R and C in {MIN_DIM}..{MAX_DIM} is a target; a TOML file with "
        f'base = "{DEFAULT_TARGET}" overrides parameters by key',
        "",
    ]
    for row in rows:
        cells = [cell.ljust(width) for cell, width in zip(row, widths, strict=False)]
        lines.append("  ".join([*cells, row[-1]]).rstrip())
    return "\n".join(lines) + "\n"
