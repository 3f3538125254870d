"""Write random spike trains for ``examples/snu_small.onnx``: ``X[T=50, B=4, 32]``.

    python examples/make_input.py OUT.npy [--steps T] [--batch B] [--rate P] [--seed N]

Each input is a Bernoulli spike train (1 with probability P per step), float32, the
time-major layout ``snuc run`` reads.
"""

from __future__ import annotations

import argparse

import numpy as np


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("out", help="where to write the .npy")
    parser.add_argument("--steps", type=int, default=50)
    parser.add_argument("--batch", type=int, default=4)
    parser.add_argument("--features", type=int, default=32)
    parser.add_argument("--rate", type=float, default=0.3)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    rng = np.random.default_rng(args.seed)
    x = (rng.random((args.steps, args.batch, args.features)) < args.rate).astype(np.float32)
    np.save(args.out, x)
    print(f"wrote {args.out}: spikes [{args.steps}, {args.batch}, {args.features}]")


if __name__ == "__main__":
    main()
