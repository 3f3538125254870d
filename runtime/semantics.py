"""What every op of snuc's IR computes, in plain NumPy: the reference semantics.

Each op's meaning is a function registered against its class with :func:`semantics`
(:data:`OP_SEMANTICS`); the reference interpreter (:mod:`snuc.runtime.interpreter`)
evaluates nodes with them, and the fast kernels fall back to them. They favour the obvious
formulation over speed, but stay vectorised (no Python loops over elements or pixels).

Conventions shared by every op:

* Values keep their dtype. Float32 operands are computed in float32 (a float32 matmul is a
  float32 matmul); nothing is silently widened to float64.
* IEEE semantics are the meaning of float ops: ``1 / 0`` is ``inf``, ``0 / 0`` is ``nan``.
  NumPy's floating-point warnings for these are silenced by the caller, since they are not
  errors here.
* Integer division by zero and out-of-range gather indices are errors (:class:`SnucError`;
  the caller names the node), because ONNX leaves them undefined.

Where onnxruntime computes an op exactly (element-wise arithmetic, comparisons, casts,
data movement, max pooling), the result is bit-for-bit the same. Where it approximates
(sigmoid, tanh, exp in softmax) or sums in another order (matmul, conv, reductions,
average pooling), the result agrees to about 1e-6 relative to the magnitudes involved;
the tests state the exact bounds.
"""

from __future__ import annotations

import math
from collections.abc import Callable

import numpy as np
from numpy.lib.stride_tricks import sliding_window_view

from snuc.ir import ops
from snuc.ir.elementwise import ELEMENTWISE, Elementwise
from snuc.ir.errors import SnucError
from snuc.ir.ops import Op
from snuc.ir.types import BATCH, DTYPES

Semantics = Callable[..., tuple[np.ndarray, ...]]

OP_SEMANTICS: dict[type[Op], Semantics] = {}
"""By op class, ``f(op, *operands) -> results``: the meaning of every registered op."""


def semantics(op_class: type[Op]) -> Callable[[Semantics], Semantics]:
    """Decorator: register the decorated function as the semantics of ``op_class``."""

    def register(fn: Semantics) -> Semantics:
        if op_class in OP_SEMANTICS:
            raise RuntimeError(f"semantics of {op_class.NAME} defined twice")
        OP_SEMANTICS[op_class] = fn
        return fn

    return register


# --------------------------------------------------------------------------- helpers


def _sigmoid(x: np.ndarray) -> np.ndarray:
    """``1 / (1 + exp(-x))`` without overflow: exp is only taken of ``-|x|``."""
    e = np.exp(-np.abs(x))
    return np.where(x >= 0, 1 / (1 + e), e / (1 + e))


def _step(x: np.ndarray) -> np.ndarray:
    """Heaviside: 1 where ``x > 0``, else 0, in x's dtype."""
    return (x > 0).astype(x.dtype)


def _truncating_div(x: np.ndarray, y: np.ndarray) -> np.ndarray:
    """Integer quotient rounded toward zero (C and ONNX), not toward -inf (Python)."""
    if np.any(y == 0):
        raise SnucError("integer division by zero")
    q = np.floor_divide(x, y)
    # Floor and truncation differ only for inexact quotients of opposite-signed operands.
    inexact_negative = (q * y != x) & ((x < 0) != (y < 0))
    return q + inexact_negative.astype(q.dtype)


def _pad_hw(x: np.ndarray, pads: tuple[int, ...], value: float) -> np.ndarray:
    """Pad an NCHW array's spatial dimensions; ``pads`` is (top, left, bottom, right)."""
    top, left, bottom, right = pads
    if not any(pads):
        return x
    return np.pad(x, ((0, 0), (0, 0), (top, bottom), (left, right)), constant_values=value)


def _windows(
    x: np.ndarray,
    kernel: tuple[int, int],
    strides: tuple[int, ...],
    dilations: tuple[int, ...] = (1, 1),
) -> np.ndarray:
    """A read-only view ``[N, C, OH, OW, kh, kw]`` of every kernel window of padded NCHW ``x``.

    ``view[n, c, i, j, u, v] = x[n, c, i*sh + u*dh, j*sw + v*dw]``.
    """
    spans = tuple(d * (k - 1) + 1 for k, d in zip(kernel, dilations, strict=True))
    view = sliding_window_view(x, spans, axis=(2, 3))
    (sh, sw), (dh, dw) = strides, dilations
    return view[:, :, ::sh, ::sw, ::dh, ::dw]


def _reduced_axes(op: Op, x: np.ndarray) -> tuple[int, ...]:
    """The axes a reduction op reduces: its ``axes``, or all of them when empty."""
    return tuple(a % x.ndim for a in op.axes) if op.axes else tuple(range(x.ndim))


# --------------------------------------------------------------------------- element-wise


@semantics(ops.Div)
def _div(op: Op, x: np.ndarray, y: np.ndarray) -> tuple[np.ndarray, ...]:
    """``z = x / y`` with broadcasting.

    Floats: IEEE division. Integers: ``z = trunc(x / y)``, rounded toward zero like ONNX;
    a zero divisor is an error.
    """
    if np.issubdtype(x.dtype, np.integer):
        return (_truncating_div(x, y),)
    return (np.divide(x, y),)


@semantics(ops.Relu)
def _relu(op: Op, x: np.ndarray) -> tuple[np.ndarray, ...]:
    """``y = max(x, 0)``."""
    return (np.maximum(x, x.dtype.type(0)),)


@semantics(ops.LeakyRelu)
def _leaky_relu(op: Op, x: np.ndarray) -> tuple[np.ndarray, ...]:
    """``y = x if x >= 0 else alpha * x``; ``alpha`` is rounded to x's dtype first.

    ONNX stores ``alpha`` as a float32 attribute, so rounding it keeps float32 results
    identical to onnxruntime's.
    """
    alpha = x.dtype.type(op.alpha)
    return (np.where(x >= 0, x, alpha * x),)


@semantics(ops.Sigmoid)
def _sigmoid_op(op: Op, x: np.ndarray) -> tuple[np.ndarray, ...]:
    """``y = 1 / (1 + exp(-x))``, computed as ``e / (1 + e)`` with ``e = exp(x)`` for x < 0.

    Never overflows, and stays accurate to a few ulp for large negative x (onnxruntime's
    approximation is off by up to ~2e-7 absolute there).
    """
    return (_sigmoid(x),)


@semantics(ops.Step)
def _step_op(op: Op, x: np.ndarray) -> tuple[np.ndarray, ...]:
    """``y = 1 where x > 0 else 0``, in x's dtype (the SNU spike; ``step(0) = 0``)."""
    return (_step(x),)


@semantics(ops.Cast)
def _cast(op: Op, x: np.ndarray) -> tuple[np.ndarray, ...]:
    """``y = x`` converted to dtype ``to``.

    Float to integer truncates toward zero (NaN, inf and out-of-range values are undefined,
    as in ONNX); bool to number gives 0 or 1; number to bool is ``x != 0``; float64 to
    float32 rounds to nearest.
    """
    return (x.astype(DTYPES[op.to]),)


@semantics(ops.Where)
def _where(op: Op, cond: np.ndarray, x: np.ndarray, y: np.ndarray) -> tuple[np.ndarray, ...]:
    """``z = x where cond else y`` with broadcasting."""
    return (np.where(cond, x, y),)


def _defined(definition: Elementwise) -> Semantics:
    """The semantics of an op of :mod:`snuc.ir.elementwise`: its ``fn`` on the operands."""
    fn = definition.fn

    def compute(op: Op, *operands: np.ndarray) -> tuple[np.ndarray, ...]:
        return (fn(*operands),)

    compute.__doc__ = f"``{definition.meaning}``"
    return compute


for _cls, _definition in ELEMENTWISE.items():
    semantics(_cls)(_defined(_definition))


# --------------------------------------------------------------------------- matrix work


@semantics(ops.Dense)
def _dense(op: Op, x: np.ndarray, w: np.ndarray) -> tuple[np.ndarray, ...]:
    """``y = x @ W``: ``y[..., n] = sum_k x[..., k] W[k, n]``."""
    return (np.matmul(x, w),)


@semantics(ops.CrossbarMVM)
def _mvm(op: Op, x: np.ndarray, w: np.ndarray) -> tuple[np.ndarray, ...]:
    """One crossbar tile, exact weights: ``y = x[..., r0:r1] @ W[r0:r1, c0:c1]``."""
    (r0, r1), (c0, c1) = op.rows, op.cols
    return (np.matmul(x[..., r0:r1], w[r0:r1, c0:c1]),)


@semantics(ops.Im2Col)
def _im2col(op: Op, x: np.ndarray) -> tuple[np.ndarray, ...]:
    """``y[n, i, j, (c*kh + u)*kw + v] = x_pad[n, c, i*sh + u*dh, j*sw + v*dw]``."""
    windows = _windows(_pad_hw(x, op.pads, 0), op.kernel, op.strides, op.dilations)
    n, c, oh, ow, kh, kw = windows.shape
    return (
        np.ascontiguousarray(windows.transpose(0, 2, 3, 1, 4, 5)).reshape(n, oh, ow, c * kh * kw),
    )


@semantics(ops.MatMul)
def _matmul(op: Op, x: np.ndarray, y: np.ndarray) -> tuple[np.ndarray, ...]:
    """``z = x @ y`` with NumPy (= ONNX MatMul) semantics for ranks 1 and >= 3."""
    return (np.matmul(x, y),)


def _conv2d(op: Op, x: np.ndarray, w: np.ndarray) -> tuple[np.ndarray, ...]:
    """Grouped, strided, dilated, zero-padded 2-D convolution as one batched matmul (im2col).

    ``y[n, m, i, j] = sum_{c, u, v} x_pad[n, g*Cg + c, i*sh + u*dh, j*sw + v*dw] W[m, c, u, v]``
    with ``Cg = C / group``, ``g = m // (M / group)``; pads are (top, left, bottom, right).
    """
    n = x.shape[0]
    m, c_per_group, kh, kw = w.shape
    groups = op.group
    windows = _windows(_pad_hw(x, op.pads, 0), (kh, kw), op.strides, op.dilations)
    oh, ow = windows.shape[2:4]
    patch_size = c_per_group * kh * kw
    # [N, G, Cg, OH, OW, kh, kw] -> [N, G, OH*OW, Cg*kh*kw]: one patch per output pixel,
    # flattened in the same (c, u, v) order as the weight rows below.
    patches = (
        windows.reshape(n, groups, c_per_group, oh, ow, kh, kw)
        .transpose(0, 1, 3, 4, 2, 5, 6)
        .reshape(n, groups, oh * ow, patch_size)
    )
    kernels = w.reshape(groups, m // groups, patch_size).transpose(0, 2, 1)
    out = np.matmul(patches, kernels)  # [N, G, OH*OW, M/G]
    return (out.transpose(0, 1, 3, 2).reshape(n, m, oh, ow),)


@semantics(ops.Conv)
def _xbar_conv(op: Op, x: np.ndarray, w: np.ndarray) -> tuple[np.ndarray, ...]:
    """2-D convolution with a constant weight; the equation is :func:`_conv2d`'s."""
    return _conv2d(op, x, w)


@semantics(ops.DigitalConv)
def _dig_conv(op: Op, x: np.ndarray, w: np.ndarray) -> tuple[np.ndarray, ...]:
    """2-D convolution with a computed weight; the equation is :func:`_conv2d`'s."""
    return _conv2d(op, x, w)


# --------------------------------------------------------------------------- shape ops


@semantics(ops.Reshape)
def _reshape(op: Op, x: np.ndarray) -> tuple[np.ndarray, ...]:
    """``y = reshape(x, shape)`` in row-major order, with ``B`` set to the actual batch.

    The batch size is what the other dimensions leave (the IR guarantees one ``B`` at most).
    """
    shape = tuple(-1 if d == BATCH else d for d in op.shape)
    return (np.reshape(x, shape),)


@semantics(ops.Transpose)
def _transpose(op: Op, x: np.ndarray) -> tuple[np.ndarray, ...]:
    """``y = transpose(x, perm)``: ``y.shape[i] = x.shape[perm[i]]``."""
    return (np.transpose(x, op.perm),)


@semantics(ops.Concat)
def _concat(op: Op, *xs: np.ndarray) -> tuple[np.ndarray, ...]:
    """``y = concatenate(xs, axis)``."""
    return (np.concatenate(xs, axis=op.axis),)


@semantics(ops.Gather)
def _gather(op: Op, table: np.ndarray, indices: np.ndarray) -> tuple[np.ndarray, ...]:
    """``y = take(table, indices, axis)``: ``y[..., i..., ...] = table[..., indices[i...], ...]``.

    Negative indices count from the end (ONNX); indices outside ``[-n, n)`` are an error.
    """
    size = table.shape[op.axis]
    if indices.size and (indices.min() < -size or indices.max() >= size):
        bad = indices[(indices < -size) | (indices >= size)].flat[0]
        raise SnucError(
            f"index {bad} is out of range [{-size}, {size}) for axis {op.axis} of a table "
            f"of shape {list(table.shape)}; check the token ids against the vocabulary size"
        )
    return (np.take(table, indices, axis=op.axis),)


# --------------------------------------------------------------------------- reductions


@semantics(ops.ReduceSum)
def _reduce_sum(op: Op, x: np.ndarray) -> tuple[np.ndarray, ...]:
    """``y = sum(x, axes, keepdims)`` in x's dtype; empty ``axes`` reduces all axes."""
    return (np.sum(x, axis=_reduced_axes(op, x), keepdims=op.keepdims, dtype=x.dtype),)


@semantics(ops.ReduceMean)
def _reduce_mean(op: Op, x: np.ndarray) -> tuple[np.ndarray, ...]:
    """``y = sum(x, axes, keepdims) / count`` in x's dtype; empty ``axes`` reduces all axes.

    For integers the division truncates toward zero, as onnxruntime's.
    """
    axes = _reduced_axes(op, x)
    total = np.sum(x, axis=axes, keepdims=op.keepdims, dtype=x.dtype)
    count = np.asarray(math.prod(x.shape[a] for a in axes), dtype=x.dtype)
    if np.issubdtype(x.dtype, np.integer):
        return (_truncating_div(total, count),)
    return (np.divide(total, count),)


@semantics(ops.Softmax)
def _softmax(op: Op, x: np.ndarray) -> tuple[np.ndarray, ...]:
    """``y = exp(x - max) / sum(exp(x - max))`` along ``axis``; the max keeps exp finite."""
    e = np.exp(x - np.max(x, axis=op.axis, keepdims=True))
    return (e / np.sum(e, axis=op.axis, keepdims=True),)


@semantics(ops.LogSoftmax)
def _log_softmax(op: Op, x: np.ndarray) -> tuple[np.ndarray, ...]:
    """``y = (x - max) - log(sum(exp(x - max)))`` along ``axis``."""
    z = x - np.max(x, axis=op.axis, keepdims=True)
    return (z - np.log(np.sum(np.exp(z), axis=op.axis, keepdims=True)),)


# --------------------------------------------------------------------------- pooling


@semantics(ops.MaxPool)
def _maxpool(op: Op, x: np.ndarray) -> tuple[np.ndarray, ...]:
    """``y[n, c, i, j] = max_{u, v} x_pad[n, c, i*sh + u, j*sw + v]``; padding is -inf."""
    windows = _windows(_pad_hw(x, op.pads, -np.inf), op.kernel, op.strides)
    return (np.max(windows, axis=(-2, -1)),)


@semantics(ops.AvgPool)
def _avgpool(op: Op, x: np.ndarray) -> tuple[np.ndarray, ...]:
    """``y[n, c, i, j] = sum_{u, v} x_pad[n, c, i*sh + u, j*sw + v] / count[i, j]``.

    Padding is zero. ``count`` is ``kh * kw`` when ``count_include_pad``, else the number
    of window positions that fall inside the unpadded input.
    """
    total = np.sum(_windows(_pad_hw(x, op.pads, 0), op.kernel, op.strides), axis=(-2, -1))
    if op.count_include_pad:
        count = np.asarray(op.kernel[0] * op.kernel[1], dtype=x.dtype)
    else:
        inside = _pad_hw(np.ones((1, 1, *x.shape[2:]), dtype=x.dtype), op.pads, 0)
        count = np.sum(_windows(inside, op.kernel, op.strides), axis=(-2, -1))
    return (total / count,)


# The neuron models' semantics (snu.*) live beside the family; importing them registers them.
from snuc.runtime import neuron_semantics as neuron_semantics  # noqa: E402
