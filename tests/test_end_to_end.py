"""Whole-pipeline checks: PyTorch model -> ONNX export -> import -> passes -> interpreter.

The issue's acceptance check: for SNU, sSNU, recurrent and convolutional networks built
with the frontend, the reference interpreter on the imported, lifted IR equals PyTorch
over 50 timesteps (max abs error <= 1e-5 on real values; identical spikes).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

torch = pytest.importorskip("torch")
pytest.importorskip("onnxscript")

from torch import nn  # noqa: E402

from snuc import driver  # noqa: E402
from snuc.frontend.export import export, export_step  # noqa: E402
from snuc.frontend.layers import SNU, ConvSNU, Flatten, Readout, SNUNetwork, sSNU  # noqa: E402
from snuc.runtime.interpreter import run  # noqa: E402

T_STEPS = 50


def _ff_snu() -> SNUNetwork:
    return SNUNetwork(SNU(12, 20, decay=0.8), SNU(20, 8, decay=0.7, bias_init=-0.5))


def _ssnu() -> SNUNetwork:
    return SNUNetwork(sSNU(12, 16, g="identity", decay=0.4), Readout(16, 5, "sigmoid"))


def _recurrent() -> SNUNetwork:
    return SNUNetwork(
        SNU(12, 16, recurrent=True, decay=torch.linspace(0.3, 0.9, 16)),
        sSNU(16, 10, recurrent=True),
        Readout(10, 4, "log_softmax"),
    )


def _conv() -> SNUNetwork:
    return SNUNetwork(
        ConvSNU(1, 4, 3, padding=1, decay=0.8),
        nn.MaxPool2d(2),
        Flatten(),
        SNU(4 * 4 * 4, 10, decay=0.9),
        Readout(10, 3, "identity"),
    )


NETWORKS = {
    "snu": (_ff_snu, (12,), 2),
    "ssnu": (_ssnu, (12,), 1),
    "recurrent": (_recurrent, (12,), 2),
    "conv": (_conv, (1, 8, 8), 2),
}


def _spiking_input(shape: tuple[int, ...], batch: int, seed: int) -> np.ndarray:
    """Binary spike trains with a rate high enough to make every layer fire."""
    rng = np.random.default_rng(seed)
    return (rng.random((T_STEPS, batch, *shape)) < 0.4).astype(np.float32)


def _torch_output(model: nn.Module, x: np.ndarray) -> np.ndarray:
    with torch.no_grad():
        return model(torch.from_numpy(x)).numpy()


def _lifted_graph(path: Path, state_pairs=None):
    graph = driver.lower(driver.import_model(path, state_pairs))
    ops = [node.op.NAME for node in graph.nodes()]
    return graph, ops


@pytest.mark.parametrize("kind", sorted(NETWORKS))
def test_interpreter_on_imported_ir_equals_pytorch(kind: str, tmp_path: Path) -> None:
    make, shape, n_snu = NETWORKS[kind]
    torch.manual_seed(1)
    model = make().eval()
    path = export(
        model,
        tmp_path / f"{kind}.onnx",
        input_features=shape,
        check_lengths=(3,),
        check_batches=(2,),
    )
    graph, ops = _lifted_graph(path)

    # Every SNU layer of the model is lifted into exactly one snu.layer op.
    assert ops.count("snu.layer") == n_snu
    assert not {"dig.greater", "dig.cast", "dig.where"} & set(ops)

    x = _spiking_input(shape, batch=3, seed=2)
    want = _torch_output(model, x)
    (got,) = run(graph, x).values()
    assert got.shape == want.shape
    assert np.max(np.abs(got - want)) <= 1e-5


def test_spikes_are_identical_layer_by_layer(tmp_path: Path) -> None:
    """Hidden spike trains (not only the readout) agree exactly with PyTorch."""
    torch.manual_seed(3)
    model = _ff_snu().eval()
    path = export(model, tmp_path / "ff.onnx", check_lengths=(3,), check_batches=(2,))
    graph, _ = _lifted_graph(path)
    x = _spiking_input((12,), batch=4, seed=5)
    _, values = run(graph, x, trace=True)

    layer0 = model.layers[0]
    with torch.no_grad():
        want = layer0(torch.from_numpy(x)).numpy()
    spikes = values["layers.0.y_next"]
    assert set(np.unique(spikes)) <= {0.0, 1.0}
    assert 0.05 < spikes.mean() < 0.95
    np.testing.assert_array_equal(spikes, want)


def test_step_form_export_imports_to_the_same_function(tmp_path: Path) -> None:
    torch.manual_seed(4)
    model = _recurrent().eval()
    seq = export(model, tmp_path / "seq.onnx", check_lengths=(3,), check_batches=(2,))
    step = export_step(model, tmp_path / "step.onnx", check_lengths=(3,), check_batches=(2,))
    g_seq, _ = _lifted_graph(seq)
    g_step, ops = _lifted_graph(step)
    assert ops.count("snu.layer") == 2
    x = _spiking_input((12,), batch=2, seed=6)
    (y_seq,) = run(g_seq, x).values()
    (y_step,) = run(g_step, x).values()
    np.testing.assert_allclose(y_step, y_seq, atol=1e-6)
