"""The text form of the IR: golden files, random round trips, and parse errors."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

from snuc.ir import BATCH, REGISTRY, Graph, Loc, ParseError, TensorType, ops
from snuc.ir.text import large_constants, parse_graph, print_graph

GOLDEN = Path(__file__).parent / "golden" / "ir"
GOLDEN_FILES = sorted(GOLDEN.glob("*.ir"))


def _golden(path: Path) -> tuple[str, dict[str, np.ndarray]]:
    npz = path.with_suffix(".npz")
    arrays = {}
    if npz.exists():
        with np.load(npz, allow_pickle=False) as data:
            arrays = {k: data[k] for k in data.files}
    return path.read_text(encoding="utf-8"), arrays


def _bits_equal(a: Graph, b: Graph) -> bool:
    """Graph equality compares values (0.0 == -0.0); the text must keep every bit."""
    return a.constants.keys() == b.constants.keys() and all(
        a.constants[k].tobytes() == b.constants[k].tobytes() for k in a.constants
    )


# --------------------------------------------------------------------------- golden files


@pytest.mark.parametrize("path", GOLDEN_FILES, ids=lambda p: p.stem)
def test_golden_round_trip(path: Path) -> None:
    text, arrays = _golden(path)
    graph = parse_graph(text, arrays, filename=str(path))
    assert print_graph(graph) == text
    assert large_constants(graph).keys() == arrays.keys()
    again = parse_graph(print_graph(graph), large_constants(graph))
    assert again == graph
    assert _bits_equal(again, graph)


@pytest.mark.parametrize("path", GOLDEN_FILES, ids=lambda p: p.stem)
def test_golden_nodes_keep_line_and_column(path: Path) -> None:
    text, arrays = _golden(path)
    lines = text.splitlines()
    nodes = list(parse_graph(text, arrays).nodes())
    assert nodes
    for node in nodes:
        line = lines[node.loc.line - 1]
        assert line[node.loc.column - 1 :].startswith(f"%{node.outputs[0]}")


def test_golden_files_cover_every_op() -> None:
    seen = set()
    for path in GOLDEN_FILES:
        seen |= {node.op.NAME for node in parse_graph(*_golden(path)).nodes()}
    assert seen == set(REGISTRY)


def test_golden_locs_with_odd_characters() -> None:
    graph = parse_graph(*_golden(GOLDEN / "ssnu_recurrent.ir"))
    sources = [node.loc.source for node in graph.nodes()]
    assert sources == [
        'torch:layers.0/W "in"',
        "onnx:/rec\\H#1 /path//x",
        "ünïcödé → 層/ß\t{}",
        "torch:layers.0",
    ]


def test_golden_constants_are_bit_exact() -> None:
    graph = parse_graph(*_golden(GOLDEN / "elementwise.ir"))
    assert np.signbit(graph.constants["zero"])
    f32 = np.finfo(np.float32)
    expected = np.array([f32.max, -f32.max, f32.smallest_subnormal, -f32.tiny], np.float32)
    assert graph.constants["extremes"].tobytes() == expected.tobytes()
    assert graph.constants["tenth"] == np.float64(0.1)
    assert graph.constants["ids"].dtype == np.int64
    assert graph.constants["ids"].tolist() == [[0, -(2**63)], [2**63 - 1, 1]]
    assert graph.constants["mask"].tolist() == [True, False, False, True]
    assert graph.constants["empty"].shape == (0,)


# --------------------------------------------------------------------------- details

SMALL = """graph @g {
  const @w : f32[3, 2] = [1.0, 2.0, 3.0, 4.0, 5.0, 6.0]
  const @big : f32[20]
  input %x : f32[B, 3]
  state %s : f32[B, 2] -> %h
  %m = xbar.dense(%x, @w) : f32[B, 2]
  %h = dig.leaky_relu(%m) {alpha = 0.5} : f32[B, 2]
  output %h
}
"""
BIG = {"big": np.arange(20, dtype=np.float32)}


def test_comments_and_spacing_are_ignored() -> None:
    messy = (
        SMALL.replace("graph @g {", "# a comment\ngraph @g{  # another")
        .replace("  output %h", "output   %h # the end: output %nothing")
        .replace(", ", ",")
    )
    assert parse_graph(messy, BIG) == parse_graph(SMALL, BIG)
    assert print_graph(parse_graph(messy, BIG)) == SMALL


def test_attributes_rebuild_the_op_dataclass() -> None:
    text = SMALL.replace("{alpha = 0.5}", "{alpha = 1}")
    (_, leaky) = parse_graph(text, BIG).nodes()
    assert leaky.op == ops.LeakyRelu(alpha=1.0)
    assert isinstance(leaky.op.alpha, float)
    assert "{alpha = 1.0}" in print_graph(parse_graph(text, BIG))


def test_omitted_attributes_take_their_defaults() -> None:
    text = SMALL.replace(" {alpha = 0.5}", "").replace(
        "xbar.dense(%x, @w)", "xbar.dense(%x, @w) {}"
    )
    dense, leaky = parse_graph(text, BIG).nodes()
    assert leaky.op == ops.LeakyRelu()
    assert "dig.leaky_relu(%m) {alpha = 0.01} :" in print_graph(parse_graph(text, BIG))


def test_dims_in_attributes_may_be_the_batch() -> None:
    graph = parse_graph(*_golden(GOLDEN / "shapes.ir"))
    reshapes = [n.op for n in graph.nodes() if n.op.NAME == "dig.reshape"]
    assert reshapes == [ops.Reshape(shape=(BATCH, 4, 1)), ops.Reshape(shape=(BATCH, 6))]


def test_nodes_without_a_source_have_an_empty_loc_with_position() -> None:
    dense, _ = parse_graph(SMALL, BIG).nodes()
    assert dense.loc == Loc("")
    assert (dense.loc.line, dense.loc.column) == (6, 3)
    assert "loc(" not in print_graph(parse_graph(SMALL, BIG))


def test_inline_limit_decides_what_travels_beside_the_text() -> None:
    graph = Graph("limits")
    x = graph.add_input("x", TensorType("f32", (BATCH, 16)))
    graph.add_constant("sixteen", np.ones(16, np.float32))
    graph.add_constant("seventeen", np.ones(17, np.float32))
    graph.outputs.append(x)
    text = print_graph(graph)
    assert "const @sixteen : f32[16] = [1.0," in text
    assert "const @seventeen : f32[17]\n" in text
    assert list(large_constants(graph)) == ["seventeen"]


def test_nan_and_inf_print_but_do_not_verify() -> None:
    graph = Graph("bad")
    graph.add_constant("c", np.array([np.nan, np.inf, -np.inf], np.float32))
    graph.outputs.append(graph.add_input("x", TensorType("f32", (BATCH,))))
    text = print_graph(graph)
    assert "const @c : f32[3] = [nan, inf, -inf]\n" in text
    with pytest.raises(ParseError, match=r"line 1, column 7: .*@c holds NaN or Inf"):
        parse_graph(text)


def test_constant_outputs_and_state_nexts_use_the_at_sigil() -> None:
    graph = Graph("consts")
    graph.add_constant("zero", np.zeros(2, np.float32))
    graph.add_input("x", TensorType("f32", (2,)))
    graph.add_state("s", TensorType("f32", (2,)))
    graph.set_next("s", "zero")
    graph.outputs += ["zero", "x"]
    text = print_graph(graph)
    assert "state %s : f32[2] -> @zero\n" in text
    assert "output @zero\n  output %x\n}\n" in text
    assert parse_graph(text) == graph


# --------------------------------------------------------------------------- errors


def _error(text: str, arrays: dict[str, np.ndarray] | None = None) -> str:
    with pytest.raises(ParseError) as info:
        parse_graph(text, BIG if arrays is None else arrays, filename="small.ir")
    message = str(info.value)
    assert "\n" not in message
    return message


@pytest.mark.parametrize(
    ("old", "new", "where", "what"),
    [
        # syntax (Lark's errors, converted)
        ("-> %h", "%h", "line 5, column 24", "unexpected '%h'; expected '->'"),
        ("output %h", "output $h", "line 8, column 10", "unexpected character '$'; expected"),
        ("[1.0, 2.0, 3.0", "[[1.0], 2.0, 3.0", "line 2, column 27", "unexpected '['"),
        ("const @big", "const big", "line 3, column 9", "expected an @name"),
        # unknown op, bad attributes
        (
            "dig.leaky_relu(",
            "dig.leaky(",
            "line 7, column 8",
            "unknown op 'dig.leaky'; did you mean dig.leaky_relu",
        ),
        (
            "{alpha",
            "{beta",
            "line 7, column 28",
            "dig.leaky_relu has no attribute 'beta' (it has: alpha)",
        ),
        ("= 0.5}", '= "x"}', "line 7, column 36", 'attribute alpha takes a float, got "x"'),
        ("= 0.5}", "= [0.5]}", "line 7, column 28", "attribute alpha takes a float, got a list"),
        ("= 0.5}", "= 0.5, alpha = 1.0}", "line 7, column 41", "attribute alpha is given twice"),
        ("= 0.5}", "= inf}", "line 7, column 8", "dig.leaky_relu: alpha must be finite"),
        # names
        ("leaky_relu(%m)", "leaky_relu(%q)", "line 7, column 23", "undefined value %q"),
        ("%h = dig", "%m = dig", "line 7, column 3", "%m is already defined at line 6, column 3"),
        ("(%x, @w)", "(%x, %w)", "line 6, column 23", "%w is a constant; write @w"),
        ("-> %h", "-> %z", "line 5, column 27", "undefined value %z"),
        # types
        (
            ": f32[B, 2]\n  output",
            ": f32[B, 3]\n  output",
            "line 7, column 43",
            "dig.leaky_relu %h declares f32[B, 3] but computes f32[B, 2]",
        ),
        (
            "%s : f32[B, 2]",
            "%s : f32[B, 3]",
            "line 5, column 27",
            "state %s: f32[B, 3] takes %h: f32[B, 2]",
        ),
        ("%x : f32", "%x : f16", "line 4, column 14", "unknown dtype 'f16'; expected one of f32"),
        ("(%m)", "(%m, %x)", "line 7, column 8", "dig.leaky_relu takes 1 operands, got 2"),
        ("(%x, @w)", "(@w, %x)", "line 6, column 8", "xbar.dense: weight must be a constant"),
        ("%h = dig", "%h, %k = dig", "line 7, column 3", "has 1 results, but 2 are named"),
        # inline constants
        (
            "[1.0, 2.0, 3.0, 4.0, 5.0, 6.0]",
            "[1.0, 2.0]",
            "line 2, column 9",
            "takes 6 values, got 2",
        ),
        ("[1.0, 2.0,", "[true, 2.0,", "line 2, column 27", "true is not a valid f32 value"),
        ("[1.0, 2.0,", "[1e39, 2.0,", "line 2, column 27", "1e39 is not a valid f32 value"),
        (
            "f32[3, 2] = [1.0, 2.0, 3.0, 4.0, 5.0, 6.0]",
            "i32[] = 2147483648",
            "line 2, column 22",
            "2147483648 is not a valid i32 value",
        ),
        (
            "f32[3, 2] = [1.0, 2.0, 3.0, 4.0, 5.0, 6.0]",
            "f32[B] = [1.0]",
            "line 2, column 9",
            "constant @w cannot have the batch dimension B",
        ),
        # the graph as a whole
        ("  output %h\n", "", "line 1, column 7", "graph @g has no output"),
    ],
)
def test_parse_errors_name_line_and_column(old: str, new: str, where: str, what: str) -> None:
    assert old in SMALL
    message = _error(SMALL.replace(old, new, 1))
    assert message.startswith(f"small.ir, {where}: ")
    assert what in message


def test_unexpected_end_of_input() -> None:
    message = _error(SMALL[: SMALL.index("  output")])
    assert (
        message == "small.ir, line 8, column 1: unexpected end of input; "
        "expected ',' or 'loc' or 'output' or '}' or a %value"
    )


@pytest.mark.parametrize(
    ("arrays", "what"),
    [
        ({}, "constant @big : f32[20] has no values in the text and no array 'big' was given"),
        (
            {"big": np.zeros(21, np.float32)},
            "array 'big' is float32 of shape [21], but @big is declared f32[20]",
        ),
        (
            {"big": np.zeros(20, np.float64)},
            "array 'big' is float64 of shape [20], but @big is declared f32[20]",
        ),
    ],
)
def test_large_constant_arrays_must_match(arrays: dict[str, np.ndarray], what: str) -> None:
    assert _error(SMALL, arrays) == f"small.ir, line 3, column 9: {what}" + (
        "; pass arrays= (the .npz beside the text)" if not arrays else ""
    )


# --------------------------------------------------------------------------- random graphs

NAMES = st.from_regex(r"[A-Za-z_][A-Za-z0-9_.]{0,8}", fullmatch=True)
SOURCES = st.text(st.characters(exclude_categories=("Cs",)), max_size=12)
FINITE = st.floats(allow_nan=False, allow_infinity=False)
EXTRA_DTYPES = {
    np.dtype(np.float64): FINITE,
    np.dtype(np.int64): st.integers(-(2**63), 2**63 - 1),
    np.dtype(np.int32): st.integers(-(2**31), 2**31 - 1),
    np.dtype(np.bool_): st.booleans(),
}


@st.composite
def random_graphs(draw: st.DrawFn) -> Graph:
    """A verified graph: a random chain/DAG of element-wise, shape and SNU ops over
    ``f32[B, width]`` values, with random names, locs, constants and states."""
    used: set[str] = set()

    def fresh() -> str:
        name = draw(NAMES)
        while name in used:
            name += "_"
        used.add(name)
        return name

    def loc() -> Loc:
        return Loc(draw(SOURCES))

    width = draw(st.integers(1, 20))
    value_type = TensorType("f32", (BATCH, width))
    f32 = st.floats(width=32, allow_nan=False, allow_infinity=False)
    graph = Graph(draw(NAMES))
    params = [
        graph.add_constant(fresh(), draw(hnp.arrays(np.float32, (width,), elements=f32))),
        graph.add_constant(fresh(), draw(hnp.arrays(np.float32, (), elements=f32))),
    ]
    for dtype in draw(st.lists(st.sampled_from(list(EXTRA_DTYPES)), max_size=2)):
        shape = draw(hnp.array_shapes(min_dims=0, max_dims=3, min_side=0, max_side=5))
        graph.add_constant(fresh(), draw(hnp.arrays(dtype, shape, elements=EXTRA_DTYPES[dtype])))
    values = [graph.add_input(fresh(), value_type)]
    states = [graph.add_state(fresh(), value_type) for _ in range(draw(st.integers(0, 2)))]
    values += states

    def pick() -> str:
        return draw(st.sampled_from(values))

    def add(op: ops.Op, *inputs: str, results: int = 1) -> tuple[str, ...]:
        return graph.add_node(op, inputs, [fresh() for _ in range(results)], loc())

    for _ in range(draw(st.integers(1, 6))):
        kind = draw(st.sampled_from(["unary", "binary", "snu", "where", "shape", "reduce", "cast"]))
        if kind == "unary":
            unary = [
                ops.Neg(),
                ops.Relu(),
                ops.Sigmoid(),
                ops.Tanh(),
                ops.Step(),
                ops.Softmax(axis=-1),
                ops.LogSoftmax(axis=1),
                ops.LeakyRelu(draw(FINITE)),
            ]
            values += add(draw(st.sampled_from(unary)), pick())
        elif kind == "binary":
            binary = draw(st.sampled_from([ops.Add(), ops.Sub(), ops.Mul(), ops.Div()]))
            operands = draw(st.permutations([pick(), draw(st.sampled_from(values + params))]))
            values += add(binary, *operands)
        elif kind == "snu":
            snu = ops.SNULayer(
                draw(st.sampled_from(["relu", "identity"])),
                draw(st.sampled_from(["step", "sigmoid"])),
            )
            decay, bias = draw(st.sampled_from(params)), draw(st.sampled_from(params))
            values += add(snu, pick(), pick(), pick(), decay, bias, results=2)
        elif kind == "where":
            compare = draw(st.sampled_from([ops.Greater(), ops.GreaterOrEqual(), ops.Less()]))
            a, b = pick(), pick()
            (cond,) = add(compare, a, b)
            values += add(ops.Where(), cond, a, b)
        elif kind == "shape":
            (col,) = add(ops.Reshape((BATCH, width, 1)), pick())
            (row,) = add(ops.Transpose((0, 2, 1)), col)
            values += add(ops.Reshape((BATCH, width)), row)
        elif kind == "reduce":
            (both,) = add(ops.Concat(axis=draw(st.sampled_from([1, -1]))), pick(), pick())
            (total,) = add(ops.ReduceSum(axes=(1,), keepdims=True), both)
            values += add(ops.Mul(), pick(), total)
        else:
            (wide,) = add(ops.Cast(to=draw(st.sampled_from(["f64", "i32", "bool"]))), pick())
            values += add(ops.Cast(to="f32"), wide)
    for state in states:
        graph.set_next(state, pick())
    graph.outputs += draw(st.lists(st.sampled_from(values), min_size=1, max_size=3))
    graph.verify()
    return graph


@settings(max_examples=60, deadline=None)
@given(random_graphs())
def test_random_graphs_round_trip(graph: Graph) -> None:
    text = print_graph(graph)
    parsed = parse_graph(text, large_constants(graph))
    assert parsed == graph
    assert _bits_equal(parsed, graph)
    assert print_graph(parsed) == text


@settings(max_examples=30, deadline=None)
@given(
    st.floats(width=32, allow_nan=False, allow_infinity=False),
    st.floats(allow_nan=False, allow_infinity=False),
)
def test_floats_round_trip_bit_exactly(value32: float, value64: float) -> None:
    graph = Graph("floats")
    graph.add_constant("a", np.float32(value32))
    graph.add_constant("b", np.float64(value64))
    x = graph.add_input("x", TensorType("f32", (BATCH,)))
    graph.outputs.append(graph.add_node(ops.LeakyRelu(alpha=value64), [x])[0])
    parsed = parse_graph(print_graph(graph))
    assert _bits_equal(parsed, graph)
    assert np.float64(next(parsed.nodes()).op.alpha).tobytes() == np.float64(value64).tobytes()
