"""Smoke tests of the training scripts in examples/: each trains for one epoch on a few
items, scores the test split, and writes an ONNX model that snuc imports and that
onnxruntime runs to the metric the script reported; plus the shared helpers."""

from __future__ import annotations

import json
import math
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
    import _training
    import train_jsb
    import train_mnist
    import train_ptb

    return {"training": _training, "jsb": train_jsb, "mnist": train_mnist, "ptb": train_ptb}


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


def test_ptb_script_exports_a_language_model_that_scores_what_it_reported(examples, data_dir,
                                                                          tmp_path):  # fmt: skip
    out = tmp_path / "ptb.onnx"
    limit = 300
    args = _smoke_args(out, data_dir, "--embed", "16", "--hidden", "24,16", "--bptt", "7")
    args[args.index("--limit") + 1] = str(limit)
    summary = examples["ptb"].main(args)
    _check_written(summary, out, (1.0, 1e5))
    ids = batchify(load_ptb("test", data_dir)[:limit], 10)
    log_probs = _run_onnx(out, ids)
    assert log_probs.shape == (*ids.shape, 10_000)
    assert perplexity(log_probs[:-1], ids[1:]) == pytest.approx(summary["test"], rel=1e-4)
    assert "tied" in summary["architecture"]


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
