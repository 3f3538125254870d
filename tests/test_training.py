"""Smoke tests of the training scripts in examples/: each trains for one epoch on a few
items, scores the test split, and writes an ONNX model that snuc imports and that
onnxruntime runs to the metric the script reported; plus the shared helpers."""

from __future__ import annotations

import json
import math
import os
import random
import signal
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

torch = pytest.importorskip("torch")
pytest.importorskip("onnxscript")
ort = pytest.importorskip("onnxruntime")

from snuc.datasets import (  # noqa: E402
    batchify,
    jsb_nll,
    load_jsb,
    load_ptb,
    pad_sequences,
    perplexity,
)
from snuc.evaluate import evaluate  # noqa: E402
from snuc.frontend.onnx_import import import_onnx  # noqa: E402
from snuc.ir.errors import SnucError  # noqa: E402

EXAMPLES = Path(__file__).resolve().parent.parent / "examples"


@pytest.fixture(scope="module")
def examples(request: pytest.FixtureRequest):
    """The examples folder on sys.path, so the scripts and ``_training`` import."""
    threads = torch.get_num_threads()  # the scripts set it; give it back afterwards

    def restore() -> None:
        sys.path.remove(str(EXAMPLES))
        torch.set_num_threads(threads)

    sys.path.insert(0, str(EXAMPLES))
    request.addfinalizer(restore)
    import _checkpoint
    import _training
    import train_jsb
    import train_mnist
    import train_ptb

    return {
        "checkpoint": _checkpoint,
        "training": _training,
        "jsb": train_jsb,
        "mnist": train_mnist,
        "ptb": train_ptb,
    }


def _smoke_args(out: Path, data_dir: Path, *extra: str) -> list[str]:
    return [
        "--epochs", "1", "--limit", "8", "--out", str(out), "--data-dir", str(data_dir),
        "--device", "cpu", "--threads", "1", "--no-progress", *extra,
    ]  # fmt: skip


def _run_onnx(path: Path, x: np.ndarray) -> np.ndarray:
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    (y,) = session.run(["Y"], {"X": x})
    return y


def _check_written(summary: dict, out: Path, metric_range: tuple[float, float]) -> None:
    assert out.is_file()
    on_disk = json.loads(out.with_suffix(".json").read_text())
    assert on_disk == json.loads(json.dumps(summary))
    assert on_disk["epochs_run"] == 1 and on_disk["best_epoch"] == 1
    assert len(on_disk["history"]) == 1
    low, high = metric_range
    assert low <= on_disk["test"] <= high and low <= on_disk["valid"] <= high
    assert on_disk["parameters"] > 0 and on_disk["onnx_bytes"] == out.stat().st_size
    graph = import_onnx(out)
    assert graph is not None


# --------------------------------------------------------------------------- the scripts


@pytest.mark.parametrize("kind", ["snu", "ssnu"])
def test_jsb_script_exports_a_model_that_scores_what_it_reported(examples, data_dir, tmp_path,
                                                                 kind):  # fmt: skip
    out = tmp_path / f"jsb_{kind}.onnx"
    summary = examples["jsb"].main(_smoke_args(out, data_dir, "--model", kind, "--hidden", "20"))
    _check_written(summary, out, (0.0, 100.0))
    X, lengths = pad_sequences(load_jsb("test", data_dir)[:8])
    probs = _run_onnx(out, X)
    assert probs.shape == X.shape
    assert jsb_nll(probs, X, lengths) == pytest.approx(summary["test"], rel=1e-5)


def test_jsb_resumes_from_its_checkpoint(examples, data_dir, tmp_path):
    out, ckpt = tmp_path / "jsb.onnx", tmp_path / "jsb.ckpt"
    jsb = examples["jsb"]
    first = jsb.main(_smoke_args(out, data_dir, "--hidden", "12", "--checkpoint", str(ckpt)))
    assert ckpt.is_file()
    args = _smoke_args(out, data_dir, "--hidden", "12", "--checkpoint", str(ckpt))
    args[args.index("--epochs") + 1] = "2"
    second = jsb.main(args)
    assert second["epochs_run"] == 2
    assert second["history"][0] == first["history"][0]
    assert [h["epoch"] for h in second["history"]] == [1, 2]


# ------------------------------------------------------------- checkpoints inside an epoch

# Two epochs of a few batches each, with dropout (PyTorch's generator), the rate coding's
# per-batch draws (MNIST) and the state carried from window to window (PTB).
_RESUME_CASES = {
    "mnist": ["--hidden", "12", "--batch-size", "8", "--limit", "40", "--epochs", "2"],
    "ptb": [
        "--embed", "8", "--hidden", "12,8", "--bptt", "5", "--batch-size", "4",
        "--limit", "240", "--epochs", "2",
    ],
    "jsb": ["--hidden", "10", "--batch-size", "2", "--limit", "8", "--epochs", "2"],
}  # fmt: skip


def _resume_args(tmp_path: Path, data_dir: Path, task: str, name: str, *extra: str) -> list[str]:
    args = _smoke_args(tmp_path / f"{name}.onnx", data_dir, *_RESUME_CASES[task], *extra)
    return [*args, "--checkpoint", str(tmp_path / f"{name}.ckpt")]


def _assert_same(got, want, where: str = "checkpoint") -> None:
    """Equal to the last bit: tensors by value, dtype and shape; containers entry by entry."""
    if isinstance(want, torch.Tensor):
        assert isinstance(got, torch.Tensor) and got.dtype == want.dtype, where
        assert torch.equal(got, want), where
    elif isinstance(want, dict):
        assert set(got) == set(want), where
        for key in want:
            _assert_same(got[key], want[key], f"{where}[{key!r}]")
    elif isinstance(want, list | tuple):
        assert len(got) == len(want), where
        for i, (g, w) in enumerate(zip(got, want, strict=True)):
            _assert_same(g, w, f"{where}[{i}]")
    else:
        assert got == want, where


def _assert_same_run(tmp_path: Path, resumed: str, straight: str) -> None:
    """The two runs' final checkpoints (all but the clock) and ONNX files are identical."""
    got, want = (
        torch.load(tmp_path / f"{name}.ckpt", weights_only=True) for name in (resumed, straight)
    )
    for state in (got, want):
        state.pop("train_time_s")
    assert want["position"] is None and want["epoch"] == 2
    _assert_same(got, want)
    assert (tmp_path / f"{resumed}.onnx").read_bytes() == (
        tmp_path / f"{straight}.onnx"
    ).read_bytes()


@pytest.mark.parametrize("task", ["mnist", "ptb", "jsb"])
def test_a_run_stopped_mid_epoch_resumes_to_the_same_weights(examples, data_dir, tmp_path, task):
    script = examples[task]
    straight = script.main(_resume_args(tmp_path, data_dir, task, "straight"))
    # Stopped three times: twice inside the first epoch, once inside the second.
    for stop in ("2", "1", "4"):
        with pytest.raises(examples["checkpoint"].TrainingStopped):
            script.main(
                _resume_args(tmp_path, data_dir, task, "resumed", "--stop-after-batches", stop)
            )
        position = torch.load(tmp_path / "resumed.ckpt", weights_only=True)["position"]
        assert position is not None and position["batch"] > 0
    resumed = script.main(_resume_args(tmp_path, data_dir, task, "resumed"))
    assert resumed["history"] == straight["history"] and resumed["test"] == straight["test"]
    _assert_same_run(tmp_path, "resumed", "straight")


@pytest.mark.parametrize("how", ["crash", "sigterm"])
def test_a_run_killed_mid_epoch_resumes_from_its_periodic_checkpoint(
    examples, data_dir, tmp_path, monkeypatch, how
):
    mnist = examples["mnist"]
    mnist.main(_resume_args(tmp_path, data_dir, "mnist", "straight"))
    real_loss, calls = mnist.batch_loss, []

    def failing_loss(*args, **kwargs):
        calls.append(1)
        if len(calls) == 4:  # the fourth batch of the first epoch
            if how == "crash":
                raise RuntimeError("killed")
            os.kill(os.getpid(), signal.SIGTERM)
        return real_loss(*args, **kwargs)

    monkeypatch.setattr(mnist, "batch_loss", failing_loss)
    every_batch = ("--checkpoint-every", "0")
    expected = RuntimeError if how == "crash" else examples["checkpoint"].TrainingStopped
    with pytest.raises(expected):
        mnist.main(_resume_args(tmp_path, data_dir, "mnist", "resumed", *every_batch))
    state = torch.load(tmp_path / "resumed.ckpt", weights_only=True)
    # A crash loses the batch it was in; SIGTERM lets that batch finish first.
    assert (state["epoch"], state["position"]["batch"]) == (0, 3 if how == "crash" else 4)
    assert state["position"]["batches"] == 5
    assert signal.getsignal(signal.SIGTERM) is signal.SIG_DFL
    monkeypatch.setattr(mnist, "batch_loss", real_loss)
    mnist.main(_resume_args(tmp_path, data_dir, "mnist", "resumed"))
    _assert_same_run(tmp_path, "resumed", "straight")


def test_a_stopped_script_exits_with_status_3(examples, capsys, monkeypatch):
    training = examples["training"]

    def stopped(argv):
        raise examples["checkpoint"].TrainingStopped("--stop-after-batches 1")

    monkeypatch.setattr(sys, "argv", ["train_x.py"])
    with pytest.raises(SystemExit) as exc:
        training.run_cli(stopped)
    assert exc.value.code == training.STOPPED_STATUS == 3
    assert capsys.readouterr().err == (
        "train_x.py: stopped (--stop-after-batches 1); the same command resumes\n"
    )


def test_stop_after_batches_needs_a_checkpoint(examples):
    with pytest.raises(SystemExit) as exc:
        examples["jsb"].parse_args(["--stop-after-batches", "3"])
    assert exc.value.code == 2


def test_a_checkpoint_of_another_network_is_a_clear_error(examples, data_dir, tmp_path):
    jsb = examples["jsb"]
    jsb.main(_resume_args(tmp_path, data_dir, "jsb", "net"))
    args = _resume_args(tmp_path, data_dir, "jsb", "net")
    args[args.index("--hidden") + 1] = "11"
    with pytest.raises(SnucError, match="does not fit this network"):
        jsb.main(args)


def test_random_states_round_trip_through_a_checkpoint_file(examples, tmp_path):
    ckpt = examples["checkpoint"]
    saved = ckpt.random_states()
    ckpt.write_atomically(tmp_path / "r.pt", {"random": saved})
    want = (random.random(), np.random.random(), torch.rand(3))
    ckpt.set_random_states(ckpt.read(tmp_path / "r.pt")["random"])
    got = (random.random(), np.random.random(), torch.rand(3))
    assert got[:2] == want[:2] and torch.equal(got[2], want[2])
    assert [p.name for p in tmp_path.iterdir()] == ["r.pt"]  # no temporary file left


@pytest.mark.parametrize("kind", ["snu7", "ssnu4"])
def test_mnist_script_exports_a_classifier(examples, data_dir, tmp_path, kind):
    out = tmp_path / f"mnist_{kind}.onnx"
    summary = examples["mnist"].main(
        _smoke_args(out, data_dir, "--model", kind, "--hidden", "16", "--batch-size", "4")
    )
    _check_written(summary, out, (0.0, 100.0))
    depth = {"snu7": 6, "ssnu4": 3}[kind]
    assert summary["architecture"].startswith(f"784-16x{depth}-10")
    spikes = (np.random.default_rng(0).random((20, 3, 784)) < 0.1).astype(np.float32)
    assert _run_onnx(out, spikes).shape == (20, 3, 10)
    # The script and `snuc eval` code the test digits alike: the compiled model's float
    # accuracy is the one the script reported from PyTorch.
    (row,) = evaluate(out, "mnist", modes=["float"], limit=8, data_dir=data_dir)
    assert row["count"] == 8 and row["value"] == pytest.approx(summary["test"], abs=1e-9)


def test_mnist_cnn_exports_a_convolutional_classifier_that_compiles(examples, data_dir,
                                                                     tmp_path):  # fmt: skip
    out = tmp_path / "mnist_cnn.onnx"
    args = ["--model", "cnn", "--channels", "4,8", "--hidden", "16", "--batch-size", "4"]
    summary = examples["mnist"].main(_smoke_args(out, data_dir, *args))
    _check_written(summary, out, (0.0, 100.0))
    assert summary["architecture"].startswith("1x28x28-4C5-MP2-8C5-MP2-16x1-10: ConvSNU(1, 4")
    assert summary["options"]["epochs"] == "1"
    spikes = (np.random.default_rng(0).random((20, 3, 1, 28, 28)) < 0.1).astype(np.float32)
    assert _run_onnx(out, spikes).shape == (20, 3, 10)
    # Compiled, the model reads the same rate-coded images and scores what PyTorch scored.
    (row,) = evaluate(out, "mnist", modes=["float"], limit=8, data_dir=data_dir)
    assert row["count"] == 8 and row["value"] == pytest.approx(summary["test"], abs=1e-9)


def test_mnist_cnn_defaults_are_the_paper_style_architecture(examples):
    mnist = examples["mnist"]
    args = mnist.parse_args(["--model", "cnn"])
    assert (args.channels, args.hidden, args.epochs) == ([32, 64], 1024, 15)
    model = mnist.build_model("cnn", args.hidden, 0.0, args.channels)
    x = torch.zeros(2, 3, 1, 28, 28)
    assert model(x).shape == (2, 3, 10)
    assert mnist.architecture("cnn", 1024, [32, 64]) == "1x28x28-32C5-MP2-64C5-MP2-1024x1-10"
    for argv in (["--model", "snu7", "--channels", "8"], ["--model", "cnn", "--channels", "4,4,4"]):
        with pytest.raises(SystemExit) as exc:
            mnist.parse_args(argv)
        assert exc.value.code == 2


@pytest.mark.parametrize("kind", ["snu7", "ssnu4"])
def test_initial_scaling_sets_every_layers_threshold_rate(examples, kind):
    training = examples["training"]
    torch.manual_seed(0)
    model = examples["mnist"].build_model(kind, 32)
    x = (torch.rand(20, 16, 784) < 0.05).float()
    gains = training.scale_to_rate(model, x, 0.2)
    assert len(gains) == len(model.layers) - 1
    h = x
    with torch.no_grad():
        for layer in model.layers[:-1]:
            assert training.threshold_rate(layer, h) == pytest.approx(0.2, abs=0.02)
            h = layer(h)
            if not layer.soft:
                assert float(h.mean()) == pytest.approx(0.2, abs=0.02)


@pytest.mark.parametrize("kind", ["snu", "ssnu"])
def test_ptb_script_exports_a_language_model_that_scores_what_it_reported(
    examples, data_dir, tmp_path, kind
):
    out = tmp_path / "ptb.onnx"
    limit = 300
    args = _smoke_args(
        out, data_dir, "--model", kind, "--embed", "16", "--hidden", "24,16", "--bptt", "7"
    )
    args[args.index("--limit") + 1] = str(limit)
    summary = examples["ptb"].main(args)
    _check_written(summary, out, (1.0, 1e5))
    assert summary["model"] == f"ptb_{kind}"
    ids = batchify(load_ptb("test", data_dir)[:limit], 10)
    log_probs = _run_onnx(out, ids)
    assert log_probs.shape == (*ids.shape, 10_000)
    assert perplexity(log_probs[:-1], ids[1:]) == pytest.approx(summary["test"], rel=1e-4)
    assert "(tied readout)" in summary["architecture"]
    assert ("recurrent=True" in summary["architecture"]) == (kind == "ssnu")


def test_hwa_models_get_their_own_name_in_every_script(examples):
    for task, model in (("jsb", "snu"), ("mnist", "snu7"), ("ptb", "ssnu")):
        args = examples[task].parse_args(["--model", model, "--hwa"])
        assert args.out.name == f"{task}_{model}_hwa.onnx", task


def test_ptb_ssnu_defaults(examples):
    args = examples["ptb"].parse_args(["--model", "ssnu"])
    assert (args.hidden, args.embed, args.no_tie) == ([200, 200], 200, False)
    assert args.out.name == "ptb_ssnu.onnx"
    model = examples["ptb"].build_model(16, [8, 16], 0.0, True, "ssnu")
    readout = model.layers[-1]
    assert readout.linear.weight is model.layers[0].weight  # tied
    assert all(layer.recurrent and layer.soft for layer in model.layers[1:-1])


def test_ptb_rejects_untieable_sizes(examples):
    with pytest.raises(SystemExit) as exc:
        examples["ptb"].parse_args(["--embed", "200", "--hidden", "300"])
    assert exc.value.code == 2


@pytest.mark.parametrize("path", sorted((EXAMPLES / "models").glob("*.onnx")), ids=lambda p: p.name)
def test_shipped_models_import_fit_in_20_mb_and_carry_their_summary(path):
    assert path.stat().st_size <= 20 * 2**20
    summary = json.loads(path.with_suffix(".json").read_text())
    assert summary["onnx"] == path.name and summary["onnx_bytes"] == path.stat().st_size
    assert math.isfinite(summary["test"]) and math.isfinite(summary["valid"])
    assert import_onnx(path) is not None


# ------------------------------------------------------------------------- the helpers


def test_best_on_validation_keeps_the_best_weights_and_counts_patience(examples):
    best = examples["training"].BestOnValidation("min", patience=2)
    model = torch.nn.Linear(2, 1)
    for epoch, (metric, fill) in enumerate([(5.0, 1.0), (3.0, 2.0), (4.0, 3.0)], start=1):
        torch.nn.init.constant_(model.weight, fill)
        best.update(metric, model, epoch)
    assert (best.best_epoch, best.best_metric, best.should_stop) == (2, 3.0, False)
    assert not best.update(math.nan, model, 4)
    assert best.should_stop
    best.restore(model)
    assert torch.equal(model.weight, torch.full((1, 2), 2.0))


def test_best_on_validation_max_mode(examples):
    best = examples["training"].BestOnValidation("max", patience=1)
    model = torch.nn.Linear(1, 1)
    assert best.update(90.0, model, 1)
    assert best.update(95.0, model, 2)
    assert not best.update(95.0, model, 3)
    assert best.best_epoch == 2 and best.should_stop


def test_epoch_generator_depends_on_seed_and_epoch_only(examples):
    gen = examples["training"].epoch_generator
    assert np.array_equal(gen(0, 3).permutation(10), gen(0, 3).permutation(10))
    assert not np.array_equal(gen(0, 3).permutation(50), gen(0, 4).permutation(50))
    assert not np.array_equal(gen(1, 3).permutation(50), gen(0, 3).permutation(50))


def test_cuda_without_a_gpu_is_a_clear_error(examples):
    if torch.cuda.is_available():
        pytest.skip("a CUDA device is present")
    with pytest.raises(SnucError, match="--device cuda"):
        examples["training"].select_device("cuda")


def test_a_missing_data_folder_is_one_line_on_stderr_and_status_2(tmp_path):
    missing = tmp_path / "no-such-folder"
    script = EXAMPLES / "train_jsb.py"
    args = [
        sys.executable,
        str(script),
        "--data-dir",
        str(missing),
        "--out",
        str(tmp_path / "m.onnx"),
    ]
    done = subprocess.run(args, capture_output=True, text=True, timeout=120)
    assert done.returncode == 2
    assert done.stderr.count("\n") == 1
    assert (
        done.stderr.startswith("train_jsb.py: error: data directory")
        and str(missing) in done.stderr
    )
    assert not (tmp_path / "m.onnx").exists()


def test_bad_options_exit_with_status_2(examples):
    for argv in (["--epochs", "0"], ["--out", "model.txt"], ["--lr", "-1"]):
        with pytest.raises(SystemExit) as exc:
            examples["jsb"].parse_args(argv)
        assert exc.value.code == 2
