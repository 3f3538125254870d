"""The machine model and the scheduler (ir/machine.py, backends/schedule.py, docs/isa.md).

Graphs are built with the Graph API and placed by hand (``xbar.mvm`` tiles with their
crossbars), so these tests do not depend on the ``tile`` and ``place`` passes. Every
schedule is checked against the rules a modulo schedule must keep: no resource holds two
operations at one cycle of the repeating ``ii``-cycle pattern, every operation starts
after its inputs are ready (one ``ii`` per timestep earlier through states), and ``ii``
is at least the lower bound.
"""

from __future__ import annotations

import math
from collections import defaultdict
from dataclasses import dataclass, field

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from snuc.backends.schedule import ModuloSchedule, schedule_graph
from snuc.ir import REGISTRY, Graph, SnucError, TensorType
from snuc.ir.machine import (
    CORE,
    GDU,
    HOST,
    Unit,
    check_unit,
    digital_cost,
    mvm_cost,
    route,
    transfer_cost,
)
from snuc.ir.ops import CrossbarMVM, Dense, SNULayer
from snuc.ir.target import parse_target, with_overrides
from snuc.passes import get_pass, pass_names

TARGET = parse_target("pcm-256x256")


# --------------------------------------------------------------------------- building graphs


@dataclass
class Chip:
    """Hand placement: tiles stacked down each crossbar's rows."""

    target: object = TARGET
    next_row: dict[int, int] = field(default_factory=dict)
    tiles: int = 0

    def tile(self, g: Graph, x: str, w: str, crossbar: int, name: str, rows=None) -> str:
        k, n = g.type_of(w).shape
        r0, r1 = rows or (0, k)
        row = self.next_row.get(crossbar, 0)
        self.next_row[crossbar] = row + (r1 - r0)
        op = CrossbarMVM(
            layer=name,
            tile=self.tiles,
            rows=(r0, r1),
            cols=(0, n),
            crossbar=crossbar,
            xbar_row=row,
            xbar_col=0,
            dac=(0.0, 1.0),
            adc_range=1.0,
        )
        self.tiles += 1
        (out,) = g.add_node(op, [x, w], [g.fresh(f"{name}_t")])
        return out


def snu_stack(
    sizes: tuple[int, ...] = (64, 128, 128, 32),
    crossbars: tuple[int, ...] = (0, 1, 2),
    recurrent: bool = False,
    chip: Chip | None = None,
) -> Graph:
    """A stack of SNU layers (recurrent: ``a = W x + H y_prev``), one crossbar each."""
    chip = chip or Chip()
    g = Graph("stack")
    rng = np.random.default_rng(0)
    x = g.add_input("x", TensorType("f32", ("B", sizes[0])))
    decay = g.add_constant("decay", np.float32(0.8))
    for k, (i, o) in enumerate(zip(sizes[:-1], sizes[1:], strict=False)):
        w = g.add_constant(f"W{k}", rng.normal(size=(i, o)).astype(np.float32))
        b = g.add_constant(f"b{k}", np.full(o, -1.0, np.float32))
        s = g.add_state(f"s{k}", TensorType("f32", ("B", o)))
        y = g.add_state(f"y{k}", TensorType("f32", ("B", o)))
        a = chip.tile(g, x, w, crossbars[k], f"a{k}")
        if recurrent:
            h = g.add_constant(f"H{k}", rng.normal(size=(o, o)).astype(np.float32))
            r = chip.tile(g, y, h, crossbars[k], f"r{k}")
            (a,) = g.add_node(REGISTRY["dig.add"](), [a, r], [f"in{k}"])
        s_new, y_new = g.add_node(SNULayer(), [a, s, y, decay, b], [f"s{k}_new", f"y{k}_new"])
        g.set_next(s, s_new)
        g.set_next(y, y_new)
        x = y_new
    g.outputs.append(x)
    g.verify()
    return g


def check(schedule: ModuloSchedule) -> None:
    """Fail unless ``schedule`` keeps the rules of a modulo schedule."""
    ii = schedule.ii
    ops = schedule.ops
    assert ii >= schedule.cycles_lower_bound >= 1
    busy: dict[str, list[tuple[int, int, int]]] = defaultdict(list)
    for op in ops:
        assert op.start >= 0
        for resource, offset, cycles in op.cost.reservations:
            assert cycles <= ii, f"{op.mnemonic} holds {resource} longer than ii"
            a = (op.start + offset) % ii
            busy[resource].append((a, min(a + cycles, ii), op.index))
            if a + cycles > ii:
                busy[resource].append((0, a + cycles - ii, op.index))
    for resource, spans in busy.items():
        spans.sort()
        for (_, hi, i), (lo, _, j) in zip(spans, spans[1:], strict=False):
            assert lo >= hi, f"ops {i} and {j} both hold {resource}"
    for op in ops:
        for p, distance in op.deps:
            assert op.start + ii * distance >= ops[p].end, (
                f"op {op.index} ({op.mnemonic}) starts before op {p} ({ops[p].mnemonic}) ends"
            )
    assert schedule.latency_cycles == max(op.end for op in ops)


def by_mnemonic(schedule: ModuloSchedule, mnemonic: str) -> list:
    return [op for op in schedule.ops if op.mnemonic == mnemonic]


# --------------------------------------------------------------------------- costs


def test_a_fully_driven_256x256_mvm_costs_the_targets_energy():
    cost = mvm_cost(TARGET, 0, rows=256, phases=1, vectors=1)
    assert cost.total_energy_pj == pytest.approx(13400.0)
    assert cost.cycles == cost.latency == 133
    assert cost.reservations == (("xbar 0", 0, 133),)


@pytest.mark.parametrize("rows", [1, 64, 128, 200])
def test_mvm_energy_scales_with_driven_rows(rows):
    cost = mvm_cost(TARGET, 3, rows=rows, phases=1, vectors=1)
    assert cost.total_energy_pj == pytest.approx(13400.0 * rows / 256)


def test_mvm_phases_and_vectors_multiply_time_and_energy():
    cost = mvm_cost(TARGET, 0, rows=256, phases=4, vectors=3)
    assert cost.cycles == 12 * 133
    assert cost.total_energy_pj == pytest.approx(12 * 13400.0)


def test_digital_op_takes_a_pass_per_op_over_the_lanes():
    cost = digital_cost(TARGET, Unit(CORE, 5), n=150, ops=7)
    assert cost.cycles == 7 * math.ceil(150 / 32)
    assert cost.total_energy_pj == pytest.approx(7 * 150 * 1.0)
    assert cost.reservations == (("ldu 5", 0, cost.cycles),)
    assert digital_cost(TARGET, HOST, n=100, ops=1).reservations[0][0] == "gdu 0"
    assert digital_cost(TARGET, HOST, n=100, ops=0).cycles == 0


def test_transfer_pays_hops_and_serialisation():
    # 64 cores: an 8 x 8 mesh; core 9 is one row down and one column right of core 0.
    cost = transfer_cost(TARGET, Unit(CORE, 0), Unit(CORE, 9), nbytes=100)
    serial = math.ceil(100 / 32)
    assert cost.latency == 2 * 2 + serial
    assert [(r, o) for r, o, _ in cost.reservations] == [("noc 0>1", 0), ("noc 1>9", 2)]
    assert all(c == serial for _, _, c in cost.reservations)
    assert cost.energy_pj == (("noc", 200.0),)


def test_transfer_between_chips_crosses_the_chip_link():
    target = with_overrides(TARGET, chips=2)
    cost = transfer_cost(target, Unit(CORE, 1), Unit(CORE, 65), nbytes=32)
    links = [r for r, _, _ in cost.reservations]
    assert links == ["noc 1>0", "chiplink 0>1", "noc 64>65"]
    assert cost.latency == 2 * 2 + 100 + 1
    assert dict(cost.energy_pj) == {"noc": 64.0, "chip_link": 320.0}


def test_routes_from_and_to_the_gdu_use_its_port():
    assert route(HOST, Unit(CORE, 1), TARGET).links == ("noc gdu0>0", "noc 0>1")
    assert route(Unit(CORE, 8), HOST, TARGET).links == ("noc 8>0", "noc 0>gdu0")


def test_route_turns_early_where_the_last_row_is_short():
    target = with_overrides(TARGET, cores=5)  # a 3-wide mesh: 0 1 2 / 3 4
    assert route(Unit(CORE, 4), Unit(CORE, 2), target).links == ("noc 4>1", "noc 1>2")
    assert route(Unit(CORE, 0), Unit(CORE, 4), target).links == ("noc 0>1", "noc 1>4")


def test_units_that_do_not_exist_are_one_line_errors():
    with pytest.raises(SnucError, match=r"^core 64 does not exist: .*64 cores \(0\.\.63"):
        check_unit(Unit(CORE, 64), TARGET)
    with pytest.raises(SnucError, match=r"^gdu 1 does not exist"):
        check_unit(Unit(GDU, 1), TARGET)
    check_unit(Unit(CORE, 127), with_overrides(TARGET, chips=2))


# --------------------------------------------------------------------------- schedules


def test_three_layer_feed_forward_stack_pipelines_at_the_lower_bound():
    schedule = schedule_graph(snu_stack(), TARGET)
    check(schedule)
    # One MVM per crossbar per timestep: the crossbars are the bottleneck.
    assert schedule.resource_bound == 133
    assert schedule.ii == schedule.cycles_lower_bound == 133
    # Layers overlap across timesteps: one timestep takes several intervals.
    assert schedule.latency_cycles > 3 * 133
    assert schedule.stages >= 3
    mvms = sorted(by_mnemonic(schedule, "mvm"), key=lambda op: op.start)
    assert [op.unit.index for op in mvms] == [0, 1, 2]


def test_feed_forward_stack_on_one_crossbar_shares_it():
    schedule = schedule_graph(snu_stack((32, 64, 64, 32), crossbars=(0, 0, 0)), TARGET)
    check(schedule)
    assert schedule.resource_bound == 3 * 133
    assert schedule.busiest_resource == "xbar 0"
    assert schedule.ii / schedule.cycles_lower_bound <= 1.10


def test_recurrent_snu_meets_its_recurrence_bound():
    g = snu_stack((48, 64), crossbars=(0,), recurrent=True)
    schedule = schedule_graph(g, TARGET)
    check(schedule)
    # The loop: MVM of H y_prev, its read-out, the add, the neuron update (64 neurons) on
    # the neuron units.
    update = TARGET.neuron_snu_cycles * math.ceil(64 / 32)
    loop = 133 + math.ceil(64 / 32) + math.ceil(64 / 32) + update
    assert schedule.recurrence_bound == loop
    assert schedule.resource_bound == 2 * 133
    assert schedule.ii / schedule.cycles_lower_bound <= 1.10


def test_recurrence_bound_dominates_when_the_loop_is_long():
    chip = Chip()
    g = Graph("rnn")
    x = g.add_input("x", TensorType("f32", ("B", 32)))
    s = g.add_state("s", TensorType("f32", ("B", 100)))
    y = g.add_state("y", TensorType("f32", ("B", 100)))
    a = chip.tile(g, x, g.add_constant("W", np.ones((32, 100), np.float32)), 0, "a")
    r = chip.tile(g, y, g.add_constant("H", np.ones((100, 100), np.float32)), 1, "r")
    (total,) = g.add_node(REGISTRY["dig.add"](), [a, r], ["total"])
    decay = g.add_constant("decay", np.float32(0.5))
    bias = g.add_constant("bias", np.float32(-1.0))
    s_new, y_new = g.add_node(SNULayer(), [total, s, y, decay, bias], ["s_new", "y_new"])
    g.set_next(s, s_new)
    g.set_next(y, y_new)
    g.outputs.append(y_new)
    schedule = schedule_graph(g, TARGET)
    check(schedule)
    # The loop stays on core 1 with H: MVM, read-out, add, neuron update (100 neurons).
    assert schedule.recurrence_bound == 133 + 4 + 4 + TARGET.neuron_snu_cycles * 4
    assert schedule.resource_bound == 133
    assert schedule.cycles_lower_bound == schedule.recurrence_bound
    assert schedule.ii / schedule.cycles_lower_bound <= 1.10
    (add,) = by_mnemonic(schedule, "acc")
    assert add.unit == Unit(CORE, 1)
    # W x is read out where it is added: its 8-bit ADC codes travel, not float32 values.
    sends = {op.operands[0]: op for op in by_mnemonic(schedule, "send")}
    assert sends["$a_t"].instr.nbytes == 100 and sends["$a_t"].instr.dst == Unit(CORE, 1)
    assert sends["%y_new"].instr.nbytes == math.ceil(100 / 8)  # spikes travel as bits


def split_recurrent_layer() -> Graph:
    """A recurrent layer whose H is split by rows over cores 1 and 2."""
    chip = Chip()
    g = Graph("split_rnn")
    x = g.add_input("x", TensorType("f32", ("B", 32)))
    s = g.add_state("s", TensorType("f32", ("B", 100)))
    y = g.add_state("y", TensorType("f32", ("B", 100)))
    h = g.add_constant("H", np.ones((100, 100), np.float32))
    a = chip.tile(g, x, g.add_constant("W", np.ones((32, 100), np.float32)), 0, "a")
    r0 = chip.tile(g, y, h, 1, "r", rows=(0, 50))
    r1 = chip.tile(g, y, h, 2, "r", rows=(50, 100))
    (r,) = g.add_node(REGISTRY["dig.add"](), [r0, r1], ["r"])
    (total,) = g.add_node(REGISTRY["dig.add"](), [a, r], ["total"])
    decay = g.add_constant("decay", np.float32(0.5))
    bias = g.add_constant("bias", np.float32(-1.0))
    s_new, y_new = g.add_node(SNULayer(), [total, s, y, decay, bias], ["s_new", "y_new"])
    g.set_next(s, s_new)
    g.set_next(y, y_new)
    g.outputs.append(y_new)
    return g


def test_recurrence_through_transfers_counts_their_hops():
    near = schedule_graph(split_recurrent_layer(), TARGET)
    far = schedule_graph(split_recurrent_layer(), with_overrides(TARGET, noc_hop_cycles=50))
    check(near)
    check(far)
    # The longest loop goes core 2 -> core 1 (codes) and back (spikes): one hop each way.
    assert far.recurrence_bound - near.recurrence_bound == 2 * (50 - 2)
    assert near.ii / near.cycles_lower_bound <= 1.10
    assert far.ii / far.cycles_lower_bound <= 1.10


def test_dependencies_include_transfers_between_cores():
    schedule = schedule_graph(snu_stack(), TARGET)
    ops = schedule.ops
    for mvm in by_mnemonic(schedule, "mvm"):
        (dep, distance), *_ = mvm.deps
        assert ops[dep].mnemonic == "send" and distance == 0
        assert ops[dep].instr.dst == mvm.unit
        assert mvm.start >= ops[dep].end


def test_states_are_read_one_timestep_later():
    schedule = schedule_graph(snu_stack(), TARGET)
    for snu in by_mnemonic(schedule, "snu"):
        assert (snu.index, 1) in snu.deps  # reads its own s and y of the step before


def test_spikes_into_crossbars_take_one_phase_and_real_values_input_phases():
    target = with_overrides(TARGET, input_phases=4)
    schedule = schedule_graph(snu_stack(), target)
    phases = {op.node: op.instr.phases for op in by_mnemonic(schedule, "mvm")}
    assert phases == {"a0_t": 4, "a1_t": 1, "a2_t": 1}
    check(schedule)


def test_inputs_arrive_and_outputs_leave_at_gdu_0():
    schedule = schedule_graph(snu_stack(), TARGET)
    sends = by_mnemonic(schedule, "send")
    assert sends[0].unit == HOST and sends[0].operands == ("%x",)
    assert any(op.instr.dst == HOST and op.operands == ("%y2_new",) for op in sends)
    # x only feeds a crossbar: it travels as 8-bit DAC codes.
    assert sends[0].instr.nbytes == 64


def test_row_split_partial_sums_are_read_out_where_they_are_added():
    chip = Chip()
    g = Graph("split")
    x = g.add_input("x", TensorType("f32", ("B", 300)))
    w = g.add_constant("W", np.ones((300, 40), np.float32))
    t0 = chip.tile(g, x, w, 0, "fc", rows=(0, 256))
    t1 = chip.tile(g, x, w, 1, "fc", rows=(256, 300))
    (fc,) = g.add_node(REGISTRY["dig.add"](), [t0, t1], ["fc"])
    g.outputs.append(fc)
    schedule = schedule_graph(g, TARGET)
    check(schedule)
    (acc,) = by_mnemonic(schedule, "acc")
    assert acc.unit == Unit(CORE, 0)
    adcs = {op.node: op.unit for op in by_mnemonic(schedule, "adc")}
    assert adcs == {"fc_t": Unit(CORE, 0), "fc_t_1": Unit(CORE, 0)}
    windows = {
        op.instr.dst: (op.instr.window, op.instr.nbytes) for op in by_mnemonic(schedule, "send")
    }
    # Each core gets only the rows its tile drives, as 8-bit DAC codes.
    assert windows[Unit(CORE, 0)] == ((0, 256), 256)
    assert windows[Unit(CORE, 1)] == ((256, 300), 44)


def test_convolution_patches_are_mvm_vectors():
    chip = Chip()
    g = Graph("conv")
    x = g.add_input("x", TensorType("f32", ("B", 5, 5, 18)))
    w = g.add_constant("W", np.ones((18, 4), np.float32))
    y = chip.tile(g, x, w, 0, "conv")
    g.outputs.append(y)
    schedule = schedule_graph(g, TARGET)
    (mvm,) = by_mnemonic(schedule, "mvm")
    assert mvm.instr.vectors == 25
    assert mvm.cost.cycles == 25 * 133
    check(schedule)


def test_gdu_only_work_runs_on_a_gdu():
    g = snu_stack((16, 10), crossbars=(3,))
    (probs,) = g.add_node(REGISTRY["dig.softmax"](axis=-1), [g.outputs[0]], ["probs"])
    g.outputs[0] = probs
    schedule = schedule_graph(g, TARGET)
    (softmax,) = by_mnemonic(schedule, "softmax")
    assert softmax.unit == HOST
    assert softmax.instr.ops == 4
    check(schedule)


def test_mnemonics_name_partial_sums_and_constant_scales():
    chip = Chip()
    g = Graph("names")
    x = g.add_input("x", TensorType("f32", ("B", 8)))
    w = g.add_constant("W", np.ones((8, 4), np.float32))
    t = chip.tile(g, x, w, 0, "t")
    (scaled,) = g.add_node(REGISTRY["dig.mul"](), [t, g.add_constant("k", np.float32(2))])
    (summed,) = g.add_node(REGISTRY["dig.add"](), [scaled, scaled])
    (acc,) = g.add_node(REGISTRY["dig.add"](), [t, summed])
    g.outputs.append(acc)
    names = [op.mnemonic for op in schedule_graph(g, TARGET).ops if op.node]
    assert names == ["mvm", "adc", "scale", "add", "acc"]


def test_energy_per_timestep_adds_up_by_component():
    schedule = schedule_graph(snu_stack(), TARGET)
    energy = schedule.energy_pj_per_timestep()
    assert energy["crossbar"] == pytest.approx(13400.0 * (64 + 128 + 128) / 256)
    assert energy["total"] == pytest.approx(
        sum(energy[k] for k in ("crossbar", "digital", "noc", "chip_link"))
    )
    assert energy["chip_link"] == 0.0


def test_summary_holds_the_report_figures():
    summary = schedule_graph(snu_stack(), TARGET).summary()
    assert summary["cycles_per_timestep"] == 133
    assert summary["cycles_lower_bound"] == 133
    assert summary["latency_cycles"] > 133
    assert set(summary["energy_pj_per_timestep"]) == {
        "total",
        "crossbar",
        "digital",
        "noc",
        "chip_link",
    }
    assert summary["schedule"]["busiest_resource"].startswith("xbar")
    assert summary["schedule"]["timestep_ns"] == 133.0


def test_schedules_are_deterministic():
    assert schedule_graph(snu_stack(), TARGET) == schedule_graph(snu_stack(), TARGET)


# --------------------------------------------------------------------------- the pass


def test_schedule_pass_is_registered_and_returns_the_graph_unchanged():
    assert "schedule" in pass_names()
    g = snu_stack()
    assert get_pass("schedule")().run(g, TARGET) is g


def test_schedule_without_a_target_uses_the_default():
    assert schedule_graph(snu_stack(), None).target == TARGET


def test_untiled_crossbar_work_is_an_error():
    g = Graph("dense")
    x = g.add_input("x", TensorType("f32", ("B", 4)))
    (y,) = g.add_node(Dense(), [x, g.add_constant("W", np.ones((4, 2), np.float32))], ["y"])
    g.outputs.append(y)
    with pytest.raises(SnucError, match=r"xbar.dense %y is not tiled; run the .*tile and place"):
        get_pass("schedule")().run(g, TARGET)


def test_unplaced_tile_is_an_error():
    g = Graph("unplaced")
    x = g.add_input("x", TensorType("f32", ("B", 4)))
    w = g.add_constant("W", np.ones((4, 2), np.float32))
    op = CrossbarMVM(layer="y", tile=0, rows=(0, 4), cols=(0, 2))
    (y,) = g.add_node(op, [x, w], ["y"])
    g.outputs.append(y)
    with pytest.raises(SnucError, match=r"tile %y is not placed; run the place pass"):
        schedule_graph(g, TARGET)


def test_tile_beyond_the_targets_crossbars_is_an_error():
    g = snu_stack(crossbars=(0, 1, 70))
    with pytest.raises(SnucError, match=r"on crossbar 70, but target pcm-256x256 has 64"):
        schedule_graph(g, TARGET)


# --------------------------------------------------------------------------- random graphs


@st.composite
def layered_graphs(draw):
    """Random SNU stacks, recurrent or not, placed by hand on the crossbars of a few
    cores on one or two chips (a layer on any crossbar that still has rows for it)."""
    depth = draw(st.integers(1, 4))
    sizes = tuple(draw(st.lists(st.integers(4, 120), min_size=depth + 1, max_size=depth + 1)))
    recurrent = draw(st.booleans())
    cores = draw(st.integers(1, 4))
    chips = max(draw(st.integers(1, 2)), math.ceil(depth / cores))
    target = with_overrides(TARGET, cores=cores, chips=chips)
    used = defaultdict(int)
    crossbars = []
    for k in range(depth):
        need = sizes[k] + (sizes[k + 1] if recurrent else 0)
        xb = draw(st.integers(0, cores * chips - 1))
        if used[xb] + need > TARGET.rows:
            xb = next(c for c in range(cores * chips) if used[c] + need <= TARGET.rows)
        used[xb] += need
        crossbars.append(xb)
    return snu_stack(sizes, tuple(crossbars), recurrent), target


@settings(max_examples=30, deadline=None)
@given(layered_graphs())
def test_random_stacks_schedule_legally(case):
    graph, target = case
    schedule = schedule_graph(graph, target)
    check(schedule)
    assert schedule.ii / schedule.cycles_lower_bound <= 1.10
