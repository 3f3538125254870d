"""The benchmark's SNU networks on IBM's aihwkit, noisy PCM inference (run by bench/runtime.py).

bench/runtime.py runs this script with the Python of a separate virtualenv where aihwkit is
installed (``--aihwkit-python``; aihwkit is no dependency of snuc, docs/performance.md says
how to install it). It reads the networks' weights and inputs from an ``.npz`` file that
bench/runtime.py writes from snuc's frontend models, so both sides run the same weights on
the same spikes, and prints JSON: sequences per second of each network at each batch size.

Each weight layer is an ``AnalogLinear`` whose inference RPU configuration is as close to
snuc's ``pcm`` mode on ``pcm-256x256`` as aihwkit allows:

* the PCM statistical model (``PCMLikeNoiseModel``, G_max = 25 uS: programming noise,
  drift and read noise, REFERENCE.md's numbers), programmed once and drifted to
  t_inference = 3600 s, with global drift compensation;
* tiles of at most 256 inputs and 128 outputs (256 device columns as differential pairs,
  snuc's crossbar), weights scaled per column (as snuc maps them);
* 8-bit inputs and outputs, no bound or noise management (snuc's converters have fixed
  ranges and read once);
* read noise on every output of every MVM: with aihwkit's compiled tile (``--tile
  rpucuda``, ``InferenceRPUConfig``, the default) its output-referred PCM read noise
  (``w_noise_type = PCM_READ``, ``w_noise = 0.0175`` as aihwkit's own
  ``StandardHWATrainingPreset``), whose width grows with the column's current; its
  pure-torch tile (``--tile torch``, ``TorchInferenceRPUConfig``) has no per-MVM weight
  noise, so there a Gaussian of fixed width (``out_noise = 0.06``, aihwkit's default).

What differs from snuc (docs/performance.md): aihwkit also samples the PCM model's read
noise once, when the weights are drifted (static afterwards), and clips each device at
zero; snuc draws on every output of every MVM a Gaussian whose variance is the sum over
driven rows of (input x per-device sigma)^2, the per-device model summed. Both draw one
normal per output and MVM.

The SNU recurrence is written in torch around the analog layers, layer by layer as snuc's
NumPy backend runs them: one analog product of all ``T * B`` rows, then the neuron loop
over time (``torch.no_grad``).

Usage (normally through bench/runtime.py)::

    AIHWKIT_PYTHON bench/aihwkit_snu.py --input nets.npz --threads 1 [--tile rpucuda|torch]
"""

from __future__ import annotations

import argparse
import json
import sys

from threads import pin_threads

T_INFERENCE = 3600.0
"""Seconds after programming, as snuc's default ``--t-inference``."""


def _arguments() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--input", required=True, help=".npz of weights and inputs")
    parser.add_argument("--threads", type=int, default=1, help="torch and BLAS threads")
    parser.add_argument("--repeats", type=int, default=5, help="timed repeats (best is kept)")
    parser.add_argument("--min-time", type=float, default=0.2, help="seconds per repeat")
    parser.add_argument(
        "--tile",
        choices=("rpucuda", "torch"),
        default="rpucuda",
        help="aihwkit's pure-torch inference tile or its compiled (RPUCuda) one",
    )
    return parser.parse_args()


ARGS = _arguments() if __name__ == "__main__" else None
if ARGS is not None:
    pin_threads(ARGS.threads)  # as bench/runtime.py: before torch and NumPy load

import numpy as np  # noqa: E402


def rpu_config(tile: str):
    """The inference configuration described in the module docstring."""
    from aihwkit.inference import GlobalDriftCompensation, PCMLikeNoiseModel
    from aihwkit.simulator.configs import InferenceRPUConfig, TorchInferenceRPUConfig
    from aihwkit.simulator.parameters.enums import (
        BoundManagementType,
        NoiseManagementType,
        WeightNoiseType,
    )

    config = TorchInferenceRPUConfig() if tile == "torch" else InferenceRPUConfig()
    config.noise_model = PCMLikeNoiseModel(g_max=25.0)
    config.drift_compensation = GlobalDriftCompensation()
    config.mapping.max_input_size = 256
    config.mapping.max_output_size = 128
    config.mapping.weight_scaling_omega = 1.0
    config.mapping.weight_scaling_columnwise = True
    config.forward.inp_res = 1 / 127  # 8 bits over [-1, 1]
    config.forward.out_res = 1 / 127
    config.forward.bound_management = BoundManagementType.NONE
    config.forward.noise_management = NoiseManagementType.NONE
    if tile == "rpucuda":  # the torch tile refuses weight noise
        config.forward.out_noise = 0.0
        config.forward.w_noise_type = WeightNoiseType.PCM_READ
        config.forward.w_noise = 0.0175
    return config


class AnalogSNUNetwork:
    """One benchmark network: analog layers with the SNU (or readout) step in torch."""

    def __init__(self, layers: list[dict], tile: str) -> None:
        import torch
        from aihwkit.nn import AnalogLinear

        self.layers = []
        self.tiles = 0
        for layer in layers:
            weight = torch.from_numpy(layer["weight"])
            out_features, in_features = weight.shape
            readout = layer["kind"] == "readout"
            analog = AnalogLinear(
                in_features, out_features, bias=readout, rpu_config=rpu_config(tile)
            )
            analog.set_weights(weight, torch.from_numpy(layer["bias"]) if readout else None)
            analog.eval()
            self.tiles += getattr(analog.analog_module, "analog_tile_count", 1)
            analog.program_analog_weights()
            analog.drift_analog_weights(T_INFERENCE)
            self.layers.append(
                (
                    analog,
                    layer["kind"],
                    torch.from_numpy(layer["bias"]),
                    torch.from_numpy(layer["decay"]),
                )
            )

    def run(self, x):
        """Outputs ``[T, B, out]`` of the spike inputs ``x`` ``[T, B, in]`` (a torch tensor)."""
        import torch

        steps, batch = x.shape[:2]
        h = x
        with torch.no_grad():
            for analog, kind, bias, decay in self.layers:
                a = analog(h.reshape(steps * batch, -1)).reshape(steps, batch, -1)
                h = torch.sigmoid(a) if kind == "readout" else snu_steps(a, bias, decay)
        return h


def snu_steps(a, bias, decay):
    """The SNU's outputs over time from its synaptic inputs ``a`` ``[T, B, N]`` (frontend
    ``SNU.step``: ``s = relu(a + decay * s_prev * (1 - y_prev))``, ``y = s + b > 0``)."""
    import torch

    y = torch.empty_like(a)
    s = torch.relu(a[0])
    y[0] = (s + bias > 0).to(a.dtype)
    for t in range(1, a.shape[0]):
        s = torch.relu(a[t] + decay * s * (1.0 - y[t - 1]))
        y[t] = (s + bias > 0).to(a.dtype)
    return y


def read_input(path: str) -> tuple[dict, dict]:
    """The networks' layers and inputs from bench/runtime.py's ``.npz`` file."""
    data = np.load(path)
    spec = json.loads(str(data["spec"]))
    networks = {}
    for name, count in spec["layers"].items():
        networks[name] = [
            {
                "kind": str(data[f"{name}/{i}/kind"]),
                "weight": data[f"{name}/{i}/weight"],
                "bias": data[f"{name}/{i}/bias"],
                "decay": data[f"{name}/{i}/decay"],
            }
            for i in range(count)
        ]
    inputs = {(name, int(batch)): data[f"{name}/x/{batch}"] for name, batch in spec["inputs"]}
    return networks, inputs


def main(args: argparse.Namespace) -> int:
    import aihwkit
    import torch

    from runtime import best_time  # bench/runtime.py: the same timing loop

    torch.set_num_threads(args.threads)
    torch.set_num_interop_threads(1)
    networks, inputs = read_input(args.input)
    built = {name: AnalogSNUNetwork(layers, args.tile) for name, layers in networks.items()}
    runners = {}
    for (name, batch), x in inputs.items():
        xt = torch.from_numpy(x)
        runners[f"{name}/{batch}"] = lambda net=built[name], xt=xt: net.run(xt)
    seconds = best_time(runners, args.repeats, args.min_time)
    result = {
        "aihwkit": aihwkit.__version__,
        "torch": torch.__version__,
        "tile": args.tile,
        "tile_class": rpu_config(args.tile).tile_class.__name__,
        "tiles": {name: net.tiles for name, net in built.items()},
        "threads": args.threads,
        "t_inference_s": T_INFERENCE,
        "rows": [
            {"network": name, "batch": batch, "seconds": seconds[f"{name}/{batch}"],
             "seq_per_s": batch / seconds[f"{name}/{batch}"]}
            for name, batch in inputs
        ],
    }  # fmt: skip
    json.dump(result, sys.stdout)
    sys.stdout.write("\n")
    return 0


if __name__ == "__main__":
    sys.exit(main(ARGS))
