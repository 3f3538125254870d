"""``snuc eval``: the paper's tasks on simulated chips, swept over modes, drift and chips.

A hardware-mapping study (SPEC §11) asks how much of a trained network's accuracy survives
the chip: quantisation, PCM programming and read noise, and conductance drift after
1 s, 1 h, 1 day or 1 year. :func:`evaluate` scores one model on one task for every
configuration of a sweep::

    for target in targets:                      one compiled artefact per target
        for mode in modes:
            float, quantized:                   one run (deterministic, no seed axis)
            pcm: for seed in seeds:             one simulated chip per seed ...
                   for t in t_inference_s:      ... aged to t seconds after programming
                     for compensation in ...:   global drift compensation on / off

Every configuration is one plan of the artefact (built once, cached while its chunks run:
``Artefact.run`` keeps the plan of the last configuration), so no plan is built twice.

Chunks: each configuration runs the data in chunks of ``batch_size`` sequences (chorales,
images or columns), each chunk one ``Artefact.run``, scored as it comes back, so memory
stays bounded. In ``pcm`` mode each sequence draws its read noise from a stream keyed by
(seed, tile, its index in the split) (SPEC §6; each chunk passes its first sequence as
``batch_offset``), so the noise does not depend on ``batch_size`` or on how the split is cut
into chunks. The default sizes chunks by the model's activations: as many sequences as keep a
chunk's estimated run memory (:func:`snuc.eval_tasks.sequence_bytes`: every value of the
step graph, tile outputs included, for every step) under :data:`CHUNK_BYTES`, so a
convolutional model's wide first layers get small chunks; a smaller ``batch_size`` uses
less memory.

The tasks are in :mod:`snuc.eval_tasks`; the results and their forms in
:mod:`snuc.eval_results` (re-exported here). ``snuc eval`` itself runs a study
(:mod:`snuc.study`, SPEC §12: a grid over models, targets and mappings on worker
processes or Ray), which scores each configuration with the functions here.
"""

from __future__ import annotations

import contextlib
import dataclasses
import os
import re
import sys
import time
from collections.abc import Callable, Iterable, Iterator, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from snuc.datasets import MNIST_STEPS
from snuc.eval_results import (
    AGGREGATE_FIELDS,
    CSV_FIELDS,
    RUN_FIELDS,
    YEAR_S,
    aggregate,
    check_output_path,
    format_duration,
    format_results,
    to_csv,
    to_markdown,
    write_text_atomic,
)
from snuc.eval_tasks import (
    CHUNK_BYTES,
    CUSTOM_METRICS,
    TASKS,
    Batch,
    Piece,
    Task,
    TaskOptions,
    custom_task,
)
from snuc.ir.errors import SnucError
from snuc.ir.target import DEFAULT_TARGET, TargetSpec
from snuc.runtime.artefact import BACKENDS, Artefact
from snuc.runtime.artefact import load as load_artefact
from snuc.runtime.config import (
    DETERMINISTIC_MODES,
    MODES,
    RunConfig,
    check_batch_size,
    check_mode,
    check_seed,
    check_t_inference_s,
)

__all__ = [
    "AGGREGATE_FIELDS",
    "CHUNK_BYTES",
    "CSV_FIELDS",
    "DEFAULT_SEEDS",
    "DEFAULT_T_INFERENCE_S",
    "MODES",
    "PTB_COLUMNS",
    "RUN_FIELDS",
    "TASKS",
    "Task",
    "aggregate",
    "check_output_path",
    "evaluate",
    "format_duration",
    "format_results",
    "parse_compensation",
    "parse_modes",
    "parse_seeds",
    "parse_targets",
    "parse_time",
    "parse_times",
    "resolve_task",
    "to_csv",
    "to_markdown",
    "write_text_atomic",
]

DEFAULT_T_INFERENCE_S = (1.0, 3600.0, 86400.0, 31_536_000.0)
"""1 s, 1 h, 1 day and 1 year after programming (SPEC §11)."""
DEFAULT_SEEDS = (0, 1, 2, 3, 4)

PTB_COLUMNS = 10
"""Columns of the PTB stream; the training script (``examples/train_ptb.py``) scores
validation and test with the same number."""

_TIME_UNITS_S = {
    "s": 1.0,
    "min": 60.0,
    "h": 3600.0,
    "d": 86400.0,
    "day": 86400.0,
    "days": 86400.0,
    "y": YEAR_S,
    "year": YEAR_S,
    "years": YEAR_S,
}
_TIME_RE = re.compile(r"(?P<number>[-+]?(?:\d+\.?\d*|\.\d+)(?:[eE][-+]?\d+)?)\s*(?P<unit>[a-z]*)")
_COMPENSATION_NAMES: dict[str, str | None] = {
    "on": "global",
    "global": "global",
    "column": "column",
    "off": None,
}


# --------------------------------------------------------------------------- the sweep


def sweep_configs(
    modes: Sequence[str],
    seeds: Sequence[int],
    times_s: Sequence[float],
    compensations: Sequence[str | None],
) -> list[RunConfig]:
    """The sweep of one target, in run order: each configuration is a distinct plan (the
    deterministic modes once each, with the default pcm options, which they ignore)."""
    configs = []
    for mode in modes:
        if mode in DETERMINISTIC_MODES:
            configs.append(RunConfig(mode))
            continue
        configs.extend(
            RunConfig(mode, seed, t, compensation)
            for seed in seeds
            for t in times_s
            for compensation in compensations
        )
    return configs


def chip_fields(config: RunConfig) -> dict[str, Any]:
    """The row fields of a configuration's chip: None in the deterministic modes."""
    if config.mode in DETERMINISTIC_MODES:
        return {"t_inference_s": None, "drift_compensation": None, "seed": None}
    return {
        "t_inference_s": config.t_inference_s,
        "drift_compensation": compensation_text(config.drift_compensation),
        "seed": config.seed,
    }


def describe_config(config: RunConfig) -> str:
    """A configuration in a progress line."""
    if config.mode in DETERMINISTIC_MODES:
        return config.mode
    return (
        f"pcm t={format_duration(config.t_inference_s)} "
        f"compensation={compensation_text(config.drift_compensation)} seed={config.seed}"
    )


def evaluate(
    model: str | os.PathLike[str] | Artefact,
    task: str,
    *,
    split: str = "test",
    data_dir: str | os.PathLike[str] | None = None,
    modes: Sequence[str] = MODES,
    t_inference_s: Sequence[float] = DEFAULT_T_INFERENCE_S,
    seeds: Sequence[int] = DEFAULT_SEEDS,
    targets: Sequence[str | os.PathLike[str] | TargetSpec] | None = None,
    chips: int | None = None,
    drift_compensation: Sequence[bool | str | None] = (True, False),
    batch_size: int | None = None,
    limit: int | None = None,
    steps: int = MNIST_STEPS,
    columns: int = PTB_COLUMNS,
    coding_seeds: int | Sequence[int] = 0,
    backend: str = "numpy",
    loader: Callable[[str, Any], Any] | None = None,
    progress: bool = False,
    data: str | os.PathLike[str] | dict[str, np.ndarray] | None = None,
    metric: str | Callable[[Iterable[Batch]], float] | None = None,
) -> list[dict[str, Any]]:
    """Score a model on one of the paper's tasks for every configuration of a sweep.

    Every sweep axis takes a list, or a single value for a list of one.

    Example::

        rows = evaluate("jsb_snu.onnx", "jsb", t_inference_s=[3600, 86400], seeds=[0, 1, 2])
        print(format_results(rows))

    Args:
        model: an ONNX file (compiled once per target), a ``.snuc`` artefact path (a
            directory, or a ``.snuc`` / ``.zip`` file), or an :class:`Artefact`.
        task: ``"jsb"``, ``"mnist"``, ``"ptb"`` (:mod:`snuc.eval_tasks` gives the metrics)
            or ``"custom"`` (with ``data`` and ``metric``).
        split: the data split scored (``"test"`` by default; ``"valid"`` for jsb and ptb).
        data_dir: the data directory (see :func:`snuc.datasets.resolve_data_dir`).
        modes: any of ``"float"``, ``"quantized"``, ``"pcm"``, in the order to run.
        t_inference_s: pcm only: seconds after programming, each >= 0.
        seeds: pcm only: the simulated chips, each a non-negative integer.
        targets: targets to compile an ONNX model for (names, TOML paths or specs);
            default ``pcm-256x256``. With an artefact: None, or its own target only.
        chips: chips available (overrides each target's ``chips``).
        drift_compensation: pcm only: True / ``"global"``, ``"column"``, False / None.
        batch_size: sequences (chorales, images, PTB columns) per run; default: as many as
            keep a chunk's estimated activations under :data:`CHUNK_BYTES`
            (:func:`snuc.eval_tasks.sequence_bytes`). Memory, not results: each
            sequence's read noise is its own (SPEC §6).
        limit: score only the first ``limit`` chorales, images or tokens.
        steps: mnist only: time steps of the rate coding.
        columns: ptb only: columns the token stream is cut into.
        coding_seeds: mnist only: the seeds of the rate coding (independent of the chip
            seed); every configuration runs once per coding, and :func:`aggregate` pools
            the codings with the chips.
        backend: ``"numpy"`` or ``"sim"`` (the cycle-level simulator: the same outputs,
            and the rows get its energy and time per step).
        loader: replaces the task's loader, ``loader(split, data_dir)``, returning what
            :mod:`snuc.datasets` returns: JSB rolls, MNIST ``(images, labels)``, PTB ids.
        progress: report each configuration on stderr: a tqdm bar when stderr is a
            terminal (and tqdm is installed), otherwise one line per configuration.
        data: custom only: an ``.npz`` path (or its arrays by name) of ``inputs``,
            ``lengths`` and ``targets`` (:func:`snuc.eval_tasks.read_custom_data`).
        metric: custom only: one of :data:`~snuc.eval_tasks.CUSTOM_METRICS`, or a
            callable over an iterable of :class:`~snuc.eval_tasks.Batch` (one per chunk,
            outputs included) returning the metric.

    Returns:
        One row per run (keys :data:`RUN_FIELDS`), in run order: per target, the
        deterministic modes once each and pcm once per seed × time × compensation. Pass
        them to :func:`aggregate` for mean ± std over seeds.

    Raises:
        SnucError: a bad task, split, option or list; a model that does not fit the task
            or its targets; missing or corrupt data; any compile or run error. One line.
    """
    spec = resolve_task(task, data, metric)
    check_split(spec, split)
    if backend not in BACKENDS:
        raise SnucError(f"unknown backend {backend!r}; expected one of {', '.join(BACKENDS)}")
    modes = checked_modes(_as_list(modes))
    times = checked_times(_as_list(t_inference_s)) if "pcm" in modes else ()
    seed_list = checked_seeds(_as_list(seeds)) if "pcm" in modes else ()
    compensations = checked_compensations(_as_list(drift_compensation)) if "pcm" in modes else ()
    options = TaskOptions(
        batch_size=None if batch_size is None else int(check_batch_size(batch_size)),
        limit=_optional_positive(limit, "limit"),
        steps=positive(steps, "steps"),
        columns=positive(columns, "columns"),
        coding_seed=0,
    )
    codings = checked_seeds(_as_list(coding_seeds), "coding seed")
    if not spec.coded and codings != (0,):
        raise SnucError(
            f"coding seeds apply to tasks with coded inputs (mnist); {spec.name}'s inputs "
            f"are its data"
        )
    artefacts = artefact_getters(model, None if targets is None else _as_list(targets), chips)
    configs = sweep_configs(modes, seed_list, times, compensations)
    loaded = (loader or spec.loader)(split, data_dir)

    rows: list[dict[str, Any]] = []
    total = len(artefacts) * len(codings) * len(configs)
    with reporter(progress, total) as report:
        for target_name, get_artefact in artefacts:
            art = get_artefact()
            spec.check(art)
            for coding in codings:
                pieces = spec.prepare(loaded, art, dataclasses.replace(options, coding_seed=coding))
                fields = {
                    "split": split,
                    "model": art.source or _model_name(model),
                    "target": target_name,
                }
                coded = coding if spec.coded else None
                rows += _score_configs(art, spec, pieces, configs, backend, report, fields, coded)
    return rows


def _score_configs(
    art: Artefact,
    spec: Task,
    pieces: list[Piece],
    configs: Sequence[RunConfig],
    backend: str,
    report: Callable[[str], None],
    fields: dict[str, Any],
    coding: int | None,
) -> list[dict[str, Any]]:
    """The rows of every configuration on one artefact and one coding of the data
    (``coding``: its seed, None for a task whose inputs are not coded)."""
    rows = []
    for config in configs:
        scored = score_pieces(art, spec, pieces, config, backend)
        rows.append(run_row(spec, fields, backend, config, coding, scored))
        coded = "" if coding is None else f" coding={coding}"
        report(
            f"{spec.name} {fields['target']} {describe_config(config)}{coded}: "
            f"{spec.metric} {scored[0]:.{spec.digits + 1}f}"
        )
    return rows


def run_row(
    task: Task,
    fields: dict[str, Any],
    backend: str,
    config: RunConfig,
    coding: int | None,
    scored: tuple[float, int, dict[str, float | None]],
) -> dict[str, Any]:
    """A run's row (keys :data:`RUN_FIELDS`): ``fields`` gives split, model and target;
    ``scored`` is what :func:`score_pieces` returned."""
    value, count, measured = scored
    row = {
        "task": task.name,
        **fields,
        "backend": backend,
        "mode": config.mode,
        **chip_fields(config),
        "coding_seed": coding,
        "metric": task.metric,
        "value": value,
        "count": count,
        **measured,
    }
    return {key: row[key] for key in RUN_FIELDS}


def score_pieces(
    art: Artefact, task: Task, pieces: list[Piece], config: RunConfig, backend: str = "numpy"
) -> tuple[float, int, dict[str, float | None]]:
    """One configuration's metric: every chunk run on the same plan, the scores pooled
    (or, for a metric callable, handed the chunks' :class:`Batch` es as they run); and, on
    the simulator, its energy and time per step (the ``RUN_FIELDS`` they fill)."""
    energy = {"pj": 0.0, "steps": 0, "timestep_ns": None}

    def outputs() -> Iterator[tuple[Piece, np.ndarray]]:
        first = 0  # the piece's first sequence: keys its read noise apart from the others'
        for piece in pieces:
            chunk = dataclasses.replace(config, batch_offset=first)
            out = art.run(task.feed(piece, art), chunk, backend=backend)
            first += piece.x.shape[1]
            if backend == "sim":
                stats = art.last_stats
                energy["pj"] += stats.energy_pj
                energy["steps"] += stats.sequences * stats.timesteps
                energy["timestep_ns"] = stats.cycles_per_timestep / stats.clock_ghz
            yield piece, out

    if task.reduce is not None:
        batches = (dataclasses.replace(p.truth, outputs=out) for p, out in outputs())
        value, count = float(task.reduce(batches)), sum(p.x.shape[1] for p in pieces)
    else:
        total, count = 0.0, 0
        for piece, out in outputs():
            part, n = task.score(out, piece)
            total, count = total + part, count + n
        value = task.finish(total, count)
    measured = {
        "energy_nj_per_step": energy["pj"] / energy["steps"] / 1e3 if energy["steps"] else None,
        "timestep_ns": energy["timestep_ns"],
    }
    return value, count, measured


def artefact_getters(
    model: str | os.PathLike[str] | Artefact,
    targets: Sequence[str | os.PathLike[str] | TargetSpec] | None,
    chips: int | None,
) -> list[tuple[str, Callable[[], Artefact]]]:
    """``(target name, artefact getter)`` per target; ONNX compiles when its turn comes."""
    from snuc.driver import compile_model, resolve_target

    if chips is not None:
        positive(chips, "chips")
    if targets is not None and len(targets) == 0:
        raise SnucError("the list of targets is empty; name at least one, e.g. pcm-256x256")
    if isinstance(model, Artefact) or is_artefact_path(model):
        art = model if isinstance(model, Artefact) else load_artefact(model)
        for given in targets or [None]:
            if given is None and chips is None:
                continue
            wanted = resolve_target(
                TargetSpec.from_dict(art.target) if given is None else given, chips
            )
            if wanted.to_dict() != TargetSpec.from_dict(art.target).to_dict():
                raise SnucError(
                    f"the artefact is compiled for {art.target['name']} with "
                    f"{art.target['chips']} chip(s), not for {wanted.name} with "
                    f"{wanted.chips}; drop --targets / --chips or evaluate the ONNX model"
                )
        return [(str(art.target["name"]), lambda: art)]
    specs = [resolve_target(t, chips) for t in (targets or [DEFAULT_TARGET])]
    names = [s.name for s in specs]
    if len(set(names)) != len(names):
        raise SnucError(f"target {first_duplicate(names)} is listed twice; list each once")
    return [(s.name, lambda s=s: compile_model(model, s)) for s in specs]


def is_artefact_path(model: str | os.PathLike[str]) -> bool:
    path = Path(model)
    return path.is_dir() or path.suffix in (".snuc", ".zip")


def _model_name(model: str | os.PathLike[str] | Artefact) -> str:
    return "" if isinstance(model, Artefact) else Path(model).name


@contextlib.contextmanager
def reporter(enabled: bool, total: int, done: int = 0) -> Iterator[Callable[[str], None]]:
    """``report(line)`` after each configuration: a tqdm bar (rate, ETA) on a terminal,
    else one line per configuration with its rate and ETA; ``done`` configurations are
    already finished (a resumed study)."""
    if not enabled:
        yield lambda line: None
        return
    bar = None
    if sys.stderr.isatty():
        with contextlib.suppress(ImportError):
            from tqdm import tqdm

            bar = tqdm(total=total, initial=done, file=sys.stderr, unit="config", desc="snuc eval")
    if bar is None:
        yield _line_reporter(total, done)
        return
    with bar:

        def advance(line: str) -> None:
            bar.set_postfix_str(line, refresh=False)
            bar.update(1)

        yield advance


def _line_reporter(total: int, done: int) -> Callable[[str], None]:
    """One line per configuration: ``snuc eval [ i/N] 1.2 config/min, ETA 3 min: ...``."""
    width, start, count = len(str(total)), time.monotonic(), iter(range(done + 1, total + 1))

    def report(line: str) -> None:
        index = next(count)
        per_s = (index - done) / max(time.monotonic() - start, 1e-9)
        eta = format_duration((total - index) / per_s) if per_s > 0 else "-"
        print(
            f"snuc eval [{index:>{width}}/{total}] {60 * per_s:.3g} config/min, ETA {eta}: {line}",
            file=sys.stderr,
            flush=True,
        )

    return report


# --------------------------------------------------------------------------- validation


def _as_list(values: Any) -> list[Any]:
    """A sweep axis as a list; a single value (a string, a number, a target) is one item."""
    if isinstance(values, str | bytes | os.PathLike | TargetSpec | int | float | np.generic | None):
        return [values]
    return list(values)


def resolve_task(
    name: str,
    data: str | os.PathLike[str] | dict[str, np.ndarray] | None = None,
    metric: str | Callable[[Iterable[Batch]], float] | None = None,
) -> Task:
    """The task ``name``; ``custom`` on ``data`` scored by ``metric`` (both required there,
    refused elsewhere).

    Raises:
        SnucError: an unknown task, custom without data or metric, bad custom data.
    """
    if name == "custom":
        if data is None or metric is None:
            raise SnucError(
                "the custom task needs --data D.npz and --metric (one of "
                f"{', '.join(CUSTOM_METRICS)})"
            )
        return custom_task(data, metric)
    if name not in TASKS:
        raise SnucError(f"unknown task {name!r}; expected one of {', '.join(TASKS)}, custom")
    if data is not None or metric is not None:
        raise SnucError(f"--data and --metric belong to the custom task, not to {name}")
    return TASKS[name]


def check_split(task: Task, split: str) -> None:
    if split not in task.splits:
        raise SnucError(
            f"the {task.name} task has no split {split!r}; expected one of {', '.join(task.splits)}"
        )


def checked_modes(modes: Sequence[str]) -> tuple[str, ...]:
    modes = tuple(modes)
    if not modes:
        raise SnucError(f"the list of modes is empty; name some of {', '.join(MODES)}")
    for mode in modes:
        check_mode(mode)
    no_duplicates(modes, "mode")
    return modes


def checked_times(times: Sequence[float]) -> tuple[float, ...]:
    checked = [float(check_t_inference_s(t)) for t in times]
    if not checked:
        raise SnucError("the list of t_inference times is empty; give at least one")
    no_duplicates(checked, "t_inference")
    return tuple(checked)


def checked_seeds(seeds: Sequence[int], what: str = "seed") -> tuple[int, ...]:
    checked = tuple(int(check_seed(s)) for s in seeds)
    if not checked:
        raise SnucError(f"the list of {what}s is empty; give at least one")
    no_duplicates(checked, what)
    return checked


def checked_compensations(values: Sequence[bool | str | None]) -> tuple[str | None, ...]:
    checked = []
    for value in values:
        if value is True:
            checked.append("global")
        elif value is False or value is None:
            checked.append(None)
        elif isinstance(value, str) and value in _COMPENSATION_NAMES:
            checked.append(_COMPENSATION_NAMES[value])
        else:
            raise SnucError(f"drift compensation {value!r} is not one of on, off, global, column")
    if not checked:
        raise SnucError("the list of drift compensations is empty; give on, off or both")
    no_duplicates([compensation_text(c) for c in checked], "drift compensation")
    return tuple(checked)


def compensation_text(compensation: str | None) -> str:
    return "off" if compensation is None else compensation


def no_duplicates(values: Sequence[Any], what: str) -> None:
    if len(set(values)) != len(values):
        raise SnucError(f"{what} {first_duplicate(values)} is listed twice; list each once")


def first_duplicate(values: Sequence[Any]) -> Any:
    seen = set()
    for value in values:
        if value in seen:
            return value
        seen.add(value)
    return None


def positive(value: Any, what: str) -> int:
    if isinstance(value, bool) or not isinstance(value, int | np.integer) or value < 1:
        raise SnucError(f"{what} must be a positive integer, got {value!r}")
    return int(value)


def _optional_positive(value: Any, what: str) -> int | None:
    return None if value is None else positive(value, what)


# --------------------------------------------------------------------------- parsing lists


def _items(text: str, what: str) -> list[str]:
    """The comma-separated items of a command-line list; empty items are errors."""
    items = [item.strip() for item in text.split(",")]
    if any(not item for item in items):
        raise SnucError(f"{what} {text!r} is malformed: expected a comma-separated list")
    return items


def parse_modes(text: str) -> list[str]:
    """``--modes``: e.g. ``"float,quantized,pcm"``.

    Raises:
        SnucError: an empty item, an unknown mode or one listed twice.
    """
    return list(checked_modes(_items(text, "--modes")))


def parse_times(text: str) -> list[float]:
    """``--t-inference``: seconds, or a number with a unit (s, min, h, d, y), e.g. ``"1,1h,1y"``.

    A year is 365 days (31,536,000 s).

    Raises:
        SnucError: an empty item, something that is not a time, a negative time, a time
            listed twice.
    """
    return list(checked_times([parse_time(item) for item in _items(text, "--t-inference")]))


def parse_time(item: str | float, what: str = "--t-inference item") -> float:
    """One time: seconds (a number, or its text) or a number with a unit, e.g. ``"1h"``.

    Raises:
        SnucError: not a time (a negative time is refused by the list's check).
    """
    if isinstance(item, int | float) and not isinstance(item, bool):
        return float(item)
    match = _TIME_RE.fullmatch(item.strip()) if isinstance(item, str) else None
    if match is None or match["unit"] not in ("", *_TIME_UNITS_S):
        raise SnucError(
            f"{what} {item!r} is not a time: expected seconds or a number "
            f"with a unit ({', '.join(_TIME_UNITS_S)}), e.g. 3600 or 1h"
        )
    return float(match["number"]) * _TIME_UNITS_S.get(match["unit"], 1.0)


def parse_seeds(text: str, option: str = "--seeds") -> list[int]:
    """``--seeds`` (or ``--coding-seeds``): non-negative integers, e.g. ``"0,1,2,3,4"``.

    Raises:
        SnucError: an empty item, something that is not a non-negative integer, a repeat.
    """
    seeds = []
    for item in _items(text, option):
        if not (item.isascii() and item.isdigit()):
            raise SnucError(f"{option} item {item!r} is not a non-negative integer")
        seeds.append(int(item))
    return list(checked_seeds(seeds, "seed" if option == "--seeds" else "coding seed"))


def parse_compensation(text: str) -> list[str | None]:
    """``--drift-compensation``: ``on`` (= ``global``), ``off``, ``column``, e.g. ``"on,off"``.

    Returns:
        ``"global"``, ``"column"`` or None (off) per item.

    Raises:
        SnucError: an empty item, an unknown value, a repeat.
    """
    return list(checked_compensations(_items(text, "--drift-compensation")))


def parse_targets(text: str, option: str = "--targets") -> list[str]:
    """``--targets``: target names or TOML files, e.g. ``"pcm-256x256,pcm-128x128"``
    (and any other list of names, such as ``--placement``'s).

    Raises:
        SnucError: an empty item.
    """
    return _items(text, option)
