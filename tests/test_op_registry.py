"""Every op carries its meaning: semantics, a range rule, a chip cost and a fast kernel.

An op is defined by its class (snuc.ir.ops) plus registrations against that class: its
reference semantics (``@semantics`` in snuc.runtime.semantics), its value-range rule
(snuc.ir.crossbar.RANGE_RULES), its vector instruction on the digital units
(snuc.ir.machine.DIGITAL_OPS) and its fast kernel (``@kernel`` in
snuc.runtime.plan_kernels). This test names every op that lacks one.
"""

from __future__ import annotations

from collections.abc import Collection

import pytest

from snuc.ir import ops
from snuc.ir.crossbar import RANGE_RULES
from snuc.ir.machine import MNEMONIC_OF
from snuc.ir.ops import REGISTRY, Op
from snuc.runtime.plan_kernels import FAST_KERNELS
from snuc.runtime.semantics import OP_SEMANTICS

TABLES = {
    "semantics": OP_SEMANTICS,
    "range rule": RANGE_RULES,
    "chip cost": MNEMONIC_OF,
    "fast kernel": FAST_KERNELS,
}


def _on_crossbars(cls: type[Op]) -> bool:
    """Crossbar ops (``xbar.*``) are costed as crossbar reads (``mvm_cost``), not as a
    digital instruction."""
    return cls.NAME.startswith("xbar.")


def missing(tables: dict[str, Collection[type[Op]]] = TABLES) -> list[str]:
    """One line per op and registration it lacks, e.g. ``dig.add has no fast kernel``."""
    lines = []
    for cls in REGISTRY.values():
        for what, table in tables.items():
            if what == "chip cost" and _on_crossbars(cls):
                continue
            if cls not in table:
                lines.append(f"{cls.NAME} has no {what}")
    return lines


def test_every_op_has_semantics_a_range_rule_a_chip_cost_and_a_fast_kernel():
    assert missing() == []


def test_registrations_name_only_registered_ops():
    for what, table in TABLES.items():
        strays = [cls for cls in table if REGISTRY.get(cls.NAME) is not cls]
        assert strays == [], f"{what} registered for ops not in REGISTRY: {strays}"


@pytest.mark.parametrize("what", sorted(TABLES))
def test_a_missing_registration_is_named(what: str):
    # The check can fail: drop one op's registration from one table.
    op_class = ops.SNULayer
    tables = dict(TABLES)
    tables[what] = [cls for cls in TABLES[what] if cls is not op_class]
    assert missing(tables) == [f"{op_class.NAME} has no {what}"]
