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
import time
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

import numpy as np
import torch
from torch import Tensor, nn
from tqdm import tqdm

from snuc.frontend.export import export
from snuc.frontend.layers import SNU, Readout, SNUNetwork
from snuc.ir.errors import SnucError

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
    parser.add_argument("--out", type=Path, default=out, help="the ONNX file to write")
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
        help="save the training state here after every epoch, and resume from it if it exists",
    )  # fmt: skip
    parser.add_argument("--no-progress", action="store_true", help="no progress bars")


def run_cli(main: Callable[[Sequence[str] | None], Any]) -> None:
    """Run a script's ``main``; a :class:`SnucError` becomes one line on stderr and exit 2."""
    try:
        main(None)
    except SnucError as exc:
        print(f"{Path(sys.argv[0]).name}: error: {exc}", file=sys.stderr)
        raise SystemExit(2) from None


def check_common_arguments(parser: argparse.ArgumentParser, args: argparse.Namespace) -> None:
    """Reject option values no run can use (``parser.error`` exits with status 2)."""
    for name in ("epochs", "batch_size", "threads"):
        if getattr(args, name) < 1:
            parser.error(f"--{name.replace('_', '-')} must be at least 1")
    if args.limit is not None and args.limit < 1:
        parser.error("--limit must be at least 1")
    if args.patience < 1:
        parser.error("--patience must be at least 1")
    if not args.lr > 0:
        parser.error("--lr must be positive")
    if args.out.suffix != ".onnx":
        parser.error(f"--out {args.out}: expected a path ending in .onnx")


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


def threshold_rate(layer: SNU, x: Tensor) -> float:
    """How often the layer's ``s_t + b`` is above zero over the sequence ``x``: its spike
    rate when it spikes; for a soft layer, how often its output is above 1/2."""
    state, above = None, []
    for x_t in x.unbind(0):
        _, state = layer.step(x_t, state)
        above.append((state[0] + layer.bias > 0).float().mean())
    return float(torch.stack(above).mean())


def scale_to_rate(model: SNUNetwork, x: Tensor, target_rate: float) -> list[float]:
    """Scale each SNU layer's weights so it crosses its threshold at ``target_rate`` on ``x``.

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
            if isinstance(layer, SNU):
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
            h = layer(h)
    return gains


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


def save_checkpoint(
    path: Path,
    *,
    model: nn.Module,
    optimizer: torch.optim.Optimizer,
    epoch: int,
    best: BestOnValidation,
    history: list[dict[str, float]],
    train_time_s: float,
) -> None:
    """Write the training state after ``epoch`` (atomically: a crash leaves the old one)."""
    state = {
        "epoch": epoch,
        "model": model.state_dict(),
        "optimizer": optimizer.state_dict(),
        "best": best.state_dict(),
        "history": history,
        "train_time_s": train_time_s,
    }
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    os.close(fd)
    try:
        torch.save(state, tmp)
        os.replace(tmp, path)
    finally:
        Path(tmp).unlink(missing_ok=True)


def load_checkpoint(
    path: Path,
    *,
    model: nn.Module,
    optimizer: torch.optim.Optimizer,
    best: BestOnValidation,
) -> tuple[int, list[dict[str, float]], float]:
    """Restore a state written by :func:`save_checkpoint` into the given objects.

    Returns:
        ``(epoch, history, train_time_s)``: the last finished epoch, the per-epoch log and
        the training time spent so far.

    Raises:
        SnucError: the file is not a checkpoint of this network.
    """
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
        model.load_state_dict(state["model"])
        optimizer.load_state_dict(state["optimizer"])
        best.load_state_dict(state["best"])
    except (KeyError, RuntimeError, ValueError) as exc:
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise SnucError(
            f"checkpoint {path} does not fit this network ({first}); delete it or pass "
            "another --checkpoint"
        ) from None
    return int(state["epoch"]), list(state["history"]), float(state["train_time_s"])


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
    train_epoch: Callable[[int], float],
    validate: Callable[[], float],
    metric: str,
    mode: str,
    on_epoch_end: Callable[[int, float], None] | None = None,
) -> FitResult:
    """Train epoch by epoch, keep the best-on-validation weights, stop early, checkpoint.

    Args:
        model: the network; holds the best weights when this returns.
        optimizer: its optimiser (saved in checkpoints).
        args: the common options (``epochs``, ``patience``, ``checkpoint``).
        train_epoch: trains one epoch (its argument, 1-based) and returns the mean loss.
        validate: the validation metric of the model as it is.
        metric: the metric's name, for the log.
        mode: ``"min"`` or ``"max"``: which way the metric improves.
        on_epoch_end: called with (epoch, validation metric) after each epoch, e.g. to
            step a learning-rate schedule.

    Returns:
        A :class:`FitResult`.
    """
    best = BestOnValidation(mode, args.patience)
    history: list[dict[str, float]] = []
    done, spent_s = 0, 0.0
    if args.checkpoint is not None and args.checkpoint.exists():
        done, history, spent_s = load_checkpoint(
            args.checkpoint, model=model, optimizer=optimizer, best=best
        )
        log(f"resumed from {args.checkpoint} after epoch {done}")
    clock = Stopwatch()
    epoch = done
    while epoch < args.epochs and not best.should_stop:
        epoch += 1
        model.train()
        train_loss = train_epoch(epoch)
        model.eval()
        with torch.no_grad():
            valid = validate()
        improved = best.update(valid, model, epoch)
        history.append({"epoch": epoch, "train_loss": train_loss, "valid": valid})
        mark = " *" if improved else ""
        log(
            f"epoch {epoch:3d}  train loss {train_loss:.4f}  valid {metric} {valid:.4f}{mark}  "
            f"({spent_s + clock.seconds:.0f} s)"
        )
        if on_epoch_end is not None:
            on_epoch_end(epoch, valid)
        if args.checkpoint is not None:
            save_checkpoint(
                args.checkpoint,
                model=model,
                optimizer=optimizer,
                epoch=epoch,
                best=best,
                history=history,
                train_time_s=spent_s + clock.seconds,
            )
    if best.best_epoch is None or best.best_metric is None:
        raise SnucError(f"training produced no finite validation {metric}; lower --lr")
    best.restore(model)
    model.eval()
    return FitResult(
        epochs_run=epoch,
        best_epoch=best.best_epoch,
        best_valid=best.best_metric,
        history=history,
        train_time_s=spent_s + clock.seconds,
        stopped_early=best.should_stop and epoch < args.epochs,
    )


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
    model: nn.Module, out: Path, summary: dict[str, Any], **export_options: Any
) -> dict[str, Any]:
    """Export ``model`` (sequence form, checked with onnxruntime), then write its summary.

    Args:
        model: the trained network; exported as a float32 CPU copy in eval mode.
        out: the ``.onnx`` file; its folder is created if missing.
        summary: what to record; the file name and size are added.
        **export_options: passed to :func:`snuc.frontend.export.export` (``atol``
            defaults to :data:`EXPORT_ATOL`).

    Returns:
        The summary as written to ``out`` with the suffix ``.json``.
    """
    out.parent.mkdir(parents=True, exist_ok=True)
    export(copy.deepcopy(model).cpu(), out, **{"atol": EXPORT_ATOL, **export_options})
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
