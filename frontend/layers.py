"""PyTorch layers for spiking-neural-unit (SNU) networks (Woźniak et al., NMI 2, 2020).

Every layer is time-major: ``forward`` takes ``x[T, B, ...]`` and returns ``y[T, B, ...]``,
with every state starting at zero (SPEC §1). The sequence is nothing but a loop of
``step(x_t, state) -> (out_t, new_state)``; ``state`` is a tuple of tensors (empty for a
stateless layer) or ``None`` for the zero state. :mod:`snuc.frontend.export` exports that
step function and wraps it in an ONNX ``Scan``.

The SNU step, for an input ``x_t``::

    a_t = W x_t  (+ H y_{t-1}             if recurrent)
    s_t = g(a_t + l * s_{t-1} * (1 - y_{t-1}))     g = ReLU or identity
    y_t = h(s_t + b)                                 h = Heaviside (SNU) or sigmoid (sSNU)

In training, the Heaviside step backpropagates the derivative of tanh, as the paper's
authors do (REFERENCE.md). The decay ``l`` stays in (0, 1]: a fixed decay is checked when
the layer is built; a trainable one is clamped to [``DECAY_MIN``, 1] in every step, so the
optimiser may push the raw parameter outside, but the neuron never sees it there.

This module imports torch; ``snuc.frontend`` itself does not, so the compiler works without
torch installed.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from snuc.ir.errors import SnucError

__all__ = [
    "DECAY_MIN",
    "ConvSNU",
    "Flatten",
    "Readout",
    "SNU",
    "SNUNetwork",
    "State",
    "TimeMajor",
    "heaviside",
    "layer_step",
    "sSNU",
]

State = tuple[Any, ...]
"""A layer's state: a tuple of tensors (``()`` when stateless); a network's: a tuple of
its layers' states."""

DECAY_MIN = 1e-6
"""Lower clamp of a trainable decay: the SNU's decay must stay in (0, 1]."""

_G_FUNCTIONS = ("relu", "identity")
_READOUT_ACTIVATIONS = ("sigmoid", "identity", "softmax", "log_softmax")


class _HeavisideTanh(torch.autograd.Function):
    """Heaviside step forward (1 where v > 0); the derivative of tanh backward."""

    @staticmethod
    def forward(ctx: torch.autograd.function.FunctionCtx, v: Tensor) -> Tensor:
        ctx.save_for_backward(v)
        return (v > 0).to(v.dtype)

    @staticmethod
    def backward(ctx: torch.autograd.function.FunctionCtx, grad_out: Tensor) -> Tensor:
        (v,) = ctx.saved_tensors
        return grad_out * (1.0 - torch.tanh(v) ** 2)


def heaviside(v: Tensor) -> Tensor:
    """``1.0`` where ``v > 0``, else ``0.0``; the tanh pseudo-derivative when training.

    Without gradients (inference, ONNX export) the step is the plain comparison, so an
    export holds ``Greater`` + ``Cast`` and never the custom autograd function.
    """
    if torch.is_grad_enabled() and v.requires_grad and not torch.onnx.is_in_onnx_export():
        return _HeavisideTanh.apply(v)
    return (v > 0).to(v.dtype)


class TimeMajor(nn.Module):
    """A layer over time-major sequences: ``forward`` loops ``step`` over axis 0."""

    state_names: tuple[str, ...] = ()
    """Names of the tensors in this layer's state, in order (``()`` when stateless)."""

    def step(self, x_t: Tensor, state: State | None) -> tuple[Tensor, State]:
        """One timestep.

        Args:
            x_t: the input at step t, ``[B, ...]``.
            state: the state after step t - 1, or ``None`` for the zero state.

        Returns:
            ``(out_t, new_state)``.
        """
        raise NotImplementedError

    def forward(self, x: Tensor) -> Tensor:
        """Run the sequence ``x[T, B, ...]`` from the zero state; return ``[T, B, ...]``."""
        if x.dim() < 2 or x.shape[0] == 0:
            raise SnucError(
                f"{type(self).__name__}: expected a time-major sequence x[T, B, ...] with "
                f"T >= 1, got shape {tuple(x.shape)}; put time on axis 0"
            )
        state: State | None = None
        outs = []
        for x_t in x.unbind(0):
            out_t, state = self.step(x_t, state)
            outs.append(out_t)
        return torch.stack(outs)


def _check_g(layer: str, g: str) -> str:
    if g not in _G_FUNCTIONS:
        raise SnucError(f"{layer}: g={g!r} is not supported; use one of {list(_G_FUNCTIONS)}")
    return g


def _decay_tensor(layer: str, decay: float | Tensor, size: int) -> Tensor:
    """``decay`` as a float32 tensor, scalar or ``[size]``, checked to lie in (0, 1]."""
    value = torch.as_tensor(decay, dtype=torch.float32).detach().clone()
    if value.dim() > 1 or (value.dim() == 1 and value.shape[0] != size):
        raise SnucError(
            f"{layer}: decay must be a scalar or have shape [{size}] (one per neuron), got "
            f"shape {tuple(value.shape)}"
        )
    if not bool(torch.all((value > 0) & (value <= 1))):
        raise SnucError(
            f"{layer}: decay must lie in (0, 1], got values from {value.min().item():g} to "
            f"{value.max().item():g}"
        )
    return value


def _pair(value: int | tuple[int, int]) -> tuple[int, int]:
    return (value, value) if isinstance(value, int) else (int(value[0]), int(value[1]))


def _uniform_fan_in(shape: Sequence[int], fan_in: int) -> Tensor:
    """U(-1/sqrt(fan_in), 1/sqrt(fan_in)), the initialisation of ``nn.Linear``/``Conv2d``."""
    bound = 1.0 / math.sqrt(fan_in)
    return torch.empty(*shape).uniform_(-bound, bound)


class _SNUCell(TimeMajor):
    """The neuron dynamics shared by the dense and convolutional SNU.

    Subclasses compute the synaptic input ``a_t`` and say how per-neuron parameters
    broadcast over one timestep's activations (``_neuron_view``).
    """

    state_names = ("s", "y")

    def __init__(
        self,
        size: int,
        *,
        g: str,
        decay: float | Tensor,
        decay_trainable: bool,
        bias_init: float,
        soft: bool,
    ) -> None:
        super().__init__()
        name = type(self).__name__
        self.g = _check_g(name, g)
        self.soft = bool(soft)
        self.decay_trainable = bool(decay_trainable)
        decay_value = _decay_tensor(name, decay, size)
        if self.decay_trainable:
            self.decay = nn.Parameter(decay_value)
        else:
            self.register_buffer("decay", decay_value)
        self.bias = nn.Parameter(torch.full((size,), float(bias_init)))

    def _neuron_view(self, p: Tensor) -> Tensor:
        """``p`` (scalar or one value per neuron) shaped to broadcast over ``[B, ...]``."""
        return p

    def effective_decay(self) -> Tensor:
        """The decay the neuron uses: in (0, 1] (a trainable one is clamped)."""
        if self.decay_trainable:
            return self.decay.clamp(DECAY_MIN, 1.0)
        return self.decay

    def synaptic_input(self, x_t: Tensor, y_prev: Tensor | None) -> Tensor:
        """``a_t`` from the step input and the previous output (``None`` at t = 0)."""
        raise NotImplementedError

    def step(self, x_t: Tensor, state: State | None) -> tuple[Tensor, State]:
        y_prev = None if state is None else state[1]
        a = self.synaptic_input(x_t, y_prev)
        if state is None:
            v = a
        else:
            s_prev = state[0]
            decay = self._neuron_view(self.effective_decay())
            v = a + decay * s_prev * (1.0 - y_prev)
        s = torch.relu(v) if self.g == "relu" else v
        pre = s + self._neuron_view(self.bias)
        y = torch.sigmoid(pre) if self.soft else heaviside(pre)
        return y, (s, y)


class SNU(_SNUCell):
    """A dense layer of spiking neural units (``soft=True``: the sSNU).

    Args:
        in_features: size of ``x_t``.
        out_features: number of neurons.
        recurrent: add ``H y_{t-1}`` to the synaptic input.
        g: ``"relu"`` (the paper's default) or ``"identity"``.
        decay: the leak ``l``, a float or one value per neuron, in (0, 1].
        decay_trainable: learn the decay (clamped to [``DECAY_MIN``, 1] when used).
        bias_init: initial ``b`` (minus the threshold), the same for every neuron.
        soft: sigmoid output (sSNU) instead of spikes.

    Attributes:
        weight: ``W``, ``[out_features, in_features]`` (no additive bias: ``b`` acts in h).
        recurrent_weight: ``H``, ``[out_features, out_features]``, when recurrent.
        bias: ``b``, ``[out_features]``.
        decay: ``l``, scalar or ``[out_features]``; a buffer unless trainable.
    """

    def __init__(
        self,
        in_features: int,
        out_features: int,
        *,
        recurrent: bool = False,
        g: str = "relu",
        decay: float | Tensor = 0.8,
        decay_trainable: bool = False,
        bias_init: float = -1.0,
        soft: bool = False,
    ) -> None:
        super().__init__(
            out_features,
            g=g,
            decay=decay,
            decay_trainable=decay_trainable,
            bias_init=bias_init,
            soft=soft,
        )
        self.in_features = in_features
        self.out_features = out_features
        self.recurrent = bool(recurrent)
        self.weight = nn.Parameter(_uniform_fan_in((out_features, in_features), in_features))
        if self.recurrent:
            self.recurrent_weight = nn.Parameter(
                _uniform_fan_in((out_features, out_features), out_features)
            )
        else:
            self.register_parameter("recurrent_weight", None)

    def synaptic_input(self, x_t: Tensor, y_prev: Tensor | None) -> Tensor:
        a = F.linear(x_t, self.weight)
        if self.recurrent and y_prev is not None:
            a = a + F.linear(y_prev, self.recurrent_weight)
        return a

    def extra_repr(self) -> str:
        return (
            f"{self.in_features}, {self.out_features}, recurrent={self.recurrent}, "
            f"g={self.g!r}, soft={self.soft}"
        )


class sSNU(SNU):  # noqa: N801 -- the paper's name for the soft SNU
    """The soft SNU: an :class:`SNU` whose output is ``sigmoid(s_t + b)``.

    Arguments are :class:`SNU`'s, less ``soft``.
    """

    def __init__(
        self,
        in_features: int,
        out_features: int,
        *,
        recurrent: bool = False,
        g: str = "relu",
        decay: float | Tensor = 0.8,
        decay_trainable: bool = False,
        bias_init: float = -1.0,
    ) -> None:
        super().__init__(
            in_features,
            out_features,
            recurrent=recurrent,
            g=g,
            decay=decay,
            decay_trainable=decay_trainable,
            bias_init=bias_init,
            soft=True,
        )


class ConvSNU(_SNUCell):
    """Spiking neural units behind a 2-D convolution, on ``x[T, B, C, H, W]``.

    The synaptic input is ``a_t = conv2d(x_t, W)`` (no additive bias); bias and decay are
    per output channel (or a scalar decay). The dynamics are the SNU's. Not recurrent.

    Args:
        in_channels, out_channels, kernel_size, stride, padding: as ``nn.Conv2d``.
        g, decay, decay_trainable, bias_init, soft: as :class:`SNU` (per channel).
    """

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        kernel_size: int | tuple[int, int],
        stride: int | tuple[int, int] = 1,
        padding: int | tuple[int, int] = 0,
        *,
        g: str = "relu",
        decay: float | Tensor = 0.8,
        decay_trainable: bool = False,
        bias_init: float = -1.0,
        soft: bool = False,
    ) -> None:
        super().__init__(
            out_channels,
            g=g,
            decay=decay,
            decay_trainable=decay_trainable,
            bias_init=bias_init,
            soft=soft,
        )
        self.in_channels = in_channels
        self.out_channels = out_channels
        self.kernel_size = _pair(kernel_size)
        self.stride = _pair(stride)
        self.padding = _pair(padding)
        fan_in = in_channels * self.kernel_size[0] * self.kernel_size[1]
        self.weight = nn.Parameter(
            _uniform_fan_in((out_channels, in_channels, *self.kernel_size), fan_in)
        )

    def _neuron_view(self, p: Tensor) -> Tensor:
        return p.reshape(-1, 1, 1) if p.dim() == 1 else p

    def synaptic_input(self, x_t: Tensor, y_prev: Tensor | None) -> Tensor:
        return F.conv2d(x_t, self.weight, stride=self.stride, padding=self.padding)

    def extra_repr(self) -> str:
        return (
            f"{self.in_channels}, {self.out_channels}, kernel_size={self.kernel_size}, "
            f"stride={self.stride}, padding={self.padding}, g={self.g!r}, soft={self.soft}"
        )


class Readout(TimeMajor):
    """An affine layer with an output activation, applied at every step: ``act(W x_t + c)``.

    Args:
        in_features, out_features: as ``nn.Linear``.
        activation: ``"sigmoid"``, ``"identity"``, ``"softmax"`` or ``"log_softmax"`` (the
            last two over the feature axis).
    """

    def __init__(self, in_features: int, out_features: int, activation: str = "sigmoid") -> None:
        super().__init__()
        if activation not in _READOUT_ACTIVATIONS:
            raise SnucError(
                f"Readout: activation={activation!r} is not supported; use one of "
                f"{list(_READOUT_ACTIVATIONS)}"
            )
        self.activation = activation
        self.linear = nn.Linear(in_features, out_features)

    def step(self, x_t: Tensor, state: State | None) -> tuple[Tensor, State]:
        z = self.linear(x_t)
        if self.activation == "sigmoid":
            z = torch.sigmoid(z)
        elif self.activation == "softmax":
            z = torch.softmax(z, dim=-1)
        elif self.activation == "log_softmax":
            z = torch.log_softmax(z, dim=-1)
        return z, ()

    def extra_repr(self) -> str:
        return f"activation={self.activation!r}"


class Flatten(TimeMajor):
    """Flatten each step's ``[B, C, H, W]`` (or any ``[B, ...]``) to ``[B, C*H*W]``.

    The target size is a static number, so the export holds one ``Reshape`` by a constant
    shape ``[-1, C*H*W]`` rather than a shape computed at run time (ONNX ``Shape`` is not
    in the step body's op set). ``nn.Flatten()`` in an :class:`SNUNetwork` is replaced by
    this layer.
    """

    def step(self, x_t: Tensor, state: State | None) -> tuple[Tensor, State]:
        return x_t.reshape(-1, math.prod(x_t.shape[1:])), ()


class SNUNetwork(TimeMajor):
    """A stack of layers run step by step over a time-major sequence.

    Layers are :class:`TimeMajor` layers (SNU, sSNU, ConvSNU, Readout, Flatten) or plain
    per-step modules applied to each ``x_t`` (``nn.Embedding`` on token ids ``[B]``,
    ``nn.MaxPool2d``, ``nn.AvgPool2d``, ``nn.Dropout``). The state is the tuple of the
    layers' states.

    Example:
        ``SNUNetwork(SNU(88, 150), Readout(150, 88))(x)`` maps ``[T, B, 88]`` to
        ``[T, B, 88]``.
    """

    def __init__(self, *layers: nn.Module) -> None:
        super().__init__()
        if not layers:
            raise SnucError("SNUNetwork: needs at least one layer")
        self.layers = nn.ModuleList(_per_step_form(layer) for layer in layers)

    def step(self, x_t: Tensor, state: State | None) -> tuple[Tensor, State]:
        states = [None] * len(self.layers) if state is None else list(state)
        new_states = []
        for layer, layer_state in zip(self.layers, states, strict=True):
            x_t, layer_state = layer_step(layer, x_t, layer_state)
            new_states.append(layer_state)
        return x_t, tuple(new_states)


def layer_step(layer: nn.Module, x_t: Tensor, state: State | None) -> tuple[Tensor, State]:
    """One step of one network layer: ``layer.step`` or, for a plain module, ``layer(x_t)``."""
    if isinstance(layer, TimeMajor):
        return layer.step(x_t, state)
    return layer(x_t), ()


def _per_step_form(layer: nn.Module) -> nn.Module:
    """``layer`` as it runs in a network step (``nn.Flatten(1, -1)`` becomes ``Flatten``)."""
    if not isinstance(layer, nn.Module):
        raise SnucError(f"SNUNetwork: layer {layer!r} is not a torch.nn.Module")
    if isinstance(layer, nn.Flatten):
        if layer.start_dim != 1 or layer.end_dim != -1:
            raise SnucError(
                f"SNUNetwork: nn.Flatten(start_dim={layer.start_dim}, end_dim={layer.end_dim}) "
                "is not supported per step; use nn.Flatten() (all but the batch axis)"
            )
        return Flatten()
    return layer
