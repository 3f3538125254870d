"""``snuc eval`` and :func:`snuc.evaluate.evaluate`: the paper's tasks on simulated chips.

The metrics through the artefact are held to the same metrics computed from onnxruntime
on the same model and data (JSB, MNIST) and to PyTorch run window by window with the state
carried (PTB); the sweep's loop structure, plan reuse, aggregation, the CSV and Markdown
files and every error path are checked on tiny models built here.
"""

from __future__ import annotations

import csv
import io
import math
from pathlib import Path

import numpy as np
import pytest

torch = pytest.importorskip("torch")
pytest.importorskip("onnxscript")
ort = pytest.importorskip("onnxruntime")

from cli_helpers import assert_one_line_error, run_cli  # noqa: E402
from torch import nn  # noqa: E402

import snuc  # noqa: E402
from snuc import driver  # noqa: E402
from snuc import evaluate as ev  # noqa: E402
from snuc.datasets import (  # noqa: E402
    iter_scoring_spikes,
    jsb_nll_sum,
    load_jsb,
    load_mnist,
    pad_sequences,
    predictions_from_counts,
)
from snuc.frontend.export import export  # noqa: E402
from snuc.frontend.layers import SNU, Readout, SNUNetwork  # noqa: E402
from snuc.ir.errors import SnucError  # noqa: E402
from snuc.runtime import artefact as artefact_module  # noqa: E402

VOCAB = 20


# --------------------------------------------------------------------------- fixtures


def _export(net: SNUNetwork, path: Path) -> Path:
    return export(net, path, check_lengths=(1, 6), check_batches=(1, 2))


def _scaled(layer: SNU, gain: float) -> SNU:
    """``layer`` with its input weights scaled, so that an untrained layer spikes."""
    with torch.no_grad():
        layer.weight.mul_(gain)
    return layer


@pytest.fixture(scope="module")
def nets() -> dict[str, SNUNetwork]:
    """Tiny untrained networks for each task, scaled so that their SNUs spike."""
    torch.manual_seed(0)
    return {
        "jsb": SNUNetwork(_scaled(SNU(88, 24, decay=0.8), 6.0), Readout(24, 88, "sigmoid")),
        "mnist": SNUNetwork(_scaled(SNU(784, 32, decay=0.8), 4.0), Readout(32, 10, "identity")),
        "ptb": SNUNetwork(
            nn.Embedding(VOCAB, 8),
            _scaled(SNU(8, 16, decay=0.8), 2.0),
            Readout(16, VOCAB, "log_softmax"),
        ),
    }


@pytest.fixture(scope="module")
def models(nets, tmp_path_factory) -> dict[str, Path]:
    """The networks exported to the sequence form."""
    root = tmp_path_factory.mktemp("models")
    return {task: _export(net, root / f"{task}.onnx") for task, net in nets.items()}


def _onnxruntime(path: Path, x: np.ndarray) -> np.ndarray:
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    return session.run(None, {session.get_inputs()[0].name: x})[0]


def _synthetic_ids(count: int = 403, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, VOCAB, count).astype(np.int64)


def _ptb_loader(ids: np.ndarray):
    def load(split: str, data_dir) -> np.ndarray:
        return ids

    return load


# --------------------------------------------------------------------------- metrics


def test_jsb_float_nll_equals_onnxruntime(models, data_dir) -> None:
    rolls = load_jsb("test", data_dir)[:9]
    X, lengths = pad_sequences(rolls)
    nll, frames = jsb_nll_sum(_onnxruntime(models["jsb"], X), X, lengths)

    rows = ev.evaluate(models["jsb"], "jsb", modes=["float"], limit=9, data_dir=data_dir)
    assert len(rows) == 1
    assert rows[0]["count"] == frames == int(np.sum(lengths - 1))
    assert rows[0]["value"] == pytest.approx(nll / frames, rel=1e-6)
    # Chunks padded to their own longest chorale pool to the same mean: padding at the
    # end changes nothing inside a causal network's lengths.
    chunked = ev.evaluate(
        models["jsb"], "jsb", modes=["float"], limit=9, batch_size=4, data_dir=data_dir
    )
    assert chunked[0]["value"] == pytest.approx(rows[0]["value"], rel=1e-6)


def test_mnist_float_accuracy_equals_onnxruntime(models, data_dir) -> None:
    images, labels = load_mnist("test", data_dir)
    # The documented coding: one generator seeded by coding_seed, image after image; a
    # limit keeps the first images' spikes.
    spikes, truth = next(iter_scoring_spikes(images[:70], labels[:70], 8, coding_seed=0))
    want = 100.0 * np.mean(predictions_from_counts(_onnxruntime(models["mnist"], spikes)) == truth)

    for batch_size in (None, 32):
        rows = ev.evaluate(
            models["mnist"],
            "mnist",
            modes=["float"],
            limit=70,
            steps=8,
            batch_size=batch_size,
            data_dir=data_dir,
        )
        assert rows[0]["count"] == 70
        assert rows[0]["value"] == pytest.approx(want, abs=1e-9)
    assert 0.0 < want < 100.0  # the check would be weak on a constant classifier


def test_coding_seeds_run_every_configuration_once_per_coding(models, data_dir) -> None:
    """Each coding seed's rows equal a sweep with that seed alone; the mean pools them."""
    images, _ = load_mnist("test", data_dir)
    images = images[:40]
    # Labels that the float model meets exactly under coding 3: coding 5 then scores
    # less, unless the seed were ignored.
    spikes, _ = next(iter_scoring_spikes(images, np.zeros(40, np.int64), 6, coding_seed=3))
    labels = predictions_from_counts(_onnxruntime(models["mnist"], spikes.astype(np.float32)))
    options = {"modes": ["float", "pcm"], "seeds": [0, 1], "t_inference_s": [3600.0]}
    options |= {"drift_compensation": [True], "steps": 6, "loader": lambda s, d: (images, labels)}
    both = ev.evaluate(models["mnist"], "mnist", coding_seeds=[3, 5], **options)
    assert [(r["coding_seed"], r["mode"], r["seed"]) for r in both] == [
        (c, m, s) for c in (3, 5) for m, s in (("float", None), ("pcm", 0), ("pcm", 1))
    ]
    for coding in (3, 5):
        alone = ev.evaluate(models["mnist"], "mnist", coding_seeds=coding, **options)
        assert alone == [r for r in both if r["coding_seed"] == coding]
    floats = [r["value"] for r in both if r["mode"] == "float"]
    assert floats[0] == 100.0 and floats[1] < 100.0
    means = ev.aggregate(both)
    assert [(m["mode"], m["n_seeds"]) for m in means] == [("float", 2), ("pcm", 4)]
    assert means[0]["mean"] == pytest.approx(sum(floats) / 2)
    assert "| 2 |" in ev.to_markdown(both)  # the float row counts its two codings


def test_ptb_whole_columns_equal_windows_with_carried_state(nets, models) -> None:
    ids = _synthetic_ids()
    columns, window = 4, 7
    rows = ev.evaluate(
        models["ptb"], "ptb", modes=["float"], columns=columns, loader=_ptb_loader(ids)
    )
    # Reference: PyTorch over windows of the batchified stream, the state carried across
    # windows (how examples/train_ptb.py scores a split).
    steps = len(ids) // columns
    data = torch.from_numpy(ids[: steps * columns].reshape(columns, steps).T.copy())
    nll, tokens, state = 0.0, 0, None
    with torch.no_grad():
        for start in range(0, steps - 1, window):
            x = data[start : start + window]
            y = data[start + 1 : start + 1 + window]
            outs = []
            for x_t in x[: len(y)].unbind(0):
                out_t, state = nets["ptb"].step(x_t, state)
                outs.append(out_t)
            nll -= torch.stack(outs).gather(2, y[..., None]).sum().item()
            tokens += y.numel()
    assert rows[0]["count"] == tokens == (steps - 1) * columns
    assert rows[0]["value"] == pytest.approx(math.exp(nll / tokens), rel=1e-5)
    assert 1.0 < rows[0]["value"] < 10 * VOCAB


# --------------------------------------------------------------------------- the sweep


def test_sweep_rows_follow_the_loops_and_build_each_plan_once(models, monkeypatch) -> None:
    builds: list[tuple] = []
    real_build = artefact_module.BACKENDS["numpy"]

    def counting_build(graph, config, target, program):
        builds.append((config.mode, config.seed, config.t_inference_s))
        return real_build(graph, config, target, program)

    compiles: list[str] = []
    real_compile = driver.compile_model

    def counting_compile(model, target=None, **options):
        compiles.append(target.name)
        return real_compile(model, target, **options)

    monkeypatch.setitem(artefact_module.BACKENDS, "numpy", counting_build)
    monkeypatch.setattr(driver, "compile_model", counting_compile)
    ids = _synthetic_ids(120)
    rows = ev.evaluate(
        models["ptb"],
        "ptb",
        modes=["float", "quantized", "pcm"],
        seeds=[3, 1],
        t_inference_s=[1.0, 86400.0],
        drift_compensation=["on", "off"],
        targets=["pcm-256x256", "pcm-128x128"],
        columns=4,
        batch_size=3,  # two chunks per configuration, both on the configuration's plan
        loader=_ptb_loader(ids),
    )
    per_target = 2 + 2 * 2 * 2
    assert len(rows) == 2 * per_target
    assert compiles == ["pcm-256x256", "pcm-128x128"]
    assert len(builds) == len(rows)  # one plan per configuration, never rebuilt
    assert [r["target"] for r in rows] == ["pcm-256x256"] * 10 + ["pcm-128x128"] * 10
    assert [r["mode"] for r in rows[:per_target]] == ["float", "quantized"] + ["pcm"] * 8
    pcm = [(r["seed"], r["t_inference_s"], r["drift_compensation"]) for r in rows[2:per_target]]
    assert pcm == [
        (seed, t, comp) for seed in (3, 1) for t in (1.0, 86400.0) for comp in ("global", "off")
    ]
    for row in rows:
        assert tuple(row) == ev.RUN_FIELDS
        assert row["task"] == "ptb" and row["metric"] == "perplexity" and row["model"] == "ptb.onnx"
        assert row["count"] == (len(ids) // 4 - 1) * 4
        assert math.isfinite(row["value"]) and row["value"] > 1.0
    for row in rows[:2]:
        assert row["seed"] is None and row["t_inference_s"] is None
        assert row["drift_compensation"] is None
    # Different chips, ages and compensation give different results; the same is repeatable.
    assert len({r["value"] for r in rows[2:per_target]}) > 1


def test_pcm_results_are_reproducible_and_artefact_input_matches_onnx(models, tmp_path) -> None:
    art_path = tmp_path / "jsb.snuc"
    snuc.compile(models["jsb"]).save(art_path)
    options = {
        "task": "jsb",
        "modes": ["pcm"],
        "seeds": [2],
        "t_inference_s": [31_536_000.0],
        "drift_compensation": [False],
        "loader": lambda split, data_dir: _random_rolls(),
    }
    from_onnx = ev.evaluate(models["jsb"], **options)
    from_path = ev.evaluate(art_path, **options)
    from_object = ev.evaluate(snuc.load(art_path), **options)
    assert from_onnx[0]["value"] == from_path[0]["value"] == from_object[0]["value"]
    assert from_path[0]["model"] == "jsb.onnx"  # the artefact remembers its source


def _random_rolls() -> list[np.ndarray]:
    rng = np.random.default_rng(5)
    return [(rng.random((n, 88)) < 0.05).astype(np.float32) for n in (9, 17, 4)]


# --------------------------------------------------------------------------- results


def _run_row(mode: str, value: float, seed=None, t=None, comp=None) -> dict:
    return {
        "task": "jsb",
        "split": "test",
        "model": "m.onnx",
        "target": "pcm-256x256",
        "backend": "numpy",
        "mode": mode,
        "t_inference_s": t,
        "drift_compensation": comp,
        "seed": seed,
        "coding_seed": None,
        "metric": "nll",
        "value": value,
        "count": 4648,
        "energy_nj_per_step": None,
        "timestep_ns": None,
    }


RESULT_ROWS = [
    _run_row("float", 8.5),
    _run_row("pcm", 8.6, 0, 86400.0, "global"),
    _run_row("pcm", 9.6, 0, 86400.0, "off"),
    _run_row("pcm", 8.8, 1, 86400.0, "global"),
    _run_row("pcm", 9.9, 1, 86400.0, "off"),
    _run_row("pcm", 9.0, 2, 86400.0, "global"),
    _run_row("pcm", 10.2, 2, 86400.0, "off"),
]


def test_the_simulator_scores_what_numpy_scores_and_adds_energy(models, capsys) -> None:
    rolls = [np.random.default_rng(i).random((t, 88)) < 0.1 for i, t in enumerate((9, 5, 7))]
    options = dict(
        modes=["float", "quantized", "pcm"],
        t_inference_s=[3600.0],
        seeds=[0, 1],
        drift_compensation=["on"],
        batch_size=2,
        loader=lambda split, data_dir: [r.astype(np.float32) for r in rolls],
    )
    numpy_rows = ev.evaluate(models["jsb"], "jsb", **options)
    sim_rows = ev.evaluate(models["jsb"], "jsb", backend="sim", **options)
    assert [r["backend"] for r in sim_rows] == ["sim"] * 4
    for a, b in zip(numpy_rows, sim_rows, strict=True):
        assert b["value"] == pytest.approx(a["value"], abs=1e-5)
        assert a["energy_nj_per_step"] is None and a["timestep_ns"] is None
    art = snuc.compile(models["jsb"])
    report = art.report
    want_ns = report["schedule"]["timestep_ns"]
    assert all(r["timestep_ns"] == pytest.approx(want_ns) for r in sim_rows)
    energies = [r["energy_nj_per_step"] for r in sim_rows]
    assert all(0 < e < report["energy_pj_per_timestep"]["total"] / 1e3 * 1.5 for e in energies)
    table = ev.format_results(sim_rows)
    assert "nJ/step" in table and "nJ/step" not in ev.format_results(numpy_rows)
    agg = ev.aggregate(sim_rows)
    assert agg[-1]["energy_nj_per_step"] == pytest.approx(np.mean(energies[2:]))
    with pytest.raises(SnucError, match="unknown backend 'gpu'"):
        ev.evaluate(models["jsb"], "jsb", backend="gpu", **options)


def test_aggregate_takes_mean_and_sample_std_over_seeds() -> None:
    agg = ev.aggregate(RESULT_ROWS)
    assert [tuple(r) for r in agg] == [ev.AGGREGATE_FIELDS] * 3
    assert [(r["mode"], r["drift_compensation"]) for r in agg] == [
        ("float", None),
        ("pcm", "global"),
        ("pcm", "off"),
    ]
    assert agg[0]["mean"] == 8.5 and agg[0]["std"] is None and agg[0]["n_seeds"] == 1
    assert agg[1]["mean"] == pytest.approx(8.8)
    assert agg[1]["std"] == pytest.approx(0.2)  # ddof 1: sqrt((0.04 + 0 + 0.04) / 2)
    assert agg[2]["mean"] == pytest.approx(9.9)
    assert agg[2]["std"] == pytest.approx(0.3)
    assert agg[2]["n_seeds"] == 3 and agg[2]["count"] == 4648


def test_text_and_markdown_tables_show_the_means() -> None:
    text = ev.format_results(RESULT_ROWS).splitlines()
    assert text[0].split() == [
        "task", "target", "mode", "t_inference", "compensation", "NLL", "(nats/frame)", "seeds"
    ]  # fmt: skip
    assert text[2].split() == ["jsb", "pcm-256x256", "float", "-", "-", "8.500", "-"]
    assert text[3].split() == ["jsb", "pcm-256x256", "pcm", "1", "day", "global", "8.800", "±",
                               "0.200", "3"]  # fmt: skip
    markdown = ev.to_markdown(RESULT_ROWS).splitlines()
    assert len(markdown) == 2 + 3
    assert markdown[0] == (
        "| task | target | mode | t_inference | compensation | NLL (nats/frame) | seeds |"
    )
    assert markdown[1] == "| --- | --- | --- | --- | --- | --- | --- |"
    assert markdown[4] == "| jsb | pcm-256x256 | pcm | 1 day | off | 9.900 ± 0.300 | 3 |"


def test_csv_holds_every_run_then_every_mean() -> None:
    records = list(csv.DictReader(io.StringIO(ev.to_csv(RESULT_ROWS))))
    assert list(records[0]) == list(ev.CSV_FIELDS)
    runs = [r for r in records if r["kind"] == "run"]
    means = [r for r in records if r["kind"] == "mean"]
    assert len(runs) == 7 and len(means) == 3 and records[: len(runs)] == runs
    assert runs[0]["seed"] == "" and runs[0]["t_inference_s"] == "" and runs[0]["value"] == "8.5"
    assert runs[1]["seed"] == "0" and runs[1]["t_inference"] == "1 day"
    assert float(runs[1]["t_inference_s"]) == 86400.0 and runs[1]["drift_compensation"] == "global"
    assert means[1]["seed"] == "" and means[1]["n_seeds"] == "3"
    assert float(means[1]["value"]) == pytest.approx(8.8)
    assert float(means[1]["std"]) == pytest.approx(0.2)
    assert means[0]["std"] == ""


@pytest.mark.parametrize(
    ("seconds", "text"),
    [
        (None, "-"),
        (0.0, "0 s"),
        (1.0, "1 s"),
        (90.0, "1.5 min"),
        (3600.0, "1 h"),
        (86400.0, "1 day"),
        (2 * 86400.0, "2 days"),
        (31_536_000.0, "1 year"),
        (10 * 31_536_000.0, "10 years"),
    ],
)
def test_format_duration_uses_human_units(seconds, text) -> None:
    assert ev.format_duration(seconds) == text


def test_list_parsers() -> None:
    assert ev.parse_modes("pcm, float") == ["pcm", "float"]
    assert ev.parse_times("1,3600,1d,1y,0.5h") == [1.0, 3600.0, 86400.0, 31_536_000.0, 1800.0]
    assert ev.parse_seeds("0,1,2") == [0, 1, 2]
    assert ev.parse_compensation("on,off") == ["global", None]
    assert ev.parse_compensation("column") == ["column"]
    assert ev.parse_targets("pcm-256x256,chip.toml") == ["pcm-256x256", "chip.toml"]


@pytest.mark.parametrize(
    ("parse", "text", "needle"),
    [
        (ev.parse_modes, "float,analog", "unknown mode 'analog'"),
        (ev.parse_modes, "pcm,pcm", "listed twice"),
        (ev.parse_times, "1,,3600", "malformed"),
        (ev.parse_times, "-5", "non-negative"),
        (ev.parse_times, "1 week", "is not a time"),
        (ev.parse_times, "inf", "is not a time"),
        (ev.parse_seeds, "0,x", "not a non-negative integer"),
        (ev.parse_seeds, "-1", "not a non-negative integer"),
        (ev.parse_compensation, "maybe", "not one of on, off"),
        (ev.parse_targets, "pcm-256x256,", "malformed"),
    ],
)
def test_list_parsers_reject_bad_lists(parse, text, needle) -> None:
    with pytest.raises(SnucError, match=needle):
        parse(text)


def test_write_text_atomic_replaces_whole_files_only(tmp_path) -> None:
    path = tmp_path / "out.csv"
    path.write_text("old")
    ev.write_text_atomic(path, "new\n")
    assert path.read_text() == "new\n"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out.csv"]
    with pytest.raises(SnucError, match="does not exist"):
        ev.write_text_atomic(tmp_path / "missing" / "out.csv", "x")
    with pytest.raises(SnucError, match="is a directory"):
        ev.write_text_atomic(tmp_path, "x")


# --------------------------------------------------------------------------- command line


def test_cli_eval_prints_the_table_and_writes_csv_and_markdown(
    models, data_dir, tmp_path, capsys
) -> None:
    out_csv, out_md = tmp_path / "res.csv", tmp_path / "res.md"
    status, out, err = run_cli(
        capsys, "eval", models["jsb"], "--task", "jsb", "--data-dir", data_dir, "--limit", 5,
        "--modes", "float,pcm", "--seeds", "0,1", "--t-inference", "1,1y",
        "--drift-compensation", "on", "--csv", out_csv, "--markdown", out_md, "--progress",
    )  # fmt: skip
    assert status == 0, err
    lines = out.splitlines()
    assert len(lines) == 2 + 3
    assert lines[2].split()[:3] == ["jsb", "pcm-256x256", "float"]
    assert lines[3].split()[2:6] == ["pcm", "1", "s", "global"] and lines[3].endswith("2")
    assert lines[4].split()[3:5] == ["1", "year"]
    # No terminal, --progress: one progress line per configuration.
    assert err.count("snuc eval [") == 5 and "wrote" in err
    records = list(csv.DictReader(io.StringIO(out_csv.read_text())))
    assert [r["kind"] for r in records] == ["run"] * 5 + ["mean"] * 3
    assert out_md.read_text().count("\n") == 2 + 3
    assert sorted(p.name for p in tmp_path.iterdir()) == ["res.csv", "res.md"]
    assert "nJ/step" not in out and all(r["backend"] == "numpy" for r in records)
    status, sim_out, err = run_cli(
        capsys, "eval", models["jsb"], "--task", "jsb", "--data-dir", data_dir, "--limit", 5,
        "--modes", "float", "--backend", "sim",
    )  # fmt: skip
    assert status == 0, err
    header, row = sim_out.splitlines()[0], sim_out.splitlines()[2]
    assert header.split()[-2:] == ["nJ/step", "ns/step"]
    assert row.split()[:6] == lines[2].split()[:6]  # the same NLL as the numpy backend


def test_cli_eval_of_an_artefact_checks_its_target(models, tmp_path, capsys) -> None:
    art = tmp_path / "m.snuc"
    snuc.compile(models["mnist"], target="pcm-128x128").save(art)
    status, out, err = run_cli(
        capsys, "eval", art, "--task", "mnist", "--modes", "float", "--limit", 20,
        "--steps", 4, "--targets", "pcm-128x128",
    )  # fmt: skip
    assert status == 0, err
    assert "pcm-128x128" in out.splitlines()[2]
    status, _, err = run_cli(capsys, "eval", art, "--task", "mnist", "--targets", "pcm-256x256")
    assert_one_line_error(status, err, "compiled for pcm-128x128", "not for pcm-256x256")
    status, _, err = run_cli(capsys, "eval", art, "--task", "mnist", "--chips", 2)
    assert_one_line_error(status, err, "1 chip(s)", "with 2")


@pytest.mark.parametrize(
    ("argv", "needles"),
    [
        (["--task", "cifar"], ["unknown task 'cifar'", "jsb, mnist, ptb"]),
        (["--task", "jsb", "--split", "dev"], ["no split 'dev'"]),
        (["--task", "jsb", "--modes", "float,,pcm"], ["--modes", "malformed"]),
        (["--task", "jsb", "--modes", "analog"], ["unknown mode 'analog'"]),
        (["--task", "jsb", "--t-inference", "-5"], ["non-negative"]),
        (["--task", "jsb", "--seeds", "0;1"], ["not a non-negative integer"]),
        (["--task", "jsb", "--coding-seeds", "0,1"], ["coding seeds apply", "mnist"]),
        (["--task", "jsb", "--coding-seeds", "1,1"], ["coding seed 1", "twice"]),
        (["--task", "jsb", "--coding-seeds", "\uff11"], ["--coding-seeds item"]),
        (["--task", "jsb", "--drift-compensation", "yes"], ["not one of on, off"]),
        (["--task", "jsb", "--limit", "0"], ["limit must be a positive integer"]),
        (["--task", "jsb", "--batch-size", "-2"], ["batch_size must be a positive integer"]),
        (["--task", "jsb", "--targets", "pcm-7x7"], ["7 rows"]),
    ],
)
def test_cli_eval_rejects_bad_arguments(models, tmp_path, capsys, argv, needles) -> None:
    out_csv = tmp_path / "res.csv"
    status, out, err = run_cli(capsys, "eval", models["jsb"], *argv, "--csv", out_csv)
    assert_one_line_error(status, err, *needles)
    assert out == "" and not out_csv.exists()


def test_cli_eval_csv_and_markdown_to_one_file_is_refused(models, tmp_path, capsys) -> None:
    """One path for both would silently keep only the markdown table: refused up front."""
    out = tmp_path / "res.txt"
    status, _, err = run_cli(
        capsys, "eval", models["jsb"], "--task", "jsb", "--modes", "float",
        "--csv", out, "--markdown", tmp_path / "." / "res.txt",
    )  # fmt: skip
    assert_one_line_error(status, err, "--csv and --markdown", "res.txt")
    assert not out.exists()


def test_cli_eval_data_dir_without_the_files(models, tmp_path, capsys) -> None:
    empty = tmp_path / "data"
    empty.mkdir()
    status, _, err = run_cli(capsys, "eval", models["jsb"], "--task", "jsb", "--data-dir", empty)
    assert_one_line_error(status, err, "missing data file", "jsb-chorales-quarter.json")


def test_cli_eval_output_in_a_missing_directory_fails_before_the_sweep(
    models, tmp_path, capsys
) -> None:
    target = tmp_path / "nowhere" / "res.md"
    status, out, err = run_cli(capsys, "eval", models["jsb"], "--task", "jsb", "--markdown", target)
    assert_one_line_error(status, err, "does not exist")
    assert "snuc eval [" not in err and out == ""


@pytest.mark.parametrize(
    ("model", "task", "needle"),
    [
        ("mnist", "jsb", "the jsb task feeds float32 piano rolls"),
        ("jsb", "mnist", "the mnist task feeds float32 spikes"),
        ("jsb", "ptb", "the ptb task feeds token ids"),
    ],
)
def test_a_model_that_does_not_fit_the_task(models, model, task, needle) -> None:
    with pytest.raises(SnucError, match=needle):
        ev.evaluate(models[model], task, modes=["float"], loader=lambda split, data_dir: None)


def test_ptb_vocabulary_too_small_for_the_text(models) -> None:
    ids = _synthetic_ids(100)
    ids[7] = VOCAB + 3
    with pytest.raises(SnucError, match=f"vocabulary of {VOCAB}"):
        ev.evaluate(models["ptb"], "ptb", modes=["float"], loader=_ptb_loader(ids))


def test_jsb_model_without_probabilities_is_an_error(tmp_path) -> None:
    torch.manual_seed(1)
    path = _export(SNUNetwork(SNU(88, 8), Readout(8, 88, "identity")), tmp_path / "logits.onnx")
    with pytest.raises(SnucError, match="probabilities"):
        ev.evaluate(path, "jsb", modes=["float"], loader=lambda split, d: _random_rolls())


# --------------------------------------------------------------------------- real PTB


def test_real_ptb_smoke(data_dir, tmp_path, capsys) -> None:
    """The full 10,000-word vocabulary on the real test text, kept short with --limit."""
    torch.manual_seed(2)
    net = SNUNetwork(nn.Embedding(10_000, 4), SNU(4, 8), Readout(8, 10_000, "log_softmax"))
    path = _export(net, tmp_path / "ptb_full.onnx")
    status, out, err = run_cli(
        capsys, "eval", path, "--task", "ptb", "--data-dir", data_dir, "--limit", 240,
        "--columns", 3, "--modes", "float,pcm", "--seeds", 0, "--t-inference", "1h",
        "--drift-compensation", "on", "--chips", 2,
    )  # fmt: skip
    assert status == 0, err
    rows = out.splitlines()[2:]
    assert [r.split()[2] for r in rows] == ["float", "pcm"]
    for row in rows:
        perplexity = float(row.split()[-2])
        assert 100.0 < perplexity < 1e6  # an untrained model: near the vocabulary size


def test_single_values_stand_for_lists_of_one(models) -> None:
    rows = ev.evaluate(
        models["jsb"],
        "jsb",
        modes="pcm",
        seeds=1,
        t_inference_s=3600,
        drift_compensation=True,
        targets="pcm-128x128",
        loader=lambda split, data_dir: _random_rolls(),
    )
    assert [(r["mode"], r["seed"], r["t_inference_s"], r["target"]) for r in rows] == [
        ("pcm", 1, 3600.0, "pcm-128x128")
    ]
