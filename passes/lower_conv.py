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

from collections import Counter
from dataclasses import dataclass
from typing import TYPE_CHECKING, ClassVar

import numpy as np

from snuc.ir.graph import Graph, Node
from snuc.ir.ops import Conv, Dense, Im2Col, Transpose
from snuc.passes.base import Pass, register_pass
from snuc.passes.tiling import rebuild_graph, unused_name

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


def _lower(source: Graph, new: Graph, node: Node, matrices: dict[tuple[str, int], str]) -> None:
    """Add the im2col, dense and transpose that replace ``xbar.conv`` ``node``."""
    op: Conv = node.op
    x, weight = node.inputs
    kernel = tuple(source.type_of(weight).shape[2:])
    im2col = Im2Col(kernel=kernel, strides=op.strides, pads=op.pads, dilations=op.dilations)
    patches = unused_name(source, new, f"{node.id}_patches")
    new.add_node(im2col, (x,), patches, node.loc)
    product = unused_name(source, new, f"{node.id}_matrix")
    new.add_node(Dense(), (patches, matrices[weight, op.group]), product, node.loc)
    new.add_node(Transpose(perm=(0, 3, 1, 2)), (product,), node.outputs, node.loc)


@register_pass
@dataclass(frozen=True)
class LowerConv(Pass):
    """Lower every ``xbar.conv`` to ``dig.im2col``, ``xbar.dense`` and ``dig.transpose``."""

    name: ClassVar[str] = "lower-conv"

    def run(self, graph: Graph, target: TargetSpec | None) -> Graph:
        nodes = list(graph.nodes())
        convs = [n for n in nodes if isinstance(n.op, Conv)]
        if not convs:
            return graph.copy()
        lowered = {(n.inputs[1], n.op.group) for n in convs}
        uses = Counter(v for n in nodes for v in n.inputs)
        uses.update(graph.outputs)
        uses.update(s.next for s in graph.states)
        uses.subtract(n.inputs[1] for n in convs)
        matrices: dict[tuple[str, int], str] = {}

        def constants(new: Graph, name: str) -> None:
            array = graph.constants[name]
            if uses[name] > 0:
                new.add_constant(name, array, copy=False)
            for weight, group in sorted(lowered):
                if weight == name:
                    matrix = unused_name(graph, new, f"{name}.matrix")
                    new.add_constant(matrix, conv_matrix(array, group), copy=False)
                    matrices[weight, group] = matrix

        def lower(new: Graph, node: Node) -> bool:
            if not isinstance(node.op, Conv):
                return False
            _lower(graph, new, node, matrices)
            return True

        return rebuild_graph(graph, lower, constants)
