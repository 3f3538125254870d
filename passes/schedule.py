"""The ``schedule`` pass: check that a graph can be scheduled on the chip (SPEC §4, §7).

Scheduling itself (binding every node to a unit, the instructions and their modulo
schedule) is code generation: :func:`snuc.backends.schedule.schedule_graph` does it, on
the machine model of :mod:`snuc.ir.machine`, for the driver (program and report) and for
the simulator (a graph run without a program). This module owns only the pass that runs
the scheduler at its place in the pipeline, so that an unschedulable graph is reported
there.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

from snuc.backends.schedule import schedule_graph
from snuc.ir.graph import Graph
from snuc.ir.target import TargetSpec
from snuc.passes.base import Pass, register_pass


@register_pass
@dataclass(frozen=True)
class SchedulePass(Pass):
    """Check that the graph can be scheduled on the target; returns the graph itself.

    The schedule is a pure function of graph and target, so the pass attaches nothing:
    the driver calls :func:`~snuc.backends.schedule.schedule_graph` on the final graph to
    emit the program and the report. Running the scheduler here reports an unschedulable
    graph (an untiled or unplaced crossbar op, an op without an instruction) at this stage
    of the pipeline.
    """

    name: ClassVar[str] = "schedule"

    def run(self, graph: Graph, target: TargetSpec | None) -> Graph:
        schedule_graph(graph, target)
        return graph
