"""Plain PyTorch SNNs exported by torch.onnx.export: step modules, and ``for`` loops over
time that the exporters unroll, which snuc folds back into one step (SPEC §2.1).

Every model here is written the way a user writes one: an LIF step with ``(v > θ).float()``
spikes and reset to zero, feed-forward or recurrent, one or two layers, a linear readout.
Each is exported with the dynamo exporter (torch's default) and the legacy one
(``dynamo=False``), with a static or a dynamic batch.
"""

from __future__ import annotations

import warnings
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from cli_helpers import assert_one_line_error, run_cli

from snuc.driver import compile_model
from snuc.frontend.onnx_import import import_onnx
from snuc.frontend.onnx_lower import SUPPORTED_OPS
from snuc.ir.errors import SnucError
from snuc.ir.text import print_graph

torch = pytest.importorskip("torch")
nn = torch.nn

T_EXPORT, BATCH, N_IN, N_HID, N_OUT = 5, 2, 4, 6, 3
EXPORTS = [
    pytest.param(exporter, dynamic, id=f"{exporter}-{'dynamic' if dynamic else 'static'}")
    for exporter in ("dynamo", "legacy")
    for dynamic in (False, True)
]


class LoopNet(nn.Module):
    """LIF layers (reset to zero) in a ``for`` loop over time; returns spikes and readout.

    ``odd_step``: step at which the decay differs (a model snuc must refuse).
    ``v0``: the membrane's initial value (not zero: a model snuc must refuse).
    """

    def __init__(self, *, recurrent=False, layers=1, odd_step=None, v0=0.0, seed=0):
        super().__init__()
        torch.manual_seed(seed)
        self.fcs = nn.ModuleList(
            [nn.Linear(N_IN if i == 0 else N_HID, N_HID) for i in range(layers)]
        )
        self.rec = nn.Linear(N_HID, N_HID, bias=False) if recurrent else None
        self.out = nn.Linear(N_HID, N_OUT)
        self.odd_step, self.v0 = odd_step, v0

    def forward(self, x):
        spikes, outs = self.per_step(x)
        return torch.stack(spikes), torch.stack(outs)

    def per_step(self, x):
        """The spikes and readouts of every step, as lists."""
        batch = x.shape[1]
        vs = [torch.full((batch, N_HID), self.v0) for _ in self.fcs]
        ys = [torch.zeros(batch, N_HID) for _ in self.fcs]
        spikes, outs = [], []
        for t in range(x.shape[0]):
            h = x[t]
            beta = 0.5 if t == self.odd_step else 0.8
            for i, fc in enumerate(self.fcs):
                a = fc(h)
                if self.rec is not None and i == 0:
                    a = a + self.rec(ys[0])
                vs[i] = beta * vs[i] * (1 - ys[i]) + a
                ys[i] = (vs[i] > 1.0).float()
                h = ys[i]
            spikes.append(h)
            outs.append(self.out(h))
        return spikes, outs


class StepNet(nn.Module):
    """One step of a recurrent LIF layer and readout: ``(x, v, y) -> (out, v, y)``."""

    def __init__(self):
        super().__init__()
        torch.manual_seed(1)
        self.fc = nn.Linear(N_IN, N_HID)
        self.rec = nn.Linear(N_HID, N_HID, bias=False)
        self.out = nn.Linear(N_HID, N_OUT)

    def forward(self, x, v, y):
        v = 0.8 * v * (1 - y) + self.fc(x) + self.rec(y)
        y = (v > 1.0).float()
        return self.out(y), v, y


def export(model, args, path: Path, exporter: str, dynamic: bool, names=None) -> Path:
    """``torch.onnx.export`` as a user calls it; ``dynamic``: the batch axis (1) is dynamic."""
    names = names or {"x": 1}
    in_names = list(names)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        if exporter == "legacy":
            axes = {name: {axis: "B"} for name, axis in names.items()} if dynamic else None
            torch.onnx.export(
                model, args, path, dynamo=False, input_names=in_names, dynamic_axes=axes
            )
        else:
            batch = torch.export.Dim("B")
            shapes = tuple({axis: batch} for axis in names.values()) if dynamic else None
            torch.onnx.export(
                model,
                args,
                path,
                dynamo=True,
                input_names=in_names,
                dynamic_shapes=shapes,
                verbose=False,
            )
    return path


def sequence(steps: int, batch: int = BATCH, seed: int = 0) -> np.ndarray:
    return (np.random.default_rng(seed).standard_normal((steps, batch, N_IN)) * 2).astype(
        np.float32
    )


def onnxruntime_outputs(path: Path, x: np.ndarray) -> list[np.ndarray]:
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    return session.run(None, {session.get_inputs()[0].name: x})


def as_list(outputs) -> list[np.ndarray]:
    return list(outputs.values()) if isinstance(outputs, dict) else [outputs]


def assert_same(got: list[np.ndarray], want: list[np.ndarray]) -> None:
    """Spikes identical, readouts to 1e-5, and some spikes at all (else nothing is tested)."""
    spikes, readout = got
    np.testing.assert_array_equal(spikes, want[0])
    np.testing.assert_allclose(readout, want[1], rtol=1e-5, atol=1e-5)
    assert 0 < spikes.mean() < 1


@pytest.fixture(scope="module")
def exported(tmp_path_factory):
    """``(kind, exporter, dynamic) -> (module, path)``, exported once per module."""
    cache: dict = {}
    folder = tmp_path_factory.mktemp("unroll")

    def get(kind: str, exporter: str, dynamic: bool):
        key = (kind, exporter, dynamic)
        if key not in cache:
            model = {
                "ff": lambda: LoopNet(),
                "rec2": lambda: LoopNet(recurrent=True, layers=2),
            }[kind]().eval()
            path = folder / f"{kind}-{exporter}-{dynamic}.onnx"
            x = torch.from_numpy(sequence(T_EXPORT))
            cache[key] = (model, export(model, (x,), path, exporter, dynamic))
        return cache[key]

    return get


# ---------------------------------------------------------------------- folding


@pytest.mark.parametrize("kind", ["ff", "rec2"])
@pytest.mark.parametrize(("exporter", "dynamic"), EXPORTS)
def test_for_loop_folds_equal_to_onnxruntime_and_torch(exported, kind, exporter, dynamic):
    model, path = exported(kind, exporter, dynamic)
    art = compile_model(path)
    x = sequence(T_EXPORT)
    assert_same(as_list(art.run(x, mode="float")), onnxruntime_outputs(path, x))
    # Longer than exported, and another batch size: the folded step runs any T and B.
    long = sequence(3 * T_EXPORT + 1, batch=3, seed=1)
    with torch.no_grad():
        want = [t.numpy() for t in model(torch.from_numpy(long))]
    assert_same(as_list(art.run(long, mode="float")), want)
    pcm = as_list(art.run(long, mode="pcm", seed=0))
    assert [p.shape for p in pcm] == [w.shape for w in want]
    assert all(np.all(np.isfinite(p)) for p in pcm)


@pytest.mark.parametrize(("exporter", "dynamic"), EXPORTS)
def test_folded_step_is_one_copy_of_the_loop_body(exported, exporter, dynamic) -> None:
    """A 2-layer recurrent net: 4 weight matrices (fc0, rec, fc1, out), 4 states (v, y each)."""
    _, path = exported("rec2", exporter, dynamic)
    text = print_graph(import_onnx(path))
    assert text.count("= xbar.dense(") == 4
    assert text.count("  state %") == 4
    assert "  input %x : f32[B, 4]" in text


@pytest.mark.parametrize(("exporter", "dynamic"), EXPORTS)
def test_step_module_exports_compile_as_step_form(tmp_path, exporter, dynamic) -> None:
    model = StepNet().eval()
    args = (torch.randn(BATCH, N_IN), torch.zeros(BATCH, N_HID), torch.zeros(BATCH, N_HID))
    path = export(model, args, tmp_path / "step.onnx", exporter, dynamic, {"x": 0, "v": 0, "y": 0})
    outputs = [o.name for o in onnx.load(path).graph.output]
    art = compile_model(path, state_pairs={outputs[1]: "v", outputs[2]: "y"})
    x = sequence(11, batch=3)
    v, y, want = torch.zeros(3, N_HID), torch.zeros(3, N_HID), []
    with torch.no_grad():
        for t in range(len(x)):
            out, v, y = model(torch.from_numpy(x[t]), v, y)
            want.append(out.numpy())
    np.testing.assert_allclose(art.run(x, mode="float"), np.stack(want), rtol=1e-5, atol=1e-5)


class UnbindNet(LoopNet):
    """``for x_t in x.unbind(0)``: Split + Squeeze (or Gather) per step."""

    def forward(self, x):
        v = torch.zeros(x.shape[1], N_HID)
        spikes = []
        for x_t in x.unbind(0):
            v = 0.8 * v + self.fcs[0](x_t)
            y = (v > 1.0).float()
            v = v * (1 - y)
            spikes.append(y)
        return torch.stack(spikes), torch.stack([self.out(s) for s in spikes])


class SliceNet(LoopNet):
    """``x[t:t+1].squeeze(0)``: Slice + Squeeze per step; returns a final state too."""

    def forward(self, x):
        v = torch.zeros(x.shape[1], N_HID)
        spikes = []
        for t in range(x.shape[0]):
            v = 0.8 * v + self.fcs[0](x[t : t + 1].squeeze(0))
            y = (v > 1.0).float()
            v = v * (1 - y)
            spikes.append(y)
        return torch.stack(spikes), torch.stack([self.out(s) for s in spikes]), v


class ListNet(LoopNet):
    """Per-step outputs returned as a list, not stacked."""

    def forward(self, x):
        return tuple(self.per_step(x)[0])


@pytest.mark.parametrize("exporter", ["dynamo", "legacy"])
@pytest.mark.parametrize("cls", [UnbindNet, SliceNet])
def test_other_slicings_fold_and_final_states_are_left_out(tmp_path, cls, exporter) -> None:
    model = cls().eval()
    path = export(
        model, (torch.from_numpy(sequence(T_EXPORT)),), tmp_path / "m.onnx", exporter, True
    )
    art = compile_model(path)
    long = sequence(2 * T_EXPORT, seed=2)
    got = as_list(art.run(long, mode="float"))
    assert len(got) == 2  # SliceNet's final membrane is not a per-step output
    with torch.no_grad():
        want = [t.numpy() for t in model(torch.from_numpy(long))[:2]]
    assert_same(got, want)


@pytest.mark.parametrize("exporter", ["dynamo", "legacy"])
def test_list_of_per_step_outputs_folds(tmp_path, exporter) -> None:
    model = ListNet().eval()
    path = export(
        model, (torch.from_numpy(sequence(T_EXPORT)),), tmp_path / "m.onnx", exporter, False
    )
    art = compile_model(path)
    x = sequence(T_EXPORT)
    got = art.run(x, mode="float")
    np.testing.assert_array_equal(got, np.stack(onnxruntime_outputs(path, x)))


class SubtractResetNet(nn.Module):
    """snnTorch's Leaky written by hand: the reset recomputed from the previous membrane,
    reset by subtraction, and a leaky-integrator readout whose membrane is the output."""

    def __init__(self):
        super().__init__()
        torch.manual_seed(2)
        self.fc, self.readout = nn.Linear(N_IN, N_HID), nn.Linear(N_HID, N_OUT)

    def forward(self, x):
        mem = torch.zeros(x.shape[1], N_HID)
        out = torch.zeros(x.shape[1], N_OUT)
        spikes, outs = [], []
        for t in range(x.shape[0]):
            reset = (mem - 1.0 > 0).float()
            mem = 0.9 * mem + self.fc(x[t]) - reset * 1.0
            spike = (mem - 1.0 > 0).float()
            out = 0.8 * out + self.readout(spike)
            spikes.append(spike)
            outs.append(out)
        return torch.stack(spikes), torch.stack(outs)


class ConvNet(nn.Module):
    """A convolutional LIF layer on x[T, B, 1, 6, 6], flattened into a readout."""

    def __init__(self):
        super().__init__()
        torch.manual_seed(3)
        self.conv, self.readout = nn.Conv2d(1, 2, 3), nn.Linear(2 * 4 * 4, N_OUT)

    def forward(self, x):
        v = torch.zeros(x.shape[1], 2, 4, 4)
        spikes, outs = [], []
        for t in range(x.shape[0]):
            v = 0.8 * v + self.conv(x[t])
            y = (v > 0.5).float()
            v = v * (1 - y)
            spikes.append(y)
            outs.append(self.readout(y.flatten(1)))
        return torch.stack(spikes), torch.stack(outs)


@pytest.mark.parametrize("exporter", ["dynamo", "legacy"])
@pytest.mark.parametrize(("cls", "features"), [(SubtractResetNet, (N_IN,)), (ConvNet, (1, 6, 6))])
def test_other_neurons_and_layers_fold(tmp_path, cls, features, exporter) -> None:
    model = cls().eval()
    rng = np.random.default_rng(4)
    x = (rng.standard_normal((T_EXPORT, BATCH, *features)) * 2).astype(np.float32)
    path = export(model, (torch.from_numpy(x),), tmp_path / "m.onnx", exporter, True)
    art = compile_model(path)
    long = (rng.standard_normal((3 * T_EXPORT, 3, *features)) * 2).astype(np.float32)
    with torch.no_grad():
        want = [t.numpy() for t in model(torch.from_numpy(long))]
    assert_same(as_list(art.run(long, mode="float")), want)


# ---------------------------------------------------------------------- refusals


@pytest.mark.parametrize("exporter", ["dynamo", "legacy"])
@pytest.mark.parametrize(("odd", "body"), [(3, 5), (5, 4)])
def test_a_step_that_differs_is_named(tmp_path, exporter, odd, body) -> None:
    """Step ``odd`` decays by 0.5, the others by 0.8; an odd last step is named too."""
    model = LoopNet(odd_step=odd).eval()
    path = export(model, (torch.from_numpy(sequence(6)),), tmp_path / "m.onnx", exporter, True)
    with pytest.raises(SnucError) as err:
        compile_model(path)
    message = str(err.value)
    assert "\n" not in message
    assert f"step {odd} differs from step {body}, taken as the loop body" in message
    assert (
        "= 0.5 where the loop body uses" in message or "= 0.8 where the loop body uses" in message
    )


@pytest.mark.parametrize("exporter", ["dynamo", "legacy"])
def test_step_zero_must_be_the_body_on_zero_states(tmp_path, exporter) -> None:
    model = LoopNet(v0=0.7).eval()
    path = export(
        model, (torch.from_numpy(sequence(T_EXPORT)),), tmp_path / "m.onnx", exporter, False
    )
    with pytest.raises(
        SnucError, match=r"step 0 differs from the loop body \(the last step\) run on zero states"
    ):
        compile_model(path)


def test_a_loop_of_two_steps_is_refused(tmp_path) -> None:
    path = export(
        LoopNet().eval(), (torch.from_numpy(sequence(2)),), tmp_path / "m.onnx", "legacy", False
    )
    with pytest.raises(SnucError, match="export it with at least 3 timesteps"):
        compile_model(path)


class BatchFirstNet(LoopNet):
    def forward(self, x):  # x[B, T, F]
        return LoopNet.forward(self, x.transpose(0, 1))[1]


class BatchFirstIndexNet(LoopNet):
    def forward(self, x):  # x[B, T, F], read as x[:, t]
        v = torch.zeros(x.shape[0], N_HID)
        outs = []
        for t in range(x.shape[1]):
            v = 0.8 * v + self.fcs[0](x[:, t])
            outs.append((v > 1.0).float())
        return torch.stack(outs)


@pytest.mark.parametrize("exporter", ["dynamo", "legacy"])
def test_batch_first_loops_are_named_as_the_user_wrote_them(tmp_path, exporter) -> None:
    x = torch.from_numpy(sequence(T_EXPORT)).transpose(0, 1).contiguous()
    path = export(BatchFirstIndexNet().eval(), (x,), tmp_path / "m.onnx", exporter, False)
    with pytest.raises(
        SnucError,
        match=r"along axis 1 \(batch first, X\[B, T, \.\.\.\]\); snuc's sequences are time-major",
    ):
        compile_model(path)


def test_a_non_causal_loop_is_refused(tmp_path) -> None:
    class Reversed(LoopNet):
        def forward(self, x):
            return torch.stack(
                [self.out(self.fcs[0](x[x.shape[0] - 1 - t])) for t in range(x.shape[0])]
            )

    path = export(
        Reversed().eval(),
        (torch.from_numpy(sequence(T_EXPORT)),),
        tmp_path / "m.onnx",
        "legacy",
        False,
    )
    with pytest.raises(
        SnucError, match=r"the output at step 0 depends on the input at step 4 .*causal"
    ):
        compile_model(path)


def test_a_loop_that_returns_only_its_final_state_is_refused(tmp_path) -> None:
    class FinalOnly(LoopNet):
        def forward(self, x):
            return self.out(self.per_step(x)[0][-1])

    x = torch.from_numpy(sequence(T_EXPORT))
    path = export(FinalOnly().eval(), (x,), tmp_path / "m.onnx", "legacy", False)
    with pytest.raises(SnucError, match=r"return torch.stack\(outputs\) \(time first\)"):
        compile_model(path)


def test_state_pairs_on_an_unrolled_loop_are_refused(exported) -> None:
    _, path = exported("ff", "legacy", False)
    with pytest.raises(SnucError, match="unrolled by its exporter, whose states snuc finds itself"):
        compile_model(path, state_pairs={"a": "b"})


# ---------------------------------------------------------------------- ops not yet lowered


class ClampNet(LoopNet):
    """ReLU written ``torch.clamp(v, min=0)``: Clip (legacy) or Max (dynamo)."""

    def forward(self, x):
        v = torch.zeros(x.shape[1], N_HID)
        outs = []
        for t in range(x.shape[0]):
            v = torch.clamp(0.8 * v + self.fcs[0](x[t]), min=0)
            y = (v > 1.0).float()
            v = v * (1 - y)
            outs.append(y)
        return torch.stack(outs)


@pytest.mark.parametrize(
    ("exporter", "op"),
    [
        pytest.param(
            "legacy",
            "Clip",
            marks=pytest.mark.skipif(
                "Clip" not in SUPPORTED_OPS, reason="needs ONNX Clip (the ops work of issue 12)"
            ),
        ),
        pytest.param(
            "dynamo",
            "Max",
            marks=pytest.mark.skipif(
                "Max" not in SUPPORTED_OPS, reason="needs ONNX Max (the ops work of issue 12)"
            ),
        ),
    ],
)
def test_clamp_loop_folds(tmp_path, exporter, op) -> None:
    model = ClampNet().eval()
    path = export(
        model, (torch.from_numpy(sequence(T_EXPORT)),), tmp_path / "m.onnx", exporter, True
    )
    assert op in {n.op_type for n in onnx.load(path).graph.node}
    art = compile_model(path)
    long = sequence(2 * T_EXPORT, seed=3)
    with torch.no_grad():
        want = model(torch.from_numpy(long)).numpy()
    np.testing.assert_array_equal(art.run(long, mode="float"), want)


# ---------------------------------------------------------------------- command line


def test_snuc_compile_folds_an_exported_loop(exported, tmp_path, capsys) -> None:
    _, path = exported("rec2", "dynamo", True)
    out = tmp_path / "net.snuc"
    status, stdout, err = run_cli(capsys, "compile", path, "-o", out)
    assert status == 0 and out.exists()
    assert "crossbars" in stdout + err


def test_snuc_compile_of_a_loop_whose_step_differs_is_one_line(tmp_path, capsys) -> None:
    model = LoopNet(odd_step=2).eval()
    path = export(model, (torch.from_numpy(sequence(6)),), tmp_path / "m.onnx", "legacy", False)
    out = tmp_path / "m.snuc"
    status, _, err = run_cli(capsys, "compile", path, "-o", out)
    assert_one_line_error(status, err, "step 2 differs from step 5, taken as the loop body")
    assert not out.exists()
