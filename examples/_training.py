"""Helpers shared by the training scripts in this folder (``train_jsb.py``, ``train_mnist.py``,
``train_ptb.py``): command-line options, seeding, device choice, progress bars, keeping the
best-on-validation weights with early stopping, checkpoints, and the ONNX export with its
JSON summary.

Every script trains in PyTorch, keeps the weights of the epoch with the best validation
metric, scores the test split with them, exports the network in ONNX sequence form with
:func:`snuc.frontend.export.export` (which checks the file against onnxruntime) and writes
``<model>.json`` beside the ``.onnx`` file.
"""

from __future__ import annotations

import argparse
import copy
import json
import math
import os
import random
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import Any, TypeVar

import _checkpoint
import numpy as np
import torch
from _checkpoint import EpochRun, StopRequests, TrainingStopped
from torch import Tensor, nn
from tqdm import tqdm

from snuc.frontend.export import export
from snuc.frontend.hwa import COMPENSATIONS, HardwareAware, HWAOptions, parse_off
from snuc.frontend.layers import SNU, ConvSNU, Readout, SNUNetwork, TimeMajor
from snuc.ir.errors import SnucError
from snuc.ir.target import DEFAULT_TARGET, parse_target

HERE = Path(__file__).resolve().parent
MODELS_DIR = HERE / "models"
"""Where the trained models ship (``examples/models``)."""

EXPORT_ATOL = 1e-4
"""Tolerance of the export check (onnxruntime against PyTorch, on every output and state).
Trained layers carry membrane potentials of several tens (a scaled input layer, a soft
output layer with g = identity), where float32 rounding alone (the two sum in different
orders) exceeds the exporter's default 1e-5 on the state; a flipped spike still fails."""

_T = TypeVar("_T")


# ------------------------------------------------------------------ command line and setup


def add_common_arguments(
    parser: argparse.ArgumentParser,
    *,
    out: Path | None,
    epochs: int,
    lr: float,
    batch_size: int,
    patience: int,
    threads: int = 1,
) -> None:
    """Add the options every training script takes, with that script's defaults.

    Args:
        parser: the script's parser.
        out: default ONNX file to write (None: the script picks one from other options).
        epochs: default maximum number of epochs.
        lr: default learning rate (Adam).
        batch_size: default training batch size.
        patience: default number of epochs without a better validation metric before
            training stops.
        threads: default number of CPU threads. One: on a machine whose cores are shared,
            two threads made a 7-layer MNIST batch 18 times slower (threads wait on each
            other), and these networks' matrices are too small to gain from more.
    """
    parser.add_argument(
        "--data-dir", default=None,
        help="data folder holding jsb/, mnist/, ptb/ (None: $SNUC_DATA or ../shared/data)",
    )  # fmt: skip
    parser.add_argument("--epochs", type=int, default=epochs, help="maximum number of epochs")
    parser.add_argument("--seed", type=int, default=0, help="random seed (fixes the run)")
    parser.add_argument(
        "--device", choices=("auto", "cpu", "cuda"), default="auto",
        help="where to train (auto: cuda when available)",
    )  # fmt: skip
    parser.add_argument("-o", "--out", type=Path, default=out, help="the ONNX file to write")
    parser.add_argument(
        "--limit", type=int, default=None, metavar="N",
        help="use only the first N items of each split (smoke tests)",
    )  # fmt: skip
    parser.add_argument("--lr", type=float, default=lr, help="Adam learning rate")
    parser.add_argument("--batch-size", type=int, default=batch_size, help="training batch size")
    parser.add_argument(
        "--patience", type=int, default=patience,
        help="stop after this many epochs without a better validation metric",
    )  # fmt: skip
    parser.add_argument(
        "--threads",
        type=int,
        default=threads,
        help="CPU threads for PyTorch (torch.set_num_threads)",
    )
    parser.add_argument(
        "--checkpoint", type=Path, default=None,
        help="save the whole training state here (after every epoch, every "
        "--checkpoint-every seconds inside one, and on SIGTERM) and resume from it if it "
        "exists",
    )  # fmt: skip
    parser.add_argument(
        "--checkpoint-every", type=float, default=600.0, metavar="SECONDS",
        help="with --checkpoint: seconds between checkpoints inside an epoch",
    )  # fmt: skip
    parser.add_argument(
        "--stop-after-batches", type=int, default=None, metavar="N",
        help="with --checkpoint: stop after N training batches in this process, once the "
        "checkpoint is written (exit status 3); the same command resumes",
    )  # fmt: skip
    parser.add_argument(
        "--check-seed", type=int, default=0,
        help="seed of the random sequences on which the export compares onnxruntime with "
        "PyTorch (another one gets past a spike that float rounding flips at a tie)",
    )  # fmt: skip
    parser.add_argument("--no-progress", action="store_true", help="no progress bars")
    add_hwa_arguments(parser)


def add_hwa_arguments(parser: argparse.ArgumentParser) -> None:
    """The hardware-aware training options (docs/hwa.md, :mod:`snuc.frontend.hwa`)."""
    group = parser.add_argument_group("hardware-aware training (docs/hwa.md)")
    group.add_argument(
        "--hwa", action="store_true",
        help="train with the chip's non-idealities in the forward pass; the model's name "
        "gets the suffix _hwa",
    )  # fmt: skip
    group.add_argument(
        "--hwa-target", default=DEFAULT_TARGET,
        help="the chip: a target preset or TOML file (as snuc compile --target)",
    )  # fmt: skip
    group.add_argument(
        "--hwa-off", default="", metavar="LIST",
        help="non-idealities to leave out, comma-separated: program, drift, read, dac, adc",
    )  # fmt: skip
    group.add_argument(
        "--hwa-compensation", choices=COMPENSATIONS, default="global",
        help="the drift compensation the chip will use",
    )  # fmt: skip
    group.add_argument(
        "--hwa-t-inference", default="3600,31536000", metavar="LO,HI",
        help="seconds after programming; each simulated chip is read at a time drawn "
        "log-uniformly between them",
    )  # fmt: skip
    group.add_argument(
        "--hwa-noise-scale", type=float, default=1.0,
        help="multiplies the target's programming- and read-noise strengths",
    )  # fmt: skip
    group.add_argument(
        "--hwa-ramp-epochs", type=int, default=0,
        help="ramp the noise scale in linearly over this many epochs (0: none)",
    )  # fmt: skip


def hwa_options(args: argparse.Namespace) -> HWAOptions | None:
    """The hardware-aware options ``args`` give (None without ``--hwa``).

    Raises:
        SnucError: an unknown target, non-ideality or malformed time range.
    """
    if not getattr(args, "hwa", False):
        return None
    try:
        times = tuple(float(t) for t in args.hwa_t_inference.split(","))
    except ValueError:
        times = ()
    if len(times) not in (1, 2):
        raise SnucError(f"--hwa-t-inference {args.hwa_t_inference!r}: expected LO,HI seconds")
    return HWAOptions(
        target=parse_target(args.hwa_target),
        off=parse_off(args.hwa_off),
        compensation=args.hwa_compensation,
        t_inference_s=(times[0], times[-1]),
        noise_scale=args.hwa_noise_scale,
        ramp_epochs=args.hwa_ramp_epochs,
    )


def model_name(base: str, args: argparse.Namespace) -> str:
    """The model's name: ``base``, with ``_hwa`` after it for a hardware-aware run."""
    return f"{base}_hwa" if getattr(args, "hwa", False) else base


STOPPED_STATUS = 3
"""Exit status of a script that stopped on request with its checkpoint written."""


def run_cli(main: Callable[[Sequence[str] | None], Any]) -> None:
    """Run a script's ``main``; a :class:`SnucError` becomes one line on stderr and exit 2,
    a requested stop (:class:`~_checkpoint.TrainingStopped`) one line and exit 3."""
    name = Path(sys.argv[0]).name
    try:
        main(None)
    except SnucError as exc:
        print(f"{name}: error: {exc}", file=sys.stderr)
        raise SystemExit(2) from None
    except TrainingStopped as exc:
        print(f"{name}: stopped ({exc}); the same command resumes", file=sys.stderr)
        raise SystemExit(STOPPED_STATUS) from None


def check_common_arguments(parser: argparse.ArgumentParser, args: argparse.Namespace) -> None:
    """Reject option values no run can use (``parser.error`` exits with status 2)."""
    for name in ("epochs", "batch_size", "threads"):
        if getattr(args, name) < 1:
            parser.error(f"--{name.replace('_', '-')} must be at least 1")
    if args.limit is not None and args.limit < 1:
        parser.error("--limit must be at least 1")
    if not args.checkpoint_every >= 0:
        parser.error("--checkpoint-every must be at least 0")
    if args.stop_after_batches is not None:
        if args.checkpoint is None:
            parser.error("--stop-after-batches needs --checkpoint (to resume from)")
        if args.stop_after_batches < 1:
            parser.error("--stop-after-batches must be at least 1")
    if args.patience < 1:
        parser.error("--patience must be at least 1")
    if not args.lr > 0:
        parser.error("--lr must be positive")
    if args.out.suffix != ".onnx":
        parser.error(f"--out {args.out}: expected a path ending in .onnx")
    try:
        hwa_options(args)
    except SnucError as exc:
        parser.error(str(exc))


def seed_everything(seed: int) -> None:
    """Seed Python's, NumPy's and PyTorch's global generators (CPU and CUDA)."""
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


def epoch_generator(seed: int, epoch: int) -> np.random.Generator:
    """The NumPy generator for one epoch's shuffling and noise.

    Keyed by (seed, epoch) rather than drawn from one stream, so a run resumed from a
    checkpoint draws the same batches as one that never stopped.
    """
    return np.random.default_rng([seed, epoch])


def select_device(name: str) -> torch.device:
    """``"auto"``: CUDA when available, else the CPU; ``"cuda"`` without CUDA is an error."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name == "cuda" and not torch.cuda.is_available():
        raise SnucError("--device cuda: PyTorch sees no CUDA device; use --device cpu or auto")
    return torch.device(name)


def setup(args: argparse.Namespace) -> torch.device:
    """Fix threads and seeds from the common options; return the training device."""
    torch.set_num_threads(args.threads)
    seed_everything(args.seed)
    return select_device(args.device)


def limited(items: Sequence[_T], limit: int | None) -> Sequence[_T]:
    """The first ``limit`` items (all when ``limit`` is None)."""
    return items if limit is None else items[:limit]


def progress(
    iterable: Iterable[_T], *, desc: str, total: int | None = None, enabled: bool = True
) -> Iterator[_T]:
    """A tqdm progress bar on stderr (nothing when ``enabled`` is False)."""
    return iter(
        tqdm(
            iterable,
            desc=desc,
            total=total,
            file=sys.stderr,
            leave=False,
            disable=not enabled,
            mininterval=2.0,
            dynamic_ncols=True,
        )
    )


def log(message: str) -> None:
    """One line of the training log, on stdout, flushed (logs are often redirected)."""
    print(message, flush=True)


def parameter_count(model: nn.Module) -> int:
    """Number of trainable values in ``model``."""
    return sum(p.numel() for p in model.parameters() if p.requires_grad)


def cosine_lr(base_lr: float, epoch: int, epochs: int) -> float:
    """Cosine decay from ``base_lr`` at epoch 1 to a hundredth of it at epoch ``epochs``.

    A function of the epoch alone, so a resumed run follows the same schedule.
    """
    ratio = (epoch - 1) / max(epochs - 1, 1)
    return base_lr * (0.01 + 0.99 * 0.5 * (1.0 + math.cos(math.pi * ratio)))


def set_lr(optimizer: torch.optim.Optimizer, lr: float) -> None:
    """Set the learning rate of every parameter group."""
    for group in optimizer.param_groups:
        group["lr"] = lr


def describe(model: SNUNetwork) -> str:
    """One line naming the network's layers in order, e.g. ``SNU(88, 150, ...) -> Readout(...)``."""
    parts = []
    for layer in model.layers:
        if isinstance(layer, Readout):
            linear = layer.linear
            parts.append(
                f"Readout({linear.in_features}, {linear.out_features}, {layer.activation})"
            )
        else:
            parts.append(f"{type(layer).__name__}({layer.extra_repr()})")
    return " -> ".join(parts)


def clip_gradients(model: nn.Module, max_norm: float) -> None:
    """Clip the global gradient norm to ``max_norm`` (0 or less: no clipping)."""
    if max_norm > 0:
        nn.utils.clip_grad_norm_(model.parameters(), max_norm)


# ------------------------------------------------------------------------ initialisation


def threshold_rate(layer: SNU | ConvSNU, x: Tensor) -> float:
    """How often the layer's ``s_t + b`` is above zero over the sequence ``x``: its spike
    rate when it spikes; for a soft layer, how often its output is above 1/2."""
    # A convolutional layer's bias is per channel: [C] against activations [B, C, H, W].
    bias = layer.bias.reshape(-1, 1, 1) if isinstance(layer, ConvSNU) else layer.bias
    state, above = None, []
    for x_t in x.unbind(0):
        _, state = layer.step(x_t, state)
        above.append((state[0] + bias > 0).float().mean())
    return float(torch.stack(above).mean())


def scale_to_rate(model: SNUNetwork, x: Tensor, target_rate: float) -> list[float]:
    """Scale each SNU layer's weights (dense or convolutional; for a recurrent one only the
    input weights) so it crosses its threshold at ``target_rate`` on ``x``.

    A data-driven initialisation in the spirit of LSUV (Mishkin & Matas 2016). Layer by
    layer from the input, a bisection on the log of a gain finds the gain at which
    :func:`threshold_rate` over ``x`` (a batch of training inputs) is ``target_rate``; the
    weights are multiplied by it. A spiking layer left at the default initialisation is
    nearly silent, and passes no gradient to the layers before it; a soft one sits at
    ``sigmoid(b)`` whatever its input; both learn slowly, or not at all in a deep stack.
    The model runs in eval mode (no dropout) and is left in it.

    Returns:
        The gain applied to each SNU layer.
    """
    gains = []
    model.eval()
    with torch.no_grad():
        h = x
        for layer in model.layers:
            if isinstance(layer, SNU | ConvSNU):
                base = layer.weight.clone()
                low, high = math.log(0.01), math.log(100.0)
                for _ in range(30):
                    mid = 0.5 * (low + high)
                    layer.weight.copy_(base * math.exp(mid))
                    if threshold_rate(layer, h) < target_rate:
                        low = mid
                    else:
                        high = mid
                gain = math.exp(0.5 * (low + high))
                layer.weight.copy_(base * gain)
                gains.append(gain)
            h = _run_layer(layer, h)
    return gains


def initial_scaling(
    model: SNUNetwork, sample: Callable[[], Tensor], args: argparse.Namespace
) -> None:
    """Scale the SNU layers to spike at ``--init-rate`` on ``sample()`` (:func:`scale_to_rate`)
    and log the gains; skipped when resuming, whose weights come from the checkpoint (the
    scaling draws no random number, so skipping it changes nothing else)."""
    if args.checkpoint is not None and args.checkpoint.exists():
        log("initial scaling skipped: the weights come from the checkpoint")
        return
    gains = scale_to_rate(model, sample(), args.init_rate)
    log(f"weight gains for a {args.init_rate} spike rate: {[round(g, 3) for g in gains]}")


def _run_layer(layer: nn.Module, x: Tensor) -> Tensor:
    """One network layer over the whole sequence ``x`` (a plain module step by step, as
    :class:`SNUNetwork` runs it: ``nn.MaxPool2d`` takes no time axis)."""
    if isinstance(layer, TimeMajor):
        return layer(x)
    return torch.stack([layer(x_t) for x_t in x.unbind(0)])


# ------------------------------------------------------------ best weights, early stopping


class BestOnValidation:
    """Keeps the weights of the best epoch so far and says when to stop.

    Args:
        mode: ``"min"`` when lower metrics are better (NLL, perplexity), ``"max"`` when
            higher are (accuracy).
        patience: epochs without improvement after which :attr:`should_stop` is True.
    """

    def __init__(self, mode: str, patience: int) -> None:
        if mode not in ("min", "max"):
            raise ValueError(f"mode must be 'min' or 'max', got {mode!r}")
        self.mode = mode
        self.patience = patience
        self.best_metric: float | None = None
        self.best_epoch: int | None = None
        self.best_state: dict[str, torch.Tensor] | None = None
        self.bad_epochs = 0

    def is_better(self, metric: float) -> bool:
        """True when ``metric`` beats the best so far (a NaN never does)."""
        if math.isnan(metric):
            return False
        if self.best_metric is None:
            return True
        return metric < self.best_metric if self.mode == "min" else metric > self.best_metric

    def update(self, metric: float, model: nn.Module, epoch: int) -> bool:
        """Record one epoch's validation metric; keep a CPU copy of the weights if best.

        Returns:
            True when this epoch is the new best.
        """
        if not self.is_better(metric):
            self.bad_epochs += 1
            return False
        self.best_metric, self.best_epoch, self.bad_epochs = metric, epoch, 0
        self.best_state = {k: v.detach().cpu().clone() for k, v in model.state_dict().items()}
        return True

    @property
    def should_stop(self) -> bool:
        return self.bad_epochs >= self.patience

    def restore(self, model: nn.Module) -> None:
        """Load the best weights into ``model`` (left as is when no epoch was recorded)."""
        if self.best_state is not None:
            model.load_state_dict(self.best_state)

    def state_dict(self) -> dict[str, Any]:
        return {
            "best_metric": self.best_metric,
            "best_epoch": self.best_epoch,
            "best_state": self.best_state,
            "bad_epochs": self.bad_epochs,
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.best_metric = state["best_metric"]
        self.best_epoch = state["best_epoch"]
        self.best_state = state["best_state"]
        self.bad_epochs = state["bad_epochs"]


# ---------------------------------------------------------------------------- checkpoints


class Checkpointer:
    """Writes the run's checkpoint (``--checkpoint``) and says when a periodic one is due.

    Args:
        path: the checkpoint file (None: no checkpoints).
        every_s: seconds between mid-epoch checkpoints (``--checkpoint-every``).
        model, optimizer, best, history: the run's state, saved as it is at each write.
        spent_s: training seconds spent before this process started.
    """

    def __init__(
        self,
        path: Path | None,
        every_s: float,
        *,
        model: nn.Module,
        optimizer: torch.optim.Optimizer,
        best: BestOnValidation,
        history: list[dict[str, float]],
        spent_s: float,
    ) -> None:
        self.path = path
        self.every_s = every_s
        self.model = model
        self.optimizer = optimizer
        self.best = best
        self.history = history
        self.spent_s = spent_s
        self.clock = Stopwatch()
        self._since_save = Stopwatch()

    @property
    def train_time_s(self) -> float:
        """Training seconds so far, this process's and those before a resume."""
        return self.spent_s + self.clock.seconds

    def due(self) -> bool:
        """True when ``every_s`` seconds have gone by since the last write."""
        return self.path is not None and self._since_save.seconds >= self.every_s

    def save(self, epoch: int, position: dict[str, Any] | None) -> None:
        """Write the state after ``epoch`` finished epochs, plus ``position`` inside the
        next one (None at an epoch's end), with every random state."""
        if self.path is None:
            return
        _checkpoint.write_atomically(
            self.path,
            {
                "format": _checkpoint.FORMAT,
                "epoch": epoch,
                "model": self.model.state_dict(),
                "optimizer": self.optimizer.state_dict(),
                "best": self.best.state_dict(),
                "history": self.history,
                "train_time_s": self.train_time_s,
                "random": _checkpoint.random_states(),
                "position": position,
            },
        )
        self._since_save = Stopwatch()


@dataclass(frozen=True)
class Resumed:
    """What a checkpoint says about where the run stands (see :func:`load_checkpoint`)."""

    epoch: int
    history: list[dict[str, float]]
    train_time_s: float
    position: dict[str, Any] | None


def load_checkpoint(
    path: Path,
    *,
    model: nn.Module,
    optimizer: torch.optim.Optimizer,
    best: BestOnValidation,
) -> Resumed:
    """Restore a checkpoint into the given objects.

    An epoch-end checkpoint also restores the global random states here; a mid-epoch one
    leaves them in its ``position``, for :class:`~_checkpoint.EpochRun` to restore once
    the epoch has seeded its own generators.

    Returns:
        The last finished epoch, the per-epoch log, the training time spent so far, and
        the position inside the next epoch (None when it starts from its first batch).

    Raises:
        SnucError: the file is not a checkpoint of this network.
    """
    state = _checkpoint.read(path)
    try:
        model.load_state_dict(state["model"])
        optimizer.load_state_dict(state["optimizer"])
        best.load_state_dict(state["best"])
        position = state.get("position")
        if position is None and "random" in state:
            _checkpoint.set_random_states(state["random"])
        return Resumed(
            int(state["epoch"]), list(state["history"]), float(state["train_time_s"]), position
        )
    except (KeyError, RuntimeError, ValueError, TypeError) as exc:
        raise _checkpoint.misfit(path, exc) from None


# ---------------------------------------------------------------------------- the loop


@dataclass(frozen=True)
class FitResult:
    """What :func:`fit` did.

    Attributes:
        epochs_run: epochs trained in total (including those before a resume).
        best_epoch: the epoch whose weights were kept (1-based).
        best_valid: its validation metric.
        history: per epoch, ``{"epoch", "train_loss", "valid"}``.
        train_time_s: wall-clock seconds spent training and validating.
        stopped_early: True when patience ran out before ``--epochs``.
    """

    epochs_run: int
    best_epoch: int
    best_valid: float
    history: list[dict[str, float]]
    train_time_s: float
    stopped_early: bool


def fit(
    model: nn.Module,
    optimizer: torch.optim.Optimizer,
    args: argparse.Namespace,
    *,
    train_epoch: Callable[[int, EpochRun], float],
    validate: Callable[[], float],
    metric: str,
    mode: str,
) -> FitResult:
    """Train epoch by epoch, keep the best-on-validation weights, stop early, checkpoint.

    With ``--checkpoint``, the run resumes from the file when it exists, and writes it at
    every epoch's end and, mid-epoch, every ``--checkpoint-every`` seconds; a SIGTERM (or
    ``--stop-after-batches``) makes it write one at the next batch boundary and raise
    :class:`~_checkpoint.TrainingStopped`.

    Args:
        model: the network; holds the best weights when this returns.
        optimizer: its optimiser (saved in checkpoints).
        args: the common options (``epochs``, ``patience``, ``checkpoint``,
            ``checkpoint_every``, ``stop_after_batches``, ``no_progress``).
        train_epoch: ``train_epoch(epoch, run)`` trains one epoch (1-based) through the
            :class:`~_checkpoint.EpochRun` (see :mod:`_checkpoint`) and returns the mean
            loss.
        validate: the validation metric of the model as it is.
        metric: the metric's name, for the log.
        mode: ``"min"`` or ``"max"``: which way the metric improves.

    Returns:
        A :class:`FitResult`.

    Raises:
        TrainingStopped: stopped on request, after writing the checkpoint.
    """
    best = BestOnValidation(mode, args.patience)
    resumed = Resumed(0, [], 0.0, None)
    if args.checkpoint is not None and args.checkpoint.exists():
        resumed = load_checkpoint(args.checkpoint, model=model, optimizer=optimizer, best=best)
        where = "" if resumed.position is None else f", batch {resumed.position['batch']}"
        log(f"resumed from {args.checkpoint} after epoch {resumed.epoch}{where}")
    history = resumed.history
    saver = Checkpointer(
        args.checkpoint,
        args.checkpoint_every,
        model=model,
        optimizer=optimizer,
        best=best,
        history=history,
        spent_s=resumed.train_time_s,
    )
    stops = StopRequests(args.stop_after_batches)
    release = _catch_sigterm(stops) if args.checkpoint is not None else None
    options = hwa_options(args)
    hwa = None if options is None else HardwareAware(model, options)
    device = next(model.parameters()).device
    position = resumed.position
    epoch = resumed.epoch
    try:
        while epoch < args.epochs and not best.should_stop:
            epoch += 1
            run = EpochRun(
                epoch,
                resume=position,
                device=device,
                save=partial(_save_mid_epoch, saver, epoch),
                due=saver.due,
                stops=stops,
                progress=partial(progress, enabled=not args.no_progress),
            )
            position = None
            if hwa is not None:
                hwa.set_epoch(epoch)
            model.train()
            train_loss = train_epoch(epoch, run)
            model.eval()
            with torch.no_grad():
                valid = validate()
            improved = best.update(valid, model, epoch)
            history.append({"epoch": epoch, "train_loss": train_loss, "valid": valid})
            mark = " *" if improved else ""
            log(
                f"epoch {epoch:3d}  train loss {train_loss:.4f}  valid {metric} {valid:.4f}"
                f"{mark}  ({saver.train_time_s:.0f} s)"
            )
            saver.save(epoch, None)
            if stops.reason is not None and epoch < args.epochs and not best.should_stop:
                raise TrainingStopped(stops.reason)
    finally:
        if release is not None:
            release()
        if hwa is not None:
            hwa.detach()
    if best.best_epoch is None or best.best_metric is None:
        raise SnucError(f"training produced no finite validation {metric}; lower --lr")
    best.restore(model)
    model.eval()
    return FitResult(
        epochs_run=epoch,
        best_epoch=best.best_epoch,
        best_valid=best.best_metric,
        history=history,
        train_time_s=saver.train_time_s,
        stopped_early=best.should_stop and epoch < args.epochs,
    )


def _save_mid_epoch(saver: Checkpointer, epoch: int, position: dict[str, Any]) -> None:
    """Checkpoint inside ``epoch`` and say so in the log (the only sign of life of a long
    epoch run without progress bars)."""
    saver.save(epoch - 1, position)
    log(
        f"  checkpoint in epoch {epoch} after batch {position['batch']} of "
        f"{position['batches']} ({saver.train_time_s:.0f} s)"
    )


def _catch_sigterm(stops: StopRequests) -> Callable[[], None] | None:
    """SIGTERM as a stop request, where signals can be caught (the main thread)."""
    if threading.current_thread() is not threading.main_thread():
        return None
    return stops.catch_sigterm()


# ------------------------------------------------------------------------ export, summary


def write_json(path: Path, data: dict[str, Any]) -> None:
    """Write ``data`` as indented JSON, through a temporary file and a rename."""
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "w") as f:
            json.dump(data, f, indent=2)
            f.write("\n")
        make_readable(Path(tmp))
        os.replace(tmp, path)
    finally:
        Path(tmp).unlink(missing_ok=True)


def make_summary(
    *,
    task: str,
    name: str,
    architecture: str,
    model: nn.Module,
    metric: str,
    result: FitResult,
    test: float,
    args: argparse.Namespace,
    device: torch.device,
    started: Stopwatch,
    **extra: Any,
) -> dict[str, Any]:
    """The JSON summary of a training run.

    Args:
        task: ``"jsb"``, ``"mnist"`` or ``"ptb"``.
        name: the model's name (the ONNX file's stem when shipped).
        architecture: one line describing the network.
        model: the network, for its parameter count.
        metric: what ``valid`` and ``test`` measure.
        result: what :func:`fit` returned.
        test: the test-split metric of the kept weights.
        args: the parsed options, recorded as strings.
        device: where it trained.
        started: started when the script did, for the total time.
        **extra: more entries, placed after ``metric``.
    """
    return {
        "task": task,
        "model": name,
        "architecture": architecture,
        "parameters": parameter_count(model),
        "metric": metric,
        **extra,
        "valid": result.best_valid,
        "test": test,
        "best_epoch": result.best_epoch,
        "epochs_run": result.epochs_run,
        "stopped_early": result.stopped_early,
        "train_time_s": round(result.train_time_s, 1),
        "total_time_s": round(started.seconds, 1),
        "device": str(device),
        "seed": args.seed,
        "command": " ".join(["python", *sys.argv]) if sys.argv[0].endswith(".py") else None,
        "options": {k: _portable(v) for k, v in sorted(vars(args).items())},
        "history": result.history,
    }


def _portable(value: Any) -> str:
    """An option's value as text; a path inside the repository relative to its root."""
    if isinstance(value, Path):
        try:
            return value.resolve().relative_to(HERE.parent).as_posix()
        except ValueError:
            return str(value)
    return str(value)


def make_readable(path: Path) -> None:
    """Give ``path`` the usual file mode (0644 less the umask); temporary files are 0600."""
    umask = os.umask(0)
    os.umask(umask)
    path.chmod(0o644 & ~umask)


def summary_path(onnx_path: Path) -> Path:
    """``model.onnx`` → ``model.json``, the summary beside the model."""
    return onnx_path.with_suffix(".json")


def export_with_summary(
    model: nn.Module,
    out: Path,
    summary: dict[str, Any],
    *,
    check_seed: int = 0,
    **export_options: Any,
) -> dict[str, Any]:
    """Export ``model`` (sequence form, checked with onnxruntime), then write its summary.

    Args:
        model: the trained network; exported as a float32 CPU copy in eval mode.
        out: the ``.onnx`` file; its folder is created if missing.
        summary: what to record; the file name and size are added.
        check_seed: seeds the export check's random inputs (``--check-seed``).
        **export_options: passed to :func:`snuc.frontend.export.export` (``atol``
            defaults to :data:`EXPORT_ATOL`).

    Returns:
        The summary as written to ``out`` with the suffix ``.json``.
    """
    out.parent.mkdir(parents=True, exist_ok=True)
    options = {"atol": EXPORT_ATOL, "seed": check_seed, **export_options}
    export(copy.deepcopy(model).cpu(), out, **options)
    make_readable(out)
    summary = {**summary, "onnx": out.name, "onnx_bytes": out.stat().st_size}
    write_json(summary_path(out), summary)
    return summary


class Stopwatch:
    """Wall-clock seconds since construction (``time.perf_counter``)."""

    def __init__(self) -> None:
        self._start = time.perf_counter()

    @property
    def seconds(self) -> float:
        return time.perf_counter() - self._start
