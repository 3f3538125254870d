"""The canonical text form of the IR: :func:`print_graph` and :func:`parse_graph`.

The format is docs/ir.md's "Text form" and the grammar is ``ir.lark``. Printing is
deterministic and parsing rebuilds the graph through :class:`Graph`'s public API, so
``print_graph(parse_graph(text)) == text`` for printed text and
``parse_graph(print_graph(g), large_constants(g)) == g``. Floats print as Python's
``repr(float(v))``, the shortest text that reads back to the same float64, which holds
every float32 exactly: constants and attributes survive the round trip bit for bit.
"""

from __future__ import annotations

import difflib
import functools
import json
import math
import typing
from collections.abc import Callable, Mapping
from dataclasses import fields
from importlib import resources

import numpy as np
from lark import Lark, Token, Tree
from lark.exceptions import UnexpectedCharacters, UnexpectedInput, UnexpectedToken

from snuc.ir.errors import UNKNOWN, Loc, ParseError, VerifyError
from snuc.ir.graph import Graph, Node
from snuc.ir.ops import REGISTRY, Op
from snuc.ir.types import BATCH, DTYPES, Dim, TensorType

INLINE_LIMIT = 16
"""Constants with at most this many elements print their values in the text."""

# Attribute types of the text form: the tokens each accepts and how an error names it.
_ACCEPTS: dict[object, tuple[str, ...]] = {
    bool: ("TRUE", "FALSE"),
    int: ("INT",),
    float: ("INT", "FLOAT"),
    str: ("STRING",),
    Dim: ("INT", "BATCH"),
}
_NOUNS: dict[object, tuple[str, str]] = {
    bool: ("true or false", "booleans"),
    int: ("an int", "ints"),
    float: ("a float", "floats"),
    str: ("a string", "strings"),
    Dim: ("an int or B", "ints or B"),
}
# Named terminals of ir.lark, as a syntax error names what it expected.
_TERMINAL_NOUNS = {
    "VALUE": "a %value",
    "GLOBAL": "an @name",
    "OPNAME": "an op name",
    "NAME": "a name",
    "INT": "an int",
    "FLOAT": "a float",
    "STRING": "a string",
    "$END": "end of input",
}


# --------------------------------------------------------------------------- printing


def large_constants(graph: Graph) -> dict[str, np.ndarray]:
    """The constants whose values the text leaves out; they travel beside it (an .npz)."""
    return {name: arr for name, arr in graph.constants.items() if arr.size > INLINE_LIMIT}


def print_graph(graph: Graph) -> str:
    """The canonical text of ``graph``, one item per line, ending with a newline."""
    lines = [f"graph @{graph.name} {{"]
    for name, arr in graph.constants.items():
        line = f"const @{name} : {TensorType.of(arr)}"
        if arr.size <= INLINE_LIMIT:
            line += f" = {_format_array(arr)}"
        lines.append(line)
    lines += [f"input %{name} : {graph.type_of(name)}" for name in graph.inputs]
    lines += [
        f"state %{s.name} : {graph.type_of(s.name)} -> {_ref(graph, s.next)}" for s in graph.states
    ]
    lines += [_format_node(graph, node) for node in graph.nodes()]
    lines += [f"output {_ref(graph, name)}" for name in graph.outputs]
    return "\n  ".join(lines) + "\n}\n"


def _ref(graph: Graph, name: str) -> str:
    return f"@{name}" if graph.is_constant(name) else f"%{name}"


def _format_node(graph: Graph, node: Node) -> str:
    results = ", ".join(f"%{o}" for o in node.outputs)
    operands = ", ".join(_ref(graph, v) for v in node.inputs)
    text = f"{results} = {node.op.NAME}({operands})"
    hints = _attr_types(type(node.op))
    if hints:
        attrs = (
            f"{k} = {_format_attr(v, hints[k])}"
            for k, v in node.op.attrs().items()
            if k not in node.op.QUIET or v != _defaults(type(node.op))[k]
        )
        text += " {" + ", ".join(attrs) + "}"
    text += " : " + ", ".join(str(graph.type_of(o)) for o in node.outputs)
    if node.loc.source:
        text += f" loc({_quote(node.loc.source)})"
    return text


def _format_array(arr: np.ndarray) -> str:
    """A scalar bare, anything else as a flat row-major list."""
    kind = arr.dtype.kind
    items = [_format_element(v, kind) for v in arr.ravel().tolist()]
    return items[0] if arr.ndim == 0 else "[" + ", ".join(items) + "]"


def _format_element(value: object, kind: str) -> str:
    if kind == "f":
        return repr(float(value))
    if kind == "b":
        return "true" if value else "false"
    return str(int(value))


def _format_attr(value: object, hint: object) -> str:
    if typing.get_origin(hint) is tuple:
        return "[" + ", ".join(_format_attr(v, typing.get_args(hint)[0]) for v in value) + "]"
    if hint is bool:
        return "true" if value else "false"
    if hint is float:
        return repr(float(value))
    if hint is str:
        return _quote(value)
    return "B" if value == BATCH else str(int(value))


def _quote(text: str) -> str:
    return json.dumps(text, ensure_ascii=False)


@functools.cache
def _defaults(cls: type[Op]) -> dict[str, object]:
    """The op class's attribute defaults, by name."""
    return {f.name: f.default for f in fields(cls)}


@functools.cache
def _attr_types(cls: type[Op]) -> dict[str, object]:
    """The op's attribute names and types, in declaration order."""
    hints = typing.get_type_hints(cls)
    types = {f.name: hints[f.name] for f in fields(cls)}
    for name, hint in types.items():
        element = typing.get_args(hint)[0] if typing.get_origin(hint) is tuple else hint
        if element not in _ACCEPTS:
            raise TypeError(f"{cls.NAME}.{name}: attribute type {hint} has no text form")
    return types


# --------------------------------------------------------------------------- parsing


@functools.cache
def _parser() -> Lark:
    grammar = resources.files("snuc.ir").joinpath("ir.lark").read_text(encoding="utf-8")
    return Lark(grammar, parser="lalr", maybe_placeholders=True)


def parse_graph(
    text: str,
    arrays: Mapping[str, np.ndarray] | None = None,
    *,
    filename: str = "<text>",
) -> Graph:
    """Parse the text form back into a verified :class:`Graph`.

    Args:
        text: the text IR.
        arrays: values of the constants the text declares without inline values, by name.
        filename: names the text in error messages.

    Returns:
        The graph; every node's ``loc`` holds its ``loc("...")`` source (or ``""``) and the
        line and column where the node starts.

    Raises:
        ParseError: one line naming the file, line and column, and what was expected.
    """
    try:
        tree = _parser().parse(text)
    except UnexpectedInput as e:
        raise syntax_error(e, text, filename, _describe_terminal) from None
    name, *items = tree.children
    return _Builder(name, arrays or {}, filename).build(items)


def syntax_error(
    e: UnexpectedInput, text: str, filename: str, describe: Callable[[str], str]
) -> ParseError:
    """Lark's exception as one line: where, what was found, what was expected.

    Shared by every lark grammar of snuc (the IR here, the assembly in ``backends``);
    ``describe`` names a terminal in words (``"a value name"``) or by its pattern.
    """
    line, column = e.line, e.column
    if isinstance(e, UnexpectedCharacters):
        found, expected = f"character {text[e.pos_in_stream]!r}", e.allowed
    elif isinstance(e, UnexpectedToken) and e.token.type != "$END":
        found, expected = repr(e.token.value), e.expected
    else:
        found, expected = "end of input", getattr(e, "expected", ())
        line = text.count("\n") + 1
        column = len(text) - text.rfind("\n")
    # LALR merges states, so Lark's own expected set can be too wide; ask the parser.
    if getattr(e, "interactive_parser", None) is not None:
        expected = e.interactive_parser.accepts()
    wanted = sorted({describe(t) for t in expected or ()})
    return ParseError(
        f"{filename}, line {line}, column {column}: unexpected {found}; "
        f"expected {' or '.join(wanted) or 'nothing more'}"
    )


def _describe_terminal(name: str) -> str:
    if name in _TERMINAL_NOUNS:
        return _TERMINAL_NOUNS[name]
    return repr(_parser().get_terminal(name).pattern.value)


class _Builder:
    """Rebuilds a graph from the parse tree, item by item, in text order.

    Each check raises a ParseError at the token at fault before the Graph API could raise
    a VerifyError without a position; only :meth:`Graph.verify`'s whole-graph checks (an
    input, an output, finite constants) are reported at the graph's name.
    """

    def __init__(self, name: Token, arrays: Mapping[str, np.ndarray], filename: str) -> None:
        self.name = name
        self.arrays = arrays
        self.filename = filename
        self.graph = Graph(name[1:])
        self.defined: dict[str, Token] = {}
        # A state's next value is defined further down, by a node.
        self.pending_states: list[tuple[str, Token]] = []

    def error(self, at: Token, message: str) -> ParseError:
        return ParseError(f"{self.filename}, line {at.line}, column {at.column}: {message}")

    def build(self, items: list[Tree]) -> Graph:
        for item in items:
            getattr(self, f"add_{item.data}")(*item.children)
        for state, next_tok in self.pending_states:
            value = self.ref(next_tok)
            want, got = self.graph.type_of(state), self.graph.type_of(value)
            if want != got:
                raise self.error(next_tok, f"state %{state}: {want} takes {next_tok}: {got}")
            self.graph.set_next(state, value)
        try:
            self.graph.verify()
        except VerifyError as e:
            raise self.error(self.name, str(e)) from None
        return self.graph

    # ---------------------------------------------------------------- items

    def add_const(self, name: Token, type_tree: Tree, literal: Token | Tree | None) -> None:
        type_ = self.tensor_type(type_tree)
        if type_.has_batch:
            raise self.error(name, f"constant {name} cannot have the batch dimension B")
        if literal is None:
            array = self.array_beside(name, type_)
        else:
            array = self.array_inline(name, type_, literal)
        self.define(name)
        self.graph.add_constant(name[1:], array, self.loc(name))

    def add_input(self, name: Token, type_tree: Tree) -> None:
        type_ = self.tensor_type(type_tree)
        self.define(name)
        self.graph.add_input(name[1:], type_, self.loc(name))

    def add_state(self, name: Token, type_tree: Tree, next_tok: Token) -> None:
        type_ = self.tensor_type(type_tree)
        self.define(name)
        self.graph.add_state(name[1:], type_, self.loc(name))
        self.pending_states.append((name[1:], next_tok))

    def add_node(
        self,
        results: Tree,
        opname: Token,
        refs: Tree | None,
        attrs: Tree | None,
        types: Tree,
        loc: Tree | None,
    ) -> None:
        cls = REGISTRY.get(opname)
        if cls is None:
            close = difflib.get_close_matches(opname, REGISTRY, n=3)
            hint = f"did you mean {' or '.join(close)}?" if close else "see snuc.ir.REGISTRY"
            raise self.error(opname, f"unknown op {str(opname)!r}; {hint}")
        op = self.op(cls, opname, attrs)
        operands = tuple(self.ref(t) for t in refs.children) if refs else ()
        outputs = results.children
        try:
            op.check_arity(len(operands), UNKNOWN)
            computed = op.infer(
                tuple(self.graph.type_of(v) for v in operands),
                tuple(self.graph.constants.get(v) for v in operands),
            )
        except VerifyError as e:
            raise self.error(opname, str(e)) from None
        if len(outputs) != len(computed):
            raise self.error(
                outputs[0], f"{cls.NAME} has {len(computed)} results, but {len(outputs)} are named"
            )
        if len(types.children) != len(outputs):
            raise self.error(
                types.children[0], f"{len(outputs)} results but {len(types.children)} types"
            )
        for out, type_tree, want in zip(outputs, types.children, computed, strict=True):
            declared = self.tensor_type(type_tree)
            if declared != want:
                raise self.error(
                    type_tree.children[0],
                    f"{cls.NAME} {out} declares {declared} but computes {want}",
                )
            self.define(out)
        source = json.loads(loc.children[0]) if loc else ""
        self.graph.add_node(op, operands, [o[1:] for o in outputs], self.loc(outputs[0], source))

    def add_output(self, ref: Token) -> None:
        self.graph.outputs.append(self.ref(ref))

    # ---------------------------------------------------------------- names

    def loc(self, at: Token, source: str = "") -> Loc:
        return Loc(source, at.line, at.column)

    def define(self, tok: Token) -> None:
        first = self.defined.get(tok[1:])
        if first is not None:
            raise self.error(
                tok, f"{tok} is already defined at line {first.line}, column {first.column}"
            )
        self.defined[tok[1:]] = tok

    def ref(self, tok: Token) -> str:
        """The value ``tok`` names; ``@`` must name a constant and ``%`` anything else."""
        name = tok[1:]
        if name not in self.defined:
            raise self.error(tok, f"undefined value {tok}")
        is_constant = self.graph.is_constant(name)
        if tok.type == "GLOBAL" and not is_constant:
            raise self.error(tok, f"{tok} is not a constant; write %{name}")
        if tok.type == "VALUE" and is_constant:
            raise self.error(tok, f"{tok} is a constant; write @{name}")
        return name

    # ---------------------------------------------------------------- types and values

    def tensor_type(self, tree: Tree) -> TensorType:
        dtype, *dims = tree.children
        if dtype not in DTYPES:
            raise self.error(
                dtype, f"unknown dtype {str(dtype)!r}; expected one of {', '.join(DTYPES)}"
            )
        shape = tuple(BATCH if d.type == "BATCH" else int(d) for d in dims if d is not None)
        try:
            return TensorType(str(dtype), shape)
        except VerifyError as e:
            raise self.error(dtype, str(e)) from None

    def array_beside(self, name: Token, type_: TensorType) -> np.ndarray:
        """A large constant's value, from ``arrays``."""
        if name[1:] not in self.arrays:
            raise self.error(
                name,
                f"constant {name} : {type_} has no values in the text and no array "
                f"{name[1:]!r} was given; pass arrays= (the .npz beside the text)",
            )
        array = np.asarray(self.arrays[name[1:]])
        if array.dtype != type_.np_dtype or array.shape != type_.shape:
            raise self.error(
                name,
                f"array {name[1:]!r} is {array.dtype} of shape {list(array.shape)}, "
                f"but {name} is declared {type_}",
            )
        return array

    def array_inline(self, name: Token, type_: TensorType, literal: Token | Tree) -> np.ndarray:
        """A small constant's value, from the text: a bare scalar or a flat list."""
        if isinstance(literal, Tree):
            if type_.rank == 0:
                raise self.error(name, f"scalar constant {name} takes a bare value, not a list")
            items = [t for t in literal.children if t is not None]
        else:
            if type_.rank != 0:
                raise self.error(name, f"constant {name} : {type_} takes a list of values")
            items = [literal]
        if len(items) != type_.static_size():
            raise self.error(
                name,
                f"constant {name} : {type_} takes {type_.static_size()} values, got {len(items)}",
            )
        values = [self.element(t, type_.dtype) for t in items]
        return np.array(values, dtype=type_.np_dtype).reshape(type_.shape)

    def element(self, tok: Token, dtype: str) -> object:
        """One constant element, checked against the constant's dtype."""
        kind = DTYPES[dtype].kind
        if kind == "f" and tok.type in ("INT", "FLOAT"):
            value = float(tok)
            with np.errstate(over="ignore"):
                fits = not math.isfinite(value) or np.isfinite(DTYPES[dtype].type(value))
            if fits:
                return value
        elif kind == "i" and tok.type == "INT":
            info = np.iinfo(DTYPES[dtype])
            if info.min <= int(tok) <= info.max:
                return int(tok)
        elif kind == "b" and tok.type in ("TRUE", "FALSE"):
            return tok.type == "TRUE"
        raise self.error(tok, f"{tok} is not a valid {dtype} value")

    def op(self, cls: type[Op], opname: Token, attrs: Tree | None) -> Op:
        """The op with the attributes the text gives (defaults for the others)."""
        types = _attr_types(cls)
        values: dict[str, object] = {}
        for attr in attrs.children if attrs else ():
            if attr is None:
                continue
            key, literal = attr.children
            if key not in types:
                known = ", ".join(types) or "none"
                raise self.error(key, f"{cls.NAME} has no attribute {str(key)!r} (it has: {known})")
            if key in values:
                raise self.error(key, f"attribute {key} is given twice")
            values[str(key)] = self.attr_value(cls, key, literal, types[key])
        try:
            return cls(**values)
        except VerifyError as e:
            message = str(e) if str(e).startswith(cls.NAME) else f"{cls.NAME}: {e}"
            raise self.error(opname, message) from None

    def attr_value(self, cls: type[Op], key: Token, literal: Token | Tree, hint: object) -> object:
        if typing.get_origin(hint) is tuple:
            element = typing.get_args(hint)[0]
            if isinstance(literal, Tree):
                items = [t for t in literal.children if t is not None]
                return tuple(self.attr_value(cls, key, t, element) for t in items)
            noun = f"a list of {_NOUNS[element][1]}"
        elif isinstance(literal, Token) and literal.type in _ACCEPTS[hint]:
            return _token_value(literal, hint)
        else:
            noun = _NOUNS[hint][0]
        at = literal if isinstance(literal, Token) else key
        shown = "a list" if isinstance(literal, Tree) else str(literal)
        raise self.error(at, f"{cls.NAME} attribute {key} takes {noun}, got {shown}")


def _token_value(tok: Token, hint: object) -> object:
    if tok.type == "STRING":
        return json.loads(tok)
    if tok.type in ("TRUE", "FALSE"):
        return tok.type == "TRUE"
    if tok.type == "BATCH":
        return BATCH
    return float(tok) if hint is float else int(tok)
