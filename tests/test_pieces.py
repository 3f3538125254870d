"""Inputs in pieces (issue 17): a sequence run piece by piece, the state carried over.

``run(X1, return_state=True)`` returns the outputs and a :class:`RunState`; the next
piece goes on from it (``state=``), and the pieces' outputs are those of one run over
the whole sequence: the IR states carry over, a duplicated tile reads copy ``t mod K`` at
the global step t, and each noisy tile's read-noise stream goes on where it stopped (per
chunk of a batch run in chunks). A state of another configuration is refused in one
line; ``snuc run --state-in/--state-out`` keep it in an ``.npz``.

Bit for bit in every mode and backend, with one exception the NumPy backend's design
fixes: in ``float`` mode it folds time into the batch and multiplies ``[n * B, K]``
float32 blocks with BLAS, whose rounding depends on the number of rows, so a piece's
products may differ from the whole run's in the last bit (as the backend's float
products already differ from the interpreter's, SPEC §6); there the pieces are held to
the backends' equality (``|Δ| <= 1e-5``, identical spikes).
"""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import numpy as np
import onnx
import onnx_models as om  # tests/ is on sys.path under pytest (no __init__.py)
import pytest
from cli_helpers import assert_one_line_error, run_cli
from equivalence import assert_same

import snuc
from snuc import driver
from snuc.ir import SnucError, ops
from snuc.ir.graph import Graph
from snuc.ir.target import TargetSpec, parse_target
from snuc.ir.types import TensorType
from snuc.runtime import read_noise
from snuc.runtime.artefact import Artefact
from snuc.runtime.interpreter import run as interpret
from snuc.runtime.numpy_backend import Plan
from snuc.runtime.read_noise import NoiseStream
from snuc.runtime.run_state import STATE_FORMAT, RunState
from snuc.runtime.simulator import SimPlan

EXAMPLES = Path(__file__).resolve().parents[1] / "examples"
EXAMPLE = EXAMPLES / "snu_small.onnx"
JSB = EXAMPLES / "models" / "jsb_snu.onnx"
MODES = ("float", "quantized", "pcm")
T = 23
SPLITS = {
    1: [0, T],
    3: [0, 9, 10, T],
    7: [0, 1, 4, 5, 11, 12, 20, T],
}
"""Piece boundaries: one piece, three uneven ones, seven with pieces of one step."""


def spikes(shape: tuple[int, ...], seed: int = 0, rate: float = 0.3) -> np.ndarray:
    return (np.random.default_rng(seed).random(shape) < rate).astype(np.float32)


def by_name(art: Artefact, y) -> dict[str, np.ndarray]:
    return y if isinstance(y, dict) else {art.graph.outputs[0]: y}


def in_pieces(run, x: np.ndarray, bounds: list[int]) -> tuple[dict[str, np.ndarray], RunState]:
    """``run(x[a:b], state=..., return_state=True)`` piece by piece; the outputs joined."""
    state, parts = None, []
    for a, b in zip(bounds, bounds[1:], strict=False):
        y, state = run(x[a:b], state=state)
        parts.append(y)
    return {k: np.concatenate([p[k] for p in parts]) for k in parts[0]}, state


def assert_exactly(want: dict[str, np.ndarray], got: dict[str, np.ndarray]) -> None:
    assert got.keys() == want.keys()
    for name, value in want.items():
        assert got[name].dtype == value.dtype, name
        np.testing.assert_array_equal(got[name], value, err_msg=name)


def one_line(err: pytest.ExceptionInfo) -> str:
    message = str(err.value)
    assert message and "\n" not in message
    return message


@pytest.fixture(scope="module")
def models(tmp_path_factory) -> dict[str, Artefact]:
    """The shipped example; it with its tiles duplicated twice on small crossbars; a
    recurrent two-layer network on small crossbars (several tiles per layer)."""
    path = tmp_path_factory.mktemp("pieces") / "recurrent.onnx"
    onnx.save(om.snu_scan_model((6, 20, 9), recurrent=True), path)
    return {
        "example": snuc.compile(EXAMPLE),
        "duplicated": snuc.compile(EXAMPLE, target="pcm-16x16", duplicate=2),
        "recurrent": snuc.compile(path, target="pcm-16x16"),
    }


def features(art: Artefact) -> int:
    return art.graph.type_of(art.graph.inputs[0]).shape[-1]


# --------------------------------------------------------------------------- the oracle


@pytest.mark.parametrize("pieces", sorted(SPLITS))
@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("model", ["example", "duplicated", "recurrent"])
def test_interpreter_pieces_equal_the_whole_run(models, model, mode, pieces):
    art = models[model]
    target = TargetSpec.from_dict(art.target)
    x = spikes((T, 3, features(art)), seed=1)
    whole = interpret(art.graph, x, mode=mode, target=target, seed=2)

    def run(part, state):
        return interpret(
            art.graph, part, mode=mode, target=target, seed=2, state=state, return_state=True
        )

    got, state = in_pieces(run, x, SPLITS[pieces])
    assert_exactly(whole, got)
    assert state.step == T


def test_the_duplicated_tiles_copies_and_noise_do_matter(models):
    """The pieces test above could not fail if a piece started every copy and stream over:
    a second piece run from zero states and the streams' starts differs from the whole
    run's steps, and so does one given the states but not the step count."""
    art = models["duplicated"]
    assert any(n.op.copy_tiles for n in art.graph.nodes() if hasattr(n.op, "copy_tiles"))
    target = TargetSpec.from_dict(art.target)
    x = spikes((T, 3, features(art)), seed=1)
    whole = interpret(art.graph, x, mode="pcm", target=target)
    _, state = interpret(art.graph, x[:5], mode="pcm", target=target, return_state=True)
    wrong_step = dataclasses.replace(state, step=4)
    for start in (None, wrong_step):
        y = interpret(art.graph, x[5:], mode="pcm", target=target, state=start)
        assert not all(np.array_equal(y[k], whole[k][5:]) for k in y)


# --------------------------------------------------------------------------- the backends


def assert_pieces(
    backend: str, mode: str, want: dict[str, np.ndarray], got: dict[str, np.ndarray]
) -> None:
    """Bit for bit, but the NumPy backend's float products (module docstring)."""
    if backend == "numpy" and mode == "float":
        assert_same(want, got)
    else:
        assert_exactly(want, got)


@pytest.mark.parametrize("pieces", sorted(SPLITS))
@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("model", ["example", "duplicated", "recurrent"])
@pytest.mark.parametrize("batch_size", [None, 2])
@pytest.mark.parametrize("backend", ["numpy", "sim"])
def test_backend_pieces_equal_the_whole_run(models, backend, model, mode, pieces, batch_size):
    art = models[model]
    x = spikes((T, 5, features(art)), seed=3)
    options = {"backend": backend, "mode": mode, "seed": 1, "batch_size": batch_size}
    whole = by_name(art, art.run(x, **options))

    def run(part, state):
        y, state = art.run(part, state=state, return_state=True, **options)
        return by_name(art, y), state

    got, state = in_pieces(run, x, SPLITS[pieces])
    assert_pieces(backend, mode, whole, got)
    assert sorted(state.chunks) == ([0] if batch_size is None else [0, 2, 4])


@pytest.mark.parametrize("mode", ["quantized", "pcm"])
@pytest.mark.parametrize("model", ["example", "duplicated", "recurrent"])
def test_every_backend_ends_in_the_oracles_state(models, model, mode):
    """The state a piece ends in is the interpreter's, in every backend: every IR state,
    and each stream where the oracle's stands; so a piece may go on in another backend."""
    art = models[model]
    x = spikes((11, 3, features(art)), seed=9)
    target = TargetSpec.from_dict(art.target)
    _, want = interpret(art.graph, x, mode=mode, target=target, return_state=True)
    assert sorted(want.chunks[0].values) == sorted(s.name for s in art.graph.states)
    for backend in ("numpy", "sim"):
        _, got = art.run(x, backend=backend, mode=mode, return_state=True)
        assert got.identity == want.identity and got.step == want.step == 11
        assert_exactly(want.chunks[0].values, got.chunks[0].values)
        assert got.chunks[0].noise == want.chunks[0].noise
        assert (len(got.chunks[0].noise) > 0) == (mode == "pcm")


def test_a_run_in_one_piece_is_the_run_without_state(models):
    art = models["recurrent"]
    x = spikes((T, 4, features(art)), seed=4)
    for mode in MODES:
        y, _ = art.run(x, mode=mode, return_state=True)
        assert_exactly(by_name(art, art.run(x, mode=mode)), by_name(art, y))


@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("backend", ["numpy", "sim"])
def test_long_pieces_over_noise_pieces_and_time_blocks(backend, mode):
    """JSB at batch 8 over 400 steps: each run spans several time blocks of the NumPy
    backend and several generator pieces of every stream (drawn ahead on a thread by the
    NumPy backend); the pieces cut them anywhere."""
    art = snuc.compile(JSB)
    x = spikes((400, 8, features(art)), seed=5, rate=0.1)
    whole = by_name(art, art.run(x, backend=backend, mode=mode))

    def run(part, state):
        y, state = art.run(part, backend=backend, mode=mode, state=state, return_state=True)
        return by_name(art, y), state

    got, _ = in_pieces(run, x, [0, 137, 138, 400])
    assert_pieces(backend, mode, whole, got)
    target = TargetSpec.from_dict(art.target)
    if mode != "float" and backend == "numpy":  # the interpreter's pieces match it
        want = interpret(art.graph, x[:60], mode=mode, target=target)

        def oracle(part, state):
            return interpret(
                art.graph, part, mode=mode, target=target, state=state, return_state=True
            )

        assert_exactly(want, in_pieces(oracle, x[:60], [0, 17, 60])[0])


@pytest.mark.parametrize("backend", ["numpy", "sim"])
def test_a_piece_of_no_steps_changes_nothing(models, backend):
    art = models["duplicated"]
    x = spikes((T, 3, features(art)), seed=6)
    whole = by_name(art, art.run(x, backend=backend))
    _, state = art.run(x[:7], backend=backend, return_state=True)
    y, empty = art.run(x[7:7], backend=backend, state=state, return_state=True)
    assert by_name(art, y)[art.graph.outputs[0]].shape[0] == 0
    assert empty.step == 7
    rest = by_name(art, art.run(x[7:], backend=backend, state=empty))
    assert_exactly({k: v[7:] for k, v in whole.items()}, rest)


# --------------------------------------------------------------------------- the stream


@pytest.mark.parametrize("sequences", [1, 3])
def test_a_stream_goes_on_from_its_position_at_any_step(sequences, monkeypatch):
    monkeypatch.setattr(read_noise, "NOISE_BLOCK_ELEMENTS", 40)  # pieces of a few steps
    monkeypatch.setattr(read_noise, "NOISE_CALL_ELEMENTS", 1)
    options = {"sequences": sequences, "per_step": 5 * sequences, "offset": 2}
    steps = 23
    whole = NoiseStream(3, 1, steps, **options).take(steps * 5 * sequences)
    for cut in (0, 1, 2, 7, 8, steps - 1, steps):
        first = NoiseStream(3, 1, cut, **options)
        head = first.take(cut * 5 * sequences).copy()
        rest = NoiseStream(3, 1, steps - cut, start=first.position(), **options)
        tail = rest.take((steps - cut) * 5 * sequences)
        np.testing.assert_array_equal(np.concatenate([head, tail]), whole)


# --------------------------------------------------------------------------- refusals


@pytest.mark.parametrize(
    ("change", "needle"),
    [
        ({"seed": 1}, "seed=0"),
        ({"mode": "quantized"}, "mode='pcm'"),
        ({"t_inference": 60.0}, "t_inference_s"),
        ({"drift_compensation": False}, "drift_compensation"),
        ({"batch_size": 2}, "batch_size"),
        ({"batch_offset": 3}, "batch_offset"),
    ],
)
def test_a_state_of_another_configuration_is_one_line(models, change, needle):
    art = models["example"]
    x = spikes((T, 4, features(art)))
    _, state = art.run(x[:5], return_state=True)
    with pytest.raises(SnucError) as err:
        art.run(x[5:], state=state, **change)
    assert needle in one_line(err)


def test_a_state_of_another_batch_model_or_kind_is_one_line(models):
    art = models["example"]
    x = spikes((T, 4, features(art)))
    _, state = art.run(x[:5], return_state=True)
    with pytest.raises(SnucError) as err:
        art.run(x[5:, :3], state=state)
    assert "batch=4" in one_line(err)
    other = models["recurrent"]
    with pytest.raises(SnucError) as err:
        other.run(spikes((T, 4, features(other))), state=state)
    assert "another model" in one_line(err)
    with pytest.raises(SnucError) as err:
        art.run(x, state={"step": 5})
    assert "RunState" in one_line(err)


# --------------------------------------------------------------------------- the file


def test_a_state_file_round_trips(models, tmp_path):
    art = models["duplicated"]
    x = spikes((T, 5, features(art)), seed=7)
    whole = by_name(art, art.run(x, batch_size=2))
    _, state = art.run(x[:8], batch_size=2, return_state=True)
    path = state.save(tmp_path / "state.npz")
    loaded = RunState.load(path)
    assert loaded.identity == state.identity and loaded.step == state.step
    rest = by_name(art, art.run(x[8:], batch_size=2, state=loaded))
    assert_exactly({k: v[8:] for k, v in whole.items()}, rest)
    assert [p.name for p in tmp_path.iterdir()] == ["state.npz"]  # no temporaries left


def test_a_bad_state_file_is_one_line(tmp_path):
    missing = tmp_path / "missing.npz"
    single = tmp_path / "single.npz"
    np.save(tmp_path / "single.npy", np.zeros(3))
    (tmp_path / "single.npy").rename(single)
    foreign = tmp_path / "foreign.npz"
    np.savez(foreign, a=np.zeros(2))
    pickled = tmp_path / "pickled.npz"
    np.savez(pickled, meta=np.array([{"a": 1}], dtype=object))
    for path, needle in (
        (missing, "does not exist"),
        (single, "single .npy"),
        (foreign, "not a snuc run state"),
        (pickled, "Python objects"),
    ):
        with pytest.raises(SnucError) as err:
            RunState.load(path)
        assert needle in one_line(err)
    with pytest.raises(SnucError) as err:
        RunState({}, 0, {}).save(tmp_path / "state.npy")
    assert ".npz" in one_line(err)


def test_a_state_of_an_older_format_says_which(models, tmp_path):
    """A format-1 file (one read-noise generator per tile, before per-sequence keying)
    is refused by its format, not by the first key it lacks."""
    art = models["duplicated"]
    x = spikes((T, 2, features(art)), seed=3)
    _, state = art.run(x[:4], mode="pcm", return_state=True)
    path = state.save(tmp_path / "state.npz")
    with np.load(path) as npz:
        arrays = {k: npz[k] for k in npz.files}
    meta = json.loads(arrays["meta"].tobytes())
    meta["format"] = 1
    for chunk in meta["chunks"].values():  # the old layout of a noise position
        chunk["noise"] = {t: {"generator": p["generators"][0], "used": 0}
                          for t, p in chunk["noise"].items()}  # fmt: skip
    arrays["meta"] = np.frombuffer(json.dumps(meta).encode(), np.uint8)
    old = tmp_path / "old.npz"
    np.savez(old, **arrays)
    with pytest.raises(SnucError) as err:
        RunState.load(old)
    assert f"format 1; this snuc reads format {STATE_FORMAT}" in one_line(err)


def test_an_edited_state_is_one_line(models):
    """A state whose identity fits but whose contents do not (a file edited by hand)."""
    art = models["duplicated"]
    x = spikes((T, 4, features(art)), seed=10)
    _, state = art.run(x[:6], return_state=True)
    chunk = state.chunks[0]
    name = next(iter(chunk.values))
    tile, position = next(iter(chunk.noise.items()))

    def with_generators(*generators: dict) -> RunState:
        """The state with tile's read-noise position holding ``generators``."""
        noise = {**chunk.noise, tile: dataclasses.replace(position, generators=generators)}
        return dataclasses.replace(state, chunks={0: dataclasses.replace(chunk, noise=noise)})

    for edited, needle in (
        (dataclasses.replace(state, chunks={}), "no chunk at sequence 0"),
        (
            dataclasses.replace(
                state, chunks={0: dataclasses.replace(chunk, values={**chunk.values, name: x})}
            ),
            f"%{name}",
        ),
        (with_generators({"bit_generator": "?"}), f"tile {tile}"),
        (  # the right count of PCG64 states, one of them broken: the restart's refusal
            with_generators({**position.generators[0], "state": "?"}, *position.generators[1:]),
            f"read-noise position of tile {tile} does not fit its generators",
        ),
    ):
        with pytest.raises(SnucError) as err:
            art.run(x[6:], state=edited)
        assert needle in one_line(err)


# --------------------------------------------------------------------------- the CLI


def test_cli_runs_a_sequence_in_pieces(capsys, tmp_path):
    art = tmp_path / "model.snuc"
    assert run_cli(capsys, "compile", EXAMPLE, "-o", art, "--duplicate", "2")[0] == 0
    x = spikes((T, 3, 32), seed=8)
    np.save(tmp_path / "x.npy", x)
    np.save(tmp_path / "x1.npy", x[:10])
    np.save(tmp_path / "x2.npy", x[10:])
    assert run_cli(capsys, "run", art, "--input", tmp_path / "x.npy", "--seed", 3)[0] == 0
    status, _, err = run_cli(
        capsys, "run", art, "--input", tmp_path / "x1.npy", "--seed", 3,
        "--state-out", tmp_path / "s1.npz",
    )  # fmt: skip
    assert status == 0 and "s1.npz" in err
    status, _, err = run_cli(
        capsys, "run", art, "--input", tmp_path / "x2.npy", "--seed", 3,
        "--state-in", tmp_path / "s1.npz", "--state-out", tmp_path / "s2.npz",
    )  # fmt: skip
    assert status == 0, err
    pieces = np.concatenate([np.load(tmp_path / "x1.out.npy"), np.load(tmp_path / "x2.out.npy")])
    np.testing.assert_array_equal(pieces, np.load(tmp_path / "x.out.npy"))
    assert RunState.load(tmp_path / "s2.npz").step == T

    status, _, err = run_cli(
        capsys, "run", art, "--input", tmp_path / "x2.npy", "--seed", 4,
        "--state-in", tmp_path / "s1.npz", "-o", tmp_path / "y.npy",
    )  # fmt: skip
    assert_one_line_error(status, err, "seed=3")
    status, _, err = run_cli(
        capsys, "run", art, "--input", tmp_path / "x2.npy",
        "--state-out", tmp_path / "s.npy", "-o", tmp_path / "y.npy",
    )  # fmt: skip
    assert_one_line_error(status, err, ".npz")
    status, _, err = run_cli(
        capsys, "run", art, "--input", tmp_path / "x2.npy",
        "--state-in", tmp_path / "nothing.npz", "-o", tmp_path / "y.npy",
    )  # fmt: skip
    assert_one_line_error(status, err, "nothing.npz")
    status, _, err = run_cli(
        capsys, "run", art, "--input", tmp_path / "x2.npy", "--diagnostics",
        "--state-in", tmp_path / "s1.npz", "-o", tmp_path / "y.npy",
    )  # fmt: skip
    assert_one_line_error(status, err, "--diagnostics")
    assert not (tmp_path / "y.npy").exists()


# --------------------------------------------------------------------------- odd states


def odd_states() -> Graph:
    """States of every holder: a dense SNU layer (on small crossbars), a chain of two
    states behind the input (read two steps back), a state of a constant (no batch
    axis), two states that hold each other (zeros for ever); several are outputs."""
    rng = np.random.default_rng(0)
    g = Graph("odd_states")
    x = g.add_input("x", TensorType("f32", ("B", 6)))
    g.add_constant("W", (rng.standard_normal((6, 20)) * 0.8).astype(np.float32))
    g.add_constant("decay", np.float32(0.8))
    g.add_constant("bias", (rng.standard_normal(20) * 0.2 - 0.4).astype(np.float32))
    s = g.add_state("s", TensorType("f32", ("B", 20)))
    y = g.add_state("y", TensorType("f32", ("B", 20)))
    (a,) = g.add_node(ops.Dense(), [x, "W"], "a")
    s_next, spikes_ = g.add_node(ops.SNULayer(), [a, s, y, "decay", "bias"], ["sn", "yn"])
    g.set_next(s, s_next)
    g.set_next(y, spikes_)
    first = g.add_state("first", TensorType("f32", ("B", 6)))
    second = g.add_state("second", TensorType("f32", ("B", 6)))
    g.set_next(first, x)
    g.set_next(second, first)
    g.add_constant("k", np.arange(6, dtype=np.float32))
    c = g.add_state("c", TensorType("f32", (6,)))
    g.set_next(c, "k")
    p = g.add_state("p", TensorType("f32", ("B", 6)))
    q = g.add_state("q", TensorType("f32", ("B", 6)))
    g.set_next(p, q)
    g.set_next(q, p)
    (z,) = g.add_node(ops.Add(), [second, c], "z")
    (w,) = g.add_node(ops.Add(), [z, p], "w")
    g.outputs += [spikes_, w, second, c, p]
    return driver.lower(g, parse_target("pcm-16x16"))


@pytest.mark.parametrize("mode", MODES)
def test_states_of_inputs_constants_and_each_other_in_pieces(mode):
    graph = odd_states()
    target = parse_target("pcm-16x16")
    x = np.random.default_rng(1).standard_normal((T, 3, 6)).astype(np.float32)
    whole = interpret(graph, x, mode=mode, target=target)

    def oracle(part, state):
        return interpret(graph, part, mode=mode, target=target, state=state, return_state=True)

    got, end = in_pieces(oracle, x, SPLITS[7])
    assert_exactly(whole, got)
    for plan in (
        Plan.build(graph, mode=mode, target=target),
        SimPlan.build(graph, mode=mode, target=target),
    ):

        def run(part, state, plan=plan):
            return plan.run(part, state=state, return_state=True)

        for bounds in SPLITS.values():
            got, ended = in_pieces(run, x, bounds)
            assert_pieces("sim" if isinstance(plan, SimPlan) else "numpy", mode, whole, got)
            assert_exactly(end.chunks[0].values, ended.chunks[0].values)
