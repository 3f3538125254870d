"""Reading ``snuc run``'s input and writing its outputs (SPEC §6), safely.

Inputs are ``.npy`` files read without pickles. Outputs are written to a temporary name
beside the destination and renamed into place, so a failed run leaves nothing behind.
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Mapping
from pathlib import Path
from typing import IO

import numpy as np

from snuc.ir.errors import SnucError
from snuc.ir.limits import check_tensor_bytes
from snuc.runtime.artefact_files import remove_leftovers, sibling_name


def read_array(path: str | os.PathLike, what: str = "input file") -> np.ndarray:
    """The array in a ``.npy`` file, never unpickled; a one-line SnucError naming ``what``
    and the path if it is missing, not a regular file, empty, not an array file, an array
    of Python objects, or larger than :func:`~snuc.ir.limits.check_tensor_bytes` allows
    (checked from its header, before the data is read)."""
    path = Path(path)
    if not path.exists():
        raise SnucError(f"{what} {path} does not exist")
    if not path.is_file():
        raise SnucError(f"{what} {path} is not a regular file")
    try:
        f = open(path, "rb")  # noqa: SIM115 -- closed by the with below; its error is ours
    except OSError as e:
        raise SnucError(f"cannot read {what} {path}: {e.strerror or e}") from None
    with f:
        if not f.read(1):
            raise SnucError(f"{what} {path} is empty; expected a .npy array")
        f.seek(0)
        shape, dtype = npy_header(f, f"{what} {path}")
        check_tensor_bytes(f"{what} {path}", shape, dtype.itemsize)
        f.seek(0)
        try:
            array = np.load(f, allow_pickle=False)
        except (OSError, ValueError, EOFError):
            array = None
    if not isinstance(array, np.ndarray):
        raise SnucError(f"{what} {path} is not a .npy array of numbers")
    return array


def npy_header(f: IO[bytes], what: str) -> tuple[tuple[int, ...], np.dtype]:
    """The shape and dtype an ``.npy`` stream's header declares, read without its data.

    Raises:
        SnucError: not an ``.npy`` header, or one of an unknown version.
    """
    readers = {
        (1, 0): np.lib.format.read_array_header_1_0,
        (2, 0): np.lib.format.read_array_header_2_0,
    }
    try:
        version = np.lib.format.read_magic(f)
        if version not in readers:
            raise ValueError(f"unsupported .npy format version {version}")
        shape, _, dtype = readers[version](f)
    except (ValueError, EOFError, SyntaxError) as e:
        raise SnucError(
            f"{what} is not a .npy array of numbers ({' '.join(str(e).split())})"
        ) from None
    return shape, dtype


def read_input(path: str | os.PathLike) -> np.ndarray:
    """``snuc run``'s ``--input``: see :func:`read_array`."""
    return read_array(path, "input file")


def default_output_path(input_path: str | os.PathLike, n_outputs: int) -> Path:
    """``<input>.out.npy`` beside the input; ``.npz`` when the model has several outputs."""
    path = Path(input_path)
    stem = path.name[: -len(".npy")] if path.name.endswith(".npy") else path.name
    return path.with_name(f"{stem}.out.{'npy' if n_outputs == 1 else 'npz'}")


def write_outputs(path: str | os.PathLike, outputs: np.ndarray | Mapping[str, np.ndarray]) -> Path:
    """Write one output as ``.npy`` or several as ``.npz`` by name, atomically."""
    path = Path(path)
    several = isinstance(outputs, Mapping)
    if several and path.suffix != ".npz":
        raise SnucError(f"the model has {len(outputs)} outputs: name an .npz output, not {path}")
    if not several and path.suffix != ".npy":
        raise SnucError(f"the output {path} must be a .npy file")
    if not path.parent.is_dir():
        raise SnucError(f"cannot write {path}: directory {path.parent} does not exist")
    remove_leftovers(path)  # of writes to this path that were killed
    tmp = sibling_name(path, "tmp")
    try:
        with open(tmp, "wb") as f:
            if several:
                np.savez(f, **dict(outputs))
            else:
                np.save(f, outputs, allow_pickle=False)
        os.replace(tmp, path)
    except OSError as exc:
        with contextlib.suppress(OSError):  # e.g. a read-only file system: nothing to remove
            tmp.unlink(missing_ok=True)
        raise SnucError(f"cannot write {path}: {exc.strerror or exc}") from None
    return path
