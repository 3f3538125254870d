"""The neuron family (SPEC §1, §1.1): each model one op class that holds its whole definition.

A neuron model is an op of the ``snu.`` namespace, subclass of :class:`NeuronOp`. Its class
holds, together:

* its operands and results by name (``OPERANDS_NAMED``, ``RESULTS_NAMED``) and which
  operand carries each result's previous value (``PREVIOUS``): every result is a state;
* its update as data (:meth:`NeuronOp.update`): the NumPy calls the fast kernel makes, in
  order, with the scratch they need (:mod:`snuc.runtime.neuron_kernels` compiles them);
* the value range of each result (``result_ranges``: names the range rules of
  :mod:`snuc.ir.crossbar` know);
* its work on the chip: the operations per element it would take as loose vector ops
  (:meth:`NeuronOp.ops_per_element`), and the target keys of its neuron-unit cost
  (``COST``: default, source).

Two more pieces stay apart on purpose: what the model computes, written plainly for the
reference interpreter (:mod:`snuc.runtime.neuron_semantics`, the oracle the fast kernel is
tested against, so it is not generated from the same data), and the patterns that find
the model in an imported graph (``snuc.passes``). A new model is a class here, a function
there and a pattern: three files. docs/ir.md "The neuron family" lists the models.

Every update is evaluated in the operands' dtype, left to right as its docstring writes it;
``decay``, ``syn_decay``, ``threshold`` and ``bias`` broadcast against ``a`` (scalar or
per neuron). The spike is ``H(v - threshold)``, 1 where ``v > threshold`` (a float
difference is zero exactly when its operands are equal, so the kernel compares directly).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

from snuc.ir.errors import UNKNOWN, VerifyError
from snuc.ir.op_base import Op, _float, _require, register
from snuc.ir.types import TensorType, broadcast_shapes, promote

RESETS = ("subtract", "zero")
"""How a spike resets the membrane: ``v - threshold`` (subtract) or ``v * 0`` (zero)."""


@dataclass(frozen=True)
class NeuronCost:
    """A model's default cost on the chip's neuron units (target keys of :func:`cost_keys`).

    Attributes:
        cycles: cycles to update ``digital_lanes`` neurons.
        energy_pj: energy of one neuron's update.
        source: where the figures come from (``assumed`` where nothing publishes one).
    """

    cycles: int
    energy_pj: float
    source: str


@dataclass(frozen=True)
class Update:
    """A neuron update as data: what the fast kernel calls, in order, and what it needs.

    Attributes:
        calls: Python calls of NumPy functions (``add``, ``subtract``, ``multiply``,
            ``maximum``, ``greater``, ``into`` = the sigmoid kernel) over the names of the
            operands, results, scratch, flags and constants, each writing its last
            argument; ``y[...] = h`` turns a bool array into spikes.
        scratch: arrays of the result's shape and dtype the calls write.
        flags: bool arrays of the result's shape; ``spikes``, if set, names the one
            holding the step's spikes (the simulator counts them).
        constants: ``(name, value)``: arrays of the result's shape holding ``value``.
        negated: operands the kernel holds negated (only constant ones).
    """

    calls: tuple[str, ...]
    scratch: tuple[str, ...] = ()
    flags: tuple[str, ...] = ()
    constants: tuple[tuple[str, float], ...] = ()
    negated: tuple[str, ...] = ()
    spikes: str | None = None


_SPIKE = ("greater(v, threshold, h)", "y[...] = h")
"""``y = H(v - threshold)`` through the bool array ``h`` (a comparison writing floats
takes NumPy's slow casting path)."""


@dataclass(frozen=True)
class NeuronOp(Op):
    """Base of the neuron models: operands and results by name, every result a state.

    Class attributes (besides :class:`Op`'s):
        OPERANDS_NAMED: operand names, ``a`` (the synaptic input) first.
        RESULTS_NAMED: result names; the spike, if any, last.
        PREVIOUS: per result, the operand carrying its previous value.
        MNEMONIC: the chip instruction that runs it.
        MEANING: the update in one line (docs, errors).
        COST: its neuron-unit cost's defaults.
    """

    OPERANDS_NAMED: ClassVar[tuple[str, ...]] = ()
    RESULTS_NAMED: ClassVar[tuple[str, ...]] = ()
    PREVIOUS: ClassVar[tuple[str, ...]] = ()
    MNEMONIC: ClassVar[str] = ""
    MEANING: ClassVar[str] = ""
    COST: ClassVar[NeuronCost]

    def check_attrs(self) -> None:
        reset = getattr(self, "reset", "subtract")
        if reset not in RESETS:
            raise VerifyError(f"{self.NAME}: reset must be one of {RESETS}, got {reset!r}")

    def infer(self, types, consts, loc=UNKNOWN):
        for t in types:
            _float(self, t, loc)
        a = types[0]
        dtype = promote([t.dtype for t in types], loc)
        shape = broadcast_shapes([t.shape for t in types], loc)
        _require(
            shape == a.shape, self, loc, f"operands broadcast to {shape}, not to a's {a.shape}"
        )
        return (TensorType(dtype, shape),) * self.RESULTS

    def update(self, invariant: frozenset[str]) -> Update:
        """The update as data (see :class:`Update`); ``invariant``: the operands that are
        the same at every step."""
        raise NotImplementedError

    def ops_per_element(self) -> int:
        """Operations per neuron the update takes as loose vector ops (the instruction's
        ``ops``)."""
        raise NotImplementedError

    def result_ranges(self) -> tuple[str, ...]:
        """Per result, its value range: ``spikes``, ``unit`` (0..1), ``nonnegative`` or
        ``unknown`` (the names :mod:`snuc.ir.crossbar` maps to ranges)."""
        return ("unknown",) * (self.RESULTS - 1) + ("spikes",)

    def spike_result(self) -> int | None:
        """The index of the result holding spikes (0 or 1), or None."""
        return self.RESULTS - 1 if self.result_ranges()[-1] == "spikes" else None


NEURON_OPS: dict[str, type[NeuronOp]] = {}
"""Every neuron model by op name, in definition order."""


def neuron(cls: type[NeuronOp]) -> type[NeuronOp]:
    """Class decorator: register a neuron model as an op and as a member of the family."""
    cls.OPERANDS = (len(cls.OPERANDS_NAMED), len(cls.OPERANDS_NAMED))
    cls.RESULTS = len(cls.RESULTS_NAMED)
    NEURON_OPS[cls.NAME] = register(cls)
    return cls


def cost_keys(cls: type[NeuronOp]) -> tuple[str, str]:
    """The target keys of a model's neuron-unit cost: cycles per ``digital_lanes`` neurons
    and energy per neuron update."""
    return f"neuron_{cls.MNEMONIC}_cycles", f"neuron_{cls.MNEMONIC}_energy_pj"


NEURON_UNIT_SOURCE = (
    "assumed (no published figure; the chip's local digital units do affine scaling and "
    "activations, Le Gallo et al. 2023): a pipelined neuron datapath updates digital_lanes "
    "neurons per cycle, at half the energy of its operations as loose vector ops, whose "
    "operands go through core memory"
)
"""Where the neuron units' default costs come from (every model's ``COST``)."""


# --------------------------------------------------------------------------- the models


@neuron
@dataclass(frozen=True)
class SNULayer(NeuronOp):
    """The SNU / sSNU neuron update of Woźniak et al. (2020), SPEC §1.

    Operands ``(a, s_prev, y_prev, decay, bias)``; results ``(s, y)``::

        s = g(a + decay * s_prev * (1 - y_prev))     g = relu | identity
        y = h(s + bias)                              h = step (SNU) | sigmoid (sSNU)

    ``a`` is the layer's synaptic input (W x_t, plus H y_{t-1} when recurrent). A LIF with
    reset to zero is this op with ``g = identity`` and ``bias = -threshold``.
    """

    NAME: ClassVar = "snu.layer"
    OPERANDS_NAMED: ClassVar = ("a", "s_prev", "y_prev", "decay", "bias")
    RESULTS_NAMED: ClassVar = ("s", "y")
    PREVIOUS: ClassVar = ("s_prev", "y_prev")
    MNEMONIC: ClassVar = "snu"
    MEANING: ClassVar = "fused SNU update: s = g(a + l*s'*(1-y')), y = h(s + b)"
    COST: ClassVar = NeuronCost(1, 3.5, NEURON_UNIT_SOURCE)
    g: str = "relu"
    h: str = "step"

    def check_attrs(self) -> None:
        if self.g not in ("relu", "identity"):
            raise VerifyError(f"{self.NAME}: g must be 'relu' or 'identity', got {self.g!r}")
        if self.h not in ("step", "sigmoid"):
            raise VerifyError(f"{self.NAME}: h must be 'step' or 'sigmoid', got {self.h!r}")

    def update(self, invariant: frozenset[str]) -> Update:
        """``u = 1 - y_prev; v = decay * s_prev; v = v * u; s = a + v; s = max(s, 0)``, then
        ``y = h(s + bias)``: with a constant bias held negated, ``s > -bias`` (equal to
        ``s + bias > 0``: a float sum is zero only when the exact sum is); the sigmoid by
        the sigmoid kernel."""
        calls = [
            "subtract(ones, y_prev, u)",
            "multiply(decay, s_prev, v)",
            "multiply(v, u, v)",
            "add(a, v, s)",
        ]
        if self.g == "relu":
            calls.append("maximum(s, zeros, out=s)")
        constants = (("ones", 1.0), ("zeros", 0.0))
        if self.h == "sigmoid":
            calls.append("into(add(s, bias, u), y, ones, zeros, e, d, num, nonneg, minus_ones)")
            return Update(
                tuple(calls), ("u", "v", "e", "d", "num"), ("nonneg",),
                (*constants, ("minus_ones", -1.0)),
            )  # fmt: skip
        if "bias" in invariant:
            calls += ["greater(s, bias, h)", "y[...] = h"]
            negated: tuple[str, ...] = ("bias",)
        else:
            calls += ["greater(add(s, bias, u), zeros, h)", "y[...] = h"]
            negated = ()
        return Update(tuple(calls), ("u", "v"), ("h",), constants, negated, "h")

    def ops_per_element(self) -> int:
        return 7 if self.g == "relu" else 6

    def result_ranges(self) -> tuple[str, ...]:
        s = "nonnegative" if self.g == "relu" else "unknown"
        return (s, "spikes" if self.h == "step" else "unit")


@neuron
@dataclass(frozen=True)
class LIFSubtract(NeuronOp):
    """Leaky integrate-and-fire with reset by subtraction (snnTorch's ``Leaky`` default).

    Operands ``(a, v_prev, y_prev, decay, threshold)``; results ``(v, y)``::

        v = decay * v_prev + a - y_prev * threshold
        y = H(v - threshold)                          1 where v > threshold
    """

    NAME: ClassVar = "snu.lif_sub"
    OPERANDS_NAMED: ClassVar = ("a", "v_prev", "y_prev", "decay", "threshold")
    RESULTS_NAMED: ClassVar = ("v", "y")
    PREVIOUS: ClassVar = ("v_prev", "y_prev")
    MNEMONIC: ClassVar = "lif_sub"
    MEANING: ClassVar = "LIF, reset by subtraction: v = l*v' + a - y'*th, y = H(v - th)"
    COST: ClassVar = NeuronCost(1, 2.5, NEURON_UNIT_SOURCE)

    def update(self, invariant: frozenset[str]) -> Update:
        calls = (
            "multiply(decay, v_prev, u)",
            "add(u, a, u)",
            "multiply(y_prev, threshold, w)",
            "subtract(u, w, v)",
            *_SPIKE,
        )
        return Update(calls, ("u", "w"), ("h",), spikes="h")

    def ops_per_element(self) -> int:
        return 5


@neuron
@dataclass(frozen=True)
class IF(NeuronOp):
    """Integrate-and-fire (a LIF with decay 1), reset by subtraction.

    Operands ``(a, v_prev, y_prev, threshold)``; results ``(v, y)``::

        v = v_prev + a - y_prev * threshold
        y = H(v - threshold)

    With reset to zero it is ``snu.layer`` with decay 1, ``g = identity``.
    """

    NAME: ClassVar = "snu.if"
    OPERANDS_NAMED: ClassVar = ("a", "v_prev", "y_prev", "threshold")
    RESULTS_NAMED: ClassVar = ("v", "y")
    PREVIOUS: ClassVar = ("v_prev", "y_prev")
    MNEMONIC: ClassVar = "if"
    MEANING: ClassVar = "integrate-and-fire: v = v' + a - y'*th, y = H(v - th)"
    COST: ClassVar = NeuronCost(1, 2.0, NEURON_UNIT_SOURCE)

    def update(self, invariant: frozenset[str]) -> Update:
        calls = ("add(v_prev, a, u)", "multiply(y_prev, threshold, w)", "subtract(u, w, v)")
        return Update((*calls, *_SPIKE), ("u", "w"), ("h",), spikes="h")

    def ops_per_element(self) -> int:
        return 4


@neuron
@dataclass(frozen=True)
class CurrentLIF(NeuronOp):
    """Current-based LIF (snnTorch's ``Synaptic``): a synaptic current, then a LIF.

    Operands ``(a, i_prev, v_prev, y_prev, syn_decay, decay, threshold)``; results
    ``(i, v, y)``::

        i = syn_decay * i_prev + a
        v = decay * v_prev + i - y_prev * threshold          reset = subtract
        v = decay * v_prev * (1 - y_prev) + i                reset = zero
        y = H(v - threshold)
    """

    NAME: ClassVar = "snu.cuba"
    OPERANDS_NAMED: ClassVar = (
        "a", "i_prev", "v_prev", "y_prev", "syn_decay", "decay", "threshold",
    )  # fmt: skip
    RESULTS_NAMED: ClassVar = ("i", "v", "y")
    PREVIOUS: ClassVar = ("i_prev", "v_prev", "y_prev")
    MNEMONIC: ClassVar = "cuba"
    MEANING: ClassVar = "current-based LIF: i = ls*i' + a, then a LIF of input i"
    COST: ClassVar = NeuronCost(1, 4.0, NEURON_UNIT_SOURCE)
    reset: str = "subtract"

    def update(self, invariant: frozenset[str]) -> Update:
        current = ("multiply(syn_decay, i_prev, u)", "add(u, a, i)")
        if self.reset == "subtract":
            membrane: tuple[str, ...] = (
                "multiply(decay, v_prev, u)",
                "add(u, i, u)",
                "multiply(y_prev, threshold, w)",
                "subtract(u, w, v)",
            )
            constants: tuple[tuple[str, float], ...] = ()
        else:
            membrane = (
                "subtract(ones, y_prev, w)",
                "multiply(decay, v_prev, u)",
                "multiply(u, w, u)",
                "add(u, i, v)",
            )
            constants = (("ones", 1.0),)
        calls = (*current, *membrane, *_SPIKE)
        return Update(calls, ("u", "w"), ("h",), constants, spikes="h")

    def ops_per_element(self) -> int:
        return 7 if self.reset == "subtract" else 8


@neuron
@dataclass(frozen=True)
class LeakyIntegrator(NeuronOp):
    """Leaky integrator (LI): a membrane without spikes, a readout.

    Operands ``(a, v_prev, decay)``; result ``(v,)``::

        v = decay * v_prev + a
    """

    NAME: ClassVar = "snu.li"
    OPERANDS_NAMED: ClassVar = ("a", "v_prev", "decay")
    RESULTS_NAMED: ClassVar = ("v",)
    PREVIOUS: ClassVar = ("v_prev",)
    MNEMONIC: ClassVar = "li"
    MEANING: ClassVar = "leaky integrator: v = l*v' + a (no spike)"
    COST: ClassVar = NeuronCost(1, 1.0, NEURON_UNIT_SOURCE)

    def update(self, invariant: frozenset[str]) -> Update:
        return Update(("multiply(decay, v_prev, u)", "add(u, a, v)"), ("u",))

    def ops_per_element(self) -> int:
        return 2

    def result_ranges(self) -> tuple[str, ...]:
        return ("unknown",)
