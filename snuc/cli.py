"""The ``snuc`` command line (SPEC §8).

Exit status: 0 on success; 2 for bad input or usage, with one line ``snuc: error: ...``
on stderr and no traceback; 1 for an internal error (the traceback with ``--debug``).
"""

from __future__ import annotations

import argparse
import contextlib
import json
import logging
import os
import sys
import traceback
import warnings
from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from snuc import __version__
from snuc.ir.errors import SnucError
from snuc.runtime.config import MODES, RunConfig

if TYPE_CHECKING:
    from snuc.runtime.run_state import RunState

EXIT_OK, EXIT_INTERNAL, EXIT_USAGE = 0, 1, 2
EXIT_BROKEN_PIPE = 141  # 128 + SIGPIPE, what a shell reports for a killed writer


class _Parser(argparse.ArgumentParser):
    """argparse with SPEC §8's one-line errors instead of a usage dump."""

    def error(self, message: str) -> None:  # type: ignore[override]
        raise SnucError(f"{message} (see '{self.prog} --help')")


def _state_pair(text: str) -> tuple[str, str]:
    out, sep, inp = text.partition("=")
    if not sep or not out or not inp:
        raise argparse.ArgumentTypeError(
            f"expected OUT=IN (a state output and the state input it feeds), got {text!r}"
        )
    return out, inp


def _path(text: str) -> str:
    if not text.strip():
        raise argparse.ArgumentTypeError("expected a path, got an empty string")
    return text


def _build_parser() -> argparse.ArgumentParser:
    parser = _Parser(prog="snuc", description="Compile SNU networks for simulated PCM chips.")
    parser.add_argument("--version", action="version", version=f"snuc {__version__}")
    parser.add_argument("--debug", action="store_true", help="show tracebacks of internal errors")
    sub = parser.add_subparsers(dest="command", required=True, parser_class=_Parser)

    comp = sub.add_parser("compile", help="compile an ONNX model for a PCM target")
    comp.add_argument("model", help="ONNX model (sequence form with a Scan, or step form)")
    comp.add_argument("--target", default=None, help="pcm-RxC, a preset, or a TOML file")
    comp.add_argument(
        "-o",
        "--output",
        type=_path,
        default=None,
        help="artefact path (default: beside the model)",
    )
    comp.add_argument(
        "--chips", type=int, default=None, help="chips available (overrides the target)"
    )
    comp.add_argument(
        "--weight-scaling",
        metavar="column|tile",
        default=None,
        help="weight-to-conductance scale per column or per tile (overrides the target)",
    )
    comp.add_argument(
        "--adc-rule",
        metavar="max|ksigma",
        default=None,
        help="ADC full scale: never clipping, or mean + k sigma (overrides the target)",
    )
    comp.add_argument(
        "--adc-k", type=float, default=None, help="sigmas of the ksigma ADC rule (default 4)"
    )
    comp.add_argument(
        "--emit",
        choices=["ir", "asm", "report"],
        default=None,
        help="print the IR or the simulator program (text) or the report (JSON) to stdout; "
        "write no artefact",
    )
    comp.add_argument(
        "--print-after",
        metavar="PASS",
        default=None,
        help="with --emit ir: print the IR after this stage instead of the final IR",
    )
    comp.add_argument(
        "--state",
        metavar="OUT=IN",
        action="append",
        type=_state_pair,
        default=[],
        help="step form: state output OUT feeds state input IN (repeatable)",
    )
    comp.add_argument(
        "--calibrate",
        metavar="X.npy",
        default=None,
        help="sample inputs [T, B, ...] that set the DAC and ADC ranges",
    )
    comp.add_argument(
        "--placement",
        choices=["pack", "spread"],
        default="pack",
        help="pack small tiles onto shared crossbars (fewest crossbars, the default) or "
        "give each tile its own (more crossbars, shorter timestep)",
    )
    comp.add_argument(
        "--duplicate",
        type=int,
        default=1,
        metavar="K",
        help="K copies of every crossbar with more than 1/K of the busiest one's MVM work, "
        "timestep t on copy t mod K (more crossbars, up to K times shorter timestep; "
        "default 1: none)",
    )
    comp.add_argument(
        "--dt",
        type=float,
        default=None,
        metavar="SECONDS",
        help="NIR input (required there): the time step NIR's continuous-time neurons run at",
    )
    comp.add_argument(
        "--discretize",
        choices=["euler", "exact"],
        default="euler",
        help="NIR input: Euler (1 - dt/tau, the default) or exact (exp(-dt/tau)) decays",
    )
    comp.add_argument(
        "--no-lift",
        dest="lift",
        action="store_false",
        help="keep neurons as loose digital ops (no snu.* ops), to compare their cost",
    )
    comp.set_defaults(handler=_cmd_compile)

    run = sub.add_parser("run", help="run sequences on a simulated chip")
    run.add_argument("artefact", help="a .snuc artefact (directory or zip)")
    run.add_argument(
        "--input", required=True, metavar="X.npy", help="[T, B, F] float32 or [T, B] ids"
    )
    run.add_argument(
        "-o",
        "--output",
        type=_path,
        default=None,
        help="default: <input>.out.npy beside the input",
    )
    run.add_argument("--backend", choices=["numpy", "sim"], default="numpy")
    run.add_argument("--mode", choices=MODES, default="pcm")
    run.add_argument("--seed", type=int, default=0, help="names one simulated chip (default 0)")
    run.add_argument(
        "--t-inference",
        type=float,
        default=3600.0,
        metavar="SECONDS",
        help="time since programming",
    )
    run.add_argument("--no-drift-compensation", action="store_true")
    run.add_argument("--batch-size", type=int, default=None, metavar="N")
    run.add_argument(
        "--threads", type=int, default=None, metavar="N", help="threads (default: every core)"
    )
    run.add_argument(
        "--diagnostics", action="store_true", help="per layer: spike rates, deviation from float"
    )
    run.add_argument(
        "--state-in",
        type=_path,
        default=None,
        metavar="STATE.npz",
        help="go on from where the run that wrote this state stopped (input in pieces)",
    )
    run.add_argument(
        "--state-out",
        type=_path,
        default=None,
        metavar="STATE.npz",
        help="write where this run stops, for --state-in of the next piece",
    )
    run.set_defaults(handler=_cmd_run)

    rep = sub.add_parser("report", help="print an artefact's report")
    rep.add_argument("artefact", help="a .snuc artefact (directory or zip)")
    rep.add_argument("--json", action="store_true", help="print report.json")
    rep.add_argument("--plot", metavar="OUT.png", default=None, help="draw the crossbars and tiles")
    rep.set_defaults(handler=_cmd_report)

    targets = sub.add_parser("targets", help="list target presets and parameters")
    targets.add_argument("--json", action="store_true", help="machine-readable output")
    targets.set_defaults(handler=_cmd_targets)

    ev = sub.add_parser(
        "eval",
        help="a study: score models on tasks across targets, mappings, modes, drift and chips",
    )
    ev.add_argument(
        "model", nargs="?", help="an ONNX model (compiled per target) or a .snuc artefact"
    )
    ev.add_argument(
        "--spec", default=None, metavar="STUDY.toml", help="the study (options override it)"
    )
    ev.add_argument("--task", default=None, help="jsb, mnist, ptb or custom")
    ev.add_argument("--split", default=None, help="test (default), valid (jsb, ptb) or train")
    ev.add_argument("--data-dir", default=None, metavar="DIR", help="default: $SNUC_DATA")
    ev.add_argument(
        "--data", default=None, metavar="D.npz", help="custom: inputs, lengths, targets"
    )
    ev.add_argument(
        "--metric",
        default=None,
        help="custom: accuracy-count, accuracy-last, nll, perplexity or mse",
    )
    ev.add_argument(
        "--modes", default=None, metavar="LIST", help="in run order (default: all three)"
    )
    ev.add_argument(
        "--t-inference",
        default=None,
        metavar="LIST",
        help="pcm: seconds after programming (or with a unit: 1h, 1d, 1y); default 1,1h,1d,1y",
    )
    ev.add_argument("--seeds", default=None, metavar="LIST", help="pcm: simulated chips (0..4)")
    ev.add_argument(
        "--targets", default=None, metavar="LIST", help="default: pcm-256x256 or the artefact's"
    )
    ev.add_argument("--chips", type=int, default=None, help="chips available per target")
    ev.add_argument("--drift-compensation", default=None, metavar="LIST", help="pcm: on, off")
    ev.add_argument("--placement", default=None, metavar="LIST", help="pack, spread")
    ev.add_argument("--duplicate", default=None, metavar="LIST", help="copies of busy crossbars")
    ev.add_argument(
        "--calibrate", default=None, metavar="LIST",
        help="none (guaranteed converter ranges) or X.npy samples [T, B, ...], as compile takes",
    )  # fmt: skip
    ev.add_argument("--batch-size", type=int, default=None, metavar="N", help="sequences per run")
    ev.add_argument(
        "--threads", type=int, default=None, metavar="N", help="threads (default: every core)"
    )
    ev.add_argument(
        "--limit", type=int, default=None, metavar="N", help="first N chorales/images/tokens"
    )
    ev.add_argument("--csv", default=None, metavar="OUT.csv", help="every run and the means")
    ev.add_argument("--markdown", default=None, metavar="OUT.md", help="the means as a table")
    ev.add_argument(
        "--jsonl", default=None, metavar="OUT.jsonl", help="rows appended as they finish"
    )
    ev.add_argument("--parquet", default=None, metavar="OUT.parquet", help="every run (pyarrow)")
    ev.add_argument("--pareto", default=None, metavar="OUT.png", help="Pareto plots (matplotlib)")
    ev.add_argument(
        "--cache", default=None, metavar="DIR", help="compiled artefacts by content hash"
    )
    ev.add_argument("--resume", action="store_true", help="skip the configurations --jsonl holds")
    ev.add_argument("--workers", type=int, default=None, metavar="N", help="default: every core")
    ev.add_argument("--executor", default="local", help="local (default), serial, ray or dask")
    ev.add_argument("--address", default=None, help="ray, dask: the cluster (default: local)")
    ev.add_argument("--steps", type=int, default=None, help="mnist: rate-coding steps (20)")
    ev.add_argument(
        "--coding-seeds", default=None, metavar="LIST",
        help="mnist: seeds of the rate coding; the mean pools codings and chips",
    )  # fmt: skip
    ev.add_argument("--columns", type=int, default=None, help="ptb: columns of the token stream")
    ev.add_argument(
        "--backend", choices=["numpy", "sim"], default=None,
        help="sim: the cycle-level simulator (same outputs; adds energy and time per step)",
    )  # fmt: skip
    ev.add_argument(
        "--progress",
        action="store_true",
        help="report each configuration on stderr even when it is not a terminal",
    )
    ev.set_defaults(handler=_cmd_eval)

    plot = sub.add_parser("plot-study", help="a study's means, its knobs and Pareto plots")
    plot.add_argument("results", help="the study's results (JSON lines, snuc eval --jsonl)")
    plot.add_argument("-o", "--output", default=None, metavar="OUT.png", help="Pareto plots")
    plot.set_defaults(handler=_cmd_plot_study)
    return parser


def _cmd_targets(args: argparse.Namespace) -> int:
    from snuc.ir.target import describe_targets, format_targets

    if args.json:
        json.dump(describe_targets(), sys.stdout, indent=2)
        sys.stdout.write("\n")
    else:
        sys.stdout.write(format_targets())
    return EXIT_OK


def _cmd_compile(args: argparse.Namespace) -> int:
    with _warnings_as_lines():
        return _compile(args)


@contextlib.contextmanager
def _warnings_as_lines() -> Iterator[None]:
    """NumPy's RuntimeWarnings while reading a model (e.g. a NaN initial state, which the
    importer then refuses) held back: dropped when an error follows, which says what is
    wrong in one line; otherwise each distinct one as a line ``snuc: warning: ...``."""
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always", RuntimeWarning)
        yield
    for message in dict.fromkeys(str(w.message) for w in caught):
        print(f"snuc: warning: {_one_line(message)}", file=sys.stderr)


def _compile(args: argparse.Namespace) -> int:
    from snuc import driver
    from snuc.ir.target import with_overrides

    state_pairs = dict(args.state) or None
    if args.print_after is not None and args.emit != "ir":
        raise SnucError("--print-after needs --emit ir")
    if args.emit is not None and args.output is not None:
        raise SnucError("--emit prints to stdout and writes no artefact; drop -o or --emit")
    target = driver.resolve_target(args.target, args.chips)
    mapping = {
        "weight_scaling": args.weight_scaling,
        "adc_rule": args.adc_rule,
        "adc_k": args.adc_k,
    }
    target = with_overrides(target, **{k: v for k, v in mapping.items() if v is not None})
    if args.emit == "ir":
        text = driver.emit_ir(
            args.model,
            state_pairs=state_pairs,
            target=target,
            print_after=args.print_after,
            calibrate=args.calibrate,
            placement=args.placement,
            duplicate=args.duplicate,
            dt=args.dt,
            discretize=args.discretize,
            lift=args.lift,
        )
        sys.stdout.write(text)
        return EXIT_OK
    art = driver.compile_model(
        args.model,
        target,
        state_pairs=state_pairs,
        calibrate=args.calibrate,
        placement=args.placement,
        duplicate=args.duplicate,
        dt=args.dt,
        discretize=args.discretize,
        lift=args.lift,
    )
    if args.emit == "report":
        json.dump(art.report, sys.stdout, indent=2)
        sys.stdout.write("\n")
        return EXIT_OK
    if args.emit == "asm":
        sys.stdout.write(art.program)
        return EXIT_OK
    out = art.save(args.output or driver.default_artefact_path(args.model))
    report = art.report
    print(
        f"wrote {out}: {report['crossbars_used']} crossbars of {report['crossbars_available']}, "
        f"utilization {report['utilization']:.1%}",
        file=sys.stderr,
    )
    return EXIT_OK


def _cmd_run(args: argparse.Namespace) -> int:
    from snuc.runtime.artefact import load
    from snuc.runtime.io import default_output_path, read_input, write_outputs

    art = load(args.artefact)
    x = read_input(args.input)
    _check_finite(x, f"input file {args.input}")
    out = Path(args.output) if args.output else default_output_path(args.input, len(art.outputs))
    _check_not_input(out, args.input)
    config = RunConfig(
        mode=args.mode,
        seed=args.seed,
        t_inference_s=args.t_inference,
        drift_compensation=None if args.no_drift_compensation else "global",
        batch_size=args.batch_size,
    )
    if args.diagnostics and (x.ndim < 2 or 0 in x.shape[:2]):
        raise SnucError(
            f"--diagnostics needs at least one timestep and one sequence; input file "
            f"{args.input} has shape {list(x.shape)}"
        )
    state = _state_in(args)
    with _numerical_errors():
        y = art.run(
            x,
            config,
            backend=args.backend,
            progress=sys.stderr.isatty(),
            state=state,
            return_state=args.state_out is not None,
            threads=args.threads,
        )
    if args.state_out is not None:
        y, end = y
    written = write_outputs(out, y)
    print(f"wrote {written}", file=sys.stderr)
    if args.state_out is not None:
        print(f"wrote {end.save(args.state_out)}", file=sys.stderr)
    _warn_non_finite(y)
    if args.backend == "sim":
        from snuc.runtime.simulator import format_stats

        sys.stderr.write(format_stats(art.last_stats))
    if args.diagnostics:
        from snuc.diagnostics import format_diagnostics, layer_diagnostics
        from snuc.ir.target import TargetSpec

        with _numerical_errors():
            rows = layer_diagnostics(art.graph, x, config, TargetSpec.from_dict(art.target))
        sys.stdout.write(format_diagnostics(rows, args.mode))
    return EXIT_OK


def _state_in(args: argparse.Namespace) -> RunState | None:
    """``snuc run``'s ``--state-in`` as a RunState (None without it), once the options
    around it are checked: ``--state-out`` is an ``.npz`` in an existing directory (a run
    is not wasted on a state it cannot write), ``--diagnostics`` runs from the start."""
    from snuc.runtime.run_state import RunState

    if args.state_out is not None:
        state_out = Path(args.state_out)
        if state_out.suffix != ".npz":
            raise SnucError(f"--state-out {state_out} must be an .npz file")
        if not state_out.parent.is_dir():
            raise SnucError(
                f"cannot write {state_out}: directory {state_out.parent} does not exist"
            )
    if args.state_in is None:
        return None
    if args.diagnostics:
        raise SnucError(
            "--diagnostics compares layers over a whole run from its start; it cannot go on "
            "from --state-in"
        )
    return RunState.load(args.state_in)


def _check_finite(x: np.ndarray, what: str) -> None:
    """Refuse NaN or infinite inputs: a run would carry them silently into the outputs."""
    if np.issubdtype(x.dtype, np.inexact) and not np.isfinite(x).all():
        bad = int(x.size - np.count_nonzero(np.isfinite(x)))
        raise SnucError(f"{what} holds {bad} NaN or infinite value(s); inputs must be finite")


def _check_not_input(out: Path, input_path: str) -> None:
    """Refuse an output that is the input file under any name (a link, another path)."""
    with contextlib.suppress(OSError):
        if out.exists() and os.path.samefile(out, input_path):
            raise SnucError(
                f"the output {out} is the input file {input_path}; writing it would destroy "
                "the input, choose another -o"
            )


@contextlib.contextmanager
def _numerical_errors() -> Iterator[None]:
    """NumPy's RuntimeWarnings (an invalid value, a mean of nothing) as one-line errors:
    in a run they mean inputs or model constants it cannot compute with."""
    with warnings.catch_warnings():
        warnings.simplefilter("error", RuntimeWarning)
        try:
            yield
        except RuntimeWarning as w:
            raise SnucError(
                f"the run hit a numerical error ({w}); the model's constants (e.g. an "
                "initial state) or the inputs hold values it cannot compute with"
            ) from None


def _warn_non_finite(outputs: np.ndarray | Mapping[str, np.ndarray]) -> None:
    """One warning line when any output is NaN or infinite."""
    arrays = outputs.values() if isinstance(outputs, Mapping) else [outputs]
    bad = sum(int(a.size - np.count_nonzero(np.isfinite(a))) for a in arrays)
    if bad:
        total = sum(a.size for a in arrays)
        print(f"snuc: warning: {bad} of {total} output values are NaN or infinite", file=sys.stderr)


def _cmd_report(args: argparse.Namespace) -> int:
    from snuc.reporting import format_report
    from snuc.runtime.artefact import load

    art = load(args.artefact)
    if args.plot is not None:
        from snuc.backends.plot import plot_crossbars

        plot_crossbars(art.report, args.plot)
    if args.json:
        json.dump(art.report, sys.stdout, indent=2)
        sys.stdout.write("\n")
    else:
        sys.stdout.write(format_report(art.report))
    return EXIT_OK


def _cmd_eval(args: argparse.Namespace) -> int:
    from snuc import evaluate as ev
    from snuc import study, study_views
    from snuc.runtime.threads import THREADS_VARIABLE, checked_threads
    from snuc.study_spec import load_study

    if args.csv and args.markdown and Path(args.csv).resolve() == Path(args.markdown).resolve():
        raise SnucError(
            f"--csv and --markdown both name {args.csv}; the table would replace the CSV, "
            "so give them different files"
        )
    if args.threads is not None:  # every run of this process and its workers' share
        os.environ[THREADS_VARIABLE] = str(checked_threads(args.threads))
    else:  # a bad SNUC_THREADS: refused before data is read or a model compiled
        checked_threads(None)
    spec = load_study(args.spec, _eval_overrides(args))
    rows = study.run_study(
        spec,
        executor=args.executor,
        workers=args.workers,
        address=args.address,
        resume=args.resume,
        progress=args.progress or sys.stderr.isatty(),
    )
    sys.stdout.write(ev.format_results(rows))
    if args.spec is not None:
        sys.stdout.write("\n" + study_views.format_knobs(rows))
    writers = {
        "csv": lambda p: ev.write_text_atomic(p, ev.to_csv(rows)),
        "markdown": lambda p: ev.write_text_atomic(p, ev.to_markdown(rows)),
        "parquet": lambda p: study_views.write_parquet(rows, p),
        "pareto": lambda p: study_views.plot_pareto(rows, p),
    }
    for kind, write in writers.items():
        if kind in spec.outputs:
            print(f"wrote {write(spec.outputs[kind])}", file=sys.stderr)
    return EXIT_OK


def _eval_overrides(args: argparse.Namespace) -> dict:
    """``snuc eval``'s options as spec keys (SPEC §12): the lists parsed and checked."""
    from snuc import evaluate as ev

    given = {
        "models": None if args.model is None else [args.model],
        "tasks": None if args.task is None else [args.task],
        "split": args.split,
        "data_dir": args.data_dir,
        "data": args.data,
        "metric": args.metric,
        "limit": args.limit,
        "steps": args.steps,
        "columns": args.columns,
        "backend": args.backend,
        "chips": args.chips,
        "batch_size": args.batch_size,
        "modes": args.modes and ev.parse_modes(args.modes),
        "t_inference": args.t_inference and ev.parse_times(args.t_inference),
        "seeds": args.seeds and ev.parse_seeds(args.seeds),
        "coding_seeds": args.coding_seeds and ev.parse_seeds(args.coding_seeds, "--coding-seeds"),
        "drift_compensation": args.drift_compensation
        and [c or "off" for c in ev.parse_compensation(args.drift_compensation)],
        "placement": args.placement and ev.parse_targets(args.placement, "--placement"),
        "duplicate": args.duplicate and ev.parse_seeds(args.duplicate, "--duplicate"),
        "calibrate": args.calibrate and ev.parse_targets(args.calibrate, "--calibrate"),
        "targets": args.targets and {"base": ev.parse_targets(args.targets)},
    }
    outputs = {
        k: getattr(args, k) for k in ("jsonl", "csv", "markdown", "parquet", "pareto", "cache")
    }
    overrides = {k: v for k, v in given.items() if v is not None}
    if any(v is not None for v in outputs.values()):
        overrides["output"] = {k: v for k, v in outputs.items() if v is not None}
    return overrides


def _cmd_plot_study(args: argparse.Namespace) -> int:
    from snuc import evaluate as ev
    from snuc import study_views

    rows = study_views.read_rows(args.results)
    if not rows:
        raise SnucError(f"results file {args.results} holds no rows yet")
    sys.stdout.write(ev.format_results(rows) + "\n" + study_views.format_knobs(rows))
    if args.output is not None:
        print(f"wrote {study_views.plot_pareto(rows, args.output)}", file=sys.stderr)
    return EXIT_OK


def main(argv: Sequence[str] | None = None) -> int:
    """Run the CLI; returns the exit status (the console script exits with it)."""
    argv = list(sys.argv[1:] if argv is None else argv)
    debug = "--debug" in argv
    if debug:
        # Rewrites that did not apply log why at DEBUG (snuc.passes.base.Match).
        logging.basicConfig(format="%(name)s: %(message)s")
        logging.getLogger("snuc").setLevel(logging.DEBUG)
    try:
        args = _build_parser().parse_args(argv)
        return args.handler(args)
    except SnucError as exc:
        print(f"snuc: error: {_one_line(str(exc))}", file=sys.stderr)
        return EXIT_USAGE
    except KeyboardInterrupt:
        print("snuc: interrupted", file=sys.stderr)
        return 130
    except BrokenPipeError:
        # The reader of stdout went away (`snuc targets | head`): not an internal error.
        # Point stdout at /dev/null so the interpreter's final flush does not fail again.
        _silence_stdout()
        return EXIT_BROKEN_PIPE
    except Exception as exc:  # noqa: BLE001 -- the CLI's last line of defence
        if debug:
            traceback.print_exc()
        else:
            print(
                f"snuc: internal error: {type(exc).__name__}: {_one_line(str(exc))} "
                "(run with --debug for the traceback)",
                file=sys.stderr,
            )
        return EXIT_INTERNAL


def _silence_stdout() -> None:
    try:
        fd = sys.stdout.fileno()
    except (AttributeError, OSError, ValueError):
        return  # not a real file (a test's capture): nothing will flush to a closed pipe
    devnull = os.open(os.devnull, os.O_WRONLY)
    os.dup2(devnull, fd)
    os.close(devnull)


def _one_line(message: str) -> str:
    return " ".join(message.split())


if __name__ == "__main__":
    sys.exit(main())
