"""snuc's graph IR: typed ops in a step graph with explicit state edges."""

from snuc.ir.errors import UNKNOWN, Loc, ParseError, SnucError, VerifyError
from snuc.ir.graph import Graph, Node, State, sanitize_name
from snuc.ir.ops import REGISTRY, Op, op_class
from snuc.ir.types import BATCH, DTYPES, TensorType, dtype_name

__all__ = [
    "BATCH",
    "DTYPES",
    "REGISTRY",
    "UNKNOWN",
    "Graph",
    "Loc",
    "Node",
    "Op",
    "ParseError",
    "SnucError",
    "State",
    "TensorType",
    "VerifyError",
    "dtype_name",
    "op_class",
    "sanitize_name",
]
