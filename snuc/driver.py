"""The driver: wires the stages of snuc together (import, passes, report, artefact).

Only this module and the CLI import every stage (STYLE.md "Layout").
"""

from __future__ import annotations

import contextlib
import io
import os
import tempfile
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

import numpy as np
import onnx

from snuc.backends.asm import print_program
from snuc.backends.program import emit_program
from snuc.backends.schedule import ModuloSchedule, schedule_graph
from snuc.frontend.nir_import import is_nir_file
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


def import_model(
    path: str | os.PathLike | onnx.ModelProto, state_pairs: Mapping[str, str] | None = None
) -> Graph:
    """Read an ONNX model (sequence, step or unrolled form) into a verified step graph."""
    return import_onnx(path, state_pairs=state_pairs)


# ---------------------------------------------------------------------- model sources


def as_onnx(
    model: Any,
    *,
    example: Any = None,
    dt: float | None = None,
    discretize: str = "euler",
) -> tuple[str | os.PathLike | onnx.ModelProto, str]:
    """What :func:`import_model` reads for each kind of model ``snuc.compile`` takes.

    Args:
        model: a path (``.onnx``, or ``.nir``), an ``onnx.ModelProto``, a
            ``torch.nn.Module`` (with ``example``) or an ``nir.NIRGraph`` (with ``dt``).
        example: a module's example input ``X[T, B, ...]``, or a tuple of its arguments.
        dt, discretize: an NIR graph's time step and discretisation (SPEC §2.1).

    Returns:
        The ONNX model (a path or a loaded model) and the name the artefact records.
    """
    if isinstance(model, str | os.PathLike) and is_nir_file(model):
        return _from_nir(model, dt, discretize), Path(model).name
    if _is_instance(model, "nir", "NIRGraph"):
        return _from_nir(model, dt, discretize), "NIRGraph"
    if dt is not None or discretize != "euler":
        raise SnucError(
            "--dt and --discretize apply to NIR input only (NIR stores no time step); "
            "an ONNX model or a torch module runs at its own steps: leave them out"
        )
    if isinstance(model, str | os.PathLike):
        return model, Path(model).name
    if isinstance(model, onnx.ModelProto):
        return model, model.graph.name or "model"
    if _is_instance(model, "torch", "nn", "Module"):
        return _from_torch(model, example), type(model).__name__
    raise SnucError(
        f"snuc.compile takes a path, an onnx.ModelProto, a torch.nn.Module with an example "
        f"input or an nir.NIRGraph; got {type(model).__module__}.{type(model).__qualname__}"
    )


def _is_instance(obj: Any, module: str, *attrs: str) -> bool:
    """``isinstance(obj, module.attrs...)`` without importing a module no one loaded."""
    import sys

    cls: Any = sys.modules.get(module)
    for name in attrs:
        cls = getattr(cls, name, None)
    return isinstance(cls, type) and isinstance(obj, cls)


def _from_torch(module: Any, example: Any) -> onnx.ModelProto:
    """Export a module with torch's dynamo exporter (batch axis 1 dynamic where it can be)."""
    import torch

    if example is None:
        raise SnucError(
            f"a torch.nn.Module needs an example input: snuc.compile(module, example=x), "
            f"x[T, B, ...] for {type(module).__name__}"
        )
    args = tuple(example) if isinstance(example, tuple | list) else (example,)
    batch = {1: torch.export.Dim.AUTO} if args and getattr(args[0], "ndim", 0) >= 2 else None
    shapes = (batch, *([None] * (len(args) - 1))) if batch else None
    with tempfile.TemporaryDirectory(prefix="snuc-export-") as tmp:
        path = Path(tmp) / "model.onnx"
        try:
            # The exporter reports its progress on stdout; snuc's stdout is the user's.
            with contextlib.redirect_stdout(io.StringIO()):
                torch.onnx.export(
                    module.eval(), args, path, dynamo=True, dynamic_shapes=shapes, verbose=False
                )
        except Exception as err:  # noqa: BLE001 -- torch.export raises many kinds
            text = " ".join(str(err).split())[:300]
            raise SnucError(
                f"torch.onnx.export of {type(module).__name__} failed: {text}"
            ) from None
        # torch's dynamo exporter writes the weights beside the model (model.onnx.data).
        return onnx.load(path, load_external_data=True)


def _from_nir(model: Any, dt: float | None, discretize: str) -> onnx.ModelProto:
    """An NIR graph (or ``.nir`` file) in the step form (snuc.frontend.nir_import)."""
    from snuc.frontend import nir_import  # says which extra to install if nir is missing

    graph = nir_import.load_nir(model) if isinstance(model, str | os.PathLike) else model
    return nir_import.nir_to_onnx(graph, dt=dt, discretize=discretize)


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
    model: Any,
    target: str | os.PathLike | TargetSpec | None = None,
    *,
    example: Any = None,
    dt: float | None = None,
    discretize: str = "euler",
    chips: int | None = None,
    state_pairs: Mapping[str, str] | None = None,
    calibrate: str | os.PathLike | np.ndarray | None = None,
    placement: str = "pack",
    duplicate: int = 1,
    after: After | None = None,
    lift: bool = True,
) -> Artefact:
    """Compile a model for a target into an in-memory artefact (``snuc.compile``).

    ``model`` is a path, an ``onnx.ModelProto``, a ``torch.nn.Module`` with ``example``
    (exported with torch's dynamo exporter) or an ``nir.NIRGraph`` with ``dt`` and
    ``discretize`` (:func:`as_onnx`).

    ``placement="spread"`` gives every tile a crossbar of its own (more crossbars, no MVMs
    queueing for a shared one); the default ``"pack"`` uses the fewest crossbars.
    ``duplicate=K`` (``--duplicate``) gives every crossbar with more than 1/K of the
    busiest crossbar's MVM work K copies on spare crossbars, timestep t served by copy
    ``t mod K``: more crossbars for a shorter timestep (docs/isa.md "Tile duplication").
    ``lift=False`` (``--no-lift``) keeps neurons as loose digital ops, for comparisons.
    """
    check_duplicate(duplicate)
    onnx_model, source = as_onnx(model, example=example, dt=dt, discretize=discretize)
    spec = resolve_target(target, chips)
    samples = load_calibration(calibrate) if isinstance(calibrate, str | os.PathLike) else calibrate
    graph = lower(
        import_model(onnx_model, state_pairs),
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
        source=source,
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
    dt: float | None = None,
    discretize: str = "euler",
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
        dt=dt,
        discretize=discretize,
        lift=lift,
    )
    if print_after is not None:
        return dumps[print_after]
    return print_graph(art.graph)
