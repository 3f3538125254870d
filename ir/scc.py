"""Strongly connected components: the one implementation of Tarjan's algorithm.

The scheduler (recurrence loops of operations, :mod:`snuc.backends.modulo`; nodes of one
loop, :mod:`snuc.backends.schedule`) and the NumPy backend's order of work
(:mod:`snuc.runtime.plan_schedule`) both find the loops of a dependence graph with it.
"""

from __future__ import annotations

from collections.abc import Sequence

__all__ = ["strongly_connected"]


def strongly_connected(n: int, succ: Sequence[Sequence[int]]) -> list[list[int]]:
    """Strongly connected components of the graph on vertices ``0 .. n - 1``.

    Tarjan's algorithm, iterative (graphs may be deep). Components come in the order
    Tarjan completes them (every component after all it reaches: reverse topological
    order), each sorted.

    Args:
        n: the number of vertices.
        succ: ``succ[v]``: the vertices ``v`` has an edge to.
    """
    index = [-1] * n
    low = [0] * n
    on_stack = [False] * n
    stack: list[int] = []
    comps: list[list[int]] = []
    counter = 0
    for root in range(n):
        if index[root] >= 0:
            continue
        index[root] = low[root] = counter
        counter += 1
        stack.append(root)
        on_stack[root] = True
        work = [(root, 0)]
        while work:
            v, i = work[-1]
            if i < len(succ[v]):
                work[-1] = (v, i + 1)
                w = succ[v][i]
                if index[w] < 0:
                    index[w] = low[w] = counter
                    counter += 1
                    stack.append(w)
                    on_stack[w] = True
                    work.append((w, 0))
                elif on_stack[w]:
                    low[v] = min(low[v], index[w])
                continue
            work.pop()
            if work:
                u = work[-1][0]
                low[u] = min(low[u], low[v])
            if low[v] == index[v]:
                comp = []
                while True:
                    w = stack.pop()
                    on_stack[w] = False
                    comp.append(w)
                    if w == v:
                        break
                comps.append(sorted(comp))
    return comps
