"""Tile duplication (``snuc compile --duplicate K``, docs/isa.md "Tile duplication").

Every crossbar with more than 1/K of the busiest crossbar's MVM work gets K copies on
spare crossbars and timestep t is served by copy ``t mod K``: the schedule's ``ii``
shrinks towards the busiest crossbar's work over K, the report counts the copies, the
program tags the copies' instructions ``when t mod K = j`` and the simulator runs them
at those timesteps only, with its measured cycles per timestep still the ``ii``. In
``float`` and ``quantized`` modes copies change no number; in ``pcm`` mode each copy is
its own programmed array, and interpreter, NumPy backend and simulator agree on them.
K = 1 is the compiler without duplication. No timings: ``bench/schedule.py`` measures.
"""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import onnx
import onnx_models as om
import pytest
from equivalence import assert_same  # tests/ is on sys.path under pytest

import snuc
from snuc.backends.asm import parse_program, print_program
from snuc.backends.program import emit_program
from snuc.backends.schedule import schedule_graph
from snuc.backends.timing import verify_timing
from snuc.cli import main
from snuc.ir import ParseError, SnucError
from snuc.ir.target import TargetSpec
from snuc.ir.text import large_constants, parse_graph, print_graph
from snuc.runtime.artefact import Artefact
from snuc.runtime.interpreter import run as interpret

EXAMPLES = Path(__file__).resolve().parents[1] / "examples"
EXAMPLE = EXAMPLES / "snu_small.onnx"
JSB = EXAMPLES / "models" / "jsb_snu.onnx"
MODES = ("float", "quantized", "pcm")
SMALL = "pcm-16x16"


@pytest.fixture(scope="module")
def example() -> dict[int, Artefact]:
    """The example model compiled with 1, 2 and 3 copies."""
    return {k: snuc.compile(EXAMPLE, duplicate=k) for k in (1, 2, 3)}


@pytest.fixture(scope="module")
def dense(tmp_path_factory) -> Path:
    """A stateless dense layer 20 -> 12 for 16 x 16 crossbars: four tiles, packed onto
    three crossbars, the third holding two (the only one with more than half the busiest
    crossbar's work)."""
    path = tmp_path_factory.mktemp("dense") / "dense.onnx"
    onnx.save(om.dense_model(n_in=20, n_out=12, seed=3), path)
    return path


def outputs(y: np.ndarray | dict[str, np.ndarray], art: Artefact) -> dict[str, np.ndarray]:
    return y if isinstance(y, dict) else {art.graph.outputs[0]: y}


def all_backends(art: Artefact, x: np.ndarray, mode: str, **options) -> None:
    """Interpreter, NumPy backend and simulator agree on ``art`` (SPEC §6)."""
    target = TargetSpec.from_dict(art.target)
    want = interpret(art.graph, x, mode=mode, target=target, **options)
    for backend in ("numpy", "sim"):
        got = art.run(x, backend=backend, mode=mode, **_run_options(options))
        assert_same(want, outputs(got, art))


def _run_options(options: dict) -> dict:
    renamed = {"t_inference_s": "t_inference"}
    return {renamed.get(k, k): v for k, v in options.items()}


def one_line(err: pytest.ExceptionInfo) -> str:
    message = str(err.value)
    assert message and "\n" not in message
    return message


# --------------------------------------------------------------------------- the schedule


@pytest.mark.parametrize("model", [EXAMPLE, JSB], ids=["snu_small", "jsb_snu"])
def test_two_copies_halve_the_cycles_per_timestep(model: Path) -> None:
    one, two = snuc.compile(model), snuc.compile(model, duplicate=2)
    r1, r2 = one.report, two.report
    # Both models sit on one crossbar, the busiest resource: its work halves.
    assert r1["schedule"]["busiest_resource"] == "xbar 0"
    assert r2["cycles_lower_bound"] == math.ceil(r1["cycles_lower_bound"] / 2)
    assert r2["cycles_per_timestep"] <= 0.55 * r1["cycles_per_timestep"]
    duplicated = r2["schedule"]["duplication"]
    assert duplicated == {"copies": 2, "crossbars_duplicated": r1["crossbars_used"]}
    assert r2["crossbars_used"] == 2 * r1["crossbars_used"]


def test_only_busy_crossbars_are_copied(dense: Path) -> None:
    plain = snuc.compile(dense, SMALL).report
    report = snuc.compile(dense, SMALL, duplicate=2).report
    originals = [t for t in report["tiles"] if "copy_of" not in t]
    copies = [t for t in report["tiles"] if "copy_of" in t]
    assert originals == plain["tiles"]
    busy = {t["crossbar"] for t in plain["tiles"]}
    load = {c: sum(t["crossbar"] == c for t in plain["tiles"]) for c in busy}
    assert sorted(load.values()) == [1, 1, 2]
    (crowded,) = (c for c, n in load.items() if n == 2)
    assert {t["tile"] for t in originals if t["crossbar"] == crowded} == {
        t["copy_of"] for t in copies
    }
    by_number = {t["tile"]: t for t in originals}
    first_copy = max(by_number) + 1
    for copy in copies:
        original = by_number[copy["copy_of"]]
        assert copy["copy"] == 1 and copy["tile"] >= first_copy
        assert copy["crossbar"] == plain["crossbars_used"]  # the next free crossbar
        for key in ("layer", "row0", "col0", "rows", "cols"):
            assert copy[key] == original[key]
    assert report["crossbars_used"] == plain["crossbars_used"] + 1
    assert report["devices"] == sum(t["rows"] * t["cols"] for t in report["tiles"])
    assert report["utilization"] == pytest.approx(
        report["devices"] / (report["crossbars_used"] * 16 * 16)
    )
    assert report["weights"] == plain["weights"]
    assert report["schedule"]["duplication"] == {"copies": 2, "crossbars_duplicated": 1}
    assert report["cycles_lower_bound"] == 133  # every crossbar's work is one MVM now
    assert plain["cycles_lower_bound"] == 266


def test_one_copy_is_the_compiler_without_duplication(example) -> None:
    plain, one = snuc.compile(EXAMPLE), example[1]
    assert one.program == plain.program
    assert one.report == plain.report
    assert print_graph(one.graph) == print_graph(plain.graph)
    assert "duplication" not in one.report["schedule"]
    assert "when t mod" not in one.program and "copy_of" not in one.program
    assert "copies" not in print_graph(one.graph)


@pytest.mark.parametrize("k", [2, 3])
def test_the_program_checks_its_timing(example, k: int) -> None:
    program = parse_program(example[k].program)
    verify_timing(program)
    assert program.duplicate == k
    assert program.ii == example[k].report["cycles_per_timestep"]
    assert program.busy_cycles() == schedule_graph(example[k].graph, program.target).busy_cycles()


# --------------------------------------------------------------------------- the simulator


@pytest.mark.parametrize("k", [2, 3])
def test_measured_cycles_per_timestep_are_the_ii(example, k: int) -> None:
    art = example[k]
    x = np.random.default_rng(k).uniform(-1, 1, (7, 2, 32)).astype(np.float32)
    art.run(x, backend="sim", mode="quantized")
    stats, report = art.last_stats, art.report
    ii, latency = report["cycles_per_timestep"], report["latency_cycles"]
    assert stats.cycles_per_timestep == ii
    assert stats.latency_cycles == latency
    # Each sequence starts on copy 0: a sequence of 7 steps takes ceil(7 / k) * k turns.
    turns = math.ceil(7 / k) * k
    assert stats.total_cycles == (turns + 7 - 1) * ii + latency


def test_each_timestep_runs_one_copy(example) -> None:
    # 7 steps: not a multiple of 2 or 3, so the copies serve different numbers of steps.
    x = np.random.default_rng(5).uniform(-1, 1, (7, 2, 32)).astype(np.float32)
    stats = {}
    for k in (1, 2, 3):
        example[k].run(x, backend="sim", mode="float")
        stats[k] = example[k].last_stats
    energy = {k: {r.component: r for r in s.energy} for k, s in stats.items()}
    for k in (2, 3):
        assert stats[k].rows_available == stats[1].rows_available
        assert stats[k].rows_driven == stats[1].rows_driven
        for component in ("crossbar", "adc"):  # one MVM and read-out per tile and step
            assert energy[k][component].accesses == energy[1][component].accesses
            assert energy[k][component].energy_pj == pytest.approx(energy[1][component].energy_pj)


# --------------------------------------------------------------------------- the numbers


@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("k", [2, 3])
def test_backends_agree_with_copies(example, mode: str, k: int) -> None:
    x = np.random.default_rng(k).uniform(-1, 1, (7, 3, 32)).astype(np.float32)
    all_backends(example[k], x, mode, seed=2)


@pytest.mark.parametrize("mode", MODES)
def test_backends_agree_on_split_tiles_with_copies(dense: Path, mode: str) -> None:
    art = snuc.compile(dense, SMALL, duplicate=2)
    x = np.random.default_rng(1).uniform(-1, 1, (5, 3, 20)).astype(np.float32)
    all_backends(art, x, mode, seed=4, t_inference_s=86400.0)


def test_backends_agree_on_chunks_of_a_batch(example) -> None:
    art = example[2]
    x = np.random.default_rng(9).uniform(-1, 1, (5, 5, 32)).astype(np.float32)
    numpy = art.run(x, backend="numpy", mode="pcm", batch_size=2)
    sim = art.run(x, backend="sim", mode="pcm", batch_size=2)
    assert_same(outputs(numpy, art), outputs(sim, art))
    target = TargetSpec.from_dict(art.target)
    chunk = interpret(art.graph, x[:, 2:4], mode="pcm", target=target, batch_offset=2)
    assert_same(chunk, outputs(numpy[:, 2:4], art))


@pytest.mark.parametrize("mode", ["float", "quantized"])
def test_copies_change_no_number_without_pcm(example, mode: str) -> None:
    x = np.random.default_rng(3).uniform(-1, 1, (6, 2, 32)).astype(np.float32)
    want = example[1].run(x, backend="numpy", mode=mode)
    for k in (2, 3):
        for backend in ("numpy", "sim"):
            got = example[k].run(x, backend=backend, mode=mode)
            np.testing.assert_array_equal(got, want)


def test_pcm_copies_are_separate_arrays(dense: Path) -> None:
    """A stateless layer: steps served by copy 0 read the same arrays as without copies;
    steps served by copy 1 read the copy, programmed with its own noise."""
    one, two = snuc.compile(dense, SMALL), snuc.compile(dense, SMALL, duplicate=2)
    x = np.random.default_rng(7).uniform(-1, 1, (6, 4, 20)).astype(np.float32)
    for backend in ("numpy", "sim"):
        plain = one.run(x, backend=backend, mode="pcm", seed=1)
        copied = two.run(x, backend=backend, mode="pcm", seed=1)
        np.testing.assert_array_equal(copied[0::2], plain[0::2])
        for t in range(1, 6, 2):
            assert not np.array_equal(copied[t], plain[t]), t


def test_pcm_copies_drift_and_share_read_noise(dense: Path) -> None:
    """Without programming noise and drift the copies are the same array again: only
    the (shared) read noise is left, so every step equals the run without copies."""
    toml = dense.parent / "quiet.toml"
    toml.write_text(f'base = "{SMALL}"\nprog_noise_scale = 0.0\ndrift_scale = 0.0\n')
    one, two = snuc.compile(dense, toml), snuc.compile(dense, toml, duplicate=2)
    x = np.random.default_rng(8).uniform(-1, 1, (4, 3, 20)).astype(np.float32)
    for backend in ("numpy", "sim"):
        np.testing.assert_array_equal(
            two.run(x, backend=backend, mode="pcm"), one.run(x, backend=backend, mode="pcm")
        )


# --------------------------------------------------------------------------- errors


def test_too_few_crossbars_for_the_copies(dense: Path, tmp_path: Path, capsys) -> None:
    toml = tmp_path / "four.toml"
    toml.write_text(f'base = "{SMALL}"\ncores = 4\n')
    snuc.compile(dense, toml, duplicate=2)  # three crossbars and one copy fit
    with pytest.raises(SnucError) as err:
        snuc.compile(dense, toml, duplicate=3)
    message = one_line(err)
    # Every crossbar has more than a third of the busiest one's work: 3 + 2 * 3 crossbars.
    assert "needs 9 crossbars with --duplicate 3, 6 of them copies" in message
    assert "has 4" in message and "--chips 3" in message
    out = tmp_path / "dense.snuc"
    status = main(["compile", str(dense), "--target", str(toml), "--duplicate", "3"])
    status_o = main(
        ["compile", str(dense), "--target", str(toml), "--duplicate", "3", "-o", str(out)]
    )
    _, stderr = capsys.readouterr()
    assert status == status_o == 2
    lines = stderr.splitlines()
    assert lines == [f"snuc: error: {message}"] * 2
    assert not out.exists() and not dense.with_suffix(".snuc").exists()
    assert list(tmp_path.iterdir()) == [toml]


@pytest.mark.parametrize("bad", [0, -2, 1.5, 2.0, True, "2"])
def test_duplicate_must_be_a_positive_integer(dense: Path, bad) -> None:
    with pytest.raises(SnucError) as err:
        snuc.compile(dense, SMALL, duplicate=bad)
    assert "--duplicate takes an integer >= 1" in one_line(err)


@pytest.mark.parametrize("bad", ["0", "-1", "1.5", "two"])
def test_the_cli_rejects_a_bad_duplicate(dense: Path, bad: str, capsys) -> None:
    status = main(["compile", str(dense), "--duplicate", bad, "--emit", "report"])
    out, err = capsys.readouterr()
    assert status == 2 and out == ""
    assert len(err.splitlines()) == 1 and err.startswith("snuc: error: ")
    assert "--duplicate" in err


# --------------------------------------------------------------------------- text forms


def test_ir_text_round_trip_with_copies(example) -> None:
    graph = example[3].graph
    text = print_graph(graph)
    assert "copies = [" in text and "copy_tiles = [" in text
    parsed = parse_graph(text, large_constants(graph))
    assert parsed == graph
    assert print_graph(parsed) == text


def test_ir_text_checks_the_copies(example) -> None:
    graph = example[2].graph
    text = print_graph(graph)
    line = next(line for line in text.splitlines() if "copies = [" in line)
    broken = text.replace(line, line.replace("copy_tiles = [", "copy_tiles = [0, "), 1)
    with pytest.raises(ParseError) as err:
        parse_graph(broken, large_constants(graph))
    message = one_line(err)
    assert f"line {text.splitlines().index(line) + 1}," in message
    assert "copy_tiles" in message


def test_assembly_round_trip_with_tagged_instructions(example) -> None:
    for k in (2, 3):
        text = example[k].program
        assert f"when t mod {k} = {k - 1}" in text
        assert f"copy_of = 0, copy = {k - 1}" in text
        program = parse_program(text)
        assert print_program(program) == text
        assert parse_program(print_program(program)) == program
        schedule = schedule_graph(example[k].graph, program.target)
        assert program == emit_program(example[k].graph, schedule)


@pytest.mark.parametrize(
    ("old", "new", "expected"),
    [
        ("when t mod 2 = 1", "when t mod 2 = 2", "0 <= j < K"),
        ("when t mod 2 = 1", "when t mod two = 1", "unexpected 'two'; expected an int"),
        ("when t mod 2 = 1", "when t mod 2 = 0", "runs when t mod 2 = 1"),
        ("when t mod 2 = 1", "", "runs when t mod 2 = 1"),
    ],
)
def test_assembly_errors_name_the_line(example, old: str, new: str, expected: str) -> None:
    text = example[2].program
    number, line = next(
        (n, line) for n, line in enumerate(text.splitlines(), 1) if ": mvm " in line and old in line
    )
    broken = text.replace(line, line.replace(old, new), 1)
    with pytest.raises(ParseError) as err:
        parse_program(broken)
    message = one_line(err)
    assert f"line {number}," in message
    assert expected in message


def test_a_saved_artefact_keeps_its_copies(example, tmp_path: Path) -> None:
    path = example[2].save(tmp_path / "small.snuc")
    loaded = snuc.load(path)
    assert loaded.program == example[2].program
    assert loaded.report == example[2].report
    x = np.random.default_rng(4).uniform(-1, 1, (5, 2, 32)).astype(np.float32)
    for backend in ("numpy", "sim"):
        np.testing.assert_array_equal(
            loaded.run(x, backend=backend, mode="pcm", seed=6),
            example[2].run(x, backend=backend, mode="pcm", seed=6),
        )
