"""Where the chip lives (ir/machine.py, ir/machine_isa.py): below every stage, complete.

The machine model is data below the passes: backends/ and runtime/ import no pass, and
nothing in ir/ imports a stage above it. Every instruction class states its cost (or is a
marker that holds nothing), and every digital op of the table has an IR op and a count of
operations per element.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

from snuc.ir.machine import DIGITAL_OPS, FREE, GDU, Cost, Unit, fixed_ops
from snuc.ir.machine_isa import Adc, Instruction, Mvm, Recv, Send, Sync, VectorOp
from snuc.ir.ops import REGISTRY
from snuc.ir.target import parse_target

ROOT = Path(__file__).resolve().parents[1]
TARGET = parse_target("pcm-256x256")


def imported_modules(path: Path) -> set[str]:
    """Every module ``path`` imports, at any depth (function-level imports too)."""
    tree = ast.parse(path.read_text(encoding="utf-8"), filename=str(path))
    found: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module:
            found.add(node.module)
    return found


def importers(folder: str, forbidden: tuple[str, ...]) -> dict[str, list[str]]:
    """The modules of ``folder`` that import any of the ``forbidden`` packages."""
    bad = {}
    for path in sorted((ROOT / folder).glob("*.py")):
        hits = [m for m in imported_modules(path) if m.startswith(forbidden)]
        if hits:
            bad[path.name] = sorted(hits)
    return bad


@pytest.mark.parametrize("folder", ["backends", "runtime"])
def test_backends_and_runtime_import_no_pass(folder: str) -> None:
    assert importers(folder, ("snuc.passes",)) == {}


def test_ir_imports_nothing_above_it() -> None:
    above = ("snuc.passes", "snuc.backends", "snuc.runtime", "snuc.frontend", "snuc.driver")
    assert importers("ir", above) == {}


def test_the_import_walk_sees_function_level_imports(tmp_path: Path) -> None:
    module = tmp_path / "m.py"
    module.write_text("def f():\n    from snuc.passes.schedule import X\n", encoding="utf-8")
    assert imported_modules(module) == {"snuc.passes.schedule"}


# --------------------------------------------------------------------------- costs


COSTED = {Mvm, Adc, VectorOp, Send}
"""Instructions that hold a resource and so have a cost of their own."""

MARKERS = {Recv, Sync}
"""Instructions that only mark a point in time (an arrival, a timestep boundary): free."""


def test_every_instruction_class_is_costed_or_a_marker() -> None:
    classes = set(Instruction.__subclasses__())
    assert classes == COSTED | MARKERS
    for cls in COSTED:
        assert cls.cost is not Instruction.cost, f"{cls.__name__} has no cost of its own"
    for cls in MARKERS:
        assert cls.cost is Instruction.cost


def test_each_instruction_states_its_cost() -> None:
    core, gdu = Unit("core", 0), Unit(GDU, 0)
    samples = [
        (Mvm(0, "$y", "%x", 0, rows=32, phases=1, vectors=1), core),
        (Adc(0, "%y", "$y", 0, n=16), core),
        (VectorOp(0, "add", ("%z",), ("%x", "%y"), n=16, ops=1), core),
        (Send(0, "%x", core, 64), gdu),
    ]
    for instr, unit in samples:
        cost = instr.cost(TARGET, unit)
        assert isinstance(cost, Cost) and cost.latency > 0 and cost.reservations, instr
    assert Recv(0, "%x", gdu).cost(TARGET, core) == FREE
    assert Sync(0).cost(TARGET, core) == FREE


SHAPE_DEPENDENT = {"matmul", "conv"}
"""Digital ops whose operations per element come from the operands' shapes (the
scheduler's ``digital_work``); every other op has a fixed count or one from its
attributes (:func:`fixed_ops`)."""


@pytest.mark.parametrize("mnemonic", sorted(DIGITAL_OPS))
def test_every_digital_op_has_an_ir_op_and_a_cost(mnemonic: str) -> None:
    info = DIGITAL_OPS[mnemonic]
    assert REGISTRY.get(info.op.NAME) is info.op, f"{mnemonic} computes {info.op}, no IR op"
    ops = fixed_ops(mnemonic, {})
    if mnemonic in SHAPE_DEPENDENT:
        assert ops is None
    else:
        assert isinstance(ops, int) and ops >= 0
    assert info.meaning
