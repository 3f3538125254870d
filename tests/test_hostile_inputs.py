"""Hostile inputs to the compiler (SPEC §9; issue "Hardening"): every one is refused with
exit 2 and one line on stderr, before it allocates without bound, leaving no output.

Models are built here with ``onnx.helper`` (tests/onnx_models.py) and then broken the way
a fuzzer or a hostile user would break them. The two cases whose unguarded form allocates
gigabytes run in a subprocess under an address-space limit (RLIMIT_AS), so the test
measures the bound instead of trusting it.
"""

from __future__ import annotations

import copy
import resource
import subprocess
import sys
from pathlib import Path

import numpy as np
import onnx
import pytest
from cli_helpers import assert_one_line_error, run_cli
from onnx import TensorProto, helper, numpy_helper
from onnx_models import shape_computation_model, snu_scan_model, snu_step_model

from snuc.ir.errors import SnucError
from snuc.ir.limits import MAX_TENSOR_BYTES_ENV, check_nesting, load_json

ADDRESS_SPACE_LIMIT = 3 << 30
"""Address space of the subprocess that compiles a model declaring gigabytes (3 GiB:
Python, NumPy and onnxruntime take under 1.5 GiB of it; the unguarded import asks for
7.5 GiB in one allocation)."""


def _save(model: onnx.ModelProto, path: Path) -> Path:
    path.write_bytes(model.SerializeToString())
    return path


def _with_initializer(model: onnx.ModelProto, name: str, array: np.ndarray) -> onnx.ModelProto:
    model = copy.deepcopy(model)
    init = next(t for t in model.graph.initializer if t.name == name)
    init.CopyFrom(numpy_helper.from_array(array, name))
    return model


def _compile_limited(model_path: Path, out: Path) -> subprocess.CompletedProcess:
    """``snuc compile`` in a subprocess whose address space is capped."""

    def cap() -> None:
        resource.setrlimit(resource.RLIMIT_AS, (ADDRESS_SPACE_LIMIT, ADDRESS_SPACE_LIMIT))

    code = "import sys; from snuc.cli import main; sys.exit(main(sys.argv[1:]))"
    return subprocess.run(
        [sys.executable, "-c", code, "compile", str(model_path), "-o", str(out)],
        capture_output=True,
        text=True,
        preexec_fn=cap,
        timeout=300,
    )


def _assert_refused(result: subprocess.CompletedProcess, *needles: str) -> None:
    assert result.returncode == 2, result.stderr
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("snuc: error: "), result.stderr
    for needle in needles:
        assert needle in lines[0], lines[0]


# ------------------------------------------------------------------ declared sizes


def test_initial_state_of_a_billion_is_refused_before_it_is_allocated(tmp_path):
    model = _with_initializer(snu_scan_model(), "init/sizes_0", np.array([10**9], np.int64))
    out = tmp_path / "m.snuc"
    result = _compile_limited(_save(model, tmp_path / "m.onnx"), out)
    _assert_refused(
        result, "initial states", "init/state_0", "over the limit", MAX_TENSOR_BYTES_ENV
    )
    assert not out.exists()


def test_input_dimension_of_a_billion_is_refused_before_it_is_allocated(tmp_path):
    model = snu_scan_model()
    model.graph.input[0].type.tensor_type.shape.dim[2].dim_value = 10**9
    out = tmp_path / "m.snuc"
    result = _compile_limited(_save(model, tmp_path / "m.onnx"), out)
    _assert_refused(result, "input 'X'", "over the limit")
    assert not out.exists()


def test_constant_of_shape_in_the_step_is_sized_before_folding(tmp_path, capsys):
    shape = numpy_helper.from_array(np.array([4, 10**9], np.int64), "shape")
    axes = numpy_helper.from_array(np.array([1], np.int64), "axes")
    nodes = [
        helper.make_node("ConstantOfShape", ["shape"], ["big"], name="huge"),
        helper.make_node("ReduceSum", ["big", "axes"], ["sum"], keepdims=0, name="sum"),
        helper.make_node("Add", ["x", "sum"], ["y"], name="add"),
    ]
    graph = helper.make_graph(
        nodes,
        "g",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["B", 4])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["B", 4])],
        [shape, axes],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)], ir_version=8)
    out = tmp_path / "m.snuc"
    status, _, err = run_cli(capsys, "compile", _save(model, tmp_path / "m.onnx"), "-o", out)
    assert_one_line_error(status, err, "'huge' (ConstantOfShape)", "over the limit")
    assert not out.exists()


def test_the_limit_is_set_by_the_environment(tmp_path, capsys, monkeypatch):
    path = _save(snu_scan_model(), tmp_path / "m.onnx")
    monkeypatch.setenv(MAX_TENSOR_BYTES_ENV, "64")
    status, _, err = run_cli(capsys, "compile", path, "-o", tmp_path / "a.snuc")
    assert_one_line_error(status, err, "over the limit of 64 bytes")
    monkeypatch.setenv(MAX_TENSOR_BYTES_ENV, "lots")
    status, _, err = run_cli(capsys, "compile", path, "-o", tmp_path / "b.snuc")
    assert_one_line_error(status, err, MAX_TENSOR_BYTES_ENV, "positive integer")
    monkeypatch.setenv(MAX_TENSOR_BYTES_ENV, str(1 << 30))
    status, _, err = run_cli(capsys, "compile", path, "-o", tmp_path / "c.snuc")
    assert status == 0, err
    assert not (tmp_path / "a.snuc").exists() and not (tmp_path / "b.snuc").exists()


# ------------------------------------------------------------------ external data


@pytest.mark.parametrize(
    ("location", "needle"),
    [("/etc/passwd", "absolute path"), ("../outside.bin", "outside"), ("missing.bin", "missing")],
)
def test_external_data_outside_the_model_folder_is_refused(tmp_path, capsys, location, needle):
    model = snu_scan_model()
    tensor = model.graph.initializer[0]
    tensor.ClearField("raw_data")
    tensor.ClearField("int64_data")
    tensor.data_location = TensorProto.EXTERNAL
    tensor.external_data.add(key="location", value=location)
    out = tmp_path / "m.snuc"
    status, _, err = run_cli(capsys, "compile", _save(model, tmp_path / "m.onnx"), "-o", out)
    assert_one_line_error(status, err, "cannot read the model's external data")
    assert needle in err or location in err
    assert not out.exists()


# ------------------------------------------------------------------ structure and metadata


def test_scan_body_with_an_extra_output_is_refused(tmp_path, capsys):
    model = snu_scan_model()
    scan = next(n for n in model.graph.node if n.op_type == "Scan")
    body = next(a for a in scan.attribute if a.name == "body").g
    body.output.append(copy.deepcopy(body.output[0]))
    out = tmp_path / "m.snuc"
    status, _, err = run_cli(capsys, "compile", _save(model, tmp_path / "m.onnx"), "-o", out)
    assert_one_line_error(status, err, "'scan' (Scan)", "must match one to one")
    assert not out.exists()


@pytest.mark.parametrize(
    ("text", "needle"),
    [
        ("[" * 100_000 + "]" * 100_000, "nests arrays or objects more than 64 deep"),
        ('{"y": ' + "7" * 5000 + "}", "holds a number snuc cannot read"),
    ],
)
def test_hostile_state_metadata_is_one_line(tmp_path, capsys, text, needle):
    model = snu_step_model()
    next(p for p in model.metadata_props if p.key == "snuc.state").value = text
    out = tmp_path / "m.snuc"
    status, _, err = run_cli(capsys, "compile", _save(model, tmp_path / "m.onnx"), "-o", out)
    assert_one_line_error(status, err, "metadata 'snuc.state'", needle)
    assert not out.exists()


def test_onnxruntime_failures_print_no_log_lines(tmp_path, capfd):
    # A negative initial-state size makes ConstantOfShape fail inside onnxruntime, which
    # logs the failure on the process's stderr (file descriptor 2) before raising it.
    model = _with_initializer(snu_scan_model(), "init/sizes_0", np.array([-5], np.int64))
    out = tmp_path / "m.snuc"
    status, _, err = run_cli(capfd, "compile", _save(model, tmp_path / "m.onnx"), "-o", out)
    assert_one_line_error(status, err, "initial states")
    assert not out.exists()


# ------------------------------------------------------------------ targets


@pytest.mark.parametrize(
    ("toml", "needle"),
    [
        ("a = " + "[" * 5000 + "1" + "]" * 5000 + "\n", "more than 64 deep"),
        ("rows = " + "9" * 5000 + "\n", "is not valid TOML"),
    ],
)
def test_hostile_target_files_are_one_line(tmp_path, capsys, toml, needle):
    target = tmp_path / "chip.toml"
    target.write_text(toml)
    out = tmp_path / "m.snuc"
    model = _save(snu_scan_model(), tmp_path / "m.onnx")
    status, _, err = run_cli(capsys, "compile", model, "--target", target, "-o", out)
    assert_one_line_error(status, err, needle)
    assert not out.exists()


@pytest.mark.parametrize("name", ["pcm-" + "9" * 5000 + "x8", "pcm-\uff18x\uff18"])
def test_hostile_target_names_are_one_short_line(tmp_path, capsys, name):
    out = tmp_path / "m.snuc"
    model = _save(snu_scan_model(), tmp_path / "m.onnx")
    status, _, err = run_cli(capsys, "compile", model, "--target", name, "-o", out)
    assert_one_line_error(status, err, "unknown target")
    assert len(err) < 300
    assert not out.exists()


# ------------------------------------------------------------------ the helpers themselves


def test_nesting_counts_only_open_brackets_in_depth():
    check_nesting("[" * 64 + "]" * 64, "doc")
    check_nesting("[]" * 10_000, "doc")
    with pytest.raises(SnucError, match="more than 64 deep"):
        check_nesting("{" * 65, "doc")


def test_load_json_turns_every_failure_into_one_line():
    assert load_json(b'{"a": [1, 2]}', "doc") == {"a": [1, 2]}
    for text, needle in [("{", "not valid JSON"), (b"\xff", "not UTF-8")]:
        with pytest.raises(SnucError, match=needle):
            load_json(text, "doc")


# ------------------------------------------------------------------ found by tests/test_fuzz.py


def _scan_node(model: onnx.ModelProto) -> onnx.NodeProto:
    return next(n for n in model.graph.node if n.op_type == "Scan")


def test_scan_counting_more_scan_inputs_than_it_has_is_refused(tmp_path, capsys):
    model = snu_scan_model()
    next(a for a in _scan_node(model).attribute if a.name == "num_scan_inputs").i = 2**31
    status, _, err = run_cli(capsys, "compile", _save(model, tmp_path / "m.onnx"), "-o", "x")
    assert_one_line_error(status, err, "num_scan_inputs is 2147483648")


def test_cast_to_an_unknown_element_type_is_one_line(tmp_path, capsys):
    model = snu_step_model()
    cast = next(n for n in model.graph.node if n.op_type == "Cast")
    next(a for a in cast.attribute if a.name == "to").i = -1
    status, _, err = run_cli(capsys, "compile", _save(model, tmp_path / "m.onnx"), "-o", "x")
    assert_one_line_error(status, err, "element type -1")


def test_a_name_that_is_not_utf8_is_one_line(tmp_path, capsys):
    data = snu_step_model().SerializeToString()
    name = b"l0/MatMul"
    assert name in data
    corrupt = data.replace(name, b"l0/MatM\xffl", 1)
    status, _, err = run_cli(
        capsys, "compile", _save_bytes(corrupt, tmp_path / "m.onnx"), "-o", "x"
    )
    assert_one_line_error(status, err, "not UTF-8 text")


def test_shape_arithmetic_on_malformed_shapes_is_one_line(tmp_path, capsys):
    # Concat of the batch size (rank 1) with a rank-2 constant, evaluated on symbolic
    # shapes at import: NumPy raised its own ValueError.
    model = _with_initializer(
        shape_computation_model("gather_concat"), "minus_one", np.array([[-1]], np.int64)
    )
    status, _, err = run_cli(capsys, "compile", _save(model, tmp_path / "m.onnx"), "-o", "x")
    assert_one_line_error(status, err, "Concat cannot be evaluated on these shapes")


def _save_bytes(data: bytes, path: Path) -> Path:
    path.write_bytes(data)
    return path
