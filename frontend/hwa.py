"""Hardware-aware (HWA) training: the chip's non-idealities in the PyTorch forward pass.

A network trained with the chip in the loop learns weights that survive it (Joshi et al.,
"Accurate deep neural network inference using computational phase-change memory", Nat.
Commun. 11, 2473, 2020; Rasch et al., "Hardware-aware training for large-scale and diverse
deep learning inference workloads using in-memory computing-based accelerators", Nat.
Commun. 14, 5282, 2023; IBM aihwkit's ``InferenceRPUConfig``). :class:`HardwareAware`
attaches to an :class:`~snuc.frontend.layers.SNUNetwork` and, while a layer is in training
mode, replaces each of its weight products by what the compiled chip computes:

* the weight cut into the tiles the ``tile`` pass cuts (``snuc.passes.tiling.blocks``),
  each mapped to conductance pairs with the target's digital scales, clipping and levels
  (``snuc.ir.crossbar.tile_conductances``);
* programming noise, drift to an inference time drawn log-uniformly from a range, and
  the chip's drift compensation (``snuc.runtime.pcm.program_array``,
  ``ProgrammedArray.at``, ``compensation_scale``): each weight matrix programmed anew
  whenever it changes (after each optimiser step), with its own seed and its own drawn
  time (a real chip reads all its arrays at one age; training sees mixed ages);
* 1/f read noise on every MVM output, ``sqrt(x_q**2 @ var) * n`` with fresh normals per
  read (``DriftedArray.read_variance_us2``), as the runtime's tile read adds it;
* the DAC on the input and the ADC on every tile's column currents, with the ranges the
  ``quantize`` pass sets without calibration (``snuc.ir.crossbar.dac_range`` over the
  range the feeding layer guarantees -- after an ``nn.Embedding``, its table's, as the
  compiler's range after a Gather of the table, followed as the table trains --,
  ``adc_full_scale`` under the target's
  ``adc_rule``), rounded by ``dac_quantize`` / ``adc_quantize`` themselves and passed
  backward as the identity (a straight-through estimator, Bengio et al. 2013).

Every statistic comes from :mod:`snuc.runtime.pcm` and every range and scale from
:mod:`snuc.ir.crossbar`: this module holds no device constant. The noise is a perturbation
of the weights the forward pass uses (``G + (G_chip - G).detach()``), so the gradient
reaches the clean weights, as in aihwkit's hardware-aware training. Conductances and
noise draws are made in NumPy float64 on the detached weights; torch carries the
products and the gradients.

Each non-ideality can be switched off (:data:`NON_IDEALITIES`); with all of them off the
layers run their plain forward, bit for bit. The noise strength (programming and read
noise) can be scaled and ramped in over the first epochs (:meth:`HWAOptions.scale_at`).
In eval mode (validation, export) the layers are plain. The randomness is drawn from
torch's global generator, which training checkpoints save, so a resumed run draws the
same chips.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import NamedTuple

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from snuc.frontend.layers import SNU, ConvSNU, Readout, SNUNetwork
from snuc.ir.crossbar import (
    SPIKES,
    UNIT_INTERVAL,
    UNKNOWN_RANGE,
    ValueRange,
    adc_full_scale,
    adc_quantize,
    dac_quantize,
    dac_range,
    tile_conductances,
)
from snuc.ir.errors import SnucError
from snuc.ir.target import TargetSpec, with_overrides
from snuc.passes.tiling import blocks
from snuc.runtime.pcm import compensation_scale, program_array

__all__ = ["COMPENSATIONS", "NON_IDEALITIES", "HWAOptions", "HardwareAware", "parse_off"]

NON_IDEALITIES = ("program", "drift", "read", "dac", "adc")
"""What can be switched off: programming noise, drift (with its compensation), read noise,
the DAC and the ADC. The conductance mapping (scales, clipping, levels) comes with any of
``program``, ``drift``, ``read`` and ``adc``; with those four off a weight is used as it
is."""

COMPENSATIONS = ("global", "column", "none")
"""Drift compensation the chip applies (``snuc run --drift-compensation``): ``global``
is what ``--drift-compensation on`` does."""

_SEED_LIMIT = 2**31
"""Chip seeds are drawn below this from torch's generator."""

RangeSource = Callable[[], ValueRange]
"""What a layer's input is guaranteed to hold, asked for at each read (it may train)."""


def _fixed(value_range: ValueRange) -> RangeSource:
    return lambda: value_range


class TableRange:
    """The range of an embedding table's values: what the compiler guarantees after a
    Gather of the table (``ValueRange.of`` the initializer, ``snuc.ir.crossbar``'s rule),
    recomputed only when training changed the table."""

    def __init__(self, table: nn.Parameter) -> None:
        self.table = table
        self._key: tuple[int, int] | None = None
        self._range = UNKNOWN_RANGE

    def __call__(self) -> ValueRange:
        key = (self.table._version, self.table.data_ptr())
        if key != self._key:
            self._key = key
            self._range = ValueRange.of(self.table.detach().cpu().numpy())
        return self._range


def parse_off(text: str) -> frozenset[str]:
    """The non-idealities a comma-separated list names (``"read,adc"``; ``""``: none).

    Raises:
        SnucError: a name not in :data:`NON_IDEALITIES`.
    """
    names = frozenset(part.strip() for part in text.split(",") if part.strip())
    unknown = sorted(names - set(NON_IDEALITIES))
    if unknown:
        raise SnucError(
            f"hardware-aware training: cannot switch off {unknown[0]!r}; expected names "
            f"from {', '.join(NON_IDEALITIES)}"
        )
    return names


@dataclass(frozen=True)
class HWAOptions:
    """What the training forward pass simulates.

    Attributes:
        target: the chip (``--hwa-target``: a preset name or TOML target).
        off: non-idealities switched off (:data:`NON_IDEALITIES`).
        compensation: the chip's drift compensation (:data:`COMPENSATIONS`).
        t_inference_s: ``(lo, hi)`` seconds after programming; each chip is read at a
            time drawn log-uniformly between them (``lo == hi``: that time).
        noise_scale: multiplies the target's programming- and read-noise scales.
        ramp_epochs: the noise scale grows linearly over this many epochs (epoch e of
            them uses ``e / ramp_epochs`` of it); 0: full strength from the start.
        input_range: what the network's input is guaranteed to hold (the compiler's
            view of a ``float`` sequence input: unknown, giving the DAC range (-1, 1)).
    """

    target: TargetSpec
    off: frozenset[str] = frozenset()
    compensation: str = "global"
    t_inference_s: tuple[float, float] = (3600.0, 365 * 86400.0)
    noise_scale: float = 1.0
    ramp_epochs: int = 0
    input_range: ValueRange = field(default=UNKNOWN_RANGE)

    def __post_init__(self) -> None:
        parse_off(",".join(self.off))
        if self.compensation not in COMPENSATIONS:
            raise SnucError(
                f"hardware-aware training: compensation {self.compensation!r}; expected one "
                f"of {', '.join(COMPENSATIONS)}"
            )
        lo, hi = self.t_inference_s
        if not (0.0 <= lo <= hi and math.isfinite(hi)):
            raise SnucError(
                f"hardware-aware training: inference times {lo}..{hi} s; expected "
                "0 <= lo <= hi, finite"
            )
        if not (self.noise_scale >= 0.0 and self.ramp_epochs >= 0):
            raise SnucError("hardware-aware training: noise scale and ramp must be >= 0")

    def on(self, name: str) -> bool:
        """Whether the non-ideality ``name`` is simulated."""
        return name not in self.off

    @property
    def ideal(self) -> bool:
        """Every non-ideality off: the layers run their plain forward."""
        return self.off >= set(NON_IDEALITIES)

    @property
    def mapped(self) -> bool:
        """Weights go through conductances (any device or ADC effect is on)."""
        return any(self.on(n) for n in ("program", "drift", "read", "adc"))

    def scale_at(self, epoch: int) -> float:
        """The noise scale of ``epoch`` (1-based) under the ramp."""
        if self.ramp_epochs == 0:
            return self.noise_scale
        return self.noise_scale * min(1.0, epoch / self.ramp_epochs)


class TileDraw(NamedTuple):
    """One tile of one simulated chip, as the training forward pass reads it.

    Attributes:
        safe_scale: the digital scales ``[c]`` (1 where a column is all zeros), which
            map the weights to µS.
        conductance_us: the weights' conductances on the chip ``[r, c]``: G+ - G-
            after programming and drift.
        variance_us2: read-noise variance of each weight ``[r, c]`` (None: read noise off).
        gain: ``s * alpha`` ``[c]``: digital scale times drift compensation.
        full_scale: the ADC full scale, in µS times input units.
    """

    safe_scale: np.ndarray
    conductance_us: np.ndarray
    variance_us2: np.ndarray | None
    gain: np.ndarray
    full_scale: float


def draw_tile(
    weights: np.ndarray,
    rows: tuple[int, int],
    cols: tuple[int, int],
    dac: tuple[float, float],
    options: HWAOptions,
    *,
    noise_scale: float,
    seed: int,
    tile: int,
    t_inference_s: float,
) -> TileDraw:
    """Program one tile of the chip ``seed`` names and read it ``t_inference_s`` later.

    Args:
        weights: the whole weight matrix ``W[K, N]`` (float64), as the compiler holds it.
        rows, cols: the tile's window.
        dac: the DAC range of the tile's input (for the ADC full scale).
        options: what is simulated.
        noise_scale: multiplies the target's programming- and read-noise scales.
        seed, tile: the chip and the tile's number (``snuc.runtime.pcm.chip_rng``).
        t_inference_s: seconds after programming (0 when drift is off).
    """
    target = options.target
    g_plus, g_minus, scale = tile_conductances(weights, rows, cols, target)
    full_scale = adc_full_scale(g_plus, g_minus, dac, target)
    noisy = with_overrides(
        target,
        prog_noise_scale=target.prog_noise_scale * noise_scale * options.on("program"),
        read_noise_scale=target.read_noise_scale * noise_scale,
    )
    programmed = program_array(g_plus, g_minus, noisy, seed=seed, tile=tile)
    drifted = programmed.at(t_inference_s)
    compensation = None if options.compensation == "none" else options.compensation
    alpha = compensation_scale(programmed, t_inference_s, compensation)
    return TileDraw(
        safe_scale=np.where(scale > 0, scale, 1.0),
        conductance_us=drifted.weights_us,
        variance_us2=drifted.read_variance_us2 if options.on("read") else None,
        gain=scale * alpha,
        full_scale=full_scale,
    )


def _straight_through(x: Tensor, quantize: Callable[[np.ndarray], np.ndarray]) -> Tensor:
    """``quantize(x)`` forward (in NumPy float64), the identity backward."""
    q = torch.as_tensor(quantize(x.detach().cpu().double().numpy()), dtype=x.dtype)
    return x + (q.to(x.device) - x).detach()


class CrossbarWeight:
    """One weight parameter on the chip: its tiles, converters and the current draw.

    Args:
        module: the module holding the parameter.
        name: the parameter's name (``"weight"``, ``"recurrent_weight"``), ``[N, K]``.
        input_range: what the layer's input (this weight's operand) is guaranteed to hold
            (a callable where it may change as the network trains).
        options: what is simulated.
        controller: the :class:`HardwareAware` that owns it (epoch, noise scale).
    """

    def __init__(
        self,
        module: nn.Module,
        name: str,
        input_range: ValueRange | RangeSource,
        options: HWAOptions,
        controller: HardwareAware,
    ) -> None:
        self.module, self.name = module, name
        self.input_range = input_range if callable(input_range) else _fixed(input_range)
        self.options = options
        self.controller = controller
        n, k = self.weight.shape
        target = options.target
        self.row_blocks = blocks(k, target.rows)
        self.col_blocks = blocks(n, target.weight_cols)
        self._key: tuple[int, int, float, tuple[float, float]] | None = None
        self._row_blocks_drawn: list[RowBlock] = []

    @property
    def weight(self) -> Tensor:
        return getattr(self.module, self.name)

    @property
    def dac(self) -> tuple[float, float]:
        """The DAC range ``(lo, hi)`` of the layer's input, as the ``quantize`` pass sets it."""
        return dac_range(self.input_range())

    @property
    def binary_input(self) -> bool:
        """Whether the input is spikes (the DAC passes them exactly)."""
        return self.input_range().binary

    def __call__(self, x: Tensor) -> Tensor:
        """``x @ W.T`` as the chip computes it (``x[..., K]``): the row blocks' partial
        sums added, as the ``tile`` pass adds them."""
        options = self.options
        if options.on("dac") and not self.binary_input:
            lo, hi = self.dac
            bits = options.target.dac_bits
            x = _straight_through(x, lambda a: dac_quantize(a, lo, hi, bits))
        if not options.mapped:
            return F.linear(x, self.weight)
        self._redraw_if_stale()
        w_kn = self.weight.t()
        total = None
        for (r0, r1), block in zip(self.row_blocks, self._row_blocks_drawn, strict=True):
            y = self._read(x[..., r0:r1], w_kn[r0:r1], block)
            total = y if total is None else total + y
        return total

    def _read(self, x: Tensor, w: Tensor, block: RowBlock) -> Tensor:
        """The reads of one row block's tiles side by side: currents (+ read noise), ADC
        (each tile's full scale on its columns), digital scale and compensation."""
        conductance = w / block.safe_scale
        conductance = conductance + (block.conductance - conductance).detach()
        current = x @ conductance
        if block.variance is not None:
            # Noise, not signal: no gradient (the root's is infinite where no row is driven).
            drive = x.detach()
            spread = torch.sqrt((drive * drive) @ block.variance)
            current = current + spread * torch.randn_like(current)
        if self.options.on("adc"):
            full_scale, bits = block.full_scale, self.options.target.adc_bits
            current = _straight_through(current, lambda a: adc_quantize(a, full_scale, bits))
        return current * block.gain

    def _redraw_if_stale(self) -> None:
        """Draw a new chip when the weights (or the noise scale) changed since the last."""
        weight = self.weight
        scale = self.controller.noise_scale
        dac = self.dac  # the ADC full scale follows it
        key = (weight._version, weight.data_ptr(), scale, dac)
        if key == self._key:
            return
        self._key = key
        seed = int(torch.randint(_SEED_LIMIT, ()).item())
        t = self.controller.draw_time()
        w_kn = weight.detach().t().cpu().double().numpy()
        self._row_blocks_drawn = []
        for i, rows in enumerate(self.row_blocks):
            tiles = [
                draw_tile(
                    w_kn, rows, cols, dac, self.options,
                    noise_scale=scale, seed=seed, tile=i * len(self.col_blocks) + j,
                    t_inference_s=t,
                )
                for j, cols in enumerate(self.col_blocks)
            ]  # fmt: skip
            self._row_blocks_drawn.append(RowBlock.join(tiles, self.col_blocks, weight))


class RowBlock(NamedTuple):
    """The tiles of one row block, their columns side by side, as torch tensors
    (see :class:`TileDraw`; ``full_scale`` is each tile's, repeated over its columns)."""

    safe_scale: Tensor
    conductance: Tensor
    variance: Tensor | None
    gain: Tensor
    full_scale: np.ndarray

    @staticmethod
    def join(tiles: list[TileDraw], col_blocks: list[tuple[int, int]], like: Tensor) -> RowBlock:
        """The row block of ``tiles`` (one per column block), on ``like``'s device."""

        def joined(arrays: list[np.ndarray]) -> Tensor:
            array = np.concatenate(arrays, axis=-1)
            return torch.as_tensor(array, dtype=like.dtype, device=like.device)

        read = tiles[0].variance_us2 is not None
        return RowBlock(
            safe_scale=joined([t.safe_scale for t in tiles]),
            conductance=joined([t.conductance_us for t in tiles]),
            variance=joined([t.variance_us2 for t in tiles]) if read else None,
            gain=joined([t.gain for t in tiles]),
            full_scale=np.concatenate(
                [
                    np.full(c1 - c0, t.full_scale)
                    for t, (c0, c1) in zip(tiles, col_blocks, strict=True)
                ]
            ),
        )


def _output_range(layer: nn.Module, before: RangeSource) -> RangeSource:
    """What a layer's output is guaranteed to hold, as the compiler's range rules say."""
    if isinstance(layer, SNU):
        return _fixed(UNIT_INTERVAL if layer.soft else SPIKES)
    if isinstance(layer, Readout):
        return _fixed(
            UNIT_INTERVAL if layer.activation in ("sigmoid", "softmax") else UNKNOWN_RANGE
        )
    if isinstance(layer, nn.Embedding):
        return TableRange(layer.weight)
    return before  # dropout, flatten, pooling: the values pass


class HardwareAware:
    """Hardware-aware training of an :class:`SNUNetwork`: attach, train, :meth:`detach`.

    While attached, every :class:`~snuc.frontend.layers.SNU` / ``sSNU`` (input and
    recurrent weights) and :class:`~snuc.frontend.layers.Readout` (its weight; the bias
    is added digitally, as on the chip) in training mode computes its weight products
    as the chip does (module docstring). The model's parameters and state dict are
    untouched, so checkpoints and the ONNX export see the plain network.

    Args:
        model: the network.
        options: what is simulated.

    Attributes:
        weights: every :class:`CrossbarWeight`, in the network's order (a layer's input
            weight before its recurrent one); empty when every non-ideality is off.

    Raises:
        SnucError: the network has a layer the chip model cannot follow (a ``ConvSNU``).
    """

    def __init__(self, model: SNUNetwork, options: HWAOptions) -> None:
        if not isinstance(model, SNUNetwork):
            raise SnucError(
                f"hardware-aware training follows SNU networks (SNUNetwork); "
                f"{type(model).__name__} is not one; train without --hwa"
            )
        self.options = options
        self.noise_scale = options.scale_at(1)
        self._patched: list[tuple[nn.Module, str]] = []
        self.weights: list[CrossbarWeight] = []
        if options.ideal:
            return
        current = _fixed(options.input_range)
        for layer in model.layers:
            if isinstance(layer, ConvSNU):
                raise SnucError(
                    "hardware-aware training: ConvSNU layers are not supported yet; train "
                    "without --hwa"
                )
            if isinstance(layer, SNU):
                self._patch_snu(layer, current)
            elif isinstance(layer, Readout):
                self._patch_readout(layer, current)
            current = _output_range(layer, current)

    def set_epoch(self, epoch: int) -> None:
        """Use the noise scale of ``epoch`` (1-based) from now on."""
        self.noise_scale = self.options.scale_at(epoch)

    def draw_time(self) -> float:
        """An inference time, log-uniform over the options' range (torch's generator);
        0 when drift is off."""
        if not self.options.on("drift"):
            return 0.0
        lo, hi = (max(t, 1e-9) for t in self.options.t_inference_s)
        u = float(torch.rand(()).item())
        return math.exp(math.log(lo) + u * (math.log(hi) - math.log(lo)))

    def detach(self) -> None:
        """Give every layer back its plain forward."""
        for module, attribute in self._patched:
            delattr(module, attribute)
        self._patched.clear()

    def _patch(self, module: nn.Module, attribute: str, function: Callable[..., Tensor]) -> None:
        setattr(module, attribute, function)
        self._patched.append((module, attribute))

    def _weight(
        self, module: nn.Module, name: str, input_range: ValueRange | RangeSource
    ) -> CrossbarWeight:
        weight = CrossbarWeight(module, name, input_range, self.options, self)
        self.weights.append(weight)
        return weight

    def _patch_snu(self, layer: SNU, input_range: RangeSource) -> None:
        plain = layer.synaptic_input
        forward = self._weight(layer, "weight", input_range)
        own = UNIT_INTERVAL if layer.soft else SPIKES
        recurrent = self._weight(layer, "recurrent_weight", own) if layer.recurrent else None

        def synaptic_input(x_t: Tensor, y_prev: Tensor | None) -> Tensor:
            if not layer.training:
                return plain(x_t, y_prev)
            a = forward(x_t)
            if recurrent is not None and y_prev is not None:
                a = a + recurrent(y_prev)
            return a

        self._patch(layer, "synaptic_input", synaptic_input)

    def _patch_readout(self, layer: Readout, input_range: RangeSource) -> None:
        linear = layer.linear
        plain = linear.forward
        weight = self._weight(linear, "weight", input_range)

        def forward(x: Tensor) -> Tensor:
            if not linear.training:
                return plain(x)
            y = weight(x)
            return y if linear.bias is None else y + linear.bias

        self._patch(linear, "forward", forward)
