"""``lower-conv``: turn each crossbar convolution into patches times a weight matrix.

``xbar.conv(x, W[M, C/g, kh, kw])`` becomes::

    %y_patches = dig.im2col(%x) {kernel, strides, pads, dilations}   # [B, OH, OW, C*kh*kw]
    %y_matrix = xbar.dense(%y_patches, @W.matrix)                      # [B, OH, OW, M]
    %y = dig.transpose(%y_matrix) {perm = [0, 3, 1, 2]}                # [B, M, OH, OW]

``W.matrix[C*kh*kw, M]`` holds the kernels as columns, rows in the patches' ``(c, u, v)``
order. With ``g > 1`` groups it is block diagonal: group ``i``'s kernels fill rows
``i*C/g*kh*kw ..`` and columns ``i*M/g ..``, zeros elsewhere. The zeros are programmed as
weights too, so a grouped convolution costs ``g`` times its own weights in devices (a
depthwise convolution of C channels, C times); mapping each group as its own matrix would
avoid that, at the price of one matrix per group.

The conv keeps its name (on the transpose) and its ``loc``; convs sharing a weight and a
group count share one matrix, which takes the weight's place among the constants (the
weight itself stays only if something else uses it). Results equal the conv's up to
float32 rounding of the sums.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, ClassVar

import numpy as np

from snuc.ir.graph import Graph, Node
from snuc.ir.ops import Conv, Dense, Im2Col, Transpose
from snuc.passes.base import Pass, register_pass

if TYPE_CHECKING:
    from snuc.ir.target import TargetSpec


def conv_matrix(weight: np.ndarray, group: int) -> np.ndarray:
    """The ``[C*kh*kw, M]`` matrix of conv kernels ``weight[M, C/group, kh, kw]``.

    Column ``m`` holds kernel ``m`` in ``(c, u, v)`` order, with ``c`` counted over all
    ``C`` input channels; kernels see only their group's channels, so rows of the other
    groups are zero.
    """
    m, c_per_group, kh, kw = weight.shape
    patch = c_per_group * kh * kw
    m_per_group = m // group
    matrix = np.zeros((group * patch, m), dtype=weight.dtype)
    for g in range(group):
        kernels = weight[g * m_per_group : (g + 1) * m_per_group].reshape(m_per_group, patch)
        matrix[g * patch : (g + 1) * patch, g * m_per_group : (g + 1) * m_per_group] = kernels.T
    return matrix


def _matrices(graph: Graph, convs: list[Node]) -> dict[tuple[str, int], str]:
    """Add one weight matrix per (weight, group) of ``convs``; their names, by that pair.

    Matrices are named in the order of their weights among the constants, then by group.
    """
    groups: dict[str, list[int]] = {}
    for weight, group in sorted({(n.inputs[1], n.op.group) for n in convs}):
        groups.setdefault(weight, []).append(group)
    matrices = {}
    for name in [c for c in graph.constants if c in groups]:
        for group in groups[name]:
            matrix = graph.fresh(f"{name}.matrix")
            graph.add_constant(matrix, conv_matrix(graph.constants[name], group), copy=False)
            matrices[name, group] = matrix
    return matrices


def _lower(graph: Graph, node: Node, matrix: str) -> None:
    """Replace ``xbar.conv`` ``node`` by an im2col and a dense before it, and a transpose."""
    op: Conv = node.op
    x, weight = node.inputs
    kernel = tuple(graph.type_of(weight).shape[2:])
    im2col = Im2Col(kernel=kernel, strides=op.strides, pads=op.pads, dilations=op.dilations)
    patches = graph.fresh(f"{node.id}_patches")
    graph.add_node(im2col, (x,), patches, node.loc, before=node)
    product = graph.fresh(f"{node.id}_matrix")
    graph.add_node(Dense(), (patches, matrix), product, node.loc, before=node)
    graph.rewrite_node(node, Transpose(perm=(0, 3, 1, 2)), (product,))


def _put_matrices_in_place(graph: Graph, matrices: dict[tuple[str, int], str]) -> None:
    """Drop the constants nothing uses any more; each matrix takes its weight's place."""
    after: dict[str, list[str]] = {}
    for (weight, _), matrix in matrices.items():
        after.setdefault(weight, []).append(matrix)
    added = set(matrices.values())
    order = []
    for name in [c for c in graph.constants if c not in added]:
        if graph.is_used(name):
            order.append(name)
        else:
            graph.remove_constant(name)
        order += after.get(name, [])
    graph.reorder_constants(order)


@register_pass
@dataclass(frozen=True)
class LowerConv(Pass):
    """Lower every ``xbar.conv`` to ``dig.im2col``, ``xbar.dense`` and ``dig.transpose``.

    When the graph has a conv, the constants nothing uses afterwards are dropped.
    """

    name: ClassVar[str] = "lower-conv"

    def run(self, graph: Graph, target: TargetSpec | None) -> Graph:
        graph = graph.copy()
        convs = [n for n in graph.nodes() if isinstance(n.op, Conv)]
        if not convs:
            return graph
        matrices = _matrices(graph, convs)
        for node in convs:
            _lower(graph, node, matrices[node.inputs[1], node.op.group])
        _put_matrices_in_place(graph, matrices)
        return graph
