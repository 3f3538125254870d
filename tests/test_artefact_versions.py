"""Artefacts of an older format (SPEC §5): one line naming the snuc that wrote them and
asking to recompile.

``tests/golden/snu_small_format1.snuc`` is ``examples/snu_small.onnx`` compiled by snuc
before the neuron family (format version 1), kept as it was written.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from cli_helpers import assert_one_line_error, run_cli

import snuc
from snuc.runtime.artefact import FORMAT_VERSION

OLD = Path(__file__).parent / "golden" / "snu_small_format1.snuc"


def test_the_committed_artefact_is_of_the_older_format():
    manifest = json.loads((OLD / "manifest.json").read_text())
    assert manifest["format_version"] == 1 < FORMAT_VERSION


def test_an_older_artefact_fails_naming_its_writer():
    with pytest.raises(snuc.SnucError) as excinfo:
        snuc.load(OLD)
    message = str(excinfo.value)
    assert "\n" not in message
    assert "has format version 1 (written by snuc 0.1.0)" in message
    assert f"reads format version {FORMAT_VERSION}" in message
    assert message.endswith("recompile the model")


def test_snuc_run_of_an_older_artefact_is_one_line_and_writes_nothing(tmp_path, capsys):
    x = tmp_path / "x.npy"
    np.save(x, np.zeros((3, 1, 32), np.float32))
    out = tmp_path / "y.npy"
    status, _, err = run_cli(capsys, "run", str(OLD), "--input", str(x), "-o", str(out))
    assert_one_line_error(status, err, "format version 1", "snuc 0.1.0", "recompile")
    assert not out.exists()


def test_an_unprintable_writer_is_not_echoed(tmp_path):
    import shutil

    copy = Path(shutil.copytree(OLD, tmp_path / "old.snuc"))
    manifest = json.loads((copy / "manifest.json").read_text())
    manifest["created_by"] = "snuc\n9\x1b[2J"
    (copy / "manifest.json").write_text(json.dumps(manifest))
    with pytest.raises(snuc.SnucError, match="written by an unknown snuc"):
        snuc.load(copy)
