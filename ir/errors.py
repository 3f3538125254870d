"""Errors and source locations shared by every stage of snuc.

Every error a user can cause is a :class:`SnucError` (a ``ValueError``) whose message is
one line; the CLI prints it as ``snuc: error: <message>`` and exits with status 2.
"""

from __future__ import annotations

from dataclasses import dataclass, field


class SnucError(ValueError):
    """A problem with the user's input: one line that names it and suggests the fix."""


class VerifyError(SnucError):
    """An IR node or graph breaks an invariant (types, shapes, operands)."""


class ParseError(SnucError):
    """The text IR (or assembly) could not be parsed; the message names line and column."""


@dataclass(frozen=True)
class Loc:
    """Where a node came from.

    Attributes:
        source: what produced it, e.g. ``onnx:/fc1/MatMul`` or ``torch:layers.0``; printed
            in the text IR and part of the node's identity.
        line, column: position in a parsed text file; not part of equality, so a graph
            parsed from text equals the graph it was printed from.
    """

    source: str = ""
    line: int | None = field(default=None, compare=False)
    column: int | None = field(default=None, compare=False)

    def __str__(self) -> str:
        where = self.source or "<unknown>"
        if self.line is not None:
            return f"{where} (line {self.line}, column {self.column})"
        return where

    def prefix(self) -> str:
        """``"<where>: "`` for an error message, or ``""`` when nothing is known."""
        if not self.source and self.line is None:
            return ""
        return f"{self}: "


UNKNOWN = Loc()
