"""RunConfig: a run's options checked in one place, frozen, and passed whole.

Every entry point (the three runtimes, ``Artefact.run``, ``snuc run``, ``snuc eval``)
refuses a bad option with the one message RunConfig raises for it.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path

import numpy as np
import pytest
from cli_helpers import assert_one_line_error, run_cli

import snuc
from snuc import evaluate as ev
from snuc.ir import SnucError
from snuc.runtime import config as config_module
from snuc.runtime.config import MODES, RunConfig
from snuc.runtime.interpreter import run as interpret
from snuc.runtime.numpy_backend import Plan, run_numpy
from snuc.runtime.simulator import SimPlan, run_sim

EXAMPLE = Path(__file__).resolve().parents[1] / "examples" / "snu_small.onnx"

BAD_OPTIONS = [
    ({"mode": "analog"}, "unknown mode 'analog'; expected one of float, quantized, pcm"),
    (
        {"mode": "pcm", "drift_compensation": "local"},
        "drift_compensation 'local' is not valid; expected 'global', 'column' or None",
    ),
    ({"mode": "pcm", "seed": -1}, "seed -1 is not valid; expected a non-negative integer"),
    ({"mode": "pcm", "seed": 1.5}, "seed 1.5 is not valid; expected a non-negative integer"),
    (
        {"mode": "pcm", "t_inference_s": -5.0},
        "t_inference_s -5.0 is not valid; expected a finite, non-negative number of seconds "
        "since programming",
    ),
    (
        {"mode": "pcm", "t_inference_s": float("nan")},
        "t_inference_s nan is not valid; expected a finite, non-negative number of seconds "
        "since programming",
    ),
    ({"batch_size": 0}, "batch_size must be a positive integer, got 0"),
    ({"batch_size": True}, "batch_size must be a positive integer, got True"),
    ({"batch_offset": -1}, "batch_offset -1 is not valid; expected a non-negative integer"),
]


@pytest.fixture(scope="module")
def example() -> snuc.Artefact:
    return snuc.compile(EXAMPLE)


def spikes(batch: int = 3) -> np.ndarray:
    return (np.random.default_rng(0).random((6, batch, 32)) < 0.4).astype(np.float32)


def assert_same_outputs(a: dict[str, np.ndarray], b: dict[str, np.ndarray]) -> None:
    assert a.keys() == b.keys()
    for name, value in a.items():
        np.testing.assert_array_equal(value, b[name], err_msg=name)


def message(call) -> str:
    with pytest.raises(SnucError) as err:
        call()
    return str(err.value)


@pytest.mark.parametrize(("options", "expected"), BAD_OPTIONS)
def test_a_bad_option_is_refused_by_runconfig_with_its_one_line_message(options, expected):
    assert message(lambda: RunConfig(**options)) == expected


@pytest.mark.parametrize(("options", "expected"), BAD_OPTIONS)
def test_every_entry_point_refuses_it_with_the_same_message(example, options, expected):
    graph, target, x = example.graph, example.target["name"], spikes()
    art_options = {("t_inference" if k == "t_inference_s" else k): v for k, v in options.items()}
    calls = [
        lambda: interpret(graph, x, target=target, **options),
        lambda: run_numpy(graph, x, target=target, **options),
        lambda: run_sim(graph, x, target=target, **options),
        lambda: example.run(x, **art_options),
        lambda: example.run(x, backend="sim", **art_options),
    ]
    for call in calls:
        assert message(call) == expected


def test_the_cli_refuses_a_bad_option_with_the_same_message(example, tmp_path, capsys):
    art, x = tmp_path / "m.snuc", tmp_path / "x.npy"
    example.save(art)
    np.save(x, spikes())
    status, _, err = run_cli(capsys, "run", art, "--input", x, "--seed", "-1")
    assert_one_line_error(status, err, "seed -1 is not valid; expected a non-negative integer")
    status, _, err = run_cli(capsys, "run", art, "--input", x, "--batch-size", "0")
    assert_one_line_error(status, err, "batch_size must be a positive integer, got 0")
    assert not (tmp_path / "x.out.npy").exists()


def test_snuc_eval_checks_the_items_of_its_lists_with_the_same_checks():
    assert message(lambda: ev.parse_modes("float,analog")) == message(
        lambda: RunConfig(mode="analog")
    )
    assert message(lambda: ev.parse_times("1,-5")) == message(
        lambda: RunConfig(mode="pcm", t_inference_s=-5.0)
    )
    assert message(lambda: ev.evaluate("m.onnx", "jsb", seeds=[0, -1])) == message(
        lambda: RunConfig(mode="pcm", seed=-1)
    )


def test_options_a_mode_does_not_use_are_not_checked():
    for mode in ("float", "quantized"):
        config = RunConfig(mode, seed=-1, t_inference_s=-5.0, drift_compensation="local")
        assert config.seed == -1


def test_a_config_is_frozen_and_its_plan_config_drops_the_batch_options():
    config = RunConfig("pcm", seed=2, batch_size=4, batch_offset=8)
    with pytest.raises(dataclasses.FrozenInstanceError):
        config.seed = 3  # type: ignore[misc]
    assert config.plan_config == RunConfig("pcm", seed=2)
    assert RunConfig("pcm", t_inference_s=3600) == RunConfig("pcm", t_inference_s=3600.0)


def test_keywords_and_a_config_are_the_same_run(example):
    """README's ``art.run(x, mode="pcm", seed=0, t_inference=86400.0)`` builds a RunConfig."""
    x = spikes()
    by_keywords = example.run(x, mode="pcm", seed=0, t_inference=86400.0)
    by_config = example.run(x, config=RunConfig("pcm", seed=0, t_inference_s=86400.0))
    np.testing.assert_array_equal(by_keywords, by_config)
    # Artefact.run's defaults: pcm on chip 0, one hour old, global compensation.
    np.testing.assert_array_equal(example.run(x), example.run(x, RunConfig("pcm")))
    np.testing.assert_array_equal(
        example.run(x, drift_compensation=False),
        example.run(x, RunConfig("pcm", drift_compensation=None)),
    )
    with pytest.raises(TypeError, match="t_inference_s"):
        example.run(x, t_inference_s=1.0)


def test_keywords_replace_fields_of_a_given_config(example):
    x, target = spikes(4), example.target["name"]
    by_keyword = run_numpy(example.graph, x, RunConfig("pcm", seed=1), target=target, batch_size=2)
    whole = run_numpy(example.graph, x, RunConfig("pcm", seed=1, batch_size=2), target=target)
    assert_same_outputs(by_keyword, whole)


@pytest.mark.parametrize("build", [Plan.build, SimPlan.build])
def test_a_plan_runs_only_its_own_configuration(example, build):
    """A plan runs its configuration; a run may change only the batch options."""
    built = RunConfig("pcm", seed=1, batch_size=2)
    plan = build(example.graph, built, target=example.target["name"])
    x = spikes(4)
    chunked = plan.run(x)
    assert_same_outputs(chunked, plan.run(x, RunConfig("pcm", seed=1, batch_size=2)))
    assert_same_outputs(chunked, plan.run(x, batch_size=2))
    whole = plan.run(x, batch_size=None)  # read noise keyed per sequence: the same
    assert_same_outputs(chunked, whole)
    shifted = plan.run(x, batch_offset=4)  # the batch options are the run's
    assert any(not np.array_equal(whole[k], shifted[k]) for k in whole)
    error = message(lambda: plan.run(x, RunConfig("pcm", seed=2)))
    assert "build a plan for that configuration" in error and "\n" not in error


def test_modes_are_defined_once():
    assert ev.MODES is MODES is config_module.MODES
