"""Programs of the modelled chip and their text assembly (backends/isa.py, asm.py).

Golden assembly of scheduled graphs (``SNUC_UPDATE_GOLDEN=1`` rewrites it), round trips
of golden and random programs, one-line parse errors with line and column, the
structural rules a program keeps when built, and the timing rules
``verify_timing`` checks.
"""

from __future__ import annotations

import os
import re
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from test_schedule import TARGET, Chip, snu_stack, split_recurrent_layer

from snuc.backends.asm import parse_program, print_program
from snuc.backends.isa import (
    CORE,
    GDU,
    Adc,
    Block,
    Decl,
    Mvm,
    Program,
    ProgramError,
    Recv,
    Send,
    Sync,
    Tile,
    Unit,
    VectorOp,
)
from snuc.backends.program import compile_program, emit_program
from snuc.backends.schedule import schedule_graph
from snuc.backends.timing import verify_timing
from snuc.ir import REGISTRY, Graph, ParseError, SnucError, TensorType, VerifyError
from snuc.ir.machine import HOST
from snuc.ir.target import with_overrides
from snuc.ir.text import parse_graph

GOLDEN = Path(__file__).parent / "golden" / "asm"
HERE = Path(__file__).parent


def _tiled_conv() -> Graph:
    ir = HERE / "golden" / "ir"
    return parse_graph((ir / "tiled.ir").read_text(), dict(np.load(ir / "tiled.npz")))


def _softmax_head() -> Graph:
    g = snu_stack((16, 24, 10), crossbars=(0, 1))
    (probs,) = g.add_node(REGISTRY["dig.softmax"](axis=-1), [g.outputs[0]], ["probs"])
    g.outputs[0] = probs
    return g


GOLDEN_GRAPHS = {
    "stack": lambda: snu_stack((16, 24, 24, 8)),
    "split_rnn": split_recurrent_layer,
    "tiled_conv": _tiled_conv,
    "softmax_head": _softmax_head,
}


@pytest.mark.parametrize("case", list(GOLDEN_GRAPHS))
def test_golden_assembly(case):
    """The program of each graph prints as its golden file, which round-trips."""
    path = GOLDEN / f"{case}.s"
    program = compile_program(GOLDEN_GRAPHS[case](), TARGET)
    verify_timing(program)
    if os.environ.get("SNUC_UPDATE_GOLDEN"):
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(print_program(program))
    text = path.read_text()
    assert print_program(program) == text
    parsed = parse_program(text, filename=str(path))
    assert parsed == program
    assert print_program(parsed) == text
    verify_timing(parsed)


def test_program_follows_the_schedule():
    graph = split_recurrent_layer()
    schedule = schedule_graph(graph, TARGET)
    program = emit_program(graph, schedule)
    assert program.ii == schedule.ii
    assert program.latency_cycles == schedule.latency_cycles
    assert program.lower_bound == schedule.cycles_lower_bound
    assert program.energy_pj_per_timestep() == pytest.approx(schedule.energy_pj_per_timestep())
    assert program.busy_cycles() == schedule.busy_cycles()
    sends = [i for _, i in program.instructions() if isinstance(i, Send)]
    recvs = [i for _, i in program.instructions() if isinstance(i, Recv)]
    assert len(sends) == len(recvs) == sum(op.mnemonic == "send" for op in schedule.ops)
    syncs = {i.start for _, i in program.instructions() if isinstance(i, Sync)}
    assert syncs == {k * program.ii for k in range(1, schedule.stages + 1)}


def test_emitting_a_schedule_of_another_graph_is_an_error():
    schedule = schedule_graph(snu_stack(), TARGET)
    with pytest.raises(SnucError, match="schedule is of graph @stack, not @split_rnn"):
        emit_program(split_recurrent_layer(), schedule)


def test_buffers_read_in_later_timesteps_get_copies():
    program = compile_program(snu_stack(), TARGET)
    copies = {(str(b.unit), d.name): d.copies for b in program.blocks for d in b.declared("buf")}
    # y0_new is read by the next step's snu on core 0 (through state y0): over ii cycles.
    assert copies[("core 0", "%y0_new")] == 2
    assert copies[("core 0", "%a0_t")] == 1


def test_header_and_cost_comments_are_printed_and_ignored():
    program = compile_program(snu_stack(), TARGET)
    text = print_program(program)
    assert text.startswith("# snuc assembly (docs/isa.md): @stack on pcm-256x256\n")
    assert "# 133 cycles, 3350.0 pJ" in text  # the first layer's MVM drives 64 of 256 rows
    stripped = re.sub(r"#[^\n]*", "# edited", text)
    assert parse_program(stripped) == program


# --------------------------------------------------------------------------- random programs


_UNARY = ["relu", "step", "sigmoid", "tanh", "neg"]
_BINARY = ["add", "sub", "mul", "acc", "scale", "greater"]


class _ProgramDraw:
    """Builds a random program that keeps every structural rule (not the timing ones)."""

    def __init__(self, draw) -> None:
        self.draw = draw
        cores = draw(st.integers(1, 4))
        chips = draw(st.integers(1, 2))
        self.target = with_overrides(
            TARGET,
            name=draw(st.sampled_from(["pcm-256x256", "my chip", 'q"uote\\d'])),
            cores=cores,
            chips=chips,
            g_max_us=draw(st.floats(0.1, 1000.0)),
            mvm_cycles=draw(st.integers(1, 500)),
            digital_lanes=draw(st.integers(1, 64)),
        )
        crossbars = draw(st.sets(st.integers(0, cores * chips - 1), min_size=1, max_size=3))
        self.units = [HOST, *[Unit(CORE, c) for c in sorted(crossbars)]]
        if chips == 2 and draw(st.booleans()):
            self.units.append(Unit(GDU, 1))
        self.counter = 0
        self.tiles: list[Tile] = []
        self.decls: dict[Unit, list[Decl]] = {u: [] for u in self.units}
        self.code: dict[Unit, list] = {u: [] for u in self.units}
        self.values: dict[Unit, list[str]] = {u: [] for u in self.units}
        self.codes: dict[Unit, list[tuple[str, int]]] = {u: [] for u in self.units}
        # Codes an mvm of the unit itself wrote: only those may be sent on (the checker
        # takes an adc's codes from the tile's own core, never relayed by a third unit).
        self.own_codes: dict[Unit, list[str]] = {u: [] for u in self.units}
        self.received: set[tuple[str, Unit]] = set()
        for unit in self.units[1:]:
            if unit.kind == CORE:
                self.add_tiles(unit)

    def name(self, sigil: str = "%") -> str:
        self.counter += 1
        return f"{sigil}v{self.counter}"

    def type_(self) -> TensorType:
        dtype = self.draw(st.sampled_from(["f32", "i32", "bool", "f64"]))
        dims = self.draw(st.lists(st.integers(1, 9), max_size=2))
        return TensorType(dtype, ("B", *dims))

    def add_tiles(self, unit: Unit) -> None:
        row = 0
        for _ in range(self.draw(st.integers(0, 2))):
            height = self.draw(st.integers(1, 100))
            r0 = self.draw(st.integers(0, 50))
            c0 = self.draw(st.integers(0, 20))
            c1 = c0 + self.draw(st.integers(1, 100))
            lo = self.draw(st.floats(-5, 5))
            self.tiles.append(
                Tile(
                    number=len(self.tiles) * 3 + 1,
                    weight=f"W.{len(self.tiles)}",
                    layer=self.draw(st.text(max_size=5)),
                    rows=(r0, r0 + height),
                    cols=(c0, c1),
                    crossbar=unit.index,
                    xbar_row=row,
                    xbar_col=self.draw(st.integers(0, 256 - 2 * (c1 - c0))),
                    dac=(lo, lo + self.draw(st.floats(0.01, 5))),
                    adc_range=self.draw(st.floats(0, 1e6)),
                )
            )
            row += height

    def buffer(self, unit: Unit, sigil: str = "%", type_: TensorType | None = None) -> str:
        name = self.name(sigil)
        copies = self.draw(st.integers(1, 3))
        self.decls[unit].append(Decl("buf", name, type_ or self.type_(), copies=copies))
        return name

    def start(self) -> int:
        return self.draw(st.integers(0, 5000))

    def step(self) -> None:
        unit = self.draw(st.sampled_from(self.units))
        values = self.values[unit]
        my_tiles = [t for t in self.tiles if t.core == unit]
        choices = ["sync", "const", "input" if unit == HOST else "state"]
        if values:
            choices += ["vector", "vector", "send"]
            if my_tiles:
                choices += ["mvm"] * 3
        if self.codes[unit]:
            choices += ["adc"] * 2
        kind = self.draw(st.sampled_from(choices))
        getattr(self, f"add_{kind}")(unit, values, my_tiles)

    def add_sync(self, unit, values, tiles) -> None:
        self.code[unit].append(Sync(self.start()))

    def add_const(self, unit, values, tiles) -> None:
        name = self.name("@")
        self.decls[unit].append(Decl("const", name, self.type_()))
        values.append(name)

    def add_input(self, unit, values, tiles) -> None:
        name = self.name()
        self.decls[unit].append(Decl("input", name, self.type_()))
        values.append(name)

    def add_state(self, unit, values, tiles) -> None:
        if not values:
            return
        name = self.name()
        following = self.draw(st.sampled_from(values))
        self.decls[unit].append(Decl("state", name, self.type_(), next=following))
        values.append(name)

    def pick(self, values: list[str], count: int) -> tuple[str, ...]:
        return tuple(self.draw(st.sampled_from(values)) for _ in range(count))

    def add_vector(self, unit, values, tiles) -> None:
        form = self.draw(st.sampled_from(["unary", "binary", "snu", "attrs"]))
        attrs: tuple = ()
        if form == "unary":
            opcode, srcs, dsts = self.draw(st.sampled_from(_UNARY)), self.pick(values, 1), 1
        elif form == "binary":
            opcode, srcs, dsts = self.draw(st.sampled_from(_BINARY)), self.pick(values, 2), 1
        elif form == "snu":
            opcode, srcs, dsts = "snu", self.pick(values, 5), 2
            attrs = (("g", self.draw(st.sampled_from(["relu", "identity"]))), ("h", "sigmoid"))
        else:
            opcode, attrs = self.draw(
                st.sampled_from(
                    [
                        ("transpose", (("perm", (0, 2, 1)),)),
                        ("concat", (("axis", -1),)),
                        ("cast", (("to", "bool"),)),
                        ("leaky_relu", (("alpha", 0.125),)),
                        ("reshape", (("shape", ("B", 3, 1)),)),
                        ("avgpool", (("kernel", (2, 3)), ("count_include_pad", True))),
                    ]
                )
            )
            srcs, dsts = self.pick(values, 2 if opcode == "concat" else 1), 1
        results = tuple(self.buffer(unit) for _ in range(dsts))
        ops = {"snu": 7 if dict(attrs).get("g") == "relu" else 6, "reshape": 0, "avgpool": 6}
        op = VectorOp(
            self.start(),
            opcode,
            results,
            srcs,
            self.draw(st.integers(0, 10_000)),
            ops.get(opcode, 1),
            attrs,
        )
        self.code[unit].append(op)
        values.extend(r for r in results)

    def add_mvm(self, unit, values, tiles) -> None:
        tile = self.draw(st.sampled_from(tiles))
        codes = self.buffer(unit, "$")
        operand = self.draw(st.sampled_from(values))
        rows = tile.rows[1] - tile.rows[0]
        phases, vectors = self.draw(st.integers(1, 4)), self.draw(st.integers(1, 30))
        self.code[unit].append(
            Mvm(self.start(), codes, operand, tile.number, rows, phases, vectors)
        )
        self.codes[unit].append((codes, tile.number))
        self.own_codes[unit].append(codes)

    def add_adc(self, unit, values, tiles) -> None:
        codes, tile = self.draw(st.sampled_from(self.codes[unit]))
        result = self.buffer(unit)
        self.code[unit].append(
            Adc(self.start(), result, codes, tile, self.draw(st.integers(1, 999)))
        )
        values.append(result)

    def add_send(self, unit, values, tiles) -> None:
        sendable = [v for v in values if v.startswith("%")] + self.own_codes[unit]
        others = [u for u in self.units if u != unit]
        if not others or not sendable:
            return
        value, dst = self.draw(st.sampled_from(sendable)), self.draw(st.sampled_from(others))
        if (value, dst) in self.received or any(d.name == value for d in self.decls[dst]):
            return
        self.received.add((value, dst))
        start = self.start()
        self.code[unit].append(Send(start, value, dst, self.draw(st.integers(1, 10**6))))
        self.decls[dst].append(Decl("buf", value, self.type_()))
        self.code[dst].append(Recv(start + self.draw(st.integers(0, 99)), value, unit))
        tile = next((t for c, t in self.codes[unit] if c == value), None)
        if tile is None:
            self.values[dst].append(value)
        else:
            self.codes[dst].append((value, tile))

    def program(self) -> Program:
        for _ in range(self.draw(st.integers(0, 40))):
            self.step()
        host_values = [v for v in self.values[HOST] if v.startswith("%")]
        outputs = (
            self.draw(st.lists(st.sampled_from(host_values), max_size=2, unique=True))
            if (host_values)
            else []
        )
        self.decls[HOST] += [Decl("output", v) for v in outputs]
        blocks = [Block(u, tuple(self.decls[u]), tuple(self.code[u])) for u in self.units]
        return Program(
            name="random",
            target=self.target,
            ii=self.draw(st.integers(1, 10**6)),
            latency_cycles=self.draw(st.integers(0, 10**6)),
            lower_bound=self.draw(st.integers(1, 10**6)),
            tiles=tuple(self.tiles),
            blocks=tuple(blocks),
        )


@st.composite
def programs(draw) -> Program:
    return _ProgramDraw(draw).program()


@settings(max_examples=60, deadline=None)
@given(programs())
def test_random_programs_round_trip(program):
    text = print_program(program)
    parsed = parse_program(text)
    assert parsed == program
    assert print_program(parsed) == text


# --------------------------------------------------------------------------- parse errors


@pytest.fixture(scope="module")
def stack_text() -> str:
    return print_program(compile_program(snu_stack(), TARGET))


def _line_of(text: str, fragment: str) -> tuple[int, int]:
    """1-based line and column of the first ``fragment`` in ``text``."""
    index = text.index(fragment)
    line = text.count("\n", 0, index) + 1
    return line, index - text.rfind("\n", 0, index)


def _edit(text: str, old: str, new: str) -> tuple[str, int, int]:
    line, column = _line_of(text, old)
    return text.replace(old, new, 1), line, column


def _parse_error(text: str) -> str:
    with pytest.raises(ParseError) as info:
        parse_program(text, filename="prog.s")
    message = str(info.value)
    assert "\n" not in message
    return message


def test_syntax_error_names_line_and_column(stack_text):
    text, line, column = _edit(stack_text, "mvm $a1_t", "mvm ?a1_t")
    message = _parse_error(text)
    assert message.startswith(f"prog.s, line {line}, column {column + 4}: unexpected character '?'")
    assert "expected" in message


def test_truncated_text_is_an_error_at_its_end(stack_text):
    message = _parse_error(stack_text[:-20])
    assert "unexpected end of input" in message


def test_reference_to_a_missing_tile_is_an_error_at_its_line(stack_text):
    text, line, _ = _edit(stack_text, "{tile = 1,", "{tile = 9,")
    message = _parse_error(text)
    assert message.startswith(f"prog.s, line {line}, ")
    assert "uses tile 9, which the program does not declare (tiles: 0, 1, 2)" in message


def test_reference_to_a_missing_core_is_an_error_at_its_line(stack_text):
    text, line, _ = _edit(stack_text, "send %x -> core 0", "send %x -> core 64")
    message = _parse_error(text)
    assert message.startswith(f"prog.s, line {line}, ")
    assert "core 64 does not exist: target pcm-256x256 has 64 cores (0..63" in message


def test_reference_to_a_core_without_a_block_is_an_error(stack_text):
    text, line, _ = _edit(stack_text, "send %x -> core 0", "send %x -> core 9")
    message = _parse_error(text)
    assert message.startswith(f"prog.s, line {line}, ")
    assert "names core 9, which has no block in the program" in message


def test_block_for_a_core_the_target_lacks_is_an_error(stack_text):
    text, line, column = _edit(stack_text, "  core 2 {", "  core 99 {")
    message = _parse_error(text)
    assert message.startswith(f"prog.s, line {line}, column {column + 2}: ")
    assert "core 99 does not exist" in message


def test_mvm_of_a_tile_on_another_core_is_an_error(stack_text):
    text, line, _ = _edit(stack_text, "{tile = 1,", "{tile = 2,")
    assert "uses tile 2, which is on crossbar 2, not this core's" in _parse_error(text)


def test_unknown_instruction_is_an_error(stack_text):
    text, line, column = _edit(stack_text, "snu %s0_new", "snoo %s0_new")
    message = _parse_error(text)
    assert message.startswith(f"prog.s, line {line}, column {column}: unknown instruction 'snoo'")


def test_bad_attributes_are_errors(stack_text):
    text, line, _ = _edit(stack_text, 'g = "relu", h', 'g = "tanh", h')
    assert f"line {line}" in (message := _parse_error(text))
    assert "snu: " in message and "g must be 'relu' or 'identity'" in message
    text, _, _ = _edit(stack_text, 'g = "relu", h', "gg = 1, h")
    assert "snu has no attribute 'gg'" in _parse_error(text)
    text, _, _ = _edit(stack_text, "phases = 1,", "phases = 1.5,")
    assert "mvm attribute phases takes an int, got 1.5" in _parse_error(text)
    text, _, _ = _edit(stack_text, "phases = 1, ", "")
    assert "mvm needs phases = ..." in _parse_error(text)


def test_bad_target_parameter_is_an_error_at_its_line(stack_text):
    text, line, column = _edit(stack_text, "mvm_cycles = 133", "mvm_cycles = 0")
    message = _parse_error(text)
    assert message.startswith(f"prog.s, line {line}, column {column}: ")
    assert "'mvm_cycles' = 0 is out of range" in message


def test_undeclared_and_twice_declared_buffers_are_errors(stack_text):
    text, line, _ = _edit(stack_text, "= %a0_t, %s0,", "= %nowhere, %s0,")
    message = _parse_error(text)
    assert (
        f"line {line}" in message and "reads %nowhere, which the block does not declare" in message
    )
    text, _, _ = _edit(
        stack_text, "    buf %a0_t :", "    buf %s0_new : f32[B, 2]\n    buf %a0_t :"
    )
    assert "%s0_new is declared twice" in _parse_error(text)


def test_unknown_dtype_is_an_error(stack_text):
    text, line, column = _edit(stack_text, "input %x : f32", "input %x : f16")
    message = _parse_error(text)
    assert message.startswith(f"prog.s, line {line}, column {column + 11}: unknown dtype 'f16'")


# --------------------------------------------------------------------------- structure


def _tile(number: int, crossbar: int, row: int = 0, cols=(0, 4)) -> Tile:
    return Tile(number, "W", "fc", (0, 8), cols, crossbar, row, 0)


def _program(blocks, tiles=()) -> Program:
    return Program("p", TARGET, 10, 0, 1, tuple(tiles), tuple(blocks))


def test_tiles_must_fit_and_not_overlap():
    with pytest.raises(ProgramError, match="tiles 1 and 2 overlap on crossbar 0"):
        _program([], [_tile(1, 0), _tile(2, 0, row=4)])
    _program([], [_tile(1, 0), _tile(2, 0, row=8)])
    with pytest.raises(ProgramError, match=r"tile 1 \(8 x 260 devices .* does not fit"):
        _program([], [_tile(1, 0, cols=(0, 130))])
    with pytest.raises(ProgramError, match="tile 1 is declared twice"):
        _program([], [_tile(1, 0), _tile(1, 1)])


def test_instructions_run_only_where_they_can():
    x = Decl("input", "%x", TensorType("f32", ("B", 8)))
    codes = Decl("buf", "$y", TensorType("i32", ("B", 4)))
    mvm = Mvm(0, "$y", "%x", 1, 8)
    with pytest.raises(ProgramError, match="only a core runs mvm"):
        _program([Block(HOST, (x, codes), (mvm,))], [_tile(1, 0)])
    probs = Decl("buf", "%p", TensorType("f32", ("B", 8)))
    state = Decl("state", "%x", TensorType("f32", ("B", 8)), next="%p")
    softmax = VectorOp(0, "softmax", ("%p",), ("%x",), 8, 4, (("axis", -1),))
    with pytest.raises(ProgramError, match="only a GDU runs softmax, not an LDU"):
        _program([Block(Unit(CORE, 0), (state, probs), (softmax,))])
    with pytest.raises(ProgramError, match="input %x belongs in a gdu block"):
        _program([Block(Unit(CORE, 0), (x,), ())])


def test_adc_needs_codes_of_its_tile():
    x = Decl("input", "%x", TensorType("f32", ("B", 8)))
    block = Block(
        Unit(CORE, 0),
        (
            Decl("state", "%s", TensorType("f32", ("B", 8)), next="%s"),
            Decl("buf", "$y", TensorType("i32", ("B", 4))),
            Decl("buf", "%y", TensorType("f32", ("B", 4))),
        ),
        (Mvm(0, "$y", "%s", 1, 8), Adc(133, "%y", "$y", 2, 4)),
    )
    with pytest.raises(ProgramError, match=r"adc at cycle 133 reads \$y, which no mvm of tile 2"):
        _program([Block(HOST, (x,), ()), block], [_tile(1, 0), _tile(2, 0, row=8)])


def test_sends_need_one_matching_recv():
    x = Decl("input", "%x", TensorType("f32", ("B", 8)))
    send = Send(0, "%x", Unit(CORE, 0), 32)
    core = Block(Unit(CORE, 0))
    with pytest.raises(ProgramError, match="needs one matching recv of %x in core 0, found 0"):
        _program([Block(HOST, (x,), (send,)), core])
    received = Block(
        Unit(CORE, 0), (Decl("buf", "%x", TensorType("f32", ("B", 8))),), (Recv(4, "%x", HOST),)
    )
    _program([Block(HOST, (x,), (send,)), received])
    with pytest.raises(ProgramError, match="core 0 has two blocks"):
        _program([Block(HOST, (x,), (send,)), received, received])


def test_instruction_fields_check_themselves():
    with pytest.raises(VerifyError, match="mvm result must be \\$name"):
        Mvm(0, "%y", "%x", 0, 8)
    with pytest.raises(VerifyError, match="start cycle must be an int >= 0"):
        Sync(-1)
    with pytest.raises(VerifyError, match="snu takes 7 ops per element, got 3"):
        VectorOp(0, "snu", ("%s", "%y"), ("%a", "%s", "%y", "@l", "@b"), 8, 3, ())
    with pytest.raises(VerifyError, match="add takes 2 operands, got 1"):
        VectorOp(0, "add", ("%z",), ("%x",), 8, 1)
    with pytest.raises(VerifyError, match="unknown instruction 'fft'"):
        VectorOp(0, "fft", ("%z",), ("%x",), 8, 1)
    with pytest.raises(VerifyError, match="send window must be"):
        Send(0, "%x", HOST, 8, (4, 2))
    op = VectorOp(0, "leaky_relu", ("%z",), ("%x",), 8, 1, (("alpha", 1),))
    assert op.attrs == (("alpha", 1.0),) and isinstance(op.attrs[0][1], float)
    assert op.ir_op() == REGISTRY["dig.leaky_relu"](alpha=1.0)


# --------------------------------------------------------------------------- timing


def _retimed(program: Program, unit: Unit, mnemonic: str, start: int) -> Program:
    """``program`` with the first ``mnemonic`` of ``unit``'s block moved to ``start``."""
    blocks = []
    for block in program.blocks:
        if block.unit == unit:
            code = list(block.instructions)
            i = next(k for k, instr in enumerate(code) if instr.mnemonic == mnemonic)
            code[i] = replace(code[i], start=start)
            block = replace(block, instructions=tuple(code))
        blocks.append(block)
    return replace(program, blocks=tuple(blocks))


def test_verify_timing_catches_an_operand_read_too_early():
    program = compile_program(snu_stack(), TARGET)
    verify_timing(program)
    early = _retimed(program, Unit(CORE, 1), "snu", 0)
    with pytest.raises(VerifyError, match=r"core 1: snu at cycle 0 reads %a1_t, but adc at cycle"):
        verify_timing(early)


def test_verify_timing_catches_a_crossbar_used_twice():
    graph = snu_stack((32, 64, 64, 32), crossbars=(0, 0, 0), chip=Chip())
    program = compile_program(graph, TARGET)
    verify_timing(program)
    mvms = [i for i in program.block(Unit(CORE, 0)).instructions if isinstance(i, Mvm)]
    clash = _retimed(program, Unit(CORE, 0), "mvm", mvms[1].start + 1)
    with pytest.raises(VerifyError, match=r"both hold xbar 0 at cycle"):
        verify_timing(clash)


def test_verify_timing_catches_a_late_recv_and_a_wrong_latency():
    program = compile_program(snu_stack(), TARGET)
    late = _retimed(program, Unit(CORE, 0), "recv", 99)
    with pytest.raises(VerifyError, match=r"send of %x at cycle 0 arrives at core 0 at cycle 4"):
        verify_timing(late)
    with pytest.raises(VerifyError, match="declares latency 1, but its last instruction ends"):
        verify_timing(replace(program, latency_cycles=1))
    with pytest.raises(VerifyError, match="below its lower bound"):
        verify_timing(replace(program, lower_bound=program.ii + 1))


def test_verify_timing_catches_too_few_buffer_copies():
    program = compile_program(snu_stack(), TARGET)
    blocks = []
    for block in program.blocks:
        decls = tuple(replace(d, copies=1) if d.kind == "buf" else d for d in block.decls)
        blocks.append(replace(block, decls=decls))
    with pytest.raises(VerifyError, match=r"needs 2 copies at ii = 133, not 1"):
        verify_timing(replace(program, blocks=tuple(blocks)))


def test_verify_timing_catches_a_longer_hold_than_ii():
    program = compile_program(snu_stack(), TARGET)
    with pytest.raises(VerifyError, match="holds xbar 0 for 133 cycles, more than ii = 100"):
        verify_timing(replace(program, ii=100, lower_bound=1))


def test_gdu_instructions_and_codes_transfers_round_trip():
    program = compile_program(split_recurrent_layer(), TARGET)
    text = print_program(program)
    assert re.search(r"send \$r_t(_1)? -> core \d \{bytes = 100\}", text)
    assert parse_program(text) == program
    assert GDU == "gdu"


def test_a_string_attribute_reading_b_stays_a_string(stack_text):
    """Regression (found by the random round trip): a tile whose layer is named ``B`` was
    printed bare, as the batch dimension, and did not parse back."""
    program = parse_program(stack_text)
    first = program.tiles[0]
    renamed = replace(program, tiles=(replace(first, layer="B"), *program.tiles[1:]))
    text = print_program(renamed)
    assert 'layer = "B"' in text
    assert parse_program(text) == renamed
