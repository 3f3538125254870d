"""The paper's tasks for ``snuc eval`` (SPEC §11): their data, chunks and metrics.

A :class:`Task` checks that a model fits it, cuts a split of its data set into chunks of
sequences (:class:`Piece`, one ``Artefact.run`` each), and scores each chunk's outputs;
:data:`TASKS` holds them by name. :mod:`snuc.evaluate` runs the sweep over them.

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
* **custom** -- any data set, an ``.npz`` of ``inputs``, ``lengths`` and ``targets``
  (:func:`custom_task`, :func:`read_custom_data`), scored by one of
  :data:`CUSTOM_METRICS` or a callable over the chunks' :class:`Batch` es.
* **ptb** -- perplexity, ``exp`` of the mean NLL over every predicted token. The split's
  token stream is cut into ``columns`` contiguous columns (:func:`~snuc.datasets.batchify`)
  and **each column runs whole, as one sequence from the zero state**: a compiled model's
  state starts at zero on every run and cannot be carried from one run to the next, and
  because outputs are causal, one long run gives exactly what running windows of any
  length (BPTT) with the state carried between them gives -- so there is no window
  option. The output at step t (log-probabilities, a log-softmax readout) is scored
  against the token at t + 1. Any vocabulary size works, as long as the model's output
  covers every token id of the text.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from snuc.datasets import (
    MNIST_CODING_BLOCK,
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
from snuc.ir.ops import CrossbarMVM
from snuc.ir.types import BATCH
from snuc.runtime.artefact import TIME, Artefact

CHUNK_BYTES = 4 << 30
"""Default chunk size: as many sequences as keep a chunk's estimated run memory
(:func:`sequence_bytes`) under this many bytes, at least one. JSB's test split runs whole,
MNIST's in a few chunks (a convolutional model's in many: its first layer is 23 times
its input), PTB's a column or two at a time."""


@dataclass(frozen=True)
class Piece:
    """One chunk of a task's data: what one ``Artefact.run`` gets and what scores it.

    Attributes:
        x: the run's input ``[T, b, ...]`` (MNIST: boolean spikes, fed as float32).
        truth: what the outputs are scored against (task-specific).
    """

    x: np.ndarray
    truth: Any


@dataclass(frozen=True)
class TaskOptions:
    """The task options of one :func:`snuc.evaluate.evaluate` call."""

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
        coded: whether the inputs are a random coding of the data (MNIST's rate coding),
            so that a score depends on the coding seed (``snuc eval --coding-seeds``).
        reduce: the custom task's metric callable, ``reduce(batches) -> float`` over an
            iterable of :class:`Batch` (then ``score`` and ``finish`` are unused); None.
    """

    name: str
    metric: str
    label: str
    digits: int
    splits: tuple[str, ...]
    loader: Callable[[str, Any], Any]
    check: Callable[[Artefact], None]
    prepare: Callable[[Any, Artefact, TaskOptions], list[Piece]]
    feed: Callable[[Piece, Artefact], np.ndarray]
    score: Callable[[np.ndarray, Piece], tuple[float, int]]
    finish: Callable[[float, int], float]
    coded: bool = False
    reduce: Callable[[Iterable[Batch]], float] | None = None


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


def step_bytes(art: Artefact) -> int:
    """Bytes one sequence's timestep is estimated to take in a run: every batched value of
    the step graph once at its dtype (inputs, each layer's output, every tile's output,
    states, outputs), plus each crossbar tile's output again as float64 (the column sums
    and pcm read noise a run keeps per step).

    An upper bound, measured: the tracemalloc peak of a NumPy-backend run grows by 0.03 to
    0.13 of ``T * step_bytes`` per sequence in float mode and by 0.15 to 0.70 in pcm mode
    (``mnist_cnn``, ``mnist_snu7``, ``jsb_ssnu``, ``jsb_lstm``, ``ptb_snu`` and
    ``snu_small``), since the backend keeps most values for a block of a few steps only
    and the outputs and read noise for all ``T``.
    """
    total = 0
    for type_ in art.graph.values().values():
        if type_.has_batch:
            total += math.prod(type_.concrete(1)) * type_.np_dtype.itemsize
    for node in art.graph.nodes():
        if isinstance(node.op, CrossbarMVM):
            total += math.prod(art.graph.type_of(node.outputs[0]).concrete(1)) * 8
    return total


def sequence_bytes(art: Artefact, steps: int) -> int:
    """The estimated run memory of one sequence of ``steps`` steps (:func:`step_bytes`)."""
    return max(1, steps) * step_bytes(art)


def _auto_batch(options: TaskOptions, art: Artefact, steps: int, size: int) -> int:
    """``options.batch_size``, or as many sequences as keep a chunk's estimated run memory
    under :data:`CHUNK_BYTES` (at least one, at most ``size``)."""
    if options.batch_size is not None:
        return options.batch_size
    return max(1, min(size, CHUNK_BYTES // sequence_bytes(art, steps)))


def _limited(count: int, options: TaskOptions) -> int:
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


def _prepare_jsb(rolls: list[np.ndarray], art: Artefact, options: TaskOptions) -> list[Piece]:
    rolls = list(rolls)[: _limited(len(rolls), options)]
    if not rolls:
        raise SnucError("the jsb split has no chorale to score")
    longest = max(len(r) for r in rolls)
    chunk = _auto_batch(options, art, longest, len(rolls))
    pieces = []
    for lo in range(0, len(rolls), chunk):
        x, lengths = pad_sequences(rolls[lo : lo + chunk])
        pieces.append(Piece(x, lengths))
    return pieces


def _score_jsb(probs: np.ndarray, piece: Piece) -> tuple[float, int]:
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
    data: tuple[np.ndarray, np.ndarray], art: Artefact, options: TaskOptions
) -> list[Piece]:
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
    chunk = _auto_batch(options, art, options.steps, count)
    return [
        Piece(spikes[:, lo : lo + chunk], labels[lo : lo + chunk]) for lo in range(0, count, chunk)
    ]


def _feed_mnist(piece: Piece, art: Artefact) -> np.ndarray:
    features = art.inputs[0]["shape"][2:]
    steps, batch = piece.x.shape[:2]
    return piece.x.astype(np.float32).reshape(steps, batch, *features)


def _score_mnist(outputs: np.ndarray, piece: Piece) -> tuple[float, int]:
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


def _prepare_ptb(ids: np.ndarray, art: Artefact, options: TaskOptions) -> list[Piece]:
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
    chunk = _auto_batch(options, art, steps, options.columns)
    return [Piece(data[:, lo : lo + chunk], None) for lo in range(0, options.columns, chunk)]


def _score_ptb(log_probs: np.ndarray, piece: Piece) -> tuple[float, int]:
    if log_probs.size and float(np.max(log_probs)) > 1e-4:
        raise SnucError(
            f"the ptb task scores log-probabilities (a log_softmax readout), but the model "
            f"output reaches {float(np.max(log_probs)):.4g} > 0"
        )
    return lm_nll_sum(log_probs[:-1], piece.x[1:])


def _finish_perplexity(total: float, count: int) -> float:
    return math.exp(total / count)


def _identity_feed(piece: Piece, art: Artefact) -> np.ndarray:
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
        coded=True,
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


# Custom data sets ----------------------------------------------------------------------
# ``--task custom --data D.npz --metric M``: any data set as three arrays (SPEC §12).

CUSTOM_METRICS = ("accuracy-count", "accuracy-last", "nll", "perplexity", "mse")
"""Metrics of the custom task: accuracy (%) from the outputs summed over each sequence's
steps or from its last step, the mean NLL of log-probability outputs, its ``exp``, and the
mean squared error."""

_LOWER_IS_BETTER = ("nll", "perplexity", "mse")


@dataclass(frozen=True)
class Batch:
    """One chunk of a custom data set with the model's outputs on it, what a metric
    callable (``evaluate(..., metric=callable)``) receives, chunk after chunk.

    Attributes:
        outputs: the model's outputs ``[T, b, ...]``.
        targets: the chunk's targets: ``[b]`` labels or ``[T, b, ...]`` per step.
        lengths: ``[b]`` steps of each sequence (steps past it are padding).
    """

    outputs: np.ndarray
    targets: np.ndarray
    lengths: np.ndarray


def lower_is_better(metric: str) -> bool:
    """Whether a smaller value of ``metric`` is better (NLL, perplexity, MSE)."""
    return metric in _LOWER_IS_BETTER


def read_custom_data(path: Any) -> dict[str, np.ndarray]:
    """The ``inputs``, ``lengths`` and ``targets`` of a custom task's ``.npz``, checked.

    ``inputs`` is ``[T, N, F...]`` (float) or token ids ``[T, N]`` (integers); ``lengths``
    ``[N]`` integers in 1..T; ``targets`` ``[N, ...]`` (one per sequence, scored at its last
    step, or its spike counts) or ``[T, N, ...]`` (one per step).

    Raises:
        SnucError: a missing or unreadable file, a missing array, wrong shapes; one line.
    """
    from pathlib import Path

    path = Path(path)
    if not path.is_file():
        raise SnucError(f"custom data {path} does not exist or is not a file")
    try:
        with np.load(path, allow_pickle=False) as archive:
            missing = [k for k in ("inputs", "lengths", "targets") if k not in archive.files]
            if missing:
                raise SnucError(
                    f"custom data {path} has no array {missing[0]!r}; it needs inputs "
                    f"[T, N, F] (or token ids [T, N]), lengths [N] and targets [N] or [T, N, ...]"
                )
            arrays = {k: archive[k] for k in ("inputs", "lengths", "targets")}
    except (OSError, ValueError, EOFError) as exc:
        raise SnucError(f"custom data {path} is not a readable .npz of arrays ({exc})") from None
    _check_custom_shapes(arrays, str(path))
    return arrays


def _check_custom_shapes(arrays: dict[str, np.ndarray], where: str) -> None:
    x, lengths, targets = arrays["inputs"], arrays["lengths"], arrays["targets"]
    if x.ndim < 2 or 0 in x.shape[:2]:
        raise SnucError(
            f"custom data {where}: inputs must be [T, N, ...] with T, N >= 1, got {x.shape}"
        )
    steps, count = x.shape[:2]
    if x.ndim == 2 and not np.issubdtype(x.dtype, np.integer):
        raise SnucError(
            f"custom data {where}: inputs [T, N] must be integer token ids, got {x.dtype}"
        )
    if x.ndim > 2 and not np.issubdtype(x.dtype, np.number):
        raise SnucError(f"custom data {where}: inputs must be numbers, got {x.dtype}")
    if lengths.shape != (count,) or not np.issubdtype(lengths.dtype, np.integer):
        raise SnucError(
            f"custom data {where}: lengths must be {count} integers (one per sequence), got "
            f"{lengths.dtype} {list(lengths.shape)}"
        )
    if lengths.min() < 1 or lengths.max() > steps:
        raise SnucError(
            f"custom data {where}: lengths must lie in 1..{steps} (the steps of inputs)"
        )
    per_step = targets.ndim >= 2 and targets.shape[:2] == (steps, count)
    if not per_step and (targets.ndim < 1 or targets.shape[0] != count):
        raise SnucError(
            f"custom data {where}: targets must be [N] or [T, N, ...] with N = {count} and "
            f"T = {steps}, got {list(targets.shape)}"
        )


def custom_task(data: Any, metric: str | Callable[..., float]) -> Task:
    """The custom task on ``data`` (an ``.npz`` path, or the dict :func:`read_custom_data`
    gives) scored by ``metric``: a name of :data:`CUSTOM_METRICS`, or a callable taking an
    iterable of :class:`Batch` (one per chunk, as they run) and returning the metric.

    Raises:
        SnucError: bad data, an unknown metric, targets that do not suit the metric.
    """
    arrays = data if isinstance(data, dict) else read_custom_data(data)
    if callable(metric):
        name, score, finish = getattr(metric, "__name__", "custom"), _no_score, _no_finish
    elif metric in CUSTOM_METRICS:
        name = metric
        score, finish = _CUSTOM_SCORES[metric], _CUSTOM_FINISH[metric]
        _check_metric_targets(metric, arrays["targets"], arrays["inputs"].shape[:2])
    else:
        raise SnucError(f"unknown metric {metric!r}; expected one of {', '.join(CUSTOM_METRICS)}")
    return Task(
        name="custom",
        metric=name,
        label=name,
        digits=4,
        splits=("test",),
        loader=lambda split, data_dir: arrays,
        check=_check_custom_model,
        prepare=_prepare_custom,
        feed=_feed_custom,
        score=score,
        finish=finish,
        reduce=metric if callable(metric) else None,
    )


def _check_metric_targets(metric: str, targets: np.ndarray, steps_count: tuple[int, int]) -> None:
    per_step = targets.ndim >= 2 and targets.shape[:2] == steps_count
    integer = np.issubdtype(targets.dtype, np.integer)
    if metric.startswith("accuracy") and (per_step or targets.ndim != 1 or not integer):
        raise SnucError(
            f"metric {metric} needs integer labels targets [N], got {targets.dtype} "
            f"{list(targets.shape)}"
        )
    if metric in ("nll", "perplexity") and (not integer or targets.ndim != (2 if per_step else 1)):
        raise SnucError(
            f"metric {metric} needs integer class targets [N] or [T, N] (the outputs are "
            f"log-probabilities), got {targets.dtype} {list(targets.shape)}"
        )
    if metric == "mse" and not np.issubdtype(targets.dtype, np.number):
        raise SnucError(f"metric mse needs numeric targets, got {targets.dtype}")


def _check_custom_model(art: Artefact) -> None:
    _single_io(art, "custom")
    _features(art.inputs[0], "input", "custom")
    _features(art.outputs[0], "output", "custom")


def _prepare_custom(
    data: dict[str, np.ndarray], art: Artefact, options: TaskOptions
) -> list[Piece]:
    x, lengths, targets = data["inputs"], data["lengths"], data["targets"]
    count = _limited(x.shape[1], options)
    want = art.inputs[0]["shape"][2:]
    if list(x.shape[2:]) != want:
        raise SnucError(
            f"the model's input is [T, B{''.join(f', {d}' for d in want)}] but the custom "
            f"inputs are {list(x.shape)}"
        )
    per_step = targets.ndim >= 2 and targets.shape[:2] == x.shape[:2]
    chunk = _auto_batch(options, art, x.shape[0], count)
    pieces = []
    for lo in range(0, count, chunk):
        hi = min(lo + chunk, count)
        truth = targets[:, lo:hi] if per_step else targets[lo:hi]
        pieces.append(Piece(x[:, lo:hi], Batch(np.empty(0), truth, lengths[lo:hi])))
    return pieces


def _feed_custom(piece: Piece, art: Artefact) -> np.ndarray:
    return piece.x.astype(np.dtype(art.inputs[0]["dtype"]), copy=False)


def _valid_steps(lengths: np.ndarray, steps: int) -> np.ndarray:
    """``[T, b]`` True where step t lies within sequence b's length."""
    return np.arange(steps)[:, None] < lengths[None, :]


def _last_step(outputs: np.ndarray, lengths: np.ndarray) -> np.ndarray:
    return outputs[lengths - 1, np.arange(len(lengths))]


def _score_count(outputs: np.ndarray, piece: Piece) -> tuple[float, int]:
    valid = _valid_steps(piece.truth.lengths, outputs.shape[0])
    counts = np.where(valid[..., None], outputs.reshape(*outputs.shape[:2], -1), 0).sum(axis=0)
    return float(np.sum(np.argmax(counts, axis=-1) == piece.truth.targets)), len(valid[0])


def _score_last(outputs: np.ndarray, piece: Piece) -> tuple[float, int]:
    last = _last_step(outputs, piece.truth.lengths).reshape(len(piece.truth.lengths), -1)
    return float(np.sum(np.argmax(last, axis=-1) == piece.truth.targets)), len(last)


def _score_nll(outputs: np.ndarray, piece: Piece) -> tuple[float, int]:
    targets, lengths = piece.truth.targets, piece.truth.lengths
    if targets.ndim == 1:
        last = _last_step(outputs, lengths)
        return -float(np.sum(last[np.arange(len(targets)), targets])), len(targets)
    picked = np.take_along_axis(outputs, targets[..., None].astype(np.int64), axis=-1)[..., 0]
    valid = _valid_steps(lengths, outputs.shape[0])
    return -float(np.sum(picked[valid])), int(valid.sum())


def _score_mse(outputs: np.ndarray, piece: Piece) -> tuple[float, int]:
    targets, lengths = piece.truth.targets, piece.truth.lengths
    per_step = targets.ndim >= 2 and targets.shape[:2] == outputs.shape[:2]
    got = outputs if per_step else _last_step(outputs, lengths)
    if got.shape != targets.shape:
        raise SnucError(
            f"metric mse compares outputs {list(got.shape)} with targets {list(targets.shape)}; "
            "they must have the same shape"
        )
    error = np.square(got.astype(np.float64) - targets)
    if not per_step:
        return float(error.sum()), int(error.size)
    valid = _valid_steps(lengths, outputs.shape[0])
    features = error[0, 0].size
    return float(error[valid].sum()), int(valid.sum()) * features


def _finish_mean(total: float, count: int) -> float:
    return total / count


def _no_score(outputs: np.ndarray, piece: Piece) -> tuple[float, int]:
    raise AssertionError("a metric callable scores the batches itself")


def _no_finish(total: float, count: int) -> float:
    raise AssertionError("a metric callable scores the batches itself")


_CUSTOM_SCORES = {
    "accuracy-count": _score_count,
    "accuracy-last": _score_last,
    "nll": _score_nll,
    "perplexity": _score_nll,
    "mse": _score_mse,
}
_CUSTOM_FINISH = {
    "accuracy-count": _finish_accuracy,
    "accuracy-last": _finish_accuracy,
    "nll": _finish_mean,
    "perplexity": _finish_perplexity,
    "mse": _finish_mean,
}
