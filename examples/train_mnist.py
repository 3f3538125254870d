"""Train the paper's spiking-MNIST networks (SPEC §11) on rate-coded digits.

    python examples/train_mnist.py --model snu7    # writes examples/models/mnist_snu7.onnx
    python examples/train_mnist.py --model ssnu4   # writes examples/models/mnist_ssnu4.onnx

Inputs are Bernoulli rate-coded over :data:`~snuc.datasets.MNIST_STEPS` (20) steps with a
white pixel spiking with probability :data:`~snuc.datasets.MNIST_MAX_RATE` per step, as in
the SNU authors' toolkit; every epoch draws fresh spikes. ``snu7`` is a 7-layer SNU,
784-256×6-10: six layers of spiking SNUs and an affine readout; ``ssnu4`` a 4-layer sSNU,
784-256×3-10: three layers of soft SNUs and an affine readout. The readout gives ten scores
at every step; the class is the argmax of their sum over time
(:func:`snuc.datasets.accuracy_from_counts`), and training minimises the cross-entropy of
their mean over time. An affine readout rather than ten spiking output units: a count of
spikes out of 20 often ties between two classes, which costs accuracy for nothing.

Before training, the weights of each spiking layer are scaled so that it fires at a set
rate on a batch of training digits (a data-driven initialisation in the spirit of LSUV,
Mishkin & Matas 2016): with the default U(±1/√fan-in) weights and a threshold of 1 a deep
spiking stack is silent, and a silent layer passes no gradient to the layers before it.

The last 5,000 training digits are the validation split; the epoch with the best
validation accuracy is kept and scored on the 10,000 test digits, in float32 PyTorch.
"""

from __future__ import annotations

import argparse
import math
from collections.abc import Sequence
from itertools import pairwise
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from _training import (
    MODELS_DIR,
    Stopwatch,
    add_common_arguments,
    check_common_arguments,
    clip_gradients,
    cosine_lr,
    describe,
    epoch_generator,
    export_with_summary,
    fit,
    log,
    make_summary,
    parameter_count,
    progress,
    set_lr,
    setup,
)
from torch import Tensor, nn

from snuc.datasets import (
    MNIST_MAX_RATE,
    MNIST_STEPS,
    accuracy_from_counts,
    iter_rate_coded,
    load_mnist,
    rate_code,
)
from snuc.frontend.layers import SNU, Readout, SNUNetwork, sSNU

PIXELS = 28 * 28
CLASSES = 10
VALID_SIZE = 5_000
"""Digits held out from the end of the training set for validation."""

MODEL_KINDS = {"snu7": (SNU, 6), "ssnu4": (sSNU, 3)}
"""Model name → (hidden layer class, number of hidden layers); the readout adds one."""

EVAL_BATCH = 500


def build_model(kind: str, hidden: int) -> SNUNetwork:
    """784-``hidden``×n-10: n SNU or sSNU layers (decay 0.8, g = ReLU) and an affine readout."""
    cls, depth = MODEL_KINDS[kind]
    sizes = [PIXELS] + [hidden] * depth
    layers: list[nn.Module] = [cls(n_in, n_out) for n_in, n_out in pairwise(sizes)]
    layers.append(Readout(hidden, CLASSES, activation="identity"))
    return SNUNetwork(*layers)


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

    Layer by layer from the input, a bisection on the log of a gain finds the gain at
    which :func:`threshold_rate` over ``x`` (a rate-coded batch) is ``target_rate``; the
    weights are multiplied by it. A spiking layer left at the default initialisation is
    nearly silent; a soft one sits at ``sigmoid(b)`` whatever its input, so both learn
    slowly, or not at all in a deep stack.

    Returns:
        The gain applied to each SNU layer.
    """
    gains = []
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


def batch_loss(model: SNUNetwork, spikes: Tensor, labels: Tensor) -> tuple[Tensor, Tensor]:
    """Cross-entropy of the time-averaged scores (mean over the batch), and the hits."""
    scores = model(spikes).mean(0)
    loss = F.cross_entropy(scores, labels)
    return loss, (scores.argmax(-1) == labels).sum()


def evaluate(
    model: SNUNetwork,
    images: np.ndarray,
    labels: np.ndarray,
    seed: int,
    device: torch.device,
) -> float:
    """Accuracy (in %) on rate-coded ``images``; the spikes are fixed by ``seed``."""
    rng = np.random.default_rng([seed, 2**31])  # never an epoch's key
    hits = 0
    with torch.no_grad():
        for spikes, y in iter_rate_coded(images, labels, MNIST_STEPS, EVAL_BATCH, rng):
            outputs = model(torch.from_numpy(spikes).to(device)).cpu().numpy()
            hits += round(accuracy_from_counts(outputs, y) * len(y))
    return 100.0 * hits / len(labels)


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description=__doc__.split("\n\n")[0],
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    parser.add_argument("--model", choices=tuple(MODEL_KINDS), default="snu7")
    parser.add_argument("--hidden", type=int, default=256, help="units per hidden layer")
    parser.add_argument(
        "--init-rate", type=float, default=0.15,
        help="spike rate each SNU layer is scaled to before training",
    )  # fmt: skip
    parser.add_argument("--clip", type=float, default=1.0, help="gradient-norm clip (0: none)")
    add_common_arguments(parser, out=None, epochs=20, lr=1e-3, batch_size=128, patience=5)
    args = parser.parse_args(argv)
    if args.out is None:
        args.out = MODELS_DIR / f"mnist_{args.model}.onnx"
    check_common_arguments(parser, args)
    if args.hidden < 1:
        parser.error("--hidden must be at least 1")
    if not 0.0 < args.init_rate < 1.0:
        parser.error("--init-rate must be in (0, 1)")
    return args


def main(argv: Sequence[str] | None = None) -> dict[str, Any]:
    """Train, score and export one MNIST model; return its summary (also written as JSON)."""
    args = parse_args(argv)
    device = setup(args)
    total = Stopwatch()
    images, labels = load_mnist("train", args.data_dir)
    train_x, train_y = images[:-VALID_SIZE], labels[:-VALID_SIZE]
    valid_x, valid_y = images[-VALID_SIZE:], labels[-VALID_SIZE:]
    test_x, test_y = load_mnist("test", args.data_dir)
    if args.limit is not None:
        train_x, train_y = train_x[: args.limit], train_y[: args.limit]
        valid_x, valid_y = valid_x[: args.limit], valid_y[: args.limit]
        test_x, test_y = test_x[: args.limit], test_y[: args.limit]

    model = build_model(args.model, args.hidden)
    sample = rate_code(train_x[:512], MNIST_STEPS, np.random.default_rng([args.seed, 2**32]))
    gains = scale_to_rate(model, torch.from_numpy(sample), args.init_rate)
    model.to(device)
    optimizer = torch.optim.Adam(model.parameters(), lr=args.lr)
    log(f"{args.model}: {describe(model)} ({parameter_count(model)} parameters, {device})")
    log(f"weight gains for a {args.init_rate} spike rate: {[round(g, 3) for g in gains]}")

    def train_epoch(epoch: int) -> float:
        set_lr(optimizer, cosine_lr(args.lr, epoch, args.epochs))
        rng = epoch_generator(args.seed, epoch)
        order = rng.permutation(len(train_x))
        starts = range(0, len(order), args.batch_size)
        loss_sum, hits, seen = 0.0, 0, 0
        bar = progress(starts, desc=f"epoch {epoch}", enabled=not args.no_progress)
        for start in bar:
            idx = order[start : start + args.batch_size]
            spikes = torch.from_numpy(rate_code(train_x[idx], MNIST_STEPS, rng)).to(device)
            y = torch.from_numpy(train_y[idx]).to(device)
            loss, batch_hits = batch_loss(model, spikes, y)
            optimizer.zero_grad()
            loss.backward()
            clip_gradients(model, args.clip)
            optimizer.step()
            loss_sum += loss.item() * len(idx)
            hits += int(batch_hits)
            seen += len(idx)
        log(f"  train accuracy {100.0 * hits / seen:.2f} %")
        return loss_sum / seen

    result = fit(
        model,
        optimizer,
        args,
        train_epoch=train_epoch,
        validate=lambda: evaluate(model, valid_x, valid_y, args.seed, device),
        metric="accuracy %",
        mode="max",
    )
    test_acc = evaluate(model, test_x, test_y, args.seed + 1, device)
    log(f"best epoch {result.best_epoch}: valid {result.best_valid:.2f} %, test {test_acc:.2f} %")
    depth = MODEL_KINDS[args.model][1]
    summary = make_summary(
        task="mnist",
        name=f"mnist_{args.model}",
        architecture=f"784-{args.hidden}x{depth}-10: {describe(model)}",
        model=model,
        metric="accuracy % (argmax of the outputs summed over time, float32 PyTorch)",
        result=result,
        test=test_acc,
        args=args,
        device=device,
        started=total,
        input=f"Bernoulli rate code, {MNIST_STEPS} steps, max rate {MNIST_MAX_RATE}",
    )
    return export_with_summary(model, args.out, summary, input_features=PIXELS)


if __name__ == "__main__":
    main()
