"""Hostile artefacts and run inputs (SPEC §9; issue "Hardening"): each is refused with exit
2 and one line on stderr, before it allocates or inflates without bound, leaving no file.

The cases whose unguarded form reads gigabytes or forever run ``snuc`` in a subprocess
under an address-space limit (RLIMIT_AS) and a timeout, with its own temporary folder, so
the test measures the bound instead of trusting it.
"""

from __future__ import annotations

import builtins
import errno
import hashlib
import json
import os
import pathlib
import resource
import shutil
import stat
import subprocess
import sys
import zipfile
from pathlib import Path

import numpy as np
import onnx
import pytest
from cli_helpers import assert_one_line_error, run_cli
from onnx_models import snu_scan_model

from snuc import cli
from snuc.driver import compile_model
from snuc.runtime import io as run_io
from snuc.runtime.artefact import load

EXAMPLE = Path(__file__).resolve().parent.parent / "examples" / "snu_small.onnx"
ADDRESS_SPACE_LIMIT = 1536 << 20
"""Address space of a ``snuc report`` or ``snuc run`` subprocess (1.5 GiB: a valid small
artefact needs well under 1 GiB; each bomb below would take more than 1.5 GiB)."""
FILE_SIZE_LIMIT = 64 << 20
"""The largest file the subprocess may write (RLIMIT_FSIZE): a temporary copy of an
inflated member beyond it fails, so the tests see a copy that was not bounded."""
BOMB_BYTES = 800 << 20
"""What a bomb member inflates to (from under 1 MB of zip)."""


@pytest.fixture(scope="module")
def compiled():
    return compile_model(EXAMPLE)


@pytest.fixture
def saved(compiled, tmp_path) -> Path:
    return compiled.save(tmp_path / "a.snuc")


@pytest.fixture
def spikes(tmp_path) -> Path:
    path = tmp_path / "x.npy"
    np.save(path, (np.random.default_rng(0).random((4, 2, 32)) > 0.5).astype(np.float32))
    return path


def _snuc_limited(
    tmp_path: Path, *argv: object, timeout: float = 120
) -> subprocess.CompletedProcess:
    """``snuc ARGV`` in a subprocess with capped address space and its own TMPDIR."""
    scratch = tmp_path / "scratch"
    scratch.mkdir(exist_ok=True)

    def cap() -> None:
        resource.setrlimit(resource.RLIMIT_AS, (ADDRESS_SPACE_LIMIT, ADDRESS_SPACE_LIMIT))
        resource.setrlimit(resource.RLIMIT_FSIZE, (FILE_SIZE_LIMIT, FILE_SIZE_LIMIT))

    code = "import sys; from snuc.cli import main; sys.exit(main(sys.argv[1:]))"
    return subprocess.run(
        [sys.executable, "-c", code, *map(str, argv)],
        capture_output=True,
        text=True,
        preexec_fn=cap,
        timeout=timeout,
        env={**os.environ, "TMPDIR": str(scratch)},
    )


def _assert_refused(result: subprocess.CompletedProcess, *needles: str) -> None:
    assert_one_line_error(result.returncode, result.stderr, *needles)


def _rewrite_manifest(artefact: Path, edit) -> None:
    manifest = json.loads((artefact / "manifest.json").read_text())
    edit(manifest)
    (artefact / "manifest.json").write_text(json.dumps(manifest, indent=2))


def _replace_member(artefact: Path, name: str, data: bytes) -> None:
    """Replace a member and recompute its checksum: a tamperer's edit."""
    (artefact / name).write_bytes(data)

    def edit(manifest):
        manifest["members"][name] = {"sha256": hashlib.sha256(data).hexdigest(), "size": len(data)}

    _rewrite_manifest(artefact, edit)


def _zip_with_bomb(artefact: Path, out: Path, bomb: str, *, honest_manifest: bool) -> Path:
    """A zip of ``artefact`` whose member ``bomb`` inflates to BOMB_BYTES of spaces."""
    chunk = b" " * (1 << 20)
    digest = hashlib.sha256()
    for _ in range(BOMB_BYTES >> 20):
        digest.update(chunk)
    manifest = json.loads((artefact / "manifest.json").read_text())
    if honest_manifest and bomb != "manifest.json":
        manifest["members"][bomb] = {"sha256": digest.hexdigest(), "size": BOMB_BYTES}
    with zipfile.ZipFile(out, "w", zipfile.ZIP_DEFLATED) as zf:
        for member in ["manifest.json", *sorted(manifest["members"])]:
            if member == bomb:
                with zf.open(member, "w", force_zip64=True) as f:
                    for _ in range(BOMB_BYTES >> 20):
                        f.write(chunk)
            elif member == "manifest.json":
                zf.writestr(member, json.dumps(manifest))
            else:
                zf.write(artefact / member, member)
    assert out.stat().st_size < 4 << 20
    return out


# ------------------------------------------------------------------ 1. limits before work


def test_a_valid_artefact_reports_within_the_address_space_limit(saved, tmp_path):
    result = _snuc_limited(tmp_path, "report", saved)
    assert result.returncode == 0, result.stderr


@pytest.mark.parametrize("honest_manifest", [True, False])
def test_zip_report_bomb_is_refused_before_it_is_inflated(saved, tmp_path, honest_manifest):
    bomb = _zip_with_bomb(
        saved, tmp_path / "bomb.zip", "report.json", honest_manifest=honest_manifest
    )
    result = _snuc_limited(tmp_path, "report", bomb)
    # The manifest's size, or the zip's, is refused before a byte is inflated or copied.
    _assert_refused(result, "report.json", "over the limit" if honest_manifest else "tampered")
    assert not any((tmp_path / "scratch").iterdir())


def test_zip_manifest_bomb_is_refused_before_it_is_inflated(saved, tmp_path):
    bomb = _zip_with_bomb(saved, tmp_path / "bomb.zip", "manifest.json", honest_manifest=True)
    result = _snuc_limited(tmp_path, "report", bomb)
    _assert_refused(result, "manifest.json", "over the limit")


def test_array_header_declaring_gigabytes_is_refused_before_it_is_read(saved, tmp_path):
    data = (saved / "arrays.npz").read_bytes()
    import io as bytes_io

    buffer = bytes_io.BytesIO()
    with zipfile.ZipFile(bytes_io.BytesIO(data)) as src, zipfile.ZipFile(buffer, "w") as dst:
        for info in src.infolist():
            dst.writestr(info, src.read(info))
        with dst.open("extra/huge.npy", "w") as f:
            header = {"descr": "<f4", "fortran_order": False, "shape": (10**12,)}
            np.lib.format.write_array_header_1_0(f, header)
    _replace_member(saved, "arrays.npz", buffer.getvalue())
    result = _snuc_limited(tmp_path, "report", saved)
    _assert_refused(result, "extra/huge", "over the limit", "SNUC_MAX_TENSOR_BYTES")


def test_array_limits_follow_the_declared_sizes(saved, capsys, monkeypatch):
    """The limit is on what the headers declare, and raising it loads the same artefact:
    a legitimately large model is not refused for its size once the limit allows it."""
    largest = max(a.nbytes for a in np.load(saved / "arrays.npz").values())
    monkeypatch.setenv("SNUC_MAX_TENSOR_BYTES", str(largest - 1))
    status, _, err = run_cli(capsys, "report", saved)
    assert_one_line_error(status, err, "over the limit", "SNUC_MAX_TENSOR_BYTES")
    monkeypatch.setenv("SNUC_MAX_TENSOR_BYTES", str(largest))
    status, _, err = run_cli(capsys, "report", saved)
    assert status == 0, err


@pytest.mark.parametrize("kind", ["device", "fifo"])
def test_only_regular_files_are_read(tmp_path, kind):
    if kind == "device":
        path = Path("/dev/zero")
    else:
        path = tmp_path / "fifo.snuc"
        os.mkfifo(path)
    result = _snuc_limited(tmp_path, "report", path, timeout=30)
    _assert_refused(result, "not a .snuc artefact", "regular file")


@pytest.mark.parametrize("shape", [(10**12, 1, 32), (1, 1, 10**9)])
def test_npy_input_declaring_gigabytes_is_refused_from_its_header(saved, tmp_path, shape):
    x = tmp_path / "x.npy"
    with open(x, "wb") as f:
        np.lib.format.write_array_header_1_0(
            f, {"descr": "<f4", "fortran_order": False, "shape": shape}
        )
        f.write(b"\0" * 4096)
    result = _snuc_limited(tmp_path, "run", saved, "--input", x)
    _assert_refused(result, "input file", "over the limit")
    assert not x.with_name("x.out.npy").exists()


def test_empty_input_file_is_one_line(saved, tmp_path, capsys):
    x = tmp_path / "x.npy"
    x.write_bytes(b"")
    status, _, err = run_cli(capsys, "run", saved, "--input", x)
    assert_one_line_error(status, err, "is empty")
    assert not x.with_name("x.out.npy").exists()


@pytest.mark.parametrize(
    "report", [b"{}", b"[" * 100_000, b'{"crossbars_used": ' + b"9" * 5000 + b"}"]
)
def test_bad_report_json_is_one_line(saved, capsys, report):
    _replace_member(saved, "report.json", report)
    status, _, err = run_cli(capsys, "report", saved)
    assert_one_line_error(status, err, "report.json")


@pytest.mark.parametrize(
    "text",
    ['{"format_version": ' + "9" * 5000 + "}", "[" * 100_000 + "]" * 100_000],
)
def test_bad_manifest_json_is_one_line(saved, capsys, text):
    (saved / "manifest.json").write_text(text)
    status, _, err = run_cli(capsys, "report", saved)
    assert_one_line_error(status, err, "manifest.json")


# ------------------------------------------------------------------ 2. nothing unverified


@pytest.mark.parametrize(
    "key, value", [("prog_noise_scale", 0.0), ("read_noise_scale", 0.0), ("g_max_us", -1)]
)
def test_edited_target_in_the_manifest_is_refused(saved, spikes, capsys, key, value):
    _rewrite_manifest(saved, lambda m: m["target"].__setitem__(key, value))
    status, _, err = run_cli(capsys, "report", saved)
    assert_one_line_error(status, err, "target")
    status, _, err = run_cli(capsys, "run", saved, "--input", spikes)
    assert_one_line_error(status, err, "target")
    assert not spikes.with_name("x.out.npy").exists()


@pytest.mark.parametrize("command", ["report", "run"])
def test_garbage_program_with_a_recomputed_checksum_is_refused(saved, spikes, capsys, command):
    _replace_member(saved, "program.s", b"; nothing\nprogram @x {\n}\n")
    extra = ["--input", spikes] if command == "run" else []
    status, _, err = run_cli(capsys, command, saved, *extra)
    assert_one_line_error(status, err, "program.s")


def test_edited_report_with_a_recomputed_checksum_is_refused(saved, capsys):
    report = json.loads((saved / "report.json").read_text())
    report["crossbars_used"] = 0
    _replace_member(saved, "report.json", json.dumps(report).encode())
    status, _, err = run_cli(capsys, "report", saved)
    assert_one_line_error(status, err, "report.json")


def test_symlinked_member_is_refused(saved, tmp_path, capsys):
    outside = tmp_path / "outside.json"
    shutil.copy(saved / "report.json", outside)
    (saved / "report.json").unlink()
    (saved / "report.json").symlink_to(outside)
    status, _, err = run_cli(capsys, "report", saved)
    assert_one_line_error(status, err, "report.json", "symbolic link")


def test_symlink_member_of_a_zip_is_refused(saved, tmp_path, capsys):
    out = tmp_path / "a.zip"
    with zipfile.ZipFile(out, "w") as zf:
        for path in sorted(saved.iterdir()):
            info = zipfile.ZipInfo(path.name)
            if path.name == "program.s":
                info.external_attr = (stat.S_IFLNK | 0o777) << 16
            zf.writestr(info, path.read_bytes())
    status, _, err = run_cli(capsys, "report", out)
    assert_one_line_error(status, err, "program.s", "symbolic link")


# ------------------------------------------------------------------ 3. atomic replacement

_KILL_AFTER_FIRST_RENAME = """
import os, signal, sys
from snuc.runtime import artefact_files
from snuc.driver import compile_model

def killing(real):
    def wrapper(*args):
        result = real(*args)
        if result is not False:
            os.kill(os.getpid(), signal.SIGKILL)
        return result
    return wrapper

art = compile_model(sys.argv[1])
os.rename = killing(os.rename)
if hasattr(artefact_files, "_exchange"):
    artefact_files._exchange = killing(artefact_files._exchange)
art.save(sys.argv[2])
"""


def test_kill_right_after_the_first_rename_leaves_an_artefact(compiled, tmp_path):
    dest = compiled.save(tmp_path / "a.snuc")
    result = subprocess.run(
        [sys.executable, "-c", _KILL_AFTER_FIRST_RENAME, str(EXAMPLE), str(dest)],
        capture_output=True,
        timeout=300,
    )
    assert result.returncode == -9, result.stderr
    assert load(dest) == compiled
    # The killed write's leftovers go with the next write to the same path.
    compiled.save(dest)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a.snuc"]


# ------------------------------------------------------------------ 4. no silent wrong results


@pytest.mark.parametrize("how", ["hardlink", "symlink", "dotted"])
def test_output_that_is_the_input_is_refused(saved, spikes, capsys, how):
    before = spikes.read_bytes()
    if how == "hardlink":
        out = spikes.with_name("same.npy")
        os.link(spikes, out)
    elif how == "symlink":
        out = spikes.with_name("same.npy")
        out.symlink_to(spikes)
    else:
        out = spikes.parent / "." / spikes.name
    status, _, err = run_cli(capsys, "run", saved, "--input", spikes, "-o", out)
    assert_one_line_error(status, err, "is the input file")
    assert spikes.read_bytes() == before


def test_a_killed_output_write_is_cleaned_by_the_next(saved, spikes, capsys):
    out = spikes.with_name("y.npy")
    gone = subprocess.run(
        [sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True
    )
    dead = spikes.with_name(f".y.npy.{int(gone.stdout)}-0123456789ab.tmp")
    live = spikes.with_name(f".y.npy.{os.getpid()}-0123456789ab.tmp")  # a writer still running
    dead.write_bytes(b"half an array")
    live.write_bytes(b"half an array")
    status, _, err = run_cli(capsys, "run", saved, "--input", spikes, "-o", out)
    assert status == 0, err
    assert out.exists() and not dead.exists() and live.exists()


@pytest.mark.parametrize("value", [np.nan, np.inf, -np.inf])
def test_non_finite_inputs_are_refused(saved, tmp_path, capsys, value):
    x = tmp_path / "x.npy"
    data = np.zeros((3, 1, 32), np.float32)
    data[1, 0, 5] = value
    np.save(x, data)
    status, _, err = run_cli(capsys, "run", saved, "--input", x)
    assert_one_line_error(status, err, "NaN or infinite")
    assert not x.with_name("x.out.npy").exists()


def test_t_inference_whose_drift_overflows_is_refused(saved, spikes, capsys):
    status, _, err = run_cli(capsys, "run", saved, "--input", spikes, "--t-inference", "1e308")
    assert_one_line_error(status, err, "t_inference_s", "drift model")
    assert not spikes.with_name("x.out.npy").exists()


def test_non_finite_outputs_are_announced(capsys):
    cli._warn_non_finite({"a": np.array([1.0, np.nan]), "b": np.array([np.inf, 2.0, 3.0])})
    err = capsys.readouterr().err
    assert err == "snuc: warning: 2 of 5 output values are NaN or infinite\n"
    cli._warn_non_finite(np.ones(3))
    assert capsys.readouterr().err == ""


# ------------------------------------------------------------------ 5. one line


@pytest.mark.parametrize("shape", [(0, 2, 32), (3, 0, 32)])
def test_diagnostics_of_an_empty_input_is_one_line(saved, tmp_path, capsys, shape):
    x = tmp_path / "x.npy"
    np.save(x, np.zeros(shape, np.float32))
    with _no_warnings():
        status, _, err = run_cli(capsys, "run", saved, "--input", x, "--diagnostics")
    assert_one_line_error(status, err, "--diagnostics")


class _no_warnings:
    """Fails the test if a warning escapes (it would be more lines on stderr)."""

    def __enter__(self):
        import warnings

        self._ctx = warnings.catch_warnings(record=True)
        self.caught = self._ctx.__enter__()
        warnings.simplefilter("always")
        return self

    def __exit__(self, *exc):
        self._ctx.__exit__(*exc)
        assert not self.caught, [str(w.message) for w in self.caught]


def test_nan_initial_state_is_one_line(tmp_path):
    model = tmp_path / "nan.onnx"
    onnx.save(snu_scan_model(init_value=float("nan")), model)
    # A subprocess: its stderr is what a user sees, warnings included.
    code = "import sys; from snuc.cli import main; sys.exit(main(sys.argv[1:]))"
    argv = [sys.executable, "-c", code, "compile", str(model), "-o", str(tmp_path / "nan.snuc")]
    result = subprocess.run(argv, capture_output=True, text=True, timeout=300)
    _assert_refused(result, "initial state")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["nan.onnx"]


def test_numerical_warnings_of_a_run_are_one_line(capsys):
    def run():
        with cli._numerical_errors():
            np.array([np.nan, 1.0]).mean(axis=0, where=np.array([False, False]))

    with _no_warnings(), pytest.raises(cli.SnucError, match="numerical error"):
        run()


def test_eval_progress_only_to_a_terminal_or_with_progress(tmp_path, capsys, monkeypatch):
    data = os.environ.get("SNUC_DATA", "/work/shared/data")
    if not Path(data, "jsb").exists():
        pytest.skip("no JSB data")
    model = EXAMPLE.parent / "models" / "jsb_snu.onnx"
    argv = ["eval", model, "--task", "jsb", "--data-dir", data, "--limit", 1, "--modes", "float"]
    status, out, err = run_cli(capsys, *argv)
    assert status == 0, err
    assert "snuc eval [" not in err and err == ""
    status, out, err = run_cli(capsys, *argv, "--progress")
    assert status == 0 and err.count("snuc eval [") == 1, err


def test_output_on_a_read_only_file_system_is_one_line(saved, spikes, capsys, monkeypatch):
    def refuse(path):
        raise OSError(errno.EROFS, "Read-only file system", str(path))

    def read_only(path, mode="r", *args, **kwargs):
        if set(mode) & set("wxa+"):
            refuse(path)
        return builtins.open(path, mode, *args, **kwargs)

    monkeypatch.setattr(run_io, "open", read_only, raising=False)
    monkeypatch.setattr(pathlib.Path, "unlink", lambda self, missing_ok=False: refuse(self))
    status, _, err = run_cli(capsys, "run", saved, "--input", spikes)
    assert_one_line_error(status, err, "Read-only file system")
