"""Write calibration inputs for ``snuc compile --calibrate`` from a task's training split.

    python examples/make_calibration.py {jsb,mnist,ptb} OUT.npy [--size N] [--data-dir DIR]

The quantize pass sets each tile's DAC and ADC ranges from the values these inputs
produce (docs/quantization.md) instead of from worst-case bounds on the weights, which
waste ADC resolution on wide layers: the PTB model's 10,000-word readout loses about 10 %
perplexity to its 8-bit ADC with the default ranges and almost nothing calibrated
(docs/results.md). The inputs come from the *training* split only, never from the split
that is scored:

- ``jsb``: the first N training chorales, zero-padded to the longest (``[T, N, 88]``);
- ``mnist``: the first N training digits, rate-coded over 20 steps with coding seed 1
  (``[20, N, 784]``; the scored splits use seed 0);
- ``ptb``: the first 2,000 × N tokens of the training stream as 10 columns
  (``int64 [200 N, 10]``, :func:`snuc.datasets.batchify`).
"""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np

from snuc.datasets import (
    MNIST_STEPS,
    batchify,
    iter_scoring_spikes,
    load_jsb,
    load_mnist,
    load_ptb,
    pad_sequences,
)
from snuc.ir.errors import SnucError
from snuc.runtime.io import write_outputs

PTB_COLUMNS = 10
DEFAULT_SIZE = {"jsb": 32, "mnist": 256, "ptb": 10}


def calibration_inputs(task: str, size: int, data_dir: str | None) -> np.ndarray:
    """The calibration array of ``task`` (see the module docstring) from ``size`` items."""
    if task == "jsb":
        x, _ = pad_sequences(load_jsb("train", data_dir)[:size])
        return x
    if task == "mnist":
        images, labels = load_mnist("train", data_dir)
        blocks = iter_scoring_spikes(images[:size], labels[:size], MNIST_STEPS, coding_seed=1)
        return np.concatenate([spikes for spikes, _ in blocks], axis=1)
    ids = load_ptb("train", data_dir)
    return batchify(ids[: 200 * PTB_COLUMNS * size], PTB_COLUMNS)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("task", choices=sorted(DEFAULT_SIZE))
    parser.add_argument("out", type=Path, help="where to write the .npy")
    parser.add_argument(
        "--size", type=int, default=None,
        help="chorales (jsb), digits (mnist) or stretches of 2,000 tokens (ptb); default: "
        + ", ".join(f"{k} {v}" for k, v in DEFAULT_SIZE.items()),
    )  # fmt: skip
    parser.add_argument("--data-dir", default=None, help="default: $SNUC_DATA or ../shared/data")
    args = parser.parse_args(argv)
    size = DEFAULT_SIZE[args.task] if args.size is None else args.size
    if size < 1:
        parser.error("--size must be at least 1")
    if args.out.suffix != ".npy":
        parser.error(f"the output must be a .npy file, got {args.out}")
    try:
        x = calibration_inputs(args.task, size, args.data_dir)
        write_outputs(args.out, x)  # atomic: a failed write leaves nothing behind
    except SnucError as exc:
        parser.exit(2, f"{parser.prog}: error: {exc}\n")
    print(f"wrote {args.out}: {x.dtype} {list(x.shape)} from the {args.task} training split")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
