"""The .snuc artefact: round trips as a directory and a zip, atomic replacement, and every
way a bad artefact or an unwritable path is refused (SPEC §5, §9)."""

from __future__ import annotations

import hashlib
import io
import json
import os
import pickle
import shutil
import zipfile
from pathlib import Path

import numpy as np
import pytest

from snuc import __version__
from snuc.ir import Graph, SnucError, TensorType, ops
from snuc.runtime import artefact_files
from snuc.runtime.artefact import FORMAT_VERSION, Artefact, io_spec, load

TARGET = {"name": "pcm-256x256", "rows": 256, "cols": 256, "cores": 64, "g_max_us": 25.0}
REPORT = {
    "crossbars_used": 2,
    "tiles": [{"layer": "fc1", "crossbar": 0, "row0": 0, "col0": 0, "rows": 20, "cols": 64}],
    "utilization": 0.125,
}
PROGRAM = "; tiny\nmvm x0, t0\nhalt\n"

# Unpickling the object array below would call this; a loader that unpickles records it.
UNPICKLED: list[str] = []


class _Bomb:
    def __reduce__(self):
        return (UNPICKLED.append, ("unpickled!",))


def _graph() -> Graph:
    """x -> dense -> snu.layer (recurrent state) -> dense -> sigmoid."""
    rng = np.random.default_rng(0)
    g = Graph("tiny")
    g.add_constant("fc1.weight", rng.standard_normal((20, 32)).astype(np.float32))
    g.add_constant("snu1.decay", np.float32(0.8))
    g.add_constant("snu1.bias", np.full(32, -0.5, np.float32))
    g.add_constant("out.weight", rng.standard_normal((32, 5)).astype(np.float32))
    g.add_input("x", TensorType("f32", ("B", 20)))
    g.add_state("s", TensorType("f32", ("B", 32)))
    g.add_state("y", TensorType("f32", ("B", 32)))
    (a,) = g.add_node(ops.Dense(), ["x", "fc1.weight"], "a")
    s, y = g.add_node(ops.SNULayer(), [a, "s", "y", "snu1.decay", "snu1.bias"], ["s1", "y1"])
    (o,) = g.add_node(ops.Dense(), [y, "out.weight"], "o")
    (p,) = g.add_node(ops.Sigmoid(), [o], "p")
    g.set_next("s", s)
    g.set_next("y", y)
    g.outputs.append(p)
    g.verify()
    return g


def _artefact(**changes) -> Artefact:
    fields = {
        "graph": _graph(),
        "target": TARGET,
        "report": REPORT,
        "program": PROGRAM,
        "source": "tiny.onnx",
        "extra_arrays": {
            "calib.x": np.linspace(0, 1, 60, dtype=np.float32).reshape(3, 4, 5),
            # np.savez's own parameter name: must not clash with anything.
            "file": np.arange(3, dtype=np.int64),
        },
    }
    fields.update(changes)
    return Artefact(**fields)


def _listing(directory: Path) -> set[str]:
    """Every entry under ``directory`` (hidden ones included), relative."""
    return {str(p.relative_to(directory)) for p in directory.rglob("*")}


def _error(path: Path) -> str:
    with pytest.raises(SnucError) as info:
        load(path)
    message = str(info.value)
    assert "\n" not in message
    assert str(path) in message
    return message


def _manifest(path: Path) -> dict:
    return json.loads((path / "manifest.json").read_text())


def _rewrite(path: Path, member: str, data: bytes) -> None:
    """Replace a member and fix its checksum, as someone crafting an artefact would."""
    (path / member).write_bytes(data)
    manifest = _manifest(path)
    manifest["members"][member] = {
        "sha256": hashlib.sha256(data).hexdigest(),
        "size": len(data),
    }
    (path / "manifest.json").write_text(json.dumps(manifest))


@pytest.fixture
def saved(tmp_path: Path) -> Path:
    path = tmp_path / "tiny.snuc"
    _artefact().save(path)
    return path


# --------------------------------------------------------------------------- io specs


def test_io_spec_is_time_major_with_symbolic_dims() -> None:
    inputs, outputs = io_spec(_graph())
    assert inputs == [{"name": "x", "shape": ["T", "B", 20], "dtype": "float32"}]
    assert outputs == [{"name": "p", "shape": ["T", "B", 5], "dtype": "float32"}]
    art = _artefact()
    assert (art.inputs, art.outputs) == (inputs, outputs)


def test_io_spec_of_token_ids() -> None:
    g = Graph("emb")
    g.add_constant("table", np.zeros((10, 4), np.float32))
    g.add_input("ids", TensorType("i64", ("B",)))
    g.add_node(ops.Gather(), ["table", "ids"], "e")
    g.outputs.append("e")
    inputs, outputs = io_spec(g)
    assert inputs == [{"name": "ids", "shape": ["T", "B"], "dtype": "int64"}]
    assert outputs == [{"name": "e", "shape": ["T", "B", 4], "dtype": "float32"}]


# --------------------------------------------------------------------------- round trips


def test_directory_round_trip(saved: Path) -> None:
    assert sorted(os.listdir(saved)) == [
        "arrays.npz",
        "graph.ir",
        "manifest.json",
        "program.s",
        "report.json",
    ]
    loaded = load(saved)
    original = _artefact()
    assert loaded == original
    assert loaded.graph == original.graph
    assert loaded.target == TARGET
    assert loaded.report == REPORT
    assert loaded.program == PROGRAM
    assert loaded.source == "tiny.onnx"
    assert loaded.inputs == original.inputs and loaded.outputs == original.outputs
    assert loaded.extra_arrays.keys() == {"calib.x", "file"}
    assert loaded.extra_arrays["file"].dtype == np.int64
    assert Artefact.load(saved) == original
    assert _listing(saved.parent) == {"tiny.snuc", *(f"tiny.snuc/{n}" for n in os.listdir(saved))}


def test_members_get_default_permissions(saved: Path, tmp_path: Path) -> None:
    os.mkdir(tmp_path / "plain_dir")
    (tmp_path / "plain_file").write_bytes(b"")
    assert saved.stat().st_mode == (tmp_path / "plain_dir").stat().st_mode
    assert (saved / "graph.ir").stat().st_mode == (tmp_path / "plain_file").stat().st_mode
    _artefact().save(tmp_path / "z.zip")
    assert (tmp_path / "z.zip").stat().st_mode == (tmp_path / "plain_file").stat().st_mode


def test_manifest_contents(saved: Path) -> None:
    manifest = _manifest(saved)
    assert manifest["format_version"] == FORMAT_VERSION == 2
    assert manifest["snuc_version"] == __version__
    assert manifest["created_by"] == f"snuc {__version__}"
    assert manifest["target"] == TARGET
    assert manifest["source"] == "tiny.onnx"
    assert manifest["inputs"] == [{"name": "x", "shape": ["T", "B", 20], "dtype": "float32"}]
    assert manifest["outputs"] == [{"name": "p", "shape": ["T", "B", 5], "dtype": "float32"}]
    assert set(manifest["members"]) == {"graph.ir", "arrays.npz", "program.s", "report.json"}
    for name, entry in manifest["members"].items():
        data = (saved / name).read_bytes()
        assert entry == {"sha256": hashlib.sha256(data).hexdigest(), "size": len(data)}


def test_arrays_are_a_plain_npz_with_dotted_names(saved: Path) -> None:
    with np.load(saved / "arrays.npz", allow_pickle=False) as npz:
        assert sorted(npz.files) == [
            "constants/fc1.weight",
            "constants/out.weight",
            "constants/snu1.bias",
            "extra/calib.x",
            "extra/file",
        ]
        assert np.array_equal(npz["constants/fc1.weight"], _graph().constants["fc1.weight"])
    # The one small constant is in the text, not the arrays.
    assert "const @snu1.decay : f32[] = 0.800000011920929" in (saved / "graph.ir").read_text()


@pytest.mark.parametrize("name, flag", [("tiny.snuc.zip", False), ("tiny.snuc", True)])
def test_zip_round_trip(tmp_path: Path, name: str, flag: bool) -> None:
    path = tmp_path / name
    assert _artefact().save(path, zip=flag) == path
    assert path.is_file()
    with zipfile.ZipFile(path) as zf:
        assert zf.namelist()[0] == "manifest.json"
        assert set(zf.namelist()) == {
            "manifest.json",
            "graph.ir",
            "arrays.npz",
            "program.s",
            "report.json",
        }
    assert load(path) == _artefact()
    assert _listing(tmp_path) == {name}


def test_zip_of_the_artefact_directory_loads(saved: Path, tmp_path: Path) -> None:
    archive = shutil.make_archive(str(tmp_path / "packed"), "zip", tmp_path, "tiny.snuc")
    with zipfile.ZipFile(archive) as zf:
        assert "tiny.snuc/manifest.json" in zf.namelist()
    assert load(archive) == _artefact()


def test_without_program_and_extra_arrays(tmp_path: Path) -> None:
    art = _artefact(program=None, extra_arrays={})
    art.save(tmp_path / "a.snuc")
    assert not (tmp_path / "a.snuc" / "program.s").exists()
    loaded = load(tmp_path / "a.snuc")
    assert loaded.program is None and loaded.extra_arrays == {}
    assert loaded == art


def test_equality_sees_every_field() -> None:
    art = _artefact()
    assert art == _artefact()
    assert art != _artefact(report={**REPORT, "crossbars_used": 3})
    assert art != _artefact(program=None)
    assert art != _artefact(source="other.onnx")
    assert art != _artefact(extra_arrays={"file": np.arange(3, dtype=np.int32)})


def test_numpy_scalars_in_the_report_are_saved_as_json(tmp_path: Path) -> None:
    art = _artefact(report={"cycles": np.int64(7), "util": np.float32(0.5), "v": np.ones(2)})
    art.save(tmp_path / "a.snuc")
    assert load(tmp_path / "a.snuc").report == {"cycles": 7, "util": 0.5, "v": [1.0, 1.0]}


def test_object_extra_arrays_are_refused() -> None:
    with pytest.raises(SnucError, match="extra array 'bad' has dtype object"):
        _artefact(extra_arrays={"bad": np.array([{}], dtype=object)})


# --------------------------------------------------------------------------- replacing


@pytest.mark.parametrize("name", ["tiny.snuc", "tiny.snuc.zip"])
def test_replacing_an_existing_artefact(tmp_path: Path, name: str) -> None:
    path = tmp_path / name
    _artefact().save(path)
    new = _artefact(report={"crossbars_used": 9}, program=None)
    new.save(path)
    assert load(path) == new
    assert _listing(tmp_path) == _listing_of_fresh(new, tmp_path / "fresh", name)


def _listing_of_fresh(art: Artefact, where: Path, name: str) -> set[str]:
    where.mkdir()
    art.save(where / name)
    return _listing(where)


def test_a_directory_artefact_replaced_by_a_zip_of_the_same_name(saved: Path) -> None:
    new = _artefact(report={"crossbars_used": 9})
    new.save(saved, zip=True)
    assert saved.is_file()
    assert load(saved) == new
    assert _listing(saved.parent) == {"tiny.snuc"}


def test_an_empty_directory_is_replaced(tmp_path: Path) -> None:
    (tmp_path / "out.snuc").mkdir()
    _artefact().save(tmp_path / "out.snuc")
    assert load(tmp_path / "out.snuc") == _artefact()


@pytest.mark.parametrize("kind", ["file", "dir"])
def test_something_that_is_not_an_artefact_is_never_overwritten(tmp_path: Path, kind: str) -> None:
    path = tmp_path / "model.onnx"
    if kind == "file":
        path.write_bytes(b"precious")
    else:
        path.mkdir()
        (path / "notes.txt").write_text("precious")
    with pytest.raises(SnucError, match="exists and is not a .snuc artefact") as info:
        _artefact().save(path)
    assert str(path) in str(info.value)
    if kind == "file":
        assert path.read_bytes() == b"precious"
        assert _listing(tmp_path) == {"model.onnx"}
    else:
        assert _listing(tmp_path) == {"model.onnx", "model.onnx/notes.txt"}


# --------------------------------------------------------------------------- writing fails


def test_parent_is_a_regular_file(tmp_path: Path) -> None:
    (tmp_path / "plain").write_text("x")
    path = tmp_path / "plain" / "out.snuc"
    with pytest.raises(SnucError) as info:
        _artefact().save(path)
    message = str(info.value)
    assert message == f"cannot write artefact {path}: {tmp_path / 'plain'} is not a directory"
    assert _listing(tmp_path) == {"plain"}


def test_parent_is_missing(tmp_path: Path) -> None:
    path = tmp_path / "nowhere" / "out.snuc"
    with pytest.raises(SnucError, match="does not exist; create it first") as info:
        _artefact().save(path)
    assert str(path) in str(info.value)
    assert _listing(tmp_path) == set()


@pytest.mark.parametrize("name", ["tiny.snuc", "tiny.snuc.zip"])
def test_failure_while_writing_keeps_the_old_artefact(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, name: str
) -> None:
    path = tmp_path / name
    _artefact().save(path)
    before = _listing(tmp_path)

    def disk_full(*args: object) -> None:
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(artefact_files, "_write_npz", disk_full)
    with pytest.raises(SnucError) as info:
        _artefact(report={"new": True}).save(path)
    message = str(info.value)
    assert message.startswith(f"cannot write artefact {path}: No space left on device")
    assert "\n" not in message
    assert _listing(tmp_path) == before
    assert load(path) == _artefact()


def test_internal_error_while_writing_cleans_up_and_propagates(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    def bug(*args: object) -> None:
        raise RuntimeError("a bug")

    monkeypatch.setattr(artefact_files, "_pack_zip", bug)
    with pytest.raises(RuntimeError, match="a bug"):
        _artefact().save(tmp_path / "a.snuc.zip")
    assert _listing(tmp_path) == set()


def test_failure_while_renaming_into_place_restores_the_old_artefact(
    saved: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    before = _listing(saved.parent)
    real_rename = os.rename

    def rename(src: os.PathLike, dst: os.PathLike) -> None:
        if Path(src).name.endswith(".tmp"):
            raise OSError(5, "Input/output error")
        real_rename(src, dst)

    monkeypatch.setattr(os, "rename", rename)
    # The fallback of systems without an atomic exchange: two renames.
    monkeypatch.setattr(artefact_files, "_exchange", lambda a, b: False)
    with pytest.raises(SnucError, match="Input/output error"):
        _artefact(report={"new": True}).save(saved)
    assert _listing(saved.parent) == before
    assert load(saved) == _artefact()


def test_unserialisable_report_touches_nothing(tmp_path: Path) -> None:
    with pytest.raises(TypeError):
        _artefact(report={"bad": object()}).save(tmp_path / "a.snuc")
    assert _listing(tmp_path) == set()


# --------------------------------------------------------------------------- bad artefacts


def test_missing_path(tmp_path: Path) -> None:
    path = tmp_path / "missing.snuc"
    assert _error(path) == f"artefact {path} does not exist"


def test_plain_file(tmp_path: Path) -> None:
    path = tmp_path / "model.snuc"
    path.write_text("not an artefact")
    assert "is not a .snuc artefact" in _error(path)


def test_empty_directory(tmp_path: Path) -> None:
    path = tmp_path / "empty.snuc"
    path.mkdir()
    assert "is not a .snuc artefact: it has no manifest.json" in _error(path)


def test_manifest_missing(saved: Path) -> None:
    (saved / "manifest.json").unlink()
    assert "has no manifest.json" in _error(saved)


def test_manifest_not_json(saved: Path) -> None:
    (saved / "manifest.json").write_text('{"format_version": 1,')
    assert "manifest.json is not valid JSON" in _error(saved)


@pytest.mark.parametrize(
    "change, problem",
    [
        (lambda m: [], "it is not a JSON object"),
        (lambda m: m.pop("format_version"), "format_version is missing or not an integer"),
        (lambda m: m.update(format_version="1"), "format_version is missing or not an integer"),
        (lambda m: m.pop("members"), "members is missing or not a JSON object"),
        (lambda m: m.update(target=[]), "target is missing or not a JSON object"),
        (lambda m: m["members"].pop("graph.ir"), "it does not list graph.ir"),
        (lambda m: m["members"].update({"../x": m["members"]["graph.ir"]}), "'../x'"),
        (lambda m: m["members"]["report.json"].update(size=-1), "size of report.json"),
        (lambda m: m["members"]["report.json"].update(sha256="00"), "sha256 of report.json"),
    ],
)
def test_manifest_of_the_wrong_shape(saved: Path, change, problem: str) -> None:
    manifest = _manifest(saved)
    replaced = change(manifest)
    data = replaced if isinstance(replaced, list) else manifest
    (saved / "manifest.json").write_text(json.dumps(data))
    message = _error(saved)
    assert "manifest.json is malformed" in message
    assert problem in message


def test_wrong_format_version(saved: Path) -> None:
    manifest = _manifest(saved)
    manifest["format_version"] = 3
    (saved / "manifest.json").write_text(json.dumps(manifest))
    message = _error(saved)
    assert "has format version 3" in message
    assert f"reads format version {FORMAT_VERSION}" in message
    assert "recompile the model" in message


def test_member_missing(saved: Path) -> None:
    (saved / "report.json").unlink()
    assert "member report.json is missing" in _error(saved)


def test_member_truncated(saved: Path) -> None:
    data = (saved / "arrays.npz").read_bytes()
    (saved / "arrays.npz").write_bytes(data[: len(data) // 2])
    message = _error(saved)
    assert "member arrays.npz is tampered or truncated" in message
    assert f"{len(data) // 2} bytes" in message


@pytest.mark.parametrize("member", ["graph.ir", "arrays.npz", "program.s", "report.json"])
def test_member_tampered(saved: Path, member: str) -> None:
    data = bytearray((saved / member).read_bytes())
    data[len(data) // 2] ^= 0x01
    (saved / member).write_bytes(bytes(data))
    message = _error(saved)
    assert f"member {member} is tampered or truncated (a different sha256" in message


def test_unlisted_members_are_not_needed(saved: Path) -> None:
    manifest = _manifest(saved)
    del manifest["members"]["program.s"]
    (saved / "manifest.json").write_text(json.dumps(manifest))
    (saved / "program.s").write_text("garbage that nothing reads")
    (saved / "notes.txt").write_text("ignored")
    assert load(saved) == _artefact(program=None)


def test_pickled_object_array_is_refused_not_unpickled(saved: Path) -> None:
    buffer = io.BytesIO()
    np.savez(buffer, **{"extra/bomb": np.array([_Bomb()], dtype=object)}, allow_pickle=True)
    with np.load(saved / "arrays.npz") as npz:
        arrays = {k: npz[k] for k in npz.files}
    with zipfile.ZipFile(buffer, "a") as zf:
        for key, array in arrays.items():
            with zf.open(f"{key}.npy", "w") as member:
                np.lib.format.write_array(member, array)
    _rewrite(saved, "arrays.npz", buffer.getvalue())
    message = _error(saved)
    assert "array 'extra/bomb' in arrays.npz cannot be read" in message
    assert "snuc never unpickles" in message
    assert UNPICKLED == []


@pytest.mark.parametrize("form", ["npy", "pickle"])
def test_arrays_that_are_a_pickle_are_refused(saved: Path, form: str) -> None:
    bomb = np.array([_Bomb()], dtype=object)
    if form == "npy":
        buffer = io.BytesIO()
        np.save(buffer, bomb, allow_pickle=True)
        data = buffer.getvalue()
    else:
        data = pickle.dumps(bomb)
    _rewrite(saved, "arrays.npz", data)
    assert "arrays.npz cannot be read" in _error(saved)
    assert UNPICKLED == []


def test_invalid_ir_with_a_matching_checksum(saved: Path) -> None:
    text = (saved / "graph.ir").read_text().replace("dig.sigmoid", "dig.sigmoidd")
    _rewrite(saved, "graph.ir", text.encode())
    message = _error(saved)
    assert "invalid IR" in message and "unknown op 'dig.sigmoidd'" in message


def test_missing_constant_array(saved: Path) -> None:
    with np.load(saved / "arrays.npz") as npz:
        arrays = {k: npz[k] for k in npz.files if k != "constants/fc1.weight"}
    buffer = io.BytesIO()
    np.savez(buffer, **arrays)
    _rewrite(saved, "arrays.npz", buffer.getvalue())
    assert "no array 'fc1.weight' was given" in _error(saved)


def test_io_specs_that_do_not_match_the_graph(saved: Path) -> None:
    manifest = _manifest(saved)
    manifest["inputs"][0]["shape"] = ["T", "B", 21]
    (saved / "manifest.json").write_text(json.dumps(manifest))
    assert "inputs and outputs do not match graph.ir" in _error(saved)


@pytest.mark.parametrize("evil", ["../evil", "/abs/evil", "a/../../evil", "C:evil"])
def test_zip_with_an_unsafe_member_name(tmp_path: Path, evil: str) -> None:
    path = tmp_path / "tiny.snuc.zip"
    _artefact().save(path)
    with zipfile.ZipFile(path, "a") as zf:
        zf.writestr(evil, b"payload")
    message = _error(path)
    assert "unsafe zip member name" in message and repr(evil) in message
    assert _listing(tmp_path) == {"tiny.snuc.zip"}
    assert not (tmp_path.parent / "evil").exists()


def test_zip_member_tampered(tmp_path: Path) -> None:
    path = tmp_path / "tiny.snuc.zip"
    _artefact().save(path)
    with zipfile.ZipFile(path) as zf:
        members = {name: zf.read(name) for name in zf.namelist()}
    members["report.json"] = members["report.json"].replace(b"0.125", b"0.126")
    with zipfile.ZipFile(path, "w") as zf:
        for name, data in members.items():
            zf.writestr(name, data)
    assert "member report.json is tampered or truncated" in _error(path)


def test_zip_truncated(tmp_path: Path) -> None:
    path = tmp_path / "tiny.snuc.zip"
    _artefact().save(path)
    data = path.read_bytes()
    path.write_bytes(data[: len(data) - 100])
    assert "is not a .snuc artefact" in _error(path)


def test_zip_member_with_a_bad_crc(tmp_path: Path) -> None:
    path = tmp_path / "tiny.snuc.zip"
    _artefact(program="x" * 200).save(path)
    data = bytearray(path.read_bytes())
    with zipfile.ZipFile(path) as zf:
        info = zf.getinfo("arrays.npz")
    # Inside the stored (uncompressed) arrays: past the local header and the name.
    offset = info.header_offset + 30 + len("arrays.npz") + 200
    data[offset] ^= 0xFF
    path.write_bytes(bytes(data))
    message = _error(path)
    assert "member arrays.npz is unreadable" in message
    assert "tampered or truncated" in message
