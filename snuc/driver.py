"""The driver: wires the stages of snuc together (import, passes, report, artefact).

Only this module and the CLI import every stage (STYLE.md "Layout").
"""

from __future__ import annotations

import os
from collections.abc import Callable, Mapping
from pathlib import Path

import numpy as np

from snuc.backends.asm import print_program
from snuc.backends.program import emit_program
from snuc.backends.schedule import ModuloSchedule, schedule_graph
from snuc.frontend.onnx_import import import_onnx
from snuc.ir.errors import SnucError
from snuc.ir.graph import Graph
from snuc.ir.target import DEFAULT_TARGET, TargetSpec, parse_target, with_overrides
from snuc.ir.text import print_graph
from snuc.passes import DEFAULT_PIPELINE, LIFT_PASSES, Pass, default_pipeline, run_pipeline
from snuc.passes.placement import Place, check_duplicate
from snuc.passes.quantize import Quantize
from snuc.passes.report import mapping_report
from snuc.runtime.artefact import Artefact
from snuc.runtime.calibration import calibrate
from snuc.runtime.io import read_array

IMPORT_STAGE = "import"

After = Callable[[str, Graph], None]


def stage_names() -> list[str]:
    """Names accepted by ``--print-after``: ``import`` then every pass of the pipeline.

    Only the passes :func:`lower` runs: a registered pass outside the default pipeline
    (``schedule``: the driver schedules with :func:`schedule_graph`) never reaches ``after``.
    """
    return [IMPORT_STAGE, *dict.fromkeys(DEFAULT_PIPELINE)]


def resolve_target(
    target: str | os.PathLike | TargetSpec | None, chips: int | None = None
) -> TargetSpec:
    """A TargetSpec from a name, a TOML path or a spec, with ``--chips`` applied."""
    if not isinstance(target, TargetSpec):
        target = parse_target(DEFAULT_TARGET if target is None else target)
    if chips is not None:
        target = with_overrides(target, chips=chips)
    return target


def import_model(path: str | os.PathLike, state_pairs: Mapping[str, str] | None = None) -> Graph:
    """Read an ONNX model (sequence or step form) into a verified step graph."""
    return import_onnx(path, state_pairs=state_pairs)


def load_calibration(path: str | os.PathLike) -> np.ndarray:
    """The ``--calibrate`` samples: a ``.npy`` array ``[T, B, ...]`` (never unpickled)."""
    return read_array(path, "calibration file")


def lower(
    graph: Graph,
    target: TargetSpec | None = None,
    *,
    calibration: np.ndarray | None = None,
    placement: str = "pack",
    duplicate: int = 1,
    after: After | None = None,
    lift: bool = True,
) -> Graph:
    """Run the default pipeline over ``graph``; ``after(stage, graph)`` sees every stage.

    With ``calibration`` samples, the quantize pass takes its DAC and ADC ranges from a
    float run of the mapped graph on them (SPEC §6) instead of the guaranteed ranges.
    ``placement`` and ``duplicate`` are the place pass's strategy (``pack`` or
    ``spread``) and copies of busy crossbars (docs/isa.md "Tile duplication").
    ``lift=False`` leaves out the passes that lift neurons (:data:`LIFT_PASSES`).
    """
    if after is not None:
        after(IMPORT_STAGE, graph)
    place = Place(strategy=placement, duplicate=duplicate)
    pipeline = [p for p in default_pipeline() if lift or p.name not in LIFT_PASSES]
    passes: list[Pass] = [place if p.name == Place.name else p for p in pipeline]
    if calibration is None:
        return run_pipeline(graph, target, passes, after=after)
    split = next(i for i, p in enumerate(passes) if p.name == Quantize.name)
    graph = run_pipeline(graph, target, passes[:split], after=after)
    found = calibrate(graph, calibration, target)
    passes[split] = Quantize(ranges=found.ranges, adc=found.adc)
    return run_pipeline(graph, target, passes[split:], after=after)


def build_report(graph: Graph, target: TargetSpec, schedule: ModuloSchedule) -> dict:
    """report.json: the mapping's and the schedule's figures (SPEC §7)."""
    return {**mapping_report(graph, target), **schedule.summary()}


def compile_model(
    model: str | os.PathLike,
    target: str | os.PathLike | TargetSpec | None = None,
    *,
    chips: int | None = None,
    state_pairs: Mapping[str, str] | None = None,
    calibrate: str | os.PathLike | np.ndarray | None = None,
    placement: str = "pack",
    duplicate: int = 1,
    after: After | None = None,
    lift: bool = True,
) -> Artefact:
    """Compile an ONNX model for a target into an in-memory artefact (``snuc.compile``).

    ``placement="spread"`` gives every tile a crossbar of its own (more crossbars, no MVMs
    queueing for a shared one); the default ``"pack"`` uses the fewest crossbars.
    ``duplicate=K`` (``--duplicate``) gives every crossbar with more than 1/K of the
    busiest crossbar's MVM work K copies on spare crossbars, timestep t served by copy
    ``t mod K``: more crossbars for a shorter timestep (docs/isa.md "Tile duplication").
    ``lift=False`` (``--no-lift``) keeps neurons as loose digital ops, for comparisons.
    """
    check_duplicate(duplicate)
    spec = resolve_target(target, chips)
    samples = load_calibration(calibrate) if isinstance(calibrate, str | os.PathLike) else calibrate
    graph = lower(
        import_model(model, state_pairs),
        spec,
        calibration=samples,
        placement=placement,
        duplicate=duplicate,
        after=after,
        lift=lift,
    )
    schedule = schedule_graph(graph, spec)
    return Artefact(
        graph=graph,
        target=spec.to_dict(),
        report=build_report(graph, spec, schedule),
        program=print_program(emit_program(graph, schedule)),
        source=Path(model).name,
    )


def default_artefact_path(model: str | os.PathLike) -> Path:
    """Where ``snuc compile`` writes without ``-o``: beside the model, ``.snuc`` suffix."""
    return Path(model).with_suffix(".snuc")


def emit_ir(
    model: str | os.PathLike,
    *,
    state_pairs: Mapping[str, str] | None = None,
    target: TargetSpec | None = None,
    print_after: str | None = None,
    calibrate: str | os.PathLike | None = None,
    placement: str = "pack",
    duplicate: int = 1,
    lift: bool = True,
) -> str:
    """The text IR of ``model`` after the whole pipeline, or after the stage ``print_after``."""
    if print_after is not None and print_after not in stage_names():
        raise SnucError(
            f"unknown pass {print_after!r} for --print-after; expected one of "
            f"{', '.join(stage_names())}"
        )
    dumps: dict[str, str] = {}

    def keep(stage: str, g: Graph) -> None:
        if stage == print_after and stage not in dumps:
            dumps[stage] = print_graph(g)

    art = compile_model(
        model,
        target,
        state_pairs=state_pairs,
        calibrate=calibrate,
        placement=placement,
        duplicate=duplicate,
        after=keep,
        lift=lift,
    )
    if print_after is not None:
        return dumps[print_after]
    return print_graph(art.graph)
