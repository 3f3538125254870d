"""The ``.snuc`` artefact (SPEC §5): a compiled model, run, saved and loaded.

An :class:`Artefact` is what ``snuc.compile`` returns and a ``.snuc`` path holds: the
compiled graph, its target, its report and the simulator's program. It runs sequences on
the simulated chip (``Artefact.run``, on the NumPy backend or the simulator), and saves
and loads itself; the files, their atomic writing and their verified reading are
:mod:`snuc.runtime.artefact_files`'.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from snuc.ir.errors import SnucError
from snuc.ir.graph import Graph
from snuc.ir.limits import load_json
from snuc.ir.ops import CrossbarMVM
from snuc.ir.target import TargetSpec
from snuc.ir.text import large_constants, parse_graph, print_graph
from snuc.runtime.artefact_files import (
    ARRAYS,
    FORMAT_VERSION,
    GRAPH,
    PROGRAM,
    REPORT,
    json_bytes,
    read_artefact,
    write_artefact,
)
from snuc.runtime.config import RunConfig, run_config
from snuc.runtime.run_state import RunState

__all__ = ["BACKENDS", "FORMAT_VERSION", "TIME", "Artefact", "IOSpec", "io_spec", "load"]

TIME = "T"
"""The symbolic time dimension leading every input and output spec's shape."""

IOSpec = dict[str, Any]
"""``{"name": str, "shape": ["T", "B", 88], "dtype": "float32"}``."""


# --------------------------------------------------------------------------- I/O specs


def io_spec(graph: Graph) -> tuple[list[IOSpec], list[IOSpec]]:
    """The specs of a model's sequence inputs and outputs, as the manifest records them.

    A step graph's value is one timestep, so each sequence gains a leading ``"T"``; the
    batch dimension stays ``"B"`` and dtypes are NumPy names (``float32``, ``int64``).

    Args:
        graph: the compiled step graph.

    Returns:
        ``(inputs, outputs)``, each a list of ``{name, shape, dtype}`` in graph order.
    """
    return (
        [_value_spec(graph, name) for name in graph.inputs],
        [_value_spec(graph, name) for name in graph.outputs],
    )


def _value_spec(graph: Graph, name: str) -> IOSpec:
    type_ = graph.type_of(name)
    return {"name": name, "shape": [TIME, *type_.shape], "dtype": type_.np_dtype.name}


# --------------------------------------------------------------------------- the artefact


def _numpy_plan(
    graph: Graph, config: RunConfig, target: TargetSpec, program: str | None = None
) -> Any:
    from snuc.runtime.numpy_backend import Plan

    return Plan.build(graph, config, target=target)  # it runs the graph, not the program


def _sim_plan(
    graph: Graph, config: RunConfig, target: TargetSpec, program: str | None = None
) -> Any:
    from snuc.runtime.simulator import SimPlan

    return SimPlan.build(graph, config, target=target, program=program)


BACKENDS: dict[str, Callable[..., Any]] = {"numpy": _numpy_plan, "sim": _sim_plan}
"""Plan builders by backend name: ``build(graph, config, target, program) -> plan``
(``program``: the artefact's assembly, or None) whose ``plan.run(inputs, config,
progress=, state=, return_state=)`` returns outputs by name (and the run's end state)."""

_RUN_KEYWORDS = {
    "mode": "mode",
    "seed": "seed",
    "t_inference": "t_inference_s",
    "drift_compensation": "drift_compensation",
    "batch_size": "batch_size",
    "batch_offset": "batch_offset",
}
"""``Artefact.run``'s keyword options (SPEC §8) by the RunConfig field each sets."""


def artefact_run_config(config: RunConfig | None, options: Mapping[str, Any]) -> RunConfig:
    """The configuration ``Artefact.run`` gets: ``config`` (default: ``pcm`` mode) with
    the keyword options replaced; ``drift_compensation`` may also be True (``"global"``)
    or False (None).

    Raises:
        SnucError: the result is not a valid configuration.
        TypeError: an unknown keyword.
    """
    unknown = sorted(options.keys() - _RUN_KEYWORDS.keys())
    if unknown:
        raise TypeError(f"Artefact.run() got an unexpected keyword argument {unknown[0]!r}")
    fields = {_RUN_KEYWORDS[k]: v for k, v in options.items()}
    compensation = fields.get("drift_compensation")
    if isinstance(compensation, bool):
        fields["drift_compensation"] = "global" if compensation else None
    if config is None:
        return RunConfig(**{"mode": "pcm", **fields})
    return run_config(config, fields) if fields else config


@dataclass(frozen=True, eq=False)
class Artefact:
    """A compiled model: what ``snuc.compile`` returns and a ``.snuc`` path holds.

    Attributes:
        graph: the final compiled IR.
        target: the target's parameters by key (``TargetSpec.to_dict()``), JSON-ready.
        report: the contents of ``report.json`` (SPEC §7).
        program: the simulator's text assembly, or None when it was not emitted.
        source: the file name of the model it was compiled from.
        extra_arrays: arrays that are not graph constants (e.g. calibration samples).
    """

    graph: Graph
    target: dict[str, Any]
    report: dict[str, Any]
    program: str | None = None
    source: str = ""
    extra_arrays: dict[str, np.ndarray] = field(default_factory=dict)
    _plans: dict[tuple, Any] = field(default_factory=dict, init=False, repr=False)

    def __post_init__(self) -> None:
        for name, array in self.extra_arrays.items():
            if not isinstance(name, str) or not name:
                raise SnucError(f"extra array name {name!r} must be a non-empty string")
            if not isinstance(array, np.ndarray):
                raise SnucError(
                    f"extra array {name!r} must be a NumPy array, got {type(array).__name__}"
                )
            if array.dtype.hasobject:
                raise SnucError(
                    f"extra array {name!r} has dtype {array.dtype}; only arrays of numbers "
                    "can be saved (an artefact never holds pickled objects)"
                )

    @property
    def inputs(self) -> list[IOSpec]:
        """The sequence inputs' specs (see :func:`io_spec`)."""
        return io_spec(self.graph)[0]

    @property
    def outputs(self) -> list[IOSpec]:
        """The outputs' specs (see :func:`io_spec`)."""
        return io_spec(self.graph)[1]

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, Artefact):
            return NotImplemented
        return (
            self.graph == other.graph
            and self.target == other.target
            and self.report == other.report
            and self.program == other.program
            and self.source == other.source
            and self.extra_arrays.keys() == other.extra_arrays.keys()
            and all(
                _same_array(array, other.extra_arrays[name])
                for name, array in self.extra_arrays.items()
            )
        )

    __hash__ = None  # type: ignore[assignment]

    def run(
        self,
        inputs: np.ndarray | Mapping[str, np.ndarray],
        config: RunConfig | None = None,
        *,
        backend: str = "numpy",
        progress: bool = False,
        state: RunState | None = None,
        return_state: bool = False,
        threads: int | None = None,
        **options: Any,
    ) -> Any:
        """Run sequences ``[T, B, ...]`` on the simulated chip (SPEC §6, §8).

        ``art.run(x, mode="pcm", seed=0, t_inference=86400.0)`` and
        ``art.run(x, config=RunConfig(mode="pcm", seed=0, t_inference_s=86400.0))`` are
        the same run.

        Args:
            inputs: the sequence input, or a dict by input name.
            config: the run's :class:`~snuc.runtime.config.RunConfig`; default: ``pcm``
                mode on chip 0, one hour after programming, global drift compensation.
            backend: ``"numpy"`` (fast) or ``"sim"`` (the cycle-level simulator).
            progress: show a progress bar on stderr.
            state: go on from where a run over the previous piece of the sequences
                stopped: the :class:`~snuc.runtime.run_state.RunState` it returned (its
                states, timestep count and read-noise positions); the run must have the
                same configuration and batch. The pieces' outputs are those of one run
                over the whole sequence.
            return_state: also return the state where this run stops, for the next piece.
            threads: the threads the run may use (default: every core;
                :mod:`snuc.runtime.threads`); the outputs do not depend on it.
            **options: fields of ``config`` to replace, by keyword:
                ``mode``: ``"float"``, ``"quantized"`` or ``"pcm"``.
                ``seed``: names one simulated chip (programming noise, drift exponents,
                read noise).
                ``t_inference``: seconds after programming.
                ``drift_compensation``: True (global), False/None (off), or
                ``"global"``/``"column"``.
                ``batch_size``: run the batch in chunks of this many sequences (pcm read
                noise is keyed per sequence, by its index in the batch: the chunks give
                what the whole batch gives).
                ``batch_offset``: pcm: the index of ``inputs``' first sequence when they
                are a chunk of a larger batch that the caller runs chunk by chunk (0: a
                whole batch); it keys the read noise of each sequence by its index.

        Returns:
            The output ``[T, B, ...]``, or a dict by output name when there are several;
            with ``return_state``, the pair ``(outputs, state)``.

        Raises:
            SnucError: an unknown backend, a bad configuration, inputs that do not fit, a
                state of another run.
        """
        if backend not in BACKENDS:
            raise SnucError(f"unknown backend {backend!r}; expected one of {', '.join(BACKENDS)}")
        config = artefact_run_config(config, options)
        key = (backend, config.plan_config)
        plans = self._plans
        if key not in plans:
            plans.clear()  # one chip at a time: a plan holds every tile's conductances
            target = TargetSpec.from_dict(self.target)
            plans[key] = BACKENDS[backend](self.graph, config, target, self.program)
        result = plans[key].run(
            inputs,
            config,
            progress=progress,
            state=state,
            return_state=return_state,
            threads=threads,
        )
        if return_state:
            outputs, end = result
            return _one_or_all(outputs), end
        return _one_or_all(result)

    @property
    def last_stats(self) -> Any:
        """What the last run measured, when its backend measures anything (``sim``: a
        :class:`~snuc.runtime.simulator.SimStats`); else None."""
        return next((getattr(p, "last_stats", None) for p in self._plans.values()), None)

    def save(self, path: str | os.PathLike[str], *, zip: bool = False) -> Path:
        """Write the artefact to ``path``, atomically: a zip file when it ends with ``.zip``
        or ``zip`` is true, otherwise a directory; an existing artefact there is replaced
        only once the new one is complete.

        Returns and raises as :func:`~snuc.runtime.artefact_files.write_artefact`.
        """
        # Serialise before touching the disk: an error here leaves no trace at all.
        texts = self._text_members()
        inputs, outputs = io_spec(self.graph)
        return write_artefact(
            path,
            texts=texts,
            constants=large_constants(self.graph),
            extra_arrays=self.extra_arrays,
            fields={
                "source": self.source,
                "target": self.target,
                "inputs": inputs,
                "outputs": outputs,
            },
            zip=zip,
        )

    @staticmethod
    def load(path: str | os.PathLike[str]) -> Artefact:
        """Read and verify an artefact; see :func:`load`."""
        return load(path)

    def _text_members(self) -> dict[str, bytes]:
        texts = {GRAPH: print_graph(self.graph).encode("utf-8")}
        if self.program is not None:
            texts[PROGRAM] = self.program.encode("utf-8")
        texts[REPORT] = json_bytes(self.report)
        return texts


def _one_or_all(outputs: dict[str, np.ndarray]) -> np.ndarray | dict[str, np.ndarray]:
    """The one output's array, or every output by name (``Artefact.run``'s result)."""
    return next(iter(outputs.values())) if len(outputs) == 1 else outputs


def _same_array(a: np.ndarray, b: np.ndarray) -> bool:
    return a.dtype == b.dtype and a.shape == b.shape and a.tobytes() == b.tobytes()


# --------------------------------------------------------------------------- reading


def load(path: str | os.PathLike[str]) -> Artefact:
    """Read an artefact (a directory or a zip file) and verify it completely.

    Every member the manifest lists must be present with the recorded size and sha256;
    members it does not list are never read. Arrays are read with ``allow_pickle=False``
    and the IR must parse and match the manifest's input and output specs. The manifest's
    target must be valid and the one ``report.json`` records; for a compiled graph,
    ``program.s`` and ``report.json`` must be what the compiler makes of ``graph.ir`` on
    that target (made again here), so no edit of the target, the program or the report
    passes, with or without recomputed checksums.

    Args:
        path: the artefact.

    Returns:
        The artefact, with everything read into memory.

    Raises:
        SnucError: one line naming the artefact and what is wrong with it (missing, not an
            artefact, another format version, a missing, truncated or tampered member,
            an unsafe zip, arrays that would need unpickling, invalid IR, a target,
            program or report that the IR does not account for).
    """
    where = str(path)
    stored = read_artefact(path)
    manifest, texts = stored.manifest, stored.texts
    graph = _read_graph(texts[GRAPH], stored.constants, where)
    if [manifest["inputs"], manifest["outputs"]] != list(io_spec(graph)):
        raise SnucError(
            f"artefact {where}: manifest.json's inputs and outputs do not match graph.ir; "
            "recompile the model"
        )
    report = _read_report(texts[REPORT], where)
    program = texts.get(PROGRAM)
    _check_derived(graph, _read_target(manifest["target"], report, where), report, program, where)
    return Artefact(
        graph=graph,
        target=manifest["target"],
        report=report,
        program=program,
        source=manifest["source"],
        extra_arrays=stored.extra_arrays,
    )


def _read_target(target: dict[str, Any], report: Mapping[str, Any], where: str) -> TargetSpec:
    """The manifest's target, valid and the same as the one ``report.json`` (a member
    covered by a checksum) records, so that an edit of the manifest alone is refused."""
    try:
        spec = TargetSpec.from_dict(target)
    except SnucError as e:
        raise SnucError(f"artefact {where}: manifest.json's target is invalid: {e}") from None
    if "target" in report and report["target"] != target:
        raise SnucError(
            f"artefact {where}: manifest.json's target differs from the one {REPORT} records; "
            "the manifest was edited, recompile the model"
        )
    return spec


def _check_derived(
    graph: Graph, spec: TargetSpec, report: Mapping[str, Any], program: str | None, where: str
) -> None:
    """A compiled graph's program and report are what the compiler makes of the graph on
    the target: made again here and compared, so that neither (nor the target they both
    record) can differ from the IR the runs use. A graph that was not compiled (no
    crossbar tiles: a hand-built artefact) has no program or report to compare with."""
    if program is None or not any(isinstance(n.op, CrossbarMVM) for n in graph.nodes()):
        return
    # Imported here: the driver imports this module.
    from snuc.backends.asm import print_program
    from snuc.backends.program import emit_program
    from snuc.backends.schedule import schedule_graph
    from snuc.driver import build_report

    try:
        schedule = schedule_graph(graph, spec)
        expected_program = print_program(emit_program(graph, schedule))
        expected_report = load_json(json_bytes(build_report(graph, spec, schedule)), REPORT)
    except SnucError as e:
        raise SnucError(
            f"artefact {where}: {GRAPH} cannot be scheduled on its target to check "
            f"{PROGRAM} ({e}); recompile the model"
        ) from None
    for name, stored, expected in (
        (PROGRAM, program, expected_program),
        (REPORT, report, expected_report),
    ):
        if stored != expected:
            raise SnucError(
                f"artefact {where}: {name} is not what {GRAPH} compiles to on the "
                "manifest's target; the artefact was edited, recompile the model"
            )


def _read_graph(text: str, constants: Mapping[str, np.ndarray], where: str) -> Graph:
    try:
        graph = parse_graph(text, constants, filename=GRAPH)
    except SnucError as e:
        raise SnucError(f"artefact {where}: invalid IR: {e}") from None
    unused = sorted(constants.keys() - large_constants(graph).keys())
    if unused:
        raise SnucError(
            f"artefact {where}: {ARRAYS} holds constants that {GRAPH} does not declare: "
            f"{', '.join(unused)}"
        )
    return graph


def _read_report(text: str, where: str) -> dict[str, Any]:
    report = load_json(text, f"artefact {where}: {REPORT}")
    if not isinstance(report, dict):
        raise SnucError(f"artefact {where}: {REPORT} is not a JSON object")
    return report
