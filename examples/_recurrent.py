"""LSTM and GRU baselines for the training scripts: the network and its ONNX export.

The paper compares SNUs with LSTM and GRU networks (Woźniak et al. 2020); these are those
networks, written with ``nn.LSTM`` and ``nn.GRU`` so that their ONNX export holds the
sequence-level ``LSTM`` and ``GRU`` nodes that snuc lowers (SPEC §2.1). The export uses
the legacy exporter (``dynamo=False``), which keeps the sequence length dynamic (the dynamo
exporter fixes it to the example's), and checks onnxruntime against PyTorch on random
sequences of several lengths.
"""

from __future__ import annotations

import copy
import warnings
from pathlib import Path
from typing import Any

import numpy as np
import onnxruntime as ort
import torch
from _training import EXPORT_ATOL, make_readable, summary_path, write_json
from torch import Tensor, nn

from snuc.ir.errors import SnucError

KINDS = {"lstm": nn.LSTM, "gru": nn.GRU}
"""The recurrent unit types, by the name the scripts' ``--model`` takes."""


class RecurrentNetwork(nn.Module):
    """``features``-``hidden``-``outputs``: one LSTM or GRU layer and a sigmoid readout.

    Time-major like :class:`snuc.frontend.layers.SNUNetwork`: ``[T, B, features]`` in,
    ``[T, B, outputs]`` probabilities out.
    """

    def __init__(self, kind: str, features: int, hidden: int, outputs: int) -> None:
        super().__init__()
        self.kind = kind
        self.rnn = KINDS[kind](features, hidden)
        self.readout = nn.Linear(hidden, outputs)

    def logits(self, x: Tensor) -> Tensor:
        """The readout's pre-sigmoid values ``[T, B, outputs]``."""
        hidden, _ = self.rnn(x)
        return self.readout(hidden)

    def forward(self, x: Tensor) -> Tensor:
        return torch.sigmoid(self.logits(x))

    def describe(self) -> str:
        """One line like :func:`_training.describe`'s."""
        rnn, out = self.rnn, self.readout
        return (
            f"{type(rnn).__name__}({rnn.input_size}, {rnn.hidden_size}) -> "
            f"Readout({out.in_features}, {out.out_features}, sigmoid)"
        )


def export_recurrent(model: RecurrentNetwork, path: Path, *, atol: float, seed: int = 0) -> None:
    """Write ``model`` as ONNX (input ``X[T, B, F]``, output ``Y``) and check it.

    Raises:
        SnucError: onnxruntime differs from PyTorch by more than ``atol`` on some check.
    """
    net = copy.deepcopy(model).cpu().float().eval()
    features = net.rnn.input_size
    tmp = path.with_name(path.name + ".partial")  # beside it: the move stays on one disk
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # the exporter's notes on nn.LSTM's batch_first
            torch.onnx.export(
                net,
                (torch.zeros(3, 2, features),),
                tmp,
                dynamo=False,
                input_names=["X"],
                output_names=["Y"],
                dynamic_axes={"X": {0: "T", 1: "B"}, "Y": {0: "T", 1: "B"}},
            )
        session = ort.InferenceSession(str(tmp), providers=["CPUExecutionProvider"])
        rng = np.random.default_rng(seed)
        for steps, batch in ((1, 1), (7, 3), (50, 2)):
            x = (rng.random((steps, batch, features)) < 0.3).astype(np.float32)
            want = net(torch.from_numpy(x)).detach().numpy()
            got = session.run(None, {"X": x})[0]
            worst = float(np.abs(got - want).max())
            if worst > atol:
                raise SnucError(
                    f"{path}: onnxruntime differs from PyTorch by {worst:g} on a [{steps}, "
                    f"{batch}] input (allowed {atol:g})"
                )
        tmp.replace(path)
    finally:
        tmp.unlink(missing_ok=True)


def export_with_summary(
    model: RecurrentNetwork, out: Path, summary: dict[str, Any], *, check_seed: int = 0
) -> dict[str, Any]:
    """:func:`_training.export_with_summary` for these networks: export, check, summary."""
    out.parent.mkdir(parents=True, exist_ok=True)
    export_recurrent(model, out, atol=EXPORT_ATOL, seed=check_seed)
    make_readable(out)
    summary = {**summary, "onnx": out.name, "onnx_bytes": out.stat().st_size}
    write_json(summary_path(out), summary)
    return summary
