"""NIR import (SPEC §2.1): hand-built NIR graphs of every primitive against a NumPy
simulation written here from NIR's definitions, and the command line's NIR input.

The reference simulates each neuron the way NIR states it, "update, spike when v > θ,
set v to v_reset": the membrane it keeps is the one after the reset. snuc's step keeps the
membrane before the reset and recomputes the spike from it (frontend/nir_import.py); the
two must give the same outputs.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import numpy as np
import pytest

nir = pytest.importorskip("nir", reason="the nir extra (pip install 'snuc[nir]') is missing")

from cli_helpers import assert_one_line_error, run_cli  # noqa: E402

from snuc import driver  # noqa: E402
from snuc.frontend.nir_import import load_nir, nir_to_onnx  # noqa: E402
from snuc.ir.errors import SnucError  # noqa: E402

DT = 1e-3
T, B = 16, 3


# ---------------------------------------------------------------------- the reference


class Membrane:
    """One NIR neuron population, simulated at DT by ``method`` (euler or exact)."""

    def __init__(self, node, method: str):
        self.node, self.method = node, method
        self.v = self.i = 0.0

    def _decay(self, tau):
        return 1.0 - DT / tau if self.method == "euler" else np.exp(-DT / tau)

    def step(self, x):
        n = self.node
        if hasattr(n, "tau_syn"):  # the current first; the membrane takes the new one
            a = self._decay(n.tau_syn)
            self.i = a * self.i + (1.0 - a) * n.w_in * x
            x = self.i
        tau = getattr(n, "tau", getattr(n, "tau_mem", None))
        if tau is None:  # IF and I: dv/dt = r·I
            self.v = self.v + DT * n.r * x
        elif self.method == "euler":  # tau dv/dt = (v_leak - v) + r·I
            self.v = self.v + DT / tau * (n.v_leak - self.v + n.r * x)
        else:  # the exact solution for an input held over the step
            target = n.v_leak + n.r * x
            self.v = target + (self.v - target) * np.exp(-DT / tau)
        if not hasattr(n, "v_threshold"):
            return self.v
        spikes = (self.v > n.v_threshold).astype(np.float64)
        self.v = np.where(spikes > 0, n.v_reset, self.v)
        return spikes


def affine(x, node):
    y = x @ np.asarray(node.weight, dtype=np.float64).T
    return y + node.bias if hasattr(node, "bias") else y


def conv2d(x, weight, bias, stride, pad, dilation):
    """Cross-correlation of ``x [B, C, H, W]`` (groups 1), as torch computes it."""
    x = np.pad(x, ((0, 0), (0, 0), (pad[0], pad[0]), (pad[1], pad[1])))
    kh, kw = weight.shape[2:]
    span = (dilation[0] * (kh - 1) + 1, dilation[1] * (kw - 1) + 1)
    win = np.lib.stride_tricks.sliding_window_view(x, span, axis=(2, 3))
    win = win[:, :, :: stride[0], :: stride[1], :: dilation[0], :: dilation[1]]
    return np.einsum("bchwij,ocij->bohw", win, weight) + bias[None, :, None, None]


def pool_sum(x, kernel, stride, pad):
    x = np.pad(x, ((0, 0), (0, 0), (pad, pad), (pad, pad)))
    win = np.lib.stride_tricks.sliding_window_view(x, (kernel, kernel), axis=(2, 3))
    return win[:, :, ::stride, ::stride].sum(axis=(-1, -2))


def compiled(tmp_path: Path, graph, method: str = "euler", dt: float = DT):
    path = tmp_path / "net.nir"
    nir.write(path, graph)
    return driver.compile_model(path, dt=dt, discretize=method)


def run_float(art, x) -> dict[str, np.ndarray]:
    y = art.run(x.astype(np.float32), mode="float")
    return y if isinstance(y, dict) else {art.outputs[0]["name"]: y}


def check_spikes(name, got, want):
    """Spikes equal exactly; the check means something only if some fire and some not."""
    assert 0 < want.mean() < 1, f"{name}: spike rate {want.mean()} makes a vacuous test"
    np.testing.assert_array_equal(got, want, err_msg=name)


def check_pcm(art, x):
    """pcm mode runs: outputs of the float run's shape, finite, spikes 0 or 1."""
    y = art.run(x.astype(np.float32), mode="pcm", seed=0)
    for v in y.values() if isinstance(y, dict) else [y]:
        assert v.shape[:2] == x.shape[:2] and np.isfinite(v).all()


def state_inputs(model) -> list[str]:
    return list(json.loads({p.key: p.value for p in model.metadata_props}["snuc.state"]).values())


def vec(rng, n, low, high):
    return rng.uniform(low, high, n)


# ---------------------------------------------------------------------- networks


def dense_graph(rng):
    """Every dense primitive: Affine, Linear, Scale, Threshold, LIF, CubaLIF, CubaLI, IF,
    LI and I, with an input feeding two edges into one node (they add)."""
    n_in, n1, n2, n3 = 5, 6, 4, 3
    nodes = {
        "input": nir.Input(np.array([n_in])),
        "affine1": nir.Affine(rng.normal(0, 2, (n1, n_in)), rng.normal(0, 0.5, n1)),
        "skip": nir.Linear(rng.normal(0, 1, (n1, n_in))),
        "lif": nir.LIF(
            tau=vec(rng, n1, 5e-3, 2e-2), r=vec(rng, n1, 1, 3), v_leak=vec(rng, n1, -0.2, 0.3),
            v_threshold=vec(rng, n1, 0.3, 0.8), v_reset=vec(rng, n1, -0.3, 0.1),
        ),
        "linear": nir.Linear(rng.normal(0, 2, (n2, n1))),
        "cuba": nir.CubaLIF(
            tau_syn=vec(rng, n2, 3e-3, 1e-2), tau_mem=vec(rng, n2, 5e-3, 2e-2),
            r=vec(rng, n2, 2, 5), v_leak=vec(rng, n2, 0, 0.2),
            v_threshold=vec(rng, n2, 0.1, 0.4), v_reset=np.zeros(n2), w_in=vec(rng, n2, 1, 3),
        ),
        "affine2": nir.Affine(rng.normal(0, 1, (n3, n2)), rng.normal(0, 0.3, n3)),
        "li": nir.LI(tau=vec(rng, n3, 5e-3, 2e-2), r=vec(rng, n3, 1, 2),
                     v_leak=vec(rng, n3, -1, 1)),
        "scale": nir.Scale(vec(rng, n2, 0.5, 2)),
        "if_": nir.IF(r=vec(rng, n2, 50, 150), v_threshold=vec(rng, n2, 0.1, 0.3),
                      v_reset=vec(rng, n2, -0.1, 0)),
        "integ": nir.I(r=vec(rng, n3, 50, 100)),
        "thr": nir.Threshold(vec(rng, n3, -0.1, 0.1)),
        "cubali": nir.CubaLI(
            tau_syn=vec(rng, n3, 3e-3, 1e-2), tau_mem=vec(rng, n3, 5e-3, 2e-2),
            r=vec(rng, n3, 1, 2), v_leak=vec(rng, n3, -0.1, 0.1), w_in=vec(rng, n3, 1, 2),
        ),
        "out_li": nir.Output(np.array([n3])),
        "out_if": nir.Output(np.array([n2])),
        "out_thr": nir.Output(np.array([n3])),
        "out_cubali": nir.Output(np.array([n3])),
    }  # fmt: skip
    edges = [
        ("input", "affine1"), ("input", "skip"), ("affine1", "lif"), ("skip", "lif"),
        ("lif", "linear"), ("linear", "cuba"), ("cuba", "affine2"), ("affine2", "li"),
        ("li", "out_li"), ("cuba", "scale"), ("scale", "if_"), ("if_", "out_if"),
        ("affine2", "integ"), ("integ", "thr"), ("thr", "out_thr"),
        ("affine2", "cubali"), ("cubali", "out_cubali"),
    ]  # fmt: skip
    return nir.NIRGraph(nodes=nodes, edges=edges)


def dense_reference(graph, x, method):
    n = graph.nodes
    cells = {k: Membrane(n[k], method) for k in ("lif", "cuba", "li", "if_", "integ", "cubali")}
    out = {k: [] for k in ("out_li", "out_if", "out_thr", "out_cubali")}
    for xt in x:
        lif = cells["lif"].step(affine(xt, n["affine1"]) + affine(xt, n["skip"]))
        cuba = cells["cuba"].step(affine(lif, n["linear"]))
        a2 = affine(cuba, n["affine2"])
        out["out_li"].append(cells["li"].step(a2))
        out["out_if"].append(cells["if_"].step(cuba * n["scale"].scale))
        out["out_thr"].append((cells["integ"].step(a2) > n["thr"].threshold).astype(float))
        out["out_cubali"].append(cells["cubali"].step(a2))
    return {k: np.stack(v) for k, v in out.items()}


def conv_graph(rng):
    """Conv2d (padding 1), LIF, SumPool2d, AvgPool2d (padding 1), Flatten, Affine, LIF."""
    lif_shape = (3, 6, 6)
    nodes = {
        "input": nir.Input(np.array([2, 6, 6])),
        "conv": nir.Conv2d(
            input_shape=(6, 6), weight=rng.normal(0, 1, (3, 2, 3, 3)), stride=1, padding=1,
            dilation=1, groups=1, bias=rng.normal(0, 0.2, 3),
        ),
        "lif1": nir.LIF(
            tau=np.full(lif_shape, 1e-2), r=np.full(lif_shape, 2.0), v_leak=np.zeros(lif_shape),
            v_threshold=np.full(lif_shape, 0.4), v_reset=np.zeros(lif_shape),
        ),
        "sum": nir.SumPool2d(kernel_size=np.array([2, 2]), stride=np.array([2, 2]),
                             padding=np.array([0, 0])),
        "avg": nir.AvgPool2d(kernel_size=np.array([2, 2]), stride=np.array([1, 1]),
                             padding=np.array([1, 1])),
        "flat": nir.Flatten(input_type=np.array([3, 4, 4]), start_dim=0, end_dim=-1),
        "fc": nir.Affine(rng.normal(0, 1, (4, 48)), rng.normal(0, 0.1, 4)),
        "lif2": nir.LIF(tau=vec(rng, 4, 5e-3, 2e-2), r=vec(rng, 4, 1, 3),
                        v_leak=np.zeros(4), v_threshold=vec(rng, 4, 0.2, 0.5)),
        "output": nir.Output(np.array([4])),
    }  # fmt: skip
    order = ["input", "conv", "lif1", "sum", "avg", "flat", "fc", "lif2", "output"]
    return nir.NIRGraph(nodes=nodes, edges=list(zip(order, order[1:], strict=False)),
                        type_check=False)  # fmt: skip


def conv_reference(graph, x, method):
    n = graph.nodes
    lif1, lif2 = Membrane(n["lif1"], method), Membrane(n["lif2"], method)
    out = []
    for xt in x:
        c = conv2d(xt, np.asarray(n["conv"].weight), n["conv"].bias, (1, 1), (1, 1), (1, 1))
        s = pool_sum(lif1.step(c), 2, 2, 0)
        a = pool_sum(s, 2, 1, 1) / 4.0
        out.append(lif2.step(affine(a.reshape(len(xt), -1), n["fc"])))
    return {"output": np.stack(out)}


def conv1d_graph(rng):
    """Conv1d (stride 2, padding 1, dilation 2), IF, Flatten, Linear, LI."""
    nodes = {
        "input": nir.Input(np.array([2, 11])),
        "conv": nir.Conv1d(input_shape=11, weight=rng.normal(0, 1, (3, 2, 3)), stride=2,
                           padding=1, dilation=2, groups=1, bias=rng.normal(0, 0.2, 3)),
        "if_": nir.IF(r=np.full((3, 5), 200.0), v_threshold=np.full((3, 5), 0.5)),
        "flat": nir.Flatten(input_type=np.array([3, 5]), start_dim=0, end_dim=-1),
        "lin": nir.Linear(rng.normal(0, 1, (4, 15))),
        "li": nir.LI(tau=vec(rng, 4, 5e-3, 2e-2), r=np.ones(4), v_leak=np.zeros(4)),
        "output": nir.Output(np.array([4])),
    }  # fmt: skip
    order = ["input", "conv", "if_", "flat", "lin", "li", "output"]
    return nir.NIRGraph(nodes=nodes, edges=list(zip(order, order[1:], strict=False)),
                        type_check=False)  # fmt: skip


def conv1d_reference(graph, x, method):
    n = graph.nodes
    cells = Membrane(n["if_"], method), Membrane(n["li"], method)
    w = np.asarray(n["conv"].weight)[:, :, None, :]
    out, spikes = [], []
    for xt in x:
        c = conv2d(xt[:, :, None, :], w, n["conv"].bias, (1, 2), (0, 1), (1, 2))[:, :, 0, :]
        s = cells[0].step(c)
        spikes.append(s)
        out.append(cells[1].step(affine(s.reshape(len(xt), -1), n["lin"])))
    return {"output": np.stack(out), "spikes": np.stack(spikes)}


def recurrent_graph(rng, nested: bool):
    """in -> Affine -> LIF <-> Affine (bias) -> out: the recurrent weight reads the last
    step's spikes. ``nested``: the loop is a NIRGraph node of its own (older exports)."""
    n = 7
    lif = nir.LIF(tau=vec(rng, n, 5e-3, 2e-2), r=vec(rng, n, 1, 3), v_leak=vec(rng, n, 0, 0.2),
                  v_threshold=vec(rng, n, 0.3, 0.6), v_reset=vec(rng, n, -0.2, 0.0))  # fmt: skip
    rec = nir.Affine(rng.normal(0, 1.5, (n, n)), rng.normal(0, 0.3, n))
    nodes = {
        "input": nir.Input(np.array([4])),
        "fc": nir.Affine(rng.normal(0, 2, (n, 4)), np.zeros(n)),
        "output": nir.Output(np.array([n])),
    }
    if nested:
        nodes["rnn"] = nir.NIRGraph(
            nodes={"input": nir.Input(np.array([n])), "lif": lif, "w_rec": rec,
                   "output": nir.Output(np.array([n]))},
            edges=[("input", "lif"), ("lif", "w_rec"), ("w_rec", "lif"), ("lif", "output")],
        )  # fmt: skip
        edges = [("input", "fc"), ("fc", "rnn"), ("rnn", "output")]
    else:
        nodes.update({"rnn.lif": lif, "rnn.w_rec": rec})
        edges = [("input", "fc"), ("fc", "rnn.lif"), ("rnn.lif", "rnn.w_rec"),
                 ("rnn.w_rec", "rnn.lif"), ("rnn.lif", "output")]  # fmt: skip
    return nir.NIRGraph(nodes=nodes, edges=edges), lif, rec


def recurrent_reference(fc, lif, rec, x, method):
    cell, spikes, out = Membrane(lif, method), np.zeros((x.shape[1], lif.r.size)), []
    for xt in x:
        spikes = cell.step(affine(xt, fc) + affine(spikes, rec))
        out.append(spikes)
    return {"output": np.stack(out)}


# ---------------------------------------------------------------------- tests


@pytest.mark.parametrize("method", ["euler", "exact"])
def test_every_dense_primitive_equals_the_reference(tmp_path, method):
    rng = np.random.default_rng(1)
    graph = dense_graph(rng)
    x = rng.normal(0, 1, (T, B, 5))
    art = compiled(tmp_path, graph, method)
    got, want = run_float(art, x), dense_reference(graph, x, method)
    assert set(got) == set(want)
    for name in ("out_if", "out_thr"):
        check_spikes(name, got[name], want[name])
    for name in ("out_li", "out_cubali"):
        np.testing.assert_allclose(got[name], want[name], rtol=1e-5, atol=1e-5, err_msg=name)
    check_pcm(art, x)


@pytest.mark.parametrize("method", ["euler", "exact"])
def test_conv2d_and_pooling_equal_the_reference(tmp_path, method):
    rng = np.random.default_rng(2)
    graph = conv_graph(rng)
    x = rng.normal(0, 1, (T, B, 2, 6, 6))
    art = compiled(tmp_path, graph, method)
    check_spikes("output", run_float(art, x)["output"], conv_reference(graph, x, method)["output"])
    check_pcm(art, x)


@pytest.mark.parametrize("method", ["euler", "exact"])
def test_conv1d_equals_the_reference(tmp_path, method):
    rng = np.random.default_rng(3)
    graph = conv1d_graph(rng)
    x = rng.normal(0, 1, (T, B, 2, 11))
    want = conv1d_reference(graph, x, method)
    assert 0 < want["spikes"].mean() < 1
    art = compiled(tmp_path, graph, method)
    np.testing.assert_allclose(run_float(art, x)["output"], want["output"], rtol=1e-5, atol=1e-5)
    check_pcm(art, x)


@pytest.mark.parametrize("nested", [False, True], ids=["flat", "nested"])
@pytest.mark.parametrize("method", ["euler", "exact"])
def test_a_recurrent_loop_reads_the_last_steps_spikes(tmp_path, method, nested):
    rng = np.random.default_rng(4)
    graph, lif, rec = recurrent_graph(rng, nested)
    x = rng.normal(0, 1, (T, B, 4))
    art = compiled(tmp_path, graph, method)
    want = recurrent_reference(graph.nodes["fc"], lif, rec, x, method)["output"]
    check_spikes("output", run_float(art, x)["output"], want)
    check_pcm(art, x)


def test_the_step_form_pairs_each_neuron_state():
    """One state per membrane and current, and one for the spikes a loop feeds back."""
    rng = np.random.default_rng(5)
    model = nir_to_onnx(recurrent_graph(rng, nested=False)[0], dt=DT)
    assert sorted(state_inputs(model)) == ["rnn_lif_out", "rnn_lif_v"]
    assert sorted(state_inputs(nir_to_onnx(dense_graph(rng), dt=DT))) == sorted(
        ["lif_v", "cuba_i", "cuba_v", "li_v", "if__v", "integ_v", "cubali_i", "cubali_v"]
    )


def test_a_loop_without_a_neuron_is_refused():
    nodes = {
        "input": nir.Input(np.array([3])),
        "a": nir.Linear(np.eye(3)),
        "b": nir.Linear(np.eye(3)),
        "output": nir.Output(np.array([3])),
    }
    edges = [("input", "a"), ("a", "b"), ("b", "a"), ("b", "output")]
    graph = nir.NIRGraph(nodes=nodes, edges=edges)
    with pytest.raises(SnucError, match="passes through no neuron"):
        nir_to_onnx(graph, dt=DT)


def test_euler_refuses_a_time_step_longer_than_a_time_constant():
    graph = nir.NIRGraph.from_list(nir.LI(tau=np.full(2, 1e-4), r=np.ones(2), v_leak=np.zeros(2)))
    with pytest.raises(SnucError, match="exceeds the time constant"):
        nir_to_onnx(graph, dt=1e-3)
    nir_to_onnx(graph, dt=1e-3, discretize="exact")


def test_an_unsupported_primitive_is_named():
    graph = nir.NIRGraph.from_list(nir.Delay(delay=np.ones(2)))
    with pytest.raises(SnucError, match="Delay is not supported; snuc supports Affine"):
        nir_to_onnx(graph, dt=DT)


@pytest.mark.parametrize("dt", [None, 0.0, -1e-3, float("nan")])
def test_a_missing_or_bad_time_step_is_one_line(dt):
    graph = nir.NIRGraph.from_list(nir.Linear(np.eye(2)))
    with pytest.raises(SnucError, match="--dt") as err:
        nir_to_onnx(graph, dt=dt)
    assert "\n" not in str(err.value)


# ---------------------------------------------------------------------- command line


def test_cli_compiles_a_nir_file(tmp_path, capsys):
    rng = np.random.default_rng(6)
    path = tmp_path / "net.nir"
    nir.write(path, recurrent_graph(rng, nested=False)[0])
    status, _, err = run_cli(capsys, "compile", path, "--dt", DT, "--discretize", "exact")
    assert status == 0, err
    assert (tmp_path / "net.snuc").exists()
    status, out, _ = run_cli(capsys, "compile", path, "--dt", DT, "--emit", "ir")
    assert status == 0 and "xbar.mvm" in out


def test_cli_needs_dt_for_nir(tmp_path, capsys):
    path = tmp_path / "net.nir"
    nir.write(path, nir.NIRGraph.from_list(nir.Linear(np.eye(2))))
    status, _, err = run_cli(capsys, "compile", path)
    assert_one_line_error(status, err, "--dt", "continuous-time")
    assert not (tmp_path / "net.snuc").exists()


@pytest.mark.parametrize(
    "content", [b"\x89HDF\r\n\x1a\n" + b"\0" * 64, b"not a NIR file at all"], ids=["hdf5", "text"]
)
def test_cli_a_corrupt_nir_file_is_one_line(tmp_path, capsys, content):
    path = tmp_path / "broken.nir"
    path.write_bytes(content)
    status, _, err = run_cli(capsys, "compile", path, "--dt", "1e-4")
    assert_one_line_error(status, err, "broken.nir", "not a readable NIR file")


def test_load_nir_reads_what_nir_wrote(tmp_path):
    path = tmp_path / "net.nir"
    graph = nir.NIRGraph.from_list(nir.Linear(np.eye(2)), nir.IF(np.ones(2), np.ones(2)))
    nir.write(path, graph)
    assert set(load_nir(path).nodes) == set(graph.nodes)


def test_without_the_nir_package_the_error_names_the_extra(tmp_path, monkeypatch, capsys):
    path = tmp_path / "net.nir"
    nir.write(path, nir.NIRGraph.from_list(nir.Linear(np.eye(2))))
    monkeypatch.setitem(sys.modules, "nir", None)  # what an absent package looks like
    status, _, err = run_cli(capsys, "compile", path, "--dt", DT)
    assert_one_line_error(status, err, "pip install 'snuc[nir]'")
