"""Train an SNU language model on the Penn Treebank (SPEC §11).

    python examples/train_ptb.py                  # writes examples/models/ptb_snu.onnx
    python examples/train_ptb.py --model ssnu     # writes examples/models/ptb_ssnu.onnx

The network reads a token id per step and gives the log-probabilities of the next token
over the 10,000-word vocabulary: an embedding, layers of units, and a log-softmax readout
whose weight matrix is the embedding's (tied weights, Press & Wolf 2017), which halves the
model's size. ``snu`` (the paper's feed-forward SNU model): spiking SNUs without recurrent
weights (the membrane potential, with a trainable decay per neuron, is the only memory),
200-1500-200. ``ssnu`` (the paper's recurrent sSNU with tied weights, 108.4 perplexity in
its Fig. 2): recurrent soft SNUs, 200-200-200 by default, the size of the small LSTM it is
compared with (Zaremba et al. 2014: two layers of 200), g = identity as in the authors'
OSTL code, a trainable decay per neuron from 0.8. REFERENCE.md does not record the
paper's layer sizes for either model. Before training, each layer's input weights are
scaled so that it crosses its threshold at ``--init-rate`` on a stretch of the train
stream (:func:`_training.scale_to_rate`); at the default initialisation a spiking layer
would be silent.

Training is truncated backpropagation through time over windows of ``--bptt`` (35) tokens
on ``--batch-size`` contiguous columns of the train stream (:func:`snuc.datasets.batchify`),
the states carried from window to window. Validation and test perplexity run each split
as ``--eval-batch`` columns from the zero state to the end, the state carried through, in
float32 PyTorch; the epoch with the best validation perplexity is kept.
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
    EpochRun,
    Stopwatch,
    add_common_arguments,
    check_common_arguments,
    clip_gradients,
    cosine_lr,
    describe,
    export_with_summary,
    fit,
    initial_scaling,
    log,
    make_summary,
    model_name,
    parameter_count,
    run_cli,
    set_lr,
    setup,
)
from torch import Tensor, nn

from snuc.datasets import PTB_VOCAB_SIZE, batchify, load_ptb
from snuc.frontend.layers import SNU, Readout, SNUNetwork, State, sSNU

RECIPES = {
    "snu": {"hidden": "1500,200", "dropout": 0.1, "lr": 2e-3, "epochs": 8, "patience": 3},
    "ssnu": {"hidden": "200,200", "dropout": 0.2, "lr": 2e-3, "epochs": 30, "patience": 5},
}
"""Per model, the training defaults (``--hidden`` etc. override); ``snu``'s made the
shipped ``ptb_snu``."""


def build_model(
    embed: int, hidden: Sequence[int], dropout: float, tie: bool, kind: str = "snu"
) -> SNUNetwork:
    """Embedding → dropout → layers of units (each followed by dropout) → log-softmax readout.

    Args:
        embed: embedding size.
        hidden: units of each layer; with ``tie`` the last must equal ``embed``.
        dropout: dropout probability while training (0: none).
        tie: share the embedding's weight matrix with the readout.
        kind: ``"snu"``: feed-forward spiking SNUs (g = ReLU); ``"ssnu"``: recurrent soft
            SNUs (g = identity). Either with a trainable decay per neuron from 0.8.
    """
    layers: list[nn.Module] = [nn.Embedding(PTB_VOCAB_SIZE, embed)]
    nn.init.uniform_(layers[0].weight, -0.1, 0.1)
    sizes = [embed, *hidden]
    for n_in, n_out in pairwise(sizes):
        if dropout > 0:
            layers.append(nn.Dropout(dropout))
        decay = torch.full((n_out,), 0.8)
        if kind == "snu":
            layers.append(SNU(n_in, n_out, decay=decay, decay_trainable=True))
        else:
            layers.append(
                sSNU(n_in, n_out, recurrent=True, g="identity", decay=decay, decay_trainable=True)
            )
    if dropout > 0:
        layers.append(nn.Dropout(dropout))
    readout = Readout(sizes[-1], PTB_VOCAB_SIZE, activation="log_softmax")
    if tie:
        readout.linear.weight = layers[0].weight
    layers.append(readout)
    return SNUNetwork(*layers)


def detach(state: State | None) -> State | None:
    """The state with its history cut (truncated BPTT)."""
    if state is None:
        return None
    return tuple(tuple(t.detach() for t in layer_state) for layer_state in state)


def run_window(model: SNUNetwork, x: Tensor, state: State | None) -> tuple[Tensor, State]:
    """Log-probabilities ``[T, B, V]`` for the window ``x[T, B]``, from ``state``."""
    outs = []
    for x_t in x.unbind(0):
        out_t, state = model.step(x_t, state)
        outs.append(out_t)
    return torch.stack(outs), state


def evaluate(model: SNUNetwork, ids: np.ndarray, columns: int, window: int,
             device: torch.device) -> float:  # fmt: skip
    """Perplexity of the stream ``ids`` read as ``columns`` columns from the zero state."""
    data = torch.from_numpy(batchify(ids, columns)).to(device)
    nll, tokens, state = 0.0, 0, None
    with torch.no_grad():
        for start in range(0, data.shape[0] - 1, window):
            x = data[start : start + window]
            y = data[start + 1 : start + 1 + window]
            log_probs, state = run_window(model, x[: len(y)], state)
            nll += F.nll_loss(log_probs.flatten(0, 1), y.flatten(), reduction="sum").item()
            tokens += y.numel()
    return math.exp(nll / tokens)


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description=__doc__.split("\n\n")[0],
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    parser.add_argument("--model", choices=tuple(RECIPES), default="snu")
    parser.add_argument("--embed", type=int, default=200, help="embedding size")
    parser.add_argument(
        "--hidden", default="1500,200",
        help="comma-separated sizes of the layers; with tied weights the last is --embed",
    )  # fmt: skip
    parser.add_argument("--dropout", type=float, default=0.1, help="dropout while training")
    parser.add_argument(
        "--init-rate", type=float, default=0.15,
        help="spike rate each SNU layer is scaled to before training",
    )  # fmt: skip
    parser.add_argument("--no-tie", action="store_true", help="separate readout weights")
    parser.add_argument("--bptt", type=int, default=35, help="tokens per training window")
    parser.add_argument("--eval-batch", type=int, default=10, help="columns when scoring")
    parser.add_argument("--clip", type=float, default=0.25, help="gradient-norm clip (0: none)")
    add_common_arguments(parser, out=None, epochs=8, lr=2e-3, batch_size=32, patience=3)
    # The model's recipe sets the defaults, so read --model first (-h shows them too).
    first = argparse.ArgumentParser(add_help=False)
    first.add_argument("--model", choices=tuple(RECIPES), default="snu")
    chosen, _ = first.parse_known_args(argv)
    parser.set_defaults(**RECIPES[chosen.model])
    args = parser.parse_args(argv)
    if args.out is None:
        args.out = MODELS_DIR / f"{model_name(f'ptb_{args.model}', args)}.onnx"
    check_common_arguments(parser, args)
    try:
        args.hidden = [int(n) for n in args.hidden.split(",")]
    except ValueError:
        parser.error(f"--hidden {args.hidden!r}: expected sizes like 1000,200")
    if min(args.hidden) < 1 or args.embed < 1 or args.bptt < 1 or args.eval_batch < 1:
        parser.error("--embed, --hidden sizes, --bptt and --eval-batch must be at least 1")
    if not args.no_tie and args.hidden[-1] != args.embed:
        parser.error(
            f"tied weights need the last --hidden size ({args.hidden[-1]}) to equal --embed "
            f"({args.embed}); change one or pass --no-tie"
        )
    if not 0.0 <= args.dropout < 1.0:
        parser.error("--dropout must be in [0, 1)")
    if not 0.0 < args.init_rate < 1.0:
        parser.error("--init-rate must be in (0, 1)")
    return args


def main(argv: Sequence[str] | None = None) -> dict[str, Any]:
    """Train, score and export the PTB model; return its summary (also written as JSON)."""
    args = parse_args(argv)
    device = setup(args)
    total = Stopwatch()
    train, valid, test = (load_ptb(split, args.data_dir) for split in ("train", "valid", "test"))
    if args.limit is not None:
        train, valid, test = train[: args.limit], valid[: args.limit], test[: args.limit]
    train_cols = torch.from_numpy(batchify(train, args.batch_size)).to(device)
    model = build_model(args.embed, args.hidden, args.dropout, not args.no_tie, args.model)
    log(f"ptb_{args.model}: {describe(model)} ({parameter_count(model)} parameters, {device})")
    initial_scaling(model, lambda: train_cols[:100].cpu(), args)
    model.to(device)
    optimizer = torch.optim.Adam(model.parameters(), lr=args.lr)

    def train_epoch(epoch: int, run: EpochRun) -> float:
        set_lr(optimizer, cosine_lr(args.lr, epoch, args.epochs))
        torch.manual_seed(args.seed * 100_003 + epoch)  # dropout masks
        starts = range(0, train_cols.shape[0] - 1, args.bptt)
        # The state carried from window to window is saved with a mid-epoch checkpoint.
        sums = run.carry(nll=0.0, tokens=0, state=None)
        for index in run.batches(len(starts), desc=f"epoch {epoch}"):
            start = starts[index]
            x = train_cols[start : start + args.bptt]
            y = train_cols[start + 1 : start + 1 + args.bptt]
            log_probs, state = run_window(model, x[: len(y)], detach(sums["state"]))
            loss = F.nll_loss(log_probs.flatten(0, 1), y.flatten())
            optimizer.zero_grad()
            loss.backward()
            clip_gradients(model, args.clip)
            optimizer.step()
            sums["state"] = detach(state)
            sums["nll"] += loss.item() * y.numel()
            sums["tokens"] += y.numel()
        return sums["nll"] / sums["tokens"]

    result = fit(
        model,
        optimizer,
        args,
        train_epoch=train_epoch,
        validate=lambda: evaluate(model, valid, args.eval_batch, args.bptt, device),
        metric="perplexity",
        mode="min",
    )
    test_ppl = evaluate(model, test, args.eval_batch, args.bptt, device)
    log(f"best epoch {result.best_epoch}: valid {result.best_valid:.2f}, test {test_ppl:.2f}")
    tied = "tied readout" if not args.no_tie else "untied readout"
    summary = make_summary(
        task="ptb",
        name=model_name(f"ptb_{args.model}", args),
        architecture=f"{describe(model)} ({tied})",
        model=model,
        metric=(
            f"perplexity, each split as {args.eval_batch} columns from the zero state "
            "(float32 PyTorch)"
        ),
        result=result,
        test=test_ppl,
        args=args,
        device=device,
        started=total,
    )
    return export_with_summary(model, args.out, summary, check_seed=args.check_seed)


if __name__ == "__main__":
    run_cli(main)
