"""A study's spec (SPEC §12): a TOML file, or ``snuc eval``'s options, checked whole and
expanded into its grid of configurations before any work starts.

A spec names models, tasks and axes; every axis takes a value or a list of values::

    models = ["mnist_snu7.onnx"]            # ONNX models or .snuc artefacts (paths are
    tasks = ["mnist"]                       #   relative to the spec file)
    limit = 2000
    batch_size = 500                        # sequences per run: memory, not results
    modes = ["quantized", "pcm"]
    t_inference = ["1h", "1d"]
    drift_compensation = ["on", "off"]
    seeds = [0, 1, 2, 3, 4]
    placement = ["pack", "spread"]
    duplicate = [1, 2]
    calibrate = ["none", "cal.npy"]         # converter ranges: guaranteed, or calibrated on
                                            #   samples [T, B, ...] (``compile --calibrate``);
                                            #   rows: cal.npy@<its sha256's first 8 digits>

    [targets]
    base = ["pcm-256x256"]                  # presets, pcm-RxC names or target TOML files
    adc_bits = [6, 8]                       # any target key (``snuc targets``) as an axis
    devices_per_polarity = [1, 2]
    weight_scaling = ["column", "tile"]     # the mapping knobs are target keys too
    adc_rule = ["max", "ksigma"]            #   (docs/quantization.md)

    [output]
    jsonl = "results.jsonl"                 # one row per configuration, appended
    csv = "results.csv"

The grid is every model x task x target (each base with each combination of the target
axes) x placement x duplicate x calibration x batch size x coding seed x run configuration (the
deterministic modes once, pcm per seed x time x compensation). Each (model, target,
placement, duplicate, calibration) is one :class:`Build`, compiled once; each grid point one
:class:`Configuration` whose ``id`` (a hash of what it computes) keys its row in the
results file. Any bad key, value, empty axis or missing file is one ``SnucError`` line.
"""

from __future__ import annotations

import dataclasses
import difflib
import hashlib
import itertools
import json
import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from snuc import evaluate as ev
from snuc.eval_tasks import TASKS, TaskOptions
from snuc.ir.errors import SnucError
from snuc.ir.limits import read_toml
from snuc.ir.target import (
    DEFAULT_TARGET,
    PARAMS,
    TargetSpec,
    resized_energy_mvm_pj,
    with_overrides,
)
from snuc.runtime.config import DETERMINISTIC_MODES, MODES, RunConfig, check_batch_size

PLACEMENTS = ("pack", "spread")
UNCALIBRATED = "none"
"""The ``calibrate`` axis value for the guaranteed converter ranges (no samples)."""

_TOP_KEYS = (
    "models", "tasks", "split", "data_dir", "data", "metric", "limit", "steps", "columns",
    "backend", "batch_size", "modes", "t_inference", "seeds", "coding_seeds",
    "drift_compensation", "placement", "duplicate", "calibrate", "chips", "targets", "output",
)  # fmt: skip
_OUTPUT_KEYS = ("jsonl", "csv", "markdown", "parquet", "pareto", "cache")
_TARGET_TABLE_KEYS = ("base", *PARAMS)


@dataclass(frozen=True)
class Build:
    """One compiled artefact of the study: a model for a target with a mapping.

    Attributes:
        model: the model's path (ONNX or a ``.snuc`` artefact).
        target: the target it is compiled for (None: an artefact's own).
        placement: ``pack`` or ``spread`` (``snuc compile --placement``).
        duplicate: copies of busy crossbars (``snuc compile --duplicate``).
        columns: the row columns it fills: ``target`` and each target axis's value.
        calibrate: the calibration samples' ``.npy`` file (``snuc compile --calibrate``),
            None for the guaranteed converter ranges.
    """

    model: str
    target: TargetSpec | None
    placement: str
    duplicate: int
    columns: tuple[tuple[str, Any], ...]
    calibrate: str | None = None

    def key(self) -> str:
        """The content hash naming its artefact in the cache: the model's bytes, the
        target, the mapping, the calibration samples' bytes and the compiler's source (so
        any change recompiles)."""
        identity = {
            "model": _path_digest(Path(self.model)),
            "target": None if self.target is None else self.target.to_dict(),
            "placement": self.placement,
            "duplicate": self.duplicate,
            "compiler": compiler_digest(),
        }
        if self.calibrate is not None:  # left out when uncalibrated: older keys still hold
            identity["calibrate"] = _path_digest(Path(self.calibrate))
        return _digest(identity)


@dataclass(frozen=True)
class Configuration:
    """One grid point: a build scored on a task in one run configuration.

    Attributes:
        index: its place in the grid (rows are reported in this order).
        build: the index of its :class:`Build` in :attr:`Study.builds`.
        task: the task's name.
        options: the task options (batch size, limit, steps, columns, coding seed).
        run: the run configuration (mode, chip, age, compensation).
        coding_seed: the input coding's seed (mnist), None for uncoded tasks.
    """

    index: int
    build: int
    task: str
    options: TaskOptions
    run: RunConfig
    coding_seed: int | None


@dataclass
class Study:
    """A checked spec: what to compute, where to write it, and its grid.

    Attributes:
        tasks: task names; ``data`` and ``metric`` configure ``custom``.
        split, data_dir, backend: as ``snuc eval``'s options.
        target_axes: the target keys swept (their values become row columns).
        calibrated: whether the spec names the ``calibrate`` axis (rows get its column).
        outputs: result files by kind (``jsonl``, ``csv``, ``markdown``, ``parquet``,
            ``pareto``) and the artefact ``cache`` directory.
        builds: every artefact to compile, each once.
        configurations: the grid, in report order.
        source: where the spec came from, for messages.
    """

    tasks: tuple[str, ...]
    split: str
    data_dir: str | None
    data: str | None
    metric: str | None
    backend: str
    target_axes: tuple[str, ...]
    outputs: dict[str, str]
    calibrated: bool = False
    builds: list[Build] = field(default_factory=list)
    configurations: list[Configuration] = field(default_factory=list)
    source: str = "the command line"


# --------------------------------------------------------------------------- reading


def read_spec(path: str | os.PathLike[str]) -> dict[str, Any]:
    """The TOML table of a study spec file, with relative paths made absolute.

    Raises:
        SnucError: a missing or unreadable file, invalid TOML; one line.
    """
    path = Path(path)
    table = read_toml(path, f"study spec {path}")
    return _absolute_paths(table, path.parent)


def _absolute_paths(table: dict[str, Any], base: Path) -> dict[str, Any]:
    """Paths in the spec are relative to its directory."""

    def fix(value: Any) -> Any:
        if isinstance(value, str):
            return str(base / value)
        if isinstance(value, list):
            return [fix(v) for v in value]
        return value

    table = dict(table)
    for key in ("models", "data_dir", "data"):
        if key in table:
            table[key] = fix(table[key])
    if "calibrate" in table:  # "none" is the uncalibrated value, not a file
        items = table["calibrate"] if isinstance(table["calibrate"], list) else [table["calibrate"]]
        table["calibrate"] = [c if c == UNCALIBRATED else fix(c) for c in items]
    if isinstance(table.get("output"), dict):
        table["output"] = {k: fix(v) for k, v in table["output"].items()}
    targets = table.get("targets")
    if isinstance(targets, dict) and "base" in targets:
        bases = targets["base"] if isinstance(targets["base"], list) else [targets["base"]]
        targets = {**targets, "base": [fix(b) if str(b).endswith(".toml") else b for b in bases]}
        table["targets"] = targets
    return table


def load_study(
    spec: str | os.PathLike[str] | None, overrides: Mapping[str, Any] | None = None
) -> Study:
    """The study a spec file describes, with ``overrides`` (``snuc eval``'s options,
    already in spec form) replacing its keys; without a file, the options alone.

    Raises:
        SnucError: anything wrong with the spec, its files or its values; one line.
    """
    table = read_spec(spec) if spec is not None else {}
    for key, value in (overrides or {}).items():
        if key in ("targets", "output") and isinstance(table.get(key), dict):
            table[key] = {**table[key], **value}
        else:
            table[key] = value
    where = str(spec) if spec is not None else "the command line"
    try:
        return parse_study(table, where)
    except SnucError as exc:
        raise SnucError(f"{where}: {exc}" if spec is not None else str(exc)) from None


# --------------------------------------------------------------------------- checking


def parse_study(table: Mapping[str, Any], source: str = "the command line") -> Study:
    """Check a spec table and expand its grid.

    Raises:
        SnucError: an unknown key, a wrong value, an empty axis, a missing file.
    """
    _check_keys(table, _TOP_KEYS, "key")
    models = [_existing(m, "model") for m in _axis(table, "models", None, str)]
    tasks = tuple(_axis(table, "tasks", None, str))
    ev.no_duplicates(tasks, "task")
    data = table.get("data")
    metric = table.get("metric")
    for task in tasks:
        ev.resolve_task(task, data, metric)  # a bad task, data or metric: one line now
    split = _scalar(table, "split", "test", str)
    for task in tasks:
        if task in TASKS:
            ev.check_split(TASKS[task], split)
    backend = _scalar(table, "backend", "numpy", str)
    if backend not in ("numpy", "sim"):
        raise SnucError(f"unknown backend {backend!r}; expected numpy or sim")
    modes = ev.checked_modes(_axis(table, "modes", list(MODES), str))
    pcm = "pcm" in modes
    times = (
        ev.checked_times(
            [
                ev.parse_time(t, "t_inference item")
                for t in _axis(
                    table, "t_inference", list(ev.DEFAULT_T_INFERENCE_S), (str, int, float)
                )
            ]
        )
        if pcm
        else ()
    )
    seeds = ev.checked_seeds(_axis(table, "seeds", list(ev.DEFAULT_SEEDS), int)) if pcm else ()
    compensations = (
        ev.checked_compensations(_axis(table, "drift_compensation", ["on", "off"], (str, bool)))
        if pcm
        else ()
    )
    codings = ev.checked_seeds(_axis(table, "coding_seeds", [0], int), "coding seed")
    batch_sizes = (
        [int(check_batch_size(b)) for b in _axis(table, "batch_size", [None], int)]
        if "batch_size" in table
        else [None]
    )
    ev.no_duplicates(batch_sizes, "batch_size")
    placements = _axis(table, "placement", ["pack"], str)
    for placement in placements:
        if placement not in PLACEMENTS:
            raise SnucError(f"placement {placement!r} is not one of {', '.join(PLACEMENTS)}")
    ev.no_duplicates(placements, "placement")
    duplicates = [ev.positive(d, "duplicate") for d in _axis(table, "duplicate", [1], int)]
    ev.no_duplicates(duplicates, "duplicate")
    calibrations = _calibrations(table)
    options = TaskOptions(
        batch_size=None,
        limit=_optional_int(table, "limit"),
        steps=_optional_int(table, "steps") or ev.MNIST_STEPS,
        columns=_optional_int(table, "columns") or ev.PTB_COLUMNS,
        coding_seed=0,
    )
    outputs = _outputs(table.get("output", {}))
    target_table = table.get("targets", {})
    if not isinstance(target_table, dict):
        raise SnucError("'targets' must be a table: base = [...] and target keys as axes")
    _check_keys(target_table, _TARGET_TABLE_KEYS, "target key")
    chips = _optional_int(table, "chips")
    targets, axes = _targets(target_table, chips)
    study = Study(
        tasks=tasks,
        split=split,
        data_dir=table.get("data_dir"),
        data=data,
        metric=metric,
        backend=backend,
        target_axes=tuple(axes),
        outputs=outputs,
        calibrated="calibrate" in table,
        source=source,
    )
    study.builds = _builds(models, targets, placements, duplicates, calibrations, chips)
    configs = ev.sweep_configs(modes, seeds, times, compensations)
    for build, task, batch_size in itertools.product(range(len(study.builds)), tasks, batch_sizes):
        coded = TASKS[task].coded if task in TASKS else False
        for coding in codings if coded else (None,):
            if not coded and codings != (0,):
                raise SnucError(
                    f"coding seeds apply to tasks with coded inputs (mnist); {task}'s inputs "
                    "are its data"
                )
            task_options = dataclasses.replace(
                options, batch_size=batch_size, coding_seed=coding or 0
            )
            for run in configs:
                index = len(study.configurations)
                study.configurations.append(
                    Configuration(index, build, task, task_options, run, coding)
                )
    return study


def configuration_id(study: Study, config: Configuration, build_key: str) -> str:
    """The content hash of what a configuration computes: its row's key in the results
    file, the same whatever the order, executor or worker that runs it."""
    run = config.run
    identity = {
        "build": build_key,
        "task": config.task,
        "split": study.split,
        "data": _path_digest(Path(study.data)) if config.task == "custom" else None,
        "metric": study.metric if config.task == "custom" else None,
        "backend": study.backend,
        "options": dataclasses.asdict(config.options),
        "mode": run.mode,
        "chip": None
        if run.mode in DETERMINISTIC_MODES
        else [run.seed, run.t_inference_s, run.drift_compensation],
    }
    return _digest(identity)


def _check_keys(table: Mapping[str, Any], known: Sequence[str], what: str) -> None:
    for key in table:
        if key not in known:
            close = difflib.get_close_matches(key, list(known), n=1)
            hint = f"; did you mean {close[0]!r}?" if close else f"; expected {', '.join(known)}"
            raise SnucError(f"unknown {what} {key!r}{hint}")


def _type_name(types: type | tuple[type, ...]) -> str:
    types = types if isinstance(types, tuple) else (types,)
    names = {str: "a string", int: "an integer", float: "a number", bool: "true or false"}
    return " or ".join(names[t] for t in types)


def _typed(value: Any, types: type | tuple[type, ...], what: str) -> Any:
    allowed = types if isinstance(types, tuple) else (types,)
    if isinstance(value, bool) and bool not in allowed:
        raise SnucError(f"{what} = {value!r} must be {_type_name(types)}")
    if not isinstance(value, allowed):
        raise SnucError(f"{what} = {value!r} must be {_type_name(types)}")
    return value


def _axis(table: Mapping[str, Any], key: str, default: list[Any] | None, types: Any) -> list[Any]:
    """An axis: a value or a non-empty list of values of ``types``."""
    if key not in table:
        if default is None:
            raise SnucError(f"the study names no {key}; give at least one")
        return default
    value = table[key]
    items = value if isinstance(value, list) else [value]
    if not items:
        raise SnucError(f"{key} is an empty list; give at least one value")
    return [_typed(item, types, f"{key} item") for item in items]


def _scalar(table: Mapping[str, Any], key: str, default: Any, types: Any) -> Any:
    return _typed(table[key], types, key) if key in table else default


def _optional_int(table: Mapping[str, Any], key: str) -> int | None:
    value = table.get(key)
    return None if value is None else ev.positive(value, key)


def _existing(path: str, what: str) -> str:
    if not Path(path).exists():
        raise SnucError(f"{what} {path} does not exist")
    return path


def _calibrations(table: Mapping[str, Any]) -> list[str | None]:
    """The ``calibrate`` axis: None for ``"none"``, else a calibration file, each read
    now so that a missing or malformed one stops the study before any work."""
    from snuc.driver import load_calibration

    values = _axis(table, "calibrate", [UNCALIBRATED], str)
    ev.no_duplicates(values, "calibrate")
    for value in values:
        if value != UNCALIBRATED:
            load_calibration(value)
    return [None if v == UNCALIBRATED else v for v in values]


def _outputs(table: Any) -> dict[str, str]:
    if not isinstance(table, dict):
        raise SnucError("'output' must be a table of paths: jsonl, csv, markdown, parquet, ...")
    _check_keys(table, _OUTPUT_KEYS, "output key")
    outputs = {k: _typed(v, str, f"output {k}") for k, v in table.items() if v is not None}
    files = {k: v for k, v in outputs.items() if k != "cache"}
    for path in files.values():
        ev.check_output_path(path)
    resolved = [str(Path(p).resolve()) for p in files.values()]
    if len(set(resolved)) != len(resolved):
        raise SnucError(f"two outputs name {ev.first_duplicate(resolved)}; give each its own file")
    return outputs


def _targets(
    table: Mapping[str, Any], chips: int | None
) -> tuple[list[tuple[TargetSpec, tuple]] | None, list[str]]:
    """Each base target with each combination of the target axes, and the axes' keys;
    None when the spec names no target (an ONNX model gets the default, an artefact its
    own)."""
    from snuc.driver import resolve_target

    axes = {k: _axis(table, k, None, _axis_types(k)) for k in table if k != "base"}
    for key, values in axes.items():
        ev.no_duplicates(values, key)
    if not table:
        return None, []
    bases = _axis(table, "base", [DEFAULT_TARGET], str)
    ev.no_duplicates(bases, "target")
    targets = []
    for base in bases:
        spec = resolve_target(base, chips)
        for combo in itertools.product(*axes.values()):
            overrides = dict(zip(axes, combo, strict=True))
            target = with_overrides(spec, **overrides)
            if {"rows", "cols"} & set(overrides) and "energy_mvm_pj" not in overrides:
                energy = resized_energy_mvm_pj(spec, target.rows, target.cols)
                target = with_overrides(target, energy_mvm_pj=energy)
            if spec.name.startswith("pcm-") and {"rows", "cols"} & set(overrides):
                target = with_overrides(target, name=f"pcm-{target.rows}x{target.cols}")
            targets.append((target, (("target", target.name), *overrides.items())))
    seen = [json.dumps(t.to_dict(), sort_keys=True) for t, _ in targets]
    if len(set(seen)) != len(seen):
        twice = targets[seen.index(ev.first_duplicate(seen))][0]
        raise SnucError(f"target {twice.name} ({twice.to_dict()}) is listed twice; list each once")
    return targets, list(axes)


def _axis_types(key: str) -> tuple[type, ...]:
    """What a target axis's values may be: strings for a mapping choice (``weight_scaling``,
    ``adc_rule``), numbers for every other key."""
    return (str,) if PARAMS[key].kind is str else (int, float)


def _builds(
    models: Sequence[str],
    targets: list[tuple[TargetSpec, tuple]] | None,
    placements: Sequence[str],
    duplicates: Sequence[int],
    calibrations: Sequence[str | None],
    chips: int | None,
) -> list[Build]:
    builds = []
    for model in models:
        if ev.is_artefact_path(model):
            if list(placements) != ["pack"] or list(duplicates) != [1] or calibrations != [None]:
                raise SnucError(
                    f"placement, duplicate and calibrate are compile options; {model} is "
                    "compiled already: evaluate the ONNX model to sweep them"
                )
            wanted = None if targets is None else [t for t, _ in targets]
            name = ev.artefact_getters(model, wanted, chips)[0][0]
            builds.append(Build(model, None, "pack", 1, (("target", name),)))
            continue
        if not Path(model).is_file():
            raise SnucError(f"model {model} is not a file (an ONNX model or a .snuc artefact)")
        from snuc.driver import resolve_target

        chosen = targets or [(resolve_target(DEFAULT_TARGET, chips), (("target", DEFAULT_TARGET),))]
        for (target, columns), placement, duplicate, calibrate in itertools.product(
            chosen, placements, duplicates, calibrations
        ):
            builds.append(Build(model, target, placement, duplicate, columns, calibrate))
    return builds


def _digest(identity: Any) -> str:
    text = json.dumps(identity, sort_keys=True, separators=(",", ":"))
    return hashlib.sha256(text.encode("utf-8")).hexdigest()[:32]


CALIBRATION_DIGITS = 8
"""Hex digits of a calibration file's digest in the ``calibrate`` column."""


def calibration_label(calibrate: str | None) -> str:
    """A build's ``calibrate`` column: ``none``, or the file's name and the first
    :data:`CALIBRATION_DIGITS` hex digits of the sha256 of its bytes (the digest its cache
    key holds), e.g. ``jsb_cal.npy@1a2b3c4d``: same-named files in other folders, or a file
    rewritten between studies, are told apart."""
    if calibrate is None:
        return UNCALIBRATED
    path = Path(calibrate)
    return f"{path.name}@{_path_digest(path)[:CALIBRATION_DIGITS]}"


_PATH_DIGESTS: dict[tuple[str, float, int], str] = {}


def _path_digest(path: Path) -> str:
    """sha256 of a file's bytes, or of a directory's files (names and bytes), memoised
    per path, modification time and size."""
    stat = path.stat()
    memo = (str(path.resolve()), stat.st_mtime, stat.st_size)
    if memo not in _PATH_DIGESTS:
        digest = hashlib.sha256()
        files = sorted(p for p in path.rglob("*") if p.is_file()) if path.is_dir() else [path]
        for file in files:
            digest.update(str(file.relative_to(path) if path.is_dir() else "").encode())
            digest.update(file.read_bytes())
        _PATH_DIGESTS[memo] = digest.hexdigest()
    return _PATH_DIGESTS[memo]


_COMPILER: list[str] = []


def compiler_digest() -> str:
    """sha256 of snuc's own source (every module and grammar of the compiler and the
    runtime): an artefact cached by another version of the code is never reused."""
    if not _COMPILER:
        import snuc
        from snuc import backends, frontend, ir, passes, runtime

        digest = hashlib.sha256(snuc.__version__.encode())
        for package in (ir, frontend, passes, backends, runtime):
            root = Path(package.__file__).parent
            for file in sorted([*root.glob("*.py"), *root.glob("*.lark")]):
                digest.update(file.name.encode())
                digest.update(file.read_bytes())
        digest.update(Path(snuc.__file__).with_name("driver.py").read_bytes())
        _COMPILER.append(digest.hexdigest())
    return _COMPILER[0]
