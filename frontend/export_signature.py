"""What one step of an exported network takes and carries: the exporter's and its check's.

The state slots of a network (found by running one step from the zero state), its step
signature, the names of the sequence model's input and output, and the two naming helpers
for ONNX graphs that both :mod:`snuc.frontend.export` and :mod:`snuc.frontend.export_check`
use.
"""

from __future__ import annotations

from dataclasses import dataclass

import onnx
import torch
from torch import nn

from snuc.frontend.layers import SNUNetwork, TimeMajor, layer_step
from snuc.ir.errors import SnucError

X_NAME, Y_NAME = "X", "Y"

EXAMPLE_BATCH = 2  # not 0 or 1: torch.export would specialise the batch axis to it


@dataclass(frozen=True)
class Slot:
    """One state tensor of the network.

    Attributes:
        name: the step graph's state input, ``layers.<i>.<state>``; the output is
            ``<name>_next``.
        shape: one sample's shape (no batch axis).
    """

    name: str
    shape: tuple[int, ...]

    @property
    def next_name(self) -> str:
        return f"{self.name}_next"


@dataclass(frozen=True)
class Signature:
    """What one step of the network takes and carries.

    Attributes:
        features: one sample's input shape at one step (``()`` for token ids).
        dtype: ``torch.float32`` or ``torch.int64`` (token ids).
        vocab: the number of token ids (int64 input only).
        slots: the state tensors, layer by layer.
        counts: how many state tensors each layer has.
    """

    features: tuple[int, ...]
    dtype: torch.dtype
    vocab: int | None
    slots: tuple[Slot, ...]
    counts: tuple[int, ...]


def example_step_input(features: tuple[int, ...], dtype: torch.dtype, vocab: int | None):
    gen = torch.Generator().manual_seed(0)
    if dtype == torch.int64:
        return torch.randint(0, vocab, (EXAMPLE_BATCH,), generator=gen)
    return torch.rand((EXAMPLE_BATCH, *features), generator=gen)


def state_slots(
    net: SNUNetwork, features: tuple[int, ...], dtype: torch.dtype
) -> tuple[tuple[Slot, ...], tuple[int, ...]]:
    """Run one step from the zero state to learn every state's name and shape."""
    first = net.layers[0]
    vocab = first.num_embeddings if isinstance(first, nn.Embedding) else None
    x_t = example_step_input(features, dtype, vocab)
    slots: list[Slot] = []
    counts: list[int] = []
    for i, layer in enumerate(net.layers):
        try:
            with torch.no_grad():
                x_t, state = layer_step(layer, x_t, None)
        except (RuntimeError, ValueError, IndexError, TypeError) as exc:
            shape = ", ".join(["B", *map(str, features)])
            raise SnucError(
                f"layers.{i} ({type(layer).__name__}) fails on the network's step input "
                f"[{shape}]: {first_line(exc)}; check input_features and the layer sizes"
            ) from exc
        names = layer.state_names if isinstance(layer, TimeMajor) else ()
        if len(names) != len(state):
            raise SnucError(
                f"layers.{i} ({type(layer).__name__}) returns {len(state)} state tensors "
                f"but names {len(names)} in state_names; make them agree"
            )
        slots += [
            Slot(f"layers.{i}.{name}", tuple(t.shape[1:]))
            for name, t in zip(names, state, strict=True)
        ]
        counts.append(len(state))
    return tuple(slots), tuple(counts)


def first_line(exc: BaseException) -> str:
    for line in str(exc).splitlines():
        if line.strip():
            return line.strip()
    return "no message"


def fresh_name(name: str, taken: set[str]) -> str:
    candidate, k = name, 1
    while candidate in taken:
        candidate, k = f"{name}_{k}", k + 1
    taken.add(candidate)
    return candidate


def names_in(graph: onnx.GraphProto) -> set[str]:
    names = {v.name for v in graph.input} | {v.name for v in graph.initializer}
    return names | {out for node in graph.node for out in node.output}
