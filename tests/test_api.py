"""``snuc.compile`` takes a path, an onnx.ModelProto, a torch.nn.Module with an example
input, or an nir.NIRGraph (SPEC §2.1 "Python objects", §8)."""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import onnx
import pytest
from cli_helpers import assert_one_line_error, run_cli
from onnx_models import snu_scan_model

import snuc

torch = pytest.importorskip("torch")


class LoopNet(torch.nn.Module):
    """An LIF layer and a readout in a ``for`` loop over time (time-major input)."""

    def __init__(self):
        super().__init__()
        torch.manual_seed(0)
        self.fc = torch.nn.Linear(4, 6)
        self.out = torch.nn.Linear(6, 2)

    def forward(self, x):
        v = torch.zeros(x.shape[1], 6)
        outs = []
        for t in range(x.shape[0]):
            v = 0.8 * v + self.fc(x[t])
            y = (v > 1.0).float()
            v = v * (1 - y)
            outs.append(self.out(y))
        return torch.stack(outs)


@pytest.fixture(scope="module")
def onnx_file(tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("api") / "seq.onnx"
    onnx.save(snu_scan_model(), path)
    return path


def x_of(model: onnx.ModelProto, steps: int = 6, batch: int = 3) -> np.ndarray:
    dims = model.graph.input[0].type.tensor_type.shape.dim
    return (
        np.random.default_rng(0)
        .standard_normal((steps, batch, dims[2].dim_value))
        .astype(np.float32)
    )


def test_a_path_str_or_pathlike_and_a_model_proto_compile_alike(onnx_file) -> None:
    proto = onnx.load(onnx_file)
    x = x_of(proto)
    by_path = snuc.compile(onnx_file)
    assert by_path.source == onnx_file.name
    by_str = snuc.compile(str(onnx_file))
    by_proto = snuc.compile(proto, target="pcm-256x256")
    assert by_proto.source == proto.graph.name
    want = by_path.run(x, mode="float")
    np.testing.assert_array_equal(by_str.run(x, mode="float"), want)
    np.testing.assert_array_equal(by_proto.run(x, mode="float"), want)


def test_a_torch_module_with_an_example_is_exported_and_compiled() -> None:
    module = LoopNet().eval()
    art = snuc.compile(module, example=torch.randn(5, 2, 4))
    assert art.source == "LoopNet"
    x = (torch.randn(13, 3, 4) * 2).numpy()  # longer T and another batch than the example
    with torch.no_grad():
        want = module(torch.from_numpy(x)).numpy()
    np.testing.assert_allclose(art.run(x, mode="float"), want, rtol=1e-5, atol=1e-5)
    assert art.run(x, mode="pcm", seed=0).shape == want.shape


def test_the_export_prints_nothing_on_stdout(capfd) -> None:
    snuc.compile(LoopNet().eval(), example=torch.randn(4, 2, 4))
    assert capfd.readouterr().out == ""


def test_a_torch_module_without_an_example_is_refused() -> None:
    with pytest.raises(
        snuc.SnucError, match=r"needs an example input: snuc.compile\(module, example=x\)"
    ):
        snuc.compile(LoopNet())


def test_a_torch_module_that_does_not_export_is_one_line() -> None:
    with pytest.raises(snuc.SnucError) as err:
        snuc.compile(LoopNet(), example=torch.randn(5, 2, 3))  # 3 features, not 4
    assert str(err.value).startswith("torch.onnx.export of LoopNet failed:")
    assert "\n" not in str(err.value)


@pytest.mark.parametrize("thing", [42, b"bytes", None, [1, 2], object()])
def test_anything_else_is_one_clear_line(thing) -> None:
    with pytest.raises(snuc.SnucError) as err:
        snuc.compile(thing)
    message = str(err.value)
    assert message.startswith(
        "snuc.compile takes a path, an onnx.ModelProto, a torch.nn.Module with an example "
        "input or an nir.NIRGraph; got "
    )
    assert "\n" not in message


@pytest.mark.parametrize("options", [{"dt": 1e-3}, {"discretize": "exact"}], ids=["dt", "exact"])
def test_nir_options_with_an_onnx_model_are_refused(onnx_file, options) -> None:
    with pytest.raises(snuc.SnucError, match="apply to NIR input only") as err:
        snuc.compile(onnx_file, **options)
    assert "\n" not in str(err.value)


def test_nir_options_with_an_onnx_file_are_one_line_on_the_command_line(
    onnx_file, capsys, tmp_path
):
    out = tmp_path / "unused.snuc"
    status, _, err = run_cli(capsys, "compile", onnx_file, "--dt", "1e-4", "-o", out)
    assert_one_line_error(status, err, "apply to NIR input only")
    assert not out.exists()


def test_a_nir_file_without_nir_installed_names_the_extra(tmp_path, monkeypatch) -> None:
    monkeypatch.setitem(sys.modules, "nir", None)  # import nir now fails as if not installed
    path = tmp_path / "net.nir"
    path.write_bytes(b"")
    with pytest.raises(snuc.SnucError, match=r"needs the nir package: pip install 'snuc\[nir\]'$"):
        snuc.compile(path, dt=1e-3)


def test_a_nir_graph_compiles_through_nir_to_onnx() -> None:
    nir = pytest.importorskip("nir")
    pytest.importorskip("snuc.frontend.nir_import", reason="NIR import (the nir work of issue 12)")
    w = np.eye(2, dtype=np.float32)
    graph = nir.NIRGraph.from_list(
        nir.Linear(weight=w),
        nir.LIF(
            tau=np.full(2, 2e-3, np.float32),
            r=np.ones(2, np.float32),
            v_leak=np.zeros(2, np.float32),
            v_threshold=np.ones(2, np.float32),
        ),
    )
    with pytest.raises(snuc.SnucError, match="NIR is continuous-time"):
        snuc.compile(graph)
    art = snuc.compile(graph, dt=1e-3)
    assert art.source == "NIRGraph"
    out = art.run(np.ones((4, 1, 2), np.float32), mode="float")
    assert out.shape[:2] == (4, 1)
