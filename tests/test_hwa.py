"""Hardware-aware training (snuc.frontend.hwa): the training-time chip has the statistics of
runtime/pcm.py, the converters pass gradients straight through, all off is the plain
forward bit for bit, and the training scripts' --hwa runs resume exactly."""

from __future__ import annotations

import math
import sys
from pathlib import Path

import numpy as np
import pytest

torch = pytest.importorskip("torch")

from snuc.frontend.hwa import NON_IDEALITIES, HardwareAware, HWAOptions, parse_off  # noqa: E402
from snuc.frontend.layers import SNU, Readout, SNUNetwork, sSNU  # noqa: E402
from snuc.ir.crossbar import tile_conductances  # noqa: E402
from snuc.ir.errors import SnucError  # noqa: E402
from snuc.ir.target import parse_target  # noqa: E402
from snuc.passes.tiling import blocks  # noqa: E402
from snuc.runtime import pcm  # noqa: E402

TARGET = parse_target("pcm-256x256")
K, N = 250, 400
"""A weight of 10^5 devices per polarity, cut into four column tiles (128 weights each)."""


def _only(*on: str, **options) -> HWAOptions:
    """Options with every non-ideality but ``on`` switched off."""
    return HWAOptions(TARGET, off=frozenset(NON_IDEALITIES) - set(on), **options)


def _readout(options: HWAOptions, seed: int = 0) -> tuple[Readout, np.ndarray]:
    """A trained-mode readout [N, K] with positive weights (every G- device at 0 µS),
    hardware-aware; and its weights W[K, N] in float64."""
    torch.manual_seed(seed)
    layer = Readout(K, N, activation="identity")
    with torch.no_grad():
        layer.linear.weight.uniform_(0.1, 1.0)
        layer.linear.bias.zero_()
    HardwareAware(SNUNetwork(layer), options)
    layer.train()
    return layer, layer.linear.weight.detach().t().double().numpy()


def _targets(w: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """The target conductances G+ [K, N] and digital scales [N] of every tile of ``w``."""
    g_plus, scales = np.zeros_like(w), np.zeros(w.shape[1])
    for c0, c1 in blocks(N, TARGET.weight_cols):
        gp, _, s = tile_conductances(w, (0, K), (c0, c1), TARGET)
        g_plus[:, c0:c1], scales[c0:c1] = gp[..., 0], s
    return g_plus, scales


def _effective_conductances(layer: Readout, scales: np.ndarray) -> np.ndarray:
    """G+ - G- as the training forward pass reads it (one read of the identity)."""
    with torch.no_grad():
        w_eff = layer.linear(torch.eye(K)).double().numpy()
    return w_eff / scales


def test_programming_noise_has_the_device_models_sigma():
    layer, w = _readout(_only("program"))
    g_target, scales = _targets(w)
    residual = _effective_conductances(layer, scales) - g_target
    # G+ at its target plus noise; G- at 0 plus noise clipped at 0, a half normal of
    # mean sigma_0 / sqrt(2 pi) and second moment sigma_0**2 / 2.
    sigma_plus = pcm.prog_noise_sigma(g_target, TARGET)
    sigma_zero = float(pcm.prog_noise_sigma(0.0, TARGET))
    second_moment = sigma_plus**2 + sigma_zero**2 / 2
    assert np.mean(residual**2) == pytest.approx(np.mean(second_moment), rel=0.05)
    assert np.mean(residual) == pytest.approx(-sigma_zero / math.sqrt(2 * math.pi), rel=0.05)


def test_drift_factor_is_the_device_models():
    day = 86400.0
    layer, w = _readout(_only("drift", compensation="none", t_inference_s=(day, day)))
    g_target, scales = _targets(w)
    log_factor = np.log(_effective_conductances(layer, scales) / g_target)
    nu = pcm.drift_exponents(g_target, TARGET, np.random.default_rng(1))
    expected = -math.log((day + TARGET.t0_s) / TARGET.t0_s) * nu
    assert np.mean(log_factor) == pytest.approx(np.mean(expected), rel=0.05)
    assert np.std(log_factor) == pytest.approx(np.std(expected), rel=0.05)


def test_compensation_undoes_most_of_the_drift():
    day = 86400.0
    layer, w = _readout(_only("drift", t_inference_s=(day, day)))
    g_target, scales = _targets(w)
    factor = _effective_conductances(layer, scales) / g_target
    assert np.mean(factor) == pytest.approx(1.0, abs=0.01)


def test_read_noise_has_the_device_models_sigma():
    layer, w = _readout(_only("read"))
    g_target, scales = _targets(w)
    x = torch.ones(K, K)  # 250 reads of 400 outputs: 10^5 noisy outputs
    with torch.no_grad():
        y = layer.linear(x).double().numpy()
    clean = w.sum(axis=0)
    sigma_device = pcm.read_noise_sigma(g_target, 0.0, TARGET, g_prog_us=g_target)
    sigma_out = scales * np.sqrt((sigma_device**2).sum(axis=0))
    z = (y - clean) / sigma_out
    assert np.std(z) == pytest.approx(1.0, rel=0.05)
    assert abs(np.mean(z)) < 0.05


def test_a_new_chip_after_each_optimiser_step_and_none_within_a_batch():
    layer, _ = _readout(_only("program"))
    x = torch.eye(K)
    first, again = layer.linear(x), layer.linear(x)
    assert torch.equal(first, again)
    optimizer = torch.optim.SGD(layer.parameters(), lr=0.0)
    first.sum().backward()
    optimizer.step()  # lr 0: the same weights, but a new version: a new chip
    assert not torch.equal(layer.linear(x), first)


def _network() -> SNUNetwork:
    torch.manual_seed(3)
    return SNUNetwork(
        SNU(12, 16),
        sSNU(16, 10, recurrent=True, g="identity"),
        Readout(10, 5, activation="sigmoid"),
    )


def test_every_non_ideality_off_is_the_plain_forward_exactly():
    x = (torch.rand(6, 4, 12) < 0.5).float()
    plain_model, hwa_model = _network(), _network()
    HardwareAware(hwa_model, HWAOptions(TARGET, off=frozenset(NON_IDEALITIES)))
    plain_model.train(), hwa_model.train()
    plain, hwa = plain_model(x), hwa_model(x)
    assert torch.equal(plain, hwa)
    plain.sum().backward(), hwa.sum().backward()
    for p, q in zip(plain_model.parameters(), hwa_model.parameters(), strict=True):
        assert torch.equal(p.grad, q.grad)


def test_eval_mode_and_detach_give_the_plain_forward():
    x = (torch.rand(6, 4, 12) < 0.5).float()
    model = _network()
    plain = model(x)
    hwa = HardwareAware(model, HWAOptions(TARGET))
    model.train()
    assert not torch.equal(model(x), plain)
    model.eval()
    assert torch.equal(model(x), plain)
    model.train()
    hwa.detach()
    assert torch.equal(model(x), plain)


def test_gradients_pass_the_converters_and_a_tiny_model_learns():
    torch.manual_seed(0)
    model = SNUNetwork(sSNU(12, 16, g="identity"), Readout(16, 5, activation="sigmoid"))
    x = torch.rand(8, 16, 12) * 2 - 1  # real-valued inputs: the DAC rounds them
    target = (torch.rand(8, 16, 5) < 0.3).float()
    HardwareAware(model, _only("dac", "adc"))
    model.train()
    optimizer = torch.optim.Adam(model.parameters(), lr=0.05)
    losses = []
    for _ in range(15):
        loss = torch.nn.functional.binary_cross_entropy(model(x), target)
        optimizer.zero_grad()
        loss.backward()
        grads = [p.grad for p in model.parameters() if p.grad is not None]
        assert all(torch.isfinite(g).all() for g in grads)
        assert sum(float(g.abs().sum()) for g in grads) > 0
        optimizer.step()
        losses.append(loss.item())
    assert losses[-1] < 0.9 * losses[0]


def test_all_non_idealities_give_finite_gradients_on_silent_spikes():
    model = _network()
    HardwareAware(model, HWAOptions(TARGET))
    model.train()
    x = torch.zeros(5, 3, 12)  # no spike: every read of the first layers drives no row
    model(x).sum().backward()
    assert all(torch.isfinite(p.grad).all() for p in model.parameters() if p.grad is not None)


def test_noise_scale_ramps_in():
    options = HWAOptions(TARGET, noise_scale=2.0, ramp_epochs=4)
    assert [options.scale_at(e) for e in (1, 2, 4, 9)] == [0.5, 1.0, 2.0, 2.0]


@pytest.mark.parametrize("bad", ["adc,laser", "prog"])
def test_unknown_non_idealities_are_refused(bad):
    with pytest.raises(SnucError, match="cannot switch off"):
        parse_off(bad)


def test_bad_options_are_refused():
    with pytest.raises(SnucError, match="compensation"):
        HWAOptions(TARGET, compensation="sometimes")
    with pytest.raises(SnucError, match="inference times"):
        HWAOptions(TARGET, t_inference_s=(10.0, 1.0))


EXAMPLES = Path(__file__).resolve().parent.parent / "examples"


@pytest.fixture(scope="module")
def train_jsb(request: pytest.FixtureRequest):
    threads = torch.get_num_threads()
    sys.path.insert(0, str(EXAMPLES))

    def restore() -> None:
        sys.path.remove(str(EXAMPLES))
        torch.set_num_threads(threads)

    request.addfinalizer(restore)
    pytest.importorskip("onnxscript")
    import _checkpoint
    import train_jsb

    return train_jsb, _checkpoint


def _jsb_args(tmp_path: Path, data_dir: Path, name: str, *extra: str) -> list[str]:
    return [
        "--epochs", "2", "--limit", "8", "--hidden", "12", "--batch-size", "2",
        "--out", str(tmp_path / f"{name}.onnx"), "--data-dir", str(data_dir),
        "--device", "cpu", "--threads", "1", "--no-progress",
        "--checkpoint", str(tmp_path / f"{name}.ckpt"),
        "--hwa", "--hwa-off", "dac", "--hwa-ramp-epochs", "2", *extra,
    ]  # fmt: skip


def test_a_hardware_aware_run_stopped_mid_epoch_resumes_to_the_same_weights(
    train_jsb, data_dir, tmp_path
):
    script, checkpoint = train_jsb
    straight = script.main(_jsb_args(tmp_path, data_dir, "straight"))
    assert straight["model"] == "jsb_snu_hwa" and straight["options"]["hwa"] == "True"
    for stop in ("3", "2"):
        with pytest.raises(checkpoint.TrainingStopped):
            script.main(_jsb_args(tmp_path, data_dir, "resumed", "--stop-after-batches", stop))
    resumed = script.main(_jsb_args(tmp_path, data_dir, "resumed"))
    assert resumed["history"] == straight["history"] and resumed["test"] == straight["test"]
    assert (tmp_path / "resumed.onnx").read_bytes() == (tmp_path / "straight.onnx").read_bytes()


def test_the_scripts_refuse_an_unknown_non_ideality(train_jsb, data_dir, tmp_path, capsys):
    script, _ = train_jsb
    with pytest.raises(SystemExit) as exit_:
        script.main(_jsb_args(tmp_path, data_dir, "bad", "--hwa-off", "laser"))
    assert exit_.value.code == 2
    assert "cannot switch off 'laser'" in capsys.readouterr().err


def test_a_network_without_snu_layers_is_refused_in_one_line():
    with pytest.raises(SnucError, match=r"^[^\n]*LSTM is not one; train without --hwa$"):
        HardwareAware(torch.nn.LSTM(3, 4), HWAOptions(TARGET))


def _compiled_dacs(model: SNUNetwork, path: Path) -> set[tuple[float, float]]:
    """The DAC ranges of every tile of ``model`` exported and compiled without calibration."""
    import snuc
    from snuc.frontend.export import export
    from snuc.ir.ops import CrossbarMVM

    model.eval()
    art = snuc.compile(export(model, path, check_lengths=(1, 4), check_batches=(1, 2)))
    return {tuple(n.op.dac) for n in art.graph.nodes() if isinstance(n.op, CrossbarMVM)}


def test_a_layer_after_an_embedding_has_the_dac_range_of_the_compiled_table(tmp_path):
    torch.manual_seed(0)
    model = SNUNetwork(torch.nn.Embedding(20, 8), SNU(8, 16), Readout(16, 20, "log_softmax"))
    hwa = HardwareAware(model, HWAOptions(TARGET))
    after_embedding = hwa.weights[0]
    table = model.layers[0].weight
    for scale in (1.0, 3.0):  # training moves the table: the range follows it
        with torch.no_grad():
            table.mul_(scale)
        want = (float(table.detach().min()), float(table.detach().max()))
        assert after_embedding.dac == want != (-1.0, 1.0)
        model.train()
        assert torch.isfinite(model(torch.randint(0, 20, (4, 2)))).all()
        assert _compiled_dacs(model, tmp_path / f"emb{scale}.onnx") == {want, (0.0, 1.0)}
