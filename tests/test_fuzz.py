"""Fuzzing the readers of untrusted input (issue "Hardening"): the ONNX importer, the IR
text parser, the target parser and the artefact loader.

Each test mutates a valid input the way a fuzzer would — structural edits of the ONNX
protobuf (sizes, dims, ops, names, attributes, dropped parts), byte edits of its
serialisation and of the IR and TOML texts, TOML documents assembled from random keys and
values — and asserts the one contract of SPEC §9: the reader succeeds or raises a
:class:`SnucError`; never another exception, and never memory above a bound (the peak of
Python and NumPy allocations, measured with tracemalloc over every example of the test).

Bounded for CI: a fixed number of examples per test (``FUZZ_EXAMPLES``, settable by the
environment variable ``SNUC_FUZZ_EXAMPLES`` for longer local runs), derandomised so that a
CI run is reproducible; the whole module takes well under a minute.
"""

from __future__ import annotations

import copy
import hashlib
import json
import os
import tempfile
import tracemalloc
import zipfile
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

import numpy as np
import onnx
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from onnx import numpy_helper
from onnx_models import snu_scan_model, snu_step_model

from snuc.frontend.onnx_import import import_onnx
from snuc.ir.errors import SnucError
from snuc.ir.target import PARAMS, parse_target
from snuc.ir.text import large_constants, parse_graph, print_graph
from snuc.runtime.artefact import load

FUZZ_EXAMPLES = int(os.environ.get("SNUC_FUZZ_EXAMPLES", "150"))
MEMORY_BOUND_BYTES = 512 << 20
"""Peak of traced allocations over a test's examples: the valid inputs need a few MB."""

FUZZ = settings(
    max_examples=FUZZ_EXAMPLES,
    deadline=None,
    derandomize=os.environ.get("SNUC_FUZZ_RANDOM") is None,
    database=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)

SEEDS = {"step": snu_step_model(seed=1), "scan": snu_scan_model(seed=2)}


@contextmanager
def bounded_memory() -> Iterator[None]:
    tracemalloc.start()
    try:
        yield
        _, peak = tracemalloc.get_traced_memory()
        assert peak < MEMORY_BOUND_BYTES, f"peak traced memory {peak} bytes"
    finally:
        tracemalloc.stop()


def succeeds_or_refuses(reader: Callable[[], object]) -> None:
    """The contract: success, or a SnucError with a one-line message."""
    try:
        reader()
    except SnucError as err:
        assert "\n" not in str(err).strip(), str(err)


# ------------------------------------------------------------------ ONNX mutations

_OPS = [
    "Add",
    "Mul",
    "MatMul",
    "Relu",
    "Sigmoid",
    "Greater",
    "Cast",
    "Where",
    "Gemm",
    "Concat",
    "Reshape",
    "Expand",
    "ConstantOfShape",
    "Tile",
    "Range",
    "Slice",
    "Gather",
    "Transpose",
    "Squeeze",
    "Unsqueeze",
    "ReduceSum",
    "Scan",
    "Identity",
    "Neg",
    "Sub",
]

_NUMBERS = st.sampled_from([0, 1, 2, -1, -7, 3, 2**31, 10**9, 10**12, 2**62])


def _all_graphs(graph: onnx.GraphProto) -> list[onnx.GraphProto]:
    found = [graph]
    for node in graph.node:
        for a in node.attribute:
            if a.type == onnx.AttributeProto.GRAPH:
                found += _all_graphs(a.g)
    return found


@st.composite
def mutated_models(draw) -> onnx.ModelProto:
    """A seed model with one to four structural edits anywhere in its (sub)graphs."""
    model = copy.deepcopy(SEEDS[draw(st.sampled_from(sorted(SEEDS)))])
    for _ in range(draw(st.integers(1, 4))):
        graph = draw(st.sampled_from(_all_graphs(model.graph)))
        edit = draw(st.sampled_from(_EDITS))
        edit(draw, graph)
    return model


def _edit_initializer(draw, graph: onnx.GraphProto) -> None:
    if not graph.initializer:
        return
    init = draw(st.sampled_from(list(graph.initializer)))
    array = numpy_helper.to_array(init)
    if array.dtype.kind in "iu":
        shape = draw(st.sampled_from([array.shape, (draw(st.integers(0, 3)),), (1, 1)]))
        values = np.array(
            draw(st.lists(_NUMBERS, min_size=int(np.prod(shape)), max_size=int(np.prod(shape)))),
            dtype=array.dtype if array.dtype == np.int64 else np.int64,
        ).reshape(shape)
    else:
        special = draw(st.sampled_from([0.0, 1e30, -1e30, np.nan, np.inf]))
        values = array.copy().reshape(-1)
        if values.size:
            values[draw(st.integers(0, values.size - 1))] = special
        values = values.reshape(array.shape)
    init.CopyFrom(numpy_helper.from_array(values, init.name))


def _edit_dim(draw, graph: onnx.GraphProto) -> None:
    infos = [v for v in (*graph.input, *graph.output) if v.type.HasField("tensor_type")]
    if not infos:
        return
    dims = draw(st.sampled_from(infos)).type.tensor_type.shape.dim
    if not dims:
        return
    dim = dims[draw(st.integers(0, len(dims) - 1))]
    choice = draw(st.sampled_from(["value", "param", "clear"]))
    if choice == "value":
        dim.dim_value = draw(st.sampled_from([0, 1, 3, 10**6, 10**9, 2**40]))
    elif choice == "param":
        dim.dim_param = draw(st.sampled_from(["B", "T", "N", ""]))
    else:
        dim.Clear()


def _edit_op(draw, graph: onnx.GraphProto) -> None:
    if graph.node:
        draw(st.sampled_from(list(graph.node))).op_type = draw(st.sampled_from(_OPS))


def _edit_name(draw, graph: onnx.GraphProto) -> None:
    names = [n for node in graph.node for n in (*node.input, *node.output)]
    if graph.node and names:
        node = draw(st.sampled_from(list(graph.node)))
        field = node.input if node.input and draw(st.booleans()) else node.output
        if field:
            field[draw(st.integers(0, len(field) - 1))] = draw(st.sampled_from([*names, "", "?"]))


def _drop(draw, graph: onnx.GraphProto) -> None:
    parts = [p for p in (graph.node, graph.input, graph.output, graph.initializer) if len(p)]
    if parts:
        part = draw(st.sampled_from(parts))
        del part[draw(st.integers(0, len(part) - 1))]


def _edit_attribute(draw, graph: onnx.GraphProto) -> None:
    with_attrs = [n for n in graph.node if n.attribute]
    if not with_attrs:
        return
    node = draw(st.sampled_from(with_attrs))
    a = draw(st.sampled_from(list(node.attribute)))
    if a.type == onnx.AttributeProto.INT:
        a.i = draw(_NUMBERS)
    elif a.type == onnx.AttributeProto.INTS:
        a.ints[:] = draw(st.lists(_NUMBERS, max_size=4))
    elif a.type == onnx.AttributeProto.FLOAT:
        a.f = draw(st.sampled_from([0.0, -1.0, 1e38, float("nan")]))
    else:
        node.attribute.remove(a)


_EDITS = [_edit_initializer, _edit_dim, _edit_op, _edit_name, _drop, _edit_attribute]


@FUZZ
@given(model=mutated_models())
def test_importer_survives_structural_mutations(model):
    with bounded_memory():
        succeeds_or_refuses(lambda: import_onnx(model))


@FUZZ
@given(
    seed=st.sampled_from(sorted(SEEDS)),
    edits=st.lists(st.tuples(st.floats(0, 1), st.integers(0, 255)), min_size=1, max_size=8),
    cut=st.floats(0.05, 1.0),
)
def test_importer_survives_byte_mutations(tmp_path_factory, seed, edits, cut):
    data = bytearray(SEEDS[seed].SerializeToString())
    for where, byte in edits:
        data[int(where * (len(data) - 1))] = byte
    path = tmp_path_factory.mktemp("fuzz") / "m.onnx"
    path.write_bytes(bytes(data[: max(1, int(cut * len(data)))]))
    with bounded_memory():
        succeeds_or_refuses(lambda: import_onnx(path))


# ------------------------------------------------------------------ IR text


def _seed_ir() -> tuple[str, dict[str, np.ndarray]]:
    graph = import_onnx(SEEDS["scan"])
    return print_graph(graph), large_constants(graph)


IR_TEXT, IR_ARRAYS = _seed_ir()


@FUZZ
@given(
    edits=st.lists(
        st.tuples(
            st.sampled_from(["delete", "insert", "replace", "duplicate-line"]),
            st.floats(0, 1),
            st.sampled_from(list('0123456789-[]{}(),:=%"x.e B') + ["f32", "i64", "snu.", "\n"]),
        ),
        min_size=1,
        max_size=6,
    )
)
def test_ir_parser_survives_text_mutations(edits):
    text = IR_TEXT
    for kind, where, piece in edits:
        at = int(where * len(text))
        if kind == "delete":
            text = text[:at] + text[at + 1 :]
        elif kind == "insert":
            text = text[:at] + piece + text[at:]
        elif kind == "replace":
            text = text[:at] + piece + text[at + 1 :]
        else:
            lines = text.splitlines(keepends=True)
            k = int(where * (len(lines) - 1))
            text = "".join(lines[: k + 1] + lines[k:])
    with bounded_memory():
        succeeds_or_refuses(lambda: parse_graph(text, IR_ARRAYS))


# ------------------------------------------------------------------ targets

_TOML_VALUES = st.one_of(
    st.integers(-(10**30), 10**30),
    st.sampled_from(["nan", "inf", "-inf", "0.0", "1e308", "-0.0", "1e-320"]),
    st.text(alphabet="abc\"'\\[]{}=\n", max_size=8).map(lambda s: repr(s)),
    st.sampled_from(["[]", "[1, 2]", "{a = 1}", "true", "1979-05-27", "[[1]]"]),
)


@st.composite
def toml_documents(draw) -> str:
    keys = st.sampled_from([*sorted(PARAMS), "base", "name", "unknown", "rows.x", '"q"'])
    lines = []
    for _ in range(draw(st.integers(0, 6))):
        value = draw(_TOML_VALUES)
        if draw(st.booleans()) and not isinstance(value, str):
            value = str(value)
        lines.append(f"{draw(keys)} = {value}")
    text = "\n".join(lines) + "\n"
    if draw(st.booleans()):  # and a few raw byte edits
        for where, char in draw(st.lists(st.tuples(st.floats(0, 1), st.characters()), max_size=3)):
            at = int(where * len(text))
            text = text[:at] + char + text[at + 1 :]
    return text


@FUZZ
@given(document=toml_documents())
def test_target_parser_survives_random_documents(tmp_path_factory, document):
    path = tmp_path_factory.mktemp("fuzz") / "chip.toml"
    path.write_text(document, encoding="utf-8", errors="surrogatepass")
    with bounded_memory():
        succeeds_or_refuses(lambda: parse_target(path))


@FUZZ
@given(name=st.text(max_size=24) | st.from_regex(r"pcm-[0-9]{1,12}x[0-9]{1,12}", fullmatch=True))
def test_target_names_are_read_or_refused(name):
    succeeds_or_refuses(lambda: parse_target(name))


@pytest.mark.parametrize("seed", sorted(SEEDS))
def test_fuzz_seeds_are_valid(seed):
    """The mutations start from inputs that import: a broken seed would fuzz nothing."""
    assert len(import_onnx(SEEDS[seed])) > 0


# ------------------------------------------------------------------ artefacts


def _seed_artefact() -> dict[str, bytes]:
    """The members of a compiled example artefact, by name."""
    from snuc.driver import compile_model

    model = Path(__file__).resolve().parent.parent / "examples" / "snu_small.onnx"
    with tempfile.TemporaryDirectory() as scratch:
        path = compile_model(model).save(Path(scratch) / "a.snuc")
        return {p.name: p.read_bytes() for p in path.iterdir()}


ARTEFACT = _seed_artefact()
_MANIFEST_FIELDS = [
    ("format_version",),
    ("source",),
    ("inputs",),
    ("outputs",),
    ("target", "rows"),
    ("target", "prog_noise_scale"),
    ("target", "name"),
    ("members", "arrays.npz", "size"),
    ("members", "report.json", "size"),
    ("members", "graph.ir", "sha256"),
    ("members", "program.s"),
    ("members", "../x"),
]
_RAW = "@@raw@@"
_JSON_VALUES = st.sampled_from(
    [None, 0, -1, 1, 2, 10**12, 2**63, 1.5, "", "x", "T", [], [1], {}, {"a": []}, True]
) | st.sampled_from(["9" * 5000, "[" * 5000 + "]" * 5000, "1e999", "-1e999", "NaN"]).map(
    lambda raw: (_RAW, raw)
)
"""JSON values for a manifest field; ``(_RAW, text)``: text spliced in as it is (a number
beyond Python's digit limit, nesting beyond the recursion limit, what json.dumps refuses)."""


def _artefact_at(directory: Path, members: dict[str, bytes], as_zip: bool) -> Path:
    if not as_zip:
        root = directory / "a.snuc"
        root.mkdir()
        for name, data in members.items():
            (root / name).write_bytes(data)
        return root
    path = directory / "a.snuc.zip"
    with zipfile.ZipFile(path, "w", zipfile.ZIP_DEFLATED) as zf:
        for name, data in members.items():
            zf.writestr(name, data)
    return path


def _with_checksum(members: dict[str, bytes], name: str) -> None:
    """Record member ``name``'s new checksum in the manifest, as a tamperer would."""
    manifest = json.loads(members["manifest.json"])
    data = members[name]
    manifest["members"][name] = {"sha256": hashlib.sha256(data).hexdigest(), "size": len(data)}
    members["manifest.json"] = json.dumps(manifest).encode()


@FUZZ
@given(
    name=st.sampled_from(sorted(ARTEFACT)),
    edits=st.lists(st.tuples(st.floats(0, 1), st.integers(0, 255)), min_size=1, max_size=6),
    cut=st.floats(0.0, 1.0),
    recompute=st.booleans(),
    as_zip=st.booleans(),
)
def test_artefact_loader_survives_member_mutations(
    tmp_path_factory, name, edits, cut, recompute, as_zip
):
    members = dict(ARTEFACT)
    data = bytearray(members[name])
    for where, byte in edits:
        data[int(where * (len(data) - 1))] = byte
    members[name] = bytes(data[: int(cut * len(data)) or len(data)])
    if recompute and name != "manifest.json":
        _with_checksum(members, name)
    path = _artefact_at(tmp_path_factory.mktemp("fuzz"), members, as_zip)
    with bounded_memory():
        succeeds_or_refuses(lambda: load(path))


@FUZZ
@given(field=st.sampled_from(_MANIFEST_FIELDS), value=_JSON_VALUES, as_zip=st.booleans())
def test_artefact_loader_survives_manifest_edits(tmp_path_factory, field, value, as_zip):
    manifest = json.loads(ARTEFACT["manifest.json"])
    node = manifest
    for key in field[:-1]:
        node = node[key]
    raw = value[1] if isinstance(value, tuple) else None
    node[field[-1]] = _RAW if raw is not None else value
    text = json.dumps(manifest)
    if raw is not None:
        text = text.replace(json.dumps(_RAW), raw)
    members = {**ARTEFACT, "manifest.json": text.encode()}
    path = _artefact_at(tmp_path_factory.mktemp("fuzz"), members, as_zip)
    with bounded_memory():
        succeeds_or_refuses(lambda: load(path))


@FUZZ
@given(
    edits=st.lists(st.tuples(st.floats(0, 1), st.integers(0, 255)), min_size=1, max_size=8),
    cut=st.floats(0.0, 1.0),
)
def test_artefact_loader_survives_zip_mutations(tmp_path_factory, edits, cut):
    directory = tmp_path_factory.mktemp("fuzz")
    path = _artefact_at(directory, ARTEFACT, as_zip=True)
    data = bytearray(path.read_bytes())
    for where, byte in edits:
        data[int(where * (len(data) - 1))] = byte
    path.write_bytes(bytes(data[: int(cut * len(data)) or len(data)]))
    with bounded_memory():
        succeeds_or_refuses(lambda: load(path))


def test_artefact_seed_loads():
    """The artefact mutations start from one that loads."""
    with tempfile.TemporaryDirectory() as scratch:
        assert load(_artefact_at(Path(scratch), ARTEFACT, as_zip=True)).program
