"""A run's configuration (SPEC §6): the options of one run, checked once, passed whole.

A :class:`RunConfig` says how a compiled graph runs: the mode, and in ``pcm`` mode which
simulated chip (``seed``), how long after programming (``t_inference_s``) and with which
drift compensation; and how the batch is cut into runs (``batch_size``, ``batch_offset``).
It is frozen and checks itself on construction, so every runtime, ``Artefact.run``,
``snuc run`` and ``snuc eval`` refuse a bad option with the same one-line message. The
chip the graph was compiled for is not part of it: it belongs to the compiled graph, and
:func:`run_target` checks the pair.

Options a mode does not use are not checked: ``float`` and ``quantized`` ignore the pcm
options (``seed``, ``t_inference_s``, ``drift_compensation``), so they may hold anything.
"""

from __future__ import annotations

import dataclasses
import functools
import math
import numbers
from dataclasses import dataclass
from typing import Any

from snuc.ir.errors import SnucError
from snuc.ir.target import TargetSpec, parse_target

MODES = ("float", "quantized", "pcm")
"""The run modes (SPEC §6): exact weights; deterministic conductances, DAC and ADC; and
``quantized`` plus the PCM device model."""

DETERMINISTIC_MODES = ("float", "quantized")
"""The modes whose runs need no chip: no seed, no drift, no noise."""

DRIFT_COMPENSATIONS = ("global", "column", None)
"""Drift compensation in ``pcm`` mode: one factor per tile, one per column, or none."""


@dataclass(frozen=True)
class RunConfig:
    """How one run goes: its mode, its chip and its age, and how the batch is cut.

    Attributes:
        mode: how crossbar work computes (SPEC §6). ``"float"``: exact weights.
            ``"quantized"``: DAC, quantised conductances, ADC; deterministic. ``"pcm"``:
            ``quantized`` on a simulated chip, with programming noise, drift and read
            noise. Both need a graph compiled with the ``tile`` and ``quantize`` passes.
        seed: ``pcm``: the simulated chip. It alone fixes the programming noise and every
            device's drift exponent (so runs at several ``t_inference_s`` age one chip)
            and, with the tile, the read-noise stream.
        t_inference_s: ``pcm``: seconds between programming and inference.
        drift_compensation: ``pcm``: ``"global"`` (one factor per tile), ``"column"``
            (one per output column) or None (off).
        batch_size: run the batch in chunks of at most this many sequences, each chunk a
            run of its own (pcm read noise is keyed per sequence, so the chunks give what
            the whole batch gives); None: one run. The fast backends cut the batch; the
            interpreter, the oracle, always runs it whole.
        batch_offset: ``pcm``: the index of the batch's first sequence when it is a chunk
            of a larger batch run chunk by chunk; with the seed and the tile, each
            sequence's index (``batch_offset`` plus its place) keys its read-noise
            stream (``pcm.read_rng``).

    Raises:
        SnucError: an unknown mode, a bad pcm option (in ``pcm`` mode), a bad batch size
            or offset; one line each.
    """

    mode: str = "float"
    seed: int = 0
    t_inference_s: float = 3600.0
    drift_compensation: str | None = "global"
    batch_size: int | None = None
    batch_offset: int = 0

    def __post_init__(self) -> None:
        check_mode(self.mode)
        if self.mode == "pcm":
            check_drift_compensation(self.drift_compensation)
            check_seed(self.seed)
            check_t_inference_s(self.t_inference_s)
        if self.batch_size is not None:
            check_batch_size(self.batch_size)
        check_batch_offset(self.batch_offset)

    @functools.cached_property
    def plan_config(self) -> RunConfig:
        """This configuration without its batch options: what a plan is built for (made
        once per configuration: a run at batch 1 takes a few hundred microseconds)."""
        if self.batch_size is None and self.batch_offset == 0:
            return self
        return dataclasses.replace(self, batch_size=None, batch_offset=0)


def run_config(config: RunConfig | None, options: dict[str, Any]) -> RunConfig:
    """``config`` (default: ``RunConfig()``) with the fields ``options`` names replaced.

    What a runtime entry point that takes ``config=`` and the options as keywords does
    with them.

    Raises:
        SnucError: the result is not a valid configuration.
        TypeError: an option that is not a field of :class:`RunConfig`.
    """
    return dataclasses.replace(config or RunConfig(), **options)


def plan_run_config(
    built: RunConfig, config: RunConfig | None, options: dict[str, Any]
) -> RunConfig:
    """The configuration of one run of a plan built for ``built``: ``config`` (default:
    ``built``) with ``options`` replaced; only its batch options may differ from ``built``.

    Raises:
        SnucError: a configuration that needs another plan (another mode or chip).
    """
    wanted = config or built
    if options:
        wanted = dataclasses.replace(wanted, **options)
    if wanted is not built and wanted.plan_config != built.plan_config:
        raise SnucError(
            f"this plan is built for {built.plan_config}, not {wanted.plan_config}; build a "
            "plan for that configuration"
        )
    return wanted


def run_target(config: RunConfig, target: TargetSpec | str | None) -> TargetSpec | None:
    """The chip a run in ``config.mode`` reads: ``target`` as a TargetSpec (a name is
    parsed); None in ``float`` mode, which reads no chip.

    Raises:
        SnucError: no target, or not a target, for a mode that needs one.
    """
    if config.mode == "float":
        return None
    if target is None:
        raise SnucError(
            f"mode {config.mode!r} needs the target the graph was compiled for "
            "(target=TargetSpec or a name such as 'pcm-256x256')"
        )
    if isinstance(target, str):
        target = parse_target(target)
    if not isinstance(target, TargetSpec):
        raise SnucError(f"target {target!r} is not a TargetSpec or a target name")
    return target


# --------------------------------------------------------------------------- the checks
# One per option; RunConfig runs them, and ``snuc eval`` runs them on the items of its
# sweep's lists before the sweep starts. Each returns the value it checked.


def check_mode(mode: str) -> str:
    """A run mode, one of :data:`MODES`."""
    if mode not in MODES:
        raise SnucError(f"unknown mode {mode!r}; expected one of {', '.join(MODES)}")
    return mode


def check_seed(seed: int) -> int:
    """A chip seed: a non-negative integer."""
    if not _is_integer(seed, minimum=0):
        raise SnucError(f"seed {seed!r} is not valid; expected a non-negative integer")
    return seed


MAX_T_INFERENCE_S = 1e12
"""The latest read time accepted (about 31,700 years): far past any device's life, and
early enough that the drift and read-noise factors stay finite (at 1e308 s they overflow
and every output is NaN)."""


def check_t_inference_s(t_inference_s: float) -> float:
    """A time since programming: a finite, non-negative number of seconds, at most
    :data:`MAX_T_INFERENCE_S`."""
    t = t_inference_s
    if isinstance(t, bool) or not isinstance(t, numbers.Real) or not math.isfinite(t) or t < 0:
        raise SnucError(
            f"t_inference_s {t!r} is not valid; expected a finite, non-negative number of "
            "seconds since programming"
        )
    if t > MAX_T_INFERENCE_S:
        raise SnucError(
            f"t_inference_s {t!r} is beyond the drift model's range; at most "
            f"{MAX_T_INFERENCE_S:g} seconds (about 31,700 years), where its factors still "
            "fit in floating point"
        )
    return t


def check_drift_compensation(compensation: str | None) -> str | None:
    """A drift compensation, one of :data:`DRIFT_COMPENSATIONS`."""
    if compensation not in DRIFT_COMPENSATIONS:
        raise SnucError(
            f"drift_compensation {compensation!r} is not valid; expected 'global', 'column' or None"
        )
    return compensation


def check_batch_size(batch_size: int) -> int:
    """A batch size: a positive integer."""
    if not _is_integer(batch_size, minimum=1):
        raise SnucError(f"batch_size must be a positive integer, got {batch_size!r}")
    return batch_size


def check_batch_offset(batch_offset: int) -> int:
    """A batch offset: a non-negative integer."""
    if not _is_integer(batch_offset, minimum=0):
        raise SnucError(
            f"batch_offset {batch_offset!r} is not valid; expected a non-negative integer"
        )
    return batch_offset


def _is_integer(value: Any, *, minimum: int) -> bool:
    return not isinstance(value, bool) and isinstance(value, numbers.Integral) and value >= minimum
