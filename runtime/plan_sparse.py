"""Crossbar products of spikes without the rows that hold none.

A spiking layer's input is 0 or 1, and often 0 for whole rows of a block: the padding
after a short sequence in a batch (a trained JSB network's padded test batch has 58 to
91 % of its readout's rows silent in its last blocks), the first steps of a deep layer,
a layer that has fallen silent (the benchmark's random 7-layer network, from its fourth
layer on). Its product ``x @ W`` is the sum of the weight rows whose input spiked.
Summing gathered weight rows costs NumPy more than BLAS's dense product at every rate
measured (``bench/runtime.py``'s table of spike products), but these savings are exact
and cheap:

* a block without any spike costs no product: its result is zeros;
* rows of ``x`` without a spike leave the product, and their results are written as
  zeros, when at least half of the rows are silent (:data:`MAX_WORK`);
* then inputs that never spike in the block's active rows leave it too (their column of
  ``x``, their row of ``W``), when at least a quarter of them are silent
  (:data:`KEEP_COLUMNS`).

Left out are terms ``0 * w`` with ``w`` finite, exactly zero, so every partial sum that
remains is one the dense product forms (BLAS accumulates each result in ``k`` order; a
kernel that splits the sum into lanes may regroup it, as any two BLAS kernels do). A
silent row's result is ``+0``, what the dense product's zero-initialised sum gives. The
savings apply only to values the graph guarantees to be 0 or 1
(``ir.crossbar.guaranteed_ranges``): spikes never hold NaN, infinities or ``-0``.

Looking for silent rows costs one matrix-vector product, paid by every block whose
product is large enough (:data:`MIN_MULTIPLY_ADDS`): about 2 % of a run of the
benchmark's JSB network at batch 64, which finds none to leave out, against runs 1.12x
as fast on the trained JSB model's padded batch and 1.29x on the benchmark's MNIST
network (docs/performance.md, "Runtime throughput").
"""

from __future__ import annotations

import numpy as np

MIN_MULTIPLY_ADDS = 1 << 22
"""Products of fewer multiply-adds than this (about 90 us) go straight to the dense
product. Looking for silent rows costs 3 to 5 us a block whatever it finds (a
``[20, 256]`` block of an MNIST-size layer at batch 1 to ``[384, 150]``): at batch 1 on
the trained MNIST model, checking every hidden layer's ``[20, 256]`` block cost 5 % of
the run and found nothing to leave out."""

MAX_WORK = 0.5
"""Silent rows leave the product only when at most this fraction of the rows is active:
gathering the active rows, zeroing the result and scattering the product's rows into it
cost up to a quarter of a product of these sizes, and a product only slightly smaller
than the dense one would not repay them."""

KEEP_COLUMNS = 0.75
"""Within a reduced product, the inputs are gathered only when at most this fraction of
them is active (NumPy gathers columns at about 1 ns an element); else the product keeps
them all and drops only the silent rows."""

_ONES = np.ones(0, np.float32)


def _ones(n: int) -> np.ndarray:
    """A float32 vector of ``n`` ones (a view of one cached array)."""
    global _ONES
    ones = _ONES
    if ones.size < n:  # sizes only grow, so a thread never sees too short an array
        ones = _ONES = np.ones(max(n, 2 * ones.size), np.float32)
    return ones[:n]


def active_rows(x: np.ndarray) -> np.ndarray | None:
    """The rows of the spikes ``x`` ``[M, K]`` (0 or 1) that hold a spike, when at most
    :data:`MAX_WORK` of them do (an empty array: none does); else None.

    Spikes are counted per row by a matrix-vector product with ones (exact for counts
    below 2^24, and several times faster than NumPy's reduction along an axis): that one
    product is all a block with enough active rows pays.
    """
    per_row = np.dot(x, _ones(x.shape[1]))
    if np.count_nonzero(per_row) > MAX_WORK * x.shape[0]:
        return None
    return per_row.nonzero()[0]


def active_columns(x: np.ndarray) -> np.ndarray | None:
    """The inputs (columns) of the spikes ``x`` ``[M, K]`` that spike in some row, when at
    most :data:`KEEP_COLUMNS` of them do; else None."""
    per_column = np.dot(_ones(x.shape[0]), x)
    if np.count_nonzero(per_column) > KEEP_COLUMNS * x.shape[1]:
        return None
    return per_column.nonzero()[0]


def spike_matmul(x: np.ndarray, weight: np.ndarray, out: np.ndarray) -> None:
    """``out = x @ weight`` for spikes ``x`` ``[M, K]``, leaving out silent rows and
    inputs (module docstring); ``out`` ``[M, N]`` is written in place."""
    if x.size * weight.shape[1] < MIN_MULTIPLY_ADDS:
        np.matmul(x, weight, out=out)
        return
    rows = active_rows(x)
    if rows is None:
        np.matmul(x, weight, out=out)
        return
    out.fill(0)
    if rows.size == 0:
        return
    x = x.take(rows, axis=0)
    cols = active_columns(x)
    if cols is not None:
        x, weight = x.take(cols, axis=1), weight.take(cols, axis=0)
    out[rows] = x @ weight
