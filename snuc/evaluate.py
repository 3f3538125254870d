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

Tasks and metrics (the data come from :mod:`snuc.datasets`):

* **jsb** -- mean negative log-likelihood per predicted frame (SPEC §11): chorales are
  zero-padded at the end to the longest of their chunk (outputs are causal, so padding
  changes nothing inside a chorale's length), the output at step t predicts frame t + 1,
  and :func:`~snuc.datasets.jsb_nll_sum` is pooled over the split. Lower is better.
* **mnist** -- accuracy in %: every image is Bernoulli rate-coded over ``steps`` steps
  (:func:`~snuc.datasets.iter_scoring_spikes`, the coding the training script scores
  with) with a generator seeded by ``coding_seed`` alone, image after image, so the
  spikes are the same for every chip, mode and batch size, and ``limit`` keeps a prefix
  of them; the class is the argmax of the outputs summed over time.
* **ptb** -- perplexity, ``exp`` of the mean NLL over every predicted token. The split's
  token stream is cut into ``columns`` contiguous columns (:func:`~snuc.datasets.batchify`)
  and **each column runs whole, as one sequence from the zero state**: a compiled model's
  state starts at zero on every run and cannot be carried from one run to the next, and
  because outputs are causal, one long run gives exactly what running windows of any
  length (BPTT) with the state carried between them gives -- so there is no window
  option. The output at step t (log-probabilities, a log-softmax readout) is scored
  against the token at t + 1. Any vocabulary size works, as long as the model's output
  covers every token id of the text.

Chunks: each configuration runs the data in chunks of ``batch_size`` sequences (chorales,
images or columns), each chunk one ``Artefact.run``, scored as it comes back, so memory
stays bounded. In ``pcm`` mode the read noise of a run is drawn from streams keyed by
(seed, tile) (SPEC §6) and, for every chunk but the first, by the chunk's first sequence
(``batch_offset``), so chunks do not repeat each other's noise; results still depend on
``batch_size`` (it decides which numbers each sequence draws): keep it fixed across a
study. The default (:data:`CHUNK_BYTES`) runs each of the paper's test splits whole; a
smaller ``batch_size`` uses less memory.

Results: :func:`evaluate` returns one row per run; :func:`aggregate` gives mean ± sample
standard deviation over seeds; :func:`format_results`, :func:`to_csv` and
:func:`to_markdown` render them, and :func:`write_text_atomic` writes files by temporary
name and rename.
"""

from __future__ import annotations

import contextlib
import csv
import dataclasses
import io
import math
import os
import re
import secrets
import sys
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from snuc.datasets import (
    MNIST_CODING_BLOCK,
    MNIST_STEPS,
    iter_scoring_spikes,
    jsb_nll_sum,
    lm_nll_sum,
    load_jsb,
    load_mnist,
    load_ptb,
    pad_sequences,
    predictions_from_counts,
)
from snuc.ir.errors import SnucError
from snuc.ir.target import DEFAULT_TARGET, TargetSpec
from snuc.ir.types import BATCH
from snuc.reporting import format_table
from snuc.runtime.artefact import BACKENDS, TIME, Artefact
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
    "parse_times",
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
CHUNK_BYTES = 4 << 30
"""Default chunk size: as many sequences as keep a chunk's inputs and outputs (as float32)
under this many bytes, at least one. Large enough to run each of the paper's test splits
in one run (PTB's, 10 columns of a 10,000-word vocabulary, takes 3.3 GB of
log-probabilities): fewer, larger runs are much faster, and in pcm mode every sequence
then gets its own read noise."""

_YEAR_S = 365 * 86400.0
_TIME_UNITS_S = {
    "s": 1.0,
    "min": 60.0,
    "h": 3600.0,
    "d": 86400.0,
    "day": 86400.0,
    "days": 86400.0,
    "y": _YEAR_S,
    "year": _YEAR_S,
    "years": _YEAR_S,
}
_TIME_RE = re.compile(r"(?P<number>[-+]?(?:\d+\.?\d*|\.\d+)(?:[eE][-+]?\d+)?)\s*(?P<unit>[a-z]*)")
_COMPENSATION_NAMES: dict[str, str | None] = {
    "on": "global",
    "global": "global",
    "column": "column",
    "off": None,
}

RUN_FIELDS = (
    "task",
    "split",
    "model",
    "target",
    "backend",
    "mode",
    "t_inference_s",
    "drift_compensation",
    "seed",
    "metric",
    "value",
    "count",
    "energy_nj_per_step",
    "timestep_ns",
)
"""Keys of a row of :func:`evaluate`: one run. ``t_inference_s``, ``drift_compensation``
and ``seed`` are None in the deterministic modes; ``drift_compensation`` is ``"global"``,
``"column"`` or ``"off"`` in pcm mode; ``count`` is how many frames, images or tokens were
scored. ``backend`` is ``numpy`` or ``sim``; with ``sim``, ``energy_nj_per_step`` is the
simulated chip's energy per sequence per timestep over the whole split (padding steps
included) and ``timestep_ns`` its measured time per timestep; None with ``numpy``."""

AGGREGATE_FIELDS = (
    "task",
    "split",
    "model",
    "target",
    "backend",
    "mode",
    "t_inference_s",
    "drift_compensation",
    "metric",
    "mean",
    "std",
    "n_seeds",
    "count",
    "energy_nj_per_step",
    "timestep_ns",
)
"""Keys of a row of :func:`aggregate`: one configuration over its seeds. ``std`` is the
sample standard deviation (ddof 1), None with fewer than two seeds; the energy and time
per step are means over the seeds (None with the ``numpy`` backend)."""

CSV_FIELDS = (
    "kind",
    "task",
    "split",
    "model",
    "target",
    "backend",
    "mode",
    "t_inference_s",
    "t_inference",
    "drift_compensation",
    "seed",
    "metric",
    "value",
    "std",
    "n_seeds",
    "count",
    "energy_nj_per_step",
    "timestep_ns",
)
"""Columns of :func:`to_csv`: ``kind`` is ``run`` (one row per seed, ``value`` the
metric) or ``mean`` (one row per configuration, ``value`` the mean over seeds)."""


# --------------------------------------------------------------------------- tasks


@dataclass(frozen=True)
class _Piece:
    """One chunk of a task's data: what one ``Artefact.run`` gets and what scores it.

    Attributes:
        x: the run's input ``[T, b, ...]`` (MNIST: boolean spikes, fed as float32).
        truth: what the outputs are scored against (task-specific).
    """

    x: np.ndarray
    truth: Any


@dataclass(frozen=True)
class _Options:
    """The task options of one :func:`evaluate` call."""

    batch_size: int | None
    limit: int | None
    steps: int
    columns: int
    coding_seed: int


@dataclass(frozen=True)
class Task:
    """One of the paper's tasks: its data, how a model's outputs are scored, its metric.

    Attributes:
        name: ``jsb``, ``mnist`` or ``ptb``.
        metric: the metric's name in result rows.
        label: the metric's column header, with its unit.
        digits: decimals shown in tables.
        splits: the splits its loader has.
        loader: ``loader(split, data_dir)``, the task's :mod:`snuc.datasets` loader.
        check: ``check(artefact)`` raises SnucError when the model does not fit the task.
        prepare: ``prepare(data, artefact, options)`` cuts the data into chunks.
        feed: ``feed(piece, artefact)`` the array to run.
        score: ``score(outputs, piece)`` the ``(sum, count)`` to pool over chunks.
        finish: ``finish(sum, count)`` the metric.
    """

    name: str
    metric: str
    label: str
    digits: int
    splits: tuple[str, ...]
    loader: Callable[[str, Any], Any]
    check: Callable[[Artefact], None]
    prepare: Callable[[Any, Artefact, _Options], list[_Piece]]
    feed: Callable[[_Piece, Artefact], np.ndarray]
    score: Callable[[np.ndarray, _Piece], tuple[float, int]]
    finish: Callable[[float, int], float]


def _single_io(art: Artefact, task: str) -> tuple[dict[str, Any], dict[str, Any]]:
    """The model's one input and one output spec."""
    if len(art.inputs) != 1 or len(art.outputs) != 1:
        raise SnucError(
            f"the {task} task needs a model with one input and one output; "
            f"{art.source or 'the model'} has {len(art.inputs)} inputs and "
            f"{len(art.outputs)} outputs"
        )
    return art.inputs[0], art.outputs[0]


def _features(spec: dict[str, Any], what: str, task: str) -> list[int]:
    """The per-step feature dimensions of a ``[T, B, ...]`` spec."""
    shape = spec["shape"]
    if shape[:2] != [TIME, BATCH]:
        raise SnucError(
            f"the {task} task needs a batched sequence {what} [T, B, ...]; "
            f"{what} {spec['name']!r} is {_shape_text(shape)}"
        )
    return shape[2:]


def _shape_text(shape: Sequence[Any]) -> str:
    return "[" + ", ".join(str(d) for d in shape) + "]"


def _auto_batch(options: _Options, steps: int, elements_per_step: int, size: int) -> int:
    """``options.batch_size``, or as many sequences as keep a chunk near CHUNK_BYTES."""
    if options.batch_size is not None:
        return options.batch_size
    per_sequence = 4 * max(1, steps) * elements_per_step
    return max(1, min(size, CHUNK_BYTES // per_sequence))


def _limited(count: int, options: _Options) -> int:
    return count if options.limit is None else min(count, options.limit)


# JSB chorales ------------------------------------------------------------------------


def _check_jsb(art: Artefact) -> None:
    x_spec, y_spec = _single_io(art, "jsb")
    x_features, y_features = _features(x_spec, "input", "jsb"), _features(y_spec, "output", "jsb")
    if x_features != [88] or x_spec["dtype"] != "float32" or y_features != [88]:
        raise SnucError(
            f"the jsb task feeds float32 piano rolls [T, B, 88] and scores note "
            f"probabilities [T, B, 88]; the model maps {x_spec['dtype']} "
            f"{_shape_text(x_spec['shape'])} to {_shape_text(y_spec['shape'])}"
        )


def _prepare_jsb(rolls: list[np.ndarray], art: Artefact, options: _Options) -> list[_Piece]:
    rolls = list(rolls)[: _limited(len(rolls), options)]
    if not rolls:
        raise SnucError("the jsb split has no chorale to score")
    longest = max(len(r) for r in rolls)
    chunk = _auto_batch(options, longest, 2 * 88, len(rolls))
    pieces = []
    for lo in range(0, len(rolls), chunk):
        x, lengths = pad_sequences(rolls[lo : lo + chunk])
        pieces.append(_Piece(x, lengths))
    return pieces


def _score_jsb(probs: np.ndarray, piece: _Piece) -> tuple[float, int]:
    return jsb_nll_sum(probs, piece.x, piece.truth)


def _finish_jsb(total: float, count: int) -> float:
    if count == 0:
        raise SnucError("nothing to score: every chorale is a single step long")
    return total / count


# MNIST -------------------------------------------------------------------------------

_MNIST_PIXELS = 28 * 28
_MNIST_CLASSES = 10


def _check_mnist(art: Artefact) -> None:
    x_spec, y_spec = _single_io(art, "mnist")
    x_features, y_features = (
        _features(x_spec, "input", "mnist"),
        _features(y_spec, "output", "mnist"),
    )
    if (
        math.prod(x_features) != _MNIST_PIXELS
        or x_spec["dtype"] != "float32"
        or y_features != [_MNIST_CLASSES]
    ):
        raise SnucError(
            f"the mnist task feeds float32 spikes [T, B, 784] (or [T, B, 1, 28, 28]) and "
            f"reads 10 class outputs [T, B, 10]; the model maps {x_spec['dtype']} "
            f"{_shape_text(x_spec['shape'])} to {_shape_text(y_spec['shape'])}"
        )


def _prepare_mnist(
    data: tuple[np.ndarray, np.ndarray], art: Artefact, options: _Options
) -> list[_Piece]:
    images, labels = data
    count = _limited(len(images), options)
    if count == 0:
        raise SnucError("the mnist split has no image to score")
    # Kept as booleans (a quarter of float32) and fed as float32 one chunk at a time.
    spikes = np.empty((options.steps, count, _MNIST_PIXELS), dtype=bool)
    blocks = iter_scoring_spikes(images[:count], labels[:count], options.steps, options.coding_seed)
    for lo, (block, _) in zip(range(0, count, MNIST_CODING_BLOCK), blocks, strict=True):
        spikes[:, lo : lo + block.shape[1]] = block.reshape(options.steps, block.shape[1], -1)
    labels = np.asarray(labels[:count])
    chunk = _auto_batch(options, options.steps, _MNIST_PIXELS + _MNIST_CLASSES, count)
    return [
        _Piece(spikes[:, lo : lo + chunk], labels[lo : lo + chunk]) for lo in range(0, count, chunk)
    ]


def _feed_mnist(piece: _Piece, art: Artefact) -> np.ndarray:
    features = art.inputs[0]["shape"][2:]
    steps, batch = piece.x.shape[:2]
    return piece.x.astype(np.float32).reshape(steps, batch, *features)


def _score_mnist(outputs: np.ndarray, piece: _Piece) -> tuple[float, int]:
    hits = int(np.sum(predictions_from_counts(outputs) == piece.truth))
    return float(hits), len(piece.truth)


def _finish_accuracy(hits: float, count: int) -> float:
    return 100.0 * hits / count


# Penn Treebank -----------------------------------------------------------------------


def _check_ptb(art: Artefact) -> None:
    x_spec, y_spec = _single_io(art, "ptb")
    y_features = _features(y_spec, "output", "ptb")
    if (
        x_spec["shape"] != [TIME, BATCH]
        or not np.issubdtype(np.dtype(x_spec["dtype"]), np.integer)
        or len(y_features) != 1
    ):
        raise SnucError(
            f"the ptb task feeds token ids [T, B] (integers) and scores log-probabilities "
            f"[T, B, V]; the model maps {x_spec['dtype']} {_shape_text(x_spec['shape'])} "
            f"to {_shape_text(y_spec['shape'])}"
        )


def _prepare_ptb(ids: np.ndarray, art: Artefact, options: _Options) -> list[_Piece]:
    ids = np.asarray(ids)
    if ids.ndim != 1 or not np.issubdtype(ids.dtype, np.integer):
        raise SnucError(
            f"the ptb loader must give a 1-D stream of token ids, got {ids.dtype} {ids.shape}"
        )
    ids = ids[: _limited(len(ids), options)]
    vocab = art.outputs[0]["shape"][2]
    if ids.size and (ids.min() < 0 or ids.max() >= vocab):
        raise SnucError(
            f"the text has token ids in {ids.min()}..{ids.max()}, but the model's output "
            f"covers a vocabulary of {vocab}; evaluate a model trained on this vocabulary"
        )
    steps = len(ids) // options.columns
    if steps < 2:
        raise SnucError(
            f"{len(ids)} tokens in {options.columns} columns leave {steps} step(s) per "
            "column; at least 2 are needed to predict a token (lower columns or raise limit)"
        )
    # Column b holds tokens b*steps .. (b+1)*steps - 1 (as snuc.datasets.batchify).
    data = ids[: steps * options.columns].reshape(options.columns, steps).T.astype(np.int64)
    chunk = _auto_batch(options, steps, 2 + vocab, options.columns)
    return [_Piece(data[:, lo : lo + chunk], None) for lo in range(0, options.columns, chunk)]


def _score_ptb(log_probs: np.ndarray, piece: _Piece) -> tuple[float, int]:
    if log_probs.size and float(np.max(log_probs)) > 1e-4:
        raise SnucError(
            f"the ptb task scores log-probabilities (a log_softmax readout), but the model "
            f"output reaches {float(np.max(log_probs)):.4g} > 0"
        )
    return lm_nll_sum(log_probs[:-1], piece.x[1:])


def _finish_perplexity(total: float, count: int) -> float:
    return math.exp(total / count)


def _identity_feed(piece: _Piece, art: Artefact) -> np.ndarray:
    return piece.x


TASKS: dict[str, Task] = {
    "jsb": Task(
        name="jsb",
        metric="nll",
        label="NLL (nats/frame)",
        digits=3,
        splits=("test", "valid", "train"),
        loader=load_jsb,
        check=_check_jsb,
        prepare=_prepare_jsb,
        feed=_identity_feed,
        score=_score_jsb,
        finish=_finish_jsb,
    ),
    "mnist": Task(
        name="mnist",
        metric="accuracy",
        label="accuracy (%)",
        digits=2,
        splits=("test", "train"),
        loader=load_mnist,
        check=_check_mnist,
        prepare=_prepare_mnist,
        feed=_feed_mnist,
        score=_score_mnist,
        finish=_finish_accuracy,
    ),
    "ptb": Task(
        name="ptb",
        metric="perplexity",
        label="perplexity",
        digits=2,
        splits=("test", "valid", "train"),
        loader=load_ptb,
        check=_check_ptb,
        prepare=_prepare_ptb,
        feed=_identity_feed,
        score=_score_ptb,
        finish=_finish_perplexity,
    ),
}
"""The paper's tasks by name (SPEC §11)."""


# --------------------------------------------------------------------------- the sweep


def _configs(
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


def _chip_fields(config: RunConfig) -> dict[str, Any]:
    """The row fields of a configuration's chip: None in the deterministic modes."""
    if config.mode in DETERMINISTIC_MODES:
        return {"t_inference_s": None, "drift_compensation": None, "seed": None}
    return {
        "t_inference_s": config.t_inference_s,
        "drift_compensation": _compensation_text(config.drift_compensation),
        "seed": config.seed,
    }


def _describe(config: RunConfig) -> str:
    """A configuration in a progress line."""
    if config.mode in DETERMINISTIC_MODES:
        return config.mode
    return (
        f"pcm t={format_duration(config.t_inference_s)} "
        f"compensation={_compensation_text(config.drift_compensation)} seed={config.seed}"
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
    coding_seed: int = 0,
    backend: str = "numpy",
    loader: Callable[[str, Any], Any] | None = None,
    progress: bool = False,
) -> list[dict[str, Any]]:
    """Score a model on one of the paper's tasks for every configuration of a sweep.

    Every sweep axis takes a list, or a single value for a list of one.

    Example::

        rows = evaluate("jsb_snu.onnx", "jsb", t_inference_s=[3600, 86400], seeds=[0, 1, 2])
        print(format_results(rows))

    Args:
        model: an ONNX file (compiled once per target), a ``.snuc`` artefact path (a
            directory, or a ``.snuc`` / ``.zip`` file), or an :class:`Artefact`.
        task: ``"jsb"``, ``"mnist"`` or ``"ptb"`` (see the module docstring for metrics).
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
            keep a chunk near :data:`CHUNK_BYTES`. pcm read noise depends on it.
        limit: score only the first ``limit`` chorales, images or tokens.
        steps: mnist only: time steps of the rate coding.
        columns: ptb only: columns the token stream is cut into.
        coding_seed: mnist only: seeds the rate coding (independent of the chip seed).
        backend: ``"numpy"`` or ``"sim"`` (the cycle-level simulator: the same outputs,
            and the rows get its energy and time per step).
        loader: replaces the task's loader, ``loader(split, data_dir)``, returning what
            :mod:`snuc.datasets` returns: JSB rolls, MNIST ``(images, labels)``, PTB ids.
        progress: report each configuration on stderr: a tqdm bar when stderr is a
            terminal (and tqdm is installed), otherwise one line per configuration.

    Returns:
        One row per run (keys :data:`RUN_FIELDS`), in run order: per target, the
        deterministic modes once each and pcm once per seed × time × compensation. Pass
        them to :func:`aggregate` for mean ± std over seeds.

    Raises:
        SnucError: a bad task, split, option or list; a model that does not fit the task
            or its targets; missing or corrupt data; any compile or run error. One line.
    """
    spec = _task(task)
    _check_split(spec, split)
    if backend not in BACKENDS:
        raise SnucError(f"unknown backend {backend!r}; expected one of {', '.join(BACKENDS)}")
    modes = _checked_modes(_as_list(modes))
    times = _checked_times(_as_list(t_inference_s)) if "pcm" in modes else ()
    seed_list = _checked_seeds(_as_list(seeds)) if "pcm" in modes else ()
    compensations = _checked_compensations(_as_list(drift_compensation)) if "pcm" in modes else ()
    options = _Options(
        batch_size=None if batch_size is None else int(check_batch_size(batch_size)),
        limit=_optional_positive(limit, "limit"),
        steps=_positive(steps, "steps"),
        columns=_positive(columns, "columns"),
        coding_seed=_non_negative(coding_seed, "coding_seed"),
    )
    artefacts = _artefacts(model, None if targets is None else _as_list(targets), chips)
    configs = _configs(modes, seed_list, times, compensations)
    data = (loader or spec.loader)(split, data_dir)

    rows: list[dict[str, Any]] = []
    total = len(artefacts) * len(configs)
    with _reporter(progress, total) as report:
        for target_name, get_artefact in artefacts:
            art = get_artefact()
            spec.check(art)
            pieces = spec.prepare(data, art, options)
            for config in configs:
                value, count, measured = _score(art, spec, pieces, config, backend)
                row = {
                    "task": spec.name,
                    "split": split,
                    "model": art.source or _model_name(model),
                    "target": target_name,
                    "backend": backend,
                    "mode": config.mode,
                    **_chip_fields(config),
                    "metric": spec.metric,
                    "value": value,
                    "count": count,
                    **measured,
                }
                rows.append(row)
                report(
                    f"{spec.name} {target_name} {_describe(config)}: "
                    f"{spec.metric} {value:.{spec.digits + 1}f}"
                )
    return rows


def _score(
    art: Artefact, task: Task, pieces: list[_Piece], config: RunConfig, backend: str = "numpy"
) -> tuple[float, int, dict[str, float | None]]:
    """One configuration's metric: every chunk run on the same plan, the scores pooled;
    and, on the simulator, its energy and time per step (the ``RUN_FIELDS`` they fill)."""
    total, count = 0.0, 0
    first = 0  # the piece's first sequence: keys its read noise apart from the others'
    energy_pj, steps, timestep_ns = 0.0, 0, None
    for piece in pieces:
        chunk = dataclasses.replace(config, batch_offset=first)
        outputs = art.run(task.feed(piece, art), chunk, backend=backend)
        first += piece.x.shape[1]
        if backend == "sim":
            stats = art.last_stats
            energy_pj += stats.energy_pj
            steps += stats.sequences * stats.timesteps
            timestep_ns = stats.cycles_per_timestep / stats.clock_ghz
        part, n = task.score(outputs, piece)
        total, count = total + part, count + n
    measured = {
        "energy_nj_per_step": energy_pj / steps / 1e3 if steps else None,
        "timestep_ns": timestep_ns,
    }
    return task.finish(total, count), count, measured


def _artefacts(
    model: str | os.PathLike[str] | Artefact,
    targets: Sequence[str | os.PathLike[str] | TargetSpec] | None,
    chips: int | None,
) -> list[tuple[str, Callable[[], Artefact]]]:
    """``(target name, artefact getter)`` per target; ONNX compiles when its turn comes."""
    from snuc.driver import compile_model, resolve_target

    if chips is not None:
        _positive(chips, "chips")
    if targets is not None and len(targets) == 0:
        raise SnucError("the list of targets is empty; name at least one, e.g. pcm-256x256")
    if isinstance(model, Artefact) or _is_artefact_path(model):
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
        raise SnucError(f"target {_first_duplicate(names)} is listed twice; list each once")
    return [(s.name, lambda s=s: compile_model(model, s)) for s in specs]


def _is_artefact_path(model: str | os.PathLike[str]) -> bool:
    path = Path(model)
    return path.is_dir() or path.suffix in (".snuc", ".zip")


def _model_name(model: str | os.PathLike[str] | Artefact) -> str:
    return "" if isinstance(model, Artefact) else Path(model).name


@contextlib.contextmanager
def _reporter(enabled: bool, total: int) -> Iterator[Callable[[str], None]]:
    """``report(line)`` after each configuration: a tqdm bar on a terminal, else lines."""
    if not enabled:
        yield lambda line: None
        return
    bar = None
    if sys.stderr.isatty():
        with contextlib.suppress(ImportError):
            from tqdm import tqdm

            bar = tqdm(total=total, file=sys.stderr, unit="config", desc="snuc eval")
    if bar is None:
        done = iter(range(1, total + 1))
        width = len(str(total))
        yield lambda line: print(
            f"snuc eval [{next(done):>{width}}/{total}] {line}", file=sys.stderr, flush=True
        )
        return
    with bar:

        def advance(line: str) -> None:
            bar.set_postfix_str(line, refresh=False)
            bar.update(1)

        yield advance


# --------------------------------------------------------------------------- validation


def _as_list(values: Any) -> list[Any]:
    """A sweep axis as a list; a single value (a string, a number, a target) is one item."""
    if isinstance(values, str | bytes | os.PathLike | TargetSpec | int | float | np.generic | None):
        return [values]
    return list(values)


def _task(name: str) -> Task:
    if name not in TASKS:
        raise SnucError(f"unknown task {name!r}; expected one of {', '.join(TASKS)}")
    return TASKS[name]


def _check_split(task: Task, split: str) -> None:
    if split not in task.splits:
        raise SnucError(
            f"the {task.name} task has no split {split!r}; expected one of {', '.join(task.splits)}"
        )


def _checked_modes(modes: Sequence[str]) -> tuple[str, ...]:
    modes = tuple(modes)
    if not modes:
        raise SnucError(f"the list of modes is empty; name some of {', '.join(MODES)}")
    for mode in modes:
        check_mode(mode)
    _no_duplicates(modes, "mode")
    return modes


def _checked_times(times: Sequence[float]) -> tuple[float, ...]:
    checked = [float(check_t_inference_s(t)) for t in times]
    if not checked:
        raise SnucError("the list of t_inference times is empty; give at least one")
    _no_duplicates(checked, "t_inference")
    return tuple(checked)


def _checked_seeds(seeds: Sequence[int]) -> tuple[int, ...]:
    checked = tuple(int(check_seed(s)) for s in seeds)
    if not checked:
        raise SnucError("the list of seeds is empty; give at least one")
    _no_duplicates(checked, "seed")
    return checked


def _checked_compensations(values: Sequence[bool | str | None]) -> tuple[str | None, ...]:
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
    _no_duplicates([_compensation_text(c) for c in checked], "drift compensation")
    return tuple(checked)


def _compensation_text(compensation: str | None) -> str:
    return "off" if compensation is None else compensation


def _no_duplicates(values: Sequence[Any], what: str) -> None:
    if len(set(values)) != len(values):
        raise SnucError(f"{what} {_first_duplicate(values)} is listed twice; list each once")


def _first_duplicate(values: Sequence[Any]) -> Any:
    seen = set()
    for value in values:
        if value in seen:
            return value
        seen.add(value)
    return None


def _positive(value: Any, what: str) -> int:
    if isinstance(value, bool) or not isinstance(value, int | np.integer) or value < 1:
        raise SnucError(f"{what} must be a positive integer, got {value!r}")
    return int(value)


def _optional_positive(value: Any, what: str) -> int | None:
    return None if value is None else _positive(value, what)


def _non_negative(value: Any, what: str) -> int:
    if isinstance(value, bool) or not isinstance(value, int | np.integer) or value < 0:
        raise SnucError(f"{what} must be a non-negative integer, got {value!r}")
    return int(value)


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
    return list(_checked_modes(_items(text, "--modes")))


def parse_times(text: str) -> list[float]:
    """``--t-inference``: seconds, or a number with a unit (s, min, h, d, y), e.g. ``"1,1h,1y"``.

    A year is 365 days (31,536,000 s).

    Raises:
        SnucError: an empty item, something that is not a time, a negative time, a time
            listed twice.
    """
    times = []
    for item in _items(text, "--t-inference"):
        match = _TIME_RE.fullmatch(item)
        if match is None or match["unit"] not in ("", *_TIME_UNITS_S):
            raise SnucError(
                f"--t-inference item {item!r} is not a time: expected seconds or a number "
                f"with a unit ({', '.join(_TIME_UNITS_S)}), e.g. 3600 or 1h"
            )
        times.append(float(match["number"]) * _TIME_UNITS_S.get(match["unit"], 1.0))
    return list(_checked_times(times))


def parse_seeds(text: str) -> list[int]:
    """``--seeds``: non-negative integers, e.g. ``"0,1,2,3,4"``.

    Raises:
        SnucError: an empty item, something that is not a non-negative integer, a repeat.
    """
    seeds = []
    for item in _items(text, "--seeds"):
        if not item.isdigit():
            raise SnucError(f"--seeds item {item!r} is not a non-negative integer")
        seeds.append(int(item))
    return list(_checked_seeds(seeds))


def parse_compensation(text: str) -> list[str | None]:
    """``--drift-compensation``: ``on`` (= ``global``), ``off``, ``column``, e.g. ``"on,off"``.

    Returns:
        ``"global"``, ``"column"`` or None (off) per item.

    Raises:
        SnucError: an empty item, an unknown value, a repeat.
    """
    return list(_checked_compensations(_items(text, "--drift-compensation")))


def parse_targets(text: str) -> list[str]:
    """``--targets``: target names or TOML files, e.g. ``"pcm-256x256,pcm-128x128"``.

    Raises:
        SnucError: an empty item.
    """
    return _items(text, "--targets")


# --------------------------------------------------------------------------- results


def aggregate(rows: Sequence[dict[str, Any]]) -> list[dict[str, Any]]:
    """Mean and sample standard deviation over seeds of each configuration.

    Args:
        rows: rows of :func:`evaluate`.

    Returns:
        One row per configuration (keys :data:`AGGREGATE_FIELDS`) in order of first
        appearance; ``std`` is None with fewer than two seeds; ``count`` is the first
        run's (every run of a configuration scores the same data).
    """
    groups: dict[tuple, list[dict[str, Any]]] = {}
    measured = ("energy_nj_per_step", "timestep_ns")
    keys = [
        k for k in AGGREGATE_FIELDS if k in RUN_FIELDS and k not in ("value", "count", *measured)
    ]
    for row in rows:
        groups.setdefault(tuple(row[k] for k in keys), []).append(row)
    result = []
    for group in groups.values():
        values = np.array([r["value"] for r in group], dtype=np.float64)
        result.append(
            {
                **{k: group[0][k] for k in keys},
                "mean": float(values.mean()),
                "std": float(values.std(ddof=1)) if len(values) > 1 else None,
                "n_seeds": len(values),
                "count": group[0]["count"],
                **{k: _mean_or_none([r.get(k) for r in group]) for k in measured},
            }
        )
    return result


def _mean_or_none(values: Sequence[float | None]) -> float | None:
    return None if any(v is None for v in values) else float(np.mean(values))


def format_duration(seconds: float | None) -> str:
    """A time since programming in human units: ``1 s``, ``1 h``, ``1 day``, ``2 years``.

    The largest unit of year (365 days), day, h, min, s that the time reaches; up to three
    significant digits. None (a deterministic mode) is ``-``.
    """
    if seconds is None:
        return "-"
    for unit, size in (("year", _YEAR_S), ("day", 86400.0), ("h", 3600.0), ("min", 60.0)):
        if seconds >= size:
            amount = seconds / size
            text = f"{amount:.3g}"
            plural = "s" if unit in ("year", "day") and text != "1" else ""
            return f"{text} {unit}{plural}"
    return f"{seconds:.3g} s"


def _metric_text(row: dict[str, Any]) -> str:
    digits = _digits(row["metric"])
    text = f"{row['mean']:.{digits}f}"
    if row["std"] is not None:
        text += f" ± {row['std']:.{digits}f}"
    return text


def _digits(metric: str) -> int:
    return next((t.digits for t in TASKS.values() if t.metric == metric), 4)


def _label(metric: str) -> str:
    return next((t.label for t in TASKS.values() if t.metric == metric), metric)


def _summary_table(rows: Sequence[dict[str, Any]]) -> tuple[list[str], list[list[str]]]:
    """Header and cells of the aggregated rows, shared by the text and Markdown tables."""
    aggregated = aggregate(rows)
    metrics = {r["metric"] for r in aggregated}
    metric_header = _label(next(iter(metrics))) if len(metrics) == 1 else "metric"
    header = ["task", "target", "mode", "t_inference", "compensation", metric_header, "seeds"]
    cells = [
        [
            r["task"],
            r["target"],
            r["mode"],
            format_duration(r["t_inference_s"]),
            r["drift_compensation"] or "-",
            _metric_text(r),
            "-" if r["mode"] in DETERMINISTIC_MODES else str(r["n_seeds"]),
        ]
        for r in aggregated
    ]
    if any(r["energy_nj_per_step"] is not None for r in aggregated):  # the simulator's
        header += ["nJ/step", "ns/step"]
        for row, r in zip(cells, aggregated, strict=True):
            row += [_optional(r["energy_nj_per_step"], ".2f"), _optional(r["timestep_ns"], ".0f")]
    return header, cells


def _optional(value: float | None, spec: str) -> str:
    return "-" if value is None else format(value, spec)


def format_results(rows: Sequence[dict[str, Any]]) -> str:
    """The aggregated rows as an aligned text table (what ``snuc eval`` prints)."""
    header, cells = _summary_table(rows)
    return format_table(header, cells)


def to_markdown(rows: Sequence[dict[str, Any]]) -> str:
    """The aggregated rows as a Markdown table (``snuc eval --markdown``)."""
    header, cells = _summary_table(rows)
    lines = [_markdown_row(header), _markdown_row(["---"] * len(header))]
    lines.extend(_markdown_row(row) for row in cells)
    return "\n".join(lines) + "\n"


def _markdown_row(cells: Sequence[str]) -> str:
    return "| " + " | ".join(c.replace("|", "\\|") for c in cells) + " |"


def to_csv(rows: Sequence[dict[str, Any]]) -> str:
    """Every run (``kind`` = ``run``), then every configuration's mean (``kind`` = ``mean``).

    Columns are :data:`CSV_FIELDS`; None is an empty cell; floats keep full precision.
    """
    out = io.StringIO()
    writer = csv.DictWriter(out, fieldnames=CSV_FIELDS, lineterminator="\n")
    writer.writeheader()
    for row in rows:
        writer.writerow(_csv_row({**row, "kind": "run", "std": None, "n_seeds": 1}))
    for row in aggregate(rows):
        writer.writerow(_csv_row({**row, "kind": "mean", "seed": None, "value": row["mean"]}))
    return out.getvalue()


def _csv_row(row: dict[str, Any]) -> dict[str, Any]:
    row = {**row, "t_inference": format_duration(row["t_inference_s"])}
    if row["t_inference_s"] is None:
        row["t_inference"] = None
    return {k: "" if row.get(k) is None else row[k] for k in CSV_FIELDS}


def check_output_path(path: str | os.PathLike[str]) -> Path:
    """Check, before a long sweep, that a result file can be written at ``path``.

    Raises:
        SnucError: the directory does not exist, or ``path`` is a directory.
    """
    path = Path(path)
    if path.is_dir():
        raise SnucError(f"cannot write {path}: it is a directory; name a file")
    parent = path.parent
    if not parent.is_dir():
        raise SnucError(f"cannot write {path}: directory {parent} does not exist; create it first")
    return path


def write_text_atomic(path: str | os.PathLike[str], text: str) -> Path:
    """Write ``text`` to ``path`` by a temporary file beside it and a rename.

    An existing file is replaced only by the complete new one; on failure nothing is left.

    Raises:
        SnucError: the directory is missing or unwritable, or the write failed.
    """
    path = check_output_path(path)
    temp: Path | None = None
    try:
        temp = _claim_temp(path)
        with open(temp, "w", encoding="utf-8", newline="") as f:
            f.write(text)
            f.flush()
            os.fsync(f.fileno())
        os.replace(temp, path)
        temp = None
    except OSError as exc:
        raise SnucError(f"cannot write {path}: {exc.strerror or exc}") from None
    finally:
        if temp is not None:
            with contextlib.suppress(OSError):
                temp.unlink()
    return path


def _claim_temp(path: Path) -> Path:
    """A new hidden file beside ``path``. Unlike ``tempfile``'s (mode 0600), it gets the
    default permissions, which the finished file keeps."""
    while True:
        candidate = path.with_name(f".{path.name}.{secrets.token_hex(6)}.tmp")
        try:
            with open(candidate, "x"):
                return candidate
        except FileExistsError:
            continue
