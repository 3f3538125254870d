"""What each neuron model of the family computes (SPEC §1, §1.1), written plainly.

These are the reference interpreter's semantics of the ``snu.*`` ops
(:mod:`snuc.ir.neurons`): the equations as their docstrings state them, in NumPy, left to
right in the operands' dtype. They are the oracle the fast kernels
(:mod:`snuc.runtime.neuron_kernels`, compiled from each model's update data) are tested
against, so they are written independently of that data.
"""

from __future__ import annotations

import numpy as np

from snuc.ir import neurons
from snuc.ir.ops import Op
from snuc.runtime.semantics import _sigmoid, _step, semantics


@semantics(neurons.SNULayer)
def _snu_layer(
    op: Op,
    a: np.ndarray,
    s_prev: np.ndarray,
    y_prev: np.ndarray,
    decay: np.ndarray,
    bias: np.ndarray,
) -> tuple[np.ndarray, ...]:
    """The SNU / sSNU update of SPEC §1, results ``(s, y)``::

        s = g(a + decay * s_prev * (1 - y_prev))     g = relu: max(., 0) | identity
        y = h(s + bias)                              h = step: 1 where > 0 | sigmoid

    evaluated left to right in the operands' dtype: ``a + ((decay * s_prev) * (1 - y_prev))``.
    ``decay`` and ``bias`` broadcast against ``a`` (scalar or per neuron).
    """
    s = a + decay * s_prev * (1 - y_prev)
    if op.g == "relu":
        s = np.maximum(s, s.dtype.type(0))
    z = s + bias
    y = _step(z) if op.h == "step" else _sigmoid(z)
    return s, y


def _spike(v: np.ndarray, threshold: np.ndarray) -> np.ndarray:
    """``H(v - threshold)``: 1 where the membrane is above the threshold, in v's dtype."""
    return _step(v - threshold)


@semantics(neurons.LIFSubtract)
def _lif_sub(
    op: Op,
    a: np.ndarray,
    v_prev: np.ndarray,
    y_prev: np.ndarray,
    decay: np.ndarray,
    threshold: np.ndarray,
) -> tuple[np.ndarray, ...]:
    """LIF with reset by subtraction, results ``(v, y)``::

    v = decay * v_prev + a - y_prev * threshold;  y = H(v - threshold)
    """
    v = decay * v_prev + a - y_prev * threshold
    return v, _spike(v, threshold)


@semantics(neurons.IF)
def _if(
    op: Op, a: np.ndarray, v_prev: np.ndarray, y_prev: np.ndarray, threshold: np.ndarray
) -> tuple[np.ndarray, ...]:
    """Integrate-and-fire, results ``(v, y)``: ``v = v_prev + a - y_prev * threshold``."""
    v = v_prev + a - y_prev * threshold
    return v, _spike(v, threshold)


@semantics(neurons.CurrentLIF)
def _cuba(
    op: Op,
    a: np.ndarray,
    i_prev: np.ndarray,
    v_prev: np.ndarray,
    y_prev: np.ndarray,
    syn_decay: np.ndarray,
    decay: np.ndarray,
    threshold: np.ndarray,
) -> tuple[np.ndarray, ...]:
    """Current-based LIF, results ``(i, v, y)``::

    i = syn_decay * i_prev + a
    v = decay * v_prev + i - y_prev * threshold     (reset = subtract)
    v = decay * v_prev * (1 - y_prev) + i           (reset = zero)
    """
    i = syn_decay * i_prev + a
    if op.reset == "subtract":
        v = decay * v_prev + i - y_prev * threshold
    else:
        v = decay * v_prev * (1 - y_prev) + i
    return i, v, _spike(v, threshold)


@semantics(neurons.LeakyIntegrator)
def _li(op: Op, a: np.ndarray, v_prev: np.ndarray, decay: np.ndarray) -> tuple[np.ndarray, ...]:
    """Leaky integrator, result ``(v,)``: ``v = decay * v_prev + a``."""
    return (decay * v_prev + a,)
