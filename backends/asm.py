"""The text assembly of chip programs: :func:`print_program` and :func:`parse_program`.

The format is docs/isa.md's "Assembly" and the grammar is ``asm.lark``. Printing is
deterministic and parsing rebuilds the program through its constructors, so
``print_program(parse_program(text)) == text`` for printed text and
``parse_program(print_program(p)) == p``. The printer adds comments (a header, each
instruction's cycles and energy); the parser ignores every comment. Floats print as
Python's ``repr(float(v))``, which reads back to the same float.

A syntax error is a :class:`~snuc.ir.errors.ParseError` naming line and column; so is a
program that breaks a rule of docs/isa.md, such as a reference to a tile or a core that
does not exist.
"""

from __future__ import annotations

import functools
import json
import typing
from dataclasses import replace
from importlib import resources

from lark import Lark, Token, Tree
from lark.exceptions import UnexpectedInput

from snuc.backends.isa import Block, Decl, Program, ProgramError, Tile
from snuc.ir.errors import ParseError, SnucError, VerifyError
from snuc.ir.machine import DIGITAL_OPS, Unit
from snuc.ir.machine_isa import (
    Adc,
    Instruction,
    Mvm,
    Recv,
    Send,
    Sync,
    VectorOp,
    attr_noun,
    attr_types,
)
from snuc.ir.target import TargetSpec
from snuc.ir.text import syntax_error
from snuc.ir.types import BATCH, DTYPES, TensorType

_TERMINAL_NOUNS = {
    "VALUE": "a %buffer",
    "GLOBAL": "an @name",
    "CODES": "a $codes buffer",
    "NAME": "a name",
    "UNIT_KIND": "core or gdu",
    "INT": "an int",
    "FLOAT": "a float",
    "STRING": "a string",
    "$END": "end of input",
}

# Fields of each instruction printed in its braces, in order, with their types.
_MVM_FIELDS = {"tile": int, "rows": int, "phases": int, "vectors": int}
_ADC_FIELDS = {"tile": int, "n": int}
_VECTOR_FIELDS = {"n": int, "ops": int}
_SEND_FIELDS = {"bytes": int, "window": tuple[int, ...]}
_TIMING_FIELDS = {"ii": int, "latency": int, "lower_bound": int}
_TILE_FIELDS = {
    "layer": str,
    "rows": tuple[int, ...],
    "cols": tuple[int, ...],
    "crossbar": int,
    "xbar_row": int,
    "xbar_col": int,
    "dac": tuple[float, ...],
    "adc_range": float,
}
_COPY_FIELDS = {"copy_of": int, "copy": int}  # a copy of a duplicated tile only


# --------------------------------------------------------------------------- printing


def print_program(program: Program) -> str:
    """The canonical assembly of ``program``, ending with a newline."""
    target = program.target
    stages = -(-program.latency_cycles // program.ii) if program.latency_cycles else 1
    width = len(str(max((i.start for _, i in program.instructions()), default=0)))
    lines = [
        f"# snuc assembly (docs/isa.md): @{program.name} on {target.name}",
        f"# a timestep every {program.ii} cycles (lower bound {program.lower_bound}); "
        f"latency {program.latency_cycles} cycles, {stages} pipeline stage(s)",
        f"program @{program.name} {{",
        f"  target {_quote(target.name)} {{",
        # to_dict: a quiet parameter at its default is left out (ir/target.py ParamInfo).
        *(
            f"    {key} = {_format_value(value)}"
            for key, value in target.to_dict().items()
            if key != "name"
        ),
        "  }",
        "  timing "
        + _format_attrs(
            {
                "ii": program.ii,
                "latency": program.latency_cycles,
                "lower_bound": program.lower_bound,
            }
        ),
    ]
    lines += [f"  {_format_tile(tile)}" for tile in program.tiles]
    for block in program.blocks:
        lines += _format_block(program, block, width)
    lines.append("}")
    return "\n".join(lines) + "\n"


def _format_tile(tile: Tile) -> str:
    names = [*_TILE_FIELDS, *(_COPY_FIELDS if tile.copy_of >= 0 else ())]
    attrs = {name: getattr(tile, name) for name in names}
    return f"tile {tile.number} @{tile.weight} {_format_attrs(attrs)}"


def _format_block(program: Program, block: Block, width: int) -> list[str]:
    lines = [f"  {block.unit} {{"]
    for decl in block.decls:
        if decl.kind != "output":
            lines.append(f"    {_format_decl(decl)}")
    for instr in block.instructions:
        text = f"    {instr.start:>{width}}: {_format_instruction(instr)}"
        if instr.tag is not None:
            text += f" when t mod {instr.tag[0]} = {instr.tag[1]}"
        cost = instr.cost(program.target, block.unit)
        if cost.latency or cost.total_energy_pj:
            cycles = "cycle" if cost.latency == 1 else "cycles"
            text += f"  # {cost.latency} {cycles}, {cost.total_energy_pj:.1f} pJ"
        lines.append(text)
    lines += [f"    output {d.name}" for d in block.declared("output")]
    lines.append("  }")
    return lines


def _format_decl(decl: Decl) -> str:
    text = f"{decl.kind} {decl.name} : {decl.type}"
    if decl.kind == "state":
        text += f" = {decl.next}"
    if decl.copies != 1:
        text += f" copies {decl.copies}"
    return text


def _format_instruction(instr: Instruction) -> str:
    if isinstance(instr, Sync):
        return "sync"
    if isinstance(instr, Recv):
        return f"recv {instr.value} <- {instr.src}"
    if isinstance(instr, Send):
        attrs = {"bytes": instr.nbytes}
        if instr.window is not None:
            attrs["window"] = instr.window
        return f"send {instr.value} -> {instr.dst} {_format_attrs(attrs)}"
    if isinstance(instr, Mvm):
        attrs = {name: getattr(instr, name) for name in _MVM_FIELDS}
    elif isinstance(instr, Adc):
        attrs = {name: getattr(instr, name) for name in _ADC_FIELDS}
    elif isinstance(instr, VectorOp):
        attrs = {**dict(instr.attrs), "n": instr.n, "ops": instr.ops}
    else:
        raise TypeError(f"no assembly for {type(instr).__name__}")
    results, operands = ", ".join(instr.results), ", ".join(instr.operands)
    return f"{instr.mnemonic} {results} = {operands} {_format_attrs(attrs)}"


def _format_attrs(attrs: dict[str, object]) -> str:
    return "{" + ", ".join(f"{k} = {_format_value(v)}" for k, v in attrs.items()) + "}"


def _param_value(token: Token) -> int | float | str:
    """A target parameter's value token as the value: a number or a quoted string."""
    if token.type == "STRING":
        return json.loads(token)
    return float(token) if token.type == "FLOAT" else int(token)


def _format_value(value: object, *, in_list: bool = False) -> str:
    """An attribute value; ``B`` is bare only as a dimension of a list (a shape), so a
    string attribute that happens to read ``B`` (a layer's name) stays quoted."""
    if isinstance(value, tuple | list):
        return "[" + ", ".join(_format_value(v, in_list=True) for v in value) + "]"
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, float):
        return repr(value)
    if isinstance(value, str):
        return "B" if in_list and value == BATCH else _quote(value)
    return str(int(value))  # type: ignore[call-overload]


def _quote(text: str) -> str:
    return json.dumps(text, ensure_ascii=False)


# --------------------------------------------------------------------------- parsing


@functools.cache
def _parser() -> Lark:
    grammar = resources.files("snuc.backends").joinpath("asm.lark").read_text(encoding="utf-8")
    return Lark(grammar, parser="lalr", maybe_placeholders=True)


def parse_program(text: str, *, filename: str = "<asm>") -> Program:
    """Parse assembly text back into a :class:`Program`.

    The program's structure is checked (every tile, unit and buffer it names exists);
    its timing is checked by :func:`snuc.backends.timing.verify_timing`.

    Raises:
        ParseError: one line naming the file, line and column, and what is wrong.
    """
    try:
        tree = _parser().parse(text)
    except UnexpectedInput as e:
        raise syntax_error(e, text, filename, _describe_terminal) from None
    return _Builder(filename).program(tree)


def _describe_terminal(name: str) -> str:
    if name in _TERMINAL_NOUNS:
        return _TERMINAL_NOUNS[name]
    return repr(_parser().get_terminal(name).pattern.value)


class _Builder:
    """Rebuilds a program from the parse tree; remembers where each part came from, so
    that a rule the program breaks is reported at its line and column."""

    def __init__(self, filename: str) -> None:
        self.filename = filename
        self.where: dict[int, Token] = {}

    def error(self, at: Token, message: str) -> ParseError:
        return ParseError(f"{self.filename}, line {at.line}, column {at.column}: {message}")

    def made(self, at: Token, make: typing.Callable[[], object]) -> typing.Any:
        """``make()``, with a VerifyError reported at ``at``; remembers where it was."""
        try:
            item = make()
        except VerifyError as exc:
            raise self.error(at, str(exc)) from None
        self.where[id(item)] = at
        return item

    def program(self, tree: Tree) -> Program:
        name, target_tree, timing_tree, *rest = tree.children
        target = self.target(target_tree)
        timing = self.attrs(timing_tree.children[0], _TIMING_FIELDS, "timing", name)
        tiles = tuple(self.tile(t) for t in rest if t.data == "tile")
        blocks = tuple(self.block(b) for b in rest if b.data == "block")
        try:
            return Program(
                name=name[1:],
                target=target,
                ii=timing["ii"],
                latency_cycles=timing["latency"],
                lower_bound=timing["lower_bound"],
                tiles=tiles,
                blocks=blocks,
            )
        except ProgramError as exc:
            at = self.where.get(id(exc.item), name)
            raise self.error(at, str(exc)) from None

    def target(self, tree: Tree) -> TargetSpec:
        name, *params = tree.children
        values: dict[str, object] = {"name": json.loads(name)}
        for param in params:
            key, value = param.children
            if key in values:
                raise self.error(key, f"target parameter {key} is given twice")
            values[str(key)] = _param_value(value)
            try:  # each value alone, so that an error names its line
                TargetSpec.from_dict({"name": values["name"], str(key): values[str(key)]})
            except SnucError as exc:
                raise self.error(key, str(exc)) from None
        try:
            return TargetSpec.from_dict(values)
        except SnucError as exc:
            raise self.error(name, str(exc)) from None

    def tile(self, tree: Tree) -> Tile:
        number, weight, attrs_tree = tree.children
        fields = {**_TILE_FIELDS, **_COPY_FIELDS}
        attrs = self.attrs(attrs_tree, fields, "tile", number, optional=tuple(_COPY_FIELDS))
        return self.made(number, lambda: Tile(int(number), weight[1:], **attrs))

    def block(self, tree: Tree) -> Block:
        unit_tree, *items = tree.children
        unit = self.unit(unit_tree)
        decls = []
        instructions = []
        for item in items:
            if item.data == "instr":
                instructions.append(self.instruction(item))
            else:
                decls.append(self.decl(item))
        return self.made(
            unit_tree.children[0], lambda: Block(unit, tuple(decls), tuple(instructions))
        )

    def unit(self, tree: Tree) -> Unit:
        kind, index = tree.children
        return self.made(kind, lambda: Unit(str(kind), int(index)))

    def decl(self, tree: Tree) -> Decl:
        kind = tree.data
        name, *rest = tree.children
        if kind == "output":
            return self.made(name, lambda: Decl("output", str(name)))
        type_ = self.tensor_type(rest[0])
        if kind == "state":
            return self.made(name, lambda: Decl("state", str(name), type_, next=str(rest[1])))
        copies = int(rest[1]) if kind == "buf" and rest[1] is not None else 1
        return self.made(name, lambda: Decl(str(kind), str(name), type_, copies=copies))

    def instruction(self, tree: Tree) -> Instruction:
        """The instruction, with its ``when t mod K = j`` tag if it has one."""
        start_tok, body, when = tree.children
        instr = self.untagged(start_tok, body)
        if when is None:
            return instr
        k, j = when.children
        tagged = self.made(k, lambda: replace(instr, tag=(int(k), int(j))))
        self.where[id(tagged)] = self.where[id(instr)]  # rules name the instruction
        return tagged

    def untagged(self, start_tok: Token, body: Tree) -> Instruction:
        start = int(start_tok)
        kind = body.data
        if kind == "sync":
            return self.made(start_tok, lambda: Sync(start))
        if kind == "recv":
            value, unit_tree = body.children
            src = self.unit(unit_tree)
            return self.made(start_tok, lambda: Recv(start, str(value), src))
        if kind == "send":
            value, unit_tree, attrs_tree = body.children
            dst = self.unit(unit_tree)
            attrs = self.attrs(attrs_tree, _SEND_FIELDS, "send", None)
            if "bytes" not in attrs:
                raise self.error(start_tok, "send needs bytes = ...")
            window = attrs.get("window")
            return self.made(
                start_tok, lambda: Send(start, str(value), dst, attrs["bytes"], window)
            )
        opcode, results_tree, operands_tree, attrs_tree = body.children
        results = tuple(str(t) for t in results_tree.children)
        operands = tuple(str(t) for t in operands_tree.children)
        if opcode == "mvm":
            attrs = self.attrs(attrs_tree, _MVM_FIELDS, "mvm", opcode)
            return self.made(
                opcode, lambda: Mvm(start, *self.single(opcode, results, operands), **attrs)
            )
        if opcode == "adc":
            attrs = self.attrs(attrs_tree, _ADC_FIELDS, "adc", opcode)
            return self.made(
                opcode, lambda: Adc(start, *self.single(opcode, results, operands), **attrs)
            )
        info = DIGITAL_OPS.get(str(opcode))
        if info is None:
            raise self.error(
                opcode,
                f"unknown instruction {str(opcode)!r}; expected mvm, adc, send, recv, sync or "
                f"one of {', '.join(DIGITAL_OPS)}",
            )
        fields = {**attr_types(info.op), **_VECTOR_FIELDS}
        values = self.attrs(attrs_tree, fields, str(opcode), None)
        for key in _VECTOR_FIELDS:
            if key not in values:
                raise self.error(opcode, f"{opcode} needs {key} = <int>")
        n, ops = values.pop("n"), values.pop("ops")
        return self.made(
            opcode,
            lambda: VectorOp(start, str(opcode), results, operands, n, ops, tuple(values.items())),
        )

    def single(self, opcode: Token, results: tuple, operands: tuple) -> tuple[str, str]:
        if len(results) != 1 or len(operands) != 1:
            raise self.error(opcode, f"{opcode} takes one result and one operand")
        return results[0], operands[0]

    def tensor_type(self, tree: Tree) -> TensorType:
        dtype, *dims = tree.children
        if dtype not in DTYPES:
            raise self.error(
                dtype, f"unknown dtype {str(dtype)!r}; expected one of {', '.join(DTYPES)}"
            )
        shape = tuple(BATCH if d.type == "BATCH" else int(d) for d in dims if d is not None)
        return self.made(dtype, lambda: TensorType(str(dtype), shape))

    def attrs(
        self,
        tree: Tree | None,
        types: dict[str, object],
        what: str,
        required: Token | None,
        optional: tuple[str, ...] = (),
    ) -> dict[str, typing.Any]:
        """The attributes in braces, each checked against ``types``; when ``required``
        names a token, every one of ``types`` but the ``optional`` ones must be given
        (else an error there)."""
        values: dict[str, object] = {}
        for attr in tree.children if tree is not None else ():
            if attr is None:
                continue
            key, literal = attr.children
            if key not in types:
                known = ", ".join(types) or "none"
                raise self.error(key, f"{what} has no attribute {str(key)!r} (it has: {known})")
            if key in values:
                raise self.error(key, f"attribute {key} is given twice")
            values[str(key)] = self.value(key, literal, types[key], what)
        missing = [k for k in types if k not in values and k not in optional]
        if required is not None and missing:
            raise self.error(required, f"{what} needs {', '.join(f'{k} = ...' for k in missing)}")
        return values

    def value(self, key: Token, literal: Token | Tree, hint: object, what: str) -> object:
        if typing.get_origin(hint) is tuple:
            element = typing.get_args(hint)[0]
            if isinstance(literal, Tree):
                items = [t for t in literal.children if t is not None]
                return tuple(self.value(key, t, element, what) for t in items)
            noun = "a list"
        elif isinstance(literal, Token) and literal.type in _ACCEPTS.get(hint, ("INT", "BATCH")):
            return _token_value(literal, hint)
        else:
            noun = attr_noun(hint)
        at = literal if isinstance(literal, Token) else key
        shown = "a list" if isinstance(literal, Tree) else str(literal)
        raise self.error(at, f"{what} attribute {key} takes {noun}, got {shown}")


_ACCEPTS: dict[object, tuple[str, ...]] = {
    bool: ("TRUE", "FALSE"),
    int: ("INT",),
    float: ("INT", "FLOAT"),
    str: ("STRING",),
}


def _token_value(tok: Token, hint: object) -> object:
    if tok.type == "STRING":
        return json.loads(tok)
    if tok.type in ("TRUE", "FALSE"):
        return tok.type == "TRUE"
    if tok.type == "BATCH":
        return BATCH
    return float(tok) if hint is float else int(tok)
