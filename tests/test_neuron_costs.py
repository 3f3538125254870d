"""What a neuron costs on the chip (SPEC §1.1, §7): neuron-unit target keys per model,
lifted neurons cheaper than the same arithmetic as loose digital ops, the report's
neuron-layer table."""

from __future__ import annotations

import math
from pathlib import Path

import pytest
from cli_helpers import run_cli
from test_lift_neurons import SNNTORCH, _snntorch_model

from snuc import driver
from snuc.ir.machine import CORE, Unit, digital_cost, vector_cost
from snuc.ir.neurons import NEURON_OPS, cost_keys
from snuc.ir.target import PARAMS, parse_target, with_overrides

TARGET = parse_target("pcm-256x256")


@pytest.mark.parametrize("model", NEURON_OPS.values(), ids=lambda m: m.NAME)
def test_every_model_has_neuron_unit_keys_marked_assumed(model, capsys):
    status, out, _ = run_cli(capsys, "targets")
    assert status == 0
    for key in cost_keys(model):
        assert key in PARAMS and "assumed" in PARAMS[key].source
        row = next(line for line in out.splitlines() if line.split()[:1] == [key])
        assert model.NAME in row


@pytest.mark.parametrize("model", NEURON_OPS.values(), ids=lambda m: m.NAME)
def test_a_neuron_instruction_costs_its_keys_not_its_loose_ops(model):
    cycles_key, energy_key = cost_keys(model)
    target = with_overrides(TARGET, **{cycles_key: 3, energy_key: 0.25})
    unit, n = Unit(CORE, 0), 100
    cost = vector_cost(target, unit, model.MNEMONIC, n, model().ops_per_element())
    assert cost.cycles == 3 * math.ceil(n / target.digital_lanes)
    assert cost.total_energy_pj == pytest.approx(0.25 * n)
    ops = model().ops_per_element()
    loose = digital_cost(target, unit, n, ops)
    assert vector_cost(TARGET, unit, model.MNEMONIC, n, ops).cycles < loose.cycles
    assert vector_cost(TARGET, unit, model.MNEMONIC, n, ops).total_energy_pj < (
        loose.total_energy_pj
    )


@pytest.mark.parametrize("kind", SNNTORCH)
def test_a_lifted_snntorch_network_costs_less_than_without_lifting(kind, tmp_path: Path):
    """Latency and energy drop; the timestep (II) of these MVM-bound layers cannot grow."""
    path = _snntorch_model(kind, tmp_path / f"{kind}.onnx", width=512)
    lifted = driver.compile_model(path).report
    loose = driver.compile_model(path, lift=False).report
    assert lifted["cycles_per_timestep"] <= loose["cycles_per_timestep"]
    assert lifted["latency_cycles"] < loose["latency_cycles"]
    energy = lifted["energy_pj_per_timestep"]["total"]
    assert energy < loose["energy_pj_per_timestep"]["total"]
    assert [row["model"] for row in lifted["neurons"]] == [SNNTORCH[kind]]
    assert loose["neurons"] == []


def test_the_report_names_each_neuron_layers_model(tmp_path: Path, capsys):
    path = _snntorch_model("synaptic", tmp_path / "synaptic.onnx")
    status, _, err = run_cli(capsys, "compile", str(path), "-o", str(tmp_path / "s.snuc"))
    assert status == 0, err
    status, out, _ = run_cli(capsys, "report", str(tmp_path / "s.snuc"))
    assert status == 0
    header = next(line for line in out.splitlines() if line.startswith("neuron layer"))
    assert header.split()[2:] == ["model", "neurons", "cycles", "energy", "(pJ)"]
    (row,) = [line for line in out.splitlines() if "snu.cuba" in line]
    assert row.split()[:3] == ["onnx:/neuron", "snu.cuba", "8"]
