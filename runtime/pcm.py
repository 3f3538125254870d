"""The PCM device model: programming noise, conductance drift, read noise, compensation.

The statistical model fitted on about one million IBM PCM devices (Nandakumar et al.,
"Phase-change memory models for deep learning training and inference", ICECS 2019;
Joshi et al., "Accurate deep neural network inference using computational phase-change
memory", Nat. Commun. 11, 2473, 2020), in the form IBM's aihwkit uses for its
``PCMLikeNoiseModel``. Conductances are in µS; ``g_rel = G / g_max_us``. Every function is
vectorised over arrays of devices and takes its randomness from an explicit
``numpy.random.Generator``, so a chip is reproducible from ``(seed, tile)``
(:func:`chip_rng`).

Time: ``t_inference_s`` counts from the end of programming; the model's time is
``t = t_inference_s + t0_s``, so ``t_inference_s = 0`` is the reference read at ``t0``
(Joshi et al. 2020, Methods).

Noise strengths scale with the target's ``prog_noise_scale``, ``read_noise_scale`` and
``drift_scale`` (which multiplies each device's drift exponent).
"""

from __future__ import annotations

import math
import numbers
from collections.abc import Mapping
from dataclasses import dataclass
from types import MappingProxyType

import numpy as np
from numpy.typing import ArrayLike, NDArray

from snuc.ir.errors import SnucError
from snuc.ir.target import TargetSpec

STREAMS: Mapping[str, int] = MappingProxyType({"program": 0, "drift": 1, "read": 2})
"""Random streams of one tile, each keyed ``(seed, tile, STREAMS[name])``:

* ``program``: programming noise, G+ devices then G- devices (:func:`program_array`).
* ``drift``: drift exponents, G+ devices then G- devices (:func:`program_array`).
* ``read``: read noise on MVM outputs, one stream per sequence of a batch, keyed also by the
  sequence's global index (:func:`read_rng`, :func:`read_noise_block`).

``program`` and ``drift`` together are the simulated chip: they do not depend on the time of
inference, so a sweep over ``t_inference_s`` with one seed ages one chip.
"""

G_MAX_FIT_US = 25.0
"""G_max of the devices the programming-noise fit was made on (Nandakumar et al. 2019)."""

PROG_NOISE_COEFFS_US = (0.26348, 1.9650, -1.1731)
"""σ_prog = c0 + c1 g_rel + c2 g_rel², in µS at G_max = 25 µS (Nandakumar et al. 2019)."""

_G_REL_FLOOR = 1e-7
"""Keeps ln(g_rel) finite for devices at 0 µS; the clips of μ_ν and σ_ν make its exact
value immaterial (aihwkit clamps at the same value)."""


def chip_rng(seed: int, tile: int, stream: str) -> np.random.Generator:
    """The generator of one random stream of one tile of the chip ``seed`` names.

    Args:
        seed: the chip (``snuc run --seed``), a non-negative integer.
        tile: the tile's index, a non-negative integer.
        stream: one of :data:`STREAMS` (``"program"``, ``"drift"``, ``"read"``).

    Returns:
        ``numpy.random.default_rng([seed, tile, STREAMS[stream]])`` (for ``read``, the
        stream of sequence 0: :func:`read_rng`).

    Raises:
        SnucError: ``seed`` or ``tile`` is not a non-negative integer.
        ValueError: ``stream`` is not a known stream name (a bug in the caller).
    """
    if stream not in STREAMS:
        raise ValueError(f"unknown random stream {stream!r}; expected one of {', '.join(STREAMS)}")
    _check_indices(seed=seed, tile=tile)
    return np.random.default_rng([int(seed), int(tile), STREAMS[stream]])


READ_SEQUENCE_STRIDE = 1 << 64
"""Raw draws between the read-noise streams of consecutive sequences (:func:`read_rng`)."""


def read_rng(seed: int, tile: int, sequence: int) -> np.random.Generator:
    """The read-noise generator of one sequence on one tile (SPEC §6).

    Sequence s of a batch (its global index: a chunk's ``batch_offset`` plus its place in
    the chunk) draws the normals of its steps, step after step, each step's columns in
    order, from ``chip_rng(seed, tile, "read")``'s PCG64 advanced by s × 2**64 raw draws
    (:data:`READ_SEQUENCE_STRIDE`): the streams of 2**64 sequences, each 2**64 draws long,
    without overlap. A sequence's noise so depends on nothing but its index: not on the
    batch size, the chunks, the thread count or the pieces a run is cut into. Sequence 0
    is ``chip_rng(seed, tile, "read")`` itself.

    Raises:
        SnucError: ``seed``, ``tile`` or ``sequence`` is not a non-negative integer
            (``sequence`` below 2**64).
    """
    _check_indices(sequence=sequence)
    if sequence >= 1 << 64:
        raise SnucError(f"sequence {sequence!r} is not valid; expected one below 2**64")
    rng = chip_rng(seed, tile, "read")
    rng.bit_generator.advance(int(sequence) * READ_SEQUENCE_STRIDE)
    return rng


def _check_indices(**values: object) -> None:
    """Raise SnucError unless every value is a non-negative integer (bools are not)."""
    for what, value in values.items():
        if isinstance(value, bool) or not isinstance(value, numbers.Integral) or value < 0:
            raise SnucError(f"{what} {value!r} is not valid; expected a non-negative integer")


def _time_s(t_inference_s: float) -> float:
    """``t_inference_s`` checked: finite and not negative."""
    t = float(t_inference_s)
    if not (math.isfinite(t) and t >= 0.0):
        raise SnucError(
            f"inference time {t_inference_s!r} s is not valid; expected a finite number of "
            "seconds >= 0 after programming (--t-inference)"
        )
    return t


def _f64(a: ArrayLike) -> NDArray[np.float64]:
    return np.asarray(a, dtype=np.float64)


def prog_noise_sigma(g_target_us: ArrayLike, target: TargetSpec) -> NDArray[np.float64]:
    """Standard deviation of programming noise for devices programmed to ``g_target_us``.

    σ_prog = (0.26348 + 1.9650 g_rel - 1.1731 g_rel²) µS for G_max = 25 µS (Nandakumar et
    al. 2019; Joshi et al. 2020): 1.05 % of G_max at g_rel = 0 and 4.2 % at g_rel = 1.
    We keep that relative reading for every ``g_max_us``: the fit is scaled by
    ``g_max_us / 25 µS`` (as aihwkit does with ``prog_coeff_g_max_reference``), which at
    the default 25 µS is the µS formula exactly. Multiplied by ``prog_noise_scale``.
    """
    g_rel = _f64(g_target_us) / target.g_max_us
    c0, c1, c2 = PROG_NOISE_COEFFS_US
    sigma_fit_us = c0 + c1 * g_rel + c2 * g_rel**2
    return target.prog_noise_scale * sigma_fit_us * (target.g_max_us / G_MAX_FIT_US)


def program(
    g_target_us: ArrayLike, target: TargetSpec, rng: np.random.Generator
) -> NDArray[np.float64]:
    """Program devices to ``g_target_us``: G_prog = max(0, G_T + σ_prog(g_rel) ξ).

    Draws one standard normal per device from ``rng``, in C order, even when
    ``prog_noise_scale`` is 0, so the stream's position never depends on the scales.
    """
    g_target = _f64(g_target_us)
    xi = rng.standard_normal(g_target.shape)
    return np.maximum(g_target + prog_noise_sigma(g_target, target) * xi, 0.0)


def drift_exponents(
    g_prog_us: ArrayLike, target: TargetSpec, rng: np.random.Generator
) -> NDArray[np.float64]:
    """Each device's drift exponent ν, drawn once at programming (Joshi et al. 2020).

    μ_ν = clip(-0.0155 ln g_rel + 0.0244, 0.049, 0.1),
    σ_ν = clip(-0.0125 ln g_rel - 0.0059, 0.008, 0.045),
    ν = |μ_ν + σ_ν ξ| × ``drift_scale``, with g_rel = G_prog / G_max.

    The returned ν already includes ``drift_scale``: it is the exponent :func:`drift` uses.
    """
    g_rel = np.maximum(_f64(g_prog_us) / target.g_max_us, _G_REL_FLOOR)
    ln_g = np.log(g_rel)
    mu_nu = np.clip(-0.0155 * ln_g + 0.0244, 0.049, 0.1)
    sigma_nu = np.clip(-0.0125 * ln_g - 0.0059, 0.008, 0.045)
    xi = rng.standard_normal(g_rel.shape)
    return target.drift_scale * np.abs(mu_nu + sigma_nu * xi)


def drift(
    g_prog_us: ArrayLike, nu: ArrayLike, t_inference_s: float, target: TargetSpec
) -> NDArray[np.float64]:
    """Conductance ``t_inference_s`` after programming: G_prog (t / t0)^(-ν), t = t_inf + t0.

    At ``t_inference_s = 0`` this is G_prog exactly.

    Raises:
        SnucError: ``t_inference_s`` is negative or not finite.
    """
    t = _time_s(t_inference_s) + target.t0_s
    return _f64(g_prog_us) * (t / target.t0_s) ** (-_f64(nu))


def read_noise_sigma(
    g_drift_us: ArrayLike,
    t_inference_s: float,
    target: TargetSpec,
    *,
    g_prog_us: ArrayLike | None = None,
) -> NDArray[np.float64]:
    """Standard deviation of the 1/f read noise of one read (Joshi et al. 2020).

    Q_s = min(0.0088 / max(g_rel, 1e-3)^0.65, 0.2),
    σ = G_drift Q_s sqrt(ln((t + t_read) / (2 t_read))), t = t_inference + t0, in seconds,
    multiplied by ``read_noise_scale``.

    Args:
        g_drift_us: conductances at the time of the read.
        t_inference_s: seconds since programming.
        target: gives g_max_us, t0_s, t_read_ns and read_noise_scale.
        g_prog_us: conductances right after programming. Joshi et al. and aihwkit evaluate
            the noise figure Q_s at the programmed conductance, and
            :meth:`ProgrammedArray.at` passes it; when omitted, Q_s is evaluated at
            ``g_drift_us``.

    Raises:
        SnucError: ``t_inference_s`` is negative or not finite.
    """
    g_drift = _f64(g_drift_us)
    g_ref = g_drift if g_prog_us is None else _f64(g_prog_us)
    g_rel = np.abs(g_ref) / target.g_max_us
    q_s = np.minimum(0.0088 / np.maximum(g_rel, 1e-3) ** 0.65, 0.2)
    t = _time_s(t_inference_s) + target.t0_s
    t_read = target.t_read_ns * 1e-9
    # t >= t0 >= 1 ms > t_read, so the logarithm is positive.
    spread = math.sqrt(math.log((t + t_read) / (2.0 * t_read)))
    return target.read_noise_scale * np.abs(g_drift) * q_s * spread


def _per_weight(a: NDArray[np.float64]) -> NDArray[np.float64]:
    """Sum the devices of one polarity of one weight (the trailing axis, if there is one)."""
    return a if a.ndim == 2 else a.sum(axis=-1)


@dataclass(frozen=True, eq=False)
class DriftedArray:
    """One tile at one time after programming: conductances and read-noise sigmas.

    Arrays have the shape of the :class:`ProgrammedArray` they come from.

    Attributes:
        t_inference_s: seconds since programming.
        g_plus_us, g_minus_us: drifted conductances of the two polarities.
        sigma_plus_us, sigma_minus_us: read-noise standard deviation of each device.
    """

    t_inference_s: float
    g_plus_us: NDArray[np.float64]
    g_minus_us: NDArray[np.float64]
    sigma_plus_us: NDArray[np.float64]
    sigma_minus_us: NDArray[np.float64]

    @property
    def weights_us(self) -> NDArray[np.float64]:
        """Effective weights ``[rows, cols]``: G+ - G- (each summed over its devices)."""
        return _per_weight(self.g_plus_us) - _per_weight(self.g_minus_us)

    @property
    def read_variance_us2(self) -> NDArray[np.float64]:
        """Read-noise variance of each weight ``[rows, cols]``: Σ over its devices of σ²."""
        return _per_weight(self.sigma_plus_us**2) + _per_weight(self.sigma_minus_us**2)

    def output_sigma(self, x: ArrayLike) -> NDArray[np.float32]:
        """Read-noise standard deviation of each output of ``x @ weights_us``.

        The per-device noises are independent Gaussians, so an output's variance is the
        sum over driven rows of (input × σ)² (SPEC §6): ``sqrt(x² @ read_variance_us2)``,
        rounded to float32 (:func:`noise_spread`).
        """
        return noise_spread(_f64(x), self.read_variance_us2)

    def mvm(self, x: ArrayLike, noise: ArrayLike | None = None) -> NDArray[np.float64]:
        """``x @ weights_us`` for inputs ``x[..., rows]``, plus read noise when given.

        Args:
            x: inputs; the last axis is the rows.
            noise: standard normals of the output's shape ``[..., cols]`` (a slice of
                :func:`read_noise_block`, float32); ``None`` reads without noise.
        """
        x = _f64(x)
        y = x @ self.weights_us
        if noise is None:
            return y
        return y + self.output_sigma(x) * np.asarray(noise, np.float32)


def noise_spread(x: NDArray[np.float64], variance: NDArray[np.float64]) -> NDArray[np.float32]:
    """``sqrt(x**2 @ variance)`` as every backend computes it (SPEC §6): the sum in
    float64, rounded to float32, its square root in float32. The read noise is this times
    float32 normals, in float32, added to the float64 currents.

    Not summed in float32: BLAS rounds a float32 row's sum differently with the rows of
    the call (its kernel depends on them), so the noise of a sequence would change with
    the batch size, the chunks and the threads; a float64 sum rounded to float32 does
    not (short of a float64 difference in the last bit landing on a float32 rounding
    boundary, as rare as the currents' own).
    """
    return np.sqrt(np.matmul(x * x, variance).astype(np.float32))


@dataclass(frozen=True, eq=False)
class ProgrammedArray:
    """One tile right after programming: what the chip a seed names holds.

    Arrays are ``[rows, cols]``, or ``[rows, cols, devices_per_polarity]`` when each
    polarity of a weight is several devices (they add up). Make one with
    :func:`program_array`.

    Attributes:
        g_plus_us, g_minus_us: programmed conductances of the two polarities.
        nu_plus, nu_minus: each device's drift exponent (``drift_scale`` included).
        target: the chip's parameters.
    """

    g_plus_us: NDArray[np.float64]
    g_minus_us: NDArray[np.float64]
    nu_plus: NDArray[np.float64]
    nu_minus: NDArray[np.float64]
    target: TargetSpec

    def __post_init__(self) -> None:
        shapes = {a.shape for a in (self.g_plus_us, self.g_minus_us, self.nu_plus, self.nu_minus)}
        if len(shapes) != 1:
            raise ValueError(f"conductance and exponent arrays differ in shape: {sorted(shapes)}")
        if self.g_plus_us.ndim not in (2, 3):
            raise ValueError(
                f"a programmed array is [rows, cols] or [rows, cols, devices], "
                f"got shape {self.g_plus_us.shape}"
            )

    @property
    def shape(self) -> tuple[int, ...]:
        return self.g_plus_us.shape

    def at(self, t_inference_s: float) -> DriftedArray:
        """The tile ``t_inference_s`` seconds after programming.

        Raises:
            SnucError: ``t_inference_s`` is negative or not finite.
        """
        target = self.target
        g_plus = drift(self.g_plus_us, self.nu_plus, t_inference_s, target)
        g_minus = drift(self.g_minus_us, self.nu_minus, t_inference_s, target)
        return DriftedArray(
            t_inference_s=float(t_inference_s),
            g_plus_us=g_plus,
            g_minus_us=g_minus,
            sigma_plus_us=read_noise_sigma(g_plus, t_inference_s, target, g_prog_us=self.g_plus_us),
            sigma_minus_us=read_noise_sigma(
                g_minus, t_inference_s, target, g_prog_us=self.g_minus_us
            ),
        )


def program_array(
    g_plus_target_us: ArrayLike,
    g_minus_target_us: ArrayLike,
    target: TargetSpec,
    *,
    seed: int,
    tile: int,
) -> ProgrammedArray:
    """Program one tile of the chip ``seed`` names.

    The ``program`` stream draws the G+ devices' noise, then the G- devices'; the
    ``drift`` stream draws their exponents in the same order (:func:`chip_rng`). So the
    same ``(seed, tile)`` and targets give the same chip on every backend.

    Args:
        g_plus_target_us, g_minus_target_us: target conductances, same shape (see
            :class:`ProgrammedArray`).
        target: the chip's parameters.
        seed: the chip.
        tile: the tile's index.
    """
    g_plus_target = _f64(g_plus_target_us)
    g_minus_target = _f64(g_minus_target_us)
    if g_plus_target.shape != g_minus_target.shape:
        raise ValueError(
            f"G+ and G- targets differ in shape: {g_plus_target.shape} and {g_minus_target.shape}"
        )
    prog_rng = chip_rng(seed, tile, "program")
    g_plus = program(g_plus_target, target, prog_rng)
    g_minus = program(g_minus_target, target, prog_rng)
    drift_rng = chip_rng(seed, tile, "drift")
    nu_plus = drift_exponents(g_plus, target, drift_rng)
    nu_minus = drift_exponents(g_minus, target, drift_rng)
    return ProgrammedArray(g_plus, g_minus, nu_plus, nu_minus, target)


def read_noise_block(
    seed: int, tile: int, shape: tuple[int, ...], *, offset: int = 0
) -> NDArray[np.float32]:
    """The standard normals (float32) of one tile's read noise over a run (SPEC §6).

    ``shape`` is ``(T, B, *out)`` for a run of T steps at batch B whose first sequence is
    ``offset`` (``(T,)``: T normals of sequence ``offset``): ``block[:, b]`` is the first
    ``T * prod(out)`` normals of :func:`read_rng` ``(seed, tile, offset + b)``, step after
    step. Step t's noisy outputs are ``drifted.mvm(x_t, noise=block[t])``.
    """
    steps, rest = shape[0], shape[1:]
    if not rest:
        return read_rng(seed, tile, offset).standard_normal(steps, np.float32)
    block = np.empty((rest[0], steps, *rest[1:]), np.float32)
    for b in range(rest[0]):
        read_rng(seed, tile, offset + b).standard_normal(dtype=np.float32, out=block[b])
    return np.ascontiguousarray(np.moveaxis(block, 0, 1))


def _calibration_input(x_cal: ArrayLike | None, rows: int, default: str) -> NDArray[np.float64]:
    if x_cal is not None:
        return np.atleast_2d(_f64(x_cal))
    return np.ones((1, rows)) if default == "ones" else np.eye(rows)


def drift_compensation_factor(
    array: ProgrammedArray, t_inference_s: float, x_cal: ArrayLike | None = None
) -> float:
    """Global drift compensation: the scale for the tile's digital output at a given time.

    Right after programming (``t_inference_s = 0``, i.e. t = t0) the tile is read with a
    known calibration input and the mean output magnitude is kept; at inference time it
    is read again, and the ratio of the two scales the output (Joshi et al. 2020; aihwkit
    ``GlobalDriftCompensation``). Both reads are taken without read noise: a chip averages
    repeated calibration reads, and a fixed factor keeps a run deterministic per seed.

    Args:
        array: the programmed tile.
        t_inference_s: seconds since programming.
        x_cal: calibration inputs ``[rows]`` or ``[n, rows]``; default all ones.

    Returns:
        mean |y(0)| / mean |y(t)|; 1.0 when the tile reads zero at time t.
    """
    x = _calibration_input(x_cal, array.shape[0], "ones")
    reference = np.abs(array.at(0.0).mvm(x)).mean()
    now = np.abs(array.at(t_inference_s).mvm(x)).mean()
    return float(reference / now) if now > 0.0 else 1.0


def column_drift_compensation_factors(
    array: ProgrammedArray, t_inference_s: float, x_cal: ArrayLike | None = None
) -> NDArray[np.float64]:
    """Per-column drift compensation: one scale per output column (aihwkit
    ``PerColumnDriftCompensation``), the finer variant of :func:`drift_compensation_factor`.

    Args:
        array: the programmed tile.
        t_inference_s: seconds since programming.
        x_cal: calibration inputs ``[n, rows]``; default the identity (one read per row),
            so that every column's reading is the mean magnitude of its weights.

    Returns:
        ``[cols]``: mean over inputs of |y_j(0)| / the same at time t; 1.0 for a column
        that reads zero at time t.
    """
    x = _calibration_input(x_cal, array.shape[0], "identity")
    reference = np.abs(array.at(0.0).mvm(x)).mean(axis=0)
    now = np.abs(array.at(t_inference_s).mvm(x)).mean(axis=0)
    safe_now = np.where(now > 0.0, now, 1.0)
    return np.where(now > 0.0, reference / safe_now, 1.0)


def compensation_scale(
    array: ProgrammedArray, t_inference_s: float, drift_compensation: str | None
) -> float | NDArray[np.float64]:
    """The digital scale that compensates ``array``'s drift at ``t_inference_s``:
    ``"global"`` (:func:`drift_compensation_factor`), ``"column"``
    (:func:`column_drift_compensation_factors`) or None (1.0, no compensation)."""
    if drift_compensation == "global":
        return drift_compensation_factor(array, t_inference_s)
    if drift_compensation == "column":
        return column_drift_compensation_factors(array, t_inference_s)
    return 1.0
