"""Helpers for tests that drive the ``snuc`` command line in process."""

from __future__ import annotations

from snuc.cli import main


def run_cli(capsys, *argv) -> tuple[int, str, str]:
    """``snuc ARGV...`` (arguments turned to strings): exit status, stdout, stderr."""
    status = main([str(a) for a in argv])
    out, err = capsys.readouterr()
    return status, out, err


def assert_one_line_error(status: int, err: str, *needles: str) -> None:
    """Exit status 2 and one line ``snuc: error: ...`` on stderr holding every needle."""
    assert status == 2, err
    lines = err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("snuc: error: "), err
    for needle in needles:
        assert needle in lines[0], lines[0]
