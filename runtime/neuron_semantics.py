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

