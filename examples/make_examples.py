"""Write the small example models shipped in examples/ (needs the torch extra).

    python examples/make_examples.py

``snu_small.onnx`` is an untrained 32-48-10 SNU network with a recurrent sSNU layer and
a sigmoid readout (fixed seed): small enough to read its IR in full, and it exercises
every SNU flavour the compiler lifts. The trained paper models live in
``examples/models/``, made by the training scripts beside this file.
"""

from __future__ import annotations

from pathlib import Path

import torch

from snuc.frontend.export import export
from snuc.frontend.layers import SNU, Readout, SNUNetwork, sSNU

HERE = Path(__file__).resolve().parent


def snu_small() -> SNUNetwork:
    torch.manual_seed(0)
    return SNUNetwork(
        SNU(32, 48, decay=0.8, bias_init=-1.0),
        sSNU(48, 24, recurrent=True, decay=0.6, bias_init=-0.5),
        Readout(24, 10, activation="sigmoid"),
    )


def main() -> None:
    path = export(snu_small(), HERE / "snu_small.onnx")
    print(f"wrote {path.relative_to(HERE.parent)}")


if __name__ == "__main__":
    main()
