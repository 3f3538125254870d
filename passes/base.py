"""Pass infrastructure: the pass class, the registry, the default pipeline and its runner.

A pass is a small frozen dataclass with a kebab-case ``name``, its options as fields and
``run(graph, target) -> graph`` (STYLE.md "Passes"). :func:`run_pipeline` verifies the
graph after every pass, so a pass that breaks an invariant is named at once rather than
by some later stage.

Local rewrites report why a pattern did not apply with :class:`Match` (after onnxscript's
``MatchResult().fail("reason")``); the passes log those reasons at DEBUG level on their
module's logger, so ``logging.getLogger("snuc.passes").setLevel(logging.DEBUG)`` explains
a rewrite that did not happen. The helpers at the end keep rewritten values' names, so the
graph's outputs and the printed IR keep the names of the source model.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, ClassVar, Generic, TypeVar

import numpy as np

from snuc.ir.errors import SnucError, VerifyError
from snuc.ir.graph import Graph, Node

if TYPE_CHECKING:
    from snuc.ir.target import TargetSpec

T = TypeVar("T")


@dataclass(frozen=True)
class Pass(ABC):
    """A graph-to-graph transformation; subclasses are frozen dataclasses.

    Class attributes:
        name: the kebab-case name used by the registry, ``--print-after`` and errors.

    A pass returns a new graph and leaves its input alone (start from ``graph.copy()``);
    one that returns its input unchanged says so in its docstring.
    """

    name: ClassVar[str] = ""

    @abstractmethod
    def run(self, graph: Graph, target: TargetSpec | None) -> Graph:
        """Transform ``graph`` for ``target`` (None when no target is known yet)."""


PASSES: dict[str, type[Pass]] = {}
"""Every pass class, by name, in registration order."""


def register_pass(cls: type[Pass]) -> type[Pass]:
    """Class decorator: make ``cls`` known under its ``name``."""
    if not cls.name or cls.name in PASSES:
        raise RuntimeError(f"pass {cls.__name__} has an empty or duplicate name {cls.name!r}")
    PASSES[cls.name] = cls
    return cls


def get_pass(name: str) -> type[Pass]:
    """The pass class registered as ``name``; a SnucError listing the known names otherwise."""
    try:
        return PASSES[name]
    except KeyError:
        raise SnucError(
            f"unknown pass {name!r}; expected one of {', '.join(pass_names())}"
        ) from None


DEFAULT_PIPELINE: tuple[str, ...] = (
    "verify",
    "canonicalize",
    "carry-spikes",
    "lift-snu",
    "lift-neurons",
    "dead-code",
    "lower-conv",
    "tile",
    "place",
    "quantize",
    "verify",
)
"""The default order of passes, top to bottom (SPEC §4). Scheduling follows them in the
driver (``schedule_graph``), which keeps the Schedule for the report and the program; the
``schedule`` pass exists for pipelines that only want the check."""


LIFT_PASSES: tuple[str, ...] = ("carry-spikes", "lift-snu", "lift-neurons")
"""The passes that lift neurons onto ``snu.*`` ops: left out with lifting off (``--no-lift``),
so the neurons stay loose digital ops and cost what those cost."""


def default_pipeline() -> list[Pass]:
    """The passes of :data:`DEFAULT_PIPELINE`, each with its default options."""
    return [get_pass(name)() for name in DEFAULT_PIPELINE]


def pass_names() -> list[str]:
    """Every registered pass name: the default pipeline's order first, then the others."""
    return list(dict.fromkeys([*DEFAULT_PIPELINE, *PASSES]))


def run_pipeline(
    graph: Graph,
    target: TargetSpec | None,
    passes: Iterable[Pass] | None = None,
    *,
    after: Callable[[str, Graph], None] | None = None,
) -> Graph:
    """Run ``passes`` (default: :func:`default_pipeline`) over ``graph`` in order.

    The input graph is verified first, so its own faults are not blamed on a pass; then the
    graph is verified after every pass.

    Args:
        graph: the graph to transform; it is not modified.
        target: the chip the graph is compiled for, or None.
        passes: the passes to run, in order.
        after: called as ``after(pass_name, graph)`` after each pass (``--print-after``).

    Returns:
        The graph after the last pass.

    Raises:
        VerifyError: the input graph is malformed, or a pass left a malformed graph (the
            message names the pass).
    """
    graph.verify()
    for p in default_pipeline() if passes is None else passes:
        graph = p.run(graph, target)
        try:
            graph.verify()
        except VerifyError as exc:
            raise VerifyError(f"pass {p.name!r} left an invalid graph: {exc}") from exc
        if after is not None:
            after(p.name, graph)
    return graph


@register_pass
@dataclass(frozen=True)
class Verify(Pass):
    """Check every invariant of the graph; returns the graph itself, unchanged."""

    name: ClassVar[str] = "verify"

    def run(self, graph: Graph, target: TargetSpec | None) -> Graph:
        graph.verify()
        return graph


@register_pass
@dataclass(frozen=True)
class DeadCode(Pass):
    """Drop the nodes and constants that no output or state depends on."""

    name: ClassVar[str] = "dead-code"

    def run(self, graph: Graph, target: TargetSpec | None) -> Graph:
        graph = graph.copy()
        graph.remove_dead()
        return graph


# --------------------------------------------------------------------------- matching


@dataclass(frozen=True)
class Match(Generic[T]):
    """The outcome of matching one pattern: what was found, or why it does not apply.

    Build one with :meth:`success` or :meth:`fail`; it is truthy when the pattern matched.

    Attributes:
        value: what the pattern found (meaningful only when matched).
        reason: why the pattern did not apply; empty when it matched.
    """

    value: T | None = None
    reason: str = ""

    @property
    def ok(self) -> bool:
        return not self.reason

    def __bool__(self) -> bool:
        return self.ok

    @staticmethod
    def success(value: T) -> Match[T]:
        return Match(value=value)

    @staticmethod
    def fail(reason: str) -> Match[T]:
        if not reason:
            raise ValueError("a failed match needs a reason")
        return Match(reason=reason)


def constant_of(graph: Graph, value: str) -> np.ndarray | None:
    """The array of ``value`` when it is a constant, else None."""
    return graph.constants.get(value)


def is_filled_with(array: np.ndarray | None, fill: float) -> bool:
    """Whether ``array`` is a constant whose every element equals ``fill``."""
    return array is not None and array.size > 0 and bool(np.all(array == fill))


# --------------------------------------------------------------------------- rewriting


def is_unused(graph: Graph, node: Node) -> bool:
    """Whether no node, output or state uses any result of ``node``."""
    return not any(graph.is_used(v) for v in node.outputs)


def take_place(graph: Graph, old: Sequence[str], new_node: Node) -> None:
    """Let ``new_node``, just added, replace the values ``old`` and take over their names.

    Every use of ``old[i]`` (operands, outputs, state wiring) moves to
    ``new_node.outputs[i]``; the old values' producers are removed; then ``new_node`` is
    rebuilt under the old names, so the graph's outputs and printed IR keep the source's
    names. The old producers' operands may be left dead (see :func:`erase_unused`).
    """
    for o, n in zip(old, new_node.outputs, strict=True):
        graph.replace_uses(o, n)
    for o in old:
        producer = graph.producer(o)
        if producer is not None:
            graph.remove_node(producer)
    graph.add_node(new_node.op, new_node.inputs, tuple(old), new_node.loc)
    for o, n in zip(old, new_node.outputs, strict=True):
        graph.replace_uses(n, o)
    graph.remove_node(new_node)


def erase_unused(graph: Graph, values: Iterable[str]) -> None:
    """Remove the producers of ``values`` that nothing uses any more, users first.

    Rewrites call this on the nodes they matched, so the printed IR after a pass carries
    no leftovers of its own rewrites; other dead code is the ``dead-code`` pass's business.
    """
    pending = list(dict.fromkeys(values))
    removed = True
    while removed:
        removed = False
        for value in pending:
            node = graph.producer(value)
            if node is not None and is_unused(graph, node):
                graph.remove_node(node)
                removed = True
