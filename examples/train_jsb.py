"""Train the paper's music-prediction networks on the JSB chorales (SPEC §11).

    python examples/train_jsb.py --model snu     # writes examples/models/jsb_snu.onnx
    python examples/train_jsb.py --model ssnu    # writes examples/models/jsb_ssnu.onnx
    python examples/train_jsb.py --model lstm    # jsb_lstm.onnx (also gru: jsb_gru.onnx)

Both are 88-150-88 networks (Woźniak et al. 2020, Fig. 2): 88 piano keys in, 150 units,
88 sigmoid outputs. The output at step t is the probability of each note sounding at step
t + 1. ``snu``: a feed-forward layer of spiking SNUs and a sigmoid readout. ``ssnu``: a
recurrent layer of soft SNUs with decay 0.4 and g = identity, as in the authors' OSTL code,
and a sigmoid readout. ``lstm``, ``gru``: the paper's comparison, one ``nn.LSTM`` or
``nn.GRU`` layer sized to the sSNU's parameter count (68 and 81 units) and a sigmoid readout.

Training minimises the protocol's own loss: the binary cross-entropy summed over the 88
notes, averaged over the predicted frames (t + 1 = 1 .. T - 1 of each chorale). Where the
authors used plain SGD (lr 5e-4, one chorale per batch, 100 epochs), this uses Adam on
mini-batches of chorales: it gets to the paper's numbers in a few minutes on a CPU. The
metric is :func:`snuc.datasets.jsb_nll`, the mean NLL per predicted frame, in float32
PyTorch; the epoch with the best validation NLL is kept, then scored on the test split.
"""

from __future__ import annotations

import argparse
from collections.abc import Sequence
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from _recurrent import KINDS, RecurrentNetwork
from _recurrent import export_with_summary as export_recurrent
from _training import (
    MODELS_DIR,
    EpochRun,
    Stopwatch,
    add_common_arguments,
    check_common_arguments,
    clip_gradients,
    cosine_lr,
    describe,
    epoch_generator,
    export_with_summary,
    fit,
    limited,
    log,
    make_summary,
    model_name,
    parameter_count,
    run_cli,
    set_lr,
    setup,
)
from torch import Tensor

from snuc.datasets import PIANO_KEYS, jsb_nll_sum, load_jsb, pad_sequences
from snuc.frontend.layers import SNU, Readout, SNUNetwork, sSNU

RECIPES = {
    "snu": {"lr": 1e-3, "batch_size": 4, "epochs": 200},
    "ssnu": {"lr": 5e-3, "batch_size": 8, "epochs": 200},
    "lstm": {"lr": 5e-3, "batch_size": 8, "epochs": 200, "hidden": 68},
    "gru": {"lr": 1e-2, "batch_size": 8, "epochs": 200, "hidden": 81},
}
"""Per model, the training defaults that made the shipped model (``--lr`` etc. override)."""


def build_model(kind: str, hidden: int) -> SNUNetwork | RecurrentNetwork:
    """The 88-``hidden``-88 network of the given kind.

    Args:
        kind: ``"snu"``: spiking SNUs (g = ReLU, a trainable decay per neuron starting at
            0.8) and an output layer of soft SNUs (g = identity, a trainable decay per
            note starting at 0.5), whose sigmoid outputs are the note probabilities.
            ``"ssnu"``: recurrent soft SNUs (decay 0.4, g = identity, as in the authors'
            OSTL code) and a sigmoid readout. ``"lstm"``, ``"gru"``: one ``nn.LSTM`` or
            ``nn.GRU`` layer and a sigmoid readout.
        hidden: number of units in the hidden layer (the paper's 150).
    """
    if kind in KINDS:
        return RecurrentNetwork(kind, PIANO_KEYS, hidden, PIANO_KEYS)
    if kind == "snu":
        return SNUNetwork(
            SNU(PIANO_KEYS, hidden, decay=torch.full((hidden,), 0.8), decay_trainable=True),
            sSNU(
                hidden,
                PIANO_KEYS,
                g="identity",
                decay=torch.full((PIANO_KEYS,), 0.5),
                decay_trainable=True,
            ),
        )
    return SNUNetwork(
        sSNU(PIANO_KEYS, hidden, recurrent=True, g="identity", decay=0.4),
        Readout(hidden, PIANO_KEYS, activation="sigmoid"),
    )


def note_logits(model: SNUNetwork, x: Tensor) -> Tensor:
    """The output layer's pre-sigmoid values ``[T, B, 88]``, for a numerically stable loss.

    For a sigmoid :class:`Readout` that is its affine map; for a soft SNU output layer it
    is ``s_t + b``, read from the layer's state after each step.
    """
    if isinstance(model, RecurrentNetwork):
        return model.logits(x)
    *body, head = model.layers
    h = x
    for layer in body:
        h = layer(h)
    if isinstance(head, Readout):
        return head.linear(h)
    state, logits = None, []
    for h_t in h.unbind(0):
        _, state = head.step(h_t, state)
        logits.append(state[0] + head.bias)
    return torch.stack(logits)


def frame_mask(lengths: Tensor, steps: int) -> Tensor:
    """``[steps - 1, B]``: True where the output at step t predicts a frame of the chorale."""
    t = torch.arange(steps - 1, device=lengths.device)[:, None]
    return t < (lengths - 1)[None, :]


def batch_loss(model: SNUNetwork, x: Tensor, lengths: Tensor) -> tuple[Tensor, int]:
    """Summed binary cross-entropy over notes and predicted frames, and the frame count."""
    logits = note_logits(model, x)[:-1]
    targets = x[1:]
    mask = frame_mask(lengths, x.shape[0])
    per_note = F.binary_cross_entropy_with_logits(logits, targets, reduction="none")
    return (per_note.sum(-1) * mask).sum(), int(mask.sum())


def evaluate(model: SNUNetwork, rolls: Sequence[np.ndarray], device: torch.device) -> float:
    """Mean NLL per predicted frame of ``rolls`` (:func:`jsb_nll`), pooled over the split."""
    nll, frames = 0.0, 0
    with torch.no_grad():
        for start in range(0, len(rolls), 128):
            X, lengths = pad_sequences(rolls[start : start + 128])
            probs = model(torch.from_numpy(X).to(device)).cpu().numpy()
            part, count = jsb_nll_sum(probs, X, lengths)
            nll, frames = nll + part, frames + count
    return nll / frames


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description=__doc__.split("\n\n")[0],
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    parser.add_argument("--model", choices=tuple(RECIPES), default="snu")
    parser.add_argument("--hidden", type=int, default=150, help="hidden units (paper: 150)")
    parser.add_argument("--clip", type=float, default=5.0, help="gradient-norm clip (0: none)")
    add_common_arguments(parser, out=None, epochs=200, lr=1e-3, batch_size=4, patience=40)
    # The model's recipe sets the defaults, so read --model first (-h shows them too).
    first = argparse.ArgumentParser(add_help=False)
    first.add_argument("--model", choices=tuple(RECIPES), default="snu")
    chosen, _ = first.parse_known_args(argv)
    parser.set_defaults(**RECIPES[chosen.model])
    args = parser.parse_args(argv)
    if args.out is None:
        args.out = MODELS_DIR / f"{model_name(f'jsb_{args.model}', args)}.onnx"
    check_common_arguments(parser, args)
    if args.hidden < 1:
        parser.error("--hidden must be at least 1")
    return args


def main(argv: Sequence[str] | None = None) -> dict[str, Any]:
    """Train, score and export one JSB model; return its summary (also written as JSON)."""
    args = parse_args(argv)
    device = setup(args)
    total = Stopwatch()
    train = limited(load_jsb("train", args.data_dir), args.limit)
    valid = limited(load_jsb("valid", args.data_dir), args.limit)
    test = limited(load_jsb("test", args.data_dir), args.limit)
    model = build_model(args.model, args.hidden).to(device)
    optimizer = torch.optim.Adam(model.parameters(), lr=args.lr)
    layers = model.describe() if isinstance(model, RecurrentNetwork) else describe(model)
    log(f"{args.model}: {layers} ({parameter_count(model)} parameters, {device})")

    def train_epoch(epoch: int, run: EpochRun) -> float:
        set_lr(optimizer, cosine_lr(args.lr, epoch, args.epochs))
        order = epoch_generator(args.seed, epoch).permutation(len(train))
        batches = [order[i : i + args.batch_size] for i in range(0, len(order), args.batch_size)]
        sums = run.carry(nll=0.0, frames=0)
        for index in run.batches(len(batches), desc=f"epoch {epoch}"):
            X, lengths = pad_sequences([train[i] for i in batches[index]])
            loss_sum, count = batch_loss(
                model, torch.from_numpy(X).to(device), torch.from_numpy(lengths).to(device)
            )
            optimizer.zero_grad()
            (loss_sum / count).backward()
            clip_gradients(model, args.clip)
            optimizer.step()
            sums["nll"] += loss_sum.item()
            sums["frames"] += count
        return sums["nll"] / sums["frames"]

    result = fit(
        model,
        optimizer,
        args,
        train_epoch=train_epoch,
        validate=lambda: evaluate(model, valid, device),
        metric="NLL",
        mode="min",
    )
    test_nll = evaluate(model, test, device)
    log(f"best epoch {result.best_epoch}: valid NLL {result.best_valid:.4f}, test {test_nll:.4f}")
    summary = make_summary(
        task="jsb",
        name=model_name(f"jsb_{args.model}", args),
        architecture=f"88-{args.hidden}-88: {layers}",
        model=model,
        metric="mean NLL per predicted frame (nats, float32 PyTorch)",
        result=result,
        test=test_nll,
        args=args,
        device=device,
        started=total,
    )
    export = export_recurrent if isinstance(model, RecurrentNetwork) else export_with_summary
    return export(model, args.out, summary, check_seed=args.check_seed)


if __name__ == "__main__":
    run_cli(main)
