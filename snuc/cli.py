"""The ``snuc`` command line (SPEC §8).

Exit status: 0 on success; 2 for bad input or usage, with one line ``snuc: error: ...``
on stderr and no traceback; 1 for an internal error (the traceback with ``--debug``).
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
import traceback
from collections.abc import Sequence

from snuc import __version__
from snuc.ir.errors import SnucError

EXIT_OK, EXIT_INTERNAL, EXIT_USAGE = 0, 1, 2


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


def _build_parser() -> argparse.ArgumentParser:
    parser = _Parser(prog="snuc", description="Compile SNU networks for simulated PCM chips.")
    parser.add_argument("--version", action="version", version=f"snuc {__version__}")
    parser.add_argument("--debug", action="store_true", help="show tracebacks of internal errors")
    sub = parser.add_subparsers(dest="command", required=True, parser_class=_Parser)

    comp = sub.add_parser("compile", help="compile an ONNX model for a PCM target")
    comp.add_argument("model", help="ONNX model (sequence form with a Scan, or step form)")
    comp.add_argument("--target", default=None, help="pcm-RxC, a preset, or a TOML file")
    comp.add_argument(
        "-o", "--output", default=None, help="artefact path (default: beside the model)"
    )
    comp.add_argument(
        "--chips", type=int, default=None, help="chips available (overrides the target)"
    )
    comp.add_argument(
        "--emit",
        choices=["ir", "report"],
        default=None,
        help="print the IR (text) or the report (JSON) to stdout and write no artefact",
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
    comp.set_defaults(handler=_cmd_compile)

    rep = sub.add_parser("report", help="print an artefact's report")
    rep.add_argument("artefact", help="a .snuc artefact (directory or zip)")
    rep.add_argument("--json", action="store_true", help="print report.json")
    rep.add_argument("--plot", metavar="OUT.png", default=None, help="draw the crossbars and tiles")
    rep.set_defaults(handler=_cmd_report)

    targets = sub.add_parser("targets", help="list target presets and parameters")
    targets.add_argument("--json", action="store_true", help="machine-readable output")
    targets.set_defaults(handler=_cmd_targets)
    return parser


def _target_from_args(args: argparse.Namespace):  # noqa: ANN202 -- TargetSpec, imported lazily
    from snuc.ir.target import DEFAULT_TARGET, parse_target, with_overrides

    target = parse_target(args.target or DEFAULT_TARGET)
    if args.chips is not None:
        target = with_overrides(target, chips=args.chips)
    return target


def _cmd_targets(args: argparse.Namespace) -> int:
    from snuc.ir.target import describe_targets, format_targets

    if args.json:
        json.dump(describe_targets(), sys.stdout, indent=2)
        sys.stdout.write("\n")
    else:
        sys.stdout.write(format_targets())
    return EXIT_OK


def _cmd_compile(args: argparse.Namespace) -> int:
    from snuc import driver

    state_pairs = dict(args.state) or None
    if args.print_after is not None and args.emit != "ir":
        raise SnucError("--print-after needs --emit ir")
    if args.emit is not None and args.output is not None:
        raise SnucError("--emit prints to stdout and writes no artefact; drop -o or --emit")
    target = _target_from_args(args)
    if args.emit == "ir":
        text = driver.emit_ir(
            args.model,
            state_pairs=state_pairs,
            target=target,
            print_after=args.print_after,
            calibrate=args.calibrate,
        )
        sys.stdout.write(text)
        return EXIT_OK
    art = driver.compile_model(
        args.model, target, state_pairs=state_pairs, calibrate=args.calibrate
    )
    if args.emit == "report":
        json.dump(art.report, sys.stdout, indent=2)
        sys.stdout.write("\n")
        return EXIT_OK
    out = art.save(args.output or driver.default_artefact_path(args.model))
    report = art.report
    print(
        f"wrote {out}: {report['crossbars_used']} crossbars of {report['crossbars_available']}, "
        f"utilization {report['utilization']:.1%}",
        file=sys.stderr,
    )
    return EXIT_OK


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


def _one_line(message: str) -> str:
    return " ".join(message.split())


if __name__ == "__main__":
    sys.exit(main())
