"""NumPy entry points without their Python-level dispatch, for kernels on small arrays.

A timestep's arrays hold a few hundred elements, so a NumPy call costs more than its
arithmetic. ``np.clip`` and ``np.count_nonzero`` reach their C functions through Python
code, and ``np.dot`` through its ``__array_function__`` dispatch (NEP 18), which costs a
third of a row's product; the kernels of both fast backends call these instead (same
results: the same C functions on plain ndarrays).
"""

from __future__ import annotations

import numpy as np

try:  # NumPy's own entry points
    from numpy._core._multiarray_umath import clip, count_nonzero
except ImportError:  # pragma: no cover - a NumPy without them: the public functions
    clip, count_nonzero = np.clip, np.count_nonzero

dot = getattr(np.dot, "_implementation", np.dot)

__all__ = ["clip", "count_nonzero", "dot"]
