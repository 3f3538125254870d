"""snuc.passes: graph-to-graph passes, their registry and the default pipeline.

Importing the package registers every pass (each module registers its own).
"""

from snuc.passes.base import (
    DEFAULT_PIPELINE,
    LIFT_PASSES,
    PASSES,
    DeadCode,
    Match,
    Pass,
    Verify,
    default_pipeline,
    get_pass,
    pass_names,
    register_pass,
    run_pipeline,
)
from snuc.passes.canonicalize import Canonicalize
from snuc.passes.lift_neurons import CarrySpikes as CarrySpikes
from snuc.passes.lift_neurons import LiftNeurons as LiftNeurons
from snuc.passes.lift_snu import LiftSNU, SNUMatch, match_snu
from snuc.passes.lower_conv import LowerConv as LowerConv
from snuc.passes.placement import Place as Place
from snuc.passes.quantize import Quantize as Quantize
from snuc.passes.schedule import SchedulePass as SchedulePass
from snuc.passes.tiling import Tile as Tile

__all__ = [
    "DEFAULT_PIPELINE",
    "LIFT_PASSES",
    "PASSES",
    "Canonicalize",
    "DeadCode",
    "LiftSNU",
    "Match",
    "Pass",
    "SNUMatch",
    "Verify",
    "default_pipeline",
    "get_pass",
    "match_snu",
    "pass_names",
    "register_pass",
    "run_pipeline",
]
