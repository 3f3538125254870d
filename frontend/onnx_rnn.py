"""Lowering sequence-level ONNX ``LSTM`` and ``GRU`` nodes to one timestep (SPEC §2.1).

``torch.onnx.export`` writes ``nn.LSTM`` and ``nn.GRU`` (both exporters) as one ONNX node
per layer that runs over the whole sequence ``X[T, B, I]``. In the outer graph of a
sequence-form model (``lead = 1``) such a node becomes the step it repeats: the products
with the input matrix ``W`` and the recurrent matrix ``R`` are ``Dense`` ops (crossbars,
one per gate and matrix, like an SNU's weights), the gates are digital element-wise ops
(``dig.sigmoid``, ``dig.tanh``, ``dig.mul``, ``dig.add``, ``dig.sub``), and the hidden
state ``h`` (and the LSTM's cell ``c``) are IR states that start at zero. The node's
output ``Y[T, 1, B, H]`` is ``h`` at every step, one step of it ``[1, B, H]``; the final
states ``Y_h`` and ``Y_c`` are not computed (as for a Scan's final states).

Accepted is what torch writes: direction forward, layout 0 (time-major), the default
activations, no clip, no ``input_forget``, no peepholes, no ``sequence_lens``, biases
present or not, initial states absent or evaluating to zero; GRU with either
``linear_before_reset``. Anything else is a one-line error naming the node (SPEC §9).
The equations are ONNX's (gate order ``iofc`` for LSTM, ``zrh`` for GRU).
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import numpy as np
import onnx

from snuc.frontend.onnx_eval import INITIAL_STATE_INPUTS, attr, describe
from snuc.frontend.onnx_values import Const, FinalState
from snuc.ir import ops
from snuc.ir.errors import SnucError
from snuc.ir.types import BATCH, DTYPES, TensorType

if TYPE_CHECKING:
    from snuc.frontend.onnx_lower import Lowerer

RECURRENT_OPS: tuple[str, ...] = tuple(INITIAL_STATE_INPUTS)
"""The sequence-level recurrent ONNX ops lowered here."""

_GATES = {"LSTM": "iofc", "GRU": "zrh"}
_DEFAULT_ACTIVATIONS = {"LSTM": ["Sigmoid", "Tanh", "Tanh"], "GRU": ["Sigmoid", "Tanh"]}
_SEQUENCE_LENS, _PEEPHOLES = 4, 7


def lower_recurrent(lw: Lowerer, node: onnx.NodeProto) -> None:
    """Lower one LSTM or GRU node of a sequence-form model's outer graph into the step."""
    if not lw.lead or lw.ctx.sequence_input is None:
        raise SnucError(
            f"{describe(node)}: an {node.op_type} runs over a whole sequence; it may appear "
            f"only in the outer graph of a sequence-form model, not inside a Scan"
        )
    _check_attributes(node)
    _check_optional_inputs(node)
    _check_zero_initial_states(lw, node)
    cell = _Cell(lw, node)
    if node.op_type == "LSTM":
        h_new = cell.lstm()
    else:
        h_new = cell.gru(linear_before_reset=bool(attr(node, "linear_before_reset", 0)))
    if node.output[0]:
        hidden = (1, BATCH, cell.hidden)
        lw.result(node, ops.Reshape(shape=hidden), [h_new])
    for final in node.output[1:]:
        if final:
            lw.bind(final, FinalState(describe(node)))


def _check_attributes(node: onnx.NodeProto) -> None:
    """Refuse the attributes torch never writes: they change the equations."""
    direction = attr(node, "direction", "forward")
    if direction != "forward":
        raise SnucError(
            f"{describe(node)}: direction {direction!r}; snuc runs recurrent layers forward "
            f"only (export a unidirectional layer)"
        )
    if attr(node, "layout", 0) != 0:
        raise SnucError(
            f"{describe(node)}: layout 1 (batch-major); snuc needs time-major X[T, B, ...] "
            f"(layout 0)"
        )
    if attr(node, "clip") is not None:
        raise SnucError(f"{describe(node)}: cell clipping (clip) is not supported")
    if attr(node, "input_forget", 0) != 0:
        raise SnucError(f"{describe(node)}: input_forget (coupled gates) is not supported")
    activations = attr(node, "activations")
    custom = (
        activations is not None
        and [a.decode() if isinstance(a, bytes) else a for a in activations]
        != _DEFAULT_ACTIVATIONS[node.op_type]
    )
    if custom or attr(node, "activation_alpha") or attr(node, "activation_beta"):
        raise SnucError(
            f"{describe(node)}: custom activations are not supported; snuc computes the "
            f"defaults {', '.join(_DEFAULT_ACTIVATIONS[node.op_type])}"
        )


def _check_optional_inputs(node: onnx.NodeProto) -> None:
    """Refuse per-sequence lengths and peepholes (torch writes neither)."""
    inputs = list(node.input)
    if len(inputs) > _SEQUENCE_LENS and inputs[_SEQUENCE_LENS]:
        raise SnucError(
            f"{describe(node)}: sequence_lens is not supported; snuc runs every sequence "
            f"of a batch for the same number of steps"
        )
    if node.op_type == "LSTM" and len(inputs) > _PEEPHOLES and inputs[_PEEPHOLES]:
        raise SnucError(f"{describe(node)}: peephole weights (P) are not supported")


def _check_zero_initial_states(lw: Lowerer, node: onnx.NodeProto) -> None:
    """Initial states given as inputs must evaluate to zero (snuc starts states at zero)."""
    positions = INITIAL_STATE_INPUTS[node.op_type]
    names = [node.input[i] for i in positions if i < len(node.input) and node.input[i]]
    if not names:
        return
    for run in lw.ctx.probe(node, names, lw.ctx.sequence_input):
        for name, value in zip(names, run, strict=True):
            if value.size and not np.all(value == 0):
                raise SnucError(
                    f"{describe(node)}: initial state {name!r} is not zero; snuc starts "
                    f"every state at zero, so export without initial states or with zeros"
                )


class _Cell:
    """The step of one recurrent node: its weights per gate, and the ops it emits."""

    def __init__(self, lw: Lowerer, node: onnx.NodeProto) -> None:
        self.lw = lw
        self.node = node
        self.out = node.output[0] or f"{node.op_type.lower()}_{node.name}"
        gates = len(_GATES[node.op_type])
        self.hidden = int(attr(node, "hidden_size", 0))
        self.x = lw.tensor(lw.lookup(node.input[0], node), node)
        x_type = lw.graph.type_of(self.x)
        w = self._weight(1, (1, gates * self.hidden, None))
        r = self._weight(2, (1, gates * self.hidden, self.hidden))
        if x_type.rank != 2 or x_type.shape[1] != w.shape[2]:
            raise SnucError(
                f"{describe(node)}: its input is {x_type} per step, but W takes "
                f"{w.shape[2]} features; expected X[T, B, {w.shape[2]}]"
            )
        self.dtype = x_type.dtype
        bias = None
        if len(node.input) > 3 and node.input[3]:
            bias = self._weight(3, (1, 2 * gates * self.hidden))
        self.w = dict(zip(_GATES[node.op_type], np.split(w[0], gates), strict=True))
        self.r = dict(zip(_GATES[node.op_type], np.split(r[0], gates), strict=True))
        halves = np.split(bias[0], 2) if bias is not None else (None, None)
        self.wb, self.rb = (
            dict(zip(_GATES[node.op_type], np.split(b, gates), strict=True))
            if b is not None
            else None
            for b in halves
        )
        state = TensorType(self.dtype, (BATCH, self.hidden))
        self.h = lw.add_state(node, f"{self.out}_h", state)
        self.c = lw.add_state(node, f"{self.out}_c", state) if node.op_type == "LSTM" else None

    def _weight(self, index: int, shape: tuple[int | None, ...]) -> np.ndarray:
        """Input ``index`` of the node: a constant of ``shape`` (None: any size)."""
        names = {1: "W", 2: "R", 3: "B"}
        value = (
            self.lw.lookup(self.node.input[index], self.node)
            if index < len(self.node.input)
            else None
        )
        if not isinstance(value, Const):
            raise SnucError(
                f"{describe(self.node)}: its {names[index]} must be a constant (an initializer)"
            )
        array = value.array
        if array.ndim != len(shape) or any(
            want is not None and got != want for got, want in zip(array.shape, shape, strict=True)
        ):
            expected = ", ".join("*" if d is None else str(d) for d in shape)
            raise SnucError(
                f"{describe(self.node)}: {names[index]} has shape {list(array.shape)}; with "
                f"hidden_size {self.hidden} expected [{expected}]"
            )
        return array

    # ------------------------------------------------------------------ emitting

    def op(self, op: ops.Op, inputs: list[str], hint: str) -> str:
        return self.lw.emit(self.node, op, inputs, hint=f"{self.out}_{hint}")

    def const(self, array: np.ndarray, hint: str) -> str:
        array = np.ascontiguousarray(array, dtype=DTYPES[self.dtype])
        return self.lw.constant(array, f"{self.out}_{hint}", self.node)

    def product(self, x: str, rows: np.ndarray, hint: str) -> str:
        """``x @ rows.T`` on the crossbars (ONNX stores W and R as [H, K] per gate)."""
        return self.op(ops.Dense(), [x, self.const(rows.T, hint)], hint)

    def add_bias(self, value: str, bias: np.ndarray | None, hint: str) -> str:
        if bias is None:
            return value
        return self.op(ops.Add(), [value, self.const(bias, f"{hint}_b")], f"{hint}_pre")

    def gate_sum(self, gate: str) -> str:
        """``x W_g^T + h R_g^T + Wb_g + Rb_g``, the biases summed at import."""
        total = self.op(
            ops.Add(),
            [
                self.product(self.x, self.w[gate], f"W{gate}"),
                self.product(self.h, self.r[gate], f"R{gate}"),
            ],
            f"{gate}_sum",
        )
        bias = None if self.wb is None else self.wb[gate] + self.rb[gate]
        return self.add_bias(total, bias, gate)

    # ------------------------------------------------------------------ the cells

    def lstm(self) -> str:
        """ONNX LSTM: ``c' = f c + i g``, ``h' = o tanh(c')``; returns ``h'``."""
        i, o, f = (self.op(ops.Sigmoid(), [self.gate_sum(g)], g) for g in "iof")
        g = self.op(ops.Tanh(), [self.gate_sum("c")], "g")
        kept = self.op(ops.Mul(), [f, self.c], "fc")
        written = self.op(ops.Mul(), [i, g], "ig")
        c_new = self.op(ops.Add(), [kept, written], "c_next")
        h_new = self.op(ops.Mul(), [o, self.op(ops.Tanh(), [c_new], "tanh_c")], "h_next")
        self.lw.graph.set_next(self.c, c_new)
        self.lw.graph.set_next(self.h, h_new)
        return h_new

    def gru(self, *, linear_before_reset: bool) -> str:
        """ONNX GRU: ``h' = (1 - z) n + z h``; returns ``h'``."""
        z, r = (self.op(ops.Sigmoid(), [self.gate_sum(g)], g) for g in "zr")
        wb = None if self.wb is None else self.wb["h"]
        rb = None if self.rb is None else self.rb["h"]
        x_part = self.add_bias(self.product(self.x, self.w["h"], "Wh"), wb, "xh")
        if linear_before_reset:
            h_part = self.add_bias(self.product(self.h, self.r["h"], "Rh"), rb, "hh")
            reset = self.op(ops.Mul(), [r, h_part], "r_hh")
        else:
            gated = self.op(ops.Mul(), [r, self.h], "r_h")
            reset = self.add_bias(self.product(gated, self.r["h"], "Rh"), rb, "hh")
        n = self.op(ops.Tanh(), [self.op(ops.Add(), [x_part, reset], "n_sum")], "n")
        one = self.const(np.array(1.0), "one")
        keep_new = self.op(ops.Sub(), [one, z], "1_z")
        h_new = self.op(
            ops.Add(),
            [self.op(ops.Mul(), [keep_new, n], "zn"), self.op(ops.Mul(), [z, self.h], "zh")],
            "h_next",
        )
        self.lw.graph.set_next(self.h, h_new)
        return h_new
