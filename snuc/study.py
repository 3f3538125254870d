"""Running a study (SPEC §12): compile each build once into the cache, run every pending
configuration on an executor, and keep each row as it finishes.

:func:`run_study` takes a checked :class:`~snuc.study_spec.Study`. Rows go, one JSON line
each, to the ``jsonl`` results file as they come back (written, flushed and fsync'd
before the next), so an interrupted study (Ctrl-C, ``kill -9``, a lost machine) loses
only the configurations in flight; ``resume=True`` reads the file (a partial last line,
from a write cut short, is dropped) and runs only the configurations it lacks. The rows
returned, and written to CSV, Markdown or Parquet, are in grid order whatever the order
they finished in, so a study's results are the same on any executor.
"""

from __future__ import annotations

import contextlib
import json
import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from snuc import evaluate as ev
from snuc import study_exec as ex
from snuc.eval_tasks import TASKS
from snuc.ir.errors import SnucError
from snuc.study_spec import Build, Study, calibration_label, configuration_id

__all__ = ["ResultsFile", "compile_builds", "run_study"]


class ResultsFile:
    """The JSON-lines results of a study: read back on resume, appended row by row."""

    def __init__(self, path: str | os.PathLike[str]) -> None:
        self.path = Path(path)

    def read(self) -> dict[str, dict[str, Any]]:
        """Finished rows by configuration id; a partial last line is cut off the file.

        Raises:
            SnucError: a line before the last that is not a row.
        """
        if not self.path.exists():
            return {}
        data = self.path.read_bytes()
        complete = data[: data.rfind(b"\n") + 1]
        if len(complete) != len(data):
            with open(self.path, "r+b") as f:  # a write cut short: drop its remains
                f.truncate(len(complete))
        rows = {}
        for number, line in enumerate(complete.splitlines(), 1):
            try:
                row = json.loads(line)
            except ValueError:
                row = None
            if not isinstance(row, dict) or "config_id" not in row:
                raise SnucError(
                    f"results file {self.path} line {number} is not a study row; give "
                    "another --jsonl or remove the file"
                )
            rows[row["config_id"]] = row
        return rows

    @contextlib.contextmanager
    def appender(self) -> Iterator[Any]:
        """``append(row)``: one line, flushed and fsync'd before it returns."""
        with open(self.path, "a", encoding="utf-8") as f:

            def append(row: dict[str, Any]) -> None:
                f.write(json.dumps(row) + "\n")
                f.flush()
                os.fsync(f.fileno())

            yield append


def compile_builds(study: Study, cache: str | os.PathLike[str], keys: list[str]) -> list[Any]:
    """Each build's artefact from the cache, compiled (and stored) when it is not there;
    the builds of artefact models are copied in. Returns the artefacts, in build order."""
    from snuc.driver import compile_model
    from snuc.runtime.artefact import load

    Path(cache).mkdir(parents=True, exist_ok=True)
    artefacts = []
    for build, key in zip(study.builds, keys, strict=True):
        path = ex.cache_path(cache, key)
        if path.exists():
            artefacts.append(load(path))
            continue
        if build.target is None:
            art = load(build.model)
        else:
            art = compile_model(
                build.model,
                build.target,
                placement=build.placement,
                duplicate=build.duplicate,
                calibrate=build.calibrate,
            )
        art.save(path)
        artefacts.append(art)
    return artefacts


def _build_fields(study: Study, build: Build, art: Any) -> dict[str, Any]:
    """The columns a build fixes: its axes, mapping and the compiler's figures."""
    report = art.report
    calibration = {}
    if study.calibrated:  # the column only where the spec names the axis
        calibration["calibrate"] = calibration_label(build.calibrate)
    return {
        **dict(build.columns[1:]),
        "placement": build.placement,
        "duplicate": build.duplicate,
        **calibration,
        "crossbars": report["crossbars_used"],
        "est_energy_nj_per_step": report["energy_pj_per_timestep"]["total"] / 1e3,
        "est_timestep_ns": report["schedule"]["timestep_ns"],
    }


def run_study(
    study: Study,
    *,
    executor: str = "local",
    workers: int | None = None,
    address: str | None = None,
    resume: bool = False,
    progress: bool = False,
) -> list[dict[str, Any]]:
    """Run every configuration of ``study`` not yet in its results file.

    Args:
        study: the checked spec (:func:`snuc.study_spec.load_study`).
        executor: ``local`` (worker processes), ``serial``, ``ray`` or ``dask``.
        workers: local worker processes (default: every core), Ray CPUs, or the
            processes of a local Dask cluster.
        address: ``ray`` or ``dask``: the cluster to join (default: start a local one).
        resume: continue the ``jsonl`` results file; without it, an existing file is refused.
        progress: report each configuration on stderr.

    Returns:
        Every configuration's row (:data:`~snuc.evaluate.RUN_FIELDS`, then the study's
        columns), in grid order.

    Raises:
        SnucError: a bad option, a model that does not fit its task, missing data, an
            existing results file without ``resume``, or a configuration's error.
    """
    if executor not in ex.EXECUTORS:
        raise SnucError(f"unknown executor {executor!r}; expected one of {', '.join(ex.EXECUTORS)}")
    if workers is not None:
        ev.positive(workers, "workers")
    results = ResultsFile(study.outputs["jsonl"]) if "jsonl" in study.outputs else None
    if resume and results is None:
        raise SnucError("--resume continues a results file: give it with --jsonl")
    if results is not None and results.path.exists() and not resume:
        raise SnucError(
            f"results file {results.path} exists; pass --resume to continue it, or remove it"
        )
    data = _load_data(study)
    cache = study.outputs.get("cache") or str(ex.default_cache())
    keys = [b.key() for b in study.builds]
    finished = results.read() if results is not None and resume else {}
    ids = [configuration_id(study, c, keys[c.build]) for c in study.configurations]
    pending = [c for c, i in zip(study.configurations, ids, strict=True) if i not in finished]
    artefacts = compile_builds(study, cache, keys)
    for build, name in dict.fromkeys((c.build, c.task) for c in study.configurations):
        custom = name == "custom"
        task = ev.resolve_task(
            name,
            data[ex.data_key(name, study.split, study.data)] if custom else None,
            study.metric if custom else None,
        )
        task.check(artefacts[build])
    jobs = [_job(study, c, ids[c.index], keys, artefacts) for c in pending]
    rows = dict(finished)
    total = len(study.configurations)
    with contextlib.ExitStack() as stack:
        append = stack.enter_context(results.appender()) if results else (lambda row: None)
        report = stack.enter_context(ev.reporter(progress, total, total - len(pending)))
        resources = ex.Resources(data, cache)
        for row in ex.execute(jobs, resources, executor=executor, workers=workers, address=address):
            row = json.loads(json.dumps(row))  # as it reads back from the file
            append(row)
            rows[row["config_id"]] = row
            report(_describe(row))
    return [rows[i] for i in ids]


def _load_data(study: Study) -> dict[str, Any]:
    """Every task's data, by :func:`~snuc.study_exec.data_key`, read before any work."""
    data = {}
    for task in study.tasks:
        key = ex.data_key(task, study.split, study.data if task == "custom" else None)
        if task == "custom":
            from snuc.eval_tasks import read_custom_data

            data[key] = read_custom_data(study.data)
        else:
            data[key] = TASKS[task].loader(study.split, study.data_dir)
    return data


def _job(study: Study, config: Any, id_: str, keys: list[str], artefacts: list[Any]) -> ex.Job:
    build = study.builds[config.build]
    art = artefacts[config.build]
    fields = {
        "split": study.split,
        "model": art.source or Path(build.model).name,
        "target": build.columns[0][1],
        **_build_fields(study, build, art),
        "batch_size": config.options.batch_size,
    }
    custom = config.task == "custom"
    return ex.Job(
        id=id_,
        artefact=keys[config.build],
        data=ex.data_key(config.task, study.split, study.data if custom else None),
        task=config.task,
        metric=study.metric if custom else None,
        options=config.options,
        run=config.run,
        backend=study.backend,
        fields=fields,
    )


def _describe(row: dict[str, Any]) -> str:
    from snuc.runtime.config import RunConfig

    mode = row["mode"]
    if mode == "pcm":
        comp = row["drift_compensation"]
        config = RunConfig(mode, row["seed"], row["t_inference_s"], None if comp == "off" else comp)
    else:
        config = RunConfig(mode)
    coded = "" if row["coding_seed"] is None else f" coding={row['coding_seed']}"
    return (
        f"{row['task']} {row['target']} {ev.describe_config(config)}{coded}: "
        f"{row['metric']} {row['value']:.5g}"
    )
