"""snuc: compile spiking-neural-unit networks for simulated phase-change-memory chips.

import snuc
art = snuc.compile("model.onnx", target="pcm-256x256")   # an Artefact, in memory
art = snuc.compile(module, example=x)                   # a torch.nn.Module, exported for you
art = snuc.compile(onnx_model)  # an onnx.ModelProto;  snuc.compile(nir_graph, dt=1e-3)
art.save("model.snuc");  art = snuc.load("model.snuc")
art.report                                              # the dict of report.json
art.run(x, mode="pcm", seed=0)                          # = art.run(x, snuc.RunConfig("pcm"))
"""

from snuc.ir.errors import SnucError

__version__ = "0.1.0"

from snuc.runtime.artefact import Artefact, load  # noqa: E402 -- after __version__
from snuc.runtime.config import RunConfig  # noqa: E402


def compile(model, target=None, **options):  # noqa: A001 -- SPEC §8 names it compile
    """Compile a model for a target; see :func:`snuc.driver.compile_model`.

    ``model``: a path, an ``onnx.ModelProto``, a ``torch.nn.Module`` (with ``example=``)
    or an ``nir.NIRGraph`` (with ``dt=``).
    """
    from snuc.driver import compile_model

    return compile_model(model, target, **options)


__all__ = ["Artefact", "RunConfig", "SnucError", "__version__", "compile", "load"]
