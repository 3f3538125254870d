"""Crossbar mapping: ``lower-conv``, ``tile``, ``place``, the mapping report and its picture.

Structural properties are checked over random matrix shapes and small targets (shapes not
divisible by the crossbar, one and two devices per polarity, a crossbar whose width is
not a multiple of a weight's devices); numbers are checked through the reference
interpreter: every pass leaves what the graph computes unchanged up to float32 rounding.
"""

from __future__ import annotations

import json
import math
import re
import sys

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from snuc.ir import Graph, Loc, SnucError, TensorType
from snuc.ir.ops import Conv, CrossbarMVM, Dense, Reshape, SNULayer
from snuc.ir.target import TargetSpec, parse_target, with_overrides
from snuc.ir.text import parse_graph, print_graph
from snuc.passes import LowerConv, Place, Tile, get_pass, run_pipeline
from snuc.passes.lower_conv import conv_matrix
from snuc.passes.placement import Slot, crossbars_bound, pack_tiles, tile_footprint
from snuc.passes.report import mapping_report
from snuc.runtime.interpreter import run

FEW = settings(max_examples=25, deadline=None)
T, B = 3, 2


def target(name: str, dpp: int = 1, **overrides: int) -> TargetSpec:
    return with_overrides(parse_target(name), devices_per_polarity=dpp, **overrides)


TARGETS = st.sampled_from(
    [
        target("pcm-8x8"),
        target("pcm-8x8", dpp=2),
        target("pcm-16x32"),
        target("pcm-16x32", dpp=2),
        target("pcm-8x10", dpp=2),  # 10 columns hold 2 weights of 4 devices: 2 stay unused
        target("pcm-12x9"),  # an odd width: 4 weights of 2 devices, 1 column unused
    ]
)
SHAPES = st.lists(st.tuples(st.integers(1, 40), st.integers(1, 40)), min_size=1, max_size=4)


def dense_graph(shapes: list[tuple[int, int]], seed: int = 0) -> Graph:
    """One ``xbar.dense`` per shape, each on its own input ``x<i>``, output ``y<i>``.

    Weights are scaled by 1/sqrt(K) so outputs are of order one and float32 rounding
    differences stay far below 1e-5.
    """
    rng = np.random.default_rng(seed)
    g = Graph("dense")
    for i, (k, n) in enumerate(shapes):
        x = g.add_input(f"x{i}", TensorType("f32", ("B", k)))
        w = (rng.standard_normal((k, n)) / math.sqrt(k)).astype(np.float32)
        g.add_constant(f"w{i}", w)
        g.add_node(Dense(), (x, f"w{i}"), f"y{i}", Loc(f"onnx:/fc{i}/MatMul"))
        g.outputs.append(f"y{i}")
    return g


def inputs_for(graph: Graph, seed: int = 1) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(seed)
    return {
        name: rng.uniform(-1, 1, (T, *graph.type_of(name).concrete(B))).astype(np.float32)
        for name in graph.inputs
    }


def mapped(graph: Graph, tgt: TargetSpec, passes=("lower-conv", "tile", "place")) -> Graph:
    return run_pipeline(graph, tgt, [get_pass(name)() for name in passes])


def tiles_of(graph: Graph) -> list:
    return [n for n in graph.nodes() if isinstance(n.op, CrossbarMVM)]


def assert_same_outputs(before: Graph, after: Graph, atol: float = 1e-5) -> None:
    feeds = inputs_for(before)
    want, got = run(before, feeds), run(after, feeds)
    assert want.keys() == got.keys()
    for name in want:
        assert got[name].dtype == want[name].dtype
        np.testing.assert_allclose(got[name], want[name], rtol=0, atol=atol, err_msg=name)


def assert_valid_placement(graph: Graph, tgt: TargetSpec) -> None:
    """Tiles lie inside their crossbar, never overlap, and cover every weight once."""
    occupancy: dict[int, np.ndarray] = {}
    coverage = {
        n.inputs[1]: np.zeros(graph.type_of(n.inputs[1]).shape, int) for n in tiles_of(graph)
    }
    for node in tiles_of(graph):
        op = node.op
        h, w = tile_footprint(op, tgt)
        assert h == op.rows[1] - op.rows[0] <= tgt.rows
        assert w == 2 * tgt.devices_per_polarity * (op.cols[1] - op.cols[0]) <= tgt.cols
        assert 0 <= op.crossbar < tgt.crossbars_available
        assert op.xbar_row >= 0 and op.xbar_row + h <= tgt.rows
        assert op.xbar_col >= 0 and op.xbar_col + w <= tgt.cols
        grid = occupancy.setdefault(op.crossbar, np.zeros((tgt.rows, tgt.cols), int))
        grid[op.xbar_row : op.xbar_row + h, op.xbar_col : op.xbar_col + w] += 1
        coverage[node.inputs[1]][op.rows[0] : op.rows[1], op.cols[0] : op.cols[1]] += 1
    for crossbar, grid in occupancy.items():
        assert grid.max() == 1, f"tiles overlap on crossbar {crossbar}"
    for weight, count in coverage.items():
        assert np.all(count == 1), (
            f"weights of @{weight} covered {count.min()}..{count.max()} times"
        )


# --------------------------------------------------------------------------- tile + place


@FEW
@given(shapes=SHAPES, tgt=TARGETS)
def test_tiles_fit_never_overlap_and_cover_every_weight_once(shapes, tgt):
    graph = dense_graph(shapes)
    out = mapped(graph, with_overrides(tgt, chips=1000))
    assert_valid_placement(out, with_overrides(tgt, chips=1000))
    tiles = tiles_of(out)
    assert len(tiles) == crossbars_bound(shapes, tgt)
    # Tile numbers: unique, in graph order, then row block, then column block.
    in_order = sorted(tiles, key=lambda n: (int(n.op.layer[1:]), n.op.rows[0], n.op.cols[0]))
    assert [n.op.tile for n in in_order] == list(range(len(tiles)))
    assert_same_outputs(graph, out)


@FEW
@given(shapes=SHAPES, tgt=TARGETS)
def test_crossbars_never_exceed_the_sum_of_ceilings(shapes, tgt):
    report = mapping_report(mapped(dense_graph(shapes), with_overrides(tgt, chips=1000)), tgt)
    bound = crossbars_bound(shapes, tgt)
    assert report["crossbars_used"] <= bound
    if tgt.cols % tgt.devices_per_weight == 0:
        spec_bound = sum(
            math.ceil(k / tgt.rows) * math.ceil(tgt.devices_per_weight * n / tgt.cols)
            for k, n in shapes
        )
        assert bound == spec_bound


def test_crossbar_bound_exceeds_device_count_when_width_wastes_columns():
    """9 columns hold 4 weights of 2 devices: a 9-weight row needs 3 crossbars, not 2."""
    tgt = parse_target("pcm-8x9")
    out = mapped(dense_graph([(8, 9)]), tgt)
    assert crossbars_bound([(8, 9)], tgt) == 3
    assert mapping_report(out, tgt)["crossbars_used"] == 3
    assert_valid_placement(out, tgt)


def test_tile_structure_adds_row_blocks_and_concatenates_column_blocks():
    tgt = parse_target("pcm-8x8")  # 8 rows, 4 weights a row
    graph = dense_graph([(20, 6)])
    out = run_pipeline(graph, tgt, [Tile()])
    nodes = list(out.nodes())
    tiles = [n for n in nodes if n.op.NAME == "xbar.mvm"]
    assert [(n.id, n.op.tile, n.op.rows, n.op.cols) for n in tiles] == [
        ("y0_t0", 0, (0, 8), (0, 4)),
        ("y0_t1", 1, (0, 8), (4, 6)),
        ("y0_t2", 2, (8, 16), (0, 4)),
        ("y0_t3", 3, (8, 16), (4, 6)),
        ("y0_t4", 4, (16, 20), (0, 4)),
        ("y0_t5", 5, (16, 20), (4, 6)),
    ]
    assert all(n.op.layer == "y0" and n.inputs == ("x0", "w0") for n in tiles)
    assert all(n.op.crossbar == -1 for n in tiles)  # placement is the next pass's job
    sums = [(n.id, n.inputs) for n in nodes if n.op.NAME == "dig.add"]
    assert sums == [
        ("y0_c0_r1", ("y0_t0", "y0_t2")),
        ("y0_c0", ("y0_c0_r1", "y0_t4")),
        ("y0_c1_r1", ("y0_t1", "y0_t3")),
        ("y0_c1", ("y0_c1_r1", "y0_t5")),
    ]
    (concat,) = [n for n in nodes if n.op.NAME == "dig.concat"]
    assert (concat.id, concat.inputs, concat.op.axis) == ("y0", ("y0_c0", "y0_c1"), -1)
    assert all(n.loc.source == "onnx:/fc0/MatMul" for n in nodes)
    assert out.outputs == ["y0"]
    # No weight is copied: the tiles use the very array of the dense.
    assert out.constants["w0"] is graph.constants["w0"]


def test_single_tile_keeps_the_dense_name_and_row_or_column_splits_need_no_concat_or_add():
    tgt = parse_target("pcm-16x32")
    out = run_pipeline(dense_graph([(16, 16), (40, 3), (5, 40)]), tgt, [Tile()])
    ops = {n.id: n.op.NAME for n in out.nodes()}
    assert ops["y0"] == "xbar.mvm"  # a single tile takes the dense's name
    assert ops["y1"] == "dig.add" and "dig.concat" not in [ops[k] for k in ops if "y1" in k]
    assert ops["y2"] == "dig.concat" and "dig.add" not in [ops[k] for k in ops if "y2" in k]


def test_tile_names_avoid_existing_values():
    graph = dense_graph([(20, 4)])
    (r,) = graph.add_node(Reshape(shape=("B", 4)), ("y0",), "y0_t0")
    graph.outputs.append(r)
    out = run_pipeline(graph, parse_target("pcm-8x8"), [Tile()])
    assert "y0_t0" in out.values() and out.producer("y0_t0").op.NAME == "dig.reshape"
    assert_same_outputs(graph, out)


def test_empty_weight_matrix_is_an_error():
    graph = Graph("empty")
    graph.add_input("x", TensorType("f32", ("B", 0)))
    graph.add_constant("w", np.zeros((0, 3), np.float32))
    graph.add_node(Dense(), ("x", "w"), "y", Loc("onnx:/fc/MatMul"))
    graph.outputs.append("y")
    with pytest.raises(SnucError, match=r"onnx:/fc/MatMul: xbar.dense %y has an empty weight"):
        run_pipeline(graph, None, [Tile()])


def test_printed_mapping_round_trips_and_matches_golden_text():
    tgt = parse_target("pcm-8x8")
    graph = Graph("golden")
    graph.add_input("x", TensorType("f32", ("B", 10)))
    graph.add_constant("w", np.arange(20, dtype=np.float32).reshape(10, 2))
    graph.add_node(Dense(), ("x", "w"), "y", Loc("onnx:/fc/MatMul"))
    graph.outputs.append("y")
    out = mapped(graph, tgt)
    text = print_graph(out)
    assert text == (
        "graph @golden {\n"
        "  const @w : f32[10, 2]\n"
        "  input %x : f32[B, 10]\n"
        '  %y_t0 = xbar.mvm(%x, @w) {layer = "y", tile = 0, rows = [0, 8], cols = [0, 2], '
        "crossbar = 0, xbar_row = 0, xbar_col = 0, dac = [-1.0, 1.0], adc_range = 0.0} "
        ': f32[B, 2] loc("onnx:/fc/MatMul")\n'
        '  %y_t1 = xbar.mvm(%x, @w) {layer = "y", tile = 1, rows = [8, 10], cols = [0, 2], '
        "crossbar = 0, xbar_row = 0, xbar_col = 4, dac = [-1.0, 1.0], adc_range = 0.0} "
        ': f32[B, 2] loc("onnx:/fc/MatMul")\n'
        '  %y = dig.add(%y_t0, %y_t1) : f32[B, 2] loc("onnx:/fc/MatMul")\n'
        "  output %y\n"
        "}\n"
    )
    assert parse_graph(text, {"w": out.constants["w"]}) == out


def test_tile_and_place_default_to_the_default_target():
    out = mapped(dense_graph([(300, 10)]), None)
    assert [n.op.rows for n in tiles_of(out)] == [(0, 256), (256, 300)]
    assert_valid_placement(out, parse_target("pcm-256x256"))


# --------------------------------------------------------------------------- packing


@FEW
@given(
    sizes=st.lists(st.tuples(st.integers(1, 12), st.integers(1, 10)), max_size=40),
    rows=st.integers(12, 16),
    cols=st.integers(10, 14),
)
def test_pack_tiles_never_overlaps_and_opens_at_most_one_crossbar_per_tile(sizes, rows, cols):
    slots = pack_tiles(sizes, rows, cols)
    assert slots == pack_tiles(sizes, rows, cols)  # deterministic
    used = {s.crossbar for s in slots}
    assert used == set(range(len(used)))  # numbered without gaps
    assert len(used) <= len(sizes)
    grids = {c: np.zeros((rows, cols), int) for c in used}
    for (h, w), s in zip(sizes, slots, strict=True):
        assert s.row + h <= rows and s.col + w <= cols
        grids[s.crossbar][s.row : s.row + h, s.col : s.col + w] += 1
    assert all(g.max() <= 1 for g in grids.values())


def test_pack_tiles_shelves_tall_tiles_first():
    # By decreasing height, then width: the 8 x 16 tile fills crossbar 0's first shelf, the
    # 8 x 8 ones share a second shelf beneath it, and the 4-high ones open crossbar 1.
    slots = pack_tiles([(4, 8), (8, 8), (8, 8), (4, 8), (8, 16)], 16, 16)
    assert slots == [Slot(1, 0, 0), Slot(0, 8, 0), Slot(0, 8, 8), Slot(1, 0, 8), Slot(0, 0, 0)]
    # A lower shelf goes on the first crossbar with rows to spare, before a new crossbar.
    slots = pack_tiles([(10, 16), (12, 16), (4, 16), (2, 4)], 16, 16)
    assert slots == [Slot(1, 0, 0), Slot(0, 0, 0), Slot(0, 12, 0), Slot(1, 10, 0)]


def test_pack_tiles_rejects_a_tile_larger_than_the_crossbar():
    with pytest.raises(ValueError, match="tile 1 of 9 x 4 devices"):
        pack_tiles([(1, 1), (9, 4)], 8, 8)


def test_many_small_layers_share_crossbars():
    """Ten SNU layers of 16 x 16 weights: one tile per crossbar takes ten, packing one."""
    tgt = parse_target("pcm-256x256")
    graph = Graph("small")
    x = graph.add_input("x", TensorType("f32", ("B", 16)))
    decay = graph.add_constant("decay", np.float32(0.8))
    bias = graph.add_constant("bias", np.float32(-0.5))
    rng = np.random.default_rng(0)
    for i in range(10):
        graph.add_constant(f"w{i}", (rng.standard_normal((16, 16)) / 4).astype(np.float32))
        s_prev = graph.add_state(f"s{i}", TensorType("f32", ("B", 16)))
        y_prev = graph.add_state(f"y{i}", TensorType("f32", ("B", 16)))
        (a,) = graph.add_node(Dense(), (x, f"w{i}"), f"a{i}")
        s, x = graph.add_node(SNULayer(), (a, s_prev, y_prev, decay, bias), (f"sn{i}", f"yn{i}"))
        graph.set_next(s_prev, s)
        graph.set_next(y_prev, x)
    graph.outputs.append(x)
    out = mapped(graph, tgt)
    report = mapping_report(out, tgt)
    assert crossbars_bound([(16, 16)] * 10, tgt) == 10
    # Eight 16 x 32-device tiles fill a 256-column shelf; two more start a second shelf.
    assert report["crossbars_used"] == 1
    assert report["utilization"] == pytest.approx(10 * 16 * 32 / (256 * 256))
    assert_valid_placement(out, tgt)
    assert_same_outputs(graph, out)


def test_too_large_model_names_the_counts():
    tgt = parse_target("pcm-64x64")  # 64 cores of 64 x 64 devices: 64 x 32 weights each
    graph = dense_graph([(640, 640)])  # 10 x 20 = 200 full tiles
    with pytest.raises(SnucError) as err:
        mapped(graph, tgt)
    message = str(err.value)
    assert "\n" not in message
    assert message == (
        "model needs 200 crossbars (4 chips of 64 cores); target pcm-64x64 has 64 (chips=1); "
        "compile with --chips 4"
    )
    report = mapping_report(mapped(graph, with_overrides(tgt, chips=4)), tgt)
    assert report["crossbars_used"] == 200 and report["chips"] == 4


def test_place_rejects_tiles_made_for_a_larger_crossbar():
    tiled = run_pipeline(dense_graph([(16, 16)]), parse_target("pcm-16x32"), [Tile()])
    with pytest.raises(SnucError, match=r"tile %y0 takes 16 x 32 devices.*pcm-8x8.*run the tile"):
        run_pipeline(tiled, parse_target("pcm-8x8"), [Place()])


# --------------------------------------------------------------------------- lower-conv


def conv_graph(c: int, m: int, k: tuple[int, int], group: int, seed: int = 0, **attrs) -> Graph:
    rng = np.random.default_rng(seed)
    g = Graph("conv")
    g.add_input("x", TensorType("f32", ("B", c, 7, 6)))
    fan_in = c // group * k[0] * k[1]
    w = rng.standard_normal((m, c // group, *k)) / math.sqrt(fan_in)
    g.add_constant("cw", w.astype(np.float32))
    g.add_node(Conv(group=group, **attrs), ("x", "cw"), "conv", Loc("onnx:/conv/Conv"))
    g.outputs.append("conv")
    return g


@settings(max_examples=30, deadline=None)
@given(
    group=st.sampled_from([1, 2]),
    c_per_group=st.integers(1, 3),
    m_per_group=st.integers(1, 3),
    k=st.tuples(st.integers(1, 3), st.integers(1, 3)),
    strides=st.tuples(st.integers(1, 2), st.integers(1, 2)),
    pads=st.tuples(*[st.integers(0, 2)] * 4),
    dilations=st.tuples(st.integers(1, 2), st.integers(1, 2)),
)
def test_lower_conv_equals_the_conv(group, c_per_group, m_per_group, k, strides, pads, dilations):
    graph = conv_graph(
        group * c_per_group,
        group * m_per_group,
        k,
        group,
        strides=strides,
        pads=pads,
        dilations=dilations,
    )
    out = run_pipeline(graph, None, [LowerConv()])
    assert [n.op.NAME for n in out.nodes()] == ["dig.im2col", "xbar.dense", "dig.transpose"]
    assert list(out.constants) == ["cw.matrix"]
    assert out.producer("conv").op.perm == (0, 3, 1, 2)
    assert_same_outputs(graph, out)
    tgt = parse_target("pcm-8x8")
    placed = mapped(graph, tgt)
    assert_valid_placement(placed, tgt)
    assert_same_outputs(graph, placed)


def test_conv_matrix_is_block_diagonal_for_groups():
    w = np.arange(4 * 1 * 2 * 2, dtype=np.float32).reshape(4, 1, 2, 2) + 1
    matrix = conv_matrix(w, group=2)
    assert matrix.shape == (8, 4)
    np.testing.assert_array_equal(matrix[:4, :2], w[:2].reshape(2, 4).T)
    np.testing.assert_array_equal(matrix[4:, 2:], w[2:].reshape(2, 4).T)
    assert not matrix[:4, 2:].any() and not matrix[4:, :2].any()


def test_lower_conv_keeps_a_weight_used_elsewhere_and_shares_matrices():
    graph = conv_graph(2, 2, (1, 1), 1)
    graph.add_node(Conv(), ("x", "cw"), "conv2")
    graph.add_node(Reshape(shape=(2, 2)), ("cw",), "cw_flat")
    graph.outputs += ["conv2", "cw_flat"]
    out = run_pipeline(graph, None, [LowerConv()])
    assert list(out.constants) == ["cw", "cw.matrix"]
    dense = [n for n in out.nodes() if n.op.NAME == "xbar.dense"]
    assert [n.inputs[1] for n in dense] == ["cw.matrix", "cw.matrix"]
    assert_same_outputs(graph, out)


def test_graph_without_convs_is_unchanged():
    graph = dense_graph([(3, 4)])
    assert run_pipeline(graph, None, [LowerConv()]) == graph


# --------------------------------------------------------------------------- report


@FEW
@given(shapes=SHAPES, tgt=TARGETS)
def test_mapping_report_is_consistent(shapes, tgt):
    tgt = with_overrides(tgt, chips=1000)
    report = mapping_report(mapped(dense_graph(shapes), tgt), tgt)
    assert json.loads(json.dumps(report)) == report
    assert report["target"] == tgt.to_dict()
    weights = sum(k * n for k, n in shapes)
    dpp = tgt.devices_per_polarity
    assert report["weights"] == weights
    assert report["devices"] == 2 * dpp * weights
    assert report["devices"] == sum(t["rows"] * t["cols"] for t in report["tiles"])
    used = {t["crossbar"] for t in report["tiles"]}
    assert report["crossbars_used"] == len(used)
    assert report["crossbars_available"] == tgt.cores * tgt.chips
    assert report["chips"] == max(used) // tgt.cores + 1
    assert report["chips_available"] == tgt.chips
    assert 0 < report["utilization"] <= 1
    assert report["utilization"] == pytest.approx(
        report["devices"] / (len(used) * tgt.rows * tgt.cols)
    )
    assert [layer["layer"] for layer in report["layers"]] == [f"y{i}" for i in range(len(shapes))]
    assert [layer["weights"] for layer in report["layers"]] == [k * n for k, n in shapes]
    assert sum(layer["tiles"] for layer in report["layers"]) == len(report["tiles"])
    for t in report["tiles"]:
        assert set(t) == {"layer", "tile", "crossbar", "row0", "col0", "rows", "cols"}
        assert t["cols"] % (2 * dpp) == 0


def test_mapping_report_refuses_an_unplaced_graph():
    tgt = parse_target("pcm-8x8")
    with pytest.raises(SnucError, match=r"tile %y0 is not placed; run the place pass"):
        mapping_report(run_pipeline(dense_graph([(4, 4)]), tgt, [Tile()]), tgt)
    with pytest.raises(SnucError, match=r"xbar.dense %y0 is not tiled"):
        mapping_report(dense_graph([(4, 4)]), tgt)


# --------------------------------------------------------------------------- plot


def small_report() -> dict:
    tgt = parse_target("pcm-16x32")
    return mapping_report(mapped(dense_graph([(40, 30), (5, 7), (9, 3)]), tgt), tgt)


def test_plot_writes_a_png(tmp_path):
    pytest.importorskip("matplotlib")
    from snuc.backends.plot import plot_crossbars

    path = tmp_path / "crossbars.png"
    plot_crossbars(small_report(), path)
    assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert [p.name for p in tmp_path.iterdir()] == ["crossbars.png"]


def test_plot_caps_the_crossbars_drawn(tmp_path):
    pytest.importorskip("matplotlib")
    from snuc.backends.plot import plot_crossbars

    tgt = with_overrides(parse_target("pcm-8x8"), chips=10)
    report = mapping_report(mapped(dense_graph([(8 * 15, 4 * 15)]), tgt), tgt)
    assert report["crossbars_used"] == 225
    plot_crossbars(report, tmp_path / "many.svg")
    svg = (tmp_path / "many.svg").read_text()
    assert "showing the first 200 of 225 crossbars" in svg


def test_plot_failure_leaves_nothing_behind(tmp_path):
    pytest.importorskip("matplotlib")
    from snuc.backends.plot import plot_crossbars

    with pytest.raises(SnucError, match=r"cannot write plot"):
        plot_crossbars(small_report(), tmp_path / "picture.unknownformat")
    with pytest.raises(SnucError, match=r"cannot write plot"):
        plot_crossbars(small_report(), tmp_path / "missing" / "picture.png")
    assert list(tmp_path.iterdir()) == []


def test_plot_without_matplotlib_says_how_to_install_it(tmp_path, monkeypatch):
    from snuc.backends.plot import plot_crossbars

    monkeypatch.setitem(sys.modules, "matplotlib", None)
    monkeypatch.setitem(sys.modules, "matplotlib.figure", None)
    with pytest.raises(SnucError, match=re.escape("pip install snuc[plot]")):
        plot_crossbars(small_report(), tmp_path / "x.png")
    assert list(tmp_path.iterdir()) == []


def test_unknown_placement_strategy_is_an_error():
    from snuc.passes.placement import Place

    with pytest.raises(SnucError, match="'scatter'"):
        Place(strategy="scatter")
