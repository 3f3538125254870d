"""Studies (SPEC §12): a TOML spec's grid, the same rows on every executor, results that
survive a kill, custom data sets, the views, and every bad spec as one line before work.

Everything runs on ``examples/snu_small.onnx`` (32 inputs, 10 sigmoid outputs) scored on
small custom data sets made here, so that the grids stay fast.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
from cli_helpers import assert_one_line_error, run_cli

import snuc
from snuc import evaluate as ev
from snuc import study_views
from snuc.eval_tasks import Batch, read_custom_data
from snuc.ir.errors import SnucError
from snuc.study import run_study
from snuc.study_spec import load_study

MODEL = Path(__file__).resolve().parents[1] / "examples" / "snu_small.onnx"


def _data(path: Path, steps: int = 6, count: int = 24, seed: int = 0) -> Path:
    """Spikes for snu_small and per-step targets near its float outputs (for ``mse``),
    with sequence lengths that differ."""
    rng = np.random.default_rng(seed)
    x = (rng.random((steps, count, 32)) < 0.3).astype(np.float32)
    y = snuc.compile(MODEL).run(x, mode="float")
    targets = y + rng.normal(0.0, 0.01, y.shape).astype(np.float32)
    np.savez(path, inputs=x, lengths=rng.integers(2, steps + 1, count), targets=targets)
    return path


def _spec(path: Path, text: str) -> Path:
    path.write_text(text)
    return path


GRID = """
models = ["{model}"]
tasks = "custom"
data = "{data}"
metric = "mse"
modes = ["quantized", "pcm"]
t_inference = "1h"
seeds = [0, 1, 2]
drift_compensation = ["on", "off"]
batch_size = {batch_size}
{extra}

[targets]
base = ["pcm-256x256", "pcm-128x128"]
adc_bits = [6, 8]

[output]
cache = "{cache}"
"""


@pytest.fixture(scope="module")
def cache(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("cache")


@pytest.fixture(scope="module")
def grid(tmp_path_factory, cache) -> Path:
    """A spec of 4 targets x (quantized + 3 chips x 2 compensations) = 28 configurations."""
    root = tmp_path_factory.mktemp("grid")
    data = _data(root / "d.npz")
    text = GRID.format(model=MODEL, data=data, cache=cache, batch_size=8, extra="")
    return _spec(root / "study.toml", text)


# --------------------------------------------------------------------------- executors


def test_the_grid_gives_the_same_rows_serially_and_on_two_workers(grid) -> None:
    study = load_study(grid)
    assert len(study.configurations) == 28 and len(study.builds) == 4
    serial = run_study(study, executor="serial")
    local = run_study(study, executor="local", workers=2)
    assert local == serial
    assert [(r["target"], r["adc_bits"]) for r in serial[::7]] == [
        ("pcm-256x256", 6), ("pcm-256x256", 8), ("pcm-128x128", 6), ("pcm-128x128", 8)
    ]  # fmt: skip
    pcm = [r["value"] for r in serial if r["mode"] == "pcm" and r["target"] == "pcm-256x256"]
    assert len(set(pcm)) == len(pcm) == 12  # every chip, compensation and ADC differs
    assert len({r["config_id"] for r in serial}) == 28
    assert all(r["batch_size"] == 8 and r["placement"] == "pack" for r in serial)


def test_the_grid_gives_the_same_rows_on_a_ray_local_cluster(grid) -> None:
    pytest.importorskip("ray", reason="Ray is not installed (pip install 'snuc[ray]')")
    study = load_study(grid)
    handlers = signal.getsignal(signal.SIGTERM), signal.getsignal(signal.SIGINT)
    assert run_study(study, executor="ray", workers=2) == run_study(study, executor="serial")
    # The Ray cluster it started is gone, and so are the signal handlers ray.init installs.
    assert (signal.getsignal(signal.SIGTERM), signal.getsignal(signal.SIGINT)) == handlers


def test_the_grid_gives_the_same_rows_on_a_dask_local_cluster(grid) -> None:
    pytest.importorskip(
        "dask.distributed", reason="Dask is not installed (pip install 'snuc[dask]')"
    )
    from dask.distributed import LocalCluster

    study = load_study(grid)
    serial = run_study(study, executor="serial")
    with LocalCluster(n_workers=2, threads_per_worker=1, dashboard_address=None) as cluster:
        assert run_study(study, executor="dask", address=cluster.scheduler_address) == serial
        finished = cluster.scheduler.task_prefixes["snuc"].state_counts["memory"]
        assert finished == 28  # every configuration ran on the cluster the study joined
    assert run_study(study, executor="dask", workers=2) == serial  # a local cluster of its own


def test_local_and_dask_workers_share_the_run_threads(monkeypatch) -> None:
    """Both executors' worker processes get the run threads (``--threads`` sets
    SNUC_THREADS) shared out, for BLAS and for snuc's runs, restored after."""
    from snuc import study_exec as ex

    monkeypatch.setenv("SNUC_THREADS", "6")
    monkeypatch.setenv("OPENBLAS_NUM_THREADS", "5")
    assert (ex.worker_threads(2), ex.worker_threads(4), ex.worker_threads(8)) == (3, 1, 1)
    with ex.pinned_blas(ex.worker_threads(2)):
        assert os.environ["SNUC_THREADS"] == os.environ["OPENBLAS_NUM_THREADS"] == "3"
    assert (os.environ["SNUC_THREADS"], os.environ["OPENBLAS_NUM_THREADS"]) == ("6", "5")


def test_the_dask_executor_without_dask_is_one_line_naming_the_extra(
    grid, capsys, monkeypatch
) -> None:
    monkeypatch.setitem(sys.modules, "dask.distributed", None)  # import fails as if missing
    status, out, err = run_cli(capsys, "eval", "--spec", grid, "--executor", "dask")
    assert_one_line_error(status, err, "--executor dask needs Dask", "snuc[dask]")


def test_the_study_compiles_each_build_once_into_the_cache(tmp_path, grid, monkeypatch) -> None:
    from snuc import driver

    calls: list[str] = []
    real = driver.compile_model
    monkeypatch.setattr(driver, "compile_model", lambda *a, **k: calls.append(1) or real(*a, **k))
    study = load_study(grid, {"output": {"cache": str(tmp_path / "fresh")}})
    run_study(study, executor="serial")
    assert len(calls) == 4 and len(list((tmp_path / "fresh").iterdir())) == 4
    run_study(study, executor="serial")
    assert len(calls) == 4  # the second study finds every artefact in the cache


# --------------------------------------------------------------------------- results


def test_a_study_killed_midway_and_resumed_has_the_rows_of_an_uninterrupted_one(
    tmp_path, cache, capsys
) -> None:
    data = _data(tmp_path / "d.npz", steps=20, count=64)
    text = GRID.format(model=MODEL, data=data, cache=cache, batch_size=4, extra='backend = "sim"')
    spec = _spec(tmp_path / "study.toml", text)
    out = tmp_path / "rows.jsonl"
    command = [sys.executable, "-m", "snuc", "eval", "--spec", spec, "--jsonl", out]
    proc = subprocess.Popen(
        [*map(str, command), "--workers", "2"],
        start_new_session=True,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    deadline = time.monotonic() + 300
    while (not out.exists() or out.read_text().count("\n") < 3) and time.monotonic() < deadline:
        time.sleep(0.02)
    assert proc.poll() is None, "the study finished before it could be killed"
    os.killpg(proc.pid, signal.SIGKILL)  # the study and its workers, as kill -9 would
    proc.wait()
    kept = out.read_text().count("\n")
    assert 3 <= kept < 28
    with open(out, "a") as f:
        f.write('{"task": "custom", "spl')  # a write cut short by the kill
    status, _, err = run_cli(capsys, "eval", "--spec", spec, "--jsonl", out)
    assert_one_line_error(status, err, "exists", "--resume")
    status, table, err = run_cli(
        capsys, "eval", "--spec", spec, "--jsonl", out, "--resume", "--workers", 1, "--progress"
    )
    assert status == 0, err
    assert err.count("snuc eval [") == 28 - kept
    rows = [json.loads(line) for line in out.read_text().splitlines()]
    whole = run_study(load_study(spec), executor="serial")
    assert sorted(rows, key=lambda r: r["config_id"]) == sorted(whole, key=lambda r: r["config_id"])
    assert table == ev.format_results(whole) + "\n" + study_views.format_knobs(whole)


def test_outputs_csv_markdown_parquet_and_the_pareto_plot(tmp_path, grid, capsys) -> None:
    files = {k: tmp_path / f"r.{k}" for k in ("jsonl", "csv", "markdown", "pareto")}
    files["pareto"] = tmp_path / "pareto.png"
    options = [x for k, p in files.items() for x in (f"--{k}", p)]
    status, out, err = run_cli(capsys, "eval", "--spec", grid, "--workers", 1, *options)
    assert status == 0, err
    rows = study_views.read_rows(files["jsonl"])
    assert len(rows) == 28
    csv_lines = files["csv"].read_text().splitlines()
    assert csv_lines[0].endswith("adc_bits,placement,duplicate,crossbars,est_energy_nj_per_step,"
                                 "est_timestep_ns,batch_size,config_id")  # fmt: skip
    assert len(csv_lines) == 1 + 28 + 4 * 3  # every run, then each configuration's mean
    assert files["markdown"].read_text().count("\n") == 2 + 12
    assert files["pareto"].stat().st_size > 10_000
    knobs = out.split("\n\n")[1].splitlines()
    assert knobs[0].split()[0] == "knob"
    assert {line.split()[0] for line in knobs[2:]} == {
        "target", "adc_bits", "mode", "drift_compensation"
    }  # fmt: skip
    status, out2, err = run_cli(capsys, "plot-study", files["jsonl"], "-o", tmp_path / "p2.png")
    assert status == 0, err
    assert out2 == out and (tmp_path / "p2.png").exists()
    pytest.importorskip("pyarrow", reason="pyarrow is not installed (pip install 'snuc[parquet]')")
    import pyarrow.parquet as pq

    parquet = study_views.write_parquet(rows, tmp_path / "r.parquet")
    assert pq.read_table(parquet).to_pylist() == rows


def test_knob_spread_and_pareto_front() -> None:
    rows = [
        {**_row(1.0, "pack"), "seed": 0},
        {**_row(3.0, "pack"), "seed": 1},
        _row(10.0, "spread"),
    ]
    spreads = study_views.knob_spread(rows)
    assert spreads == [("placement", 8.0, "pack", "spread")]  # mse: lower is better
    assert study_views.pareto_front([1, 2, 3, 4], [5.0, 6.0, 1.0, 1.0], lower=True) == [0, 2]
    assert study_views.pareto_front([1, 2, 3], [50.0, 70.0, 60.0], lower=False) == [0, 1]


def _row(value: float, placement: str) -> dict:
    return {
        "task": "custom", "split": "test", "model": "m.onnx", "target": "pcm-256x256",
        "backend": "numpy", "mode": "quantized", "t_inference_s": None,
        "drift_compensation": None, "seed": None, "coding_seed": None, "metric": "mse",
        "value": value, "count": 1, "energy_nj_per_step": None, "timestep_ns": None,
        "placement": placement,
    }  # fmt: skip


# --------------------------------------------------------------------------- custom data


def test_custom_task_end_to_end_on_the_command_line(tmp_path, cache, capsys) -> None:
    rng = np.random.default_rng(3)
    x = (rng.random((5, 30, 32)) < 0.4).astype(np.float32)
    lengths = rng.integers(1, 6, 30)
    art = snuc.compile(MODEL)
    y = art.run(x, mode="float")
    counts = np.where(np.arange(5)[:, None, None] < lengths[None, :, None], y, 0).sum(axis=0)
    labels = np.argmax(counts, axis=1)
    labels[:10] = (labels[:10] + 1) % 10  # a third wrong: 66.67 %
    path = tmp_path / "d.npz"
    np.savez(path, inputs=x, lengths=lengths, targets=labels)
    status, out, err = run_cli(
        capsys, "eval", MODEL, "--task", "custom", "--data", path, "--metric", "accuracy-count",
        "--modes", "float", "--cache", cache, "--workers", 1,
    )  # fmt: skip
    assert status == 0, err
    assert out.splitlines()[2].split()[-2] == "66.6667"
    last = y[lengths - 1, np.arange(30)]
    for metric, want in [
        ("accuracy-last", 100.0 * np.mean(np.argmax(last, axis=1) == labels)),
        ("nll", -np.mean(last[np.arange(30), labels])),
        ("perplexity", np.exp(-np.mean(last[np.arange(30), labels]))),
    ]:
        rows = ev.evaluate(MODEL, "custom", data=path, metric=metric, modes="float")
        assert rows[0]["value"] == pytest.approx(want, rel=1e-6), metric
        assert rows[0]["metric"] == metric and rows[0]["count"] == 30


def test_custom_mse_per_step_and_a_metric_callable(tmp_path) -> None:
    path = _data(tmp_path / "d.npz")
    arrays = read_custom_data(path)
    y = snuc.compile(MODEL).run(arrays["inputs"], mode="float")
    valid = np.arange(6)[:, None] < arrays["lengths"][None, :]
    want = np.mean(np.square(y - arrays["targets"])[valid])
    rows = ev.evaluate(MODEL, "custom", data=path, metric="mse", modes="float", batch_size=5)
    assert rows[0]["value"] == pytest.approx(want, rel=1e-6)
    assert rows[0]["count"] == int(valid.sum()) * 10
    seen: list[int] = []

    def mean_output(batches) -> float:
        chunks = [b for b in batches if isinstance(b, Batch)]
        seen.extend(b.outputs.shape[1] for b in chunks)
        return float(np.concatenate([b.outputs for b in chunks], axis=1).mean())

    rows = ev.evaluate(MODEL, "custom", data=path, metric=mean_output, modes="float", batch_size=10)
    assert seen == [10, 10, 4]
    assert rows[0]["value"] == pytest.approx(float(y.mean()), rel=1e-6)
    assert rows[0]["metric"] == "mean_output"


@pytest.mark.parametrize(
    ("arrays", "metric", "needle"),
    [
        ({"inputs": np.zeros((3, 4, 32), np.float32), "lengths": np.ones(4, int)}, "mse",
         "no array 'targets'"),
        ({"inputs": np.zeros((3, 4, 32), np.float32), "lengths": np.ones(5, int),
          "targets": np.zeros(4, int)}, "mse", "lengths must be 4 integers"),
        ({"inputs": np.zeros((3, 4, 32), np.float32), "lengths": np.full(4, 9),
          "targets": np.zeros(4, int)}, "mse", "lengths must lie in 1..3"),
        ({"inputs": np.zeros((3, 4, 32), np.float32), "lengths": np.ones(4, int),
          "targets": np.zeros(7, int)}, "mse", "targets must be [N] or [T, N, ...]"),
        ({"inputs": np.zeros((3, 4), np.float32), "lengths": np.ones(4, int),
          "targets": np.zeros(4, int)}, "mse", "integer token ids"),
        ({"inputs": np.zeros((3, 4, 32), np.float32), "lengths": np.ones(4, int),
          "targets": np.zeros(4)}, "accuracy-last", "needs integer labels"),
        ({"inputs": np.zeros((3, 4, 32), np.float32), "lengths": np.ones(4, int),
          "targets": np.zeros(4, int)}, "f1", "unknown metric 'f1'"),
    ],
)  # fmt: skip
def test_bad_custom_data_is_one_line(tmp_path, capsys, arrays, metric, needle) -> None:
    path = tmp_path / "bad.npz"
    np.savez(path, **arrays)
    status, out, err = run_cli(
        capsys, "eval", MODEL, "--task", "custom", "--data", path, "--metric", metric,
        "--cache", tmp_path / "cache",
    )  # fmt: skip
    assert_one_line_error(status, err, needle)
    assert out == "" and not (tmp_path / "cache").exists()


def test_custom_inputs_that_do_not_fit_the_model(tmp_path) -> None:
    path = tmp_path / "d.npz"
    np.savez(path, inputs=np.zeros((3, 4, 7), np.float32), lengths=np.ones(4, int),
             targets=np.zeros(4, int))  # fmt: skip
    with pytest.raises(SnucError, match=r"the custom inputs are \[3, 4, 7\]"):
        ev.evaluate(MODEL, "custom", data=path, metric="accuracy-last", modes="float")


# --------------------------------------------------------------------------- bad specs


@pytest.mark.parametrize(
    ("text", "needles"),
    [
        ("moddes = ['pcm']", ["unknown key 'moddes'", "did you mean 'modes'"]),
        ("modes = []", ["modes is an empty list"]),
        ("seeds = []", ["seeds is an empty list"]),
        ("modes = ['analog']", ["unknown mode 'analog'"]),
        ("seeds = ['x']", ["seeds item = 'x' must be an integer"]),
        ("seeds = [1, 1]", ["seed 1 is listed twice"]),
        ("t_inference = ['1 week']", ["t_inference item", "is not a time"]),
        ("drift_compensation = ['maybe']", ["not one of on, off"]),
        ("placement = ['scatter']", ["placement 'scatter' is not one of pack, spread"]),
        ("duplicate = [0]", ["duplicate must be a positive integer"]),
        ("batch_size = -3", ["batch_size must be a positive integer"]),
        ("limit = 0", ["limit must be a positive integer"]),
        ("backend = 'gpu'", ["unknown backend 'gpu'"]),
        ("tasks = 'cifar'", ["unknown task 'cifar'"]),
        ("models = []", ["models is an empty list"]),
        ("models = ['missing.onnx']", ["model", "missing.onnx does not exist"]),
        ("data = 'missing.npz'", ["custom data", "missing.npz does not exist"]),
        ("[targets]\nbase = 'pcm-7x7'", ["7 rows"]),
        ("[targets]\nadc_bitz = [4]", ["unknown target key 'adc_bitz'", "'adc_bits'"]),
        ("[targets]\nadc_bits = []", ["adc_bits is an empty list"]),
        ("[targets]\nadc_bits = [40]", ["'adc_bits' = 40 is out of range"]),
        ("[output]\ncsv = 'nowhere/r.csv'", ["does not exist"]),
        ("[output]\ncsv = 'r.txt'\nmarkdown = 'r.txt'", ["two outputs name"]),
        ("[output]\nexcel = 'r.xlsx'", ["unknown output key 'excel'"]),
        ("modes = [", ["is not valid TOML"]),
        ("modes = " + "[" * 70 + "]" * 70, ["nests arrays or objects more than 64 deep"]),
    ],
)
def test_every_bad_spec_is_one_line_before_any_work(tmp_path, capsys, text, needles) -> None:
    data = _data(tmp_path / "d.npz", count=4)
    head = f'models = ["{MODEL}"]\ntasks = "custom"\ndata = "{data}"\nmetric = "mse"\n'
    lines = text.splitlines()
    if lines[0].split(" =")[0] in ("models", "tasks", "data"):  # replace the default
        key = lines[0].split(" =")[0]
        head = "\n".join(h for h in head.splitlines() if not h.startswith(key)) + "\n"
    spec = _spec(tmp_path / "study.toml", head + text + "\n")
    cache = tmp_path / "cache"
    status, out, err = run_cli(capsys, "eval", "--spec", spec, "--cache", cache)
    assert_one_line_error(status, err, str(spec), *needles)
    assert out == "" and not cache.exists()  # nothing compiled, nothing written


@pytest.mark.parametrize(
    ("argv", "needles"),
    [
        (["--spec", "nowhere.toml"], ["cannot read study spec nowhere.toml"]),
        ([], ["the study names no models"]),
        ([str(MODEL)], ["the study names no tasks"]),
        ([str(MODEL), "--task", "custom"], ["the custom task needs --data D.npz and --metric"]),
        ([str(MODEL), "--task", "jsb", "--metric", "mse"], ["belong to the custom task"]),
        ([str(MODEL), "--task", "jsb", "--resume"], ["--resume continues a results file"]),
        ([str(MODEL), "--task", "jsb", "--executor", "slurm"], ["unknown executor 'slurm'"]),
        ([str(MODEL), "--task", "jsb", "--workers", "0"], ["workers must be a positive"]),
        ([str(MODEL), "--task", "jsb", "--placement", "pack,"], ["--placement", "malformed"]),
    ],
)
def test_bad_command_lines_are_one_line(tmp_path, capsys, argv, needles) -> None:
    status, out, err = run_cli(capsys, "eval", *argv, "--cache", tmp_path / "cache")
    assert_one_line_error(status, err, *needles)
    assert out == "" and not (tmp_path / "cache").exists()


def test_a_results_file_with_a_broken_line_inside_is_refused(tmp_path, grid, capsys) -> None:
    out = tmp_path / "r.jsonl"
    out.write_text('{"config_id": "a"}\nnot json\n{"config_id": "b"}\n')
    status, _, err = run_cli(capsys, "eval", "--spec", grid, "--jsonl", out, "--resume")
    assert_one_line_error(status, err, "line 2 is not a study row")
    status, _, err = run_cli(capsys, "plot-study", tmp_path / "none.jsonl")
    assert_one_line_error(status, err, "none.jsonl does not exist")
