"""The fast kernel of every neuron model, compiled from the model's update data.

Each model of the family (:mod:`snuc.ir.neurons`) states its update as a list of NumPy
calls over named arrays (:class:`~snuc.ir.neurons.Update`). This module turns that list
into the two forms the backends run, specialised to the op's attributes (no branch per
step), and registers them as the op's fast kernel (:func:`snuc.runtime.plan_kernels.kernel`):

* the one-step kernel over slots (time loops of the NumPy backend, the simulator), which
  reads its slots in the same function as the calls (a Python call per step and layer is
  a twentieth of a simulator's neuron step);
* a loop over a block of steps (:func:`neuron_loop`; the NumPy backend's loop of a lone
  neuron layer whose states are its own results, where a call per step would cost a
  twentieth of a 150-neuron step at batch 1), attached to the kernel as ``steps``.

Both run exactly the model's calls, so they compute what the interpreter's plain semantics
(:mod:`snuc.runtime.neuron_semantics`) compute, bit for bit (tests hold them to it).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import numpy as np

from snuc.ir.neurons import NEURON_OPS, NeuronOp, Update
from snuc.runtime import np_fast
from snuc.runtime.plan_kernels import Build, Kernel, kernel, sigmoid_into

NeuronLoop = Callable[..., tuple[np.ndarray, ...]]
"""``loop(a, *result_seqs, *previous, *others) -> last results``: the update for each
step k of the sequences ``a`` and the results' (see :func:`neuron_loop`)."""

NeuronSteps = Callable[..., tuple[np.ndarray, ...]]
"""``steps(slots, a, *result_seqs, *previous) -> last results``: see :func:`_steps`."""

_NAMES = {
    "subtract": np.subtract, "multiply": np.multiply, "add": np.add, "maximum": np.maximum,
    "greater": np.greater, "into": sigmoid_into, "count": np_fast.count_nonzero,
}  # fmt: skip


def _others(op: NeuronOp, update: Update) -> tuple[str, ...]:
    """The names besides ``a``, the results and the previous values: parameters, then
    scratch, constants and flags."""
    params = op.OPERANDS_NAMED[1:]
    params = tuple(p for p in params if p not in op.PREVIOUS)
    constants = tuple(name for name, _ in update.constants)
    return params + update.scratch + constants + update.flags


def neuron_loop(op: NeuronOp, update: Update) -> NeuronLoop:
    """The update of ``op`` over a block of steps, called positionally with ``a``'s and
    each result's sequence (arrays or lists of per-step arrays), the previous values of
    the results, then the arrays of :func:`_others`; returns the last step's results."""
    results, previous = op.RESULTS_NAMED, op.PREVIOUS
    sequences = ", ".join(f"{r}_seq" for r in ("a", *results))
    body = "".join(f"\n        {call}" for call in update.calls)
    source = (
        f"def loop({sequences}, {', '.join(previous + _others(op, update))}):\n"
        f"    for a, {', '.join(results)} in zip({sequences}, strict=True):{body}\n"
        f"        {', '.join(previous)}, = {', '.join(results)},\n"
        f"    return {', '.join(previous)},\n"
    )
    return _compiled(source, f"<{op.NAME} loop {op.attrs()}>")["loop"]


def _compiled(source: str, name: str) -> dict[str, Any]:
    """The functions that ``source``, text made in this module from a model's fixed call
    list and slot numbers (nothing read in), defines over the update's NumPy functions."""
    namespace = dict(_NAMES)
    exec(compile(source, name, "exec"), namespace)
    return namespace


def neuron_kernel(
    op: NeuronOp,
    update: Update,
    slot_of: dict[str, int],
    tally: tuple[int, int] | None = None,
) -> Kernel:
    """The kernel of one step of ``op``'s update over slots.

    Args:
        op: the neuron op.
        update: its update (:meth:`~snuc.ir.neurons.NeuronOp.update`).
        slot_of: the slot of every name the update uses: operands (a constant one may be
            broadcast to the result's shape, negated where ``update.negated`` says),
            results, scratch, constants and flags.
        tally: ``(slot, index)``: add the step's spikes to ``slots[slot][index]``.

    Returns:
        The kernel; its attribute ``steps`` runs the same update over many steps in one
        call (:func:`_steps`).
    """
    lines = [f"{name} = slots[{slot}]" for name, slot in slot_of.items()]
    lines += update.calls
    if tally is not None and update.spikes is not None:
        lines.append(f"slots[{tally[0]}][{tally[1]}] += count({update.spikes})")
    source = "def kernel(slots):" + "".join(f"\n    {line}" for line in lines) + "\n"
    made = _compiled(source, f"<{op.NAME} kernel {op.attrs()}>")["kernel"]
    others = [slot_of[name] for name in _others(op, update)]
    made.steps = _steps(neuron_loop(op, update), others)
    return made


def _steps(loop: NeuronLoop, others: Sequence[int]) -> NeuronSteps:
    """The update over many steps in one call, for a loop that is one neuron op whose
    states are its own results.

    ``steps(slots, a, *results, *previous)`` reads the parameters and scratch from
    ``slots`` once, then for each step k writes every result's ``[k]`` from ``a[k]`` and
    the previous step's results (``previous`` before step 0): the history arrays are the
    results themselves, nothing is copied and no slot is looked up per step. Returns the
    last step's results, the states of the step after.
    """

    def steps(slots: list, *arrays: Any) -> tuple[np.ndarray, ...]:
        return loop(*arrays, *[slots[i] for i in others])

    return steps


def _make(b: Build) -> Kernel:
    """The fast kernel of a neuron node: its update's names bound to slots."""
    op: NeuronOp = b.node.op  # type: ignore[assignment]
    dtype, shape = b.type.np_dtype, b.type.shape
    names = op.OPERANDS_NAMED
    invariant = frozenset(n for n, v in zip(names, b.node.inputs, strict=True) if v in b.invariants)
    update = op.update(invariant)
    slot_of: dict[str, int] = {}
    for i, name in enumerate(names):
        moving = i == 0 or name in op.PREVIOUS
        slot_of[name] = b.ins[i] if moving else b.operand(i, negate=name in update.negated)
    slot_of.update(zip(op.RESULTS_NAMED, b.outs, strict=True))
    slot_of.update((name, b.alloc.temp(dtype, shape)) for name in update.scratch)
    slot_of.update((name, b.constant(value)) for name, value in update.constants)
    slot_of.update((name, b.alloc.temp(np.bool_, shape)) for name in update.flags)
    return neuron_kernel(op, update, slot_of, b.tally)


kernel(*NEURON_OPS.values())(_make)
